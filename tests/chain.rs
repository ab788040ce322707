//! The whole chain on loopback: source → relays → echoing end, with the real binary.

mod util;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::Duration;

use subsegment_tcp_speeds::wire::{self, Kind, PathEntry, Tag};
use util::{MAIN_BIN, Proc, random_bytes, run_source, spawn_listening};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// The report's rows from the source through relays B and C, as far as C's residence.
const RELAYS_B_AND_C: [&str; 6] =
    ["A ⇄ B", "B ↓ (relay)", "B ↑ (relay)", "B ⇄ C", "C ↓ (relay)", "C ↑ (relay)"];

/// A chain Z (echo) ← C ← B, returning the processes and B's address.
fn chain_b_c_z(extra: &[&str]) -> (Vec<Proc>, SocketAddr) {
    let mut z_args = vec!["--listen", "127.0.0.1:0", "--name", "Z"];
    z_args.extend_from_slice(extra);
    let (z, z_addr) = spawn_listening(MAIN_BIN, &z_args);
    let (c, c_addr) = relay("C", z_addr);
    let (b, b_addr) = relay("B", c_addr);
    (vec![z, c, b], b_addr)
}

fn relay(name: &str, next: SocketAddr) -> (Proc, SocketAddr) {
    let next = next.to_string();
    spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--forward-to", &next, "--name", name])
}

#[test]
fn ten_megabytes_come_back_byte_identical_with_a_full_report() {
    let (_hops, b_addr) = chain_b_c_z(&[]);
    let input = random_bytes(10 << 20, 1);
    let b = b_addr.to_string();
    let run = run_source(&["--forward-to", &b, "--name", "A"], &input, RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    assert!(
        run.stdout == input,
        "output differs from input ({} vs {} bytes)",
        run.stdout.len(),
        input.len()
    );

    let report = run.report();
    let mut expected = RELAYS_B_AND_C.to_vec();
    expected.extend(["C ⇄ Z", "Z (echo)"]);
    assert_eq!(report.labels(), expected);
    let frames = (10u64 << 20).div_ceil(512);
    assert!(report.rows.iter().all(|row| row.count == frames), "{:?}", report.rows);
    assert!(
        run.stderr.contains(&format!("sent {frames}, answered {frames}, missing 0")),
        "{}",
        run.stderr
    );
    for (index, name) in ["A", "B", "C", "Z"].iter().enumerate() {
        assert!(
            run.stderr.contains(&format!("  {index:>2}  {name} ")),
            "path lacks {name}:\n{}",
            run.stderr
        );
    }
    assert_parts_add_up(&report);
    // parse_report has failed on any negative sample. The fastest round trip (one of the
    // first frames, which go one at a time) takes time; every link's median is some of it, and
    // never more than the whole round trip it is part of. (A link's own minimum, a few µs on
    // loopback, prints as 0.00 once the table is in ms.)
    assert!(report.end_to_end.min_ns > 0.0, "{}", run.stderr);
    for row in report.rows.iter().filter(|row| row.label.contains(" ⇄ ")) {
        assert!(
            row.p50_ns > 0.0 && row.p50_ns <= report.end_to_end.p50_ns + report.rounding_ns,
            "{row:?}\n{}",
            run.stderr
        );
    }
}

/// The subsegment means must add up to the end-to-end mean: the same stamps, exactly split.
/// Only the printing rounds: each figure by at most half a unit in its last digit.
#[track_caller]
fn assert_parts_add_up(report: &util::Report) {
    let rows_sum: f64 = report.rows.iter().map(|row| row.mean_ns).sum();
    let rows_rounding = report.rounding_ns * (report.rows.len() + 1) as f64;
    assert!(
        (rows_sum - report.end_to_end.mean_ns).abs() <= rows_rounding,
        "rows add up to {rows_sum} ns, end-to-end mean is {} ns",
        report.end_to_end.mean_ns
    );
    // The sum row is computed from exact sums: it must match to the printed digit.
    assert!(
        (report.sum_of_parts_mean_ns - report.end_to_end.mean_ns).abs() <= 2.0 * report.rounding_ns
    );
}

#[test]
fn two_sources_at_once_share_the_relays() {
    let (hops, b_addr) = chain_b_c_z(&[]);
    let b = b_addr.to_string();
    let runs: Vec<_> = (0..2u64)
        .map(|seed| {
            let b = b.clone();
            thread::spawn(move || {
                let input = random_bytes(3 << 20, seed + 10);
                let run = run_source(&["-f", &b, "-n", "A", "-s", "4096"], &input, RUN_TIMEOUT);
                (input, run)
            })
        })
        .collect();
    for handle in runs {
        let (input, run) = handle.join().unwrap();
        assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
        assert!(run.stdout == input, "a concurrent source got different bytes back");
    }
    // Each relay logs one line per closed connection: wait for both (the sources may exit
    // before B has written its lines), then check there are no more.
    let both = util::frames::wait_for_stderr(&hops[2], Duration::from_secs(10), |text| {
        text.matches("ended after").count() >= 2
    });
    let relay_b = both.unwrap_or_else(|| panic!("B did not log two closes: {}", hops[2].stderr()));
    assert_eq!(relay_b.matches("ended after").count(), 2, "{relay_b}");
}

#[test]
fn an_unreachable_next_hop_is_named_at_the_source() {
    // A port that nothing listens on: bind, learn the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (_c, c_addr) = relay("C", closed);
    let (_b, b_addr) = relay("B", c_addr);
    let b = b_addr.to_string();
    let run = run_source(&["-f", &b, "-n", "A", "-t", "5"], b"some data", RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(1)), "{}", run.stderr);
    let error = run.stderr.lines().find(|line| line.contains("error:")).unwrap_or_default();
    assert!(error.contains("C ⇄ "), "the failed subsegment is not named: {}", run.stderr);
    assert!(error.contains(&closed.to_string()), "the unreachable address is not named: {error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
}

#[test]
fn a_source_whose_first_hop_refuses_exits_1() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let target = closed.to_string();
    let run = run_source(&["-f", &target, "-t", "5"], b"x", RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(1)), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("first hop {target}")), "{}", run.stderr);
}

