//! SLA thresholds: `--sla SUBSEGMENT:STAT<VALUE` parsed from the command line, resolved against
//! the path once it is known, and judged on a report (the final one, and each interval's).
//!
//! SUBSEGMENT is an id (`1-2`, `1.down`, `3.echo`), hop names where they are unambiguous
//! (`B-C`, `B.down`, `Z.echo`), `link` (every link), `relay` (every residence) or
//! `end-to-end`. STAT is p50, p90, p99, p99.9, max, mean, jitter, or loss (end to end only: a
//! lost frame carries no stamps to say where it was lost). VALUE has a unit: `500us`, `2ms`,
//! `0.1%`. A threshold is met when the value is strictly below it; a subsegment with no
//! samples cannot show that, so it counts as breached.

use serde::Serialize;

use super::{Report, Stats, Subsegment, Unit};
use crate::stats::Part;

/// The id the end-to-end row goes by in specs and results.
pub const END_TO_END: &str = "end-to-end";

#[derive(Debug, Clone, PartialEq)]
pub struct SlaSpec {
    /// As the user wrote it.
    pub text: String,
    pub target: Target,
    pub stat: Stat,
    pub limit: Limit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `1-2`, `1.down`, `1.up`, `3.echo`.
    Id(String),
    /// Hop names in the id's shape: `B-C`, `B.down`, `Z.echo`.
    Names(String),
    AllLinks,
    AllRelays,
    EndToEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    P50,
    P90,
    P99,
    P999,
    Max,
    Mean,
    Jitter,
    /// Missing frames over frames sent, in percent.
    Loss,
}

