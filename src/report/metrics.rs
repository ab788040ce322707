//! Prometheus metrics: the snapshot a loop publishes (a few times a second, see
//! [`crate::scrape`]) and its encoding in the OpenMetrics text format with the official
//! `prometheus-client` crate. No sockets here, and nothing the loop would wait for.
//!
//! The delay histograms are kept in the loop as cumulative bucket counts since the chain's path
//! was discovered: one array increment per subsegment per answered frame (a binary search over
//! at most [`MAX_BUCKETS`] bounds finds the bucket). Building them at publish time from the
//! run's hdrhistograms instead would walk some 30 000 counters per subsegment several times a
//! second inside the measuring loop; the increments cost less than a stamp, and a publish copies
//! the counts. Buckets: a [`BucketLayout`], exponential, by default upper bounds 5 µs × 2^k for
//! k = 0..=21 (5 µs to 10.49 s), then `+Inf`; a bucket is then a factor 2 wide, so
//! `histogram_quantile` is within a factor 2 of the truth, and exact enough to alert on a p99
//! crossing a threshold. `--metrics-buckets FIRST,FACTOR,COUNT` chooses another layout.
//!
//! Names (prefix `subsegment_tcp_speeds_`, the crate adds `_total` to counters and `_seconds`
//! to the unit): see the README's "Prometheus" section.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::sla::{SlaResult, SlaSpec};
use crate::core::ResidenceSink;
use crate::kernel;
use crate::source::Run;
use crate::stats::{Chain, Part, hop_labels};
use crate::wire::{Direction, FaultCode};

/// Every metric's name starts with this (and `_`).
pub const PREFIX: &str = "subsegment_tcp_speeds";
/// The most finite buckets a layout may have: each is a series per subsegment in Prometheus.
pub const MAX_BUCKETS: usize = 64;
/// A layout's first bound at least and at most, in ns.
pub const FIRST_BOUND_RANGE_NS: (u64, u64) = (100, 10_000_000_000);
/// A layout's factor at most.
pub const MAX_FACTOR: f64 = 10.0;
/// A layout's last bound at most: the longest delay the histograms tell apart, one hour.
pub const MAX_BOUND_NS: u64 = 3_600_000_000_000;

/// Exponential bucket bounds: `first × factor^k` for k = 0..count, rounded to the ns, then
/// `+Inf` (what Prometheus's client libraries call `exponential_buckets(start, factor, count)`).
#[derive(Debug, Clone, PartialEq)]
pub struct BucketLayout {
    pub first_ns: u64,
    pub factor: f64,
    pub count: usize,
    /// The finite upper bounds, ascending.
    bounds_ns: std::sync::Arc<[u64]>,
}

impl Default for BucketLayout {
    /// 5 µs × 2^k for k = 0..=21: 5 µs to 10.49 s.
    fn default() -> BucketLayout {
        BucketLayout::new(5_000, 2.0, 22).expect("the default layout is within the limits")
    }
}

impl BucketLayout {
    /// Checks the limits: the first bound within [`FIRST_BOUND_RANGE_NS`], a factor above 1 and
    /// at most [`MAX_FACTOR`], 1 to [`MAX_BUCKETS`] buckets, each bound above the one before
    /// once rounded to the ns, and the last at most [`MAX_BOUND_NS`].
    pub fn new(first_ns: u64, factor: f64, count: usize) -> Result<BucketLayout, String> {
        let (lowest, highest) = FIRST_BOUND_RANGE_NS;
        if !(lowest..=highest).contains(&first_ns) {
            return Err(format!(
                "the first bound must be from 100ns to 10s, not {}",
                show(first_ns)
            ));
        }
        if !(factor.is_finite() && factor > 1.0 && factor <= MAX_FACTOR) {
            return Err(format!("the factor must be above 1 and at most 10, not {factor}"));
        }
        if !(1..=MAX_BUCKETS).contains(&count) {
            return Err(format!("the count must be from 1 to {MAX_BUCKETS}, not {count}"));
        }
        let mut bounds_ns = Vec::with_capacity(count);
        for k in 0..count {
            let bound = first_ns as f64 * factor.powi(k as i32);
            if bound > MAX_BOUND_NS as f64 {
                return Err(format!(
                    "bucket {} would end at {:.0} s, past the 1 h the histograms reach (fewer \
                     buckets, or a smaller factor)",
                    k + 1,
                    bound / 1e9
                ));
            }
            let bound = bound.round() as u64;
            if bounds_ns.last().is_some_and(|&previous| bound <= previous) {
                return Err(format!(
                    "buckets {k} and {} round to the same {bound} ns (a larger factor, or a \
                     larger first bound)",
                    k + 1
                ));
            }
            bounds_ns.push(bound);
        }
        Ok(BucketLayout { first_ns, factor, count, bounds_ns: bounds_ns.into() })
    }

