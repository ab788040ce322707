//! The connection core shared by the source and every hop: a socket with its software
//! readiness ([`Peer`]: fill, flush, half-close) and the two stamped buffers between sockets and
//! frames ([`Inbound`], [`Outbound`]). It owns the one stamping rule of the tool:
//!
//! - **A read stamp never precedes the arrival of the frame's last byte.** It is the clock
//!   read right after the read call that completed the frame (every frame completed by one read
//!   shares that read's stamp), never an earlier wake-up's or round's. Where the kernel gives a
//!   receive timestamp, the frame also carries how long its last bytes had waited in the receive
//!   queue: that wait belongs to the hop that read late, not to the link before it.
//! - **A write stamp never precedes the frame's hand-over to the kernel.** It travels inside
//!   the frame, so it is taken immediately before the write call that starts handing the frame
//!   over, with the socket known writable, and patched into the buffered frame then; a frame
//!   still waiting in user space when a write stops short is patched again before the next
//!   write. Time in the kernel's send queue stays in the link.
//!
//! What the roles do with frames (restamp, turn, strip) is theirs; this module only finds where
//! a frame ends and which read completed it ([`Inbound::next_frame`]). The stamping state ([`stamping`]) has no sockets and takes the time as an argument, so
//! its rules are unit-tested with hand-made timestamps; [`peer`] is the thin I/O around it.
//! [`transmit`] matches the kernel's transmit timestamps (`--kernel-stamps`) to the writes they
//! belong to, also without sockets. [`transport`] is what the core asks of the world (a
//! socket, a connector, a clock) as traits, so `Peer` and the hop's connection run on fake
//! sockets and fake time in unit tests (`fake`, test builds only).

#[cfg(test)]
pub mod fake;
pub mod peer;
pub mod stamping;
pub mod transmit;
pub mod transport;

pub use peer::{Peer, THROUGH_MIN_PAYLOAD, Through};
pub use stamping::{Inbound, Outbound, ReadStamp, ResidenceSink, SharedResidence};
pub use transport::{Clock, Connector, Registered, Socket, SystemClock};

/// Reads are capped so that a connection carrying small frames touches little of its buffer.
pub const READ_CHUNK: usize = 64 * 1024;
/// Writes are capped so that the frames one write call could start, whose write stamps are
/// patched right before it, are a bounded number (see `Outbound::prepare_write`).
pub const WRITE_CHUNK: usize = 256 * 1024;
