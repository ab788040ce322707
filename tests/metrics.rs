//! `--metrics`: a real Prometheus server scrapes a continuous source and a relay on a loopback
//! chain with a slowed link, and its PromQL answer for the link's median is the round trip the
//! delay element adds (and it has the relay's residence p99); and a scraper that connects and says nothing neither stops the probes
//! nor holds the endpoint past its timeout.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use util::scrape::{MARKER, get, metrics_addr_of, parse_metrics_word, sample};
use util::{MAIN_BIN, Proc, say_skipped, spawn_listening, spawn_until};

const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The link between B (hop 1) and Z (hop 2) gets this much each way.
const ONE_WAY_MS: u32 = 4;

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The first sample's value of an instant query, once Prometheus has one.
fn query(prometheus: SocketAddr, promql: &str) -> Option<f64> {
    let target = format!("/api/v1/query?query={}", percent_encode(promql));
    let (status, body) = get(prometheus, &target).ok()?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let value = json["data"]["result"][0]["value"][1].as_str()?.parse::<f64>().ok()?;
    value.is_finite().then_some(value)
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().unwrap()
}

/// A Prometheus server of its own (config and data in `dir`) scraping `targets` every second.
fn prometheus(dir: &Path, targets: &[(&str, SocketAddr)]) -> (Proc, SocketAddr) {
    let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    config.push_str("scrape_configs:\n");
    for (job, addr) in targets {
        config.push_str(&format!(
            "  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
        ));
    }
    let config_path = dir.join("prometheus.yml");
    std::fs::write(&config_path, config).expect("write the Prometheus config");
    let web = free_port();
    let args = [
        format!("--config.file={}", config_path.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={web}"),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Prometheus logs `msg="Server is ready to receive web requests."` when it serves.
    let (proc, _) = spawn_until(PROMETHEUS, &args, "Server is ready");
    (proc, web)
}

/// The p50 of subsegment `id` in the latest interval record of a `--jsonl` file, in seconds.
#[track_caller]
fn latest_interval_p50_s(jsonl: &Path, id: &str) -> f64 {
    let text = std::fs::read_to_string(jsonl).expect("the --jsonl file");
    let p50_ns = text
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["type"] == "interval")
        .find_map(|record| {
            let rows = record["subsegments"].as_array()?.clone();
            let row = rows.into_iter().find(|row| row["id"] == id)?;
            row["p50_ns"].as_u64().filter(|&ns| ns > 0)
        })
        .unwrap_or_else(|| panic!("no interval with {id} in:\n{text}"));
    p50_ns as f64 / 1e9
}

#[test]
fn prometheus_sees_the_slowed_links_round_trip_in_the_source_histogram() {
    let test = "prometheus_sees_the_slowed_links_round_trip_in_the_source_histogram";
    if !Path::new(PROMETHEUS).exists() {
        say_skipped(test, "needs /usr/bin/prometheus (Debian's prometheus; scripts/lab-deps.sh)");
        return;
    }
    // A → B → tcp-delay (4 ms each way) → Z: link 1-2 gains an 8 ms round trip.
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--name", "Z"]);
    let (delay, delay_addr) = util::delay(z_addr, ONE_WAY_MS);
    let delay_text = delay_addr.to_string();
    let relay_args = [
        "--listen",
        "127.0.0.1:0",
        "--forward-to",
        &delay_text,
        "--name",
        "B",
        "--metrics",
        "127.0.0.1:0",
    ];
    let (b, b_addr) = spawn_listening(MAIN_BIN, &relay_args);
    let b_metrics = metrics_addr_of(&b);
    let b_text = b_addr.to_string();
    // The source's own figures of the same link, per 1 s interval: the baseline Prometheus's
    // answer is checked against (on a busy machine the element overshoots its 4 ms).
    let jsonl = util::json_path();
    let jsonl_text = jsonl.to_str().expect("a UTF-8 temp path").to_string();
    let source_args = [
        "-f",
        &b_text,
        "-n",
        "A",
        "-c",
        "0",
        "-i",
        "5ms",
        "--metrics",
        "127.0.0.1:0",
        "--report-interval",
        "1s",
        "--jsonl",
        &jsonl_text,
    ];
    let (source, word) = spawn_until(MAIN_BIN, &source_args, MARKER);
    let source_metrics = parse_metrics_word(&word);

    let dir = std::env::temp_dir().join(format!("sts-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (prometheus, web) = prometheus(&dir, &[("source", source_metrics), ("relay", b_metrics)]);

    let name = "subsegment_tcp_speeds_subsegment_delay_seconds_bucket";
    let promql = format!("histogram_quantile(0.5, rate({name}{{subsegment=\"1-2\"}}[10s]))");
    let relayed = "sum(subsegment_tcp_speeds_hop_frames_total{hop=\"B\",direction=\"down\"})";
    // The relay's own residence going down, as the README's alerting example asks for it.
    let residence = "histogram_quantile(0.99, rate(\
        subsegment_tcp_speeds_hop_residence_seconds_bucket{hop=\"B\",direction=\"down\"}[10s]))";
    let deadline = Instant::now() + Duration::from_secs(30);
    let (median_s, frames, residence_p99_s) = loop {
        let answers = (query(web, &promql), query(web, relayed), query(web, residence));
        if let (Some(median_s), Some(frames), Some(residence_p99_s)) = answers
            && frames > 0.0
        {
            break (median_s, frames, residence_p99_s);
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus had not answered all of {promql}, {relayed} and {residence} within 30 s \
             ({answers:?}); its log:\n{}\nsource:\n{}",
            prometheus.stderr(),
            source.stderr()
        );
        thread::sleep(Duration::from_millis(500));
    };
    // histogram_quantile interpolates inside the bucket the median falls in (5 µs × 2^k
    // bounds), so its answer is right to within that bucket's width of the source's own p50
    // of the link over the same seconds; both are at least the injected round trip.
    let round_trip_s = 2.0 * f64::from(ONE_WAY_MS) / 1e3;
    let own_p50_s = latest_interval_p50_s(&jsonl, "1-2");
    let mut upper_s = 5e-6;
    while upper_s < own_p50_s {
        upper_s *= 2.0;
    }
    let width_s = upper_s / 2.0;
    eprintln!(
        "{test}: Prometheus answered {promql} = {median_s} s; the source's own p50 {own_p50_s} s \
         (round trip injected {round_trip_s} s); the relay passed {frames} frames down, its \
         residence p99 {residence_p99_s} s"
    );
    assert!(residence_p99_s > 0.0, "B's residence p99 by Prometheus: {residence_p99_s} s");
    assert!(own_p50_s >= round_trip_s, "the source's p50 {own_p50_s} s is below the injection");
    assert!(
        (median_s - own_p50_s).abs() <= width_s,
        "p50 of link 1-2 by Prometheus: {median_s} s, by the source {own_p50_s} s (bucket width {width_s} s)"
    );
    let _ = std::fs::remove_file(&jsonl);
    let up = query(web, "min(up)").expect("up has samples");
    assert_eq!(up, 1.0, "both targets are up");
    drop(delay);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_silent_scraper_neither_stops_the_probes_nor_holds_the_endpoint() {
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--name", "Z"]);
    let z_text = z_addr.to_string();
    let args = [
        "-f",
        &z_text,
        "-n",
        "A",
        "-c",
        "0",
        "-i",
        "5ms",
        "--report-interval",
        "200ms",
        "--metrics",
        "127.0.0.1:0",
    ];
    let (source, word) = spawn_until(MAIN_BIN, &args, MARKER);
    let metrics = parse_metrics_word(&word);
    let intervals = || source.stderr().matches(": interval ").count();

    // It connects and never sends a byte.
    let mut silent = TcpStream::connect(metrics).expect("connect to --metrics");
    silent.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let connected = Instant::now();
    let before = intervals();
    thread::sleep(Duration::from_millis(1500));
    let during = intervals() - before;
    assert!(
        during >= 5,
        "{during} interval records in 1.5 s with a silent scraper connected; stderr:\n{}",
        source.stderr()
    );
    // The server drops it once its 2 s are up, answering nothing.
    let mut byte = [0u8; 1];
    let read = silent.read(&mut byte);
    let held = connected.elapsed();
    assert!(matches!(read, Ok(0)), "the silent scraper read {read:?}");
    assert!(
        (Duration::from_millis(1900)..Duration::from_millis(4000)).contains(&held),
        "the silent scraper was dropped after {held:?}"
    );

    // The endpoint serves again, and knows its paths.
    let (status, body) = get(metrics, "/metrics").expect("scrape after the silent one");
    assert_eq!(status, 200, "{body}");
    let sent = body
        .lines()
        .find_map(|line| line.strip_prefix("subsegment_tcp_speeds_frames_sent_total{chain=\"A\"} "))
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no frames_sent_total in:\n{body}"));
    assert!(sent > 100, "{sent} frames sent");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert_eq!(get(metrics, "/").expect("GET /").0, 404);
    let mut malformed = TcpStream::connect(metrics).unwrap();
    malformed.write_all(b"HELLO\r\n\r\n").unwrap();
    let mut answer = String::new();
    malformed.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(intervals() > before + during, "the interval records still come");
}

/// When the run ends, its last figures reach `/metrics`: every answer (not only those up to the
/// last four-a-second snapshot) and the last report interval's SLA breach. The source runs in
/// this process (the library's `source::run`), so its metrics server still answers after the
/// loop is over. Its buckets are another layout than the default, and the encoding follows it.
#[test]
fn the_final_snapshot_has_every_answer_and_the_last_intervals_breach() {
    use subsegment_tcp_speeds::output::Writer;
    use subsegment_tcp_speeds::report::Presentation;
    use subsegment_tcp_speeds::report::metrics::BucketLayout;
    use subsegment_tcp_speeds::report::sla::SlaSpec;
    use subsegment_tcp_speeds::scrape;
    use subsegment_tcp_speeds::source::{self, Ending, Probe, SourceConfig};

    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "--name", "Z"]);
    let z_text = z_addr.to_string();
    let (_b, b_addr) =
        spawn_listening(MAIN_BIN, &["--listen", "127.0.0.1:0", "-f", &z_text, "--name", "B"]);
    let metrics = free_port();
    let publisher = scrape::start(metrics, Vec::new(), "A", None).expect("start --metrics");
    let layout = BucketLayout::new(100_000, 10.0, 4).unwrap();
    let config = SourceConfig {
        name: "A".to_string(),
        tags: Vec::new(),
        forward_to: (b_addr, b_addr.to_string()),
        block_size: 512,
        timeout: Duration::from_secs(10),
        window: Some(1),
        probe: Some(Probe { count: None, size: 64, interval: Duration::from_millis(5) }),
        busy_poll: false,
        // Loopback's round trip is some tens of µs: breached in every interval.
        slas: vec![SlaSpec::parse("end-to-end:p50<1us").unwrap()],
        // Shorter than one report interval: the only interval is the last one, closed as the
        // run ends, after the last four-a-second snapshot.
        duration: Some(Duration::from_millis(700)),
        report_interval: Some(Duration::from_secs(10)),
        presentation: Presentation::default(),
        kernel_info: false,
        kernel_stamps: subsegment_tcp_speeds::core::transmit::TxMode::Off,
        quickack: false,
        keep_history: false,
        metrics: Some((publisher, "A".to_string())),
        metrics_buckets: layout,
        live: None,
    };
    let mut writer = Writer::start(None, None, None).unwrap();
    let run = source::run(config, &mut writer).expect("the run");
    writer.finish().unwrap();
    assert_eq!(run.ending, Ending::Complete, "a continuous run ended by its --duration");
    let answered = run.sequencing.answered;
    assert!(answered > 50, "{answered} answered");

    let (status, body) = get(metrics, "/metrics").expect("scrape after the run");
    assert_eq!(status, 200, "{body}");
    let chain = "{chain=\"A\"}";
    let count = |name: &str| sample(&body, &format!("subsegment_tcp_speeds_{name}{chain}"));
    assert_eq!(count("frames_answered_total"), answered as f64, "{body}");
    assert_eq!(count("frames_sent_total"), run.sequencing.sent as f64, "{body}");
    assert_eq!(count("end_to_end_delay_seconds_count"), answered as f64, "{body}");
    let breaches = sample(
        &body,
        "subsegment_tcp_speeds_sla_breaches_total{chain=\"A\",sla=\"end-to-end:p50<1us\"}",
    );
    assert_eq!(breaches, 1.0, "the last (and only) interval's breach: {body}");
    // The layout asked for: 100 µs × 10^k, four of them, then +Inf.
    let bounds: Vec<&str> = body
        .lines()
        .filter(|line| line.starts_with("subsegment_tcp_speeds_end_to_end_delay_seconds_bucket"))
        .filter_map(|line| line.split("le=\"").nth(1)?.split('"').next())
        .collect();
    assert_eq!(bounds, ["0.0001", "0.001", "0.01", "0.1", "+Inf"], "{body}");
}

/// `--metrics` on every interface without `--allow` warns, as the hop's listener does; with
/// `--allow`, a scraper outside it is closed without an answer.
#[test]
fn metrics_on_every_interface_warns_and_allow_turns_other_scrapers_away() {
    let args = ["--listen", "127.0.0.1:0", "--name", "W", "--metrics", "*:0"];
    let (open, _) = spawn_listening(MAIN_BIN, &args);
    let warnings: Vec<String> =
        open.stderr().lines().filter(|line| line.contains("warning")).map(String::from).collect();
    assert_eq!(warnings.len(), 1, "{}", open.stderr());
    assert!(warnings[0].contains("metrics") && warnings[0].contains("--allow"), "{warnings:?}");

    let args =
        ["--listen", "127.0.0.1:0", "--name", "Q", "--metrics", "*:0", "--allow", "10.0.0.0/8"];
    let (guarded, _) = spawn_listening(MAIN_BIN, &args);
    assert!(!guarded.stderr().contains("warning"), "{}", guarded.stderr());
    let port = metrics_addr_of(&guarded).port();
    let (status, body) =
        get(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics").unwrap_or((0, String::new()));
    assert_eq!(status, 0, "a scraper outside --allow got an answer: {body}");
}
