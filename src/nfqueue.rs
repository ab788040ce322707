//! The netfilter queue (NFQUEUE) messages that `nfq-delay` exchanges with the kernel over a
//! `NETLINK_NETFILTER` socket, without any I/O: requests are emitted into a buffer, and what
//! the kernel sends is parsed by a checked walk that never panics on its input.
//!
//! Every message is a netlink header, a netfilter header and attributes (the layout of the
//! kernel's `include/uapi/linux/netfilter/nfnetlink_queue.h`):
//!
//! ```text
//!  0          4      6       8     12    16       17        18          20
//!  +----------+------+-------+-----+-----+--------+---------+-----------+-------------------+
//!  | len (ne) | type | flags | seq | pid | family | version | queue (be)| attributes, 4-aligned
//!  +----------+------+-------+-----+-----+--------+---------+-----------+-------------------+
//!  type = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_*            attribute = len (ne), type (ne), value
//! ```
//!
//! The netlink header and attribute headers are in the host's byte order; the values inside
//! the netfilter attributes (queue number, packet id, verdict, timestamps) are big-endian.
//! Only what a delay element needs is here: bind a queue with its copy mode and length, read
//! each queued packet's id and kernel timestamp, and give a verdict.

/// `NETLINK_NETFILTER`: the netlink protocol of nfnetlink.
pub const NETLINK_NETFILTER: libc::c_int = 12;
/// Drop the packet / let it continue through the stack.
pub const NF_DROP: u32 = 0;
pub const NF_ACCEPT: u32 = 1;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_TIMESTAMP: u16 = 4;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
/// Copy only the packet's metadata (id, interfaces, timestamp), none of its bytes: a verdict
/// without a payload leaves the packet as it was, so the element never needs them.
const NFQNL_COPY_META: u8 = 1;
/// The attribute type's flag bits (nested, network byte order), not part of the type.
const NLA_TYPE_MASK: u16 = 0x3fff;

pub const NLMSG_HDR_LEN: usize = 16;
const NFGEN_HDR_LEN: usize = 4;
const NLA_HDR_LEN: usize = 4;

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// A request being built: headers first, attributes appended, the length patched at the end.
struct Request {
    bytes: Vec<u8>,
}

impl Request {
    fn new(message: u16, flags: u16, seq: u32, queue: u16) -> Request {
        let mut bytes = Vec::with_capacity(64);
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in `finish`
        bytes.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8 | message).to_ne_bytes());
        bytes.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's is 0
        bytes.push(libc::AF_UNSPEC as u8);
        bytes.push(0); // NFNETLINK_V0
        bytes.extend_from_slice(&queue.to_be_bytes());
        Request { bytes }
    }

    fn attribute(mut self, kind: u16, value: &[u8]) -> Request {
        self.bytes.extend_from_slice(&((NLA_HDR_LEN + value.len()) as u16).to_ne_bytes());
        self.bytes.extend_from_slice(&kind.to_ne_bytes());
        self.bytes.extend_from_slice(value);
        self.bytes.resize(align4(self.bytes.len()), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        self.bytes
    }
}

/// Binds `queue` to the sending socket, copying metadata only, with at most `max_len` packets
/// waiting for a verdict in the kernel (beyond that the kernel drops them). Asks for an ack.
pub fn bind_request(seq: u32, queue: u16, max_len: u32) -> Vec<u8> {
    // nfqnl_msg_config_cmd { command, pad, pf (be16, unused by BIND) }
    let command = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
    // nfqnl_msg_config_params { copy_range (be32), copy_mode }, packed: 5 bytes.
    let mut params = [0u8; 5];
    params[4] = NFQNL_COPY_META;
    Request::new(NFQNL_MSG_CONFIG, NLM_F_ACK, seq, queue)
        .attribute(NFQA_CFG_CMD, &command)
        .attribute(NFQA_CFG_PARAMS, &params)
        .attribute(NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes())
        .finish()
}

/// The verdict on packet `id` of `queue` (no ack: a verdict is fire and forget).
pub fn verdict_request(queue: u16, id: u32, verdict: u32) -> Vec<u8> {
    // nfqnl_msg_verdict_hdr { verdict (be32), id (be32) }
    let mut header = [0u8; 8];
    header[0..4].copy_from_slice(&verdict.to_be_bytes());
    header[4..8].copy_from_slice(&id.to_be_bytes());
    Request::new(NFQNL_MSG_VERDICT, 0, 0, queue).attribute(NFQA_VERDICT_HDR, &header).finish()
}

/// The verdict on every packet of `queue` whose id is at most `id`, in one message: the
/// kernel's queue holds packets in id order, so this releases a due prefix at once.
pub fn batch_verdict_request(queue: u16, id: u32, verdict: u32) -> Vec<u8> {
    let mut header = [0u8; 8];
    header[0..4].copy_from_slice(&verdict.to_be_bytes());
    header[4..8].copy_from_slice(&id.to_be_bytes());
    Request::new(NFQNL_MSG_VERDICT_BATCH, 0, 0, queue).attribute(NFQA_VERDICT_HDR, &header).finish()
}

