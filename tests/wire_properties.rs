//! Property tests of the wire format: the parser never panics on peer input, and what the
//! emitters write parses back to the same fields, whole or cut into arbitrary chunks.
//!
//! This file owns the generators (valid, mutated and field-by-field frames, path entries) and the
//! properties; the fixed fixtures stay in `src/wire.rs`. The cargo-fuzz target in
//! `fuzz/fuzz_targets/frame_parser.rs` checks the same contract with coverage guidance.
//! `PROPTEST_CASES=10000 cargo test --test wire_properties` runs a longer search.

use std::net::SocketAddr;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use subsegment_tcp_speeds::wire::{
    DATA_FROM_SERVER, Direction, Fault, FaultCode, Frame, HEADER_LEN, Header, KernelSample, Kind,
    MAGIC, MAX_HOPS, MAX_KERNEL_FIELDS, MAX_PAYLOAD, MAX_RECORDS, MAX_TAG_KEY_LEN,
    MAX_TAG_VALUE_LEN, MAX_TAGS, PATH_ASKS_KERNEL_INFO, PATH_ASKS_TX_STAMPS, PathEntry, RECORD_LEN,
    ReceiveClock, Role, Side, Stamp, Tag, TcpInfo, TxTotals, VERSION, WireError, emit_frame,
    emit_restamped, fault_frame, frame_len, next_frame,
};

/// A frame to be built: what `emit_frame` is given and what the parser must give back.
#[derive(Debug, Clone)]
struct FrameSpec {
    kind: Kind,
    sequence: u64,
    stamps: Vec<Stamp>,
    payload: Vec<u8>,
}

impl FrameSpec {
    fn header(&self) -> Header {
        Header {
            flags: 0,
            kind: self.kind,
            record_count: self.stamps.len(),
            sequence: self.sequence,
            payload_len: self.payload.len(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let header = self.header();
        // Prefilled with 0xa5, as smoltcp's construct tests do, so an unwritten byte shows.
        let mut out = vec![0xa5; header.total_len()];
        let written = emit_frame(&mut out, &header, &[], &self.stamps, &self.payload);
        assert_eq!(written, out.len(), "emit_frame writes exactly header.total_len() bytes");
        out
    }

    #[track_caller]
    fn assert_matches<T: AsRef<[u8]>>(&self, frame: &Frame<T>) {
        assert_eq!(frame.kind(), self.kind);
        assert_eq!(frame.sequence(), self.sequence);
        assert_eq!(frame.record_count(), self.stamps.len());
        assert_eq!(frame.records().collect::<Vec<_>>(), self.stamps);
        assert_eq!(frame.payload_len(), self.payload.len());
        assert_eq!(frame.payload(), &self.payload[..]);
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Data), Just(Kind::Path), Just(Kind::Fault), Just(Kind::Kernel)]
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::Down), Just(Direction::Up), Just(Direction::Turn)]
}

/// A record as a hop writes it: with a kernel-stamped wait, or none (read taken as arrival, or
/// a kernel stamp rejected).
fn stamp() -> impl Strategy<Value = Stamp> {
    let receive = prop_oneof![
        any::<u64>().prop_map(|wait| (ReceiveClock::Kernel, wait)),
        Just((ReceiveClock::AfterRead, 0)),
        Just((ReceiveClock::KernelRejected, 0)),
    ];
    (0..MAX_HOPS as u8, direction(), any::<u64>(), any::<u64>(), receive, any::<bool>()).prop_map(
        |(hop, direction, read_ns, write_ns, (receive, receive_wait_ns), held_back)| Stamp {
            receive,
            receive_wait_ns,
            held_back,
            ..Stamp::new(hop, direction, read_ns, write_ns)
        },
    )
}

/// Payload bytes from a length and a seed: as good as arbitrary for the parser, which never
/// looks inside a DATA payload, and far cheaper to generate than a `Vec` of arbitrary bytes.
fn payload(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    (0..max_len, any::<u64>()).prop_map(|(len, seed)| {
        let mut state = seed;
        (0..len)
            .map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                (z ^ (z >> 31)) as u8
            })
            .collect()
    })
}

fn frame_spec(max_payload: usize) -> impl Strategy<Value = FrameSpec> {
    (kind(), any::<u64>(), vec(stamp(), 0..=MAX_RECORDS), payload(max_payload))
        .prop_map(|(kind, sequence, stamps, payload)| FrameSpec { kind, sequence, stamps, payload })
}

