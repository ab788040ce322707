//! The connection's life without sockets: fake sockets whose far ends the test holds, a fake
//! connector that decides when a next hop's connect completes or fails, and fake time that
//! moves only when the test moves it (no sleeping). Each test drives one connection through
//! the same `turn` and `expire` the hop's loop calls.
//!
//! The round's `now_ns` is the wake-up's time, which the tests set *before* the fake clock
//! moves on to when the bytes are actually read or written: a stamp taken from the wake-up
//! instead of the clock read beside its system call shows as the wrong number.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Connection, Context, Expiry, Turn};
use crate::core::Peer;
use crate::core::fake::{ConnectState, FakeClock, FakeConnector, FakeSocket, Remote, wake};
use crate::hop::ingress::{IngressConfig, IngressTotals, ProbeSchedule};
use crate::hop::{HopConfig, READ_ROUND_BYTES, TURN_BYTES};
use crate::wire::{
    self, DATA_FROM_SERVER, Direction, Fault, FaultCode, Frame, Header, Kind, PathEntry, Role,
    Stamp,
};

const NEXT_HOP: &str = "127.0.0.1:9100";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("an address")
}

fn config(role: Role) -> HopConfig {
    HopConfig {
        name: "B".to_string(),
        tags: Vec::new(),
        listen: addr("127.0.0.1:9000"),
        forward_to: (role != Role::Echo).then(|| (addr(NEXT_HOP), NEXT_HOP.to_string())),
        remove_perf_headers: role == Role::StrippingRelay,
        timeout: Duration::from_secs(2),
        busy_poll: false,
        allow: Vec::new(),
        max_conns: None,
        metrics: None,
        metrics_buckets: Default::default(),
        metrics_chain: None,
        ingress: (role == Role::Ingress).then(|| IngressConfig {
            probe_interval: Some(Duration::from_millis(10)),
            report_interval: None,
            presentation: Default::default(),
            output: None,
        }),
    }
}

/// One connection through a hop of `role`, its client's far end, and the fake world.
struct Rig {
    clock: FakeClock,
    net: FakeConnector,
    config: HopConfig,
    role: Role,
    totals: IngressTotals,
    connection: Connection<FakeSocket>,
    client: Remote,
}

impl Rig {
    fn new(role: Role) -> Rig {
        let clock = FakeClock::at(1_000);
        let net = FakeConnector::new(&clock);
        let (socket, client) = FakeSocket::accepted(&clock, addr("127.0.0.1:9000"));
        let upstream = Peer::new(socket, addr("127.0.0.1:50000"), "B");
        let connection = Connection::new(0, upstream, role, clock.peek()).expect("buffers");
        let config = config(role);
        let mut rig =
            Rig { clock, net, config, role, totals: IngressTotals::default(), connection, client };
        if role == Role::Ingress {
            rig.connection.start_ingress(&rig.net, &rig.config);
        }
        rig
    }

    /// The next hop's far end (its first connect).
    fn next_hop(&self) -> Remote {
        self.net.remote(0)
    }

    /// One turn as the loop gives it: readiness from the fakes, the wake-up's time `now_ns`.
    fn turn_at(&mut self, now_ns: u64) -> Turn {
        wake(&mut self.connection.upstream);
        if let Some(peer) = self.connection.downstream.peer_mut() {
            wake(peer);
        }
        let mut context =
            Context { config: &self.config, role: self.role, totals: &mut self.totals };
        self.connection.turn(&mut context, &self.net, now_ns)
    }

    /// Turns until the connection has nothing more to do (or is finished). A socket opened
    /// during a turn is first woken by the next, as a poll would report it; the extra turns
    /// are spurious wake-ups, which the core must take in its stride.
    fn settle(&mut self) -> Turn {
        let mut idle = 0;
        for _ in 0..1_000 {
            match self.turn_at(self.clock.peek()) {
                Turn::MoreToDo => idle = 0,
                Turn::Done if idle == 2 => return Turn::Done,
                Turn::Done => idle += 1,
                finished => return finished,
            }
        }
        panic!("the connection never settled");
    }

    fn settled(&mut self) {
        match self.settle() {
            Turn::Done => {}
            Turn::MoreToDo => unreachable!(),
            Turn::Finished(reason) => panic!("the connection ended: {reason:?}"),
        }
    }

    /// The next hop's connect completes (or, before it is made, will complete at once).
    fn connect_next_hop(&mut self) {
        match self.net.connects.borrow().first() {
            Some((_, remote)) => remote.wire().connect = ConnectState::Connected,
            None => self.net.starts.set(ConnectState::Connected),
        }
    }
}

