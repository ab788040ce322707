//! The wire format: frames, their stamp records and the path entries, without any I/O.
//!
//! Every frame is a fixed header, then `record_count` stamp records, then the payload:
//!
//! ```text
//!  0      4   5    6       7     8            16            20
//!  +------+---+----+-------+-----+------------+-------------+----------------+---------+
//!  |magic |ver|kind|records|flags| sequence   | payload len | records × 32 B | payload |
//!  +------+---+----+-------+-----+------------+-------------+----------------+---------+
//! ```
//!
//! All integers are big-endian. A stamp record (since version 2) is
//!
//! ```text
//!  0     1           2               3       4          8         16         24                 32
//!  +-----+-----------+---------------+-------+----------+---------+----------+------------------+
//!  | hop | direction | receive clock | flags | reserved | read_ns | write_ns | receive_wait_ns  |
//!  +-----+-----------+---------------+-------+----------+---------+----------+------------------+
//! ```
//!
//! `read_ns` and `write_ns` are that hop's CLOCK_MONOTONIC_RAW times right after the read call
//! that completed the frame and right before the write call that started handing it to the
//! kernel; `receive_wait_ns` is how long the frame's last bytes had waited in the hop's receive
//! queue before that read, from the kernel's receive timestamp (zero when the kernel gave none,
//! which `receive clock` says). Flag bit 0, *held back*: the hop had stopped reading this
//! socket because its own output was full, so the wait is backpressure from further on, not a
//! slow reader. Records are only ever compared with records of the same hop, so
//! hosts need no clock synchronisation. Version 1 had 20-byte records without the receive
//! clock and wait; version 3 added [`Tag`]s to every [`PathEntry`]. A hop refuses frames of
//! any other version than its own with a line naming both versions.
//!
//! Following smoltcp, [`Frame`] is a view over a buffer: [`Frame::new_checked`] validates every
//! limit once, after which no accessor can panic. Peer input goes through [`frame_len`] (the
//! incremental step: "is a whole frame here yet?") and then `new_checked`, always.

use std::fmt;
use std::net::SocketAddr;

pub use crate::core::transmit::TxMode;
pub use crate::kernel::{Side, TcpInfo, TxTotals};

/// "SSTS": subsegment TCP speeds.
pub const MAGIC: [u8; 4] = *b"SSTS";
/// 4: FAULT frames carry a code; 3: path entries carry tags; 2: 32-byte records with the
/// receive clock; 1: 20-byte records.
pub const VERSION: u8 = 4;
pub const HEADER_LEN: usize = 20;
pub const RECORD_LEN: usize = 32;
/// Hops in a chain, the source and the echoing end included. A forwarding loop (A→B→A…)
/// grows the path by one hop per pass and is stopped here.
pub const MAX_HOPS: usize = 32;
/// Each hop stamps at most twice (once each way), the echoing end once.
pub const MAX_RECORDS: usize = 2 * MAX_HOPS;
/// The largest payload of a frame, and so the largest `--stdin-block-size`.
pub const MAX_PAYLOAD: usize = 1 << 20;
pub const MAX_HEADERS_LEN: usize = HEADER_LEN + MAX_RECORDS * RECORD_LEN;
pub const MAX_FRAME_LEN: usize = MAX_HEADERS_LEN + MAX_PAYLOAD;
/// Header flag of a PATH frame: the source asks every hop for [`Kind::Kernel`] samples. A
/// frame with a flag its kind does not have is refused.
pub const PATH_ASKS_KERNEL_INFO: u8 = 1;
/// Header flag of a PATH frame: the source asks every hop for transmit timestamps on its
/// sockets (`--kernel-stamps all`), which its KERNEL samples then carry.
pub const PATH_ASKS_TX_STAMPS: u8 = 2;
/// Header flag of a DATA frame: bytes an ordinary server sent, framed by the egress (`-r`) in
/// front of it and travelling upstream. Its records start at the egress (no hop stamped it on
/// the way down), and it answers no frame: relays pass it on, the source or ingress delivers
/// its payload. Without the flag, a DATA frame going up is an answer to one that went down.
pub const DATA_FROM_SERVER: u8 = 1;
/// Header flag of a PATH frame, only beside [`PATH_ASKS_TX_STAMPS`]: the stamps are sampled
/// (`--kernel-stamps sample`, one write per socket and tick asks for them). Alone it means
/// nothing and is refused, like a flag no kind has.
pub const PATH_SAMPLES_TX_STAMPS: u8 = 4;
/// Header flag of a PATH frame: every hop (and the source) sets `TCP_QUICKACK` after each read
/// (`--quickack`), so the peers' kernels see their ACKs at once even where the routes have no
/// `quickack 1`.
pub const PATH_ASKS_QUICKACK: u8 = 8;
/// Every flag a PATH frame may carry.
const PATH_FLAGS: u8 =
    PATH_ASKS_KERNEL_INFO | PATH_ASKS_TX_STAMPS | PATH_SAMPLES_TX_STAMPS | PATH_ASKS_QUICKACK;

/// A PATH frame's flags for what the source asks of every hop.
pub fn path_flags(kernel_info: bool, tx: TxMode) -> u8 {
    let mut flags = if kernel_info { PATH_ASKS_KERNEL_INFO } else { 0 };
    match tx {
        TxMode::Off => {}
        TxMode::All => flags |= PATH_ASKS_TX_STAMPS,
        TxMode::Sample => flags |= PATH_ASKS_TX_STAMPS | PATH_SAMPLES_TX_STAMPS,
    }
    flags
}

/// The transmit stamps a checked PATH frame's flags ask for.
pub fn path_tx_mode(flags: u8) -> TxMode {
    match (flags & PATH_ASKS_TX_STAMPS != 0, flags & PATH_SAMPLES_TX_STAMPS != 0) {
        (false, _) => TxMode::Off,
        (true, false) => TxMode::All,
        (true, true) => TxMode::Sample,
    }
}
/// Most fields a KERNEL sample may carry (this build sends [`crate::kernel::FIELDS`]).
pub const MAX_KERNEL_FIELDS: usize = 32;

mod field {
    use std::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const RECORD_COUNT: usize = 6;
    pub const FLAGS: usize = 7;
    pub const SEQUENCE: Range<usize> = 8..16;
    pub const PAYLOAD_LEN: Range<usize> = 16..20;

    pub mod record {
        use std::ops::Range;
        pub const HOP: usize = 0;
        pub const DIRECTION: usize = 1;
        pub const RECEIVE_CLOCK: usize = 2;
        pub const FLAGS: usize = 3;
        pub const RESERVED: Range<usize> = 4..8;
        pub const READ_NS: Range<usize> = 8..16;
        pub const WRITE_NS: Range<usize> = 16..24;
        pub const RECEIVE_WAIT_NS: Range<usize> = 24..32;
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A block of the source's input, stamped by every hop.
    Data = 1,
    /// Path discovery: each hop appends a [`PathEntry`] to the payload on the way down.
    Path = 2,
    /// A hop could not go on (next hop unreachable, reset, bad input): the payload is a
    /// [`Fault`], travelling upstream to the source.
    Fault = 3,
    /// A hop's `TCP_INFO` reading of one of its sockets, travelling upstream to the source
    /// ([`KernelSample`]); sent only when the source's PATH frame asked for it
    /// ([`PATH_ASKS_KERNEL_INFO`]).
    Kernel = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Data),
            2 => Some(Kind::Path),
            3 => Some(Kind::Fault),
            4 => Some(Kind::Kernel),
            _ => None,
        }
    }
}

