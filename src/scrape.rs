//! The `--metrics` endpoint: `GET /metrics` in the OpenMetrics text format, served by a tiny
//! HTTP/1.1 server on a thread of its own (normal priority, off the loop's `--cpu`), never by
//! the measuring loop. The loop hands over a [`Snapshot`] at most every [`PUBLISH_EVERY_NS`]
//! through [`Publisher::publish`], which swaps an `Arc` behind a mutex with `try_lock`: the
//! server only ever holds that lock to clone the `Arc` (it encodes outside it), and when the
//! loop finds it held it keeps its snapshot for the next wake-up instead of waiting.
//!
//! The server takes one request at a time: each connection has [`REQUEST_TIMEOUT`] to send a
//! request head of at most [`MAX_REQUEST_BYTES`]; a scraper that connects and sends nothing is
//! dropped when the time is up, and whatever it does, the loop does not notice. A malformed
//! request gets 400, another path 404, another method 405; every answer closes the
//! connection. Peers outside `--allow` are closed at once.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::{Duration, Instant};

use crate::log_line;
use crate::net::Cidr;
use crate::report::metrics::{self, Snapshot};
use crate::tuning;

/// How often the loop hands over a snapshot at most: Prometheus scrapes every few seconds at
/// the fastest, so four times a second keeps a scrape at most 250 ms behind.
pub const PUBLISH_EVERY_NS: u64 = 250_000_000;
/// The time a connection has to deliver its whole request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest request head served; a longer one gets 431.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Slot = Arc<Mutex<Arc<Snapshot>>>;

/// The loop's end of the handover.
#[derive(Debug)]
pub struct Publisher {
    slot: Slot,
    next_ns: u64,
}

impl Publisher {
    /// A publisher with no server behind it (tests, and the server's own start).
    fn new() -> Publisher {
        Publisher { slot: Arc::new(Mutex::new(Arc::new(Snapshot::Empty))), next_ns: 0 }
    }

    /// Whether a snapshot is due; the loop builds one only then.
    pub fn due(&self, now_ns: u64) -> bool {
        now_ns >= self.next_ns
    }

    /// CLOCK_MONOTONIC_RAW at which the next snapshot is due.
    pub fn next_ns(&self) -> u64 {
        self.next_ns
    }

    /// Hands `snapshot` to the server without ever waiting: when the server holds the lock at
    /// this instant (to clone the `Arc`, a few nanoseconds), this one is dropped and the next
    /// wake-up publishes.
    pub fn publish(&mut self, now_ns: u64, snapshot: Snapshot) {
        let fresh = Arc::new(snapshot);
        let previous = match self.slot.try_lock() {
            Ok(mut slot) => std::mem::replace(&mut *slot, fresh),
            Err(TryLockError::Poisoned(poisoned)) => {
                std::mem::replace(&mut *poisoned.into_inner(), fresh)
            }
            Err(TryLockError::WouldBlock) => return,
        };
        // Freed outside the lock (when the server no longer holds it either).
        drop(previous);
        self.next_ns = now_ns + PUBLISH_EVERY_NS;
    }

    /// The run's last snapshot, once its loop is over: waits for the lock (the server holds
    /// it only to clone the `Arc`), so the final figures are never dropped, and the server
    /// answers with them until the process exits.
    pub fn publish_final(&mut self, snapshot: Snapshot) {
        let fresh = Arc::new(snapshot);
        let previous = match self.slot.lock() {
            Ok(mut slot) => std::mem::replace(&mut *slot, fresh),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), fresh),
        };
        drop(previous);
    }

    fn latest(slot: &Slot) -> Arc<Snapshot> {
        match slot.lock() {
            Ok(slot) => Arc::clone(&slot),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }
}

/// Binds `listen` and starts the server thread; `name` prefixes its log lines. The address it
/// bound is logged as `serving metrics at http://ADDR/metrics` (never "listening on", which
/// the hop's own listener says).
pub fn start(
    listen: SocketAddr,
    allow: Vec<Cidr>,
    name: &str,
    loop_cpu: Option<usize>,
) -> io::Result<Publisher> {
    let listener = TcpListener::bind(listen).map_err(|error| {
        io::Error::new(error.kind(), format!("--metrics: listen on {listen}: {error}"))
    })?;
    let bound = listener.local_addr()?;
    log_line!("{name}: serving metrics at http://{bound}/metrics");
    if bound.ip().is_unspecified() && allow.is_empty() {
        log_line!(
            "{name}: warning: serving metrics on every interface to anyone; restrict it with \
             --allow CIDR or --metrics on a private address"
        );
    }
    let publisher = Publisher::new();
    let slot = Arc::clone(&publisher.slot);
    std::thread::Builder::new().name("metrics".to_string()).spawn(move || {
        tuning::leave_loop_settings(loop_cpu);
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => serve(stream, &allow, &slot),
                // Out of descriptors, most likely: let the loop's connections have them.
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })?;
    Ok(publisher)
}

