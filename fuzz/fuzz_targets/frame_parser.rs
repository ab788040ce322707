//! Fuzzes the frame parser as a hop meets peer input: the bytes are one read's worth of a
//! stream. The whole input goes through `frame_len` and `new_checked`, and through
//! `next_frame` (which the loops use), and both must agree; an accepted frame has every
//! accessor called, its PATH (every hop's tags within their limits) or FAULT payload parsed,
//! and is emitted again, which must give back the same bytes (but for the flags byte, which
//! `Header::emit` writes as zero). Then the
//! same input arrives in two reads, split at a point the input chooses (its last two bytes,
//! which in a valid frame are payload and free to change), and at a few fixed points: the
//! frames, and how the stream ends, must be the same as when it arrives at once.
//!
//! Run from the repository root: `RUSTC_BOOTSTRAP=1 cargo fuzz run frame_parser fuzz/seeds`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use subsegment_tcp_speeds::wire::{
    Direction, Fault, Frame, HEADER_LEN, Header, KernelSample, Kind, MAX_HOPS, MAX_PAYLOAD, MAX_RECORDS,
    MAX_TAG_KEY_LEN, MAX_TAG_VALUE_LEN, MAX_TAGS, PathEntry, RECORD_LEN, Stamp, WireError,
    emit_frame, emit_restamped, frame_len, next_frame,
};

/// The header's flags byte: not interpreted by the parser, written as zero by `Header::emit`.
const FLAGS_AT: usize = 7;

fuzz_target!(|data: &[u8]| {
    check_one_read(data);
    check_two_reads(data);
});

fn check_one_read(data: &[u8]) {
    // The checked constructor on the whole input must agree with the incremental step, and
    // `next_frame` with the two of them.
    let checked = Frame::new_checked(data);
    let next = next_frame(data).map(|frame| frame.map(|frame| frame.total_len()));
    match frame_len(data) {
        Ok(Some(len)) if len <= data.len() => {
            match Frame::new_checked(&data[..len]) {
                Ok(frame) => {
                    exercise(&frame, &data[..len]);
                    assert_eq!(next, Ok(Some(len)));
                }
                Err(error) => assert_eq!(next, Err(error)),
            }
            if len < data.len() {
                assert!(
                    checked.is_err(),
                    "new_checked accepted {} trailing bytes",
                    data.len() - len
                );
            }
        }
        Ok(_) => {
            assert!(checked.is_err(), "new_checked accepted an incomplete frame");
            assert_eq!(next, Ok(None));
        }
        Err(error) => {
            assert_eq!(checked.err(), Some(error.clone()));
            // An empty buffer is "need more" to the loops, not a bad magic.
            if !data.is_empty() {
                assert_eq!(next, Err(error));
            }
        }
    }
}

/// Everything a hop or the source does with an accepted frame.
fn exercise(frame: &Frame<&[u8]>, bytes: &[u8]) {
    assert_eq!(frame.total_len(), bytes.len());
    assert_eq!(frame.as_bytes(), bytes);
    assert!(frame.record_count() <= MAX_RECORDS);
    assert!(frame.payload_len() <= MAX_PAYLOAD);
    let stamps: Vec<Stamp> = frame.records().collect();
    assert_eq!(stamps.len(), frame.record_count());
    assert!(stamps.iter().all(|stamp| usize::from(stamp.hop) < MAX_HOPS));
    assert_eq!(frame.headers().len(), frame.headers_len());
    assert_eq!(frame.payload().len(), frame.payload_len());
    match frame.kind() {
        Kind::Data => {}
        Kind::Path => check_path(frame.payload()),
        Kind::Fault => check_fault(frame.payload()),
        Kind::Kernel => check_kernel(frame.payload()),
    }

    // Re-emit with the records as they came: the same bytes but for the flags.
    let header = Header::of(frame);
    let mut out = vec![0xa5; header.total_len()];
    let records = &frame.headers()[HEADER_LEN..];
    assert_eq!(emit_frame(&mut out, &header, records, &[], frame.payload()), out.len());
    let mut expected = bytes.to_vec();
    expected[FLAGS_AT] = 0;
    assert!(out == expected, "re-emitted frame differs from its input");

    // Re-emit from the parsed stamps (reserved bytes become zero): the same fields come back.
    let mut out = vec![0xa5; header.total_len()];
    assert_eq!(emit_frame(&mut out, &header, &[], &stamps, frame.payload()), out.len());
    let again = Frame::new_checked(&out[..]).expect("a re-emitted frame is valid");
    assert_eq!(Header::of(&again), header);
    assert!(again.records().eq(stamps.iter().copied()));
    assert_eq!(again.payload(), frame.payload());

    // A hop passing the frame on adds one record; the caller keeps below the limit.
    if frame.record_count() < MAX_RECORDS {
        let stamp = Stamp::new(1, Direction::Down, 2, 3);
        let mut out = vec![0xa5; frame.total_len() + RECORD_LEN];
        assert_eq!(emit_restamped(&mut out, frame, stamp), out.len());
        let again = Frame::new_checked(&out[..]).expect("a restamped frame is valid");
        assert_eq!(again.record_count(), frame.record_count() + 1);
        assert_eq!(again.records().last(), Some(stamp));
        assert_eq!(again.payload(), frame.payload());
    }
}

