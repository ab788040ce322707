//! The relay and the echoing end: one single-threaded mio poll loop. This module owns the
//! loop itself: the listener and who may connect, the slots and tokens of connections, the
//! readiness each event sets, fair turns, the no-progress timeout and the drain after a stop
//! signal. What one connection does with its bytes lives in [`connection`]; what a frame *is*
//! belongs to [`crate::wire`].
//!
//! Following sozu, each socket is registered once (edge-triggered, read and write) and its
//! readiness is tracked in software: an event sets a flag, and only `WouldBlock` (or a short
//! read or write, which means the same without the extra system call) clears it. Backpressure
//! is nothing more than not reading: a frame that does not fit the output buffer stays in the
//! input buffer, and the socket it came from is not read until it has moved on, so the
//! kernel's window closes towards the sender.
//!
//! With `--metrics`, the loop keeps totals (connections, frames and bytes each way, faults by
//! code, close reasons), the residence of every frame it stamps (an integer bucket increment
//! in its own state, fed by the connection core when a frame's hand-over starts) and, at an
//! ingress, each path's delay histograms; it hands a snapshot to the [`crate::scrape`] thread
//! at most four times a second, only when something changed, and a last one when it exits. It
//! never serves a scrape itself.
//!
//! The clock read right after the poll returns serves the timers only. Frames are stamped by
//! the connection core ([`crate::core`]): each read call and each write call takes its own
//! clock reading, so a stamp never precedes the bytes it stamps.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

mod connection;
pub use connection::ingress;

use crate::clock;
use crate::core::{Peer, Registered};
use crate::log_line;
use crate::net::{self, Cidr};
use crate::output::Destination;
use crate::report::Unit;
use crate::report::metrics::{
    BucketLayout, CLOSE_REASONS, FaultOrigin, HopResidence, HopSnapshot, PathDelays, Snapshot,
};
use crate::scrape::Publisher;
use crate::tuning;
use crate::wire::{Role, Tag};
use connection::{CloseReason, Connection, Context, Expiry, Turn};
use ingress::{IngressConfig, IngressTotals, ProbeSchedule};

const LISTENER: Token = Token(0);
/// The loop's fairness rule (issue 15: a probe through a busy relay must not wait behind bulk
/// streams). A connection's *turn* is rounds of read, process and write until it has nothing to
/// do or has moved `TURN_BYTES`; each round reads at most `READ_ROUND_BYTES` and writes at most
/// `WRITE_ROUND_BYTES` of queued bytes on each socket, so a backlog waiting for a slow peer is
/// budgeted too, and the frames its reads completed go to the kernel at once from where they
/// were read (`Peer::send_through`). One left with work joins the back of the *busy* queue.
/// Each wake-up serves, in the order the poll reported them, the connections that became ready
/// and are not queued (a probe, a request: little to do), and then only the busy queue's first
/// turn, before polling again without sleeping. So a frame that becomes readable waits for the
/// turn in progress and the other newly ready connections, never behind every bulk stream's
/// turn: before, a connection took up to 16 rounds of up to a megabyte each per wake-up, served
/// in slot order.
///
/// The sizes were measured side by side with `scripts/bench-loaded.sh --realtime --variant`
/// (the README's *Under load* has the tables). Reads of 128 KiB a round make a bulk stream's
/// turn forward about two 64 KiB frames instead of one (a 64 KiB block and its headers is just
/// over 64 KiB, so 64 KiB reads completed one frame a turn): on one CPU the bulk streams then
/// got 0.96–1.10 of the best anchor's throughput instead of 0.84–1.01, while the probe's p99
/// split across the CPUs stayed at 0.47–0.78 of the better anchor's (0.42–0.51 with 64 KiB
/// reads). Turns of 256 KiB (reads, writes and budget) bought no more bulk and doubled the
/// probe's wait in the hop (its p99 residence split 210–640 µs against 60–280 µs).
pub(super) const TURN_BYTES: u64 = 64 * 1024;
/// See [`TURN_BYTES`].
pub(super) const READ_ROUND_BYTES: usize = 128 * 1024;
/// See [`TURN_BYTES`].
pub(super) const WRITE_ROUND_BYTES: usize = 64 * 1024;
/// A turn whose rounds make progress without moving bytes (frames turned, faults queued)
/// ends after this many.
pub(super) const ROUNDS_PER_TURN: usize = 16;
/// How often connections are checked for the no-progress timeout (and sample the kernel's
/// readings, when their source asked).
const SWEEP_INTERVAL_NS: u64 = 100_000_000;
/// Connections one pass of the sweep looks at. A sweep is spread over passes with a poll for
/// ready sockets between them, so a frame that arrives during one waits for a pass, not for
/// the whole sweep: at 10,000 idle connections, a sweep in one go put the probe's p99 at 482 µs
/// against 205 µs without them (`scripts/bench-loaded.sh --realtime`, its idle rows).
const SWEEP_SLOTS_PER_PASS: usize = 256;

