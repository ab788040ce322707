//! The relay and the echoing end: one single-threaded mio poll loop that accepts the chain's
//! connections, opens one downstream connection for each, and moves frames both ways, adding
//! this hop's stamp record to every data frame.
//!
//! The loop owns sockets, buffers and readiness; what a frame *is* belongs to [`crate::wire`].
//! Following sozu, each socket is registered once (edge-triggered, read and write) and its
//! readiness is tracked in software: a flag is set by an event and cleared only by
//! `WouldBlock`. Backpressure is nothing more than not reading: a frame that does not fit the
//! output buffer stays in the input buffer, and the socket it came from is not read until it
//! has moved on, so the kernel's window closes towards the sender.
//!
//! A read stamp is the clock read right after the poll returned with this socket's readiness;
//! a write stamp is taken when the frame is copied to the output buffer, just before the write.
//! Because a socket is not read while a whole frame waits in its input, every frame's read
//! stamp is the wake-up in which its last byte was read.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::buffer::Buffer;
use crate::clock;
use crate::net::{self, Cidr, Io};
use crate::tuning;
use crate::wire::{
    self, Direction, Fault, Frame, HEADER_LEN, Header, Kind, MAX_FRAME_LEN, MAX_HEADERS_LEN,
    MAX_HOPS, MAX_RECORDS, PathEntry, RECORD_LEN, Role, Stamp, WireError,
};

/// The sequence number a stripping relay gives to bytes a plain server sends unasked.
pub const UNSOLICITED: u64 = u64::MAX;

const LISTENER: Token = Token(0);
/// Reads are capped so that a connection carrying small frames touches little of its buffer.
const READ_CHUNK: usize = 64 * 1024;
/// Room for the largest frame plus the record this hop adds.
const BUFFER_LEN: usize = MAX_FRAME_LEN + RECORD_LEN;
/// A stripping relay keeps the headers of frames whose answer has not come back yet.
const PENDING_HEADERS_LEN: usize = 256 * 1024;
/// Rounds of read/process/write for one connection per wake-up before the others get a turn.
const ROUNDS_PER_TURN: usize = 16;
/// How often connections are checked for the no-progress timeout.
const SWEEP_INTERVAL_NS: u64 = 100_000_000;

pub struct HopConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub forward_to: Option<(SocketAddr, String)>,
    pub remove_perf_headers: bool,
    pub timeout: Duration,
    /// Spin on the poll instead of sleeping.
    pub busy_poll: bool,
    /// Peers allowed to connect; everyone when empty.
    pub allow: Vec<Cidr>,
    pub max_conns: Option<usize>,
}

