//! The one clock every stamp comes from: CLOCK_MONOTONIC_RAW in nanoseconds.
//!
//! RAW is not slewed by NTP, so a difference of two stamps on one host is a true interval even
//! while the host's clock is being disciplined. Stamps of different hosts are never compared.

pub fn now_ns() -> u64 {
    let mut spec = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `spec` is a valid, writable timespec; CLOCK_MONOTONIC_RAW exists on every Linux
    // this tool supports, so the call cannot fail.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut spec) };
    debug_assert_eq!(result, 0, "clock_gettime(CLOCK_MONOTONIC_RAW) failed");
    spec.tv_sec as u64 * 1_000_000_000 + spec.tv_nsec as u64
}
