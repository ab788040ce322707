//! Scraping `--metrics` from a test: the address a process serves at, a plain GET, and one
//! sample's value out of the OpenMetrics text.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::Proc;

/// What a process logs once its metrics server listens.
pub const MARKER: &str = "serving metrics at http://";

/// The address in a process's `serving metrics at http://ADDR/metrics` line.
#[track_caller]
pub fn metrics_addr_of(proc: &Proc) -> SocketAddr {
    let stderr = proc.stderr();
    let word = stderr
        .lines()
        .find_map(|line| line.split_once(MARKER).map(|(_, rest)| rest.to_string()))
        .unwrap_or_else(|| panic!("no `{MARKER}` line in:\n{stderr}"));
    parse_metrics_word(&word)
}

#[track_caller]
pub fn parse_metrics_word(word: &str) -> SocketAddr {
    let addr = word.split_whitespace().next().unwrap_or("");
    addr.strip_suffix("/metrics")
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse the metrics address in {word:?}"))
}

/// A plain HTTP/1.0 GET (no chunked answers): the status and the body.
pub fn get(addr: SocketAddr, target: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

/// The value of the sample line that starts with `name{labels} `.
#[track_caller]
pub fn sample(body: &str, name_and_labels: &str) -> f64 {
    try_sample(body, name_and_labels).unwrap_or_else(|| panic!("no {name_and_labels} in:\n{body}"))
}

/// The value of `name{labels}` when the process serves it, or `None`.
pub fn try_sample(body: &str, name_and_labels: &str) -> Option<f64> {
    let prefix = format!("{name_and_labels} ");
    body.lines().find_map(|line| line.strip_prefix(&prefix)).and_then(|value| value.parse().ok())
}

/// Scrapes `addr` until `ready` holds for the body (an event the hop publishes within 250 ms
/// of it happening), for at most `within`; the last body either way.
pub fn scrape_until(addr: SocketAddr, within: Duration, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let body = get(addr, "/metrics").map(|(_, body)| body).unwrap_or_default();
        if ready(&body) || Instant::now() >= deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