/// Runs the hop until SIGTERM or SIGINT, then stops accepting and lets the open connections
/// finish within the timeout. Returns an error only when setting up fails.
pub fn run(config: HopConfig) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listener = net::listen(config.listen).map_err(|error| {
        io::Error::new(error.kind(), format!("listen on {}: {error}", config.listen))
    })?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let role = match (&config.forward_to, config.remove_perf_headers) {
        (Some(_), false) => Role::Relay,
        (Some(_), true) => Role::StrippingRelay,
        (None, _) => Role::Echo,
    };
    // Everything the hop holds while idle is open before it says it listens, so the line
    // marks a steady state (tests count descriptors from there).
    let spare_fd = File::open("/dev/null").ok();
    let bound = listener.local_addr()?;
    let target = match config.forward_to {
        Some(_) => format!(", forwarding to {}", next_hop_text(&config)),
        None => String::new(),
    };
    eprintln!("{}: listening on {bound} ({}{target})", config.name, role.describe());
    if bound.ip().is_unspecified() && config.allow.is_empty() {
        eprintln!(
            "{}: warning: listening on every interface and the protocol has no authentication; \
             restrict it with --allow CIDR or --listen on a private address",
            config.name
        );
    }
    tuning::catch_stop_signals();

    let mut hop = Hop {
        config,
        role,
        listener: Some(listener),
        spare_fd,
        connections: Vec::new(),
        free_slots: Vec::new(),
        open_count: 0,
        busy: Vec::new(),
        last_sweep_ns: clock::now_ns(),
        drain_deadline_ns: None,
    };
    let mut events = Events::with_capacity(1024);
    let mut touched = Vec::new();
    loop {
        let timeout = if hop.config.busy_poll || !hop.busy.is_empty() {
            Some(Duration::ZERO)
        } else if hop.open_count > 0 {
            Some(Duration::from_nanos(SWEEP_INTERVAL_NS))
        } else {
            None
        };
        if let Err(error) = poll.poll(&mut events, timeout)
            && error.kind() != io::ErrorKind::Interrupted
        {
            return Err(error);
        }
        let now_ns = clock::now_ns();
        touched.clear();
        touched.append(&mut hop.busy);
        for event in events.iter() {
            if event.token() == LISTENER {
                hop.accept_all(poll.registry(), &mut touched);
                continue;
            }
            let (slot, side) = slot_of(event.token());
            // Events for a closed slot are stale (documented mio behaviour): ignore them.
            let Some(Some(connection)) = hop.connections.get_mut(slot) else {
                continue;
            };
            let peer = match side {
                Side::Upstream => Some(&mut connection.upstream),
                Side::Downstream => connection.downstream.as_mut(),
            };
            if let Some(peer) = peer {
                peer.hung_up |= event.is_read_closed() || event.is_error();
                peer.readable |= event.is_readable() || peer.hung_up;
                peer.writable |= event.is_writable() || event.is_write_closed() || event.is_error();
            }
            touched.push(slot);
        }
        touched.sort_unstable();
        touched.dedup();
        for &slot in &touched {
            hop.pump(poll.registry(), slot, now_ns);
        }
        if now_ns.saturating_sub(hop.last_sweep_ns) >= SWEEP_INTERVAL_NS {
            hop.last_sweep_ns = now_ns;
            hop.sweep(poll.registry(), now_ns);
        }
        if tuning::stop_requested() && hop.drain_deadline_ns.is_none() {
            hop.start_draining(poll.registry(), now_ns);
        }
        if let Some(deadline_ns) = hop.drain_deadline_ns {
            if hop.open_count == 0 {
                eprintln!("{}: drained; exiting", hop.config.name);
                return Ok(());
            }
            if now_ns >= deadline_ns || tuning::stop_signals() > 1 {
                hop.close_all(poll.registry(), "stopped before the drain was complete");
                return Ok(());
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Upstream = 0,
    Downstream = 1,
}

fn token_of(slot: usize, side: Side) -> Token {
    Token(1 + slot * 2 + side as usize)
}

fn slot_of(token: Token) -> (usize, Side) {
    let index = token.0 - 1;
    (index / 2, if index.is_multiple_of(2) { Side::Upstream } else { Side::Downstream })
}

struct Hop {
    config: HopConfig,
    role: Role,
    /// `None` once a stop signal has closed it.
    listener: Option<TcpListener>,
    /// A descriptor held in reserve: when accept fails for lack of descriptors, releasing it
    /// lets the hop accept the waiting connection and close it with a message, instead of
    /// leaving it in the backlog where the edge-triggered listener would never report it again.
    spare_fd: Option<File>,
    connections: Vec<Option<Connection>>,
    free_slots: Vec<usize>,
    open_count: usize,
    /// Set by a stop signal: no new connections, and the open ones have until then.
    drain_deadline_ns: Option<u64>,
    /// Connections that used up their turn with work left: served again without sleeping.
    busy: Vec<usize>,
    last_sweep_ns: u64,
}

/// One socket of a connection, with its software readiness.
struct Peer {
    stream: TcpStream,
    addr: SocketAddr,
    readable: bool,
    writable: bool,
    /// The poll reported the peer's FIN (EPOLLRDHUP): read until the EOF itself is seen.
    hung_up: bool,
    read_closed: bool,
    write_shut: bool,
}

impl Peer {
    fn new(stream: TcpStream, addr: SocketAddr) -> Peer {
        Peer {
            stream,
            addr,
            readable: false,
            writable: false,
            hung_up: false,
            read_closed: false,
            write_shut: false,
        }
    }

    /// Reads into `into` until the socket would block or the buffer is full.
    fn fill(&mut self, into: &mut Buffer) -> io::Result<bool> {
        let mut progress = false;
        while self.readable && !self.read_closed {
            let want = into.room().min(READ_CHUNK);
            if want == 0 {
                break;
            }
            let tail = into.tail(want).expect("room checked");
            match net::classify(|| self.stream.read(&mut tail[..want])) {
                Io::Done(count) => {
                    into.commit(count);
                    progress = true;
                    // A short read emptied the socket; the next arrival is a new edge, so
                    // the read that would only say WouldBlock is skipped. Not once the peer's
                    // FIN has been signalled: it may sit behind these bytes, and no further
                    // edge would announce it.
                    self.readable = count == want || self.hung_up;
                }
                Io::Closed => self.read_closed = true,
                Io::WouldBlock => self.readable = false,
                Io::Failed(error) => return Err(error),
            }
        }
        Ok(progress)
    }

    /// Writes from `from` until it is empty or the socket would block.
    fn flush(&mut self, from: &mut Buffer) -> io::Result<bool> {
        let mut progress = false;
        while self.writable && !from.is_empty() {
            match net::classify(|| self.stream.write(from.data())) {
                Io::Done(count) => {
                    // A short write filled the socket's buffer: wait for the next edge.
                    self.writable = count == from.len();
                    from.consume(count);
                    progress = true;
                }
                Io::WouldBlock => self.writable = false,
                Io::Closed => return Err(io::ErrorKind::WriteZero.into()),
                Io::Failed(error) => return Err(error),
            }
        }
        Ok(progress)
    }

    fn shut_write(&mut self) {
        if !self.write_shut {
            self.write_shut = true;
            // The peer may already be gone; the read side reports that.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }
}

/// One direction through the hop: bytes read from one socket, frames written to another.
struct Pipe {
    input: Buffer,
    output: Buffer,
    /// Stamp of the wake-up in which the input last received bytes.
    read_ns: u64,
    /// A whole frame is waiting in `input` for room in the output: do not read more.
    stalled: bool,
}

impl Pipe {
    fn new(input_len: usize, output_len: usize) -> Pipe {
        Pipe {
            input: Buffer::with_capacity(input_len),
            output: Buffer::with_capacity(output_len),
            read_ns: 0,
            stalled: false,
        }
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
    frames: VecDeque<(usize, usize)>,
}

struct Connection {
    slot: usize,
    upstream: Peer,
    /// The next hop; `None` at the echoing end, and once it has failed.
    downstream: Option<Peer>,
    connecting: bool,
    down: Pipe,
    up: Pipe,
    /// This hop's index in the chain, learnt from the path announcement.
    hop: Option<u8>,
    speech: Speech,
    pending: PendingAnswers,
    /// Why the next hop is unusable; reported upstream in a FAULT frame.
    failure: Option<String>,
    fault_queued: bool,
    /// The path announcement forwarded down, until its answer comes back up.
    unanswered_path: Option<Vec<u8>>,
    /// The fault a hop further down reported: its end of stream is expected, not a new fault.
    passed_fault: Option<String>,
    frames_down: u64,
    frames_up: u64,
    bytes_down: u64,
    bytes_up: u64,
    opened_ns: u64,
    last_progress_ns: u64,
}

/// Why a connection is closed: `None` for a clean end.
type CloseReason = Option<String>;

impl Hop {
    fn accept_all(&mut self, registry: &mio::Registry, touched: &mut Vec<usize>) {
        let name = self.config.name.clone();
        loop {
            let Some(listener) = self.listener.as_ref() else { return };
            let (stream, addr) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) if is_out_of_descriptors(&error) && self.spare_fd.is_some() => {
                    self.spare_fd = None;
                    // Only the address is kept: the stream closes before the spare reopens.
                    let refused = listener.accept().map(|(_, addr)| addr);
                    self.spare_fd = File::open("/dev/null").ok();
                    match refused {
                        Ok(addr) => eprintln!(
                            "{name}: refusing connection from {addr}: out of file descriptors \
                             ({error}); {} connections stay served",
                            self.open_count
                        ),
                        // accept(2) reports EMFILE before it looks at the backlog: with the
                        // spare released, an empty backlog says so, and there is nothing to do.
                        Err(_) => return,
                    }
                    continue;
                }
                Err(error) => {
                    eprintln!("{name}: cannot accept a connection: {error}");
                    return;
                }
            };
            if !self.config.allow.is_empty()
                && !self.config.allow.iter().any(|block| block.contains(addr.ip()))
            {
                eprintln!("{name}: refusing connection from {addr}: not in --allow");
                continue;
            }
            if self.config.max_conns.is_some_and(|max| self.open_count >= max) {
                eprintln!(
                    "{name}: refusing connection from {addr}: {} connections open (--max-conns)",
                    self.open_count
                );
                continue;
            }
            if let Err(error) = self.open(registry, stream, addr, touched) {
                eprintln!("{name}: {addr}: cannot set up the connection: {error}");
            }
        }
    }

    fn start_draining(&mut self, registry: &mio::Registry, now_ns: u64) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        let timeout = self.config.timeout;
        self.drain_deadline_ns = Some(now_ns + timeout.as_nanos() as u64);
        eprintln!(
            "{}: stop requested: accepting no more connections; draining {} (at most {} s)",
            self.config.name,
            self.open_count,
            timeout.as_secs_f64()
        );
    }

    fn close_all(&mut self, registry: &mio::Registry, reason: &str) {
        for slot in 0..self.connections.len() {
            self.close(registry, slot, Some(reason.to_string()));
        }
    }

    fn open(
        &mut self,
        registry: &mio::Registry,
        stream: TcpStream,
        addr: SocketAddr,
        touched: &mut Vec<usize>,
    ) -> io::Result<()> {
        stream.set_nodelay(true)?;
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.connections.push(None);
            self.connections.len() - 1
        });
        let mut upstream = Peer::new(stream, addr);
        let token = token_of(slot, Side::Upstream);
        if let Err(error) =
            registry.register(&mut upstream.stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.free_slots.push(slot);
            return Err(error);
        }
        let now_ns = clock::now_ns();
        let echo = self.role == Role::Echo;
        let connection = Connection {
            slot,
            upstream,
            downstream: None,
            connecting: false,
            // The echoing end answers into `up.output`; it has no downstream buffers.
            down: Pipe::new(BUFFER_LEN, if echo { 0 } else { BUFFER_LEN }),
            up: Pipe::new(if echo { 0 } else { BUFFER_LEN }, BUFFER_LEN),
            hop: None,
            speech: Speech::Undecided,
            pending: PendingAnswers {
                headers: Buffer::with_capacity(if self.role == Role::StrippingRelay {
                    PENDING_HEADERS_LEN
                } else {
                    0
                }),
                frames: VecDeque::new(),
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
        };
        self.connections[slot] = Some(connection);
        self.open_count += 1;
        touched.push(slot);
        Ok(())
    }

    fn pump(&mut self, registry: &mio::Registry, slot: usize, now_ns: u64) {
        let Some(Some(connection)) = self.connections.get_mut(slot) else {
            return;
        };
        let context = Context { config: &self.config, role: self.role };
        let mut rounds = 0;
        let outcome = loop {
            match connection.round(&context, registry, now_ns) {
                Ok(Round::Progress) if rounds + 1 == ROUNDS_PER_TURN => {
                    self.busy.push(slot);
                    return;
                }
                Ok(Round::Progress) => rounds += 1,
                Ok(Round::Idle) => return,
                Ok(Round::Finished) => break None,
                Err(reason) => break Some(reason),
            }
        };
        self.close(registry, slot, outcome);
    }

    fn sweep(&mut self, registry: &mio::Registry, now_ns: u64) {
        let timeout_ns = self.config.timeout.as_nanos() as u64;
        for slot in 0..self.connections.len() {
            let Some(connection) = self.connections[slot].as_mut() else {
                continue;
            };
            if !connection.outstanding()
                || now_ns.saturating_sub(connection.last_progress_ns) < timeout_ns
            {
                continue;
            }
            let seconds = self.config.timeout.as_secs_f64();
            if connection.downstream.is_some()
                && connection.failure.is_none()
                && connection.waits_for_downstream()
            {
                let what = if connection.connecting {
                    format!("timed out after {seconds} s connecting")
                } else {
                    format!(
                        "no answer for {seconds} s with {} frames outstanding",
                        connection.frames_down.saturating_sub(connection.frames_up)
                    )
                };
                connection.fail_downstream(registry, &self.config, what);
                connection.last_progress_ns = now_ns;
                self.pump(registry, slot, now_ns);
            } else {
                let reason = format!("no progress for {seconds} s{}", connection.stall_detail());
                self.close(registry, slot, Some(reason));
            }
        }
    }

    fn close(&mut self, registry: &mio::Registry, slot: usize, reason: CloseReason) {
        let Some(mut connection) = self.connections[slot].take() else {
            return;
        };
        let _ = registry.deregister(&mut connection.upstream.stream);
        if let Some(downstream) = connection.downstream.as_mut() {
            let _ = registry.deregister(&mut downstream.stream);
        }
        self.free_slots.push(slot);
        self.open_count -= 1;
        self.busy.retain(|&busy| busy != slot);
        let seconds = (clock::now_ns() - connection.opened_ns) as f64 / 1e9;
        // One line per connection: a fault this hop reported or passed on is its reason too.
        let reason = reason.or(connection.failure).or(connection.passed_fault);
        let ending = match reason {
            None => String::new(),
            Some(reason) => format!("; closed: {reason}"),
        };
        eprintln!(
            "{}: connection from {} ended after {seconds:.3} s: {} frames / {} B down, {} frames / {} B up{ending}",
            self.config.name,
            connection.upstream.addr,
            connection.frames_down,
            connection.bytes_down,
            connection.frames_up,
            connection.bytes_up,
        );
    }
}

struct Context<'a> {
    config: &'a HopConfig,
    role: Role,
}

