//! One connection through a hop: its upstream and downstream sockets with their software
//! readiness, the two pipes between them, and everything done to the frames on the way:
//! stamping, path discovery, faults, stripping for a plain server, half-close.
//! The loop in [`super`] decides when a connection runs; this module decides what it does.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::Interest;

use super::{HopConfig, Side, next_hop_text, token_of};
use crate::buffer::Buffer;
use crate::clock;
use crate::core::transmit::TxMode;
use crate::core::{Inbound, Outbound, Peer, ReadStamp};
use crate::net;
use crate::wire::{
    self, Direction, Fault, Frame, HEADER_LEN, Header, KernelSample, Kind, MAX_FRAME_LEN,
    MAX_HEADERS_LEN, MAX_HOPS, MAX_RECORDS, PathEntry, RECORD_LEN, Role, Stamp, UNSOLICITED,
    WireError,
};
/// Room for the largest frame plus the record this hop adds.
const BUFFER_LEN: usize = MAX_FRAME_LEN + RECORD_LEN;
/// A stripping relay keeps the headers of frames whose answer has not come back yet.
const PENDING_HEADERS_LEN: usize = 256 * 1024;

/// One direction through the hop: bytes read from one socket, frames written to another.
struct Pipe {
    input: Inbound,
    output: Outbound,
    /// A whole frame is waiting in `input` for room in the output: do not read more.
    stalled: bool,
}

impl Pipe {
    fn new(input_len: usize, output_len: usize) -> io::Result<Pipe> {
        Ok(Pipe {
            input: Inbound::with_capacity(input_len)?,
            output: Outbound::with_capacity(output_len)?,
            stalled: false,
        })
    }
}

/// What an echoing end with `--remove-perf-headers` found its peer speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speech {
    Undecided,
    Frames,
    Plain,
}

/// A stripping relay's memory of the frames sent to the plain server and not yet answered:
/// their headers and records (this hop's down record included) and payload lengths.
struct PendingAnswers {
    headers: Buffer,
    frames: VecDeque<PendingFrame>,
    /// Write stamps still to come for payloads whose frames were answered before their
    /// hand-over started: dropped as they come, so later frames keep their own.
    stale_stamps: usize,
    /// Answers that came before their frame's payload had been handed over (the server sent
    /// more than it was asked): their last link is counted as 0, and the close line says so.
    answered_before_sent: u64,
}

/// One frame sent to the plain server and not answered yet.
struct PendingFrame {
    headers_len: usize,
    payload_len: usize,
    /// When the payload's hand-over to the server started; `None` until it has. An empty
    /// payload has nothing to hand over and counts as sent when it is read.
    sent_ns: Option<u64>,
}

impl PendingAnswers {
    /// Gives the payloads whose hand-over has started their write stamps, in order.
    fn collect_sent(&mut self, output: &mut Outbound) {
        while let Some(sent_ns) = output.take_detached() {
            if self.stale_stamps > 0 {
                self.stale_stamps -= 1;
                continue;
            }
            let waiting = self.frames.iter_mut().find(|frame| frame.sent_ns.is_none());
            debug_assert!(waiting.is_some(), "a write stamp for a payload never queued");
            if let Some(frame) = waiting {
                frame.sent_ns = Some(sent_ns);
            }
        }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.headers.consume(self.headers.len());
        self.stale_stamps = 0;
    }
}

pub(super) struct Connection {
    slot: usize,
    pub(super) upstream: Peer,
    /// The next hop; `None` at the echoing end, and once it has failed.
    pub(super) downstream: Option<Peer>,
    pub(super) connecting: bool,
    down: Pipe,
    up: Pipe,
    /// This hop's index in the chain, learnt from the path announcement.
    hop: Option<u8>,
    speech: Speech,
    pending: PendingAnswers,
    /// Why the next hop is unusable; reported upstream in a FAULT frame.
    pub(super) failure: Option<String>,
    fault_queued: bool,
    /// The path announcement forwarded down, until its answer comes back up.
    unanswered_path: Option<Vec<u8>>,
    /// The fault a hop further down reported: its end of stream is expected, not a new fault.
    pub(super) passed_fault: Option<String>,
    pub(super) frames_down: u64,
    pub(super) frames_up: u64,
    pub(super) bytes_down: u64,
    pub(super) bytes_up: u64,
    pub(super) opened_ns: u64,
    pub(super) last_progress_ns: u64,
    kernel_info: KernelInfo,
    /// The transmit timestamps the source asked for on this connection's sockets.
    tx_mode: TxMode,
    /// The source asked for `TCP_QUICKACK` after every read (`--quickack`).
    quickack: bool,
}

