//! Kernel evidence per link from the real binary on real sockets: every link of a chain gets
//! the `TCP_INFO` of both of its ends in the report, `--kernel-info off` asks for none, and the
//! document with them validates against the schema.

mod util;

use std::time::Duration;

use serde_json::Value;
use util::{MAIN_BIN, Proc, run_source, spawn_listening};

const SCHEMA: &str = include_str!("../src/report/report.schema.json");
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Z (echo) ← C ← B; returns the processes and B's address.
fn chain() -> (Vec<Proc>, String) {
    let (z, z_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-n", "Z"]);
    let z_text = z_addr.to_string();
    let (c, c_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &z_text, "-n", "C"]);
    let c_text = c_addr.to_string();
    let (b, b_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &c_text, "-n", "B"]);
    (vec![z, c, b], b_addr.to_string())
}

#[track_caller]
fn assert_valid(instance: &Value) {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid schema");
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|error| error.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

fn links(json: &Value) -> Vec<&Value> {
    json["subsegments"].as_array().unwrap().iter().filter(|row| row["kind"] == "link").collect()
}

#[test]
fn every_link_has_the_kernel_s_view_from_both_ends() {
    let (_hops, b) = chain();
    // 0.3 s of probes: the hops' 100 ms timer reads a few times, and once more at the end.
    let args = ["-f", &b, "-n", "A", "-c", "300", "-i", "1ms", "-w", "1"];
    let run = run_source(&args, b"", RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    let report = run.report();
    assert_valid(&report.json);
    let links = links(&report.json);
    assert_eq!(links.len(), 3);
    for link in &links {
        let kernel = &link["kernel"];
        for end in ["near", "far"] {
            let samples = kernel[end]["samples"].as_u64().unwrap_or(0);
            assert!(samples >= 2, "{} {end}: {samples} readings: {kernel:#}", link["id"]);
            let min_rtt = kernel[end]["min_rtt_ns"].as_u64().expect("a min RTT on this kernel");
            assert!(min_rtt > 0 && min_rtt < 10_000_000, "loopback: {min_rtt} ns: {kernel:#}");
            // Probes one at a time on loopback lose nothing.
            assert_eq!(kernel[end]["retrans"], 0, "{kernel:#}");
        }
        assert!(kernel["split"]["wire_ns"].as_u64().is_some(), "{kernel:#}");
    }
    assert!(run.stderr.contains("what the kernel saw per link"), "{}", run.stderr);
}

#[test]
fn kernel_info_off_asks_no_hop_for_it() {
    let (_hops, b) = chain();
    let args = ["-f", &b, "-n", "A", "-c", "50", "--kernel-info", "off"];
    let run = run_source(&args, b"", RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    let report = run.report();
    assert!(
        links(&report.json).iter().all(|link| link.get("kernel").is_none()),
        "{:#}",
        report.json
    );
    assert_eq!(report.json["parameters"]["kernel_info"], false);
    assert!(!run.stderr.contains("what the kernel saw"), "{}", run.stderr);
}

#[test]
fn a_bulk_stream_s_links_have_readings_with_a_delivery_rate() {
    let (_hops, b) = chain();
    let input = util::random_bytes(40 << 20, 3);
    let run = run_source(&["-f", &b, "-n", "A", "-b", "65536"], &input, RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    assert!(run.stdout == input, "the answered stream differs from the input");
    let report = run.report();
    assert_valid(&report.json);
    // Every link moved bytes, so its kernel has a delivery rate to show.
    for link in links(&report.json) {
        let near = &link["kernel"]["near"];
        assert!(near["samples"].as_u64().unwrap_or(0) >= 1, "{:#}", link["kernel"]);
        assert!(near["unacked_max"].as_u64().is_some(), "{near:#}");
        assert!(
            near["delivery_rate_bytes_per_second"].as_u64().is_some_and(|rate| rate > 0),
            "{near:#}"
        );
    }
}

#[test]
fn transmit_stamps_give_each_end_its_send_queue_and_ack_round_trip() {
    let (_hops, b) = chain();
    let args = ["-f", &b, "-n", "A", "-c", "200", "-i", "1ms", "-w", "1", "--kernel-stamps", "all"];
    let run = run_source(&args, b"", RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    if run.stderr.contains("no transmit timestamps") {
        util::say_skipped("transmit_stamps_give_each_end", "the kernel refuses them (before 6.2)");
        return;
    }
    let report = run.report();
    assert_valid(&report.json);
    assert_eq!(report.json["parameters"]["kernel_stamps"], true);
    for link in links(&report.json) {
        for end in ["near", "far"] {
            let end_json = &link["kernel"][end];
            // One write per frame here (one frame in flight); a few may share an skb.
            let stamped = end_json["tx_stamped"].as_u64().unwrap_or(0);
            assert!(stamped >= 150, "{} {end}: {stamped} writes stamped: {end_json:#}", link["id"]);
            let ack_min = end_json["tx_ack_rtt_min_ns"].as_u64().unwrap_or(0);
            assert!(ack_min > 0 && ack_min < 10_000_000, "loopback SND→ACK {ack_min} ns");
            assert!(end_json["tx_queue_mean_ns"].as_u64().is_some(), "{end_json:#}");
        }
        let split = &link["kernel"]["split"];
        assert!(split["sender_queue_ns"].as_u64().is_some(), "{split:#}");
    }
    // Without the option, no socket is asked.
    let run = run_source(&["-f", &b, "-n", "A", "-c", "20"], b"", RUN_TIMEOUT);
    for link in links(&run.report().json) {
        assert!(link["kernel"]["near"]["tx_stamped"].is_null(), "{:#}", link["kernel"]);
    }
}

/// `--kernel-stamps sample`: one write per socket every 10 ms asks for its stamps through a
/// control message. At one probe a millisecond that is about one write in ten: every end has
/// stamped writes and SND → ACK figures, far fewer than `all` stamps over the same probes, and
/// the report says which mode gave them.
#[test]
fn sampled_transmit_stamps_are_fewer_than_all_and_still_give_the_figures() {
    let (_hops, b) = chain();
    let stamped = |mode: &str| {
        let args =
            ["-f", &b, "-n", "A", "-c", "300", "-i", "1ms", "-w", "1", "--kernel-stamps", mode];
        let run = run_source(&args, b"", RUN_TIMEOUT);
        assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
        let report = run.report();
        assert_valid(&report.json);
        assert_eq!(report.json["parameters"]["kernel_stamps_mode"], mode);
        assert_eq!(report.json["parameters"]["kernel_stamps"], true);
        let mut counts = Vec::new();
        for link in links(&report.json) {
            for end in ["near", "far"] {
                let end_json = &link["kernel"][end];
                counts.push(end_json["tx_stamped"].as_u64().unwrap_or(0));
                let ack_min = end_json["tx_ack_rtt_min_ns"].as_u64().unwrap_or(0);
                assert!(ack_min > 0 && ack_min < 10_000_000, "{mode}: SND→ACK {end_json:#}");
                assert!(end_json["tx_ack_rtt_mean_ns"].as_u64().is_some(), "{end_json:#}");
                assert!(end_json["tx_queue_mean_ns"].as_u64().is_some(), "{end_json:#}");
            }
            assert!(link["kernel"]["split"]["sender_queue_ns"].as_u64().is_some());
        }
        (counts, run.stderr)
    };
    let (sampled, stderr) = stamped("sample");
    if stderr.contains("no transmit timestamps") {
        util::say_skipped("sampled_transmit_stamps", "the kernel refuses them (before 6.2)");
        return;
    }
    assert!(stderr.contains("transmit stamps of one write per socket every 10 ms"), "{stderr}");
    let (all, _) = stamped("all");
    for (end, (sampled, all)) in sampled.iter().zip(&all).enumerate() {
        // 300 probes 1 ms apart take 0.3 s: about 30 ticks, against about 300 writes.
        assert!(*sampled >= 5, "end {end}: only {sampled} writes stamped");
        assert!(sampled * 2 < *all, "end {end}: {sampled} sampled against {all} with all");
    }
}

/// Loopback routes have no `quickack 1`: with one probe every 2 ms, each hop's ACK of an
/// answer waits for the next probe to carry it, so the far end's srtt is about the gap. With
/// `--quickack` every hop acknowledges after each read, and the far end's srtt is the wire's.
#[test]
fn quickack_makes_the_far_end_s_srtt_the_wire_s() {
    let (_hops, b) = chain();
    let far_srtts = |extra: &[&str]| {
        let mut args = vec!["-f", &b, "-n", "A", "-c", "200", "-i", "2ms", "-w", "1"];
        args.extend_from_slice(extra);
        let run = run_source(&args, b"", RUN_TIMEOUT);
        assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
        let report = run.report();
        assert_valid(&report.json);
        assert_eq!(report.json["parameters"]["quickack"], !extra.is_empty());
        links(&report.json)
            .iter()
            .map(|link| link["kernel"]["far"]["rtt_ns"].as_u64().expect("a far-end srtt"))
            .collect::<Vec<u64>>()
    };
    let delayed = far_srtts(&[]);
    let quick = far_srtts(&["--quickack"]);
    for (link, (delayed, quick)) in delayed.iter().zip(&quick).enumerate() {
        assert!(
            quick * 4 < *delayed,
            "link {link}: far srtt {quick} ns with --quickack, {delayed} ns without"
        );
    }
}

/// A user-space element on B ⇄ Z (the project's `tcp-delay`, 2 ms each way) ends B's TCP
/// connection short of Z: the stamps see a slow link, the kernel a fast wire, and the verdict
/// says the bytes are held by something between the two hops.
#[test]
fn a_link_held_up_past_the_socket_s_tcp_peer_is_told_apart_from_a_slow_wire() {
    let (_z, z_addr) = spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-n", "Z"]);
    let (_element, element_addr) = util::delay(z_addr, 2);
    let element_text = element_addr.to_string();
    let (_b, b_addr) =
        spawn_listening(MAIN_BIN, &["-l", "127.0.0.1:0", "-f", &element_text, "-n", "B"]);
    let b = b_addr.to_string();
    let run =
        run_source(&["-f", &b, "-n", "A", "-c", "100", "-i", "1ms", "-w", "1"], b"", RUN_TIMEOUT);
    assert_eq!(run.status.and_then(|status| status.code()), Some(0), "{}", run.stderr);
    let report = run.report();
    assert_eq!(report.verdict_names(), Some("B ⇄ Z"), "{}", run.stderr);
    assert!(
        report.verdict.contains("the TCP connection ends short of the next hop"),
        "{}",
        report.verdict
    );
    // Without the element the same words never appear.
    let direct = run_source(&["-f", &z_addr.to_string(), "-n", "A", "-c", "50"], b"", RUN_TIMEOUT);
    assert!(!direct.stderr.contains("ends short of the next hop"), "{}", direct.stderr);
}
