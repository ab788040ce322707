//! The verdict: which subsegment adds the most delay, what kind of delay it is, and whether the
//! run gives enough evidence to say so. Computed once, from the statistics, as a value that the
//! text report (and later renderers) only print.
//!
//! A subsegment is named only when all of these hold:
//! - its median is at least [`STANDS_OUT_RATIO`] times the next highest median;
//! - it is also the highest, by mean, in nearly every slice of the run ([`AGREEING_SLICES`]), so
//!   the verdict does not rest on a difference that moved during the run (the noise);
//! - if its delay is queueing rather than fixed (below), the queue holds at least
//!   [`QUEUE_STANDS_OUT_SHARE`] of the end-to-end median. A bulk stream fills every buffer on
//!   its way, and on an idle chain of equal hops where the bytes wait changes from run to run;
//!   only a queue that holds nearly all of the delay is in front of a real bottleneck;
//! - enough frames came back ([`MIN_FRAMES`]); with fewer the verdict says so.
//!
//! When no median stands out that way (a bulk stream whose queues spread over the chain), a
//! subsegment is still named for its **floor** if every frame, the fastest included, paid at
//! least [`FLOOR_SHARE`] of the fastest round trip there, and that minimum is
//! [`STANDS_OUT_RATIO`] times every other subsegment's: a fixed cost under the queues.
//!
//! What kind of delay, from same-host stamps only:
//! - a link whose minimum is at least half its median is a **fixed delay**: every frame pays
//!   it (a long path, a slow element on the wire; hedged when an end's arrivals were taken at
//!   its reads); otherwise its delay is mostly **queueing** on the link, in the sending
//!   kernel or a device on the wire (the link's rate or the next hop's receive window holds
//!   bytes back);
//! - a hop's residence is its **receive queue** (bytes waiting for the hop to read them: the
//!   hop drains slowest, unless most of those frames were *held back*, read late because the
//!   hop's own output was full: then what drains slowest is further on) or **read → write**
//!   (the frame waiting in the hop for room to write: what drains slowest is further on),
//!   whichever holds most of its median.
//!
//! Every frame that one read completes gets the arrival of that read's last byte: a little
//! late for the frames before it, never early. In bulk mode, with many frames per read, that
//! moves some receive-queue time from the hop to the link before it, so it leans towards
//! naming the link.

use crate::report::Unit;
use crate::stats::{Chain, Part, Series, Symbols};
use crate::wire::ReceiveClock;

/// The verdict names a subsegment only when its median is at least this many times the next.
pub const STANDS_OUT_RATIO: f64 = 1.5;
/// Below this many answered frames a verdict is printed with a warning that it rests on little.
pub const MIN_FRAMES: u64 = 30;
/// Share of the run's slices in which the named subsegment must also have the highest mean.
pub const AGREEING_SLICES: f64 = 0.875;
/// Share of the end-to-end median a queue must hold to be named as the bottleneck's. Measured
/// in bulk mode on loopback (2 CPUs): behind a link paced to 200 Mbit/s the queue held 93–97%
/// of the end-to-end median; on an idle chain of equal hops the largest queue held up to 69%,
/// and up to 76% with two CPU hogs beside it, in a different place from run to run.
pub const QUEUE_STANDS_OUT_SHARE: f64 = 0.85;
/// Share of the fastest round trip a subsegment's minimum must be to be named for its floor.
pub const FLOOR_SHARE: f64 = 0.5;

/// What kind of delay a subsegment adds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DelayKind {
    /// A link that every frame pays about the same for: its minimum.
    FixedLink {
        min_ns: u64,
        /// A hop at either end of the link whose arrivals were (some of them) taken at its
        /// reads, without a kernel timestamp: its wake-ups then count in the link.
        read_timed_end: Option<usize>,
    },
    /// A link whose median is far above its minimum: bytes queued in the sender's kernel.
    QueuedLink { min_ns: u64 },
    /// A hop whose frames mostly wait in its receive queue: it drains slowest.
    HopReceiveQueue { queue_p50_ns: u64 },
    /// A hop whose frames mostly wait in its receive queue because it had stopped reading, its
    /// own output full: what drains slowest is further on.
    HopHeldBack { queue_p50_ns: u64, held_back_share: f64 },
    /// A hop whose frames mostly wait between read and write: the next element drains slower.
    HopWaitingToWrite { read_to_write_p50_ns: u64 },
    /// A hop whose time is neither mostly queue nor mostly read → write.
    HopMixed,
    /// No median stood out, but every frame paid at least `min_ns` here, `share` of the
    /// fastest round trip; `queueing_share` of the end-to-end mean is queueing on top.
    Floor { min_ns: u64, share: f64, queueing_share: f64 },
}