/// Which way a stamp record's frame was travelling at that hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the source towards the echoing end.
    Down = 0,
    /// From the echoing end back to the source.
    Up = 1,
    /// At the echoing end: read going down, written going up.
    Turn = 2,
}

impl Direction {
    fn from_byte(byte: u8) -> Option<Direction> {
        match byte {
            0 => Some(Direction::Down),
            1 => Some(Direction::Up),
            2 => Some(Direction::Turn),
            _ => None,
        }
    }
}

/// How a hop knows when a frame's bytes reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReceiveClock {
    /// No kernel receive timestamp: the arrival is taken as the read itself (wait 0), so any
    /// time the bytes waited in the receive queue counts in the link before the hop.
    #[default]
    AfterRead = 0,
    /// The kernel's software receive timestamp of the last byte read gave the wait.
    Kernel = 1,
    /// The kernel gave a timestamp, but an impossible one (negative wait, or longer than the
    /// queue can have held the bytes): treated as `AfterRead`, and counted.
    KernelRejected = 2,
}

impl ReceiveClock {
    fn from_byte(byte: u8) -> Option<ReceiveClock> {
        match byte {
            0 => Some(ReceiveClock::AfterRead),
            1 => Some(ReceiveClock::Kernel),
            2 => Some(ReceiveClock::KernelRejected),
            _ => None,
        }
    }
}

/// Record flag: the frame's bytes waited because the hop's own output was full.
pub const RECORD_HELD_BACK: u8 = 1;

/// Why bytes from a peer are not a frame of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    BadMagic([u8; 4]),
    UnsupportedVersion(u8),
    UnknownKind(u8),
    PayloadTooLarge(usize),
    TooManyRecords(usize),
    BadRecord { index: usize },
    BadPath(&'static str),
    TooManyHops,
    LengthMismatch { header: usize, actual: usize },
    BadFlags { kind: u8, flags: u8 },
    BadKernelSample(&'static str),
    BadFault(&'static str),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            WireError::BadMagic(bytes) => {
                write!(f, "not a subsegment-tcp-speeds frame ({})", guess_protocol(bytes))
            }
            WireError::UnsupportedVersion(v) => {
                write!(f, "unsupported protocol version {v} (this build speaks {VERSION})")
            }
            WireError::UnknownKind(k) => write!(f, "unknown frame kind {k}"),
            WireError::PayloadTooLarge(n) => {
                write!(f, "payload of {n} bytes exceeds the limit of {MAX_PAYLOAD}")
            }
            WireError::TooManyRecords(n) => {
                write!(f, "{n} stamp records exceed the limit of {MAX_RECORDS}")
            }
            WireError::BadRecord { index } => write!(f, "stamp record {index} is malformed"),
            WireError::BadPath(why) => write!(f, "malformed path announcement: {why}"),
            WireError::LengthMismatch { header, actual } => {
                write!(f, "frame header says {header} bytes but {actual} were given")
            }
            WireError::BadFlags { kind, flags } => {
                write!(f, "header flags {flags:#04x} are not defined for frame kind {kind}")
            }
            WireError::BadKernelSample(why) => write!(f, "malformed kernel sample: {why}"),
            WireError::BadFault(why) => write!(f, "malformed fault report: {why}"),
            WireError::TooManyHops => write!(
                f,
                "the path has more than {MAX_HOPS} hops (is the chain forwarding in a loop?)"
            ),
        }
    }
}

impl std::error::Error for WireError {}

/// Names what a stray peer probably speaks, so the log line is useful.
fn guess_protocol(first: &[u8; 4]) -> String {
    let http_methods: [&[u8]; 6] = [b"GET ", b"POST", b"PUT ", b"HEAD", b"OPTI", b"CONN"];
    if http_methods.contains(&&first[..]) {
        return "looks like an HTTP request".to_string();
    }
    if first[0] == 0x16 && first[1] == 0x03 {
        return "looks like a TLS handshake".to_string();
    }
    if first.starts_with(b"SSH-") {
        return "looks like SSH".to_string();
    }
    format!("first bytes {:02x} {:02x} {:02x} {:02x}", first[0], first[1], first[2], first[3])
}

/// The incremental step of parsing: how long the frame at the start of `buffer` is, once
/// enough of it has arrived to say. `Ok(None)` asks for more bytes; an error means the stream
/// is not ours (or breaks a limit) and the connection must be closed.
pub fn frame_len(buffer: &[u8]) -> Result<Option<usize>, WireError> {
    let magic_seen = buffer.len().min(4);
    if buffer[..magic_seen] != MAGIC[..magic_seen] {
        let mut first = [0u8; 4];
        first[..magic_seen].copy_from_slice(&buffer[..magic_seen]);
        return Err(WireError::BadMagic(first));
    }
    if buffer.len() < HEADER_LEN {
        return Ok(None);
    }
    let header = Frame::new_unchecked(&buffer[..HEADER_LEN]);
    header.check_header()?;
    Ok(Some(header.total_len()))
}

/// The whole, checked frame at the start of `buffer`, or `Ok(None)` while it is incomplete.
/// The one way the loops take frames from peer input.
pub fn next_frame(buffer: &[u8]) -> Result<Option<Frame<&[u8]>>, WireError> {
    if buffer.is_empty() {
        return Ok(None);
    }
    match frame_len(buffer)? {
        Some(len) if len <= buffer.len() => Frame::new_checked(&buffer[..len]).map(Some),
        _ => Ok(None),
    }
}

