//! The egress role (`-r`, a stripping relay): the chain's stamps end here and an ordinary
//! server is next. From a source, each frame's payload goes to the server and its headers wait
//! for the answer, matched by byte count (for echo servers). From an ingress, each frame is
//! delivered and answered at once by its receipt. Either way, what the server sends unasked is
//! framed as its own DATA ([`wire::DATA_FROM_SERVER`]).

use std::collections::VecDeque;

use super::{Connection, unwritten};
use crate::buffer::Buffer;
use crate::core::{Clock, Outbound, ReadStamp, Socket};
use crate::wire::{
    self, Direction, Frame, HEADER_LEN, Header, Kind, MAX_HEADERS_LEN, RECORD_LEN, Stamp,
};

/// A stripping relay keeps the headers of frames whose answer has not come back yet.
pub(super) const PENDING_HEADERS_LEN: usize = 256 * 1024;

/// A stripping relay's memory of the frames sent to the plain server and not yet answered:
/// their headers and records (this hop's down record included) and payload lengths.
pub(super) struct PendingAnswers {
    pub(super) headers: Buffer,
    pub(super) frames: VecDeque<PendingFrame>,
}

/// One frame sent to the plain server and not answered yet.
pub(super) struct PendingFrame {
    pub(super) headers_len: usize,
    pub(super) payload_len: usize,
    /// When the payload's hand-over to the server started; `None` until it has. An empty
    /// payload has nothing to hand over and counts as sent when it is read.
    sent_ns: Option<u64>,
}

impl PendingAnswers {
    /// Gives the payloads whose hand-over has started their write stamps, in order.
    fn collect_sent(&mut self, output: &mut Outbound) {
        while let Some(sent_ns) = output.take_detached() {
            let waiting = self.frames.iter_mut().find(|frame| frame.sent_ns.is_none());
            debug_assert!(waiting.is_some(), "a write stamp for a payload never queued");
            if let Some(frame) = waiting {
                frame.sent_ns = Some(sent_ns);
            }
        }
    }

    pub(super) fn clear(&mut self) {
        self.frames.clear();
        self.headers.consume(self.headers.len());
    }
}

impl<S: Socket> Connection<S> {
    /// At a stripping relay: match the plain server's answer bytes, in order, to the frames
    /// sent to it, and frame them again so the hops upstream go on measuring.
    pub(super) fn frame_plain_answers(&mut self, clock: &impl Clock) -> bool {
        let mut progress = false;
        let hop = self.hop.unwrap_or(0);
        self.pending.collect_sent(&mut self.down.output);
        loop {
            let available = self.up.input.len();
            let front = self
                .pending
                .frames
                .front()
                .map(|frame| (frame.headers_len, frame.payload_len, frame.sent_ns));
            if available == 0 && !matches!(front, Some((_, 0, _))) {
                break;
            }
            // Bytes before the front frame's payload has started on its way to the server
            // cannot answer it (a banner, a greeting): they are the server's own.
            let front =
                front.filter(|&(_, payload_len, sent_ns)| sent_ns.is_some() || payload_len == 0);
            let moved = match front {
                Some((headers_len, payload_len, sent_ns)) => {
                    if available < payload_len {
                        break;
                    }
                    // An empty answer is owed no bytes: it is complete the moment it is due.
                    let read = if payload_len == 0 {
                        ReadStamp { read_ns: clock.now_ns(), ..ReadStamp::default() }
                    } else {
                        self.up.input.stamp_of_head(payload_len)
                    };
                    let stamp = unwritten(hop, Direction::Up, read);
                    let record_count =
                        Frame::new_unchecked(&self.pending.headers.data()[..headers_len])
                            .record_count();
                    let frame_len = HEADER_LEN + (record_count + 1) * RECORD_LEN + payload_len;
                    if self.up.output.room() < frame_len {
                        break;
                    }
                    let sent_ns = sent_ns.expect("filtered above: its hand-over has started");
                    let stored = &mut self.pending.headers.data_mut()[..headers_len];
                    wire::patch_write_stamp(
                        &mut stored[wire::write_stamp_offset(record_count - 1)..],
                        sent_ns,
                    );
                    let stored = &self.pending.headers.data()[..headers_len];
                    let stored_frame = Frame::new_unchecked(stored);
                    let header = Header {
                        record_count: record_count + 1,
                        payload_len,
                        ..Header::of(&stored_frame)
                    };
                    let tail = self.up.output.tail(header.total_len()).expect("room checked");
                    let written = wire::emit_frame(
                        tail,
                        &header,
                        &stored[HEADER_LEN..],
                        &[stamp],
                        &self.up.input.data()[..payload_len],
                    );
                    self.up.output.commit_frame(written, wire::write_stamp_offset(record_count));
                    self.pending.headers.consume(headers_len);
                    self.pending.frames.pop_front();
                    self.frames_up += 1;
                    payload_len
                }
                None => {
                    let count = available.min(wire::MAX_PAYLOAD);
                    let read = self.up.input.stamp_of_head(count);
                    let sequence = self.server_frames_up;
                    let data = &self.up.input.data()[..count];
                    if !server_data_into(&mut self.up.output, hop, sequence, read, data) {
                        break;
                    }
                    self.server_frames_up += 1;
                    count
                }
            };
            self.bytes_up += moved as u64;
            self.up.input.consume(moved);
            progress = true;
        }
        progress
    }
}