#[test]
fn garbage_closes_only_its_own_connection() {
    let (hops, b_addr) = chain_b_c_z(&[]);
    let mut stray = util::connect(b_addr);
    stray.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    // A read timeout fails here: the relay must close (or reset) the stray connection itself.
    let answer = util::frames::expect_closed(&mut stray, Duration::from_secs(5));
    assert!(answer.is_empty(), "the relay answered a stray HTTP request: {answer:?}");

    let input = random_bytes(200_000, 3);
    let run = run_source(&["-f", &b_addr.to_string(), "-n", "A"], &input, RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    assert!(run.stdout == input);
    let relay_b = hops[2].stderr();
    let complaint = relay_b.lines().find(|line| line.contains("HTTP")).unwrap_or_default();
    assert!(complaint.contains("127.0.0.1:"), "the complaint names no peer: {relay_b}");
}

#[test]
fn a_stripping_relay_serves_a_plain_tcp_echo_server() {
    let (server, _server_thread) = util::plain_echo_server();
    let server = server.to_string();
    let args = ["--listen", "127.0.0.1:0", "--forward-to", &server, "--name", "C", "-r"];
    let (_c, c_addr) = spawn_listening(MAIN_BIN, &args);
    let (_b, b_addr) = relay("B", c_addr);
    let input = random_bytes(1 << 20, 4);
    let run = run_source(&["-f", &b_addr.to_string(), "-n", "A"], &input, RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    assert!(run.stdout == input, "data through the stripping relay differs");
    let report = run.report();
    let last_link = format!("C ⇄ {server}");
    let mut expected = RELAYS_B_AND_C.to_vec();
    expected.push(&last_link);
    assert_eq!(report.labels(), expected);
    assert!(run.stderr.contains("plain TCP server"), "{}", run.stderr);
    assert_parts_add_up(&report);
}

/// A plain server that answers every read with twice its bytes: answers run ahead of the
/// frames sent, and the surplus comes back as unsolicited. No sample may go negative, and
/// probes of no bytes at all are answered at once instead of waiting for bytes that never
/// come (they used to hang until the timeout, which then blamed the server). Bytes that
/// arrive before a frame's payload has left the relay are the server's own, never its answer
/// (`tests/ingress.rs`, a server that talks first).
#[test]
fn a_stripping_relay_copes_with_a_server_answering_more_than_asked_and_with_empty_probes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap().to_string();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(count @ 1..) = stream.read(&mut chunk) {
                    let doubled = [&chunk[..count], &chunk[..count]].concat();
                    if stream.write_all(&doubled).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let args = ["--listen", "127.0.0.1:0", "--forward-to", &server, "--name", "C", "-r"];
    let (c, c_addr) = spawn_listening(MAIN_BIN, &args);
    let c_text = c_addr.to_string();
    for probes in [
        ["--count", "300", "--size", "64", "--window", "8"],
        ["--count", "40", "--size", "0", "--window", "4"],
    ] {
        let mut args = vec!["-f", c_text.as_str(), "-n", "A", "-t", "5"];
        args.extend(probes);
        let run = run_source(&args, b"", RUN_TIMEOUT);
        assert_eq!(
            run.status.map(|status| status.code()),
            Some(Some(0)),
            "{probes:?}: {}",
            run.stderr
        );
        run.report(); // fails on any negative sample
    }
    drop(c);
}

#[test]
fn an_echo_end_with_r_answers_plain_bytes() {
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "-r", "--name", "Z"]);
    let mut client = util::connect(z_addr);
    client.write_all(b"plain bytes, no frames").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"plain bytes, no frames");
}

