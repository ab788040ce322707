//! The report as a value: what a run found (path, per-subsegment statistics, end-to-end,
//! frames, throughput, schedule, verdict, SLA results, ending, parameters, times), built once
//! from the source's [`Run`] and its statistics. Everything a renderer prints is decided here:
//! the verdict and its words, the shares, the SLA results, the points of each distribution and
//! a continuous run's interval history. [`text`] renders it for people, [`json`] for machines
//! (the same value, serialised with serde), [`plot`] as an SVG picture; none computes anything
//! another would need.
//!
//! All times are integer nanoseconds. Percentiles come from hdrhistogram at 3 significant
//! digits (a p99 of 1 234 567 ns is exact to ±1 000 ns); `sum_ns`, `min_ns` and `max_ns` are
//! exact, and `mean_ns` is the exact mean rounded to the nanosecond.

mod evidence;
pub mod interval;
pub mod json;
pub mod metrics;
pub mod plot;
pub mod sla;
pub mod text;
pub mod verdict;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::kernel;
use crate::output::Dropped;
use crate::source::{Ending, Run, Schedule, UNLOADED_FRAMES};
use crate::stats::{self, Chain, Part, Series, Symbols};
use crate::wire::{PathEntry, Role};
use interval::History;
use sla::{SlaResult, SlaSpec};
use verdict::{DelayKind, Doubt, Verdict};

/// The version of the JSON document. Within a version fields are only added; renaming or
/// removing one, or changing its meaning, bumps it (and the README says so).
pub const SCHEMA_VERSION: u32 = 1;
/// Runs shorter than this get no rates: a rate would say more about one round trip.
const MIN_RATE_NS: u64 = 10_000_000;

/// Every option that shapes a run, as the source was given them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Parameters {
    pub name: String,
    /// The first hop as the user wrote it, and as it resolved.
    pub forward_to: String,
    pub forward_to_addr: String,
    /// `stdin` or `probes`.
    pub input: &'static str,
    pub block_size: usize,
    pub probe_count: Option<u64>,
    pub probe_size: Option<usize>,
    pub interval_ns: Option<u64>,
    pub window: Option<u64>,
    pub timeout_ns: u64,
    pub duration_ns: Option<u64>,
    pub report_interval_ns: Option<u64>,
    pub continuous: bool,
    pub sla: Vec<String>,
    pub tags: BTreeMap<String, String>,
    pub units: &'static str,
    pub busy_poll: bool,
    pub cpu: Option<usize>,
    pub realtime: bool,
    pub mlock: bool,
    /// Every hop was asked for its sockets' `TCP_INFO`, and for transmit timestamps.
    pub kernel_info: bool,
    pub kernel_stamps: bool,
    /// Which writes asked for transmit timestamps, and so gave the `tx_` figures: `off`,
    /// `sample` (one write per socket every 10 ms) or `all`.
    pub kernel_stamps_mode: &'static str,
    /// Every hop was asked for `TCP_QUICKACK` after each read (`--quickack`).
    pub quickack: bool,
}

/// The unit the text report shows times in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Units {
    /// µs, or ms when the median round trip is 10 ms or more.
    #[default]
    Auto,
    Microseconds,
    Milliseconds,
}

impl Units {
    pub fn name(&self) -> &'static str {
        match self {
            Units::Auto => "auto",
            Units::Microseconds => "us",
            Units::Milliseconds => "ms",
        }
    }
}

/// How the text (and the verdict's words) are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Presentation {
    pub units: Units,
    pub symbols: Symbols,
}

/// A time unit for people, fixed for one report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Unit {
    pub name: &'static str,
    pub ns: f64,
    pub decimals: usize,
}

impl Unit {
    pub fn choose(presentation: Presentation, end_to_end_p50_ns: u64) -> Unit {
        let micro = match presentation.symbols {
            Symbols::Unicode => "µs",
            Symbols::Ascii => "us",
        };
        let milliseconds = Unit { name: "ms", ns: 1e6, decimals: 2 };
        let microseconds = Unit { name: micro, ns: 1e3, decimals: 1 };
        match presentation.units {
            Units::Microseconds => microseconds,
            Units::Milliseconds => milliseconds,
            Units::Auto if end_to_end_p50_ns >= 10_000_000 => milliseconds,
            Units::Auto => microseconds,
        }
    }

    pub fn show(&self, ns: f64) -> String {
        format!("{:.*}", self.decimals, ns / self.ns)
    }