/// A source's PATH announcement: it is hop 0, so the hop under test is hop 1.
fn source_path() -> Vec<u8> {
    let mut entries = Vec::new();
    PathEntry::new(Role::Source, "A", Some(addr("127.0.0.1:50000")), None).emit(&mut entries);
    wire::control_frame(Kind::Path, &entries)
}

/// A DATA frame with the given stamp records and payload.
fn data(sequence: u64, flags: u8, stamps: &[Stamp], payload: &[u8]) -> Vec<u8> {
    let header = Header {
        kind: Kind::Data,
        flags,
        record_count: stamps.len(),
        sequence,
        payload_len: payload.len(),
    };
    let mut out = vec![0; header.total_len()];
    wire::emit_frame(&mut out, &header, &[], stamps, payload);
    out
}

/// A frame from the source: its own record only.
fn from_source(sequence: u64, payload: &[u8]) -> Vec<u8> {
    data(sequence, 0, &[Stamp::new(0, Direction::Down, 10, 20)], payload)
}

/// An answer coming up to the hop under test (hop 1) from the echo end (hop 2): the source's,
/// this relay's down and the echo's turn records.
fn answer_to_hop_1(payload: &[u8]) -> Vec<u8> {
    let records = [
        Stamp::new(0, Direction::Down, 10, 20),
        Stamp::new(1, Direction::Down, 30, 40),
        Stamp::new(2, Direction::Turn, 50, 60),
    ];
    data(0, 0, &records, payload)
}

/// Every whole frame in `stream`, with its offset in it.
#[track_caller]
fn frames(stream: &[u8]) -> Vec<(usize, Frame<Vec<u8>>)> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(frame) = wire::next_frame(&stream[at..]).expect("well-formed frames") {
        let len = frame.total_len();
        found.push((at, Frame::new_unchecked(stream[at..at + len].to_vec())));
        at += len;
    }
    assert_eq!(at, stream.len(), "the stream ends with a whole frame");
    found
}

/// The fake time of the write call that handed over the byte at `offset` of `remote`'s stream.
#[track_caller]
fn handed_over_at(remote: &Remote, offset: usize) -> u64 {
    let wire = remote.wire();
    let call =
        wire.handovers.iter().find(|call| (call.start..call.start + call.len).contains(&offset));
    call.expect("a call handed the byte over").at_ns
}

fn the_data_frames(stream: &[u8]) -> Vec<(usize, Frame<Vec<u8>>)> {
    frames(stream).into_iter().filter(|(_, frame)| frame.kind() == Kind::Data).collect()
}

#[test]
fn test_a_relay_stamps_a_frame_down_with_its_read_and_its_hand_over() {
    let mut rig = Rig::new(Role::Relay);
    // The bytes arrive at 1,000 and their read takes 50 ns; the loop woke up at 900 (its
    // time serves timers only).
    rig.client.wire().read_takes_ns = 50;
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"hello"));
    rig.turn_at(900);
    // Still connecting: nothing can be written yet.
    assert_eq!(rig.net.connects.borrow().len(), 1);
    assert!(rig.next_hop().wire().sent.is_empty());

    rig.clock.set(5_000);
    rig.connect_next_hop();
    rig.turn_at(4_900);
    let stream = rig.next_hop().wire().sent.clone();
    let found = frames(&stream);
    assert_eq!(found[0].1.kind(), Kind::Path, "the path goes down first");
    let (offset, frame) = &found[1];
    assert_eq!((frame.record_count(), frame.payload()), (2, &b"hello"[..]));
    let ours = frame.record(1);
    assert_eq!((ours.hop, ours.direction), (1, Direction::Down));
    assert_eq!(ours.read_ns, 1_050, "read stamp: the clock right after the read returned");
    assert_eq!(ours.write_ns, 5_000, "write stamp: right before the write that handed it over");
    assert_eq!(handed_over_at(&rig.next_hop(), *offset), ours.write_ns);
    assert_eq!(frame.record(0), Stamp::new(0, Direction::Down, 10, 20), "the source's record");
}

