//! The stamping rule as data structures, without sockets: which read completed which frame
//! ([`Inbound`]), which buffered frames have not started their hand-over yet and get the next
//! write's stamp ([`Outbound`]), and whether a kernel receive timestamp is believable
//! ([`ReceiveTimes`]). Times come in as arguments, so every rule is tested here with
//! hand-made timestamps.
//!
//! Where a frame's write stamp becomes final (its hand-over starts) is also where this
//! process's residence for it is known: an [`Outbound`] asked to measure it reports arrival →
//! write stamp to a [`ResidenceSink`] then, which is how a hop's `--metrics` gets its residence
//! histograms without any role having to report them.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use crate::buffer::Buffer;
use crate::wire::{self, Direction, Frame, RECORD_LEN, ReceiveClock, Stamp, WireError};

/// Reads remembered per buffer before consecutive ones are merged (see [`Inbound::received`]).
const MAX_READ_MARKS: usize = 64;

/// What a frame's read stamp says: when the read that completed it returned, and how long its
/// last bytes had waited in the receive queue before that (zero without a kernel stamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadStamp {
    pub read_ns: u64,
    pub receive: ReceiveClock,
    pub receive_wait_ns: u64,
    /// The bytes waited because the reader had stopped reading (its output was full).
    pub held_back: bool,
}

/// A whole frame at the head of an [`Inbound`], and the stamp of the read that completed it.
pub type HeadFrame<'a> = (Frame<&'a [u8]>, ReadStamp);

/// Bytes read from one socket, each run of them tagged with the stamp of the read call that
/// brought it. Positions are counted from the start of the stream, so compaction and consumption
/// in the buffer do not move them.
pub struct Inbound {
    buffer: Buffer,
    /// Stream position of `buffer.data()[0]`.
    consumed: u64,
    /// `(stream position just past the read's last byte, its stamp)`, oldest first.
    marks: VecDeque<(u64, ReadStamp)>,
    /// Reading was stopped for backpressure: reads until the queue is next found empty bring
    /// bytes that waited for that, not for a slow reader.
    held_back: bool,
}

impl Inbound {
    pub fn with_capacity(capacity: usize) -> io::Result<Inbound> {
        Ok(Inbound {
            buffer: Buffer::with_capacity(capacity)?,
            consumed: 0,
            marks: VecDeque::new(),
            held_back: false,
        })
    }

    /// Where the next read goes: at least `wanted` bytes.
    pub fn tail(&mut self, wanted: usize) -> Option<&mut [u8]> {
        self.buffer.tail(wanted)
    }

    /// Commits `count` bytes just read into the tail, with the stamp of that read.
    ///
    /// Past [`MAX_READ_MARKS`] unconsumed reads (a peer trickling bytes into one frame), the
    /// newest read is merged into the one before it and both keep the *newer* stamp: a frame
    /// completed by the earlier of the two then gets a stamp a little late, never one before
    /// its bytes.
    pub fn received(&mut self, count: usize, stamp: ReadStamp) {
        self.buffer.commit(count);
        let end = self.consumed + self.buffer.len() as u64;
        if self.marks.len() == MAX_READ_MARKS
            && let Some(last) = self.marks.back_mut()
        {
            *last = (end, stamp);
            return;
        }
        self.marks.push_back((end, stamp));
    }

    /// The stamp of the read that brought the last byte of the `len` bytes at the head: the
    /// frame about to be taken.
    pub fn stamp_of_head(&self, len: usize) -> ReadStamp {
        let last_byte_end = self.consumed + len as u64;
        debug_assert!(len <= self.buffer.len(), "a frame longer than what was read");
        self.marks
            .iter()
            .find(|(end, _)| *end >= last_byte_end)
            .map(|(_, stamp)| *stamp)
            .expect("every byte in the buffer came with a read mark")
    }

