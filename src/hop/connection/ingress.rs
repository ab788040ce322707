//! The ingress role (`--ingress`): a hop in front of an unmodified client. It owns what the
//! source does for stdin, but for one client connection each: the client's bytes become DATA
//! frames (record 0 is the ingress's own), probes are interleaved on the same connection, and
//! what comes back up is either a frame's *receipt* (the egress turned it, stamps only) or the
//! server's own bytes ([`wire::DATA_FROM_SERVER`]), whose payload goes to the client plain.
//!
//! Receipts and probe answers give every link's round trip and every relay's residence as the
//! application's bytes see them (same sockets, same queues). The server's frames give each
//! hop's residence going up. Statistics are kept per distinct path, across the connections
//! that took it ([`IngressTotals`]), so a connection costs counters, not histograms; a
//! connection's own line at its close has its frames, bytes and round trips.

use std::time::Duration;

use super::{Connection, HopConfig, unwritten};
use crate::core::{Clock, Inbound, Outbound, ReadStamp, Socket};
use crate::report::metrics::{BucketLayout, SourceRecorder};
use crate::source::{Ending, Run};
use crate::stats::{self, Chain, Sequencing};
use crate::wire::{
    self, Direction, Fault, Frame, HEADER_LEN, Header, Kind, PathEntry, RECORD_LEN, Stamp,
};

/// How much of a client's bytes one frame carries at most: big enough for bulk, small enough
/// that a frame's stamps stay close to its bytes.
const CLIENT_FRAME_PAYLOAD: usize = 64 * 1024;
/// Distinct paths kept apart; connections over further paths are counted, not measured.
pub const MAX_PATHS: usize = 16;

pub struct IngressConfig {
    /// Between probes on each client connection; `None`: no probes.
    pub probe_interval: Option<Duration>,
    /// `--report-interval`: each path's statistics per interval, as a stderr line and a
    /// `--jsonl` record.
    pub report_interval: Option<Duration>,
    pub presentation: crate::report::Presentation,
    /// `--jsonl` (the connections' records and the paths' summaries) and the interval lines,
    /// written off the loop.
    pub output: Option<crate::output::Writer>,
}

/// When an ingress puts its next probe on every connection: each `interval_ns` from the
/// start, by the time given (the loop's clock, a test's fake one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSchedule {
    interval_ns: u64,
    next_ns: u64,
}

impl ProbeSchedule {
    pub fn starting(now_ns: u64, interval_ns: u64) -> ProbeSchedule {
        debug_assert!(interval_ns > 0, "no probes is no schedule, not a zero interval");
        ProbeSchedule { interval_ns, next_ns: now_ns + interval_ns }
    }

    /// When the next probe is due: what the loop's sleep is bounded by.
    pub fn next_ns(&self) -> u64 {
        self.next_ns
    }

    /// Whether a probe is due at `now_ns`; if so, the next is scheduled from the due time,
    /// not from now, so a late wake-up does not shift every later probe (and probes missed
    /// by a long stall are not sent in a burst: one now, the next on the grid).
    pub fn due(&mut self, now_ns: u64) -> bool {
        if now_ns < self.next_ns {
            return false;
        }
        let missed = (now_ns - self.next_ns) / self.interval_ns;
        self.next_ns += (missed + 1) * self.interval_ns;
        true
    }
}

/// One client connection's framing and accounting.
pub(in crate::hop) struct IngressState {
    sequencing: Sequencing,
    /// Where the connection's path is kept in [`IngressTotals`], once it came back.
    path: PathSlot,
    pub(in crate::hop) probes_sent: u64,
    pub(in crate::hop) receipts: u64,
    pub(in crate::hop) server_frames: u64,
    pub(in crate::hop) client_bytes: u64,
    pub(in crate::hop) server_bytes: u64,
    /// Frames sent that the path's interval counters have been told of.
    sent_counted: u64,
    opened_unix_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathSlot {
    Announced,
    Kept(usize),
    /// More distinct paths than [`MAX_PATHS`]: counted only.
    Uncounted,
}

/// What one frame coming up did.
pub(in crate::hop) enum Taken {
    /// Consumed; nothing for the client.
    Measured,
    /// Its payload went to the client.
    Delivered,
    /// The client's output is full: try again once it has drained.
    NoRoom,
}

impl IngressState {
    pub(in crate::hop) fn new() -> IngressState {
        IngressState {
            sequencing: Sequencing::default(),
            path: PathSlot::Announced,
            probes_sent: 0,
            receipts: 0,
            server_frames: 0,
            client_bytes: 0,
            server_bytes: 0,
            sent_counted: 0,
            opened_unix_ns: crate::clock::realtime_ns(),
        }
    }

