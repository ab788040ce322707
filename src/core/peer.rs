//! One TCP socket of a connection, at the source or a hop: its software readiness (following
//! sozu, an event sets a flag and only `WouldBlock`, or a short read or write, clears it), the
//! read loop that stamps every read call, the write loop that stamps every frame's hand-over,
//! and the half-close.
//!
//! It is generic over its [`Socket`] (mio's `TcpStream` in the binary, a fake in unit tests)
//! and reads time from the [`Clock`] it is handed, at exactly the points the stamping rule
//! names: right after each read call, right before each write call.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::net::TcpStream;

use super::stamping::{Inbound, KernelStamps, Outbound, ReadStamp, ReceiveTimes};
use super::transmit::{TxEvent, TxMode, TxStamps};
use super::transport::{Clock, Connector, Socket};
use super::{READ_CHUNK, WRITE_CHUNK};
use crate::log_line;
use crate::net::{self, Io};
use crate::wire;

/// The smallest payload [`Peer::send_through`] is used for. Below it, copying the frame into
/// the output buffer (where it joins the frames queued with it in one write call) costs less
/// than a write call of its own.
pub const THROUGH_MIN_PAYLOAD: usize = 16 * 1024;

/// What [`Peer::send_through`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Through {
    /// The kernel took the first `count` bytes of the frame; its write stamp is `write_ns`.
    Taken { count: usize, write_ns: u64 },
    /// Nothing was taken: queue the frame.
    NotNow,
}

/// The kernel's refusal of receive timestamps is said once per process, not per connection.
static REFUSAL_TOLD: AtomicBool = AtomicBool::new(false);

pub struct Peer<S: Socket = TcpStream> {
    pub stream: S,
    pub addr: SocketAddr,
    pub readable: bool,
    pub writable: bool,
    /// The poll reported the peer's FIN (EPOLLRDHUP): read until the EOF itself is seen.
    pub hung_up: bool,
    pub read_closed: bool,
    pub write_shut: bool,
    pub receive_times: ReceiveTimes,
    /// Transmit timestamps, once asked for (`--kernel-stamps`).
    pub tx: Option<TxStamps>,
    /// `TCP_QUICKACK` after every read that brought bytes (`--quickack`).
    pub quickack: bool,
}

impl<S: Socket> Peer<S> {
    /// Wraps a connected (or connecting) socket and asks the kernel for receive timestamps;
    /// `who` names this process in the one line said if the kernel refuses them.
    pub fn new(mut stream: S, addr: SocketAddr, who: &str) -> Peer<S> {
        let kernel = match stream.enable_receive_timestamps() {
            Ok(()) => KernelStamps::On,
            Err(error) => {
                if !REFUSAL_TOLD.swap(true, Ordering::Relaxed) {
                    log_line!(
                        "{who}: warning: no kernel receive timestamps ({error}); a frame's \
                         arrival is taken as its read, so time in a receive queue counts in \
                         the link before it"
                    );
                }
                KernelStamps::Refused
            }
        };
        Peer {
            stream,
            addr,
            readable: false,
            writable: false,
            hung_up: false,
            read_closed: false,
            write_shut: false,
            receive_times: ReceiveTimes::new(kernel),
            tx: None,
            quickack: false,
        }
    }

    /// Starts a non-blocking connect to `target`, registered for read and write readiness under
    /// `token`: the first writable readiness says how it ended ([`Peer::connected`]). The
    /// source's first hop and a hop's next hop are connected here alike.
    pub fn connect<C: Connector<Socket = S>>(
        target: SocketAddr,
        connector: &C,
        token: mio::Token,
        who: &str,
    ) -> io::Result<Peer<S>> {
        Ok(Peer::new(connector.connect(target, token)?, target, who))
    }

    /// After a writable readiness of a connecting socket: `Ok(true)` once connected,
    /// `Ok(false)` while the connect is under way (the readiness is spent), or why it failed.
    pub fn connected(&mut self) -> io::Result<bool> {
        if !self.writable {
            return Ok(false);
        }
        let connected = self.stream.connect_result()?;
        self.writable &= connected;
        Ok(connected)
    }

    /// Reads into `into` until the socket would block or the buffer is full, stamping each read
    /// right after it returns.
    pub fn fill(&mut self, clock: &impl Clock, into: &mut Inbound) -> io::Result<bool> {
        self.fill_at_most(clock, into, usize::MAX)
    }

