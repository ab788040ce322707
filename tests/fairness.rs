//! The relay loop's fairness rule (`hop::TURN_BYTES`), on real sockets and without timing
//! assertions: while a bulk stream keeps relay B busy, a probe that reaches B waits for at most
//! the bulk connection's turn in progress, never for several of its turns. B's own stamps tell:
//! its down records say when the probe's last byte reached B (the kernel's receive timestamp)
//! and when B handed each frame on, so counting the bulk frames B handed on meanwhile needs no
//! clock but B's.

mod util;

use std::thread;
use std::time::Duration;

use subsegment_tcp_speeds::wire::{Direction, Kind, ReceiveClock, Stamp};
use util::frames::{Answer, Client};
use util::{MAIN_BIN, spawn_listening};

const BULK_PAYLOAD: usize = 16 * 1024;
const PROBES: u64 = 60;
/// One turn reads less than 192 KiB from the bulk connection's upstream socket: its rounds
/// before the last moved less than `hop::TURN_BYTES` (64 KiB) and the last reads at most
/// `hop::READ_ROUND_BYTES` (128 KiB). 12 frames of 16 KiB (and their headers) at most start
/// within it, plus the one straddling its start. (Hundreds did before the rule.)
const FRAMES_PER_TURN: usize = (64 + 128) * 1024 / BULK_PAYLOAD + 1;

/// B's down record of an answered frame.
fn b_down(answer: &Answer) -> Stamp {
    *answer
        .records
        .iter()
        .find(|stamp| stamp.hop == 1 && stamp.direction == Direction::Down)
        .expect("B's down record")
}

fn fairness_on(cpus: &[&str; 2]) {
    let (_z, z_addr) = spawn_listening(
        "taskset",
        &["-c", cpus[0], MAIN_BIN, "-l", "127.0.0.1:0", "-n", "Z", "--kernel-info", "off"],
    );
    let z = z_addr.to_string();
    let (_b, b_addr) = spawn_listening(
        "taskset",
        &["-c", cpus[1], MAIN_BIN, "-l", "127.0.0.1:0", "-f", &z, "-n", "B"],
    );

    let mut bulk = Client::connect(b_addr);
    bulk.handshake();
    let mut bulk_writer = bulk.stream.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    // The bulk stream runs until every probe is back, so each probe meets it.
    let writer = thread::spawn(move || {
        use std::io::Write;
        let payload = vec![7u8; BULK_PAYLOAD];
        let mut sequence = 0;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let frame = util::frames::data_frame(sequence, 1, &payload);
            bulk_writer.write_all(&frame).unwrap();
            sequence += 1;
        }
        bulk_writer.shutdown(std::net::Shutdown::Write).unwrap();
        sequence
    });
    let (started_tx, started) = std::sync::mpsc::channel();
    let reader = thread::spawn(move || {
        let mut handed_on = Vec::new();
        while let Some(answer) = bulk.read_frame().expect("the bulk stream's answers") {
            assert_eq!(answer.kind, Kind::Data);
            handed_on.push(b_down(&answer).write_ns);
            if handed_on.len() == 200 {
                let _ = started_tx.send(());
            }
        }
        handed_on
    });
    started.recv().expect("the bulk stream flows");

    let mut probe = Client::connect(b_addr);
    probe.handshake();
    let mut waits = Vec::new();
    for sequence in 0..PROBES {
        let answer = probe.round_trip(sequence, &[1u8; 64]);
        let stamp = b_down(&answer);
        waits.push((stamp.receive, stamp.arrival_ns().unwrap(), stamp.write_ns));
        thread::sleep(Duration::from_millis(2)); // spread over the bulk stream's life
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = writer.join().unwrap();
    let handed_on = reader.join().unwrap();
    assert_eq!(handed_on.len() as u64, sent, "every bulk frame came back");
    let last_bulk = *handed_on.last().unwrap();
    let measured: Vec<_> = waits
        .iter()
        .filter(|(clock, _, written_ns)| *clock == ReceiveClock::Kernel && *written_ns < last_bulk)
        .collect();
    if measured.len() < PROBES as usize / 2 {
        return util::say_skipped(
            "fairness",
            "too few probes met the bulk stream with kernel receive timestamps",
        );
    }
    let behind: Vec<usize> = measured
        .iter()
        .map(|(_, arrived_ns, written_ns)| {
            handed_on
                .iter()
                .filter(|&&bulk_ns| bulk_ns > *arrived_ns && bulk_ns < *written_ns)
                .count()
        })
        .collect();
    let worst = behind.iter().copied().max().unwrap();
    eprintln!(
        "fairness: bulk frames B handed on while a probe waited in it, per probe: {behind:?}"
    );
    assert!(
        worst <= FRAMES_PER_TURN,
        "a probe waited in B while B handed on {worst} bulk frames (one turn is at most \
         {FRAMES_PER_TURN}); per probe: {behind:?}"
    );
}

#[test]
fn a_probe_waits_for_at_most_one_turn_of_a_bulk_stream_on_one_cpu() {
    fairness_on(&["0", "0"]);
}

#[test]
fn a_probe_waits_for_at_most_one_turn_of_a_bulk_stream_on_two_cpus() {
    fairness_on(&["0", "1"]);
}