    /// `FIRST,FACTOR,COUNT` with FIRST a duration (`5us`, `0.1ms`; a bare number is seconds),
    /// as `--metrics-buckets` takes it; `parse_duration` is the command line's.
    pub fn parse(
        text: &str,
        parse_duration: impl Fn(&str) -> Result<std::time::Duration, String>,
    ) -> Result<BucketLayout, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let [first, factor, count] = parts[..] else {
            return Err(format!("'{text}': expected FIRST,FACTOR,COUNT, e.g. 5us,2,22"));
        };
        let first_ns = parse_duration(first)?.as_nanos();
        let factor: f64 =
            factor.parse().map_err(|_| format!("'{factor}' is not a factor (e.g. 2 or 1.5)"))?;
        let count: usize =
            count.parse().map_err(|_| format!("'{count}' is not a number of buckets"))?;
        BucketLayout::new(u64::try_from(first_ns).unwrap_or(u64::MAX), factor, count)
    }

    /// The finite upper bounds, ascending, in ns.
    pub fn bounds_ns(&self) -> &[u64] {
        &self.bounds_ns
    }

    /// The bucket a sample falls in: the first whose bound it does not exceed (Prometheus's
    /// `le`); `count` (the `+Inf` bucket) past the last.
    pub fn bucket_of(&self, sample_ns: u64) -> usize {
        self.bounds_ns.partition_point(|&bound| bound < sample_ns)
    }
}

/// A bound as one would write it on the command line: `50ns`, `7.5us`, `20s`.
fn show(ns: u64) -> String {
    match ns {
        ns if ns >= 1_000_000_000 => format!("{}s", ns as f64 / 1e9),
        ns if ns >= 1_000_000 => format!("{}ms", ns as f64 / 1e6),
        ns if ns >= 1_000 => format!("{}us", ns as f64 / 1e3),
        ns => format!("{ns}ns"),
    }
}

/// Cumulative counts since start of one delay series, per bucket of its layout (not yet summed
/// up); the last counts the samples past every bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Buckets {
    layout: BucketLayout,
    counts: Vec<u64>,
    pub count: u64,
    pub sum_ns: u128,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets::new(&BucketLayout::default())
    }
}

impl Buckets {
    pub fn new(layout: &BucketLayout) -> Buckets {
        Buckets { layout: layout.clone(), counts: vec![0; layout.count + 1], count: 0, sum_ns: 0 }
    }

    /// A negative sample (a bug, counted elsewhere) is left out, as the histograms do.
    pub fn add(&mut self, sample_ns: i64) {
        let Ok(sample_ns) = u64::try_from(sample_ns) else { return };
        self.add_ns(sample_ns);
    }

    pub fn add_ns(&mut self, sample_ns: u64) {
        self.counts[self.layout.bucket_of(sample_ns)] += 1;
        self.count += 1;
        self.sum_ns += u128::from(sample_ns);
    }

    /// `(upper bound in seconds, count in that bucket)` as the encoder takes them.
    fn encoder_buckets(&self) -> Vec<(f64, u64)> {
        let bounds = self.layout.bounds_ns().iter().map(|&bound| bound as f64 / 1e9);
        bounds.chain([f64::INFINITY]).zip(self.counts.iter().copied()).collect()
    }
}

pub type Labels = Vec<(&'static str, String)>;
type KernelField = fn(&KernelEnd) -> Option<u64>;

/// What the source publishes.
#[derive(Debug, Clone, Default)]
pub struct SourceSnapshot {
    pub chain: String,
    /// Per subsegment: its labels (without `chain`) and its delay buckets.
    pub subsegments: Vec<(Labels, Buckets)>,
    pub end_to_end: Option<Buckets>,
    pub frames: FrameCounts,
    /// Per `--sla` spec: report intervals in which it was breached.
    pub sla_breaches: Vec<(String, u64)>,
    pub outages: u64,
    pub kernel: Vec<KernelEnd>,
}

/// The run's frame counters, under the JSON's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounts {
    pub sent: u64,
    pub answered: u64,
    /// Sent and not answered (in flight included), so it can fall: a gauge.
    pub missing: u64,
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicated: u64,
}

/// One end of a link as its kernel last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelEnd {
    /// The link's id (`0-1`) and `near` (hop i's downstream socket) or `far`.
    pub link: String,
    pub end: &'static str,
    pub srtt_ns: Option<u64>,
    pub min_rtt_ns: Option<u64>,
    /// Growth during the run.
    pub retransmits: Option<u64>,
}

/// What a relay, the echoing end, an egress or an ingress publishes: totals since it started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HopSnapshot {
    pub hop: String,
    /// `relay`, `egress` or `echo`.
    pub role: &'static str,
    pub accepted: u64,
    pub refused_not_allowed: u64,
    pub refused_max_conns: u64,
    pub refused_out_of_descriptors: u64,
    pub active: u64,
    pub frames_down: u64,
    pub frames_up: u64,
    pub bytes_down: u64,
    pub bytes_up: u64,
    /// Connections closed with a fault, by where it came from and its code.
    pub faults: FaultCounts,
    /// Connections this hop closed before their orderly end, indexed as [`CLOSE_REASONS`].
    pub closed: [u64; CLOSE_REASONS.len()],
    /// Arrival → write stamp of every frame carrying this hop's record, per direction.
    pub residence: Option<HopResidence>,
    /// At an ingress: the `chain` label of its paths' delay histograms (`--metrics-chain`,
    /// else its name).
    pub chain: String,
    /// At an ingress: each distinct path's delay histograms, as a source keeps them.
    pub paths: Vec<PathDelays>,
}