/// A valid frame with a few bytes overwritten (some aimed at the header and first records,
/// where the limits are), maybe cut short, maybe followed by more bytes.
fn mutated_frame() -> impl Strategy<Value = Vec<u8>> {
    let edits = vec((any::<Index>(), any::<u8>()), 0..3);
    let header_edits = vec((0..HEADER_LEN + 2 * RECORD_LEN, any::<u8>()), 0..3);
    let cut = proptest::option::of(any::<Index>());
    (frame_spec(64), edits, header_edits, cut, vec(any::<u8>(), 0..64)).prop_map(
        |(spec, edits, header_edits, cut, tail)| {
            let mut bytes = spec.to_bytes();
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            for (at, byte) in header_edits {
                if let Some(slot) = bytes.get_mut(at) {
                    *slot = byte;
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            bytes.extend(tail);
            bytes
        },
    )
}

/// A frame written field by field with no regard for the limits, each field often right at
/// its limit: the model the parser's verdict is checked against.
#[derive(Debug, Clone)]
struct RawFrame {
    version: u8,
    kind: u8,
    flags: u8,
    /// `(hop, direction)` of each record; the record count field is `records.len()`.
    records: Vec<(u8, u8)>,
    payload_len_field: u32,
    payload: Vec<u8>,
}

impl RawFrame {
    fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend([self.version, self.kind, self.records.len() as u8, self.flags]);
        bytes.extend(7u64.to_be_bytes());
        bytes.extend(self.payload_len_field.to_be_bytes());
        for &(hop, direction) in &self.records {
            bytes.extend([hop, direction, 0, 0, 0, 0, 0, 0]);
            bytes.extend([0; 24]);
        }
        bytes.extend(&self.payload);
        bytes
    }

    /// Every reason the frame breaks the format; empty when it is valid.
    fn faults(&self, total_len: usize) -> Vec<WireError> {
        let payload_len = self.payload_len_field as usize;
        let mut faults = self.header_faults();
        let header = HEADER_LEN + self.records.len() * RECORD_LEN + payload_len;
        if header != total_len {
            faults.push(WireError::LengthMismatch { header, actual: total_len });
        }
        if let Some(index) = self
            .records
            .iter()
            .position(|&(hop, direction)| usize::from(hop) >= MAX_HOPS || direction > 2)
        {
            faults.push(WireError::BadRecord { index });
        }
        faults
    }

    /// The reasons that show in the header alone, which `frame_len` must find.
    fn header_faults(&self) -> Vec<WireError> {
        let payload_len = self.payload_len_field as usize;
        let mut faults = Vec::new();
        if self.version != VERSION {
            faults.push(WireError::UnsupportedVersion(self.version));
        }
        if !(1..=4).contains(&self.kind) {
            faults.push(WireError::UnknownKind(self.kind));
        }
        let allowed = match self.kind {
            kind if kind == Kind::Path as u8 => PATH_ASKS_KERNEL_INFO | PATH_ASKS_TX_STAMPS,
            kind if kind == Kind::Data as u8 => DATA_FROM_SERVER,
            _ => 0,
        };
        if self.flags & !allowed != 0 {
            faults.push(WireError::BadFlags { kind: self.kind, flags: self.flags });
        }
        if self.records.len() > MAX_RECORDS {
            faults.push(WireError::TooManyRecords(self.records.len()));
        }
        if payload_len > MAX_PAYLOAD {
            faults.push(WireError::PayloadTooLarge(payload_len));
        }
        faults
    }
}

fn raw_frame() -> impl Strategy<Value = RawFrame> {
    let version = prop_oneof![4 => Just(VERSION), 1 => any::<u8>()];
    let kind = prop_oneof![4 => 1u8..=4, 1 => 0u8..=5, 1 => any::<u8>()];
    let flags = prop_oneof![
        6 => Just(0u8),
        2 => Just(PATH_ASKS_KERNEL_INFO),
        1 => Just(PATH_ASKS_TX_STAMPS),
        1 => Just(PATH_ASKS_KERNEL_INFO | PATH_ASKS_TX_STAMPS),
        2 => Just(DATA_FROM_SERVER),
        1 => any::<u8>(),
    ];
    let count = prop_oneof![
        4 => 0..=MAX_RECORDS,
        2 => MAX_RECORDS - 1..=MAX_RECORDS + 1,
        1 => 0..=usize::from(u8::MAX),
    ];
    // Valid records, but now and then one with a hop or direction at or past its limit.
    let valid = (0..MAX_HOPS as u8, 0u8..=2);
    let records = count.prop_flat_map(move |count| vec(valid.clone(), count));
    let hop = prop_oneof![MAX_HOPS as u8 - 1..=MAX_HOPS as u8 + 1, any::<u8>()];
    let direction = prop_oneof![2u8..=4, any::<u8>()];
    let bad_record = prop_oneof![
        (any::<Index>(), hop).prop_map(|(at, hop)| (at, Some(hop), None)),
        (any::<Index>(), direction).prop_map(|(at, direction)| (at, None, Some(direction))),
    ];
    let payload_len_field = prop_oneof![
        Just(MAX_PAYLOAD as u32),
        Just(MAX_PAYLOAD as u32 + 1),
        Just(u32::MAX),
        0u32..80
    ];
    (
        (version, kind, flags),
        records,
        proptest::option::weighted(0.3, bad_record),
        payload(64),
        proptest::option::weighted(0.2, payload_len_field),
    )
        .prop_map(|((version, kind, flags), mut records, bad_record, payload, field)| {
            if let Some((at, hop, direction)) = bad_record
                && !records.is_empty()
            {
                let at = at.index(records.len());
                let record = &mut records[at];
                record.0 = hop.unwrap_or(record.0);
                record.1 = direction.unwrap_or(record.1);
            }
            RawFrame {
                version,
                kind,
                flags,
                records,
                payload_len_field: field.unwrap_or(payload.len() as u32),
                payload,
            }
        })
}

/// Bytes from a peer: pure noise (which fails at the magic), noise behind the magic, and
/// damaged frames (which get past the header to the records and payload).
fn peer_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => vec(any::<u8>(), 0..256),
        1 => vec(any::<u8>(), 0..2048).prop_map(|rest| [&MAGIC[..], &rest].concat()),
        4 => mutated_frame(),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![
        Just(Role::Source),
        Just(Role::Relay),
        Just(Role::Echo),
        Just(Role::StrippingRelay),
        Just(Role::PlainServer),
        Just(Role::Unreached),
        Just(Role::Ingress),
    ]
}

/// Text of at most 255 bytes (the length prefix is one byte), often with multi-byte characters,
/// now and then right at the limit.
fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![8 => text(0..=12), 1 => text(60..=63), 1 => ascii(250..=255)]
}