    /// With the unit's name: `12.3 µs`.
    pub fn show_with_name(&self, ns: u64) -> String {
        format!("{} {}", self.show(ns as f64), self.name)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Tool {
    pub name: &'static str,
    pub version: &'static str,
}

/// When the run started and ended, by the wall clock (for people and logs; no delay is ever
/// computed from it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Times {
    pub started_unix_ns: u64,
    pub ended_unix_ns: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Every frame came back (or the continuous run's `--duration` ran out).
    Complete,
    /// Ctrl-C or SIGTERM.
    Interrupted,
    Failed,
    TimedOut,
    /// The command line was valid but the path showed it wrong (an `--sla` naming a
    /// subsegment the path does not have).
    UsageError,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndingReport {
    pub reason: EndReason,
    pub message: Option<String>,
    /// For a failure in the chain: the id of the link that broke.
    pub subsegment: Option<String>,
    /// ... and the kind of failure the hop above it reported (`wire::FaultCode::name`).
    pub fault: Option<&'static str>,
}

/// One hop of the path as it announced itself.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub index: usize,
    pub name: String,
    /// source, relay, echo, egress (`-r` relay), ingress, server (a plain server behind an
    /// egress), unreached (a relay's next hop that it could not reach).
    pub role: &'static str,
    /// The address the previous hop reached it at, and the address it saw that hop come from.
    pub reached_at: Option<String>,
    pub seen_from: Option<String>,
    pub tags: BTreeMap<String, String>,
}

/// One series' statistics, integer nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Stats {
    pub count: u64,
    /// Exact: the subsegments' sums add up to the end-to-end sum.
    pub sum_ns: u64,
    pub min_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
    pub mean_ns: u64,
    pub stdev_ns: u64,
    /// Mean absolute difference of consecutive samples.
    pub jitter_ns: u64,
}

impl Stats {
    pub fn of(series: &Series) -> Stats {
        let histogram = &series.histogram;
        if series.count() == 0 {
            return Stats::default();
        }
        Stats {
            count: series.count(),
            sum_ns: u64::try_from(series.sum_ns).unwrap_or(u64::MAX),
            min_ns: histogram.min(),
            p50_ns: histogram.value_at_quantile(0.5),
            p90_ns: histogram.value_at_quantile(0.9),
            p99_ns: histogram.value_at_quantile(0.99),
            p999_ns: histogram.value_at_quantile(0.999),
            max_ns: histogram.max(),
            mean_ns: series.mean_ns().round() as u64,
            stdev_ns: histogram.stdev().round() as u64,
            jitter_ns: series.jitter_ns().round() as u64,
        }
    }
}

/// One point of a distribution: a share `quantile` of the samples took at most `value_ns`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CdfPoint {
    pub quantile: f64,
    pub value_ns: u64,
}

/// The quantiles a distribution is kept at for the plot: the minimum, every percent, then the
/// tail (99.5, 99.9, 99.95, 99.99 %) and the maximum. 105 points, whatever the sample count.
fn cdf_quantiles() -> impl Iterator<Item = f64> {
    (0..100).map(|percent| f64::from(percent) / 100.0).chain([0.995, 0.999, 0.9995, 0.9999, 1.0])
}