/// `origin` of a fault: this hop's own (its next hop failed, bad input from it, the hop
/// limit), or one reported further down and passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOrigin {
    ThisHop,
    PassedOn,
}

impl FaultOrigin {
    fn name(self) -> &'static str {
        match self {
            FaultOrigin::ThisHop => "this_hop",
            FaultOrigin::PassedOn => "passed_on",
        }
    }
}

/// Connections closed on a fault, per origin and [`FaultCode`] (every pair is served, zero
/// or not, so `increase()` sees the first one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounts {
    this_hop: [u64; FaultCode::ALL.len()],
    passed_on: [u64; FaultCode::ALL.len()],
}

impl FaultCounts {
    pub fn add(&mut self, origin: FaultOrigin, code: FaultCode) {
        self.count_mut(origin)[code as usize - 1] += 1;
    }

    pub fn get(&self, origin: FaultOrigin, code: FaultCode) -> u64 {
        match origin {
            FaultOrigin::ThisHop => self.this_hop[code as usize - 1],
            FaultOrigin::PassedOn => self.passed_on[code as usize - 1],
        }
    }

    fn count_mut(&mut self, origin: FaultOrigin) -> &mut [u64; FaultCode::ALL.len()] {
        match origin {
            FaultOrigin::ThisHop => &mut self.this_hop,
            FaultOrigin::PassedOn => &mut self.passed_on,
        }
    }
}

/// `reason` of `hop_connections_closed_total`: why a hop closed a connection before its
/// orderly end (the upstream peer's read or write failed, it broke the protocol, the next hop
/// gave up while it did not read, no progress, the drain ran out). A chain broken by a fault
/// is counted by its code in `hop_faults_total` instead.
pub const CLOSE_REASONS: [&str; 6] = [
    "upstream_read",
    "upstream_write",
    "bad_upstream",
    "next_hop_gave_up",
    "no_progress",
    "stopped",
];

/// A hop's residence, per direction of its records: kept in the loop (an integer bucket
/// increment per frame, fed by the connection core's [`ResidenceSink`]) and copied into each
/// snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct HopResidence {
    pub down: Buckets,
    pub up: Buckets,
    /// At the echoing end, and an egress's receipts for an ingress: read going down, written
    /// going up.
    pub turn: Buckets,
}

impl HopResidence {
    pub fn new(layout: &BucketLayout) -> HopResidence {
        HopResidence {
            down: Buckets::new(layout),
            up: Buckets::new(layout),
            turn: Buckets::new(layout),
        }
    }
}

impl ResidenceSink for HopResidence {
    fn residence(&mut self, direction: Direction, residence_ns: u64) {
        match direction {
            Direction::Down => self.down.add_ns(residence_ns),
            Direction::Up => self.up.add_ns(residence_ns),
            Direction::Turn => self.turn.add_ns(residence_ns),
        }
    }
}

/// One of an ingress's distinct paths: its number (1-based, as its reports count them) and
/// its delay histograms.
#[derive(Debug, Clone, PartialEq)]
pub struct PathDelays {
    pub path: usize,
    pub subsegments: Vec<(Labels, Buckets)>,
    pub end_to_end: Option<Buckets>,
}

#[derive(Debug, Clone, Default)]
pub enum Snapshot {
    /// Nothing published yet (the source before its path is known has its counters, though).
    #[default]
    Empty,
    Source(Box<SourceSnapshot>),
    Hop(Box<HopSnapshot>),
}

/// The source's accumulator in the loop: bucket counts per subsegment (since the path was last
/// discovered) and SLA breaches per spec; the rest is read from the [`Run`] when publishing.
#[derive(Debug, Default)]
pub struct SourceRecorder {
    chain: String,
    layout: BucketLayout,
    labels: Vec<Labels>,
    parts: Vec<Buckets>,
    end_to_end: Buckets,
    sla_breaches: Vec<(String, u64)>,
}

impl SourceRecorder {
    pub fn new(chain: String, slas: &[SlaSpec], layout: BucketLayout) -> SourceRecorder {
        SourceRecorder {
            chain,
            end_to_end: Buckets::new(&layout),
            layout,
            sla_breaches: slas.iter().map(|spec| (spec.text.clone(), 0)).collect(),
            ..SourceRecorder::default()
        }
    }

