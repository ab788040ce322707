//! One connection through a hop: its upstream and downstream sockets with their software
//! readiness, the two pipes between them, and its life: connecting the next hop, path
//! discovery, faults, the kernel readings, the end of each direction. The loop in [`super`]
//! decides when a connection runs; this module decides what it does.
//!
//! What each role does to the frames lives in a file of its own: [`relay`] (restamp, both
//! ways), [`echo`] (turn; plain echo with `-r`), [`egress`] (`-r` in front of a server: strip
//! and match answers for a source, receipts for an ingress, the server's own bytes framed) and
//! [`ingress`] (in front of a client: frame its bytes, probe, take receipts). Frames going down
//! are dispatched by role here, in one exhaustive match on the frame kind.
//!
//! A connection owns no system calls of its own: its sockets are `Peer<S>` over any
//! [`Socket`], it opens the next hop through a [`Connector`], and it reads time from the
//! connector's [`Clock`] where the stamping rule says (beside each read and write call) or
//! takes it as `now_ns` (the wake-up's, for timers and timeouts). The hop's loop hands it mio
//! sockets and the poll's registry; `tests` (test builds) hands it fakes and drives every
//! transition with fake time.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;

use mio::net::TcpStream;

mod echo;
mod egress;
pub mod ingress;
mod relay;
#[cfg(test)]
mod tests;

use super::{
    HopConfig, READ_ROUND_BYTES, ROUNDS_PER_TURN, Side, TURN_BYTES, WRITE_ROUND_BYTES,
    next_hop_text, token_of,
};
use crate::buffer::Buffer;
use crate::core::transmit::TxMode;
use crate::core::{
    Clock, Connector, Inbound, Outbound, Peer, ReadStamp, SharedResidence, Socket,
    THROUGH_MIN_PAYLOAD, Through,
};
use crate::wire::{
    self, Direction, Fault, FaultCode, Frame, KernelSample, Kind, MAX_FRAME_LEN, MAX_HEADERS_LEN,
    MAX_HOPS, PathEntry, RECORD_LEN, Role, Stamp, WireError,
};
use echo::Speech;
use egress::{PENDING_HEADERS_LEN, PendingAnswers, deliver_with_receipt, strip_into};
use ingress::{IngressState, IngressTotals};
/// Room for the largest frame plus the record this hop adds.
const BUFFER_LEN: usize = MAX_FRAME_LEN + RECORD_LEN;

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

pub(super) struct Connection<S: Socket = TcpStream> {
    slot: usize,
    pub(super) upstream: Peer<S>,
    /// The next hop; `None` at the echoing end, and once it has failed.
    pub(super) downstream: NextHop<S>,
    down: Pipe,
    up: Pipe,
    /// This hop's index in the chain, learnt from the path announcement.
    hop: Option<u8>,
    speech: Speech,
    pending: PendingAnswers,
    /// Why the next hop is unusable; reported upstream in a FAULT frame.
    pub(super) failure: Option<Failure>,
    fault_queued: bool,
    /// The path announcement forwarded down, until its answer comes back up.
    unanswered_path: Option<Vec<u8>>,
    /// The fault a hop further down reported: its end of stream is expected, not a new fault.
    pub(super) passed_fault: Option<String>,
    /// Its code (`--metrics` counts faults by code).
    pub(super) passed_code: Option<FaultCode>,
    pub(super) frames_down: u64,
    pub(super) frames_up: u64,
    /// DATA frames of a plain server's own bytes, framed by the egress and passed up.
    pub(super) server_frames_up: u64,
    pub(super) bytes_down: u64,
    pub(super) bytes_up: u64,
    pub(super) opened_ns: u64,
    pub(super) last_progress_ns: u64,
    kernel_info: KernelInfo,
    /// The transmit timestamps the source asked for on this connection's sockets.
    tx_mode: TxMode,
    /// The source asked for `TCP_QUICKACK` after every read (`--quickack`).
    quickack: bool,
    origin: Origin,
    /// At an ingress: the client connection's framing and accounting.
    pub(super) ingress: Option<Box<IngressState>>,
}

