//! The report for people: the path, one row per subsegment, each hop's split, the frames,
//! throughput, the probe schedule, the SLA results and the verdict. It prints what the
//! [`Report`] holds and decides nothing; only column widths are worked out here.

use std::fmt::Write;

use super::{Report, Stats, Unit, plural, sla};
use crate::stats::Symbols;

/// Percentiles in the table, as (column title, value).
/// Reads one figure of a row's statistics.
type Figure = fn(&Stats) -> u64;

const QUANTILES: [(&str, Figure); 4] = [
    ("p50", |stats| stats.p50_ns),
    ("p90", |stats| stats.p90_ns),
    ("p99", |stats| stats.p99_ns),
    ("p99.9", |stats| stats.p999_ns),
];
/// The narrowest label column; wider when a label (a long host name) needs it.
const MIN_LABEL_WIDTH: usize = 26;

pub fn render(report: &Report) -> String {
    let mut out = String::new();
    render_path(&mut out, report);
    let frames = &report.frames;
    match &report.end_to_end {
        Some(_) => render_table(&mut out, report),
        None if frames.sent == 0 => out.push_str("no data was sent (the input was empty)\n"),
        None if frames.answered == 0 => out.push_str("no data frame came back\n"),
        None => out.push_str("no answered frame carried a complete set of stamps\n"),
    }
    let application = report.parameters.input == "application";
    let _ = writeln!(
        out,
        "frames: sent {}, answered {}, missing {}{}, out of order {}, duplicated {}{}",
        frames.sent,
        frames.answered,
        frames.missing,
        if frames.lost > 0 { format!(" ({} lost to outages)", frames.lost) } else { String::new() },
        frames.out_of_order,
        frames.duplicated,
        if application {
            " (the clients' bytes and the probes; each answered by its receipt from the egress)"
        } else {
            ""
        }
    );
    if frames.unwritten_bytes > 0 {
        let _ = writeln!(
            out,
            "unwritten: {} B of answered payload did not reach stdout before the interrupt gave up",
            frames.unwritten_bytes
        );
    }
    if frames.corrupted > 0 {
        let _ = writeln!(
            out,
            "corrupted: {} probe {} from what was sent",
            frames.corrupted,
            if frames.corrupted == 1 { "answer differs" } else { "answers differ" }
        );
    }
    if frames.unsolicited_bytes > 0 && application {
        let _ = writeln!(
            out,
            "from the servers: {} B, delivered to the clients",
            frames.unsolicited_bytes
        );
    } else if frames.unsolicited_bytes > 0 {
        let _ = writeln!(
            out,
            "unsolicited: {} B sent by the plain server unasked",
            frames.unsolicited_bytes
        );
    }
    if let (Some(throughput), true) = (&report.throughput, application) {
        let _ = writeln!(
            out,
            "from the clients: {} B, delivered to the servers",
            throughput.payload_bytes
        );
    } else if let Some(throughput) = &report.throughput {
        match (throughput.bytes_per_second, throughput.frames_per_second) {
            (Some(bytes), Some(frames)) => {
                let _ = writeln!(
                    out,
                    "throughput: {} B of payload answered in {:.3} s: {:.2} MB/s, {frames:.0} frames/s",
                    throughput.payload_bytes,
                    throughput.duration_ns as f64 / 1e9,
                    bytes / 1e6,
                );
            }
            _ => {
                let _ =
                    writeln!(out, "throughput: {} B of payload answered", throughput.payload_bytes);
            }
        }
    }
    if let Some(schedule) = &report.schedule {
        let asked = 1e9 / schedule.interval_ns.max(1) as f64;
        let achieved = match schedule.achieved_per_second {
            Some(rate) => format!("{rate:.0}/s"),
            None => "- (too few probes)".to_string(),
        };
        let _ = writeln!(
            out,
            "probes: one every {} {} asked ({asked:.0}/s), {achieved} achieved over the {} on the schedule (the first {} went one at a time); {} late (left more than half an interval after their time; the latest {:.1} {} late)",
            schedule.interval_ns as f64 / 1e3,
            micro(report),
            schedule.scheduled,
            schedule.unscheduled_first,
            schedule.late,
            schedule.worst_lateness_ns as f64 / 1e3,
            micro(report),
        );
    }
    if let Some(stdin) = &report.stdin {
        let _ = writeln!(
            out,
            "frames from stdin: {} B of payload on average (blocks of at most {} B)",
            stdin.mean_frame_payload_bytes, stdin.block_size
        );
    }
    for outage in &report.outages {
        let back = match outage.down_ns {
            Some(down_ns) => format!(
                "back after {:.1} s, path {}",
                down_ns as f64 / 1e9,
                if outage.path_changed { "changed" } else { "unchanged" }
            ),
            None => "still down when the run ended".to_string(),
        };
        let _ = writeln!(
            out,
            "outage at {}: {}; {} {} lost; {back}",
            &outage.started_at[11..19],
            outage.message,
            outage.lost_frames,
            plural(outage.lost_frames, "frame"),
        );
    }
    let dropped = &report.dropped_lines;
    if dropped.total() > 0 {
        let _ = writeln!(
            out,
            "warning: the output thread fell behind: {} samples, {} JSON lines and {} interval lines dropped",
            dropped.samples, dropped.jsonl, dropped.stderr
        );
    }
    render_sla(&mut out, report);
    if let Some(verdict) = &report.verdict {
        let _ = writeln!(out, "verdict: {}", verdict.text);
        if let Some(warning) = &verdict.warning {
            let _ = writeln!(out, "warning: {warning}");
        }
    }
    out
}

