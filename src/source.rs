//! The source: reads stdin in blocks, sends each as a stamped frame to the first hop, writes
//! the payload of every answer to stdout, and feeds the answers' stamps to the statistics.
//! One mio poll loop, like the hops; the report is printed by `main` from what this returns.
//!
//! stdin and stdout may be pipes, terminals, sockets, regular files or /dev/null. The last two
//! cannot be polled (epoll refuses them) and never block for long, so they are treated as
//! always ready and used with plain blocking calls.
//!
//! A frame from stdin is a full block unless stdin has nothing more ready: reads go on into the
//! same block until it is full, the input ends, or the read would block (a producer that has
//! paused, a terminal line). A file or a fast producer thus gives full blocks, a slow one its
//! pieces without waiting for more.
//!
//! In probe mode (`--count`) the frames are generated on a schedule instead of read, and the
//! answers are checked against the pattern instead of written out. The schedule is absolute
//! (probe i is due at start + i × interval, on a timerfd, so it never drifts); a probe held back
//! (by `--window`, or a late wake-up) goes as soon as it can and counts as late when that is
//! more than half an interval after its time. The first [`UNLOADED_FRAMES`] frames of every run
//! go one at a time, so that even a bulk run has each subsegment's unloaded floor (its
//! minimum), which is what tells a slow link from a queue. `--window` caps the frames in flight
//! either way;
//! `--window 1` is a ping-pong. The socket to the first hop is a [`crate::core::Peer`], stamped
//! by the same rule as every hop's.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::buffer::Buffer;
use crate::clock;
use crate::core::transmit::TxMode;
use crate::core::{Inbound, Outbound, Peer, Registered, Socket, SystemClock};
use crate::kernel;
use crate::live::LiveFeed;
use crate::log_line;
use crate::net::{self, Io, NonBlocking};
use crate::output::{Destination, Writer};
use crate::report::interval::{History, Interval, IntervalFrames};
use crate::report::metrics::{BucketLayout, Snapshot, SourceRecorder};
use crate::report::sla::{self, SlaSpec};
use crate::report::{Presentation, Unit, json};
use crate::scrape::Publisher;
use crate::stats::{self, Chain, Part, Sequencing};
use crate::tuning;
use crate::wire::{
    self, Direction, Fault, FaultCode, HEADER_LEN, Header, KernelSample, Kind, MAX_FRAME_LEN,
    PathEntry, RECORD_LEN, Role, Stamp,
};

const UPSTREAM: Token = Token(0);
const STDIN: Token = Token(1);
const STDOUT: Token = Token(2);
const PROBE_TIMER: Token = Token(3);
/// Frames waiting to be sent; reading stdin stops when a block no longer fits.
const SEND_BUFFER_LEN: usize = 256 * 1024 + MAX_FRAME_LEN;
/// Answer payloads waiting for stdout.
const STDOUT_BUFFER_LEN: usize = 256 * 1024 + MAX_FRAME_LEN;
/// How often the source reads its own socket's `TCP_INFO` (the hops read theirs on their
/// 100 ms timer).
const KERNEL_INFO_EVERY_NS: u64 = 100_000_000;
/// Frames sent one at a time at the start of every run (see `Source::window`).
pub const UNLOADED_FRAMES: u64 = 3;
/// Where the payload starts in a frame built by the source (one record: its own).
const PAYLOAD_AT: usize = HEADER_LEN + RECORD_LEN;

pub struct SourceConfig {
    pub name: String,
    /// Carried in the source's path entry (`--tag`).
    pub tags: Vec<wire::Tag>,
    pub forward_to: (SocketAddr, String),
    pub block_size: usize,
    pub timeout: Duration,
    /// Frames in flight at most; `None`: as many as the buffers hold.
    pub window: Option<u64>,
    /// Generated frames instead of stdin; their answers are not written to stdout.
    pub probe: Option<Probe>,
    /// Spin on the poll instead of sleeping.
    pub busy_poll: bool,
    /// Checked against the path as soon as it is known.
    pub slas: Vec<SlaSpec>,
    /// Stop sending after this long.
    pub duration: Option<Duration>,
    /// Continuous runs: statistics per interval, to the output thread.
    pub report_interval: Option<Duration>,
    /// How the interval lines are written.
    pub presentation: Presentation,
    /// Ask every hop for its `TCP_INFO` readings (and read the source's own socket's).
    pub kernel_info: bool,
    /// Ask every hop for transmit timestamps on its sockets (and take the source's own).
    pub kernel_stamps: TxMode,
    /// Ask every hop to set `TCP_QUICKACK` after every read (and do so on the source's own).
    pub quickack: bool,
    /// Continuous runs: keep each interval's p50 and p99 per subsegment in the run (for
    /// `--plot`), bounded by [`crate::report::interval::HISTORY_LEN`].
    pub keep_history: bool,
    /// `--metrics`: the server's end of the snapshot handover, and the `chain` label.
    pub metrics: Option<(Publisher, String)>,
    /// `--metrics-buckets`: the delay histograms' bounds.
    pub metrics_buckets: BucketLayout,
    /// The live view's end in the loop (its queue), when it is shown.
    pub live: Option<LiveFeed>,
}

/// Probe mode: `count` frames of `size` bytes, one every `interval` (0: back to back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// `None`: a continuous run, until interrupted or `--duration`.
    pub count: Option<u64>,
    pub size: usize,
    pub interval: Duration,
}

/// The link below the hop that reported a fault in-band, and the kind of the fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokenLink {
    /// The reporting hop's index: the link is between it and the next.
    pub hop: usize,
    pub code: FaultCode,
}

impl BrokenLink {
    fn of(fault: &Fault) -> BrokenLink {
        BrokenLink { hop: fault.hop.into(), code: fault.code }
    }
}

/// How the run ended, for the report and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Every frame came back and the chain closed cleanly.
    Complete,
    /// Interrupted by SIGINT or SIGTERM: report what came back so far.
    Interrupted,
    /// The chain broke; `broken_link` is the fault a hop reported in-band (the link below it)
    /// below it broke), when one did.
    Failed { message: String, broken_link: Option<BrokenLink> },
    /// No progress for the timeout.
    TimedOut(String),
    /// The path showed the command line wrong (an `--sla` naming a subsegment it lacks).
    UsageError(String),
}