impl Stat {
    pub fn name(&self) -> &'static str {
        match self {
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P99 => "p99",
            Stat::P999 => "p99.9",
            Stat::Max => "max",
            Stat::Mean => "mean",
            Stat::Jitter => "jitter",
            Stat::Loss => "loss",
        }
    }

    fn of(&self, stats: &Stats) -> u64 {
        match self {
            Stat::P50 => stats.p50_ns,
            Stat::P90 => stats.p90_ns,
            Stat::P99 => stats.p99_ns,
            Stat::P999 => stats.p999_ns,
            Stat::Max => stats.max_ns,
            Stat::Mean => stats.mean_ns,
            Stat::Jitter => stats.jitter_ns,
            Stat::Loss => unreachable!("loss is not a time"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    Nanoseconds(u64),
    Percent(f64),
}

const STATS: [Stat; 8] =
    [Stat::P50, Stat::P90, Stat::P99, Stat::P999, Stat::Max, Stat::Mean, Stat::Jitter, Stat::Loss];

impl SlaSpec {
    pub fn parse(text: &str) -> Result<SlaSpec, String> {
        let shape = "expected SUBSEGMENT:STAT<VALUE, e.g. 1-2:p99<500us or end-to-end:loss<0.1%";
        let (left, value) = text.split_once('<').ok_or_else(|| format!("'{text}': {shape}"))?;
        let (subsegment, stat) =
            left.rsplit_once(':').ok_or_else(|| format!("'{text}': {shape}"))?;
        let stat = STATS.into_iter().find(|candidate| candidate.name() == stat).ok_or_else(|| {
            format!(
                "'{text}': unknown statistic '{stat}' (use p50, p90, p99, p99.9, max, mean, jitter or loss)"
            )
        })?;
        let target = match subsegment {
            "" => return Err(format!("'{text}': no subsegment before ':'; {shape}")),
            END_TO_END => Target::EndToEnd,
            "link" => Target::AllLinks,
            "relay" => Target::AllRelays,
            id if is_id(id) => Target::Id(id.to_string()),
            names => Target::Names(names.to_string()),
        };
        if stat == Stat::Loss && target != Target::EndToEnd {
            return Err(format!(
                "'{text}': loss is measured end to end only (a lost frame carries no stamps to say where it was lost); use end-to-end:loss<VALUE%"
            ));
        }
        let limit = parse_limit(value).map_err(|error| format!("'{text}': {error}"))?;
        match (stat, limit) {
            (Stat::Loss, Limit::Nanoseconds(_)) => {
                return Err(format!("'{text}': loss takes a percentage, e.g. 0.1%"));
            }
            (_, Limit::Percent(_)) if stat != Stat::Loss => {
                return Err(format!("'{text}': {} takes a time, e.g. 500us or 2ms", stat.name()));
            }
            _ => {}
        }
        Ok(SlaSpec { text: text.to_string(), target, stat, limit })
    }
}

/// `1-2`, `0.down`, `1.up`, `3.echo`: hop indices, as the report's ids.
fn is_id(text: &str) -> bool {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if let Some((from, to)) = text.split_once('-') {
        return digits(from) && digits(to);
    }
    match text.split_once('.') {
        Some((hop, "down" | "up" | "echo")) => digits(hop),
        _ => false,
    }
}

fn parse_limit(text: &str) -> Result<Limit, String> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a number with a unit"))?;
    let scale = match unit {
        "%" if value <= 100.0 => return Ok(Limit::Percent(value)),
        "%" => return Err(format!("'{text}': a percentage is at most 100%")),
        "" => return Err(format!("'{text}' needs a unit (ns, us, ms, s, or % for loss)")),
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        other => {
            return Err(format!("unknown unit '{other}' in '{text}' (use ns, us, ms, s or %)"));
        }
    };
    let ns = value * scale;
    if !(ns.is_finite() && ns <= 3.6e12) {
        return Err(format!("'{text}' is out of range (at most one hour)"));
    }
    Ok(Limit::Nanoseconds(ns.round() as u64))
}

/// The ids a target names on a path whose parts and hop names are these. An error lists the
/// path's ids.
pub fn resolve(target: &Target, parts: &[Part], names: &[String]) -> Result<Vec<String>, String> {
    let ids = || {
        let mut ids: Vec<String> = parts.iter().map(Part::id).collect();
        ids.push(END_TO_END.to_string());
        ids.join(", ")
    };
    let name = |hop: usize| names.get(hop).map_or("?", String::as_str);
    let named = |part: &Part| match *part {
        Part::Link(hop) => format!("{}-{}", name(hop), name(hop + 1)),
        Part::ResidenceDown(hop) => format!("{}.down", name(hop)),
        Part::ResidenceUp(hop) => format!("{}.up", name(hop)),
        Part::Turn(hop) => format!("{}.echo", name(hop)),
    };
    let found: Vec<String> = match target {
        Target::EndToEnd => return Ok(vec![END_TO_END.to_string()]),
        Target::AllLinks => {
            parts.iter().filter(|part| matches!(part, Part::Link(_))).map(Part::id).collect()
        }
        Target::AllRelays => parts
            .iter()
            .filter(|part| matches!(part, Part::ResidenceDown(_) | Part::ResidenceUp(_)))
            .map(Part::id)
            .collect(),
        Target::Id(id) => parts.iter().map(Part::id).filter(|candidate| candidate == id).collect(),
        Target::Names(text) => {
            let found: Vec<String> =
                parts.iter().filter(|part| named(part) == *text).map(Part::id).collect();
            if found.len() > 1 {
                return Err(format!(
                    "'{text}' names more than one subsegment ({}); use an id: {}",
                    found.join(", "),
                    ids()
                ));
            }
            found
        }
    };
    if found.is_empty() {
        let what = match target {
            Target::AllLinks => "the path has no link".to_string(),
            Target::AllRelays => "the path has no relay".to_string(),
            Target::Id(text) | Target::Names(text) => {
                format!("the path has no subsegment '{text}'")
            }
            Target::EndToEnd => unreachable!("returned above"),
        };
        return Err(format!("{what}; its subsegments are: {}", ids()));
    }
    Ok(found)
}

/// One threshold judged on one subsegment.
#[derive(Debug, Clone, Serialize)]
pub struct SlaResult {
    pub spec: String,
    /// A subsegment id, or `end-to-end`.
    pub subsegment: String,
    pub stat: &'static str,
    /// Time thresholds.
    pub limit_ns: Option<u64>,
    pub value_ns: Option<u64>,
    /// Loss thresholds.
    pub limit_percent: Option<f64>,
    pub value_percent: Option<f64>,
    /// Samples the value rests on (frames sent, for loss).
    pub count: u64,
    pub breached: bool,
}

impl SlaResult {
    /// One line for people: `B ⇄ C p99 612.3 µs, limit 500.0 µs: breached`.
    pub fn describe(&self, unit: &Unit, label: Option<&str>) -> String {
        let label = label.unwrap_or(&self.subsegment);
        let verdict = if self.breached { "breached" } else { "met" };
        match (self.limit_ns, self.limit_percent) {
            (Some(limit), _) => match self.value_ns {
                Some(value) => format!(
                    "{label} {} {} (limit {}): {verdict}",
                    self.stat,
                    unit.show_with_name(value),
                    unit.show_with_name(limit)
                ),
                None => format!(
                    "{label} {} (limit {}): no samples, so breached",
                    self.stat,
                    unit.show_with_name(limit)
                ),
            },
            (_, Some(limit)) => format!(
                "{label} loss {:.3}% of {} frames (limit {limit}%): {verdict}",
                self.value_percent.unwrap_or(0.0),
                self.count
            ),
            (None, None) => unreachable!("every result has a limit"),
        }
    }
}

/// Every spec judged on `report`; a spec that names nothing on this path is left out (the
/// source refuses such specs once the path is known, before any frame is sent).
pub fn evaluate(specs: &[SlaSpec], report: &Report) -> Vec<SlaResult> {
    let names: Vec<String> = report.path.iter().map(|hop| hop.name.clone()).collect();
    let Some(end_to_end) = &report.end_to_end else {
        return Vec::new();
    };
    let frames = (report.frames.sent, report.frames.missing);
    evaluate_rows(specs, &report.subsegments, &names, end_to_end, frames)
}

/// Every spec judged on these rows (a report's, or one interval's); `frames` is (sent, lost).
pub fn evaluate_rows(
    specs: &[SlaSpec],
    rows: &[Subsegment],
    names: &[String],
    end_to_end: &Stats,
    (sent, lost): (u64, u64),
) -> Vec<SlaResult> {
    let parts: Vec<Part> = rows.iter().map(|row| row.part).collect();
    let mut results = Vec::new();
    for spec in specs {
        let Ok(ids) = resolve(&spec.target, &parts, names) else { continue };
        for id in ids {
            let stats = rows.iter().find(|row| row.id == id).map_or(end_to_end, |row| &row.stats);
            results.push(judge(spec, id, stats, sent, lost));
        }
    }
    results
}

fn judge(spec: &SlaSpec, subsegment: String, stats: &Stats, sent: u64, missing: u64) -> SlaResult {
    let mut result = SlaResult {
        spec: spec.text.clone(),
        subsegment,
        stat: spec.stat.name(),
        limit_ns: None,
        value_ns: None,
        limit_percent: None,
        value_percent: None,
        count: stats.count,
        breached: true,
    };
    match spec.limit {
        Limit::Percent(limit) => {
            let value = if sent == 0 { 0.0 } else { missing as f64 * 100.0 / sent as f64 };
            result.limit_percent = Some(limit);
            result.value_percent = Some(value);
            result.count = sent;
            result.breached = sent == 0 || value >= limit;
        }
        Limit::Nanoseconds(limit) => {
            result.limit_ns = Some(limit);
            if stats.count > 0 {
                let value = spec.stat.of(stats);
                result.value_ns = Some(value);
                result.breached = value >= limit;
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Presentation;
    use crate::report::tests::{report_of, run_with_links};

    #[test]
    fn test_every_form_parses() {
        let spec = SlaSpec::parse("1-2:p99<500us").unwrap();
        assert_eq!(spec.target, Target::Id("1-2".into()));
        assert_eq!((spec.stat, spec.limit), (Stat::P99, Limit::Nanoseconds(500_000)));
        let spec = SlaSpec::parse("B-C:p99.9<2ms").unwrap();
        assert_eq!(spec.target, Target::Names("B-C".into()));
        assert_eq!((spec.stat, spec.limit), (Stat::P999, Limit::Nanoseconds(2_000_000)));
        assert_eq!(
            SlaSpec::parse("1.down:max<1s").unwrap().limit,
            Limit::Nanoseconds(1_000_000_000)
        );
        assert_eq!(
            SlaSpec::parse("3.echo:jitter<10µs").unwrap().target,
            Target::Id("3.echo".into())
        );
        assert_eq!(SlaSpec::parse("link:mean<100ns").unwrap().target, Target::AllLinks);
        assert_eq!(SlaSpec::parse("relay:p50<1.5us").unwrap().limit, Limit::Nanoseconds(1_500));
        let loss = SlaSpec::parse("end-to-end:loss<0.1%").unwrap();
        assert_eq!((loss.target, loss.limit), (Target::EndToEnd, Limit::Percent(0.1)));
        assert_eq!(
            SlaSpec::parse("[::1]:9-x:p50<1ms").unwrap().target,
            Target::Names("[::1]:9-x".into())
        );
    }

    #[test]
    fn test_malformed_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("1-2:p99", "expected SUBSEGMENT:STAT<VALUE"),
            ("p99<5ms", "expected SUBSEGMENT:STAT<VALUE"),
            (":p99<5ms", "no subsegment"),
            ("1-2:p95<5ms", "unknown statistic 'p95'"),
            ("1-2:p99<5", "needs a unit"),
            ("1-2:p99<5h", "unknown unit 'h'"),
            ("1-2:p99<abc", "not a number"),
            ("1-2:p99<5%", "p99 takes a time"),
            ("end-to-end:loss<5ms", "loss takes a percentage"),
            ("end-to-end:loss<101%", "at most 100%"),
            ("1-2:loss<1%", "loss is measured end to end only"),
            ("1-2:max<2h", "unknown unit"),
            ("1-2:max<3601s", "out of range"),
        ] {
            let error = SlaSpec::parse(spec).unwrap_err();
            assert!(error.contains(says), "{spec}: {error}");
        }
    }

    #[test]
    fn test_resolving_names_and_ids_against_the_path() {
        let parts = [
            Part::Link(0),
            Part::ResidenceDown(1),
            Part::ResidenceUp(1),
            Part::Link(1),
            Part::Turn(2),
        ];
        let names: Vec<String> = ["A", "B", "Z"].map(String::from).to_vec();
        let ids = |spec: &str| resolve(&SlaSpec::parse(spec).unwrap().target, &parts, &names);
        assert_eq!(ids("B-Z:p50<1ms").unwrap(), ["1-2"]);
        assert_eq!(ids("B.up:p50<1ms").unwrap(), ["1.up"]);
        assert_eq!(ids("link:p50<1ms").unwrap(), ["0-1", "1-2"]);
        assert_eq!(ids("relay:p50<1ms").unwrap(), ["1.down", "1.up"]);
        let unknown = ids("2-3:p50<1ms").unwrap_err();
        assert!(
            unknown.contains("no subsegment '2-3'")
                && unknown.contains("0-1, 1.down, 1.up, 1-2, 2.echo, end-to-end"),
            "{unknown}"
        );
        // Two hops called B: B-B names two links.
        let names: Vec<String> = ["B", "B", "B"].map(String::from).to_vec();
        let twice = resolve(&Target::Names("B-B".into()), &parts, &names).unwrap_err();
        assert!(twice.contains("more than one subsegment (0-1, 1-2)"), "{twice}");
    }

    #[test]
    fn test_judged_strictly_below_and_marked() {
        let run = run_with_links(10_000, 40_000, 100);
        let specs: Vec<SlaSpec> =
            ["1-2:p50<40ms", "1-2:p50<40us", "end-to-end:loss<1%", "link:max<30us"]
                .iter()
                .map(|text| SlaSpec::parse(text).unwrap())
                .collect();
        let report = report_of(&run, Presentation::default(), &specs);
        let breached: Vec<(String, bool)> =
            report.sla.iter().map(|result| (result.subsegment.clone(), result.breached)).collect();
        let expect =
            [("1-2", false), ("1-2", true), ("end-to-end", false), ("0-1", false), ("1-2", true)];
        assert_eq!(breached, expect.map(|(id, breached)| (id.to_string(), breached)));
        assert!(report.sla_breached());
        let text = crate::report::text::render(&report);
        assert!(text.contains("sla: B ⇄ Z p50 40.0 µs (limit 40.0 µs): breached"), "{text}");
        assert!(
            text.contains("sla: end-to-end loss 0.000% of 100 frames (limit 1%): met"),
            "{text}"
        );
        assert!(text.contains("SLA breached"), "{text}");
    }
}