/// Whether the source asked for this connection's `TCP_INFO` readings, and where they stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelInfo {
    NotAsked,
    Asked {
        /// Payload bytes moved (both ways) at the last reading: no traffic, no reading.
        bytes_at_last: u64,
    },
    /// The last readings went up with the end of the stream.
    Done,
}
pub(super) struct Context<'a> {
    pub(super) config: &'a HopConfig,
    pub(super) role: Role,
}

pub(super) enum Round {
    Progress,
    Idle,
    Finished,
}

impl Connection {
    /// Fails when the connection's buffers cannot be mapped.
    pub(super) fn new(
        slot: usize,
        upstream: Peer,
        role: Role,
        now_ns: u64,
    ) -> io::Result<Connection> {
        let echo = role == Role::Echo;
        let stripping = role == Role::StrippingRelay;
        Ok(Connection {
            slot,
            upstream,
            downstream: None,
            connecting: false,
            // The echoing end answers into `up.output`; it has no downstream buffers.
            down: Pipe::new(BUFFER_LEN, if echo { 0 } else { BUFFER_LEN })?,
            up: Pipe::new(if echo { 0 } else { BUFFER_LEN }, BUFFER_LEN)?,
            hop: None,
            speech: Speech::Undecided,
            pending: PendingAnswers {
                headers: Buffer::with_capacity(if stripping { PENDING_HEADERS_LEN } else { 0 })?,
                frames: VecDeque::new(),
                stale_stamps: 0,
                answered_before_sent: 0,
            },
            failure: None,
            fault_queued: false,
            passed_fault: None,
            unanswered_path: None,
            frames_down: 0,
            frames_up: 0,
            bytes_down: 0,
            bytes_up: 0,
            opened_ns: now_ns,
            last_progress_ns: now_ns,
            kernel_info: KernelInfo::NotAsked,
            tx_mode: TxMode::Off,
            quickack: false,
        })
    }

    /// One round of connect, read, process and write in both directions.
    pub(super) fn round(
        &mut self,
        context: &Context,
        registry: &mio::Registry,
        now_ns: u64,
    ) -> Result<Round, String> {
        // `advanced`: frames moved, bytes written, a connect finished; what the no-progress
        // timeout watches. Bytes read alone do not count, or a peer sending one byte a second
        // would hold a connection forever.
        let mut advanced = false;
        let mut read_any = false;
        if self.connecting {
            advanced |= self.finish_connect(registry, context.config);
        }

        // Down: upstream socket -> down.input -> frames -> down.output (or up.output).
        if !self.down.stalled {
            read_any |= self
                .upstream
                .fill(&mut self.down.input)
                .map_err(|error| format!("read: {error}"))?;
        }
        advanced |= self.process_down(context, registry)?;
        if let (Some(downstream), false) = (self.downstream.as_mut(), self.connecting) {
            match downstream.flush(&mut self.down.output) {
                Ok(wrote) => advanced |= wrote,
                Err(error) => {
                    self.lose_downstream(registry, context.config, error)?;
                    advanced = true;
                }
            }
        }

        // Up: downstream socket -> up.input -> frames -> up.output -> upstream socket.
        if let (Some(downstream), false, false) =
            (self.downstream.as_mut(), self.connecting, self.up.stalled)
        {
            match downstream.fill(&mut self.up.input) {
                Ok(got) => read_any |= got,
                Err(error) => {
                    self.lose_downstream(registry, context.config, error)?;
                    advanced = true;
                }
            }
        }
        match self.process_up(context) {
            Ok(moved) => advanced |= moved,
            // The next hop does not speak the protocol: the source must hear which one.
            Err(what) => {
                self.fail_downstream(registry, context.config, what);
                self.up.input.clear();
                advanced = true;
            }
        }
        advanced |= self.queue_fault(context.config);
        advanced |=
            self.upstream.flush(&mut self.up.output).map_err(|error| format!("write: {error}"))?;

        if advanced {
            self.last_progress_ns = now_ns;
        }
        let more_to_send = self.pass_on_end_of_stream(context, registry)?;
        if self.upstream.write_shut && self.upstream.read_closed && self.up.output.is_empty() {
            return Ok(Round::Finished);
        }
        Ok(if advanced || read_any || more_to_send { Round::Progress } else { Round::Idle })
    }