/// How well the probes kept to their schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Schedule {
    pub interval: Duration,
    /// CLOCK_MONOTONIC at which the schedule started, and the first probe on it. The probes
    /// before it (the run's unloaded start) go one at a time as their answers come back, so
    /// the schedule starts after them instead of owing them a burst.
    pub origin: Option<(u64, u64)>,
    /// Probes sent on the schedule.
    pub booked: u64,
    /// CLOCK_MONOTONIC of the first and the last probe sent on it.
    pub first_sent_ns: Option<u64>,
    pub last_sent_ns: u64,
    /// Probes that left more than half an interval after their time.
    pub late: u64,
    pub worst_lateness_ns: u64,
}

impl Schedule {
    /// Starts the schedule at `now_ns` with probe `index`, unless it has started.
    pub fn start(&mut self, now_ns: u64, index: u64) {
        self.origin.get_or_insert((now_ns, index));
    }

    /// Probe `index`'s time, once the schedule has started: absolute, so lateness never
    /// accumulates.
    pub fn due_ns(&self, index: u64) -> Option<u64> {
        let (start_ns, first) = self.origin?;
        Some(start_ns + index.checked_sub(first)? * self.interval.as_nanos() as u64)
    }

    /// Books a probe due at `due_ns` that left at `sent_ns`.
    pub fn sent(&mut self, due_ns: u64, sent_ns: u64) {
        self.booked += 1;
        let lateness_ns = sent_ns.saturating_sub(due_ns);
        if lateness_ns > self.interval.as_nanos() as u64 / 2 {
            self.late += 1;
        }
        self.worst_lateness_ns = self.worst_lateness_ns.max(lateness_ns);
        self.first_sent_ns.get_or_insert(sent_ns);
        self.last_sent_ns = sent_ns;
    }

    /// Probes per second achieved on the schedule, when there is a span to divide by.
    pub fn achieved_per_second(&self) -> Option<f64> {
        let span_ns = self.last_sent_ns.checked_sub(self.first_sent_ns?)?;
        (self.booked > 1 && span_ns > 0).then(|| (self.booked - 1) as f64 * 1e9 / span_ns as f64)
    }
}

pub struct Run {
    pub ending: Ending,
    /// `None` until the path announcement has come back.
    pub chain: Option<Chain>,
    /// The hops that answered, even when the chain broke before the echoing end.
    pub path: Vec<PathEntry>,
    pub sequencing: Sequencing,
    pub payload_bytes: u64,
    pub unsolicited_bytes: u64,
    /// Probe answers whose payload differs from what was sent.
    pub corrupted: u64,
    /// Answered payload still waiting for stdout when the run was interrupted.
    pub unwritten_bytes: u64,
    pub first_send_ns: Option<u64>,
    pub last_answer_ns: Option<u64>,
    /// Data frames sent and their payload bytes, for the mean frame size.
    pub sent_payload_bytes: u64,
    /// Probe mode with an interval: how the schedule was kept.
    pub schedule: Option<Schedule>,
    /// Frames came from stdin, in blocks of at most this size.
    pub stdin_block_size: Option<usize>,
    /// Frames could be in flight together (no `--window 1`).
    pub loaded: bool,
    /// A continuous run's breaks, in order.
    pub outages: Vec<Outage>,
    /// The kernel's view of each link, from the hops' `TCP_INFO` readings and the source's own.
    pub kernel: kernel::Links,
    /// Times the path came back different after an outage.
    pub path_changes: u64,
    /// A continuous run's interval summaries, when `keep_history` asked for them.
    pub history: History,
}

impl Run {
    /// A run with nothing sent yet that ended so; `loaded`: no `--window 1`.
    pub fn ended(ending: Ending, loaded: bool) -> Run {
        Run {
            ending,
            chain: None,
            path: Vec::new(),
            sequencing: Sequencing::default(),
            payload_bytes: 0,
            unsolicited_bytes: 0,
            corrupted: 0,
            unwritten_bytes: 0,
            first_send_ns: None,
            last_answer_ns: None,
            sent_payload_bytes: 0,
            schedule: None,
            stdin_block_size: None,
            loaded,
            outages: Vec::new(),
            kernel: kernel::Links::default(),
            path_changes: 0,
            history: History::default(),
        }
    }
}

/// stdin or stdout, polled when the kernel allows it.
struct Stdio {
    fd: RawFd,
    pollable: bool,
    ready: bool,
    closed: bool,
    _restore: Option<NonBlocking>,
}

impl Stdio {
    fn open(poll: &Poll, fd: RawFd, token: Token, interest: Interest) -> io::Result<Stdio> {
        match poll.registry().register(&mut SourceFd(&fd), token, interest) {
            Ok(()) => {
                let restore = NonBlocking::set(fd)?;
                Ok(Stdio {
                    fd,
                    pollable: true,
                    ready: true,
                    closed: false,
                    _restore: Some(restore),
                })
            }
            // Regular files and /dev/null: always ready, blocking calls return at once.
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
                Ok(Stdio { fd, pollable: false, ready: true, closed: false, _restore: None })
            }
            Err(error) => Err(error),
        }
    }
}

/// The probe schedule's timer: a timerfd on CLOCK_MONOTONIC, armed for the next probe's time.
struct ProbeTimer {
    fd: OwnedFd,
}

