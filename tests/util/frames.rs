//! A tiny protocol client for tests that must act as a hop's upstream by hand (send a PATH, send
//! DATA frames, read the answers, or misbehave on purpose), and the /proc readings the tests
//! take of a hop from outside (open descriptors, resident memory, CPU time).
//!
//! Frames are built and parsed with the crate's own `wire` module, so the client speaks exactly
//! what the binary speaks; what the tests then assert about the answers is their own business.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use subsegment_tcp_speeds::wire::{
    self, Direction, Header, Kind, PathEntry, Role, Stamp, emit_frame,
};

/// How long a client waits for one answer before the test fails.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// A PATH frame holding only the source's entry, as the source sends it first.
pub fn path_frame(name: &str) -> Vec<u8> {
    let mut announcement = Vec::new();
    PathEntry::new(Role::Source, name, None, None).emit(&mut announcement);
    wire::control_frame(Kind::Path, &announcement)
}

/// A PATH frame announcing `hops` hops already (a source and `hops - 1` relays).
pub fn path_frame_with_hops(hops: usize) -> Vec<u8> {
    let mut announcement = Vec::new();
    PathEntry::new(Role::Source, "A", None, None).emit(&mut announcement);
    for index in 1..hops {
        PathEntry::new(Role::Relay, &format!("R{index}"), None, None).emit(&mut announcement);
    }
    wire::control_frame(Kind::Path, &announcement)
}

/// A DATA frame carrying `records` stamp records (hops 0, 1, … going down) and `payload`.
/// At hop 1 a valid frame carries exactly one record: the source's.
pub fn data_frame(sequence: u64, records: usize, payload: &[u8]) -> Vec<u8> {
    let stamps: Vec<Stamp> =
        (0..records).map(|hop| Stamp::new(hop as u8, Direction::Down, 1, 2)).collect();
    let header = Header {
        flags: 0,
        kind: Kind::Data,
        record_count: records,
        sequence,
        payload_len: payload.len(),
    };
    let mut out = vec![0; header.total_len()];
    emit_frame(&mut out, &header, &[], &stamps, payload);
    out
}

/// One frame read back from a hop.
#[derive(Debug, Clone)]
pub struct Answer {
    pub kind: Kind,
    pub sequence: u64,
    pub records: Vec<Stamp>,
    pub payload: Vec<u8>,
}

/// A connection to a hop, acting as the source (hop 0).
pub struct Client {
    pub stream: TcpStream,
    received: Vec<u8>,
}

impl Client {
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        let stream =
            TcpStream::connect(addr).unwrap_or_else(|error| panic!("connect {addr}: {error}"));
        Client::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream.set_nodelay(true).unwrap();
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
        Client { stream, received: Vec::new() }
    }

    /// The address the hop sees this client come from, as it names it in its log lines.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    #[track_caller]
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap_or_else(|error| panic!("send: {error}"));
    }

    /// Sends the PATH announcement and reads its answer: the path as far as it goes.
    #[track_caller]
    pub fn handshake(&mut self) -> Vec<PathEntry> {
        self.send(&path_frame("A"));
        let answer = self.expect_frame();
        assert_eq!(answer.kind, Kind::Path, "the first answer must be the path: {answer:?}");
        PathEntry::parse_all(&answer.payload).expect("a well-formed path answer")
    }

    /// Sends one DATA frame with the source's record, as a hop 1 expects it.
    #[track_caller]
    pub fn send_data(&mut self, sequence: u64, payload: &[u8]) {
        self.send(&data_frame(sequence, 1, payload));
    }

    /// Sends a DATA frame and checks that its answer has the same sequence and payload.
    #[track_caller]
    pub fn round_trip(&mut self, sequence: u64, payload: &[u8]) -> Answer {
        self.send_data(sequence, payload);
        let answer = self.expect_frame();
        assert_answers(&answer, sequence, payload);
        answer
    }

    /// The next frame, or `Ok(None)` at a clean end of stream between frames. An end of stream
    /// in the middle of a frame, a malformed frame or the read timeout is an error.
    pub fn read_frame(&mut self) -> io::Result<Option<Answer>> {
        loop {
            let parsed = wire::next_frame(&self.received)
                .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            if let Some(frame) = parsed {
                let answer = Answer {
                    kind: frame.kind(),
                    sequence: frame.sequence(),
                    records: frame.records().collect(),
                    payload: frame.payload().to_vec(),
                };
                self.received.drain(..frame.total_len());
                return Ok(Some(answer));
            }
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) if self.received.is_empty() => return Ok(None),
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("end of stream with {} bytes of a frame", self.received.len()),
                    ));
                }
                Ok(count) => self.received.extend_from_slice(&chunk[..count]),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    #[track_caller]
    pub fn expect_frame(&mut self) -> Answer {
        match self.read_frame() {
            Ok(Some(answer)) => answer,
            Ok(None) => panic!("the hop closed the connection instead of answering"),
            Err(error) => panic!("reading an answer: {error}"),
        }
    }

    /// Half-closes, then reads until the hop ends the stream; returns the frames read on the way.
    #[track_caller]
    pub fn finish(mut self) -> Vec<Answer> {
        self.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        loop {
            match self.read_frame() {
                Ok(Some(answer)) => rest.push(answer),
                Ok(None) => return rest,
                Err(error) => panic!("reading to the end of stream: {error}"),
            }
        }
    }
}

