//! Fakes of the [`transport`](super::transport) traits for unit tests: a clock the test sets,
//! sockets whose far end ([`Remote`]) the test holds (it decides what arrives and when, how much
//! a write may hand over, when a connect completes or fails) and a connector that hands out
//! such sockets. Nothing here sleeps or touches the network.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use super::Peer;
use super::transport::{Clock, Connector, Socket};
use crate::kernel::TcpInfo;

/// REALTIME is RAW plus this, so the two clocks cannot be confused in an assertion.
pub const REALTIME_OFFSET_NS: u64 = 1_700_000_000_000_000_000;

/// Fake time, shared by the test, its sockets and its connector. Every reading advances it by
/// `tick_ns` (zero unless asked), so successive readings are told apart: a stamp shows which
/// reading it was.
#[derive(Clone, Default)]
pub struct FakeClock {
    now_ns: Rc<Cell<u64>>,
    tick_ns: Rc<Cell<u64>>,
}

impl FakeClock {
    pub fn at(now_ns: u64) -> FakeClock {
        let clock = FakeClock::default();
        clock.set(now_ns);
        clock
    }

    pub fn set(&self, now_ns: u64) {
        self.now_ns.set(now_ns);
    }

    pub fn advance(&self, by_ns: u64) {
        self.now_ns.set(self.now_ns.get() + by_ns);
    }

    pub fn tick_every_reading(&self, tick_ns: u64) {
        self.tick_ns.set(tick_ns);
    }

    /// The time now, without it counting as a reading.
    pub fn peek(&self) -> u64 {
        self.now_ns.get()
    }

    fn read(&self) -> u64 {
        let now_ns = self.now_ns.get();
        self.now_ns.set(now_ns + self.tick_ns.get());
        now_ns
    }
}

impl Clock for FakeClock {
    fn now_ns(&self) -> u64 {
        self.read()
    }

    fn realtime_ns(&self) -> u64 {
        self.read() + REALTIME_OFFSET_NS
    }
}

/// How a fake connect stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectState {
    Pending,
    Connected,
    Failed(io::ErrorKind),
}

/// One call that handed bytes over: when (fake time at the call) and which bytes of the
/// stream (`start..start + len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handover {
    pub at_ns: u64,
    pub start: usize,
    pub len: usize,
    /// The buffers the call gathered its bytes from (1 for a plain write).
    pub parts: usize,
}

/// The far end of a fake socket and the kernel between: what the test controls and sees.
pub struct Wire {
    /// Bytes that have arrived and wait to be read.
    pub inbox: VecDeque<u8>,
    /// The peer's FIN, after the inbox.
    pub eof: bool,
    /// The next read fails with this (a reset, say).
    pub read_error: Option<io::ErrorKind>,
    /// Every byte the kernel took, in order.
    pub sent: Vec<u8>,
    pub handovers: Vec<Handover>,
    /// Bytes the kernel's send buffer still takes; a write with none is refused (WouldBlock).
    pub room: usize,
    pub write_shut: bool,
    pub reset: bool,
    pub connect: ConnectState,
    /// How long a read call that brings bytes takes (the copy): the fake clock moves on by
    /// this during the call, so a stamp taken before the call shows.
    pub read_takes_ns: u64,
    /// The kernel stamps each read's bytes as having arrived this long before the call
    /// (REALTIME); `None`: no kernel stamp.
    pub kernel_stamp_ago_ns: Option<u64>,
    /// Read calls made, and writes refused for want of room.
    pub reads: usize,
    pub refused_writes: usize,
}

/// A test's handle on one fake socket's far end.
#[derive(Clone)]
pub struct Remote(pub Rc<RefCell<Wire>>);

impl Remote {
    fn new(connect: ConnectState) -> Remote {
        Remote(Rc::new(RefCell::new(Wire {
            inbox: VecDeque::new(),
            eof: false,
            read_error: None,
            sent: Vec::new(),
            handovers: Vec::new(),
            room: usize::MAX,
            write_shut: false,
            reset: false,
            connect,
            read_takes_ns: 0,
            kernel_stamp_ago_ns: None,
            reads: 0,
            refused_writes: 0,
        })))
    }

    /// Bytes arrive from the peer (at the fake clock's time: the test sets it first).
    pub fn arrive(&self, bytes: &[u8]) {
        self.0.borrow_mut().inbox.extend(bytes);
    }

    pub fn close(&self) {
        self.0.borrow_mut().eof = true;
    }

    /// Everything handed over so far, taken out.
    pub fn take_sent(&self) -> Vec<u8> {
        std::mem::take(&mut self.0.borrow_mut().sent)
    }

    pub fn set_room(&self, room: usize) {
        self.0.borrow_mut().room = room;
    }

    pub fn wire(&self) -> std::cell::RefMut<'_, Wire> {
        self.0.borrow_mut()
    }
}

pub struct FakeSocket {
    remote: Remote,
    clock: FakeClock,
    local: SocketAddr,
}

impl FakeSocket {
    /// An accepted (connected) socket and the test's handle on its far end.
    pub fn accepted(clock: &FakeClock, local: SocketAddr) -> (FakeSocket, Remote) {
        let remote = Remote::new(ConnectState::Connected);
        (FakeSocket { remote: remote.clone(), clock: clock.clone(), local }, remote)
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }
}

fn refused(kind: io::ErrorKind) -> io::Error {
    io::Error::from(kind)
}