/// One message from the kernel, as far as a delay element cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// A packet now waits for our verdict. `timestamp_ns` is the kernel's receive timestamp
    /// (CLOCK_REALTIME) when the packet carries one.
    Packet { queue: u16, id: u32, timestamp_ns: Option<u64> },
    /// The answer to request `seq`: 0 for success, else a positive errno.
    Ack { seq: u32, errno: i32 },
    /// Anything else (done, noop, a message of another subsystem): skipped.
    Other,
}

/// Why bytes from the kernel could not be read as messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// A length field runs past the buffer or below its header's size.
    BadLength,
    /// A packet message without the packet header attribute (its id).
    NoPacketHeader,
}

/// The messages in one datagram from the kernel, in order; parsing stops at the first
/// malformed one.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

pub struct Messages<'a> {
    rest: &'a [u8],
}

impl Iterator for Messages<'_> {
    type Item = Result<Message, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < NLMSG_HDR_LEN {
            return None; // Trailing padding, or the end.
        }
        let len = u32::from_ne_bytes(self.rest[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDR_LEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(ParseError::BadLength));
        }
        let (message, rest) = self.rest.split_at(len);
        self.rest = rest.get(align4(len) - len..).unwrap_or(&[]);
        Some(parse_message(message))
    }
}

/// One message of exactly `message.len()` bytes (at least a netlink header's).
fn parse_message(message: &[u8]) -> Result<Message, ParseError> {
    debug_assert!(message.len() >= NLMSG_HDR_LEN, "caller checks the header fits");
    let kind = u16::from_ne_bytes([message[4], message[5]]);
    let seq = u32::from_ne_bytes(message[8..12].try_into().unwrap());
    let body = &message[NLMSG_HDR_LEN..];
    match kind {
        NLMSG_ERROR => {
            // nlmsgerr { int error (negative errno, 0 = ack); nlmsghdr of the request }
            let error = body.get(0..4).ok_or(ParseError::BadLength)?;
            let error = i32::from_ne_bytes(error.try_into().unwrap());
            Ok(Message::Ack { seq, errno: -error })
        }
        NLMSG_DONE => Ok(Message::Other),
        _ if kind == NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET => {
            let header = body.get(0..NFGEN_HDR_LEN).ok_or(ParseError::BadLength)?;
            let queue = u16::from_be_bytes([header[2], header[3]]);
            let (mut id, mut timestamp_ns) = (None, None);
            for attribute in attributes(&body[NFGEN_HDR_LEN..]) {
                let (kind, value) = attribute?;
                match kind {
                    NFQA_PACKET_HDR if value.len() >= 4 => {
                        id = Some(u32::from_be_bytes(value[0..4].try_into().unwrap()));
                    }
                    NFQA_TIMESTAMP if value.len() >= 16 => {
                        let sec = u64::from_be_bytes(value[0..8].try_into().unwrap());
                        let usec = u64::from_be_bytes(value[8..16].try_into().unwrap());
                        timestamp_ns = sec
                            .checked_mul(1_000_000_000)
                            .and_then(|ns| ns.checked_add(usec.checked_mul(1000)?));
                    }
                    _ => {}
                }
            }
            let id = id.ok_or(ParseError::NoPacketHeader)?;
            Ok(Message::Packet { queue, id, timestamp_ns })
        }
        _ => Ok(Message::Other),
    }
}