fn check_path(payload: &[u8]) {
    let Ok(entries) = PathEntry::parse_all(payload) else {
        return;
    };
    assert!(entries.len() <= MAX_HOPS);
    // Tags are checked, not decoded lossily: whatever parses is within every limit.
    for entry in &entries {
        assert!(entry.tags.len() <= MAX_TAGS);
        for (index, tag) in entry.tags.iter().enumerate() {
            assert!(!tag.key.is_empty() && tag.key.len() <= MAX_TAG_KEY_LEN);
            assert!(tag.key.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
            assert!(tag.value.len() <= MAX_TAG_VALUE_LEN);
            assert!(!tag.value.chars().any(char::is_control));
            assert!(entry.tags[..index].iter().all(|earlier| earlier.key != tag.key));
        }
    }
    let texts = || entries.iter().flat_map(|entry| [&entry.name, &entry.local, &entry.peer]);
    // Lossy UTF-8 decoding may grow a text past the one-byte length prefix; such entries
    // cannot be emitted again, and no hop re-emits a parsed entry.
    if texts().all(|text| text.len() <= usize::from(u8::MAX)) {
        let mut out = Vec::new();
        entries.iter().for_each(|entry| entry.emit(&mut out));
        assert_eq!(PathEntry::parse_all(&out).as_ref(), Ok(&entries));
        if !texts().any(|text| text.contains('\u{fffd}')) {
            assert!(out == payload, "re-emitted path differs from its input");
        }
    }
}

fn check_kernel(payload: &[u8]) {
    let Ok(sample) = KernelSample::parse(payload) else {
        return;
    };
    assert!(usize::from(sample.hop) < MAX_HOPS);
    let mut out = Vec::new();
    sample.emit(&mut out);
    assert!(KernelSample::parse(&out) == Ok(sample), "re-emitted kernel sample differs");
}

fn check_fault(payload: &[u8]) {
    let Ok(fault) = Fault::parse(payload) else {
        return;
    };
    assert!(usize::from(fault.hop) < MAX_HOPS);
    if std::str::from_utf8(&payload[2..]).is_ok() {
        let mut out = Vec::new();
        fault.emit(&mut out);
        assert!(out == payload, "re-emitted fault differs from its input");
    }
}

/// How a stream read so far ends.
#[derive(Debug, PartialEq)]
enum End {
    /// Waiting for more: this many bytes of an unfinished frame are held.
    Pending(usize),
    /// The stream was refused (the hop closes the connection).
    Refused(WireError),
}

/// The hops' read loop: append what arrived, take every whole frame, keep the rest.
fn read_stream(reads: &[&[u8]]) -> (Vec<Vec<u8>>, End) {
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    for read in reads {
        pending.extend_from_slice(read);
        loop {
            let len = match next_frame(&pending) {
                Ok(Some(frame)) => frame.total_len(),
                Ok(None) => break,
                Err(error) => return (frames, End::Refused(error)),
            };
            frames.push(pending.drain(..len).collect());
        }
    }
    (frames, End::Pending(pending.len()))
}

fn check_two_reads(data: &[u8]) {
    let (frames, end) = read_stream(&[data]);
    let chosen = match data {
        [.., high, low] => usize::from(u16::from_be_bytes([*high, *low])) % (data.len() + 1),
        _ => 0,
    };
    for split in [chosen, 1, 4, HEADER_LEN - 1, HEADER_LEN, data.len() / 2] {
        let split = split.min(data.len());
        let (first, second) = data.split_at(split);
        let (frames_split, end_split) = read_stream(&[first, second]);
        assert!(frames_split == frames, "split at {split}: different frames");
        match (&end_split, &end) {
            // Refused during the first read: only the magic bytes seen so far are named.
            (End::Refused(WireError::BadMagic(_)), End::Refused(WireError::BadMagic(_))) => {}
            _ => assert_eq!(end_split, end, "split at {split}"),
        }
    }
}