fn ascii(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    vec(b' '..=b'~', len).prop_map(|bytes| bytes.into_iter().map(char::from).collect())
}

/// Arbitrary characters (mostly multi-byte), built from chars rather than from a regex,
/// which proptest would recompile for every value.
fn text(chars: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    vec(any::<char>(), chars).prop_map(String::from_iter)
}

/// The characters a tag key may hold.
const KEY_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-";

/// A valid tag key of `len` bytes.
fn key_of(len: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    vec(proptest::sample::select(KEY_CHARS), len)
        .prop_map(|bytes| bytes.into_iter().map(char::from).collect())
}

fn tag_key() -> impl Strategy<Value = String> {
    prop_oneof![8 => key_of(1..=8), 1 => key_of(MAX_TAG_KEY_LEN..=MAX_TAG_KEY_LEN)]
}

/// Any characters but control characters, cut to at most `max_bytes` at a character boundary.
fn printable(
    chars: std::ops::RangeInclusive<usize>,
    max_bytes: usize,
) -> impl Strategy<Value = String> {
    vec(any::<char>(), chars).prop_map(move |chars| {
        let mut text = String::new();
        for c in chars.into_iter().map(|c| if c.is_control() { '?' } else { c }) {
            if text.len() + c.len_utf8() > max_bytes {
                break;
            }
            text.push(c);
        }
        text
    })
}

/// A valid tag value: empty, short, multi-byte, or right at the limit.
fn tag_value() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => printable(0..=12, MAX_TAG_VALUE_LEN),
        1 => ascii(MAX_TAG_VALUE_LEN..=MAX_TAG_VALUE_LEN),
        1 => Just("é".repeat(MAX_TAG_VALUE_LEN / 2)),
        1 => printable(MAX_TAG_VALUE_LEN..=MAX_TAG_VALUE_LEN, MAX_TAG_VALUE_LEN),
    ]
}

/// 0 to `MAX_TAGS` valid tags with unique keys, in any order.
fn tags() -> impl Strategy<Value = Vec<Tag>> {
    proptest::collection::btree_map(tag_key(), tag_value(), 0..=MAX_TAGS)
        .prop_map(|map| map.into_iter().map(|(key, value)| Tag { key, value }).collect::<Vec<_>>())
        .prop_shuffle()
}

/// An entry as a hop builds it (`PathEntry::new` truncates the name; addresses are short).
fn built_entry() -> impl Strategy<Value = PathEntry> {
    // Long names (up to 480 bytes) exercise the truncation to 255 at a character boundary.
    let name = prop_oneof![8 => text(0..=12), 1 => text(60..=120)];
    (role(), name, any::<Option<SocketAddr>>(), any::<Option<SocketAddr>>(), tags()).prop_map(
        |(role, name, local, peer, tags)| PathEntry::new(role, &name, local, peer).with_tags(tags),
    )
}

/// Any entry within the format's limits, built field by field.
fn raw_entry() -> impl Strategy<Value = PathEntry> {
    (role(), short_text(), short_text(), short_text(), tags())
        .prop_map(|(role, name, local, peer, tags)| PathEntry { role, name, local, peer, tags })
}

/// One way a hop's tags in a PATH payload can break the format's limits.
#[derive(Debug, Clone)]
enum Breach {
    /// The count byte says more than `MAX_TAGS` (9 to 255), and that many tags follow
    /// (up to 40 of them).
    TooMany(u8),
    EmptyKey,
    /// A key of 33 to 255 valid characters.
    LongKey(String),
    /// A byte outside `[A-Za-z0-9_.-]` in place of one of the key's.
    KeyByte(Index, u8),
    /// A value of 65 to 255 bytes of valid text.
    LongValue(String),
    /// A control character inserted in the value (which stays within 64 bytes).
    ControlInValue(Index, char),
    /// A byte that cannot start a UTF-8 character inserted in the value.
    NotUtf8(Index, u8),
    /// Another tag of the same hop with the same key.
    DuplicateKey(Index),
    /// The entry cut short anywhere after its role byte.
    Truncated(Index),
}

impl Breach {
    fn reason(&self) -> &'static str {
        match self {
            Breach::TooMany(_) => "more than 8 tags on one hop",
            Breach::EmptyKey => "empty tag key",
            Breach::LongKey(_) => "tag key longer than 32 bytes",
            Breach::KeyByte(..) => "tag key with a character outside [A-Za-z0-9_.-]",
            Breach::LongValue(_) => "tag value longer than 64 bytes",
            Breach::ControlInValue(..) => "tag value with a control character",
            Breach::NotUtf8(..) => "tag value is not UTF-8",
            Breach::DuplicateKey(_) => "duplicate tag key on one hop",
            Breach::Truncated(_) => "truncated",
        }
    }
}