    fn start_connect(&mut self, registry: &mio::Registry, target: SocketAddr, config: &HopConfig) {
        let started = net::connect(target).and_then(|stream| {
            let mut downstream = Peer::new(stream, target, &config.name);
            let token = token_of(self.slot, Side::Downstream);
            registry.register(
                &mut downstream.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(downstream)
        });
        match started {
            Ok(mut downstream) => {
                enable_tx_stamps(&mut downstream, self.tx_mode, &config.name);
                downstream.quickack = self.quickack;
                self.downstream = Some(downstream);
                self.connecting = true;
            }
            Err(error) => {
                self.fail_downstream(registry, config, format!("cannot connect: {error}"))
            }
        }
    }

    fn finish_connect(&mut self, registry: &mio::Registry, config: &HopConfig) -> bool {
        let Some(downstream) = self.downstream.as_mut() else {
            return false;
        };
        if !downstream.writable {
            return false;
        }
        match net::connect_result(&downstream.stream) {
            Ok(true) => {
                self.connecting = false;
                true
            }
            Ok(false) => {
                downstream.writable = false;
                false
            }
            Err(error) => {
                self.fail_downstream(registry, config, format!("cannot connect: {error}"));
                true
            }
        }
    }

    /// The next hop is gone: drop it and tell the hops upstream, in-band.
    pub(super) fn fail_downstream(
        &mut self,
        registry: &mio::Registry,
        config: &HopConfig,
        what: String,
    ) {
        if let Some(mut downstream) = self.downstream.take() {
            let _ = registry.deregister(&mut downstream.stream);
        }
        self.connecting = false;
        let failure = format!("next hop {}: {what}", next_hop_text(config));
        self.failure = Some(failure);
        self.down.output.clear();
        self.pending.clear();
    }

    /// Queues the FAULT frame once the path is known (so the source can name the hop).
    fn queue_fault(&mut self, config: &HopConfig) -> bool {
        let (Some(failure), Some(hop), false) = (&self.failure, self.hop, self.fault_queued) else {
            return false;
        };
        // The path never came back from below: answer it here, so the source can name the
        // hops up to this one and the next hop that failed.
        if let Some(announcement) = &self.unanswered_path {
            let mut answer = announcement.clone();
            unreached_entry(config).emit(&mut answer);
            if !self.up.output.push(&wire::control_frame(Kind::Path, &answer)) {
                return false;
            }
            self.unanswered_path = None;
        }
        let message = format!("{} (hop {hop}): {failure}", config.name);
        self.fault_queued = self.up.output.push(&wire::fault_frame(&Fault { hop, message }));
        self.fault_queued
    }

    fn process_down(
        &mut self,
        context: &Context,
        registry: &mio::Registry,
    ) -> Result<bool, String> {
        if context.role == Role::Echo && context.config.remove_perf_headers {
            self.decide_speech();
            if self.speech == Speech::Plain {
                return Ok(self.echo_plain());
            }
            if self.speech == Speech::Undecided {
                return Ok(false);
            }
        }
        let mut progress = false;
        self.down.stalled = false;
        loop {
            let frame = match wire::next_frame(self.down.input.data()) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return Err(self.bad_upstream(error)),
            };
            let len = frame.total_len();
            let (kind, payload_len) = (frame.kind(), frame.payload_len());
            let moved = match kind {
                Kind::Path => {
                    let flags = frame.flags();
                    if flags & wire::PATH_ASKS_KERNEL_INFO != 0 {
                        self.kernel_info = KernelInfo::Asked { bytes_at_last: 0 };
                    }
                    self.tx_mode = wire::path_tx_mode(flags);
                    enable_tx_stamps(&mut self.upstream, self.tx_mode, &context.config.name);
                    self.quickack = flags & wire::PATH_ASKS_QUICKACK != 0;
                    self.upstream.quickack = self.quickack;
                    let announced = frame.payload().to_vec();
                    let entries = PathEntry::parse_all(&announced)
                        .map_err(|error| self.bad_upstream(error))?;
                    self.hop = Some(entries.len() as u8);
                    if entries.len() >= MAX_HOPS {
                        // A loop, most likely: tell the source instead of going round again.
                        self.failure = Some(WireError::TooManyHops.to_string());
                        self.down.input.consume(len);
                        progress = true;
                        continue;
                    }
                    // The next hop is reached only now, once the peer has shown it speaks the
                    // protocol: a stray client opens nothing, and a forwarding loop stops at
                    // the hop limit instead of connecting to itself forever.
                    if let Some((target, _)) = &context.config.forward_to
                        && self.failure.is_none()
                    {
                        self.start_connect(registry, *target, context.config);
                    }
                    let announcement = self.extend_path(context, &announced);
                    if context.role == Role::Relay && self.failure.is_none() {
                        self.unanswered_path = Some(announcement.clone());
                    }
                    answer_or_forward_path(
                        context.role,
                        self.failure.is_some(),
                        wire::flagged_control_frame(Kind::Path, flags, &announcement),
                        &mut self.down.output,
                        &mut self.up.output,
                    )
                }
                Kind::Data => {
                    let hop = self
                        .hop
                        .ok_or_else(|| "data frame before the path announcement".to_string())?;
                    if frame.record_count() != usize::from(hop) {
                        return Err(format!(
                            "data frame {} carries {} stamp records, expected {hop} (one per hop upstream)",
                            frame.sequence(),
                            frame.record_count()
                        ));
                    }
                    if self.failure.is_some() {
                        true // the next hop is gone: the source learns it from the FAULT frame
                    } else {
                        let read = self.down.input.stamp_of_head(len);
                        match (context.role, context.config.remove_perf_headers) {
                            (Role::Echo, false) => {
                                let stamp = unwritten(hop, Direction::Turn, read);
                                restamp_into(&mut self.up.output, &frame, stamp)
                            }
                            (Role::Echo, true) => self.up.output.push(frame.payload()),
                            (Role::StrippingRelay, _) => {
                                let stamp = unwritten(hop, Direction::Down, read);
                                strip_into(&mut self.down.output, &mut self.pending, &frame, stamp)
                            }
                            _ => {
                                let stamp = unwritten(hop, Direction::Down, read);
                                restamp_into(&mut self.down.output, &frame, stamp)
                            }
                        }
                    }
                }
                Kind::Fault => return Err("FAULT frame travelling downstream".to_string()),
                Kind::Kernel => return Err("KERNEL frame travelling downstream".to_string()),
            };
            if !moved {
                self.down.stalled = true;
                self.down.input.hold_back();
                break;
            }
            if kind == Kind::Data {
                self.frames_down += 1;
                self.bytes_down += payload_len as u64;
                if context.role == Role::Echo {
                    self.frames_up += 1;
                    self.bytes_up += payload_len as u64;
                }
            }
            self.down.input.consume(len);
            progress = true;
        }
        Ok(progress)
    }

