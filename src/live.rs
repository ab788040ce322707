//! The live view: an mtr-like table on stderr, redrawn once a second while a source run lasts,
//! when stderr is a terminal (see [`wanted`]). It owns the terminal while it is shown (raw
//! keys in probe mode, the redraws, the clearing at the end) and its own statistics of what
//! it shows; it does not own the run's statistics or the final report.
//!
//! The loop's end is a [`LiveFeed`]: per answered frame it pushes the frame's stamp records
//! (an [`Answer`], held inline up to [`INLINE_RECORDS`] records) onto a bounded queue with
//! `try_send`, and that is all it pays: a full queue drops the answer and counts it, never
//! waits, as `--samples` does through [`crate::output`]. Besides, the path when it is
//! discovered, and four times a second the run's counters (a small copy). The view's thread
//! never blocks on the queue (it drains it with `try_recv` on its own tick), so a push never
//! has a sleeper to wake: no system call on the loop's side.
//!
//! The view's thread (normal priority, off the loop's `--cpu`) keeps two [`Chain`]s of its own,
//! fed with those records exactly as the run's are: since the start (or the last `r`), and the
//! current interval of [`INTERVAL_NS`], whose p50 and p99 are shown once it is complete. It
//! builds a [`LiveSnapshot`] from them, the verdict included, and draws it with plain ANSI
//! (cursor home, each line cleared to its end, the rest of the screen cleared), in colour unless
//! `NO_COLOR` is set. In probe mode, with stdin a terminal, it reads keys: `q` asks the loop to
//! end the run as a first Ctrl-C would, `r` restarts the view's statistics (not the report's),
//! `p` pauses the redraw. The terminal is put in non-canonical mode without echo (signals still
//! work: Ctrl-C stays Ctrl-C) and restored by a guard's `Drop`, by the handlers of SIGQUIT and
//! SIGHUP and, should anything panic, by a panic hook.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::core::ReadStamp;
use crate::report::verdict::Verdict;
use crate::report::{Presentation, Unit};
use crate::source::Run;
use crate::stats::{self, Chain, Symbols};
use crate::tuning;
use crate::wire::{Direction, Frame, PathEntry, Stamp};

/// How often the table is redrawn, and how long a run lasts before it first is.
pub const REDRAW_EVERY: Duration = Duration::from_secs(1);
/// The span of the "last interval" columns (`1s p50`, `1s p99`).
pub const INTERVAL_NS: u64 = 1_000_000_000;
/// How often the loop hands the view the run's counters.
pub const COUNTERS_EVERY_NS: u64 = 250_000_000;
/// Answers the queue holds: the view drains it every [`TICK`], so it keeps up to some 160 000
/// answers a second (probe runs are far below; a bulk run past it shows what it missed).
pub const QUEUE_ANSWERS: usize = 8192;
/// Records an [`Answer`] holds without an allocation: a source, three relays and the echo end.
pub const INLINE_RECORDS: usize = 8;
/// How long the view's thread waits for a key (or a stop, or a resize) at a time, and so how
/// often it drains the queue.
const TICK: Duration = Duration::from_millis(50);

/// Whether the live view is shown: `live` (no `--no-live`), stderr a terminal, `TERM` not
/// `dumb`.
pub fn wanted(live: bool) -> bool {
    // SAFETY: isatty takes a descriptor and no pointers.
    let terminal = unsafe { libc::isatty(libc::STDERR_FILENO) } == 1;
    let term = std::env::var("TERM").unwrap_or_default();
    live && terminal && !term.is_empty() && term != "dumb"
}

/// What the view and the loop share besides the queue.
#[derive(Debug, Default)]
struct Shared {
    /// `q`: end the run.
    quit: AtomicBool,
    /// Answers the queue was too full to take (only the loop adds to it).
    missed: AtomicU64,
}

/// One answered frame as the view needs it: its stamp records, its sequence number and the
/// source's read stamp, which is what [`Chain::record_stamps`] takes.
#[derive(Debug, Clone)]
pub struct Answer {
    sequence: u64,
    read: ReadStamp,
    records: Records,
}

#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "inline is the point: the queue's slots are allocated once, an answer never is"
)]
enum Records {
    Inline {
        len: u8,
        stamps: [Stamp; INLINE_RECORDS],
    },
    /// A longer chain's: one allocation per answer.
    Spilled(Box<[Stamp]>),
}

impl Answer {
    pub fn of<T: AsRef<[u8]>>(frame: &Frame<T>, read: ReadStamp) -> Answer {
        let count = frame.record_count();
        let records = if count <= INLINE_RECORDS {
            let mut stamps = [Stamp::new(0, Direction::Down, 0, 0); INLINE_RECORDS];
            for (slot, stamp) in stamps.iter_mut().zip(frame.records()) {
                *slot = stamp;
            }
            Records::Inline { len: count as u8, stamps }
        } else {
            Records::Spilled(frame.records().collect())
        };
        Answer { sequence: frame.sequence(), read, records }
    }

    fn records(&self) -> &[Stamp] {
        match &self.records {
            Records::Inline { len, stamps } => &stamps[..usize::from(*len)],
            Records::Spilled(stamps) => stamps,
        }
    }
}

/// The run's counters as the view shows them, copied from the [`Run`] a few times a second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// CLOCK_MONOTONIC_RAW when copied.
    pub taken_ns: u64,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub in_flight: u64,
    pub outages: u64,
    /// Bulk mode (stdin is the payload): payload bytes sent and answered.
    pub bulk: Option<(u64, u64)>,
    /// More than one frame may be in flight (for the verdict's words).
    pub loaded: bool,
}