/// Why a hop closes a connection before its orderly end; put in words only at the edge, its
/// close line (and an ingress's connection record).
#[derive(Debug)]
pub(super) enum CloseReason {
    /// Reading from the upstream peer failed (a reset, say).
    UpstreamRead(io::Error),
    /// Writing to the upstream peer failed.
    UpstreamWrite(io::Error),
    /// The upstream peer broke the protocol, or ended inside a frame: what it did.
    BadUpstream(String),
    /// The next hop broke while the upstream peer had stopped reading: the timeout ran out on
    /// the way down first, and the peer that does not read is named.
    NextHopGaveUp(String),
    /// Nothing moved for the timeout while work was outstanding; `detail` says what waited.
    NoProgress { seconds: f64, detail: String },
    /// At an ingress: the chain broke (a fault reported or passed on); the client hears a reset.
    ChainBroke(String),
    /// A stop signal, and the drain's time ran out.
    Stopped,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            CloseReason::UpstreamRead(error) => write!(f, "read: {error}"),
            CloseReason::UpstreamWrite(error) => write!(f, "write: {error}"),
            CloseReason::BadUpstream(what)
            | CloseReason::NextHopGaveUp(what)
            | CloseReason::ChainBroke(what) => f.write_str(what),
            CloseReason::NoProgress { seconds, detail } => {
                write!(f, "no progress for {seconds} s{detail}")
            }
            CloseReason::Stopped => f.write_str("stopped before the drain was complete"),
        }
    }
}

/// The next hop's socket through its life; the transitions are `start_connect`,
/// `finish_connect` and `fail_downstream`.
pub(super) enum NextHop<S: Socket> {
    /// None opened: no path has come by yet, the echoing end has none, or it failed (the
    /// connection's `failure` then says why).
    Closed,
    /// The connect is under way; the socket's first writable readiness says how it ended.
    Connecting(Peer<S>),
    Connected(Peer<S>),
}

impl<S: Socket> NextHop<S> {
    /// The socket, connecting or connected: what poll events are for.
    pub(super) fn peer_mut(&mut self) -> Option<&mut Peer<S>> {
        match self {
            NextHop::Closed => None,
            NextHop::Connecting(peer) | NextHop::Connected(peer) => Some(peer),
        }
    }

    fn peer(&self) -> Option<&Peer<S>> {
        match self {
            NextHop::Closed => None,
            NextHop::Connecting(peer) | NextHop::Connected(peer) => Some(peer),
        }
    }

    fn connected_mut(&mut self) -> Option<&mut Peer<S>> {
        match self {
            NextHop::Connected(peer) => Some(peer),
            _ => None,
        }
    }

    fn connected(&self) -> Option<&Peer<S>> {
        match self {
            NextHop::Connected(peer) => Some(peer),
            _ => None,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        !matches!(self, NextHop::Closed)
    }

    pub(super) fn is_connecting(&self) -> bool {
        matches!(self, NextHop::Connecting(_))
    }
}

/// Why the next hop is unusable: what the FAULT frame upstream says (its code and words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) code: FaultCode,
    pub(super) message: String,
}

/// Who opened the chain this connection belongs to, from the first path entry: it decides
/// what an answer is and how the stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The path has not come by yet.
    Unknown,
    /// A source (stdin or probes): every frame down is answered by one frame up, and the
    /// stream ends from the source down and back.
    Source,
    /// An ingress in front of an unmodified client: frames down get receipts, the server
    /// sends what it likes, and each direction ends on its own (TCP's half-close).
    Ingress,
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
    /// At an ingress: the statistics the connections' receipts go into.
    pub(super) totals: &'a mut IngressTotals,
}

/// What the no-progress timeout made of a connection ([`Connection::expire`]).
pub(super) enum Expiry {
    Running,
    /// The next hop was failed and its FAULT queued: the connection runs to send it.
    Faulted,
    Close(CloseReason),
}

/// How a connection's turn ended ([`Connection::turn`]).
pub(super) enum Turn {
    /// Nothing more to do until the next readiness.
    Done,
    /// The turn's budget ran out with work left: the connection joins the busy queue.
    MoreToDo,
    /// The connection is over: cleanly (`None`) or why not.
    Finished(Option<CloseReason>),
}

pub(super) enum Round {
    Progress,
    Idle,
    Finished,
}

