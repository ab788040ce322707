//! The kernel's own view of a TCP connection: `TCP_INFO` read into a struct of our own, the
//! sample a hop sends upstream, and the source's aggregate per link end.
//!
//! `libc`'s `tcp_info` is older than the kernels this runs on, so the struct is read as bytes
//! and each field is taken only when the length the kernel returned covers it: a field an old
//! kernel lacks is `None`, never zero. Which kernel gives which field (the uapi header's
//! history): `rtt`, `rttvar`, `unacked`, `total_retrans`, `snd_cwnd` since 2.6; `notsent_bytes`
//! and `min_rtt` 4.6; `delivery_rate` 4.9; `busy_time`, `rwnd_limited`, `sndbuf_limited`
//! 4.10; `bytes_retrans` and `reord_seen` 4.19; `total_rto` 6.7.

/// Byte offsets of the fields we read in the kernel's `struct tcp_info`, with their widths.
mod offset {
    pub const UNACKED: usize = 24;
    pub const RTT_US: usize = 68;
    pub const RTTVAR_US: usize = 72;
    pub const SND_CWND: usize = 80;
    pub const TOTAL_RETRANS: usize = 100;
    pub const NOTSENT_BYTES: usize = 144;
    pub const MIN_RTT_US: usize = 148;
    pub const DELIVERY_RATE: usize = 160;
    pub const BUSY_TIME_US: usize = 168;
    pub const RWND_LIMITED_US: usize = 176;
    pub const SNDBUF_LIMITED_US: usize = 184;
    pub const BYTES_RETRANS: usize = 208;
    pub const REORD_SEEN: usize = 220;
    pub const TOTAL_RTO: usize = 240;
    /// Room for every field above and what newer kernels add after them.
    pub const BUFFER: usize = 320;
}

/// Room for the kernel's `struct tcp_info`: this build's fields and what newer kernels add.
pub const TCP_INFO_BUFFER: usize = offset::BUFFER;

/// One `TCP_INFO` reading, times in nanoseconds (the kernel gives µs). `None`: the kernel's
/// struct is too short to have the field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpInfo {
    pub rtt_ns: Option<u64>,
    pub rttvar_ns: Option<u64>,
    pub min_rtt_ns: Option<u64>,
    /// Segments retransmitted over the connection's life.
    pub total_retrans: Option<u64>,
    pub bytes_retrans: Option<u64>,
    /// Retransmission timeouts over the connection's life.
    pub total_rto: Option<u64>,
    pub reord_seen: Option<u64>,
    /// Bytes written by the application and not yet sent.
    pub notsent_bytes: Option<u64>,
    /// Segments sent and not yet acknowledged.
    pub unacked: Option<u64>,
    pub cwnd: Option<u64>,
    /// Bytes per second, the kernel's estimate.
    pub delivery_rate: Option<u64>,
    /// Time busy sending, and limited by the peer's receive window or our send buffer.
    pub busy_ns: Option<u64>,
    pub rwnd_limited_ns: Option<u64>,
    pub sndbuf_limited_ns: Option<u64>,
}

/// [`TcpInfo`]'s fields on the wire (KERNEL frames), then [`TxTotals`]'s: a receiver takes
/// the ones it knows, in this order, and ignores any after them.
pub const INFO_FIELDS: usize = 14;
pub const TX_FIELDS: usize = 6;
pub const FIELDS: usize = INFO_FIELDS + TX_FIELDS;

pub use crate::core::transmit::TxTotals;

impl TxTotals {
    pub fn to_fields(&self) -> [u64; TX_FIELDS] {
        [
            self.sent,
            self.queue_sum_ns,
            self.queue_max_ns,
            self.acked,
            self.ack_rtt_sum_ns,
            self.ack_rtt_min_ns,
        ]
    }