    /// A new chain (the first path, or a changed one): its subsegments, counts from zero.
    pub fn start(&mut self, chain: &Chain) {
        let names = hop_labels(&chain.path);
        let name = |hop: usize| names.get(hop).cloned().unwrap_or_default();
        self.labels = chain
            .parts
            .iter()
            .map(|series| {
                let id = ("subsegment", series.part.id());
                match series.part {
                    Part::Link(at) => vec![
                        id,
                        ("kind", "link".to_string()),
                        ("from", name(at)),
                        ("to", name(at + 1)),
                    ],
                    Part::ResidenceDown(at) | Part::ResidenceUp(at) | Part::Turn(at) => {
                        let (kind, direction) = match series.part {
                            Part::ResidenceDown(_) => ("relay", "down"),
                            Part::ResidenceUp(_) => ("relay", "up"),
                            _ => ("echo", "turn"),
                        };
                        vec![
                            id,
                            ("kind", kind.to_string()),
                            ("hop", name(at)),
                            ("direction", direction.to_string()),
                        ]
                    }
                }
            })
            .collect();
        self.parts = vec![Buckets::new(&self.layout); chain.parts.len()];
        self.end_to_end = Buckets::new(&self.layout);
    }

    /// One answered frame: its samples per part (in the chain's order) and end to end.
    pub fn record(&mut self, samples: &[i64], end_to_end_ns: i64) {
        for (buckets, &sample) in self.parts.iter_mut().zip(samples) {
            buckets.add(sample);
        }
        self.end_to_end.add(end_to_end_ns);
    }

    /// A report interval's SLA results.
    pub fn interval(&mut self, results: &[SlaResult]) {
        for result in results.iter().filter(|result| result.breached) {
            if let Some((_, count)) =
                self.sla_breaches.iter_mut().find(|(spec, _)| *spec == result.spec)
            {
                *count += 1;
            }
        }
    }

    /// Each subsegment's labels (without `chain`) and counts, and end to end's; `None` before
    /// a path is known.
    pub fn delays(&self) -> (Vec<(Labels, Buckets)>, Option<Buckets>) {
        let subsegments = self.labels.iter().cloned().zip(self.parts.iter().cloned()).collect();
        (subsegments, (!self.labels.is_empty()).then(|| self.end_to_end.clone()))
    }

    pub fn snapshot(&self, run: &Run) -> SourceSnapshot {
        let sequencing = &run.sequencing;
        let mut kernel = Vec::new();
        for (index, (near, far)) in run.kernel.ends.iter().enumerate() {
            for (end, name) in [(near, "near"), (far, "far")] {
                if end.samples > 0 {
                    kernel.push(KernelEnd {
                        link: Part::Link(index).id(),
                        end: name,
                        srtt_ns: end.last.rtt_ns,
                        min_rtt_ns: end.min_rtt_ns,
                        retransmits: end.delta(|info: &kernel::TcpInfo| info.total_retrans),
                    });
                }
            }
        }
        let (subsegments, end_to_end) = self.delays();
        SourceSnapshot {
            chain: self.chain.clone(),
            subsegments,
            end_to_end,
            frames: FrameCounts {
                sent: sequencing.sent,
                answered: sequencing.answered,
                missing: sequencing.missing(),
                lost: sequencing.lost,
                out_of_order: sequencing.out_of_order,
                duplicated: sequencing.duplicated,
            },
            sla_breaches: self.sla_breaches.clone(),
            outages: run.outages.len() as u64,
            kernel,
        }
    }
}

/// The snapshot in the OpenMetrics text format (ending in `# EOF`).
pub fn encode(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(SnapshotCollector(snapshot.clone())));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .expect("writing to a String cannot fail");
    text
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        match &self.0 {
            Snapshot::Empty => Ok(()),
            Snapshot::Source(source) => encode_source(source, &mut encoder),
            Snapshot::Hop(hop) => encode_hop(hop, &mut encoder),
        }
    }
}

