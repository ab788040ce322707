//! `nfq-delay`: a packet-level delay element on the link itself, for kernels without netem.
//!
//! An iptables rule (`-j NFQUEUE --queue-num N`, placed by `scripts/lab.sh impair --mechanism
//! nfqueue` where packets arrive at a host) hands every packet of one link direction to this
//! process. It holds each one for `--delay` ± `--jitter` from the kernel's receive timestamp
//! of the packet, never reordering, then gives the verdict `NF_ACCEPT`, and the packet goes on
//! through the stack untouched. Unlike `tcp-delay` there is no extra TCP connection: the
//! link's TCP connection stays end to end, and what the element costs is one trip of each
//! packet's metadata to user space and back (no payload is copied).
//!
//! It owns the queue's binding, the hold queue and the timing; the netlink messages are
//! `subsegment_tcp_speeds::nfqueue` (no I/O there). At most `--max-held` packets wait; a packet
//! beyond that is dropped (as a full router buffer would), counted, and the count is logged
//! every 10 s while it grows and at exit, together with the kernel's own drops for the queue
//! (queue full, or not deliverable to this process). On SIGTERM or SIGINT it releases every
//! held packet at once, logs how long packets were held, and exits 0.
//!
//! Without a process bound to the queue the kernel drops the queue's packets: a dead element
//! blackholes its link. That is on purpose (the lab does not use `--queue-bypass`): a link
//! that silently went back to its bare delay would make a measurement wrong without a sign,
//! while a dead link is an outage the tool names.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use lexopt::ValueExt;
use subsegment_tcp_speeds::nfqueue::{self, Message, NF_ACCEPT, NF_DROP};
use subsegment_tcp_speeds::{clock, log_line, tuning};

const HELP: &str = "\
Usage: nfq-delay --queue N --delay MS [--jitter MS] [--max-held N]

Binds NFQUEUE queue N (0..65535) of this network namespace and holds every packet queued there
for --delay milliseconds (plus a uniform jitter in [-jitter, +jitter] that never reorders
packets), counted from the kernel's receive timestamp, then accepts it. At most --max-held
packets (default 8192) are held; further ones are dropped and counted. Prints
`nfq-delay: listening on queue N` to stderr once bound; SIGTERM releases the held packets and
ends it. Needs CAP_NET_ADMIN. Place it with e.g.
  iptables -t mangle -A PREROUTING -i DEV -j NFQUEUE --queue-num N";

const DEFAULT_MAX_HELD: usize = 8192;
/// Room in the kernel's queue beyond `--max-held`, so that our bound is the one that drops (and
/// says so); the kernel's is the backstop while packets wait in the socket to be read.
const KERNEL_QUEUE_SLACK: u32 = 1024;
/// Poll until this long before a release instant, then spin: a timed wake-up may come late by
/// tens of microseconds. Small, because a spinning element takes a core from the chain.
const SPIN_WINDOW: Duration = Duration::from_micros(50);
/// How often a line with the counts is logged while they change.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// A receive timestamp older than this (or in the future) is a clock step, not a wait.
const MAX_BELIEVABLE_WAIT_NS: u64 = 1_000_000_000;
/// 4 MiB of socket buffer: tens of thousands of metadata-only packet messages.
const RECEIVE_BUFFER_BYTES: libc::c_int = 4 << 20;

#[derive(Debug, Clone, PartialEq)]
struct Args {
    queue: u16,
    delay: Duration,
    jitter: Duration,
    max_held: usize,
}