enum Round {
    Progress,
    Idle,
    Finished,
}

impl Connection {
    /// One round of connect, read, process and write in both directions.
    /// One round of connect, read, process and write in both directions.
    fn round(
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
            let got = self
                .upstream
                .fill(&mut self.down.input)
                .map_err(|error| format!("read: {error}"))?;
            if got {
                self.down.read_ns = now_ns;
                read_any = true;
            }
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
                Ok(got) => {
                    if got {
                        self.up.read_ns = now_ns;
                        read_any = true;
                    }
                }
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
                self.up.input.consume(self.up.input.len());
                advanced = true;
            }
        }
        advanced |= self.queue_fault(context.config);
        advanced |=
            self.upstream.flush(&mut self.up.output).map_err(|error| format!("write: {error}"))?;

        if advanced {
            self.last_progress_ns = now_ns;
        }
        let failed_late = self.pass_on_end_of_stream(context, registry)?;
        if self.upstream.write_shut && self.upstream.read_closed && self.up.output.is_empty() {
            return Ok(Round::Finished);
        }
        Ok(if advanced || read_any || failed_late { Round::Progress } else { Round::Idle })
    }

    fn start_connect(&mut self, registry: &mio::Registry, target: SocketAddr, config: &HopConfig) {
        let started = net::connect(target).and_then(|stream| {
            let mut downstream = Peer::new(stream, target);
            let token = token_of(self.slot, Side::Downstream);
            registry.register(
                &mut downstream.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(downstream)
        });
        match started {
            Ok(downstream) => {
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
    fn fail_downstream(&mut self, registry: &mio::Registry, config: &HopConfig, what: String) {
        if let Some(mut downstream) = self.downstream.take() {
            let _ = registry.deregister(&mut downstream.stream);
        }
        self.connecting = false;
        let failure = format!("next hop {}: {what}", next_hop_text(config));
        self.failure = Some(failure);
        self.down.output.consume(self.down.output.len());
        self.pending.frames.clear();
        self.pending.headers.consume(self.pending.headers.len());
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
        let mut write_ns = None;
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
                        &announcement,
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
                        let write_ns = *write_ns.get_or_insert_with(clock::now_ns);
                        let read_ns = self.down.read_ns;
                        match (context.role, context.config.remove_perf_headers) {
                            (Role::Echo, false) => {
                                let stamp =
                                    Stamp { hop, direction: Direction::Turn, read_ns, write_ns };
                                restamp_into(&mut self.up.output, &frame, stamp)
                            }
                            (Role::Echo, true) => self.up.output.push(frame.payload()),
                            (Role::StrippingRelay, _) => {
                                let stamp =
                                    Stamp { hop, direction: Direction::Down, read_ns, write_ns };
                                strip_into(&mut self.down.output, &mut self.pending, &frame, stamp)
                            }
                            _ => {
                                let stamp =
                                    Stamp { hop, direction: Direction::Down, read_ns, write_ns };
                                restamp_into(&mut self.down.output, &frame, stamp)
                            }
                        }
                    }
                }
                Kind::Fault => return Err("FAULT frame travelling downstream".to_string()),
            };
            if !moved {
                self.down.stalled = true;
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
        let mut write_ns = None;
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
                    let write_ns = *write_ns.get_or_insert_with(clock::now_ns);
                    let stamp =
                        Stamp { hop, direction: Direction::Up, read_ns: self.up.read_ns, write_ns };
                    restamp_into(&mut self.up.output, &frame, stamp)
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
            };
            if !moved {
                self.up.stalled = true;
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
        let mut write_ns = None;
        let hop = self.hop.unwrap_or(0);
        loop {
            let available = self.up.input.len();
            if available == 0 {
                break;
            }
            let write_ns = *write_ns.get_or_insert_with(clock::now_ns);
            let stamp = Stamp { hop, direction: Direction::Up, read_ns: self.up.read_ns, write_ns };
            let moved = match self.pending.frames.front() {
                Some(&(headers_len, payload_len)) => {
                    if available < payload_len {
                        break;
                    }
                    let stored = &self.pending.headers.data()[..headers_len];
                    let stored_frame = Frame::new_unchecked(stored);
                    let header = Header {
                        record_count: stored_frame.record_count() + 1,
                        payload_len,
                        ..Header::of(&stored_frame)
                    };
                    let Some(tail) = self.up.output.tail(header.total_len()) else {
                        break;
                    };
                    let written = wire::emit_frame(
                        tail,
                        &header,
                        &stored[HEADER_LEN..],
                        &[stamp],
                        &self.up.input.data()[..payload_len],
                    );
                    self.up.output.commit(written);
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
                    self.up.output.commit(written);
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
    /// Returns whether the next hop turned out to have failed: its FAULT is then still to send.
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
                    let what = if !self.up.input.is_empty() {
                        Some(format!(
                            "closed in the middle of a frame, {unanswered} frames unanswered"
                        ))
                    } else if !downstream.write_shut || unanswered > 0 {
                        Some(format!("closed the connection early, {unanswered} frames unanswered"))
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
                    self.upstream.shut_write();
                }
            }
        }
        Ok(false)
    }

    /// Whether the connection holds work that should make progress within the timeout.
    fn outstanding(&self) -> bool {
        !self.down.input.is_empty()
            || !self.down.output.is_empty()
            || !self.up.input.is_empty()
            || !self.up.output.is_empty()
            || self.connecting
            || self.frames_down > self.frames_up && self.downstream.is_some()
            || self.failure.is_some()
            || self.upstream.write_shut
    }

    fn waits_for_downstream(&self) -> bool {
        self.connecting || self.frames_down > self.frames_up || !self.down.output.is_empty()
    }

    fn stall_detail(&self) -> String {
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

/// Where a path announcement goes: on down to the next hop, or back up when the chain's stamps
/// end here (echoing end, stripping relay) or the next hop is unreachable.
fn answer_or_forward_path(
    role: Role,
    failed: bool,
    announcement: &[u8],
    down: &mut Buffer,
    up: &mut Buffer,
) -> bool {
    let frame = wire::control_frame(Kind::Path, announcement);
    if role == Role::Relay && !failed { down.push(&frame) } else { up.push(&frame) }
}

fn restamp_into<T: AsRef<[u8]>>(output: &mut Buffer, frame: &Frame<T>, stamp: Stamp) -> bool {
    let Some(tail) = output.tail(frame.total_len() + RECORD_LEN) else {
        return false;
    };
    let written = wire::emit_restamped(tail, frame, stamp);
    output.commit(written);
    true
}

/// Sends only the payload on, and keeps the frame's headers (with this hop's record) until the
/// plain server's answer comes back.
fn strip_into<T: AsRef<[u8]>>(
    output: &mut Buffer,
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
    pending.frames.push_back((written, frame.payload_len()));
    output.push(frame.payload());
    true
}

/// The next hop as the user wrote it, with the address it resolved to when that differs.
fn next_hop_text(config: &HopConfig) -> String {
    match &config.forward_to {
        Some((addr, text)) if *text == addr.to_string() => text.clone(),
        Some((addr, text)) => format!("{text} ({addr})"),
        None => "-".to_string(),
    }
}

/// The path entry for a next hop this relay could not reach.
fn unreached_entry(config: &HopConfig) -> PathEntry {
    let target = config.forward_to.as_ref().map(|(addr, _)| *addr);
    PathEntry::new(Role::Unreached, &next_hop_text(config), target, None)
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