impl ProbeTimer {
    fn new(poll: &Poll) -> io::Result<ProbeTimer> {
        // SAFETY: timerfd_create takes no pointers; the result is checked.
        let fd = unsafe {
            libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        poll.registry().register(
            &mut SourceFd(&fd.as_raw_fd()),
            PROBE_TIMER,
            Interest::READABLE,
        )?;
        Ok(ProbeTimer { fd })
    }

    /// Wakes the loop at `due_ns` (CLOCK_MONOTONIC, absolute); at once if that has passed.
    fn arm(&self, due_ns: u64) {
        let due_ns = due_ns.max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: (due_ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (due_ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        let result = unsafe {
            libc::timerfd_settime(
                self.fd.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        debug_assert_eq!(result, 0, "timerfd_settime on our own timer");
    }

    /// Clears the expiry so the edge-triggered registration reports the next one.
    fn acknowledge(&self) {
        let mut expirations = [0u8; 8];
        let _ = net::read_fd(self.fd.as_raw_fd(), &mut expirations);
    }
}

struct Source<'a> {
    config: SourceConfig,
    upstream: Peer,
    link: Link,
    /// A continuous run's wait before the next reconnect after an outage.
    backoff: Duration,
    stdin: Stdio,
    stdout: Stdio,
    send: Outbound,
    receive: Inbound,
    receive_stalled: bool,
    to_stdout: Buffer,
    run: Run,
    fault: Option<Fault>,
    last_progress_ns: u64,
    /// Probe mode with an interval.
    probe_timer: Option<ProbeTimer>,
    /// Why sending stopped before the input's end, if it did.
    stop: Option<Stop>,
    /// CLOCK_MONOTONIC_RAW at which `--duration` ends sending.
    send_deadline_ns: Option<u64>,
    intervals: Option<Intervals>,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC_RAW at the start: turns send stamps into Unix times
    /// for `--samples` (for people and logs only; no delay is computed from it).
    unix_offset_ns: i128,
    /// An `--sla` that names a subsegment the path lacks.
    usage_error: Option<String>,
    /// CLOCK_MONOTONIC_RAW of the source's next reading of its own socket's `TCP_INFO`.
    kernel_due_ns: u64,
    writer: &'a mut Writer,
    /// `--metrics`: the bucket counts kept per answered frame, and the handover.
    metrics: Option<(Publisher, SourceRecorder)>,
    live: Option<LiveFeed>,
}

/// The connection to the first hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// The non-blocking connect has not completed.
    Connecting,
    Connected,
    /// A continuous run after an outage: the next attempt is due at `retry_ns`.
    Down {
        retry_ns: u64,
    },
}

/// A continuous run's first wait before reconnecting, and the longest (it doubles per attempt).
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const LONGEST_BACKOFF: Duration = Duration::from_secs(5);

/// A break in a continuous run: the chain failed, the run went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outage {
    pub started_unix_ns: u64,
    /// CLOCK_MONOTONIC_RAW at the break, for its length.
    started_ns: u64,
    pub message: String,
    /// The fault a hop reported in-band: the link below it broke.
    pub broken_link: Option<BrokenLink>,
    /// Frames in flight when it broke, given up for lost.
    pub lost: u64,
    /// From the break until the path came back; `None` while it lasts.
    pub down_ns: Option<u64>,
    /// The path that came back differs from the one before.
    pub path_changed: bool,
}

/// Why the source stopped sending before its input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    DurationElapsed,
    /// The first Ctrl-C or SIGTERM of a continuous run: the frames in flight still come back.
    Signal,
    /// `q` in the live view: as a first Ctrl-C in a continuous run; a counted run ends early
    /// but complete.
    Quit,
}

/// A continuous run's report intervals: each has its own statistics.
struct Intervals {
    every_ns: u64,
    /// CLOCK_MONOTONIC_RAW at which the current interval ends.
    ends_ns: u64,
    index: u64,
    start_unix_ns: u64,
    /// `None` until the path is known.
    chain: Option<Chain>,
    /// The run's counters when the interval started.
    sent_before: u64,
    answered_before: u64,
    /// Frames lost to outages, and outages begun, during the interval.
    lost: u64,
    outages: u64,
}

pub fn run(mut config: SourceConfig, writer: &mut Writer) -> io::Result<Run> {
    tuning::catch_stop_signals();
    let metrics = config.metrics.take().map(|(publisher, chain)| {
        let layout = config.metrics_buckets.clone();
        (publisher, SourceRecorder::new(chain, &config.slas, layout))
    });
    let live = config.live.take();
    let mut poll = Poll::new()?;
    let target = config.forward_to.0;
    let mut upstream =
        Peer::connect(target, &Registered { registry: poll.registry() }, UPSTREAM, &config.name)
            .map_err(|error| {
                let first_hop = first_hop(&config.forward_to);
                io::Error::new(error.kind(), format!("cannot reach first hop {first_hop}: {error}"))
            })?;
    upstream.quickack = config.quickack;
    if let Err(error) = upstream.enable_tx_stamps(config.kernel_stamps) {
        log_line!(
            "{}: warning: no transmit timestamps ({error}; they need Linux 6.2); the kernel readings carry none",
            config.name
        );
    }
    let mut send = Outbound::with_capacity(SEND_BUFFER_LEN)?;
    announce(&mut send, &config, &upstream);
    let stdin = match config.probe {
        None => Stdio::open(&poll, libc::STDIN_FILENO, STDIN, Interest::READABLE)?,
        Some(_) => Stdio { fd: -1, pollable: false, ready: true, closed: false, _restore: None },
    };
    let stdout = Stdio::open(&poll, libc::STDOUT_FILENO, STDOUT, Interest::WRITABLE)?;

    let (probe_timer, schedule) = match config.probe {
        Some(probe) if !probe.interval.is_zero() => (
            Some(ProbeTimer::new(&poll)?),
            Some(Schedule { interval: probe.interval, ..Schedule::default() }),
        ),
        _ => (None, None),
    };

    let stdin_block_size = config.probe.is_none().then_some(config.block_size);
    let loaded = config.window != Some(1);
    let now_ns = clock::now_ns();
    let unix_offset_ns = i128::from(clock::realtime_ns()) - i128::from(now_ns);
    let intervals = config.report_interval.map(|every| Intervals {
        every_ns: every.as_nanos() as u64,
        ends_ns: now_ns + every.as_nanos() as u64,
        index: 0,
        start_unix_ns: clock::realtime_ns(),
        chain: None,
        sent_before: 0,
        answered_before: 0,
        lost: 0,
        outages: 0,
    });
    let send_deadline_ns = config.duration.map(|duration| now_ns + duration.as_nanos() as u64);
    let mut source = Source {
        config,
        upstream,
        link: Link::Connecting,
        backoff: FIRST_BACKOFF,
        stdin,
        stdout,
        send,
        receive: Inbound::with_capacity(MAX_FRAME_LEN)?,
        receive_stalled: false,
        to_stdout: Buffer::with_capacity(STDOUT_BUFFER_LEN)?,
        run: Run { schedule, stdin_block_size, ..Run::ended(Ending::Complete, loaded) },
        fault: None,
        last_progress_ns: now_ns,
        probe_timer,
        stop: None,
        send_deadline_ns,
        intervals,
        unix_offset_ns,
        usage_error: None,
        kernel_due_ns: now_ns,
        writer,
        metrics,
        live,
    };
    source.ending_loop(&mut poll);
    source.read_own_kernel_info();
    source.publish_final_metrics();
    Ok(source.run)
}

impl Source<'_> {
    fn ending_loop(&mut self, poll: &mut Poll) {
        let mut events = Events::with_capacity(16);
        loop {
            let timeout_ns = self.give_up_after().as_nanos() as u64;
            let before_ns = clock::now_ns();
            let stdin_ready = !self.stdin.pollable && self.wants_stdin();
            let always_ready = (stdin_ready && self.config.probe.is_none())
                || (!self.stdout.pollable && !self.to_stdout.is_empty());
            let waited_ns = before_ns.saturating_sub(self.last_progress_ns);
            // The poll's timeout only watches for no progress (millisecond precision is
            // plenty); probes wake the loop through their timer.
            let wait_ns = timeout_ns.saturating_sub(waited_ns).max(1_000_000);
            let spin = always_ready || self.config.busy_poll;
            let retry_ns = match self.link {
                Link::Down { retry_ns } => Some(retry_ns),
                _ => None,
            };
            let next_event_ns = [
                self.send_deadline_ns.filter(|_| self.stop.is_none()),
                self.intervals.as_ref().map(|intervals| intervals.ends_ns),
                self.metrics.as_ref().map(|(publisher, _)| publisher.next_ns()),
                self.live.as_ref().map(LiveFeed::next_ns),
                retry_ns,
            ]
            .into_iter()
            .flatten()
            .map(|at_ns| at_ns.saturating_sub(before_ns).max(1_000_000))
            .min();
            let wait_ns = next_event_ns.map_or(wait_ns, |next_ns| wait_ns.min(next_ns));
            let wait = if spin { Duration::ZERO } else { Duration::from_nanos(wait_ns) };
            if let Err(error) = poll.poll(&mut events, Some(wait))
                && error.kind() != io::ErrorKind::Interrupted
            {
                self.run.ending = self.failed(format!("poll: {error}"));
                return;
            }
            let now_ns = clock::now_ns();
            let continuous = self.config.probe.is_some_and(|probe| probe.count.is_none());
            match tuning::stop_signals() {
                0 => {}
                1 if continuous => self.stop_sending(Stop::Signal),
                _ => {
                    self.finish_stdout_after_interrupt(poll, &mut events);
                    self.run.ending = Ending::Interrupted;
                    return;
                }
            }
            if self.send_deadline_ns.is_some_and(|deadline_ns| now_ns >= deadline_ns) {
                self.stop_sending(Stop::DurationElapsed);
            }
            self.publish_interval_if_due(now_ns);
            self.publish_metrics_if_due(now_ns);
            self.publish_live_if_due(now_ns);
            if self.live.as_ref().is_some_and(LiveFeed::quit_requested) {
                self.stop_sending(Stop::Quit);
            }
            if self.config.kernel_info && now_ns >= self.kernel_due_ns {
                self.kernel_due_ns = now_ns + KERNEL_INFO_EVERY_NS;
                self.read_own_kernel_info();
            }
            if retry_ns.is_some_and(|retry_ns| now_ns >= retry_ns) && self.stop.is_none() {
                self.reconnect(poll, now_ns);
            }
            for event in events.iter() {
                match event.token() {
                    UPSTREAM => self.upstream.on_event(event),
                    STDIN => self.stdin.ready = true,
                    STDOUT => self.stdout.ready = true,
                    PROBE_TIMER => {
                        if let Some(timer) = &self.probe_timer {
                            timer.acknowledge();
                        }
                    }
                    _ => {}
                }
            }
            loop {
                match self.round() {
                    Ok(true) => self.last_progress_ns = now_ns,
                    Ok(false) => break,
                    Err(message) => {
                        let ending = match self.usage_error.take() {
                            Some(usage_error) => Ending::UsageError(usage_error),
                            None => self.failed(message),
                        };
                        if self.end_or_outage(poll, ending) {
                            return;
                        }
                        break;
                    }
                }
            }
            if let Some(ending) = self.finished() {
                let ending = match (ending, self.stop) {
                    (Ending::Complete, Some(Stop::Signal)) => Ending::Interrupted,
                    (Ending::Complete, Some(Stop::Quit)) if continuous => Ending::Interrupted,
                    (ending, _) => ending,
                };
                if self.end_or_outage(poll, ending) {
                    self.publish_interval(clock::now_ns());
                    return;
                }
                continue;
            }
            if matches!(self.link, Link::Down { .. }) {
                continue;
            }
            let waiting_for_producer = !self.stdin.closed
                && self.run.sequencing.missing() == 0
                && self.send.is_empty()
                && self.link == Link::Connected
                && self.fault.is_none();
            if waiting_for_producer {
                self.last_progress_ns = now_ns;
            } else if clock::now_ns().saturating_sub(self.last_progress_ns) >= timeout_ns {
                let ending = match &self.fault {
                    Some(_) => self.failed(self.timeout_message()),
                    None => Ending::TimedOut(self.timeout_message()),
                };
                if self.end_or_outage(poll, ending) {
                    return;
                }
            }
        }
    }