#[test]
fn stdin_and_stdout_may_be_files_and_dev_null() {
    let (_hops, b_addr) = chain_b_c_z(&[]);
    let dir = std::env::temp_dir().join(format!("ssts-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input_path = dir.join("in.bin");
    let output_path = dir.join("out.bin");
    let input = random_bytes(1 << 20, 5);
    std::fs::write(&input_path, &input).unwrap();
    let b = b_addr.to_string();
    let status = std::process::Command::new(MAIN_BIN)
        .args(["-f", &b, "-n", "A"])
        .stdin(std::fs::File::open(&input_path).unwrap())
        .stdout(std::fs::File::create(&output_path).unwrap())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read(&output_path).unwrap() == input, "regular file round trip differs");

    let status = std::process::Command::new(MAIN_BIN)
        .args(["-f", &b, "-n", "A"])
        .stdin(std::fs::File::open("/dev/null").unwrap())
        .stdout(std::fs::File::create("/dev/null").unwrap())
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [&["--frobnicate"][..], &["-f", "127.0.0.1:1", "-s", "0"], &[]] {
        let output = std::process::Command::new(MAIN_BIN).args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let prefix = format!("{}: usage error: ", subsegment_tcp_speeds::net::host_name());
        assert!(stderr.lines().next().unwrap().starts_with(&prefix), "{stderr}");
    }
    // With a name, the line starts with it, as the hop's runtime lines do.
    let named = std::process::Command::new(MAIN_BIN).args(["-n", "B", "-l", "x"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&named.stderr);
    assert!(stderr.starts_with("B: usage error: --listen: "), "{stderr}");
    let help = std::process::Command::new(MAIN_BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--forward-to Z:9000"));
}

/// Tags given to the source, a relay and the echoing end travel in the path: a tap between A
/// and B reads the announcement A sends and the path that comes back, with every hop's tags
/// in the order given, and none on the relay given none.
#[test]
fn every_hop_s_tags_come_back_in_the_path() {
    let z_tags = ["--tag", "site=lab", "--tag", "note="];
    let (_z, z_addr) =
        spawn_listening(MAIN_BIN, &[&["-l", "127.0.0.1:0", "-n", "Z"][..], &z_tags].concat());
    let (_c, c_addr) = relay("C", z_addr);
    let c_addr = c_addr.to_string();
    let b_tags = ["--tag", "provider=Zürich Ölwerk", "--tag", "circuit-id=c.42/7"];
    let b_args = [&["-l", "127.0.0.1:0", "-f", &c_addr, "-n", "B"][..], &b_tags].concat();
    let (_b, b_addr) = spawn_listening(MAIN_BIN, &b_args);
    let (tap_addr, tapped) = util::tap(b_addr);
    let tap_addr = tap_addr.to_string();
    let a_args = ["-f", &tap_addr, "-n", "A", "--tag", "site=office", "--tag", "rack=r1"];
    let run = run_source(&a_args, b"hello", RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    assert_eq!(run.stdout, b"hello");

    let tapped = tapped.join().unwrap();
    let path_in = |bytes: &[u8]| {
        let frame = wire::next_frame(bytes).unwrap().expect("a whole first frame");
        assert_eq!(frame.kind(), Kind::Path, "the first frame each way is the path");
        PathEntry::parse_all(frame.payload()).unwrap()
    };
    let shown = |entries: &[PathEntry]| -> Vec<(String, Vec<String>)> {
        let tags = |entry: &PathEntry| entry.tags.iter().map(Tag::to_string).collect();
        entries.iter().map(|entry| (entry.name.clone(), tags(entry))).collect()
    };
    let owned = |name: &str, tags: &[&str]| {
        (name.to_string(), tags.iter().map(|tag| tag.to_string()).collect())
    };
    let answered = path_in(&tapped.up);
    assert_eq!(
        shown(&answered),
        [
            owned("A", &["site=office", "rack=r1"]),
            owned("B", &["provider=Zürich Ölwerk", "circuit-id=c.42/7"]),
            owned("C", &[]),
            owned("Z", &["site=lab", "note="]),
        ]
    );
    assert_eq!(path_in(&tapped.down), answered[..1], "A announces itself with its tags");
}

/// A malformed `--tag`, a ninth or a key given twice stops any hop before it starts, with the
/// usage exit code and a line naming the option and what was wrong.
#[test]
fn bad_tags_are_usage_errors_at_every_hop() {
    let nine: Vec<String> = (1..=9).map(|index| format!("k{index}=v")).collect();
    let nine: Vec<&str> = nine.iter().flat_map(|tag| ["--tag", tag.as_str()]).collect();
    let relay = ["-l", "127.0.0.1:0", "-f", "127.0.0.1:1"];
    let duplicate = ["--tag", "site=a", "--tag", "site=b"];
    for (args, says) in [
        ([&["-l", "127.0.0.1:0"][..], &nine].concat(), "--tag: more than 8 tags"),
        ([&relay[..], &nine].concat(), "--tag: more than 8 tags"),
        ([&["-f", "127.0.0.1:1"][..], &duplicate].concat(), "--tag: key 'site' is given twice"),
        (
            vec!["-l", "127.0.0.1:0", "--tag", "rack 1=b"],
            "--tag: key 'rack 1' has ' '; keys are letters, digits, '_', '.' and '-'",
        ),
        (vec!["-f", "127.0.0.1:1", "--tag", "site"], "--tag: 'site' is not KEY=VALUE"),
    ] {
        let output = std::process::Command::new(MAIN_BIN).args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr.lines().next().unwrap_or_default();
        let prefix = format!("{}: usage error: ", subsegment_tcp_speeds::net::host_name());
        assert_eq!(first.strip_prefix(&prefix), Some(says), "{args:?}: {stderr}");
    }
    // Eight are fine: the hop starts.
    let (_z, _) = spawn_listening(MAIN_BIN, &[&["-l", "127.0.0.1:0"][..], &nine[..16]].concat());
}

/// A next hop that accepts and never answers, with the same `--timeout` on every hop: the relay
/// next to it times out and reports in-band, and the source (which waits a little longer) names
/// that subsegment instead of only saying it timed out.
#[test]
fn a_silent_next_hop_is_named_though_every_hop_has_the_same_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let holder = thread::spawn(move || {
        let held: Vec<_> = silent.incoming().take(1).collect();
        thread::sleep(Duration::from_secs(5));
        drop(held);
    });
    let args =
        ["--listen", "127.0.0.1:0", "--forward-to", &silent_addr, "-r", "-n", "R", "-t", "1"];
    let (_r, r_addr) = spawn_listening(MAIN_BIN, &args);
    let run = run_source(&["-f", &r_addr.to_string(), "-n", "A", "-t", "1"], b"hello", RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(1)), "{}", run.stderr);
    let error = run.stderr.lines().find(|line| line.contains("error:")).unwrap_or_default();
    assert!(error.contains(&format!("subsegment R ⇄ {silent_addr} failed")), "{}", run.stderr);
    assert!(error.contains("no answer for 1 s"), "{error}");
    holder.join().unwrap();
}

/// The low-jitter knobs change how a relay waits, not what it carries; what the host refuses
/// (SCHED_FIFO without CAP_SYS_NICE) is said on stderr, and so is a spinning relay left to
/// share its CPU. (The real-time throttle warning is unit-tested in `tuning`: spawning a
/// spinning SCHED_FIFO relay here would starve the other tests on that CPU.)
#[test]
fn a_relay_with_the_knobs_carries_the_chain_and_says_what_it_could_not_do() {
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--name", "Z"]);
    let z_addr = z_addr.to_string();
    let (b, b_addr) = spawn_listening(
        MAIN_BIN,
        &["-l", "127.0.0.1:0", "-f", &z_addr, "-n", "B", "--cpu", "0", "--realtime", "--mlock"],
    );
    let run = run_source(
        &["-f", &b_addr.to_string(), "--count", "200", "--size", "64", "--window", "1"],
        b"",
        RUN_TIMEOUT,
    );
    assert!(run.status.is_some_and(|status| status.success()), "{}", run.stderr);
    assert_eq!(run.report().end_to_end.count, 200, "{}", run.stderr);
    // /proc/PID/stat field 41 is the scheduling policy (1 = SCHED_FIFO); fields 3.. follow the
    // command name's closing parenthesis.
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", b.id())).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 1..];
    let fifo = after_name.split_whitespace().nth(41 - 3) == Some("1");
    let refused = b.stderr().contains("cannot switch to SCHED_FIFO");
    assert!(fifo != refused, "SCHED_FIFO: {fifo}; stderr:\n{}", b.stderr());
    // --cpu 0: the kernel allows it CPU 0 alone. --mlock: locked pages, or a warning why not.
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.id())).unwrap();
    let field = |name: &str| {
        let line = status.lines().find(|line| line.starts_with(name)).unwrap_or_default();
        line[name.len()..].trim().to_string()
    };
    assert_eq!(field("Cpus_allowed_list:"), "0", "{status}");
    let locked_kib: u64 = field("VmLck:").trim_end_matches("kB").trim().parse().unwrap();
    let lock_refused = b.stderr().contains("cannot lock memory");
    assert!((locked_kib > 0) != lock_refused, "VmLck {locked_kib} kB; stderr:\n{}", b.stderr());
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // Root may switch to SCHED_FIFO; without CAP_SYS_NICE the same request must be refused
        // with the warning, and the relay must still serve.
        let no_nice = ["--inh-caps=-sys_nice", "--bounding-set=-sys_nice", MAIN_BIN];
        let mut args = no_nice.to_vec();
        args.extend(["-l", "127.0.0.1:0", "-f", &z_addr, "-n", "N", "--realtime"]);
        let (plain, plain_addr) = spawn_listening("setpriv", &args);
        let run = run_source(&["-f", &plain_addr.to_string(), "--count", "20"], b"", RUN_TIMEOUT);
        assert!(run.status.is_some_and(|status| status.success()), "{}", run.stderr);
        assert!(plain.stderr().contains("cannot switch to SCHED_FIFO"), "{}", plain.stderr());
    }

    let (spinner, _) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "--busy-poll"]);
    assert!(spinner.stderr().contains("--busy-poll without --cpu"), "{}", spinner.stderr());
}