    fn bad_upstream(&self, error: WireError) -> String {
        format!("bad input from upstream {}: {error}", self.upstream.addr)
    }

    /// This hop's path entry appended to the announcement (and, at a stripping relay, the plain
    /// server's, or at a failed relay the unreachable next hop's).
    fn extend_path(&self, context: &Context, announcement: &[u8]) -> Vec<u8> {
        let mut extended = announcement.to_vec();
        let local = self.upstream.stream.local_addr().ok();
        PathEntry::new(context.role, &context.config.name, local, Some(self.upstream.addr))
            .with_tags(context.config.tags.clone())
            .emit(&mut extended);
        if self.failure.is_some() {
            unreached_entry(context.config).emit(&mut extended);
        } else if let (Role::StrippingRelay, Some((target, text))) =
            (context.role, &context.config.forward_to)
        {
            let seen_from = self.downstream.as_ref().and_then(|peer| peer.stream.local_addr().ok());
            PathEntry::new(Role::PlainServer, text, Some(*target), seen_from).emit(&mut extended);
        }
        extended
    }

    fn decide_speech(&mut self) {
        if self.speech != Speech::Undecided {
            return;
        }
        let data = self.down.input.data();
        let seen = data.len().min(wire::MAGIC.len());
        if data[..seen] != wire::MAGIC[..seen] {
            self.speech = Speech::Plain;
        } else if seen == wire::MAGIC.len() {
            self.speech = Speech::Frames;
        } else if self.upstream.read_closed && !data.is_empty() {
            self.speech = Speech::Plain;
        }
    }