    /// The source's own socket is the near end of the first link.
    fn read_own_kernel_info(&mut self) {
        if !self.config.kernel_info || self.link != Link::Connected {
            return;
        }
        if let Some(info) = self.upstream.stream.tcp_info() {
            let tx = self.upstream.tx.as_ref().map(|tx| tx.totals);
            self.run.kernel.add(0, kernel::Side::Downstream, info, tx);
        }
    }

    /// Whether the run ends with `ending`; a continuous run that has not been told to stop
    /// survives a failure instead, as a monitor must: the outage is counted and the source
    /// reconnects.
    fn end_or_outage(&mut self, poll: &mut Poll, ending: Ending) -> bool {
        let continuous = self.config.probe.is_some_and(|probe| probe.count.is_none());
        match ending {
            Ending::Failed { message, .. } | Ending::TimedOut(message)
                if continuous && self.stop.is_none() =>
            {
                self.begin_outage(poll, message);
                false
            }
            ending => {
                self.run.ending = ending;
                true
            }
        }
    }

    /// The connection broke: what was in flight is lost, the connection is dropped, and the
    /// next attempt waits for the backoff. A failed attempt during an outage extends it.
    fn begin_outage(&mut self, poll: &mut Poll, message: String) {
        let now_ns = clock::now_ns();
        let lost = self.run.sequencing.abandon_in_flight();
        let ongoing = self.run.outages.last().is_some_and(|outage| outage.down_ns.is_none());
        if !ongoing {
            self.run.outages.push(Outage {
                started_unix_ns: clock::realtime_ns(),
                started_ns: now_ns,
                message: message.clone(),
                broken_link: self.fault.as_ref().map(BrokenLink::of),
                lost,
                down_ns: None,
                path_changed: false,
            });
            if let Some(intervals) = self.intervals.as_mut() {
                intervals.outages += 1;
            }
        } else if let Some(outage) = self.run.outages.last_mut() {
            outage.lost += lost;
        }
        if let Some(intervals) = self.intervals.as_mut() {
            intervals.lost += lost;
        }
        let _ = poll.registry().deregister(&mut self.upstream.stream);
        self.send.clear();
        self.receive.clear();
        self.receive_stalled = false;
        self.fault = None;
        if let Some(schedule) = self.run.schedule.as_mut() {
            // The probes due during the outage are not owed: the schedule starts again.
            schedule.origin = None;
        }
        let retry = self.backoff;
        self.backoff = (self.backoff * 2).min(LONGEST_BACKOFF);
        self.link = Link::Down { retry_ns: now_ns + retry.as_nanos() as u64 };
        self.last_progress_ns = now_ns;
        let what = if ongoing { "still down" } else { "outage" };
        self.writer.send(
            Destination::Stderr,
            format!(
                "{}: {what}: {message}; {lost} {} lost; reconnecting in {:.1} s",
                self.config.name,
                if lost == 1 { "frame" } else { "frames" },
                retry.as_secs_f64()
            ),
        );
    }