impl Counters {
    pub fn of(run: &Run, bulk: bool, now_ns: u64) -> Counters {
        let sequencing = &run.sequencing;
        Counters {
            taken_ns: now_ns,
            sent: sequencing.sent,
            answered: sequencing.answered,
            lost: sequencing.lost,
            in_flight: sequencing.in_flight(),
            outages: run.outages.len() as u64,
            bulk: bulk.then_some((run.sent_payload_bytes, run.payload_bytes)),
            loaded: run.loaded,
        }
    }
}

/// What goes through the queue, in the loop's order: a path always before its answers.
#[derive(Debug)]
#[allow(clippy::large_enum_variant, reason = "the queue's slots are allocated once, up front")]
pub enum Message {
    /// The path is known (again, or changed): the view starts over on it.
    Path(Vec<PathEntry>),
    Answer(Answer),
    Counters(Counters),
}

/// The loop's end: the queue's sender, nothing else that costs.
pub struct LiveFeed {
    sender: SyncSender<Message>,
    shared: Arc<Shared>,
    bulk: bool,
    /// A path the queue had no room for: sent before any further answer.
    pending_path: Option<Vec<PathEntry>>,
    next_counters_ns: u64,
}

impl LiveFeed {
    fn new(sender: SyncSender<Message>, shared: Arc<Shared>, bulk: bool) -> LiveFeed {
        LiveFeed { sender, shared, bulk, pending_path: None, next_counters_ns: 0 }
    }

    /// The path is known (again, or changed).
    pub fn path(&mut self, path: &[PathEntry]) {
        self.pending_path = Some(path.to_vec());
        self.send_pending_path();
    }

    /// One answered frame: a push, or a count when the queue is full.
    pub fn answer<T: AsRef<[u8]>>(&mut self, frame: &Frame<T>, read: ReadStamp) {
        // An answer never goes ahead of its path: the view would record it on the old one.
        if !self.send_pending_path()
            || self.sender.try_send(Message::Answer(Answer::of(frame, read))).is_err()
        {
            self.shared.missed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// When the next counters are due (CLOCK_MONOTONIC_RAW), for the loop's poll timeout.
    pub fn next_ns(&self) -> u64 {
        self.next_counters_ns
    }

    /// The run's counters, at most every [`COUNTERS_EVERY_NS`]; dropped when the queue is full
    /// (the next ones say the same, later).
    pub fn counters_if_due(&mut self, now_ns: u64, run: &Run) {
        if now_ns < self.next_counters_ns {
            return;
        }
        self.next_counters_ns = now_ns + COUNTERS_EVERY_NS;
        if self.send_pending_path() {
            let _ = self.sender.try_send(Message::Counters(Counters::of(run, self.bulk, now_ns)));
        }
    }

    /// `q` was pressed.
    pub fn quit_requested(&self) -> bool {
        self.shared.quit.load(Ordering::Relaxed)
    }

    /// Whether no path is waiting for room (true when it went now).
    fn send_pending_path(&mut self) -> bool {
        let Some(path) = self.pending_path.take() else { return true };
        match self.sender.try_send(Message::Path(path)) {
            Ok(()) => true,
            Err(TrySendError::Full(Message::Path(path))) => {
                self.pending_path = Some(path);
                false
            }
            // The view is gone: nothing to keep for it.
            Err(_) => false,
        }
    }
}

/// One subsegment's row (or the end-to-end one).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveRow {
    pub label: String,
    pub count: u64,
    pub last_ns: Option<i64>,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    pub jitter_ns: u64,
    /// p50 over the end-to-end p50.
    pub share: f64,
    /// p50 and p99 over the last complete interval (the current one before there is one).
    pub recent_p50_ns: Option<u64>,
    pub recent_p99_ns: Option<u64>,
}

/// What the view draws, built by its thread from its own statistics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiveSnapshot {
    pub name: String,
    /// CLOCK_MONOTONIC_RAW of the counters, and the span since the view's statistics started.
    pub taken_ns: u64,
    pub span_ns: u64,
    pub path: Vec<String>,
    pub symbols: Symbols,
    pub unit: Option<Unit>,
    pub rows: Vec<LiveRow>,
    pub end_to_end: Option<LiveRow>,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub in_flight: u64,
    pub outages: u64,
    /// Answers the queue had no room for, over the run.
    pub missed: u64,
    pub verdict: Option<String>,
    /// Bulk mode (stdin is the payload): payload bytes sent and answered.
    pub bulk: Option<(u64, u64)>,
    /// Bulk mode with stdin a regular file: the bytes it had left at the start (for an ETA).
    pub stdin_bytes: Option<u64>,
    /// Keys are read (probe mode on a terminal).
    pub keys: bool,
}

/// The view thread's statistics: its own chains, fed from the queue, and the counters.
pub struct LiveState {
    name: String,
    presentation: Presentation,
    keys: bool,
    /// What is left of stdin when it is a regular file (bulk mode).
    stdin_bytes: Option<u64>,
    /// Since the path was discovered or the last `r`.
    chain: Option<Chain>,
    /// The current interval.
    interval: Option<Chain>,
    /// The last complete interval's p50 and p99 per part, then end-to-end.
    last_interval: Option<Vec<(u64, u64)>>,
    interval_ends_ns: u64,
    /// When the view's statistics started, and the run's counters then.
    started_ns: u64,
    base: Counters,
    counters: Counters,
}

impl LiveState {
    pub fn new(name: &str, presentation: Presentation, keys: bool, now_ns: u64) -> LiveState {
        LiveState {
            name: name.to_string(),
            presentation,
            keys,
            stdin_bytes: None,
            chain: None,
            interval: None,
            last_interval: None,
            interval_ends_ns: now_ns + INTERVAL_NS,
            started_ns: now_ns,
            base: Counters::default(),
            counters: Counters::default(),
        }
    }

