//! The multi-host lab, for real: hosts are network namespaces with their own addresses, kernels'
//! TCP stacks and sshd (`scripts/lab.sh`), the chain is deployed over ssh by
//! `scripts/deploy-chain.sh` with the real binaries, and a delay is injected on one link (netem
//! where the kernel has it, else the NFQUEUE element `nfq-delay`, else `tcp-delay`), or a loss.
//!
//! Needs root (network namespaces) and openssh-server (`scripts/lab-deps.sh`); without root each
//! test says on stderr that it was skipped and returns. One lab at a time: two would share the
//! machine's cores and disturb each other's timing.

mod util;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use util::{DELAY_BIN, MAIN_BIN, NFQ_DELAY_BIN, Report, read_json_report, say_skipped};

/// Probes with one frame in flight, so that queueing does not add to the delay being measured.
const PROBES: [&str; 8] = ["--count", "300", "--size", "64", "--window", "1", "--interval", "2ms"];
/// Injected on the chosen link, one way in each direction: its round trip gains twice that.
/// Large enough that the 5% tolerance (1 ms) covers what the user-space delay element and this
/// shared machine add (about 0.3 ms, see the accuracy table in the README) with a wide margin;
/// `scripts/accuracy.sh` shows the small delays.
const INJECTED_ONE_WAY_MS: f64 = 10.0;
/// How far any other link or hop may go (p50) while one link carries the injected delay.
const OTHER_ROW_BOUND_NS: f64 = 1e6;
/// Longest a deploy-chain run may take before the test kills it.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest the chain may take to vanish from every host once its deployer is gone.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

static ONE_LAB_AT_A_TIME: Mutex<()> = Mutex::new(());
static LABS_MADE: AtomicUsize = AtomicUsize::new(0);

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// The lock for a lab, or `None` (after saying so) when this machine cannot build one.
fn lab_or_skip(test: &str) -> Option<MutexGuard<'static, ()>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        say_skipped(test, "needs root for network namespaces");
        return None;
    }
    let netns = Command::new("ip").args(["netns", "list"]).output();
    if !netns.is_ok_and(|output| output.status.success()) {
        say_skipped(test, "needs root for network namespaces (`ip netns` is unavailable)");
        return None;
    }
    // Root with namespaces but no sshd is a broken set-up, not a reason to pass: fail loudly.
    assert!(
        Path::new("/usr/sbin/sshd").exists(),
        "{test}: /usr/sbin/sshd is missing: run scripts/lab-deps.sh (it installs openssh-server)"
    );
    Some(ONE_LAB_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

/// A lab of namespaces `h0..`, torn down when dropped (also when a test fails).
struct Lab {
    dir: PathBuf,
    prefix: String,
    hosts: usize,
    /// The deploy directories there were before this lab: those made since, which a failed test
    /// leaves when `down` kills the wrappers that would remove them, go with the lab.
    deploy_dirs_before: Vec<PathBuf>,
}

impl Lab {
    #[track_caller]
    fn up(hosts: usize) -> Lab {
        let serial = LABS_MADE.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let lab = Lab {
            dir: std::env::temp_dir().join(format!("ssts-test-lab-{pid}-{serial}")),
            prefix: format!("ssts-t{pid}x{serial}-"),
            hosts,
            deploy_dirs_before: deploy_dirs(),
        };
        let output = lab.script(&["up", &hosts.to_string(), "--prefix", &lab.prefix]);
        assert!(
            output.status.success(),
            "lab.sh up {hosts} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        lab
    }

    fn script(&self, args: &[&str]) -> Output {
        Command::new(scripts().join("lab.sh"))
            .arg("--dir")
            .arg(&self.dir)
            .args(args)
            .env("TCP_DELAY_BIN", DELAY_BIN)
            .env("NFQ_DELAY_BIN", NFQ_DELAY_BIN)
            .stdin(Stdio::null())
            .output()
            .expect("run scripts/lab.sh")
    }

    fn namespace(&self, host: usize) -> String {
        format!("{}h{host}", self.prefix)
    }

    /// Host h`host`'s own address, as the lab's ssh_config names it.
    fn address(&self, host: usize) -> String {
        let config = std::fs::read_to_string(self.dir.join("ssh_config")).expect("ssh_config");
        let mut lines = config.lines().skip_while(|line| *line != format!("Host h{host}"));
        lines
            .nth(1)
            .and_then(|line| line.trim().strip_prefix("HostName "))
            .unwrap_or_else(|| panic!("no HostName for h{host} in:\n{config}"))
            .to_string()
    }

    /// Delays link h`link` ⇄ h`link+1`; returns the address h`link` must send to (and the
    /// mechanism's description, which lab.sh prints on stderr).
    #[track_caller]
    fn impair(&self, link: usize, one_way_ms: f64) -> (String, String) {
        self.impair_with(link, &["--delay", &one_way_ms.to_string()])
    }

    /// Impairs link h`link` ⇄ h`link+1` with lab.sh `options`; as `impair`.
    #[track_caller]
    fn impair_with(&self, link: usize, options: &[&str]) -> (String, String) {
        let link_name = format!("h{link}-h{}", link + 1);
        let output = self.script(&[&["impair", link_name.as_str()], options].concat());
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "lab.sh impair {link_name}:\n{stderr}");
        let target = String::from_utf8_lossy(&output.stdout).trim().to_string();
        (target, stderr)
    }

    #[track_caller]
    fn clear(&self, link: usize) {
        let output = self.script(&["clear", &format!("h{link}-h{}", link + 1)]);
        assert!(output.status.success(), "lab.sh clear: {output:?}");
    }

    /// The chain's hosts: h1..h(N-1) (h0 runs the source).
    fn hops(&self) -> Vec<String> {
        (1..self.hosts).map(|host| format!("h{host}")).collect()
    }

    /// Host h`host`'s IPv6 address (ssh_config's `hK.v6`), or `None` when the lab has none
    /// (the machine has IPv6 switched off).
    fn address6(&self, host: usize) -> Option<String> {
        let config = std::fs::read_to_string(self.dir.join("ssh_config")).expect("ssh_config");
        let mut lines = config.lines().skip_while(|line| *line != format!("Host h{host}.v6"));
        Some(lines.nth(1)?.trim().strip_prefix("HostName ")?.to_string())
    }

    /// Where the source of the latest deploy writes its `--json` report.
    fn report_path(&self) -> PathBuf {
        self.dir.join("report.json")
    }

    /// The latest deploy's report; `stderr` is the deploy's, for the message.
    #[track_caller]
    fn report(&self, stderr: &str) -> Report {
        read_json_report(&self.report_path(), stderr)
    }

    /// `deploy-chain.sh` run inside h0 (the source host) over the lab's ssh onto `hops`.
    fn deploy_command(&self, options: &[&str], hops: &[String], source: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace(0)])
            .arg(scripts().join("deploy-chain.sh"))
            .arg("-F")
            .arg(self.dir.join("ssh_config"))
            .args(["--bin", MAIN_BIN, "--source-name", "h0"])
            .args(options)
            .args(hops)
            .arg("--")
            .args(source)
            .arg("--json")
            .arg(self.report_path());
        // A report left by an earlier deploy must not pass for this one's.
        let _ = std::fs::remove_file(self.report_path());
        // The tests send the deployer SIGINT as Ctrl-C would. A shell started with SIGINT
        // ignored cannot trap it, and a test run started in the background of a script inherits
        // it ignored (non-interactive shells ignore SIGINT and SIGQUIT for background jobs): then
        // every Ctrl-C test hung for its 90 s. The deployer starts with both at their defaults,
        // as in a terminal.
        // SAFETY: signal(2) is async-signal-safe, and the closure does nothing else.
        unsafe {
            command.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGQUIT, libc::SIG_DFL);
                Ok(())
            });
        }
        command
            // Its local scratch directory then lives in the lab's, which `down` removes even
            // after a deployer killed outright.
            .env("TMPDIR", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// Every process in the lab's namespaces but the sshds, as "hK: pid comm".
    fn leftovers(&self) -> Vec<String> {
        let mut found = Vec::new();
        for host in 0..self.hosts {
            let output = Command::new("ip")
                .args(["netns", "pids", &self.namespace(host)])
                .output()
                .expect("ip netns pids");
            for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let comm = comm.trim();
                if !comm.is_empty() && comm != "sshd" {
                    found.push(format!("h{host}: {pid} {comm}"));
                }
            }
        }
        found
    }

    /// Polls until nothing but the sshds runs in the lab; panics with what is left after
    /// `CLEANUP_TIMEOUT`.
    #[track_caller]
    fn assert_no_leftovers(&self, context: &str) {
        let deadline = Instant::now() + CLEANUP_TIMEOUT;
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{context}: still running in the lab after {CLEANUP_TIMEOUT:?}: {left:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let output = self.script(&["down", "--prefix", &self.prefix]);
        if !output.status.success() {
            eprintln!("lab.sh down failed: {}", String::from_utf8_lossy(&output.stderr));
        }
        for dir in new_deploy_dirs(&self.deploy_dirs_before) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A running deploy-chain whose stderr is collected line by line.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(mut command: Command) -> Running {
        let mut child = command.spawn().expect("spawn deploy-chain.sh");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sender, lines) = mpsc::channel();
        let (pipe, collected) = (child.stderr.take().unwrap(), Arc::clone(&stderr));
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                collected.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = sender.send(line);
            }
        });
        Running { child, stderr, lines }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) for a stderr line containing `text`.
    #[track_caller]
    fn wait_for_line(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(_) => panic!("no line with {text:?} within {timeout:?}:\n{}", self.stderr()),
            }
        }
    }

    /// The exit status, killing the run if it exceeds `timeout`.
    #[track_caller]
    fn finish(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("deploy-chain ran over {timeout:?}:\n{}", self.stderr());
            }
            thread::sleep(Duration::from_millis(10));
        };
        // Let the collector catch up with what was written before the exit (it stops at EOF,
        // which a killed deployer's orphans may delay: hence a quiet period, not a join).
        while self.lines.recv_timeout(Duration::from_millis(200)).is_ok() {}
        (status, self.stderr())
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory preconditions; the pid is our own child, not yet reaped.
        let result = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(result, 0, "kill({}, {signal})", self.child.id());
    }
}