/// The (type, value) attributes in `buf`, the type without its flag bits.
fn attributes(mut buf: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), ParseError>> {
    std::iter::from_fn(move || {
        if buf.len() < NLA_HDR_LEN {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDR_LEN || len > buf.len() {
            buf = &[];
            return Some(Err(ParseError::BadLength));
        }
        let value = &buf[NLA_HDR_LEN..len];
        buf = buf.get(align4(len)..).unwrap_or(&[]);
        Some(Ok((kind, value)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A packet message as the kernel sends it for copy mode META: packet header (id 0x01020304,
    /// IPv4, hook 0 = prerouting), input interface 7, timestamp 5 s + 6 µs; host byte order
    /// for the netlink fields.
    fn packet_fixture() -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 0, 0x03, 0xe9]; // queue 1001
        body.extend_from_slice(&11u16.to_ne_bytes()); // len 4 + 7
        body.extend_from_slice(&NFQA_PACKET_HDR.to_ne_bytes());
        body.extend_from_slice(&[1, 2, 3, 4, 0x08, 0x00, 0, 0xa5]); // 7 bytes + 1 padding
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&5u16.to_ne_bytes()); // NFQA_IFINDEX_INDEV
        body.extend_from_slice(&7u32.to_be_bytes());
        body.extend_from_slice(&20u16.to_ne_bytes());
        body.extend_from_slice(&(NFQA_TIMESTAMP | 0x8000).to_ne_bytes()); // a flag bit set
        body.extend_from_slice(&5u64.to_be_bytes());
        body.extend_from_slice(&6u64.to_be_bytes());
        let mut message = Vec::new();
        message.extend_from_slice(&((NLMSG_HDR_LEN + body.len()) as u32).to_ne_bytes());
        message.extend_from_slice(&(3u16 << 8).to_ne_bytes());
        message.extend_from_slice(&[0; 10]);
        message.extend_from_slice(&body);
        message
    }

    fn ack_fixture(seq: u32, error: i32) -> Vec<u8> {
        let mut message = Vec::new();
        message.extend_from_slice(&36u32.to_ne_bytes());
        message.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        message.extend_from_slice(&0u16.to_ne_bytes());
        message.extend_from_slice(&seq.to_ne_bytes());
        message.extend_from_slice(&0u32.to_ne_bytes());
        message.extend_from_slice(&error.to_ne_bytes());
        message.extend_from_slice(&[0xa5; 16]); // the request's header, echoed
        message
    }

    #[test]
    fn test_parse_packet_and_ack_in_one_datagram() {
        let mut datagram = packet_fixture();
        datagram.extend(ack_fixture(9, -libc::EBUSY));
        datagram.extend(ack_fixture(10, 0));
        let parsed: Vec<_> = messages(&datagram).collect();
        assert_eq!(
            parsed,
            [
                Ok(Message::Packet {
                    queue: 1001,
                    id: 0x0102_0304,
                    timestamp_ns: Some(5_000_006_000)
                }),
                Ok(Message::Ack { seq: 9, errno: libc::EBUSY }),
                Ok(Message::Ack { seq: 10, errno: 0 }),
            ]
        );
    }

    #[test]
    fn test_emit_verdict() {
        let bytes = verdict_request(1001, 0x0102_0304, NF_ACCEPT);
        assert_eq!(bytes.len(), 32);
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 32);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 3 << 8 | 1);
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), NLM_F_REQUEST);
        assert_eq!(&bytes[16..20], &[0, 0, 0x03, 0xe9]);
        assert_eq!(u16::from_ne_bytes([bytes[20], bytes[21]]), 12);
        assert_eq!(u16::from_ne_bytes([bytes[22], bytes[23]]), NFQA_VERDICT_HDR);
        assert_eq!(&bytes[24..32], &[0, 0, 0, 1, 1, 2, 3, 4]);
        let batch = batch_verdict_request(1001, 0x0102_0304, NF_ACCEPT);
        assert_eq!(u16::from_ne_bytes([batch[4], batch[5]]), 3 << 8 | 3);
        assert_eq!(batch[6..], bytes[6..], "the same verdict otherwise");
    }

    #[test]
    fn test_emit_bind() {
        let bytes = bind_request(7, 1001, 4096);
        // 16 + 4 + (4 + 4) + (4 + 5 + 3 padding) + (4 + 4)
        assert_eq!(bytes.len(), 48);
        assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 48);
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 3 << 8 | 2);
        assert_eq!(u16::from_ne_bytes([bytes[6], bytes[7]]), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 7);
        assert_eq!(&bytes[24..28], &[NFQNL_CFG_CMD_BIND, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes([bytes[28], bytes[29]]), 9);
        assert_eq!(&bytes[32..37], &[0, 0, 0, 0, NFQNL_COPY_META]);
        assert_eq!(&bytes[37..40], &[0, 0, 0], "padding is zeroed");
        assert_eq!(&bytes[44..48], &4096u32.to_be_bytes());
    }

    #[test]
    fn test_impossible_len() {
        let mut message = packet_fixture();
        message[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert_eq!(messages(&message).collect::<Vec<_>>(), [Err(ParseError::BadLength)]);
        message[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(messages(&message).collect::<Vec<_>>(), [Err(ParseError::BadLength)]);
        // An attribute that claims more than its message holds.
        let mut message = packet_fixture();
        message[20..22].copy_from_slice(&200u16.to_ne_bytes());
        assert_eq!(messages(&message).collect::<Vec<_>>(), [Err(ParseError::BadLength)]);
        // No packet header: no id to give a verdict on.
        let mut message = packet_fixture();
        message[22..24].copy_from_slice(&99u16.to_ne_bytes());
        assert_eq!(messages(&message).collect::<Vec<_>>(), [Err(ParseError::NoPacketHeader)]);
        // Every truncation of a valid datagram parses or fails; none panics.
        let whole = [packet_fixture(), ack_fixture(1, 0)].concat();
        for end in 0..whole.len() {
            let _ = messages(&whole[..end]).count();
        }
    }
}