    pub fn take(&mut self, message: Message, now_ns: u64) {
        match message {
            Message::Path(path) => {
                self.chain = Chain::new(path.clone());
                self.interval = Chain::new(path);
                self.last_interval = None;
                self.interval_ends_ns = now_ns + INTERVAL_NS;
            }
            Message::Answer(answer) => {
                for chain in [self.chain.as_mut(), self.interval.as_mut()].into_iter().flatten() {
                    chain.record_stamps(
                        answer.records().iter().copied(),
                        answer.sequence,
                        answer.read,
                    );
                }
            }
            Message::Counters(counters) => self.counters = counters,
        }
    }

    /// Closes the current interval once it is over.
    pub fn tick(&mut self, now_ns: u64) {
        if now_ns < self.interval_ends_ns {
            return;
        }
        if let Some(interval) = self.interval.as_mut() {
            let mut quantiles: Vec<(u64, u64)> = interval.parts.iter().map(p50_p99).collect();
            quantiles.push(p50_p99(&interval.end_to_end));
            self.last_interval = Some(quantiles);
            *interval = Chain::new(interval.path.clone()).expect("the path had a chain");
        }
        while self.interval_ends_ns <= now_ns {
            self.interval_ends_ns += INTERVAL_NS;
        }
    }

    /// `r`: the view's statistics and counters start over; the run's do not.
    pub fn reset(&mut self, now_ns: u64) {
        if let Some(chain) = &self.chain {
            self.chain = Chain::new(chain.path.clone());
        }
        self.started_ns = now_ns;
        self.base = self.counters;
    }

    /// The table's values now, the verdict as it stands included.
    pub fn snapshot(&self, now_ns: u64, missed: u64) -> LiveSnapshot {
        let (counters, base) = (&self.counters, &self.base);
        let symbols = self.presentation.symbols;
        let mut snapshot = LiveSnapshot {
            name: self.name.clone(),
            taken_ns: counters.taken_ns,
            span_ns: now_ns.saturating_sub(self.started_ns),
            symbols,
            sent: counters.sent.saturating_sub(base.sent),
            answered: counters.answered.saturating_sub(base.answered),
            lost: counters.lost.saturating_sub(base.lost),
            in_flight: counters.in_flight,
            outages: counters.outages.saturating_sub(base.outages),
            missed,
            bulk: counters.bulk,
            stdin_bytes: self.stdin_bytes,
            keys: self.keys,
            ..LiveSnapshot::default()
        };
        let Some(chain) = &self.chain else { return snapshot };
        let labels = stats::hop_labels(&chain.path);
        snapshot.path = labels.clone();
        let end_to_end_p50_ns = p50_p99(&chain.end_to_end).0;
        let unit = Unit::choose(self.presentation, end_to_end_p50_ns);
        snapshot.unit = Some(unit);
        let recent = |index: usize| -> (Option<u64>, Option<u64>) {
            match (&self.last_interval, &self.interval) {
                (Some(quantiles), _) => (Some(quantiles[index].0), Some(quantiles[index].1)),
                (None, Some(interval)) => {
                    let series = interval.parts.get(index).unwrap_or(&interval.end_to_end);
                    if series.count() == 0 {
                        (None, None)
                    } else {
                        let (p50, p99) = p50_p99(series);
                        (Some(p50), Some(p99))
                    }
                }
                (None, None) => (None, None),
            }
        };
        let has_last = chain.end_to_end.count() > 0;
        let row = |label: String, series: &stats::Series, last_ns: Option<i64>, index: usize| {
            let (p50_ns, p99_ns) = p50_p99(series);
            let (recent_p50_ns, recent_p99_ns) = recent(index);
            LiveRow {
                label,
                count: series.count(),
                last_ns,
                p50_ns,
                p99_ns,
                max_ns: series.histogram.max(),
                jitter_ns: series.jitter_ns().round() as u64,
                share: p50_ns as f64 / end_to_end_p50_ns.max(1) as f64,
                recent_p50_ns,
                recent_p99_ns,
            }
        };
        let last = chain.last_samples();
        snapshot.rows = chain
            .parts
            .iter()
            .enumerate()
            .map(|(index, series)| {
                let label = stats::part_label(series.part, &labels, symbols);
                let last_ns = has_last.then(|| last.get(index).copied()).flatten();
                row(label, series, last_ns, index)
            })
            .collect();
        let end_to_end_last = has_last.then(|| last.iter().sum::<i64>());
        snapshot.end_to_end = Some(row(
            "end-to-end".to_string(),
            &chain.end_to_end,
            end_to_end_last,
            chain.parts.len(),
        ));
        // On this thread, once a redraw: the verdict's walks cost the loop nothing.
        snapshot.verdict = Verdict::of(chain).map(|verdict| {
            let labels: Vec<String> = snapshot.rows.iter().map(|row| row.label.clone()).collect();
            verdict.describe(chain, &labels, &snapshot.path, unit, counters.loaded, symbols)
        });
        snapshot
    }
}

/// p50 and p99 in one walk over the histogram's counters (two `value_at_quantile` calls
/// would walk them twice, and `Stats::of` walks them five times).
fn p50_p99(series: &stats::Series) -> (u64, u64) {
    let histogram = &series.histogram;
    let total = histogram.len();
    if total == 0 {
        return (0, 0);
    }
    let rank = |quantile: f64| ((quantile * total as f64).ceil() as u64).clamp(1, total);
    let (rank_50, rank_99) = (rank(0.5), rank(0.99));
    let (mut seen, mut p50) = (0u64, None);
    for value in histogram.iter_recorded() {
        seen += value.count_since_last_iteration();
        let at = histogram.highest_equivalent(value.value_iterated_to());
        if p50.is_none() && seen >= rank_50 {
            p50 = Some(at);
        }
        if seen >= rank_99 {
            return (p50.unwrap_or(at), at);
        }
    }
    let max = histogram.max();
    (p50.unwrap_or(max), max)
}