impl<S: Socket> Connection<S> {
    /// Fails when the connection's buffers cannot be mapped.
    pub(super) fn new(
        slot: usize,
        upstream: Peer<S>,
        role: Role,
        now_ns: u64,
    ) -> io::Result<Connection<S>> {
        let echo = role == Role::Echo;
        let stripping = role == Role::StrippingRelay;
        Ok(Connection {
            slot,
            upstream,
            downstream: NextHop::Closed,
            // The echoing end answers into `up.output`; it has no downstream buffers.
            down: Pipe::new(BUFFER_LEN, if echo { 0 } else { BUFFER_LEN })?,
            up: Pipe::new(if echo { 0 } else { BUFFER_LEN }, BUFFER_LEN)?,
            hop: None,
            speech: Speech::Undecided,
            pending: PendingAnswers {
                headers: Buffer::with_capacity(if stripping { PENDING_HEADERS_LEN } else { 0 })?,
                frames: VecDeque::new(),
            },
            failure: None,
            fault_queued: false,
            passed_fault: None,
            passed_code: None,
            unanswered_path: None,
            frames_down: 0,
            frames_up: 0,
            server_frames_up: 0,
            bytes_down: 0,
            bytes_up: 0,
            opened_ns: now_ns,
            last_progress_ns: now_ns,
            kernel_info: KernelInfo::NotAsked,
            tx_mode: TxMode::Off,
            quickack: false,
            origin: if role == Role::Ingress { Origin::Ingress } else { Origin::Unknown },
            ingress: (role == Role::Ingress).then(|| Box::new(IngressState::new())),
        })
    }

    /// At an ingress, right after the client's accept: the next hop is connected at once (the
    /// client will not announce a path) and the announcement queued.
    pub(super) fn start_ingress(&mut self, net: &impl Connector<Socket = S>, config: &HopConfig) {
        let Some((target, _)) = &config.forward_to else { return };
        self.hop = Some(0);
        self.start_connect(net, *target, config);
        let local = self.downstream.peer().and_then(|peer| peer.stream.local_addr());
        self.down.output.push(&IngressState::announcement(config, local, self.upstream.addr));
    }

    /// At an ingress, on the probe timer: one probe into the connection, unless the client has
    /// ended its side (nothing more goes down then) or the path is broken.
    pub(super) fn queue_probe(&mut self, now_ns: u64) -> bool {
        let Some(ingress) = self.ingress.as_mut() else { return false };
        if self.upstream.read_closed || self.failure.is_some() || !self.downstream.is_open() {
            return false;
        }
        let queued = ingress.queue_probe(&mut self.down.output, now_ns);
        self.frames_down += u64::from(queued);
        queued
    }

    /// One turn (see [`super::TURN_BYTES`]): rounds until there is nothing to do, or the turn
    /// has moved `TURN_BYTES` (or made `ROUNDS_PER_TURN` rounds of progress) with work left.
    pub(super) fn turn(
        &mut self,
        context: &mut Context,
        net: &impl Connector<Socket = S>,
        now_ns: u64,
    ) -> Turn {
        let moved_before = self.bytes_moved();
        let mut rounds = 0;
        loop {
            match self.round(context, net, now_ns) {
                Ok(Round::Progress)
                    if rounds + 1 == ROUNDS_PER_TURN
                        || self.bytes_moved() - moved_before >= TURN_BYTES =>
                {
                    return Turn::MoreToDo;
                }
                Ok(Round::Progress) => rounds += 1,
                Ok(Round::Idle) => return Turn::Done,
                Ok(Round::Finished) => return Turn::Finished(None),
                Err(reason) => return Turn::Finished(Some(reason)),
            }
        }
    }

