//! Which CPU each core thread runs on. Core `i` is pinned to the i-th CPU the process may
//! use (its affinity mask, as `CPUAffinity=` or `taskset` set it), not to CPU `i`, which
//! may be outside the mask or shared with another service. With more cores than allowed
//! CPUs, cores share CPUs round robin, and the log says so.

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// The CPU of each of `cores` core threads, or `None` for each when the mask is unknown.
pub fn plan(cores: usize) -> Vec<Option<usize>> {
    let allowed = match sched_getaffinity(None) {
        Ok(mask) => allowed_cpus(&mask),
        Err(error) => {
            tracing::warn!(%error, "cannot read the CPU affinity mask: core threads are not pinned");
            return vec![None; cores];
        }
    };
    if allowed.is_empty() {
        return vec![None; cores];
    }
    if allowed.len() < cores {
        tracing::warn!(
            cores,
            allowed_cpus = ?allowed,
            "fewer CPUs allowed than cores: some cores share a CPU (lower --cores to match)"
        );
    }
    assign(&allowed, cores).into_iter().map(Some).collect()
}

/// Pins the calling thread, core `core`, to `cpu`.
pub fn pin_current_thread(core: usize, cpu: Option<usize>) {
    let Some(cpu) = cpu else {
        return;
    };
    let mut set = CpuSet::new();
    set.set(cpu);
    match sched_setaffinity(None, &set) {
        Ok(()) => tracing::debug!(core, cpu, "core thread pinned"),
        Err(error) => tracing::warn!(core, cpu, %error, "could not pin the core thread"),
    }
}

/// The CPUs set in `mask`, in order.
fn allowed_cpus(mask: &CpuSet) -> Vec<usize> {
    (0..CpuSet::MAX_CPU)
        .filter(|&cpu| mask.is_set(cpu))
        .collect()
}

/// Core `i` gets the i-th allowed CPU, round robin when there are more cores.
fn assign(allowed: &[usize], cores: usize) -> Vec<usize> {
    (0..cores)
        .map(|core| allowed[core % allowed.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_take_the_allowed_cpus_in_order() {
        assert_eq!(assign(&[2, 5, 7], 3), vec![2, 5, 7]);
        assert_eq!(assign(&[3], 2), vec![3, 3]);
        assert_eq!(assign(&[1, 4], 5), vec![1, 4, 1, 4, 1]);
        let mut mask = CpuSet::new();
        mask.set(1);
        mask.set(6);
        assert_eq!(allowed_cpus(&mask), vec![1, 6]);
    }
}