#[test]
fn test_a_relay_stamps_an_answer_up_with_its_read_and_its_hand_over() {
    let mut rig = Rig::new(Role::Relay);
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"hello"));
    rig.connect_next_hop();
    rig.settled();
    let next_hop = rig.next_hop();
    next_hop.take_sent();
    let answer = answer_to_hop_1(b"hello");
    // The path's answer first, as the echoing end sends it.
    next_hop.arrive(&source_path());
    next_hop.arrive(&answer);
    rig.client.set_room(0); // the source is not reading yet
    rig.clock.set(8_000);
    rig.turn_at(7_900);
    assert!(rig.client.wire().sent.is_empty());
    rig.clock.set(9_500);
    rig.client.set_room(usize::MAX);
    rig.turn_at(9_400);
    let stream = rig.client.take_sent();
    let (offset, frame) = the_data_frames(&stream).remove(0);
    assert_eq!(frame.record_count(), 4);
    let ours = frame.record(3);
    assert_eq!((ours.hop, ours.direction), (1, Direction::Up));
    assert_eq!(ours.read_ns, 8_000);
    assert_eq!(ours.write_ns, 9_500, "the write that started the hand-over, not the refused one");
    assert_eq!(handed_over_at(&rig.client, offset), 9_500);
}

#[test]
fn test_a_short_write_stamps_the_frame_it_started_and_restamps_the_one_it_did_not() {
    let mut rig = Rig::new(Role::Relay);
    let path = source_path();
    let first = from_source(0, &[0xa5; 1_000]);
    rig.client.arrive(&path);
    rig.client.arrive(&first);
    rig.client.arrive(&from_source(1, &[0x5a; 1_000]));
    rig.turn_at(1_000);
    // The kernel takes the path and half the first frame (its stamps included), then no more.
    rig.next_hop().set_room(path.len() + first.len() / 2);
    rig.connect_next_hop();
    rig.clock.set(5_000);
    rig.turn_at(5_000);
    assert_eq!(rig.next_hop().wire().handovers.len(), 1, "one short write, then it waits");
    rig.clock.set(7_000);
    rig.next_hop().set_room(usize::MAX);
    rig.turn_at(7_000);
    let stream = rig.next_hop().take_sent();
    let found = the_data_frames(&stream);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].1.record(1).write_ns, 5_000, "started by the short write");
    assert_eq!(found[1].1.record(1).write_ns, 7_000, "not started by it: the next write's");
    for (offset, frame) in &found {
        assert_eq!(handed_over_at(&rig.next_hop(), *offset), frame.record(1).write_ns);
    }
}

/// A large frame with nothing queued before it is handed to the kernel from the buffer it was
/// read into: one write call gathering its new headers and its payload, stamped right before
/// that call. What the kernel does not take is queued as started, so the next write does not
/// restamp it; a refused call leaves the frame to the ordinary queue and the write that starts
/// it. A small frame is copied, to share a write with the frames queued beside it.
#[test]
fn test_a_large_frame_is_written_from_where_it_was_read_with_that_writes_stamp() {
    use std::cell::RefCell;
    use std::rc::Rc;

    use crate::core::{SharedResidence, THROUGH_MIN_PAYLOAD};
    use crate::report::metrics::{BucketLayout, HopResidence};

    let large: Vec<u8> = (0..2 * THROUGH_MIN_PAYLOAD).map(|i| (i % 251) as u8).collect();
    let small = vec![0xa5; THROUGH_MIN_PAYLOAD - 1];
    // (payload, room the kernel has for the first write, gathered?, stamped by the first write?)
    let cases = [
        (&large, usize::MAX, true, true),
        (&large, 40, true, true), // inside the headers, before our record's write stamp
        (&large, 20_000, true, true), // inside the payload
        (&large, 0, false, false), // refused: queued, stamped by the write that starts it
        (&small, usize::MAX, false, true),
    ];
    for (payload, room, gathered, first_write_stamps) in cases {
        let what = format!("{} B payload, room {room}", payload.len());
        let mut rig = Rig::new(Role::Relay);
        let residence = Rc::new(RefCell::new(HopResidence::new(&BucketLayout::default())));
        let sink: SharedResidence = residence.clone();
        rig.connection.measure_residence(&sink);
        rig.client.arrive(&source_path());
        rig.connect_next_hop();
        rig.settled();
        rig.next_hop().set_room(room);
        rig.client.wire().read_takes_ns = 50;
        rig.clock.set(2_000);
        rig.client.arrive(&from_source(1, payload));
        rig.turn_at(1_900);
        rig.clock.set(6_000);
        rig.next_hop().set_room(usize::MAX);
        rig.turn_at(5_900);

        let stream = rig.next_hop().wire().sent.clone();
        let (offset, frame) = the_data_frames(&stream).remove(0);
        assert_eq!(frame.payload(), &payload[..], "{what}: the payload intact");
        let ours = frame.record(1);
        assert_eq!(ours.read_ns, 2_050, "{what}");
        let expected_write_ns = if first_write_stamps { 2_050 } else { 6_000 };
        assert_eq!(ours.write_ns, expected_write_ns, "{what}: the write that started it");
        assert_eq!(handed_over_at(&rig.next_hop(), offset), ours.write_ns, "{what}");
        let next_hop = rig.next_hop();
        let parts = next_hop
            .wire()
            .handovers
            .iter()
            .find(|call| call.start == offset)
            .map(|call| call.parts);
        assert_eq!(parts, Some(if gathered { 2 } else { 1 }), "{what}: how it was written");
        assert_eq!(
            (residence.borrow().down.count, residence.borrow().down.sum_ns),
            (1, u128::from(ours.write_ns - ours.read_ns)),
            "{what}: its residence, arrival (the read: no kernel stamp here) to hand-over"
        );
    }
}

