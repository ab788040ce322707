//! Unmodified clients and servers through ingress → relay → egress (`-r`): curl and nginx,
//! redis-cli and redis-benchmark against redis-server, iperf3, sockperf, a server that talks
//! first, half-close; and the stdin source through a relay in front of `-r` with servers that
//! answer more, fewer or first. The third-party programs come from Debian
//! (`scripts/lab-deps.sh`, run by the README's test command); a test whose program is missing
//! says it was skipped.

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use util::{MAIN_BIN, Proc, parse_json_report, random_bytes, say_skipped};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);
const SCHEMA: &str = include_str!("../src/report/report.schema.json");

/// Validates `instance` against one of the report schema's `$defs`.
#[track_caller]
fn assert_valid(instance: &serde_json::Value, definition: &str) {
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
    let schema = serde_json::json!({
        "$schema": schema["$schema"],
        "$defs": schema["$defs"],
        "$ref": format!("#/$defs/{definition}"),
    });
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|error| error.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}\nin {instance:#}");
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A third-party server run for one test, killed (and reaped) when dropped: started directly,
/// never under a shell, so no process of it outlives the test.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` and waits until it accepts on 127.0.0.1:`port` (10 s at most); a server
/// that serves any number of clients takes the connection that tells as one of them.
#[track_caller]
fn serve(program: &str, args: &[&str], port: u16) -> Server {
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("spawn {program}: {error}"));
    let mut server = Server(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = server.0.try_wait().unwrap();
        assert!(exited.is_none(), "{program} {args:?} exited: {exited:?}");
        assert!(std::time::Instant::now() < deadline, "{program} never listened on {port}");
        thread::sleep(Duration::from_millis(20));
    }
    server
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A scratch directory of this test's own.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ssts-ingress-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// ingress I → relay B → egress E → `server`; the ingress writes its `--jsonl` to `jsonl`.
struct Chain {
    ingress: Proc,
    egress: Proc,
    relay: Proc,
    addr: SocketAddr,
    jsonl: PathBuf,
    /// The ingress's other `--jsonl` records (connections, intervals), after `finish`.
    records: Vec<serde_json::Value>,
}

impl Chain {
    fn to(server: SocketAddr, jsonl: PathBuf, ingress_extra: &[&str]) -> Chain {
        let server = server.to_string();
        let (egress, e_addr) =
            util::spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &server, "-r", "-n", "E"]);
        let e_addr = e_addr.to_string();
        let (relay, b_addr) =
            util::spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &e_addr, "-n", "B"]);
        let b_addr = b_addr.to_string();
        let jsonl_text = jsonl.to_str().unwrap().to_string();
        let mut args = vec![
            "-l",
            "127.0.0.1:0",
            "-f",
            &b_addr,
            "--ingress",
            "-n",
            "I",
            "--jsonl",
            &jsonl_text,
        ];
        args.extend_from_slice(ingress_extra);
        let (ingress, addr) = util::spawn_listening(MAIN_BIN, &args);
        Chain { ingress, egress, relay, addr, jsonl, records: Vec::new() }
    }

    fn port(&self) -> String {
        self.addr.port().to_string()
    }

    /// Stops the ingress (SIGINT: it drains, then reports); returns what it said.
    #[track_caller]
    fn stop(mut self) -> String {
        assert_eq!(unsafe { libc::kill(self.ingress.id() as i32, libc::SIGINT) }, 0);
        let status = self.ingress.wait_timeout(Duration::from_secs(20));
        assert!(status.is_some_and(|status| status.success()), "ingress: {status:?}");
        self.ingress.stderr()
    }

    /// Stops the ingress (SIGINT: it drains, then reports) and returns its summary per path;
    /// no hop may have closed a connection on a fault.
    #[track_caller]
    fn finish(&mut self) -> Vec<util::Report> {
        self.finish_allowing_resets(false)
    }

    /// As [`Chain::finish`]; with `resets`, a server that resets a connection (iperf3's data
    /// connection at the end of a test) may make the hops close it on a fault, as a proxy
    /// passes a reset on.
    #[track_caller]
    fn finish_allowing_resets(&mut self, resets: bool) -> Vec<util::Report> {
        assert_eq!(unsafe { libc::kill(self.ingress.id() as i32, libc::SIGINT) }, 0);
        let status = self.ingress.wait_timeout(Duration::from_secs(20));
        assert!(
            status.is_some_and(|status| status.success()),
            "ingress: {status:?}\n{}",
            self.ingress.stderr()
        );
        let text = std::fs::read_to_string(&self.jsonl).unwrap_or_default();
        let stderr = self.ingress.stderr();
        assert!(!text.is_empty(), "no summary from the ingress:\n{stderr}");
        assert!(!stderr.contains("bug:"), "{stderr}");
        for hop in [&self.relay, &self.egress] {
            let log = hop.stderr();
            assert!(
                resets || !log.contains("closed:"),
                "a hop closed a connection on a fault:\n{log}"
            );
        }
        self.records = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|record| record["type"] != "summary")
            .collect();
        text.lines()
            .filter(|line| line.contains(r#""type":"summary""#))
            .map(parse_json_report)
            .collect()
    }
}