/// Where the periodic check of every connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    /// The last sweep started at this time.
    Waiting { started_ns: u64 },
    /// A sweep that started at `started_ns` goes on with the connection in `next_slot`.
    Passing { started_ns: u64, next_slot: usize },
}

pub struct HopConfig {
    pub name: String,
    /// Carried in this hop's path entry (`--tag`).
    pub tags: Vec<Tag>,
    pub listen: SocketAddr,
    pub forward_to: Option<(SocketAddr, String)>,
    pub remove_perf_headers: bool,
    pub timeout: Duration,
    /// Spin on the poll instead of sleeping.
    pub busy_poll: bool,
    /// Peers allowed to connect; everyone when empty.
    pub allow: Vec<Cidr>,
    pub max_conns: Option<usize>,
    /// `--metrics`: the server's end of the snapshot handover.
    pub metrics: Option<Publisher>,
    /// `--metrics-buckets`: the residence histograms' bounds (and an ingress's delays').
    pub metrics_buckets: BucketLayout,
    /// `--metrics-chain`: an ingress's `chain` label (default: its name).
    pub metrics_chain: Option<String>,
    /// `--ingress`: in front of an unmodified client.
    pub ingress: Option<IngressConfig>,
}

/// Runs the hop until SIGTERM or SIGINT, then stops accepting and lets the open connections
/// finish within the timeout. Returns an error only when setting up fails; an ingress returns
/// what it measured, per distinct path.
pub fn run(mut config: HopConfig) -> io::Result<IngressTotals> {
    let mut poll = Poll::new()?;
    let mut listener = net::listen(config.listen).map_err(|error| {
        io::Error::new(error.kind(), format!("listen on {}: {error}", config.listen))
    })?;
    poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
    let role = match (&config.forward_to, config.remove_perf_headers, config.ingress.is_some()) {
        (Some(_), _, true) => Role::Ingress,
        (Some(_), false, false) => Role::Relay,
        (Some(_), true, false) => Role::StrippingRelay,
        (None, _, _) => Role::Echo,
    };
    // Everything the hop holds while idle is open before it says it listens, so the line
    // marks a steady state (tests count descriptors from there).
    let spare_fd = File::open("/dev/null").ok();
    let bound = listener.local_addr()?;
    let target = match config.forward_to {
        Some(_) => format!(", forwarding to {}", next_hop_text(&config)),
        None => String::new(),
    };
    log_line!("{}: listening on {bound} ({}{target})", config.name, role.describe());
    if bound.ip().is_unspecified() && config.allow.is_empty() {
        log_line!(
            "{}: warning: listening on every interface and the protocol has no authentication; \
             restrict it with --allow CIDR or --listen on a private address",
            config.name
        );
    }
    tuning::catch_stop_signals();
    let metrics = config.metrics.take().map(|publisher| HopMetrics {
        publisher,
        residence: Rc::new(RefCell::new(HopResidence::new(&config.metrics_buckets))),
        totals: HopSnapshot {
            hop: config.name.clone(),
            role: match role {
                Role::Relay => "relay",
                Role::StrippingRelay => "egress",
                Role::Ingress => "ingress",
                _ => "echo",
            },
            chain: config.metrics_chain.clone().unwrap_or_else(|| config.name.clone()),
            ..HopSnapshot::default()
        },
        changed: true,
    });

    let nanos = |interval: Duration| interval.as_nanos() as u64;
    let probe_interval_ns =
        config.ingress.as_ref().and_then(|ingress| ingress.probe_interval).map(nanos);
    let intervals =
        config.ingress.as_ref().and_then(|ingress| ingress.report_interval).map(|every| {
            ReportIntervals {
                every_ns: nanos(every),
                ends_ns: clock::now_ns() + nanos(every),
                index: 0,
                start_unix_ns: clock::realtime_ns(),
            }
        });
    let mut totals = if intervals.is_some() {
        IngressTotals::with_intervals()
    } else {
        IngressTotals::default()
    };
    totals.output = config.ingress.as_mut().and_then(|ingress| ingress.output.take());
    totals.metrics_buckets = metrics.as_ref().map(|_| config.metrics_buckets.clone());
    let mut hop = Hop {
        config,
        role,
        listener: Some(listener),
        spare_fd,
        connections: Vec::new(),
        free_slots: Vec::new(),
        open_count: 0,
        busy: VecDeque::new(),
        queued: Vec::new(),
        served_in: Vec::new(),
        generation: 0,
        sweep: Sweep::Waiting { started_ns: clock::now_ns() },
        drain_deadline_ns: None,
        metrics,
        totals,
        intervals,
        probes: probe_interval_ns
            .map(|interval_ns| ProbeSchedule::starting(clock::now_ns(), interval_ns)),
    };
    let mut events = Events::with_capacity(1024);
    let mut touched = Vec::new();
    loop {
        let sweeping = matches!(hop.sweep, Sweep::Passing { .. });
        let timeout = if hop.config.busy_poll || !hop.busy.is_empty() || sweeping {
            Some(Duration::ZERO)
        } else if hop.open_count > 0 {
            Some(Duration::from_nanos(SWEEP_INTERVAL_NS))
        } else {
            None
        };
        // An ingress wakes up for its probes while it has connections.
        let timeout = match hop.probes.as_ref().map(ProbeSchedule::next_ns) {
            Some(due_ns) if hop.open_count > 0 => {
                let until = Duration::from_nanos(due_ns.saturating_sub(clock::now_ns()));
                Some(timeout.map_or(until, |timeout| timeout.min(until)))
            }
            _ => timeout,
        };
        // Wake up for a snapshot only when there is something new to publish.
        let timeout = match &hop.metrics {
            Some(metrics) if metrics.changed => {
                let until_ns = metrics.publisher.next_ns().saturating_sub(clock::now_ns());
                let until = Duration::from_nanos(until_ns.max(1_000_000));
                Some(timeout.map_or(until, |timeout| timeout.min(until)))
            }
            _ => timeout,
        };
        if let Err(error) = poll.poll(&mut events, timeout)
            && error.kind() != io::ErrorKind::Interrupted
        {
            return Err(error);
        }
        let now_ns = clock::now_ns();
        touched.clear();
        hop.generation += 1;
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
                Side::Downstream => connection.downstream.peer_mut(),
            };
            if let Some(peer) = peer {
                peer.on_event(event);
            }
            // A queued connection waits for its turn in the queue (see TURN_BYTES).
            if !hop.is_queued(slot) && hop.first_time_this_wake_up(slot) {
                touched.push(slot);
            }
        }
        for &slot in &touched {
            hop.pump(poll.registry(), slot, now_ns);
        }
        if let Some(slot) = hop.busy.pop_front() {
            hop.queued[slot] = false;
            touched.push(slot);
            hop.pump(poll.registry(), slot, now_ns);
        }
        hop.probe_if_due(poll.registry());
        hop.report_interval_if_due(now_ns);
        if let Some(metrics) = hop.metrics.as_mut() {
            metrics.changed |= !touched.is_empty();
        }
        hop.publish_metrics_if_due(now_ns);
        hop.sweep_pass(poll.registry(), now_ns);
        if tuning::stop_requested() && hop.drain_deadline_ns.is_none() {
            hop.start_draining(poll.registry(), now_ns);
        }
        if let Some(deadline_ns) = hop.drain_deadline_ns {
            if hop.open_count == 0 {
                log_line!("{}: drained; exiting", hop.config.name);
                hop.publish_final_metrics();
                return Ok(hop.totals);
            }
            if now_ns >= deadline_ns || tuning::stop_signals() > 1 {
                hop.close_all(poll.registry());
                hop.publish_final_metrics();
                return Ok(hop.totals);
            }
        }
    }
}