    /// Frames sent down so far, probes included.
    pub(in crate::hop) fn sent(&self) -> u64 {
        self.sequencing.sent
    }

    /// The PATH announcement that opens the connection downstream: the ingress is hop 0.
    pub(in crate::hop) fn announcement(
        config: &HopConfig,
        local: Option<std::net::SocketAddr>,
        client: std::net::SocketAddr,
    ) -> Vec<u8> {
        let mut entries = Vec::new();
        PathEntry::new(wire::Role::Ingress, &config.name, local, Some(client))
            .with_tags(config.tags.clone())
            .emit(&mut entries);
        wire::control_frame(Kind::Path, &entries)
    }

    /// Frames the client's bytes waiting in `input` into `output`; returns whether any moved.
    pub(in crate::hop) fn frame_client_bytes(
        &mut self,
        input: &mut Inbound,
        output: &mut Outbound,
    ) -> bool {
        let mut moved = false;
        while !input.is_empty() {
            let count = input.len().min(CLIENT_FRAME_PAYLOAD);
            let header_len = HEADER_LEN + RECORD_LEN;
            let Some(tail) = output.tail(header_len + count) else { break };
            let read = input.stamp_of_head(count);
            let header = Header {
                kind: Kind::Data,
                flags: 0,
                record_count: 1,
                sequence: self.sequencing.sent_one(),
                payload_len: count,
            };
            let written =
                wire::emit_frame(tail, &header, &[], &[origin_stamp(read)], &input.data()[..count]);
            output.commit_frame(written, wire::write_stamp_offset(0));
            input.consume(count);
            self.client_bytes += count as u64;
            moved = true;
        }
        moved
    }

    /// Queues one probe: a DATA frame without payload, stamped as generated now.
    pub(in crate::hop) fn queue_probe(&mut self, output: &mut Outbound, now_ns: u64) -> bool {
        let header = Header {
            kind: Kind::Data,
            flags: 0,
            record_count: 1,
            sequence: self.sequencing.sent,
            payload_len: 0,
        };
        let Some(tail) = output.tail(header.total_len()) else { return false };
        self.sequencing.sent_one();
        let read = ReadStamp { read_ns: now_ns, ..ReadStamp::default() };
        let written = wire::emit_frame(tail, &header, &[], &[origin_stamp(read)], &[]);
        output.commit_frame(written, wire::write_stamp_offset(0));
        self.probes_sent += 1;
        true
    }

    /// The path came back at `now_ns`: find (or open) its statistics.
    pub(in crate::hop) fn path_discovered(
        &mut self,
        path: Vec<PathEntry>,
        totals: &mut IngressTotals,
        now_ns: u64,
    ) {
        self.path = match totals.slot_of(path, now_ns) {
            Some(index) => PathSlot::Kept(index),
            None => PathSlot::Uncounted,
        };
    }

    /// One DATA frame from downstream, read with `read`.
    pub(in crate::hop) fn take_data<T: AsRef<[u8]>>(
        &mut self,
        frame: &Frame<T>,
        read: ReadStamp,
        client: &mut Outbound,
        totals: &mut IngressTotals,
    ) -> Taken {
        let kept = match self.path {
            PathSlot::Kept(index) => totals.paths.get_mut(index),
            _ => None,
        };
        if frame.flags() & wire::DATA_FROM_SERVER != 0 {
            if !client.push_measured(frame.payload(), &unwritten(0, Direction::Up, read)) {
                return Taken::NoRoom;
            }
            self.server_frames += 1;
            self.server_bytes += frame.payload_len() as u64;
            if let Some(kept) = kept {
                kept.server_data.record(frame);
                kept.run.unsolicited_bytes += frame.payload_len() as u64;
            }
            return Taken::Delivered;
        }
        self.receipts += 1;
        self.sequencing.answered_one(frame.sequence());
        if let Some(kept) = kept {
            let end_to_end = kept.run.chain.as_mut().and_then(|chain| chain.record(frame, read));
            if let Some(chain) = kept.interval.chain.as_mut() {
                chain.record(frame, read);
            }
            kept.record_metrics(end_to_end);
            kept.run.last_answer_ns = Some(read.read_ns);
            kept.interval.answered += 1;
            kept.interval.sent += self.sequencing.sent - self.sent_counted;
            self.sent_counted = self.sequencing.sent;
        }
        Taken::Measured
    }