    /// A continuous run's next attempt at the first hop, once its backoff has passed.
    fn reconnect(&mut self, poll: &mut Poll, now_ns: u64) {
        let target = self.config.forward_to.0;
        let registered = Peer::connect(
            target,
            &Registered { registry: poll.registry() },
            UPSTREAM,
            &self.config.name,
        )
        .map(|mut upstream| {
            upstream.quickack = self.config.quickack;
            let _ = upstream.enable_tx_stamps(self.config.kernel_stamps);
            upstream
        });
        match registered {
            Ok(upstream) => {
                self.upstream = upstream;
                announce(&mut self.send, &self.config, &self.upstream);
                self.link = Link::Connecting;
                self.last_progress_ns = now_ns;
            }
            Err(error) => {
                let first_hop = first_hop(&self.config.forward_to);
                self.begin_outage(poll, format!("cannot reach first hop {first_hop}: {error}"));
            }
        }
    }

    /// The path is known: check the SLAs against it and start the statistics. After an
    /// outage, a path that came back unchanged keeps the run's statistics; a changed one
    /// starts them again (the report covers the path as last discovered) and says so.
    fn path_discovered(&mut self, path: Vec<PathEntry>) -> Result<(), String> {
        let ongoing = self.run.outages.last().is_some_and(|outage| outage.down_ns.is_none());
        if ongoing && path.iter().any(|entry| entry.role == Role::Unreached) {
            // A hop is up but its next hop is not: the outage goes on, and its fault follows.
            return Ok(());
        }
        if let Some(outage) = self.run.outages.last_mut().filter(|outage| outage.down_ns.is_none())
        {
            let now_ns = clock::now_ns();
            outage.down_ns = Some(now_ns.saturating_sub(outage.started_ns));
            outage.path_changed = !stats::same_path(&self.run.path, &path);
            self.backoff = FIRST_BACKOFF;
            let (down_ns, changed) = (outage.down_ns.unwrap_or(0), outage.path_changed);
            let how = if changed {
                format!("the path changed: {}", describe_path(&path))
            } else {
                "the path is unchanged".to_string()
            };
            self.writer.send(
                Destination::Stderr,
                format!(
                    "{}: reconnected after {:.1} s; {how}",
                    self.config.name,
                    down_ns as f64 / 1e9
                ),
            );
            if !changed {
                return Ok(());
            }
            self.run.path_changes += 1;
            self.run.kernel = kernel::Links::default();
        }
        let chain = Chain::new(path.clone());
        if let (Some((_, recorder)), Some(chain)) = (self.metrics.as_mut(), &chain) {
            recorder.start(chain);
        }
        if let Some(chain) = &chain {
            let parts: Vec<Part> = chain.parts.iter().map(|series| series.part).collect();
            let names: Vec<String> = path.iter().map(|entry| entry.name.clone()).collect();
            for spec in &self.config.slas {
                if let Err(error) = sla::resolve(&spec.target, &parts, &names) {
                    let message = format!("--sla '{}': {error}", spec.text);
                    self.usage_error = Some(message.clone());
                    return Err(message);
                }
            }
            if self.writer.samples {
                let mut header = "sequence,sent_unix_ns,end_to_end_ns".to_string();
                for series in &chain.parts {
                    let _ = write!(header, ",{}_ns", series.part.id());
                }
                header.push('\n');
                self.writer.send(Destination::Samples, header);
            }
        }
        if let Some(intervals) = self.intervals.as_mut() {
            intervals.chain = Chain::new(path.clone());
        }
        if let Some(live) = self.live.as_mut() {
            live.path(&path);
        }
        self.run.chain = chain;
        self.run.path = path;
        Ok(())
    }

    /// Ends sending (the input is left unread); the frames in flight still come back.
    fn stop_sending(&mut self, stop: Stop) {
        if self.stop.is_none() && !self.stdin.closed {
            self.stop = Some(stop);
            self.stdin.closed = true;
        }
    }

    /// Hands the live view the run's counters, a few times a second at most.
    fn publish_live_if_due(&mut self, now_ns: u64) {
        if let Some(live) = self.live.as_mut() {
            live.counters_if_due(now_ns, &self.run);
        }
    }

    /// Hands a metrics snapshot to the `--metrics` server, a few times a second at most.
    fn publish_metrics_if_due(&mut self, now_ns: u64) {
        if let Some((publisher, recorder)) = self.metrics.as_mut()
            && publisher.due(now_ns)
        {
            let snapshot = recorder.snapshot(&self.run);
            publisher.publish(now_ns, Snapshot::Source(Box::new(snapshot)));
        }
    }

    /// The loop is over: the frames answered since the last snapshot and the last interval's
    /// SLA results reach `/metrics` too.
    fn publish_final_metrics(&mut self) {
        if let Some((publisher, recorder)) = self.metrics.as_mut() {
            publisher.publish_final(Snapshot::Source(Box::new(recorder.snapshot(&self.run))));
        }
    }

    fn publish_interval_if_due(&mut self, now_ns: u64) {
        if self.intervals.as_ref().is_some_and(|intervals| now_ns >= intervals.ends_ns) {
            self.publish_interval(now_ns);
        }
    }