    /// Drops `count` bytes from the head, and the marks of reads wholly consumed.
    /// The whole frame at the head of the buffer, if one has come, with the stamp of the read
    /// that completed it: every role's loop over its input starts here. Only finds where frames
    /// end (`wire::next_frame` checks every limit); what a frame means is the role's business.
    pub fn next_frame(&self) -> Result<Option<HeadFrame<'_>>, WireError> {
        Ok(wire::next_frame(self.data())?.map(|frame| {
            let read = self.stamp_of_head(frame.total_len());
            (frame, read)
        }))
    }

    /// Bytes read into this buffer since it was made.
    pub fn total_received(&self) -> u64 {
        self.consumed + self.buffer.len() as u64
    }

    pub fn consume(&mut self, count: usize) {
        self.buffer.consume(count);
        self.consumed += count as u64;
        while self.marks.front().is_some_and(|(end, _)| *end <= self.consumed) {
            self.marks.pop_front();
        }
    }

    /// The reader stops reading this socket because its output is full (backpressure).
    pub fn hold_back(&mut self) {
        self.held_back = true;
    }

    /// Whether reads now bring bytes that waited for backpressure.
    pub fn held_back(&self) -> bool {
        self.held_back
    }

    /// A read found the queue empty: whatever waited for backpressure has been read.
    pub fn queue_emptied(&mut self) {
        self.held_back = false;
    }

    /// Drops everything buffered (a connection giving up on this direction).
    pub fn clear(&mut self) {
        self.consume(self.len());
    }
}

/// Where a queued frame's write stamp is to be written when its hand-over starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StampAt {
    /// Inside the frame itself, at this stream position of the output.
    Inline(u64),
    /// Elsewhere (a stripping relay keeps the record and sends only the payload): the time is
    /// handed out by [`Outbound::take_detached`], in order.
    Detached,
    /// Nowhere: bytes that leave the chain plain (an ingress's to its client), whose hand-over
    /// only ends a residence ([`Outbound::push_measured`]).
    Nowhere,
}

#[derive(Debug, Clone, Copy)]
struct Unstarted {
    /// Stream position of the frame's first byte.
    start: u64,
    stamp_at: StampAt,
    /// With residence measured: the direction of the frame's record and its arrival here.
    arrival: Option<(Direction, u64)>,
}

/// Where an [`Outbound`] that measures residence reports it: for each frame that carries
/// this process's record, arrival (the record's read less its receive-queue wait) to the
/// write stamp its hand-over started with, in ns, once that hand-over has started. The hop's
/// `--metrics` keeps integer bucket counts behind it, in the loop's own state.
pub trait ResidenceSink {
    fn residence(&mut self, direction: Direction, residence_ns: u64);
}

/// One sink shared by every connection of a single-threaded loop.
pub type SharedResidence = Rc<RefCell<dyn ResidenceSink>>;

/// Both stamped buffers read like the [`Buffer`] they wrap (`data`, `len`, `is_empty`,
/// `room`); only their own methods change it, so no byte moves without its stamps.
impl std::ops::Deref for Inbound {
    type Target = Buffer;
    fn deref(&self) -> &Buffer {
        &self.buffer
    }
}

impl std::ops::Deref for Outbound {
    type Target = Buffer;
    fn deref(&self) -> &Buffer {
        &self.buffer
    }
}

/// Bytes waiting to be written to one socket, with the frames among them whose hand-over has
/// not started: their write stamp is (re)patched right before every write call.
pub struct Outbound {
    buffer: Buffer,
    /// Stream position of `buffer.data()[0]`.
    consumed: u64,
    unstarted: VecDeque<Unstarted>,
    /// Write stamps of detached frames whose hand-over has started, oldest first.
    detached_started: VecDeque<u64>,
    /// Set by [`Outbound::measure_residence`]; `None` costs nothing per frame.
    residence: Option<SharedResidence>,
}

impl Outbound {
    pub fn with_capacity(capacity: usize) -> io::Result<Outbound> {
        Ok(Outbound {
            buffer: Buffer::with_capacity(capacity)?,
            consumed: 0,
            unstarted: VecDeque::new(),
            detached_started: VecDeque::new(),
            residence: None,
        })
    }

    /// From now on, every frame committed with its write stamp inline (its record is then
    /// read back from the buffer) or pushed with [`Outbound::push_detached_from`] reports its
    /// residence to `sink` when its hand-over starts.
    pub fn measure_residence(&mut self, sink: SharedResidence) {
        self.residence = Some(sink);
    }