/// The same way up: a large answer goes to the source from where it was read.
#[test]
fn test_a_large_answer_is_written_up_from_where_it_was_read() {
    let mut rig = Rig::new(Role::Relay);
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"x"));
    rig.connect_next_hop();
    rig.settled();
    let payload = vec![0x3c; 1 << 15];
    let answer = answer_to_hop_1(&payload);
    rig.next_hop().arrive(&source_path());
    rig.settled();
    let sent_before = rig.client.wire().sent.len();
    rig.clock.set(8_000);
    rig.next_hop().arrive(&answer);
    rig.turn_at(7_900);
    let stream = rig.client.wire().sent.clone();
    let (offset, frame) = the_data_frames(&stream).remove(0);
    assert!(offset >= sent_before);
    assert_eq!((frame.record_count(), frame.payload()), (4, &payload[..]));
    assert_eq!((frame.record(3).read_ns, frame.record(3).write_ns), (8_000, 8_000));
    let wire = rig.client.wire();
    let call = wire.handovers.iter().find(|call| call.start == offset).expect("a call at it");
    assert_eq!((call.parts, call.len), (2, frame.total_len()), "one gathering write");
}

#[test]
fn test_half_close_passes_down_then_up() {
    let mut rig = Rig::new(Role::Relay);
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"x"));
    rig.client.close();
    rig.connect_next_hop();
    rig.settled();
    let next_hop = rig.next_hop();
    assert!(next_hop.wire().write_shut, "the source's end went down after its frames");
    assert!(!rig.client.wire().write_shut, "the way up is still open");
    let answer = answer_to_hop_1(b"x");
    next_hop.arrive(&source_path());
    next_hop.arrive(&answer);
    next_hop.close();
    assert!(matches!(rig.settle(), Turn::Finished(None)), "a clean end");
    assert!(rig.client.wire().write_shut, "the next hop's end went up after the answer");
    assert_eq!(the_data_frames(&rig.client.take_sent()).len(), 1);
}

#[test]
fn test_an_ingress_chain_ends_each_direction_on_its_own() {
    // At the egress, from an ingress: the server ends its side first, the client goes on.
    let mut rig = Rig::new(Role::StrippingRelay);
    let mut entries = Vec::new();
    PathEntry::new(Role::Ingress, "I", None, None).emit(&mut entries);
    rig.client.arrive(&wire::control_frame(Kind::Path, &entries));
    rig.connect_next_hop();
    rig.settled();
    let server = rig.next_hop();
    server.close();
    rig.settled();
    assert!(rig.client.wire().write_shut, "the server's end went up");
    assert!(!server.wire().write_shut, "the client's side is still open");
    rig.client.arrive(&data(0, 0, &[Stamp::new(0, Direction::Down, 1, 2)], b"late"));
    rig.settled();
    assert_eq!(server.take_sent(), b"late", "the client's bytes still reach the server");
    rig.client.close();
    assert!(matches!(rig.settle(), Turn::Finished(None)));
    assert!(server.wire().write_shut, "and then the client's end");
}

#[track_caller]
fn the_fault(stream: &[u8]) -> Fault {
    let found = frames(stream);
    let fault = found.iter().find(|(_, frame)| frame.kind() == Kind::Fault).expect("a FAULT");
    Fault::parse(fault.1.payload()).expect("a well-formed FAULT")
}