/// When stdin is a regular file, the bytes from its offset to its end (what a bulk run will
/// send, unless `--duration` stops it first).
fn stdin_file_bytes() -> Option<u64> {
    // SAFETY: fstat fills the stat it is given; lseek with SEEK_CUR only reads the offset.
    unsafe {
        let mut stat: libc::stat = std::mem::zeroed();
        if libc::fstat(libc::STDIN_FILENO, &mut stat) != 0
            || stat.st_mode & libc::S_IFMT != libc::S_IFREG
        {
            return None;
        }
        let offset = libc::lseek(libc::STDIN_FILENO, 0, libc::SEEK_CUR).max(0);
        Some((stat.st_size - offset).max(0) as u64)
    }
}

/// The view's end: its thread, stopped (and the view cleared) by [`LiveView::finish`].
pub struct LiveView {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the view's thread and returns it with the loop's end. `probe`: stdin is not the
/// payload, so keys may be read from it (when it is a terminal).
pub fn start(
    name: &str,
    presentation: Presentation,
    probe: bool,
    loop_cpu: Option<usize>,
) -> io::Result<(LiveView, LiveFeed)> {
    // SAFETY: isatty takes a descriptor and no pointers.
    let keys = probe && unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let (sender, receiver) = mpsc::sync_channel(QUEUE_ANSWERS);
    let shared = Arc::new(Shared::default());
    let stop = Arc::new(AtomicBool::new(false));
    let colour = std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let mut state = LiveState::new(name, presentation, keys, crate::clock::now_ns());
    state.stdin_bytes = if probe { None } else { stdin_file_bytes() };
    let view = {
        let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::Builder::new().name("live".to_string()).spawn(move || {
            tuning::leave_loop_settings(loop_cpu);
            show(&receiver, state, &shared, &stop, keys, colour);
        })?
    };
    let feed = LiveFeed::new(sender, Arc::clone(&shared), !probe);
    Ok((LiveView { stop, shared, thread: Some(view) }, feed))
}

impl LiveView {
    /// Stops the redraws and clears the view, so the final report prints on a clean screen.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Answers the queue had no room for, over the run.
    pub fn missed(&self) -> u64 {
        self.shared.missed.load(Ordering::Relaxed)
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.finish();
    }
}

static RESIZED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_resize(_: libc::c_int) {
    RESIZED.store(true, Ordering::Relaxed);
}

/// Takes what the queue holds, at most a queue's worth at a time, so that a loop filling it as
/// fast as it is drained cannot keep the view from its keys and redraws.
fn drain(receiver: &Receiver<Message>, state: &mut LiveState) {
    for _ in 0..QUEUE_ANSWERS {
        match receiver.try_recv() {
            Ok(message) => state.take(message, crate::clock::now_ns()),
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
        }
    }
}

/// The view thread's loop: a tick at a time, keys, the queue drained, a redraw each second (or
/// on a resize).
fn show(
    receiver: &Receiver<Message>,
    mut state: LiveState,
    shared: &Shared,
    stop: &AtomicBool,
    keys: bool,
    colour: bool,
) {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_resize as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        libc::sigaction(libc::SIGWINCH, &action, std::ptr::null_mut());
    }
    let terminal = if keys { RawTerminal::enter(libc::STDIN_FILENO).ok() } else { None };
    let mut next_draw = Instant::now() + REDRAW_EVERY;
    let mut shown = false;
    let mut paused = false;
    let mut previous: Option<LiveSnapshot> = None;
    let mut rate: Option<f64> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut redraw = false;
        if terminal.is_some() {
            for key in read_keys(libc::STDIN_FILENO, TICK) {
                match key {
                    b'q' | b'Q' => shared.quit.store(true, Ordering::Relaxed),
                    b'r' | b'R' => {
                        drain(receiver, &mut state);
                        state.reset(crate::clock::now_ns());
                    }
                    b'p' | b'P' => {
                        paused = !paused;
                        redraw = shown;
                    }
                    _ => {}
                }
            }
        } else {
            std::thread::sleep(TICK);
        }
        drain(receiver, &mut state);
        state.tick(crate::clock::now_ns());
        redraw |= RESIZED.swap(false, Ordering::Relaxed) && shown;
        let now = Instant::now();
        if now >= next_draw {
            next_draw = now + REDRAW_EVERY;
            redraw |= !paused;
        }
        if !redraw {
            continue;
        }
        let snapshot =
            state.snapshot(crate::clock::now_ns(), shared.missed.load(Ordering::Relaxed));
        if let Some(previous) = &previous
            && let (Some((_, before)), Some((_, after))) = (previous.bulk, snapshot.bulk)
            && snapshot.taken_ns > previous.taken_ns
        {
            let seconds = (snapshot.taken_ns - previous.taken_ns) as f64 / 1e9;
            rate = Some(after.saturating_sub(before) as f64 * 8.0 / seconds);
        }
        let (width, height) = terminal_size();
        let lines = render(&snapshot, paused, rate);
        previous = Some(snapshot);
        let mut out = String::from(if shown { "\x1b[H" } else { "\x1b[H\x1b[2J" });
        for line in lines.iter().take(height.saturating_sub(1).max(1)) {
            let text: String = line.text.chars().take(width).collect();
            match (colour, line.style) {
                (true, Style::Bold) => out.push_str(&format!("\x1b[1m{text}\x1b[0m")),
                (true, Style::Alert) => out.push_str(&format!("\x1b[1;31m{text}\x1b[0m")),
                _ => out.push_str(&text),
            }
            out.push_str("\x1b[K\r\n");
        }
        out.push_str("\x1b[J");
        let _ = io::stderr().lock().write_all(out.as_bytes());
        shown = true;
    }
    if shown {
        let _ = io::stderr().lock().write_all(b"\x1b[H\x1b[J");
    }
    drop(terminal);
}