fn parse_args(mut parser: lexopt::Parser) -> Result<Option<Args>, lexopt::Error> {
    use lexopt::Arg::{Long, Short};
    let (mut queue, mut delay, mut jitter, mut max_held) = (None, None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("queue") => queue = Some(integer(&mut parser, "--queue", 0, 65_535)? as u16),
            Long("delay") => delay = Some(milliseconds(&mut parser, "--delay")?),
            Long("jitter") => jitter = Some(milliseconds(&mut parser, "--jitter")?),
            Long("max-held") => {
                let value = parser.value()?.parse::<usize>()?;
                if !(1..=1_000_000).contains(&value) {
                    return Err(
                        format!("invalid value for '--max-held': {value} (1..1000000)").into()
                    );
                }
                max_held = Some(value);
            }
            _ => return Err(arg.unexpected()),
        }
    }
    let missing = |option: &str| lexopt::Error::from(format!("missing required option '{option}'"));
    Ok(Some(Args {
        queue: queue.ok_or_else(|| missing("--queue"))?,
        delay: delay.ok_or_else(|| missing("--delay"))?,
        jitter: jitter.unwrap_or(Duration::ZERO),
        max_held: max_held.unwrap_or(DEFAULT_MAX_HELD),
    }))
}

/// The option's value as an integer in `min..=max`, with an error naming the option.
fn integer(
    parser: &mut lexopt::Parser,
    option: &str,
    min: usize,
    max: usize,
) -> Result<usize, lexopt::Error> {
    let text = parser.value()?.string()?;
    match text.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("invalid value for '{option}': {text:?} ({min}..{max})").into()),
    }
}

/// The option's value in milliseconds (finite, 0 to a day), with an error naming the option.
fn milliseconds(parser: &mut lexopt::Parser, option: &str) -> Result<Duration, lexopt::Error> {
    let text = parser.value()?.string()?;
    match text.parse::<f64>() {
        Ok(ms) if ms.is_finite() && (0.0..=86_400_000.0).contains(&ms) => {
            Ok(Duration::from_secs_f64(ms / 1e3))
        }
        _ => Err(format!("invalid value for '{option}': {text:?} (milliseconds)").into()),
    }
}

/// One packet waiting for its verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Held {
    id: u32,
    release: Instant,
    /// CLOCK_REALTIME of its arrival: the kernel's stamp, else when we read it.
    arrived_realtime_ns: u64,
}

/// The hold queue of one queue number: what is held, until when, and what did not fit. No
/// sockets: packets and the time go in, packets due for their verdict come out.
struct HoldQueue {
    held: VecDeque<Held>,
    max_held: usize,
    delay: Duration,
    jitter_ns: u64,
    previous_release: Option<Instant>,
    rng: u64,
}

#[derive(Debug, PartialEq)]
enum Admission {
    Held,
    /// `--max-held` packets wait already: this one is to be dropped.
    Full,
}

impl HoldQueue {
    fn new(args: &Args, seed: u64) -> HoldQueue {
        HoldQueue {
            held: VecDeque::with_capacity(args.max_held.min(65_536)),
            max_held: args.max_held,
            delay: args.delay,
            jitter_ns: args.jitter.as_nanos() as u64,
            previous_release: None,
            rng: seed | 1,
        }
    }

    /// Takes packet `id`, which reached this host at `arrived`: it leaves at `arrived + delay
    /// + jitter`, never before the packet ahead of it (jitter must not reorder a TCP stream).
    fn arrive(&mut self, id: u32, arrived: Instant, arrived_realtime_ns: u64) -> Admission {
        if self.held.len() >= self.max_held {
            return Admission::Full;
        }
        let mut release = arrived + self.delay;
        if self.jitter_ns > 0 {
            let offset_ns = self.next_random() % (2 * self.jitter_ns + 1);
            release = (release + Duration::from_nanos(offset_ns))
                .checked_sub(Duration::from_nanos(self.jitter_ns))
                .unwrap_or(arrived)
                .max(arrived);
        }
        if let Some(previous) = self.previous_release {
            release = release.max(previous);
        }
        self.previous_release = Some(release);
        self.held.push_back(Held { id, release, arrived_realtime_ns });
        debug_assert!(self.held.len() <= self.max_held, "the bound is checked above");
        Admission::Held
    }

    /// When the first held packet is due.
    fn next_release(&self) -> Option<Instant> {
        self.held.front().map(|held| held.release)
    }