/// A read-only (or, over `&mut [u8]`, writable) view of one whole frame.
#[derive(Debug, Clone, Copy)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    pub fn new_unchecked(buffer: T) -> Frame<T> {
        Frame { buffer }
    }

    /// Validates the header, every limit and every record; afterwards no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Frame<T>, WireError> {
        let frame = Frame::new_unchecked(buffer);
        let actual = frame.buffer.as_ref().len();
        match frame_len(frame.buffer.as_ref())? {
            Some(header) if header == actual => {}
            Some(header) => return Err(WireError::LengthMismatch { header, actual }),
            None => {
                return Err(WireError::LengthMismatch { header: HEADER_LEN, actual });
            }
        }
        for index in 0..frame.record_count() {
            let record = frame.record_bytes(index);
            let clock = ReceiveClock::from_byte(record[field::record::RECEIVE_CLOCK]);
            let waited = read_u64(&record[field::record::RECEIVE_WAIT_NS]) != 0;
            if Direction::from_byte(record[field::record::DIRECTION]).is_none()
                || usize::from(record[field::record::HOP]) >= MAX_HOPS
                || record[field::record::RESERVED].iter().any(|&byte| byte != 0)
                || record[field::record::FLAGS] & !RECORD_HELD_BACK != 0
                || clock.is_none()
                || (waited && clock != Some(ReceiveClock::Kernel))
            {
                return Err(WireError::BadRecord { index });
            }
        }
        Ok(frame)
    }

    fn check_header(&self) -> Result<(), WireError> {
        let data = self.buffer.as_ref();
        if data[field::VERSION] != VERSION {
            return Err(WireError::UnsupportedVersion(data[field::VERSION]));
        }
        if Kind::from_byte(data[field::KIND]).is_none() {
            return Err(WireError::UnknownKind(data[field::KIND]));
        }
        if self.record_count() > MAX_RECORDS {
            return Err(WireError::TooManyRecords(self.record_count()));
        }
        if self.payload_len() > MAX_PAYLOAD {
            return Err(WireError::PayloadTooLarge(self.payload_len()));
        }
        let (kind, flags) = (data[field::KIND], data[field::FLAGS]);
        let allowed = match Kind::from_byte(kind) {
            Some(Kind::Path) => PATH_FLAGS,
            Some(Kind::Data) => DATA_FROM_SERVER,
            _ => 0,
        };
        let sampling_nothing =
            flags & PATH_SAMPLES_TX_STAMPS != 0 && flags & PATH_ASKS_TX_STAMPS == 0;
        if flags & !allowed != 0 || (kind == Kind::Path as u8 && sampling_nothing) {
            return Err(WireError::BadFlags { kind, flags });
        }
        Ok(())
    }

    /// The header's flags (on a PATH frame, what the source asks of every hop; on a DATA frame,
    /// [`DATA_FROM_SERVER`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn kind(&self) -> Kind {
        Kind::from_byte(self.buffer.as_ref()[field::KIND]).unwrap_or(Kind::Data)
    }

    pub fn record_count(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::RECORD_COUNT])
    }

    pub fn sequence(&self) -> u64 {
        read_u64(&self.buffer.as_ref()[field::SEQUENCE])
    }

    pub fn payload_len(&self) -> usize {
        read_u32(&self.buffer.as_ref()[field::PAYLOAD_LEN]) as usize
    }

    pub fn headers_len(&self) -> usize {
        HEADER_LEN + self.record_count() * RECORD_LEN
    }

    pub fn total_len(&self) -> usize {
        self.headers_len() + self.payload_len()
    }

    fn record_bytes(&self, index: usize) -> &[u8] {
        let start = HEADER_LEN + index * RECORD_LEN;
        &self.buffer.as_ref()[start..start + RECORD_LEN]
    }

    pub fn record(&self, index: usize) -> Stamp {
        parse_record(self.record_bytes(index))
    }

    pub fn records(&self) -> impl Iterator<Item = Stamp> + '_ {
        (0..self.record_count()).map(|index| self.record(index))
    }

    /// The whole frame, as received.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }

    /// Everything before the payload: header and records.
    pub fn headers(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.headers_len()]
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.headers_len()..self.total_len()]
    }
}

/// One hop's stamps for one frame in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub hop: u8,
    pub direction: Direction,
    pub read_ns: u64,
    pub write_ns: u64,
    pub receive: ReceiveClock,
    /// Zero unless `receive` is [`ReceiveClock::Kernel`].
    pub receive_wait_ns: u64,
    /// The hop had stopped reading because its own output was full ([`RECORD_HELD_BACK`]).
    pub held_back: bool,
}

impl Stamp {
    /// A stamp with no receive-queue wait (the read is taken as the arrival).
    pub const fn new(hop: u8, direction: Direction, read_ns: u64, write_ns: u64) -> Stamp {
        Stamp {
            hop,
            direction,
            read_ns,
            write_ns,
            receive: ReceiveClock::AfterRead,
            receive_wait_ns: 0,
            held_back: false,
        }
    }

    /// When the frame's last byte reached the hop: the read, less the receive-queue wait.
    /// `None` for a wait longer than the clock's whole past (a peer's nonsense).
    pub fn arrival_ns(&self) -> Option<u64> {
        self.read_ns.checked_sub(self.receive_wait_ns)
    }

    pub fn emit(&self, out: &mut [u8]) {
        out[field::record::HOP] = self.hop;
        out[field::record::DIRECTION] = self.direction as u8;
        out[field::record::RECEIVE_CLOCK] = self.receive as u8;
        out[field::record::FLAGS] = if self.held_back { RECORD_HELD_BACK } else { 0 };
        out[field::record::RESERVED].fill(0);
        out[field::record::READ_NS].copy_from_slice(&self.read_ns.to_be_bytes());
        out[field::record::WRITE_NS].copy_from_slice(&self.write_ns.to_be_bytes());
        out[field::record::RECEIVE_WAIT_NS].copy_from_slice(&self.receive_wait_ns.to_be_bytes());
    }
}

/// Where, inside a frame, the write stamp of record `index` sits: patched just before the
/// frame's hand-over to the kernel.
pub fn write_stamp_offset(index: usize) -> usize {
    HEADER_LEN + index * RECORD_LEN + field::record::WRITE_NS.start
}

/// One stamp record (its [`RECORD_LEN`] bytes), as [`Frame::record`] reads it: an unknown
/// direction or receive clock reads as the default, never a panic.
pub fn parse_record(bytes: &[u8]) -> Stamp {
    Stamp {
        hop: bytes[field::record::HOP],
        direction: Direction::from_byte(bytes[field::record::DIRECTION]).unwrap_or(Direction::Down),
        read_ns: read_u64(&bytes[field::record::READ_NS]),
        write_ns: read_u64(&bytes[field::record::WRITE_NS]),
        receive: ReceiveClock::from_byte(bytes[field::record::RECEIVE_CLOCK]).unwrap_or_default(),
        receive_wait_ns: read_u64(&bytes[field::record::RECEIVE_WAIT_NS]),
        held_back: bytes[field::record::FLAGS] & RECORD_HELD_BACK != 0,
    }
}

/// Where a record's write stamp lies in it: the record starts this many bytes before the
/// offset [`write_stamp_offset`] gives.
pub const WRITE_STAMP_IN_RECORD: usize = field::record::WRITE_NS.start;

/// Overwrites the 8-byte write stamp at the start of `field`.
pub fn patch_write_stamp(field: &mut [u8], write_ns: u64) {
    field[..8].copy_from_slice(&write_ns.to_be_bytes());
}

/// The header fields of a frame to be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Only the flags the kind defines (see [`Frame::flags`]).
    pub flags: u8,
    pub record_count: usize,
    pub sequence: u64,
    pub payload_len: usize,
}

impl Header {
    pub fn emit(&self, out: &mut [u8]) {
        debug_assert!(self.record_count <= MAX_RECORDS, "too many records to emit");
        debug_assert!(self.payload_len <= MAX_PAYLOAD, "payload too large to emit");
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::VERSION] = VERSION;
        out[field::KIND] = self.kind as u8;
        out[field::RECORD_COUNT] = self.record_count as u8;
        out[field::FLAGS] = self.flags;
        out[field::SEQUENCE].copy_from_slice(&self.sequence.to_be_bytes());
        out[field::PAYLOAD_LEN].copy_from_slice(&(self.payload_len as u32).to_be_bytes());
    }

    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.record_count * RECORD_LEN + self.payload_len
    }

    pub fn of<T: AsRef<[u8]>>(frame: &Frame<T>) -> Header {
        Header {
            kind: frame.kind(),
            flags: frame.flags(),
            record_count: frame.record_count(),
            sequence: frame.sequence(),
            payload_len: frame.payload_len(),
        }
    }
}

