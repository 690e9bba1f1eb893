//! CPU time used by processes, to report what each change cost the server and the load
//! generator. CPU time, unlike latency, hardly depends on how the two processes happened to
//! share the cores, so it tells apart the work a change causes from the noise of a run.

use std::time::Duration;

/// User + system CPU time of process `pid` so far (`None`: no such process, or not Linux).
/// Resolution is the kernel's clock tick, usually 10 ms.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = u64::try_from(per_second).ok().filter(|t| *t > 0)?;
    Some(Duration::from_micros(ticks * 1_000_000 / per_second))
}

/// User + system CPU time of this process so far, to the microsecond.
pub fn own_cpu_time() -> Option<Duration> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a `rusage` into the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: getrusage succeeded, so the struct is initialised (and it was zeroed anyway).
    let usage = unsafe { usage.assume_init() };
    let micros = |t: libc::timeval| -> Option<u64> {
        Some(u64::try_from(t.tv_sec).ok()? * 1_000_000 + u64::try_from(t.tv_usec).ok()?)
    };
    Some(Duration::from_micros(
        micros(usage.ru_utime)? + micros(usage.ru_stime)?,
    ))
}

/// `utime + stime` (fields 14 and 15, in clock ticks) of a `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may contain spaces, so fields are counted
/// from its closing parenthesis.
pub fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time of the server (if its pid is known) and of this process.
#[derive(Debug, Clone, Copy)]
pub struct CpuClock {
    server: Option<Duration>,
    own: Option<Duration>,
}

impl CpuClock {
    pub fn read(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(cpu_time),
            own: own_cpu_time(),
        }
    }

    /// Milliseconds used since `earlier`, per change: (server, load generator).
    pub fn ms_per_change_since(
        &self,
        earlier: &CpuClock,
        changes: usize,
    ) -> (Option<f64>, Option<f64>) {
        let per = |now: Option<Duration>, then: Option<Duration>| {
            let used = now?.checked_sub(then?)?;
            Some(used.as_secs_f64() * 1e3 / changes.max(1) as f64)
        };
        (per(self.server, earlier.server), per(self.own, earlier.own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 9 0 0 0 1234 56 0 0 20 0 3";
        assert_eq!(stat_cpu_ticks(stat), Some(1290));
        assert_eq!(stat_cpu_ticks("4242 (short) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }

    /// CPU time this test burns (measured by getrusage): many /proc clock ticks.
    const BURN: Duration = Duration::from_millis(200);

    #[test]
    fn both_clocks_see_this_process_work() {
        let pid = Some(std::process::id());
        let before = CpuClock::read(pid);
        let start = own_cpu_time().expect("getrusage works");
        let mut x = 0u64;
        while own_cpu_time().expect("getrusage works") < start + BURN {
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let after = CpuClock::read(pid);
        let (server, own) = after.ms_per_change_since(&before, 1);
        let burnt = BURN.as_secs_f64() * 1e3;
        let own = own.expect("own CPU time");
        assert!(own >= burnt, "{own} ms");
        // The "server" is this process read through /proc, which counts whole clock ticks
        // (usually 10 ms): it may trail getrusage by a tick or two, not by half.
        let server = server.expect("this process's CPU time through /proc");
        assert!(server >= burnt / 2.0, "/proc saw {server} ms of {own} ms");
        let (_, per_quarter) = after.ms_per_change_since(&before, 4);
        let per_quarter = per_quarter.expect("own CPU time");
        assert!(
            (per_quarter - own / 4.0).abs() < 1e-9,
            "{per_quarter} vs {own}"
        );
        assert_eq!(cpu_time(u32::MAX), None);
    }
}
