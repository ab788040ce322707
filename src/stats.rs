//! Delay arithmetic and statistics, without sockets: turns the stamp records of each answered
//! frame into one sample per subsegment, and keeps the histograms, jitter and sequence
//! accounting that the report prints.
//!
//! A subsegment is either a link between two hops or a hop's residence (read to write, one
//! direction). Only stamps of one host are ever subtracted from each other:
//!
//! ```text
//! arrival(j)    = read(j) − receive_wait(j)             (when the frame's last byte reached j)
//! held(j)       = up_write(j) − down_arrival(j)         (turn write − turn arrival at the echo end)
//! link(i, i+1)  = (up_arrival(i) − down_write(i)) − held(i+1)
//! end-to-end    = up_arrival(0) − down_write(0)         (at the source)
//! ```
//!
//! so the link round trip excludes whatever time the next hop spent holding the frame, and for
//! every frame the subsegments add up to the end-to-end round trip exactly. A hop's residence
//! (one direction) is `write − arrival`: its receive queue (`receive_wait`, where the kernel
//! gives receive timestamps) plus read → write (processing, and waiting for room to write).
//! Since the connection core never stamps a read before its bytes or a write before its
//! hand-over, no sample can be negative; one that is, is a bug, counted and named, never clamped.

use std::collections::VecDeque;

use hdrhistogram::Histogram;

use crate::core::ReadStamp;
use crate::wire::{Direction, Frame, MAX_HOPS, PathEntry, ReceiveClock, Role, Stamp};

/// The longest delay a histogram tells apart: one hour.
const HISTOGRAM_MAX_NS: u64 = 3_600_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The round trip of the link between hop `i` and hop `i + 1`, their holding time excluded.
    Link(usize),
    /// Hop `i`'s time from reading a frame to writing it on, going down.
    ResidenceDown(usize),
    /// Hop `i`'s time from reading an answer to writing it on, going up.
    ResidenceUp(usize),
    /// The echoing end's time from reading a frame to writing it back.
    Turn(usize),
}

impl Part {
    /// The stable ASCII id that scripts and `--sla` name the part by, from hop indices (host
    /// names may hold anything): `0-1` for the link between hops 0 and 1, `1.down` / `1.up`
    /// for a relay's residence, `3.echo` for the echoing end's turn.
    pub fn id(&self) -> String {
        match *self {
            Part::Link(hop) => format!("{hop}-{}", hop + 1),
            Part::ResidenceDown(hop) => format!("{hop}.down"),
            Part::ResidenceUp(hop) => format!("{hop}.up"),
            Part::Turn(hop) => format!("{hop}.echo"),
        }
    }
}

/// A sample below zero: impossible under the stamping rule, so a bug somewhere in the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negative {
    pub count: u64,
    /// The first one: its frame's sequence number and value.
    pub first_sequence: u64,
    pub first_ns: i64,
}

/// Most slices a run is cut into, in answer order; adjacent pairs merge when a frame would
/// start a seventeenth, so a run of any length has 8 to 16 slices once it has 16 frames.
pub const MAX_SLICES: usize = 16;

/// A series' sums over consecutive slices of the run's frames: how a subsegment's delay moved
/// during the run, so a verdict can be held to what every part of the run agrees on.
#[derive(Debug, Clone)]
pub struct Slices {
    /// Each slice holds `1 << shift` consecutive frames.
    shift: u32,
    /// `(sum_ns, count)` per slice.
    sums: [(i128, u64); MAX_SLICES],
}

impl Default for Slices {
    fn default() -> Slices {
        Slices { shift: 0, sums: [(0, 0); MAX_SLICES] }
    }
}

