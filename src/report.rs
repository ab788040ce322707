//! The source's report, as text: the path, one row per subsegment, the sequence accounting,
//! throughput and the verdict. Formatting only; the numbers come from [`crate::stats`].

use std::fmt::Write;

use crate::source::Run;
use crate::stats::{Chain, Series};
use crate::wire::Role;

/// Percentiles in the table, as (column title, quantile).
const QUANTILES: [(&str, f64); 4] = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)];
/// Runs shorter than this get no rates.
const MIN_RATE_SECONDS: f64 = 0.01;
/// The verdict names a subsegment only when its median is at least this many times the next.
const STANDS_OUT_RATIO: f64 = 1.5;

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
    if let Some(chain) = &run.chain {
        render_verdict(&mut out, chain);
    }
    out
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
    let negative: u64 = chain.parts.iter().map(|series| series.negative).sum();
    if negative > 0 {
        let _ = writeln!(
            out,
            "warning: {negative} samples were negative (a clock stepped?) and counted as 0"
        );
    }
    if chain.malformed > 0 {
        let _ = writeln!(
            out,
            "warning: {} answers had stamps that do not match the path",
            chain.malformed
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

fn render_verdict(out: &mut String, chain: &Chain) {
    let Some(worst) = chain.worst() else { return };
    let unit = Unit::for_chain(chain);
    let worst_p50 = worst.histogram.value_at_quantile(0.5) as f64;
    let end_to_end_p50 = chain.end_to_end.histogram.value_at_quantile(0.5) as f64;
    let runner_up = chain
        .parts
        .iter()
        .filter(|series| !std::ptr::eq(*series, worst))
        .map(|series| series.histogram.value_at_quantile(0.5) as f64)
        .fold(0.0, f64::max);
    if worst_p50 < STANDS_OUT_RATIO * runner_up {
        let _ = writeln!(
            out,
            "verdict: no subsegment stands out: the highest p50 is {} ({} {}), within {STANDS_OUT_RATIO}× of the next ({} {})",
            worst.label,
            unit.show(worst_p50),
            unit.name,
            unit.show(runner_up),
            unit.name
        );
        return;
    }
    let _ = writeln!(
        out,
        "verdict: {} adds the most delay: p50 {} {}, {:.1}% of the end-to-end p50 ({} {})",
        worst.label,
        unit.show(worst_p50),
        unit.name,
        worst_p50 / end_to_end_p50.max(1.0) * 100.0,
        unit.show(end_to_end_p50),
        unit.name
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Ending;
    use crate::stats::Sequencing;
    use crate::wire::{Direction, Frame, Header, Kind, PathEntry, Stamp, emit_frame};

    fn run_with_links(a_b_ns: u64, b_z_ns: u64) -> Run {
        let path = vec![
            PathEntry::new(Role::Source, "A", None, None),
            PathEntry::new(Role::Relay, "B", None, None),
            PathEntry::new(Role::Echo, "Z", None, None),
        ];
        let mut chain = Chain::new(path.clone()).unwrap();
        let stamps = [
            Stamp { hop: 0, direction: Direction::Down, read_ns: 0, write_ns: 0 },
            Stamp { hop: 1, direction: Direction::Down, read_ns: 0, write_ns: 0 },
            Stamp { hop: 2, direction: Direction::Turn, read_ns: 0, write_ns: 0 },
            Stamp { hop: 1, direction: Direction::Up, read_ns: b_z_ns, write_ns: b_z_ns },
        ];
        let header = Header { kind: Kind::Data, record_count: 4, sequence: 0, payload_len: 0 };
        let mut bytes = vec![0; header.total_len()];
        emit_frame(&mut bytes, &header, &[], &stamps, &[]);
        chain.record(&Frame::new_checked(&bytes[..]).unwrap(), a_b_ns + b_z_ns);
        let mut sequencing = Sequencing::default();
        sequencing.sent_one();
        sequencing.answered_one(0);
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
        }
    }

    #[test]
    fn test_verdict_names_a_link_only_when_it_stands_out() {
        let clear = render(&run_with_links(10_000, 40_000));
        assert!(clear.contains("verdict: B ⇄ Z adds the most delay: p50 40.0 µs"), "{clear}");
        let close = render(&run_with_links(30_000, 40_000));
        assert!(close.contains("verdict: no subsegment stands out"), "{close}");
        assert!(!close.contains("MB/s"), "a 70 µs run gets no rates: {close}");
    }
}