    /// As [`Peer::fill`], stopping once `budget` bytes have been read: the socket stays
    /// readable, and the caller comes back for the rest (a hop's turn, see `hop`).
    pub fn fill_at_most(
        &mut self,
        clock: &impl Clock,
        into: &mut Inbound,
        budget: usize,
    ) -> io::Result<bool> {
        let mut progress = false;
        let mut left = budget;
        while self.readable && !self.read_closed {
            let want = into.room().min(READ_CHUNK).min(left);
            if want == 0 {
                break;
            }
            let tail = into.tail(want).expect("room checked");
            let started_ns = clock.now_ns();
            let mut kernel_ns = None;
            let stream = &mut self.stream;
            let outcome = net::classify(|| {
                stream.receive(&mut tail[..want]).map(|(count, stamp_ns)| {
                    kernel_ns = stamp_ns;
                    count
                })
            });
            match outcome {
                Io::Done(count) => {
                    // REALTIME first: a RAW reading taken later can only move the arrival
                    // later, never before the bytes.
                    let realtime_ns = clock.realtime_ns();
                    let read_ns = clock.now_ns();
                    // A short read emptied the socket; the next arrival is a new edge, so
                    // the read that would only say WouldBlock is skipped. Not once the peer's
                    // FIN has been signalled: it may sit behind these bytes, and no further
                    // edge would announce it.
                    let emptied = count < want;
                    let timed = self.receive_times.stamp(
                        started_ns,
                        read_ns,
                        realtime_ns,
                        kernel_ns,
                        emptied,
                    );
                    let stamp = ReadStamp { held_back: into.held_back(), ..timed };
                    if emptied {
                        into.queue_emptied();
                    }
                    into.received(count, stamp);
                    left -= count;
                    progress = true;
                    // After the stamp, so the call never delays it. A refusal changes nothing
                    // but the ACK's timing: not worth a word per read.
                    if self.quickack {
                        let _ = self.stream.quick_ack();
                    }
                    self.readable = !emptied || self.hung_up;
                }
                Io::Closed => self.read_closed = true,
                Io::WouldBlock => {
                    self.receive_times.saw_empty(started_ns);
                    into.queue_emptied();
                    self.readable = false;
                }
                Io::Failed(error) => return Err(error),
            }
        }
        Ok(progress)
    }

    /// Writes from `from` until it is empty or the socket would block; the frames each write
    /// starts carry the clock read right before it. With `--kernel-stamps sample`, the write a
    /// sample is due on asks for its transmit stamps itself (a `sendmsg` with a control
    /// message instead of the plain `send`: no extra call).
    pub fn flush(&mut self, clock: &impl Clock, from: &mut Outbound) -> io::Result<bool> {
        self.flush_at_most(clock, from, usize::MAX)
    }

    /// As [`Peer::flush`], stopping once `budget` bytes have been written (a hop's turn).
    pub fn flush_at_most(
        &mut self,
        clock: &impl Clock,
        from: &mut Outbound,
        budget: usize,
    ) -> io::Result<bool> {
        let mut progress = false;
        let mut left = budget;
        while self.writable && !from.is_empty() && left > 0 {
            let write_ns = if from.has_unstarted() { clock.now_ns() } else { 0 };
            // The transmit stamps' base: CLOCK_REALTIME (theirs) right before the hand-over.
            let handed_realtime_ns = if self.tx.is_some() { clock.realtime_ns() } else { 0 };
            let ask = self.tx.as_ref().is_some_and(|tx| tx.sample_due(handed_realtime_ns));
            let chunk = from.prepare_write(write_ns, WRITE_CHUNK.min(left));
            let chunk_len = chunk.len();
            let stream = &mut self.stream;
            let outcome = if ask {
                net::classify(|| stream.send_asking_tx_stamps(chunk))
            } else {
                net::classify(|| stream.send(chunk))
            };
            match outcome {
                Io::Done(count) => {
                    // A short write filled the socket's buffer: wait for the next edge.
                    self.writable = count == chunk_len;
                    left -= count;
                    from.written(count, write_ns);
                    if let Some(tx) = self.tx.as_mut() {
                        tx.wrote(count, handed_realtime_ns, ask);
                    }
                    progress = true;
                }
                Io::WouldBlock => self.writable = false,
                Io::Closed => return Err(io::ErrorKind::WriteZero.into()),
                Io::Failed(error) => return Err(error),
            }
        }
        Ok(progress)
    }