/// A chain entirely over IPv6: the echoing end and the relay listen on `[::1]:0`, the relay
/// forwards to `[::1]:PORT`, and the source reaches the relay at `[::1]:PORT`. The bytes come
/// back whole, and the path names every hop by its IPv6 address, as it reached it and as it
/// saw the hop before it come.
#[test]
fn a_chain_over_ipv6_loopback_carries_the_bytes_and_names_v6_addresses() {
    if !util::has_ipv6_loopback() {
        util::say_skipped(
            "a_chain_over_ipv6_loopback_carries_the_bytes_and_names_v6_addresses",
            "this machine cannot bind [::1] (no IPv6 loopback)",
        );
        return;
    }
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "[::1]:0", "--name", "Z"]);
    assert!(z_addr.is_ipv6(), "Z says it listens on {z_addr}");
    let z_text = z_addr.to_string();
    assert!(z_text.starts_with("[::1]:"), "{z_text}");
    let args = ["--listen", "[::1]:0", "--forward-to", &z_text, "--name", "B"];
    let (_b, b_addr) = spawn_listening(MAIN_BIN, &args);
    assert!(b_addr.is_ipv6(), "B says it listens on {b_addr}");

    let input = random_bytes(512 * 1024, 6);
    let run = run_source(&["-f", &b_addr.to_string(), "-n", "A"], &input, RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    assert!(run.stdout == input, "bytes through the IPv6 chain differ");
    let report = run.report();
    assert_eq!(report.labels(), ["A ⇄ B", "B ↓ (relay)", "B ↑ (relay)", "B ⇄ Z", "Z (echo)"]);
    let path = report.json["path"].as_array().expect("a path");
    let field = |index: usize, name: &str| path[index][name].as_str().unwrap_or("").to_string();
    assert_eq!(field(1, "reached_at"), b_addr.to_string(), "{path:?}");
    assert_eq!(field(2, "reached_at"), z_text, "{path:?}");
    for index in [1, 2] {
        let seen_from = field(index, "seen_from");
        let seen_from: SocketAddr = seen_from.parse().unwrap_or_else(|_| panic!("{path:?}"));
        assert_eq!(seen_from.ip(), z_addr.ip(), "hop {index} saw its peer come from {seen_from}");
    }
}