impl Slices {
    /// Adds a sample of the run's `frame_index`-th answered frame.
    fn add(&mut self, frame_index: u64, sample_ns: i64) {
        while frame_index >> self.shift >= MAX_SLICES as u64 {
            for slice in 0..MAX_SLICES / 2 {
                let (a, b) = (self.sums[2 * slice], self.sums[2 * slice + 1]);
                self.sums[slice] = (a.0 + b.0, a.1 + b.1);
            }
            self.sums[MAX_SLICES / 2..].fill((0, 0));
            self.shift += 1;
        }
        let slot = &mut self.sums[(frame_index >> self.shift) as usize];
        slot.0 += i128::from(sample_ns);
        slot.1 += 1;
    }

    /// The mean of each slice that has samples, in ns.
    pub fn means_ns(&self) -> impl Iterator<Item = f64> + '_ {
        self.sums
            .iter()
            .filter(|(_, count)| *count > 0)
            .map(|(sum, count)| *sum as f64 / *count as f64)
    }
}

/// One subsegment's samples.
pub struct Series {
    pub part: Part,
    pub label: String,
    pub histogram: Histogram<u64>,
    pub sum_ns: i128,
    /// Samples below zero: a bug, kept out of the histogram and reported with the first frame.
    pub negative: Option<Negative>,
    jitter_sum_ns: u128,
    previous_ns: Option<i64>,
    /// A hop's part only: the two things its residence is made of.
    pub split: Option<Box<HopSplit>>,
    pub slices: Slices,
}

/// A hop's residence, split by its own stamps.
pub struct HopSplit {
    /// Arrival → read: bytes waiting in the receive queue (kernel timestamps; zero without).
    pub receive_queue: Series,
    /// Read → write: processing, and waiting for room to write (the next link's send buffer,
    /// or this hop's output buffer behind it).
    pub read_to_write: Series,
    /// Frames whose read the hop had held back because its own output was full: their
    /// receive-queue time is backpressure from further on, not a slow reader.
    pub held_back: u64,
}

impl Series {
    fn new(part: Part, label: String) -> Series {
        Series {
            part,
            label,
            histogram: Histogram::new_with_max(HISTOGRAM_MAX_NS, 3)
                .expect("valid histogram bounds"),
            sum_ns: 0,
            negative: None,
            jitter_sum_ns: 0,
            previous_ns: None,
            split: None,
            slices: Slices::default(),
        }
    }

    fn with_split(mut self) -> Series {
        self.split = Some(Box::new(HopSplit {
            receive_queue: Series::new(self.part, format!("{} receive queue", self.label)),
            read_to_write: Series::new(self.part, format!("{} read → write", self.label)),
            held_back: 0,
        }));
        self
    }

    fn add(&mut self, sample_ns: i64, sequence: u64) {
        if sample_ns < 0 {
            let negative = self.negative.get_or_insert(Negative {
                count: 0,
                first_sequence: sequence,
                first_ns: sample_ns,
            });
            negative.count += 1;
            return;
        }
        // The source numbers frames from 0 in sending order: every series of one frame lands
        // in the same slice.
        self.slices.add(sequence, sample_ns);
        self.histogram.saturating_record(sample_ns as u64);
        self.sum_ns += i128::from(sample_ns);
        if let Some(previous) = self.previous_ns {
            self.jitter_sum_ns += u128::from(sample_ns.abs_diff(previous));
        }
        self.previous_ns = Some(sample_ns);
    }

    pub fn negative_count(&self) -> u64 {
        self.negative.map_or(0, |negative| negative.count)
    }