    /// Hands a frame to the kernel from where it lies, nothing queued before it: `headers`
    /// (its new header and records, this process's record last) and `payload` (still in the
    /// buffer it was read into) in one write call, the write stamp taken right before it and
    /// patched `write_stamp_at` bytes into `headers`. Forwarding a large frame this way spares
    /// copying it into the output buffer first (see [`THROUGH_MIN_PAYLOAD`]).
    ///
    /// `Through::NotNow` when the call was not made or took nothing (the socket is full, a
    /// transmit stamp is due, an error that the next flush meets again): the caller queues
    /// the frame as usual, and it is stamped by the write that starts it.
    pub fn send_through(
        &mut self,
        clock: &impl Clock,
        headers: &mut [u8],
        write_stamp_at: usize,
        payload: &[u8],
    ) -> Through {
        if !self.writable || self.write_shut {
            return Through::NotNow;
        }
        let handed_realtime_ns = if self.tx.is_some() { clock.realtime_ns() } else { 0 };
        if self.tx.as_ref().is_some_and(|tx| tx.sample_due(handed_realtime_ns)) {
            return Through::NotNow; // the flush's write asks for the stamps
        }
        let write_ns = clock.now_ns();
        wire::patch_write_stamp(&mut headers[write_stamp_at..], write_ns);
        let parts = [io::IoSlice::new(headers), io::IoSlice::new(payload)];
        let stream = &mut self.stream;
        match net::classify(|| stream.send_vectored(&parts)) {
            Io::Done(count) => {
                self.writable = count == headers.len() + payload.len();
                if let Some(tx) = self.tx.as_mut() {
                    tx.wrote(count, handed_realtime_ns, false);
                }
                Through::Taken { count, write_ns }
            }
            Io::WouldBlock => {
                self.writable = false;
                Through::NotNow
            }
            Io::Closed | Io::Failed(_) => Through::NotNow,
        }
    }

    /// Asks the kernel for transmit timestamps (`Sample` or `All`) from the next write on; an
    /// error when the kernel refuses (before Linux 6.2).
    pub fn enable_tx_stamps(&mut self, mode: TxMode) -> io::Result<()> {
        if self.tx.is_none() && mode != TxMode::Off {
            self.stream.enable_transmit_timestamps(mode == TxMode::All)?;
            self.tx = Some(TxStamps::new(mode));
        }
        Ok(())
    }

    /// After an error event: reads the transmit stamps waiting on the error queue. Returns
    /// whether there were any; an error event with none is a real socket error.
    pub fn read_tx_stamps(&mut self) -> bool {
        let Some(tx) = self.tx.as_mut() else { return false };
        let read = self.stream.read_error_queue(|acked, key, realtime_ns| {
            let event = if acked { TxEvent::Acked } else { TxEvent::Sent };
            tx.stamped(event, key, realtime_ns);
        });
        matches!(read, Ok(entries) if entries > 0)
    }

    /// What a poll event says of this socket. An error event on a socket with transmit
    /// stamps is first the error queue: only an error event that brought none, or a hang-up,
    /// means the peer is gone.
    pub fn on_event(&mut self, event: &mio::event::Event) {
        let stamps = event.is_error() && self.read_tx_stamps();
        self.hung_up |= event.is_read_closed() || (event.is_error() && !stamps);
        self.readable |= event.is_readable() || self.hung_up;
        self.writable |=
            event.is_writable() || event.is_write_closed() || (event.is_error() && !stamps);
    }

    /// Makes the socket's close a reset (SO_LINGER 0), as a broken server's would be: for a
    /// peer that must hear that the connection failed, not that it ended.
    pub fn reset(&mut self) {
        self.stream.reset_on_close();
    }

