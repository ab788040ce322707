//! Shared helpers for the integration tests, which run the real binaries on real sockets.
//!
//! This module owns process handling (spawn, learn the listening address from stderr, collect
//! output, kill on drop so a failed test leaves no orphans) and small fixtures: a plain TCP echo
//! server, a `tcp-delay` in front of an address, a tap that records what passes between two
//! hops, deterministic random payloads. It makes no
//! assertions about the protocol; that is each test file's business. Each test file uses a subset,
//! hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod frames;
pub mod scrape;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The main relay/source binary.
pub const MAIN_BIN: &str = env!("CARGO_BIN_EXE_subsegment-tcp-speeds");
/// The user-space link delay element (`src/bin/tcp-delay.rs`).
pub const DELAY_BIN: &str = env!("CARGO_BIN_EXE_tcp-delay");
/// The NFQUEUE packet delay element (`src/bin/nfq-delay.rs`).
#[allow(dead_code)] // Used by some test files only.
pub const NFQ_DELAY_BIN: &str = env!("CARGO_BIN_EXE_nfq-delay");

/// How long a spawned process may take to print its `listening on` line.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process whose stderr is collected in the background; killed when dropped.
pub struct Proc {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// Everything the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The exit status if the process ends within `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on child") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `bin` with `args` and waits (up to 10 s) for a stderr line containing
/// `listening on <SocketAddr>`; returns the process and that address. Stderr keeps being
/// collected by the returned `Proc` afterwards.
#[track_caller]
pub fn spawn_listening(bin: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let (proc, word) = spawn_until(bin, args, "listening on ");
    match word.parse::<SocketAddr>() {
        Ok(addr) => (proc, addr),
        Err(err) => {
            panic!("{bin}: cannot parse address {word:?}: {err}; stderr:\n{}", proc.stderr())
        }
    }
}

/// Spawns `bin` with `args` and waits (up to 10 s) for a stderr line containing `marker`;
/// returns the process and the word that follows the marker.
#[track_caller]
pub fn spawn_until(bin: &str, args: &[&str], marker: &str) -> (Proc, String) {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {bin}: {err}"));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (lines_tx, lines) = mpsc::channel();
    drain_lines(child.stderr.take().unwrap(), Arc::clone(&stderr), lines_tx);
    let proc = Proc { child, stderr };

    let deadline = Instant::now() + LISTEN_TIMEOUT;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let line: String = match lines.recv_timeout(remaining) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{bin} {args:?} printed no `{marker}` line within {LISTEN_TIMEOUT:?}; \
                 stderr so far:\n{}",
                proc.stderr()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "{bin} {args:?} closed stderr before printing `{marker}`; stderr:\n{}",
                proc.stderr()
            ),
        };
        if let Some((_, rest)) = line.split_once(marker) {
            let word = rest.split_whitespace().next().unwrap_or("").to_string();
            return (proc, word);
        }
    }
}

/// Appends each stderr line to `collected` and also offers it on `lines` (ignored once nobody
/// listens), until the pipe closes.
fn drain_lines(pipe: ChildStderr, collected: Arc<Mutex<String>>, lines: mpsc::Sender<String>) {
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|len| len > 0) {
            let text = String::from_utf8_lossy(&line).into_owned();
            collected.lock().unwrap().push_str(&text);
            let _ = lines.send(text);
            line.clear();
        }
    });
}

/// Says on the real stderr that `test` was skipped and why: the test harness swallows
/// `eprintln!` of passing tests, and a skip must be seen where it happens (CI logs included).
pub fn say_skipped(test: &str, why: &str) {
    let _ = writeln!(io::stderr(), "{test}: skipped: {why}");
}

/// Whether this machine can bind the IPv6 loopback (`[::1]`): containers and CI hosts may have
/// IPv6 switched off, and the IPv6 tests then say they were skipped instead of failing.
pub fn has_ipv6_loopback() -> bool {
    TcpListener::bind("[::1]:0").is_ok()
}

