//! The source: reads stdin in blocks, sends each as a stamped frame to the first hop, writes
//! the payload of every answer to stdout, and feeds the answers' stamps to the statistics.
//! One mio poll loop, like the hops; the report is printed by `main` from what this returns.
//!
//! stdin and stdout may be pipes, terminals, sockets, regular files or /dev/null. The last two
//! cannot be polled (epoll refuses them) and never block for long, so they are treated as
//! always ready and used with plain blocking calls.
//!
//! In probe mode (`--count`) the frames are generated on a schedule instead of read, and the
//! answers are checked against the pattern instead of written out. `--window` caps the frames in
//! flight either way; `--window 1` is a ping-pong.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::buffer::Buffer;
use crate::clock;
use crate::log_line;
use crate::net::{self, Io, NonBlocking};
use crate::stats::{Chain, Sequencing};
use crate::tuning;
use crate::wire::{
    self, Direction, Fault, HEADER_LEN, Header, Kind, MAX_FRAME_LEN, PathEntry, RECORD_LEN, Role,
    Stamp, UNSOLICITED,
};

const UPSTREAM: Token = Token(0);
const STDIN: Token = Token(1);
const STDOUT: Token = Token(2);
/// Frames waiting to be sent; reading stdin stops when a block no longer fits.
const SEND_BUFFER_LEN: usize = 256 * 1024 + MAX_FRAME_LEN;
/// Answer payloads waiting for stdout.
const STDOUT_BUFFER_LEN: usize = 256 * 1024 + MAX_FRAME_LEN;
const READ_CHUNK: usize = 64 * 1024;
/// Offset of the write stamp inside the source's own (first) record.
const FIRST_WRITE_STAMP: std::ops::Range<usize> = HEADER_LEN + 12..HEADER_LEN + RECORD_LEN;
/// Where the payload starts in a frame built by the source (one record: its own).
const PAYLOAD_AT: usize = HEADER_LEN + RECORD_LEN;

pub struct SourceConfig {
    pub name: String,
    pub forward_to: (SocketAddr, String),
    pub block_size: usize,
    pub timeout: Duration,
    /// Frames in flight at most; `None`: as many as the buffers hold.
    pub window: Option<u64>,
    /// Generated frames instead of stdin; their answers are not written to stdout.
    pub probe: Option<Probe>,
    /// Spin on the poll instead of sleeping.
    pub busy_poll: bool,
}

/// Probe mode: `count` frames of `size` bytes, one every `interval` (0: back to back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub count: u64,
    pub size: usize,
    pub interval: Duration,
}