    /// The first held packet, if it is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Held> {
        if self.next_release()? <= now { self.held.pop_front() } else { None }
    }

    /// Everything still held, in order (at exit: released at once).
    fn drain(&mut self) -> impl Iterator<Item = Held> + '_ {
        self.held.drain(..)
    }

    fn len(&self) -> usize {
        self.held.len()
    }

    /// xorshift64*, as in `tcp-delay`: plenty for jitter.
    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The kernel's own counts for one queue, from `/proc/net/netfilter/nfnetlink_queue` (of this
/// network namespace): packets dropped because the queue was full, and because they could not
/// be delivered to this process's socket.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct KernelDrops {
    queue_full: u64,
    undeliverable: u64,
}

/// Parses the proc file's text: one line per queue, `queue portid waiting copy_mode copy_range
/// queue_dropped user_dropped id_sequence 1`.
fn kernel_drops(text: &str, queue: u16) -> Option<KernelDrops> {
    text.lines().find_map(|line| {
        let fields: Vec<u64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
        (fields.len() >= 7 && fields[0] == u64::from(queue))
            .then(|| KernelDrops { queue_full: fields[5], undeliverable: fields[6] })
    })
}

fn read_kernel_drops(queue: u16) -> KernelDrops {
    std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
        .ok()
        .and_then(|text| kernel_drops(&text, queue))
        .unwrap_or_default()
}

/// What the element counts while it runs.
struct Counts {
    packets: u64,
    dropped_full: u64,
    /// Receive-buffer overruns the socket reported (ENOBUFS): those packets are the kernel's
    /// `undeliverable` drops.
    overruns: u64,
    verdict_errors: u64,
    malformed: u64,
    /// Arrival → verdict sent, per accepted packet.
    held_ns: Histogram<u64>,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            packets: 0,
            dropped_full: 0,
            overruns: 0,
            verdict_errors: 0,
            malformed: 0,
            held_ns: Histogram::new_with_max(3_600_000_000_000, 3).expect("valid bounds"),
        }
    }

    fn drops_line(&self, queue: u16, held_now: usize, kernel: KernelDrops) -> String {
        let dropped = self.dropped_full + kernel.queue_full + kernel.undeliverable;
        format!(
            "nfq-delay: queue {queue}: {} packets, {held_now} held now, dropped {dropped} \
             ({} over --max-held, {} kernel queue full, {} not deliverable to this process)",
            self.packets, self.dropped_full, kernel.queue_full, kernel.undeliverable
        )
    }
}

/// The bound NFQUEUE socket of one queue number.
struct QueueSocket {
    fd: OwnedFd,
    queue: u16,
}

