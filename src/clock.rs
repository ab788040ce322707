//! The clocks: CLOCK_MONOTONIC_RAW for every stamp, CLOCK_REALTIME only to turn a kernel
//! receive timestamp into a duration, CLOCK_MONOTONIC for timers.
//!
//! RAW is not slewed by NTP, so a difference of two stamps on one host is a true interval even
//! while the host's clock is being disciplined. Stamps of different hosts are never compared.
//! The kernel stamps received packets with CLOCK_REALTIME, which may be slewed or stepped, so a
//! kernel stamp is only ever subtracted from a REALTIME reading taken right after the read
//! (a duration of microseconds, where a slew does not show); a step shows as an impossible
//! duration and is rejected there. Timers (timerfd) cannot run on RAW, so schedules use
//! CLOCK_MONOTONIC.

fn read(clock: libc::clockid_t) -> u64 {
    let mut spec = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `spec` is a valid, writable timespec; the clocks used here exist on every Linux
    // this tool supports, so the call cannot fail.
    let result = unsafe { libc::clock_gettime(clock, &mut spec) };
    debug_assert_eq!(result, 0, "clock_gettime({clock}) failed");
    spec.tv_sec as u64 * 1_000_000_000 + spec.tv_nsec as u64
}

/// The stamp clock: CLOCK_MONOTONIC_RAW in nanoseconds.
pub fn now_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC_RAW)
}

/// CLOCK_REALTIME in nanoseconds since the epoch, the base of kernel receive timestamps.
pub fn realtime_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// CLOCK_MONOTONIC in nanoseconds, the base of timerfd deadlines.
pub fn monotonic_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}