    /// Sent, answered and the bytes each way, for the connection's close line.
    pub(in crate::hop) fn summary(&self) -> String {
        let sequencing = &self.sequencing;
        format!(
            "client {} B in {} frames, server {} B in {} frames; {} probes; {} of {} frames' \
             receipts back",
            self.client_bytes,
            sequencing.sent - self.probes_sent,
            self.server_bytes,
            self.server_frames,
            self.probes_sent,
            sequencing.answered,
            sequencing.sent
        )
    }

    /// The connection's `--jsonl` record at its close: one line, no histograms.
    pub(in crate::hop) fn record(
        &self,
        client: std::net::SocketAddr,
        reason: Option<&str>,
    ) -> String {
        let sequencing = &self.sequencing;
        let record = ConnectionRecord {
            record: "connection",
            schema_version: crate::report::SCHEMA_VERSION,
            client: client.to_string(),
            path_index: match self.path {
                PathSlot::Kept(index) => Some(index + 1),
                _ => None,
            },
            opened_unix_ns: self.opened_unix_ns,
            closed_unix_ns: crate::clock::realtime_ns(),
            client_bytes: self.client_bytes,
            client_frames: sequencing.sent - self.probes_sent,
            probes: self.probes_sent,
            receipts: sequencing.answered,
            missing: sequencing.missing(),
            server_bytes: self.server_bytes,
            server_frames: self.server_frames,
            closed: reason,
        };
        crate::report::json::line(&record)
    }

    /// Folds the connection's counts into its path's totals when it closes.
    pub(in crate::hop) fn close_into(&self, totals: &mut IngressTotals, now_ns: u64) {
        let PathSlot::Kept(index) = self.path else {
            totals.uncounted_connections += 1;
            return;
        };
        let Some(kept) = totals.paths.get_mut(index) else { return };
        let (run, sequencing) = (&mut kept.run, &self.sequencing);
        run.sequencing.sent += sequencing.sent;
        run.sequencing.answered += sequencing.answered;
        run.sequencing.out_of_order += sequencing.out_of_order;
        run.sequencing.duplicated += sequencing.duplicated;
        run.sequencing.lost += sequencing.missing();
        run.payload_bytes += self.client_bytes;
        run.sent_payload_bytes += self.client_bytes;
        run.last_answer_ns = run.last_answer_ns.max(Some(now_ns));
        kept.connections += 1;
    }
}

/// The ingress's own record: generated (a probe) or read from the client (its bytes) at
/// `read`; the write stamp is patched in right before the hand-over downstream.
fn origin_stamp(read: ReadStamp) -> Stamp {
    Stamp::new(0, Direction::Down, read.read_ns, 0)
}

/// The hop-wide statistics of an ingress: per distinct path, across its connections.
#[derive(Default)]
pub struct IngressTotals {
    pub paths: Vec<PathTotals>,
    /// Connections that closed before their path came back, or over a path past
    /// [`MAX_PATHS`].
    pub uncounted_connections: u64,
    /// `--report-interval`: each path keeps an interval's statistics too.
    intervals: bool,
    /// Where the records go (`--jsonl`, interval lines), written off the loop.
    pub output: Option<crate::output::Writer>,
    /// `--metrics`: each path keeps bucket counts of its delays, in this layout.
    pub metrics_buckets: Option<BucketLayout>,
}

/// One distinct path's measurement: a [`Run`] the report renders like a source's.
pub struct PathTotals {
    pub run: Run,
    pub connections: u64,
    pub server_data: ServerData,
    /// The current `--report-interval`'s own statistics.
    pub interval: PathInterval,
    /// `--metrics`: the path's delays as bucket counts, recorded as a source records them.
    pub metrics: Option<SourceRecorder>,
}

impl PathTotals {
    /// After the run's chain recorded a receipt (`end_to_end_ns` when its stamps were
    /// complete): its samples into the bucket counts.
    fn record_metrics(&mut self, end_to_end_ns: Option<i64>) {
        if let (Some(recorder), Some(chain), Some(end_to_end_ns)) =
            (self.metrics.as_mut(), self.run.chain.as_ref(), end_to_end_ns)
        {
            recorder.record(chain.last_samples(), end_to_end_ns);
        }
    }
}

/// A path's statistics since the last report interval.
#[derive(Default)]
pub struct PathInterval {
    /// `None` without `--report-interval`.
    pub chain: Option<Chain>,
    pub sent: u64,
    pub answered: u64,
}

/// An ingress client connection's `--jsonl` record (`"type": "connection"`), at its close.
#[derive(serde::Serialize)]
struct ConnectionRecord<'a> {
    #[serde(rename = "type")]
    record: &'static str,
    schema_version: u32,
    client: String,
    /// Which path's summary (1-based, as the stderr reports number them) holds its samples;
    /// `null` when its path never came back or was one too many.
    path_index: Option<usize>,
    opened_unix_ns: u64,
    closed_unix_ns: u64,
    client_bytes: u64,
    client_frames: u64,
    probes: u64,
    receipts: u64,
    missing: u64,
    server_bytes: u64,
    server_frames: u64,
    /// Why it was closed; `null` for an orderly end.
    closed: Option<&'a str>,
}