/// Deploys a chain over the lab (with deploy-chain `options`) whose source probes far longer than
/// any test runs, and waits until its frames flow.
#[track_caller]
fn start_endless_probes(lab: &Lab, options: &[&str]) -> Running {
    let long_run = ["--count", "1000000", "--size", "64", "--window", "1", "--interval", "1ms"];
    let run = Running::spawn(lab.deploy_command(options, &lab.hops(), &long_run));
    run.wait_for_line("deploy-chain: chain up", Duration::from_secs(30));
    wait_for_source_connection(lab, &run);
    run
}

/// A rate limit on h2 ⇄ h3 in bulk mode: the verdict names that link, and the kernel shows the
/// queue in front of it on the sender's side, not a slow wire; probes one at a time then see
/// a small wire delay on the same link.
#[test]
fn a_rate_limited_link_is_named_with_its_sender_queue_not_a_slow_wire() {
    let Some(_lock) = lab_or_skip("a_rate_limited_link_is_named_with_its_sender_queue") else {
        return;
    };
    let lab = Lab::up(4);
    let (target, lab_said) = lab.impair_with(2, &["--rate", "100"]);
    let forward = format!("2={target}");
    let bulk = Running::spawn(lab.deploy_command(
        &["--forward", &forward, "--bytes", "20000000"],
        &lab.hops(),
        &["--kernel-stamps", "all"],
    ));
    let (status, stderr) = bulk.finish(RUN_TIMEOUT);
    assert!(status.success(), "deploy-chain --bytes failed ({status}):\n{stderr}");
    let report = lab.report(&stderr);
    let kernels: Vec<String> = ["0-1", "1-2", "2-3"]
        .iter()
        .map(|id| format!("{id}: {}", kernel_of(&report, id)))
        .collect();
    let context = format!("{}:\n{stderr}\n{}", lab_said.trim(), kernels.join("\n"));
    assert_eq!(report.verdict_names(), Some("h2 ⇄ h3"), "{context}");
    let kernel = kernel_of(&report, "2-3");
    let queue_ns = kernel["split"]["sender_queue_ns"].as_u64().unwrap_or(0);
    let wire_ns = kernel["split"]["wire_ns"].as_u64().unwrap_or(u64::MAX);
    assert!(queue_ns > 10 * wire_ns, "queue {queue_ns} ns, wire {wire_ns} ns: {kernel:#}");
    assert_eq!(report.json["verdict"]["kind"], "bottleneck_link", "{context}");
    let _ = writeln!(std::io::stderr(), "100 Mbit/s on h2 ⇄ h3, bulk: {}", report.verdict);
    assert!(report.verdict.contains("unsent in that hop's send buffer"), "{context}");
    let probes = Running::spawn(lab.deploy_command(&["--forward", &forward], &lab.hops(), &PROBES));
    let (status, stderr) = probes.finish(RUN_TIMEOUT);
    lab.clear(2);
    assert!(status.success(), "probes failed ({status}):\n{stderr}");
    let probed = lab.report(&stderr);
    let min_rtt = kernel_of(&probed, "2-3")["min_rtt_ns"].as_u64().unwrap_or(u64::MAX);
    assert!(min_rtt < 1_000_000, "one at a time, h2 ⇄ h3's wire is fast: {min_rtt} ns");
    let _ = writeln!(
        std::io::stderr(),
        "100 Mbit/s on h2 ⇄ h3, bulk: sender queue {:.2} ms, wire {:.1} µs; probes: min RTT {:.1} µs",
        queue_ns as f64 / 1e6,
        wire_ns as f64 / 1e3,
        min_rtt as f64 / 1e3
    );
    lab.assert_no_leftovers("after the rate-limited runs");
}

/// A link's `kernel` object in a report.
#[track_caller]
fn kernel_of<'a>(report: &'a Report, id: &str) -> &'a serde_json::Value {
    let rows = report.json["subsegments"].as_array().expect("subsegments");
    let row = rows.iter().find(|row| row["id"] == id).unwrap_or_else(|| panic!("no {id}"));
    &row["kernel"]
}

/// Polls (bounded) until the source in h0 has a connection established to the first hop.
#[track_caller]
fn wait_for_source_connection(lab: &Lab, run: &Running) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = Command::new("ip")
            .args(["netns", "exec", &lab.namespace(0)])
            .args(["ss", "-Htn", "state", "established", "( dport = :9000 )"])
            .output()
            .expect("ss");
        if !String::from_utf8_lossy(&output.stdout).trim().is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "the source never connected:\n{}", run.stderr());
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the source's connection to the first hop has received at least `bytes` (the
/// path's answer and some probes' answers), as `ss -i` counts them.
fn wait_for_source_bytes_received(lab: &Lab, run: &Running, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new("ip")
            .args(["netns", "exec", &lab.namespace(0)])
            .args(["ss", "-Htni", "state", "established", "( dport = :9000 )"])
            .output()
            .expect("ss");
        let text = String::from_utf8_lossy(&output.stdout);
        let received = text
            .split_whitespace()
            .find_map(|field| field.strip_prefix("bytes_received:"))
            .and_then(|count| count.parse::<u64>().ok())
            .unwrap_or(0);
        if received >= bytes {
            return;
        }
        assert!(Instant::now() < deadline, "only {received} B came back:\n{}", run.stderr());
        thread::sleep(Duration::from_millis(20));
    }
}

/// Which element lab.sh says it used.
fn mechanism_name(lab_stderr: &str) -> &'static str {
    if lab_stderr.contains("user-space delay element tcp-delay") {
        "tcp-delay"
    } else if lab_stderr.contains("nfq-delay") {
        "nfq-delay"
    } else {
        "netem"
    }
}