fn breach() -> impl Strategy<Value = Breach> {
    let control = prop_oneof![
        (0u32..0x20).prop_map(|code| char::from_u32(code).unwrap()),
        Just('\u{7f}'),
        (0x80u32..0xa0).prop_map(|code| char::from_u32(code).unwrap()),
    ];
    let not_key_byte =
        any::<u8>().prop_filter("outside the key set", |byte| !KEY_CHARS.contains(byte));
    let not_utf8_start = prop_oneof![0x80u8..=0xbf, 0xf8u8..=0xff];
    prop_oneof![
        ((MAX_TAGS as u8 + 1)..=u8::MAX).prop_map(Breach::TooMany),
        Just(Breach::EmptyKey),
        key_of(MAX_TAG_KEY_LEN + 1..=255).prop_map(Breach::LongKey),
        (any::<Index>(), not_key_byte).prop_map(|(at, byte)| Breach::KeyByte(at, byte)),
        prop_oneof![
            ascii(MAX_TAG_VALUE_LEN + 1..=255),
            Just("é".repeat(MAX_TAG_VALUE_LEN / 2 + 1)),
        ]
        .prop_map(Breach::LongValue),
        (any::<Index>(), control).prop_map(|(at, c)| Breach::ControlInValue(at, c)),
        (any::<Index>(), not_utf8_start).prop_map(|(at, byte)| Breach::NotUtf8(at, byte)),
        any::<Index>().prop_map(Breach::DuplicateKey),
        any::<Index>().prop_map(Breach::Truncated),
    ]
}

/// `entry` emitted with `count` in its tag count byte and `tags` as raw (key, value) bytes.
fn emit_raw_tags(entry: &PathEntry, count: u8, tags: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    PathEntry { tags: Vec::new(), ..entry.clone() }.emit(&mut out);
    *out.last_mut().unwrap() = count;
    for (key, value) in tags {
        for field in [key, value] {
            out.push(field.len() as u8);
            out.extend_from_slice(field);
        }
    }
    out
}

/// Byte offsets of `text`'s character boundaries (its end included).
fn boundaries(text: &[u8]) -> Vec<usize> {
    let text = std::str::from_utf8(text).unwrap();
    (0..=text.len()).filter(|&at| text.is_char_boundary(at)).collect()
}

/// The entry's PATH bytes with `breach` applied to the last of its valid tags (`spare` when it
/// has none).
fn breached_entry(entry: &PathEntry, spare: &Tag, breach: &Breach) -> Vec<u8> {
    let mut tags: Vec<(Vec<u8>, Vec<u8>)> =
        entry.tags.iter().map(|tag| (tag.key.clone().into(), tag.value.clone().into())).collect();
    if tags.is_empty() {
        tags.push((spare.key.clone().into(), spare.value.clone().into()));
    }
    let last = tags.len() - 1;
    let mut count = tags.len() as u8;
    match breach {
        Breach::TooMany(many) => {
            count = *many;
            let extra = usize::from(*many).min(40).saturating_sub(tags.len());
            tags.extend((0..extra).map(|index| (format!("extra.{index}").into(), b"v".to_vec())));
        }
        Breach::EmptyKey => tags[last].0.clear(),
        Breach::LongKey(key) => tags[last].0 = key.clone().into(),
        Breach::KeyByte(at, byte) => {
            let key = &mut tags[last].0;
            let at = at.index(key.len());
            key[at] = *byte;
        }
        Breach::LongValue(value) => tags[last].1 = value.clone().into(),
        Breach::ControlInValue(at, c) => {
            let value = &mut tags[last].1;
            value.truncate(*boundaries(value).iter().rev().find(|&&end| end <= 62).unwrap());
            let at = *at.get(&boundaries(value));
            let mut bytes = [0u8; 4];
            let inserted = c.encode_utf8(&mut bytes).as_bytes().to_vec();
            value.splice(at..at, inserted);
        }
        Breach::NotUtf8(at, byte) => {
            let value = &mut tags[last].1;
            value.truncate(*boundaries(value).iter().rev().find(|&&end| end <= 63).unwrap());
            let at = *at.get(&boundaries(value));
            value.insert(at, *byte);
        }
        Breach::DuplicateKey(which) => {
            let key = tags[which.index(tags.len())].0.clone();
            if tags.len() < MAX_TAGS {
                tags.push((key, b"again".to_vec()));
                count += 1;
            } else {
                // Eight already: the last takes another's key (or the first's, if it was chosen).
                let key = if which.index(tags.len()) == last { tags[0].0.clone() } else { key };
                tags[last].0 = key;
            }
        }
        Breach::Truncated(_) => {}
    }
    let mut bytes = emit_raw_tags(entry, count, &tags);
    if let Breach::Truncated(at) = breach {
        // Anywhere after the role byte and before the end: never a whole entry.
        bytes.truncate(1 + at.index(bytes.len() - 1));
    }
    bytes
}

fn path_entry() -> impl Strategy<Value = PathEntry> {
    prop_oneof![built_entry(), raw_entry()]
}

fn emit_entries(entries: &[PathEntry]) -> Vec<u8> {
    let mut payload = Vec::new();
    entries.iter().for_each(|entry| entry.emit(&mut payload));
    payload
}

