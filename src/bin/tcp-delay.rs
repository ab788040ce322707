//! `tcp-delay`: a user-space delay element for one TCP link.
//!
//! The lab kernels have no `netem` qdisc, so the integration tests, `scripts/demo.sh` and the
//! multi-host lab (`--mechanism tcp-delay`; it prefers `nfq-delay`, which holds the link's own
//! packets instead) put this process on a link instead: it accepts a connection, opens one to
//! `--forward-to`, and relays both directions, each chunk released `--delay-ms` (± `--jitter-ms`)
//! after it was read, optionally paced to `--rate-mbit`. It owns only that: it parses no frames
//! and stamps no headers; it is a piece of wire of known length.
//!
//! Per direction a reader thread stamps each chunk with its release instant and queues it on a
//! bounded channel; a writer thread waits for that instant and writes. Chunks in flight overlap
//! the way bytes on a long wire do (a chunk read at `t` leaves at `t + delay`, however many are
//! queued ahead of it), and the bounded queue lets a slow receiver push back on the sender
//! through TCP flow control. Errors end one connection, never the process.
//!
//! It also measures itself, so that an accuracy run can tell its cost from the measuring
//! tool's error: each chunk's arrival is the kernel's receive timestamp of its last byte (the
//! read itself where the kernel gives none), and when a direction ends it logs how long its
//! chunks were held, arrival → written, beside the delay asked for.

use lexopt::ValueExt;
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use subsegment_tcp_speeds::{clock, log_line, net};

/// One chunk in flight: when it may leave, when its last byte reached this host, its bytes.
type Chunk = (Instant, Instant, Vec<u8>);

const HELP: &str = "\
Usage: tcp-delay --listen ADDR --forward-to ADDR --delay-ms MS [--jitter-ms MS] [--rate-mbit N]

Relays every TCP connection accepted on --listen to --forward-to, delaying each direction by
--delay-ms (one way, so a round trip gains twice that), plus a uniform jitter in
[-jitter, +jitter] that never reorders bytes, optionally paced to --rate-mbit megabit/s.
Prints `tcp-delay: listening on ADDR` to stderr once bound (port 0 picks a free port).";

/// Chunks queued per direction. With `READ_CHUNK_BYTES` this bounds memory at 16 MiB per
/// direction; beyond it the reader stops reading and TCP flow control slows the sender.
const QUEUE_CHUNKS: usize = 1024;
/// Largest chunk read at once: small enough that `--rate-mbit` pacing stays smooth.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Sleep until this long before a release instant, then spin: `thread::sleep` overshoots by tens
/// of microseconds, and accuracy of the delay is the whole point of this tool.
const SPIN_WINDOW: Duration = Duration::from_micros(200);

#[derive(Debug, Clone, PartialEq)]
struct Args {
    listen: String,
    forward_to: String,
    delay: Duration,
    jitter: Duration,
    /// `None` leaves the direction unpaced.
    rate_bit_per_s: Option<f64>,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Option<Args>, lexopt::Error> {
    use lexopt::Arg::Long;
    let (mut listen, mut forward_to, mut delay, mut jitter, mut rate) =
        (None, None, None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("help") | lexopt::Arg::Short('h') => return Ok(None),
            Long("listen") => listen = Some(parser.value()?.string()?),
            Long("forward-to") => forward_to = Some(parser.value()?.string()?),
            Long("delay-ms") => delay = Some(number(&mut parser, "--delay-ms", 0.0)?),
            Long("jitter-ms") => jitter = Some(number(&mut parser, "--jitter-ms", 0.0)?),
            Long("rate-mbit") => {
                rate = Some(number(&mut parser, "--rate-mbit", f64::MIN_POSITIVE)?)
            }
            _ => return Err(arg.unexpected()),
        }
    }
    let missing = |option: &str| lexopt::Error::from(format!("missing required option '{option}'"));
    Ok(Some(Args {
        listen: listen.ok_or_else(|| missing("--listen"))?,
        forward_to: forward_to.ok_or_else(|| missing("--forward-to"))?,
        delay: Duration::from_secs_f64(delay.ok_or_else(|| missing("--delay-ms"))? / 1e3),
        jitter: Duration::from_secs_f64(jitter.unwrap_or(0.0) / 1e3),
        rate_bit_per_s: rate.map(|mbit| mbit * 1e6),
    }))
}