fn with(base: &Labels, more: &[(&'static str, String)]) -> Labels {
    base.iter().cloned().chain(more.iter().cloned()).collect()
}

fn counter(encoder: &mut MetricEncoder, labels: &impl EncodeLabelSet, value: u64) -> fmt::Result {
    encoder.encode_family(labels)?.encode_counter::<NoLabelSet, u64, u64>(&value, None)
}

fn gauge(encoder: &mut MetricEncoder, labels: &impl EncodeLabelSet, value: f64) -> fmt::Result {
    encoder.encode_family(labels)?.encode_gauge(&value)
}

fn histogram(encoder: &mut MetricEncoder, labels: &Labels, buckets: &Buckets) -> fmt::Result {
    encoder.encode_family(labels)?.encode_histogram::<NoLabelSet>(
        buckets.sum_ns as f64 / 1e9,
        buckets.count,
        &buckets.encoder_buckets(),
        None,
    )
}

/// The delay histograms of a source, or of an ingress's paths: each family once, with every
/// series under it (`labels` complete, `chain` included).
fn encode_delays(
    encoder: &mut DescriptorEncoder,
    subsegments: &[(Labels, &Buckets)],
    end_to_end: &[(Labels, &Buckets)],
) -> fmt::Result {
    if !subsegments.is_empty() {
        let mut family = encoder.encode_descriptor(
            "subsegment_delay",
            "Delay of one subsegment (a link's round trip without the next hop's holding time, \
             or a hop's residence), per answered frame, since the path was discovered",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, buckets) in subsegments {
            histogram(&mut family, labels, buckets)?;
        }
    }
    if !end_to_end.is_empty() {
        let mut family = encoder.encode_descriptor(
            "end_to_end_delay",
            "Round trip from the source (or an ingress) to the echoing end (or the egress) and \
             back, per answered frame",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (labels, buckets) in end_to_end {
            histogram(&mut family, labels, buckets)?;
        }
    }
    Ok(())
}

fn encode_source(source: &SourceSnapshot, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let chain: Labels = vec![("chain", source.chain.clone())];
    let subsegments: Vec<(Labels, &Buckets)> = source
        .subsegments
        .iter()
        .map(|(labels, buckets)| (with(&chain, labels), buckets))
        .collect();
    let end_to_end: Vec<(Labels, &Buckets)> =
        source.end_to_end.iter().map(|buckets| (chain.clone(), buckets)).collect();
    encode_delays(encoder, &subsegments, &end_to_end)?;
    let frames = source.frames;
    for (name, help, value) in [
        ("frames_sent", "Frames sent", frames.sent),
        ("frames_answered", "Frames answered", frames.answered),
        ("frames_lost", "Frames given up for lost when the chain broke", frames.lost),
        ("frames_out_of_order", "Answers that came before an earlier frame's", frames.out_of_order),
        ("frames_duplicated", "Answers that came twice", frames.duplicated),
        ("outages", "Times the chain broke during a continuous run", source.outages),
    ] {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        counter(&mut family, &chain, value)?;
    }
    let mut family = encoder.encode_descriptor(
        "frames_missing",
        "Frames sent and not answered (those in flight included)",
        None,
        MetricType::Gauge,
    )?;
    gauge(&mut family, &chain, frames.missing as f64)?;
    if !source.sla_breaches.is_empty() {
        let mut family = encoder.encode_descriptor(
            "sla_breaches",
            "Report intervals in which the --sla spec was breached",
            None,
            MetricType::Counter,
        )?;
        for (spec, count) in &source.sla_breaches {
            counter(&mut family, &with(&chain, &[("sla", spec.clone())]), *count)?;
        }
    }
    let seconds = |ns: u64| ns as f64 / 1e9;
    let kernel_gauges: [(&str, &str, KernelField); 2] = [
        ("kernel_srtt", "The kernel's smoothed RTT of the link's socket at this end", |end| {
            end.srtt_ns
        }),
        ("kernel_min_rtt", "The lowest RTT the kernel saw at this end of the link", |end| {
            end.min_rtt_ns
        }),
    ];
    for (name, help, field) in kernel_gauges {
        if source.kernel.iter().all(|end| field(end).is_none()) {
            continue;
        }
        let mut family =
            encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Gauge)?;
        for end in &source.kernel {
            if let Some(ns) = field(end) {
                let labels = with(&chain, &[("link", end.link.clone()), ("end", end.end.into())]);
                gauge(&mut family, &labels, seconds(ns))?;
            }
        }
    }
    if source.kernel.iter().any(|end| end.retransmits.is_some()) {
        let mut family = encoder.encode_descriptor(
            "kernel_retransmits",
            "Segments the kernel retransmitted on the link's socket at this end",
            None,
            MetricType::Counter,
        )?;
        for end in &source.kernel {
            if let Some(count) = end.retransmits {
                let labels = with(&chain, &[("link", end.link.clone()), ("end", end.end.into())]);
                counter(&mut family, &labels, count)?;
            }
        }
    }
    Ok(())
}

fn encode_hop(hop: &HopSnapshot, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let labels: Labels = vec![("hop", hop.hop.clone()), ("role", hop.role.to_string())];
    let labelled = |key: &'static str, value: &str| with(&labels, &[(key, value.to_string())]);
    let mut family = encoder.encode_descriptor(
        "hop_connections_accepted",
        "Connections accepted",
        None,
        MetricType::Counter,
    )?;
    counter(&mut family, &labels, hop.accepted)?;
    let mut family = encoder.encode_descriptor(
        "hop_connections_refused",
        "Connections refused at accept, by reason",
        None,
        MetricType::Counter,
    )?;
    for (reason, count) in [
        ("not_allowed", hop.refused_not_allowed),
        ("max_conns", hop.refused_max_conns),
        ("out_of_descriptors", hop.refused_out_of_descriptors),
    ] {
        counter(&mut family, &labelled("reason", reason), count)?;
    }
    let mut family = encoder.encode_descriptor(
        "hop_connections_active",
        "Connections open now",
        None,
        MetricType::Gauge,
    )?;
    gauge(&mut family, &labels, hop.active as f64)?;
    let mut family = encoder.encode_descriptor(
        "hop_frames",
        "Frames passed on, down (towards the echoing end) and up",
        None,
        MetricType::Counter,
    )?;
    counter(&mut family, &labelled("direction", "down"), hop.frames_down)?;
    counter(&mut family, &labelled("direction", "up"), hop.frames_up)?;
    let mut family = encoder.encode_descriptor(
        // With the unit: `hop_bytes_total`.
        "hop",
        "Bytes passed on, down and up",
        Some(&Unit::Bytes),
        MetricType::Counter,
    )?;
    counter(&mut family, &labelled("direction", "down"), hop.bytes_down)?;
    counter(&mut family, &labelled("direction", "up"), hop.bytes_up)?;
    let mut family = encoder.encode_descriptor(
        "hop_faults",
        "Connections closed on a fault, by its code: this hop's own (its next hop failed or sent \
         bad input, the hop limit) or one reported further down and passed on",
        None,
        MetricType::Counter,
    )?;
    for origin in [FaultOrigin::ThisHop, FaultOrigin::PassedOn] {
        for code in FaultCode::ALL {
            let labels =
                with(&labels, &[("origin", origin.name().into()), ("code", code.name().into())]);
            counter(&mut family, &labels, hop.faults.get(origin, code))?;
        }
    }
    let mut family = encoder.encode_descriptor(
        "hop_connections_closed",
        "Connections this hop closed before their orderly end, by reason (a broken chain is \
         counted in hop_faults by its code)",
        None,
        MetricType::Counter,
    )?;
    for (reason, count) in CLOSE_REASONS.iter().zip(hop.closed) {
        counter(&mut family, &labelled("reason", reason), count)?;
    }
    if let Some(residence) = &hop.residence {
        let mut family = encoder.encode_descriptor(
            "hop_residence",
            "Time a frame spent in this hop: its arrival (the kernel's receive timestamp, or the \
             read) to the write stamp of its hand-over on, per direction of the hop's record",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (direction, buckets) in residence_series(hop.role, residence) {
            histogram(&mut family, &labelled("direction", direction), buckets)?;
        }
    }
    let chain: Labels = vec![("chain", hop.chain.clone())];
    let mut subsegments = Vec::new();
    let mut end_to_end = Vec::new();
    for path in &hop.paths {
        let path_labels = with(&chain, &[("path", path.path.to_string())]);
        for (labels, buckets) in &path.subsegments {
            subsegments.push((with(&path_labels, labels), buckets));
        }
        if let Some(buckets) = &path.end_to_end {
            end_to_end.push((path_labels, buckets));
        }
    }
    encode_delays(encoder, &subsegments, &end_to_end)
}

/// The directions a hop of this role stamps, and any other that has samples: a relay's down
/// and up, the echoing end's turn, an egress's three (down and up for a source, turn and up
/// for an ingress), an ingress's down (its own record on the client's bytes and probes) and up
/// (a server frame's arrival to its payload's hand-over to the client).
fn residence_series<'a>(
    role: &str,
    residence: &'a HopResidence,
) -> Vec<(&'static str, &'a Buckets)> {
    let expected: &[&str] = match role {
        "relay" => &["down", "up"],
        "echo" => &["turn"],
        "ingress" => &["down", "up"],
        _ => &["down", "up", "turn"],
    };
    [("down", &residence.down), ("up", &residence.up), ("turn", &residence.turn)]
        .into_iter()
        .filter(|(direction, buckets)| expected.contains(direction) || buckets.count > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line's duration syntax, enough of it for these tests.
    fn duration(text: &str) -> Result<std::time::Duration, String> {
        let (number, scale) = match text {
            text if text.ends_with("us") => (&text[..text.len() - 2], 1e-6),
            text if text.ends_with("ms") => (&text[..text.len() - 2], 1e-3),
            text if text.ends_with("ns") => (&text[..text.len() - 2], 1e-9),
            text => (text.trim_end_matches('s'), 1.0),
        };
        let value: f64 = number.parse().map_err(|_| format!("'{text}' is not a duration"))?;
        Ok(std::time::Duration::from_secs_f64(value * scale))
    }

    #[test]
    fn a_sample_falls_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        let layout = BucketLayout::default();
        let expected: Vec<u64> = (0..22).map(|k| 5_000u64 << k).collect();
        assert_eq!(layout.bounds_ns(), &expected[..], "5 µs × 2^k, k = 0..=21");
        assert!(*layout.bounds_ns().last().unwrap() > 10_000_000_000, "the last passes 10 s");
        assert_eq!(layout.bucket_of(0), 0);
        assert_eq!(layout.bucket_of(5_000), 0);
        assert_eq!(layout.bucket_of(5_001), 1);
        assert_eq!(layout.bucket_of(10_000), 1);
        assert_eq!(layout.bucket_of(10_001), 2);
        assert_eq!(layout.bucket_of(expected[21]), 21);
        assert_eq!(layout.bucket_of(expected[21] + 1), 22, "+Inf");
        assert_eq!(layout.bucket_of(u64::MAX), 22);
        // Against the definition, on a spread of values and another layout.
        let fine = BucketLayout::parse("1us,1.5,40", duration).unwrap();
        for layout in [&layout, &fine] {
            for sample in (0..40_000_000u64).step_by(4_999).chain([1, 2, 4_999, 20_000, 20_001]) {
                let bounds = layout.bounds_ns();
                let expected = bounds.iter().position(|&b| sample <= b).unwrap_or(bounds.len());
                assert_eq!(layout.bucket_of(sample), expected, "{sample} ns in {layout:?}");
            }
        }
    }

    #[test]
    fn a_bucket_layout_is_parsed_and_held_to_its_limits() {
        assert_eq!(BucketLayout::parse("5us,2,22", duration).unwrap(), BucketLayout::default());
        let decades = BucketLayout::parse("0.1ms, 10, 6", duration).unwrap();
        assert_eq!(
            decades.bounds_ns(),
            [100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000, 10_000_000_000]
        );
        let finer = BucketLayout::parse("10us,1.5,4", duration).unwrap();
        assert_eq!(finer.bounds_ns(), [10_000, 15_000, 22_500, 33_750]);
        for (text, error) in [
            ("5us,2", "expected FIRST,FACTOR,COUNT"),
            ("5us,2,22,1", "expected FIRST,FACTOR,COUNT"),
            ("5xs,2,22", "not a duration"),
            ("5us,two,22", "'two' is not a factor"),
            ("5us,2,-1", "'-1' is not a number of buckets"),
            ("50ns,2,22", "from 100ns to 10s, not 50ns"),
            ("20s,2,2", "from 100ns to 10s, not 20s"),
            ("5us,1,22", "above 1 and at most 10"),
            ("5us,11,3", "above 1 and at most 10"),
            ("5us,NaN,3", "above 1 and at most 10"),
            ("5us,2,0", "from 1 to 64"),
            ("5us,1.1,65", "from 1 to 64"),
            ("1s,10,5", "bucket 5 would end at 10000 s, past the 1 h"),
            ("100ns,1.001,10", "round to the same 100 ns"),
        ] {
            let got = BucketLayout::parse(text, duration).unwrap_err();
            assert!(got.contains(error), "{text}: {got}");
        }
        // At the limits.
        assert_eq!(BucketLayout::parse("100ns,1.3,64", duration).unwrap().count, 64);
        assert!(BucketLayout::parse("1s,10,4", duration).is_ok(), "1 s to 1000 s");
    }

    #[test]
    fn another_layout_encodes_its_own_bounds() {
        let layout = BucketLayout::parse("100us,10,3", duration).unwrap();
        let mut buckets = Buckets::new(&layout);
        for sample in [50_000, 100_000, 2_000_000, 20_000_000_000] {
            buckets.add(sample);
        }
        let snapshot = Snapshot::Source(Box::new(SourceSnapshot {
            chain: "A".to_string(),
            end_to_end: Some(buckets),
            ..SourceSnapshot::default()
        }));
        let text = encode(&snapshot);
        let buckets: Vec<&str> = text.lines().filter(|line| line.contains("_bucket{")).collect();
        assert_eq!(
            buckets,
            [
                "subsegment_tcp_speeds_end_to_end_delay_seconds_bucket{le=\"0.0001\",chain=\"A\"} 2",
                "subsegment_tcp_speeds_end_to_end_delay_seconds_bucket{le=\"0.001\",chain=\"A\"} 2",
                "subsegment_tcp_speeds_end_to_end_delay_seconds_bucket{le=\"0.01\",chain=\"A\"} 3",
                "subsegment_tcp_speeds_end_to_end_delay_seconds_bucket{le=\"+Inf\",chain=\"A\"} 4",
            ],
            "{text}"
        );
    }

    #[test]
    fn a_source_snapshot_encodes_as_openmetrics_with_cumulative_buckets() {
        let mut buckets = Buckets::default();
        for sample in [3_000, 7_000, 8_000, -5, 20_000_000_000] {
            buckets.add(sample);
        }
        assert_eq!(buckets.count, 4);
        let link = vec![
            ("subsegment", "1-2".to_string()),
            ("kind", "link".to_string()),
            ("from", "B".to_string()),
            ("to", "C".to_string()),
        ];
        let snapshot = Snapshot::Source(Box::new(SourceSnapshot {
            chain: "A".to_string(),
            subsegments: vec![(link, buckets.clone())],
            end_to_end: Some(buckets),
            frames: FrameCounts { sent: 10, answered: 9, missing: 1, ..FrameCounts::default() },
            sla_breaches: vec![("1-2:p99<500us".to_string(), 2)],
            outages: 1,
            kernel: vec![KernelEnd {
                link: "0-1".to_string(),
                end: "near",
                srtt_ns: Some(50_000),
                min_rtt_ns: Some(20_000),
                retransmits: Some(3),
            }],
        }));
        let text = encode(&snapshot);
        for line in [
            "# TYPE subsegment_tcp_speeds_subsegment_delay_seconds histogram",
            "# UNIT subsegment_tcp_speeds_subsegment_delay_seconds seconds",
            "subsegment_tcp_speeds_subsegment_delay_seconds_bucket{le=\"0.000005\",chain=\"A\",subsegment=\"1-2\",kind=\"link\",from=\"B\",to=\"C\"} 1",
            "subsegment_tcp_speeds_subsegment_delay_seconds_bucket{le=\"0.00001\",chain=\"A\",subsegment=\"1-2\",kind=\"link\",from=\"B\",to=\"C\"} 3",
            "subsegment_tcp_speeds_subsegment_delay_seconds_bucket{le=\"+Inf\",chain=\"A\",subsegment=\"1-2\",kind=\"link\",from=\"B\",to=\"C\"} 4",
            "subsegment_tcp_speeds_subsegment_delay_seconds_count{chain=\"A\",subsegment=\"1-2\",kind=\"link\",from=\"B\",to=\"C\"} 4",
            "subsegment_tcp_speeds_end_to_end_delay_seconds_count{chain=\"A\"} 4",
            "subsegment_tcp_speeds_frames_sent_total{chain=\"A\"} 10",
            "subsegment_tcp_speeds_frames_missing{chain=\"A\"} 1.0",
            "subsegment_tcp_speeds_outages_total{chain=\"A\"} 1",
            "subsegment_tcp_speeds_sla_breaches_total{chain=\"A\",sla=\"1-2:p99<500us\"} 2",
            "subsegment_tcp_speeds_kernel_srtt_seconds{chain=\"A\",link=\"0-1\",end=\"near\"} 0.00005",
            "subsegment_tcp_speeds_kernel_retransmits_total{chain=\"A\",link=\"0-1\",end=\"near\"} 3",
        ] {
            assert!(text.lines().any(|got| got == line), "no line {line} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn a_hop_snapshot_has_bounded_labels() {
        let layout = BucketLayout::parse("1us,10,3", duration).unwrap();
        let mut residence = HopResidence::new(&layout);
        for (direction, ns) in
            [(Direction::Down, 500), (Direction::Down, 20_000), (Direction::Up, 2_000)]
        {
            residence.residence(direction, ns);
        }
        let mut hop = HopSnapshot {
            hop: "B".to_string(),
            role: "relay",
            accepted: 3,
            refused_not_allowed: 1,
            active: 2,
            frames_down: 100,
            bytes_down: 51_200,
            residence: Some(residence),
            closed: [0, 0, 0, 0, 2, 0],
            ..HopSnapshot::default()
        };
        hop.faults.add(FaultOrigin::ThisHop, FaultCode::Unreachable);
        hop.faults.add(FaultOrigin::PassedOn, FaultCode::NoAnswer);
        hop.faults.add(FaultOrigin::PassedOn, FaultCode::NoAnswer);
        let text = encode(&Snapshot::Hop(Box::new(hop)));
        for line in [
            "subsegment_tcp_speeds_hop_connections_accepted_total{hop=\"B\",role=\"relay\"} 3",
            "subsegment_tcp_speeds_hop_connections_refused_total{hop=\"B\",role=\"relay\",reason=\"not_allowed\"} 1",
            "subsegment_tcp_speeds_hop_connections_active{hop=\"B\",role=\"relay\"} 2.0",
            "subsegment_tcp_speeds_hop_frames_total{hop=\"B\",role=\"relay\",direction=\"down\"} 100",
            "subsegment_tcp_speeds_hop_bytes_total{hop=\"B\",role=\"relay\",direction=\"down\"} 51200",
            "subsegment_tcp_speeds_hop_faults_total{hop=\"B\",role=\"relay\",origin=\"this_hop\",code=\"unreachable\"} 1",
            "subsegment_tcp_speeds_hop_faults_total{hop=\"B\",role=\"relay\",origin=\"this_hop\",code=\"no_answer\"} 0",
            "subsegment_tcp_speeds_hop_faults_total{hop=\"B\",role=\"relay\",origin=\"passed_on\",code=\"no_answer\"} 2",
            "subsegment_tcp_speeds_hop_faults_total{hop=\"B\",role=\"relay\",origin=\"passed_on\",code=\"too_many_hops\"} 0",
            "subsegment_tcp_speeds_hop_connections_closed_total{hop=\"B\",role=\"relay\",reason=\"no_progress\"} 2",
            "# TYPE subsegment_tcp_speeds_hop_residence_seconds histogram",
            "subsegment_tcp_speeds_hop_residence_seconds_bucket{le=\"0.000001\",hop=\"B\",role=\"relay\",direction=\"down\"} 1",
            "subsegment_tcp_speeds_hop_residence_seconds_bucket{le=\"0.00001\",hop=\"B\",role=\"relay\",direction=\"down\"} 1",
            "subsegment_tcp_speeds_hop_residence_seconds_bucket{le=\"0.0001\",hop=\"B\",role=\"relay\",direction=\"down\"} 2",
            "subsegment_tcp_speeds_hop_residence_seconds_count{hop=\"B\",role=\"relay\",direction=\"down\"} 2",
            "subsegment_tcp_speeds_hop_residence_seconds_sum{hop=\"B\",role=\"relay\",direction=\"down\"} 0.0000205",
            "subsegment_tcp_speeds_hop_residence_seconds_count{hop=\"B\",role=\"relay\",direction=\"up\"} 1",
        ] {
            assert!(text.lines().any(|got| got == line), "no line {line} in:\n{text}");
        }
        // Fourteen fault series (7 codes × 2 origins), and no turn at a relay that has none.
        assert_eq!(text.lines().filter(|line| line.contains("hop_faults_total{")).count(), 14);
        assert!(!text.contains("direction=\"turn\""), "{text}");
        // No delay histograms at a hop that is not an ingress.
        assert!(!text.contains("subsegment_delay"), "{text}");
        assert_eq!(encode(&Snapshot::Empty), "# EOF\n");
    }
}