/// Everything a caller may do with a frame that passed `new_checked`: none of it may panic,
/// and re-emitting it gives back the input, flags included (a relay restamping a frame keeps
/// them: a server's DATA frame stays one on its way up).
fn exercise_accessors(frame: &Frame<&[u8]>, bytes: &[u8]) {
    assert_eq!(frame.total_len(), bytes.len());
    assert!(frame.record_count() <= MAX_RECORDS);
    assert!(frame.payload_len() <= MAX_PAYLOAD);
    let _ = frame.sequence();
    let records: Vec<Stamp> = frame.records().collect();
    assert_eq!(records.len(), frame.record_count());
    for (index, stamp) in records.iter().enumerate() {
        assert_eq!(frame.record(index), *stamp);
        assert!(usize::from(stamp.hop) < MAX_HOPS, "record {index} has hop {}", stamp.hop);
    }
    assert_eq!(frame.headers().len(), frame.headers_len());
    assert_eq!(frame.payload().len(), frame.payload_len());
    match frame.kind() {
        Kind::Data => {}
        Kind::Path => check_path_payload(frame.payload()),
        Kind::Kernel => check_kernel_payload(frame.payload()),
        Kind::Fault => check_fault_payload(frame.payload()),
    }

    let header = Header::of(frame);
    let mut out = vec![0xa5; header.total_len()];
    let records = &frame.headers()[HEADER_LEN..];
    assert_eq!(emit_frame(&mut out, &header, records, &[], frame.payload()), out.len());
    assert_eq!(out, bytes, "re-emitted frame differs from its input");

    if frame.record_count() < MAX_RECORDS {
        let added = Stamp::new(0, Direction::Up, 1, 2);
        let mut out = vec![0xa5; frame.total_len() + RECORD_LEN];
        assert_eq!(emit_restamped(&mut out, frame, added), out.len());
        let again = Frame::new_checked(&out[..]).expect("a restamped frame is valid");
        assert_eq!(again.records().last(), Some(added));
        assert_eq!(again.payload(), frame.payload());
        assert_eq!(again.flags(), frame.flags(), "restamping keeps the flags");
    }
}

/// A KERNEL payload from a peer: parsing never panics, and what parses re-emits to a payload
/// that parses to the same sample.
fn check_kernel_payload(payload: &[u8]) {
    let Ok(sample) = KernelSample::parse(payload) else {
        return;
    };
    assert!(usize::from(sample.hop) < MAX_HOPS);
    let mut again = Vec::new();
    sample.emit(&mut again);
    assert_eq!(KernelSample::parse(&again), Ok(sample), "re-emitted kernel sample differs");
}

/// A FAULT payload from a peer: parsing never panics, what parses has a hop within the limit,
/// and it re-emits to the same bytes unless lossy UTF-8 decoding replaced something.
fn check_fault_payload(payload: &[u8]) {
    let Ok(fault) = Fault::parse(payload) else {
        return;
    };
    assert!(usize::from(fault.hop) < MAX_HOPS);
    if std::str::from_utf8(&payload[2..]).is_ok() {
        let mut again = Vec::new();
        fault.emit(&mut again);
        assert_eq!(again, payload);
    }
}

fn tcp_info() -> impl Strategy<Value = TcpInfo> {
    // `u64::MAX` means absent on the wire, so a present field is below it.
    let field = || proptest::option::of(0..u64::MAX);
    (vec(field(), subsegment_tcp_speeds::kernel::INFO_FIELDS)).prop_map(|fields| {
        let values: Vec<u64> = fields.iter().map(|field| field.unwrap_or(u64::MAX)).collect();
        TcpInfo::from_fields(&values)
    })
}

fn tx_totals() -> impl Strategy<Value = TxTotals> {
    vec(0..u64::MAX, 6).prop_map(|fields| TxTotals::from_fields(&fields).expect("all present"))
}

/// A PATH payload from a peer: parsing never panics, and what parses re-emits to the same bytes
/// unless lossy UTF-8 decoding replaced something.
fn check_path_payload(payload: &[u8]) {
    let Ok(entries) = PathEntry::parse_all(payload) else {
        return;
    };
    assert!(entries.len() <= MAX_HOPS);
    let replaced = entries.iter().any(|entry| {
        [&entry.name, &entry.local, &entry.peer].iter().any(|text| text.contains('\u{fffd}'))
    });
    if !replaced {
        assert_eq!(emit_entries(&entries), payload);
    }
}

/// The incremental contract: a prefix of the input never contradicts the whole. Until the
/// header is complete the answer is "need more" or the same error; afterwards it is the same.
fn check_prefixes_agree(bytes: &[u8], whole: &Result<Option<usize>, WireError>) {
    for end in 0..bytes.len() {
        let partial = frame_len(&bytes[..end]);
        if end < HEADER_LEN {
            // A short prefix can only fail at the magic, naming the bytes it has seen.
            let seen = end.min(MAGIC.len());
            let agrees = match (&partial, whole) {
                (Ok(None), _) => true,
                (Err(WireError::BadMagic(first)), Err(WireError::BadMagic(all))) => {
                    first[..seen] == all[..seen]
                }
                _ => false,
            };
            assert!(agrees, "prefix of {end} bytes: {partial:?}, whole input: {whole:?}");
        } else {
            assert_eq!(partial, *whole, "prefix of {end} bytes");
        }
    }
}

/// `next_frame` is `frame_len` then `new_checked` on the frame's bytes, and "need more" for an
/// empty buffer.
fn check_next_frame_agrees(bytes: &[u8], whole: &Result<Option<usize>, WireError>) {
    let next = next_frame(bytes).map(|frame| frame.map(|frame| frame.as_bytes().to_vec()));
    let expected = match whole {
        _ if bytes.is_empty() => Ok(None),
        Ok(Some(len)) if *len <= bytes.len() => {
            Frame::new_checked(&bytes[..*len]).map(|_| Some(bytes[..*len].to_vec()))
        }
        Ok(_) => Ok(None),
        Err(error) => Err(error.clone()),
    };
    assert_eq!(next, expected);
}

