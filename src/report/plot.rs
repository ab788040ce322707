//! The report as an SVG picture (`--plot PATH.svg`), drawn from the [`Report`] value alone:
//! a title with the path and the date, the verdict's words, and up to three panels:
//!
//! 1. each subsegment's delay distribution (and the end-to-end one) as a step CDF on a log
//!    time axis, from the points the report keeps ([`super::CdfPoint`]);
//! 2. each subsegment's share of the end-to-end median, as a bar;
//! 3. in a continuous run, each subsegment's p50 (solid) and p99 (dashed) per report interval,
//!    from the report's bounded [`super::interval::History`].
//!
//! The SVG is written by hand: it is text, three panels need a few axes, lines and bars, and
//! doing it here keeps every label exact (no font metrics to guess) and the output
//! deterministic. Like the other renderers it computes nothing another would need: shares,
//! percentiles and the history are the report's; only pixels are decided here.

use std::fmt::Write as _;

use super::interval::{HISTORY_LEN, IntervalSummary, PartSummary};
use super::{CdfPoint, Report};
use crate::stats::Part;

const WIDTH: f64 = 1000.0;
/// The plot area of panels 1 and 3, left to right; the legend sits right of it.
const PLOT_LEFT: f64 = 90.0;
const PLOT_RIGHT: f64 = 730.0;
const LEGEND_LEFT: f64 = 750.0;
const PLOT_HEIGHT: f64 = 300.0;
const LEGEND_ROW: f64 = 16.0;
const BAR_ROW: f64 = 20.0;
/// Share bars: labels right-aligned before `BAR_LEFT`, 100 % at `BAR_RIGHT`.
const BAR_LEFT: f64 = 290.0;
const BAR_RIGHT: f64 = 880.0;
const LONGEST_LABEL: usize = 40;
/// One colour per row of the table, in path order (Tableau 10 and two more); end-to-end black.
const PALETTE: [&str; 12] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#ad494a",
];
const END_TO_END_COLOUR: &str = "#000000";
/// A subsegment of a path that an outage replaced: in the history, not in the table.
const FORMER_COLOUR: &str = "#aaaaaa";
/// Intervals up to this many get a dot each as well as the line.
const MOST_DOTS: usize = 200;

/// The whole picture as an SVG document.
pub fn render(report: &Report) -> String {
    let mut svg = Svg::default();
    let mut y = 30.0;
    svg.text(20.0, y, "start", "font-size=\"18\" font-weight=\"bold\"", &title(report));
    y += 20.0;
    for line in wrap(&subtitle(report), 150).iter().take(4) {
        svg.text(20.0, y, "start", "fill=\"#333\"", line);
        y += 16.0;
    }
    let rows: Vec<Series> = series(report);
    if rows.iter().all(|row| row.cdf.is_empty()) {
        y += 20.0;
        svg.text(
            20.0,
            y,
            "start",
            "",
            "no answer came back with a complete set of stamps: nothing to plot",
        );
        return svg.finish(y + 20.0);
    }
    y += 20.0;
    y = distributions(&mut svg, report, &rows, y);
    y = shares(&mut svg, report, &rows, y + 30.0);
    if report.parameters.continuous {
        y = history(&mut svg, report, &rows, y + 30.0);
    }
    svg.finish(y + 10.0)
}

/// `A → B → Z, 2026-12-01 10:54:12 UTC`.
fn title(report: &Report) -> String {
    let path = if report.path.is_empty() {
        report.parameters.forward_to.clone()
    } else {
        report.path.iter().map(|hop| hop.name.as_str()).collect::<Vec<_>>().join(" → ")
    };
    let date = report.started_at.get(..19).unwrap_or(&report.started_at).replace('T', " ");
    format!("delay per subsegment: {path}, {date} UTC")
}

fn subtitle(report: &Report) -> String {
    let mut text = format!(
        "{} frames answered of {} sent; ending: {}",
        report.frames.answered,
        report.frames.sent,
        serde_json::to_value(report.ending.reason)
            .ok()
            .and_then(|value| value.as_str().map(str::to_string))
            .unwrap_or_default()
    );
    if let Some(verdict) = &report.verdict {
        let _ = write!(text, ". verdict: {}", verdict.text);
    }
    text
}