    pub fn tail(&mut self, wanted: usize) -> Option<&mut [u8]> {
        self.buffer.tail(wanted)
    }

    fn end(&self) -> u64 {
        self.consumed + self.buffer.len() as u64
    }

    /// Bytes with no stamp of ours (control frames, plain payload), whole or not at all.
    pub fn push(&mut self, bytes: &[u8]) -> bool {
        self.buffer.push(bytes)
    }

    /// Commits a frame of `len` bytes emitted into the tail whose write stamp sits
    /// `write_stamp_offset` bytes into it ([`wire::write_stamp_offset`]).
    pub fn commit_frame(&mut self, len: usize, write_stamp_offset: usize) {
        debug_assert!(write_stamp_offset + 8 <= len, "the write stamp lies inside the frame");
        let start = self.end();
        let frame_at = self.buffer.len();
        self.buffer.commit(len);
        // The record this process just wrote, read back: its arrival, for the residence.
        let arrival = self.residence.as_ref().and_then(|_| {
            let record_at = frame_at + write_stamp_offset - wire::WRITE_STAMP_IN_RECORD;
            arrival_of(&wire::parse_record(&self.buffer.data()[record_at..][..RECORD_LEN]))
        });
        self.unstarted.push_back(Unstarted {
            start,
            stamp_at: StampAt::Inline(start + write_stamp_offset as u64),
            arrival,
        });
    }

    /// A frame whose hand-over started outside this (empty) buffer, written from where it lay
    /// ([`crate::core::Peer::send_through`]): `taken` bytes went to the kernel with the write
    /// stamp `write_ns`, which ends the residence of `stamp` (this process's record in it), and
    /// `rest` (the bytes the kernel did not take, in order) is queued as already started, so
    /// no later write restamps it. The caller has checked the room for the whole frame.
    pub fn started_through(
        &mut self,
        taken: usize,
        write_ns: u64,
        stamp: &Stamp,
        rest: [&[u8]; 2],
    ) {
        debug_assert!(self.is_empty(), "a frame written through has nothing queued before it");
        self.consumed += taken as u64;
        for part in rest {
            let queued = self.buffer.push(part);
            debug_assert!(queued, "room for the whole frame was checked");
        }
        let arrival = self.residence.as_ref().and_then(|_| arrival_of(stamp));
        self.report_residence(arrival, write_ns);
    }

    /// A frame that arrived at `arrival` started its hand-over at `write_ns`: its residence, to
    /// the sink when there is one. A write stamp before the arrival would break the stamping
    /// rule: left out, as the source's statistics leave out a negative sample.
    fn report_residence(&self, arrival: Option<(Direction, u64)>, write_ns: u64) {
        if let (Some((direction, arrival_ns)), Some(sink)) = (arrival, &self.residence)
            && let Some(residence_ns) = write_ns.checked_sub(arrival_ns)
        {
            sink.borrow_mut().residence(direction, residence_ns);
        }
    }

    /// Commits bytes emitted into the tail that carry no stamp of ours.
    pub fn commit_unstamped(&mut self, len: usize) {
        self.buffer.commit(len);
    }

    /// Pushes bytes whose write stamp is kept elsewhere (see [`Outbound::take_detached`]).
    pub fn push_detached(&mut self, bytes: &[u8]) -> bool {
        self.push_detached_measured(bytes, None)
    }

    /// As [`Outbound::push_detached`], for bytes whose record (kept elsewhere) is `stamp`: with
    /// residence measured, it is reported when their hand-over starts.
    pub fn push_detached_from(&mut self, bytes: &[u8], stamp: &Stamp) -> bool {
        let arrival = self.residence.as_ref().and_then(|_| arrival_of(stamp));
        self.push_detached_measured(bytes, arrival)
    }