/// Writes a whole frame at the start of `out` (header, the given records, one record per
/// `extra` stamp, then the payload) and returns its length. `out` must hold `header.total_len()`.
pub fn emit_frame(
    out: &mut [u8],
    header: &Header,
    records: &[u8],
    extra: &[Stamp],
    payload: &[u8],
) -> usize {
    debug_assert_eq!(records.len() % RECORD_LEN, 0, "records are whole");
    debug_assert_eq!(header.record_count, records.len() / RECORD_LEN + extra.len());
    debug_assert_eq!(header.payload_len, payload.len());
    header.emit(&mut out[..HEADER_LEN]);
    let mut at = HEADER_LEN;
    out[at..at + records.len()].copy_from_slice(records);
    at += records.len();
    for stamp in extra {
        stamp.emit(&mut out[at..at + RECORD_LEN]);
        at += RECORD_LEN;
    }
    out[at..at + payload.len()].copy_from_slice(payload);
    at + payload.len()
}

/// Writes `frame` to `out` with one more stamp record, as a hop does when it passes a frame on;
/// returns the length written (`frame.total_len() + RECORD_LEN`).
pub fn emit_restamped<T: AsRef<[u8]>>(out: &mut [u8], frame: &Frame<T>, stamp: Stamp) -> usize {
    let header = Header { record_count: frame.record_count() + 1, ..Header::of(frame) };
    emit_frame(out, &header, &frame.headers()[HEADER_LEN..], &[stamp], frame.payload())
}

/// As [`emit_restamped`], without the payload: the frame's new headers (its header, its
/// records and `stamp`), for a hop that hands the payload to the kernel from where it was read
/// ([`crate::core::Peer::send_through`]). Returns their length (`frame.headers_len() +
/// RECORD_LEN`, at most [`MAX_HEADERS_LEN`]).
pub fn emit_restamped_headers<T: AsRef<[u8]>>(
    out: &mut [u8],
    frame: &Frame<T>,
    stamp: Stamp,
) -> usize {
    let header = Header { record_count: frame.record_count() + 1, ..Header::of(frame) };
    header.emit(&mut out[..HEADER_LEN]);
    let records = &frame.headers()[HEADER_LEN..];
    let at = HEADER_LEN + records.len();
    out[HEADER_LEN..at].copy_from_slice(records);
    stamp.emit(&mut out[at..at + RECORD_LEN]);
    at + RECORD_LEN
}

/// Builds a FAULT frame.
pub fn fault_frame(fault: &Fault) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + fault.message.len());
    fault.emit(&mut payload);
    payload.truncate(MAX_PAYLOAD);
    control_frame(Kind::Fault, &payload)
}

/// Builds a frame with no stamps: PATH, FAULT and KERNEL frames, which are rare and may
/// allocate.
pub fn control_frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    flagged_control_frame(kind, 0, payload)
}

/// As [`control_frame`], with header flags (a PATH frame's [`PATH_ASKS_KERNEL_INFO`]).
pub fn flagged_control_frame(kind: Kind, flags: u8, payload: &[u8]) -> Vec<u8> {
    debug_assert!(kind == Kind::Path || flags == 0, "only PATH frames have flags");
    let header = Header { kind, flags, record_count: 0, sequence: 0, payload_len: payload.len() };
    let mut out = vec![0u8; header.total_len()];
    emit_frame(&mut out, &header, &[], &[], payload);
    out
}

/// The payload of a KERNEL frame: hop `hop`'s `TCP_INFO` reading of its `side` socket.
///
/// ```text
///  0     1      2             3          4
///  +-----+------+-------------+----------+--------------------------+
///  | hop | side | field count | reserved | field count × u64 fields |
///  +-----+------+-------------+----------+--------------------------+
/// ```
///
/// Fields in [`crate::kernel::TcpInfo::to_fields`] order, `u64::MAX` for a field the hop's
/// kernel lacks; a receiver takes the fields it knows and ignores the rest, so a later build
/// may send more within [`MAX_KERNEL_FIELDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSample {
    pub hop: u8,
    pub side: Side,
    pub info: TcpInfo,
    /// The socket's transmit stamps so far, when it has them (`--kernel-stamps`).
    pub tx: Option<TxTotals>,
}

impl KernelSample {
    pub fn emit(&self, out: &mut Vec<u8>) {
        let tx = self.tx.map_or([u64::MAX; crate::kernel::TX_FIELDS], |tx| tx.to_fields());
        let count = crate::kernel::FIELDS as u8;
        out.extend_from_slice(&[self.hop, self.side as u8, count, 0]);
        for field in self.info.to_fields().into_iter().chain(tx) {
            out.extend_from_slice(&field.to_be_bytes());
        }
    }

    pub fn parse(payload: &[u8]) -> Result<KernelSample, WireError> {
        let [hop, side, count, reserved, ref fields @ ..] = *payload else {
            return Err(WireError::BadKernelSample("shorter than its 4-byte head"));
        };
        let side = match side {
            0 => Side::Upstream,
            1 => Side::Downstream,
            _ => return Err(WireError::BadKernelSample("unknown socket side")),
        };
        if usize::from(hop) >= MAX_HOPS {
            return Err(WireError::BadKernelSample("hop index beyond the hop limit"));
        }
        if reserved != 0 {
            return Err(WireError::BadKernelSample("reserved byte not zero"));
        }
        if usize::from(count) > MAX_KERNEL_FIELDS {
            return Err(WireError::BadKernelSample("more fields than the limit"));
        }
        if fields.len() != usize::from(count) * 8 {
            return Err(WireError::BadKernelSample("length does not match the field count"));
        }
        let values: Vec<u64> = fields.chunks_exact(8).map(read_u64).collect();
        let tx = values.get(crate::kernel::INFO_FIELDS..).and_then(TxTotals::from_fields);
        Ok(KernelSample { hop, side, info: TcpInfo::from_fields(&values), tx })
    }

    pub fn frame(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(4 + 8 * crate::kernel::FIELDS);
        self.emit(&mut payload);
        control_frame(Kind::Kernel, &payload)
    }
}

/// What a hop is in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Source = 1,
    Relay = 2,
    Echo = 3,
    /// A relay run with `--remove-perf-headers`: the chain's stamps end here.
    StrippingRelay = 4,
    /// An ordinary TCP server behind a stripping relay: it stamps nothing.
    PlainServer = 5,
    /// The next hop of a relay that could not reach it.
    Unreached = 6,
    /// The chain's origin in front of an unmodified client (`--ingress`): it frames the
    /// client's bytes and interleaves probes, in place of a source.
    Ingress = 7,
}

impl Role {
    fn from_byte(byte: u8) -> Option<Role> {
        match byte {
            1 => Some(Role::Source),
            2 => Some(Role::Relay),
            3 => Some(Role::Echo),
            4 => Some(Role::StrippingRelay),
            5 => Some(Role::PlainServer),
            6 => Some(Role::Unreached),
            7 => Some(Role::Ingress),
            _ => None,
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Relay => "relay",
            Role::Echo => "echo",
            Role::StrippingRelay => "relay, strips headers",
            Role::PlainServer => "plain TCP server",
            Role::Unreached => "unreachable",
            Role::Ingress => "ingress",
        }
    }
}