fn read_keys(fd: libc::c_int, wait: Duration) -> Vec<u8> {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, wait.as_millis() as libc::c_int) };
    if ready <= 0 || poll.revents & libc::POLLIN == 0 {
        if ready > 0 {
            // Hung up or in error: do not spin on it.
            std::thread::sleep(wait);
        }
        return Vec::new();
    }
    let mut bytes = [0u8; 64];
    match crate::net::read_fd(fd, &mut bytes) {
        Ok(count) => bytes[..count].to_vec(),
        Err(_) => Vec::new(),
    }
}

/// Columns and rows of the terminal on stderr; 80 × 24 when it does not say.
fn terminal_size() -> (usize, usize) {
    // SAFETY: TIOCGWINSZ fills the winsize it is given.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 && size.ws_row > 0 {
        (usize::from(size.ws_col), usize::from(size.ws_row))
    } else {
        (80, 24)
    }
}

/// How a line is drawn when colour is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Bold,
    /// The row of the subsegment with the highest p50.
    Alert,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub text: String,
    pub style: Style,
}

/// The table for one snapshot, line by line, before truncation to the terminal's width.
/// `rate_bits`: bulk mode's answered payload rate since the previous redraw.
pub fn render(snapshot: &LiveSnapshot, paused: bool, rate_bits: Option<f64>) -> Vec<Line> {
    let line = |text: String, style: Style| Line { text, style };
    let mut lines = Vec::new();
    let keys = if snapshot.keys { "   q quit, r reset view, p pause" } else { "" };
    let state = if paused { " [paused]" } else { "" };
    lines.push(line(
        format!(
            "{}: live view, {:.1} s{state}{keys}",
            snapshot.name,
            snapshot.span_ns as f64 / 1e9
        ),
        Style::Bold,
    ));
    let arrow = match snapshot.symbols {
        Symbols::Unicode => " → ",
        Symbols::Ascii => " -> ",
    };
    if snapshot.path.is_empty() {
        lines.push(line("path: waiting for the path announcement".to_string(), Style::Plain));
    } else {
        lines.push(line(format!("path: {}", snapshot.path.join(arrow)), Style::Plain));
    }
    lines.push(line(String::new(), Style::Plain));
    if let Some(unit) = snapshot.unit {
        let width = snapshot
            .rows
            .iter()
            .chain(&snapshot.end_to_end)
            .map(|row| row.label.chars().count())
            .max()
            .unwrap_or(0)
            .max(10);
        lines.push(line(
            format!(
                "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}   {:>9} {:>9}",
                format!("({})", unit.name),
                "count",
                "last",
                "p50",
                "p99",
                "max",
                "jitter",
                "share",
                "1s p50",
                "1s p99"
            ),
            Style::Bold,
        ));
        let worst = snapshot
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| row.count > 0)
            .max_by_key(|(_, row)| row.p50_ns)
            .map(|(index, _)| index);
        let show = |ns: Option<u64>| ns.map_or_else(|| "-".to_string(), |ns| unit.show(ns as f64));
        let mut row_line = |row: &LiveRow, style: Style, share: bool| {
            let has = row.count > 0;
            let share =
                if share && has { format!("{:.0}%", row.share * 100.0) } else { String::new() };
            lines.push(line(
                format!(
                    "{:<width$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}   {:>9} {:>9}",
                    row.label,
                    row.count,
                    row.last_ns.map_or_else(|| "-".to_string(), |ns| unit.show(ns as f64)),
                    show(has.then_some(row.p50_ns)),
                    show(has.then_some(row.p99_ns)),
                    show(has.then_some(row.max_ns)),
                    show(has.then_some(row.jitter_ns)),
                    share,
                    show(row.recent_p50_ns),
                    show(row.recent_p99_ns),
                ),
                style,
            ));
        };
        for (index, row) in snapshot.rows.iter().enumerate() {
            let style = if Some(index) == worst { Style::Alert } else { Style::Plain };
            row_line(row, style, true);
        }
        if let Some(row) = &snapshot.end_to_end {
            row_line(row, Style::Bold, false);
        }
        lines.push(line(String::new(), Style::Plain));
    }
    let loss =
        if snapshot.sent == 0 { 0.0 } else { snapshot.lost as f64 * 100.0 / snapshot.sent as f64 };
    let outages = match snapshot.outages {
        0 => String::new(),
        1 => ", 1 outage".to_string(),
        count => format!(", {count} outages"),
    };
    // The view's own queue overflowing is no loss of the run's: said apart.
    let missed = match snapshot.missed {
        0 => String::new(),
        count => format!("; the view missed {count} answers (its queue was full)"),
    };
    lines.push(line(
        format!(
            "so far: sent {}, answered {}, in flight {}, lost {} ({loss:.2}%){outages}{missed}",
            snapshot.sent, snapshot.answered, snapshot.in_flight, snapshot.lost
        ),
        Style::Plain,
    ));
    if let Some((sent, answered)) = snapshot.bulk {
        let average = if snapshot.taken_ns > 0 && snapshot.span_ns > 0 {
            format!(", {} on average", bits(answered as f64 * 8e9 / snapshot.span_ns as f64))
        } else {
            String::new()
        };
        let now = rate_bits.map_or_else(String::new, |rate| format!(", now {}", bits(rate)));
        let (of, eta) = match snapshot.stdin_bytes {
            Some(total) => {
                let share = sent as f64 * 100.0 / total.max(1) as f64;
                let left_bits = total.saturating_sub(answered) as f64 * 8.0;
                let eta = rate_bits
                    .filter(|&rate| rate > 0.0)
                    .map_or_else(String::new, |rate| format!(", ETA {}", eta(left_bits / rate)));
                (format!(" of {} ({share:.0}%)", bytes(total)), eta)
            }
            None => (String::new(), String::new()),
        };
        lines.push(line(
            format!(
                "bulk: {}{of} sent, {} answered{now}{average}{eta}",
                bytes(sent),
                bytes(answered)
            ),
            Style::Plain,
        ));
    }
    if let Some(verdict) = &snapshot.verdict {
        lines.push(line(format!("verdict so far: {verdict}"), Style::Plain));
    }
    lines
}

