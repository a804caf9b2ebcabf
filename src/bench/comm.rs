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