/// Tags one hop may carry (`--tag`, repeatable).
pub const MAX_TAGS: usize = 8;
/// A tag key's longest length in bytes; keys are non-empty, of `[A-Za-z0-9_.-]`.
pub const MAX_TAG_KEY_LEN: usize = 32;
/// A tag value's longest length in bytes; values are UTF-8 without control characters, and
/// may be empty.
pub const MAX_TAG_VALUE_LEN: usize = 64;

/// A static label of a hop (`site=fra1`, `rack=b12`, `provider=…`, `circuit=…`), given with
/// `--tag KEY=VALUE` and carried in the hop's [`PathEntry`]. Every `Tag` this crate builds or
/// parses is within the limits above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// What is wrong with a tag: one reason, turned into text for a usage error (with the
/// offending text) or a peer's malformed path (without it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagProblem {
    EmptyKey,
    KeyTooLong,
    KeyCharacter(char),
    ValueTooLong,
    ValueNotUtf8,
    ValueControl(char),
}

impl TagProblem {
    /// The reason as a peer's path announcement names it (`WireError::BadPath`).
    fn as_path_error(self) -> WireError {
        WireError::BadPath(match self {
            TagProblem::EmptyKey => "empty tag key",
            TagProblem::KeyTooLong => "tag key longer than 32 bytes",
            TagProblem::KeyCharacter(_) => "tag key with a character outside [A-Za-z0-9_.-]",
            TagProblem::ValueTooLong => "tag value longer than 64 bytes",
            TagProblem::ValueNotUtf8 => "tag value is not UTF-8",
            TagProblem::ValueControl(_) => "tag value with a control character",
        })
    }
}

fn key_problem(key: &[u8]) -> Option<TagProblem> {
    let allowed = |byte: &u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-');
    if key.is_empty() {
        Some(TagProblem::EmptyKey)
    } else if key.len() > MAX_TAG_KEY_LEN {
        Some(TagProblem::KeyTooLong)
    } else {
        // Bytes outside ASCII are refused one by one; the message names the first as a char
        // when the key is text (from the command line it always is).
        let bad = key.iter().position(|byte| !allowed(byte))?;
        let shown = std::str::from_utf8(&key[bad..])
            .ok()
            .and_then(|rest| rest.chars().next())
            .unwrap_or(char::REPLACEMENT_CHARACTER);
        Some(TagProblem::KeyCharacter(shown))
    }
}

fn value_problem(value: &[u8]) -> Option<TagProblem> {
    if value.len() > MAX_TAG_VALUE_LEN {
        return Some(TagProblem::ValueTooLong);
    }
    let Ok(text) = std::str::from_utf8(value) else {
        return Some(TagProblem::ValueNotUtf8);
    };
    text.chars().find(|c| c.is_control()).map(TagProblem::ValueControl)
}

impl Tag {
    /// A tag from `KEY=VALUE` (split at the first `=`), as `--tag` takes it; the error says
    /// what is wrong and the limit it breaks.
    pub fn parse(text: &str) -> Result<Tag, String> {
        let Some((key, value)) = text.split_once('=') else {
            return Err(format!("'{text}' is not KEY=VALUE"));
        };
        let problem = key_problem(key.as_bytes()).or_else(|| value_problem(value.as_bytes()));
        match problem {
            None => Ok(Tag { key: key.to_string(), value: value.to_string() }),
            Some(TagProblem::EmptyKey) => Err(format!("'{text}' has an empty key")),
            Some(TagProblem::KeyTooLong) => Err(format!(
                "key '{key}' is {} bytes, longer than the limit of {MAX_TAG_KEY_LEN}",
                key.len()
            )),
            Some(TagProblem::KeyCharacter(c)) => {
                Err(format!("key '{key}' has {c:?}; keys are letters, digits, '_', '.' and '-'"))
            }
            Some(TagProblem::ValueTooLong) => Err(format!(
                "the value of '{key}' is {} bytes, longer than the limit of {MAX_TAG_VALUE_LEN}",
                value.len()
            )),
            Some(TagProblem::ValueNotUtf8) => Err(format!("the value of '{key}' is not UTF-8")),
            Some(TagProblem::ValueControl(c)) => Err(format!(
                "the value of '{key}' has the control character {:?} (U+{:04X})",
                c, c as u32
            )),
        }
    }

    /// Appends a key and a value, each prefixed by its length (both fit one byte).
    fn emit(&self, out: &mut Vec<u8>) {
        debug_assert!(
            key_problem(self.key.as_bytes()).is_none()
                && value_problem(self.value.as_bytes()).is_none(),
            "tag {self:?} is outside the limits and would be refused by the next hop"
        );
        for text in [&self.key, &self.value] {
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// One hop as it announces itself during path discovery: its name, the address the previous
/// hop reached it at, the address it saw that hop come from (they differ behind NAT), and its
/// tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEntry {
    pub role: Role,
    pub name: String,
    pub local: String,
    pub peer: String,
    /// At most [`MAX_TAGS`], keys unique, each within the tag limits.
    pub tags: Vec<Tag>,
}

impl PathEntry {
    pub fn new(
        role: Role,
        name: &str,
        local: Option<SocketAddr>,
        peer: Option<SocketAddr>,
    ) -> Self {
        let show =
            |addr: Option<SocketAddr>| addr.map_or_else(|| "-".to_string(), |a| a.to_string());
        let (name, local, peer) = (truncate(name), show(local), show(peer));
        PathEntry { role, name, local, peer, tags: Vec::new() }
    }

    /// The same entry carrying `tags` (as the command line checked them).
    pub fn with_tags(self, tags: Vec<Tag>) -> Self {
        debug_assert!(tags.len() <= MAX_TAGS, "{} tags exceed the limit of {MAX_TAGS}", tags.len());
        PathEntry { tags, ..self }
    }

    /// Appends the entry to a PATH payload: role, three strings each prefixed by its length,
    /// the tag count, then each tag's key and value, each prefixed by its length.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.role as u8);
        for text in [&self.name, &self.local, &self.peer] {
            out.push(text.len() as u8);
            out.extend_from_slice(text.as_bytes());
        }
        debug_assert!(self.tags.len() <= MAX_TAGS, "too many tags to emit");
        out.push(self.tags.len() as u8);
        self.tags.iter().for_each(|tag| tag.emit(out));
    }

    /// Parses a whole PATH payload.
    pub fn parse_all(mut payload: &[u8]) -> Result<Vec<PathEntry>, WireError> {
        let mut entries = Vec::new();
        while !payload.is_empty() {
            if entries.len() == MAX_HOPS {
                return Err(WireError::TooManyHops);
            }
            let role = Role::from_byte(payload[0]).ok_or(WireError::BadPath("unknown role"))?;
            payload = &payload[1..];
            let mut texts = [String::new(), String::new(), String::new()];
            for text in &mut texts {
                *text = String::from_utf8_lossy(take_prefixed(&mut payload)?).into_owned();
            }
            let [name, local, peer] = texts;
            let (&count, rest) = payload.split_first().ok_or(WireError::BadPath("truncated"))?;
            payload = rest;
            if usize::from(count) > MAX_TAGS {
                return Err(WireError::BadPath("more than 8 tags on one hop"));
            }
            let mut tags: Vec<Tag> = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                let key = take_prefixed(&mut payload)?;
                let value = take_prefixed(&mut payload)?;
                if let Some(problem) = key_problem(key).or_else(|| value_problem(value)) {
                    return Err(problem.as_path_error());
                }
                // Checked above: both are UTF-8 (a valid key is ASCII).
                let (key, value) = (String::from_utf8_lossy(key), String::from_utf8_lossy(value));
                if tags.iter().any(|tag| tag.key == key) {
                    return Err(WireError::BadPath("duplicate tag key on one hop"));
                }
                tags.push(Tag { key: key.into_owned(), value: value.into_owned() });
            }
            entries.push(PathEntry { role, name, local, peer, tags });
        }
        Ok(entries)
    }
}