fn bytes(count: u64) -> String {
    match count {
        count if count >= 1 << 30 => format!("{:.2} GiB", count as f64 / (1u64 << 30) as f64),
        count if count >= 1 << 20 => format!("{:.2} MiB", count as f64 / (1u64 << 20) as f64),
        count if count >= 1 << 10 => format!("{:.1} KiB", count as f64 / 1024.0),
        count => format!("{count} B"),
    }
}

/// Seconds left, as a person reads them: `42 s`, `3 min 20 s`, `2 h 05 min`.
fn eta(seconds: f64) -> String {
    let seconds = seconds.round().min(360_000.0) as u64;
    match seconds {
        seconds if seconds < 60 => format!("{seconds} s"),
        seconds if seconds < 3600 => format!("{} min {:02} s", seconds / 60, seconds % 60),
        seconds => format!("{} h {:02} min", seconds / 3600, seconds % 3600 / 60),
    }
}

fn bits(per_second: f64) -> String {
    match per_second {
        rate if rate >= 1e9 => format!("{:.2} Gbit/s", rate / 1e9),
        rate if rate >= 1e6 => format!("{:.2} Mbit/s", rate / 1e6),
        rate => format!("{:.1} kbit/s", rate / 1e3),
    }
}

/// The terminal settings to restore, for the guard and the panic hook.
static SAVED: Mutex<Option<(libc::c_int, libc::termios)>> = Mutex::new(None);

/// stdin in non-canonical mode without echo while it lives.
struct RawTerminal;

impl RawTerminal {
    fn enter(fd: libc::c_int) -> io::Result<RawTerminal> {
        // SAFETY: tcgetattr fills the termios it is given; tcsetattr reads one.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return Err(io::Error::last_os_error());
            }
            *SAVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((fd, saved));
            install_panic_hook();
            if SAVED_FOR_SIGNALS.set((fd, saved)).is_ok() {
                install_fatal_signal_handlers();
            }
            let mut raw = saved;
            // Keys one at a time, not echoed; ISIG stays, so Ctrl-C still interrupts.
            raw.c_lflag &= !(libc::ICANON | libc::ECHO);
            raw.c_cc[libc::VMIN] = 1;
            raw.c_cc[libc::VTIME] = 0;
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(RawTerminal)
    }
}