impl DelayKind {
    /// Whether the delay is frames waiting behind others rather than a cost every frame pays.
    pub fn is_queueing(&self) -> bool {
        !matches!(self, DelayKind::FixedLink { .. } | DelayKind::HopMixed | DelayKind::Floor { .. })
    }
}

/// Why no subsegment was named.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Doubt {
    /// The highest median is within [`STANDS_OUT_RATIO`] of the next.
    Close { runner_up: usize, runner_up_p50_ns: u64 },
    /// The highest median was not the highest in enough slices of the run.
    Unsteady { agreeing: usize, slices: usize },
    /// The highest median is a queue holding less than [`QUEUE_STANDS_OUT_SHARE`] of the
    /// end-to-end median: the stream's bytes wait in many buffers.
    SpreadQueue { share: f64, kind: DelayKind },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// `worst` (an index into the chain's parts) adds the most delay.
    Named { worst: usize, share: f64, kind: DelayKind, frames: u64 },
    /// The highest median (`highest`) does not stand out.
    NoneStandsOut { highest: usize, doubt: Doubt, queueing_share: f64, frames: u64 },
}

impl Verdict {
    /// `None` when no subsegment has samples.
    pub fn of(chain: &Chain) -> Option<Verdict> {
        match Verdict::by_median(chain)? {
            Verdict::NoneStandsOut { queueing_share, frames, .. }
                if let Some((worst, kind)) = floor_of(chain, queueing_share) =>
            {
                let share =
                    chain.parts[worst].p50_ns() as f64 / chain.end_to_end.p50_ns().max(1) as f64;
                Some(Verdict::Named { worst, share, kind, frames })
            }
            verdict => Some(verdict),
        }
    }

    fn by_median(chain: &Chain) -> Option<Verdict> {
        let parts = &chain.parts;
        let worst = (0..parts.len())
            .filter(|&index| parts[index].count() > 0)
            .max_by_key(|&index| parts[index].p50_ns())?;
        let frames = chain.end_to_end.count();
        let worst_p50 = parts[worst].p50_ns();
        let runner_up = (0..parts.len())
            .filter(|&index| index != worst)
            .max_by_key(|&index| parts[index].p50_ns());
        let runner_up_p50_ns = runner_up.map_or(0, |index| parts[index].p50_ns());
        let end_to_end_p50 = chain.end_to_end.p50_ns().max(1) as f64;
        let queueing_share = queueing_share(chain);
        if let Some(runner_up) = runner_up
            && (worst_p50 as f64) < STANDS_OUT_RATIO * runner_up_p50_ns as f64
        {
            let doubt = Doubt::Close { runner_up, runner_up_p50_ns };
            return Some(Verdict::NoneStandsOut { highest: worst, doubt, queueing_share, frames });
        }
        let (agreeing, slices) = agreeing_slices(parts, worst);
        if (agreeing as f64) < AGREEING_SLICES * slices as f64 {
            let doubt = Doubt::Unsteady { agreeing, slices };
            return Some(Verdict::NoneStandsOut { highest: worst, doubt, queueing_share, frames });
        }
        let share = worst_p50 as f64 / end_to_end_p50;
        let kind = kind_of(chain, worst);
        if kind.is_queueing() && share < QUEUE_STANDS_OUT_SHARE {
            let doubt = Doubt::SpreadQueue { share, kind };
            return Some(Verdict::NoneStandsOut { highest: worst, doubt, queueing_share, frames });
        }
        Some(Verdict::Named { worst, share, kind, frames })
    }

