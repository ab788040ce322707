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

use std::collections::VecDeque;

/// Writes awaiting their stamps at most; past it the oldest are given up (counted).
pub const PENDING_WRITES: usize = 4096;

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
    /// Bytes written since the option was set: the next write's first byte has this offset.
    written: u64,
    pending: VecDeque<PendingWrite>,
    pub totals: TxTotals,
    /// Writes given up before their stamp came (queue full), and stamps that matched no write.
    pub given_up: u64,
    pub unmatched: u64,
}

impl TxStamps {
    /// A write of `count` bytes handed over at `realtime_ns` (CLOCK_REALTIME, as the kernel's
    /// stamps are).
    pub fn wrote(&mut self, count: usize, realtime_ns: u64) {
        if count == 0 {
            return;
        }
        self.written += count as u64;
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
        tx.wrote(10, 1_000); // bytes 0..=9
        tx.wrote(20, 2_000); // 10..=29
        tx.wrote(30, 3_000); // 30..=59
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
        tx.wrote(10, 100); // bytes 2^32 - 5 ..= 2^32 + 4: key 4
        tx.stamped(TxEvent::Sent, 4, 150);
        assert_eq!(tx.totals.sent, 1);
        for _ in 0..PENDING_WRITES + 3 {
            tx.wrote(1, 200);
        }
        assert_eq!(tx.pending.len(), PENDING_WRITES);
        assert_eq!(tx.given_up, 4);
    }
}
