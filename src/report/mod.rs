//! The source's report, as text: the path, one row per subsegment, each hop's split, the
//! sequence accounting, throughput, the probe schedule and the verdict. Formatting only; the
//! numbers come from [`crate::stats`], the verdict from [`verdict`].

pub mod verdict;

use std::fmt::Write;

use crate::source::{Run, Schedule};
use crate::stats::{Chain, Series};
use crate::wire::Role;
use verdict::{DelayKind, Doubt, Verdict};

/// Percentiles in the table, as (column title, quantile).
const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
/// Runs shorter than this get no rates.
const MIN_RATE_SECONDS: f64 = 0.01;

pub fn render(run: &Run) -> String {
    let mut out = String::new();
    render_path(&mut out, run);
    match &run.chain {
        Some(chain) if chain.end_to_end.count() > 0 => render_table(&mut out, chain),
        _ if run.sequencing.sent == 0 => out.push_str("no data was sent (the input was empty)\n"),
        _ if run.sequencing.answered == 0 => out.push_str("no data frame came back\n"),
        _ => out.push_str("no answered frame carried a complete set of stamps\n"),
    }
    let sequencing = &run.sequencing;
    let _ = writeln!(
        out,
        "frames: sent {}, answered {}, missing {}, out of order {}, duplicated {}",
        sequencing.sent,
        sequencing.answered,
        sequencing.missing(),
        sequencing.out_of_order,
        sequencing.duplicated
    );
    if run.unwritten_bytes > 0 {
        let _ = writeln!(
            out,
            "unwritten: {} B of answered payload did not reach stdout before the interrupt gave up",
            run.unwritten_bytes
        );
    }
    if run.corrupted > 0 {
        let _ =
            writeln!(out, "corrupted: {} probe answers differ from what was sent", run.corrupted);
    }
    if run.unsolicited_bytes > 0 {
        let _ = writeln!(
            out,
            "unsolicited: {} B sent by the plain server unasked",
            run.unsolicited_bytes
        );
    }
    if let (Some(first), Some(last)) = (run.first_send_ns, run.last_answer_ns) {
        let seconds = last.saturating_sub(first) as f64 / 1e9;
        // Below a few milliseconds a rate says more about one round trip than about throughput.
        if seconds < MIN_RATE_SECONDS {
            let _ = writeln!(out, "throughput: {} B of payload answered", run.payload_bytes);
        } else {
            let _ = writeln!(
                out,
                "throughput: {} B of payload answered in {seconds:.3} s: {:.2} MB/s, {:.0} frames/s",
                run.payload_bytes,
                run.payload_bytes as f64 / seconds / 1e6,
                sequencing.answered as f64 / seconds
            );
        }
    }
    if let Some(schedule) = &run.schedule {
        render_schedule(&mut out, schedule);
    }
    if let (Some(block_size), true) = (run.stdin_block_size, sequencing.sent > 0) {
        let _ = writeln!(
            out,
            "frames from stdin: {} B of payload on average (blocks of at most {block_size} B)",
            run.sent_payload_bytes / sequencing.sent,
        );
    }
    if let Some(chain) = &run.chain {
        render_verdict(&mut out, chain, run.loaded);
    }
    out
}

/// The probe schedule as asked and as kept.
fn render_schedule(out: &mut String, schedule: &Schedule) {
    let asked = 1e9 / schedule.interval.as_nanos().max(1) as f64;
    let achieved = match schedule.achieved_per_second() {
        Some(rate) => format!("{rate:.0}/s"),
        None => "- (too few probes)".to_string(),
    };
    let _ = writeln!(
        out,
        "probes: one every {} µs asked ({asked:.0}/s), {achieved} achieved over the {} on the schedule (the first {} went one at a time); {} late (left more than half an interval after their time; the latest {:.1} µs late)",
        schedule.interval.as_nanos() as f64 / 1e3,
        schedule.booked,
        crate::source::UNLOADED_FRAMES,
        schedule.late,
        schedule.worst_lateness_ns as f64 / 1e3
    );
}

fn render_path(out: &mut String, run: &Run) {
    let _ = writeln!(out, "path ({} hops):", run.path.len());
    for (index, entry) in run.path.iter().enumerate() {
        if entry.role == Role::Unreached {
            let _ = writeln!(out, "  {index:>2}  {:<16} {}", entry.name, entry.role.describe());
            continue;
        }
        let _ = writeln!(
            out,
            "  {index:>2}  {:<16} {:<22} reached at {:<22} from {}",
            entry.name,
            entry.role.describe(),
            entry.local,
            entry.peer
        );
    }
}