    pub fn few_frames(&self) -> Option<u64> {
        let frames = match self {
            Verdict::Named { frames, .. } | Verdict::NoneStandsOut { frames, .. } => *frames,
        };
        (frames < MIN_FRAMES).then_some(frames)
    }
}

impl Verdict {
    /// The verdict in words, for the report (the text and the JSON carry the same words).
    /// `part_labels` label the chain's parts, `hop_labels` its hops; `loaded`: frames could be
    /// in flight together (no `--window 1`), so delay above the floors is queueing.
    pub fn describe(
        &self,
        chain: &Chain,
        part_labels: &[String],
        hop_labels: &[String],
        unit: Unit,
        loaded: bool,
        symbols: Symbols,
    ) -> String {
        let show = |ns: u64| unit.show_with_name(ns);
        let parts = &chain.parts;
        let times = match symbols {
            Symbols::Unicode => "×",
            Symbols::Ascii => "x",
        };
        match self {
            Verdict::Named {
                worst,
                kind: DelayKind::Floor { min_ns, share, queueing_share },
                ..
            } => {
                format!(
                    "{} has the largest fixed delay: every frame paid at least {} there ({:.0}% of the fastest round trip); no median stands out over the {:.0}% of the end-to-end mean above the subsegments' floors{}",
                    part_labels[*worst],
                    show(*min_ns),
                    share * 100.0,
                    queueing_share * 100.0,
                    if loaded {
                        " (queueing: the stream's bytes wait in many buffers)"
                    } else {
                        ""
                    }
                )
            }
            Verdict::Named { worst, share, kind, .. } => {
                let what = match *kind {
                    DelayKind::FixedLink { min_ns, read_timed_end } => {
                        let hedge = match read_timed_end {
                            Some(end) => format!(
                                " (or {} reads late: some of its arrivals were taken at its reads, without kernel timestamps, so its wake-ups count in this link)",
                                hop_labels.get(end).map_or("a hop", String::as_str)
                            ),
                            None => String::new(),
                        };
                        format!(
                            "a fixed delay: every frame paid at least {} (its minimum), so the link itself is slow{hedge}",
                            show(min_ns)
                        )
                    }
                    DelayKind::QueuedLink { min_ns } => format!(
                        "mostly queueing: its fastest frame took {}, the rest waited in queues on the link (the sending kernel's, or a device's on the wire: the link's rate or the next hop's receive window held them back)",
                        show(min_ns)
                    ),
                    DelayKind::HopReceiveQueue { queue_p50_ns } => format!(
                        "frames wait in its receive queue (p50 {}): this hop is slow to read them (waking up, busy, or short of CPU), it drains slowest",
                        show(queue_p50_ns)
                    ),
                    DelayKind::HopHeldBack { queue_p50_ns, held_back_share } => format!(
                        "frames wait in its receive queue (p50 {}), but {:.0}% of them because this hop had stopped reading, its own output full: what drains slowest is further on",
                        show(queue_p50_ns),
                        held_back_share * 100.0
                    ),
                    DelayKind::HopWaitingToWrite { read_to_write_p50_ns } => format!(
                        "frames wait in this hop for room to write (read {} write p50 {}): what drains slowest is further on",
                        match symbols {
                            Symbols::Unicode => "→",
                            Symbols::Ascii => "->",
                        },
                        show(read_to_write_p50_ns)
                    ),
                    DelayKind::HopMixed | DelayKind::Floor { .. } => {
                        "neither its receive queue nor its wait to write holds most of it"
                            .to_string()
                    }
                };
                format!(
                    "{} adds the most delay: p50 {}, {:.1}% of the end-to-end p50 ({}); {what}",
                    part_labels[*worst],
                    show(parts[*worst].p50_ns()),
                    share * 100.0,
                    show(chain.end_to_end.p50_ns()),
                )
            }
            Verdict::NoneStandsOut { highest, doubt, queueing_share, .. } => {
                let label = &part_labels[*highest];
                let p50 = show(parts[*highest].p50_ns());
                let why = match *doubt {
                    Doubt::Close { runner_up, runner_up_p50_ns } => format!(
                        "the highest p50 is {label} ({p50}), within {STANDS_OUT_RATIO}{times} of the next, {} ({})",
                        part_labels[runner_up],
                        show(runner_up_p50_ns)
                    ),
                    Doubt::SpreadQueue { share, .. } => format!(
                        "the highest p50 is {label} ({p50}), {:.0}% of the end-to-end p50, and it is queueing; a queue is named as a bottleneck's only from {:.0}%",
                        share * 100.0,
                        QUEUE_STANDS_OUT_SHARE * 100.0
                    ),
                    Doubt::Unsteady { agreeing, slices } => format!(
                        "the highest p50 is {label} ({p50}), but it was the highest in only {agreeing} of the run's {slices} slices",
                    ),
                };
                format!(
                    "no subsegment stands out: {why}; {:.0}% of the end-to-end mean is above the subsegments' floors (their fastest frames): {}",
                    queueing_share * 100.0,
                    if !loaded {
                        "with one frame in flight, that is wake-up variance"
                    } else if *queueing_share >= 0.5 {
                        "queueing, as when a bulk stream fills every buffer; --window 1 measures unloaded latency"
                    } else {
                        "queueing and wake-up variance"
                    }
                )
            }
        }
    }
}