/// At an ingress's egress: the payload goes to the server, and the frame's stamps go back up
/// as its receipt (no payload; this hop's turn record last), so the ingress measures the
/// chain with the application's own frames. `up` is `None` once the up direction has ended
/// (the server closed first): the payload still goes on, unmeasured.
pub(super) fn deliver_with_receipt<T: AsRef<[u8]>>(
    server: &mut Outbound,
    up: Option<&mut Outbound>,
    frame: &Frame<T>,
    stamp: Stamp,
) -> bool {
    let header =
        Header { record_count: frame.record_count() + 1, payload_len: 0, ..Header::of(frame) };
    let receipt_room = up.as_ref().is_none_or(|up| up.room() >= header.total_len());
    if server.room() < frame.payload_len() || !receipt_room {
        return false;
    }
    server.push(frame.payload());
    if let Some(up) = up {
        let tail = up.tail(header.total_len()).expect("room checked");
        let written =
            wire::emit_frame(tail, &header, &frame.headers()[HEADER_LEN..], &[stamp], &[]);
        up.commit_frame(written, wire::write_stamp_offset(frame.record_count()));
    }
    true
}

/// Frames bytes a plain server sent as its own DATA going up ([`wire::DATA_FROM_SERVER`]),
/// with this hop's record (read from the server, written up) as the first.
pub(super) fn server_data_into(
    output: &mut Outbound,
    hop: u8,
    sequence: u64,
    read: ReadStamp,
    data: &[u8],
) -> bool {
    let header = Header {
        flags: wire::DATA_FROM_SERVER,
        kind: Kind::Data,
        record_count: 1,
        sequence,
        payload_len: data.len(),
    };
    let Some(tail) = output.tail(header.total_len()) else {
        return false;
    };
    let written =
        wire::emit_frame(tail, &header, &[], &[unwritten(hop, Direction::Up, read)], data);
    output.commit_frame(written, wire::write_stamp_offset(0));
    true
}

/// Sends only the payload on, and keeps the frame's headers (with this hop's record) until the
/// plain server's answer comes back.
pub(super) fn strip_into<T: AsRef<[u8]>>(
    output: &mut Outbound,
    pending: &mut PendingAnswers,
    frame: &Frame<T>,
    stamp: Stamp,
) -> bool {
    let headers_len = frame.headers_len() + RECORD_LEN;
    debug_assert!(headers_len <= MAX_HEADERS_LEN + RECORD_LEN, "checked by Frame::new_checked");
    if output.room() < frame.payload_len() || pending.headers.room() < headers_len {
        return false;
    }
    // Stored without the payload: the plain server's answer will take its place.
    let header =
        Header { record_count: frame.record_count() + 1, payload_len: 0, ..Header::of(frame) };
    let tail = pending.headers.tail(headers_len).expect("room checked");
    let written = wire::emit_frame(tail, &header, &frame.headers()[HEADER_LEN..], &[stamp], &[]);
    pending.headers.commit(written);
    let payload_len = frame.payload_len();
    // An empty payload has nothing to hand over: sent as it is read.
    let sent_ns = (payload_len == 0).then_some(stamp.read_ns);
    pending.frames.push_back(PendingFrame { headers_len: written, payload_len, sent_ns });
    payload_len == 0 || output.push_detached_from(frame.payload(), &stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(lens: &[usize]) -> PendingAnswers {
        let frames = lens
            .iter()
            .map(|&payload_len| PendingFrame {
                headers_len: 0,
                payload_len,
                sent_ns: (payload_len == 0).then_some(1),
            })
            .collect();
        PendingAnswers { headers: Buffer::with_capacity(0).unwrap(), frames }
    }

    #[test]
    fn test_write_stamps_reach_their_own_frames_in_order() {
        let mut output = Outbound::with_capacity(64).unwrap();
        for payload in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            assert!(output.push_detached(payload));
        }
        // Frames a, an empty one, b, c.
        let mut pending = pending(&[4, 0, 4, 4]);
        output.written(4, 100); // a's hand-over
        pending.collect_sent(&mut output);
        let sent: Vec<_> = pending.frames.iter().map(|frame| frame.sent_ns).collect();
        assert_eq!(sent, [Some(100), Some(1), None, None]);
        // a and the empty frame are answered; b's and c's hand-overs follow.
        pending.frames.pop_front();
        pending.frames.pop_front();
        output.written(4, 300);
        output.written(4, 400);
        pending.collect_sent(&mut output);
        let sent: Vec<_> = pending.frames.iter().map(|frame| frame.sent_ns).collect();
        assert_eq!(sent, [Some(300), Some(400)]);
    }
}
