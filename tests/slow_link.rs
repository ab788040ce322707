//! A deliberately slow link, in a test binary of its own: it measures delays to within 10%, so
//! it must not share the CPUs with the bulk transfers of `chain.rs`.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use util::{MAIN_BIN, Proc, run_source, spawn_listening};

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
    let (delay, delay_addr) = util::delay(c_addr, 20);
    let (_b, b_addr) = relay("B", delay_addr);
    let b = b_addr.to_string();
    let args = ["-f", &b, "-n", "A", "--count", "40", "--size", "512", "--window", "1"];
    let run = run_source(&args, &[], RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    let report = run.report();
    assert!(report.verdict.starts_with("verdict: B ⇄ C adds the most delay"), "{}", run.stderr);
    // The bounds are the 40 ms asked (the element never releases early) and what the element
    // itself says it held the frames (kernel arrival → end of its write, each way), not 40 ms
    // plus a fixed slack: on a busy machine it releases late, and the link is as slow as it
    // really was. Its own figure runs a little high (it reads the clock after its write, when a
    // busy machine may have preempted it), so it bounds the link from above.
    let p50_ns = report.row("B ⇄ C").p50_ns;
    assert!(p50_ns >= 40e6 - report.rounding_ns, "B ⇄ C p50 {p50_ns} ns, under the 40 ms asked");
    let held_ns: f64 = util::element_held_p50s_ns(&delay).iter().sum();
    let tolerance_ns = (0.02 * held_ns).max(1e6);
    assert!(
        p50_ns <= held_ns + tolerance_ns,
        "B ⇄ C p50 {p50_ns} ns, but the element held only {held_ns} ns (p50 down + up)"
    );
    let parts_sum_ns: f64 = report.rows.iter().map(|row| row.mean_ns).sum();
    let tolerance_ns = report.rounding_ns * (report.rows.len() + 1) as f64;
    assert!(
        (parts_sum_ns - report.end_to_end.mean_ns).abs() <= tolerance_ns,
        "parts do not add up"
    );
}

/// No subsegment stands out when two links are slowed alike: A → tcp-delay (20 ms each way) →
/// B → tcp-delay (20 ms) → Z, probes one at a time. Both links' medians are about 40 ms, far
/// within 1.5× of each other, and their floors are alike too, so the verdict names none.
/// (A chain of plain loopback hops would be the obvious case, but there every median is tens of
/// µs set by wake-ups, and on a busy machine a relay's residence or the echoing end's turn can
/// be 1.5× the next by chance; a few ms of scheduling noise cannot move 40 ms by half.)
#[test]
fn two_links_slowed_alike_make_no_subsegment_stand_out() {
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--name", "Z"]);
    let (_to_z, to_z_addr) = util::delay(z_addr, 20);
    let (_b, b_addr) = relay("B", to_z_addr);
    let (_to_b, to_b_addr) = util::delay(b_addr, 20);
    let to_b = to_b_addr.to_string();
    let args = ["-f", &to_b, "-n", "A", "--count", "40", "--size", "512", "--window", "1"];
    let run = run_source(&args, &[], RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    let report = run.report();
    for link in ["A ⇄ B", "B ⇄ Z"] {
        let p50_ns = report.row(link).p50_ns;
        assert!(p50_ns >= 40e6 - report.rounding_ns, "{link} p50 {p50_ns} ns, under 40 ms");
    }
    let verdict = &report.json["verdict"];
    assert!(verdict["subsegment"].is_null(), "a subsegment was named: {verdict}");
    assert_eq!(verdict["kind"], "none_stands_out", "{verdict}");
    assert_eq!(verdict["doubt"], "close", "{verdict}");
    assert_eq!(report.verdict_names(), None, "{}", run.stderr);
    assert!(verdict["warning"].is_null(), "40 frames are enough for a verdict: {verdict}");
}