    pub fn p50_ns(&self) -> u64 {
        self.histogram.value_at_quantile(0.5)
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The exact mean (from the sum, not the histogram's buckets), in nanoseconds.
    pub fn mean_ns(&self) -> f64 {
        if self.count() == 0 { 0.0 } else { self.sum_ns as f64 / self.count() as f64 }
    }

    /// Mean absolute difference of consecutive samples (mtr's Javg; RFC 3550's D), in ns.
    pub fn jitter_ns(&self) -> f64 {
        let pairs = self.count().saturating_sub(1);
        if pairs == 0 { 0.0 } else { self.jitter_sum_ns as f64 / pairs as f64 }
    }
}

/// The chain as discovered, and the per-subsegment series built from answered frames.
pub struct Chain {
    pub path: Vec<PathEntry>,
    /// Index of the last hop that stamps (the echoing end or a stripping relay).
    last_stamped: usize,
    /// The last stamping hop turns frames (the echoing end, or an ingress's egress), rather
    /// than passing them to a server and framing its answers.
    last_turns: bool,
    pub parts: Vec<Series>,
    pub end_to_end: Series,
    /// Answered frames whose records did not match the path.
    pub malformed: u64,
    /// The source's own receive queue for answers: after the end-to-end round trip, so in no
    /// subsegment.
    pub source_receive_queue: Series,
    /// Per hop, the records by how their arrival was known, indexed by [`ReceiveClock`].
    pub receive_clocks: Vec<[u64; 3]>,
    /// One frame's samples, one per part, and its stamps by hop: kept so that recording a
    /// frame allocates and clears nothing it does not use.
    samples: Vec<i64>,
    stamps: Box<Stamps>,
}

/// One answered frame's stamps, by hop.
#[derive(Default)]
struct Stamps {
    down: [Option<Stamp>; MAX_HOPS],
    up: [Option<Stamp>; MAX_HOPS],
    turn: [Option<Stamp>; MAX_HOPS],
}

fn arrival(stamp: Option<Stamp>) -> Option<u64> {
    stamp?.arrival_ns()
}

fn written(stamp: Option<Stamp>) -> Option<u64> {
    stamp.map(|stamp| stamp.write_ns)
}

impl Chain {
    /// `None` when the path has no hop that stamps frames on the way back.
    pub fn new(path: Vec<PathEntry>) -> Option<Chain> {
        let last_stamped = path
            .iter()
            .rposition(|entry| matches!(entry.role, Role::Echo | Role::StrippingRelay))?;
        let labels = hop_labels(&path);
        let mut parts = Vec::new();
        for hop in 0..last_stamped {
            parts.push(Part::Link(hop));
            if hop + 1 < last_stamped {
                parts.extend([Part::ResidenceDown(hop + 1), Part::ResidenceUp(hop + 1)]);
            }
        }
        // An ingress's egress turns every frame into a receipt, as an echoing end does; the
        // server's answers are its own frames, not answers to ours.
        let last_turns = path[last_stamped].role == Role::Echo || path[0].role == Role::Ingress;
        match last_turns {
            true => parts.push(Part::Turn(last_stamped)),
            false => parts.extend([
                Part::ResidenceDown(last_stamped),
                Part::ResidenceUp(last_stamped),
                Part::Link(last_stamped),
            ]),
        }
        let label = |part: Part| part_label(part, &labels, Symbols::Unicode);
        let parts = parts
            .into_iter()
            .map(|part| match part {
                Part::Link(_) => Series::new(part, label(part)),
                _ => Series::new(part, label(part)).with_split(),
            })
            .collect();
        let source_label = format!("{} (source) receive queue", labels[0]);
        let hops = path.len();
        Some(Chain {
            path,
            last_stamped,
            last_turns,
            parts,
            end_to_end: Series::new(Part::Link(0), "end-to-end".to_string()),
            malformed: 0,
            source_receive_queue: Series::new(Part::Link(0), source_label),
            receive_clocks: vec![[0; 3]; hops],
            samples: Vec::new(),
            stamps: Box::default(),
        })
    }

    /// Adds one answered frame; `source_read` is the source's own stamp of its arrival.
    /// Returns its end-to-end sample when its stamps were complete; [`Chain::last_samples`]
    /// then holds its sample per part.
    pub fn record<T: AsRef<[u8]>>(
        &mut self,
        frame: &Frame<T>,
        source_read: ReadStamp,
    ) -> Option<i64> {
        self.record_stamps(frame.records(), frame.sequence(), source_read)
    }

    /// [`Chain::record`] from a frame's records already taken out of it (the live view's
    /// thread gets them so, through its queue).
    pub fn record_stamps(
        &mut self,
        records: impl Iterator<Item = Stamp>,
        sequence: u64,
        source_read: ReadStamp,
    ) -> Option<i64> {
        let mut stamps = std::mem::take(&mut self.stamps);
        // Only the path's hops are read; records of hops past it are ignored.
        let hops = self.path.len().min(MAX_HOPS);
        for slots in [&mut stamps.down, &mut stamps.up, &mut stamps.turn] {
            slots[..hops].fill(None);
        }
        for stamp in records.filter(|stamp| usize::from(stamp.hop) < hops) {
            let slot = match stamp.direction {
                Direction::Down => &mut stamps.down,
                Direction::Up => &mut stamps.up,
                Direction::Turn => &mut stamps.turn,
            };
            slot[usize::from(stamp.hop)] = Some(stamp);
        }
        stamps.up[0] = Some(Stamp {
            receive: source_read.receive,
            receive_wait_ns: source_read.receive_wait_ns,
            ..Stamp::new(0, Direction::Up, source_read.read_ns, 0)
        });
        let mut samples = std::mem::take(&mut self.samples);
        samples.clear();
        let complete = self.samples_into(&stamps, &mut samples);
        let end_to_end = sub(arrival(stamps.up[0]), written(stamps.down[0]));
        let recorded = match (complete, end_to_end) {
            (true, Some(end_to_end)) => {
                debug_assert_eq!(
                    samples.iter().sum::<i64>(),
                    end_to_end,
                    "subsegments must add up exactly"
                );
                for (series, &sample) in self.parts.iter_mut().zip(&samples) {
                    series.add(sample, sequence);
                    let stamp = match series.part {
                        Part::ResidenceDown(hop) => stamps.down[hop],
                        Part::ResidenceUp(hop) => stamps.up[hop],
                        Part::Turn(hop) => stamps.turn[hop],
                        Part::Link(_) => None,
                    };
                    if let (Some(split), Some(stamp)) = (series.split.as_mut(), stamp) {
                        split.held_back += u64::from(stamp.held_back);
                        let wait_ns = i64::try_from(stamp.receive_wait_ns).unwrap_or(i64::MAX);
                        split.receive_queue.add(wait_ns, sequence);
                        let read_to_write = i128::from(stamp.write_ns) - i128::from(stamp.read_ns);
                        split
                            .read_to_write
                            .add(i64::try_from(read_to_write).unwrap_or(i64::MIN), sequence);
                    }
                }
                self.end_to_end.add(end_to_end, sequence);
                self.source_receive_queue.add(source_read.receive_wait_ns as i64, sequence);
                // The source's own down record stamps a read of stdin, not a socket's arrival.
                let records = stamps.down[1..].iter().chain(&stamps.up).chain(&stamps.turn);
                for stamp in records.flatten() {
                    if let Some(counts) = self.receive_clocks.get_mut(usize::from(stamp.hop)) {
                        counts[stamp.receive as usize] += 1;
                    }
                }
                Some(end_to_end)
            }
            _ => {
                self.malformed += 1;
                samples.clear();
                None
            }
        };
        self.samples = samples;
        self.stamps = stamps;
        recorded
    }

    /// The last recorded frame's sample per part, in the order of `parts` (empty when its
    /// stamps were incomplete).
    pub fn last_samples(&self) -> &[i64] {
        &self.samples
    }

    /// Negative samples over all subsegments and the end-to-end row.
    pub fn negative_count(&self) -> u64 {
        self.parts.iter().chain([&self.end_to_end]).map(Series::negative_count).sum()
    }

    /// Records, over the run, whose arrival came from a kernel stamp; and those whose kernel
    /// stamp was rejected as impossible.
    pub fn receive_clock_totals(&self) -> (u64, u64, u64) {
        self.receive_clocks.iter().fold((0, 0, 0), |(after, kernel, rejected), counts| {
            (
                after + counts[ReceiveClock::AfterRead as usize],
                kernel + counts[ReceiveClock::Kernel as usize],
                rejected + counts[ReceiveClock::KernelRejected as usize],
            )
        })
    }

    /// Appends one sample per part to `samples`; false when a stamp is missing or absurd.
    fn samples_into(&self, stamps: &Stamps, samples: &mut Vec<i64>) -> bool {
        let last = self.last_stamped;
        let held = |hop: usize| -> Option<i64> {
            if hop == last && self.last_turns {
                sub(written(stamps.turn[hop]), arrival(stamps.turn[hop]))
            } else {
                sub(written(stamps.up[hop]), arrival(stamps.down[hop]))
            }
        };
        let sample = |series: &Series| match series.part {
            Part::Link(hop) => {
                let round_trip = sub(arrival(stamps.up[hop]), written(stamps.down[hop]))?;
                // Past the last stamping hop is a plain server: nothing to subtract.
                let next_held = if hop == last { 0 } else { held(hop + 1)? };
                Some(round_trip - next_held) // both within ±1 h: no overflow
            }
            Part::ResidenceDown(hop) => sub(written(stamps.down[hop]), arrival(stamps.down[hop])),
            Part::ResidenceUp(hop) => sub(written(stamps.up[hop]), arrival(stamps.up[hop])),
            Part::Turn(hop) => held(hop),
        };
        for series in &self.parts {
            let Some(value) = sample(series) else {
                return false;
            };
            samples.push(value);
        }
        true
    }
}

/// `later - earlier`, or `None` when a stamp is missing or the difference is beyond any delay
/// this tool reports (stamps come from peers, so they may be anything).
fn sub(later: Option<u64>, earlier: Option<u64>) -> Option<i64> {
    let difference = i64::try_from(later?).ok()?.checked_sub(i64::try_from(earlier?).ok()?)?;
    (difference.unsigned_abs() <= HISTOGRAM_MAX_NS).then_some(difference)
}

/// Whether two discoveries found the same path: the same hops, in the same roles, reached at
/// the same addresses (where each saw its peer come from changes with every connection).
pub fn same_path(before: &[PathEntry], after: &[PathEntry]) -> bool {
    before.len() == after.len()
        && before.iter().zip(after).enumerate().all(|(index, (old, new))| {
            old.role == new.role
                && old.name == new.name
                && (index == 0 || old.local == new.local)
                && old.tags == new.tags
        })
}

/// Hop names for labels; a name used by two hops gets its hop index, so labels stay distinct.
pub fn hop_labels(path: &[PathEntry]) -> Vec<String> {
    path.iter()
        .enumerate()
        .map(|(index, entry)| {
            let shared = path.iter().filter(|other| other.name == entry.name).count() > 1;
            if shared { format!("{}#{index}", entry.name) } else { entry.name.clone() }
        })
        .collect()
}

/// How labels are written: with arrows, or in ASCII for terminals without UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Symbols {
    #[default]
    Unicode,
    Ascii,
}

/// A part's label for people, from [`hop_labels`]: `B ⇄ C`, `B ↓ (relay)`, `Z (echo)`.
pub fn part_label(part: Part, hop_labels: &[String], symbols: Symbols) -> String {
    let name = |hop: usize| hop_labels.get(hop).map_or("?", String::as_str);
    let (link, down, up) = match symbols {
        Symbols::Unicode => ("⇄", "↓", "↑"),
        Symbols::Ascii => ("-", "down", "up"),
    };
    match part {
        Part::Link(hop) => format!("{} {link} {}", name(hop), name(hop + 1)),
        Part::ResidenceDown(hop) => format!("{} {down} (relay)", name(hop)),
        Part::ResidenceUp(hop) => format!("{} {up} (relay)", name(hop)),
        Part::Turn(hop) => format!("{} (echo)", name(hop)),
    }
}

/// Which sequence numbers came back, with memory bounded by the frames in flight.
#[derive(Default)]
pub struct Sequencing {
    pub sent: u64,
    pub answered: u64,
    /// Missing frames given up for lost when a continuous run's connection broke.
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicated: u64,
    /// `answered_window[k]` says whether frame `window_base + k` has come back.
    window_base: u64,
    answered_window: VecDeque<bool>,
    highest_seen: Option<u64>,
}

impl Sequencing {
    pub fn sent_one(&mut self) -> u64 {
        let sequence = self.sent;
        self.sent += 1;
        self.answered_window.push_back(false);
        sequence
    }