/// The ingress's report of an application's traffic: every link and relay measured, the
/// path as built, receipts back for every frame (the client never lost the connection).
#[track_caller]
fn check_measured(report: &util::Report, min_frames: u64) {
    let roles: Vec<&str> = report.json["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hop| hop["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["ingress", "relay", "egress", "server"]);
    assert_eq!(report.labels(), ["I ⇄ B", "B ↓ (relay)", "B ↑ (relay)", "B ⇄ E", "E (echo)"]);
    for row in &report.rows {
        assert!(row.count >= min_frames, "{} has {} samples: {:?}", row.label, row.count, row);
        assert!(row.min_ns > 0.0, "{} has a zero minimum: {row:?}", row.label);
    }
    assert_eq!(report.json["parameters"]["input"], "application");
}

fn nginx(dir: &Path) -> (Server, SocketAddr) {
    let port = free_port();
    let dir_text = dir.to_str().unwrap();
    // One process (no master), so killing it ends nginx.
    let config = format!(
        "daemon off; master_process off; worker_processes 1; pid {dir_text}/nginx.pid;\n\
         error_log {dir_text}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; client_body_temp_path {dir_text}; proxy_temp_path {dir_text};\n\
           fastcgi_temp_path {dir_text}; uwsgi_temp_path {dir_text}; scgi_temp_path {dir_text};\n\
           keepalive_requests 1000;\n\
           server {{ listen 127.0.0.1:{port}; root {dir_text}/www; location / {{ }} }} }}\n"
    );
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let conf = format!("{dir_text}/nginx.conf");
    let server = serve("nginx", &["-e", "stderr", "-c", &conf, "-p", dir_text], port);
    (server, format!("127.0.0.1:{port}").parse().unwrap())
}

fn sha256(bytes: &[u8]) -> String {
    let mut child =
        Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let owned = bytes.to_vec();
    let writer = thread::spawn(move || stdin.write_all(&owned));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    String::from_utf8(output.stdout).unwrap().split_whitespace().next().unwrap().to_string()
}

#[test]
fn curl_gets_a_hundred_megabytes_intact_and_several_requests_on_one_connection() {
    if !have("nginx") || !have("curl") {
        return say_skipped("curl_gets_a_hundred_megabytes_intact", "nginx or curl not installed");
    }
    let dir = scratch("curl");
    let (_nginx, server) = nginx(&dir);
    let body = random_bytes(100 << 20, 7);
    std::fs::write(dir.join("www/big.bin"), &body).unwrap();
    std::fs::write(dir.join("www/small.txt"), "hello through the chain\n").unwrap();
    let mut chain = Chain::to(server, dir.join("ingress.jsonl"), &[]);
    let url = |file: &str| format!("http://127.0.0.1:{}/{file}", chain.port());

    let big =
        Command::new("curl").args(["-sS", "--max-time", "60", &url("big.bin")]).output().unwrap();
    assert!(big.status.success(), "curl: {}", String::from_utf8_lossy(&big.stderr));
    assert_eq!(big.stdout.len(), body.len());
    assert_eq!(sha256(&big.stdout), sha256(&body), "the body changed on its way");

    // Three requests on one connection: curl says it reused it, and the ingress saw one
    // client connection for them.
    let small = url("small.txt");
    let keep_alive = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "20", &small, &small, &small])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&keep_alive.stderr);
    assert!(keep_alive.status.success(), "curl: {said}");
    assert_eq!(String::from_utf8_lossy(&keep_alive.stdout), "hello through the chain\n".repeat(3));
    assert!(
        said.contains("Re-using existing connection") || said.contains("Reusing existing"),
        "{said}"
    );
    let reports = chain.finish();
    assert_eq!(reports.len(), 1, "one path");
    check_measured(&reports[0], 3);
    let summary = &reports[0].json;
    assert!(summary["frames"]["unsolicited_bytes"].as_u64().unwrap() > 100 << 20, "{summary}");
}