    /// Plain bytes whose record `stamp` stays behind (an ingress writing a frame's payload to
    /// its client): with residence measured, their hand-over's start ends it; otherwise, and
    /// for no bytes, a plain [`Outbound::push`], costing no clock reading.
    pub fn push_measured(&mut self, bytes: &[u8], stamp: &Stamp) -> bool {
        let arrival = self.residence.as_ref().and_then(|_| arrival_of(stamp));
        let (Some(arrival), false) = (arrival, bytes.is_empty()) else {
            return self.buffer.push(bytes);
        };
        let start = self.end();
        if !self.buffer.push(bytes) {
            return false;
        }
        let arrival = Some(arrival);
        self.unstarted.push_back(Unstarted { start, stamp_at: StampAt::Nowhere, arrival });
        true
    }

    fn push_detached_measured(&mut self, bytes: &[u8], arrival: Option<(Direction, u64)>) -> bool {
        let start = self.end();
        if !self.buffer.push(bytes) {
            return false;
        }
        self.unstarted.push_back(Unstarted { start, stamp_at: StampAt::Detached, arrival });
        true
    }

    /// Right before a write call of at most `max_len` bytes: every frame that call could start
    /// gets `write_ns`, and the bytes to write are returned. Bounding the call bounds the
    /// patching: frames past it cannot be started by it and are patched before the call that
    /// can, so a deep buffer of small frames is not walked again before every write.
    pub fn prepare_write(&mut self, write_ns: u64, max_len: usize) -> &[u8] {
        let len = self.buffer.len().min(max_len);
        let (consumed, end) = (self.consumed, self.consumed + len as u64);
        let data = self.buffer.data_mut();
        for frame in self.unstarted.iter().take_while(|frame| frame.start < end) {
            if let StampAt::Inline(at) = frame.stamp_at {
                let at = (at - consumed) as usize;
                wire::patch_write_stamp(&mut data[at..], write_ns);
            }
        }
        &self.buffer.data()[..len]
    }

    /// Whether a write now would start some frame's hand-over (so a stamp must be taken).
    pub fn has_unstarted(&self) -> bool {
        !self.unstarted.is_empty()
    }

    /// After a write call took `count` bytes: frames it started keep the stamp they were given
    /// before it; the rest wait for the next write's.
    /// Bytes handed to the kernel from this buffer since it was made.
    pub fn total_written(&self) -> u64 {
        self.consumed
    }

    pub fn written(&mut self, count: usize, write_ns: u64) {
        self.buffer.consume(count);
        self.consumed += count as u64;
        while let Some(frame) = self.unstarted.front().copied() {
            if frame.start >= self.consumed {
                break;
            }
            if frame.stamp_at == StampAt::Detached {
                self.detached_started.push_back(write_ns);
            }
            self.report_residence(frame.arrival, write_ns);
            self.unstarted.pop_front();
        }
    }

    /// The write stamp of the oldest detached frame whose hand-over has started.
    pub fn take_detached(&mut self) -> Option<u64> {
        self.detached_started.pop_front()
    }

    /// Drops everything queued (the socket it was for is gone).
    pub fn clear(&mut self) {
        self.consumed += self.buffer.len() as u64;
        self.buffer.consume(self.buffer.len());
        self.unstarted.clear();
        self.detached_started.clear();
    }
}

/// A record's direction and the arrival it says (its read less the receive-queue wait);
/// `None` for a wait longer than the clock's past.
fn arrival_of(stamp: &Stamp) -> Option<(Direction, u64)> {
    Some((stamp.direction, stamp.arrival_ns()?))
}

/// Whether this socket's kernel receive timestamps are in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelStamps {
    On,
    /// Refused by the kernel (SO_TIMESTAMPING): reads are their own arrival.
    Refused,
}

/// Longest believable wait before a socket's first read: its first bytes may have arrived
/// before the hop accepted the connection (they wait in the accept queue), for as long as the
/// accept took, which no read of ours has seen.
const FIRST_READ_LONGEST_NS: u64 = 1_000_000_000;