impl IngressTotals {
    /// Starts keeping per-interval statistics (`--report-interval`).
    pub fn with_intervals() -> IngressTotals {
        IngressTotals { intervals: true, ..IngressTotals::default() }
    }

    /// Ends the report interval: per path, its record as a JSON line and a one-line summary
    /// for stderr; the path's interval statistics start over.
    pub fn take_intervals(
        &mut self,
        index: u64,
        span_unix_ns: (u64, u64),
        symbols: stats::Symbols,
    ) -> Vec<(usize, crate::report::interval::Interval)> {
        let mut taken = Vec::new();
        for (path_index, kept) in self.paths.iter_mut().enumerate() {
            let Some(chain) = kept.interval.chain.as_mut() else { continue };
            let frames = crate::report::interval::IntervalFrames {
                sent: kept.interval.sent,
                answered: kept.interval.answered,
                ..Default::default()
            };
            let interval = crate::report::interval::Interval::build(
                index,
                span_unix_ns,
                chain,
                frames,
                &[],
                symbols,
            );
            *chain = Chain::new(chain.path.clone()).expect("the path had a chain");
            kept.interval.sent = 0;
            kept.interval.answered = 0;
            taken.push((path_index + 1, interval));
        }
        taken
    }

    fn slot_of(&mut self, path: Vec<PathEntry>, now_ns: u64) -> Option<usize> {
        if let Some(index) =
            self.paths.iter().position(|kept| stats::same_path(&kept.run.path, &path))
        {
            return Some(index);
        }
        if self.paths.len() == MAX_PATHS {
            return None;
        }
        let mut run = Run::ended(Ending::Complete, true);
        run.chain = Chain::new(path.clone());
        run.first_send_ns = Some(now_ns);
        run.path = path.clone();
        let interval = PathInterval {
            chain: if self.intervals { Chain::new(path.clone()) } else { None },
            ..PathInterval::default()
        };
        let metrics = self.metrics_buckets.as_ref().map(|layout| {
            let mut recorder = SourceRecorder::new(String::new(), &[], layout.clone());
            if let Some(chain) = run.chain.as_ref() {
                recorder.start(chain);
            }
            recorder
        });
        self.paths.push(PathTotals {
            run,
            connections: 0,
            server_data: ServerData::new(&path),
            interval,
            metrics,
        });
        Some(self.paths.len() - 1)
    }
}

/// The residence of the server's own bytes at every hop on their way up (one way: their
/// stamps start at the egress, so only same-hop differences exist).
pub struct ServerData {
    /// Per hop index: arrival → write of the server's frames going up.
    pub residence_up: Vec<Option<hdrhistogram::Histogram<u64>>>,
    /// Residences below zero: impossible under the stamping rule, so a bug; counted, never
    /// clamped.
    pub negative: u64,
}