#[test]
fn redis_cli_and_redis_benchmark_get_every_reply_right() {
    if !have("redis-server") || !have("redis-benchmark") {
        return say_skipped(
            "redis_cli_and_redis_benchmark",
            "redis-server or redis-tools not installed",
        );
    }
    let port_number = free_port();
    let port = port_number.to_string();
    let redis_args = ["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
    let _redis = serve("redis-server", &redis_args, port_number);
    let dir = scratch("redis");
    let mut chain = Chain::to(
        format!("127.0.0.1:{port}").parse().unwrap(),
        dir.join("ingress.jsonl"),
        &["--report-interval", "200ms"],
    );
    let port = chain.port();
    let cli = |args: &[&str]| {
        let output = Command::new("redis-cli").args(["-p", &port]).args(args).output().unwrap();
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap().trim_end().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "greeting", "through the chain"]), "OK");
    assert_eq!(cli(&["GET", "greeting"]), "through the chain");
    assert_eq!(cli(&["INCRBY", "counter", "41"]), "41");
    assert_eq!(cli(&["INCR", "counter"]), "42");
    // A value bigger than any one read: redis answers only once all of it has come.
    let big = "x".repeat(100_000);
    assert_eq!(cli(&["SET", "big", &big]), "OK");
    assert_eq!(cli(&["STRLEN", "big"]), "100000");

    let benchmark = Command::new("redis-benchmark")
        .args(["-p", &port, "-t", "ping,set,get", "-n", "3000", "-c", "10", "-q"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&benchmark.stdout);
    assert!(benchmark.status.success(), "redis-benchmark: {said}");
    for test in ["PING_INLINE", "SET", "GET"] {
        assert!(
            said.contains(&format!("{test}: ")) && said.contains("requests per second"),
            "{said}"
        );
    }
    assert_eq!(cli(&["GET", "greeting"]), "through the chain", "the benchmark broke nothing");
    let reports = chain.finish();
    check_measured(&reports[0], 100);
    // One record per client connection (seven redis-cli runs, the benchmark's ten clients per
    // test at least), all ended in order, that add up to the summary's frames.
    let connections: Vec<_> =
        chain.records.iter().filter(|record| record["type"] == "connection").collect();
    assert!(connections.len() >= 7 + 10, "{} connection records", connections.len());
    let mut sent = 0;
    for record in &connections {
        assert_valid(record, "ingress_connection");
        assert_eq!(record["path_index"], 1, "{record}");
        assert!(record["closed"].is_null(), "{record}");
        sent += record["client_frames"].as_u64().unwrap() + record["probes"].as_u64().unwrap();
    }
    assert_eq!(
        reports[0].json["frames"]["sent"], sent,
        "the summary counts every connection's frames"
    );
    let intervals: Vec<_> =
        chain.records.iter().filter(|record| record["type"] == "interval").collect();
    assert!(!intervals.is_empty(), "no interval records");
    for interval in &intervals {
        assert_valid(interval, "interval");
    }
    let interval_answers: u64 =
        intervals.iter().map(|interval| interval["frames"]["answered"].as_u64().unwrap()).sum();
    assert!(interval_answers <= reports[0].json["frames"]["answered"].as_u64().unwrap());
    assert!(chain.ingress.stderr().contains("I: path 1: "), "the interval lines on stderr");
}