/// A series' distribution as [`CdfPoint`]s from its histogram (3 significant digits, like the
/// percentiles); empty when it has no samples.
pub fn cdf_of(series: &Series) -> Vec<CdfPoint> {
    if series.count() == 0 {
        return Vec::new();
    }
    let histogram = &series.histogram;
    // One pass over the buckets for all the quantiles (they come in ascending order); the
    // ends are the exact minimum and maximum, as in `Stats`.
    cdf_quantiles()
        .zip(histogram.value_at_quantiles(cdf_quantiles()))
        .map(|(quantile, value_ns)| CdfPoint {
            quantile,
            value_ns: if quantile == 0.0 {
                histogram.min()
            } else if quantile == 1.0 {
                histogram.max()
            } else {
                value_ns
            },
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubsegmentKind {
    Link,
    Relay,
    Echo,
}

/// One row of the table: a link, or a hop's residence in one direction.
#[derive(Debug, Clone, Serialize)]
pub struct Subsegment {
    pub id: String,
    pub kind: SubsegmentKind,
    pub label: String,
    /// Links: the hops at either end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Residences: the hop, and `down`, `up` or `turn`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hop: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    #[serde(flatten)]
    pub stats: Stats,
    /// This subsegment's p50 over the end-to-end p50.
    pub share: f64,
    /// A hop's residence by its own stamps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<Split>,
    /// A link: what the kernel saw of it, from both of its ends (`--kernel-info`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<KernelLink>,
    /// The whole run's distribution, for the plot (empty in an interval's rows); not in the
    /// JSON, whose percentiles are the promise.
    #[serde(skip)]
    pub cdf: Vec<CdfPoint>,
    #[serde(skip)]
    pub part: Part,
}

/// The kernel's view of a link (`TCP_INFO` of the sockets at its two ends), times in ns.
#[derive(Debug, Clone, Serialize)]
pub struct KernelLink {
    /// The near end's smoothed RTT as last read (the near end sends the frames down),
    /// else the far end's.
    pub rtt_ns: Option<u64>,
    pub rttvar_ns: Option<u64>,
    /// The lowest RTT either end's kernel saw: the wire and the peer's kernel, no queue.
    pub min_rtt_ns: Option<u64>,
    /// Segments and bytes retransmitted by either end during the run.
    pub retrans: Option<u64>,
    pub retrans_bytes: Option<u64>,
    /// Hop i's downstream socket, and hop i+1's upstream one.
    pub near: Option<KernelEnd>,
    pub far: Option<KernelEnd>,
    /// The link's median round trip (as in its row) split by what the kernel can tell: the
    /// wire (its min RTT) and the rest (queues on either side, the peer's wake-up, delayed
    /// ACKs; what the receive stamps already moved to the hop is not in the row).
    pub split: Option<KernelSplit>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct KernelSplit {
    pub wire_ns: u64,
    /// How long a byte waited unsent in the near end's send buffer, by Little's law on the
    /// readings (mean unsent bytes over the delivery rate); `null` when nothing waited.
    pub sender_queue_ns: Option<u64>,
    pub rest_ns: u64,
}

/// One end of a link as its kernel saw it over the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KernelEnd {
    /// `TCP_INFO` readings (on the hop's 100 ms timer while traffic moved, and at the end).
    pub samples: u64,
    pub rtt_ns: Option<u64>,
    pub rttvar_ns: Option<u64>,
    pub min_rtt_ns: Option<u64>,
    /// Growth over the run of the connection's counters.
    pub retrans: Option<u64>,
    pub retrans_bytes: Option<u64>,
    pub rto: Option<u64>,
    pub reordering: Option<u64>,
    /// Bytes written and not yet sent, and segments sent and not yet acknowledged.
    pub notsent_bytes_max: Option<u64>,
    pub notsent_bytes_mean: Option<u64>,
    pub unacked_max: Option<u64>,
    pub unacked_mean: Option<u64>,
    pub cwnd: Option<u64>,
    pub delivery_rate_bytes_per_second: Option<u64>,
    /// During the run: time busy sending, limited by the peer's receive window, by the send
    /// buffer.
    pub busy_ns: Option<u64>,
    pub rwnd_limited_ns: Option<u64>,
    pub sndbuf_limited_ns: Option<u64>,
    /// Transmit timestamps (`--kernel-stamps all`): writes stamped when they left for the
    /// device, how long their last byte had waited in this host's send queue (mean, max), and
    /// SND → ACK, the sender's view of the wire round trip (mean, min).
    pub tx_stamped: Option<u64>,
    pub tx_queue_mean_ns: Option<u64>,
    pub tx_queue_max_ns: Option<u64>,
    pub tx_ack_rtt_mean_ns: Option<u64>,
    pub tx_ack_rtt_min_ns: Option<u64>,
}

impl KernelEnd {
    fn of(end: &kernel::End) -> Option<KernelEnd> {
        (end.samples > 0).then(|| KernelEnd {
            samples: end.samples,
            rtt_ns: end.last.rtt_ns,
            rttvar_ns: end.last.rttvar_ns,
            min_rtt_ns: end.min_rtt_ns,
            retrans: end.delta(|info| info.total_retrans),
            retrans_bytes: end.delta(|info| info.bytes_retrans),
            rto: end.delta(|info| info.total_rto),
            reordering: end.delta(|info| info.reord_seen),
            notsent_bytes_max: (end.notsent_bytes.count > 0).then_some(end.notsent_bytes.max),
            notsent_bytes_mean: end.notsent_bytes.mean(),
            unacked_max: (end.unacked.count > 0).then_some(end.unacked.max),
            unacked_mean: end.unacked.mean(),
            cwnd: end.last.cwnd,
            delivery_rate_bytes_per_second: end.last.delivery_rate,
            busy_ns: end.delta(|info| info.busy_ns),
            rwnd_limited_ns: end.delta(|info| info.rwnd_limited_ns),
            sndbuf_limited_ns: end.delta(|info| info.sndbuf_limited_ns),
            tx_stamped: end.tx.map(|tx| tx.sent),
            tx_queue_mean_ns: end.tx.and_then(|tx| tx.queue_sum_ns.checked_div(tx.sent)),
            tx_queue_max_ns: end.tx.filter(|tx| tx.sent > 0).map(|tx| tx.queue_max_ns),
            tx_ack_rtt_mean_ns: end.tx.and_then(|tx| tx.ack_rtt_sum_ns.checked_div(tx.acked)),
            tx_ack_rtt_min_ns: end.tx.filter(|tx| tx.acked > 0).map(|tx| tx.ack_rtt_min_ns),
        })
    }
}

impl KernelLink {
    fn of(near: &kernel::End, far: &kernel::End, link_p50_ns: u64) -> KernelLink {
        let (near, far) = (KernelEnd::of(near), KernelEnd::of(far));
        let ends = || near.iter().chain(far.iter());
        let sum = |field: fn(&KernelEnd) -> Option<u64>| {
            ends().map(field).reduce(|a, b| Some(a? + b?)).flatten()
        };
        let min_rtt_ns = ends().filter_map(|end| end.min_rtt_ns).min();
        let first = near.or(far);
        KernelLink {
            rtt_ns: first.and_then(|end| end.rtt_ns),
            rttvar_ns: first.and_then(|end| end.rttvar_ns),
            min_rtt_ns,
            retrans: sum(|end| end.retrans),
            retrans_bytes: sum(|end| end.retrans_bytes),
            near,
            far,
            split: min_rtt_ns.filter(|_| link_p50_ns > 0).map(|min_rtt_ns| {
                let wire_ns = min_rtt_ns.min(link_p50_ns);
                // Measured per write where the near end had transmit stamps; else Little's law.
                let sender_queue_ns = near.and_then(|end| {
                    if let Some(queue_ns) = end.tx_queue_mean_ns {
                        return Some(queue_ns);
                    }
                    let unsent = end.notsent_bytes_mean.filter(|&bytes| bytes > 0)?;
                    let rate = end.delivery_rate_bytes_per_second.filter(|&rate| rate > 0)?;
                    Some((u128::from(unsent) * 1_000_000_000 / u128::from(rate)) as u64)
                });
                let rest_ns = link_p50_ns - wire_ns;
                KernelSplit {
                    wire_ns,
                    sender_queue_ns: sender_queue_ns.map(|ns| ns.min(rest_ns)),
                    rest_ns: rest_ns - sender_queue_ns.map_or(0, |ns| ns.min(rest_ns)),
                }
            }),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Split {
    /// Arrival → read, from the kernel's receive timestamps.
    pub receive_queue: Stats,
    /// Read → write: processing, and waiting for room to write.
    pub read_to_write: Stats,
    /// Frames read late because the hop's own output was full.
    pub held_back: u64,
}

/// How the arrivals in the records were known.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReceiveClocks {
    pub kernel: u64,
    pub after_read: u64,
    /// Taken at the read because the kernel's stamp was impossible.
    pub kernel_rejected: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Frames {
    pub sent: u64,
    pub answered: u64,
    pub missing: u64,
    /// Of the missing, those given up for lost when a continuous run's chain broke.
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicated: u64,
    /// Probe answers whose payload differs from what was sent.
    pub corrupted: u64,
    /// Answers whose stamps did not match the path.
    pub malformed: u64,
    /// Bytes a plain server sent unasked.
    pub unsolicited_bytes: u64,
    /// Answered payload that did not reach stdout before an interrupt gave up.
    pub unwritten_bytes: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Throughput {
    pub payload_bytes: u64,
    /// From the first frame sent to the last answer.
    pub duration_ns: u64,
    /// `None` for runs under 10 ms.
    pub bytes_per_second: Option<f64>,
    pub frames_per_second: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct ScheduleReport {
    pub interval_ns: u64,
    /// Probes sent on the schedule (the first few went one at a time, before it).
    pub scheduled: u64,
    pub unscheduled_first: u64,
    pub achieved_per_second: Option<f64>,
    /// Left more than half an interval after their time.
    pub late: u64,
    pub worst_lateness_ns: u64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct StdinReport {
    pub block_size: usize,
    pub sent_payload_bytes: u64,
    pub mean_frame_payload_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerdictReport {
    /// The id of the subsegment named, or `null` when none stands out.
    pub subsegment: Option<String>,
    /// What kind of delay was found: fixed_link, queued_link, hop_receive_queue,
    /// hop_held_back, hop_waiting_to_write, hop_mixed, floor; or none_stands_out.
    pub kind: &'static str,
    /// Why none stands out: close, unsteady, spread_queue.
    pub doubt: Option<&'static str>,
    /// The named (or highest) subsegment's p50 over the end-to-end p50.
    pub share: f64,
    /// Share of the end-to-end mean above the subsegments' floors: queueing.
    pub queueing_share: f64,
    pub frames: u64,
    pub text: String,
    /// Set when the verdict rests on too few frames.
    pub warning: Option<String>,
}

/// One break of a continuous run.
#[derive(Debug, Clone, Serialize)]
pub struct OutageReport {
    pub started_at: String,
    pub started_unix_ns: u64,
    pub message: String,
    /// The id of the link that broke, when a hop reported it in-band.
    pub subsegment: Option<String>,
    /// The kind of failure that hop reported.
    pub fault: Option<&'static str>,
    /// Frames in flight when it broke (and during failed attempts), given up for lost.
    pub lost_frames: u64,
    /// Until the path came back; `null` when the run ended during the outage.
    pub down_ns: Option<u64>,
    pub path_changed: bool,
}

/// Samples below zero in one series: a bug in the chain's stamping.
#[derive(Debug, Clone, Serialize)]
pub struct NegativeSamples {
    pub subsegment: String,
    pub label: String,
    pub count: u64,
    pub first_sequence: u64,
    pub first_ns: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub tool: Tool,
    pub parameters: Parameters,
    pub started_at: String,
    pub started_unix_ns: u64,
    pub ended_at: String,
    pub ended_unix_ns: u64,
    pub ending: EndingReport,
    pub path: Vec<Hop>,
    pub subsegments: Vec<Subsegment>,
    pub end_to_end: Option<Stats>,
    /// The end-to-end distribution, for the plot.
    #[serde(skip)]
    pub end_to_end_cdf: Vec<CdfPoint>,
    /// A continuous run's p50 and p99 per interval (the last [`interval::HISTORY_LEN`]), for
    /// the plot; kept only when a plot was asked for. The `--jsonl` lines carry the same and
    /// more.
    #[serde(skip)]
    pub history: History,
    /// The source's own receive queue for answers: after the end-to-end round trip.
    pub source_receive_queue: Option<Stats>,
    pub receive_clocks: Option<ReceiveClocks>,
    pub frames: Frames,
    pub throughput: Option<Throughput>,
    pub schedule: Option<ScheduleReport>,
    pub stdin: Option<StdinReport>,
    pub verdict: Option<VerdictReport>,
    pub sla: Vec<SlaResult>,
    /// Negative samples, which the stamping rule makes impossible: each one is a bug.
    pub bugs: Vec<NegativeSamples>,
    /// A continuous run's breaks: the chain failed and the run went on.
    pub outages: Vec<OutageReport>,
    /// Times the path came back different after an outage; the statistics cover the path as
    /// last discovered.
    pub path_changes: u64,
    /// Lines of `--samples`, `--jsonl` and the interval lines that the output thread fell
    /// too far behind to take.
    pub dropped_lines: Dropped,
    #[serde(skip)]
    pub unit: Unit,
    #[serde(skip)]
    pub presentation: Presentation,
    /// Frames could be in flight together (no `--window 1`).
    #[serde(skip)]
    pub loaded: bool,
}

/// What a report is built from besides the run.
pub struct Context<'a> {
    pub parameters: &'a Parameters,
    pub presentation: Presentation,
    pub slas: &'a [SlaSpec],
    pub times: Times,
    pub dropped_lines: Dropped,
}

impl Report {
    pub fn build(run: &Run, context: &Context) -> Report {
        let chain = run.chain.as_ref().filter(|chain| chain.end_to_end.count() > 0);
        let end_to_end_p50 = chain.map_or(0, |chain| chain.end_to_end.p50_ns());
        let unit = Unit::choose(context.presentation, end_to_end_p50);
        let symbols = context.presentation.symbols;
        let labels = stats::hop_labels(&run.path);
        let mut subsegments: Vec<Subsegment> = chain.map_or_else(Vec::new, |chain| {
            chain
                .parts
                .iter()
                .map(|series| Subsegment {
                    cdf: cdf_of(series),
                    ..subsegment(series, &labels, symbols, end_to_end_p50)
                })
                .collect()
        });
        for row in &mut subsegments {
            if let Part::Link(hop) = row.part
                && let Some((near, far)) = run.kernel.link(hop)
            {
                row.kernel = Some(KernelLink::of(near, far, row.stats.p50_ns));
            }
        }
        let sequencing = &run.sequencing;
        let frames = Frames {
            sent: sequencing.sent,
            answered: sequencing.answered,
            missing: sequencing.missing(),
            lost: sequencing.lost,
            out_of_order: sequencing.out_of_order,
            duplicated: sequencing.duplicated,
            corrupted: run.corrupted,
            malformed: run.chain.as_ref().map_or(0, |chain| chain.malformed),
            unsolicited_bytes: run.unsolicited_bytes,
            unwritten_bytes: run.unwritten_bytes,
        };
        let throughput = match (run.first_send_ns, run.last_answer_ns) {
            (Some(first), Some(last)) => {
                let duration_ns = last.saturating_sub(first);
                let rate = |amount: u64| {
                    (duration_ns >= MIN_RATE_NS).then(|| amount as f64 * 1e9 / duration_ns as f64)
                };
                Some(Throughput {
                    payload_bytes: run.payload_bytes,
                    duration_ns,
                    bytes_per_second: rate(run.payload_bytes),
                    frames_per_second: rate(sequencing.answered),
                })
            }
            _ => None,
        };
        let verdict = chain.and_then(|chain| {
            let run_ns = throughput.map_or(0, |throughput| throughput.duration_ns);
            verdict_report(chain, &labels, symbols, unit, run.loaded, &subsegments, run_ns)
        });
        let bugs = chain.map_or_else(Vec::new, |chain| {
            chain
                .parts
                .iter()
                .zip(&subsegments)
                .map(|(series, row)| (series, row.id.clone(), row.label.clone()))
                .chain([(&chain.end_to_end, "end-to-end".to_string(), "end-to-end".to_string())])
                .filter_map(|(series, subsegment, label)| {
                    let negative = series.negative?;
                    Some(NegativeSamples {
                        subsegment,
                        label,
                        count: negative.count,
                        first_sequence: negative.first_sequence,
                        first_ns: negative.first_ns,
                    })
                })
                .collect()
        });
        let end_to_end = chain.map(|chain| Stats::of(&chain.end_to_end));
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            tool: Tool { name: "subsegment-tcp-speeds", version: env!("CARGO_PKG_VERSION") },
            parameters: context.parameters.clone(),
            started_at: rfc3339(context.times.started_unix_ns),
            started_unix_ns: context.times.started_unix_ns,
            ended_at: rfc3339(context.times.ended_unix_ns),
            ended_unix_ns: context.times.ended_unix_ns,
            ending: ending_report(&run.ending),
            path: run.path.iter().enumerate().map(|(index, entry)| hop(index, entry)).collect(),
            subsegments,
            end_to_end,
            end_to_end_cdf: chain.map_or_else(Vec::new, |chain| cdf_of(&chain.end_to_end)),
            history: run.history.clone(),
            source_receive_queue: chain.map(|chain| Stats::of(&chain.source_receive_queue)),
            receive_clocks: chain.map(|chain| {
                let (after_read, kernel, kernel_rejected) = chain.receive_clock_totals();
                ReceiveClocks { kernel, after_read, kernel_rejected }
            }),
            frames,
            throughput,
            schedule: run.schedule.as_ref().map(schedule_report),
            stdin: run.stdin_block_size.filter(|_| sequencing.sent > 0).map(|block_size| {
                StdinReport {
                    block_size,
                    sent_payload_bytes: run.sent_payload_bytes,
                    mean_frame_payload_bytes: run.sent_payload_bytes / sequencing.sent,
                }
            }),
            verdict,
            sla: Vec::new(),
            bugs,
            outages: run
                .outages
                .iter()
                .map(|outage| OutageReport {
                    started_at: rfc3339(outage.started_unix_ns),
                    started_unix_ns: outage.started_unix_ns,
                    message: outage.message.clone(),
                    subsegment: outage.broken_link.map(|link| Part::Link(link.hop).id()),
                    fault: outage.broken_link.map(|link| link.code.name()),
                    lost_frames: outage.lost,
                    down_ns: outage.down_ns,
                    path_changed: outage.path_changed,
                })
                .collect(),
            path_changes: run.path_changes,
            dropped_lines: context.dropped_lines,
            unit,
            presentation: context.presentation,
            loaded: run.loaded,
        };
        report.sla = sla::evaluate(context.slas, &report);
        report
    }

    /// Whether any SLA was breached.
    pub fn sla_breached(&self) -> bool {
        self.sla.iter().any(|result| result.breached)
    }

    pub fn subsegment(&self, id: &str) -> Option<&Subsegment> {
        self.subsegments.iter().find(|row| row.id == id)
    }
}

pub(crate) fn subsegment(
    series: &Series,
    labels: &[String],
    symbols: Symbols,
    end_to_end_p50: u64,
) -> Subsegment {
    let name = |hop: usize| labels.get(hop).cloned();
    let (kind, from, to, hop, direction) = match series.part {
        Part::Link(at) => (SubsegmentKind::Link, name(at), name(at + 1), None, None),
        Part::ResidenceDown(at) => (SubsegmentKind::Relay, None, None, name(at), Some("down")),
        Part::ResidenceUp(at) => (SubsegmentKind::Relay, None, None, name(at), Some("up")),
        Part::Turn(at) => (SubsegmentKind::Echo, None, None, name(at), Some("turn")),
    };
    let stats = Stats::of(series);
    Subsegment {
        id: series.part.id(),
        kind,
        label: stats::part_label(series.part, labels, symbols),
        from,
        to,
        hop,
        direction,
        stats,
        share: stats.p50_ns as f64 / end_to_end_p50.max(1) as f64,
        split: series.split.as_ref().map(|split| Split {
            receive_queue: Stats::of(&split.receive_queue),
            read_to_write: Stats::of(&split.read_to_write),
            held_back: split.held_back,
        }),
        kernel: None,
        cdf: Vec::new(),
        part: series.part,
    }
}

fn hop(index: usize, entry: &PathEntry) -> Hop {
    let address = |text: &str| (text != "-").then(|| text.to_string());
    Hop {
        index,
        name: entry.name.clone(),
        role: match entry.role {
            Role::Source => "source",
            Role::Relay => "relay",
            Role::Echo => "echo",
            Role::StrippingRelay => "egress",
            Role::PlainServer => "server",
            Role::Unreached => "unreached",
            Role::Ingress => "ingress",
        },
        reached_at: address(&entry.local),
        seen_from: address(&entry.peer),
        tags: entry.tags.iter().map(|tag| (tag.key.clone(), tag.value.clone())).collect(),
    }
}

fn ending_report(ending: &Ending) -> EndingReport {
    let (reason, message, subsegment) = match ending {
        Ending::Complete => (EndReason::Complete, None, None),
        Ending::Interrupted => (EndReason::Interrupted, None, None),
        Ending::Failed { message, broken_link } => (
            EndReason::Failed,
            Some(message.clone()),
            broken_link.map(|link| Part::Link(link.hop).id()),
        ),
        Ending::TimedOut(message) => (EndReason::TimedOut, Some(message.clone()), None),
        Ending::UsageError(message) => (EndReason::UsageError, Some(message.clone()), None),
    };
    let fault = match ending {
        Ending::Failed { broken_link: Some(link), .. } => Some(link.code.name()),
        _ => None,
    };
    EndingReport { reason, message, subsegment, fault }
}

fn schedule_report(schedule: &Schedule) -> ScheduleReport {
    ScheduleReport {
        interval_ns: schedule.interval.as_nanos() as u64,
        scheduled: schedule.booked,
        unscheduled_first: UNLOADED_FRAMES,
        achieved_per_second: schedule.achieved_per_second(),
        late: schedule.late,
        worst_lateness_ns: schedule.worst_lateness_ns,
    }
}

fn verdict_report(
    chain: &Chain,
    labels: &[String],
    symbols: Symbols,
    unit: Unit,
    loaded: bool,
    rows: &[Subsegment],
    run_ns: u64,
) -> Option<VerdictReport> {
    let verdict = Verdict::of(chain)?;
    if let Some(bottleneck) = evidence::bottleneck_behind(&verdict, chain, rows, unit, run_ns) {
        return Some(bottleneck);
    }
    if let Some(slow_reader) = evidence::slow_reader_behind(&verdict, chain, rows, labels, unit) {
        return Some(slow_reader);
    }
    let part_labels: Vec<String> = rows.iter().map(|row| row.label.clone()).collect();
    let mut text = verdict.describe(chain, &part_labels, labels, unit, loaded, symbols);
    if let Verdict::Named { worst, .. } = &verdict
        && let Some(kernel) = &rows[*worst].kernel
    {
        text.push_str(&evidence::kernel_evidence(kernel, unit, rows[*worst].stats.min_ns));
    }
    text.push_str(&evidence::retransmitting_link(
        rows,
        unit,
        match &verdict {
            Verdict::Named { worst, .. } => Some(*worst),
            Verdict::NoneStandsOut { .. } => None,
        },
    ));
    let warning = verdict.few_frames().and_then(few_frames_warning);
    let report = match &verdict {
        Verdict::Named { worst, share, kind, frames } => VerdictReport {
            subsegment: Some(rows[*worst].id.clone()),
            kind: kind_name(kind),
            doubt: None,
            share: *share,
            queueing_share: match kind {
                DelayKind::Floor { queueing_share, .. } => *queueing_share,
                _ => verdict::queueing_share(chain),
            },
            frames: *frames,
            text,
            warning,
        },
        Verdict::NoneStandsOut { highest, doubt, queueing_share, frames } => VerdictReport {
            subsegment: None,
            kind: "none_stands_out",
            doubt: Some(match doubt {
                Doubt::Close { .. } => "close",
                Doubt::Unsteady { .. } => "unsteady",
                Doubt::SpreadQueue { .. } => "spread_queue",
            }),
            share: rows[*highest].share,
            queueing_share: *queueing_share,
            frames: *frames,
            text,
            warning,
        },
    };
    Some(report)
}

/// The warning of a verdict that rests on fewer than [`verdict::MIN_FRAMES`] frames.
fn few_frames_warning(frames: u64) -> Option<String> {
    (frames < verdict::MIN_FRAMES).then(|| {
        format!(
            "the verdict rests on only {frames} {}; it needs {} or more to be relied on",
            plural(frames, "frame"),
            verdict::MIN_FRAMES
        )
    })
}

fn kind_name(kind: &DelayKind) -> &'static str {
    match kind {
        DelayKind::FixedLink { .. } => "fixed_link",
        DelayKind::QueuedLink { .. } => "queued_link",
        DelayKind::HopReceiveQueue { .. } => "hop_receive_queue",
        DelayKind::HopHeldBack { .. } => "hop_held_back",
        DelayKind::HopWaitingToWrite { .. } => "hop_waiting_to_write",
        DelayKind::HopMixed => "hop_mixed",
        DelayKind::Floor { .. } => "floor",
    }
}

/// `1 frame`, `2 frames`.
pub fn plural(count: u64, noun: &str) -> String {
    if count == 1 { noun.to_string() } else { format!("{noun}s") }
}

/// Unix nanoseconds as RFC 3339 in UTC, to the microsecond: `2026-12-01T10:38:20.123456Z`.
pub fn rfc3339(unix_ns: u64) -> String {
    let seconds = unix_ns / 1_000_000_000;
    let micros = (unix_ns % 1_000_000_000) / 1_000;
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        of_day / 3_600,
        of_day % 3_600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::core::ReadStamp;
    use crate::stats::Sequencing;
    use crate::wire::{Direction, Frame, Header, Kind, Stamp, emit_frame};

    /// The path the unit tests measure: source A, relay B, echoing end Z.
    pub(crate) fn a_b_z_path() -> Vec<PathEntry> {
        vec![
            PathEntry::new(Role::Source, "A", None, None),
            PathEntry::new(Role::Relay, "B", None, None),
            PathEntry::new(Role::Echo, "Z", None, None),
        ]
    }

    /// A → B → Z with `frames` identical frames: A ⇄ B takes `a_b_ns`, B ⇄ Z `b_z_ns`.
    pub(crate) fn run_with_links(a_b_ns: u64, b_z_ns: u64, frames: u64) -> Run {
        let path = a_b_z_path();
        let mut chain = Chain::new(path.clone()).unwrap();
        let mut sequencing = Sequencing::default();
        for sequence in 0..frames {
            let stamps = [
                Stamp::new(0, Direction::Down, 0, 0),
                Stamp::new(1, Direction::Down, 0, 0),
                Stamp::new(2, Direction::Turn, 0, 0),
                Stamp::new(1, Direction::Up, b_z_ns, b_z_ns),
            ];
            let header =
                Header { flags: 0, kind: Kind::Data, record_count: 4, sequence, payload_len: 0 };
            let mut bytes = vec![0; header.total_len()];
            emit_frame(&mut bytes, &header, &[], &stamps, &[]);
            let read = ReadStamp { read_ns: a_b_ns + b_z_ns, ..ReadStamp::default() };
            chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read);
            sequencing.sent_one();
            sequencing.answered_one(sequence);
        }
        Run {
            chain: Some(chain),
            path,
            sequencing,
            first_send_ns: Some(0),
            last_answer_ns: Some(a_b_ns + b_z_ns),
            ..Run::ended(Ending::Complete, false)
        }
    }

    pub(crate) fn report_of(run: &Run, presentation: Presentation, slas: &[SlaSpec]) -> Report {
        let parameters = Parameters::default();
        let context = Context {
            parameters: &parameters,
            presentation,
            slas,
            times: Times::default(),
            dropped_lines: Dropped::default(),
        };
        Report::build(run, &context)
    }

    #[test]
    fn test_the_verdict_cites_what_the_kernel_saw_on_the_named_link() {
        let mut run = run_with_links(10_000, 2_300_000, 100);
        let reading = |retrans: u64, notsent: u64| kernel::TcpInfo {
            rtt_ns: Some(2_050_000),
            min_rtt_ns: Some(2_020_000),
            total_retrans: Some(retrans),
            notsent_bytes: Some(notsent),
            delivery_rate: Some(51_500_000),
            ..kernel::TcpInfo::default()
        };
        // B's downstream socket (the near end of B ⇄ Z): 14 retransmissions during the run,
        // 5 150 B unsent on average at 51.5 MB/s: 100 µs in its send buffer.
        run.kernel.add(1, kernel::Side::Downstream, reading(6, 0), None);
        run.kernel.add(1, kernel::Side::Downstream, reading(14, 10_300), None);
        run.kernel.add(2, kernel::Side::Upstream, reading(0, 0), None);
        let report = report_of(&run, Presentation::default(), &[]);
        let link = report.subsegment("1-2").unwrap().kernel.as_ref().unwrap();
        assert_eq!((link.retrans, link.min_rtt_ns), (Some(14), Some(2_020_000)));
        let split = link.split.unwrap();
        assert_eq!(split.wire_ns, 2_020_000);
        assert_eq!(split.sender_queue_ns, Some(100_000));
        assert!(report.subsegment("0-1").unwrap().kernel.is_none(), "no readings: no object");
        let text = &report.verdict.as_ref().unwrap().text;
        assert!(text.starts_with("B ⇄ Z adds the most delay"), "{text}");
        for says in [
            "the kernel saw a min RTT of 2020.0 µs (the wire and the peer's kernel)",
            "14 retransmitted segments",
            "about 100.0 µs queued in the near end's send buffer (the link delivered 412 Mbit/s)",
            "up to 10300 B waiting unsent at the near end",
        ] {
            assert!(text.contains(says), "{says}: {text}");
        }
    }

    #[test]
    fn test_each_distribution_is_kept_as_points_that_agree_with_the_percentiles() {
        let report = report_of(&run_with_links(10_000, 40_000, 100), Presentation::default(), &[]);
        for (cdf, stats) in report
            .subsegments
            .iter()
            .map(|row| (&row.cdf, row.stats))
            .chain([(&report.end_to_end_cdf, report.end_to_end.unwrap())])
        {
            assert_eq!(cdf.len(), 105);
            let at = |quantile: f64| {
                cdf.iter().find(|point| point.quantile == quantile).map(|point| point.value_ns)
            };
            assert_eq!(at(0.0), Some(stats.min_ns));
            assert_eq!(at(0.5), Some(stats.p50_ns));
            assert_eq!(at(0.9), Some(stats.p90_ns));
            assert_eq!(at(0.999), Some(stats.p999_ns));
            assert_eq!(at(1.0), Some(stats.max_ns));
            assert!(cdf.windows(2).all(|pair| pair[0].value_ns <= pair[1].value_ns), "{cdf:?}");
        }
        assert!(report.history.intervals.is_empty(), "only a continuous run has intervals");
        // A spread of values: every point is the percentile `Stats` gives.
        let mut run = run_with_links(10_000, 40_000, 1);
        let series = &mut run.chain.as_mut().unwrap().parts[0];
        for value in 1..=5_000u64 {
            series.histogram.record(value * value).unwrap();
        }
        let (cdf, stats) = (cdf_of(series), Stats::of(series));
        let at = |quantile: f64| cdf.iter().find(|point| point.quantile == quantile).unwrap();
        assert_eq!(at(0.5).value_ns, stats.p50_ns);
        assert_eq!(at(0.9).value_ns, stats.p90_ns);
        assert_eq!(at(0.99).value_ns, stats.p99_ns);
        assert_eq!(at(0.999).value_ns, stats.p999_ns);
        assert_eq!((at(0.0).value_ns, at(1.0).value_ns), (stats.min_ns, stats.max_ns));
        assert!(cdf.windows(2).all(|pair| pair[0].value_ns <= pair[1].value_ns), "{cdf:?}");
    }

    #[test]
    fn test_rfc3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001_000), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339(1_796_121_500_123_456_789), "2026-12-01T10:38:20.123456Z");
    }

    #[test]
    fn test_ids_kinds_and_shares() {
        let report = report_of(&run_with_links(10_000, 40_000, 100), Presentation::default(), &[]);
        let ids: Vec<&str> = report.subsegments.iter().map(|row| row.id.as_str()).collect();
        assert_eq!(ids, ["0-1", "1.down", "1.up", "1-2", "2.echo"]);
        let link = report.subsegment("1-2").unwrap();
        assert_eq!((link.from.as_deref(), link.to.as_deref()), (Some("B"), Some("Z")));
        assert_eq!(link.stats.count, 100);
        assert!((link.share - 0.8).abs() < 0.01, "{}", link.share);
        let sum: u64 = report.subsegments.iter().map(|row| row.stats.sum_ns).sum();
        assert_eq!(sum, report.end_to_end.unwrap().sum_ns);
        let verdict = report.verdict.as_ref().unwrap();
        assert_eq!((verdict.subsegment.as_deref(), verdict.kind), (Some("1-2"), "fixed_link"));
    }
}
