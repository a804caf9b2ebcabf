//! Benchmarks that print tables people already know how to read (nccl-tests for collectives),
//! each with its baseline measured in the same run.

pub mod codegen;
pub mod comm;
pub mod emu;
pub mod kernels;
pub mod kernels_gpu;
pub mod pp;
pub mod tp;
pub mod train;

/// Parses a byte size such as `1K`, `16M`, `1G` or `4096` (binary multiples).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (num, mult) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1usize << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<usize>().ok()?.checked_mul(mult)
}

/// The shortest of `runs` timings of `f`, in seconds.
fn best_secs(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Single-thread memcpy bandwidth (GB/s, bytes copied / time) for `bytes`, best of a few runs.
pub fn memcpy_gbps(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let best = best_secs(5, || {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
    });
    bytes as f64 / best / 1e9
}

/// memcpy bandwidth (GB/s, bytes copied / time) of `threads` threads copying disjoint parts of
/// `bytes` at once, best of a few runs (compare with [`memcpy_gbps`]: when they are equal, one
/// thread already gets all a copy can from this machine's memory).
pub fn memcpy_parallel_gbps(bytes: usize, threads: usize) -> f64 {
    let threads = threads.max(1);
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let part = bytes.div_ceil(threads).max(1);
    let best = best_secs(5, || {
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(part).zip(src.chunks(part)) {
                s.spawn(move || {
                    d.copy_from_slice(std::hint::black_box(c));
                    std::hint::black_box(d);
                });
            }
        });
    });
    bytes as f64 / best / 1e9
}

/// The memory's read and write rates with every core at once, in GB/s: the roofline of the
/// host collectives ([`comm::roofline_busbw`]).
#[derive(Clone, Copy, Debug)]
pub struct MemoryRates {
    /// Reading (summing) a buffer.
    pub read_gbps: f64,
    /// Writing a buffer with streaming stores (no read for ownership, no cache fill).
    pub write_gbps: f64,
}

/// [`MemoryRates`] measured over `bytes` split between `threads` threads, best of a few runs.
pub fn memory_rates(bytes: usize, threads: usize) -> MemoryRates {
    let threads = threads.max(1);
    let n = bytes.max(64 * threads);
    let mut buf = vec![1u8; n];
    let part = n.div_ceil(threads);
    let read = best_secs(5, || {
        std::thread::scope(|s| {
            for c in buf.chunks(part) {
                s.spawn(move || {
                    // 64 independent byte sums: vectorised, not bound by the adds' latency.
                    let lanes = c.chunks_exact(64).fold([0u8; 64], |mut acc, x| {
                        acc.iter_mut()
                            .zip(x)
                            .for_each(|(a, v)| *a = a.wrapping_add(*v));
                        acc
                    });
                    std::hint::black_box(lanes);
                });
            }
        });
    });
    let mut k = 0u8;
    let write = best_secs(5, || {
        k = k.wrapping_add(1);
        std::thread::scope(|s| {
            for c in buf.chunks_mut(part) {
                s.spawn(move || hostmem::fill(c, k, hostmem::Stores::Streaming));
            }
        });
    });
    MemoryRates {
        read_gbps: n as f64 / read / 1e9,
        write_gbps: n as f64 / write / 1e9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1K"), Some(1024));
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn memory_rates_are_positive_and_finite() {
        // The figures are measurements; here only that they are positive, finite rates.
        let r = memory_rates(1 << 16, 3);
        for g in [r.read_gbps, r.write_gbps] {
            assert!(g.is_finite() && g > 0.0, "{r:?}");
        }
    }

    #[test]
    fn parallel_memcpy_copies_everything() {
        // The figure itself is a measurement; here only that it is a positive, finite rate.
        let g = memcpy_parallel_gbps(1 << 16, 3);
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