/// Output of `cmd` run inside h`host`'s namespace, as text (stdout, then stderr).
fn in_host(lab: &Lab, host: usize, cmd: &[&str]) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", &lab.namespace(host)])
        .args(cmd)
        .output()
        .unwrap_or_else(|err| panic!("ip netns exec {cmd:?}: {err}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The kernel's TcpRetransSegs of h`host` (its namespace's own TCP counters, via nstat).
fn retransmitted_segments(lab: &Lab, host: usize) -> u64 {
    let text = in_host(lab, host, &["nstat", "-az", "TcpRetransSegs"]);
    text.lines()
        .find_map(|line| line.strip_prefix("TcpRetransSegs"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no TcpRetransSegs from nstat in h{host}:\n{text}"))
}

/// The chain's TCP connections in h`host` (port 9000 at one end), each as "local peer" and its
/// total retransmissions from `ss -ti` (the kernel's per-socket count; ss omits it at zero).
fn chain_sockets_retransmissions(lab: &Lab, host: usize) -> Vec<(String, u64)> {
    let text = in_host(
        lab,
        host,
        &["ss", "-Htin", "state", "established", "( sport = :9000 or dport = :9000 )"],
    );
    let mut sockets = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(ends) = words.get(2..4).map(|ends| ends.join(" ")) else { continue };
        // The socket's details are on the next, indented line.
        let details = lines.next_if(|next| next.starts_with(char::is_whitespace)).unwrap_or("");
        let total = details
            .split_whitespace()
            .find_map(|word| word.strip_prefix("retrans:"))
            .and_then(|counts| counts.split('/').nth(1))
            .and_then(|total| total.parse().ok())
            .unwrap_or(0);
        sockets.push((ends, total));
    }
    sockets
}

/// Every nft rule and tc qdisc that an impairment leaves behind in h`host`, as text: empty when
/// nothing but the defaults is there.
fn impairment_leftovers(lab: &Lab, host: usize) -> Vec<String> {
    let mut found: Vec<String> = in_host(lab, host, &["nft", "list", "ruleset"])
        .lines()
        .filter(|line| ["queue", "numgen", "ssts_loss"].iter().any(|word| line.contains(word)))
        .map(|line| format!("h{host} nft: {}", line.trim()))
        .collect();
    found.extend(
        in_host(lab, host, &["tc", "qdisc", "show"])
            .lines()
            .filter(|line| ["netem", "tbf"].iter().any(|kind| line.contains(kind)))
            .map(|line| format!("h{host} tc: {line}")),
    );
    found
}

/// TSO, GSO and GRO of device `dev` of h`host`, as ethtool prints them.
fn offloads(lab: &Lab, host: usize, dev: &str) -> Vec<String> {
    in_host(lab, host, &["ethtool", "-k", dev])
        .lines()
        .filter(|line| {
            [
                "tcp-segmentation-offload:",
                "generic-segmentation-offload:",
                "generic-receive-offload:",
            ]
            .iter()
            .any(|feature| line.starts_with(feature))
        })
        .map(str::to_string)
        .collect()
}

/// 3% loss on h1 ⇄ h2 only, in a 4-host line: a chain run through it still delivers every
/// probe, TcpRetransSegs rises on h1 and h2, and while a run goes on, the link's own sockets show
/// retransmissions (the kernel's per-socket count) while the chain's other links show none.
#[test]
fn a_lossy_link_delivers_everything_and_its_retransmissions_show_on_it_alone() {
    let test = "a_lossy_link_delivers_everything_and_its_retransmissions_show_on_it_alone";
    let Some(_lock) = lab_or_skip(test) else {
        return;
    };
    let lab = Lab::up(4);
    let (target, lab_said) = lab.impair_with(1, &["--loss", "3"]);
    assert!(lab_said.contains("loss 3 % both ways"), "{lab_said}");
    let before: Vec<u64> = (0..4).map(|host| retransmitted_segments(&lab, host)).collect();
    let forward = format!("1={target}");
    let run = Running::spawn(lab.deploy_command(&["--forward", &forward], &lab.hops(), &PROBES));
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    assert!(status.success(), "deploy-chain through a lossy link failed ({status}):\n{stderr}");
    let report = lab.report(&stderr);
    assert_eq!(report.end_to_end.count, 300, "{stderr}");
    assert_eq!(report.json["frames"]["missing"], 0, "{stderr}");
    // The report's own kernel evidence: h1 ⇄ h2 retransmits, the others next to none (a
    // tail-loss probe after a stall can happen anywhere: at most a few), and the verdict
    // points at it by its retransmissions, with the p99 they cost.
    let retransmitted = |id: &str| kernel_of(&report, id)["retrans"].as_u64().unwrap_or(0);
    let lossy = retransmitted("1-2");
    assert!(lossy >= 3, "h1 ⇄ h2 retransmitted {lossy}:\n{stderr}");
    for other in ["0-1", "2-3"] {
        let count = retransmitted(other);
        assert!(count <= 2 && 4 * count <= lossy, "{other}: {count} against {lossy}:\n{stderr}");
    }
    let verdict = report.verdict.clone();
    let _ = writeln!(std::io::stderr(), "3% loss on h1 ⇄ h2: {verdict}");
    assert!(
        verdict.contains(&format!("h1 ⇄ h2 retransmit {lossy} segments"))
            || (report.verdict_names() == Some("h1 ⇄ h2") && verdict.contains("retransmitted")),
        "the verdict does not cite the retransmissions: {verdict}"
    );
    let after: Vec<u64> = (0..4).map(|host| retransmitted_segments(&lab, host)).collect();
    // The link's two hosts retransmitted between them (which of the two, depends on which
    // packets the 3% hit: h2 sends only the answers, 300 small segments).
    let link_hosts = after[1] + after[2] - before[1] - before[2];
    assert!(link_hosts > 0, "h1 + h2 TcpRetransSegs {before:?} -> {after:?}");

    // Per socket, while probes flow: only h1 ⇄ h2's own connection retransmits. (Per host, h0
    // and h3 retransmit too: the deploy's ssh sessions to h2 and h3 cross the lossy link.)
    let run = start_endless_probes(&lab, &["--forward", &forward]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let link_retransmissions = || -> u64 {
        let h1 = chain_sockets_retransmissions(&lab, 1);
        let to_h2 = lab.address(2);
        let h1_to_h2 = h1.iter().filter(|(ends, _)| ends.contains(&format!("{to_h2}:9000")));
        let h2_from_h1 = chain_sockets_retransmissions(&lab, 2)
            .into_iter()
            .filter(|(ends, _)| ends.contains(&lab.address(1)));
        h1_to_h2.map(|(_, n)| n).sum::<u64>() + h2_from_h1.map(|(_, n)| n).sum::<u64>()
    };
    while link_retransmissions() == 0 {
        assert!(
            Instant::now() < deadline,
            "no retransmission on h1 ⇄ h2 in 30 s:\n{}",
            run.stderr()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let link_total = link_retransmissions();
    let (h0, h1, h2, h3) = (lab.address(0), lab.address(1), lab.address(2), lab.address(3));
    let mut elsewhere = Vec::new();
    for host in 0..4 {
        for (ends, total) in chain_sockets_retransmissions(&lab, host) {
            let on_the_lossy_link = (host == 1 && ends.contains(&format!("{h2}:9000")))
                || (host == 2 && ends.contains(&h1) && !ends.contains(&h3));
            if !on_the_lossy_link {
                elsewhere.push((host, ends, total));
            }
        }
    }
    assert!(elsewhere.len() >= 3, "the chain's other sockets: {elsewhere:?} (h0 {h0})");
    assert!(
        elsewhere.iter().all(|(_, _, total)| *total == 0),
        "retransmissions off the lossy link: {elsewhere:?}"
    );
    run.signal(libc::SIGINT);
    let (_, stderr) = run.finish(RUN_TIMEOUT);
    lab.clear(1);
    let _ = writeln!(
        std::io::stderr(),
        "3% loss on h1 ⇄ h2: TcpRetransSegs {before:?} -> {after:?} over 300 probes; \
         {link_total} retransmissions on the link's sockets, none on {} others",
        elsewhere.len()
    );
    lab.report(&stderr);
    lab.assert_no_leftovers("after the lossy runs");
}

/// The NFQUEUE element on one link, D ms each way: the verdict names that link and its p50 is
/// within max(5%, 200 µs) of 2·D.
#[test]
fn an_nfqueue_delay_is_named_and_measured() {
    let Some(_lock) = lab_or_skip("an_nfqueue_delay_is_named_and_measured") else {
        return;
    };
    let lab = Lab::up(3);
    let one_way_ms: f64 = 5.0;
    let (target, lab_said) =
        lab.impair_with(1, &["--delay", &one_way_ms.to_string(), "--mechanism", "nfqueue"]);
    assert_eq!(mechanism_name(&lab_said), "nfq-delay", "{lab_said}");
    assert_eq!(target, format!("{}:9000", lab.address(2)), "the link stays end to end");
    let forward = format!("1={target}");
    let run = Running::spawn(lab.deploy_command(&["--forward", &forward], &lab.hops(), &PROBES));
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    lab.clear(1);
    assert!(status.success(), "deploy-chain failed ({status}):\n{stderr}");
    let report = lab.report(&stderr);
    assert_eq!(report.verdict_names(), Some("h1 ⇄ h2"), "{stderr}");
    let injected_ns = 2.0 * one_way_ms * 1e6;
    let tolerance_ns = (0.05 * injected_ns).max(200e3);
    let measured_ns = report.row("h1 ⇄ h2").p50_ns;
    assert!(
        (measured_ns - injected_ns).abs() <= tolerance_ns + report.rounding_ns,
        "h1 ⇄ h2 p50 {measured_ns} ns, injected {injected_ns} ns ± {tolerance_ns} ns:\n{stderr}"
    );
    assert_eq!(report.end_to_end.count, 300, "{stderr}");
    // The kernel saw the delay too, on that link only: its min RTT rose by the injected round
    // trip (plus the element's own cost, measured at about 52 µs), the others stayed put, and
    // the application-level p50 agrees with it within max(2%, 50 µs) plus that cost.
    let min_rtt = |id: &str| kernel_of(&report, id)["min_rtt_ns"].as_u64().unwrap_or(0) as f64;
    let element_cost_ns = 2.0 * 60e3;
    assert!(
        (min_rtt("1-2") - injected_ns).abs() <= (0.02 * injected_ns).max(50e3) + element_cost_ns,
        "h1 ⇄ h2 kernel min RTT {} ns for {injected_ns} ns injected:\n{stderr}",
        min_rtt("1-2")
    );
    assert!(min_rtt("0-1") < 1e6, "h0 ⇄ h1 min RTT {} ns:\n{stderr}", min_rtt("0-1"));
    // The lab's routes have `quickack 1`: h0 acknowledges each answer at once, so h1's srtt
    // for its answers is the wire's, not the 2 ms until the next probe carries the ACK.
    let far_srtt = kernel_of(&report, "0-1")["far"]["rtt_ns"].as_u64().unwrap_or(u64::MAX);
    assert!(far_srtt < 1_000_000, "h1's srtt towards h0 {far_srtt} ns:\n{stderr}");
    let agreement_ns = (0.02 * measured_ns).max(50e3) + element_cost_ns;
    assert!(
        (measured_ns - min_rtt("1-2")).abs() <= agreement_ns,
        "application p50 {measured_ns} ns against the kernel's min RTT {} ns:\n{stderr}",
        min_rtt("1-2")
    );
    let element_log =
        std::fs::read_to_string(lab.dir.join("elements/h1-h2.log")).unwrap_or_default();
    assert_eq!(element_log.matches(" held p50 ").count(), 2, "one summary per end:\n{element_log}");
    assert!(
        !element_log.contains("dropped 1") && element_log.contains("dropped 0"),
        "{element_log}"
    );
    let _ = writeln!(
        std::io::stderr(),
        "nfq-delay {one_way_ms} ms each way on h1 ⇄ h2: measured p50 {:.1} µs for {:.1} µs",
        measured_ns / 1e3,
        injected_ns / 1e3
    );
    lab.assert_no_leftovers("after the nfqueue run");
}

/// `lab.sh clear` takes away all an impairment added: the loss rules, the NFQUEUE rules and
/// both elements, the qdiscs, and the offloads go back to what they were.
#[test]
fn clear_removes_the_loss_and_the_element() {
    let Some(_lock) = lab_or_skip("clear_removes_the_loss_and_the_element") else {
        return;
    };
    let lab = Lab::up(3);
    let offloads_before = (offloads(&lab, 1, "to-h2"), offloads(&lab, 2, "to-h1"));
    let options = ["--delay", "1", "--loss", "0.5", "--rate", "100", "--mechanism", "nfqueue"];
    let (_, lab_said) = lab.impair_with(1, &options);
    let elements: Vec<String> =
        lab.leftovers().into_iter().filter(|p| p.ends_with(" nfq-delay")).collect();
    assert_eq!(elements.len(), 2, "one element at each end: {:?}\n{lab_said}", lab.leftovers());
    assert!(
        elements.iter().any(|p| p.starts_with("h1:"))
            && elements.iter().any(|p| p.starts_with("h2:"))
    );
    let placed: Vec<String> = (0..3).flat_map(|host| impairment_leftovers(&lab, host)).collect();
    for expected in ["h2 nft: iifname \"to-h1\" numgen", "h2 nft: oifname \"to-h1\" numgen"] {
        assert!(placed.iter().any(|line| line.starts_with(expected)), "{expected:?} in {placed:?}");
    }
    for (host, queue) in [(2, "queue num 1001"), (1, "queue num 1002")] {
        let prefix = format!("h{host} nft:");
        assert!(
            placed.iter().any(|line| line.starts_with(&prefix) && line.contains(queue)),
            "h{host} {queue:?} in {placed:?}"
        );
    }
    assert!(
        placed.iter().any(|line| line.starts_with("h1 tc:") && line.contains("tbf")),
        "{placed:?}"
    );
    assert!(offloads(&lab, 2, "to-h1").iter().all(|line| line.ends_with(": off")));

    lab.clear(1);
    let left: Vec<String> = (0..3).flat_map(|host| impairment_leftovers(&lab, host)).collect();
    assert!(left.is_empty(), "left after clear: {left:?}");
    assert_eq!(lab.leftovers(), Vec::<String>::new(), "processes left after clear");
    assert_eq!((offloads(&lab, 1, "to-h2"), offloads(&lab, 2, "to-h1")), offloads_before);
    // And the link works again, undelayed and lossless, straight away.
    let run = Running::spawn(lab.deploy_command(&[], &lab.hops(), &PROBES));
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    assert!(status.success(), "deploy-chain after clear failed ({status}):\n{stderr}");
    assert!(lab.report(&stderr).row("h1 ⇄ h2").p50_ns < OTHER_ROW_BOUND_NS, "{stderr}");
}

#[track_caller]
fn assert_parts_add_up(report: &Report, stderr: &str) {
    let slack_ns = report.rounding_ns * (report.rows.len() + 1) as f64;
    let difference_ns = (report.sum_of_parts_mean_ns - report.end_to_end.mean_ns).abs();
    assert!(
        difference_ns <= slack_ns,
        "sum of subsegments {} ns vs end-to-end mean {} ns (slack {slack_ns} ns):\n{stderr}",
        report.sum_of_parts_mean_ns,
        report.end_to_end.mean_ns
    );
}

/// For each link position in turn: delay it, deploy over ssh, and check the report names it,
/// measures it, leaves the rest small, and adds up.
#[test]
fn an_injected_link_delay_is_named_and_measured() {
    let Some(_lock) = lab_or_skip("an_injected_link_delay_is_named_and_measured") else {
        return;
    };
    let started = Instant::now();
    let lab = Lab::up(4);
    let injected_round_trip_ns = 2.0 * INJECTED_ONE_WAY_MS * 1e6;
    let tolerance_ns = (0.05 * injected_round_trip_ns).max(200e3);
    for link in 0..lab.hosts - 1 {
        let label = format!("h{link} ⇄ h{}", link + 1);
        let (target, mechanism) = lab.impair(link, INJECTED_ONE_WAY_MS);
        let forward = format!("{link}={target}");
        let run =
            Running::spawn(lab.deploy_command(&["--forward", &forward], &lab.hops(), &PROBES));
        let (status, stderr) = run.finish(RUN_TIMEOUT);
        lab.clear(link);
        assert!(status.success(), "deploy-chain failed ({status}):\n{stderr}");
        let report = lab.report(&stderr);
        let context = format!("{label} delayed ({}):\n{stderr}", mechanism.trim());

        assert!(
            report.verdict.starts_with(&format!("verdict: {label} adds the most delay")),
            "wrong subsegment named; {context}"
        );
        let measured_ns = report.row(&label).p50_ns;
        assert!(
            (measured_ns - injected_round_trip_ns).abs() <= tolerance_ns + report.rounding_ns,
            "{label} p50 {measured_ns} ns, injected round trip {injected_round_trip_ns} ns, \
             tolerance {tolerance_ns} ns; {context}"
        );
        for row in report.rows.iter().filter(|row| row.label != label) {
            assert!(
                row.p50_ns < OTHER_ROW_BOUND_NS,
                "{} p50 {} ns, over {OTHER_ROW_BOUND_NS} ns; {context}",
                row.label,
                row.p50_ns
            );
        }
        assert_eq!(report.end_to_end.count, 300, "{context}");
        assert_eq!(report.json["frames"]["missing"], 0, "{context}");
        assert_parts_add_up(&report, &stderr);
        // On the real stderr, so that CI logs show the figures of a passing run too.
        let _ = writeln!(
            std::io::stderr(),
            "{label}: injected {:.1} µs round trip, measured p50 {:.1} µs, by {}",
            injected_round_trip_ns / 1e3,
            measured_ns / 1e3,
            mechanism_name(&mechanism)
        );
    }
    lab.assert_no_leftovers("after three runs");
    let _ = writeln!(std::io::stderr(), "lab accuracy test took {:.1?}", started.elapsed());
}

/// The users' own workflow in the default (bulk) mode: `deploy-chain.sh --bytes`, three runs on
/// an idle lab and three with h1 ⇄ h2 delayed 3 ms each way. Every run: no negative sample
/// (`parse_json_report` fails on one), all bytes back; idle: no link is ever named (the links
/// are identical veths with nothing on them; a relay may be, when the machine's other load
/// starved it of CPU during that run, which is then what held the stream back); delayed: that
/// link named each time.
#[test]
fn bulk_deploys_give_no_negative_sample_and_steady_verdicts() {
    let Some(_lock) = lab_or_skip("bulk_deploys_give_no_negative_sample_and_steady_verdicts")
    else {
        return;
    };
    let lab = Lab::up(4);
    let bulk = |options: &[&str]| -> (Option<String>, String) {
        let mut options = options.to_vec();
        options.extend(["--bytes", "5000000"]);
        let run = Running::spawn(lab.deploy_command(&options, &lab.hops(), &[]));
        let (status, stderr) = run.finish(RUN_TIMEOUT);
        assert!(status.success(), "deploy-chain --bytes failed ({status}):\n{stderr}");
        let report = lab.report(&stderr);
        assert_eq!(report.json["frames"]["missing"], 0, "{stderr}");
        let id = report.json["verdict"]["subsegment"].as_str().unwrap_or_default().to_string();
        (report.verdict_names().map(str::to_string), id)
    };
    let idle: Vec<(Option<String>, String)> = (0..3).map(|_| bulk(&[])).collect();
    for (_, id) in &idle {
        assert!(!id.contains('-'), "an idle lab named a link: {idle:?}");
    }
    let (target, mechanism) = lab.impair(1, 3.0);
    let forward = format!("1={target}");
    let delayed: Vec<Option<String>> = (0..3).map(|_| bulk(&["--forward", &forward]).0).collect();
    lab.clear(1);
    assert!(
        delayed.iter().all(|verdict| verdict.as_deref() == Some("h1 ⇄ h2")),
        "h1 ⇄ h2 delayed ({}): {delayed:?}",
        mechanism.trim()
    );
    let _ = writeln!(std::io::stderr(), "bulk lab verdicts: idle {idle:?}, delayed {delayed:?}");
    lab.assert_no_leftovers("after six bulk runs");
}

/// A hop that reads slowly (here h1, stopped 45 ms in every 50 ms, as a hop starved of CPU
/// would be) fills its receive buffer, closes its window, and the bytes wait in the sender's
/// send queue, which the stamps count in the link before it. The verdict names h1 from the
/// kernel's evidence (the sender held back by h1's window), never that idle link. On a busy
/// machine the source, also short of CPU, may read its answers more slowly still, or neither
/// stands out; but at least one of three runs names h1, and none names a link or another hop.
#[test]
fn a_starved_hop_is_named_the_slow_reader_not_the_link_before_it() {
    let Some(_lock) = lab_or_skip("a_starved_hop_is_named_the_slow_reader") else {
        return;
    };
    let lab = Lab::up(4);
    let mut verdicts = Vec::new();
    for _ in 0..3 {
        let run = Running::spawn(lab.deploy_command(&["--bytes", "10000000"], &lab.hops(), &[]));
        let done = Arc::new(AtomicBool::new(false));
        let starver = {
            let (done, namespace) = (Arc::clone(&done), lab.namespace(1));
            thread::spawn(move || starve_hop(&namespace, &done))
        };
        let (status, stderr) = run.finish(RUN_TIMEOUT);
        done.store(true, Ordering::Relaxed);
        let stops = starver.join().expect("the starver");
        assert!(status.success(), "deploy-chain --bytes failed ({status}):\n{stderr}");
        assert!(stops >= 3, "h1 was stopped only {stops} times:\n{stderr}");
        let report = lab.report(&stderr);
        let verdict = &report.json["verdict"];
        let id = verdict["subsegment"].as_str().map(str::to_string);
        let kind = verdict["kind"].as_str().unwrap_or_default().to_string();
        assert!(
            id.as_deref().is_none_or(|id| id.starts_with("1.")),
            "a starved h1 must not make the verdict name {id:?} ({kind}): {}",
            verdict["text"]
        );
        verdicts.push((id, kind, verdict["text"].as_str().unwrap_or_default().to_string()));
    }
    let _ = writeln!(std::io::stderr(), "starved h1 verdicts: {verdicts:?}");
    assert!(
        verdicts.iter().any(|(id, kind, _)| id.is_some() && kind == "slow_reader"),
        "no run named h1 the slow reader: {verdicts:#?}"
    );
    lab.assert_no_leftovers("after the starved runs");
}

/// Stops the hop in `namespace` for 45 ms of every 50 ms until `done`; returns how often.
fn starve_hop(namespace: &str, done: &AtomicBool) -> usize {
    let mut hop = None;
    let mut stops = 0;
    while !done.load(Ordering::Relaxed) {
        let Some(pid) = hop else {
            hop = hop_pid(namespace);
            thread::sleep(Duration::from_millis(1));
            continue;
        };
        // SAFETY: kill has no memory preconditions; a pid gone since is ESRCH, harmless.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        stops += 1;
        thread::sleep(Duration::from_millis(45));
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        thread::sleep(Duration::from_millis(5));
    }
    stops
}

/// The pid of the hop running in `namespace`, once it runs.
fn hop_pid(namespace: &str) -> Option<libc::pid_t> {
    let output = Command::new("ip").args(["netns", "pids", namespace]).output().ok()?;
    String::from_utf8_lossy(&output.stdout).split_whitespace().find_map(|pid| {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        // The kernel keeps 15 bytes of a command's name.
        (comm.trim() == "subsegment-tcp-").then(|| pid.parse().ok()).flatten()
    })
}

/// Ctrl-C on the deployer: the source reports what came back, and every hop is stopped.
#[test]
fn ctrl_c_reports_and_stops_every_remote_hop() {
    let Some(_lock) = lab_or_skip("ctrl_c_reports_and_stops_every_remote_hop") else {
        return;
    };
    let lab = Lab::up(3);
    let run = start_endless_probes(&lab, &[]);
    assert!(lab.leftovers().iter().any(|p| p.starts_with("h2:") && p.ends_with("subsegment-tcp-")));
    // Answers have come back (so there is something to report), seen from outside: on a busy
    // machine the chain can be up and the first answer still on its way.
    wait_for_source_bytes_received(&lab, &run, 2_000);
    run.signal(libc::SIGINT);
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(130), "exit status after SIGINT:\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    lab.report(&stderr); // The report of what came back so far is there.
    lab.assert_no_leftovers("after SIGINT");
}

/// Even a deployer killed outright (no trap runs) leaves nothing behind: each remote wrapper
/// kills its hop when the ssh session's stdin closes.
#[test]
fn a_killed_deployer_leaves_no_orphans() {
    let Some(_lock) = lab_or_skip("a_killed_deployer_leaves_no_orphans") else {
        return;
    };
    let lab = Lab::up(3);
    let run = start_endless_probes(&lab, &[]);
    run.signal(libc::SIGKILL);
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    // Killed by our signal, not ended earlier some other way (which would test no cleanup).
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}:\n{stderr}");
    lab.assert_no_leftovers("after SIGKILL of deploy-chain");
}

/// Opens a TCP connection from inside h`from` to h`to`'s hop port and closes it at once: a stray
/// client, whom the hop either refuses at accept or serves until it hangs up.
#[track_caller]
fn connect_once(lab: &Lab, from: usize, to: usize) {
    let connect = format!("exec 3<>/dev/tcp/{}/9000", lab.address(to));
    let output = Command::new("ip")
        .args(["netns", "exec", &lab.namespace(from), "bash", "-c", &connect])
        .output()
        .expect("ip netns exec bash");
    // The kernel completes the handshake before the hop's accept, refused or not.
    assert!(output.status.success(), "h{from} -> h{to}:9000: {output:?}");
}

/// The default deploy gives every hop an allow-list holding just the hop before it, and the
/// hops enforce it: a stray connection to h2 from the source's host h0 (which h1, not h2, must
/// accept) and one to h1 from h2 are closed at accept, each with a line naming the stranger;
/// the chain itself runs on, and no hop warns that it accepts anyone.
#[test]
fn a_default_deploy_lets_each_hop_accept_only_the_hop_before_it() {
    let Some(_lock) = lab_or_skip("a_default_deploy_lets_each_hop_accept_only_the_hop_before_it")
    else {
        return;
    };
    let lab = Lab::up(3);
    let run = start_endless_probes(&lab, &[]);
    let (h0, h1, h2) = (lab.address(0), lab.address(1), lab.address(2));
    let stderr = run.stderr();
    assert!(stderr.contains(&format!("deploy-chain: h1 allows {h0}/32 (")), "{stderr}");
    assert!(stderr.contains(&format!("deploy-chain: h2 allows {h1}/32 (h1)")), "{stderr}");
    assert!(!stderr.contains("warning: listening on every interface"), "{stderr}");

    connect_once(&lab, 0, 2);
    run.wait_for_line(&format!("[h2] h2: refusing connection from {h0}:"), Duration::from_secs(10));
    connect_once(&lab, 2, 1);
    run.wait_for_line(&format!("[h1] h1: refusing connection from {h2}:"), Duration::from_secs(10));
    // Still flowing after both refusals: the source's connection is untouched.
    wait_for_source_connection(&lab, &run);
    run.signal(libc::SIGINT);
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(130), "exit status after SIGINT:\n{stderr}");
    let refusals: Vec<&str> = stderr.lines().filter(|line| line.contains("refusing")).collect();
    assert_eq!(refusals.len(), 2, "only the two strangers are refused:\n{stderr}");
    assert!(refusals.iter().all(|line| line.ends_with(": not in --allow")), "{stderr}");
    let report = lab.report(&stderr);
    assert!(report.end_to_end.count > 0, "{stderr}");
    lab.assert_no_leftovers("after a default deploy and two strangers");
}

/// `--allow-any` gives the hops no allow-list (as before the default existed): the deployer
/// and each hop warn, and a stranger from h0 is served by h2 instead of refused.
#[test]
fn allow_any_lets_every_hop_accept_anyone() {
    let Some(_lock) = lab_or_skip("allow_any_lets_every_hop_accept_anyone") else {
        return;
    };
    let lab = Lab::up(3);
    let run = start_endless_probes(&lab, &["--allow-any"]);
    let stderr = run.stderr();
    assert!(
        stderr.contains("deploy-chain: warning: --allow-any: h1 h2 accept connections from anyone"),
        "{stderr}"
    );
    assert!(!stderr.contains(" allows "), "{stderr}");
    for hop in ["h1", "h2"] {
        // The hop's own word that it was started without --allow.
        let warning = format!("[{hop}] {hop}: warning: listening on every interface");
        assert!(stderr.contains(&warning), "{warning:?} missing:\n{stderr}");
    }

    connect_once(&lab, 0, 2);
    run.wait_for_line(
        &format!("[h2] h2: connection from {}:", lab.address(0)),
        Duration::from_secs(10),
    );
    run.signal(libc::SIGINT);
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(130), "exit status after SIGINT:\n{stderr}");
    assert!(!stderr.contains("refusing"), "{stderr}");
    lab.assert_no_leftovers("after an --allow-any deploy");
}

/// A hand-given `--allow 2=CIDR` replaces h2's default, so when it leaves out h1 the chain
/// fails: h2 refuses h1 at accept, and the deployer ends with that refusal, not just the
/// source's reset.
#[test]
fn a_hand_given_allow_that_leaves_out_the_previous_hop_fails_naming_the_refusal() {
    let test = "a_hand_given_allow_that_leaves_out_the_previous_hop_fails_naming_the_refusal";
    let Some(_lock) = lab_or_skip(test) else {
        return;
    };
    let lab = Lab::up(3);
    // In the lab's range, but no host has it.
    let options = ["--allow", "2=10.213.0.99/32"];
    let (status, stderr) =
        Running::spawn(lab.deploy_command(&options, &lab.hops(), &PROBES)).finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("deploy-chain: h2 allows 10.213.0.99/32 (--allow 2=...)"), "{stderr}");
    let refusal = format!("[h2] h2: refusing connection from {}:", lab.address(1));
    assert!(stderr.contains(&refusal), "{refusal:?} missing:\n{stderr}");
    let (_, summary) = stderr
        .split_once("deploy-chain: the chain failed where a hop refused its peer")
        .unwrap_or_else(|| panic!("no closing refusal summary:\n{stderr}"));
    assert!(summary.contains(&refusal) && summary.contains("not in --allow"), "{stderr}");
    lab.assert_no_leftovers("after a chain refused by its own allow-list");
}

/// An unreachable host is named, and nothing is started anywhere.
#[test]
fn an_unreachable_host_is_named_before_anything_starts() {
    let Some(_lock) = lab_or_skip("an_unreachable_host_is_named_before_anything_starts") else {
        return;
    };
    let lab = Lab::up(3);
    // h2's place is taken by an address inside the lab's range where no host is.
    let hops = ["h1".to_string(), "root@10.213.0.99".to_string()];
    let (status, stderr) =
        Running::spawn(lab.deploy_command(&[], &hops, &PROBES)).finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot reach root@10.213.0.99"), "{stderr}");
    assert!(stderr.contains("nothing was started"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
    lab.assert_no_leftovers("after an unreachable host");
}

/// Hops the source's host has no route to are deployed through a jump host (`-J`): the
/// control path goes h0 → h1 → h2, while the data path never needed h0 to reach h2 at all.
#[test]
fn hops_the_source_cannot_reach_are_deployed_through_a_jump_host() {
    let Some(_lock) = lab_or_skip("hops_the_source_cannot_reach_are_deployed_through_a_jump_host")
    else {
        return;
    };
    let lab = Lab::up(4);
    for host in [2, 3] {
        let route = format!("{}/32", lab.address(host));
        let output = Command::new("ip")
            .args(["-n", &lab.namespace(0), "route", "del", &route])
            .output()
            .expect("ip route del");
        assert!(output.status.success(), "ip route del {route}: {output:?}");
    }
    let probes = ["--count", "100", "--size", "64", "--window", "1"];

    let (status, stderr) =
        Running::spawn(lab.deploy_command(&[], &lab.hops(), &probes)).finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(1), "without -J, h2 is out of reach:\n{stderr}");
    assert!(stderr.contains("cannot reach h2"), "{stderr}");

    let (status, stderr) =
        Running::spawn(lab.deploy_command(&["-J", "h1"], &lab.hops(), &probes)).finish(RUN_TIMEOUT);
    assert!(status.success(), "deploy-chain -J h1 failed ({status}):\n{stderr}");
    let report = lab.report(&stderr);
    assert_eq!(report.labels()[..3], ["h0 ⇄ h1", "h1 ↓ (relay)", "h1 ↑ (relay)"], "{stderr}");
    assert!(report.labels().contains(&"h2 ⇄ h3"), "{stderr}");
    assert_eq!(report.end_to_end.count, 100, "{stderr}");
    lab.assert_no_leftovers("after a deploy through a jump host");
}

// -- deploy-chain's own options ------------------------------------------------------------------

/// The directories deploy-chain makes on the hosts for the copied binary (and, with `--keep`, a
/// hop's log). The lab's hosts share this machine's file system, so the test sees them all.
fn deploy_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/tmp")
        .expect("read /tmp")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("ssts-deploy."))
        })
        .collect();
    dirs.sort();
    dirs
}

