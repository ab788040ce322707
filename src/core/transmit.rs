//! Transmit timestamps, without sockets: which write a kernel stamp belongs to, and what it
//! says. With `SO_TIMESTAMPING` (`TX_SOFTWARE | TX_ACK | OPT_ID | OPT_ID_TCP | OPT_TSONLY`) the
//! kernel reports, on the socket's error queue, when the last byte of a write left for the
//! device (SND) and when the peer acknowledged it (ACK), keyed by that byte's offset since the
//! option was set (a u32: it wraps after 4 GiB, so keys are compared in their low 32 bits).
//!
//! What a stamp gives: SND − the write's own clock reading is how long its last byte waited in
//! this host's send queue (TCP's, and the qdisc's); ACK − SND is the sender's view of the wire
//! round trip (including the peer's delayed ACK, when there is one). The kernel stamps one skb
//! per write, and a later write merged into the same skb replaces the earlier request, so some
//! writes never get a stamp: a stamp for a later key retires every write before it.
//!
//! Which writes ask ([`TxMode`]): `all` sets `TX_SOFTWARE | TX_ACK` on the socket, so every
//! write asks; `sample` sets only the reporting flags and the key options on the socket, once,
//! and the sampled write asks for itself with an `SCM_TIMESTAMPING` control message on its
//! `sendmsg` (Documentation/networking/timestamping.rst, 1.3.4: a control message's `TX_*` flags
//! override the socket's for that call). The key counts every byte written either way
//! (`OPT_ID_TCP` counts from `write_seq`), so the sampled writes' keys match as in `all`.

use std::collections::VecDeque;

/// Writes awaiting their stamps at most; past it the oldest are given up (counted).
pub const PENDING_WRITES: usize = 4096;

/// In `--kernel-stamps sample`, one write per socket in this long asks for its stamps.
///
/// Why one per tick and not one write in N: the cost then has a bound that does not grow with
/// the traffic. Each stamped write costs two error-queue entries, each an error event and a
/// `recvmsg` or two; at one in N a bulk stream of 100,000 writes a second would still pay for
/// 100,000 / N of them, a tick pays for 100 a second per socket whatever the rate. A tick also
/// needs no agreement between hops on N, and a slow run (probes at 100 a second or fewer) has
/// every write stamped, so short runs still get figures. What it gives up: time sampling picks
/// the first write after each tick, which in bursty traffic is more often one after a gap (a
/// short send queue) than one in a burst; bulk streams and evenly spaced probes are not bursty.
pub const SAMPLE_EVERY_NS: u64 = 10_000_000;

/// Which writes ask for transmit timestamps (`--kernel-stamps all|sample|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxMode {
    #[default]
    Off,
    /// One write per socket every [`SAMPLE_EVERY_NS`], through a control message.
    Sample,
    /// Every write, through the socket option.
    All,
}

impl TxMode {
    pub fn parse(text: &str) -> Option<TxMode> {
        match text {
            "off" => Some(TxMode::Off),
            "sample" => Some(TxMode::Sample),
            "all" => Some(TxMode::All),
            _ => None,
        }
    }

    /// The option's own word, as the report shows it.
    pub fn name(self) -> &'static str {
        match self {
            TxMode::Off => "off",
            TxMode::Sample => "sample",
            TxMode::All => "all",
        }
    }
}

/// What the kernel's error queue reported for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEvent {
    /// The last byte of the write left for the device.
    Sent,
    /// The peer acknowledged it.
    Acked,
}

/// Totals over a socket's life, as the KERNEL frame carries them (counters, so the source
/// takes differences or means).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TxTotals {
    /// Writes whose SND stamp came, and the sum and maximum of their send-queue waits.
    pub sent: u64,
    pub queue_sum_ns: u64,
    pub queue_max_ns: u64,
    /// Writes whose ACK stamp came, and the sum and minimum of SND → ACK.
    pub acked: u64,
    pub ack_rtt_sum_ns: u64,
    pub ack_rtt_min_ns: u64,
}