impl QueueSocket {
    fn bind(queue: u16, max_held: usize) -> io::Result<QueueSocket> {
        // SAFETY: plain socket creation; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                nfqueue::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(named("socket(AF_NETLINK, NETLINK_NETFILTER)", io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let socket = QueueSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) }, queue };
        // SAFETY: sockaddr_nl is plain data; zeroed is its "kernel assigns the port" value.
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: address is a valid sockaddr_nl of the given size.
        let bound = unsafe {
            libc::bind(
                fd,
                (&address as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(named("bind(AF_NETLINK)", io::Error::last_os_error()));
        }
        // Room for bursts; FORCE (we are root) goes past rmem_max, the plain one is the fallback.
        for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
            // SAFETY: the option value is an int of the size given.
            let set = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    option,
                    (&RECEIVE_BUFFER_BYTES as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if set == 0 {
                break;
            }
        }
        let kernel_max =
            u32::try_from(max_held).unwrap_or(u32::MAX).saturating_add(KERNEL_QUEUE_SLACK);
        socket
            .send(&nfqueue::bind_request(1, queue, kernel_max))
            .map_err(|err| named("send(bind)", err))?;
        // The ack (or the refusal) is the next message for sequence 1.
        let mut buf = vec![0u8; 8192];
        loop {
            let len = socket.receive(&mut buf, 0).map_err(|err| named("recv(bind ack)", err))?;
            for message in nfqueue::messages(&buf[..len]) {
                match message {
                    Ok(Message::Ack { seq: 1, errno: 0 }) => return Ok(socket),
                    Ok(Message::Ack { seq: 1, errno }) => {
                        let err = io::Error::from_raw_os_error(errno);
                        let hint = match errno {
                            libc::EBUSY => " (another process has bound this queue)",
                            libc::EPERM => " (needs CAP_NET_ADMIN)",
                            _ => "",
                        };
                        return Err(io::Error::new(
                            err.kind(),
                            format!("bind queue {queue}: {err}{hint}"),
                        ));
                    }
                    _ => {}
                }
            }
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: bytes is a valid buffer of bytes.len() bytes.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if sent < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    fn receive(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: buf is a valid writable buffer of buf.len() bytes.
        let len =
            unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if len < 0 { Err(io::Error::last_os_error()) } else { Ok(len as usize) }
    }

    fn verdict(&self, id: u32, verdict: u32) -> io::Result<()> {
        self.send(&nfqueue::verdict_request(self.queue, id, verdict))
    }

    /// Waits until the socket is readable, a signal arrives, or `timeout` passes (`None`:
    /// indefinitely).
    fn wait_readable(&self, timeout: Option<Duration>) {
        let mut poll_fd =
            libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let timeout = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs() as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let timeout_ptr = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: one valid pollfd; the timespec (if any) outlives the call. EINTR is a wake-up.
        unsafe { libc::ppoll(&mut poll_fd, 1, timeout_ptr, std::ptr::null()) };
    }
}

fn named(call: &str, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("{call}: {err}"))
}

fn main() -> ExitCode {
    let args = match parse_args(lexopt::Parser::from_env()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            log_line!("nfq-delay: {err} (try --help)");
            return ExitCode::from(2);
        }
    };
    // Timed wake-ups as precise as the kernel gives (the default slack lets them run 50 µs late).
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
    tuning::catch_stop_signals();
    let socket = match QueueSocket::bind(args.queue, args.max_held) {
        Ok(socket) => socket,
        Err(err) => {
            log_line!("nfq-delay: {err}");
            return ExitCode::FAILURE;
        }
    };
    log_line!(
        "nfq-delay: listening on queue {} (delay {} µs ± {} µs, at most {} held)",
        args.queue,
        args.delay.as_micros(),
        args.jitter.as_micros(),
        args.max_held
    );
    match run(&socket, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log_line!("nfq-delay: queue {}: {err}", args.queue);
            ExitCode::FAILURE
        }
    }
}

/// The element's loop: read packets, hold them, give verdicts when due; until a stop signal.
fn run(socket: &QueueSocket, args: &Args) -> io::Result<()> {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut hold = HoldQueue::new(args, seed ^ u64::from(std::process::id()));
    let mut counts = Counts::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut next_report = Instant::now() + REPORT_EVERY;
    let mut reported_drops = (0, KernelDrops::default());
    let mut due = Vec::new();
    while !tuning::stop_requested() {
        read_packets(socket, &mut hold, &mut counts, &mut buf)?;
        let now = Instant::now();
        release_due(socket, &mut hold, now, &mut counts, &mut due);
        if now >= next_report {
            next_report = now + REPORT_EVERY;
            let kernel = read_kernel_drops(args.queue);
            if (counts.dropped_full, kernel) != reported_drops {
                reported_drops = (counts.dropped_full, kernel);
                log_line!("{}", counts.drops_line(args.queue, hold.len(), kernel));
            }
        }
        let until_report = next_report.saturating_duration_since(now);
        match hold.next_release() {
            // Close to a release: spin, still reading what arrives meanwhile.
            Some(release) if release.saturating_duration_since(now) <= SPIN_WINDOW => {}
            Some(release) => {
                let wait = (release.saturating_duration_since(now) - SPIN_WINDOW).min(until_report);
                socket.wait_readable(Some(wait));
            }
            None => socket.wait_readable(Some(until_report)),
        }
    }
    // Stopping: the held packets go now, in order; the kernel would drop them at unbind.
    due.clear();
    due.extend(hold.drain());
    accept(socket, &due, &mut counts);
    let kernel = read_kernel_drops(args.queue);
    log_line!("{}", counts.drops_line(args.queue, 0, kernel));
    if !counts.held_ns.is_empty() {
        let us = |ns: u64| ns as f64 / 1e3;
        log_line!(
            "nfq-delay: queue {}: {} packets held p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs \
             (kernel receive timestamp → verdict; asked {} µs)",
            args.queue,
            counts.held_ns.len(),
            us(counts.held_ns.value_at_quantile(0.5)),
            us(counts.held_ns.value_at_quantile(0.99)),
            counts.held_ns.mean() / 1e3,
            args.delay.as_secs_f64() * 1e6
        );
    }
    if counts.verdict_errors + counts.malformed + counts.overruns > 0 {
        log_line!(
            "nfq-delay: queue {}: {} verdicts refused, {} malformed messages, {} receive overruns",
            args.queue,
            counts.verdict_errors,
            counts.malformed,
            counts.overruns
        );
    }
    Ok(())
}

/// Reads every message waiting on the socket, holding (or dropping) each packet.
fn read_packets(
    socket: &QueueSocket,
    hold: &mut HoldQueue,
    counts: &mut Counts,
    buf: &mut [u8],
) -> io::Result<()> {
    loop {
        let len = match socket.receive(buf, libc::MSG_DONTWAIT) {
            Ok(len) => len,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Ok(()),
            // The socket overflowed and the kernel dropped packets (it counts them too).
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) => {
                counts.overruns += 1;
                continue;
            }
            Err(err) => return Err(named("recv", err)),
        };
        let (now, realtime_ns) = (Instant::now(), clock::realtime_ns());
        for message in nfqueue::messages(&buf[..len]) {
            match message {
                Ok(Message::Packet { id, timestamp_ns, .. }) => {
                    counts.packets += 1;
                    // How long it waited before we read it, from the kernel's stamp.
                    let waited_ns = timestamp_ns
                        .and_then(|stamp| realtime_ns.checked_sub(stamp))
                        .filter(|wait| *wait < MAX_BELIEVABLE_WAIT_NS)
                        .unwrap_or(0);
                    let arrived = now.checked_sub(Duration::from_nanos(waited_ns)).unwrap_or(now);
                    if hold.arrive(id, arrived, realtime_ns - waited_ns) == Admission::Full {
                        counts.dropped_full += 1;
                        if socket.verdict(id, NF_DROP).is_err() {
                            counts.verdict_errors += 1;
                        }
                    }
                }
                Ok(Message::Ack { errno, .. }) if errno != 0 => counts.verdict_errors += 1,
                Ok(_) => {}
                Err(_) => counts.malformed += 1,
            }
        }
    }
}