/// Judges one socket's kernel receive timestamps and turns them into receive-queue waits.
///
/// The kernel stamps CLOCK_REALTIME; the wait is (CLOCK_REALTIME right after the read) − (the
/// kernel's stamp of the last byte read): a duration, comparable with nothing of another host.
/// It is impossible when negative, or longer than the bytes can have been queued: once a read
/// has found the queue empty, bytes read later arrived after that read began; before any has,
/// [`FIRST_READ_LONGEST_NS`] bounds it.
#[derive(Debug, Clone)]
pub struct ReceiveTimes {
    pub kernel: KernelStamps,
    /// CLOCK_MONOTONIC_RAW at the start of the last read that found the queue empty: nothing
    /// read later can have arrived before it. `None` until a read has.
    queue_seen_empty_ns: Option<u64>,
    /// Reads whose kernel stamp was impossible, and those with a believable one.
    pub rejected: u64,
    pub kernel_stamped: u64,
}

impl ReceiveTimes {
    pub fn new(kernel: KernelStamps) -> ReceiveTimes {
        ReceiveTimes { kernel, queue_seen_empty_ns: None, rejected: 0, kernel_stamped: 0 }
    }

    /// The stamp of one read: it started at `started_ns` and returned at `read_ns` (RAW) /
    /// `realtime_ns` (REALTIME, read first), bringing bytes whose last one the kernel stamped
    /// `kernel_ns`; `emptied` says the read left the queue empty.
    pub fn stamp(
        &mut self,
        started_ns: u64,
        read_ns: u64,
        realtime_ns: u64,
        kernel_ns: Option<u64>,
        emptied: bool,
    ) -> ReadStamp {
        let after_read = ReadStamp { read_ns, ..ReadStamp::default() };
        let stamp = match (self.kernel, kernel_ns) {
            (KernelStamps::On, Some(kernel_ns)) => {
                let longest_ns = self
                    .queue_seen_empty_ns
                    .map_or(FIRST_READ_LONGEST_NS, |empty_ns| read_ns.saturating_sub(empty_ns));
                match realtime_ns.checked_sub(kernel_ns) {
                    Some(wait_ns) if wait_ns <= longest_ns => {
                        self.kernel_stamped += 1;
                        ReadStamp {
                            read_ns,
                            receive: ReceiveClock::Kernel,
                            receive_wait_ns: wait_ns,
                            held_back: false,
                        }
                    }
                    _ => {
                        self.rejected += 1;
                        ReadStamp { receive: ReceiveClock::KernelRejected, ..after_read }
                    }
                }
            }
            _ => after_read,
        };
        if emptied {
            self.queue_seen_empty_ns = Some(started_ns);
        }
        stamp
    }

