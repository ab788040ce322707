//! One report interval of a continuous run: that interval's own statistics (histograms reset
//! each interval), frame counts and SLA results, as a JSON line (`{"type":"interval", ...}`)
//! and a one-line summary for stderr. Built by the loop as a snapshot; written by the output
//! thread. For `--plot`, the source also keeps a bounded [`History`] of each interval's p50
//! and p99 per subsegment.

use std::collections::VecDeque;

use serde::Serialize;

use super::sla::{self, SlaResult, SlaSpec};
use super::{Stats, Subsegment, Unit, rfc3339, subsegment};
use crate::stats::{self, Chain, Part, Symbols};
use crate::wire::PathEntry;

#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Always `interval`: tells the JSON lines apart (the last one is the `summary`).
    #[serde(rename = "type")]
    pub record: &'static str,
    pub schema_version: u32,
    /// 0 for the run's first interval.
    pub index: u64,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub frames: IntervalFrames,
    pub subsegments: Vec<Subsegment>,
    pub end_to_end: Option<Stats>,
    pub sla: Vec<SlaResult>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct IntervalFrames {
    /// Sent during the interval.
    pub sent: u64,
    /// Answered during the interval (some may have been sent in the one before).
    pub answered: u64,
    /// Sent and not yet answered when the interval ended.
    pub in_flight: u64,
    /// Lost to a broken chain during the interval.
    pub lost: u64,
    /// Outages that began during the interval.
    pub outages: u64,
}

impl Interval {
    pub fn build(
        index: u64,
        (start_unix_ns, end_unix_ns): (u64, u64),
        chain: &Chain,
        frames: IntervalFrames,
        specs: &[SlaSpec],
        symbols: Symbols,
    ) -> Interval {
        let labels = stats::hop_labels(&chain.path);
        let has_samples = chain.end_to_end.count() > 0;
        let end_to_end_p50 = chain.end_to_end.p50_ns();
        let subsegments: Vec<Subsegment> = chain
            .parts
            .iter()
            .map(|series| subsegment(series, &labels, symbols, end_to_end_p50))
            .collect();
        let end_to_end = Stats::of(&chain.end_to_end);
        let names: Vec<String> =
            chain.path.iter().map(|entry: &PathEntry| entry.name.clone()).collect();
        let sla = sla::evaluate_rows(
            specs,
            &subsegments,
            &names,
            &end_to_end,
            (frames.sent, frames.lost),
        );
        Interval {
            record: "interval",
            schema_version: super::SCHEMA_VERSION,
            index,
            start_unix_ns,
            end_unix_ns,
            frames,
            subsegments,
            end_to_end: has_samples.then_some(end_to_end),
            sla,
        }
    }

    /// The line for stderr: time, the worst subsegment with its p50 and p99, loss, breaches.
    pub fn line(&self, unit: &Unit) -> String {
        let frames = &self.frames;
        let loss =
            if frames.sent == 0 { 0.0 } else { frames.lost as f64 * 100.0 / frames.sent as f64 };
        let worst = self
            .subsegments
            .iter()
            .filter(|row| row.stats.count > 0)
            .max_by_key(|row| row.stats.p50_ns);
        let delay = match (worst, &self.end_to_end) {
            (Some(row), Some(end_to_end)) => format!(
                "highest p50 {} ({}, p99 {}); end-to-end p50 {}, p99 {}",
                row.label,
                unit.show_with_name(row.stats.p50_ns),
                unit.show_with_name(row.stats.p99_ns),
                unit.show_with_name(end_to_end.p50_ns),
                unit.show_with_name(end_to_end.p99_ns),
            ),
            _ => "no answer with a complete set of stamps".to_string(),
        };
        let breaches: Vec<&str> = self
            .sla
            .iter()
            .filter(|result| result.breached)
            .map(|result| result.spec.as_str())
            .collect();
        let breaches = if breaches.is_empty() {
            String::new()
        } else {
            format!("; SLA breached: {}", breaches.join(", "))
        };
        format!(
            "interval {} ending {}: {delay}; frames sent {}, answered {}, lost {} ({loss:.2}%){}{breaches}",
            self.index,
            &rfc3339(self.end_unix_ns)[11..19],
            frames.sent,
            frames.answered,
            frames.lost,
            match frames.outages {
                0 => String::new(),
                1 => "; 1 outage".to_string(),
                outages => format!("; {outages} outages"),
            },
        )
    }
}

/// The most intervals a [`History`] keeps: past it the oldest go (a day and more at the
/// default 10 s interval; 10 000 × a few hundred bytes at most).
pub const HISTORY_LEN: usize = 10_000;

/// What the plot shows of one interval: when it ended, and each subsegment's p50 and p99.
#[derive(Debug, Clone, PartialEq)]
pub struct IntervalSummary {
    pub index: u64,
    pub end_unix_ns: u64,
    /// The subsegments that had samples in the interval, in path order.
    pub subsegments: Vec<PartSummary>,
    pub end_to_end: Option<PartSummary>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartSummary {
    /// `None` for the end-to-end round trip.
    pub part: Option<Part>,
    pub p50_ns: u64,
    pub p99_ns: u64,
}

/// A continuous run's last [`HISTORY_LEN`] interval summaries, oldest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    pub intervals: VecDeque<IntervalSummary>,
    /// Intervals that were dropped, oldest first, to keep the bound.
    pub dropped: u64,
}

impl History {
    pub fn push(&mut self, summary: IntervalSummary) {
        if self.intervals.len() == HISTORY_LEN {
            self.intervals.pop_front();
            self.dropped += 1;
        }
        self.intervals.push_back(summary);
        debug_assert!(self.intervals.len() <= HISTORY_LEN, "the history stays bounded");
    }
}

impl Interval {
    /// What the history keeps of this interval.
    pub fn summary(&self) -> IntervalSummary {
        let of = |part: Option<Part>, stats: &Stats| PartSummary {
            part,
            p50_ns: stats.p50_ns,
            p99_ns: stats.p99_ns,
        };
        IntervalSummary {
            index: self.index,
            end_unix_ns: self.end_unix_ns,
            subsegments: self
                .subsegments
                .iter()
                .filter(|row| row.stats.count > 0)
                .map(|row| of(Some(row.part), &row.stats))
                .collect(),
            end_to_end: self.end_to_end.as_ref().map(|stats| of(None, stats)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(index: u64) -> IntervalSummary {
        IntervalSummary {
            index,
            end_unix_ns: index * 1_000,
            subsegments: vec![PartSummary { part: Some(Part::Link(0)), p50_ns: 1, p99_ns: 2 }],
            end_to_end: None,
        }
    }

    #[test]
    fn test_the_history_keeps_the_last_intervals_and_counts_the_dropped() {
        let mut history = History::default();
        for index in 0..HISTORY_LEN as u64 + 5 {
            history.push(summary(index));
        }
        assert_eq!(history.intervals.len(), HISTORY_LEN);
        assert_eq!(history.dropped, 5);
        assert_eq!(history.intervals.front().map(|summary| summary.index), Some(5));
        assert_eq!(
            history.intervals.back().map(|summary| summary.index),
            Some(HISTORY_LEN as u64 + 4)
        );
    }
}