    /// An echoing end with `-r` whose peer speaks plain bytes: echo them verbatim.
    fn echo_plain(&mut self) -> bool {
        let count = self.down.input.len().min(self.up.output.room());
        if count == 0 {
            return false;
        }
        self.up.output.push(&self.down.input.data()[..count]);
        self.down.input.consume(count);
        self.bytes_down += count as u64;
        self.bytes_up += count as u64;
        true
    }

    fn process_up(&mut self, context: &Context) -> Result<bool, String> {
        if self.downstream.is_none() && self.up.input.is_empty() {
            return Ok(false);
        }
        if context.role == Role::StrippingRelay {
            return Ok(self.frame_plain_answers());
        }
        let mut progress = false;
        self.up.stalled = false;
        loop {
            let frame = match wire::next_frame(self.up.input.data()) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => return Err(Self::bad_downstream(error)),
            };
            let len = frame.total_len();
            let moved = match frame.kind() {
                Kind::Data => {
                    let hop = self.hop.unwrap_or(0);
                    if frame.record_count() <= usize::from(hop)
                        || frame.record_count() >= MAX_RECORDS
                    {
                        return Err(format!(
                            "answer {} carries {} stamp records, expected between {} and {}",
                            frame.sequence(),
                            frame.record_count(),
                            usize::from(hop) + 1,
                            MAX_RECORDS - 1
                        ));
                    }
                    let read = self.up.input.stamp_of_head(len);
                    restamp_into(&mut self.up.output, &frame, unwritten(hop, Direction::Up, read))
                }
                Kind::Path => {
                    self.unanswered_path = None;
                    self.up.output.push(frame.as_bytes())
                }
                Kind::Fault => {
                    let fault = Fault::parse(frame.payload());
                    self.passed_fault = Some(format!("passed on: {}", fault.message));
                    self.up.output.push(frame.as_bytes())
                }
                Kind::Kernel => {
                    KernelSample::parse(frame.payload()).map_err(Self::bad_downstream)?;
                    self.up.output.push(frame.as_bytes())
                }
            };
            if !moved {
                self.up.stalled = true;
                self.up.input.hold_back();
                break;
            }
            if frame.kind() == Kind::Data {
                self.frames_up += 1;
                self.bytes_up += frame.payload_len() as u64;
            }
            self.up.input.consume(len);
            progress = true;
        }
        Ok(progress)
    }

    fn bad_downstream(error: WireError) -> String {
        format!("sent bad input: {error}")
    }

    /// At a stripping relay: match the plain server's answer bytes, in order, to the frames
    /// sent to it, and frame them again so the hops upstream go on measuring.
    fn frame_plain_answers(&mut self) -> bool {
        let mut progress = false;
        let hop = self.hop.unwrap_or(0);
        self.pending.collect_sent(&mut self.down.output);
        loop {
            let available = self.up.input.len();
            let front = self
                .pending
                .frames
                .front()
                .map(|frame| (frame.headers_len, frame.payload_len, frame.sent_ns));
            if available == 0 && !matches!(front, Some((_, 0, _))) {
                break;
            }
            let moved = match front {
                Some((headers_len, payload_len, sent_ns)) => {
                    if available < payload_len {
                        break;
                    }
                    // An empty answer is owed no bytes: it is complete the moment it is due.
                    let read = if payload_len == 0 {
                        ReadStamp { read_ns: clock::now_ns(), ..ReadStamp::default() }
                    } else {
                        self.up.input.stamp_of_head(payload_len)
                    };
                    let stamp = unwritten(hop, Direction::Up, read);
                    let record_count =
                        Frame::new_unchecked(&self.pending.headers.data()[..headers_len])
                            .record_count();
                    let frame_len = HEADER_LEN + (record_count + 1) * RECORD_LEN + payload_len;
                    if self.up.output.room() < frame_len {
                        break;
                    }
                    let sent_ns = sent_ns.unwrap_or_else(|| {
                        // Answered before its payload was handed over: the server sent bytes
                        // unasked. The link is counted as 0 rather than as a negative time,
                        // and the payload's own write stamp, still to come, is dropped.
                        self.pending.answered_before_sent += 1;
                        self.pending.stale_stamps += 1;
                        stamp.arrival_ns().unwrap_or(stamp.read_ns)
                    });
                    let stored = &mut self.pending.headers.data_mut()[..headers_len];
                    wire::patch_write_stamp(
                        &mut stored[wire::write_stamp_offset(record_count - 1)..],
                        sent_ns,
                    );
                    let stored = &self.pending.headers.data()[..headers_len];
                    let stored_frame = Frame::new_unchecked(stored);
                    let header = Header {
                        record_count: record_count + 1,
                        payload_len,
                        ..Header::of(&stored_frame)
                    };
                    let tail = self.up.output.tail(header.total_len()).expect("room checked");
                    let written = wire::emit_frame(
                        tail,
                        &header,
                        &stored[HEADER_LEN..],
                        &[stamp],
                        &self.up.input.data()[..payload_len],
                    );
                    self.up.output.commit_frame(written, wire::write_stamp_offset(record_count));
                    self.pending.headers.consume(headers_len);
                    self.pending.frames.pop_front();
                    self.frames_up += 1;
                    payload_len
                }
                None => {
                    let count = available.min(wire::MAX_PAYLOAD);
                    let header = Header {
                        kind: Kind::Data,
                        record_count: 0,
                        sequence: UNSOLICITED,
                        payload_len: count,
                    };
                    let Some(tail) = self.up.output.tail(header.total_len()) else {
                        break;
                    };
                    let written =
                        wire::emit_frame(tail, &header, &[], &[], &self.up.input.data()[..count]);
                    self.up.output.commit_unstamped(written);
                    count
                }
            };
            self.bytes_up += moved as u64;
            self.up.input.consume(moved);
            progress = true;
        }
        progress
    }

    /// Half-close, end to end: each side's EOF is passed on once everything before it has been.
    /// Returns whether something new waits to be sent before the end: the FAULT of a next hop
    /// that turned out to have failed, or the last kernel readings.
    fn pass_on_end_of_stream(
        &mut self,
        context: &Context,
        registry: &mio::Registry,
    ) -> Result<bool, String> {
        if self.upstream.read_closed && !self.down.input.is_empty() && !self.down.stalled {
            let speech_plain = self.speech == Speech::Plain;
            if !speech_plain {
                return Err(format!(
                    "upstream {} closed in the middle of a frame ({} bytes unread)",
                    self.upstream.addr,
                    self.down.input.len()
                ));
            }
        }
        let down_drained =
            self.upstream.read_closed && self.down.input.is_empty() && self.down.output.is_empty();
        match self.downstream.as_mut() {
            Some(downstream) if !self.connecting => {
                if down_drained {
                    downstream.shut_write();
                }
                if downstream.read_closed && self.up.output.is_empty() && !self.up.stalled {
                    // The next hop ended its stream; everything whole has been passed up. Only
                    // an end after ours, with every frame and the path answered, is clean.
                    let unanswered = self.frames_down.saturating_sub(self.frames_up);
                    let passed_on = format!(
                        "{unanswered} of the {} {} passed on unanswered",
                        self.frames_down,
                        if self.frames_down == 1 { "frame" } else { "frames" }
                    );
                    let what = if !self.up.input.is_empty() {
                        Some(format!("closed in the middle of a frame, {passed_on}"))
                    } else if unanswered > 0 {
                        Some(format!("closed the connection early, {passed_on}"))
                    } else if !downstream.write_shut {
                        Some(
                            "closed the connection before this hop had passed on the whole \
                             stream (every frame passed on so far was answered)"
                                .to_string(),
                        )
                    } else if self.unanswered_path.is_some() {
                        Some("closed the connection without answering the path".to_string())
                    } else {
                        None
                    };
                    match what {
                        Some(what) if self.failure.is_none() && self.passed_fault.is_none() => {
                            self.fail_downstream(registry, context.config, what);
                            return Ok(true);
                        }
                        _ if self.queue_last_kernel_samples() => return Ok(true),
                        _ => self.upstream.shut_write(),
                    }
                }
            }
            Some(_) => {}
            None => {
                // The echoing end, or a relay whose next hop failed: once the answers (and any
                // FAULT frame) are out, the stream ends.
                let fault_done =
                    self.failure.is_none() || self.fault_queued || self.upstream.read_closed;
                if (down_drained || self.failure.is_some())
                    && fault_done
                    && self.up.output.is_empty()
                {
                    if self.queue_last_kernel_samples() {
                        return Ok(true);
                    }
                    self.upstream.shut_write();
                }
            }
        }
        Ok(false)
    }

    /// On the hop's timer: when the source asked and traffic has moved since the last
    /// reading, reads `TCP_INFO` of both sockets and queues the readings upstream. A reading
    /// that finds no room in the output is skipped: the next one carries the counters on.
    /// Returns whether anything was queued.
    pub(super) fn sample_kernel(&mut self) -> bool {
        let KernelInfo::Asked { bytes_at_last } = self.kernel_info else { return false };
        let moved = self.bytes_down + self.bytes_up;
        if moved == bytes_at_last || self.upstream.write_shut {
            return false;
        }
        self.kernel_info = KernelInfo::Asked { bytes_at_last: moved };
        self.queue_kernel_samples()
    }

    /// Before the stream's end goes up: the last readings, once. Returns whether they were
    /// queued (the end then waits for them to be written).
    fn queue_last_kernel_samples(&mut self) -> bool {
        if !matches!(self.kernel_info, KernelInfo::Asked { .. }) {
            return false;
        }
        self.kernel_info = KernelInfo::Done;
        self.queue_kernel_samples()
    }

    fn queue_kernel_samples(&mut self) -> bool {
        let Some(hop) = self.hop else { return false };
        let connected = if self.connecting { None } else { self.downstream.as_ref() };
        let sockets = [(Side::Upstream, Some(&self.upstream)), (Side::Downstream, connected)];
        let mut queued = false;
        for (side, peer) in sockets {
            let Some(peer) = peer else { continue };
            let Some(info) = net::tcp_info(peer.stream.as_raw_fd()) else { continue };
            let tx = peer.tx.as_ref().map(|tx| tx.totals);
            queued |= self.up.output.push(&KernelSample { hop, side, info, tx }.frame());
        }
        queued
    }

    /// Answers a stripping relay framed before their payload had reached the server.
    pub(super) fn answered_before_sent(&self) -> u64 {
        self.pending.answered_before_sent
    }

    /// Whether the connection holds work that should make progress within the timeout.
    pub(super) fn outstanding(&self) -> bool {
        !self.down.input.is_empty()
            || !self.down.output.is_empty()
            || !self.up.input.is_empty()
            || !self.up.output.is_empty()
            || self.connecting
            || self.frames_down > self.frames_up && self.downstream.is_some()
            || self.failure.is_some()
            || self.upstream.write_shut
    }

    pub(super) fn waits_for_downstream(&self) -> bool {
        self.connecting || self.frames_down > self.frames_up || !self.down.output.is_empty()
    }

    pub(super) fn stall_detail(&self) -> String {
        if self.upstream_stuck() {
            format!(" ({} bytes waiting for {} to read)", self.up.output.len(), self.upstream.addr)
        } else if !self.down.input.is_empty() && !self.down.stalled {
            format!(
                " ({} bytes of an incomplete frame from {})",
                self.down.input.len(),
                self.upstream.addr
            )
        } else {
            String::new()
        }
    }

    /// Answers are waiting and the upstream peer's socket takes no more: it is not reading.
    fn upstream_stuck(&self) -> bool {
        !self.up.output.is_empty() && !self.upstream.writable
    }

    /// The next hop's connection broke. When the upstream peer had stopped reading, that is
    /// the likely cause (the next hop timed out waiting for us), so the connection is closed
    /// naming that peer; otherwise the hops upstream are told in-band.
    fn lose_downstream(
        &mut self,
        registry: &mio::Registry,
        config: &HopConfig,
        error: io::Error,
    ) -> Result<(), String> {
        if self.upstream_stuck() {
            return Err(format!(
                "no progress for {} s{}; next hop {} gave up first: {error}",
                config.timeout.as_secs_f64(),
                self.stall_detail(),
                next_hop_text(config)
            ));
        }
        let what = format!("lost the connection after {} frames: {error}", self.frames_down);
        self.fail_downstream(registry, config, what);
        Ok(())
    }
}