    /// `None` when the sender sent none (its socket had no transmit stamps).
    pub fn from_fields(fields: &[u64]) -> Option<TxTotals> {
        let at = |index: usize| fields.get(index).copied().filter(|&value| value != u64::MAX);
        Some(TxTotals {
            sent: at(0)?,
            queue_sum_ns: at(1)?,
            queue_max_ns: at(2)?,
            acked: at(3)?,
            ack_rtt_sum_ns: at(4)?,
            ack_rtt_min_ns: at(5)?,
        })
    }
}

impl TcpInfo {
    /// Parses the bytes `getsockopt(TCP_INFO)` returned (`len` of them).
    pub fn parse(bytes: &[u8]) -> TcpInfo {
        let u32_at = |at: usize| {
            bytes.get(at..at + 4).map(|b| u64::from(u32::from_ne_bytes([b[0], b[1], b[2], b[3]])))
        };
        let u16_at =
            |at: usize| bytes.get(at..at + 2).map(|b| u64::from(u16::from_ne_bytes([b[0], b[1]])));
        let u64_at = |at: usize| {
            bytes.get(at..at + 8).map(|b| {
                let mut array = [0; 8];
                array.copy_from_slice(b);
                u64::from_ne_bytes(array)
            })
        };
        let ns = |us: Option<u64>| us.map(|us| us.saturating_mul(1_000));
        TcpInfo {
            rtt_ns: ns(u32_at(offset::RTT_US)),
            rttvar_ns: ns(u32_at(offset::RTTVAR_US)),
            min_rtt_ns: ns(u32_at(offset::MIN_RTT_US)),
            total_retrans: u32_at(offset::TOTAL_RETRANS),
            bytes_retrans: u64_at(offset::BYTES_RETRANS),
            total_rto: u16_at(offset::TOTAL_RTO),
            reord_seen: u32_at(offset::REORD_SEEN),
            notsent_bytes: u32_at(offset::NOTSENT_BYTES),
            unacked: u32_at(offset::UNACKED),
            cwnd: u32_at(offset::SND_CWND),
            delivery_rate: u64_at(offset::DELIVERY_RATE),
            busy_ns: ns(u64_at(offset::BUSY_TIME_US)),
            rwnd_limited_ns: ns(u64_at(offset::RWND_LIMITED_US)),
            sndbuf_limited_ns: ns(u64_at(offset::SNDBUF_LIMITED_US)),
        }
    }

    /// The fields in wire order; an absent field is `u64::MAX`.
    pub fn to_fields(&self) -> [u64; INFO_FIELDS] {
        [
            self.rtt_ns,
            self.rttvar_ns,
            self.min_rtt_ns,
            self.total_retrans,
            self.bytes_retrans,
            self.total_rto,
            self.reord_seen,
            self.notsent_bytes,
            self.unacked,
            self.cwnd,
            self.delivery_rate,
            self.busy_ns,
            self.rwnd_limited_ns,
            self.sndbuf_limited_ns,
        ]
        .map(|field| field.unwrap_or(u64::MAX))
    }

    /// From wire order; missing or `u64::MAX` fields are `None`, extra ones ignored.
    pub fn from_fields(fields: &[u64]) -> TcpInfo {
        let at = |index: usize| fields.get(index).copied().filter(|&value| value != u64::MAX);
        TcpInfo {
            rtt_ns: at(0),
            rttvar_ns: at(1),
            min_rtt_ns: at(2),
            total_retrans: at(3),
            bytes_retrans: at(4),
            total_rto: at(5),
            reord_seen: at(6),
            notsent_bytes: at(7),
            unacked: at(8),
            cwnd: at(9),
            delivery_rate: at(10),
            busy_ns: at(11),
            rwnd_limited_ns: at(12),
            sndbuf_limited_ns: at(13),
        }
    }
}

/// Which of a hop's sockets a sample is of: the one towards the source or the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Upstream = 0,
    Downstream = 1,
}

/// A mean and a maximum of a gauge over the samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauge {
    pub sum: u128,
    pub max: u64,
    pub count: u64,
}

impl Gauge {
    fn add(&mut self, value: Option<u64>) {
        if let Some(value) = value {
            self.sum += u128::from(value);
            self.max = self.max.max(value);
            self.count += 1;
        }
    }