    pub fn answered_one(&mut self, sequence: u64) {
        let Some(index) = sequence.checked_sub(self.window_base) else {
            self.duplicated += 1;
            return;
        };
        match self.answered_window.get_mut(index as usize) {
            Some(true) => self.duplicated += 1,
            Some(seen) => {
                *seen = true;
                self.answered += 1;
                if self.highest_seen.is_some_and(|highest| sequence < highest) {
                    self.out_of_order += 1;
                }
                self.highest_seen = self.highest_seen.max(Some(sequence));
                while self.answered_window.front() == Some(&true) {
                    self.answered_window.pop_front();
                    self.window_base += 1;
                }
            }
            // A sequence number never sent: count it with the duplicates as not ours.
            None => self.duplicated += 1,
        }
    }

    pub fn missing(&self) -> u64 {
        self.sent - self.answered
    }

    /// Sent, not answered and not given up for lost.
    pub fn in_flight(&self) -> u64 {
        self.missing() - self.lost
    }

    /// The connection carrying the frames in flight broke: they will never come back. Counts
    /// them lost (they stay missing) and returns how many there were.
    pub fn abandon_in_flight(&mut self) -> u64 {
        let lost = self.in_flight();
        self.lost += lost;
        self.window_base = self.sent;
        self.answered_window.clear();
        lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Header, Kind, Stamp, emit_frame};