/// Parses a stream the way the hops do: append what arrived, take every whole frame, keep
/// the rest for the next read. Each step is taken both with `frame_len` and `new_checked` and
/// with `next_frame` (what the loops call), which must agree.
fn parse_in_chunks(stream: &[u8], chunk_lens: &[usize]) -> (Vec<Vec<u8>>, Vec<u8>) {
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    for &chunk_len in chunk_lens.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, after) = rest.split_at(chunk_len.min(rest.len()));
        rest = after;
        pending.extend_from_slice(chunk);
        while !pending.is_empty() {
            let next = next_frame(&pending).expect("valid stream accepted").map(|f| f.total_len());
            let len = match frame_len(&pending) {
                Ok(Some(len)) if len <= pending.len() => len,
                Ok(_) => {
                    assert_eq!(next, None);
                    break;
                }
                Err(error) => panic!("valid stream rejected: {error}"),
            };
            assert_eq!(next, Some(len));
            let frame = Frame::new_checked(&pending[..len]).expect("whole frame parses");
            frames.push(frame.headers().iter().chain(frame.payload()).copied().collect());
            pending.drain(..len);
        }
    }
    (frames, pending)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// KERNEL samples round-trip, through a whole frame, with any field absent.
    #[test]
    fn kernel_samples_round_trip(
        hop in 0..MAX_HOPS as u8,
        downstream: bool,
        info in tcp_info(),
        tx in proptest::option::of(tx_totals()),
    ) {
        let side = if downstream { Side::Downstream } else { Side::Upstream };
        let sample = KernelSample { hop, side, info, tx };
        let bytes = sample.frame();
        let frame = Frame::new_checked(&bytes[..]).expect("a KERNEL frame is valid");
        prop_assert_eq!(frame.kind(), Kind::Kernel);
        prop_assert_eq!(KernelSample::parse(frame.payload()), Ok(sample));
    }

    /// FAULT reports round-trip through a whole frame, every code and any message; one past a
    /// limit (a hop at the hop limit, a code no build defines, a cut head) is refused for it.
    #[test]
    fn fault_reports_round_trip_and_limits_are_refused(
        hop in 0..MAX_HOPS as u8,
        code in proptest::sample::select(FaultCode::ALL.to_vec()),
        message in ".{0,80}",
        breach in 0usize..3,
        bad_code in prop_oneof![Just(0u8), 8u8..=u8::MAX],
    ) {
        let fault = Fault { hop, code, message };
        let bytes = fault_frame(&fault);
        let frame = Frame::new_checked(&bytes[..]).expect("a FAULT frame is valid");
        prop_assert_eq!(frame.kind(), Kind::Fault);
        prop_assert_eq!(Fault::parse(frame.payload()), Ok(fault.clone()));
        let mut bad = frame.payload().to_vec();
        let reason = match breach {
            0 => { bad[0] = MAX_HOPS as u8; "hop index beyond the hop limit" }
            1 => { bad[1] = bad_code; "unknown fault code" }
            _ => { bad.truncate(1); "shorter than its 2-byte head" }
        };
        prop_assert_eq!(Fault::parse(&bad), Err(WireError::BadFault(reason)));
    }

    /// A KERNEL payload past any limit is refused for that reason; one with fewer fields than
    /// this build's (an older hop) parses, the rest absent; one with more (a newer hop) too.
    #[test]
    fn kernel_samples_past_any_limit_are_refused(
        info in tcp_info(),
        breach in 0usize..6,
        cut in 1usize..8,
        count in 0usize..=MAX_KERNEL_FIELDS,
    ) {
        let mut good = Vec::new();
        KernelSample { hop: 3, side: Side::Upstream, info, tx: None }.emit(&mut good);
        let mut bad = good.clone();
        let reason = match breach {
            0 => { bad[0] = MAX_HOPS as u8; "hop index beyond the hop limit" }
            1 => { bad[1] = 2; "unknown socket side" }
            2 => { bad[3] = 1; "reserved byte not zero" }
            3 => { bad[2] = MAX_KERNEL_FIELDS as u8 + 1; "more fields than the limit" }
            4 => { bad.truncate(bad.len() - cut); "length does not match the field count" }
            _ => { bad.truncate(3); "shorter than its 4-byte head" }
        };
        prop_assert_eq!(KernelSample::parse(&bad), Err(WireError::BadKernelSample(reason)));
        let mut other = vec![3, 0, count as u8, 0];
        for index in 0..count {
            other.extend((index as u64).to_be_bytes());
        }
        let parsed = KernelSample::parse(&other).expect("any count within the limit parses");
        prop_assert_eq!(parsed.info.rtt_ns, (count > 0).then_some(0));
        prop_assert_eq!(parsed.info.sndbuf_limited_ns, (count > 13).then_some(13));
    }

    /// (a) Peer bytes never make the parser panic, and a frame it accepts is safe to use.
    #[test]
    fn peer_bytes_never_panic_the_parser(bytes in peer_bytes()) {
        let whole = frame_len(&bytes);
        check_prefixes_agree(&bytes, &whole);
        check_next_frame_agrees(&bytes, &whole);
        match whole {
            Ok(Some(len)) if len <= bytes.len() => {
                if let Ok(frame) = Frame::new_checked(&bytes[..len]) {
                    exercise_accessors(&frame, &bytes[..len]);
                }
                if len < bytes.len() {
                    let error = Frame::new_checked(&bytes[..]).unwrap_err();
                    prop_assert_eq!(
                        error,
                        WireError::LengthMismatch { header: len, actual: bytes.len() }
                    );
                }
            }
            Ok(Some(len)) => {
                let error = Frame::new_checked(&bytes[..]).unwrap_err();
                prop_assert_eq!(error, WireError::LengthMismatch { header: len, actual: bytes.len() });
            }
            Ok(None) => prop_assert!(bytes.len() < HEADER_LEN),
            Err(error) => {
                prop_assert_eq!(Frame::new_checked(&bytes[..]).unwrap_err(), error);
            }
        }
    }

    /// (a) Every limit, at its boundary: a frame written field by field is accepted exactly
    /// when it is within all of them, and otherwise refused for one of the reasons it breaks.
    #[test]
    fn limits_are_enforced_exactly(raw in raw_frame()) {
        let bytes = raw.to_bytes();
        let header_faults = raw.header_faults();
        match frame_len(&bytes) {
            Ok(Some(len)) => {
                prop_assert!(header_faults.is_empty(), "header passed despite {:?}", header_faults);
                prop_assert_eq!(len, HEADER_LEN + raw.records.len() * RECORD_LEN
                    + raw.payload_len_field as usize);
            }
            Ok(None) => prop_assert!(false, "a whole header is waiting for more"),
            Err(error) => {
                prop_assert!(header_faults.contains(&error), "{:?} not in {:?}", error, header_faults)
            }
        }
        let faults = raw.faults(bytes.len());
        match Frame::new_checked(&bytes[..]) {
            Ok(frame) => {
                prop_assert!(faults.is_empty(), "accepted despite {:?}", faults);
                exercise_accessors(&frame, &bytes);
            }
            Err(error) => prop_assert!(faults.contains(&error), "{:?} not in {:?}", error, faults),
        }
    }

    /// (b) Any valid frame round-trips: emit, check, and the same fields come back.
    #[test]
    fn valid_frames_round_trip(spec in frame_spec(4096)) {
        let bytes = spec.to_bytes();
        prop_assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
        let frame = Frame::new_checked(&bytes[..]).expect("an emitted frame is valid");
        spec.assert_matches(&frame);
        prop_assert_eq!(Header::of(&frame), spec.header());
        exercise_accessors(&frame, &bytes);
    }

    /// (c) Several frames cut at arbitrary points come out whole, in order, with nothing left.
    #[test]
    fn chunked_stream_yields_the_same_frames(
        specs in vec(frame_spec(4096), 1..6),
        chunk_lens in vec(prop_oneof![1usize..8, 1usize..4096], 1..16),
    ) {
        let frames: Vec<Vec<u8>> = specs.iter().map(FrameSpec::to_bytes).collect();
        let (parsed, pending) = parse_in_chunks(&frames.concat(), &chunk_lens);
        prop_assert!(pending.is_empty(), "{} bytes left over", pending.len());
        prop_assert_eq!(parsed.len(), frames.len());
        for (index, (spec, bytes)) in specs.iter().zip(&parsed).enumerate() {
            prop_assert_eq!(bytes, &frames[index], "frame {}", index);
            spec.assert_matches(&Frame::new_checked(&bytes[..]).unwrap());
        }
    }

    /// (d) Arbitrary PATH payloads never panic the parser.
    #[test]
    fn path_payload_bytes_never_panic(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..512),
            (vec(path_entry(), 0..4), vec((any::<Index>(), any::<u8>()), 0..3), any::<Index>())
                .prop_map(|(entries, edits, cut)| {
                    let mut bytes = emit_entries(&entries);
                    for (at, byte) in edits {
                        if !bytes.is_empty() {
                            let at = at.index(bytes.len());
                            bytes[at] = byte;
                        }
                    }
                    bytes.truncate(cut.index(bytes.len() + 1));
                    bytes
                }),
        ]
    ) {
        check_path_payload(&bytes);
    }

    /// (d) Up to `MAX_HOPS` valid entries round-trip; one more is a forwarding loop.
    #[test]
    fn path_entries_round_trip(entries in vec(path_entry(), 0..=MAX_HOPS)) {
        let payload = emit_entries(&entries);
        prop_assert_eq!(PathEntry::parse_all(&payload), Ok(entries.clone()));
        let mut looped = payload;
        for _ in entries.len()..=MAX_HOPS {
            entries.first().cloned().unwrap_or_else(|| PathEntry::new(Role::Relay, "x", None, None))
                .emit(&mut looped);
        }
        prop_assert_eq!(PathEntry::parse_all(&looped), Err(WireError::TooManyHops));
    }

    /// (d) A hop's tags past any limit (too many, a key empty, too long or with a character
    /// outside the set, a value too long, not UTF-8 or with a control character, a key twice,
    /// the entry cut short) are refused with that reason, wherever the entry sits in the path,
    /// and never panic the parser.
    #[test]
    fn path_tags_past_any_limit_are_refused(
        before in vec(path_entry(), 0..3),
        entry in raw_entry(),
        spare in (tag_key(), tag_value()).prop_map(|(key, value)| Tag { key, value }),
        breach in breach(),
        after in vec(path_entry(), 0..2),
    ) {
        let mut payload = emit_entries(&before);
        payload.extend(breached_entry(&entry, &spare, &breach));
        if !matches!(breach, Breach::Truncated(_)) {
            payload.extend(emit_entries(&after));
        }
        prop_assert_eq!(PathEntry::parse_all(&payload), Err(WireError::BadPath(breach.reason())));
        check_path_payload(&payload);
    }
}