/// Asks for a socket's transmit stamps (none when `mode` is off); a kernel that refuses is
/// said once per process, and the readings then carry none.
fn enable_tx_stamps(peer: &mut Peer, mode: TxMode, who: &str) {
    static TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if let Err(error) = peer.enable_tx_stamps(mode)
        && !TOLD.swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        crate::log_line!(
            "{who}: warning: no transmit timestamps ({error}; they need Linux 6.2); the kernel readings carry none"
        );
    }
}

/// Where a path announcement goes: on down to the next hop, or back up when the chain's stamps
/// end here (echoing end, stripping relay) or the next hop is unreachable.
fn answer_or_forward_path(
    role: Role,
    failed: bool,
    frame: Vec<u8>,
    down: &mut Outbound,
    up: &mut Outbound,
) -> bool {
    if role == Role::Relay && !failed { down.push(&frame) } else { up.push(&frame) }
}

/// This hop's record for a frame read with `read`; its write stamp is patched in right before
/// the frame's hand-over to the kernel.
fn unwritten(hop: u8, direction: Direction, read: ReadStamp) -> Stamp {
    Stamp {
        receive: read.receive,
        receive_wait_ns: read.receive_wait_ns,
        held_back: read.held_back,
        ..Stamp::new(hop, direction, read.read_ns, 0)
    }
}