    pub fn shut_write(&mut self) {
        if !self.write_shut {
            self.write_shut = true;
            // The peer may already be gone; the read side reports that.
            let _ = self.stream.shutdown_write();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fake::{FakeClock, FakeSocket, Remote, wake};
    use crate::wire::ReceiveClock;

    fn peer(clock: &FakeClock) -> (Peer<FakeSocket>, Remote) {
        let (socket, remote) = FakeSocket::accepted(clock, "127.0.0.1:9000".parse().unwrap());
        (Peer::new(socket, "127.0.0.1:50000".parse().unwrap(), "test"), remote)
    }

    #[test]
    fn test_a_kernel_receive_stamp_becomes_the_wait_in_the_receive_queue() {
        let clock = FakeClock::at(10_000);
        let (mut peer, remote) = peer(&clock);
        let mut inbound = Inbound::with_capacity(1 << 16).unwrap();
        // The bytes waited 700 ns in the receive queue; the read itself takes 50.
        remote.wire().kernel_stamp_ago_ns = Some(700);
        remote.wire().read_takes_ns = 50;
        remote.arrive(b"abc");
        wake(&mut peer);
        assert!(peer.fill(&clock, &mut inbound).unwrap());
        let stamp = inbound.stamp_of_head(3);
        assert_eq!(stamp.read_ns, 10_050, "the clock right after the read");
        assert_eq!((stamp.receive, stamp.receive_wait_ns), (ReceiveClock::Kernel, 750));
        // Without a kernel stamp, the read is the arrival.
        clock.set(20_000);
        remote.wire().kernel_stamp_ago_ns = None;
        remote.arrive(b"d");
        wake(&mut peer);
        peer.fill(&clock, &mut inbound).unwrap();
        assert_eq!(inbound.stamp_of_head(4).receive, ReceiveClock::AfterRead);
    }

    #[test]
    fn test_a_kernel_stamp_from_before_the_queue_was_last_seen_empty_is_rejected() {
        let clock = FakeClock::at(10_000);
        let (mut peer, remote) = peer(&clock);
        let mut inbound = Inbound::with_capacity(1 << 16).unwrap();
        remote.wire().kernel_stamp_ago_ns = Some(0);
        remote.wire().read_takes_ns = 0;
        remote.arrive(b"abc");
        wake(&mut peer);
        peer.fill(&clock, &mut inbound).unwrap();
        // Stamped at the call, read at the call: a zero wait, believable.
        assert_eq!(inbound.stamp_of_head(3).receive, ReceiveClock::Kernel);
        inbound.consume(3);
        // The first read left the queue empty at 10,000; bytes stamped 5,000 ns before the
        // next read, also at 10,000, would have been there then: impossible (a stepped clock).
        remote.wire().kernel_stamp_ago_ns = Some(5_000);
        remote.arrive(b"e");
        wake(&mut peer);
        peer.fill(&clock, &mut inbound).unwrap();
        let stamp = inbound.stamp_of_head(1);
        assert_eq!((stamp.receive, stamp.receive_wait_ns), (ReceiveClock::KernelRejected, 0));
        assert_eq!(peer.receive_times.rejected, 1);
    }

    #[test]
    fn test_fill_at_most_stops_at_its_budget_and_the_socket_stays_readable() {
        let clock = FakeClock::at(1_000);
        let (mut peer, remote) = peer(&clock);
        let mut inbound = Inbound::with_capacity(1 << 20).unwrap();
        remote.arrive(&[7; 200_000]);
        wake(&mut peer);
        peer.fill_at_most(&clock, &mut inbound, 100_000).unwrap();
        assert_eq!(inbound.len(), 100_000);
        assert!(peer.readable, "the rest is for the next turn, without a new edge");
        peer.fill(&clock, &mut inbound).unwrap();
        assert_eq!(inbound.len(), 200_000);
        assert!(!peer.readable, "a short read emptied the socket");
    }

    #[test]
    fn test_a_hang_up_behind_the_bytes_is_read_to_the_end() {
        let clock = FakeClock::at(1_000);
        let (mut peer, remote) = peer(&clock);
        let mut inbound = Inbound::with_capacity(1 << 16).unwrap();
        remote.arrive(b"last words");
        remote.close();
        wake(&mut peer);
        peer.fill(&clock, &mut inbound).unwrap();
        assert_eq!(inbound.data(), b"last words");
        assert!(peer.read_closed, "the EOF behind a short read is seen without another edge");
    }

    #[test]
    fn test_a_refused_write_hands_nothing_over_and_waits_for_the_next_edge() {
        let clock = FakeClock::at(1_000);
        let (mut peer, remote) = peer(&clock);
        let mut outbound = Outbound::with_capacity(1 << 16).unwrap();
        outbound.push(b"hello");
        remote.set_room(0);
        wake(&mut peer);
        assert!(!peer.flush(&clock, &mut outbound).unwrap());
        assert_eq!((outbound.len(), peer.writable), (5, false));
        assert_eq!(remote.wire().refused_writes, 1, "one call, not a spin");
        remote.set_room(3);
        wake(&mut peer);
        assert!(peer.flush(&clock, &mut outbound).unwrap());
        assert_eq!((remote.take_sent(), peer.writable), (b"hel".to_vec(), false));
        remote.set_room(usize::MAX);
        wake(&mut peer);
        peer.flush(&clock, &mut outbound).unwrap();
        assert_eq!(remote.take_sent(), b"lo");
        assert!(outbound.is_empty());
    }
}