/// Takes one length-prefixed field off the front of `payload`.
fn take_prefixed<'a>(payload: &mut &'a [u8]) -> Result<&'a [u8], WireError> {
    let (&len, rest) = payload.split_first().ok_or(WireError::BadPath("truncated"))?;
    let bytes = rest.get(..usize::from(len)).ok_or(WireError::BadPath("truncated"))?;
    *payload = &rest[usize::from(len)..];
    Ok(bytes)
}

fn truncate(text: &str) -> String {
    let mut end = text.len().min(u8::MAX as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Why a hop gave up on its next hop: the code a FAULT frame carries, so that the source (and a
/// dashboard) can tell kinds of failure apart without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultCode {
    /// The next hop refused the connection, or could not be reached.
    Unreachable = 1,
    /// Connecting took longer than the timeout.
    ConnectTimeout = 2,
    /// The connection to the next hop broke (a reset, a broken pipe).
    Lost = 3,
    /// Frames were outstanding and nothing came back for the timeout.
    NoAnswer = 4,
    /// The next hop ended the connection early: frames unanswered, in the middle of a frame,
    /// before the whole stream or the path's answer; a plain server that answered less.
    ClosedEarly = 5,
    /// The next hop sent something that is not the protocol, or breaks its rules.
    BadInput = 6,
    /// The path reached the hop limit (a forwarding loop, most likely).
    TooManyHops = 7,
}

impl FaultCode {
    pub const ALL: [FaultCode; 7] = [
        FaultCode::Unreachable,
        FaultCode::ConnectTimeout,
        FaultCode::Lost,
        FaultCode::NoAnswer,
        FaultCode::ClosedEarly,
        FaultCode::BadInput,
        FaultCode::TooManyHops,
    ];

    fn from_byte(byte: u8) -> Option<FaultCode> {
        FaultCode::ALL.into_iter().find(|code| *code as u8 == byte)
    }

    /// The code's name in the JSON report and in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            FaultCode::Unreachable => "unreachable",
            FaultCode::ConnectTimeout => "connect_timeout",
            FaultCode::Lost => "lost",
            FaultCode::NoAnswer => "no_answer",
            FaultCode::ClosedEarly => "closed_early",
            FaultCode::BadInput => "bad_input",
            FaultCode::TooManyHops => "too_many_hops",
        }
    }
}

/// The payload of a FAULT frame: which hop gave up, the kind of failure, and its words.
///
/// ```text
///  0     1      2
///  +-----+------+-----------------------+
///  | hop | code | message (UTF-8, lossy) |
///  +-----+------+-----------------------+
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub hop: u8,
    pub code: FaultCode,
    pub message: String,
}

impl Fault {
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.hop);
        out.push(self.code as u8);
        out.extend_from_slice(self.message.as_bytes());
    }

    /// Checked: a relay passes on only what parses, so the source can trust the hop and code.
    pub fn parse(payload: &[u8]) -> Result<Fault, WireError> {
        let [hop, code, message @ ..] = payload else {
            return Err(WireError::BadFault("shorter than its 2-byte head"));
        };
        if usize::from(*hop) >= MAX_HOPS {
            return Err(WireError::BadFault("hop index beyond the hop limit"));
        }
        let code = FaultCode::from_byte(*code).ok_or(WireError::BadFault("unknown fault code"))?;
        Ok(Fault { hop: *hop, code, message: String::from_utf8_lossy(message).into_owned() })
    }
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_be_bytes(array)
}