    /// Hands the interval's statistics to the output thread and starts the next interval.
    fn publish_interval(&mut self, now_ns: u64) {
        let Some(intervals) = self.intervals.as_mut() else { return };
        let end_unix_ns = clock::realtime_ns();
        let sequencing = &self.run.sequencing;
        let frames = IntervalFrames {
            sent: sequencing.sent - intervals.sent_before,
            answered: sequencing.answered - intervals.answered_before,
            in_flight: sequencing.in_flight(),
            lost: intervals.lost,
            outages: intervals.outages,
        };
        if let Some(chain) = intervals.chain.as_mut() {
            let interval = Interval::build(
                intervals.index,
                (intervals.start_unix_ns, end_unix_ns),
                chain,
                frames,
                &self.config.slas,
                self.config.presentation.symbols,
            );
            if let Some((_, recorder)) = self.metrics.as_mut() {
                recorder.interval(&interval.sla);
            }
            let presentation = self.config.presentation;
            let unit =
                Unit::choose(presentation, interval.end_to_end.map_or(0, |stats| stats.p50_ns));
            self.writer.send(
                Destination::Stderr,
                format!("{}: {}", self.config.name, interval.line(&unit)),
            );
            if self.writer.jsonl {
                self.writer.send(Destination::Jsonl, json::line(&interval));
            }
            if self.config.keep_history {
                self.run.history.push(interval.summary());
            }
            *chain = Chain::new(chain.path.clone()).expect("the path had a chain");
        }
        intervals.index += 1;
        intervals.start_unix_ns = end_unix_ns;
        intervals.sent_before = sequencing.sent;
        intervals.answered_before = sequencing.answered;
        intervals.lost = 0;
        intervals.outages = 0;
        while intervals.ends_ns <= now_ns {
            intervals.ends_ns += intervals.every_ns;
        }
    }

    /// After Ctrl-C: what was answered and counted goes on to stdout too, for at most the
    /// timeout or until a second Ctrl-C; what a stuck reader leaves behind is counted in the
    /// report.
    fn finish_stdout_after_interrupt(&mut self, poll: &mut Poll, events: &mut Events) {
        let deadline_ns = clock::now_ns() + self.config.timeout.as_nanos() as u64;
        let mut said = false;
        loop {
            if let Err(error) = self.write_stdout() {
                log_line!("{}: {error}", self.config.name);
                break;
            }
            let now_ns = clock::now_ns();
            if self.to_stdout.is_empty() || now_ns >= deadline_ns || tuning::stop_signals() > 1 {
                break;
            }
            if !said {
                // The wait may be long (a slow reader, up to the timeout): say why nothing ends
                // yet, and how to end it now.
                said = true;
                log_line!(
                    "{}: interrupted: writing the {} B of answered payload still held to stdout \
                     (for at most {} s; interrupt again to stop now)",
                    self.config.name,
                    self.to_stdout.len(),
                    self.config.timeout.as_secs_f64()
                );
            }
            let wait = Duration::from_nanos((deadline_ns - now_ns).min(100_000_000));
            let _ =
                poll.poll(events, Some(if self.stdout.pollable { wait } else { Duration::ZERO }));
            self.stdout.ready |= events.iter().any(|event| event.token() == STDOUT);
        }
        self.run.unwritten_bytes = self.to_stdout.len() as u64;
    }

    fn wants_stdin(&self) -> bool {
        !self.stdin.closed
            && self.fault.is_none()
            && !matches!(self.link, Link::Down { .. })
            && self.send.room() >= self.frame_room()
            && self.window().is_none_or(|window| self.run.sequencing.in_flight() < window)
    }

    /// Frames allowed in flight now: one at a time for the first [`UNLOADED_FRAMES`], so that
    /// every subsegment has samples with no queue in front of them (its floor, which tells a
    /// slow link from a queue in bulk mode), then `--window`.
    fn window(&self) -> Option<u64> {
        if self.run.sequencing.answered < UNLOADED_FRAMES { Some(1) } else { self.config.window }
    }

    fn frame_room(&self) -> usize {
        PAYLOAD_AT + self.config.probe.map_or(self.config.block_size, |probe| probe.size)
    }

    /// Turns the payload already placed at `PAYLOAD_AT` in the send buffer's tail into a frame;
    /// `read_ns` is when its input was read (or generated).
    fn append_frame(&mut self, read_ns: u64, payload_len: usize) {
        let sequence = self.run.sequencing.sent_one();
        let tail = self.send.tail(self.frame_room()).expect("room checked");
        let header = Header { flags: 0, kind: Kind::Data, record_count: 1, sequence, payload_len };
        header.emit(&mut tail[..HEADER_LEN]);
        // The write stamp is patched in by the connection core, right before the hand-over.
        Stamp::new(0, Direction::Down, read_ns, 0).emit(&mut tail[HEADER_LEN..PAYLOAD_AT]);
        self.send.commit_frame(PAYLOAD_AT + payload_len, wire::write_stamp_offset(0));
        self.run.first_send_ns.get_or_insert(read_ns);
        self.run.sent_payload_bytes += payload_len as u64;
    }

    /// Probe mode: frames of a recognisable pattern, each once its time has come.
    fn generate_probes(&mut self, probe: Probe) -> bool {
        let mut progress = false;
        while self.wants_stdin() {
            let sent = self.run.sequencing.sent;
            if let (Some(timer), Some(schedule), true) =
                (&self.probe_timer, &mut self.run.schedule, sent >= UNLOADED_FRAMES)
            {
                let now_ns = clock::monotonic_ns();
                schedule.start(now_ns, sent);
                let due_ns = schedule.due_ns(sent).expect("the schedule has started");
                if now_ns < due_ns {
                    timer.arm(due_ns);
                    break;
                }
                schedule.sent(due_ns, now_ns);
            }
            let tail = self.send.tail(self.frame_room()).expect("room checked");
            for (index, byte) in tail[PAYLOAD_AT..PAYLOAD_AT + probe.size].iter_mut().enumerate() {
                *byte = index as u8;
            }
            self.append_frame(clock::now_ns(), probe.size);
            if Some(self.run.sequencing.sent) == probe.count {
                self.stdin.closed = true;
            }
            progress = true;
        }
        progress
    }

    /// One pass of connect, stdin, send, receive and stdout; `Ok(true)` when anything moved.
    fn round(&mut self) -> Result<bool, String> {
        let mut progress = false;
        match self.link {
            Link::Down { .. } => return Ok(false),
            Link::Connected => {}
            Link::Connecting => match self.upstream.connected() {
                Ok(true) => {
                    self.link = Link::Connected;
                    progress = true;
                }
                Ok(false) => return Ok(false),
                Err(error) => {
                    let first_hop = first_hop(&self.config.forward_to);
                    return Err(format!("cannot reach first hop {first_hop}: {error}"));
                }
            },
        }
        progress |= self.read_stdin()?;
        progress |= self.send_frames()?;
        progress |= self.receive_answers()?;
        progress |= self.write_stdout()?;
        Ok(progress)
    }