#[test]
fn test_a_next_hop_that_never_connects_is_a_connect_timeout_going_up() {
    let mut rig = Rig::new(Role::Relay);
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"x"));
    rig.settled();
    let timeout_ns = rig.config.timeout.as_nanos() as u64;
    let start_ns = rig.clock.peek();
    let expire = |rig: &mut Rig, now_ns| rig.connection.expire(&rig.config, &rig.net, now_ns);
    assert!(matches!(expire(&mut rig, start_ns + timeout_ns - 1), Expiry::Running));
    rig.clock.set(start_ns + timeout_ns);
    assert!(matches!(expire(&mut rig, start_ns + timeout_ns), Expiry::Faulted));
    rig.settled();
    let fault = the_fault(&rig.client.take_sent());
    assert_eq!((fault.hop, fault.code), (1, FaultCode::ConnectTimeout));
    assert!(fault.message.contains("timed out after 2 s connecting"), "{}", fault.message);
    assert_eq!(rig.net.forgotten.get(), 1, "the connecting socket left the poll");
}

#[test]
fn test_an_unreachable_next_hop_is_a_fault_going_up() {
    // Refused at once (no route), and refused once the connect is under way.
    for at_once in [true, false] {
        let mut rig = Rig::new(Role::Relay);
        if at_once {
            rig.net.fail_next.set(Some(std::io::ErrorKind::ConnectionRefused));
        }
        rig.client.arrive(&source_path());
        rig.settled();
        if !at_once {
            rig.next_hop().wire().connect =
                ConnectState::Failed(std::io::ErrorKind::ConnectionRefused);
            rig.settled();
        }
        let stream = rig.client.take_sent();
        let fault = the_fault(&stream);
        assert_eq!((fault.hop, fault.code), (1, FaultCode::Unreachable), "at once: {at_once}");
        assert!(fault.message.contains("cannot connect"), "{}", fault.message);
        let path = &frames(&stream)[0].1;
        let entries = PathEntry::parse_all(path.payload()).unwrap();
        assert_eq!(entries.last().map(|entry| entry.role), Some(Role::Unreached));
    }
}

#[test]
fn test_a_slow_reader_stops_the_reads_from_the_other_side() {
    let mut rig = Rig::new(Role::Relay);
    rig.connect_next_hop();
    rig.client.arrive(&source_path());
    rig.settled();
    rig.next_hop().set_room(0); // the next hop reads nothing
    let payload = vec![0x77; 60_000];
    let count = 60; // 3.6 MB: more than both buffers hold
    for sequence in 0..count {
        rig.client.arrive(&from_source(sequence, &payload));
    }
    rig.settled();
    let reads = rig.client.wire().reads;
    for _ in 0..20 {
        rig.turn_at(rig.clock.peek());
    }
    assert_eq!(rig.client.wire().reads, reads, "no read while the frame at the head has no room");
    assert!(rig.connection.down.stalled);
    assert!(rig.connection.down.output.len() <= super::BUFFER_LEN, "the buffers are bounded");
    assert!(!rig.client.wire().inbox.is_empty(), "the rest waits in the kernel: its window closes");
    assert!(rig.next_hop().wire().refused_writes > 0, "the slow reader's socket said WouldBlock");
    // The reader catches up: everything goes through, whole and in order.
    rig.next_hop().set_room(usize::MAX);
    rig.settled();
    let stream = rig.next_hop().take_sent();
    let found = the_data_frames(&stream);
    let sequences: Vec<u64> = found.iter().map(|(_, frame)| frame.sequence()).collect();
    assert_eq!(sequences, (0..count).collect::<Vec<_>>());
    assert!(found.iter().all(|(_, frame)| frame.payload() == payload));
    assert!(found.iter().any(|(_, frame)| frame.record(1).held_back), "held back, and says so");
}

#[test]
fn test_a_turn_stops_after_its_byte_budget() {
    let mut rig = Rig::new(Role::Relay);
    rig.connect_next_hop();
    rig.client.arrive(&source_path());
    rig.settled();
    let payload = vec![1; 100_000];
    for sequence in 0..4 {
        rig.client.arrive(&from_source(sequence, &payload));
    }
    let waiting = rig.client.wire().inbox.len();
    assert!(matches!(rig.turn_at(rig.clock.peek()), Turn::MoreToDo), "budget used, work left");
    let read = waiting - rig.client.wire().inbox.len();
    assert!(read as u64 >= TURN_BYTES.min(READ_ROUND_BYTES as u64), "it read {read}");
    assert!(read <= READ_ROUND_BYTES, "one round reads at most READ_ROUND_BYTES: it read {read}");
    let mut turns = 1;
    while matches!(rig.turn_at(rig.clock.peek()), Turn::MoreToDo) {
        turns += 1;
    }
    assert!(turns >= 400_000 / READ_ROUND_BYTES, "{turns} turns for 400 kB");
    assert_eq!(the_data_frames(&rig.next_hop().take_sent()).len(), 4);
}