    /// One round of connect, read, process and write in both directions.
    fn round(
        &mut self,
        context: &mut Context,
        net: &impl Connector<Socket = S>,
        now_ns: u64,
    ) -> Result<Round, CloseReason> {
        // `advanced`: frames moved, bytes written, a connect finished; what the no-progress
        // timeout watches. Bytes read alone do not count, or a peer sending one byte a second
        // would hold a connection forever.
        let mut advanced = false;
        let mut read_any = false;
        if self.downstream.is_connecting() {
            advanced |= self.finish_connect(net, context.config);
        }

        // Down: upstream socket -> down.input -> frames -> down.output (or up.output).
        if !self.down.stalled {
            read_any |= self
                .upstream
                .fill_at_most(net, &mut self.down.input, READ_ROUND_BYTES)
                .map_err(CloseReason::UpstreamRead)?;
        }
        advanced |= self.process_down(context, net).map_err(CloseReason::BadUpstream)?;
        if let Some(downstream) = self.downstream.connected_mut() {
            match downstream.flush_at_most(net, &mut self.down.output, WRITE_ROUND_BYTES) {
                Ok(wrote) => advanced |= wrote,
                Err(error) => {
                    self.lose_downstream(net, context.config, error)?;
                    advanced = true;
                }
            }
        }

        // Up: downstream socket -> up.input -> frames -> up.output -> upstream socket.
        if let (Some(downstream), false) = (self.downstream.connected_mut(), self.up.stalled) {
            match downstream.fill_at_most(net, &mut self.up.input, READ_ROUND_BYTES) {
                Ok(got) => read_any |= got,
                Err(error) => {
                    self.lose_downstream(net, context.config, error)?;
                    advanced = true;
                }
            }
        }
        match self.process_up(context, net) {
            Ok(moved) => advanced |= moved,
            // The next hop does not speak the protocol: the source must hear which one.
            Err(what) => {
                self.fail_downstream(net, context.config, FaultCode::BadInput, what);
                self.up.input.clear();
                advanced = true;
            }
        }
        if self.origin == Origin::Ingress
            && context.role == Role::Ingress
            && let Some(reason) = (self.failure.as_ref().map(|failure| &failure.message))
                .or(self.passed_fault.as_ref())
                .cloned()
        {
            // The client hears of a broken chain as it would of a broken server.
            self.upstream.reset();
            return Err(CloseReason::ChainBroke(reason));
        }
        advanced |= self.queue_fault(context.config);
        advanced |= self
            .upstream
            .flush_at_most(net, &mut self.up.output, WRITE_ROUND_BYTES)
            .map_err(CloseReason::UpstreamWrite)?;

        if advanced {
            self.last_progress_ns = now_ns;
        }
        let more_to_send =
            self.pass_on_end_of_stream(context, net).map_err(CloseReason::BadUpstream)?;
        if self.upstream.write_shut && self.upstream.read_closed && self.up.output.is_empty() {
            return Ok(Round::Finished);
        }
        Ok(if advanced || read_any || more_to_send { Round::Progress } else { Round::Idle })
    }

    fn start_connect(
        &mut self,
        net: &impl Connector<Socket = S>,
        target: SocketAddr,
        config: &HopConfig,
    ) {
        let token = token_of(self.slot, Side::Downstream);
        match Peer::connect(target, net, token, &config.name) {
            Ok(mut downstream) => {
                enable_tx_stamps(&mut downstream, self.tx_mode, &config.name);
                downstream.quickack = self.quickack;
                self.downstream = NextHop::Connecting(downstream);
            }
            Err(error) => self.fail_downstream(
                net,
                config,
                FaultCode::Unreachable,
                format!("cannot connect: {error}"),
            ),
        }
    }

    fn finish_connect(&mut self, net: &impl Connector<Socket = S>, config: &HopConfig) -> bool {
        let NextHop::Connecting(downstream) = &mut self.downstream else {
            return false;
        };
        match downstream.connected() {
            Ok(true) => {
                let connecting = std::mem::replace(&mut self.downstream, NextHop::Closed);
                if let NextHop::Connecting(peer) = connecting {
                    self.downstream = NextHop::Connected(peer);
                }
                true
            }
            Ok(false) => false,
            Err(error) => {
                self.fail_downstream(
                    net,
                    config,
                    FaultCode::Unreachable,
                    format!("cannot connect: {error}"),
                );
                true
            }
        }
    }

    /// The next hop is gone: drop it and tell the hops upstream, in-band.
    pub(super) fn fail_downstream(
        &mut self,
        net: &impl Connector<Socket = S>,
        config: &HopConfig,
        code: FaultCode,
        what: String,
    ) {
        if let Some(downstream) = self.downstream.peer_mut() {
            net.forget(&mut downstream.stream);
        }
        self.downstream = NextHop::Closed;
        let message = format!("next hop {}: {what}", next_hop_text(config));
        self.failure = Some(Failure { code, message });
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
        let message = format!("{} (hop {hop}): {}", config.name, failure.message);
        let fault = Fault { hop, code: failure.code, message };
        self.fault_queued = self.up.output.push(&wire::fault_frame(&fault));
        self.fault_queued
    }