/// Which of a connection's two sockets a token is for.
pub(super) use crate::kernel::Side;

pub(super) fn token_of(slot: usize, side: Side) -> Token {
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
    /// Connections that used up their turn with work left, in the order they get their next
    /// turns (one per wake-up; see [`TURN_BYTES`]); `queued` says which slots are in it.
    busy: VecDeque<usize>,
    queued: Vec<bool>,
    /// Per slot, the wake-up whose newly ready list it is in (`generation`): one turn each.
    served_in: Vec<u64>,
    generation: u64,
    sweep: Sweep,
    metrics: Option<HopMetrics>,
    /// An ingress's measurement, per distinct path.
    totals: IngressTotals,
    /// An ingress's `--report-interval`.
    intervals: Option<ReportIntervals>,
    /// An ingress's probes: every connection gets one per interval, all at the same tick.
    probes: Option<ProbeSchedule>,
}

/// An ingress's report intervals: every path's statistics since the last one.
struct ReportIntervals {
    every_ns: u64,
    ends_ns: u64,
    index: u64,
    start_unix_ns: u64,
}

/// `--metrics`: totals since the start, closed connections' counts folded in when they close.
struct HopMetrics {
    publisher: Publisher,
    /// Every connection's stamped frames report here (see [`crate::core::ResidenceSink`]).
    residence: Rc<RefCell<HopResidence>>,
    totals: HopSnapshot,
    /// Something happened since the last snapshot.
    changed: bool,
}
/// Why a connection is closed: `None` for a clean end.
type Closing = Option<CloseReason>;