/// Microseconds, or milliseconds when the chain's median round trip is 10 ms or more.
struct Unit {
    name: &'static str,
    ns: f64,
    decimals: usize,
}

impl Unit {
    fn for_chain(chain: &Chain) -> Unit {
        if chain.end_to_end.histogram.value_at_quantile(0.5) >= 10_000_000 {
            Unit { name: "ms", ns: 1e6, decimals: 2 }
        } else {
            Unit { name: "µs", ns: 1e3, decimals: 1 }
        }
    }

    fn show(&self, ns: f64) -> String {
        format!("{:.*}", self.decimals, ns / self.ns)
    }
}

fn render_table(out: &mut String, chain: &Chain) {
    let unit = Unit::for_chain(chain);
    let _ = writeln!(
        out,
        "delay per subsegment in {} (links: round trip without the next hop's holding time; relays: one way):",
        unit.name
    );
    let mut title = format!("  {:<26} {:>8} {:>9}", "subsegment", "count", "min");
    for (name, _) in QUANTILES {
        let _ = write!(title, " {name:>9}");
    }
    let _ = writeln!(
        out,
        "{title} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "max", "mean", "stdev", "jitter", "share"
    );
    let end_to_end_p50 = chain.end_to_end.histogram.value_at_quantile(0.5).max(1) as f64;
    for series in &chain.parts {
        let share = series.histogram.value_at_quantile(0.5) as f64 / end_to_end_p50 * 100.0;
        render_row(out, series, &unit, &format!("{share:>5.1}%"));
    }
    let sum_ns: i128 = chain.parts.iter().map(|series| series.sum_ns).sum();
    let count = chain.end_to_end.count().max(1) as f64;
    let _ = writeln!(
        out,
        "  {:<26} {:>8} {:>59} {:>9}",
        "sum of subsegments",
        "",
        "",
        unit.show(sum_ns as f64 / count)
    );
    render_row(out, &chain.end_to_end, &unit, "");
    render_split(out, chain, &unit);
    for series in chain.parts.iter().chain([&chain.end_to_end]) {
        if let Some(negative) = series.negative {
            let _ = writeln!(
                out,
                "bug: {} samples of {} were negative and left out (the first: frame {}, {} ns); \
                 stamps must never precede their bytes, please report this",
                negative.count, series.label, negative.first_sequence, negative.first_ns
            );
        }
    }
    if chain.malformed > 0 {
        let _ = writeln!(
            out,
            "warning: {} answers had stamps that do not match the path",
            chain.malformed
        );
    }
}

/// Each hop's residence in its two parts, and how its arrivals were known.
fn render_split(out: &mut String, chain: &Chain, unit: &Unit) {
    let _ = writeln!(
        out,
        "hops split by their own stamps ({}; receive queue: arrival → read, from the kernel's receive timestamps; read → write: processing and waiting for room to write; held back: frames read late because the hop's own output was full):",
        unit.name
    );
    let _ = writeln!(
        out,
        "  {:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "hop",
        "queue p50",
        "queue p99",
        "queue mean",
        "r→w p50",
        "r→w p99",
        "r→w mean",
        "held back"
    );
    for series in &chain.parts {
        let Some(split) = &series.split else { continue };
        let (queue, held) = (&split.receive_queue, &split.read_to_write);
        let held_back = split.held_back as f64 / series.count().max(1) as f64 * 100.0;
        let _ = writeln!(
            out,
            "  {:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9.1}%",
            series.label,
            unit.show(queue.p50_ns() as f64),
            unit.show(queue.histogram.value_at_quantile(0.99) as f64),
            unit.show(queue.mean_ns()),
            unit.show(held.p50_ns() as f64),
            unit.show(held.histogram.value_at_quantile(0.99) as f64),
            unit.show(held.mean_ns()),
            held_back,
        );
    }
    let source = &chain.source_receive_queue;
    let _ = writeln!(
        out,
        "  {:<26} {:>10} {:>10} {:>10}   (after the end-to-end round trip, so in no row above)",
        source.label,
        unit.show(source.p50_ns() as f64),
        unit.show(source.histogram.value_at_quantile(0.99) as f64),
        unit.show(source.mean_ns()),
    );
    let (after_read, kernel, rejected) = chain.receive_clock_totals();
    let records = after_read + kernel + rejected;
    if kernel < records {
        let _ = writeln!(
            out,
            "receive clocks: {kernel} of {records} arrivals from kernel timestamps; {} taken at the read ({rejected} of them because the kernel's stamp was impossible), whose receive-queue time counts in the link before",
            after_read + rejected
        );
    }
}