    fn process_down(
        &mut self,
        context: &Context,
        net: &impl Connector<Socket = S>,
    ) -> Result<bool, String> {
        if let Some(ingress) = self.ingress.as_mut() {
            let sent_before = ingress.sent();
            let bytes_before = ingress.client_bytes;
            let moved = ingress.frame_client_bytes(&mut self.down.input, &mut self.down.output);
            self.frames_down += ingress.sent() - sent_before;
            self.bytes_down += ingress.client_bytes - bytes_before;
            self.down.stalled = !self.down.input.is_empty();
            if self.down.stalled {
                self.down.input.hold_back();
            }
            return Ok(moved);
        }
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
            let (frame, read) = match self.down.input.next_frame() {
                Ok(Some(head)) => head,
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
                    self.origin = match entries.first().map(|entry| entry.role) {
                        Some(Role::Ingress) => Origin::Ingress,
                        _ => Origin::Source,
                    };
                    if entries.len() >= MAX_HOPS {
                        // A loop, most likely: tell the source instead of going round again.
                        let message = WireError::TooManyHops.to_string();
                        self.failure = Some(Failure { code: FaultCode::TooManyHops, message });
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
                        self.start_connect(net, *target, context.config);
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
                Kind::Data if frame.flags() & wire::DATA_FROM_SERVER != 0 => {
                    return Err("server data travelling downstream".to_string());
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
                        match (context.role, context.config.remove_perf_headers) {
                            (Role::Echo, false) => {
                                let stamp = unwritten(hop, Direction::Turn, read);
                                let upstream = Some(&mut self.upstream);
                                forward_restamped(upstream, net, &mut self.up.output, &frame, stamp)
                            }
                            (Role::Echo, true) => self.up.output.push(frame.payload()),
                            (Role::StrippingRelay, _) if self.origin == Origin::Ingress => {
                                let stamp = unwritten(hop, Direction::Turn, read);
                                let up = (!self.upstream.write_shut).then_some(&mut self.up.output);
                                deliver_with_receipt(&mut self.down.output, up, &frame, stamp)
                            }
                            (Role::StrippingRelay, _) => {
                                let stamp = unwritten(hop, Direction::Down, read);
                                strip_into(&mut self.down.output, &mut self.pending, &frame, stamp)
                            }
                            _ => {
                                let stamp = unwritten(hop, Direction::Down, read);
                                let downstream = self.downstream.connected_mut();
                                let output = &mut self.down.output;
                                forward_restamped(downstream, net, output, &frame, stamp)
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
                let receipted =
                    context.role == Role::StrippingRelay && self.origin == Origin::Ingress;
                if context.role == Role::Echo {
                    self.frames_up += 1;
                    self.bytes_up += payload_len as u64;
                } else if receipted {
                    self.frames_up += 1;
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
        let local = self.upstream.stream.local_addr();
        PathEntry::new(context.role, &context.config.name, local, Some(self.upstream.addr))
            .with_tags(context.config.tags.clone())
            .emit(&mut extended);
        if self.failure.is_some() {
            unreached_entry(context.config).emit(&mut extended);
        } else if let (Role::StrippingRelay, Some((target, text))) =
            (context.role, &context.config.forward_to)
        {
            let seen_from = self.downstream.peer().and_then(|peer| peer.stream.local_addr());
            PathEntry::new(Role::PlainServer, text, Some(*target), seen_from).emit(&mut extended);
        }
        extended
    }

    fn bad_downstream(error: WireError) -> String {
        format!("sent bad input: {error}")
    }

    fn process_up(&mut self, context: &mut Context, clock: &impl Clock) -> Result<bool, String> {
        if !self.downstream.is_open() && self.up.input.is_empty() {
            return Ok(false);
        }
        if context.role == Role::Ingress {
            return self.take_answers(context.totals, clock);
        }
        if context.role == Role::StrippingRelay {
            return Ok(self.frame_plain_answers(clock));
        }
        self.pass_answers_up(clock)
    }

    /// Half-close, end to end: each side's EOF is passed on once everything before it has been.
    /// Returns whether something new waits to be sent before the end: the FAULT of a next hop
    /// that turned out to have failed, or the last kernel readings.
    fn pass_on_end_of_stream(
        &mut self,
        context: &Context,
        net: &impl Connector<Socket = S>,
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
        match &mut self.downstream {
            NextHop::Connected(downstream) => {
                if down_drained {
                    downstream.shut_write();
                }
                if downstream.read_closed
                    && self.up.output.is_empty()
                    && !self.up.stalled
                    && self.origin == Origin::Ingress
                {
                    // Each direction ends on its own: the server's end goes up as it came.
                    if !self.up.input.is_empty() && context.role != Role::StrippingRelay {
                        if self.failure.is_none() && self.passed_fault.is_none() {
                            let what = "closed in the middle of a frame".to_string();
                            let code = FaultCode::ClosedEarly;
                            self.fail_downstream(net, context.config, code, what);
                            return Ok(true);
                        }
                    } else if !self.upstream.write_shut && self.queue_last_kernel_samples() {
                        return Ok(true);
                    }
                    self.upstream.shut_write();
                } else if downstream.read_closed && self.up.output.is_empty() && !self.up.stalled {
                    // The next hop ended its stream; everything whole has been passed up. Only
                    // an end after ours, with every frame and the path answered, is clean.
                    let unanswered = self.frames_down.saturating_sub(self.frames_up);
                    let passed_on = format!(
                        "{unanswered} of the {} {} passed on unanswered",
                        self.frames_down,
                        if self.frames_down == 1 { "frame" } else { "frames" }
                    );
                    let owed: usize =
                        self.pending.frames.iter().map(|frame| frame.payload_len).sum();
                    let what = if context.role == Role::StrippingRelay && unanswered > 0 {
                        // A plain server: it owes bytes, not frames.
                        Some(format!(
                            "answered {} of the {owed} bytes it was sent last, then closed the \
                             connection ({passed_on})",
                            self.up.input.len()
                        ))
                    } else if !self.up.input.is_empty() {
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
                            let code = FaultCode::ClosedEarly;
                            self.fail_downstream(net, context.config, code, what);
                            return Ok(true);
                        }
                        _ if self.queue_last_kernel_samples() => return Ok(true),
                        _ => self.upstream.shut_write(),
                    }
                }
            }
            NextHop::Connecting(_) => {}
            NextHop::Closed => {
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
        let connected = self.downstream.connected();
        let sockets = [(Side::Upstream, Some(&self.upstream)), (Side::Downstream, connected)];
        let mut queued = false;
        for (side, peer) in sockets {
            let Some(peer) = peer else { continue };
            let Some(info) = peer.stream.tcp_info() else { continue };
            let tx = peer.tx.as_ref().map(|tx| tx.totals);
            queued |= self.up.output.push(&KernelSample { hop, side, info, tx }.frame());
        }
        queued
    }

    /// `--metrics`: every frame this hop stamps reports its residence to `sink`.
    pub(super) fn measure_residence(&mut self, sink: &SharedResidence) {
        self.down.output.measure_residence(sink.clone());
        self.up.output.measure_residence(sink.clone());
    }

    /// An ingress's chain: an error closes both sockets with a reset, which passes the
    /// client's or the server's reset on hop by hop.
    pub(super) fn passes_resets(&self) -> bool {
        self.origin == Origin::Ingress
    }

    /// Bytes read from and written to both sockets since the connection opened: what a turn
    /// is counted in.
    fn bytes_moved(&self) -> u64 {
        self.down.input.total_received()
            + self.up.input.total_received()
            + self.down.output.total_written()
            + self.up.output.total_written()
    }

    /// Whether the connection holds work that should make progress within the timeout.
    pub(super) fn outstanding(&self) -> bool {
        !self.down.input.is_empty()
            || !self.down.output.is_empty()
            || !self.up.input.is_empty()
            || !self.up.output.is_empty()
            || self.downstream.is_connecting()
            || self.frames_down > self.frames_up && self.downstream.is_open()
            || self.failure.is_some()
            || self.upstream.write_shut
    }

    /// On the hop's sweep: what the no-progress timeout (`config.timeout`, against `now_ns`)
    /// makes of this connection. A next hop that keeps it waiting (still connecting, or frames
    /// unanswered) is failed in-band, a FAULT frame going up; anything else stuck is closed.
    pub(super) fn expire(
        &mut self,
        config: &HopConfig,
        net: &impl Connector<Socket = S>,
        now_ns: u64,
    ) -> Expiry {
        let timeout_ns = config.timeout.as_nanos() as u64;
        if !self.outstanding() || now_ns.saturating_sub(self.last_progress_ns) < timeout_ns {
            return Expiry::Running;
        }
        let seconds = config.timeout.as_secs_f64();
        if self.downstream.is_open() && self.failure.is_none() && self.waits_for_downstream() {
            let (code, what) = if self.downstream.is_connecting() {
                (FaultCode::ConnectTimeout, format!("timed out after {seconds} s connecting"))
            } else {
                let outstanding = self.frames_down.saturating_sub(self.frames_up);
                let what =
                    format!("no answer for {seconds} s with {outstanding} frames outstanding");
                (FaultCode::NoAnswer, what)
            };
            self.fail_downstream(net, config, code, what);
            self.last_progress_ns = now_ns;
            Expiry::Faulted
        } else {
            let detail = self.stall_detail();
            Expiry::Close(CloseReason::NoProgress { seconds, detail })
        }
    }

    fn waits_for_downstream(&self) -> bool {
        self.downstream.is_connecting()
            || self.frames_down > self.frames_up
            || !self.down.output.is_empty()
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
        net: &impl Connector<Socket = S>,
        config: &HopConfig,
        error: io::Error,
    ) -> Result<(), CloseReason> {
        if self.upstream_stuck() {
            return Err(CloseReason::NextHopGaveUp(format!(
                "no progress for {} s{}; next hop {} gave up first: {error}",
                config.timeout.as_secs_f64(),
                self.stall_detail(),
                next_hop_text(config)
            )));
        }
        let what = format!("lost the connection after {} frames: {error}", self.frames_down);
        self.fail_downstream(net, config, FaultCode::Lost, what);
        Ok(())
    }
}

/// Asks for a socket's transmit stamps (none when `mode` is off); a kernel that refuses is
/// said once per process, and the readings then carry none.
fn enable_tx_stamps<S: Socket>(peer: &mut Peer<S>, mode: TxMode, who: &str) {
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

/// Passes `frame` on with `stamp` added, to `peer` (when connected) through `output`: a large
/// frame with nothing queued before it goes to the kernel from where it was read, its payload
/// never copied ([`Peer::send_through`]; what the kernel does not take is queued); any other is
/// copied into `output` and written by the next flush. False when `output` has no room for it.
fn forward_restamped<S: Socket, T: AsRef<[u8]>>(
    peer: Option<&mut Peer<S>>,
    clock: &impl Clock,
    output: &mut Outbound,
    frame: &Frame<T>,
    stamp: Stamp,
) -> bool {
    if let Some(peer) = peer
        && frame.payload_len() >= THROUGH_MIN_PAYLOAD
        && output.is_empty()
        && output.room() >= frame.total_len() + RECORD_LEN
    {
        let mut headers = [0u8; MAX_HEADERS_LEN];
        let headers_len = wire::emit_restamped_headers(&mut headers, frame, stamp);
        let headers = &mut headers[..headers_len];
        let stamp_at = wire::write_stamp_offset(frame.record_count());
        if let Through::Taken { count, write_ns } =
            peer.send_through(clock, headers, stamp_at, frame.payload())
        {
            let rest = match count.checked_sub(headers_len) {
                None => [&headers[count..], frame.payload()],
                Some(payload_taken) => [&[][..], &frame.payload()[payload_taken..]],
            };
            output.started_through(count, write_ns, &stamp, rest);
            return true;
        }
    }
    restamp_into(output, frame, stamp)
}

fn restamp_into<T: AsRef<[u8]>>(output: &mut Outbound, frame: &Frame<T>, stamp: Stamp) -> bool {
    let Some(tail) = output.tail(frame.total_len() + RECORD_LEN) else {
        return false;
    };
    let written = wire::emit_restamped(tail, frame, stamp);
    output.commit_frame(written, wire::write_stamp_offset(frame.record_count()));
    true
}

/// The path entry for a next hop this relay could not reach.
fn unreached_entry(config: &HopConfig) -> PathEntry {
    let target = config.forward_to.as_ref().map(|(addr, _)| *addr);
    PathEntry::new(Role::Unreached, &next_hop_text(config), target, None)
}
