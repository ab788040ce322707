//! The verdict refined by the kernel's evidence (`TCP_INFO` of both ends of every link): where
//! the stamps show only where frames waited, the kernel's time counters say what held them
//! there, so the verdict can name the element that drains slowest rather than the queue in
//! front of it, and cite what the kernel saw on the link it names.

use super::verdict::{self, DelayKind, Verdict};
use super::{KernelLink, Subsegment, Unit, VerdictReport, few_frames_warning, plural};
use crate::stats::{Chain, Part};
use crate::wire::Role;

/// Share of the end-to-end mean that must be queueing for a bottleneck link to be looked for.
pub(super) const BOTTLENECK_QUEUE_SHARE: f64 = 0.5;
/// The shortest run judged for a bottleneck link by the kernel's time counters.
const BOTTLENECK_MIN_RUN_NS: u64 = 100_000_000;

/// The stamps alone see where frames wait: a hop holding most of the delay *waiting for room
/// to write* says only that what drains slowest is further on. The kernel can say what: when
/// that hop's socket towards the next link had bytes it could not send (its send buffer
/// backed up) and was not held back by the peer's receive window (a slow reader further on),
/// the link itself drains slowest (its rate, its congestion window): it is the bottleneck, and
/// the hop's wait is the queue in front of it.
pub(super) fn bottleneck_behind(
    verdict: &Verdict,
    chain: &Chain,
    rows: &[Subsegment],
    unit: Unit,
    run_ns: u64,
) -> Option<VerdictReport> {
    let frames = match verdict {
        Verdict::Named { kind, frames, .. } if kind.is_queueing() => *frames,
        Verdict::NoneStandsOut { frames, .. } => *frames,
        _ => return None,
    };
    if verdict::queueing_share(chain) < BOTTLENECK_QUEUE_SHARE {
        return None;
    }
    // Links whose sending end (going down: the near end) had bytes it could not send and was
    // limited by the network itself (the kernel's busy time less the time limited by the
    // receiver's window or its own send buffer) for most of the run: each drains slower than
    // it is fed. The kernel counts those times in jiffies (4 ms at HZ=250), so only runs of
    // [`BOTTLENECK_MIN_RUN_NS`] or more are judged.
    if run_ns < BOTTLENECK_MIN_RUN_NS {
        return None;
    }
    let backed_up = |row: &Subsegment| -> Option<u64> {
        let end = row.kernel.as_ref()?.near?;
        let unsent = end.notsent_bytes_max.filter(|&bytes| bytes > 0)?;
        let limited = end.rwnd_limited_ns? + end.sndbuf_limited_ns?;
        let network_limited = end.busy_ns?.saturating_sub(limited);
        (network_limited * 2 >= run_ns).then_some(unsent)
    };
    let candidates: Vec<(usize, u64)> = rows
        .iter()
        .enumerate()
        .filter(|(_, row)| matches!(row.part, Part::Link(_)))
        .filter_map(|(index, row)| Some((index, backed_up(row)?)))
        .collect();
    let [(link_row, unsent)] = candidates[..] else { return None };
    let Part::Link(link_hop) = rows[link_row].part else { return None };
    // The queue in front of it: the hops before it, waiting for room to write.
    let hop_row = rows.iter().position(|row| row.part == Part::ResidenceDown(link_hop))?;
    let share = rows[hop_row].share;
    let end = rows[link_row].kernel.as_ref()?.near?;
    let hop = &rows[hop_row];
    let rate = end
        .delivery_rate_bytes_per_second
        .map(|rate| format!(", the link delivering {:.0} Mbit/s", rate as f64 * 8.0 / 1e6))
        .unwrap_or_default();
    let text = format!(
        "{} is the bottleneck: frames queue in front of it in {} ({} p50 {}, {:.0}% of the end-to-end p50, waiting for room to write), and the kernel saw up to {unsent} B unsent in that hop's send buffer{rate}",
        rows[link_row].label,
        hop.hop.as_deref().unwrap_or("the hop"),
        hop.label,
        unit.show_with_name(hop.stats.p50_ns),
        share * 100.0,
    );
    Some(VerdictReport {
        subsegment: Some(rows[link_row].id.clone()),
        kind: "bottleneck_link",
        doubt: None,
        share: rows[link_row].share,
        queueing_share: verdict::queueing_share(chain),
        frames,
        text,
        warning: few_frames_warning(frames),
    })
}