fn render_row(out: &mut String, series: &Series, unit: &Unit, share: &str) {
    let histogram = &series.histogram;
    let mut row = format!(
        "  {:<26} {:>8} {:>9}",
        series.label,
        series.count(),
        unit.show(histogram.min() as f64)
    );
    for (_, quantile) in QUANTILES {
        let _ = write!(row, " {:>9}", unit.show(histogram.value_at_quantile(quantile) as f64));
    }
    let _ = writeln!(
        out,
        "{row} {:>9} {:>9} {:>9} {:>9} {share:>6}",
        unit.show(histogram.max() as f64),
        unit.show(series.mean_ns()),
        unit.show(histogram.stdev()),
        unit.show(series.jitter_ns()),
    );
}

/// `loaded`: frames could be in flight together (no `--window 1`), so delay above the
/// floors is queueing.
fn render_verdict(out: &mut String, chain: &Chain, loaded: bool) {
    let Some(verdict) = Verdict::of(chain) else { return };
    let unit = Unit::for_chain(chain);
    let show = |ns: u64| format!("{} {}", unit.show(ns as f64), unit.name);
    let parts = &chain.parts;
    let end_to_end_p50 = chain.end_to_end.p50_ns();
    match &verdict {
        Verdict::Named { worst, share, kind, .. } => {
            let series = &parts[*worst];
            let what = match *kind {
                DelayKind::FixedLink { min_ns, read_timed_end } => {
                    let hedge = match read_timed_end {
                        Some(end) => format!(
                            " (or {} reads late: some of its arrivals were taken at its reads, without kernel timestamps, so its wake-ups count in this link)",
                            chain.path.get(end).map_or("a hop", |entry| entry.name.as_str())
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
                    "frames wait in this hop for room to write (read → write p50 {}): what drains slowest is further on",
                    show(read_to_write_p50_ns)
                ),
                DelayKind::HopMixed => {
                    "neither its receive queue nor its wait to write holds most of it".to_string()
                }
                DelayKind::Floor { .. } => String::new(),
            };
            if let DelayKind::Floor { min_ns, share: floor_share, queueing_share } = *kind {
                let _ = writeln!(
                    out,
                    "verdict: {} has the largest fixed delay: every frame paid at least {} there ({:.0}% of the fastest round trip); no median stands out over the {:.0}% of the end-to-end mean above the subsegments' floors{}",
                    series.label,
                    show(min_ns),
                    floor_share * 100.0,
                    queueing_share * 100.0,
                    if loaded {
                        " (queueing: the stream's bytes wait in many buffers)"
                    } else {
                        ""
                    }
                );
            } else {
                let _ = writeln!(
                    out,
                    "verdict: {} adds the most delay: p50 {}, {:.1}% of the end-to-end p50 ({}); {what}",
                    series.label,
                    show(series.p50_ns()),
                    share * 100.0,
                    show(end_to_end_p50),
                );
            }
        }
        Verdict::NoneStandsOut { highest, doubt, queueing_share, .. } => {
            let series = &parts[*highest];
            let why = match *doubt {
                Doubt::Close { runner_up, runner_up_p50_ns } => format!(
                    "the highest p50 is {} ({}), within {}× of the next, {} ({})",
                    series.label,
                    show(series.p50_ns()),
                    verdict::STANDS_OUT_RATIO,
                    parts[runner_up].label,
                    show(runner_up_p50_ns)
                ),
                Doubt::SpreadQueue { share, .. } => format!(
                    "the highest p50 is {} ({}), {:.0}% of the end-to-end p50, and it is queueing; a queue is named as a bottleneck's only from {:.0}%",
                    series.label,
                    show(series.p50_ns()),
                    share * 100.0,
                    verdict::QUEUE_STANDS_OUT_SHARE * 100.0
                ),
                Doubt::Unsteady { agreeing, slices } => format!(
                    "the highest p50 is {} ({}), but it was the highest in only {agreeing} of the run's {slices} slices",
                    series.label,
                    show(series.p50_ns()),
                ),
            };
            let _ = writeln!(
                out,
                "verdict: no subsegment stands out: {why}; {:.0}% of the end-to-end mean is above the subsegments' floors (their fastest frames): {}",
                queueing_share * 100.0,
                if !loaded {
                    "with one frame in flight, that is wake-up variance"
                } else if *queueing_share >= 0.5 {
                    "queueing, as when a bulk stream fills every buffer; --window 1 measures unloaded latency"
                } else {
                    "queueing and wake-up variance"
                }
            );
        }
    }
    if let Some(frames) = verdict.few_frames() {
        let _ = writeln!(
            out,
            "warning: the verdict rests on only {frames} frames; it needs {} or more to be relied on",
            verdict::MIN_FRAMES
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ReadStamp;
    use crate::source::Ending;
    use crate::stats::Sequencing;
    use crate::wire::{Direction, Frame, Header, Kind, PathEntry, Stamp, emit_frame};

    /// A → B → Z with `frames` identical frames: A ⇄ B takes `a_b_ns`, B ⇄ Z `b_z_ns`.
    pub(super) fn run_with_links(a_b_ns: u64, b_z_ns: u64, frames: u64) -> Run {
        let path = vec![
            PathEntry::new(Role::Source, "A", None, None),
            PathEntry::new(Role::Relay, "B", None, None),
            PathEntry::new(Role::Echo, "Z", None, None),
        ];
        let mut chain = Chain::new(path.clone()).unwrap();
        let mut sequencing = Sequencing::default();
        for sequence in 0..frames {
            let stamps = [
                Stamp::new(0, Direction::Down, 0, 0),
                Stamp::new(1, Direction::Down, 0, 0),
                Stamp::new(2, Direction::Turn, 0, 0),
                Stamp::new(1, Direction::Up, b_z_ns, b_z_ns),
            ];
            let header = Header { kind: Kind::Data, record_count: 4, sequence, payload_len: 0 };
            let mut bytes = vec![0; header.total_len()];
            emit_frame(&mut bytes, &header, &[], &stamps, &[]);
            let read = ReadStamp { read_ns: a_b_ns + b_z_ns, ..ReadStamp::default() };
            chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read);
            sequencing.sent_one();
            sequencing.answered_one(sequence);
        }
        Run {
            ending: Ending::Complete,
            chain: Some(chain),
            path,
            sequencing,
            payload_bytes: 0,
            unsolicited_bytes: 0,
            corrupted: 0,
            unwritten_bytes: 0,
            first_send_ns: Some(0),
            last_answer_ns: Some(a_b_ns + b_z_ns),
            sent_payload_bytes: 0,
            schedule: None,
            stdin_block_size: None,
            loaded: false,
        }
    }

    #[test]
    fn test_verdict_text_names_a_fixed_link_and_switches_units() {
        let clear = render(&run_with_links(10_000, 40_000, 100));
        assert!(clear.contains("verdict: B ⇄ Z adds the most delay: p50 40.0 µs"), "{clear}");
        assert!(clear.contains("a fixed delay: every frame paid at least 40.0 µs"), "{clear}");
        assert!(!clear.contains("warning"), "{clear}");
        let long = render(&run_with_links(1_000_000, 12_000_000, 100));
        assert!(long.contains("delay per subsegment in ms"), "{long}");
        assert!(long.contains("p50 12.00 ms"), "{long}");
        let close = render(&run_with_links(30_000, 40_000, 100));
        assert!(close.contains("verdict: no subsegment stands out"), "{close}");
        assert!(close.contains("within 1.5× of the next, A ⇄ B (30.0 µs)"), "{close}");
        assert!(!close.contains("MB/s"), "a 70 µs run gets no rates: {close}");
    }

    #[test]
    fn test_a_verdict_from_few_frames_says_so() {
        let few = render(&run_with_links(10_000, 40_000, 5));
        assert!(few.contains("verdict: B ⇄ Z adds the most delay"), "{few}");
        assert!(few.contains("the verdict rests on only 5 frames; it needs 30"), "{few}");
    }
}