fn seeds_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

/// The fuzz target's seeds, built with the crate's own emitters: a DATA frame with two
/// records (one with a kernel receive wait), a PATH answer of three hops (two with tags, one
/// without), a FAULT, and a stream of two whole frames and half of a third.
fn seed_frames() -> Vec<(&'static str, Vec<u8>)> {
    let tag = |key: &str, value: &str| Tag { key: key.to_string(), value: value.to_string() };
    let addr = |text: &str| Some(text.parse::<SocketAddr>().unwrap());
    let data = |sequence: u64, stamps: &[Stamp], payload: &[u8]| {
        let header = Header {
            flags: 0,
            kind: Kind::Data,
            record_count: stamps.len(),
            sequence,
            payload_len: payload.len(),
        };
        let mut out = vec![0; header.total_len()];
        emit_frame(&mut out, &header, &[], stamps, payload);
        out
    };
    let waited = Stamp {
        receive: ReceiveClock::Kernel,
        receive_wait_ns: 250,
        ..Stamp::new(1, Direction::Down, 3000, 4000)
    };
    let payload: Vec<u8> = (0..16).collect();
    let data_bin = data(7, &[Stamp::new(0, Direction::Down, 1000, 2000), waited], &payload);
    let server_data_bin = {
        let (stamp, payload) = (Stamp::new(2, Direction::Up, 5000, 6000), b"+PONG\r\n");
        let header = Header {
            flags: DATA_FROM_SERVER,
            kind: Kind::Data,
            record_count: 1,
            sequence: 3,
            payload_len: payload.len(),
        };
        let mut out = vec![0; header.total_len()];
        emit_frame(&mut out, &header, &[], &[stamp], payload);
        out
    };
    let mut path = Vec::new();
    PathEntry::new(Role::Source, "A", None, None)
        .with_tags(vec![tag("site", "lab"), tag("rack", "r1")])
        .emit(&mut path);
    PathEntry::new(Role::Relay, "B", addr("127.0.0.1:9000"), addr("127.0.0.1:41000"))
        .with_tags(vec![
            tag("provider", "loopback"),
            tag("circuit.id", "c-42 Zürich"),
            tag("note", ""),
        ])
        .emit(&mut path);
    PathEntry::new(Role::Echo, "Z", addr("127.0.0.1:9001"), addr("127.0.0.1:41002"))
        .emit(&mut path);
    let path_bin = subsegment_tcp_speeds::wire::flagged_control_frame(
        Kind::Path,
        PATH_ASKS_KERNEL_INFO,
        &path,
    );
    let kernel_bin = KernelSample {
        tx: Some(TxTotals {
            sent: 4,
            queue_sum_ns: 8_000,
            queue_max_ns: 3_000,
            acked: 4,
            ack_rtt_sum_ns: 40_000,
            ack_rtt_min_ns: 9_000,
        }),
        hop: 1,
        side: Side::Downstream,
        info: TcpInfo {
            rtt_ns: Some(62_000),
            min_rtt_ns: Some(6_000),
            total_retrans: Some(3),
            unacked: Some(2),
            ..TcpInfo::default()
        },
    }
    .frame();
    let fault_bin = fault_frame(&Fault {
        hop: 2,
        code: FaultCode::Unreachable,
        message: "cannot connect: connection refused".to_string(),
    });
    let third = data(2, &[Stamp::new(0, Direction::Down, 7, 8)], b"world!");
    let stream_bin = [
        &path_bin[..],
        &data(1, &[Stamp::new(0, Direction::Down, 5, 6)], b"hello"),
        &third[..third.len() / 2],
    ]
    .concat();
    vec![
        ("data.bin", data_bin),
        ("server-data.bin", server_data_bin),
        ("path.bin", path_bin),
        ("fault.bin", fault_bin),
        ("kernel.bin", kernel_bin),
        ("stream.bin", stream_bin),
    ]
}