/// Retransmissions rarely move a median, so a lossy link may not stand out by it: when one link
/// retransmitted far more than every other (at least [`RETRANS_STANDS_OUT`] segments and 4×
/// the next), the verdict says so, with the p99 the losses carry. Not for the link the verdict
/// already named (its own evidence says it).
pub(super) fn retransmitting_link(rows: &[Subsegment], unit: Unit, named: Option<usize>) -> String {
    let retrans = |row: &Subsegment| row.kernel.as_ref().and_then(|kernel| kernel.retrans);
    let mut links: Vec<(usize, u64)> =
        rows.iter().enumerate().filter_map(|(index, row)| Some((index, retrans(row)?))).collect();
    links.sort_by_key(|&(_, count)| std::cmp::Reverse(count));
    let Some(&(index, count)) = links.first() else { return String::new() };
    let next = links.get(1).map_or(0, |&(_, count)| count);
    if count < RETRANS_STANDS_OUT || count < 4 * next || Some(index) == named {
        return String::new();
    }
    let row = &rows[index];
    format!(
        "; the kernel saw {} retransmit {count} {} (the other links at most {next}): losses there, which its p99 of {} carries",
        row.label,
        plural(count, "segment"),
        unit.show_with_name(row.stats.p99_ns)
    )
}

/// A link whose fastest frame took this many times its kernel's fastest round trip is held up
/// past the socket's TCP peer.
const TERMINATED_RATIO: u64 = 10;

/// Retransmitted segments a link must reach for the verdict to point at it by them.
const RETRANS_STANDS_OUT: u64 = 3;

/// What the kernel saw of a named link, in words for the verdict: the wire's share and any
/// retransmissions, unsent bytes or windows that held the sender back.
/// `link_min_ns` is the link's fastest frame by the stamps: when the kernel's own fastest
/// round trip is a small part of it, the socket's TCP peer is not the next hop but something
/// between them that holds the bytes (a proxy, a load balancer, a delay element).
pub(super) fn kernel_evidence(kernel: &KernelLink, unit: Unit, link_min_ns: u64) -> String {
    let mut seen = Vec::new();
    if let Some(min_rtt_ns) = kernel.min_rtt_ns {
        seen.push(format!(
            "a min RTT of {} (the wire and the peer's kernel)",
            unit.show_with_name(min_rtt_ns)
        ));
        if min_rtt_ns.saturating_mul(TERMINATED_RATIO) < link_min_ns {
            seen.push(format!(
                "so the TCP connection ends short of the next hop: the {} every frame paid are held by something between them (a proxy, a load balancer, a user-space element), not by the wire",
                unit.show_with_name(link_min_ns)
            ));
        }
    }
    if let Some(retrans) = kernel.retrans.filter(|&retrans| retrans > 0) {
        seen.push(format!("{retrans} retransmitted {}", plural(retrans, "segment")));
    }
    if let (Some(queue_ns), Some(rate)) = (
        kernel.split.and_then(|split| split.sender_queue_ns),
        kernel.near.and_then(|end| end.delivery_rate_bytes_per_second),
    ) {
        seen.push(format!(
            "about {} queued in the near end's send buffer (the link delivered {:.0} Mbit/s)",
            unit.show_with_name(queue_ns),
            rate as f64 * 8.0 / 1e6
        ));
    }
    for (end, which) in [(&kernel.near, "near"), (&kernel.far, "far")] {
        let Some(end) = end else { continue };
        if let Some(bytes) = end.notsent_bytes_max.filter(|&bytes| bytes > 0) {
            seen.push(format!("up to {bytes} B waiting unsent at the {which} end"));
        }
        if let Some(ns) = end.rwnd_limited_ns.filter(|&ns| ns >= 1_000_000) {
            seen.push(format!(
                "the {which} end held back by the peer's receive window for {:.1} ms",
                ns as f64 / 1e6
            ));
        }
        if let Some(ns) = end.sndbuf_limited_ns.filter(|&ns| ns >= 1_000_000) {
            seen.push(format!(
                "the {which} end held back by its send buffer for {:.1} ms",
                ns as f64 / 1e6
            ));
        }
    }
    if seen.is_empty() { String::new() } else { format!("; the kernel saw {}", seen.join(", ")) }
}