    /// A read that found nothing (WouldBlock) started at `started_ns`.
    pub fn saw_empty(&mut self, started_ns: u64) {
        self.queue_seen_empty_ns = Some(started_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Direction, Header, Kind, Stamp, emit_frame, next_frame, write_stamp_offset};

    fn at(read_ns: u64) -> ReadStamp {
        ReadStamp { read_ns, ..ReadStamp::default() }
    }

    fn frame(sequence: u64, payload_len: usize) -> Vec<u8> {
        frame_with(sequence, payload_len, Stamp::new(0, Direction::Down, 1, 0))
    }

    fn frame_with(sequence: u64, payload_len: usize, stamp: Stamp) -> Vec<u8> {
        let header = Header { flags: 0, kind: Kind::Data, record_count: 1, sequence, payload_len };
        let mut out = vec![0; header.total_len()];
        emit_frame(&mut out, &header, &[], &[stamp], &vec![0xa5; payload_len]);
        out
    }

    /// Feeds `stream` to an Inbound in reads of the given sizes and stamps, taking whole frames
    /// after each read: returns (sequence, read stamp) of every frame.
    fn frames_read(stream: &[u8], reads: &[(usize, u64)]) -> Vec<(u64, u64)> {
        let mut inbound = Inbound::with_capacity(1 << 16).unwrap();
        let mut taken = Vec::new();
        let mut at_byte = 0;
        for &(count, read_ns) in reads {
            inbound.tail(count).unwrap()[..count]
                .copy_from_slice(&stream[at_byte..at_byte + count]);
            at_byte += count;
            inbound.received(count, at(read_ns));
            while let Some(frame) = next_frame(inbound.data()).unwrap() {
                let len = frame.total_len();
                taken.push((frame.sequence(), inbound.stamp_of_head(len).read_ns));
                inbound.consume(len);
            }
        }
        taken
    }

    #[test]
    fn test_a_frame_split_across_reads_gets_the_stamp_of_the_read_that_completed_it() {
        let stream = frame(7, 100);
        let taken = frames_read(&stream, &[(10, 1_000), (50, 2_000), (stream.len() - 60, 3_000)]);
        assert_eq!(taken, [(7, 3_000)]);
    }

    #[test]
    fn test_frames_completed_by_one_read_share_its_stamp_and_the_rest_wait_for_theirs() {
        let mut stream = frame(1, 10);
        stream.extend(frame(2, 10));
        stream.extend(frame(3, 10));
        let one = frame(1, 10).len();
        // Read 1: frames 1 and 2 whole and 5 bytes of 3; read 2: the rest of 3.
        let first = 2 * one + 5;
        let taken = frames_read(&stream, &[(first, 500), (stream.len() - first, 900)]);
        assert_eq!(taken, [(1, 500), (2, 500), (3, 900)]);
    }

    #[test]
    fn test_frames_taken_late_keep_the_stamp_of_their_own_read() {
        // Two reads arrive before any frame is taken (the hop was busy): each frame still gets
        // the read that completed it, not the later one.
        let mut inbound = Inbound::with_capacity(1 << 16).unwrap();
        let (a, b) = (frame(1, 3), frame(2, 3));
        for (bytes, read_ns) in [(&a, 10), (&b, 20)] {
            inbound.tail(bytes.len()).unwrap()[..bytes.len()].copy_from_slice(bytes);
            inbound.received(bytes.len(), at(read_ns));
        }
        assert_eq!(inbound.stamp_of_head(a.len()).read_ns, 10);
        inbound.consume(a.len());
        assert_eq!(inbound.stamp_of_head(b.len()).read_ns, 20);
        inbound.consume(b.len());
        assert!(inbound.marks.is_empty());
    }

    #[test]
    fn test_a_trickling_peer_merges_reads_into_later_stamps_never_earlier() {
        let stream = frame(1, 200);
        let reads: Vec<(usize, u64)> =
            (0..stream.len()).map(|index| (1, 1_000 + index as u64)).collect();
        let taken = frames_read(&stream, &reads);
        assert_eq!(taken, [(1, 1_000 + stream.len() as u64 - 1)]);
        let mut inbound = Inbound::with_capacity(1 << 16).unwrap();
        for index in 0..200u64 {
            inbound.tail(1).unwrap()[0] = 0;
            inbound.received(1, at(index));
        }
        assert_eq!(inbound.marks.len(), MAX_READ_MARKS);
        assert_eq!(inbound.stamp_of_head(1).read_ns, 0);
        // Bytes past the merge point carry the newest stamp.
        assert_eq!(inbound.stamp_of_head(100).read_ns, 199);
    }

    fn written_stamp(bytes: &[u8]) -> u64 {
        let frame = crate::wire::Frame::new_checked(bytes).unwrap();
        frame.record(0).write_ns
    }

    fn queue(outbound: &mut Outbound, bytes: &[u8]) {
        outbound.tail(bytes.len()).unwrap()[..bytes.len()].copy_from_slice(bytes);
        outbound.commit_frame(bytes.len(), write_stamp_offset(0));
    }

    #[test]
    fn test_write_stamps_are_taken_before_the_write_that_starts_each_frame() {
        let (a, b, c) = (frame(1, 20), frame(2, 20), frame(3, 20));
        let mut outbound = Outbound::with_capacity(1 << 16).unwrap();
        queue(&mut outbound, &a);
        queue(&mut outbound, &b);
        queue(&mut outbound, &c);
        let mut sent = Vec::new();
        // Write 1 at t=100 takes all of a and part of b; write 2 at t=200 takes the rest of b
        // and nothing of c (the socket filled); write 3 at t=300 takes c.
        for (count, write_ns) in [(a.len() + 5, 100), (b.len() - 5, 200), (c.len(), 300)] {
            assert!(outbound.has_unstarted());
            outbound.prepare_write(write_ns, usize::MAX);
            sent.extend_from_slice(&outbound.data()[..count]);
            outbound.written(count, write_ns);
        }
        assert!(outbound.is_empty() && !outbound.has_unstarted());
        let stamps: Vec<u64> = [0, a.len(), a.len() + b.len()]
            .into_iter()
            .map(|start| written_stamp(&sent[start..start + a.len()]))
            .collect();
        assert_eq!(
            stamps,
            [100, 100, 300],
            "b started in write 1; c was re-stamped before write 3"
        );
    }

    #[test]
    fn test_a_bounded_write_patches_only_the_frames_it_can_start() {
        let (a, b) = (frame(1, 20), frame(2, 20));
        let mut outbound = Outbound::with_capacity(1 << 16).unwrap();
        queue(&mut outbound, &a);
        queue(&mut outbound, &b);
        // A call of a.len() bytes can start a only: b keeps its placeholder until its own call.
        assert_eq!(outbound.prepare_write(100, a.len()).len(), a.len());
        assert_eq!(written_stamp(&outbound.data()[..a.len()]), 100);
        assert_eq!(written_stamp(&outbound.data()[a.len()..]), 0);
        outbound.written(a.len(), 100);
        assert_eq!(outbound.prepare_write(200, a.len()).len(), b.len());
        assert_eq!(written_stamp(outbound.data()), 200);
    }

    #[test]
    fn test_a_write_that_would_block_leaves_the_stamp_to_the_next_one() {
        let a = frame(1, 5);
        let mut outbound = Outbound::with_capacity(1 << 16).unwrap();
        queue(&mut outbound, &a);
        outbound.prepare_write(100, usize::MAX); // then the write says WouldBlock: nothing written
        outbound.prepare_write(250, usize::MAX);
        assert_eq!(written_stamp(outbound.data()), 250);
        outbound.written(a.len(), 250);
        assert!(!outbound.has_unstarted());
    }

    #[test]
    fn test_detached_frames_report_their_start_in_order() {
        let mut outbound = Outbound::with_capacity(64).unwrap();
        assert!(outbound.push_detached(b"first"));
        assert!(outbound.push(b"--"));
        assert!(outbound.push_detached(b"second"));
        outbound.written(3, 10);
        assert_eq!(outbound.take_detached(), Some(10));
        assert_eq!(outbound.take_detached(), None);
        outbound.written(5, 20); // "st--s": "second" starts
        assert_eq!(outbound.take_detached(), Some(20));
    }

    #[derive(Default)]
    struct Residences(Vec<(Direction, u64)>);

    impl ResidenceSink for Residences {
        fn residence(&mut self, direction: Direction, residence_ns: u64) {
            self.0.push((direction, residence_ns));
        }
    }

    #[test]
    fn test_residence_is_arrival_to_the_write_that_starts_each_frame() {
        let sink = Rc::new(RefCell::new(Residences::default()));
        let mut outbound = Outbound::with_capacity(1 << 16).unwrap();
        // Not measured before it is asked for.
        let early = frame(0, 4);
        queue(&mut outbound, &early);
        outbound.measure_residence(sink.clone());
        // a: read at 1 000 after 300 ns in the receive queue; b: read at 1 500, going up.
        let down = Stamp { receive_wait_ns: 300, ..Stamp::new(2, Direction::Down, 1_000, 0) };
        let a = frame_with(1, 20, down);
        let b = frame_with(2, 20, Stamp::new(2, Direction::Up, 1_500, 0));
        queue(&mut outbound, &a);
        assert!(outbound.push(b"unstamped"));
        queue(&mut outbound, &b);
        // A detached payload whose record (kept elsewhere) says it was read at 1 800.
        let kept = Stamp::new(2, Direction::Down, 1_800, 0);
        assert!(outbound.push_detached_from(b"payload", &kept));
        let residences = || sink.borrow().0.clone();
        // Each write call starts what its first byte and those after it reach.
        for (count, write_ns) in [
            (early.len(), 2_000),     // the early frame only
            (a.len() + 5, 2_500),     // a, and part of the unstamped bytes
            (4 + 1, 3_000),           // their rest, and b's first byte
            (b.len() - 1 + 7, 4_000), // b's rest, and the payload
        ] {
            outbound.prepare_write(write_ns, count);
            outbound.written(count, write_ns);
        }
        assert_eq!(
            residences(),
            [(Direction::Down, 1_800), (Direction::Up, 1_500), (Direction::Down, 2_200)],
            "a: 2 500 − (1 000 − 300); b: 3 000 − 1 500; the payload: 4 000 − 1 800"
        );
        assert_eq!(outbound.take_detached(), Some(4_000));
        assert!(outbound.is_empty() && !outbound.has_unstarted());
        // A write stamp before the arrival (a broken rule) is left out, not wrapped around.
        queue(&mut outbound, &frame_with(3, 1, Stamp::new(2, Direction::Up, 9_000, 0)));
        outbound.written(outbound.len(), 8_000);
        assert_eq!(residences().len(), 3);
    }

    #[test]
    fn test_plain_bytes_measured_end_their_residence_when_handed_over() {
        let mut outbound = Outbound::with_capacity(64).unwrap();
        let read = Stamp { receive_wait_ns: 50, ..Stamp::new(0, Direction::Up, 1_000, 0) };
        // Without a sink, a plain push: nothing for a write to stamp.
        assert!(outbound.push_measured(b"before", &read));
        assert!(!outbound.has_unstarted());
        let sink = Rc::new(RefCell::new(Residences::default()));
        outbound.measure_residence(sink.clone());
        assert!(outbound.push_measured(b"", &read), "no bytes: nothing to hand over");
        assert!(outbound.push_measured(b"answer", &read));
        assert!(outbound.has_unstarted());
        outbound.written(6, 1_400); // "before"
        assert_eq!(sink.borrow().0, []);
        outbound.written(2, 1_500); // "an"
        assert_eq!(sink.borrow().0, [(Direction::Up, 550)], "1 500 − (1 000 − 50)");
        assert_eq!(outbound.take_detached(), None, "not a detached frame");
        outbound.written(4, 1_600);
        assert!(outbound.is_empty() && !outbound.has_unstarted());
        assert_eq!(sink.borrow().0.len(), 1);
    }

    #[test]
    fn test_kernel_waits_are_kept_when_possible_and_rejected_when_not() {
        let mut times = ReceiveTimes::new(KernelStamps::On);
        // The first read: bytes that waited 2 ms (in the accept queue, say) are believed.
        let stamp = times.stamp(9_900, 10_000, 7_000_050, Some(5_000_050), true);
        assert_eq!(
            stamp,
            ReadStamp {
                read_ns: 10_000,
                receive: ReceiveClock::Kernel,
                receive_wait_ns: 2_000_000,
                held_back: false,
            }
        );
        // The queue was seen empty at 9 900; a wait of 200 ns at 10 050 is impossible.
        let stamp = times.stamp(10_040, 10_050, 6_000_200, Some(6_000_000), false);
        assert_eq!(stamp.receive, ReceiveClock::KernelRejected);
        assert_eq!(stamp.receive_wait_ns, 0);
        // A stamp from the future (a clock step) is rejected too.
        let stamp = times.stamp(10_060, 10_070, 6_000_000, Some(6_000_001), true);
        assert_eq!(stamp.receive, ReceiveClock::KernelRejected);
        // No stamp from the kernel: the read is the arrival.
        let stamp = times.stamp(10_080, 10_090, 0, None, true);
        assert_eq!(stamp, at(10_090));
        assert_eq!((times.kernel_stamped, times.rejected), (1, 2));
        // Before any read has seen the queue empty, a wait over a second is a clock step.
        let mut first = ReceiveTimes::new(KernelStamps::On);
        let stamp = first.stamp(0, 10, 2_000_000_000, Some(500_000_000), false);
        assert_eq!(stamp.receive, ReceiveClock::KernelRejected);
        let mut refused = ReceiveTimes::new(KernelStamps::Refused);
        assert_eq!(refused.stamp(0, 10, 100, Some(50), true), at(10));
    }
}
