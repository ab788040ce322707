//! A hop's `--metrics`, with the real binary on loopback: residence histograms that count
//! every frame the hop passed on each way (their sums the very nanoseconds the source computes
//! for the hop's rows), faults counted by code and origin, an ingress's per-path delay
//! histograms, and `--metrics-linger` keeping the final figures up after the run.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use util::scrape::{MARKER, metrics_addr_of, parse_metrics_word, sample, scrape_until, try_sample};
use util::{MAIN_BIN, Report, run_source, spawn_listening, spawn_until};

/// How long a hop has to publish what happened: it does within 250 ms; this is only the bound
/// after which the test gives up on an event that did not come.
const PUBLISHED_WITHIN: Duration = Duration::from_secs(10);

/// `subsegment_tcp_speeds_NAME{LABELS}` as the exposition spells it.
fn series(name: &str, labels: &str) -> String {
    format!("subsegment_tcp_speeds_{name}{{{labels}}}")
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap()
}

#[track_caller]
fn row_sum_ns(report: &Report, id: &str) -> (u64, u64) {
    let row = report.rows.iter().find(|row| row.id == id).unwrap_or_else(|| {
        panic!("no row {id} in {:?}", report.rows.iter().map(|row| &row.id).collect::<Vec<_>>())
    });
    (row.count, row.sum_ns)
}

/// The residence histogram of `hop` in `direction`: (count, sum in ns).
#[track_caller]
fn residence(body: &str, hop: &str, role: &str, direction: &str) -> (f64, f64) {
    let labels = format!("hop=\"{hop}\",role=\"{role}\",direction=\"{direction}\"");
    let count = sample(body, &series("hop_residence_seconds_count", &labels));
    let sum_s = sample(body, &series("hop_residence_seconds_sum", &labels));
    (count, sum_s * 1e9)
}

#[track_caller]
fn assert_same_ns(hop_ns: f64, source_ns: u64, what: &str) {
    // The exposition carries seconds as a float: a nanosecond or two of rounding at most.
    let tolerance = 2.0f64.max(source_ns as f64 * 1e-12);
    assert!(
        (hop_ns - source_ns as f64).abs() <= tolerance,
        "{what}: the hop's residence sum {hop_ns} ns, the source's {source_ns} ns"
    );
}

/// A → B → Z, 300 probes: B's down and up residence histograms each count 300 frames, as do
/// Z's turn, and their sums are exactly what the source's report adds up for those rows
/// (the same stamps, differenced on the same host).
#[test]
fn residence_histograms_count_every_frame_each_way_and_sum_the_sources_nanoseconds() {
    let z_args = ["--listen", "127.0.0.1:0", "--name", "Z", "--metrics", "127.0.0.1:0"];
    let (z, z_addr) = spawn_listening(MAIN_BIN, &z_args);
    let z_text = z_addr.to_string();
    let b_args = ["-l", "127.0.0.1:0", "-f", &z_text, "-n", "B", "--metrics", "127.0.0.1:0"];
    let (b, b_addr) = spawn_listening(MAIN_BIN, &b_args);
    let (b_metrics, z_metrics) = (metrics_addr_of(&b), metrics_addr_of(&z));
    let frames = 300;
    let count = frames.to_string();
    let b_text = b_addr.to_string();
    let args = ["-f", &b_text, "-n", "A", "-c", &count, "--size", "100", "-w", "4"];
    let run = run_source(&args, b"", Duration::from_secs(30));
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    let report = run.report();

    let frames = f64::from(frames);
    let down = series("hop_frames_total", "hop=\"B\",role=\"relay\",direction=\"down\"");
    let settled = |body: &str| try_sample(body, &down) == Some(frames);
    let body = scrape_until(b_metrics, PUBLISHED_WITHIN, settled);
    assert_eq!(try_sample(&body, &down), Some(frames), "B passed every frame down:\n{body}");
    let up = series("hop_frames_total", "hop=\"B\",role=\"relay\",direction=\"up\"");
    assert_eq!(sample(&body, &up), frames, "and every answer up");
    for (direction, id) in [("down", "1.down"), ("up", "1.up")] {
        let (count, sum_ns) = residence(&body, "B", "relay", direction);
        let (source_count, source_sum_ns) = row_sum_ns(&report, id);
        assert_eq!(count, frames, "B {direction}: one residence per frame:\n{body}");
        assert_eq!(source_count as f64, frames, "the source's {id} row");
        assert!(sum_ns > 0.0, "B {direction}: a frame takes time to pass");
        assert_same_ns(sum_ns, source_sum_ns, &format!("B {direction}"));
    }
    // The relay has no turn; the echoing end has only that.
    assert!(!body.contains("direction=\"turn\""), "{body}");
    let turned = |body: &str| {
        try_sample(
            body,
            &series("hop_residence_seconds_count", "hop=\"Z\",role=\"echo\",direction=\"turn\""),
        ) == Some(frames)
    };
    let body = scrape_until(z_metrics, PUBLISHED_WITHIN, turned);
    let (count, sum_ns) = residence(&body, "Z", "echo", "turn");
    assert_eq!(count, frames, "Z turned every frame:\n{body}");
    assert_same_ns(sum_ns, row_sum_ns(&report, "2.echo").1, "Z's turn");
    // Bucket counts are cumulative and end at the count.
    let inf = series(
        "hop_residence_seconds_bucket",
        "le=\"+Inf\",hop=\"Z\",role=\"echo\",direction=\"turn\"",
    );
    assert_eq!(sample(&body, &inf), frames);
}

