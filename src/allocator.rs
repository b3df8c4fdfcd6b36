//! glibc malloc settings for tensor-sized buffers.
//!
//! libtorch allocates CPU tensors with the C allocator. With glibc's default
//! (dynamic) thresholds, the surrogate lane's batch buffers (about 10 MB for
//! 32 requests of n0 = 100 noisy 28x28 copies) were handed back to the
//! kernel after every batch and faulted in again on the next: 135,000 minor
//! page faults a second and a third of the lane's CPU time in the kernel
//! under a steady load (issue 16). Fixed thresholds keep freed memory in the
//! process for reuse: the fault rate drops to zero and the served rate rises
//! to the engine's.

/// Largest request served from the heap rather than by its own mmap (glibc's
/// ceiling for this setting on 64-bit).
pub const MMAP_THRESHOLD: usize = 32 << 20;
/// Free memory at the top of a heap kept before any is returned to the kernel.
pub const TRIM_THRESHOLD: usize = 256 << 20;

/// Environment variables by which a user tunes glibc malloc; any one of them
/// set means the user decides, and nothing here is changed.
const USER_SETTINGS: [&str; 3] = [
    "GLIBC_TUNABLES",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
];

/// What [`keep_freed_memory`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tuning {
    Applied,
    /// The user set one of glibc's malloc variables.
    LeftToUser,
    /// Not glibc, or glibc refused a value.
    Unavailable,
}

/// Sets the thresholds, once, at process start (before the threads that
/// allocate tensors exist).
pub fn keep_freed_memory() -> Tuning {
    if USER_SETTINGS.iter().any(|v| std::env::var_os(v).is_some()) {
        return Tuning::LeftToUser;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> Tuning {
    // SAFETY: mallopt only changes allocator parameters; both values are
    // within glibc's documented ranges.
    let ok = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
    };
    if ok {
        Tuning::Applied
    } else {
        Tuning::Unavailable
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> Tuning {
    Tuning::Unavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Page faults of the calling thread while it allocates, touches and frees
    /// 40 buffers of 100 KB (forward-batch-sized tensors, below glibc's initial
    /// mmap threshold, so they come from the thread's heap), `rounds` times.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn faults_over_rounds(rounds: usize) -> i64 {
        let faults = || {
            // SAFETY: getrusage only fills the struct it is given.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
            usage.ru_minflt
        };
        let round = || {
            let buffers: Vec<Vec<u8>> = (0..40)
                .map(|_| {
                    let mut v = vec![0u8; 100 << 10];
                    for i in (0..v.len()).step_by(4096) {
                        v[i] = 1;
                    }
                    v
                })
                .collect();
            std::hint::black_box(&buffers);
        };
        round(); // the first round maps the pages
        let before = faults();
        for _ in 0..rounds {
            round();
        }
        faults() - before
    }

    /// With the thresholds set, freed buffers stay in the process: rounds
    /// after the first fault (almost) no pages in. With glibc's defaults the
    /// ~4 MB left free at the top of the heap after each round is handed
    /// back (madvise) and every round faults its ~1,000 pages in again:
    /// what the surrogate lane did after every batch.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_buffers_are_reused_without_page_faults() {
        if USER_SETTINGS.iter().any(|v| std::env::var_os(v).is_some()) {
            return;
        }
        assert_eq!(apply(), Tuning::Applied);
        // A thread of its own: its own malloc arena, as the lanes have.
        let faults = std::thread::spawn(|| faults_over_rounds(10))
            .join()
            .unwrap();
        assert!(faults < 500, "{faults} page faults over 10 rounds");
    }
}