/// How the run ended, for the report and the exit code.
pub enum Ending {
    /// Every frame came back and the chain closed cleanly.
    Complete,
    /// Interrupted by SIGINT: report what came back so far.
    Interrupted,
    Failed(String),
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

struct Source {
    config: SourceConfig,
    upstream: TcpStream,
    connecting: bool,
    upstream_readable: bool,
    upstream_writable: bool,
    upstream_read_closed: bool,
    upstream_write_shut: bool,
    stdin: Stdio,
    stdout: Stdio,
    send: Buffer,
    /// Offsets (within `send.data()`) of frames whose write stamp is still to be set.
    unstamped: Vec<usize>,
    receive: Buffer,
    receive_stalled: bool,
    receive_read_ns: u64,
    to_stdout: Buffer,
    run: Run,
    fault: Option<Fault>,
    last_progress_ns: u64,
    next_probe_ns: u64,
}

pub fn run(config: SourceConfig) -> io::Result<Run> {
    tuning::catch_stop_signals();
    let mut poll = Poll::new()?;
    let (target, text) = config.forward_to.clone();
    let mut upstream = net::connect(target).map_err(|error| {
        io::Error::new(error.kind(), format!("cannot reach first hop {text} ({target}): {error}"))
    })?;
    poll.registry().register(&mut upstream, UPSTREAM, Interest::READABLE | Interest::WRITABLE)?;
    let stdin = match config.probe {
        None => Stdio::open(&poll, libc::STDIN_FILENO, STDIN, Interest::READABLE)?,
        Some(_) => Stdio { fd: -1, pollable: false, ready: true, closed: false, _restore: None },
    };
    let stdout = Stdio::open(&poll, libc::STDOUT_FILENO, STDOUT, Interest::WRITABLE)?;

    let mut send = Buffer::with_capacity(SEND_BUFFER_LEN)?;
    let mut announcement = Vec::new();
    PathEntry::new(Role::Source, &config.name, upstream.local_addr().ok(), None)
        .emit(&mut announcement);
    send.push(&wire::control_frame(Kind::Path, &announcement));

    let now_ns = clock::now_ns();
    let mut source = Source {
        config,
        upstream,
        connecting: true,
        upstream_readable: false,
        upstream_writable: false,
        upstream_read_closed: false,
        upstream_write_shut: false,
        stdin,
        stdout,
        send,
        unstamped: Vec::new(),
        receive: Buffer::with_capacity(MAX_FRAME_LEN)?,
        receive_stalled: false,
        receive_read_ns: 0,
        to_stdout: Buffer::with_capacity(STDOUT_BUFFER_LEN)?,
        run: Run {
            ending: Ending::Complete,
            chain: None,
            path: Vec::new(),
            sequencing: Sequencing::default(),
            payload_bytes: 0,
            unsolicited_bytes: 0,
            corrupted: 0,
            unwritten_bytes: 0,
            first_send_ns: None,
            last_answer_ns: None,
        },
        fault: None,
        last_progress_ns: now_ns,
        next_probe_ns: now_ns,
    };
    source.ending_loop(&mut poll);
    Ok(source.run)
}

impl Source {
    fn ending_loop(&mut self, poll: &mut Poll) {
        let mut events = Events::with_capacity(16);
        loop {
            let timeout_ns = self.give_up_after().as_nanos() as u64;
            let before_ns = clock::now_ns();
            let stdin_ready = !self.stdin.pollable && self.wants_stdin();
            let always_ready = (stdin_ready && self.config.probe.is_none())
                || (!self.stdout.pollable && !self.to_stdout.is_empty());
            let waited_ns = before_ns.saturating_sub(self.last_progress_ns);
            let mut wait_ns = timeout_ns.saturating_sub(waited_ns).max(1_000_000);
            if stdin_ready && self.config.probe.is_some() {
                wait_ns = wait_ns.min(self.next_probe_ns.saturating_sub(before_ns));
            }
            let spin = always_ready || self.config.busy_poll;
            let wait = if spin { Duration::ZERO } else { Duration::from_nanos(wait_ns) };
            if let Err(error) = poll.poll(&mut events, Some(wait))
                && error.kind() != io::ErrorKind::Interrupted
            {
                self.run.ending = Ending::Failed(format!("poll: {error}"));
                return;
            }
            let now_ns = clock::now_ns();
            if tuning::stop_requested() {
                self.finish_stdout_after_interrupt(poll, &mut events);
                self.run.ending = Ending::Interrupted;
                return;
            }
            for event in events.iter() {
                match event.token() {
                    UPSTREAM => {
                        self.upstream_readable |=
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        self.upstream_writable |=
                            event.is_writable() || event.is_write_closed() || event.is_error();
                    }
                    STDIN => self.stdin.ready = true,
                    STDOUT => self.stdout.ready = true,
                    _ => {}
                }
            }
            loop {
                match self.round(now_ns) {
                    Ok(true) => self.last_progress_ns = now_ns,
                    Ok(false) => break,
                    Err(message) => {
                        self.run.ending = Ending::Failed(message);
                        return;
                    }
                }
            }
            if let Some(ending) = self.finished() {
                self.run.ending = ending;
                return;
            }
            let waiting_for_producer = !self.stdin.closed
                && self.run.sequencing.missing() == 0
                && self.send.is_empty()
                && !self.connecting
                && self.fault.is_none();
            if waiting_for_producer {
                self.last_progress_ns = now_ns;
            } else if clock::now_ns().saturating_sub(self.last_progress_ns) >= timeout_ns {
                self.run.ending = Ending::Failed(self.timeout_message());
                return;
            }
        }
    }

