//! Process-wide knobs for latency-critical hosts: CPU pinning, SCHED_FIFO, locked memory, and
//! the signal flags the loops poll. None is on by default; each returns or prints a clear
//! message when the host does not permit it.

use std::io;

use crate::log_line;
use std::sync::atomic::{AtomicU32, Ordering};

/// Pins the whole process to one CPU, so its wake-ups never migrate (a cross-CPU wake-up costs
/// tens of microseconds on small VMs).
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it (cpu is range-checked first).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "CPU number too large"));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// SCHED_FIFO at a low real-time priority: above every normal task, below the kernel's own
/// real-time threads.
pub fn make_realtime() -> io::Result<()> {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: a valid sched_param for this process.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Locks the process's pages in memory as they are first touched (MCL_ONFAULT), so the steady
/// state takes no page faults, without making every connection's untouched buffer resident.
pub fn lock_memory() -> io::Result<()> {
    // SAFETY: mlockall has no memory-safety preconditions.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The knobs as given on the command line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tuning {
    pub busy_poll: bool,
    pub cpu: Option<usize>,
    pub realtime: bool,
    pub mlock: bool,
}

impl Tuning {
    /// Applies the knobs; what the host refuses is a warning, not a failure, because the tool
    /// still measures correctly without them.
    pub fn apply(&self, name: &str) {
        if let Some(cpu) = self.cpu
            && let Err(error) = pin_to_cpu(cpu)
        {
            log_line!("{name}: warning: cannot pin to CPU {cpu}: {error}");
        }
        let mut realtime = false;
        if self.realtime {
            match make_realtime() {
                Ok(()) => realtime = true,
                Err(error) => log_line!(
                    "{name}: warning: cannot switch to SCHED_FIFO ({error}); running as a normal task"
                ),
            }
        }
        if self.mlock {
            match lock_memory() {
                Ok(()) => {
                    if let Some(limit) = locked_memory_limit() {
                        log_line!(
                            "{name}: warning: --mlock without CAP_IPC_LOCK: every connection's \
                             buffers count in full against the locked-memory limit of {} KiB \
                             (ulimit -l), 2 MiB for the echoing end and 4 MiB for a relay; \
                             connections past it are refused",
                            limit >> 10
                        );
                    }
                }
                Err(error) => log_line!(
                    "{name}: warning: cannot lock memory ({error}); page faults remain possible"
                ),
            }
        }
        if self.busy_poll
            && realtime
            && let Some(throttle) = realtime_throttle()
            && let Some(warning) = realtime_spin_warning(throttle, self.cpu)
        {
            log_line!("{name}: warning: {warning}");
        }
        if self.busy_poll && self.cpu.is_none() {
            log_line!(
                "{name}: warning: --busy-poll without --cpu spins on a CPU shared with other \
                 processes, which wrecks the tail latency; pin it with --cpu N"
            );
        }
    }
}

/// RLIMIT_MEMLOCK in bytes when it binds this process: finite, and no CAP_IPC_LOCK (bit 14 of
/// the effective capabilities) to lift it. Once mlockall(MCL_FUTURE) is on, every new mapping
/// counts against it in full, touched or not.
fn locked_memory_limit() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let effective = status.lines().find_map(|line| line.strip_prefix("CapEff:"))?;
    let effective = u64::from_str_radix(effective.trim(), 16).ok()?;
    const CAP_IPC_LOCK: u32 = 14;
    if effective & (1 << CAP_IPC_LOCK) != 0 {
        return None;
    }
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return None;
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// The kernel's real-time throttle, `(sched_rt_runtime_us, sched_rt_period_us)`, when readable.
fn realtime_throttle() -> Option<(i64, i64)> {
    let read = |name: &str| -> Option<i64> {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}")).ok()?.trim().parse().ok()
    };
    Some((read("sched_rt_runtime_us")?, read("sched_rt_period_us")?))
}

/// What a spinning SCHED_FIFO process does to its CPU under the real-time throttle: other
/// tasks get the rest of each period in one piece, a stall of the relay that shows as a run's
/// maximum latency (54 ms measured next to a CPU hog with the default 950 of 1000 ms).
fn realtime_spin_warning(throttle: (i64, i64), cpu: Option<usize>) -> Option<String> {
    let (runtime_us, period_us) = throttle;
    let where_ = cpu.map_or_else(|| "its CPU".to_string(), |cpu| format!("CPU {cpu}"));
    if runtime_us < 0 {
        return Some(format!(
            "--busy-poll with --realtime and no real-time throttle (sched_rt_runtime_us = -1): \
             no other task will run on {where_}"
        ));
    }
    (runtime_us < period_us).then(|| {
        format!(
            "--busy-poll with --realtime: when another task wants {where_}, the kernel stops the \
             relay for up to {:.0} ms every {:.0} ms (sched_rt_runtime_us); keep the CPU free of \
             other tasks",
            (period_us - runtime_us) as f64 / 1000.0,
            period_us as f64 / 1000.0
        )
    })
}

/// For a helper thread (an output writer): undoes what [`Tuning::apply`] gave the process for
/// its loop, so the thread runs at normal priority and on any CPU but the loop's (`loop_cpu`),
/// where it would delay the loop's wake-ups. Best effort: a thread that cannot move still works.
pub fn leave_loop_settings(loop_cpu: Option<usize>) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: on Linux both calls with pid 0 act on the calling thread; the set is plain data
    // and CPU_SET is only called below CPU_SETSIZE.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
        let online = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let mut any = false;
        for cpu in (0..online.min(libc::CPU_SETSIZE as usize)).filter(|&cpu| Some(cpu) != loop_cpu)
        {
            libc::CPU_SET(cpu, &mut set);
            any = true;
        }
        if any {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
}

static STOP_SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP_SIGNALS.fetch_add(1, Ordering::Relaxed);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the process; the loops check it after
/// every wake-up (a signal also interrupts the poll, so they wake at once).
pub fn catch_stop_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_stop_signal as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

pub fn stop_requested() -> bool {
    stop_signals() > 0
}

/// How many SIGINT/SIGTERM have arrived: a second one means "now", not "cleanly".
pub fn stop_signals() -> u32 {
    STOP_SIGNALS.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spinning_realtime_relay_is_warned_of_the_throttle_it_meets() {
        let default = realtime_spin_warning((950_000, 1_000_000), Some(1)).unwrap();
        assert!(
            default.contains("CPU 1") && default.contains("up to 50 ms every 1000 ms"),
            "{default}"
        );
        let unthrottled = realtime_spin_warning((-1, 1_000_000), None).unwrap();
        assert!(unthrottled.contains("no other task will run on its CPU"), "{unthrottled}");
        assert_eq!(realtime_spin_warning((1_000_000, 1_000_000), Some(0)), None);
    }
}