/// Accepts the packets due at `now`, all in one message.
fn release_due(
    socket: &QueueSocket,
    hold: &mut HoldQueue,
    now: Instant,
    counts: &mut Counts,
    due: &mut Vec<Held>,
) {
    due.clear();
    while let Some(held) = hold.pop_due(now) {
        due.push(held);
    }
    accept(socket, due, counts);
}

/// Accepts `due`, a prefix of the kernel's queue in id order: one verdict for one packet, one
/// batch verdict (every id up to the last) for more, so a burst leaves at once.
fn accept(socket: &QueueSocket, due: &[Held], counts: &mut Counts) {
    let sent = match due {
        [] => return,
        [one] => socket.verdict(one.id, NF_ACCEPT),
        [.., last] => {
            socket.send(&nfqueue::batch_verdict_request(socket.queue, last.id, NF_ACCEPT))
        }
    };
    if sent.is_err() {
        counts.verdict_errors += 1;
        return;
    }
    let now_ns = clock::realtime_ns();
    for held in due {
        counts.held_ns.saturating_record(now_ns.saturating_sub(held.arrived_realtime_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(lexopt::Parser::from_args(args)).map_err(|err| err.to_string())
    }

    fn args(delay_ms: u64, jitter_ms: u64, max_held: usize) -> Args {
        Args {
            queue: 1,
            delay: Duration::from_millis(delay_ms),
            jitter: Duration::from_millis(jitter_ms),
            max_held,
        }
    }

    #[test]
    fn parses_all_options() {
        let parsed =
            parse(&["--queue", "1001", "--delay", "2.5", "--jitter=0.5", "--max-held", "10"]);
        assert_eq!(
            parsed,
            Ok(Some(Args {
                queue: 1001,
                delay: Duration::from_micros(2500),
                jitter: Duration::from_micros(500),
                max_held: 10,
            }))
        );
        assert_eq!(parse(&["--queue", "3", "--delay", "0"]).unwrap().unwrap().max_held, 8192);
    }

    #[test]
    fn rejects_bad_usage_with_the_option_named() {
        assert!(parse(&["--delay", "1"]).unwrap_err().contains("--queue"));
        assert!(parse(&["--queue", "1"]).unwrap_err().contains("--delay"));
        assert!(parse(&["--queue", "70000", "--delay", "1"]).unwrap_err().contains("--queue"));
        assert!(parse(&["--queue", "1", "--delay", "-1"]).unwrap_err().contains("--delay"));
        assert!(
            parse(&["--queue", "1", "--delay", "1", "--max-held", "0"])
                .unwrap_err()
                .contains("--max-held")
        );
        assert!(parse(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert_eq!(parse(&["--help"]), Ok(None));
    }

    #[test]
    fn packets_leave_after_the_delay_in_order() {
        let mut hold = HoldQueue::new(&args(10, 0, 100), 7);
        let start = Instant::now();
        assert_eq!(hold.arrive(1, start, 0), Admission::Held);
        assert_eq!(hold.arrive(2, start + Duration::from_millis(1), 0), Admission::Held);
        assert_eq!(hold.pop_due(start + Duration::from_micros(9999)), None);
        assert_eq!(hold.next_release(), Some(start + Duration::from_millis(10)));
        assert_eq!(hold.pop_due(start + Duration::from_millis(10)).map(|h| h.id), Some(1));
        assert_eq!(hold.pop_due(start + Duration::from_millis(10)), None);
        assert_eq!(hold.pop_due(start + Duration::from_millis(11)).map(|h| h.id), Some(2));
        assert_eq!(hold.len(), 0);
    }

    #[test]
    fn jitter_never_reorders_and_stays_in_bounds() {
        let mut hold = HoldQueue::new(&args(10, 5, 10_000), 42);
        let start = Instant::now();
        let mut previous = start;
        for i in 0..1000 {
            let arrived = start + Duration::from_micros(i * 10);
            assert_eq!(hold.arrive(i as u32, arrived, 0), Admission::Held);
            let release = hold.held.back().unwrap().release;
            assert!(release >= previous && release >= arrived + Duration::from_millis(5));
            assert!(release <= arrived + Duration::from_millis(15) || release == previous);
            previous = release;
        }
        let ids: Vec<u32> = hold.drain().map(|held| held.id).collect();
        assert_eq!(ids, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_queue_refuses_until_one_leaves() {
        let mut hold = HoldQueue::new(&args(1, 0, 2), 1);
        let start = Instant::now();
        assert_eq!(hold.arrive(1, start, 0), Admission::Held);
        assert_eq!(hold.arrive(2, start, 0), Admission::Held);
        assert_eq!(hold.arrive(3, start, 0), Admission::Full);
        assert!(hold.pop_due(start + Duration::from_millis(1)).is_some());
        assert_eq!(hold.arrive(4, start, 0), Admission::Held);
    }

    #[test]
    fn kernel_drops_are_read_from_the_proc_line_of_our_queue() {
        let text = "    5  12345     0 1     0     0     0     9 1\n 1001  23456     3 1     0    17     4   999 1\n";
        assert_eq!(
            kernel_drops(text, 1001),
            Some(KernelDrops { queue_full: 17, undeliverable: 4 })
        );
        assert_eq!(kernel_drops(text, 7), None);
        assert_eq!(kernel_drops("", 7), None);
    }
}