/// In how many slices of the run `worst` also had the highest mean, and how many slices there
/// were (slices where some part has no sample are left out).
fn agreeing_slices(parts: &[Series], worst: usize) -> (usize, usize) {
    let means: Vec<Vec<f64>> =
        parts.iter().map(|series| series.slices.means_ns().collect()).collect();
    let slices = means.iter().map(Vec::len).min().unwrap_or(0);
    let agreeing = (0..slices)
        .filter(|&slice| {
            means
                .iter()
                .enumerate()
                .all(|(index, part)| index == worst || part[slice] <= means[worst][slice])
        })
        .count();
    (agreeing, slices)
}

/// The subsegment every frame paid most for, when that floor is most of the fastest round trip
/// and stands out from every other floor.
fn floor_of(chain: &Chain, queueing_share: f64) -> Option<(usize, DelayKind)> {
    let parts = &chain.parts;
    let floor = |index: usize| parts[index].histogram.min();
    let highest = (0..parts.len())
        .filter(|&index| parts[index].count() > 0)
        .max_by_key(|&index| floor(index))?;
    let min_ns = floor(highest);
    let next_ns = (0..parts.len()).filter(|&index| index != highest).map(floor).max().unwrap_or(0);
    let share = min_ns as f64 / chain.end_to_end.histogram.min().max(1) as f64;
    (share >= FLOOR_SHARE && min_ns as f64 >= STANDS_OUT_RATIO * next_ns as f64)
        .then_some((highest, DelayKind::Floor { min_ns, share, queueing_share }))
}

fn kind_of(chain: &Chain, index: usize) -> DelayKind {
    let series = &chain.parts[index];
    let p50_ns = series.p50_ns();
    match (&series.part, &series.split) {
        (Part::Link(hop), _) => {
            let min_ns = series.histogram.min();
            let read_timed = |end: usize| {
                chain.receive_clocks.get(end).is_some_and(|counts| {
                    counts[ReceiveClock::AfterRead as usize]
                        + counts[ReceiveClock::KernelRejected as usize]
                        > 0
                })
            };
            let read_timed_end = [*hop + 1, *hop].into_iter().find(|&end| read_timed(end));
            if 2 * min_ns >= p50_ns {
                DelayKind::FixedLink { min_ns, read_timed_end }
            } else {
                DelayKind::QueuedLink { min_ns }
            }
        }
        (_, Some(split)) => {
            let queue_p50_ns = split.receive_queue.p50_ns();
            let read_to_write_p50_ns = split.read_to_write.p50_ns();
            let held_back_share = split.held_back as f64 / series.count().max(1) as f64;
            if 2 * queue_p50_ns >= p50_ns && held_back_share >= 0.5 {
                DelayKind::HopHeldBack { queue_p50_ns, held_back_share }
            } else if 2 * queue_p50_ns >= p50_ns {
                DelayKind::HopReceiveQueue { queue_p50_ns }
            } else if 2 * read_to_write_p50_ns >= p50_ns {
                DelayKind::HopWaitingToWrite { read_to_write_p50_ns }
            } else {
                DelayKind::HopMixed
            }
        }
        (_, None) => DelayKind::HopMixed,
    }
}