/// One connection, one request, one answer.
fn serve(mut stream: TcpStream, allow: &[Cidr], slot: &Slot) {
    let Ok(peer) = stream.peer_addr() else { return };
    if !allow.is_empty() && !allow.iter().any(|block| block.contains(peer.ip())) {
        return;
    }
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let answer = match read_head(&mut stream, deadline) {
        Ok(head) => match parse_request(&head) {
            Ok(request) => {
                let body = metrics::encode(&Publisher::latest(slot));
                response(200, CONTENT_TYPE, if request.head_only { "" } else { &body }, body.len())
            }
            Err(status) => {
                let body = format!("{}\n", reason(status));
                response(status, "text/plain; charset=utf-8", &body, body.len())
            }
        },
        Err(HeadError::TooLarge) => {
            let body = format!("{}\n", reason(431));
            response(431, "text/plain; charset=utf-8", &body, body.len())
        }
        Err(HeadError::Gone) => return,
    };
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let _ = stream.write_all(answer.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    TooLarge,
    /// Timed out, closed, or failed before a whole head came: nothing to answer.
    Gone,
}

/// Reads until the blank line that ends the head, within the deadline and the size bound.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Gone);
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(count) => head.extend_from_slice(&chunk[..count]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Gone),
        }
    }
}

/// Where the head ends: a blank line, CRLF or (leniently, as RFC 9112 allows) bare LF.
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|window| window == b"\r\n\r\n");
    let lf = bytes.windows(2).position(|window| window == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

#[derive(Debug, PartialEq, Eq)]
struct Request {
    head_only: bool,
}

/// The request head (without its blank line): `GET /metrics HTTP/1.x` with well-formed header
/// lines, or the status to answer.
fn parse_request(head: &[u8]) -> Result<Request, u16> {
    let text = std::str::from_utf8(head).map_err(|_| 400u16)?;
    let mut lines = text.split('\n').map(|line| line.strip_suffix('\r').unwrap_or(line));
    let request_line = lines.next().ok_or(400u16)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(400);
    };
    let known_method = !method.is_empty() && method.bytes().all(|byte| byte.is_ascii_uppercase());
    if !known_method || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(400);
    }
    for line in lines {
        let Some((name, _)) = line.split_once(':') else { return Err(400) };
        if name.is_empty() || name.bytes().any(|byte| byte.is_ascii_whitespace()) {
            return Err(400);
        }
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/metrics" {
        return Err(404);
    }
    match method {
        "GET" => Ok(Request { head_only: false }),
        "HEAD" => Ok(Request { head_only: true }),
        _ => Err(405),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// A whole answer; `length` is the body's (a HEAD answer sends none but says how long).
fn response(status: u16, content_type: &str, body: &str, length: usize) -> String {
    let allow = if status == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {length}\r\n\
         {allow}Connection: close\r\n\r\n{body}",
        reason(status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_into_an_answer() {
        let get = b"GET /metrics HTTP/1.1\r\nHost: x:9464\r\nAccept: */*";
        assert_eq!(parse_request(get), Ok(Request { head_only: false }));
        assert_eq!(parse_request(b"GET /metrics?x=1 HTTP/1.0"), Ok(Request { head_only: false }));
        assert_eq!(parse_request(b"HEAD /metrics HTTP/1.1"), Ok(Request { head_only: true }));
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: x"), Err(404));
        assert_eq!(parse_request(b"GET /metricsx HTTP/1.1"), Err(404));
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1"), Err(405));
        for malformed in [
            &b""[..],
            b"GET /metrics",
            b"GET  /metrics HTTP/1.1",
            b"GET /metrics HTTP/2",
            b"GET metrics HTTP/1.1",
            b"get /metrics HTTP/1.1",
            b"GET /metrics HTTP/1.1 extra",
            b"GET /metrics HTTP/1.1\r\nno colon here",
            b"GET /metrics HTTP/1.1\r\nBad Name: x",
            b"GET /metrics HTTP/1.1\r\n\xff: x",
            b"\x16\x03\x01\x02\x00\x01",
        ] {
            assert_eq!(parse_request(malformed), Err(400), "{malformed:?}");
        }
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn publishing_never_waits_for_a_held_lock() {
        let mut publisher = Publisher::new();
        assert!(publisher.due(0));
        let held = Arc::clone(&publisher.slot);
        let guard = held.lock().unwrap();
        publisher.publish(1, Snapshot::Hop(Default::default()));
        // Dropped, not waited for: still due.
        assert!(publisher.due(2));
        drop(guard);
        publisher.publish(3, Snapshot::Hop(Default::default()));
        assert!(!publisher.due(4));
        assert_eq!(publisher.next_ns(), 3 + PUBLISH_EVERY_NS);
        assert!(matches!(*Publisher::latest(&publisher.slot), Snapshot::Hop(_)));
    }
}