/// The option's value as a finite number `>= min`, with an error that names the option.
fn number(parser: &mut lexopt::Parser, option: &str, min: f64) -> Result<f64, lexopt::Error> {
    let text = parser.value()?.string()?;
    match text.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= min && n < 1e9 => Ok(n),
        _ => Err(format!("invalid value for '{option}': {text:?}").into()),
    }
}

fn main() -> ExitCode {
    let args = match parse_args(lexopt::Parser::from_env()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            log_line!("tcp-delay: {err} (try --help)");
            return ExitCode::from(2);
        }
    };
    // The default timer slack (50 µs) lets every sleep overshoot by that much; threads inherit
    // the slack of the thread that creates them, so setting it here covers every writer.
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    // Resolved once, so a misspelled host fails now rather than on every connection.
    let forward_to: Vec<SocketAddr> = match args.forward_to.to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(err) => {
            log_line!("tcp-delay: cannot resolve --forward-to {}: {err}", args.forward_to);
            return ExitCode::from(2);
        }
    };
    let listener = match TcpListener::bind(&args.listen) {
        Ok(listener) => listener,
        Err(err) => {
            log_line!("tcp-delay: bind {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => log_line!("tcp-delay: listening on {addr}"),
        Err(err) => log_line!("tcp-delay: listening on {} ({err})", args.listen),
    }
    let _ = io::stderr().flush();

    let args = Arc::new(args);
    let forward_to = Arc::new(forward_to);
    loop {
        match listener.accept() {
            Ok((client, peer)) => {
                let (args, forward_to) = (Arc::clone(&args), Arc::clone(&forward_to));
                thread::spawn(move || {
                    if let Err(err) = serve(client, &forward_to, &args) {
                        log_line!("tcp-delay: {peer}: {err}");
                    }
                });
            }
            Err(err) => {
                // Typically EMFILE: back off instead of spinning on the same error.
                log_line!("tcp-delay: accept: {err}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Relays one accepted connection until both directions have finished.
fn serve(client: TcpStream, forward_to: &[SocketAddr], args: &Args) -> io::Result<()> {
    let server = TcpStream::connect(forward_to).map_err(|err| {
        io::Error::new(err.kind(), format!("connect to {}: {err}", args.forward_to))
    })?;
    // Nagle would hold small chunks back by up to a round trip, on top of the delay we impose.
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client, server) = (Arc::new(client), Arc::new(server));
    // Set on the first error so the other threads' follow-on errors are not reported again.
    let failed = Arc::new(AtomicBool::new(false));
    let mut threads = relay(&client, &server, args, &failed, "upstream");
    threads.extend(relay(&server, &client, args, &failed, "downstream"));
    let panicked = || Err(io::Error::other("relay thread panicked"));
    (threads.into_iter())
        .map(|thread| thread.join().unwrap_or_else(|_| panicked()))
        .fold(Ok(()), Result::and)
}

/// Spawns the reader and writer threads of one direction, `from` to `to`.
fn relay(
    from: &Arc<TcpStream>,
    to: &Arc<TcpStream>,
    args: &Args,
    failed: &Arc<AtomicBool>,
    direction: &'static str,
) -> Vec<thread::JoinHandle<io::Result<()>>> {
    let (queue, arrivals) = sync_channel(QUEUE_CHUNKS);
    let schedule = Schedule::new(args);
    let reader = {
        let (from, to, failed) = (Arc::clone(from), Arc::clone(to), Arc::clone(failed));
        thread::spawn(move || {
            read_side(&from, queue, schedule)
                .or_else(|err| abort(&from, &to, &failed, direction, err))
        })
    };
    let writer = {
        let (from, to, failed) = (Arc::clone(from), Arc::clone(to), Arc::clone(failed));
        let asked = args.delay;
        thread::spawn(move || {
            write_side(&to, arrivals, direction, asked)
                .or_else(|err| abort(&from, &to, &failed, direction, err))
        })
    };
    vec![reader, writer]
}

/// Reads chunks and queues each with its release instant; dropping `queue` at EOF tells the
/// writer to half-close once it has delivered everything.
fn read_side(from: &TcpStream, queue: SyncSender<Chunk>, mut schedule: Schedule) -> io::Result<()> {
    let mut buf = vec![0; READ_CHUNK_BYTES];
    // Without kernel stamps the arrival is the read: the element then looks cheaper than it is.
    let stamped = net::enable_receive_timestamps(from.as_raw_fd()).is_ok();
    loop {
        let (len, kernel_ns) = match net::receive(from.as_raw_fd(), &mut buf) {
            Ok((0, _)) => return Ok(()),
            Ok(read) => read,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let (realtime_ns, read_at) = (clock::realtime_ns(), Instant::now());
        // A wait of a second or more (or a negative one) is a clock step, not a queue.
        let waited = kernel_ns
            .filter(|_| stamped)
            .and_then(|kernel_ns| realtime_ns.checked_sub(kernel_ns))
            .filter(|wait_ns| *wait_ns < 1_000_000_000)
            .map_or(Duration::ZERO, Duration::from_nanos);
        let arrived = read_at.checked_sub(waited).unwrap_or(read_at);
        let release = schedule.release(read_at, len);
        if queue.send((release, arrived, buf[..len].to_vec())).is_err() {
            return Ok(()); // The writer failed and has already reported it.
        }
    }
}

/// Writes each chunk at its release instant, then half-closes `to` and says how long the
/// chunks were held.
fn write_side(
    to: &TcpStream,
    arrivals: Receiver<Chunk>,
    direction: &str,
    asked: Duration,
) -> io::Result<()> {
    let mut held = Histogram::<u64>::new_with_max(3_600_000_000_000, 3).expect("valid bounds");
    for (release, arrived, chunk) in arrivals {
        wait_until(release);
        (&*to).write_all(&chunk)?;
        held.saturating_record(arrived.elapsed().as_nanos() as u64);
    }
    if !held.is_empty() {
        let us = |ns: u64| ns as f64 / 1e3;
        log_line!(
            "tcp-delay: {direction}: {} chunks held p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs \
             (arrival → written; asked {} µs)",
            held.len(),
            us(held.value_at_quantile(0.5)),
            us(held.value_at_quantile(0.99)),
            held.mean() / 1e3,
            asked.as_secs_f64() * 1e6
        );
    }
    match to.shutdown(Shutdown::Write) {
        // The peer may already have closed entirely; nothing is lost by that.
        Err(err) if err.kind() != io::ErrorKind::NotConnected => Err(err),
        _ => Ok(()),
    }
}

/// Tears the whole connection down after an error in one direction (a half-working relay would
/// only hang the endpoints), reporting the first error and swallowing the follow-on ones.
fn abort(
    from: &TcpStream,
    to: &TcpStream,
    failed: &AtomicBool,
    direction: &str,
    err: io::Error,
) -> io::Result<()> {
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    if failed.swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    Err(io::Error::new(err.kind(), format!("{direction}: {err}")))
}

/// Sleeps to shortly before `deadline`, then yields until it has passed.
fn wait_until(deadline: Instant) {
    let now = Instant::now();
    if let Some(early) = deadline.checked_sub(SPIN_WINDOW).filter(|early| *early > now) {
        thread::sleep(early - now);
    }
    while Instant::now() < deadline {
        thread::yield_now();
    }
}

/// When each chunk of one direction may leave: the wire model of this tool.
struct Schedule {
    delay: Duration,
    jitter_ns: u64,
    rate_bit_per_s: Option<f64>,
    previous_release: Option<Instant>,
    rng: u64,
}

impl Schedule {
    fn new(args: &Args) -> Schedule {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let now_ns =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        let rng = (now_ns ^ SEQUENCE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)) | 1;
        Schedule {
            delay: args.delay,
            jitter_ns: args.jitter.as_nanos() as u64,
            rate_bit_per_s: args.rate_bit_per_s,
            previous_release: None,
            rng,
        }
    }

    /// Release instant of `len` bytes read at `read_at`: `read_at + delay + jitter`, never before
    /// the previous chunk (jitter must not reorder a byte stream), and when paced, one
    /// serialization time `len * 8 / rate` after the link became free.
    fn release(&mut self, read_at: Instant, len: usize) -> Instant {
        let mut release = read_at + self.delay;
        if self.jitter_ns > 0 {
            let offset_ns = self.next_random() % (2 * self.jitter_ns + 1);
            release = (release + Duration::from_nanos(offset_ns))
                .checked_sub(Duration::from_nanos(self.jitter_ns))
                .unwrap_or(read_at)
                .max(read_at);
        }
        if let Some(previous) = self.previous_release {
            release = release.max(previous);
        }
        if let Some(rate) = self.rate_bit_per_s {
            release += Duration::from_secs_f64(len as f64 * 8.0 / rate);
        }
        self.previous_release = Some(release);
        release
    }

    /// xorshift64*: plenty for jitter, and no crate needed.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(lexopt::Parser::from_args(args)).map_err(|err| err.to_string())
    }

    #[test]
    fn parses_all_options() {
        let args = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--forward-to",
            "h:1",
            "--delay-ms",
            "2.5",
            "--jitter-ms=1",
            "--rate-mbit",
            "10",
        ]);
        let args = args.unwrap().unwrap();
        assert_eq!(args.delay, Duration::from_micros(2500));
        assert_eq!(args.jitter, Duration::from_millis(1));
        assert_eq!(args.rate_bit_per_s, Some(10e6));
    }

    #[test]
    fn rejects_bad_usage_with_the_option_named() {
        assert!(
            parse(&["--listen", "a:1", "--forward-to", "b:1"]).unwrap_err().contains("--delay-ms")
        );
        assert!(parse(&["--delay-ms", "-1"]).unwrap_err().contains("--delay-ms"));
        assert!(parse(&["--rate-mbit", "0"]).unwrap_err().contains("--rate-mbit"));
        assert!(parse(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert_eq!(parse(&["--help"]), Ok(None));
    }

    #[test]
    fn jitter_never_reorders_and_rate_paces() {
        let args = parse(&[
            "--listen",
            "a:1",
            "--forward-to",
            "b:1",
            "--delay-ms",
            "10",
            "--jitter-ms",
            "5",
        ]);
        let mut schedule = Schedule::new(&args.unwrap().unwrap());
        let start = Instant::now();
        let mut previous = start;
        for i in 0..1000 {
            let read_at = start + Duration::from_micros(i * 10);
            let release = schedule.release(read_at, 1);
            assert!(release >= previous && release >= read_at + Duration::from_millis(5));
            assert!(release <= read_at + Duration::from_millis(15) || release == previous);
            previous = release;
        }
        let mut paced = Schedule::new(&Args {
            rate_bit_per_s: Some(8e6),
            jitter: Duration::ZERO,
            ..parse(&["--listen", "a:1", "--forward-to", "b:1", "--delay-ms", "0"])
                .unwrap()
                .unwrap()
        });
        let first = paced.release(start, 1000); // 1000 bytes at 1 MB/s: 1 ms on the wire.
        assert_eq!(first - start, Duration::from_millis(1));
        assert_eq!(paced.release(start, 1000) - first, Duration::from_millis(1));
    }
}