    /// After Ctrl-C: what was answered and counted goes on to stdout too, for at most the
    /// timeout or until a second Ctrl-C; what a stuck reader leaves behind is counted in the
    /// report.
    fn finish_stdout_after_interrupt(&mut self, poll: &mut Poll, events: &mut Events) {
        let deadline_ns = clock::now_ns() + self.config.timeout.as_nanos() as u64;
        loop {
            if let Err(error) = self.write_stdout() {
                log_line!("{}: {error}", self.config.name);
                break;
            }
            let now_ns = clock::now_ns();
            if self.to_stdout.is_empty() || now_ns >= deadline_ns || tuning::stop_signals() > 1 {
                break;
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
            && self.send.room() >= self.frame_room()
            && self.config.window.is_none_or(|window| self.run.sequencing.in_flight() < window)
    }

    fn frame_room(&self) -> usize {
        PAYLOAD_AT + self.config.probe.map_or(self.config.block_size, |probe| probe.size)
    }

    /// Turns the payload already placed at `PAYLOAD_AT` in the send buffer's tail into a frame.
    fn append_frame(&mut self, now_ns: u64, payload_len: usize) {
        let sequence = self.run.sequencing.sent_one();
        let tail = self.send.tail(self.frame_room()).expect("room checked");
        let header = Header { kind: Kind::Data, record_count: 1, sequence, payload_len };
        header.emit(&mut tail[..HEADER_LEN]);
        // The write stamp is set in `send_frames`, just before the write.
        let stamp = Stamp { hop: 0, direction: Direction::Down, read_ns: now_ns, write_ns: 0 };
        stamp.emit(&mut tail[HEADER_LEN..PAYLOAD_AT]);
        self.unstamped.push(self.send.len());
        self.send.commit(PAYLOAD_AT + payload_len);
        self.run.first_send_ns.get_or_insert(now_ns);
    }

    /// Probe mode: frames of a recognisable pattern, on schedule.
    fn generate_probes(&mut self, now_ns: u64, probe: Probe) -> bool {
        let mut progress = false;
        while self.wants_stdin() && now_ns >= self.next_probe_ns {
            let tail = self.send.tail(self.frame_room()).expect("room checked");
            for (index, byte) in tail[PAYLOAD_AT..PAYLOAD_AT + probe.size].iter_mut().enumerate() {
                *byte = index as u8;
            }
            self.append_frame(now_ns, probe.size);
            self.next_probe_ns = now_ns + probe.interval.as_nanos() as u64;
            if self.run.sequencing.sent == probe.count {
                self.stdin.closed = true;
            }
            progress = true;
        }
        progress
    }

    /// One pass of connect, stdin, send, receive and stdout; `Ok(true)` when anything moved.
    fn round(&mut self, now_ns: u64) -> Result<bool, String> {
        let mut progress = false;
        if self.connecting {
            if !self.upstream_writable {
                return Ok(false);
            }
            match net::connect_result(&self.upstream) {
                Ok(true) => {
                    self.connecting = false;
                    progress = true;
                }
                Ok(false) => {
                    self.upstream_writable = false;
                    return Ok(false);
                }
                Err(error) => {
                    let (target, text) = &self.config.forward_to;
                    return Err(format!("cannot reach first hop {text} ({target}): {error}"));
                }
            }
        }
        progress |= self.read_stdin(now_ns)?;
        progress |= self.send_frames()?;
        progress |= self.receive_answers(now_ns)?;
        progress |= self.write_stdout()?;
        Ok(progress)
    }

    fn read_stdin(&mut self, now_ns: u64) -> Result<bool, String> {
        if let Some(probe) = self.config.probe {
            return Ok(self.generate_probes(now_ns, probe));
        }
        let mut progress = false;
        while self.stdin.ready && self.wants_stdin() {
            let block = self.config.block_size;
            let tail = self.send.tail(self.frame_room()).expect("room checked");
            match net::classify(|| {
                net::read_fd(self.stdin.fd, &mut tail[PAYLOAD_AT..PAYLOAD_AT + block])
            }) {
                Io::Done(count) => {
                    self.append_frame(now_ns, count);
                    progress = true;
                }
                Io::Closed => {
                    self.stdin.closed = true;
                    progress = true;
                }
                Io::WouldBlock => self.stdin.ready = false,
                Io::Failed(error) => return Err(format!("reading stdin: {error}")),
            }
        }
        Ok(progress)
    }

    fn send_frames(&mut self) -> Result<bool, String> {
        if self.connecting {
            return Ok(false);
        }
        if !self.unstamped.is_empty() && self.upstream_writable {
            let write_ns = clock::now_ns().to_be_bytes();
            let data = self.send.data_mut();
            for offset in self.unstamped.drain(..) {
                data[offset + FIRST_WRITE_STAMP.start..offset + FIRST_WRITE_STAMP.end]
                    .copy_from_slice(&write_ns);
            }
        }
        let mut progress = false;
        while self.upstream_writable && !self.send.is_empty() && self.unstamped.is_empty() {
            match net::classify(|| self.upstream.write(self.send.data())) {
                Io::Done(count) => {
                    self.send.consume(count);
                    progress = true;
                }
                Io::WouldBlock => self.upstream_writable = false,
                Io::Closed => return Err(self.broken("the first hop stopped reading")),
                Io::Failed(error) => return Err(self.broken(&format!("sending: {error}"))),
            }
        }
        let nothing_left = self.stdin.closed || self.fault.is_some();
        if nothing_left && self.send.is_empty() && !self.upstream_write_shut {
            self.upstream_write_shut = true;
            let _ = self.upstream.shutdown(Shutdown::Write);
            progress = true;
        }
        Ok(progress)
    }

    fn receive_answers(&mut self, now_ns: u64) -> Result<bool, String> {
        let mut progress = false;
        while self.upstream_readable
            && !self.upstream_read_closed
            && !self.receive_stalled
            && !self.connecting
        {
            let want = self.receive.room().min(READ_CHUNK);
            if want == 0 {
                break;
            }
            let tail = self.receive.tail(want).expect("room checked");
            match net::classify(|| self.upstream.read(&mut tail[..want])) {
                Io::Done(count) => {
                    self.receive.commit(count);
                    self.receive_read_ns = now_ns;
                    progress = true;
                }
                Io::Closed => {
                    self.upstream_read_closed = true;
                    progress = true;
                }
                Io::WouldBlock => self.upstream_readable = false,
                Io::Failed(error) => return Err(self.broken(&format!("receiving: {error}"))),
            }
        }
        self.receive_stalled = false;
        loop {
            let frame = match wire::next_frame(self.receive.data()) {
                Ok(Some(frame)) => frame,
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
                    let pattern = (0..=u8::MAX).cycle();
                    if probing
                        && !frame.payload().iter().copied().eq(pattern.take(frame.payload_len()))
                    {
                        self.run.corrupted += 1;
                    }
                    if frame.sequence() == UNSOLICITED {
                        self.run.unsolicited_bytes += frame.payload_len() as u64;
                    } else {
                        self.run.sequencing.answered_one(frame.sequence());
                        self.run.payload_bytes += frame.payload_len() as u64;
                        self.run.last_answer_ns = Some(self.receive_read_ns);
                        if let Some(chain) = self.run.chain.as_mut() {
                            chain.record(&frame, self.receive_read_ns);
                        }
                    }
                }
                Kind::Path => {
                    let path = PathEntry::parse_all(frame.payload())
                        .map_err(|error| format!("bad path announcement: {error}"))?;
                    self.run.chain = Chain::new(path.clone());
                    self.run.path = path;
                }
                Kind::Fault => {
                    let fault = Fault::parse(frame.payload());
                    self.fault.get_or_insert(fault);
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
        if !(self.upstream_read_closed && self.to_stdout.is_empty()) {
            return None;
        }
        if let Some(fault) = &self.fault {
            return Some(Ending::Failed(self.describe_fault(fault)));
        }
        if !self.receive.is_empty() {
            return Some(Ending::Failed(
                self.broken("the chain closed in the middle of an answer"),
            ));
        }
        let missing = self.run.sequencing.missing();
        if missing > 0 || !self.stdin.closed {
            return Some(Ending::Failed(self.broken(&format!(
                "the chain closed with {missing} of {} frames unanswered",
                self.run.sequencing.sent
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
        format!(
            "subsegment {here} ⇄ {below} failed after {} of {} frames came back: {}",
            self.run.sequencing.answered, self.run.sequencing.sent, fault.message
        )
    }

    fn broken(&self, what: &str) -> String {
        let (target, text) = &self.config.forward_to;
        match &self.fault {
            Some(fault) => self.describe_fault(fault),
            None => format!("connection to first hop {text} ({target}): {what}"),
        }
    }

    /// The timeout, plus (once connected) a grace of up to a second: the hops time out on the
    /// same `--timeout`, and the one next to a stuck peer reports it in-band; the source must
    /// still be listening then to name the subsegment.
    fn give_up_after(&self) -> Duration {
        if self.connecting {
            return self.config.timeout;
        }
        self.config.timeout + self.config.timeout.min(Duration::from_secs(1))
    }

    fn timeout_message(&self) -> String {
        let seconds = self.give_up_after().as_secs_f64();
        if let Some(fault) = &self.fault {
            return self.describe_fault(fault);
        }
        let (target, text) = &self.config.forward_to;
        if self.connecting {
            return format!(
                "cannot reach first hop {text} ({target}): timed out after {seconds} s"
            );
        }
        if self.run.path.is_empty() {
            // Not even the path announcement came back: nothing names a hop beyond the first.
            return format!(
                "no answer through first hop {text} ({target}) for {seconds} s: the path \
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