/// What a `tcp-delay` says it held its chunks, once both directions of its one connection
/// have ended: the p50 of each direction (arrival → written), in ns, waiting up to 20 s for
/// the two lines.
#[track_caller]
pub fn element_held_p50s_ns(element: &Proc) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stderr = element.stderr();
        let p50s: Vec<f64> = stderr
            .lines()
            .filter_map(|line| line.split(" held p50 ").nth(1))
            .filter_map(|rest| rest.split(" µs").next()?.parse::<f64>().ok())
            .map(|us| us * 1e3)
            .collect();
        if p50s.len() == 2 {
            return p50s;
        }
        assert!(Instant::now() < deadline, "the element did not say what it held:\n{stderr}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// A `tcp-delay` on 127.0.0.1:0 forwarding to `listen_to` with `delay_ms` each way.
#[track_caller]
pub fn delay(listen_to: SocketAddr, delay_ms: u32) -> (Proc, SocketAddr) {
    let (forward_to, delay_ms) = (listen_to.to_string(), delay_ms.to_string());
    spawn_listening(
        DELAY_BIN,
        &["--listen", "127.0.0.1:0", "--forward-to", &forward_to, "--delay-ms", &delay_ms],
    )
}

/// A plain TCP echo server on 127.0.0.1:0, standing in for an ordinary server behind the relays.
pub fn plain_echo_server() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
    let addr = listener.local_addr().unwrap();
    (addr, serve_echo(listener))
}

/// Echoes every connection accepted on `listener`, a thread each; on the client's EOF, echoes
/// what is left and then half-closes, so the client sees the end of its own stream.
pub fn serve_echo(listener: TcpListener) -> JoinHandle<()> {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let mut buf = [0; 64 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break,
                        Ok(len) if stream.write_all(&buf[..len]).is_ok() => {}
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        _ => return,
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    })
}

/// The bytes that went each way through a [`tap`].
#[derive(Debug)]
pub struct Tapped {
    /// From the peer that connected to the tap, towards `next`.
    pub down: Vec<u8>,
    /// From `next` back to that peer.
    pub up: Vec<u8>,
}