#[derive(Debug, Clone, Copy)]
struct PendingWrite {
    key: u32,
    written_realtime_ns: u64,
    sent_realtime_ns: Option<u64>,
}

#[derive(Debug, Default)]
pub struct TxStamps {
    /// Only sampled writes ask (`TxMode::Sample`); else every write does.
    sampled: bool,
    /// CLOCK_REALTIME from which the next write is sampled.
    next_sample_ns: u64,
    /// Bytes written since the option was set: the next write's first byte has this offset.
    written: u64,
    pending: VecDeque<PendingWrite>,
    pub totals: TxTotals,
    /// Writes given up before their stamp came (queue full), and stamps that matched no write.
    pub given_up: u64,
    pub unmatched: u64,
}

impl TxStamps {
    /// The stamps of a socket whose option was just set for `mode` (`Sample` or `All`).
    pub fn new(mode: TxMode) -> TxStamps {
        debug_assert!(mode != TxMode::Off, "no stamps are kept when none are asked for");
        TxStamps { sampled: mode == TxMode::Sample, ..TxStamps::default() }
    }

    /// Whether a write handed over at `realtime_ns` must ask for its own stamps: in sample
    /// mode, once a tick has passed since the last sampled write (or the clock stepped back).
    pub fn sample_due(&self, realtime_ns: u64) -> bool {
        self.sampled
            && (realtime_ns >= self.next_sample_ns
                || realtime_ns.saturating_add(SAMPLE_EVERY_NS) < self.next_sample_ns)
    }

    /// A write of `count` bytes handed over at `realtime_ns` (CLOCK_REALTIME, as the kernel's
    /// stamps are); `asked`: it asked for stamps (every write in `all`, the sampled one in
    /// `sample`). The others only move the key on.
    pub fn wrote(&mut self, count: usize, realtime_ns: u64, asked: bool) {
        if count == 0 {
            return;
        }
        self.written += count as u64;
        if self.sampled && !asked {
            return;
        }
        if self.sampled {
            self.next_sample_ns = realtime_ns.saturating_add(SAMPLE_EVERY_NS);
        }
        if self.pending.len() == PENDING_WRITES {
            self.pending.pop_front();
            self.given_up += 1;
        }
        let key = (self.written - 1) as u32;
        self.pending.push_back(PendingWrite {
            key,
            written_realtime_ns: realtime_ns,
            sent_realtime_ns: None,
        });
    }