impl ServerData {
    fn new(path: &[PathEntry]) -> ServerData {
        ServerData { residence_up: path.iter().map(|_| None).collect(), negative: 0 }
    }

    fn record<T: AsRef<[u8]>>(&mut self, frame: &Frame<T>) {
        for stamp in frame.records().filter(|stamp| stamp.direction == Direction::Up) {
            let Some(slot) = self.residence_up.get_mut(usize::from(stamp.hop)) else { continue };
            let arrival_ns = stamp.arrival_ns().unwrap_or(stamp.read_ns);
            let Some(residence_ns) = stamp.write_ns.checked_sub(arrival_ns) else {
                self.negative += 1;
                continue;
            };
            let histogram = slot.get_or_insert_with(|| {
                hdrhistogram::Histogram::new_with_max(60_000_000_000, 3).expect("valid bounds")
            });
            histogram.saturating_record(residence_ns);
        }
    }
}

/// The server's bytes on their way up, per hop: a few lines under a path's report.
pub fn render_server_data(path: &[PathEntry], data: &ServerData) -> String {
    let labels = stats::hop_labels(path);
    let mut text = String::new();
    let rows: Vec<_> = data
        .residence_up
        .iter()
        .enumerate()
        .filter_map(|(hop, histogram)| Some((hop, histogram.as_ref()?)))
        .collect();
    if rows.is_empty() {
        return text;
    }
    text.push_str(
        "the server's own bytes going up, residence per hop in µs (arrival → written on; one \
         way, so no link figures):\n",
    );
    text.push_str(&format!(
        "  {:<28}{:>9}{:>10}{:>10}{:>10}{:>10}\n",
        "hop", "frames", "p50", "p99", "max", "mean"
    ));
    for (hop, histogram) in rows {
        let us = |ns: u64| ns as f64 / 1000.0;
        text.push_str(&format!(
            "  {:<28}{:>9}{:>10.1}{:>10.1}{:>10.1}{:>10.1}\n",
            format!("{} ↑", labels[hop]),
            histogram.len(),
            us(histogram.value_at_quantile(0.5)),
            us(histogram.value_at_quantile(0.99)),
            us(histogram.max()),
            histogram.mean() / 1000.0,
        ));
    }
    if data.negative > 0 {
        text.push_str(&format!(
            "bug: {} negative residences of the server's bytes\n",
            data.negative
        ));
    }
    text
}

impl<S: Socket> Connection<S> {
    /// At an ingress: what comes back up is receipts (measured), the server's bytes (to the
    /// client, plain), the path, faults and kernel readings.
    pub(in crate::hop) fn take_answers(
        &mut self,
        totals: &mut IngressTotals,
        clock: &impl Clock,
    ) -> Result<bool, String> {
        let ingress = self.ingress.as_mut().expect("an ingress connection");
        let mut progress = false;
        self.up.stalled = false;
        while let Some((frame, read)) = self.up.input.next_frame().map_err(Self::bad_downstream)? {
            let len = frame.total_len();
            match frame.kind() {
                Kind::Data => match ingress.take_data(&frame, read, &mut self.up.output, totals) {
                    Taken::NoRoom => {
                        self.up.stalled = true;
                        self.up.input.hold_back();
                        break;
                    }
                    Taken::Measured => self.frames_up += 1,
                    Taken::Delivered => {
                        self.server_frames_up += 1;
                        self.bytes_up += frame.payload_len() as u64;
                    }
                },
                Kind::Path => {
                    let path =
                        PathEntry::parse_all(frame.payload()).map_err(Self::bad_downstream)?;
                    self.unanswered_path = None;
                    ingress.path_discovered(path, totals, clock.now_ns());
                }
                Kind::Fault => {
                    let fault = Fault::parse(frame.payload()).map_err(Self::bad_downstream)?;
                    self.passed_fault = Some(format!("passed on: {}", fault.message));
                    self.passed_code = Some(fault.code);
                }
                // Not asked for by an ingress (its announcement has no flags).
                Kind::Kernel => {}
            }
            self.up.input.consume(len);
            progress = true;
        }
        Ok(progress)
    }
}