    pub fn mean(&self) -> Option<u64> {
        (self.count > 0).then(|| (self.sum / u128::from(self.count)) as u64)
    }
}

/// One end of a link over the run: its last reading, the counters of the connections before
/// it, and gauges over every reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct End {
    pub last: TcpInfo,
    /// The counters at the last reading of each earlier connection, summed: a continuous run
    /// that reconnected after an outage reads new sockets, whose counters start again at zero.
    pub earlier: TcpInfo,
    pub samples: u64,
    pub notsent_bytes: Gauge,
    pub unacked: Gauge,
    /// The lowest `min_rtt` seen.
    pub min_rtt_ns: Option<u64>,
    /// The transmit stamps' totals at the last reading that had them.
    pub tx: Option<TxTotals>,
}

/// The counters `TCP_INFO` keeps from a connection's start; none of them ever decreases on one
/// connection.
const COUNTERS: [fn(&mut TcpInfo) -> &mut Option<u64>; 7] = [
    |info| &mut info.total_retrans,
    |info| &mut info.bytes_retrans,
    |info| &mut info.total_rto,
    |info| &mut info.reord_seen,
    |info| &mut info.busy_ns,
    |info| &mut info.rwnd_limited_ns,
    |info| &mut info.sndbuf_limited_ns,
];

impl End {
    pub fn add(&mut self, mut info: TcpInfo, tx: Option<TxTotals>) {
        self.tx = tx.or(self.tx);
        let mut last = self.last;
        let restarted = self.samples > 0
            && COUNTERS.iter().any(|counter| match (*counter(&mut info), *counter(&mut last)) {
                (Some(now), Some(before)) => now < before,
                _ => false,
            });
        if restarted {
            for counter in COUNTERS {
                let (before, earlier) = (*counter(&mut last), counter(&mut self.earlier));
                if let Some(before) = before {
                    *earlier = Some(earlier.unwrap_or(0) + before);
                }
            }
        }
        self.last = info;
        self.samples += 1;
        self.notsent_bytes.add(info.notsent_bytes);
        self.unacked.add(info.unacked);
        self.min_rtt_ns = match (self.min_rtt_ns, info.min_rtt_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// A counter over the run. Every connection a run reads starts with it (a source's
    /// connection and the hops' behind it are made for the run), so a counter counts from the
    /// connection's start: taken from the first reading instead, a hop's first 100 ms timer
    /// would lose what happened before it, which in a short bulk run is nearly everything.
    pub fn delta(&self, field: fn(&TcpInfo) -> Option<u64>) -> Option<u64> {
        Some(field(&self.last)? + field(&self.earlier).unwrap_or(0))
    }
}

/// The kernel's view of every link, from both of its ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// Index `i`: the link between hops `i` and `i + 1`; `(near, far)`: hop i's downstream
    /// socket and hop i+1's upstream socket.
    pub ends: Vec<(End, End)>,
}

impl Links {
    /// Attributes hop `hop`'s reading of its `side` socket to the link it belongs to.
    pub fn add(&mut self, hop: usize, side: Side, info: TcpInfo, tx: Option<TxTotals>) {
        let (link, near) = match side {
            Side::Downstream => (hop, true),
            Side::Upstream if hop > 0 => (hop - 1, false),
            Side::Upstream => return,
        };
        if link >= crate::wire::MAX_HOPS {
            return;
        }
        if self.ends.len() <= link {
            self.ends.resize(link + 1, (End::default(), End::default()));
        }
        let (near_end, far_end) = &mut self.ends[link];
        if near { near_end.add(info, tx) } else { far_end.add(info, tx) }
    }