/// A → C → B → (nothing): B reports its next hop unreachable, C passes the fault on; each
/// counts it under its origin with the code `unreachable`, and nothing else.
#[test]
fn a_fault_is_counted_by_its_code_where_it_happened_and_where_it_was_passed_on() {
    let nowhere = closed_port().to_string();
    let b_args = ["-l", "127.0.0.1:0", "-f", &nowhere, "-n", "B", "--metrics", "127.0.0.1:0"];
    let (b, b_addr) = spawn_listening(MAIN_BIN, &b_args);
    let b_text = b_addr.to_string();
    let c_args = ["-l", "127.0.0.1:0", "-f", &b_text, "-n", "C", "--metrics", "127.0.0.1:0"];
    let (c, c_addr) = spawn_listening(MAIN_BIN, &c_args);
    let c_text = c_addr.to_string();
    let run = run_source(&["-f", &c_text, "-n", "A", "-c", "3"], b"", Duration::from_secs(30));
    assert_eq!(run.status.and_then(|status| status.code()), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains("unreachable") || run.stderr.contains("cannot connect"),
        "{}",
        run.stderr
    );

    for (proc, hop, origin) in [(&b, "B", "this_hop"), (&c, "C", "passed_on")] {
        let fault = |code: &str| {
            series(
                "hop_faults_total",
                &format!("hop=\"{hop}\",role=\"relay\",origin=\"{origin}\",code=\"{code}\""),
            )
        };
        let counted = |body: &str| try_sample(body, &fault("unreachable")) == Some(1.0);
        let body = scrape_until(metrics_addr_of(proc), PUBLISHED_WITHIN, counted);
        assert_eq!(try_sample(&body, &fault("unreachable")), Some(1.0), "{hop}:\n{body}");
        // Every other code and the other origin stay at zero: one fault, counted once.
        let faults: f64 = body
            .lines()
            .filter(|line| line.starts_with("subsegment_tcp_speeds_hop_faults_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(faults, 1.0, "{hop}:\n{body}");
        let series_count = body.lines().filter(|line| line.contains("hop_faults_total{")).count();
        assert_eq!(series_count, 14, "7 codes × 2 origins, always served:\n{body}");
    }
}

/// A client → I (--ingress) → E (-r) → a plain echo server, 20 request/answer rounds: I serves
/// its path's delay histograms (labelled by chain and path) with one sample per round, and its
/// residence both ways (its record on the client's bytes; the server's frames until their
/// payload goes to the client); E its turn (the receipts) and up (the server's bytes framed).
#[test]
fn an_ingress_serves_its_paths_delay_histograms_and_the_egress_its_turn() {
    let (server, _echo) = util::plain_echo_server();
    let server_text = server.to_string();
    let e_args =
        ["-l", "127.0.0.1:0", "-f", &server_text, "-r", "-n", "E", "--metrics", "127.0.0.1:0"];
    let (e, e_addr) = spawn_listening(MAIN_BIN, &e_args);
    let e_text = e_addr.to_string();
    let i_args = [
        "-l",
        "127.0.0.1:0",
        "-f",
        &e_text,
        "--ingress",
        "-n",
        "I",
        "--probe-interval",
        "0",
        "--metrics",
        "127.0.0.1:0",
        "--metrics-chain",
        "app",
    ];
    let (i, i_addr) = spawn_listening(MAIN_BIN, &i_args);
    let rounds = 20;
    let mut client = util::connect(i_addr);
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for round in 0..rounds {
        let request = format!("request {round:03}\n");
        client.write_all(request.as_bytes()).unwrap();
        let mut answer = vec![0u8; request.len()];
        client.read_exact(&mut answer).unwrap();
        assert_eq!(answer, request.as_bytes());
    }
    drop(client);

    let rounds = f64::from(rounds);
    let end_to_end = series("end_to_end_delay_seconds_count", "chain=\"app\",path=\"1\"");
    let measured = |body: &str| try_sample(body, &end_to_end) == Some(rounds);
    let body = scrape_until(metrics_addr_of(&i), PUBLISHED_WITHIN, measured);
    assert_eq!(try_sample(&body, &end_to_end), Some(rounds), "one receipt per round:\n{body}");
    // Every subsegment of the path, labelled as the source labels its own.
    let link = series(
        "subsegment_delay_seconds_count",
        "chain=\"app\",path=\"1\",subsegment=\"0-1\",kind=\"link\",from=\"I\",to=\"E\"",
    );
    assert_eq!(sample(&body, &link), rounds, "{body}");
    let down = series("hop_frames_total", "hop=\"I\",role=\"ingress\",direction=\"down\"");
    assert_eq!(sample(&body, &down), rounds, "one frame per request:\n{body}");
    let (count, sum_ns) = residence(&body, "I", "ingress", "down");
    assert_eq!(count, rounds, "the ingress's record on each request:\n{body}");
    assert!(sum_ns > 0.0);

    let turned = |body: &str| {
        try_sample(
            body,
            &series("hop_residence_seconds_count", "hop=\"E\",role=\"egress\",direction=\"turn\""),
        ) == Some(rounds)
    };
    let body = scrape_until(metrics_addr_of(&e), PUBLISHED_WITHIN, turned);
    let (count, _) = residence(&body, "E", "egress", "turn");
    assert_eq!(count, rounds, "a receipt per request:\n{body}");
    let (framed, _) = residence(&body, "E", "egress", "up");
    assert!(framed >= 1.0, "the server's answers go up stamped by E:\n{body}");
    // Every frame of the server's E framed, I handed to the client: one residence each.
    let up = series("hop_residence_seconds_count", "hop=\"I\",role=\"ingress\",direction=\"up\"");
    let delivered = |body: &str| try_sample(body, &up) == Some(framed);
    let body = scrape_until(metrics_addr_of(&i), PUBLISHED_WITHIN, delivered);
    let (count, sum_ns) = residence(&body, "I", "ingress", "up");
    assert_eq!(count, framed, "I's up residences, one per server frame E framed:\n{body}");
    assert!(sum_ns > 0.0);
}

/// `--metrics-linger`: the source's report is printed, and the final figures are still served
/// (every answer); then it exits by itself. An ingress lingers after its drain until a second
/// signal ends it at once.
#[test]
fn metrics_linger_serves_the_final_figures_after_the_report() {
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--name", "Z"]);
    let z_text = z_addr.to_string();
    let args = [
        "-f",
        &z_text,
        "-n",
        "A",
        "-c",
        "25",
        "-w",
        "1",
        "--metrics",
        "127.0.0.1:0",
        "--metrics-linger",
        "3s",
    ];
    let (mut source, word) = spawn_until(MAIN_BIN, &args, MARKER);
    let metrics = parse_metrics_word(&word);
    let lingering = Instant::now() + Duration::from_secs(20);
    while !source.stderr().contains("serving the final metrics") {
        assert!(Instant::now() < lingering, "no linger line:\n{}", source.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(source.stderr().contains("end-to-end"), "the report came first:\n{}", source.stderr());
    let (status, body) = util::scrape::get(metrics, "/metrics").expect("a scrape while lingering");
    assert_eq!(status, 200, "{body}");
    assert_eq!(sample(&body, &series("frames_answered_total", "chain=\"A\"")), 25.0, "{body}");
    let status =
        source.wait_timeout(Duration::from_secs(20)).expect("the source exits after its linger");
    assert_eq!(status.code(), Some(0), "{}", source.stderr());

    let (server, _echo) = util::plain_echo_server();
    let server_text = server.to_string();
    let (_e, e_addr) =
        spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &server_text, "-r", "-n", "E"]);
    let e_text = e_addr.to_string();
    let i_args = [
        "-l",
        "127.0.0.1:0",
        "-f",
        &e_text,
        "--ingress",
        "-n",
        "I",
        "--metrics",
        "127.0.0.1:0",
        "--metrics-linger",
        "600s",
    ];
    let (mut ingress, i_addr) = spawn_listening(MAIN_BIN, &i_args);
    let i_metrics = metrics_addr_of(&ingress);
    let mut client = util::connect(i_addr);
    client.write_all(b"ping\n").unwrap();
    let mut answer = [0u8; 5];
    client.read_exact(&mut answer).unwrap();
    drop(client);
    assert_eq!(unsafe { libc::kill(ingress.id() as i32, libc::SIGINT) }, 0);
    let lingering = Instant::now() + Duration::from_secs(20);
    while !ingress.stderr().contains("serving the final metrics") {
        assert!(Instant::now() < lingering, "no linger line:\n{}", ingress.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        ingress.stderr().contains("path 1 of 1"),
        "the report came first:\n{}",
        ingress.stderr()
    );
    let (status, body) =
        util::scrape::get(i_metrics, "/metrics").expect("a scrape while lingering");
    assert_eq!(status, 200, "{body}");
    let active = series("hop_connections_active", "hop=\"I\",role=\"ingress\"");
    assert_eq!(sample(&body, &active), 0.0, "the final figures, after the drain:\n{body}");
    assert!(
        try_sample(&body, &series("end_to_end_delay_seconds_count", "chain=\"I\",path=\"1\""))
            .is_some_and(|count| count >= 1.0),
        "{body}"
    );
    assert_eq!(unsafe { libc::kill(ingress.id() as i32, libc::SIGINT) }, 0);
    let status =
        ingress.wait_timeout(Duration::from_secs(10)).expect("a second signal ends the linger");
    assert_eq!(status.code(), Some(0), "{}", ingress.stderr());
}