/// The deploy directories made since `before` was listed.
fn new_deploy_dirs(before: &[PathBuf]) -> Vec<PathBuf> {
    deploy_dirs().into_iter().filter(|dir| !before.contains(dir)).collect()
}

/// Polls (bounded) until no deploy directory is left but those in `before`.
#[track_caller]
fn assert_deploy_dirs_removed(before: &[PathBuf], context: &str) {
    let deadline = Instant::now() + CLEANUP_TIMEOUT;
    loop {
        let left = new_deploy_dirs(before);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{context}: deploy directories left: {left:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The hops running in the lab, as (host, pid): the processes named after the tool.
fn hop_pids(lab: &Lab) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for host in 0..lab.hosts {
        let output = Command::new("ip")
            .args(["netns", "pids", &lab.namespace(host)])
            .output()
            .expect("ip netns pids");
        for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            // The kernel keeps 15 bytes of a command's name.
            if comm.trim() == "subsegment-tcp-" && host > 0 {
                found.push((host, pid.parse().expect("a pid")));
            }
        }
    }
    found
}

/// The executable process `pid` runs, as the kernel names it.
fn exe_of(pid: u32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

/// The copied binary is what the hops run, and it is removed from every host however the
/// deploy ends: by itself (the source done), by Ctrl-C, or killed outright (no trap runs; each
/// host's wrapper removes its own copy once its ssh session's stdin closes).
#[test]
fn the_copied_binary_runs_the_hops_and_is_removed_however_the_deploy_ends() {
    let test = "the_copied_binary_runs_the_hops_and_is_removed_however_the_deploy_ends";
    let Some(_lock) = lab_or_skip(test) else {
        return;
    };
    let lab = Lab::up(3);
    let before = deploy_dirs();

    let (status, stderr) =
        Running::spawn(lab.deploy_command(&[], &lab.hops(), &PROBES)).finish(RUN_TIMEOUT);
    assert!(status.success(), "deploy-chain failed ({status}):\n{stderr}");
    lab.assert_no_leftovers("after a deploy that ended by itself");
    assert_deploy_dirs_removed(&before, "after a deploy that ended by itself");

    for signal in [libc::SIGINT, libc::SIGKILL] {
        let run = start_endless_probes(&lab, &[]);
        let copies = new_deploy_dirs(&before);
        assert_eq!(copies.len(), 2, "one copy per host: {copies:?}\n{}", run.stderr());
        let hops = hop_pids(&lab);
        assert_eq!(hops.len(), 2, "{hops:?}: {:?}", lab.leftovers());
        for (host, pid) in &hops {
            let exe = exe_of(*pid);
            assert!(
                copies.iter().any(|dir| exe == dir.join("subsegment-tcp-speeds")),
                "h{host}'s hop runs {exe:?}, not a copy in {copies:?}"
            );
        }
        run.signal(signal);
        let (status, stderr) = run.finish(RUN_TIMEOUT);
        assert!(!status.success(), "{status}:\n{stderr}");
        let context = format!("after signal {signal} to deploy-chain");
        lab.assert_no_leftovers(&context);
        assert_deploy_dirs_removed(&before, &context);
    }
}

/// `--remote-bin PATH`: the hops run the binary already at PATH on every host, and nothing is
/// copied (no directory is made anywhere). The lab's hosts share this file system, so the
/// test binary's own path is "installed" on every one.
#[test]
fn remote_bin_runs_the_installed_binary_and_copies_nothing() {
    let Some(_lock) = lab_or_skip("remote_bin_runs_the_installed_binary_and_copies_nothing") else {
        return;
    };
    let lab = Lab::up(3);
    let before = deploy_dirs();
    let installed = std::fs::canonicalize(MAIN_BIN).expect("the test binary");
    let run = start_endless_probes(&lab, &["--remote-bin", MAIN_BIN]);
    assert_eq!(new_deploy_dirs(&before), Vec::<PathBuf>::new(), "a copy was made anyway");
    let hops = hop_pids(&lab);
    assert_eq!(hops.len(), 2, "{hops:?}: {:?}", lab.leftovers());
    for (host, pid) in &hops {
        assert_eq!(exe_of(*pid), installed, "h{host}'s hop runs another binary");
    }
    run.signal(libc::SIGINT);
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(lab.report(&stderr).end_to_end.count > 0, "{stderr}");
    lab.assert_no_leftovers("after a --remote-bin deploy");
    assert!(installed.exists(), "the installed binary was removed");
    assert_deploy_dirs_removed(&before, "after a --remote-bin deploy");
}

/// `--keep`: the deployer ends with the source, and the chain stays up: each hop logs to a file
/// on its host, another source is served, and the commands printed to stop it stop every hop
/// and remove its directory (binary and log).
#[test]
fn keep_leaves_the_chain_serving_and_prints_the_commands_that_stop_it() {
    let Some(_lock) =
        lab_or_skip("keep_leaves_the_chain_serving_and_prints_the_commands_that_stop_it")
    else {
        return;
    };
    let lab = Lab::up(3);
    let before = deploy_dirs();
    let (status, stderr) =
        Running::spawn(lab.deploy_command(&["--keep"], &lab.hops(), &PROBES)).finish(RUN_TIMEOUT);
    assert!(status.success(), "deploy-chain --keep failed ({status}):\n{stderr}");
    assert_eq!(lab.report(&stderr).end_to_end.count, 300, "{stderr}");
    let hops = hop_pids(&lab);
    assert_eq!(hops.len(), 2, "the chain did not stay up: {:?}\n{stderr}", lab.leftovers());
    let kept = new_deploy_dirs(&before);
    assert_eq!(kept.len(), 2, "{kept:?}");
    for dir in &kept {
        let log = std::fs::read_to_string(dir.join("hop.log")).unwrap_or_default();
        assert!(log.contains("listening on"), "{}: {log:?}", dir.display());
    }

    // Another source, started by hand, is served by the kept chain.
    let json = lab.dir.join("second.json");
    let first_hop = format!("{}:9000", lab.address(1));
    let output = Command::new("ip")
        .args(["netns", "exec", &lab.namespace(0), MAIN_BIN, "-f", &first_hop, "-n", "h0"])
        .args(["--count", "20", "--window", "1", "--json"])
        .arg(&json)
        .output()
        .expect("run a second source");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(read_json_report(&json, &stderr).end_to_end.count, 20);

    let (_, stop) = stderr
        .split_once("deploy-chain: --keep: the chain stays up; to stop it:\n")
        .unwrap_or_else(|| panic!("no stop commands:\n{stderr}"));
    let commands: Vec<&str> = stop.lines().take_while(|line| line.starts_with("  ssh ")).collect();
    assert_eq!(commands.len(), 2, "one per hop:\n{stderr}");
    for command in commands {
        let output = Command::new("ip")
            .args(["netns", "exec", &lab.namespace(0), "bash", "-c", command])
            .output()
            .expect("run a stop command");
        assert!(output.status.success(), "{command}: {output:?}");
    }
    lab.assert_no_leftovers("after the --keep stop commands");
    assert_deploy_dirs_removed(&before, "after the --keep stop commands");
}

/// The sockets listening on the chain's port in h`host`, of one address family (`-4`, `-6`),
/// as `ss` shows their local addresses (a dual-stack IPv6 wildcard shows as `*:9000`).
fn listeners(lab: &Lab, host: usize, family: &str) -> Vec<String> {
    let text = in_host(lab, host, &["ss", family, "-Hltn", "sport = :9000"]);
    text.lines().filter_map(|line| line.split_whitespace().nth(3).map(str::to_string)).collect()
}

/// `--listen-host '[::]'`: every hop binds the IPv6 wildcard instead of the default IPv4 one,
/// and the chain still works over IPv4, its default allow-lists (IPv4 /32 blocks) matching the
/// v4-mapped peers.
#[test]
fn listen_host_is_what_every_hop_binds() {
    let Some(_lock) = lab_or_skip("listen_host_is_what_every_hop_binds") else {
        return;
    };
    if !util::has_ipv6_loopback() {
        say_skipped("listen_host_is_what_every_hop_binds", "this machine has no IPv6");
        return;
    }
    let lab = Lab::up(3);
    let before = deploy_dirs();
    let run = start_endless_probes(&lab, &["--listen-host", "[::]"]);
    for host in [1, 2] {
        let (v4, v6) = (listeners(&lab, host, "-4"), listeners(&lab, host, "-6"));
        assert!(v4.is_empty() && v6.len() == 1, "h{host}: IPv4 {v4:?}, IPv6 {v6:?}");
        let said = format!("[h{host}] h{host}: listening on [::]:9000");
        assert!(run.stderr().contains(&said), "{said:?} missing:\n{}", run.stderr());
    }
    run.signal(libc::SIGINT);
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(!stderr.contains("refusing"), "{stderr}");
    assert!(lab.report(&stderr).end_to_end.count > 0, "{stderr}");
    lab.assert_no_leftovers("after a --listen-host deploy");
    assert_deploy_dirs_removed(&before, "after a --listen-host deploy");
}

/// `--server ADDR`: the last host does not echo; it strips the frames and relays plain payload
/// to the ordinary TCP server at ADDR as seen from there (here the tool's own `-r` echo end,
/// which answers plain bytes and speaks no frames, on h2's loopback), and the report's last
/// link is that server's.
#[test]
fn server_makes_the_last_host_relay_to_an_ordinary_server() {
    let Some(_lock) = lab_or_skip("server_makes_the_last_host_relay_to_an_ordinary_server") else {
        return;
    };
    let lab = Lab::up(3);
    let in_h2 = ["netns", "exec", &lab.namespace(2), MAIN_BIN];
    let server_args = [&in_h2[..], &["-l", "127.0.0.1:7000", "-r", "-n", "S"]].concat();
    let (server, _) = util::spawn_listening("ip", &server_args);
    let before = deploy_dirs();
    let run =
        Running::spawn(lab.deploy_command(&["--server", "127.0.0.1:7000"], &lab.hops(), &PROBES));
    let (status, stderr) = run.finish(RUN_TIMEOUT);
    assert!(status.success(), "deploy-chain --server failed ({status}):\n{stderr}");
    let report = lab.report(&stderr);
    assert_eq!(report.end_to_end.count, 300, "{stderr}");
    let labels = report.labels();
    assert_eq!(labels.last(), Some(&"h2 ⇄ 127.0.0.1:7000"), "{labels:?}");
    assert!(!labels.iter().any(|label| label.contains("(echo)")), "{labels:?}");
    assert!(stderr.contains("plain TCP server"), "{stderr}");
    let served = util::frames::wait_for_stderr(&server, Duration::from_secs(5), |text| {
        text.contains("connection from 127.0.0.1:")
    });
    assert!(served.is_some(), "the server saw no connection from h2: {}", server.stderr());
    drop(server);
    lab.assert_no_leftovers("after a --server deploy");
    assert_deploy_dirs_removed(&before, "after a --server deploy");
}

/// Hosts given by IPv6 address (`[v6]`, with a user and an ssh port too): ssh reaches them over
/// IPv6, each hop allows its predecessor's IPv6 address, and with `--listen-host '[::]'` the
/// whole chain runs over IPv6.
#[test]
fn ipv6_ssh_hosts_deploy_a_chain_over_ipv6() {
    let Some(_lock) = lab_or_skip("ipv6_ssh_hosts_deploy_a_chain_over_ipv6") else {
        return;
    };
    let lab = Lab::up(3);
    let [Some(h0), Some(h1), Some(h2)] = [0, 1, 2].map(|host| lab.address6(host)) else {
        say_skipped(
            "ipv6_ssh_hosts_deploy_a_chain_over_ipv6",
            "the lab has no IPv6 (switched off here)",
        );
        return;
    };
    let before = deploy_dirs();
    let hops = [format!("root@[{h1}]:22"), format!("[{h2}]")];
    let (status, stderr) =
        Running::spawn(lab.deploy_command(&["--listen-host", "[::]"], &hops, &PROBES))
            .finish(RUN_TIMEOUT);
    assert!(status.success(), "deploy-chain over IPv6 failed ({status}):\n{stderr}");
    assert!(stderr.contains(&format!("allows {h0}/128 (")), "{stderr}");
    assert!(stderr.contains(&format!("allows {h1}/128 (")), "{stderr}");
    let report = lab.report(&stderr);
    assert_eq!(report.end_to_end.count, 300, "{stderr}");
    let path = report.json["path"].as_array().expect("a path");
    let field = |index: usize, name: &str| path[index][name].as_str().unwrap_or("").to_string();
    assert_eq!(field(1, "reached_at"), format!("[{h1}]:9000"), "{path:?}");
    assert_eq!(field(2, "reached_at"), format!("[{h2}]:9000"), "{path:?}");
    assert!(field(2, "seen_from").starts_with(&format!("[{h1}]:")), "{path:?}");
    lab.assert_no_leftovers("after an IPv6 deploy");
    assert_deploy_dirs_removed(&before, "after an IPv6 deploy");
}

/// Every script is shellcheck-clean (the whole directory, so a new script is checked too), and
/// every one but the installer answers --help (no root needed).
#[test]
fn scripts_are_shellcheck_clean_and_have_help() {
    let mut scripts_found: Vec<_> = std::fs::read_dir(scripts())
        .expect("read scripts/")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "sh"))
        .collect();
    scripts_found.sort();
    assert!(scripts_found.len() >= 7, "{scripts_found:?}");
    // install-deps.sh has no --help: run, it would install.
    for path in scripts_found.iter().filter(|path| !path.ends_with("install-deps.sh")) {
        let output = Command::new(path).arg("--help").output().expect("run script --help");
        assert!(output.status.success(), "{} --help: {output:?}", path.display());
        assert!(String::from_utf8_lossy(&output.stdout).contains("usage:"), "{}", path.display());
    }
    // -x from the repository's root: the benches source scripts/bench/procs.sh.
    let checked = Command::new("shellcheck")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("-x")
        .args(&scripts_found)
        .output();
    match checked {
        Ok(output) => assert!(
            output.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&output.stdout)
        ),
        Err(_) => say_skipped(
            "scripts_are_shellcheck_clean_and_have_help",
            "its shellcheck part: shellcheck is not installed",
        ),
    }
}