    /// A stamp from the error queue.
    pub fn stamped(&mut self, event: TxEvent, key: u32, realtime_ns: u64) {
        let Some(index) = self.pending.iter().position(|write| write.key == key) else {
            self.unmatched += 1;
            return;
        };
        match event {
            TxEvent::Sent => {
                // Writes before it that got no SND stamp were merged into a later skb.
                for _ in 0..index {
                    if self.pending.front().is_some_and(|write| write.sent_realtime_ns.is_none()) {
                        self.pending.pop_front();
                    } else {
                        break;
                    }
                }
                let index = self.pending.iter().position(|write| write.key == key).unwrap_or(0);
                let write = &mut self.pending[index];
                if write.sent_realtime_ns.is_some() {
                    return;
                }
                write.sent_realtime_ns = Some(realtime_ns);
                let queue_ns = realtime_ns.saturating_sub(write.written_realtime_ns);
                let totals = &mut self.totals;
                totals.sent += 1;
                totals.queue_sum_ns = totals.queue_sum_ns.saturating_add(queue_ns);
                totals.queue_max_ns = totals.queue_max_ns.max(queue_ns);
            }
            TxEvent::Acked => {
                // An ACK covers every byte before it: the writes up to this one are done.
                let write = self.pending[index];
                self.pending.drain(..=index);
                let Some(sent_ns) = write.sent_realtime_ns else { return };
                let rtt_ns = realtime_ns.saturating_sub(sent_ns);
                let totals = &mut self.totals;
                totals.ack_rtt_min_ns =
                    if totals.acked == 0 { rtt_ns } else { totals.ack_rtt_min_ns.min(rtt_ns) };
                totals.acked += 1;
                totals.ack_rtt_sum_ns = totals.ack_rtt_sum_ns.saturating_add(rtt_ns);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_stamps_are_matched_to_writes_by_their_last_byte() {
        let mut tx = TxStamps::default();
        tx.wrote(10, 1_000, true); // bytes 0..=9
        tx.wrote(20, 2_000, true); // 10..=29
        tx.wrote(30, 3_000, true); // 30..=59
        tx.stamped(TxEvent::Sent, 9, 1_500);
        tx.stamped(TxEvent::Acked, 9, 1_540);
        // The second write was merged into the third's skb: only key 59 is stamped.
        tx.stamped(TxEvent::Sent, 59, 3_200);
        tx.stamped(TxEvent::Acked, 59, 3_300);
        assert_eq!(
            tx.totals,
            TxTotals {
                sent: 2,
                queue_sum_ns: 500 + 200,
                queue_max_ns: 500,
                acked: 2,
                ack_rtt_sum_ns: 40 + 100,
                ack_rtt_min_ns: 40,
            }
        );
        assert!(tx.pending.is_empty());
        tx.stamped(TxEvent::Acked, 77, 4_000);
        assert_eq!(tx.unmatched, 1);
    }

    #[test]
    fn test_keys_wrap_after_4_gib_and_the_queue_is_bounded() {
        let mut tx = TxStamps { written: u64::from(u32::MAX) - 4, ..TxStamps::default() };
        tx.wrote(10, 100, true); // bytes 2^32 - 5 ..= 2^32 + 4: key 4
        tx.stamped(TxEvent::Sent, 4, 150);
        assert_eq!(tx.totals.sent, 1);
        for _ in 0..PENDING_WRITES + 3 {
            tx.wrote(1, 200, true);
        }
        assert_eq!(tx.pending.len(), PENDING_WRITES);
        assert_eq!(tx.given_up, 4);
    }

    #[test]
    fn test_sample_mode_stamps_one_write_per_tick_and_keys_count_every_byte() {
        let mut tx = TxStamps::new(TxMode::Sample);
        let start_ns = 1_700_000_000_000_000_000;
        assert!(tx.sample_due(start_ns), "the first write is sampled");
        tx.wrote(100, start_ns, true); // bytes 0..=99, asked: key 99
        assert!(!tx.sample_due(start_ns + SAMPLE_EVERY_NS - 1));
        tx.wrote(50, start_ns + 1_000, false); // 100..=149, not asked
        assert_eq!(tx.pending.len(), 1, "unasked writes wait for no stamp");
        assert!(tx.sample_due(start_ns + SAMPLE_EVERY_NS));
        tx.wrote(10, start_ns + SAMPLE_EVERY_NS, true); // 150..=159: key 159
        tx.stamped(TxEvent::Sent, 99, start_ns + 400);
        tx.stamped(TxEvent::Sent, 159, start_ns + SAMPLE_EVERY_NS + 300);
        tx.stamped(TxEvent::Acked, 159, start_ns + SAMPLE_EVERY_NS + 1_300);
        assert_eq!((tx.totals.sent, tx.totals.acked, tx.unmatched), (2, 1, 0));
        assert_eq!(tx.totals.queue_sum_ns, 400 + 300);
        assert_eq!(tx.totals.ack_rtt_min_ns, 1_000);
        // A clock stepped back does not stop the sampling until it catches up.
        assert!(tx.sample_due(start_ns - SAMPLE_EVERY_NS));
        // In `all`, every write is stamped whatever it says.
        let mut every = TxStamps::new(TxMode::All);
        assert!(!every.sample_due(start_ns), "no write asks for itself: the socket does");
        every.wrote(10, start_ns, false);
        every.wrote(10, start_ns, false);
        assert_eq!(every.pending.len(), 2);
        assert_eq!(TxMode::parse("sample").map(TxMode::name), Some("sample"));
        assert_eq!(TxMode::parse("some"), None);
    }
}