/// One line of the picture: a row of the table, or the end-to-end round trip.
struct Series<'a> {
    label: &'a str,
    colour: &'static str,
    cdf: &'a [CdfPoint],
    p50_ns: u64,
    share: Option<f64>,
    /// What to find it by in the history: `None` is the end-to-end round trip.
    part: Option<Part>,
    width: f64,
}

fn series(report: &Report) -> Vec<Series<'_>> {
    let mut rows: Vec<Series> = report
        .subsegments
        .iter()
        .enumerate()
        .map(|(index, row)| Series {
            label: &row.label,
            colour: PALETTE[index % PALETTE.len()],
            cdf: &row.cdf,
            p50_ns: row.stats.p50_ns,
            share: Some(row.share),
            part: Some(row.part),
            width: 1.5,
        })
        .collect();
    rows.push(Series {
        label: "end-to-end",
        colour: END_TO_END_COLOUR,
        cdf: &report.end_to_end_cdf,
        p50_ns: report.end_to_end.map_or(0, |stats| stats.p50_ns),
        share: None,
        part: None,
        width: 2.5,
    });
    rows
}

/// Panel 1: the CDFs. Returns the y below it.
fn distributions(svg: &mut Svg, report: &Report, rows: &[Series], top: f64) -> f64 {
    svg.text(
        PLOT_LEFT,
        top,
        "start",
        "font-size=\"14\" font-weight=\"bold\"",
        "delay distribution per subsegment (links: round trip; hops: one way)",
    );
    let top = top + 15.0;
    let height = PLOT_HEIGHT.max(legend_height(rows.len()));
    let bottom = top + height;
    let values = rows.iter().flat_map(|row| row.cdf.iter().map(|point| point.value_ns));
    let Some(x) = LogAxis::of(values, PLOT_LEFT, PLOT_RIGHT) else { return bottom };
    let y = Linear { lo: 0.0, hi: 1.0, from_px: bottom, to_px: top };
    svg.frame(top, bottom);
    x.draw_horizontal(svg, top, bottom);
    for tenth in 0..=10 {
        let quantile = f64::from(tenth) / 10.0;
        let py = y.px(quantile);
        svg.grid_line(PLOT_LEFT, py, PLOT_RIGHT, py);
        svg.text(PLOT_LEFT - 6.0, py + 4.0, "end", "", &format!("{}", tenth * 10));
    }
    // The tail the percentiles name: p99 under the top.
    let py = y.px(0.99);
    svg.line(PLOT_LEFT, py, PLOT_RIGHT, py, "#999", 1.0, Some("2 3"));
    svg.text(PLOT_RIGHT - 4.0, py + 13.0, "end", "fill=\"#666\"", "p99");
    svg.axis_label_x((PLOT_LEFT + PLOT_RIGHT) / 2.0, bottom + 36.0, "delay (log scale)");
    svg.axis_label_y(PLOT_LEFT - 45.0, (top + bottom) / 2.0, "samples at or below (%)");
    for row in rows.iter().filter(|row| !row.cdf.is_empty()) {
        let mut d = String::new();
        for (index, point) in row.cdf.iter().enumerate() {
            let (px, py) = (x.px(point.value_ns), y.px(point.quantile));
            if index == 0 {
                let _ = write!(d, "M{px:.1},{:.1} V{py:.1}", y.px(0.0));
            } else {
                // A step: the share stays put until the next value, then rises.
                let _ = write!(d, " H{px:.1} V{py:.1}");
            }
        }
        svg.path(&d, row.colour, row.width, None, row.label);
    }
    legend(svg, report, rows, top, false);
    bottom + 40.0
}

