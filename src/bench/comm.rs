//! `ferrotron bench comm`: the nccl-tests table (size, count, type, redop, root, time, algbw,
//! busbw, #wrong) for a communicator, run on every rank, printed by rank 0.
//!
//! Conventions follow nccl-tests: `algbw = size / time` where size is the per-rank buffer the
//! op is named for (all-gather: the output, reduce-scatter: the input), and
//! `busbw = algbw * factor` with factor `2(n-1)/n` for all-reduce, `(n-1)/n` for all-gather and
//! reduce-scatter, `1` for broadcast. `#wrong` counts output elements that differ from the
//! exact expected value (inputs are small integers, so every sum is exact in f32 and bf16).

use crate::comm::{Communicator, ReduceOp};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::fmt::Write;
use std::time::Instant;

/// Which collective to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchOp {
    /// All-reduce (sum).
    AllReduce,
    /// All-gather.
    AllGather,
    /// Reduce-scatter (sum).
    ReduceScatter,
    /// Broadcast from rank 0.
    Broadcast,
}

impl BenchOp {
    /// Parses `all_reduce`, `all_gather`, `reduce_scatter`, `broadcast`.
    pub fn parse(s: &str) -> Option<BenchOp> {
        match s {
            "all_reduce" | "allreduce" => Some(BenchOp::AllReduce),
            "all_gather" | "allgather" => Some(BenchOp::AllGather),
            "reduce_scatter" | "reducescatter" => Some(BenchOp::ReduceScatter),
            "broadcast" => Some(BenchOp::Broadcast),
            _ => None,
        }
    }

    /// nccl-tests' bus-bandwidth factor for `n` ranks.
    pub fn bus_factor(self, n: usize) -> f64 {
        let n = n as f64;
        match self {
            BenchOp::AllReduce => 2.0 * (n - 1.0) / n,
            BenchOp::AllGather | BenchOp::ReduceScatter => (n - 1.0) / n,
            BenchOp::Broadcast => 1.0,
        }
    }
}

/// The bytes `op` must at least read and write, per byte of its nccl-tests size, on `n` ranks
/// together: (reads, writes). All-reduce is in place (every buffer read and rewritten),
/// all-gather reads each input once and writes every output, reduce-scatter reads every input
/// and writes one block per rank, broadcast reads the root's buffer and writes every other.
pub fn minimal_traffic(op: BenchOp, n: usize) -> (f64, f64) {
    let n = n as f64;
    match op {
        BenchOp::AllReduce => (n, n),
        BenchOp::AllGather => (1.0, n),
        BenchOp::ReduceScatter => (n, 1.0),
        BenchOp::Broadcast => (1.0, n - 1.0),
    }
}

/// The highest bus bandwidth `op` could reach on `n` ranks sharing one memory that reads at
/// `rates.read_gbps` and writes at `rates.write_gbps`, reads and writes overlapping perfectly:
/// its [`minimal_traffic`] at those rates sets the shortest time. An upper bound (a roofline),
/// not a prediction.
pub fn roofline_busbw(op: BenchOp, n: usize, rates: crate::bench::MemoryRates) -> f64 {
    let (reads, writes) = minimal_traffic(op, n);
    let secs_per_byte = (reads / rates.read_gbps).max(writes / rates.write_gbps);
    op.bus_factor(n) / secs_per_byte
}

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct CommBench {
    /// The collective.
    pub op: BenchOp,
    /// Element type (f32 or bf16).
    pub dtype: DType,
    /// Smallest size in bytes.
    pub min_bytes: usize,
    /// Largest size in bytes.
    pub max_bytes: usize,
    /// Size multiplier between rows.
    pub factor: usize,
    /// Timed iterations per size (fewer are used for sizes above 16 MiB, at least 2).
    pub iters: usize,
    /// Untimed iterations per size.
    pub warmup: usize,
}

/// One row of the table.
#[derive(Clone, Debug)]
pub struct BenchRow {
    /// Bytes (per the nccl-tests convention).
    pub bytes: usize,
    /// Elements.
    pub count: usize,
    /// Microseconds per call.
    pub time_us: f64,
    /// Algorithm bandwidth, GB/s.
    pub algbw: f64,
    /// Bus bandwidth, GB/s.
    pub busbw: f64,
    /// Output elements that differ from the expected value.
    pub wrong: usize,
}