/// An answer to a DATA frame must carry the frame's sequence and payload, unchanged.
#[track_caller]
pub fn assert_answers(answer: &Answer, sequence: u64, payload: &[u8]) {
    assert_eq!(answer.kind, Kind::Data, "expected a DATA answer: {answer:?}");
    assert_eq!(answer.sequence, sequence, "answer out of order");
    assert!(answer.payload == payload, "payload of frame {sequence} changed on the way");
}

/// Whether a log `line` names `peer` (and not merely a longer port starting with its digits).
pub fn mentions(line: &str, peer: SocketAddr) -> bool {
    let needle = peer.to_string();
    line.match_indices(&needle)
        .any(|(at, _)| !line[at + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Waits up to `timeout` for the peer to end the connection (EOF or reset); returns whatever
/// arrived before that. Panics if the connection is still open after `timeout`.
#[track_caller]
pub fn expect_closed(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the hop kept the connection open for more than {timeout:?}");
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => return got,
            Ok(count) => got.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error)
                if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            // A reset is a close too (the hop closed with our bytes unread).
            Err(_) => return got,
        }
    }
}

// What a test can see of a process from outside, through /proc.

/// How many descriptors the process has open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0)
}

/// Resident memory in KiB (`VmRSS`), or `None` once the process is gone.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time used so far (user + system), in clock ticks (normally 10 ms each).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces; the fields after it are plain numbers.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: indexes 11 and 12 counted from the state.
    let field = |index: usize| fields.get(index).and_then(|text| text.parse::<u64>().ok());
    field(11).unwrap_or(0) + field(12).unwrap_or(0)
}

/// Waits (up to `timeout`) until the process holds at most `baseline` descriptors; returns the
/// count last seen.
pub fn wait_for_fds(pid: u32, baseline: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let count = fd_count(pid);
        if count <= baseline || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (up to `timeout`) until `check` holds of the process's stderr; returns that stderr.
pub fn wait_for_stderr(
    proc: &super::Proc,
    timeout: Duration,
    check: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = proc.stderr();
        if check(&text) {
            return Some(text);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `proc` has logged the close of a connection made and dropped now: a
/// marker in its log. A hop logs in the order it handles events, so a line about anything
/// that happened before the marker's connection would already be there.
#[track_caller]
pub fn log_marker(proc: &super::Proc, addr: SocketAddr, timeout: Duration) {
    let marker = TcpStream::connect(addr).unwrap_or_else(|error| panic!("connect {addr}: {error}"));
    let peer = marker.local_addr().unwrap();
    drop(marker);
    let logged =
        wait_for_stderr(proc, timeout, |text| text.lines().any(|line| mentions(line, peer)));
    assert!(logged.is_some(), "no line about the marker {peer}:\n{}", proc.stderr());
}

/// The receive queue (bytes not yet read) of the socket at `local` connected to `peer`, as `ss`
/// reports it; `None` while no such connection is listed.
pub fn receive_queue(local: SocketAddr, peer: SocketAddr) -> Option<u64> {
    let output =
        std::process::Command::new("ss").args(["-Htn", "state", "established"]).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [recv_q, _, here, there, ..] = fields[..] else { return None };
        (here == local.to_string() && there == peer.to_string()).then(|| recv_q.parse().ok())?
    })
}
