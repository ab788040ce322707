//! One TCP socket of a connection, at the source or a hop: its software readiness (following
//! sozu, an event sets a flag and only `WouldBlock`, or a short read or write, clears it), the
//! read loop that stamps every read call, the write loop that stamps every frame's hand-over,
//! and the half-close.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::net::TcpStream;

use super::stamping::{Inbound, KernelStamps, Outbound, ReadStamp, ReceiveTimes};
use super::transmit::{TxEvent, TxStamps};
use super::{READ_CHUNK, WRITE_CHUNK};
use crate::clock;
use crate::log_line;
use crate::net::{self, Io};

/// The kernel's refusal of receive timestamps is said once per process, not per connection.
static REFUSAL_TOLD: AtomicBool = AtomicBool::new(false);

pub struct Peer {
    pub stream: TcpStream,
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
}

impl Peer {
    /// Wraps a connected (or connecting) socket and asks the kernel for receive timestamps;
    /// `who` names this process in the one line said if the kernel refuses them.
    pub fn new(stream: TcpStream, addr: SocketAddr, who: &str) -> Peer {
        let kernel = match net::enable_receive_timestamps(stream.as_raw_fd()) {
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
        }
    }

    /// Reads into `into` until the socket would block or the buffer is full, stamping each read
    /// right after it returns.
    pub fn fill(&mut self, into: &mut Inbound) -> io::Result<bool> {
        self.fill_at_most(into, usize::MAX)
    }

    /// As [`Peer::fill`], stopping once `budget` bytes have been read: the socket stays
    /// readable, and the caller comes back for the rest (a hop's turn, see `hop`).
    pub fn fill_at_most(&mut self, into: &mut Inbound, budget: usize) -> io::Result<bool> {
        let mut progress = false;
        let mut left = budget;
        let fd = self.stream.as_raw_fd();
        while self.readable && !self.read_closed {
            let want = into.room().min(READ_CHUNK).min(left);
            if want == 0 {
                break;
            }
            let tail = into.tail(want).expect("room checked");
            let started_ns = clock::now_ns();
            let mut kernel_ns = None;
            let outcome = net::classify(|| {
                net::receive(fd, &mut tail[..want]).map(|(count, stamp_ns)| {
                    kernel_ns = stamp_ns;
                    count
                })
            });
            match outcome {
                Io::Done(count) => {
                    // REALTIME first: a RAW reading taken later can only move the arrival
                    // later, never before the bytes.
                    let realtime_ns = clock::realtime_ns();
                    let read_ns = clock::now_ns();
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
    /// starts carry the clock read right before it.
    pub fn flush(&mut self, from: &mut Outbound) -> io::Result<bool> {
        self.flush_at_most(from, usize::MAX)
    }

    /// As [`Peer::flush`], stopping once `budget` bytes have been written (a hop's turn).
    pub fn flush_at_most(&mut self, from: &mut Outbound, budget: usize) -> io::Result<bool> {
        let mut progress = false;
        let mut left = budget;
        while self.writable && !from.is_empty() && left > 0 {
            let write_ns = if from.has_unstarted() { clock::now_ns() } else { 0 };
            // The transmit stamps' base: CLOCK_REALTIME (theirs) right before the hand-over.
            let handed_realtime_ns = if self.tx.is_some() { clock::realtime_ns() } else { 0 };
            let chunk = from.prepare_write(write_ns, WRITE_CHUNK.min(left));
            let chunk_len = chunk.len();
            match net::classify(|| self.stream.write(chunk)) {
                Io::Done(count) => {
                    // A short write filled the socket's buffer: wait for the next edge.
                    self.writable = count == chunk_len;
                    left -= count;
                    from.written(count, write_ns);
                    if let Some(tx) = self.tx.as_mut() {
                        tx.wrote(count, handed_realtime_ns);
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

    /// Asks the kernel for transmit timestamps from the next write on; an error when the kernel
    /// refuses (before Linux 6.2).
    pub fn enable_tx_stamps(&mut self) -> io::Result<()> {
        if self.tx.is_none() {
            net::enable_transmit_timestamps(self.stream.as_raw_fd())?;
            self.tx = Some(TxStamps::default());
        }
        Ok(())
    }

    /// After an error event: reads the transmit stamps waiting on the error queue. Returns
    /// whether there were any; an error event with none is a real socket error.
    pub fn read_tx_stamps(&mut self) -> bool {
        let Some(tx) = self.tx.as_mut() else { return false };
        let read = net::read_error_queue(self.stream.as_raw_fd(), |acked, key, realtime_ns| {
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
        // Best effort: the close that follows happens either way.
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(std::time::Duration::ZERO));
    }

    pub fn shut_write(&mut self) {
        if !self.write_shut {
            self.write_shut = true;
            // The peer may already be gone; the read side reports that.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }
}
