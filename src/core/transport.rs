//! What the connection core needs of the world, as traits: a [`Socket`] (one read with the
//! kernel's receive stamp if any, one write, the half-close, the kernel's optional evidence), a
//! [`Connector`] that opens the next hop's socket, and a [`Clock`]. The real binary uses mio's
//! `TcpStream`, a [`Registered`] connector around the poll's registry and the [`SystemClock`];
//! unit tests use the fakes of `core::fake`, which decide when bytes arrive, when a write is
//! refused, when a connect completes or fails, and what time it is.
//!
//! Everything is static dispatch: `Peer<S>` and the hop's `Connection<S>` are generic, and the
//! real types are zero-cost wrappers around the calls the core made before (the same `recvmsg`,
//! `write`, `clock_gettime`), so the hot path has no `dyn` and no copy that was not there.

use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::AsRawFd;

use mio::net::TcpStream;

use crate::clock;
use crate::kernel::TcpInfo;
use crate::net;

/// The stamp clock and the kernel's receive-stamp clock, read where the stamping rule says.
pub trait Clock {
    /// CLOCK_MONOTONIC_RAW, nanoseconds: every stamp.
    fn now_ns(&self) -> u64;
    /// CLOCK_REALTIME, nanoseconds since the epoch: the base of kernel stamps.
    fn realtime_ns(&self) -> u64;
}

/// The host's clocks ([`crate::clock`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now_ns(&self) -> u64 {
        clock::now_ns()
    }

    #[inline]
    fn realtime_ns(&self) -> u64 {
        clock::realtime_ns()
    }
}

/// One non-blocking TCP socket as the core uses it. Errors follow `std::io`: `WouldBlock` when
/// the kernel has nothing (or no room), `Ok(0)` from [`Socket::receive`] for the peer's EOF.
pub trait Socket {
    /// One read into `into`: the bytes read and the kernel's receive stamp (REALTIME ns) of
    /// the last of them, when the kernel gave one.
    fn receive(&mut self, into: &mut [u8]) -> io::Result<(usize, Option<u64>)>;
    /// One write: how many bytes the kernel took.
    fn send(&mut self, from: &[u8]) -> io::Result<usize>;
    /// As [`Socket::send`], asking for this write's transmit stamps (`--kernel-stamps sample`).
    fn send_asking_tx_stamps(&mut self, from: &[u8]) -> io::Result<usize>;
    /// One write of `parts` in order (a frame's new headers and its payload from where it was
    /// read): how many bytes the kernel took.
    fn send_vectored(&mut self, parts: &[io::IoSlice<'_>]) -> io::Result<usize>;
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Makes the close a reset (SO_LINGER 0).
    fn reset_on_close(&mut self);
    /// After a writable readiness of a connecting socket: `Ok(true)` connected, `Ok(false)`
    /// still connecting, or why it failed.
    fn connect_result(&mut self) -> io::Result<bool>;
    fn local_addr(&self) -> Option<SocketAddr>;
    fn enable_receive_timestamps(&mut self) -> io::Result<()>;
    fn enable_transmit_timestamps(&mut self, every_write: bool) -> io::Result<()>;
    /// Reads the transmit stamps waiting on the error queue, each as (acked, key, REALTIME ns);
    /// returns how many there were.
    fn read_error_queue(&mut self, stamped: impl FnMut(bool, u32, u64)) -> io::Result<usize>;
    fn quick_ack(&mut self) -> io::Result<()>;
    fn tcp_info(&self) -> Option<TcpInfo>;
}

impl Socket for TcpStream {
    #[inline]
    fn receive(&mut self, into: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
        net::receive(self.as_raw_fd(), into)
    }

    #[inline]
    fn send(&mut self, from: &[u8]) -> io::Result<usize> {
        self.write(from)
    }

    fn send_asking_tx_stamps(&mut self, from: &[u8]) -> io::Result<usize> {
        net::send_asking_tx_stamps(self.as_raw_fd(), from)
    }

    #[inline]
    fn send_vectored(&mut self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.write_vectored(parts)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }

    fn reset_on_close(&mut self) {
        // Best effort: the close that follows happens either way.
        let _ = socket2::SockRef::from(&*self).set_linger(Some(std::time::Duration::ZERO));
    }

    fn connect_result(&mut self) -> io::Result<bool> {
        net::connect_result(self)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        TcpStream::local_addr(self).ok()
    }

    fn enable_receive_timestamps(&mut self) -> io::Result<()> {
        net::enable_receive_timestamps(self.as_raw_fd())
    }

    fn enable_transmit_timestamps(&mut self, every_write: bool) -> io::Result<()> {
        net::enable_transmit_timestamps(self.as_raw_fd(), every_write)
    }

    fn read_error_queue(&mut self, stamped: impl FnMut(bool, u32, u64)) -> io::Result<usize> {
        net::read_error_queue(self.as_raw_fd(), stamped)
    }

    #[inline]
    fn quick_ack(&mut self) -> io::Result<()> {
        net::quick_ack(self.as_raw_fd())
    }

    fn tcp_info(&self) -> Option<TcpInfo> {
        net::tcp_info(self.as_raw_fd())
    }
}

/// Opens sockets to a next hop (non-blocking: the first writable readiness says how the
/// connect ended, [`Socket::connect_result`]) and forgets them when they are dropped early; the
/// clock comes with it, so a test's connector and clock are one fake world.
pub trait Connector: Clock {
    type Socket: Socket;
    /// Starts a connect to `target`, its readiness reported under `token`.
    fn connect(&self, target: SocketAddr, token: mio::Token) -> io::Result<Self::Socket>;
    /// The socket is dropped before its connection ends: stop its readiness events.
    fn forget(&self, socket: &mut Self::Socket);
}

/// The real connector: mio sockets registered with the poll, the host's clocks.
pub struct Registered<'a> {
    pub registry: &'a mio::Registry,
}

impl Clock for Registered<'_> {
    #[inline]
    fn now_ns(&self) -> u64 {
        SystemClock.now_ns()
    }

    #[inline]
    fn realtime_ns(&self) -> u64 {
        SystemClock.realtime_ns()
    }
}

impl Connector for Registered<'_> {
    type Socket = TcpStream;

    fn connect(&self, target: SocketAddr, token: mio::Token) -> io::Result<TcpStream> {
        let mut stream = net::connect(target)?;
        self.registry.register(
            &mut stream,
            token,
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        Ok(stream)
    }

    fn forget(&self, socket: &mut TcpStream) {
        let _ = self.registry.deregister(socket);
    }
}