    fn read_stdin(&mut self) -> Result<bool, String> {
        if let Some(probe) = self.config.probe {
            return Ok(self.generate_probes(probe));
        }
        let mut progress = false;
        while self.stdin.ready && self.wants_stdin() {
            let block = self.config.block_size;
            let tail = self.send.tail(self.frame_room()).expect("room checked");
            let block = &mut tail[PAYLOAD_AT..PAYLOAD_AT + block];
            // One block, as full as stdin has bytes ready for it.
            let mut filled = 0;
            while filled < block.len() {
                match net::classify(|| net::read_fd(self.stdin.fd, &mut block[filled..])) {
                    Io::Done(count) => filled += count,
                    Io::Closed => {
                        self.stdin.closed = true;
                        progress = true;
                        break;
                    }
                    Io::WouldBlock => {
                        self.stdin.ready = false;
                        break;
                    }
                    Io::Failed(error) => return Err(format!("reading stdin: {error}")),
                }
            }
            if filled > 0 {
                self.append_frame(clock::now_ns(), filled);
                progress = true;
            }
            if self.stdin.closed {
                break;
            }
        }
        Ok(progress)
    }

    fn send_frames(&mut self) -> Result<bool, String> {
        if self.link != Link::Connected {
            return Ok(false);
        }
        let progress = match self.upstream.flush(&SystemClock, &mut self.send) {
            Ok(progress) => progress,
            Err(error) if error.kind() == io::ErrorKind::WriteZero => {
                return Err(self.broken("the first hop stopped reading"));
            }
            Err(error) => return Err(self.broken(&format!("sending: {error}"))),
        };
        let nothing_left = self.stdin.closed || self.fault.is_some();
        if nothing_left && self.send.is_empty() && !self.upstream.write_shut {
            self.upstream.shut_write();
            return Ok(true);
        }
        Ok(progress)
    }

    fn receive_answers(&mut self) -> Result<bool, String> {
        let mut progress = false;
        if !self.receive_stalled && self.link == Link::Connected {
            let was_closed = self.upstream.read_closed;
            progress |= self
                .upstream
                .fill(&SystemClock, &mut self.receive)
                .map_err(|error| self.broken(&format!("receiving: {error}")))?;
            progress |= self.upstream.read_closed != was_closed;
        }
        self.receive_stalled = false;
        loop {
            let (frame, read) = match self.receive.next_frame() {
                Ok(Some(head)) => head,
                Ok(None) => break,
                Err(error) => return Err(self.broken(&format!("bad answer: {error}"))),
            };
            let len = frame.total_len();
            match frame.kind() {
                Kind::Data => {
                    let probing = self.config.probe.is_some();
                    if !probing && !self.to_stdout.push(frame.payload()) {
                        self.receive_stalled = true;
                        break;
                    }
                    let from_server = frame.flags() & wire::DATA_FROM_SERVER != 0;
                    let pattern = (0..=u8::MAX).cycle();
                    if probing
                        && !from_server
                        && !frame.payload().iter().copied().eq(pattern.take(frame.payload_len()))
                    {
                        self.run.corrupted += 1;
                    }
                    if from_server {
                        self.run.unsolicited_bytes += frame.payload_len() as u64;
                    } else {
                        self.run.sequencing.answered_one(frame.sequence());
                        self.run.payload_bytes += frame.payload_len() as u64;
                        self.run.last_answer_ns = Some(read.read_ns);
                        let end_to_end =
                            self.run.chain.as_mut().and_then(|chain| chain.record(&frame, read));
                        if let (Some((_, recorder)), Some(chain), Some(end_to_end_ns)) =
                            (self.metrics.as_mut(), self.run.chain.as_ref(), end_to_end)
                        {
                            recorder.record(chain.last_samples(), end_to_end_ns);
                        }
                        if let Some(chain) =
                            self.intervals.as_mut().and_then(|intervals| intervals.chain.as_mut())
                        {
                            chain.record(&frame, read);
                        }
                        // One push onto the view's queue; its thread does the statistics.
                        if let Some(live) = self.live.as_mut() {
                            live.answer(&frame, read);
                        }
                        if self.writer.samples {
                            let chain = self.run.chain.as_ref();
                            write_sample(
                                self.writer,
                                chain,
                                self.unix_offset_ns,
                                &frame,
                                end_to_end,
                            );
                        }
                    }
                }
                Kind::Path => {
                    let path = PathEntry::parse_all(frame.payload())
                        .map_err(|error| format!("bad path announcement: {error}"))?;
                    self.path_discovered(path)?;
                }
                Kind::Fault => {
                    let fault = Fault::parse(frame.payload())
                        .map_err(|error| self.broken(&format!("bad answer: {error}")))?;
                    self.fault.get_or_insert(fault);
                }
                Kind::Kernel => {
                    let sample = KernelSample::parse(frame.payload())
                        .map_err(|error| self.broken(&format!("bad answer: {error}")))?;
                    self.run.kernel.add(sample.hop.into(), sample.side, sample.info, sample.tx);
                }
            }
            self.receive.consume(len);
            progress = true;
        }
        Ok(progress)
    }

    fn write_stdout(&mut self) -> Result<bool, String> {
        let mut progress = false;
        while self.stdout.ready && !self.to_stdout.is_empty() {
            match net::classify(|| net::write_fd(self.stdout.fd, self.to_stdout.data())) {
                Io::Done(count) => {
                    self.to_stdout.consume(count);
                    progress = true;
                }
                Io::WouldBlock => self.stdout.ready = false,
                Io::Closed => return Err("stdout accepts no more data".to_string()),
                Io::Failed(error) => return Err(format!("writing stdout: {error}")),
            }
        }
        Ok(progress)
    }

    fn finished(&self) -> Option<Ending> {
        if let Link::Down { .. } = self.link {
            // An outage ends only when the run is told to stop.
            return self.stop.map(|_| Ending::Complete);
        }
        if !(self.upstream.read_closed && self.to_stdout.is_empty()) {
            return None;
        }
        if let Some(fault) = &self.fault {
            return Some(self.failed(self.describe_fault(fault)));
        }
        if !self.receive.is_empty() {
            return Some(self.failed(self.broken("the chain closed in the middle of an answer")));
        }
        // Frames lost to an earlier outage are accounted for; only those in flight count here.
        let missing = self.run.sequencing.in_flight();
        if missing > 0 || !self.stdin.closed {
            let sent = self.run.sequencing.sent;
            return Some(self.failed(self.broken(&format!(
                "the chain closed with {missing} of the {sent} {} sent unanswered",
                if sent == 1 { "frame" } else { "frames" }
            ))));
        }
        Some(Ending::Complete)
    }