#[test]
fn test_an_egress_frames_server_bytes_that_answer_nothing_as_server_data() {
    let mut rig = Rig::new(Role::StrippingRelay);
    rig.client.arrive(&source_path());
    rig.connect_next_hop();
    rig.settled();
    let server = rig.next_hop();
    // A banner before any frame, an echo of the frame sent, and more than was owed.
    rig.clock.set(2_000);
    server.arrive(b"HELLO\n");
    rig.settled();
    rig.client.arrive(&from_source(0, b"ping"));
    rig.clock.set(3_000);
    rig.settled();
    assert_eq!(server.take_sent(), b"ping", "the server gets the payload, plain");
    rig.clock.set(4_000);
    server.arrive(b"pingEXTRA");
    rig.settled();
    let up = rig.the_up_frames();
    let kinds: Vec<(u8, Vec<u8>)> =
        up.iter().map(|frame| (frame.flags(), frame.payload().to_vec())).collect();
    assert_eq!(
        kinds,
        [
            (DATA_FROM_SERVER, b"HELLO\n".to_vec()),
            (0, b"ping".to_vec()),
            (DATA_FROM_SERVER, b"EXTRA".to_vec())
        ]
    );
    let banner = up[0].record(0);
    assert_eq!((banner.hop, banner.direction, banner.read_ns), (1, Direction::Up, 2_000));
    let answer = &up[1];
    assert_eq!(answer.record_count(), 3, "the source's, the egress's down and up records");
    assert_eq!(answer.record(1).write_ns, 3_000, "the payload's hand-over to the server");
    assert_eq!(answer.record(2).read_ns, 4_000, "the answer's read");
}

impl Rig {
    fn the_up_frames(&self) -> Vec<Frame<Vec<u8>>> {
        the_data_frames(&self.client.take_sent()).into_iter().map(|(_, frame)| frame).collect()
    }
}

#[test]
fn test_probes_follow_the_interval_by_the_time_given() {
    let mut probes = ProbeSchedule::starting(0, 10_000_000);
    assert!(!probes.due(9_999_999));
    assert!(probes.due(10_000_000));
    assert!(!probes.due(10_000_000), "one per interval");
    assert_eq!(probes.next_ns(), 20_000_000);
    // A late wake-up: one probe, and the next stays on the grid (no burst, no drift).
    assert!(probes.due(45_000_000));
    assert_eq!(probes.next_ns(), 50_000_000);
    assert!(!probes.due(49_999_999));
}

#[test]
fn test_an_ingress_frames_its_client_and_probes_and_hands_server_bytes_back_plain() {
    let mut rig = Rig::new(Role::Ingress);
    rig.connect_next_hop();
    rig.clock.set(2_000);
    rig.client.arrive(b"GET / HTTP/1.1\r\n\r\n");
    rig.settled();
    rig.clock.set(12_000);
    assert!(rig.connection.queue_probe(11_000), "a probe on the connection, generated at 11,000");
    rig.settled();
    let stream = rig.next_hop().take_sent();
    let found = frames(&stream);
    let entries = PathEntry::parse_all(found[0].1.payload()).unwrap();
    assert_eq!(entries[0].role, Role::Ingress, "it announces the path itself");
    let client_frame = &found[1].1;
    assert_eq!(
        (client_frame.sequence(), client_frame.payload()),
        (0, &b"GET / HTTP/1.1\r\n\r\n"[..])
    );
    let ours = client_frame.record(0);
    assert_eq!((ours.hop, ours.read_ns, ours.write_ns), (0, 2_000, 2_000));
    let probe = &found[2].1;
    assert_eq!((probe.sequence(), probe.payload_len()), (1, 0));
    assert_eq!((probe.record(0).read_ns, probe.record(0).write_ns), (11_000, 12_000));
    assert_eq!(handed_over_at(&rig.next_hop(), found[2].0), 12_000);
    // The server's bytes come up framed; the client gets them plain.
    let reply =
        data(0, DATA_FROM_SERVER, &[Stamp::new(1, Direction::Up, 5, 6)], b"HTTP/1.1 200 OK");
    rig.next_hop().arrive(&reply);
    rig.settled();
    assert_eq!(rig.client.take_sent(), b"HTTP/1.1 200 OK");
    assert_eq!(rig.connection.ingress.as_ref().unwrap().server_bytes, 15);
}