/// How much of the end-to-end mean is queueing: each subsegment's mean above its own minimum
/// (what its fastest frame paid), summed, over the end-to-end mean. Near 0 for unloaded probes,
/// near 1 for a bulk stream that fills every buffer.
pub fn queueing_share(chain: &Chain) -> f64 {
    let above_min: f64 = chain
        .parts
        .iter()
        .filter(|series| series.count() > 0)
        .map(|series| series.mean_ns() - series.histogram.min() as f64)
        .sum();
    let mean = chain.end_to_end.mean_ns();
    if mean > 0.0 { (above_min / mean).clamp(0.0, 1.0) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ReadStamp;
    use crate::wire::{Direction, Frame, Header, Kind, Stamp, emit_frame};

    /// A → B → Z; each frame's A ⇄ B and B ⇄ Z round trips, and how long B held it down.
    fn chain_of(frames: &[(u64, u64, u64)]) -> Chain {
        chain_with(frames, |_| (0, false))
    }

    /// As [`chain_of`], with part of B's hold (down) spent in its receive queue, maybe held
    /// back, as `queue(frame index)` says.
    fn chain_with(frames: &[(u64, u64, u64)], queue: impl Fn(usize) -> (u64, bool)) -> Chain {
        let path = crate::report::tests::a_b_z_path();
        let mut chain = Chain::new(path).unwrap();
        for (sequence, &(a_b_ns, b_z_ns, b_holds_ns)) in frames.iter().enumerate() {
            let (wait_ns, held_back) = queue(sequence);
            let b_down = Stamp {
                receive: ReceiveClock::Kernel,
                receive_wait_ns: wait_ns,
                held_back,
                ..Stamp::new(1, Direction::Down, wait_ns, b_holds_ns)
            };
            let stamps = [
                Stamp::new(0, Direction::Down, 0, 0),
                b_down,
                Stamp::new(2, Direction::Turn, 0, 0),
                Stamp::new(1, Direction::Up, b_holds_ns + b_z_ns, b_holds_ns + b_z_ns),
            ];
            let header = Header {
                flags: 0,
                kind: Kind::Data,
                record_count: 4,
                sequence: sequence as u64,
                payload_len: 0,
            };
            let mut bytes = vec![0; header.total_len()];
            emit_frame(&mut bytes, &header, &[], &stamps, &[]);
            let read = ReadStamp { read_ns: a_b_ns + b_holds_ns + b_z_ns, ..ReadStamp::default() };
            chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read);
        }
        chain
    }

    fn label(chain: &Chain, index: usize) -> &str {
        &chain.parts[index].label
    }

    #[test]
    fn test_named_just_above_the_ratio_and_not_just_below_or_at_a_tie() {
        let above = chain_of(&[(10_000, 15_100, 0); 100]);
        match Verdict::of(&above).unwrap() {
            Verdict::Named { worst, kind: DelayKind::FixedLink { .. }, frames: 100, .. } => {
                assert_eq!(label(&above, worst), "B ⇄ Z")
            }
            other => panic!("{other:?}"),
        }
        for b_z_ns in [14_900, 10_000] {
            let chain = chain_of(&[(10_000, b_z_ns, 0); 100]);
            assert!(
                matches!(
                    Verdict::of(&chain).unwrap(),
                    Verdict::NoneStandsOut { doubt: Doubt::Close { .. }, .. }
                ),
                "B ⇄ Z at {b_z_ns} ns against 10 000 must not stand out"
            );
        }
    }

    #[test]
    fn test_few_frames_are_flagged() {
        assert_eq!(
            Verdict::of(&chain_of(&[(10_000, 40_000, 0); 29])).unwrap().few_frames(),
            Some(29)
        );
        assert_eq!(Verdict::of(&chain_of(&[(10_000, 40_000, 0); 30])).unwrap().few_frames(), None);
    }

    #[test]
    fn test_a_lead_that_moved_during_the_run_is_unsteady() {
        // B ⇄ Z is slow in the first 60 frames, A ⇄ B in the last 40: B ⇄ Z has the higher
        // median by far, but not in the run's later slices.
        let mut frames = vec![(10_000, 100_000, 0); 60];
        frames.extend([(50_000, 10_000, 0); 40]);
        let chain = chain_of(&frames);
        match Verdict::of(&chain).unwrap() {
            Verdict::NoneStandsOut {
                highest, doubt: Doubt::Unsteady { agreeing, slices }, ..
            } => {
                assert_eq!(label(&chain, highest), "B ⇄ Z");
                assert!(agreeing < slices && slices >= 8, "{agreeing} of {slices}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_a_queue_is_named_only_when_it_holds_most_of_the_delay() {
        // B holds frames longer and longer (50 to 149 µs: a queue building in it). Beside a
        // 60 µs link it holds 59% of the end-to-end median, beside two 5 µs ones 91%.
        let building = |b_z_ns: u64| -> Vec<(u64, u64, u64)> {
            (0..100u64).map(|index| (5_000, b_z_ns, 50_000 + index * 1_000)).collect()
        };
        let spread = chain_of(&building(60_000));
        match Verdict::of(&spread).unwrap() {
            Verdict::NoneStandsOut { highest, doubt: Doubt::SpreadQueue { share, .. }, .. } => {
                assert_eq!(label(&spread, highest), "B ↓ (relay)");
                assert!(share < QUEUE_STANDS_OUT_SHARE, "{share}");
            }
            other => panic!("{other:?}"),
        }
        let dominant = chain_of(&building(5_000));
        match Verdict::of(&dominant).unwrap() {
            Verdict::Named { worst, kind: DelayKind::HopWaitingToWrite { .. }, .. } => {
                assert_eq!(label(&dominant, worst), "B ↓ (relay)")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_a_floor_under_spread_queues_is_named_and_a_shared_floor_is_not() {
        // B ⇄ Z costs 2 000 ns plus a growing queue, B a growing queue from 0: no median stands
        // out (7 000 against 5 000), but every frame paid 2 000 on B ⇄ Z, 95% of the fastest
        // round trip (2 100).
        let frames: Vec<(u64, u64, u64)> =
            (0..100u64).map(|index| (100, 2_000 + index * 100, index * 100)).collect();
        let chain = chain_of(&frames);
        match Verdict::of(&chain).unwrap() {
            Verdict::Named { worst, kind: DelayKind::Floor { min_ns, share, .. }, .. } => {
                assert_eq!(label(&chain, worst), "B ⇄ Z");
                assert!((2_000..2_010).contains(&min_ns), "{min_ns}");
                assert!(share > 0.9, "{share}");
            }
            other => panic!("{other:?}"),
        }
        // The same with A ⇄ B paying 1 500 too: no floor stands out.
        let frames: Vec<(u64, u64, u64)> =
            (0..100u64).map(|index| (1_500, 2_000 + index * 100, index * 100)).collect();
        assert!(matches!(Verdict::of(&chain_of(&frames)).unwrap(), Verdict::NoneStandsOut { .. }));
    }

    #[test]
    fn test_a_receive_queue_is_the_hop_s_unless_it_was_held_back() {
        // B holds frames 50 to 149 µs, nearly all of it in its receive queue, beside 5 µs links.
        let frames: Vec<(u64, u64, u64)> =
            (0..100u64).map(|index| (5_000, 5_000, 50_000 + index * 1_000)).collect();
        let queue = |index: usize| 45_000 + index as u64 * 1_000;
        let slow_reader = chain_with(&frames, |index| (queue(index), false));
        assert!(matches!(
            Verdict::of(&slow_reader).unwrap(),
            Verdict::Named { kind: DelayKind::HopReceiveQueue { .. }, .. }
        ));
        // The same waits, but B had stopped reading for 60 of the frames: backpressure.
        let held = chain_with(&frames, |index| (queue(index), index % 5 < 3));
        match Verdict::of(&held).unwrap() {
            Verdict::Named { kind: DelayKind::HopHeldBack { held_back_share, .. }, .. } => {
                assert!((held_back_share - 0.6).abs() < 1e-9, "{held_back_share}")
            }
            other => panic!("{other:?}"),
        }
    }
}