/// Panel 2: each subsegment's share of the end-to-end median.
fn shares(svg: &mut Svg, report: &Report, rows: &[Series], top: f64) -> f64 {
    let median = report.end_to_end.map_or_else(String::new, |stats| {
        format!(" ({})", report.unit.show_with_name(stats.p50_ns))
    });
    svg.text(
        PLOT_LEFT,
        top,
        "start",
        "font-size=\"14\" font-weight=\"bold\"",
        &format!("share of the end-to-end median{median}"),
    );
    svg.text(
        PLOT_LEFT,
        top + 16.0,
        "start",
        "fill=\"#333\"",
        "each subsegment's p50 over the end-to-end p50; medians do not add up, so the shares need not sum to 100 %",
    );
    let top = top + 26.0;
    let bars: Vec<&Series> = rows.iter().filter(|row| row.share.is_some()).collect();
    let bottom = top + bars.len() as f64 * BAR_ROW + 4.0;
    let x = Linear { lo: 0.0, hi: 1.0, from_px: BAR_LEFT, to_px: BAR_RIGHT };
    for quarter in 0..=4 {
        let share = f64::from(quarter) / 4.0;
        let px = x.px(share);
        svg.grid_line(px, top, px, bottom);
        svg.text(px, bottom + 14.0, "middle", "", &format!("{} %", quarter * 25));
    }
    for (index, row) in bars.iter().enumerate() {
        let share = row.share.expect("filtered");
        let row_top = top + 4.0 + index as f64 * BAR_ROW;
        svg.text(BAR_LEFT - 8.0, row_top + 12.0, "end", "", &shorten(row.label));
        let width = x.px(share.clamp(0.0, 1.0)) - BAR_LEFT;
        let _ = writeln!(
            svg.body,
            r#"<rect x="{BAR_LEFT:.1}" y="{row_top:.1}" width="{width:.1}" height="{:.1}" fill="{}"><title>{}</title></rect>"#,
            BAR_ROW - 6.0,
            row.colour,
            escape(&format!("{}: {:.1} %", row.label, share * 100.0))
        );
        svg.text(
            BAR_LEFT + width + 5.0,
            row_top + 12.0,
            "start",
            "",
            &format!("{:.1} %", share * 100.0),
        );
    }
    bottom + 20.0
}