    pub fn link(&self, hop: usize) -> Option<&(End, End)> {
        self.ends.get(hop).filter(|(near, far)| near.samples + far.samples > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fields_past_the_kernel_s_length_are_absent() {
        let mut bytes = [0u8; 320];
        bytes[offset::RTT_US..offset::RTT_US + 4].copy_from_slice(&250u32.to_ne_bytes());
        bytes[offset::MIN_RTT_US..offset::MIN_RTT_US + 4].copy_from_slice(&40u32.to_ne_bytes());
        bytes[offset::TOTAL_RTO..offset::TOTAL_RTO + 2].copy_from_slice(&3u16.to_ne_bytes());
        let full = TcpInfo::parse(&bytes);
        assert_eq!(
            (full.rtt_ns, full.min_rtt_ns, full.total_rto),
            (Some(250_000), Some(40_000), Some(3))
        );
        // A 4.4 kernel's 144 bytes: no min_rtt, no total_rto.
        let old = TcpInfo::parse(&bytes[..144]);
        assert_eq!((old.rtt_ns, old.min_rtt_ns, old.total_rto), (Some(250_000), None, None));
        assert_eq!(TcpInfo::from_fields(&old.to_fields()), old);
        let tx = TxTotals {
            sent: 3,
            queue_sum_ns: 30,
            queue_max_ns: 20,
            acked: 2,
            ack_rtt_sum_ns: 8,
            ack_rtt_min_ns: 3,
        };
        assert_eq!(TxTotals::from_fields(&tx.to_fields()), Some(tx));
        assert_eq!(TxTotals::from_fields(&[u64::MAX; TX_FIELDS]), None);
        assert_eq!(TxTotals::from_fields(&[]), None, "an older hop's sample has none");
        assert_eq!(TcpInfo::from_fields(&full.to_fields()[..3]).min_rtt_ns, Some(40_000));
    }

    #[test]
    fn test_a_real_socket_gives_its_info() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let info =
            crate::net::tcp_info(std::os::fd::AsRawFd::as_raw_fd(&client)).expect("TCP_INFO");
        assert!(info.rtt_ns.is_some() && info.cwnd.is_some_and(|cwnd| cwnd > 0), "{info:?}");
        assert_eq!(crate::net::tcp_info(-1), None);
    }

    #[test]
    fn test_readings_go_to_the_link_they_belong_to_and_counters_count_from_the_start() {
        let mut links = Links::default();
        let reading = |retrans: u64, notsent: u64| TcpInfo {
            total_retrans: Some(retrans),
            notsent_bytes: Some(notsent),
            min_rtt_ns: Some(1_000 + retrans),
            ..TcpInfo::default()
        };
        links.add(1, Side::Downstream, reading(10, 100), None);
        links.add(1, Side::Downstream, reading(14, 300), None);
        links.add(2, Side::Upstream, reading(0, 0), None);
        links.add(0, Side::Upstream, reading(0, 0), None); // the source has no link above it
        let (near, far) = links.link(1).unwrap();
        // From the connection's start, not from the first reading.
        assert_eq!(near.delta(|info| info.total_retrans), Some(14));
        assert_eq!((near.notsent_bytes.mean(), near.notsent_bytes.max), (Some(200), 300));
        assert_eq!(near.min_rtt_ns, Some(1_010));
        assert_eq!(far.samples, 1);
        assert!(links.link(0).is_none());
    }

    #[test]
    fn test_a_reconnected_end_adds_its_connections_counters() {
        let reading = |busy_ms: u64, retrans: Option<u64>| TcpInfo {
            busy_ns: Some(busy_ms * 1_000_000),
            total_retrans: retrans,
            ..TcpInfo::default()
        };
        let mut end = End::default();
        end.add(reading(30, Some(2)), None);
        end.add(reading(80, Some(3)), None);
        // An outage: the run's next connection starts again from zero.
        end.add(reading(5, Some(0)), None);
        end.add(reading(20, Some(1)), None);
        assert_eq!(end.delta(|info| info.busy_ns), Some(100_000_000));
        assert_eq!(end.delta(|info| info.total_retrans), Some(4));
        // Equal readings are the same connection, and a field missing is no restart.
        end.add(reading(20, None), None);
        assert_eq!(end.delta(|info| info.busy_ns), Some(100_000_000));
    }
}