/// Runs the benchmark on this rank; every rank must call it with the same settings. Returns the
/// rows (the same on every rank: times are taken between barriers).
pub fn run_rank(dev: &Device, comm: &dyn Communicator, cfg: &CommBench) -> Result<Vec<BenchRow>> {
    if !matches!(cfg.dtype, DType::F32 | DType::BF16) {
        return Err(Error::UnsupportedDType {
            op: "bench comm",
            what: "dtype".into(),
            dtype: cfg.dtype,
        });
    }
    if cfg.factor < 2 || cfg.min_bytes == 0 || cfg.min_bytes > cfg.max_bytes {
        return Err(Error::invalid(
            "bench comm",
            "sizes",
            "need 0 < min <= max and factor >= 2",
        ));
    }
    let (n, rank) = (comm.size(), comm.rank());
    let es = cfg.dtype.size_in_bytes();
    let s = dev.new_named_stream("bench")?;
    let mut rows = Vec::new();
    let mut bytes = cfg.min_bytes;
    while bytes <= cfg.max_bytes {
        // Element count of the buffer the size refers to, divisible by the rank count.
        let count = (bytes / es / n).max(1) * n;
        let bytes_row = count * es;
        let block = count / n;
        // Rank r contributes the value r + 1 (exact sums for any n used here).
        let val = (rank + 1) as f64;
        let (mut a, mut b) = match cfg.op {
            BenchOp::AllReduce | BenchOp::Broadcast => (
                Tensor::from_f64(dev, &vec![val; count], [count], cfg.dtype)?,
                Tensor::zeros(dev, [1], cfg.dtype)?,
            ),
            BenchOp::AllGather => (
                Tensor::from_f64(dev, &vec![val; block], [block], cfg.dtype)?,
                Tensor::poisoned(dev, [count], cfg.dtype)?,
            ),
            BenchOp::ReduceScatter => (
                Tensor::from_f64(dev, &vec![val; count], [count], cfg.dtype)?,
                Tensor::poisoned(dev, [block], cfg.dtype)?,
            ),
        };
        let call = |a: &mut Tensor, b: &mut Tensor| -> Result<()> {
            match cfg.op {
                BenchOp::AllReduce => comm.all_reduce(&s, a, ReduceOp::Sum).map(|_| ()),
                BenchOp::AllGather => comm.all_gather(&s, a, b).map(|_| ()),
                BenchOp::ReduceScatter => comm.reduce_scatter(&s, a, b, ReduceOp::Sum).map(|_| ()),
                BenchOp::Broadcast => comm.broadcast(&s, a, 0).map(|_| ()),
            }
        };
        // Correctness first (one call on fresh inputs), like nccl-tests' -c 1.
        call(&mut a, &mut b)?;
        let out = match cfg.op {
            BenchOp::AllReduce | BenchOp::Broadcast => a.to_f64_vec(&s)?,
            _ => b.to_f64_vec(&s)?,
        };
        let total: f64 = (1..=n).map(|r| r as f64).sum();
        let wrong = out
            .iter()
            .enumerate()
            .filter(|(i, &v)| {
                let want = match cfg.op {
                    BenchOp::AllReduce | BenchOp::ReduceScatter => total,
                    BenchOp::AllGather => (i / block + 1) as f64,
                    BenchOp::Broadcast => 1.0,
                };
                v != want
            })
            .count();
        let iters = if bytes_row > 16 << 20 {
            cfg.iters.clamp(2, 5)
        } else {
            cfg.iters.max(1)
        };
        // The timed loop repeats the op on its own output; values grow but stay finite for
        // the few iterations used (they are not checked).
        for _ in 0..cfg.warmup {
            call(&mut a, &mut b)?;
        }
        comm.barrier(&s)?.wait()?;
        let t = Instant::now();
        for _ in 0..iters {
            call(&mut a, &mut b)?;
        }
        s.synchronize()?;
        comm.barrier(&s)?.wait()?;
        let secs = t.elapsed().as_secs_f64() / iters as f64;
        let algbw = bytes_row as f64 / secs / 1e9;
        rows.push(BenchRow {
            bytes: bytes_row,
            count,
            time_us: secs * 1e6,
            algbw,
            busbw: algbw * cfg.op.bus_factor(n),
            wrong,
        });
        if let Some(next) = bytes.checked_mul(cfg.factor) {
            bytes = next;
        } else {
            break;
        }
    }
    Ok(rows)
}