fn restamp_into<T: AsRef<[u8]>>(output: &mut Outbound, frame: &Frame<T>, stamp: Stamp) -> bool {
    let Some(tail) = output.tail(frame.total_len() + RECORD_LEN) else {
        return false;
    };
    let written = wire::emit_restamped(tail, frame, stamp);
    output.commit_frame(written, wire::write_stamp_offset(frame.record_count()));
    true
}

/// Sends only the payload on, and keeps the frame's headers (with this hop's record) until the
/// plain server's answer comes back.
fn strip_into<T: AsRef<[u8]>>(
    output: &mut Outbound,
    pending: &mut PendingAnswers,
    frame: &Frame<T>,
    stamp: Stamp,
) -> bool {
    let headers_len = frame.headers_len() + RECORD_LEN;
    debug_assert!(headers_len <= MAX_HEADERS_LEN + RECORD_LEN, "checked by Frame::new_checked");
    if output.room() < frame.payload_len() || pending.headers.room() < headers_len {
        return false;
    }
    // Stored without the payload: the plain server's answer will take its place.
    let header =
        Header { record_count: frame.record_count() + 1, payload_len: 0, ..Header::of(frame) };
    let tail = pending.headers.tail(headers_len).expect("room checked");
    let written = wire::emit_frame(tail, &header, &frame.headers()[HEADER_LEN..], &[stamp], &[]);
    pending.headers.commit(written);
    let payload_len = frame.payload_len();
    // An empty payload has nothing to hand over: sent as it is read.
    let sent_ns = (payload_len == 0).then_some(stamp.read_ns);
    pending.frames.push_back(PendingFrame { headers_len: written, payload_len, sent_ns });
    payload_len == 0 || output.push_detached(frame.payload())
}
/// The path entry for a next hop this relay could not reach.
fn unreached_entry(config: &HopConfig) -> PathEntry {
    let target = config.forward_to.as_ref().map(|(addr, _)| *addr);
    PathEntry::new(Role::Unreached, &next_hop_text(config), target, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(lens: &[usize]) -> PendingAnswers {
        let frames = lens
            .iter()
            .map(|&payload_len| PendingFrame {
                headers_len: 0,
                payload_len,
                sent_ns: (payload_len == 0).then_some(1),
            })
            .collect();
        PendingAnswers {
            headers: Buffer::with_capacity(0).unwrap(),
            frames,
            stale_stamps: 0,
            answered_before_sent: 0,
        }
    }

    #[test]
    fn test_write_stamps_reach_their_own_frames_even_after_an_early_answer() {
        let mut output = Outbound::with_capacity(64).unwrap();
        for payload in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            assert!(output.push_detached(payload));
        }
        // Frames a, an empty one, b, c.
        let mut pending = pending(&[4, 0, 4, 4]);
        output.written(4, 100); // a's hand-over
        pending.collect_sent(&mut output);
        let sent: Vec<_> = pending.frames.iter().map(|frame| frame.sent_ns).collect();
        assert_eq!(sent, [Some(100), Some(1), None, None]);
        // a and the empty frame are answered; then b is answered before its payload left (the
        // server sent more than asked), as the relay does it: its stamp, to come, is stale.
        pending.frames.pop_front();
        pending.frames.pop_front();
        pending.frames.pop_front();
        pending.stale_stamps += 1;
        output.written(4, 300); // b's hand-over
        output.written(4, 400); // c's
        pending.collect_sent(&mut output);
        // c gets its own stamp, not b's.
        assert_eq!(pending.frames.front().map(|frame| frame.sent_ns), Some(Some(400)));
        assert_eq!(pending.stale_stamps, 0);
    }
}