    fn entry(role: Role, name: &str) -> PathEntry {
        PathEntry::new(role, name, None, None)
    }

    fn frame(stamps: &[Stamp]) -> Vec<u8> {
        let header = Header {
            flags: 0,
            kind: Kind::Data,
            record_count: stamps.len(),
            sequence: 0,
            payload_len: 0,
        };
        let mut out = vec![0; header.total_len()];
        emit_frame(&mut out, &header, &[], stamps, &[]);
        out
    }

    fn stamp(hop: u8, direction: Direction, read_ns: u64, write_ns: u64) -> Stamp {
        Stamp::new(hop, direction, read_ns, write_ns)
    }

    fn read_at(read_ns: u64) -> ReadStamp {
        ReadStamp { read_ns, ..ReadStamp::default() }
    }

    #[test]
    fn test_delay_arithmetic_on_hand_built_stamps() {
        // A (source) -> B (relay) -> Z (echo). Each host has its own unrelated clock origin.
        let path = vec![entry(Role::Source, "A"), entry(Role::Relay, "B"), entry(Role::Echo, "Z")];
        let mut chain = Chain::new(path).unwrap();
        let labels: Vec<_> = chain.parts.iter().map(|series| series.label.as_str()).collect();
        assert_eq!(labels, ["A ⇄ B", "B ↓ (relay)", "B ↑ (relay)", "B ⇄ Z", "Z (echo)"]);
        let bytes = frame(&[
            stamp(0, Direction::Down, 0, 1_000),         // A writes at 1 000
            stamp(1, Direction::Down, 500_000, 500_300), // B holds 300 going down
            stamp(2, Direction::Turn, 9_000_000, 9_000_050), // Z holds 50
            stamp(1, Direction::Up, 540_300, 540_500),   // B: 40 000 on B⇄Z, holds 200 up
        ]);
        // A reads the answer at 1 000 + 10 000 (A⇄B) + B's whole holding time (40 500).
        chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read_at(1_000 + 10_000 + 40_500));
        let means: Vec<f64> = chain.parts.iter().map(Series::mean_ns).collect();
        assert_eq!(means, [10_000.0, 300.0, 200.0, 39_950.0, 50.0]);
        assert_eq!(chain.end_to_end.mean_ns(), 50_500.0);
        assert_eq!(means.iter().sum::<f64>(), chain.end_to_end.mean_ns());
        assert_eq!(chain.negative_count(), 0);
    }

