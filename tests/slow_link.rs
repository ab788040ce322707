//! A deliberately slow link, in a test binary of its own: it measures delays to within 10%, so
//! it must not share the CPUs with the bulk transfers of `chain.rs`.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use util::{MAIN_BIN, Proc, parse_report, run_source, spawn_listening};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn relay(name: &str, next: SocketAddr) -> (Proc, SocketAddr) {
    let next = next.to_string();
    spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--forward-to", &next, "--name", name])
}

#[test]
fn a_slowed_link_is_named_and_measured() {
    // B → tcp-delay (20 ms each way) → C: the B ⇄ C round trip gains 40 ms.
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--name", "Z"]);
    let (_c, c_addr) = relay("C", z_addr);
    let (_delay, delay_addr) = util::delay(c_addr, 20);
    let (_b, b_addr) = relay("B", delay_addr);
    let b = b_addr.to_string();
    let args = ["-f", &b, "-n", "A", "--count", "40", "--size", "512", "--window", "1"];
    let run = run_source(&args, &[], RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    let report = parse_report(&run.stderr);
    assert!(report.verdict.starts_with("verdict: B ⇄ C adds the most delay"), "{}", run.stderr);
    let p50_ms = report.row("B ⇄ C").p50_ns / 1e6;
    assert!((36.0..=44.0).contains(&p50_ms), "B ⇄ C p50 {p50_ms} ms, expected 40 ms ± 10%");
    let parts_sum_ns: f64 = report.rows.iter().map(|row| row.mean_ns).sum();
    let tolerance_ns = report.rounding_ns * (report.rows.len() + 1) as f64;
    assert!(
        (parts_sum_ns - report.end_to_end.mean_ns).abs() <= tolerance_ns,
        "parts do not add up"
    );
}