fn micro(report: &Report) -> &'static str {
    match report.presentation.symbols {
        Symbols::Unicode => "µs",
        Symbols::Ascii => "us",
    }
}

fn arrow(report: &Report) -> &'static str {
    match report.presentation.symbols {
        Symbols::Unicode => "→",
        Symbols::Ascii => "->",
    }
}

fn render_path(out: &mut String, report: &Report) {
    let name_width = report.path.iter().map(|hop| hop.name.chars().count()).max().unwrap_or(0);
    let name_width = name_width.clamp(16, 64);
    let _ =
        writeln!(out, "path ({} {}):", report.path.len(), plural(report.path.len() as u64, "hop"));
    for hop in &report.path {
        let tags: String = hop.tags.iter().map(|(key, value)| format!(" {key}={value}")).collect();
        if hop.role == "unreached" {
            let _ =
                writeln!(out, "  {:>2}  {:<name_width$} unreachable{tags}", hop.index, hop.name);
            continue;
        }
        let role = match hop.role {
            "egress" => "relay, strips headers",
            "server" => "plain TCP server",
            other => other,
        };
        let _ = writeln!(
            out,
            "  {:>2}  {:<name_width$} {role:<22} reached at {:<22} from {}{tags}",
            hop.index,
            hop.name,
            hop.reached_at.as_deref().unwrap_or("-"),
            hop.seen_from.as_deref().unwrap_or("-"),
        );
    }
}

/// The label column: as wide as the longest label needs.
fn label_width(report: &Report) -> usize {
    let source = report.path.first().map_or(0, |hop| hop.name.chars().count() + 24);
    report
        .subsegments
        .iter()
        .map(|row| row.label.chars().count())
        .chain([source, MIN_LABEL_WIDTH])
        .max()
        .unwrap_or(MIN_LABEL_WIDTH)
}

fn render_table(out: &mut String, report: &Report) {
    let unit = &report.unit;
    let width = label_width(report);
    let _ = writeln!(
        out,
        "delay per subsegment in {} (links: round trip without the next hop's holding time; relays: one way):",
        unit.name
    );
    let mut title = format!("  {:<width$} {:>8} {:>9}", "subsegment", "count", "min");
    for (name, _) in QUANTILES {
        let _ = write!(title, " {name:>9}");
    }
    let _ = writeln!(
        out,
        "{title} {:>9} {:>9} {:>9} {:>9} {:>6}",
        "max", "mean", "stdev", "jitter", "share"
    );
    for row in &report.subsegments {
        let mark = if breached(report, &row.id) { "  SLA breached" } else { "" };
        render_row(
            out,
            &row.label,
            &row.stats,
            unit,
            width,
            &format!("{:>5.1}%{mark}", row.share * 100.0),
        );
    }
    let end_to_end = report.end_to_end.unwrap_or_default();
    let sum_ns: u64 = report.subsegments.iter().map(|row| row.stats.sum_ns).sum();
    let _ = writeln!(
        out,
        "  {:<width$} {:>8} {:>59} {:>9}",
        "sum of subsegments",
        "",
        "",
        unit.show(sum_ns as f64 / end_to_end.count.max(1) as f64)
    );
    render_row(
        out,
        "end-to-end",
        &end_to_end,
        unit,
        width,
        if breached(report, sla::END_TO_END) { "        SLA breached" } else { "" },
    );
    render_split(out, report, width);
    render_kernel(out, report, width);
    for bug in &report.bugs {
        let _ = writeln!(
            out,
            "bug: {} samples of {} were negative and left out (the first: frame {}, {} ns); \
             stamps must never precede their bytes, please report this",
            bug.count, bug.label, bug.first_sequence, bug.first_ns
        );
    }
    if report.frames.malformed > 0 {
        let _ = writeln!(
            out,
            "warning: {} {} stamps that do not match the path",
            report.frames.malformed,
            if report.frames.malformed == 1 { "answer had" } else { "answers had" }
        );
    }
}