    #[test]
    fn test_receive_queue_waits_move_from_the_link_to_the_hop() {
        // As above, but B's down read came 2 000 ns after the bytes arrived (kernel stamp), and
        // A's answer waited 700 ns in A's receive queue.
        let path = vec![entry(Role::Source, "A"), entry(Role::Relay, "B"), entry(Role::Echo, "Z")];
        let mut chain = Chain::new(path).unwrap();
        let waited = |stamp: Stamp, wait_ns| Stamp {
            receive: ReceiveClock::Kernel,
            receive_wait_ns: wait_ns,
            ..stamp
        };
        let bytes = frame(&[
            stamp(0, Direction::Down, 0, 1_000),
            waited(stamp(1, Direction::Down, 500_000, 500_300), 2_000),
            stamp(2, Direction::Turn, 9_000_000, 9_000_050),
            stamp(1, Direction::Up, 540_300, 540_500),
        ]);
        let source_read = ReadStamp {
            read_ns: 51_500,
            receive: ReceiveClock::Kernel,
            receive_wait_ns: 700,
            held_back: false,
        };
        chain.record(&Frame::new_checked(&bytes[..]).unwrap(), source_read);
        let means: Vec<f64> = chain.parts.iter().map(Series::mean_ns).collect();
        // A⇄B loses B's 2 000 ns of queue and A's 700 ns; B ↓ gains the 2 000.
        assert_eq!(means, [10_000.0 - 2_000.0 - 700.0, 2_300.0, 200.0, 39_950.0, 50.0]);
        assert_eq!(chain.end_to_end.mean_ns(), 50_500.0 - 700.0);
        let split = chain.parts[1].split.as_ref().unwrap();
        assert_eq!(split.receive_queue.mean_ns(), 2_000.0);
        assert_eq!(split.read_to_write.mean_ns(), 300.0);
        assert_eq!(chain.source_receive_queue.mean_ns(), 700.0);
        assert_eq!(
            chain.receive_clock_totals(),
            (2, 2, 0),
            "the source's stdin read is no arrival"
        );
    }