/// `count` relays in a row, R1 first, the last forwarding to `next`; returns the processes and
/// R1's address.
fn relays_in_front_of(next: SocketAddr, count: usize) -> (Vec<Proc>, SocketAddr) {
    let mut procs = Vec::with_capacity(count);
    let mut first = next;
    for index in (1..=count).rev() {
        let (proc, addr) = relay(&format!("R{index}"), first);
        procs.push(proc);
        first = addr;
    }
    (procs, first)
}

/// The hop limit (`wire::MAX_HOPS`, 32) counts the source and the echoing end: the source, 30
/// relays and the echoing end are 32 hops, and they work end to end; with a 31st relay the
/// echoing end would be the 33rd hop, and it refuses the path with an error naming the limit,
/// which the source reports.
#[test]
fn thirty_two_hops_work_and_a_thirty_third_is_refused() {
    let (z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--name", "Z"]);
    let (_relays, first) = relays_in_front_of(z_addr, 30);
    let input = random_bytes(64 * 1024, 7);
    let run = run_source(&["-f", &first.to_string(), "-n", "A", "-t", "10"], &input, RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(0)), "{}", run.stderr);
    assert!(run.stdout == input, "bytes through 32 hops differ");
    let report = run.report();
    let path = report.json["path"].as_array().expect("a path");
    let roles: Vec<&str> = path.iter().map(|hop| hop["role"].as_str().unwrap_or("")).collect();
    assert_eq!(roles.len(), 32, "{roles:?}");
    assert_eq!((roles[0], roles[31]), ("source", "echo"), "{roles:?}");
    assert!(roles[1..31].iter().all(|role| *role == "relay"), "{roles:?}");
    assert_eq!(path[31]["index"].as_u64(), Some(31), "{path:?}");
    // 31 links, 30 relays' two residences, the echoing end's turn.
    assert_eq!(report.rows.len(), 31 + 60 + 1, "{:?}", report.labels());

    let (_extra, extra_addr) = relay("R0", first);
    let run =
        run_source(&["-f", &extra_addr.to_string(), "-n", "A", "-t", "10"], b"x", RUN_TIMEOUT);
    assert_eq!(run.status.map(|status| status.code()), Some(Some(1)), "{}", run.stderr);
    let error = run.stderr.lines().find(|line| line.contains("error:")).unwrap_or_default();
    assert!(
        error.contains("more than 32 hops"),
        "the error does not name the limit: {}",
        run.stderr
    );
    // The refusal comes from the echoing end, at index 32: every relay passed the path on. (Its
    // answer, the path with its own entry added, is over the limit too: the source refuses that
    // before the FAULT frame that names the hop, so its line names the limit, not the hop.)
    let z_log = util::frames::wait_for_stderr(&z, Duration::from_secs(5), |text| {
        text.contains("more than 32 hops")
    });
    assert!(z_log.is_some(), "the echoing end did not refuse the path: {}", z.stderr());
}