/// Bandwidth of a device-to-device copy of `bytes` bytes on `dev` ([`crate::ops::shard::copy`]:
/// `cuMemcpyDtoDAsync` on a GPU, the emulator's copy on an emulated device), in GB/s of bytes
/// copied, timed over `iters` copies after one untimed copy: the baseline for a device's
/// collectives.
pub fn device_copy_gbps(dev: &Device, bytes: usize, iters: usize) -> Result<f64> {
    let n = (bytes / 4).max(1);
    let s = dev.new_named_stream("copy baseline")?;
    let src = Tensor::zeros(dev, [n], DType::F32)?;
    let mut dst = Tensor::zeros(dev, [n], DType::F32)?;
    crate::ops::shard::copy(&s, &src, &mut dst)?;
    s.synchronize()?;
    let t = Instant::now();
    for _ in 0..iters.max(1) {
        crate::ops::shard::copy(&s, &src, &mut dst)?;
    }
    s.synchronize()?;
    let secs = t.elapsed().as_secs_f64() / iters.max(1) as f64;
    Ok((n * 4) as f64 / secs / 1e9)
}

/// The nccl-tests table for `rows`.
pub fn table(cfg: &CommBench, ranks: usize, backend: &str, rows: &[BenchRow]) -> String {
    let mut s = String::new();
    let redop = match cfg.op {
        BenchOp::AllReduce | BenchOp::ReduceScatter => "sum",
        _ => "none",
    };
    let root = if cfg.op == BenchOp::Broadcast {
        "0"
    } else {
        "-1"
    };
    let ty = match cfg.dtype {
        DType::BF16 => "bfloat16",
        _ => "float",
    };
    let _ = writeln!(s, "# {:?} on {ranks} ranks, backend {backend}", cfg.op);
    let _ = writeln!(
        s,
        "# {:>12} {:>12} {:>9} {:>6} {:>5} {:>11} {:>8} {:>8} {:>7}",
        "size", "count", "type", "redop", "root", "time", "algbw", "busbw", "#wrong"
    );
    let _ = writeln!(
        s,
        "# {:>12} {:>12} {:>9} {:>6} {:>5} {:>11} {:>8} {:>8} {:>7}",
        "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", ""
    );
    for r in rows {
        let _ = writeln!(
            s,
            "  {:>12} {:>12} {:>9} {:>6} {:>5} {:>11.1} {:>8.2} {:>8.2} {:>7}",
            r.bytes, r.count, ty, redop, root, r.time_us, r.algbw, r.busbw, r.wrong
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::MemoryRates;

    #[test]
    fn the_roofline_follows_from_the_minimal_traffic() {
        let even = MemoryRates {
            read_gbps: 40.0,
            write_gbps: 40.0,
        };
        // 4 ranks: all-reduce moves 4x in and 4x out at 40 GB/s: 0.1 ns per byte, busbw factor 1.5.
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b;
        assert!(close(roofline_busbw(BenchOp::AllReduce, 4, even), 15.0));
        assert!(close(roofline_busbw(BenchOp::AllGather, 4, even), 7.5));
        assert!(close(roofline_busbw(BenchOp::ReduceScatter, 4, even), 7.5));
        assert!(close(
            roofline_busbw(BenchOp::Broadcast, 4, even),
            40.0 / 3.0
        ));
        // The slower side decides: all-gather reads 1x (at 5 GB/s: 0.2 ns per byte) and writes
        // 4x (at 40 GB/s: 0.1 ns per byte).
        let slow_reads = MemoryRates {
            read_gbps: 5.0,
            write_gbps: 40.0,
        };
        assert!(close(
            roofline_busbw(BenchOp::AllGather, 4, slow_reads),
            3.75
        ));
        assert!(close(
            roofline_busbw(BenchOp::AllReduce, 4, slow_reads),
            1.875
        ));
    }
}
