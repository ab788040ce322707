//! The report as data, from the real binary on real sockets: the `--json` document and the
//! `--jsonl` lines validate against the JSON Schema in the repository, the subsegments' sums
//! add up to the end-to-end sum exactly, `--samples` has a line per answered frame, hop tags
//! come back, and every row of the README's exit-code table is what the process exits with.

mod util;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use util::{MAIN_BIN, Proc, json_path, parse_json_report, run_source, spawn_listening};

const SCHEMA: &str = include_str!("../src/report/report.schema.json");
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Z (echo) ← C ← B, tagged; returns the processes and B's address.
fn chain() -> (Vec<Proc>, String) {
    let (z, z_addr) = spawn_listening(
        MAIN_BIN,
        &["-l", "127.0.0.1:0", "-n", "Z", "--tag", "site=fra1", "--tag", "rack=r7"],
    );
    let z_text = z_addr.to_string();
    let (c, c_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &z_text, "-n", "C"]);
    let c_text = c_addr.to_string();
    let (b, b_addr) = spawn_listening(
        MAIN_BIN,
        &["-l", "127.0.0.1:0", "-f", &c_text, "-n", "B", "--tag", "circuit=XC-1042"],
    );
    (vec![z, c, b], b_addr.to_string())
}

/// Validates `instance` against the schema's root, or against one of its `$defs`.
#[track_caller]
fn assert_valid(instance: &Value, definition: Option<&str>) {
    let mut schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    if let Some(definition) = definition {
        schema = serde_json::json!({
            "$schema": schema["$schema"],
            "$defs": schema["$defs"],
            "$ref": format!("#/$defs/{definition}"),
        });
    }
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|error| format!("{error} at {}", error.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\nin {instance:#}");
}

#[test]
fn the_json_document_validates_and_its_sums_add_up_exactly() {
    let (_hops, b) = chain();
    let input = util::random_bytes(200_000, 11);
    let run = run_source(&["-f", &b, "-n", "A", "--tag", "site=ams2"], &input, RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    assert_eq!(run.stdout, input);
    let report = run.report();
    assert_valid(&report.json, None);
    let json = &report.json;
    assert_eq!(json["schema_version"], 1);
    assert_eq!(json["ending"]["reason"], "complete");
    let ids: Vec<&str> = json["subsegments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["0-1", "1.down", "1.up", "1-2", "2.down", "2.up", "2-3", "3.echo"]);
    let sum: u64 = report.rows.iter().map(|row| row.sum_ns).sum();
    assert_eq!(sum, report.end_to_end.sum_ns, "the subsegments add up exactly");
    assert_eq!(report.end_to_end.count, json["frames"]["answered"].as_u64().unwrap());
    // Tags round-trip: the source's own, B's and Z's, none for C.
    let tags: Vec<&Value> =
        json["path"].as_array().unwrap().iter().map(|hop| &hop["tags"]).collect();
    assert_eq!(tags[0], &serde_json::json!({"site": "ams2"}));
    assert_eq!(tags[1], &serde_json::json!({"circuit": "XC-1042"}));
    assert_eq!(tags[2], &serde_json::json!({}));
    assert_eq!(tags[3], &serde_json::json!({"rack": "r7", "site": "fra1"}));
    assert_eq!(json["parameters"]["tags"], serde_json::json!({"site": "ams2"}));
    // The text report shows them too.
    assert!(run.stderr.contains(" circuit=XC-1042"), "{}", run.stderr);
}

#[test]
fn json_to_stdout_in_probe_mode_and_refused_where_stdout_carries_payload() {
    let (_hops, b) = chain();
    let run = run_source(&["-f", &b, "-n", "A", "-c", "50", "--json", "-"], b"", RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    let document: Value = serde_json::from_slice(&run.stdout).expect("stdout is the document");
    assert_valid(&document, None);
    assert_eq!(document["frames"]["answered"], 50);
    let refused = run_source(&["-f", &b, "-n", "A", "--json", "-"], b"x", RUN_TIMEOUT);
    assert_eq!(refused.status.and_then(|status| status.code()), Some(2), "{}", refused.stderr);
    assert!(refused.stderr.contains("need probe mode"), "{}", refused.stderr);
}

#[test]
fn sla_breached_exits_3_met_exits_0_and_an_id_the_path_lacks_exits_2() {
    let (_hops, b) = chain();
    let probes = ["-f", &b, "-n", "A", "-c", "40", "-i", "1ms", "-w", "1"];
    let with = |specs: &[&str]| {
        let mut args: Vec<&str> = probes.to_vec();
        for spec in specs {
            args.extend(["--sla", spec]);
        }
        run_source(&args, b"", RUN_TIMEOUT)
    };
    let met = with(&["end-to-end:p50<10s", "B-C:max<10s", "end-to-end:loss<1%"]);
    assert_eq!(met.status.and_then(|status| status.code()), Some(0), "{}", met.stderr);
    let results = met.report().json["sla"].clone();
    assert_eq!(results.as_array().unwrap().len(), 3, "{results:#}");
    assert!(results.as_array().unwrap().iter().all(|result| result["breached"] == false));
    // Nothing crosses loopback through three relays in under a nanosecond.
    let breached = with(&["link:p50<1ns", "end-to-end:p99<10s"]);
    assert_eq!(breached.status.and_then(|status| status.code()), Some(3), "{}", breached.stderr);
    let report = breached.report();
    let results = report.json["sla"].as_array().unwrap().clone();
    let breaches: Vec<&str> = results
        .iter()
        .filter(|result| result["breached"] == true)
        .map(|result| result["subsegment"].as_str().unwrap())
        .collect();
    assert_eq!(breaches, ["0-1", "1-2", "2-3"], "{results:#?}");
    assert!(breached.stderr.contains("SLA breached"), "{}", breached.stderr);
    assert!(breached.stderr.contains("sla: A ⇄ B p50 "), "{}", breached.stderr);
    // An id only the path can refuse, and an ambiguous name: exit 2, listing the ids.
    let unknown = with(&["5-6:p99<1ms"]);
    assert_eq!(unknown.status.and_then(|status| status.code()), Some(2), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("no subsegment '5-6'"), "{}", unknown.stderr);
    assert!(unknown.stderr.contains("0-1, 1.down, 1.up, 1-2"), "{}", unknown.stderr);
    let json: Value = serde_json::from_str(unknown.json.as_deref().expect("a document")).unwrap();
    assert_valid(&json, None);
    assert_eq!(json["ending"]["reason"], "usage_error");
    let malformed = with(&["B-C:p99<"]);
    assert_eq!(malformed.status.and_then(|status| status.code()), Some(2), "{}", malformed.stderr);
    assert!(malformed.stderr.contains("--sla 'B-C:p99<'"), "{}", malformed.stderr);
}

#[test]
fn a_failed_run_exits_1_and_its_document_says_why() {
    // A port nothing listens on: bind one, then free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let target = port.to_string();
    let run = run_source(&["-f", &target, "-n", "A", "-c", "5", "-t", "2"], b"", RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(1), "{}", run.stderr);
    assert!(run.stderr.contains(&format!("cannot reach first hop {target}:")), "{}", run.stderr);
    assert!(!run.stderr.contains(&format!("({target})")), "the address once: {}", run.stderr);
    let json: Value = serde_json::from_str(run.json.as_deref().expect("a document")).unwrap();
    assert_valid(&json, None);
    assert_eq!(json["ending"]["reason"], "failed");
}

/// Starts a continuous source writing JSON lines to a file and samples to another.
/// A source that a failing test must not leave running: killed when dropped.
struct Source(std::process::Child);

impl std::ops::Deref for Source {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Source {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn continuous(b: &str, extra: &[&str]) -> (Source, std::path::PathBuf, std::path::PathBuf) {
    let (jsonl, samples) = (json_path(), json_path());
    let child = Command::new(MAIN_BIN)
        .args(["-f", b, "-n", "A", "-c", "0", "-i", "2ms", "--report-interval", "200ms"])
        .args(["--jsonl", jsonl.to_str().unwrap(), "--samples", samples.to_str().unwrap()])
        .args(extra)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the source");
    (Source(child), jsonl, samples)
}

#[track_caller]
fn check_jsonl_and_samples(
    jsonl: &std::path::Path,
    samples: &std::path::Path,
    stderr: &str,
) -> Value {
    let text = std::fs::read_to_string(jsonl).expect("the --jsonl file");
    let lines: Vec<Value> =
        text.lines().map(|line| serde_json::from_str(line).expect("a JSON line")).collect();
    let (summary, intervals) = lines.split_last().expect("at least the summary");
    assert_eq!(summary["type"], "summary", "{text}");
    assert_valid(summary, None);
    assert!(intervals.len() >= 2, "intervals every 200 ms: {text}\n{stderr}");
    for (index, interval) in intervals.iter().enumerate() {
        assert_valid(interval, Some("interval"));
        assert_eq!(interval["index"], index as u64);
    }
    // Each interval has its own statistics: they add up to the run's.
    let answered: u64 =
        intervals.iter().map(|interval| interval["frames"]["answered"].as_u64().unwrap()).sum();
    let summed: u64 =
        intervals.iter().filter_map(|interval| interval["end_to_end"]["count"].as_u64()).sum();
    let report = parse_json_report(&serde_json::to_string(summary).unwrap());
    assert_eq!(answered, report.end_to_end.count, "{text}");
    assert_eq!(summed, report.end_to_end.count, "{text}");
    // --samples: a header, one line per answered frame; each line's parts add up to its
    // end-to-end, and the columns to each subsegment's sum.
    let csv = std::fs::read_to_string(samples).expect("the --samples file");
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().expect("a header").split(',').collect();
    assert_eq!(header[..3], ["sequence", "sent_unix_ns", "end_to_end_ns"]);
    let ids: Vec<String> = report.rows.iter().map(|row| format!("{}_ns", row.id)).collect();
    assert_eq!(header[3..], ids.iter().map(String::as_str).collect::<Vec<_>>()[..]);
    let mut column_sums = vec![0i64; ids.len()];
    let mut lines = 0u64;
    let started_ns = summary["started_unix_ns"].as_i64().unwrap();
    for row in rows {
        let values: Vec<i64> =
            row.split(',').map(|value| value.parse().expect("a number")).collect();
        assert_eq!(values[3..].iter().sum::<i64>(), values[2], "{row}");
        assert!(
            values[1] >= started_ns && values[1] < started_ns + 60_000_000_000,
            "send time {row}"
        );
        for (sum, value) in column_sums.iter_mut().zip(&values[3..]) {
            *sum += value;
        }
        lines += 1;
    }
    assert_eq!(lines, report.end_to_end.count, "one line per answered frame");
    let sums: Vec<i64> = report.rows.iter().map(|row| row.sum_ns as i64).collect();
    assert_eq!(column_sums, sums);
    summary.clone()
}

#[test]
fn a_continuous_run_interrupted_writes_intervals_samples_and_a_valid_summary() {
    let (_hops, b) = chain();
    let (mut child, jsonl, samples) = continuous(&b, &["--sla", "end-to-end:p99<10s"]);
    let mut stderr = child.stderr.take().unwrap();
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    std::thread::sleep(Duration::from_millis(900));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGINT");
        std::thread::sleep(Duration::from_millis(10));
    };
    let stderr = collector.join().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "a continuous run ended by Ctrl-C with its SLA met: {stderr}"
    );
    assert!(stderr.contains("interval 0 ending "), "a line per interval on stderr: {stderr}");
    let summary = check_jsonl_and_samples(&jsonl, &samples, &stderr);
    assert_eq!(summary["ending"]["reason"], "interrupted");
    assert_eq!(summary["frames"]["missing"], 0, "the probes in flight came back: {summary:#}");
    let _ = std::fs::remove_file(jsonl);
    let _ = std::fs::remove_file(samples);
}

#[test]
fn a_continuous_run_ends_after_its_duration_and_exits_3_on_a_breach() {
    let (_hops, b) = chain();
    let (mut child, jsonl, samples) =
        continuous(&b, &["--duration", "700ms", "--sla", "end-to-end:p50<1ns"]);
    let output = wait_output(&mut child);
    assert_eq!(output.0, Some(3), "{}", output.1);
    assert!(
        output.1.contains("SLA breached: end-to-end:p50<1ns"),
        "the interval lines say so: {}",
        output.1
    );
    let summary = check_jsonl_and_samples(&jsonl, &samples, &output.1);
    assert_eq!(summary["ending"]["reason"], "complete");
    assert_eq!(summary["parameters"]["duration_ns"], 700_000_000);
    let _ = std::fs::remove_file(jsonl);
    let _ = std::fs::remove_file(samples);
}

fn wait_output(child: &mut std::process::Child) -> (Option<i32>, String) {
    let mut stderr = child.stderr.take().unwrap();
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
    (child.wait().unwrap().code(), text)
}

#[test]
fn units_and_ascii_fix_the_text() {
    let (_hops, b) = chain();
    let run = run_source(
        &["-f", &b, "-n", "A", "-c", "30", "--units", "ms", "--ascii"],
        b"",
        RUN_TIMEOUT,
    );
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    assert!(run.stderr.contains("delay per subsegment in ms"), "{}", run.stderr);
    assert!(run.stderr.contains("  A - B "), "{}", run.stderr);
    assert!(run.stderr.is_ascii(), "{}", run.stderr);
    let c_locale = Command::new(MAIN_BIN)
        .args(["-f", &b, "-n", "A", "-c", "30"])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&c_locale.stderr);
    assert!(c_locale.status.success(), "{text}");
    assert!(text.contains("B down (relay)") && text.is_ascii(), "a non-UTF-8 locale: {text}");
}

/// Polls until `child` exits, at most `timeout`.
fn exit_within(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit within {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the `--jsonl` file has a record of an interval that began after `after`
/// intervals: the run is going on.
#[track_caller]
fn wait_for_intervals(jsonl: &std::path::Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(jsonl).map_or(0, |text| text.lines().count()) < count {
        assert!(Instant::now() < deadline, "fewer than {count} intervals within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_continuous_run_survives_a_broken_chain_and_says_when_the_path_changed() {
    let (z, z_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-n", "Z"]);
    let z_text = z_addr.to_string();
    let (c, c_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &z_text, "-n", "C"]);
    let c_text = c_addr.to_string();
    let (_b, b_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &c_text, "-n", "B"]);
    let (mut source, jsonl, samples) = continuous(&b_addr.to_string(), &[]);
    let mut stderr = source.stderr.take().unwrap();
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    wait_for_intervals(&jsonl, 2);
    // C dies: B reports it in-band, the source counts an outage and reconnects to B, whose
    // next hop is down until C is back on the same address under the same name.
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let (c, _) = spawn_listening(MAIN_BIN, &["-l", &c_text, "-f", &z_text, "-n", "C"]);
    wait_for_intervals(&jsonl, 8);
    // Then again, back as another host: the path has changed.
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let (_c2, _) = spawn_listening(MAIN_BIN, &["-l", &c_text, "-f", &z_text, "-n", "C2"]);
    let lines_before = std::fs::read_to_string(&jsonl).unwrap().lines().count();
    wait_for_intervals(&jsonl, lines_before + 6);
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(source.id() as i32, libc::SIGTERM) }, 0);
    let status = exit_within(&mut source, Duration::from_secs(20));
    let stderr = collector.join().unwrap();
    drop(z);
    assert_eq!(status.code(), Some(0), "a monitor survives outages ({status}): {stderr}");
    assert!(stderr.contains("A: outage: subsegment B ⇄ C failed"), "{stderr}");
    assert!(
        stderr.contains("reconnected after ") && stderr.contains("the path is unchanged"),
        "{stderr}"
    );
    assert!(stderr.contains("the path changed: A -> B ("), "{stderr}");
    let text = std::fs::read_to_string(&jsonl).unwrap();
    let summary: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_valid(&summary, None);
    let outages = summary["outages"].as_array().unwrap();
    assert_eq!(outages.len(), 2, "{outages:#?}");
    assert_eq!(outages[0]["subsegment"], "1-2", "{outages:#?}");
    let fault = outages[0]["fault"].as_str().unwrap_or_default();
    assert!(["lost", "closed_early"].contains(&fault), "a killed relay: {outages:#?}");
    assert_eq!(
        (outages[0]["path_changed"].as_bool(), outages[1]["path_changed"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(
        outages.iter().all(|outage| outage["down_ns"].as_u64().is_some_and(|ns| ns > 0)),
        "{outages:#?}"
    );
    assert_eq!(summary["path_changes"], 1);
    assert_eq!(summary["path"][2]["name"], "C2", "the report covers the path as last discovered");
    // The frames lost are the ones missing, and the intervals account for every one.
    let lost: u64 = outages.iter().map(|outage| outage["lost_frames"].as_u64().unwrap()).sum();
    assert_eq!(summary["frames"]["lost"], lost);
    assert_eq!(summary["frames"]["missing"], lost, "{:#}", summary["frames"]);
    let intervals: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|line: &Value| line["type"] == "interval")
        .collect();
    for interval in &intervals {
        assert_valid(interval, Some("interval"));
    }
    let interval_lost: u64 =
        intervals.iter().map(|interval| interval["frames"]["lost"].as_u64().unwrap()).sum();
    let interval_outages: u64 =
        intervals.iter().map(|interval| interval["frames"]["outages"].as_u64().unwrap()).sum();
    assert_eq!((interval_lost, interval_outages), (lost, 2));
    // Answers came back after each outage.
    let last = intervals.last().unwrap();
    assert!(last["frames"]["answered"].as_u64().unwrap() > 0, "{last:#}");
    let _ = std::fs::remove_file(jsonl);
    let _ = std::fs::remove_file(samples);
}

/// A field of `/proc/PID/task/TID/status` or `sched`, trimmed.
fn proc_field(pid: u32, tid: &str, file: &str, field: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{file}")).ok()?;
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == field).then(|| value.trim().to_string())
    })
}

#[test]
fn the_output_thread_runs_off_the_loop_s_cpu_and_at_normal_priority() {
    let cpus = std::thread::available_parallelism().map_or(1, |count| count.get());
    if cpus < 2 {
        util::say_skipped("the_output_thread_runs_off_the_loop_s_cpu", "one CPU only");
        return;
    }
    let (_hops, b) = chain();
    let (mut source, jsonl, samples) = continuous(&b, &["--cpu", "0", "--realtime"]);
    let pid = source.id();
    wait_for_intervals(&jsonl, 1);
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let comm = |tid: &str| std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
    let output = tasks.iter().find(|tid| comm(tid).trim() == "output").expect("an output thread");
    let main = pid.to_string();
    assert_eq!(proc_field(pid, &main, "status", "Cpus_allowed_list").as_deref(), Some("0"));
    let allowed = proc_field(pid, output, "status", "Cpus_allowed_list").unwrap();
    assert!(
        !allowed.split(',').any(|range| range == "0" || range.starts_with("0-")),
        "output on {allowed}"
    );
    // SCHED_FIFO is 1, SCHED_OTHER 0; where the host refuses --realtime both are 0.
    let policy = |tid: &str| proc_field(pid, tid, "sched", "policy");
    if policy(&main).as_deref() == Some("1") {
        assert_eq!(policy(output).as_deref(), Some("0"), "the output thread left SCHED_FIFO");
    } else {
        util::say_skipped("the output thread's priority", "the host refused --realtime");
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGINT) }, 0);
    assert_eq!(exit_within(&mut source, Duration::from_secs(20)).code(), Some(0));
    let _ = std::fs::remove_file(jsonl);
    let _ = std::fs::remove_file(samples);
}