    /// Names the subsegment below the hop that reported the fault.
    fn describe_fault(&self, fault: &Fault) -> String {
        let hop = usize::from(fault.hop);
        let name = |index: usize| self.run.path.get(index).map(|entry| entry.name.clone());
        let below = name(hop + 1).unwrap_or_else(|| "its next hop".to_string());
        let here = name(hop).unwrap_or_else(|| format!("hop {hop}"));
        let sent = self.run.sequencing.sent;
        format!(
            "subsegment {here} ⇄ {below} failed, {} of the {sent} {} sent answered: {}",
            self.run.sequencing.answered,
            if sent == 1 { "frame" } else { "frames" },
            fault.message
        )
    }

    /// A failure, naming the link below the hop that reported a fault in-band, if one did.
    fn failed(&self, message: String) -> Ending {
        Ending::Failed { message, broken_link: self.fault.as_ref().map(BrokenLink::of) }
    }

    fn broken(&self, what: &str) -> String {
        match &self.fault {
            Some(fault) => self.describe_fault(fault),
            None => {
                format!("connection to first hop {}: {what}", first_hop(&self.config.forward_to))
            }
        }
    }

    /// The timeout, plus (once connected) a grace of up to a second: the hops time out on the
    /// same `--timeout`, and the one next to a stuck peer reports it in-band; the source must
    /// still be listening then to name the subsegment.
    fn give_up_after(&self) -> Duration {
        if self.link == Link::Connecting {
            return self.config.timeout;
        }
        self.config.timeout + self.config.timeout.min(Duration::from_secs(1))
    }

    fn timeout_message(&self) -> String {
        let seconds = self.give_up_after().as_secs_f64();
        if let Some(fault) = &self.fault {
            return self.describe_fault(fault);
        }
        let first_hop = first_hop(&self.config.forward_to);
        if self.link == Link::Connecting {
            return format!("cannot reach first hop {first_hop}: timed out after {seconds} s");
        }
        if self.run.path.is_empty() {
            // Not even the path announcement came back: nothing names a hop beyond the first.
            return format!(
                "no answer through first hop {first_hop} for {seconds} s: the path \
                 announcement never came back (does every hop run subsegment-tcp-speeds?)"
            );
        }
        format!(
            "timed out: no progress for {seconds} s with {} of {} frames unanswered",
            self.run.sequencing.missing(),
            self.run.sequencing.sent
        )
    }
}

/// One `--samples` line: sequence, send time, end-to-end and each part, in ns (empty
/// values for a frame whose stamps were incomplete).
fn write_sample<T: AsRef<[u8]>>(
    writer: &mut Writer,
    chain: Option<&Chain>,
    unix_offset_ns: i128,
    frame: &wire::Frame<T>,
    end_to_end: Option<i64>,
) {
    let sent_raw_ns = frame
        .records()
        .find(|stamp| stamp.hop == 0 && stamp.direction == Direction::Down)
        .map(|stamp| stamp.write_ns);
    let mut line = String::with_capacity(128);
    let _ = write!(line, "{},", frame.sequence());
    if let Some(sent_raw_ns) = sent_raw_ns {
        let _ = write!(line, "{}", i128::from(sent_raw_ns) + unix_offset_ns);
    }
    match (end_to_end, chain) {
        (Some(end_to_end), Some(chain)) => {
            let _ = write!(line, ",{end_to_end}");
            for sample in chain.last_samples() {
                let _ = write!(line, ",{sample}");
            }
        }
        _ => {
            let parts = chain.map_or(0, |chain| chain.parts.len());
            line.push_str(&",".repeat(parts + 1));
        }
    }
    line.push('\n');
    writer.send(Destination::Samples, line);
}

/// Queues the source's path announcement, which opens every connection to the first hop.
fn announce(send: &mut Outbound, config: &SourceConfig, upstream: &Peer) {
    let mut announcement = Vec::new();
    PathEntry::new(Role::Source, &config.name, upstream.stream.local_addr().ok(), None)
        .with_tags(config.tags.clone())
        .emit(&mut announcement);
    let mut flags = wire::path_flags(config.kernel_info, config.kernel_stamps);
    if config.quickack {
        flags |= wire::PATH_ASKS_QUICKACK;
    }
    send.push(&wire::flagged_control_frame(Kind::Path, flags, &announcement));
}

/// `A → B (10.0.0.2:9000) → Z (10.0.0.3:9000)`, for the line that says a path changed.
fn describe_path(path: &[PathEntry]) -> String {
    let hops: Vec<String> = path
        .iter()
        .enumerate()
        .map(|(index, entry)| match index {
            0 => entry.name.clone(),
            _ => format!("{} ({})", entry.name, entry.local),
        })
        .collect();
    hops.join(" -> ")
}

/// The first hop as the user wrote it, with the address it resolved to when that differs.
fn first_hop((target, text): &(SocketAddr, String)) -> String {
    if *text == target.to_string() { text.clone() } else { format!("{text} ({target})") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_schedule_is_absolute_so_lateness_never_accumulates() {
        let mut schedule = Schedule { interval: Duration::from_micros(250), ..Schedule::default() };
        assert_eq!(schedule.due_ns(3), None, "not started: the unloaded probes are unscheduled");
        let start_ns = 1_000_000;
        schedule.start(start_ns, 3);
        schedule.start(start_ns + 999, 4); // started once only
        // Every probe leaves 100 µs late (under half an interval): on time, and probe 1 003
        // is still due at start + 1 000 intervals, not 1 000 × 350 µs.
        for index in 3..1_003u64 {
            let due_ns = schedule.due_ns(index).unwrap();
            assert_eq!(due_ns, start_ns + (index - 3) * 250_000);
            schedule.sent(due_ns, due_ns + 100_000);
        }
        assert_eq!(schedule.due_ns(1_003), Some(start_ns + 250_000_000));
        assert_eq!((schedule.late, schedule.worst_lateness_ns), (0, 100_000));
        assert_eq!(schedule.achieved_per_second().map(f64::round), Some(4_000.0));
        // One probe held back 2 ms (by the window) is late; the next are due as before.
        let due_ns = schedule.due_ns(1_003).unwrap();
        schedule.sent(due_ns, schedule.due_ns(1_011).unwrap());
        assert_eq!((schedule.late, schedule.worst_lateness_ns), (1, 2_000_000));
        assert_eq!(schedule.due_ns(1_004), Some(start_ns + 250_250_000));
        assert_eq!(Schedule::default().achieved_per_second(), None);
    }
}