/// Panel 3: p50 and p99 per report interval, over the run.
fn history(svg: &mut Svg, report: &Report, rows: &[Series], top: f64) -> f64 {
    let history = &report.history;
    let every = report.parameters.report_interval_ns.map_or_else(String::new, |ns| {
        format!(" of {}", seconds(ns as f64 / 1e9, ns as f64 / 1e9))
    });
    let mut heading = format!("p50 (solid) and p99 (dashed) per report interval{every}");
    if history.dropped > 0 {
        let _ = write!(
            heading,
            ": the last {HISTORY_LEN} intervals; the {} before them are not kept",
            history.dropped
        );
    }
    svg.text(PLOT_LEFT, top, "start", "font-size=\"14\" font-weight=\"bold\"", &heading);
    let top = top + 15.0;
    if history.intervals.is_empty() {
        svg.text(PLOT_LEFT, top + 15.0, "start", "", "no report interval ended with answers");
        return top + 25.0;
    }
    let height = PLOT_HEIGHT.max(legend_height(rows.len()));
    let bottom = top + height;
    let points = |summary: &IntervalSummary| {
        summary.subsegments.iter().chain(summary.end_to_end.iter()).copied().collect::<Vec<_>>()
    };
    let values =
        history.intervals.iter().flat_map(points).flat_map(|point| [point.p50_ns, point.p99_ns]);
    let Some(y) = LogAxis::of(values, bottom, top) else { return bottom };
    let seconds_of = |unix_ns: u64| unix_ns.saturating_sub(report.started_unix_ns) as f64 / 1e9;
    let first = history.intervals.front().map_or(0.0, |summary| seconds_of(summary.end_unix_ns));
    let last = history.intervals.back().map_or(0.0, |summary| seconds_of(summary.end_unix_ns));
    let lo = if history.dropped > 0 { first } else { 0.0 };
    let x = Linear { lo, hi: last.max(lo + 1e-3), from_px: PLOT_LEFT, to_px: PLOT_RIGHT };
    svg.frame(top, bottom);
    y.draw_vertical(svg, PLOT_LEFT, PLOT_RIGHT);
    let step = nice_step(x.hi - x.lo);
    let mut tick = (x.lo / step).ceil() * step;
    while tick <= x.hi + step * 1e-9 {
        let px = x.px(tick);
        svg.grid_line(px, top, px, bottom);
        svg.text(px, bottom + 16.0, "middle", "", &seconds(tick, step));
        tick += step;
    }
    svg.axis_label_x((PLOT_LEFT + PLOT_RIGHT) / 2.0, bottom + 36.0, "time since the start (s)");
    svg.axis_label_y(PLOT_LEFT - 62.0, (top + bottom) / 2.0, "delay (log scale)");
    // One line per subsegment of the table (and end-to-end), and one per subsegment only an
    // earlier path had, in grey.
    let mut former: Vec<Part> = Vec::new();
    for summary in &history.intervals {
        for point in &summary.subsegments {
            if !rows.iter().any(|row| row.part == point.part)
                && let Some(part) = point.part
                && !former.contains(&part)
            {
                former.push(part);
            }
        }
    }
    let mut lines: Vec<(Option<Part>, &'static str, f64, String)> =
        rows.iter().map(|row| (row.part, row.colour, row.width, row.label.to_string())).collect();
    lines.extend(
        former
            .iter()
            .map(|part| (Some(*part), FORMER_COLOUR, 1.0, format!("{} (earlier path)", part.id()))),
    );
    let dots = history.intervals.len() <= MOST_DOTS;
    for (part, colour, width, label) in &lines {
        let found = |summary: &IntervalSummary| -> Option<PartSummary> {
            match part {
                None => summary.end_to_end,
                Some(_) => summary.subsegments.iter().find(|point| point.part == *part).copied(),
            }
        };
        for (which, dash) in [("p50", None), ("p99", Some("5 3"))] {
            let value =
                |point: PartSummary| if which == "p50" { point.p50_ns } else { point.p99_ns };
            let mut d = String::new();
            let mut joined = false;
            for summary in &history.intervals {
                let Some(point) = found(summary) else {
                    // No samples in that interval (an outage): the line breaks.
                    joined = false;
                    continue;
                };
                let (px, py) = (x.px(seconds_of(summary.end_unix_ns)), y.px(value(point)));
                let _ = write!(d, "{}{px:.1},{py:.1} ", if joined { "L" } else { "M" });
                joined = true;
                if dots {
                    let _ = writeln!(
                        svg.body,
                        r#"<circle cx="{px:.1}" cy="{py:.1}" r="2" fill="{colour}"/>"#
                    );
                }
            }
            if !d.is_empty() {
                svg.path(d.trim_end(), colour, *width, dash, &format!("{label} {which}"));
            }
        }
    }
    legend(svg, report, rows, top, true);
    for (index, part) in former.iter().enumerate() {
        let row_y = top + 10.0 + (rows.len() + index) as f64 * LEGEND_ROW;
        svg.line(
            LEGEND_LEFT,
            row_y - 4.0,
            LEGEND_LEFT + 18.0,
            row_y - 4.0,
            FORMER_COLOUR,
            2.0,
            None,
        );
        svg.text(LEGEND_LEFT + 24.0, row_y, "start", "", &format!("{} (earlier path)", part.id()));
    }
    bottom + 45.0
}

fn legend_height(rows: usize) -> f64 {
    rows as f64 * LEGEND_ROW + 20.0
}

/// Colour swatches with the labels (and each p50), right of a plot.
fn legend(svg: &mut Svg, report: &Report, rows: &[Series], top: f64, dashed_too: bool) {
    for (index, row) in rows.iter().enumerate() {
        let row_y = top + 10.0 + index as f64 * LEGEND_ROW;
        svg.line(LEGEND_LEFT, row_y - 4.0, LEGEND_LEFT + 18.0, row_y - 4.0, row.colour, 3.0, None);
        let label = shorten(row.label);
        let text = if dashed_too {
            label
        } else {
            format!("{label}  p50 {}", report.unit.show_with_name(row.p50_ns))
        };
        svg.text(LEGEND_LEFT + 24.0, row_y, "start", "", &text);
    }
}

/// A time axis in powers of ten, from the decade below the smallest value to the one above the
/// largest; a value of 0 ns sits at the left edge.
struct LogAxis {
    lo_log: f64,
    hi_log: f64,
    from_px: f64,
    to_px: f64,
}

impl LogAxis {
    fn of(values: impl Iterator<Item = u64>, from_px: f64, to_px: f64) -> Option<LogAxis> {
        let (mut lowest, mut highest) = (u64::MAX, 0);
        for value in values {
            lowest = lowest.min(value.max(1));
            highest = highest.max(value.max(1));
        }
        if highest == 0 {
            return None;
        }
        let lo_log = (lowest as f64).log10().floor();
        let hi_log = (highest as f64).log10().ceil().max(lo_log + 1.0);
        Some(LogAxis { lo_log, hi_log, from_px, to_px })
    }

    fn px(&self, ns: u64) -> f64 {
        let at = ((ns.max(1) as f64).log10() - self.lo_log) / (self.hi_log - self.lo_log);
        self.from_px + at.clamp(0.0, 1.0) * (self.to_px - self.from_px)
    }

    /// 1, 2 and 5 of every decade; labelled all when the decades are few, else the powers of
    /// ten only.
    fn ticks(&self) -> Vec<(u64, bool)> {
        let decades = (self.hi_log - self.lo_log) as i32;
        let mut ticks = Vec::new();
        for exponent in self.lo_log as i32..=self.hi_log as i32 {
            for mantissa in [1u64, 2, 5] {
                if exponent == self.hi_log as i32 && mantissa > 1 {
                    break;
                }
                let value = mantissa * 10u64.pow(exponent.max(0) as u32);
                ticks.push((value, mantissa == 1 || decades <= 3));
            }
        }
        ticks
    }

    fn draw_horizontal(&self, svg: &mut Svg, top: f64, bottom: f64) {
        for (value, labelled) in self.ticks() {
            let px = self.px(value);
            svg.grid_line(px, top, px, bottom);
            if labelled {
                svg.text(px, bottom + 16.0, "middle", "", &time(value));
            }
        }
    }

    fn draw_vertical(&self, svg: &mut Svg, left: f64, right: f64) {
        for (value, labelled) in self.ticks() {
            let py = self.px(value);
            svg.grid_line(left, py, right, py);
            if labelled {
                svg.text(left - 6.0, py + 4.0, "end", "", &time(value));
            }
        }
    }
}

struct Linear {
    lo: f64,
    hi: f64,
    from_px: f64,
    to_px: f64,
}

impl Linear {
    fn px(&self, value: f64) -> f64 {
        self.from_px + (value - self.lo) / (self.hi - self.lo) * (self.to_px - self.from_px)
    }
}

/// A step of 1, 2 or 5 × 10^k that cuts `span` into 4 to 10 parts.
fn nice_step(span: f64) -> f64 {
    let rough = span / 8.0;
    let power = 10f64.powf(rough.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|mantissa| mantissa * power)
        .find(|step| span / step <= 10.0)
        .unwrap_or(10.0 * power)
}

/// Seconds with as many decimals as `step` needs: `0.25 s` for a 0.05 s step.
fn seconds(value: f64, step: f64) -> String {
    let decimals = if step >= 1.0 { 0 } else { (-step.log10()).ceil() as usize };
    format!("{value:.decimals$} s")
}

/// A tick's time with its unit: `200 ns`, `5 µs`, `10 ms`, `1 s`.
fn time(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{} µs", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{} ms", ns / 1_000_000),
        _ => format!("{} s", ns / 1_000_000_000),
    }
}