#[test]
fn test_an_egress_takes_bytes_before_a_frame_reached_the_server_as_the_servers_own() {
    let mut rig = Rig::new(Role::StrippingRelay);
    rig.client.arrive(&source_path());
    rig.connect_next_hop();
    rig.settled();
    let server = rig.next_hop();
    server.set_room(0); // the frame's payload cannot start towards the server yet
    rig.client.arrive(&from_source(0, b"ping"));
    rig.settled();
    server.arrive(b"ping"); // the same bytes, but they cannot be its answer
    rig.settled();
    server.set_room(usize::MAX);
    rig.settled();
    assert_eq!(server.take_sent(), b"ping");
    server.arrive(b"ping");
    rig.settled();
    let up = rig.the_up_frames();
    let flags: Vec<u8> = up.iter().map(|frame| frame.flags()).collect();
    assert_eq!(flags, [DATA_FROM_SERVER, 0], "the server's own bytes, then the answer");
    assert_eq!(up[1].record_count(), 3);
}

#[test]
fn test_an_echoing_end_turns_a_frame_with_its_read_and_its_hand_over() {
    let mut rig = Rig::new(Role::Echo);
    rig.client.wire().read_takes_ns = 30;
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"ping"));
    rig.client.set_room(0);
    rig.turn_at(900);
    assert!(rig.net.connects.borrow().is_empty(), "the echoing end opens nothing");
    rig.clock.set(3_000);
    rig.client.set_room(usize::MAX);
    rig.settled();
    let stream = rig.client.take_sent();
    let found = frames(&stream);
    let path = PathEntry::parse_all(found[0].1.payload()).unwrap();
    assert_eq!(path.iter().map(|entry| entry.role).collect::<Vec<_>>(), [Role::Source, Role::Echo]);
    let (offset, turned) = &found[1];
    assert_eq!((turned.record_count(), turned.payload()), (2, &b"ping"[..]));
    let ours = turned.record(1);
    assert_eq!((ours.hop, ours.direction), (1, Direction::Turn));
    assert_eq!((ours.read_ns, ours.write_ns), (1_030, 3_000));
    assert_eq!(handed_over_at(&rig.client, *offset), 3_000);
}

#[test]
fn test_a_next_hop_lost_mid_stream_is_a_fault_lost_going_up() {
    let mut rig = Rig::new(Role::Relay);
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"x"));
    rig.connect_next_hop();
    rig.settled();
    rig.next_hop().wire().read_error = Some(std::io::ErrorKind::ConnectionReset);
    rig.settled();
    let fault = the_fault(&rig.client.take_sent());
    assert_eq!((fault.hop, fault.code), (1, FaultCode::Lost));
    assert!(fault.message.contains("lost the connection after 1 frames"), "{}", fault.message);
}

#[test]
fn test_frames_unanswered_past_the_timeout_are_a_fault_no_answer() {
    let mut rig = Rig::new(Role::Relay);
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"x"));
    rig.connect_next_hop();
    rig.settled();
    let later_ns = rig.clock.peek() + rig.config.timeout.as_nanos() as u64;
    rig.clock.set(later_ns);
    assert!(matches!(rig.connection.expire(&rig.config, &rig.net, later_ns), Expiry::Faulted));
    rig.settled();
    let fault = the_fault(&rig.client.take_sent());
    assert_eq!(fault.code, FaultCode::NoAnswer);
    assert!(fault.message.contains("with 1 frames outstanding"), "{}", fault.message);
}

#[test]
fn test_an_upstream_peer_that_stops_reading_is_closed_naming_it() {
    // The answers have nowhere to go: nothing is failed in-band, the connection is closed.
    let mut rig = Rig::new(Role::Echo);
    rig.client.arrive(&source_path());
    rig.client.set_room(0);
    rig.settled();
    let later_ns = rig.clock.peek() + rig.config.timeout.as_nanos() as u64;
    match rig.connection.expire(&rig.config, &rig.net, later_ns) {
        Expiry::Close(reason) => {
            let text = reason.to_string();
            assert!(text.contains("waiting for 127.0.0.1:50000 to read"), "{text}");
        }
        _ => panic!("a stuck reader is closed"),
    }
}

#[test]
fn test_bad_input_from_upstream_ends_the_connection() {
    let mut rig = Rig::new(Role::Relay);
    rig.client.arrive(b"GET / HTTP/1.1\r\n\r\n");
    match rig.settle() {
        Turn::Finished(Some(reason)) => {
            assert!(reason.to_string().contains("bad input from upstream"), "{reason}");
        }
        _ => panic!("a peer that does not speak the protocol is closed"),
    }
    assert!(rig.net.connects.borrow().is_empty(), "a stray client opens nothing downstream");
}