/// A server that speaks first (like SSH's banner), then answers only after the client has
/// ended its side: both directions end on their own, as over plain TCP.
#[test]
fn a_server_that_talks_first_and_answers_after_the_clients_half_close() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let served = thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        stream.write_all(b"SSH-2.0-banner-first\r\n").unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        stream.write_all(format!("you sent {} bytes\n", got.len()).as_bytes()).unwrap();
        got
    });
    let dir = scratch("banner");
    let mut chain = Chain::to(server, dir.join("ingress.jsonl"), &["--probe-interval", "1ms"]);
    let stream = TcpStream::connect(chain.addr).unwrap();
    stream.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut banner = String::new();
    reader.read_line(&mut banner).unwrap();
    assert_eq!(banner, "SSH-2.0-banner-first\r\n", "the banner came before the client spoke");
    let request = random_bytes(200_000, 3);
    (&stream).write_all(&request).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "you sent 200000 bytes\n", "answered after the half-close, then the end");
    assert_eq!(served.join().unwrap(), request);
    let reports = chain.finish();
    check_measured(&reports[0], 1);
}

#[test]
fn iperf3_runs_its_control_and_data_connections_through_the_chain() {
    if !have("iperf3") {
        return say_skipped("iperf3_runs_through_the_chain", "iperf3 not installed");
    }
    let port_number = free_port();
    let port = port_number.to_string();
    // Without -1: the connection that tells it listens would be its one test.
    let _server = serve("iperf3", &["-s", "-B", "127.0.0.1", "-p", &port], port_number);
    let dir = scratch("iperf3");
    let mut chain =
        Chain::to(format!("127.0.0.1:{port}").parse().unwrap(), dir.join("ingress.jsonl"), &[]);
    let client = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", &chain.port(), "-t", "1", "-J"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&client.stdout);
    assert!(client.status.success(), "iperf3: {said}");
    let result: serde_json::Value = serde_json::from_str(&said).unwrap();
    let received = result["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(received > 1 << 20, "iperf3 moved only {received} bytes: {said}");
    let reports = chain.finish_allowing_resets(true);
    check_measured(&reports[0], 2);
    assert!(reports[0].json["frames"]["sent"].as_u64().unwrap() > 2, "control and data");
}

#[test]
fn sockperf_ping_pong_over_tcp_through_the_chain() {
    if !have("sockperf") {
        return say_skipped("sockperf_ping_pong", "sockperf not installed");
    }
    let port_number = free_port();
    let port = port_number.to_string();
    let _server =
        serve("sockperf", &["server", "--tcp", "-i", "127.0.0.1", "-p", &port], port_number);
    let dir = scratch("sockperf");
    let mut chain =
        Chain::to(format!("127.0.0.1:{port}").parse().unwrap(), dir.join("ingress.jsonl"), &[]);
    let client = Command::new("sockperf")
        .args([
            "ping-pong",
            "--tcp",
            "-i",
            "127.0.0.1",
            "-p",
            &chain.port(),
            "-t",
            "1",
            "--msg-size",
            "64",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&client.stdout);
    assert!(client.status.success(), "sockperf: {said}");
    assert!(said.contains("Summary: Latency is"), "{said}");
    // sockperf's client ends its connection with a reset, which the chain passes on.
    let reports = chain.finish_allowing_resets(true);
    check_measured(&reports[0], 100);
}

/// How a plain server behind `-r` answers a 12-byte request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Three times the request.
    More,
    /// A banner on accept, then the echo.
    First,
    /// The echo, 300 ms late.
    Later,
    /// Five bytes of it, then the end of the connection.
    Fewer,
}

/// The issue's regression: the stdin source through a relay in front of `-r`, with servers
/// that answer more than they were sent, talk first, answer late, or answer less. The server's
/// own bytes reach stdout and the healthy link B ⇄ E is never blamed; a server that answers
/// less is named.
#[test]
fn a_relay_in_front_of_r_passes_up_what_the_server_sends_unasked() {
    for answer in [Answer::More, Answer::First, Answer::Later, Answer::Fewer] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let served = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            if answer == Answer::First {
                stream.write_all(b"hello first\n").unwrap();
            }
            let mut request = [0u8; 12];
            stream.read_exact(&mut request).unwrap();
            match answer {
                Answer::More => stream.write_all(&request.repeat(3)).unwrap(),
                Answer::First => stream.write_all(&request).unwrap(),
                Answer::Later => {
                    thread::sleep(Duration::from_millis(300));
                    stream.write_all(&request).unwrap();
                }
                Answer::Fewer => stream.write_all(&request[..5]).unwrap(),
            }
            let _ = stream.read(&mut request); // until the chain ends its side
        });
        let (_egress, e_addr) = util::spawn_listening(
            MAIN_BIN,
            &["-l", "127.0.0.1:0", "-f", &server.to_string(), "-r", "-n", "E"],
        );
        let (_relay, b_addr) = util::spawn_listening(
            MAIN_BIN,
            &["-l", "127.0.0.1:0", "-f", &e_addr.to_string(), "-n", "B"],
        );
        let json = util::json_path();
        let mut source = Command::new(MAIN_BIN)
            .args(["-f", &b_addr.to_string(), "-n", "A", "--json", json.to_str().unwrap()])
            .args(["-t", "3"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = source.stdin.take().unwrap();
        let mut stdout = source.stdout.take().unwrap();
        if answer == Answer::First {
            // The request goes only once the banner is out: the banner is the server's own.
            let mut banner = [0u8; 12];
            stdout.read_exact(&mut banner).unwrap();
            assert_eq!(&banner, b"hello first\n");
        }
        stdin.write_all(b"twelve bytes").unwrap();
        drop(stdin);
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        let output = source.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        served.join().unwrap();
        if answer == Answer::Fewer {
            assert_eq!(output.status.code(), Some(1), "{answer:?}: {stderr}");
            let text = std::fs::read_to_string(&json).unwrap();
            let report: serde_json::Value = serde_json::from_str(&text).unwrap();
            let ending = &report["ending"];
            assert_eq!(ending["subsegment"], "2-3", "E ⇄ server is blamed, not B ⇄ E: {stderr}");
            assert_eq!(ending["fault"], "closed_early", "{stderr}");
            let message = ending["message"].as_str().unwrap();
            assert!(message.contains("answered 5 of the 12 bytes"), "{message}");
            continue;
        }
        let report = util::read_json_report(&json, &stderr);
        let frames = &report.json["frames"];
        match answer {
            Answer::More => {
                assert_eq!(rest, b"twelve bytes".repeat(3), "{answer:?}: {stderr}");
                assert_eq!(frames["unsolicited_bytes"], 24, "{answer:?}");
            }
            Answer::First | Answer::Later => {
                assert_eq!(rest, b"twelve bytes", "{answer:?}: {stderr}");
                assert_eq!(frames["unsolicited_bytes"], (answer == Answer::First) as u64 * 12);
                let server_link = report.row(&format!("E ⇄ 127.0.0.1:{}", server.port()));
                let late_ns = if answer == Answer::Later { 300e6 } else { 0.0 };
                assert!(server_link.p50_ns >= late_ns, "{answer:?}: {server_link:?}");
            }
            Answer::Fewer => unreachable!("checked above"),
        }
        assert_eq!(output.status.code(), Some(0), "{answer:?}: {stderr}");
        assert_eq!(frames["answered"], 1, "{answer:?}: {stderr}");
    }
}

/// A client's reset reaches the server as a reset, and a server's reset the client: the
/// chain breaks the connection as it would break without it.
#[test]
fn resets_pass_through_both_ways() {
    for resetting_side in ["client", "server"] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let dir = scratch(&format!("reset-{resetting_side}"));
        let chain = Chain::to(server, dir.join("ingress.jsonl"), &[]);
        let client = TcpStream::connect(chain.addr).unwrap();
        client.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
        (&client).write_all(b"hello").unwrap();
        let (accepted, _) = listener.accept().unwrap();
        accepted.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
        let mut got = [0u8; 5];
        (&accepted).read_exact(&mut got).unwrap();
        let (resetting, other) = match resetting_side {
            "client" => (client, accepted),
            _ => (accepted, client),
        };
        socket2::SockRef::from(&resetting).set_linger(Some(Duration::ZERO)).unwrap();
        drop(resetting);
        let mut rest = Vec::new();
        let error = (&other).read_to_end(&mut rest).expect_err("a reset, not an end");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{resetting_side}: {error}");
        let ingress = chain.stop();
        assert!(ingress.contains("Connection reset"), "{resetting_side}:\n{ingress}");
    }
}