/// A label cut to fit the bars' and the legend's column.
fn shorten(label: &str) -> String {
    if label.chars().count() <= LONGEST_LABEL {
        return label.to_string();
    }
    let kept: String = label.chars().take(LONGEST_LABEL - 1).collect();
    format!("{kept}…")
}

/// Words into lines of at most `width` characters (a longer word gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// Text for an SVG (XML) text node or attribute: hop names may hold anything but control
/// characters.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The document's body, element by element; the header, with the height it came to, is
/// added by [`Svg::finish`].
#[derive(Default)]
struct Svg {
    body: String,
}

impl Svg {
    fn text(&mut self, x: f64, y: f64, anchor: &str, attributes: &str, content: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" {attributes}>{}</text>"#,
            escape(content)
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        x1: f64,
        y1: f64,
        x2: f64,
        y2: f64,
        colour: &str,
        width: f64,
        dash: Option<&str>,
    ) {
        let dash = dash.map_or_else(String::new, |dash| format!(r#" stroke-dasharray="{dash}""#));
        let _ = writeln!(
            self.body,
            r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{colour}" stroke-width="{width}"{dash}/>"#
        );
    }

    fn grid_line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64) {
        self.line(x1, y1, x2, y2, "#e4e4e4", 1.0, None);
    }

    /// The plot area's border.
    fn frame(&mut self, top: f64, bottom: f64) {
        let _ = writeln!(
            self.body,
            r##"<rect x="{PLOT_LEFT:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#888"/>"##,
            PLOT_RIGHT - PLOT_LEFT,
            bottom - top
        );
    }

    fn path(&mut self, d: &str, colour: &str, width: f64, dash: Option<&str>, title: &str) {
        let dash = dash.map_or_else(String::new, |dash| format!(r#" stroke-dasharray="{dash}""#));
        let _ = writeln!(
            self.body,
            r#"<path d="{d}" fill="none" stroke="{colour}" stroke-width="{width}" stroke-linejoin="round"{dash}><title>{}</title></path>"#,
            escape(title)
        );
    }

    fn axis_label_x(&mut self, x: f64, y: f64, text: &str) {
        self.text(x, y, "middle", "font-size=\"13\"", text);
    }

    fn axis_label_y(&mut self, x: f64, y: f64, text: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" font-size="13" transform="rotate(-90 {x:.1} {y:.1})">{}</text>"#,
            escape(text)
        );
    }

    fn finish(self, height: f64) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" viewBox="0 0 {WIDTH} {height:.0}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
{}</svg>
"#,
            self.body
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::Presentation;
    use super::super::tests::{report_of, run_with_links};
    use super::*;

    /// Rendered to pixels: how many differ from the white background.
    fn painted(svg: &str) -> (f64, u32, u32) {
        let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default())
            .unwrap_or_else(|error| panic!("not an SVG ({error}):\n{svg}"));
        let size = tree.size().to_int_size();
        let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
        pixmap.fill(resvg::tiny_skia::Color::WHITE);
        resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
        let pixels = pixmap.pixels();
        let coloured = pixels
            .iter()
            .filter(|pixel| (pixel.red(), pixel.green(), pixel.blue()) != (255, 255, 255))
            .count();
        (coloured as f64 / pixels.len() as f64, size.width(), size.height())
    }

    fn report() -> Report {
        report_of(&run_with_links(10_000, 40_000, 100), Presentation::default(), &[])
    }

    #[test]
    fn test_a_probe_run_has_distributions_and_shares_but_no_history() {
        let svg = render(&report());
        for says in [
            "delay per subsegment: A → B → Z, 1970-01-01 00:00:00 UTC",
            "verdict: B ⇄ Z adds the most delay",
            "delay distribution per subsegment",
            "samples at or below (%)",
            "delay (log scale)",
            "share of the end-to-end median",
            ">B ⇄ Z  p50 40.0 µs</text>",
            ">end-to-end  p50 50.0 µs</text>",
            ">10 µs</text>",
            ">80.0 %</text>",
        ] {
            assert!(svg.contains(says), "{says}:\n{svg}");
        }
        assert!(!svg.contains("per report interval"), "{svg}");
        let (share, width, _) = painted(&svg);
        assert_eq!(width, 1000);
        assert!(share > 0.01, "{share}");
    }

    #[test]
    fn test_names_are_escaped() {
        let mut run = run_with_links(10_000, 40_000, 100);
        run.path[1].name = "<b&\"x'>".to_string();
        let svg = render(&report_of(&run, Presentation::default(), &[]));
        assert!(svg.contains("&lt;b&amp;&quot;x&#39;&gt; ⇄ Z"), "{svg}");
        painted(&svg);
    }

    #[test]
    fn test_a_continuous_run_draws_every_interval_and_breaks_at_a_gap() {
        let mut report = report();
        report.parameters.continuous = true;
        report.parameters.report_interval_ns = Some(100_000_000);
        report.started_unix_ns = 1_000_000_000;
        for index in 0..20u64 {
            let point = |part, p50_ns| PartSummary { part, p50_ns, p99_ns: p50_ns * 3 };
            // Interval 7 had no answers (an outage), and an earlier path had a link 2-3.
            let subsegments = match index {
                7 => Vec::new(),
                0 => vec![point(Some(Part::Link(1)), 40_000), point(Some(Part::Link(2)), 9_000)],
                _ => vec![point(Some(Part::Link(1)), 40_000 + index * 1_000)],
            };
            report.history.push(IntervalSummary {
                index,
                end_unix_ns: 1_000_000_000 + (index + 1) * 100_000_000,
                end_to_end: (index != 7).then(|| point(None, 50_000)),
                subsegments,
            });
        }
        let svg = render(&report);
        for says in [
            "p50 (solid) and p99 (dashed) per report interval of 0.1 s",
            "time since the start (s)",
            ">2.0 s</text>",
            "<title>B ⇄ Z p99</title>",
            "<title>end-to-end p50</title>",
            ">2-3 (earlier path)</text>",
        ] {
            assert!(svg.contains(says), "{says}:\n{svg}");
        }
        let line = svg
            .lines()
            .find(|line| line.contains("<title>B ⇄ Z p50</title>"))
            .expect("a line for B ⇄ Z");
        assert_eq!(line.matches('M').count(), 2, "broken once at the gap: {line}");
        assert_eq!(line.matches('L').count(), 17, "{line}");
        painted(&svg);
        report.history.dropped = 3;
        assert!(render(&report).contains("the last 10000 intervals; the 3 before them"));
    }

    #[test]
    fn test_nothing_to_plot_says_so() {
        let run = crate::source::Run::ended(
            crate::source::Ending::Failed { message: "no".into(), broken_link: None },
            true,
        );
        let svg = render(&report_of(&run, Presentation::default(), &[]));
        assert!(svg.contains("nothing to plot"), "{svg}");
        assert!(svg.contains("ending: failed"), "{svg}");
        painted(&svg);
    }

    #[test]
    fn test_axes_helpers() {
        assert_eq!(time(200), "200 ns");
        assert_eq!(time(5_000), "5 µs");
        assert_eq!(time(10_000_000), "10 ms");
        assert_eq!(time(2_000_000_000), "2 s");
        assert_eq!(nice_step(0.7), 0.1);
        assert_eq!(nice_step(60.0), 10.0);
        assert_eq!(seconds(0.25, 0.05), "0.25 s");
        let axis = LogAxis::of([1_500, 40_000].into_iter(), 0.0, 300.0).unwrap();
        assert_eq!((axis.lo_log, axis.hi_log), (3.0, 5.0));
        assert_eq!(axis.px(1_000), 0.0);
        assert_eq!(axis.px(100_000), 300.0);
        assert_eq!(axis.px(0), 0.0, "0 ns sits at the edge");
        let ticks: Vec<u64> = axis.ticks().into_iter().map(|(value, _)| value).collect();
        assert_eq!(ticks, [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000]);
        assert_eq!(wrap("aa bb cc", 5), ["aa bb", "cc"]);
        assert_eq!(shorten(&"x".repeat(50)).chars().count(), LONGEST_LABEL);
    }
}
