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

/// Single-thread memcpy bandwidth (GB/s, bytes copied / time) for `bytes`, best of a few runs.
pub fn memcpy_gbps(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e9
}

/// memcpy bandwidth (GB/s, bytes copied / time) of `threads` threads copying disjoint parts of
/// `bytes` at once, best of a few runs: what the machine's memory gives all its cores together
/// (compare with [`memcpy_gbps`]: when they are equal, one thread already saturates memory and
/// no algorithm moves bytes faster than a single-thread copy).
pub fn memcpy_parallel_gbps(bytes: usize, threads: usize) -> f64 {
    let threads = threads.max(1);
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let part = bytes.div_ceil(threads).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = std::time::Instant::now();
        std::thread::scope(|s| {
            for (d, c) in dst.chunks_mut(part).zip(src.chunks(part)) {
                s.spawn(move || {
                    d.copy_from_slice(std::hint::black_box(c));
                    std::hint::black_box(d);
                });
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e9
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
    fn parallel_memcpy_copies_everything() {
        // The figure itself is a measurement; here only that it is a positive, finite rate.
        let g = memcpy_parallel_gbps(1 << 16, 3);
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