/// Puts back what [`RawTerminal::enter`] changed, once.
fn restore_terminal() {
    let saved = SAVED.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    if let Some((fd, saved)) = saved {
        // SAFETY: a termios read by tcgetattr.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// The same settings for the handlers of the signals that would kill the process (SIGINT and
/// SIGTERM do not: they end the run, and the guard restores). Set once, before the handlers,
/// and only read by them: no lock in a signal handler.
static SAVED_FOR_SIGNALS: std::sync::OnceLock<(libc::c_int, libc::termios)> =
    std::sync::OnceLock::new();

extern "C" fn on_fatal_signal(signal: libc::c_int) {
    if let Some((fd, saved)) = SAVED_FOR_SIGNALS.get() {
        // SAFETY: tcsetattr, signal and raise are async-signal-safe; `saved` is plain data.
        unsafe { libc::tcsetattr(*fd, libc::TCSANOW, saved) };
    }
    // SAFETY: as above; the default action then ends the process as the signal meant to.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// SIGQUIT (Ctrl-\) and SIGHUP kill the process: restore the terminal on the way.
fn install_fatal_signal_handlers() {
    for signal in [libc::SIGQUIT, libc::SIGHUP] {
        // SAFETY: the handler only makes async-signal-safe calls.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn install_panic_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Ending;
    use crate::wire::{Header, Kind, Role, emit_frame};

    fn feed(capacity: usize) -> (LiveFeed, Receiver<Message>, Arc<Shared>) {
        let (sender, receiver) = mpsc::sync_channel(capacity);
        let shared = Arc::new(Shared::default());
        (LiveFeed::new(sender, Arc::clone(&shared), false), receiver, shared)
    }

    /// A → B → Z: a frame whose A ⇄ B and B ⇄ Z round trips took `a_b_ns` and `b_z_ns`.
    fn frame(sequence: u64, a_b_ns: u64, b_z_ns: u64) -> (Vec<u8>, ReadStamp) {
        let stamps = [
            Stamp::new(0, Direction::Down, 0, 0),
            Stamp::new(1, Direction::Down, 0, 0),
            Stamp::new(2, Direction::Turn, 0, 0),
            Stamp::new(1, Direction::Up, b_z_ns, b_z_ns),
        ];
        let header =
            Header { flags: 0, kind: Kind::Data, record_count: 4, sequence, payload_len: 0 };
        let mut bytes = vec![0; header.total_len()];
        emit_frame(&mut bytes, &header, &[], &stamps, &[]);
        (bytes, ReadStamp { read_ns: a_b_ns + b_z_ns, ..ReadStamp::default() })
    }

    fn answer(feed: &mut LiveFeed, sequence: u64, a_b_ns: u64, b_z_ns: u64) {
        let (bytes, read) = frame(sequence, a_b_ns, b_z_ns);
        feed.answer(&Frame::new_checked(&bytes[..]).unwrap(), read);
    }

    fn drained(receiver: &Receiver<Message>, state: &mut LiveState, now_ns: u64) {
        while let Ok(message) = receiver.try_recv() {
            state.take(message, now_ns);
        }
    }

    fn path() -> Vec<PathEntry> {
        crate::report::tests::a_b_z_path()
    }

    #[test]
    fn test_the_view_keeps_its_own_statistics_by_interval_and_starts_over_on_r() {
        let (mut feed, receiver, _shared) = feed(1024);
        let mut state = LiveState::new("A", Presentation::default(), false, 0);
        let mut run = Run::ended(Ending::Complete, true);
        feed.counters_if_due(1, &run);
        drained(&receiver, &mut state, 1);
        assert!(state.snapshot(1, 0).rows.is_empty(), "no path yet");
        feed.path(&path());
        for sequence in 0..100 {
            answer(&mut feed, sequence, 10_000, 40_000);
        }
        run.sequencing.sent = 100;
        run.sequencing.answered = 100;
        // The counters go at most every COUNTERS_EVERY_NS.
        feed.counters_if_due(2, &run);
        feed.counters_if_due(COUNTERS_EVERY_NS + 1, &run);
        drained(&receiver, &mut state, COUNTERS_EVERY_NS + 1);
        let snapshot = state.snapshot(COUNTERS_EVERY_NS + 1, 0);
        assert_eq!(snapshot.path, ["A", "B", "Z"]);
        assert_eq!((snapshot.sent, snapshot.answered), (100, 100));
        let link = snapshot.rows.iter().find(|row| row.label == "B ⇄ Z").unwrap();
        assert_eq!((link.count, link.last_ns), (100, Some(40_000)));
        // Quantiles come from the histogram: to its precision (3 significant digits). Before
        // the first interval is complete, the current one is shown.
        assert!(link.recent_p50_ns.unwrap().abs_diff(40_000) < 100, "{:?}", link.recent_p50_ns);
        assert!((link.share - 0.8).abs() < 0.01, "{}", link.share);
        assert_eq!(snapshot.end_to_end.as_ref().unwrap().last_ns, Some(50_000));
        assert!(snapshot.verdict.as_deref().unwrap().contains("B ⇄ Z"), "{:?}", snapshot.verdict);
        // The interval closes; the next one has frames twice as slow on B ⇄ Z.
        let first_ends_ns = COUNTERS_EVERY_NS + 1 + INTERVAL_NS;
        state.tick(first_ends_ns);
        for sequence in 100..200 {
            answer(&mut feed, sequence, 10_000, 80_000);
        }
        drained(&receiver, &mut state, first_ends_ns);
        let second_ends_ns = first_ends_ns + INTERVAL_NS;
        state.tick(second_ends_ns);
        let snapshot = state.snapshot(second_ends_ns, 0);
        let link = snapshot.rows.iter().find(|row| row.label == "B ⇄ Z").unwrap();
        assert_eq!(link.count, 200, "the whole run's rows keep every answer");
        let recent_p50 = link.recent_p50_ns.unwrap();
        assert!(recent_p50.abs_diff(80_000) < 100, "the last interval's p50: {recent_p50}");
        // r: the view starts over, counters included; the run does not.
        state.reset(second_ends_ns);
        run.sequencing.sent = 250;
        feed.counters_if_due(second_ends_ns, &run);
        drained(&receiver, &mut state, second_ends_ns);
        let snapshot = state.snapshot(second_ends_ns, 0);
        assert_eq!((snapshot.sent, snapshot.span_ns), (150, 0));
        assert!(snapshot.rows.iter().all(|row| row.count == 0));
        // A changed path: the view starts over on it.
        let mut longer = path();
        longer.insert(2, PathEntry::new(Role::Relay, "C", None, None));
        feed.path(&longer);
        drained(&receiver, &mut state, second_ends_ns);
        assert_eq!(state.snapshot(second_ends_ns, 0).path, ["A", "B", "C", "Z"]);
    }

    #[test]
    fn test_a_full_queue_drops_and_counts_and_a_path_never_falls_behind_its_answers() {
        let (mut feed, receiver, shared) = feed(4);
        feed.path(&path());
        for sequence in 0..10 {
            answer(&mut feed, sequence, 10_000, 40_000);
        }
        // The path and three answers fit; seven found the queue full and were counted.
        assert_eq!(shared.missed.load(Ordering::Relaxed), 7);
        // A new path with no room waits, and so do the answers after it.
        feed.path(&path()[..2]);
        answer(&mut feed, 10, 10_000, 40_000);
        assert_eq!(shared.missed.load(Ordering::Relaxed), 8);
        let kinds = |receiver: &Receiver<Message>| -> Vec<&'static str> {
            receiver
                .try_iter()
                .map(|message| match message {
                    Message::Path(_) => "path",
                    Message::Answer(_) => "answer",
                    Message::Counters(_) => "counters",
                })
                .collect()
        };
        assert_eq!(kinds(&receiver), ["path", "answer", "answer", "answer"]);
        answer(&mut feed, 11, 10_000, 40_000);
        assert_eq!(kinds(&receiver), ["path", "answer"], "the waiting path went first");
        assert_eq!(shared.missed.load(Ordering::Relaxed), 8);
    }

    #[test]
    fn test_an_answer_keeps_a_long_chains_records() {
        let stamps: Vec<Stamp> =
            (0..12).map(|hop| Stamp::new(hop, Direction::Down, u64::from(hop), 0)).collect();
        let header =
            Header { flags: 0, kind: Kind::Data, record_count: 12, sequence: 7, payload_len: 0 };
        let mut bytes = vec![0; header.total_len()];
        emit_frame(&mut bytes, &header, &[], &stamps, &[]);
        let answer = Answer::of(&Frame::new_checked(&bytes[..]).unwrap(), ReadStamp::default());
        assert_eq!((answer.records(), answer.sequence), (&stamps[..], 7));
        let (bytes, read) = frame(3, 1, 2);
        let answer = Answer::of(&Frame::new_checked(&bytes[..]).unwrap(), read);
        assert!(matches!(answer.records, Records::Inline { len: 4, .. }));
        assert_eq!(answer.records().len(), 4);
    }

    #[test]
    #[ignore = "a measurement: cargo test --release --lib live -- --ignored --nocapture"]
    fn measure_the_loops_cost_per_answer() {
        let (mut feed, receiver, shared) = feed(QUEUE_ANSWERS);
        feed.path(&path());
        let frames: Vec<(Vec<u8>, ReadStamp)> =
            (0..1000).map(|sequence| frame(sequence, 10_000, 5_000 + sequence * 7)).collect();
        // The view's side, as its thread does it: drained every tick into its chains.
        let stop = Arc::new(AtomicBool::new(false));
        let view = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut state = LiveState::new("A", Presentation::default(), false, 0);
                let (mut took, mut snapshots) = (Duration::ZERO, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    drain(&receiver, &mut state);
                    let started = Instant::now();
                    let _ = state.snapshot(0, 0);
                    took += started.elapsed();
                    snapshots += 1;
                }
                took / snapshots.max(1)
            })
        };
        let answers = 1_000_000u32;
        let (started, mut pushing) = (Instant::now(), Duration::ZERO);
        for batch in 0..answers / 1000 {
            let batch_started = Instant::now();
            for (bytes, read) in &frames {
                feed.answer(&Frame::new_unchecked(&bytes[..]), *read);
            }
            pushing += batch_started.elapsed();
            // About 100 000 answers a second, as a fast probe run.
            let due = started + Duration::from_millis(10) * (batch + 1);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let wall = started.elapsed();
        let missed = shared.missed.load(Ordering::Relaxed);
        stop.store(true, Ordering::Relaxed);
        let snapshot = view.join().unwrap();
        println!(
            "the loop's push per answer: {:?}; {answers} answers over {wall:?}, {missed} missed; \
             a snapshot on the view's thread: {snapshot:?}",
            pushing / answers
        );
    }

    fn row(label: &str, count: u64, p50_ns: u64) -> LiveRow {
        LiveRow {
            label: label.to_string(),
            count,
            last_ns: Some(p50_ns as i64),
            p50_ns,
            p99_ns: p50_ns * 2,
            max_ns: p50_ns * 3,
            jitter_ns: 500,
            share: 0.5,
            recent_p50_ns: Some(p50_ns),
            recent_p99_ns: None,
        }
    }

    #[test]
    fn test_the_table_has_a_row_per_subsegment_and_marks_the_worst() {
        let snapshot = LiveSnapshot {
            name: "A".to_string(),
            taken_ns: 5_000_000_000,
            span_ns: 2_500_000_000,
            path: vec!["A".to_string(), "B".to_string(), "Z".to_string()],
            symbols: Symbols::Ascii,
            unit: Some(Unit { name: "us", ns: 1e3, decimals: 1 }),
            rows: vec![row("A - B", 10, 20_000), row("B", 10, 5_000), row("B - Z", 10, 40_000)],
            end_to_end: Some(row("end-to-end", 10, 80_000)),
            sent: 12,
            answered: 10,
            lost: 1,
            in_flight: 1,
            verdict: Some("B - Z adds the most delay".to_string()),
            keys: true,
            ..LiveSnapshot::default()
        };
        let lines = render(&snapshot, true, None);
        let text: Vec<&str> = lines.iter().map(|line| line.text.as_str()).collect();
        assert!(text[0].contains("A: live view, 2.5 s [paused]") && text[0].contains("q quit"));
        assert_eq!(text[1], "path: A -> B -> Z");
        assert!(text[3].contains("count") && text[3].contains("1s p99"), "{}", text[3]);
        let worst = lines.iter().find(|line| line.text.starts_with("B - Z")).unwrap();
        assert_eq!(worst.style, Style::Alert);
        assert!(worst.text.contains("40.0") && worst.text.contains("120.0"), "{}", worst.text);
        assert!(text.iter().any(|line| line.starts_with("end-to-end")));
        assert!(text.contains(&"so far: sent 12, answered 10, in flight 1, lost 1 (8.33%)"));
        assert!(text.contains(&"verdict so far: B - Z adds the most delay"));
        let missed = render(&LiveSnapshot { missed: 3, ..snapshot.clone() }, false, None);
        assert!(
            missed.iter().any(|line| line
                .text
                .ends_with("lost 1 (8.33%); the view missed 3 answers (its queue was full)")),
            "{missed:?}"
        );
        // Nothing that the final report's lines would be taken for.
        assert!(!text.iter().any(|line| line.contains("verdict:") || line.contains("frames:")));
    }

    #[test]
    fn test_bulk_mode_shows_the_bytes_and_the_rate() {
        let snapshot = LiveSnapshot {
            taken_ns: 1,
            span_ns: 2_000_000_000,
            bulk: Some((3 << 20, 2 << 20)),
            ..LiveSnapshot::default()
        };
        let lines = render(&snapshot, false, Some(12.5e6));
        let bulk = lines.iter().find(|line| line.text.starts_with("bulk:")).unwrap();
        assert_eq!(
            bulk.text,
            "bulk: 3.00 MiB sent, 2.00 MiB answered, now 12.50 Mbit/s, 8.39 Mbit/s on average"
        );
        assert!(lines.iter().any(|line| line.text.contains("waiting for the path")));
        // stdin a regular file of 12 MiB: how far, and when it will be through at this rate.
        let file = LiveSnapshot { stdin_bytes: Some(12 << 20), ..snapshot };
        let lines = render(&file, false, Some(8.0 * f64::from(1u32 << 20)));
        let bulk = lines.iter().find(|line| line.text.starts_with("bulk:")).unwrap();
        assert_eq!(
            bulk.text,
            "bulk: 3.00 MiB of 12.00 MiB (25%) sent, 2.00 MiB answered, now 8.39 Mbit/s, 8.39 \
             Mbit/s on average, ETA 10 s"
        );
        assert_eq!(
            (eta(59.4), eta(200.0), eta(7_500.0)),
            ("59 s".into(), "3 min 20 s".into(), "2 h 05 min".into())
        );
    }
}