fn read_u32(bytes: &[u8]) -> u32 {
    let mut array = [0u8; 4];
    array.copy_from_slice(bytes);
    u32::from_be_bytes(array)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_frame(sequence: u64, stamps: &[Stamp], payload: &[u8]) -> Vec<u8> {
        let header = Header {
            flags: 0,
            kind: Kind::Data,
            record_count: stamps.len(),
            sequence,
            payload_len: payload.len(),
        };
        let mut out = vec![0xa5; header.total_len()];
        assert_eq!(emit_frame(&mut out, &header, &[], stamps, payload), out.len());
        out
    }

    const STAMP: Stamp = Stamp {
        receive: ReceiveClock::Kernel,
        receive_wait_ns: 3,
        held_back: true,
        ..Stamp::new(1, Direction::Up, 7, 9)
    };

    #[test]
    fn test_emit_matches_fixture() {
        let bytes = data_frame(0x0102, &[STAMP], b"hi");
        #[rustfmt::skip]
        let expected: &[u8] = &[
            b'S', b'S', b'T', b'S', 4, 1, 1, 0,
            0, 0, 0, 0, 0, 0, 0x01, 0x02,
            0, 0, 0, 2,
            1, 1, 1, 1, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 7,
            0, 0, 0, 0, 0, 0, 0, 9,
            0, 0, 0, 0, 0, 0, 0, 3,
            b'h', b'i',
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn test_parse_round_trip() {
        let bytes = data_frame(42, &[STAMP, Stamp { hop: 2, ..STAMP }], b"payload");
        let frame = Frame::new_checked(&bytes[..]).unwrap();
        assert_eq!(frame.kind(), Kind::Data);
        assert_eq!(frame.sequence(), 42);
        assert_eq!(frame.payload(), b"payload");
        assert_eq!(frame.records().collect::<Vec<_>>(), vec![STAMP, Stamp { hop: 2, ..STAMP }]);
    }

    #[test]
    fn test_write_stamp_patch_lands_in_the_record() {
        let mut bytes = data_frame(1, &[STAMP, Stamp::new(2, Direction::Down, 1, 0)], b"x");
        let at = write_stamp_offset(1);
        patch_write_stamp(&mut bytes[at..], 0x0102_0304);
        let frame = Frame::new_checked(&bytes[..]).unwrap();
        assert_eq!(frame.record(1).write_ns, 0x0102_0304);
        assert_eq!(frame.record(0), STAMP);
        assert_eq!(frame.record(1).arrival_ns(), Some(1));
        assert_eq!(STAMP.arrival_ns(), Some(4));
    }

    #[test]
    fn test_restamp_appends_one_record() {
        let bytes = data_frame(5, &[STAMP], b"abc");
        let frame = Frame::new_checked(&bytes[..]).unwrap();
        let mut out = vec![0xa5; bytes.len() + RECORD_LEN];
        let added = Stamp::new(2, Direction::Turn, 100, 200);
        assert_eq!(emit_restamped(&mut out, &frame, added), out.len());
        let again = Frame::new_checked(&out[..]).unwrap();
        assert_eq!(again.records().collect::<Vec<_>>(), vec![STAMP, added]);
        assert_eq!(again.payload(), b"abc");
        assert_eq!(again.sequence(), 5);

        // The headers alone, then the payload from where it lies, are the same bytes.
        let mut headers = [0u8; MAX_HEADERS_LEN];
        let headers_len = emit_restamped_headers(&mut headers, &frame, added);
        assert_eq!(headers_len, frame.headers_len() + RECORD_LEN);
        assert_eq!([&headers[..headers_len], frame.payload()].concat(), out);
    }

    #[test]
    fn test_incremental_parse_at_every_split_point() {
        let mut stream = data_frame(1, &[STAMP], b"first");
        stream.extend(data_frame(2, &[], b""));
        stream.extend(data_frame(3, &[STAMP, STAMP], &[0xa5; 300]));
        for split in 0..=stream.len() {
            let mut pending: Vec<u8> = Vec::new();
            let mut sequences = Vec::new();
            for chunk in [&stream[..split], &stream[split..]] {
                pending.extend_from_slice(chunk);
                while let Some(frame) = next_frame(&pending).unwrap() {
                    let len = frame.total_len();
                    sequences.push(frame.sequence());
                    pending.drain(..len);
                }
            }
            assert_eq!(sequences, vec![1, 2, 3], "split at {split}");
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn test_bad_magic_names_http() {
        let error = frame_len(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert!(error.to_string().contains("HTTP"), "{error}");
        assert!(matches!(frame_len(b"\x16\x03\x01\x02"), Err(WireError::BadMagic(_))));
        // A wrong first byte is caught before the rest of the header has arrived.
        assert!(frame_len(b"X").is_err());
        assert_eq!(frame_len(b"SS"), Ok(None));
    }

    #[test]
    fn test_impossible_version_kind_and_lengths() {
        let good = data_frame(1, &[], b"x");
        let mut bytes = good.clone();
        bytes[field::VERSION] = 9;
        assert_eq!(frame_len(&bytes), Err(WireError::UnsupportedVersion(9)));
        let mut bytes = good.clone();
        bytes[field::KIND] = 77;
        assert_eq!(frame_len(&bytes), Err(WireError::UnknownKind(77)));
        let mut bytes = good.clone();
        bytes[field::RECORD_COUNT] = (MAX_RECORDS + 1) as u8;
        assert_eq!(frame_len(&bytes), Err(WireError::TooManyRecords(MAX_RECORDS + 1)));
        let mut bytes = good.clone();
        bytes[field::PAYLOAD_LEN].copy_from_slice(&((MAX_PAYLOAD + 1) as u32).to_be_bytes());
        assert_eq!(frame_len(&bytes), Err(WireError::PayloadTooLarge(MAX_PAYLOAD + 1)));
    }

    #[test]
    fn test_path_flags_say_the_transmit_stamps_asked_for() {
        for (kernel_info, mode) in [
            (true, TxMode::Off),
            (false, TxMode::All),
            (true, TxMode::Sample),
            (false, TxMode::Sample),
        ] {
            let flags = path_flags(kernel_info, mode);
            let frame = flagged_control_frame(Kind::Path, flags, &[]);
            let parsed = next_frame(&frame).unwrap().expect("a whole frame");
            assert_eq!(path_tx_mode(parsed.flags()), mode);
            assert_eq!(parsed.flags() & PATH_ASKS_KERNEL_INFO != 0, kernel_info);
        }
        // Sampling without the stamps asks for nothing: refused, as is the flag on another kind.
        let mut bytes = flagged_control_frame(Kind::Path, PATH_SAMPLES_TX_STAMPS, &[]);
        let refused = WireError::BadFlags { kind: Kind::Path as u8, flags: PATH_SAMPLES_TX_STAMPS };
        assert_eq!(frame_len(&bytes), Err(refused));
        bytes[field::FLAGS] = PATH_ASKS_KERNEL_INFO | PATH_SAMPLES_TX_STAMPS;
        assert!(matches!(frame_len(&bytes), Err(WireError::BadFlags { .. })));
        let mut data = data_frame(1, &[], b"x");
        data[field::FLAGS] = PATH_ASKS_TX_STAMPS | PATH_SAMPLES_TX_STAMPS;
        assert!(matches!(frame_len(&data), Err(WireError::BadFlags { kind: 1, .. })));
        bytes[field::FLAGS] = PATH_ASKS_QUICKACK;
        assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
        bytes[field::FLAGS] = 16;
        assert!(matches!(frame_len(&bytes), Err(WireError::BadFlags { flags: 16, .. })));
    }

    #[test]
    fn test_bad_record_rejected() {
        let mut bytes = data_frame(1, &[STAMP], b"");
        bytes[HEADER_LEN + field::record::DIRECTION] = 9;
        assert_eq!(Frame::new_checked(&bytes[..]).unwrap_err(), WireError::BadRecord { index: 0 });
        for (at, byte) in [
            (field::record::RECEIVE_CLOCK, 3),
            (field::record::FLAGS, 2),
            (field::record::RESERVED.start, 1),
            (field::record::RESERVED.end - 1, 0x80),
        ] {
            let mut bytes = data_frame(1, &[STAMP], b"");
            bytes[HEADER_LEN + at] = byte;
            assert_eq!(
                Frame::new_checked(&bytes[..]).unwrap_err(),
                WireError::BadRecord { index: 0 }
            );
        }
        // A wait is only ever carried with the kernel's clock behind it.
        let mut bytes = data_frame(1, &[STAMP], b"");
        bytes[HEADER_LEN + field::record::RECEIVE_CLOCK] = ReceiveClock::AfterRead as u8;
        assert_eq!(Frame::new_checked(&bytes[..]).unwrap_err(), WireError::BadRecord { index: 0 });
        let mut bytes = data_frame(1, &[STAMP], b"");
        bytes[HEADER_LEN + field::record::HOP] = MAX_HOPS as u8;
        assert!(Frame::new_checked(&bytes[..]).is_err());
    }

    #[test]
    fn test_path_entries_round_trip_and_limits() {
        let entries = vec![
            PathEntry::new(Role::Source, "a", None, None),
            PathEntry::new(Role::Relay, "b", Some("10.0.0.2:9000".parse().unwrap()), None),
        ];
        let mut payload = Vec::new();
        entries.iter().for_each(|entry| entry.emit(&mut payload));
        assert_eq!(PathEntry::parse_all(&payload).unwrap(), entries);
        assert!(PathEntry::parse_all(&payload[..payload.len() - 1]).is_err());
        let mut looped = Vec::new();
        for _ in 0..=MAX_HOPS {
            entries[1].emit(&mut looped);
        }
        assert_eq!(PathEntry::parse_all(&looped), Err(WireError::TooManyHops));
        let long = "é".repeat(200);
        assert!(PathEntry::new(Role::Echo, &long, None, None).name.len() <= 255);
    }

    fn tag(key: &str, value: &str) -> Tag {
        Tag { key: key.to_string(), value: value.to_string() }
    }

    #[test]
    fn test_path_entry_with_tags_matches_fixture() {
        let entry = PathEntry::new(Role::Relay, "B", None, None)
            .with_tags(vec![tag("site", "fra1"), tag("x", "")]);
        let mut payload = Vec::new();
        entry.emit(&mut payload);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            2, 1, b'B', 1, b'-', 1, b'-',
            2,
            4, b's', b'i', b't', b'e', 4, b'f', b'r', b'a', b'1',
            1, b'x', 0,
        ];
        assert_eq!(payload, expected);
        assert_eq!(PathEntry::parse_all(&payload), Ok(vec![entry]));
        // Every cut of the entry is refused as truncated, never taken for a shorter entry.
        for end in 1..payload.len() {
            assert_eq!(
                PathEntry::parse_all(&payload[..end]),
                Err(WireError::BadPath("truncated")),
                "cut at {end}"
            );
        }
    }

    /// An entry `B` with `count` in the tag count byte and then `tags` as (key, value) bytes.
    fn entry_with_raw_tags(count: u8, tags: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut payload = vec![2, 1, b'B', 1, b'-', 1, b'-', count];
        for (key, value) in tags {
            payload.push(key.len() as u8);
            payload.extend_from_slice(key);
            payload.push(value.len() as u8);
            payload.extend_from_slice(value);
        }
        payload
    }

    #[test]
    fn test_path_tags_at_and_past_every_limit() {
        let key = [b'k'; MAX_TAG_KEY_LEN];
        let value = "é".repeat(MAX_TAG_VALUE_LEN / 2);
        let keys: Vec<[u8; 1]> = (b'a'..).take(MAX_TAGS + 1).map(|byte| [byte]).collect();
        let many: Vec<(&[u8], &[u8])> = keys.iter().map(|key| (&key[..], &b"v"[..])).collect();
        let ok = |payload: &[u8]| PathEntry::parse_all(payload).map(|entries| entries.len());
        assert_eq!(ok(&entry_with_raw_tags(0, &[])), Ok(1));
        assert_eq!(ok(&entry_with_raw_tags(MAX_TAGS as u8, &many[..MAX_TAGS])), Ok(1));
        assert_eq!(ok(&entry_with_raw_tags(1, &[(&key, value.as_bytes())])), Ok(1));
        assert_eq!(ok(&entry_with_raw_tags(1, &[(b"A-z_0.9", b"")])), Ok(1));
        let refused = |count: u8, tags: &[(&[u8], &[u8])]| match PathEntry::parse_all(
            &entry_with_raw_tags(count, tags),
        ) {
            Err(WireError::BadPath(why)) => why,
            other => panic!("{tags:?} accepted: {other:?}"),
        };
        let long_key = [b'k'; MAX_TAG_KEY_LEN + 1];
        let long_value = format!("{value}x");
        assert_eq!(refused(MAX_TAGS as u8 + 1, &many), "more than 8 tags on one hop");
        assert_eq!(refused(u8::MAX, &many), "more than 8 tags on one hop");
        assert_eq!(refused(1, &[(b"", b"v")]), "empty tag key");
        assert_eq!(refused(1, &[(&long_key, b"v")]), "tag key longer than 32 bytes");
        for bad in [&b"a b"[..], b"a=b", b"\xc3\xa9", b"\0", b"k/"] {
            assert_eq!(
                refused(1, &[(bad, b"v")]),
                "tag key with a character outside [A-Za-z0-9_.-]"
            );
        }
        assert_eq!(refused(1, &[(b"k", long_value.as_bytes())]), "tag value longer than 64 bytes");
        assert_eq!(refused(1, &[(b"k", b"\xff")]), "tag value is not UTF-8");
        for bad in ["a\nb", "\u{7f}", "\u{85}", "\t"] {
            assert_eq!(refused(1, &[(b"k", bad.as_bytes())]), "tag value with a control character");
        }
        assert_eq!(refused(2, &[(b"k", b"1"), (b"k", b"2")]), "duplicate tag key on one hop");
        assert_eq!(refused(2, &[(b"k", b"1")]), "truncated");
        // The messages quote the limits they name.
        assert!(refused(1, &[(&long_key, b"v")]).contains(&MAX_TAG_KEY_LEN.to_string()));
        assert!(refused(9, &many).contains(&MAX_TAGS.to_string()));
        assert!(
            refused(1, &[(b"k", long_value.as_bytes())]).contains(&MAX_TAG_VALUE_LEN.to_string())
        );
    }

    #[test]
    fn test_tag_parse() {
        assert_eq!(Tag::parse("site=fra1"), Ok(tag("site", "fra1")));
        assert_eq!(Tag::parse("note="), Ok(tag("note", "")));
        assert_eq!(Tag::parse("circuit=a=b c"), Ok(tag("circuit", "a=b c")));
        assert_eq!(Tag::parse("provider=Zürich Ölwerk"), Ok(tag("provider", "Zürich Ölwerk")));
        assert_eq!(Tag::parse("site=fra1").unwrap().to_string(), "site=fra1");
        let error = |text: &str| Tag::parse(text).unwrap_err();
        assert!(error("site").contains("KEY=VALUE"), "{}", error("site"));
        assert!(error("=x").contains("empty key"), "{}", error("=x"));
        let long_key = format!("{}=v", "k".repeat(MAX_TAG_KEY_LEN + 1));
        assert!(error(&long_key).contains("33 bytes") && error(&long_key).contains("32"));
        assert!(Tag::parse(&format!("{}=v", "k".repeat(MAX_TAG_KEY_LEN))).is_ok());
        assert!(error("rack 1=b").contains("' '"), "{}", error("rack 1=b"));
        assert!(error("räck=b").contains("'ä'"), "{}", error("räck=b"));
        let long_value = format!("k={}", "v".repeat(MAX_TAG_VALUE_LEN + 1));
        assert!(error(&long_value).contains("65 bytes") && error(&long_value).contains("64"));
        assert!(Tag::parse(&format!("k={}", "v".repeat(MAX_TAG_VALUE_LEN))).is_ok());
        assert!(error("k=a\tb").contains("U+0009"), "{}", error("k=a\tb"));
        for text in ["site", "=x", "rack 1=b", "k=a\tb", &long_key, &long_value] {
            let message = error(text);
            assert!(message.starts_with(|c: char| !c.is_uppercase()), "{message}");
        }
    }

    #[test]
    fn test_fault_round_trip() {
        let fault = Fault { hop: 2, code: FaultCode::Unreachable, message: "refused".to_string() };
        let out = fault_frame(&fault);
        let frame = Frame::new_checked(&out[..]).unwrap();
        assert_eq!(frame.kind(), Kind::Fault);
        assert_eq!(Fault::parse(frame.payload()), Ok(fault));
        assert!(Fault::parse(&[2]).is_err());
        assert!(Fault::parse(&[2, 0]).is_err(), "code 0 is none");
        assert!(Fault::parse(&[MAX_HOPS as u8, 1]).is_err());
    }
}