    #[test]
    fn test_a_negative_sample_is_counted_and_named_never_clamped() {
        let path = vec![entry(Role::Source, "A"), entry(Role::Echo, "Z")];
        let mut chain = Chain::new(path).unwrap();
        // Z holds the frame 500 ns but A saw the answer only 300 ns after sending: a stamp
        // before its bytes somewhere, which the link row shows as −200 ns.
        let bytes =
            frame(&[stamp(0, Direction::Down, 0, 1_000), stamp(1, Direction::Turn, 10, 510)]);
        let mut framed = bytes.clone();
        framed[8..16].copy_from_slice(&42u64.to_be_bytes());
        chain.record(&Frame::new_checked(&framed[..]).unwrap(), read_at(1_300));
        let negative = chain.parts[0].negative.unwrap();
        assert_eq!((negative.count, negative.first_sequence, negative.first_ns), (1, 42, -200));
        assert_eq!(chain.parts[0].count(), 0, "kept out of the histogram");
        assert_eq!(chain.negative_count(), 1);
    }

    #[test]
    fn test_slices_merge_in_pairs_and_keep_means() {
        let mut slices = Slices::default();
        for index in 0..64u64 {
            slices.add(index, if index < 32 { 10 } else { 30 });
        }
        let means: Vec<f64> = slices.means_ns().collect();
        assert_eq!(means.len(), MAX_SLICES);
        assert_eq!(means[..8], [10.0; 8]);
        assert_eq!(means[8..], [30.0; 8]);
        slices.add(64, 50);
        let means: Vec<f64> = slices.means_ns().collect();
        assert_eq!(means.len(), 9, "64 frames in 8 slices of 8, then one new slice");
        assert_eq!(means[8], 50.0);
    }