impl Socket for FakeSocket {
    fn receive(&mut self, into: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
        let mut wire = self.remote.0.borrow_mut();
        wire.reads += 1;
        if let Some(kind) = wire.read_error.take() {
            return Err(refused(kind));
        }
        if wire.inbox.is_empty() {
            return if wire.eof { Ok((0, None)) } else { Err(refused(io::ErrorKind::WouldBlock)) };
        }
        let count = into.len().min(wire.inbox.len());
        for (slot, byte) in into.iter_mut().zip(wire.inbox.drain(..count)) {
            *slot = byte;
        }
        let kernel_ns =
            wire.kernel_stamp_ago_ns.map(|ago_ns| self.clock.peek() + REALTIME_OFFSET_NS - ago_ns);
        self.clock.advance(wire.read_takes_ns);
        Ok((count, kernel_ns))
    }

    fn send(&mut self, from: &[u8]) -> io::Result<usize> {
        let mut wire = self.remote.0.borrow_mut();
        if wire.write_shut {
            return Err(refused(io::ErrorKind::BrokenPipe));
        }
        if wire.room == 0 {
            wire.refused_writes += 1;
            return Err(refused(io::ErrorKind::WouldBlock));
        }
        let len = from.len().min(wire.room);
        wire.room = wire.room.saturating_sub(len);
        let start = wire.handovers.iter().map(|handover| handover.len).sum();
        wire.sent.extend_from_slice(&from[..len]);
        wire.handovers.push(Handover { at_ns: self.clock.peek(), start, len, parts: 1 });
        Ok(len)
    }

    fn send_asking_tx_stamps(&mut self, from: &[u8]) -> io::Result<usize> {
        self.send(from)
    }

    /// One handover of the parts' bytes, as the kernel's `writev` is one write.
    fn send_vectored(&mut self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let bytes: Vec<u8> = parts.iter().flat_map(|part| part.iter().copied()).collect();
        let taken = self.send(&bytes)?;
        if let Some(call) = self.remote.0.borrow_mut().handovers.last_mut() {
            call.parts = parts.len();
        }
        Ok(taken)
    }

    fn shutdown_write(&mut self) -> io::Result<()> {
        self.remote.0.borrow_mut().write_shut = true;
        Ok(())
    }

    fn reset_on_close(&mut self) {
        self.remote.0.borrow_mut().reset = true;
    }

    fn connect_result(&mut self) -> io::Result<bool> {
        match self.remote.0.borrow().connect {
            ConnectState::Pending => Ok(false),
            ConnectState::Connected => Ok(true),
            ConnectState::Failed(kind) => Err(refused(kind)),
        }
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.local)
    }

    fn enable_receive_timestamps(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn enable_transmit_timestamps(&mut self, _every_write: bool) -> io::Result<()> {
        Err(refused(io::ErrorKind::Unsupported))
    }

    fn read_error_queue(&mut self, _stamped: impl FnMut(bool, u32, u64)) -> io::Result<usize> {
        Ok(0)
    }

    fn quick_ack(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn tcp_info(&self) -> Option<TcpInfo> {
        None
    }
}

/// Hands out fake sockets for connects; the test holds their far ends in `connects`.
pub struct FakeConnector {
    pub clock: FakeClock,
    /// Each connect's target and far end, in order.
    pub connects: RefCell<Vec<(SocketAddr, Remote)>>,
    /// The next connect call fails at once with this (no route, say).
    pub fail_next: Cell<Option<io::ErrorKind>>,
    /// How new connects start: `Pending` until the test says, or already over.
    pub starts: Cell<ConnectState>,
    pub forgotten: Cell<usize>,
}

impl FakeConnector {
    pub fn new(clock: &FakeClock) -> FakeConnector {
        FakeConnector {
            clock: clock.clone(),
            connects: RefCell::new(Vec::new()),
            fail_next: Cell::new(None),
            starts: Cell::new(ConnectState::Pending),
            forgotten: Cell::new(0),
        }
    }

    /// The far end of the `index`th connect.
    pub fn remote(&self, index: usize) -> Remote {
        self.connects.borrow()[index].1.clone()
    }
}

impl Clock for FakeConnector {
    fn now_ns(&self) -> u64 {
        self.clock.now_ns()
    }

    fn realtime_ns(&self) -> u64 {
        self.clock.realtime_ns()
    }
}

impl Connector for FakeConnector {
    type Socket = FakeSocket;

    fn connect(&self, target: SocketAddr, _token: mio::Token) -> io::Result<FakeSocket> {
        if let Some(kind) = self.fail_next.take() {
            return Err(refused(kind));
        }
        let remote = Remote::new(self.starts.get());
        self.connects.borrow_mut().push((target, remote.clone()));
        let local: SocketAddr = "127.0.0.1:40000".parse().expect("an address");
        Ok(FakeSocket { remote, clock: self.clock.clone(), local })
    }

    fn forget(&self, _socket: &mut FakeSocket) {
        self.forgotten.set(self.forgotten.get() + 1);
    }
}

/// What a poll would report of a fake socket now: readable with bytes, an EOF or an error
/// waiting; writable once the connect has ended either way, room or not. A full socket is
/// reported writable on purpose: mio documents spurious readiness, and the core must meet it
/// with one refused write (`WouldBlock`), not a busy loop or a lost stamp.
pub fn wake(peer: &mut Peer<FakeSocket>) {
    let wire = peer.stream.remote.0.borrow();
    peer.hung_up |= wire.eof;
    peer.readable |= !wire.inbox.is_empty() || wire.eof || wire.read_error.is_some();
    peer.writable |= wire.connect != ConnectState::Pending;
}