/// Writes the fuzz seeds after a change to the format:
/// `cargo test --test wire_properties -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand when the wire format changes"]
fn write_fuzz_seeds() {
    for (name, bytes) in seed_frames() {
        std::fs::write(seeds_dir().join(name), bytes).unwrap();
    }
}

/// The fuzz target's seeds (`fuzz/seeds/`) are frames of the current version, exactly as
/// `seed_frames` builds them: a format change that forgot them would leave the fuzzer starting
/// from inputs refused at the first byte. (`write_fuzz_seeds` rewrites them.)
#[test]
fn fuzz_seeds_are_frames_of_this_version() {
    let seeds = seeds_dir();
    for (name, built) in seed_frames() {
        let bytes = std::fs::read(seeds.join(name)).unwrap();
        assert!(
            bytes == built,
            "fuzz/seeds/{name} is stale: cargo test --test wire_properties -- --ignored write_fuzz_seeds"
        );
    }
    for (name, kind) in [
        ("data.bin", Kind::Data),
        ("server-data.bin", Kind::Data),
        ("path.bin", Kind::Path),
        ("fault.bin", Kind::Fault),
        ("kernel.bin", Kind::Kernel),
    ] {
        let bytes = std::fs::read(seeds.join(name)).unwrap();
        let frame = next_frame(&bytes).unwrap().unwrap_or_else(|| panic!("{name}: incomplete"));
        assert_eq!((frame.kind(), frame.total_len()), (kind, bytes.len()), "{name}");
        if kind == Kind::Path {
            let entries = PathEntry::parse_all(frame.payload()).unwrap();
            let tag_counts: Vec<usize> = entries.iter().map(|entry| entry.tags.len()).collect();
            assert_eq!(tag_counts, [2, 3, 0], "path.bin: hops with tags and one without");
        }
    }
    let stream = std::fs::read(seeds.join("stream.bin")).unwrap();
    let mut rest = &stream[..];
    let mut whole = 0;
    while let Some(frame) = next_frame(rest).unwrap() {
        rest = &rest[frame.total_len()..];
        whole += 1;
    }
    assert_eq!(whole, 2, "stream.bin: two whole frames, then half of one");
    assert!(!rest.is_empty() && frame_len(rest).unwrap().is_some_and(|len| len > rest.len()));
}