/// What the kernel saw per link, from both ends (`--kernel-info`).
fn render_kernel(out: &mut String, report: &Report, width: usize) {
    let links: Vec<_> = report.subsegments.iter().filter(|row| row.kernel.is_some()).collect();
    if links.is_empty() {
        return;
    }
    let unit = &report.unit;
    let _ = writeln!(
        out,
        "what the kernel saw per link ({}; TCP_INFO of each end's socket, near: the hop sending down, far: the hop after it; retrans and rto: during the run; unsent and unacked: the highest reading):",
        unit.name
    );
    let _ = writeln!(
        out,
        "  {:<width$} {:>4} {:>7} {:>9} {:>9} {:>9} {:>7} {:>4} {:>9} {:>7} {:>6} {:>9}",
        "link",
        "end",
        "samples",
        "srtt",
        "min rtt",
        "rttvar",
        "retrans",
        "rto",
        "unsent B",
        "unacked",
        "cwnd",
        "wire/p50"
    );
    let show =
        |value: Option<u64>| value.map_or_else(|| "-".to_string(), |ns| unit.show(ns as f64));
    let count =
        |value: Option<u64>| value.map_or_else(|| "-".to_string(), |value| value.to_string());
    for row in links {
        let kernel = row.kernel.as_ref().expect("filtered");
        let wire = kernel.split.map_or_else(
            || "-".to_string(),
            |split| {
                format!("{:.0}%", split.wire_ns as f64 * 100.0 / row.stats.p50_ns.max(1) as f64)
            },
        );
        for (index, (name, end)) in
            [("near", &kernel.near), ("far", &kernel.far)].into_iter().enumerate()
        {
            let label = if index == 0 { row.label.as_str() } else { "" };
            let wire = if index == 0 { wire.as_str() } else { "" };
            let Some(end) = end else {
                let _ = writeln!(out, "  {label:<width$} {name:>4} {:>7}", "none");
                continue;
            };
            let _ = writeln!(
                out,
                "  {label:<width$} {name:>4} {:>7} {:>9} {:>9} {:>9} {:>7} {:>4} {:>9} {:>7} {:>6} {wire:>9}",
                end.samples,
                show(end.rtt_ns),
                show(end.min_rtt_ns),
                show(end.rttvar_ns),
                count(end.retrans),
                count(end.rto),
                count(end.notsent_bytes_max),
                count(end.unacked_max),
                count(end.cwnd),
            );
        }
    }
}

/// Whether an `--sla` on the row with this id was breached.
fn breached(report: &Report, id: &str) -> bool {
    report.sla.iter().any(|result| result.breached && result.subsegment == id)
}

/// Each hop's residence in its two parts, and how its arrivals were known.
fn render_split(out: &mut String, report: &Report, width: usize) {
    let unit = &report.unit;
    let arrow = arrow(report);
    let _ = writeln!(
        out,
        "hops split by their own stamps ({}; receive queue: arrival {arrow} read, from the kernel's receive timestamps; read {arrow} write: processing and waiting for room to write; held back: frames read late because the hop's own output was full):",
        unit.name
    );
    let rw = |what: &str| format!("r{arrow}w {what}");
    let _ = writeln!(
        out,
        "  {:<width$} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "hop",
        "queue p50",
        "queue p99",
        "queue mean",
        rw("p50"),
        rw("p99"),
        rw("mean"),
        "held back"
    );
    let three = |stats: &Stats| {
        format!(
            "{:>10} {:>10} {:>10}",
            unit.show(stats.p50_ns as f64),
            unit.show(stats.p99_ns as f64),
            unit.show(stats.mean_ns as f64)
        )
    };
    for row in report.subsegments.iter().filter(|row| row.split.is_some()) {
        let split = row.split.as_ref().expect("filtered");
        let held_back = split.held_back as f64 / row.stats.count.max(1) as f64 * 100.0;
        let _ = writeln!(
            out,
            "  {:<width$} {} {} {held_back:>9.1}%",
            row.label,
            three(&split.receive_queue),
            three(&split.read_to_write),
        );
    }
    if let Some(source) = &report.source_receive_queue {
        let name = report.path.first().map_or("source", |hop| hop.name.as_str());
        let _ = writeln!(
            out,
            "  {:<width$} {}   (after the end-to-end round trip, so in no row above)",
            format!("{name} (source) receive queue"),
            three(source),
        );
    }
    if let Some(clocks) = &report.receive_clocks {
        let records = clocks.kernel + clocks.after_read + clocks.kernel_rejected;
        if clocks.kernel < records {
            let _ = writeln!(
                out,
                "receive clocks: {} of {records} arrivals from kernel timestamps; {} taken at the read ({} of them because the kernel's stamp was impossible), whose receive-queue time counts in the link before",
                clocks.kernel,
                clocks.after_read + clocks.kernel_rejected,
                clocks.kernel_rejected
            );
        }
    }
}