/// Share of a sending end's busy time it must have spent held back by the peer's receive window
/// for the peer to be called a slow reader.
const SLOW_READER_RWND_SHARE: f64 = 0.5;
/// The least busy time a sending end must have for its receive-window share to be judged: ten
/// jiffies at HZ=250, the resolution of the kernel's counters.
const SLOW_READER_MIN_BUSY_NS: u64 = 40_000_000;

/// One link direction whose sender the receiver's window held back.
struct HeldSender {
    /// The link's row.
    link: usize,
    sender: usize,
    receiver: usize,
    /// The receiver's residence row in that direction; `None` for the source (its receive
    /// queue is after the end-to-end round trip, in no subsegment).
    receiver_row: Option<usize>,
    receive_queue_p50_ns: u64,
    rwnd_limited_ns: u64,
    busy_ns: u64,
    unsent_max: Option<u64>,
}

/// A bulk stream's bytes wait where the chain first runs out of room. When a hop reads more
/// slowly than it is fed (short of CPU, descheduled, busy), its receive buffer fills, its window
/// closes, and the bytes wait in the *sender's* send queue, which the stamps count in the link
/// before the hop, not in the hop: a busy machine could then name an idle link. The kernel
/// tells the two apart: the sending end spent most of its busy time held back by the peer's
/// receive window. Two more conditions, from the receiver's own stamps, keep a window closed
/// for another reason from blaming it:
/// - its frames waited in its receive queue (p50) longer than the link's fastest frame took:
///   a window too small for a long link's bandwidth-delay product also holds the sender back,
///   but the receiver reads at once and its receive queue stays near empty;
/// - it was not passing backpressure on: the socket it writes that direction on was busy
///   (bytes not yet acknowledged) for less than half as long as its sender was; else what
///   drains slowest is further on.
///
/// - the link has no floor of its own: its fastest frame took less than
///   [`verdict::FLOOR_SHARE`] of the fastest round trip (a long wire or a delay element is slow
///   by itself, whatever the receiver does).
///
/// The receiver whose senders were held back longest is named, when that is at least
/// [`verdict::STANDS_OUT_RATIO`] times the next receiver's, and what it costs (the held
/// link's p50 and its own residence's) that many times every other part's p50. It replaces a
/// verdict of queueing or of none standing out, and a floor (named when no median stood out)
/// when its frames waited longer in its receive queue (p50) than every frame paid at that
/// floor.
pub(super) fn slow_reader_behind(
    verdict: &Verdict,
    chain: &Chain,
    rows: &[Subsegment],
    hop_labels: &[String],
    unit: Unit,
) -> Option<VerdictReport> {
    // A floor (named when no median stood out) gives way when the slow reader's frames waited
    // longer in its receive queue than every frame paid at the floor.
    let (frames, floor_ns) = match verdict {
        Verdict::Named { kind: DelayKind::Floor { min_ns, .. }, frames, .. } => {
            (*frames, Some(*min_ns))
        }
        Verdict::Named { kind, frames, .. } if kind.is_queueing() => (*frames, None),
        Verdict::NoneStandsOut { frames, .. } => (*frames, None),
        _ => return None,
    };
    if verdict::queueing_share(chain) < BOTTLENECK_QUEUE_SHARE {
        return None;
    }
    let row_of = |part: Part| rows.iter().position(|row| row.part == part);
    let kernel_of = |hop: usize| {
        rows.iter().find(|row| row.part == Part::Link(hop)).and_then(|row| row.kernel.as_ref())
    };
    let mut held = Vec::new();
    let fastest_round_trip_ns = chain.end_to_end.histogram.min();
    for (link, row) in rows.iter().enumerate() {
        let (Part::Link(hop), Some(kernel)) = (row.part, &row.kernel) else { continue };
        // A link with a floor of its own (a long wire, a delay element) is slow by itself,
        // whatever its receiver does.
        if row.stats.min_ns as f64 >= verdict::FLOOR_SHARE * fastest_round_trip_ns as f64 {
            continue;
        }
        // Each direction: the sending end, the receiver, its residence row, and the socket it
        // writes that direction's frames on (an echoing end writes back on the same link).
        let (down_row, down_output) = match row_of(Part::ResidenceDown(hop + 1)) {
            Some(index) => (Some(index), kernel_of(hop + 1).and_then(|next| next.near)),
            // The end turns frames: an echoing end writes them back up the same link; a `-r`
            // relay writes them to its server, whose socket the kernel evidence does not cover.
            None => match chain.path.get(hop + 1).map(|entry| entry.role) {
                Some(Role::Echo) => (row_of(Part::Turn(hop + 1)), kernel.far),
                _ => (row_of(Part::Turn(hop + 1)), None),
            },
        };
        let (up_row, up_output) = match hop {
            0 => (None, None),
            _ => (row_of(Part::ResidenceUp(hop)), kernel_of(hop - 1).and_then(|before| before.far)),
        };
        for (end, sender, receiver, receiver_row, output) in [
            (kernel.near, hop, hop + 1, down_row, down_output),
            (kernel.far, hop + 1, hop, up_row, up_output),
        ] {
            let Some(end) = end else { continue };
            let (Some(busy_ns), Some(rwnd_limited_ns)) = (end.busy_ns, end.rwnd_limited_ns) else {
                continue;
            };
            if busy_ns < SLOW_READER_MIN_BUSY_NS
                || (rwnd_limited_ns as f64) < SLOW_READER_RWND_SHARE * busy_ns as f64
            {
                continue;
            }
            let receive_queue_p50_ns = match receiver_row {
                Some(index) => {
                    let Some(split) = &rows[index].split else { continue };
                    // Passing backpressure on: its own output was backed up about as long. The
                    // kernel's busy time says so directly; without a reading, the stamps'
                    // held-back reads do (an overstatement after a stall: a read stays marked
                    // until the queue empties).
                    let passes_on = match output.and_then(|output| output.busy_ns) {
                        Some(output_busy_ns) => 2 * output_busy_ns >= busy_ns,
                        None => 2 * split.held_back >= rows[index].stats.count,
                    };
                    if passes_on {
                        continue;
                    }
                    split.receive_queue.p50_ns
                }
                None if receiver == 0 => chain.source_receive_queue.p50_ns(),
                None => continue,
            };
            if receive_queue_p50_ns <= row.stats.min_ns {
                continue;
            }
            held.push(HeldSender {
                link,
                sender,
                receiver,
                receiver_row,
                receive_queue_p50_ns,
                rwnd_limited_ns,
                busy_ns,
                unsent_max: end.notsent_bytes_max.filter(|&bytes| bytes > 0),
            });
        }
    }
    let held_by = |receiver: usize| -> u64 {
        held.iter().filter(|held| held.receiver == receiver).map(|held| held.rwnd_limited_ns).sum()
    };
    let mut receivers: Vec<usize> = held.iter().map(|held| held.receiver).collect();
    receivers.sort_unstable();
    receivers.dedup();
    receivers.sort_by_key(|&receiver| std::cmp::Reverse(held_by(receiver)));
    let slowest = *receivers.first()?;
    let next = receivers.get(1).map_or(0, |&receiver| held_by(receiver));
    if (held_by(slowest) as f64) < verdict::STANDS_OUT_RATIO * next as f64 {
        return None;
    }
    let worst = held
        .iter()
        .filter(|held| held.receiver == slowest)
        .max_by_key(|held| held.rwnd_limited_ns)?;
    if floor_ns.is_some_and(|floor_ns| worst.receive_queue_p50_ns <= floor_ns) {
        return None;
    }
    // What the slow reader costs (the held link, and its own residence there) must stand out
    // over every other part, as a named median must.
    let receiver_p50_ns = worst.receiver_row.map_or(0, |index| rows[index].stats.p50_ns);
    let cost_ns = rows[worst.link].stats.p50_ns + receiver_p50_ns;
    let receivers_own = |part: Part| matches!(part, Part::ResidenceDown(hop) | Part::ResidenceUp(hop) | Part::Turn(hop) if hop == slowest);
    let others_ns = (rows.iter().enumerate())
        .filter(|&(index, row)| index != worst.link && !receivers_own(row.part))
        .map(|(_, row)| row.stats.p50_ns)
        .max()
        .unwrap_or(0);
    if (cost_ns as f64) < verdict::STANDS_OUT_RATIO * others_ns as f64 {
        return None;
    }
    let link = &rows[worst.link];
    let name = |hop: usize| hop_labels.get(hop).map_or("a hop", String::as_str);
    let who = match worst.receiver_row {
        Some(index) => rows[index].label.clone(),
        None => format!("the source, {}, reading its answers,", name(slowest)),
    };
    let unsent =
        worst.unsent_max.map(|bytes| format!(", up to {bytes} B unsent")).unwrap_or_default();
    let together = match worst.receiver_row {
        Some(index) => format!(
            "Their p50s, {}'s {} and {}'s {}, add up to {:.1}% of the end-to-end p50 ({})",
            rows[index].label,
            unit.show_with_name(receiver_p50_ns),
            link.label,
            unit.show_with_name(link.stats.p50_ns),
            cost_ns as f64 * 100.0 / chain.end_to_end.p50_ns().max(1) as f64,
            unit.show_with_name(chain.end_to_end.p50_ns()),
        ),
        None => format!(
            "{}'s p50 is {} ({:.1}% of the end-to-end p50, {})",
            link.label,
            unit.show_with_name(link.stats.p50_ns),
            link.share * 100.0,
            unit.show_with_name(chain.end_to_end.p50_ns()),
        ),
    };
    let text = format!(
        "{who} drains slowest: it read more slowly than {sender} sent. Its {frames} waited in its receive queue (p50 {queue}, longer than {link_label}'s fastest frame took, {min}) and its receive window closed: the kernel saw {sender} held back by that window for {limited:.0} of its {busy:.0} ms busy sending{unsent}, so bytes waited in {sender}'s send queue too, which count in {link_label}, though the link is not what is slow. {together}. {why}",
        sender = name(worst.sender),
        frames = if worst.receiver_row.is_some() { "frames" } else { "answers" },
        why = if worst.receiver_row.is_some() {
            "A hop reads slowly when it is short of CPU, descheduled or busy"
        } else {
            "In bulk mode the source writes as well as reads, and one short of CPU (a debug build, other work on its CPU) is the slowest element of its own chain; the subsegments' figures then show where its backlog waits"
        },
        queue = unit.show_with_name(worst.receive_queue_p50_ns),
        link_label = link.label,
        min = unit.show_with_name(link.stats.min_ns),
        limited = worst.rwnd_limited_ns as f64 / 1e6,
        busy = worst.busy_ns as f64 / 1e6,
    );
    Some(VerdictReport {
        subsegment: worst.receiver_row.map(|index| rows[index].id.clone()),
        kind: "slow_reader",
        doubt: None,
        // What the slow reader costs, as the text says: its residence's p50 and the held
        // link's, over the end-to-end p50.
        share: cost_ns as f64 / chain.end_to_end.p50_ns().max(1) as f64,
        queueing_share: verdict::queueing_share(chain),
        frames,
        text,
        warning: few_frames_warning(frames),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ReadStamp;
    use crate::kernel::{Side, TcpInfo};
    use crate::report::tests::report_of;
    use crate::report::{Presentation, Report};
    use crate::source::{Ending, Run};
    use crate::stats::Sequencing;
    use crate::wire::{Direction, Frame, Header, Kind, ReceiveClock, Stamp, emit_frame};

    /// How a bulk run through A → B → Z went: A ⇄ B queues from `link_floor_ns` up by
    /// `link_step_ns` a frame, and each frame waits `b_wait_ns` in B's receive queue.
    struct Bulk {
        link_floor_ns: u64,
        link_step_ns: u64,
        b_wait_ns: u64,
        /// Of every 10 frames, how many B reads at once (no receive-queue wait).
        b_prompt_of_10: u64,
        /// How long B holds each answer going up.
        b_up_hold_ns: u64,
        /// B ⇄ Z queues from 20 µs up by this much a frame.
        b_z_step_ns: u64,
        /// A's downstream socket: busy and held back by B's window (ns, over the run).
        a_busy_ns: u64,
        a_rwnd_limited_ns: u64,
        /// B's downstream socket (its output going down): busy.
        b_output_busy_ns: u64,
    }

    const SLOW_B: Bulk = Bulk {
        link_floor_ns: 5_000,
        link_step_ns: 100_000,
        b_wait_ns: 500_000,
        b_prompt_of_10: 0,
        b_up_hold_ns: 5_000,
        b_z_step_ns: 0,
        a_busy_ns: 200_000_000,
        a_rwnd_limited_ns: 180_000_000,
        b_output_busy_ns: 10_000_000,
    };

    fn report(bulk: Bulk) -> Report {
        let path = crate::report::tests::a_b_z_path();
        let mut chain = Chain::new(path.clone()).unwrap();
        let mut sequencing = Sequencing::default();
        // B's clock is its own: the frame arrives at B_ORIGIN on it.
        const B_ORIGIN: u64 = 1_000_000_000;
        let mut last_answer_ns = 0;
        for sequence in 0..100u64 {
            let a_b_ns = bulk.link_floor_ns + sequence * bulk.link_step_ns;
            let b_wait_ns = if sequence % 10 < bulk.b_prompt_of_10 { 0 } else { bulk.b_wait_ns };
            let b_read_ns = B_ORIGIN + b_wait_ns;
            let b_write_ns = b_read_ns + 10_000;
            let b_up_read_ns = b_write_ns + 20_000 + sequence * bulk.b_z_step_ns;
            let b_up_write_ns = b_up_read_ns + bulk.b_up_hold_ns;
            let stamps = [
                Stamp::new(0, Direction::Down, 0, 0),
                Stamp {
                    receive: ReceiveClock::Kernel,
                    receive_wait_ns: b_wait_ns,
                    ..Stamp::new(1, Direction::Down, b_read_ns, b_write_ns)
                },
                Stamp::new(2, Direction::Turn, 0, 0),
                Stamp {
                    receive: ReceiveClock::Kernel,
                    ..Stamp::new(1, Direction::Up, b_up_read_ns, b_up_write_ns)
                },
            ];
            let header =
                Header { flags: 0, kind: Kind::Data, record_count: 4, sequence, payload_len: 0 };
            let mut bytes = vec![0; header.total_len()];
            emit_frame(&mut bytes, &header, &[], &stamps, &[]);
            last_answer_ns = a_b_ns + (b_up_write_ns - B_ORIGIN);
            let read = ReadStamp { read_ns: last_answer_ns, ..ReadStamp::default() };
            chain.record(&Frame::new_checked(&bytes[..]).unwrap(), read);
            sequencing.sent_one();
            sequencing.answered_one(sequence);
        }
        let mut run = Run {
            chain: Some(chain),
            path,
            sequencing,
            first_send_ns: Some(0),
            last_answer_ns: Some(last_answer_ns),
            loaded: true,
            ..Run::ended(Ending::Complete, true)
        };
        let reading = |busy_ns: u64, rwnd_limited_ns: u64| TcpInfo {
            busy_ns: Some(busy_ns),
            rwnd_limited_ns: Some(rwnd_limited_ns),
            sndbuf_limited_ns: Some(0),
            notsent_bytes: Some(if rwnd_limited_ns > 0 { 1_000_000 } else { 0 }),
            ..TcpInfo::default()
        };
        for (hop, side, busy_ns, rwnd_limited_ns) in [
            (0, Side::Downstream, bulk.a_busy_ns, bulk.a_rwnd_limited_ns),
            (1, Side::Upstream, 1_000_000, 0),
            (1, Side::Downstream, bulk.b_output_busy_ns, 0),
            (2, Side::Upstream, 1_000_000, 0),
        ] {
            run.kernel.add(hop, side, reading(0, 0), None);
            run.kernel.add(hop, side, reading(busy_ns, rwnd_limited_ns), None);
        }
        report_of(&run, Presentation::default(), &[])
    }

    fn verdict(bulk: Bulk) -> (Option<String>, &'static str, String) {
        let verdict = report(bulk).verdict.unwrap();
        (verdict.subsegment, verdict.kind, verdict.text)
    }

    #[test]
    fn test_a_hop_that_reads_slowly_is_named_for_the_queue_behind_its_window() {
        let verdict_report = report(SLOW_B).verdict.unwrap();
        let (subsegment, kind, text) =
            (verdict_report.subsegment, verdict_report.kind, verdict_report.text);
        assert_eq!((subsegment.as_deref(), kind), (Some("1.down"), "slow_reader"), "{text}");
        assert!((verdict_report.share - 0.995).abs() < 0.001, "{}", verdict_report.share);
        for says in [
            "B ↓ (relay) drains slowest: it read more slowly than A sent",
            "its receive queue (p50 500.2 µs, longer than A ⇄ B's fastest frame took, 5.0 µs)",
            "A held back by that window for 180 of its 200 ms busy sending, up to 1000000 B unsent",
            "which count in A ⇄ B, though the link is not what is slow",
            "Their p50s, B ↓ (relay)'s 510.2 µs and A ⇄ B's 4907.0 µs, add up to 99.5% of the end-to-end p50 (5443.6 µs)",
        ] {
            assert!(text.contains(says), "{says}: {text}");
        }
    }

    #[test]
    fn test_a_window_closed_for_other_reasons_does_not_blame_the_receiver() {
        let cases = [
            // B reads at once (its window was too small for the link, not full).
            ("B reads at once", Bulk { b_wait_ns: 1_000, ..SLOW_B }),
            // B's own output was backed up as long: it passes backpressure on.
            ("B passes it on", Bulk { b_output_busy_ns: 100_000_000, ..SLOW_B }),
            ("A rarely held back", Bulk { a_rwnd_limited_ns: 80_000_000, ..SLOW_B }),
            (
                "too little busy time",
                Bulk { a_busy_ns: 30_000_000, a_rwnd_limited_ns: 30_000_000, ..SLOW_B },
            ),
            // B ⇄ Z queues more (p50 10 ms): what B's slow reading costs does not stand out.
            ("another part costs more", Bulk { b_z_step_ns: 200_000, b_prompt_of_10: 3, ..SLOW_B }),
            // A ⇄ B has a floor of its own: 600 µs of a 1 080 µs fastest round trip (a frame B
            // read at once), though most frames waited 2 ms in B. (B's 450 µs going up keeps
            // the floor from standing out on its own.)
            (
                "a floor of its own",
                Bulk {
                    link_floor_ns: 600_000,
                    b_wait_ns: 2_000_000,
                    b_prompt_of_10: 3,
                    b_up_hold_ns: 450_000,
                    ..SLOW_B
                },
            ),
        ];
        for (case, bulk) in cases {
            let (subsegment, kind, text) = verdict(bulk);
            assert_ne!(kind, "slow_reader", "{case}: {subsegment:?} {text}");
        }
        // Just at the thresholds, it is named.
        let at = Bulk { a_rwnd_limited_ns: 100_000_000, ..SLOW_B };
        assert_eq!(verdict(at).1, "slow_reader");
        let at = Bulk { a_busy_ns: 40_000_000, a_rwnd_limited_ns: 40_000_000, ..SLOW_B };
        assert_eq!(verdict(at).1, "slow_reader");
    }

    #[test]
    fn test_a_floor_gives_way_to_a_slow_reader_whose_frames_waited_longer() {
        // No median stands out (A ⇄ B and B ↓ both near 2 ms), and every frame paid B's hold
        // going up: a floor, which the slow reader's 2 ms receive queue outweighs at 300 µs
        // and does not at 3 ms.
        let spread = |b_up_hold_ns: u64| Bulk {
            link_step_ns: 40_000,
            b_wait_ns: 2_000_000,
            b_prompt_of_10: 3,
            b_up_hold_ns,
            ..SLOW_B
        };
        let (subsegment, kind, text) = verdict(spread(300_000));
        assert_eq!((subsegment.as_deref(), kind), (Some("1.down"), "slow_reader"), "{text}");
        let (subsegment, kind, text) = verdict(spread(3_000_000));
        assert_eq!((subsegment.as_deref(), kind), (Some("1.up"), "floor"), "{text}");
    }
}