#[test]
fn test_an_ingress_whose_chain_breaks_resets_its_client() {
    let mut rig = Rig::new(Role::Ingress);
    rig.next_hop().wire().connect = ConnectState::Failed(std::io::ErrorKind::ConnectionRefused);
    match rig.settle() {
        Turn::Finished(Some(reason)) => {
            assert!(reason.to_string().contains("cannot connect"), "{reason}");
        }
        _ => panic!("the client's connection ends"),
    }
    assert!(rig.client.wire().reset, "the client hears a reset, as from a broken server");
}

#[test]
fn test_an_ingress_takes_the_path_and_a_receipt_at_the_time_given() {
    let mut rig = Rig::new(Role::Ingress);
    rig.connect_next_hop();
    rig.client.arrive(b"SET k v\r\n");
    rig.settled();
    let stream = rig.next_hop().take_sent();
    let found = frames(&stream);
    let sent = &found[1].1;
    // The path back as the egress answers it, then the frame's receipt (its turn record).
    let mut entries = found[0].1.payload().to_vec();
    PathEntry::new(Role::StrippingRelay, "E", None, None).emit(&mut entries);
    PathEntry::new(Role::PlainServer, "redis", None, None).emit(&mut entries);
    let receipt = data(
        sent.sequence(),
        0,
        &[sent.record(0), Stamp::new(1, Direction::Turn, 5_000, 5_100)],
        b"",
    );
    rig.clock.set(7_000);
    rig.next_hop().arrive(&wire::control_frame(Kind::Path, &entries));
    rig.next_hop().arrive(&receipt);
    rig.settled();
    assert_eq!(rig.totals.paths.len(), 1, "one distinct path");
    let run = &rig.totals.paths[0].run;
    assert_eq!(run.first_send_ns, Some(7_000), "the path's statistics start at the time given");
    assert_eq!(run.last_answer_ns, Some(7_000), "the receipt's read");
    let ingress = rig.connection.ingress.as_ref().unwrap();
    assert_eq!((ingress.receipts, ingress.client_bytes), (1, 9));
    assert!(rig.client.take_sent().is_empty(), "a receipt is not the client's");
}

#[test]
fn test_residence_is_reported_at_each_hand_over_and_a_passed_faults_code_kept() {
    use std::cell::RefCell;
    use std::rc::Rc;

    use crate::core::SharedResidence;
    use crate::report::metrics::{BucketLayout, HopResidence};

    let mut rig = Rig::new(Role::Relay);
    let residence = Rc::new(RefCell::new(HopResidence::new(&BucketLayout::default())));
    let sink: SharedResidence = residence.clone();
    rig.connection.measure_residence(&sink);
    // Down: read at 1,050 (the read takes 50 ns), handed over at 5,000.
    rig.client.wire().read_takes_ns = 50;
    rig.client.arrive(&source_path());
    rig.client.arrive(&from_source(0, b"hello"));
    rig.turn_at(900);
    assert_eq!(residence.borrow().down.count, 0, "not handed over while connecting");
    rig.clock.set(5_000);
    rig.connect_next_hop();
    rig.turn_at(4_900);
    assert_eq!((residence.borrow().down.count, residence.borrow().down.sum_ns), (1, 3_950));
    // Up: the answer is read at 8,000 and handed over at 9,500, after a refused write.
    let next_hop = rig.next_hop();
    next_hop.take_sent();
    let answer = answer_to_hop_1(b"hello");
    next_hop.arrive(&source_path());
    next_hop.arrive(&answer);
    rig.client.set_room(0);
    rig.clock.set(8_000);
    rig.turn_at(7_900);
    assert_eq!(residence.borrow().up.count, 0, "the refused write starts no hand-over");
    rig.clock.set(9_500);
    rig.client.set_room(usize::MAX);
    rig.turn_at(9_400);
    assert_eq!((residence.borrow().up.count, residence.borrow().up.sum_ns), (1, 1_500));
    // A FAULT from further down: passed on, its code kept for the hop's fault counts.
    let fault = Fault { hop: 2, code: FaultCode::NoAnswer, message: "Z: gave up".to_string() };
    next_hop.arrive(&wire::fault_frame(&fault));
    rig.settle();
    assert_eq!(rig.connection.passed_code, Some(FaultCode::NoAnswer));
    assert_eq!(the_fault(&rig.client.take_sent()).code, FaultCode::NoAnswer);
    assert!(rig.connection.failure.is_none(), "not this hop's own fault");
    // Control frames (PATH, FAULT) carry no record of ours: no residence for them.
    assert_eq!((residence.borrow().down.count, residence.borrow().up.count), (1, 1));
}