impl Hop {
    fn count(&mut self, what: fn(&mut HopSnapshot) -> &mut u64) {
        if let Some(metrics) = self.metrics.as_mut() {
            *what(&mut metrics.totals) += 1;
            metrics.changed = true;
        }
    }

    fn publish_metrics_if_due(&mut self, now_ns: u64) {
        let Some(metrics) = self.metrics.as_ref() else { return };
        if !metrics.changed || !metrics.publisher.due(now_ns) {
            return;
        }
        let snapshot = self.metrics_snapshot();
        let Some(metrics) = self.metrics.as_mut() else { return };
        metrics.publisher.publish(now_ns, Snapshot::Hop(Box::new(snapshot)));
        // A publish the server's lock turned away is retried at the next wake-up.
        metrics.changed = metrics.publisher.due(now_ns);
    }

    /// When the loop ends: the last figures, served until the process exits (`--metrics-linger`
    /// keeps it up for a scraper to see them).
    fn publish_final_metrics(&mut self) {
        if self.metrics.is_none() {
            return;
        }
        let snapshot = self.metrics_snapshot();
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.publisher.publish_final(Snapshot::Hop(Box::new(snapshot)));
        }
    }

    /// The totals with the open connections' counts so far, the residence histograms, and an
    /// ingress's paths' delays.
    fn metrics_snapshot(&self) -> HopSnapshot {
        let metrics = self.metrics.as_ref().expect("asked for with --metrics");
        let mut snapshot = metrics.totals.clone();
        snapshot.active = self.open_count as u64;
        for connection in self.connections.iter().flatten() {
            snapshot.frames_down += connection.frames_down;
            snapshot.frames_up += connection.frames_up;
            snapshot.bytes_down += connection.bytes_down;
            snapshot.bytes_up += connection.bytes_up;
        }
        snapshot.residence = Some(metrics.residence.borrow().clone());
        snapshot.paths = self
            .totals
            .paths
            .iter()
            .enumerate()
            .filter_map(|(index, kept)| {
                let (subsegments, end_to_end) = kept.metrics.as_ref()?.delays();
                Some(PathDelays { path: index + 1, subsegments, end_to_end })
            })
            .collect();
        snapshot
    }

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
                        Ok(addr) => {
                            log_line!(
                                "{name}: refusing connection from {addr}: out of file \
                                 descriptors ({error}); {} connections stay served",
                                self.open_count
                            );
                            self.count(|totals| &mut totals.refused_out_of_descriptors);
                        }
                        // accept(2) reports EMFILE before it looks at the backlog: with the
                        // spare released, an empty backlog says so, and there is nothing to do.
                        Err(_) => return,
                    }
                    continue;
                }
                Err(error) => {
                    log_line!("{name}: cannot accept a connection: {error}");
                    return;
                }
            };
            if !self.config.allow.is_empty()
                && !self.config.allow.iter().any(|block| block.contains(addr.ip()))
            {
                log_line!("{name}: refusing connection from {addr}: not in --allow");
                self.count(|totals| &mut totals.refused_not_allowed);
                continue;
            }
            if self.config.max_conns.is_some_and(|max| self.open_count >= max) {
                log_line!(
                    "{name}: refusing connection from {addr}: {} connections open (--max-conns)",
                    self.open_count
                );
                self.count(|totals| &mut totals.refused_max_conns);
                continue;
            }
            match self.open(registry, stream, addr, touched) {
                Ok(()) => self.count(|totals| &mut totals.accepted),
                Err(error) => log_line!("{name}: {addr}: cannot set up the connection: {error}"),
            }
        }
    }

    fn probe_if_due(&mut self, registry: &mio::Registry) {
        // Only an ingress with probes reads the clock here.
        let Some(probes) = self.probes.as_mut() else { return };
        let now_ns = clock::now_ns();
        if !probes.due(now_ns) {
            return;
        }
        for slot in 0..self.connections.len() {
            if let Some(connection) = self.connections[slot].as_mut()
                && connection.queue_probe(now_ns)
            {
                self.pump(registry, slot, now_ns);
            }
        }
    }

    /// Hands each path's interval to the output thread (its JSON line and a stderr line) and
    /// starts the next.
    fn report_interval_if_due(&mut self, now_ns: u64) {
        let Some(intervals) = self.intervals.as_mut() else { return };
        if now_ns < intervals.ends_ns {
            return;
        }
        let end_unix_ns = clock::realtime_ns();
        let ingress = self.config.ingress.as_ref().expect("intervals are an ingress's");
        let presentation = ingress.presentation;
        let span = (intervals.start_unix_ns, end_unix_ns);
        let taken = self.totals.take_intervals(intervals.index, span, presentation.symbols);
        for (path, interval) in taken {
            let unit =
                Unit::choose(presentation, interval.end_to_end.map_or(0, |stats| stats.p50_ns));
            let Some(output) = self.totals.output.as_mut() else { break };
            let line = format!("{}: path {path}: {}", self.config.name, interval.line(&unit));
            output.send(Destination::Stderr, line);
            if output.jsonl {
                output.send(Destination::Jsonl, crate::report::json::line(&interval));
            }
        }
        intervals.index += 1;
        intervals.start_unix_ns = end_unix_ns;
        while intervals.ends_ns <= now_ns {
            intervals.ends_ns += intervals.every_ns;
        }
    }

    fn start_draining(&mut self, registry: &mio::Registry, now_ns: u64) {
        if let Some(mut listener) = self.listener.take() {
            let _ = registry.deregister(&mut listener);
        }
        let timeout = self.config.timeout;
        self.drain_deadline_ns = Some(now_ns + timeout.as_nanos() as u64);
        log_line!(
            "{}: stop requested: accepting no more connections; draining {} (at most {} s)",
            self.config.name,
            self.open_count,
            timeout.as_secs_f64()
        );
    }

    /// The drain's time ran out.
    fn close_all(&mut self, registry: &mio::Registry) {
        for slot in 0..self.connections.len() {
            self.close(registry, slot, Some(CloseReason::Stopped));
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
        let mut upstream = Peer::new(stream, addr, &self.config.name);
        let token = token_of(slot, Side::Upstream);
        if let Err(error) =
            registry.register(&mut upstream.stream, token, Interest::READABLE | Interest::WRITABLE)
        {
            self.free_slots.push(slot);
            return Err(error);
        }
        let connection = match Connection::new(slot, upstream, self.role, clock::now_ns()) {
            Ok(connection) => connection,
            // The stream went down with the half-made connection; closing it left the poll.
            Err(error) => {
                self.free_slots.push(slot);
                return Err(error);
            }
        };
        let connection = self.connections[slot].insert(connection);
        if let Some(metrics) = self.metrics.as_ref() {
            let sink: crate::core::SharedResidence = metrics.residence.clone();
            connection.measure_residence(&sink);
        }
        if self.role == Role::Ingress {
            connection.start_ingress(&Registered { registry }, &self.config);
        }
        self.open_count += 1;
        touched.push(slot);
        Ok(())
    }

    fn is_queued(&self, slot: usize) -> bool {
        self.queued.get(slot).copied().unwrap_or(false)
    }

    /// Puts `slot` at the back of the busy queue, unless it is in it.
    fn queue_busy(&mut self, slot: usize) {
        if self.queued.len() <= slot {
            self.queued.resize(slot + 1, false);
        }
        if !self.queued[slot] {
            self.queued[slot] = true;
            self.busy.push_back(slot);
        }
    }

    /// Whether `slot` is not yet in this wake-up's list (marking it as in).
    fn first_time_this_wake_up(&mut self, slot: usize) -> bool {
        if self.served_in.len() <= slot {
            self.served_in.resize(slot + 1, 0);
        }
        let first = self.served_in[slot] != self.generation;
        self.served_in[slot] = self.generation;
        first
    }

    /// One turn of `slot` (see [`TURN_BYTES`]).
    fn pump(&mut self, registry: &mio::Registry, slot: usize, now_ns: u64) {
        let Some(Some(connection)) = self.connections.get_mut(slot) else {
            return;
        };
        let mut context =
            Context { config: &self.config, role: self.role, totals: &mut self.totals };
        match connection.turn(&mut context, &Registered { registry }, now_ns) {
            Turn::Done => {}
            Turn::MoreToDo => self.queue_busy(slot),
            Turn::Finished(closing) => self.close(registry, slot, closing),
        }
    }

    /// One pass of the sweep, when one is due or under way (see [`SWEEP_SLOTS_PER_PASS`]).
    fn sweep_pass(&mut self, registry: &mio::Registry, now_ns: u64) {
        let (started_ns, first) = match self.sweep {
            Sweep::Waiting { started_ns }
                if now_ns.saturating_sub(started_ns) >= SWEEP_INTERVAL_NS =>
            {
                (now_ns, 0)
            }
            Sweep::Waiting { .. } => return,
            Sweep::Passing { started_ns, next_slot } => (started_ns, next_slot),
        };
        let end = (first + SWEEP_SLOTS_PER_PASS).min(self.connections.len());
        self.sweep_slots(registry, now_ns, first..end);
        self.sweep = if end < self.connections.len() {
            Sweep::Passing { started_ns, next_slot: end }
        } else {
            Sweep::Waiting { started_ns }
        };
    }

    fn sweep_slots(
        &mut self,
        registry: &mio::Registry,
        now_ns: u64,
        slots: std::ops::Range<usize>,
    ) {
        for slot in slots {
            let Some(connection) = self.connections[slot].as_mut() else {
                continue;
            };
            if connection.sample_kernel() {
                self.pump(registry, slot, now_ns);
            }
            let Some(connection) = self.connections[slot].as_mut() else {
                continue;
            };
            match connection.expire(&self.config, &Registered { registry }, now_ns) {
                Expiry::Running => {}
                Expiry::Faulted => self.pump(registry, slot, now_ns),
                Expiry::Close(reason) => self.close(registry, slot, Some(reason)),
            }
        }
    }

    fn close(&mut self, registry: &mio::Registry, slot: usize, reason: Closing) {
        let Some(mut connection) = self.connections[slot].take() else {
            return;
        };
        if reason.is_some() && connection.passes_resets() {
            // An application's connection breaks as it would without the chain: both peers
            // hear a reset, not an orderly end.
            connection.upstream.reset();
            if let Some(downstream) = connection.downstream.peer_mut() {
                downstream.reset();
            }
        }
        let _ = registry.deregister(&mut connection.upstream.stream);
        if let Some(downstream) = connection.downstream.peer_mut() {
            let _ = registry.deregister(&mut downstream.stream);
        }
        self.free_slots.push(slot);
        self.open_count -= 1;
        if self.is_queued(slot) {
            self.queued[slot] = false;
            self.busy.retain(|&busy| busy != slot);
        }
        let seconds = (clock::now_ns() - connection.opened_ns) as f64 / 1e9;
        if let Some(metrics) = self.metrics.as_mut() {
            let totals = &mut metrics.totals;
            totals.frames_down += connection.frames_down;
            totals.frames_up += connection.frames_up;
            totals.bytes_down += connection.bytes_down;
            totals.bytes_up += connection.bytes_up;
            if let Some(failure) = &connection.failure {
                totals.faults.add(FaultOrigin::ThisHop, failure.code);
            } else if let Some(code) = connection.passed_code {
                totals.faults.add(FaultOrigin::PassedOn, code);
            }
            if let Some(label) = reason.as_ref().and_then(close_reason_label)
                && let Some(index) = CLOSE_REASONS.iter().position(|known| *known == label)
            {
                totals.closed[index] += 1;
            }
            metrics.changed = true;
        }
        if let Some(ingress) = connection.ingress.as_ref() {
            ingress.close_into(&mut self.totals, clock::now_ns());
            if let Some(output) = self.totals.output.as_mut().filter(|output| output.jsonl) {
                let failure = connection.failure.as_ref().map(|failure| failure.message.clone());
                let reason = reason.as_ref().map(ToString::to_string).or(failure);
                let line = ingress.record(connection.upstream.addr, reason.as_deref());
                output.send(Destination::Jsonl, line);
            }
        }
        let ingress = connection
            .ingress
            .as_ref()
            .map_or(String::new(), |ingress| format!(" ({})", ingress.summary()));
        let failure = connection.failure.map(|failure| failure.message);
        let reason =
            reason.map(|reason| reason.to_string()).or(failure).or(connection.passed_fault);
        // One line per connection: a fault this hop reported or passed on is its reason too.
        let ending = match reason {
            None => String::new(),
            Some(reason) => format!("; closed: {reason}"),
        };
        log_line!(
            "{}: connection from {} ended after {seconds:.3} s: {} frames / {} B down, {} frames / {} B up{ingress}{ending}",
            self.config.name,
            connection.upstream.addr,
            connection.frames_down,
            connection.bytes_down,
            connection.frames_up,
            connection.bytes_up,
        );
    }
}
/// The next hop as the user wrote it, with the address it resolved to when that differs.
pub(super) fn next_hop_text(config: &HopConfig) -> String {
    match &config.forward_to {
        Some((addr, text)) if *text == addr.to_string() => text.clone(),
        Some((addr, text)) => format!("{text} ({addr})"),
        None => "-".to_string(),
    }
}
/// `hop_connections_closed_total`'s `reason`; `None` for a chain broken by a fault, which is
/// counted by its code.
fn close_reason_label(reason: &CloseReason) -> Option<&'static str> {
    Some(match reason {
        CloseReason::UpstreamRead(_) => "upstream_read",
        CloseReason::UpstreamWrite(_) => "upstream_write",
        CloseReason::BadUpstream(_) => "bad_upstream",
        CloseReason::NextHopGaveUp(_) => "next_hop_gave_up",
        CloseReason::NoProgress { .. } => "no_progress",
        CloseReason::ChainBroke(_) => return None,
        CloseReason::Stopped => "stopped",
    })
}

fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}