    #[test]
    fn test_stripping_relay_ends_the_stamps() {
        let path = vec![
            entry(Role::Source, "A"),
            entry(Role::StrippingRelay, "B"),
            entry(Role::PlainServer, "server:7"),
        ];
        let mut chain = Chain::new(path).unwrap();
        let bytes = frame(&[
            stamp(0, Direction::Down, 0, 100),
            stamp(1, Direction::Down, 10, 20),
            stamp(1, Direction::Up, 5_020, 5_030),
        ]);
        chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read_at(100 + 1_000 + 5_020));
        let means: Vec<f64> = chain.parts.iter().map(Series::mean_ns).collect();
        // A⇄B, B↓, B↑, B⇄server (which includes the server's own time).
        assert_eq!(means, [1_000.0, 10.0, 10.0, 5_000.0]);
        assert_eq!(chain.end_to_end.mean_ns(), 6_020.0);
    }

    #[test]
    fn test_missing_records_count_as_malformed() {
        let path = vec![entry(Role::Source, "A"), entry(Role::Relay, "B"), entry(Role::Echo, "Z")];
        let mut chain = Chain::new(path).unwrap();
        let bytes = frame(&[stamp(0, Direction::Down, 0, 1)]);
        chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read_at(10));
        assert_eq!(chain.malformed, 1);
        assert_eq!(chain.end_to_end.count(), 0);
    }

    #[test]
    fn test_absurd_stamps_from_a_peer_are_malformed_not_a_panic() {
        let path = vec![entry(Role::Source, "A"), entry(Role::Echo, "Z")];
        let mut chain = Chain::new(path).unwrap();
        for (write_ns, turn_ns) in [(1u64 << 63, 7), (0, u64::MAX), (5, 1 << 62)] {
            let bytes = frame(&[
                stamp(0, Direction::Down, 0, write_ns),
                stamp(1, Direction::Turn, 0, turn_ns),
            ]);
            chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read_at(10));
        }
        assert_eq!(chain.malformed, 3);
        assert_eq!(chain.end_to_end.count(), 0);
    }

    #[test]
    fn test_jitter_and_duplicate_names() {
        let path = vec![entry(Role::Source, "lo"), entry(Role::Echo, "lo")];
        let mut chain = Chain::new(path).unwrap();
        assert_eq!(chain.parts[0].label, "lo#0 ⇄ lo#1");
        for (index, link_ns) in [100u64, 300, 200].into_iter().enumerate() {
            let base = index as u64 * 1_000_000;
            let bytes =
                frame(&[stamp(0, Direction::Down, base, base), stamp(1, Direction::Turn, 7, 7)]);
            chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read_at(base + link_ns));
        }
        assert_eq!(chain.parts[0].jitter_ns(), 150.0);
    }

    #[test]
    fn test_sequencing_counts_loss_order_and_duplicates() {
        let mut sequencing = Sequencing::default();
        for _ in 0..5 {
            sequencing.sent_one();
        }
        for sequence in [0, 2, 1, 2, 9] {
            sequencing.answered_one(sequence);
        }
        assert_eq!(sequencing.answered, 3);
        assert_eq!(sequencing.out_of_order, 1);
        assert_eq!(sequencing.duplicated, 2);
        assert_eq!(sequencing.missing(), 2);
        assert_eq!(sequencing.answered_window.len(), 2, "answered prefix is forgotten");
        assert_eq!((sequencing.in_flight(), sequencing.abandon_in_flight()), (2, 2));
        sequencing.sent_one();
        sequencing.answered_one(1);
        assert_eq!(sequencing.duplicated, 3, "an answer from before the break is not ours");
        sequencing.answered_one(5);
        assert_eq!((sequencing.answered, sequencing.missing(), sequencing.in_flight()), (4, 2, 0));
    }
}
