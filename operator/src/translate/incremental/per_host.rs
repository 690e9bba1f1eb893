//! Building something per service host, spread over the cores when there are many (a first
//! build): what is built for a host depends on the mesh only.

use std::collections::BTreeSet;

/// Below this many hosts, building them on one thread is quicker than starting others.
pub(super) const PARALLEL_HOSTS: usize = 256;

/// `f` of each host, in order. Many hosts (a first build) are spread over every core: what
/// is built for a host depends on the mesh only.
pub(super) fn per_host<'a, T: Send>(
    hosts: &'a BTreeSet<String>,
    f: impl Fn(&'a str) -> T + Sync,
) -> Vec<(&'a str, T)> {
    let build = |chunk: &[&'a String]| -> Vec<(&'a str, T)> {
        chunk.iter().map(|h| (h.as_str(), f(h.as_str()))).collect()
    };
    let hosts: Vec<&String> = hosts.iter().collect();
    if hosts.len() < PARALLEL_HOSTS {
        return build(&hosts);
    }
    // Asked only here: finding the core count reads cgroup files, which would cost a small
    // change more than the change itself.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 {
        return build(&hosts);
    }
    let chunk = hosts.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = hosts
            .chunks(chunk)
            .skip(1)
            .map(|part| scope.spawn(|| build(part)))
            .collect();
        let mut out = build(&hosts[..chunk.min(hosts.len())]);
        for worker in workers {
            match worker.join() {
                Ok(part) => out.extend(part),
                // A panic in a worker is a bug; surface it as the same panic here.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}