fn render_row(
    out: &mut String,
    label: &str,
    stats: &Stats,
    unit: &Unit,
    width: usize,
    share: &str,
) {
    let mut row =
        format!("  {label:<width$} {:>8} {:>9}", stats.count, unit.show(stats.min_ns as f64));
    for (_, value) in QUANTILES {
        let _ = write!(row, " {:>9}", unit.show(value(stats) as f64));
    }
    let _ = writeln!(
        out,
        "{row} {:>9} {:>9} {:>9} {:>9} {share:>6}",
        unit.show(stats.max_ns as f64),
        unit.show(stats.mean_ns as f64),
        unit.show(stats.stdev_ns as f64),
        unit.show(stats.jitter_ns as f64),
    );
}

fn render_sla(out: &mut String, report: &Report) {
    for result in &report.sla {
        let label = report.subsegment(&result.subsegment).map(|row| row.label.as_str());
        let _ = writeln!(out, "sla: {}", result.describe(&report.unit, label));
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{report_of, run_with_links};
    use super::super::{Presentation, Units};
    use super::*;

    #[test]
    fn test_verdict_text_names_a_fixed_link_and_switches_units() {
        let clear =
            render(&report_of(&run_with_links(10_000, 40_000, 100), Presentation::default(), &[]));
        assert!(clear.contains("verdict: B ⇄ Z adds the most delay: p50 40.0 µs"), "{clear}");
        assert!(clear.contains("a fixed delay: every frame paid at least 40.0 µs"), "{clear}");
        assert!(!clear.contains("warning"), "{clear}");
        let long = render(&report_of(
            &run_with_links(1_000_000, 12_000_000, 100),
            Presentation::default(),
            &[],
        ));
        assert!(long.contains("delay per subsegment in ms"), "{long}");
        assert!(long.contains("p50 12.00 ms"), "{long}");
        let close =
            render(&report_of(&run_with_links(30_000, 40_000, 100), Presentation::default(), &[]));
        assert!(close.contains("verdict: no subsegment stands out"), "{close}");
        assert!(close.contains("within 1.5× of the next, A ⇄ B (30.0 µs)"), "{close}");
        assert!(!close.contains("MB/s"), "a 70 µs run gets no rates: {close}");
    }

    #[test]
    fn test_fixed_units_and_ascii() {
        let presentation = Presentation { units: Units::Microseconds, symbols: Symbols::Ascii };
        let text =
            render(&report_of(&run_with_links(1_000_000, 12_000_000, 100), presentation, &[]));
        assert!(text.contains("delay per subsegment in us"), "{text}");
        assert!(text.contains("verdict: B - Z adds the most delay: p50 12001.3 us"), "{text}");
        assert!(text.is_ascii(), "{text}");
        let presentation = Presentation { units: Units::Milliseconds, symbols: Symbols::Unicode };
        let text = render(&report_of(&run_with_links(10_000, 40_000, 100), presentation, &[]));
        assert!(text.contains("p50 0.04 ms"), "{text}");
    }

    #[test]
    fn test_long_host_names_widen_the_columns_instead_of_breaking_them() {
        let mut run = run_with_links(10_000, 40_000, 100);
        let long = "relay-b.rack-17.fra1.example.internal";
        run.path[1].name = long.to_string();
        // The report labels its rows from the path, so they carry the long name.
        let text = render(&report_of(&run, Presentation::default(), &[]));
        let table: Vec<&str> = text
            .lines()
            .skip_while(|line| !line.starts_with("delay per subsegment"))
            .skip(1)
            .take_while(|line| !line.contains("sum of subsegments"))
            .collect();
        assert_eq!(table.len(), 6, "{text}");
        let widths: Vec<usize> = table.iter().map(|line| line.chars().count()).collect();
        assert!(widths.iter().all(|&width| width == widths[0]), "{widths:?}\n{text}");
        assert!(text.contains(&format!("  {long} ⇄ Z ")), "{text}");
    }

    #[test]
    fn test_a_verdict_from_few_frames_says_so() {
        let few =
            render(&report_of(&run_with_links(10_000, 40_000, 5), Presentation::default(), &[]));
        assert!(few.contains("verdict: B ⇄ Z adds the most delay"), "{few}");
        assert!(few.contains("the verdict rests on only 5 frames; it needs 30"), "{few}");
        let one =
            render(&report_of(&run_with_links(10_000, 40_000, 1), Presentation::default(), &[]));
        assert!(one.contains("rests on only 1 frame;"), "{one}");
    }
}