/// A transparent TCP forwarder on 127.0.0.1:0 for one connection to `next`, keeping a copy of
/// everything it passes each way: a test's window on the bytes between two hops (it stamps
/// nothing, so the chain counts it as part of the link). The handle returns once both
/// directions have ended.
pub fn tap(next: SocketAddr) -> (SocketAddr, JoinHandle<Tapped>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind tap");
    let addr = listener.local_addr().unwrap();
    let handle = thread::spawn(move || {
        let (client, _) = listener.accept().expect("accept at the tap");
        client.set_nodelay(true).unwrap();
        let server = connect(next);
        let copy = |mut from: TcpStream, mut to: TcpStream| {
            thread::spawn(move || {
                let mut seen = Vec::new();
                let mut buf = [0; 64 * 1024];
                loop {
                    match from.read(&mut buf) {
                        Ok(0) => break,
                        Ok(len) => {
                            seen.extend_from_slice(&buf[..len]);
                            if to.write_all(&buf[..len]).is_err() {
                                break;
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
                seen
            })
        };
        let down = copy(client.try_clone().unwrap(), server.try_clone().unwrap());
        let up = copy(server, client);
        Tapped { down: down.join().unwrap(), up: up.join().unwrap() }
    });
    (addr, handle)
}

/// `len` deterministic pseudo-random bytes (xorshift64*), so a failure reproduces.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    // xorshift has a fixed point at 0; any other state works.
    let mut state = if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed };
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What a run of the main binary as a source produced.
#[derive(Debug)]
pub struct SourceRun {
    /// `None` if it was killed for exceeding the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// The `--json` document the run wrote (each run gets one unless it asks for its own).
    pub json: Option<String>,
}

impl SourceRun {
    /// The run's report, from its JSON document; panics with stderr when there is none.
    #[track_caller]
    pub fn report(&self) -> Report {
        let text =
            self.json.as_deref().unwrap_or_else(|| panic!("no JSON report:\n{}", self.stderr));
        parse_json_report(text)
    }
}

/// Runs the main binary with `args`, feeding `input` on stdin (then closing it) and collecting
/// stdout and stderr concurrently, so no pipe can fill up and stall the child. Kills it after
/// `timeout`.
#[track_caller]
pub fn run_source(args: &[&str], input: &[u8], timeout: Duration) -> SourceRun {
    run_source_under(&[], args, input, timeout)
}

/// As [`run_source`], with the binary started through `wrapper` (e.g. `taskset -c 0`).
#[track_caller]
pub fn run_source_under(
    wrapper: &[&str],
    args: &[&str],
    input: &[u8],
    timeout: Duration,
) -> SourceRun {
    let (program, before) = match wrapper.split_first() {
        Some((program, rest)) => (*program, [rest, &[MAIN_BIN]].concat()),
        None => (MAIN_BIN, Vec::new()),
    };
    let own_json = !args.iter().any(|arg| arg.starts_with("--json"));
    let json_path = json_path();
    let json_args: Vec<&str> = match own_json {
        true => vec!["--json", json_path.to_str().expect("a UTF-8 temp path")],
        false => Vec::new(),
    };
    let mut child = Command::new(program)
        .args(before)
        .args(args)
        .args(&json_args)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("spawn {MAIN_BIN}: {err}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    // A broken pipe just means the child stopped reading; its exit status tells the story.
    let feeder = thread::spawn(move || drop(stdin.write_all(&input)));
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());

    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait on source") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let _ = feeder.join();
    let json = own_json.then(|| std::fs::read_to_string(&json_path).ok()).flatten();
    let _ = std::fs::remove_file(&json_path);
    SourceRun {
        status,
        stdout: stdout.join().unwrap(),
        stderr: String::from_utf8_lossy(&stderr.join().unwrap()).into_owned(),
        json,
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

/// Connects to `addr` with `TCP_NODELAY`, so small test writes go out at once.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|err| panic!("connect {addr}: {err}"));
    stream.set_nodelay(true).unwrap();
    stream
}

/// One row of the source's delay table, values in nanoseconds.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub label: String,
    pub count: u64,
    pub sum_ns: u64,
    pub min_ns: f64,
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub mean_ns: f64,
}

/// The parts of the source's report that tests check, read from its `--json` document.
#[derive(Debug, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
    pub sum_of_parts_mean_ns: f64,
    pub end_to_end: Row,
    /// `verdict: ` and the verdict's words, as the text report prints them.
    pub verdict: String,
    /// The label of the subsegment the verdict names, if it names one.
    pub verdict_label: Option<String>,
    /// The rounding of every figure: means are rounded to the nanosecond.
    pub rounding_ns: f64,
    /// The whole document.
    pub json: serde_json::Value,
}

impl Report {
    /// The subsegment the verdict names (for its median or for its floor), or `None` when it
    /// says none stands out.
    pub fn verdict_names(&self) -> Option<&str> {
        self.verdict_label.as_deref()
    }

    pub fn labels(&self) -> Vec<&str> {
        self.rows.iter().map(|row| row.label.as_str()).collect()
    }

    #[track_caller]
    pub fn row(&self, label: &str) -> &Row {
        self.rows
            .iter()
            .find(|row| row.label == label)
            .unwrap_or_else(|| panic!("no row '{label}' in {:#?}", self.rows))
    }
}

fn row_of(value: &serde_json::Value, label: &str) -> Row {
    let number = |field: &str| {
        value[field].as_u64().unwrap_or_else(|| panic!("no integer '{field}' in {value}"))
    };
    Row {
        id: value["id"].as_str().unwrap_or("end-to-end").to_string(),
        label: label.to_string(),
        count: number("count"),
        sum_ns: number("sum_ns"),
        min_ns: number("min_ns") as f64,
        p50_ns: number("p50_ns") as f64,
        p99_ns: number("p99_ns") as f64,
        mean_ns: number("mean_ns") as f64,
    }
}

/// Parses a `--json` document; panics with the text if it has no delay table, or if it names
/// a negative sample (a stamp before its bytes: always a bug).
#[track_caller]
pub fn parse_json_report(text: &str) -> Report {
    let json: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|error| panic!("not JSON ({error}):\n{text}"));
    let bugs = json["bugs"].as_array().map_or(0, Vec::len);
    assert_eq!(bugs, 0, "the report found negative samples:\n{text}");
    let rows: Vec<Row> = json["subsegments"]
        .as_array()
        .unwrap_or_else(|| panic!("no subsegments in:\n{text}"))
        .iter()
        .map(|row| row_of(row, row["label"].as_str().expect("a label")))
        .collect();
    assert!(json["end_to_end"].is_object(), "no delay table in:\n{text}");
    let end_to_end = row_of(&json["end_to_end"], "end-to-end");
    let sum_ns: u64 = rows.iter().map(|row| row.sum_ns).sum();
    let verdict = &json["verdict"];
    let verdict_label = verdict["subsegment"]
        .as_str()
        .map(|id| rows.iter().find(|row| row.id == id).expect("the verdict's row").label.clone());
    Report {
        sum_of_parts_mean_ns: sum_ns as f64 / end_to_end.count.max(1) as f64,
        verdict: format!(
            "verdict: {}",
            verdict["text"].as_str().unwrap_or_else(|| panic!("no verdict in:\n{text}"))
        ),
        verdict_label,
        end_to_end,
        rows,
        rounding_ns: 1.0,
        json,
    }
}

/// Reads the `--json` document a source wrote to `path`.
#[track_caller]
pub fn read_json_report(path: &std::path::Path, context: &str) -> Report {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("no report at {} ({error}):\n{context}", path.display()));
    parse_json_report(&text)
}

/// A fresh path for a source's `--json` document.
pub fn json_path() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let index = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("ssts-report-{}-{index}.json", std::process::id()))
}
