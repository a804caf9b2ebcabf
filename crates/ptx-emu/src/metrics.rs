//! Exact, repeatable counters of one launch, in the spirit of Nsight Compute's metrics, and a
//! roofline estimate for a named GPU.
//!
//! Counting rules (documented so a figure can be interpreted):
//! - `thread_instructions`: every instruction a thread executed (guard false included, like
//!   `thread_inst_executed`), split by [`Class`].
//! - `warp_instructions`: per warp and instruction, the largest count over its lanes (lanes of a
//!   warp executing an instruction together count once, like `inst_executed`).
//! - A *request* is one warp-level execution of a memory instruction (lanes that execute the same
//!   instruction the same number of times are grouped). Global requests count the distinct
//!   32-byte sectors their lanes touch (`sectors / requests` = coalescing: 4 for 32 lanes reading
//!   consecutive f32). Shared requests count *wavefronts*: per request, the largest number of
//!   distinct 4-byte words any one of the 32 banks must serve, and at least ceil(words / 32)
//!   (a wavefront moves 128 bytes); `bank_conflicts` = wavefronts - that minimum, so a
//!   conflict-free 16-byte vector access counts 4 wavefronts and 0 conflicts. Each 8x8 matrix of
//!   an `ldmatrix` is its own request.
//! - `flops`: add/sub/mul = 1, fma = 2 per element (x2 types count both halves), `mma` =
//!   2·M·N·K per warp.

use crate::program::Class;
use std::collections::BTreeMap;
use std::fmt;

/// Counters of one launch (or the sum of several: [`Metrics::merge`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Instructions executed, summed over threads.
    pub thread_instructions: u64,
    /// Instructions executed, counted per warp.
    pub warp_instructions: u64,
    /// Thread instructions by class.
    pub by_class: BTreeMap<Class, u64>,
    /// Warp-level global (and generic-to-global) load requests.
    pub global_load_requests: u64,
    /// 32-byte sectors those loads touched.
    pub global_load_sectors: u64,
    /// Warp-level global store requests (atomics count as stores).
    pub global_store_requests: u64,
    /// 32-byte sectors those stores touched.
    pub global_store_sectors: u64,
    /// Distinct 32-byte sectors loaded in each launch (summed over launches): the traffic of a
    /// cache that never evicts, i.e. the compulsory DRAM reads.
    pub unique_load_sectors: u64,
    /// Distinct 32-byte sectors stored in each launch (summed over launches).
    pub unique_store_sectors: u64,
    /// Bytes the threads asked to read from global memory.
    pub global_bytes_read: u64,
    /// Bytes the threads asked to write to global memory.
    pub global_bytes_written: u64,
    /// Warp-level shared-memory requests (loads, stores, `ldmatrix` phases, atomics).
    pub shared_requests: u64,
    /// Shared-memory wavefronts (bank-conflict-serialised passes).
    pub shared_wavefronts: u64,
    /// Extra wavefronts caused by bank conflicts.
    pub shared_bank_conflicts: u64,
    /// Floating-point operations.
    pub flops: u64,
    /// CTAs run.
    pub ctas: u64,
}

impl Metrics {
    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Metrics) {
        self.thread_instructions += other.thread_instructions;
        self.warp_instructions += other.warp_instructions;
        for (k, v) in &other.by_class {
            *self.by_class.entry(*k).or_default() += v;
        }
        self.global_load_requests += other.global_load_requests;
        self.global_load_sectors += other.global_load_sectors;
        self.unique_load_sectors += other.unique_load_sectors;
        self.unique_store_sectors += other.unique_store_sectors;
        self.global_store_requests += other.global_store_requests;
        self.global_store_sectors += other.global_store_sectors;
        self.global_bytes_read += other.global_bytes_read;
        self.global_bytes_written += other.global_bytes_written;
        self.shared_requests += other.shared_requests;
        self.shared_wavefronts += other.shared_wavefronts;
        self.shared_bank_conflicts += other.shared_bank_conflicts;
        self.flops += other.flops;
        self.ctas += other.ctas;
    }

    /// Sectors per global load request (coalescing; 0 when there were none).
    pub fn sectors_per_load_request(&self) -> f64 {
        ratio(self.global_load_sectors, self.global_load_requests)
    }

    /// Sectors per global store request.
    pub fn sectors_per_store_request(&self) -> f64 {
        ratio(self.global_store_sectors, self.global_store_requests)
    }

    /// Bytes moved between the SMs and global memory if every sector went to DRAM once.
    pub fn dram_bytes(&self) -> u64 {
        32 * (self.global_load_sectors + self.global_store_sectors)
    }

    /// Compulsory bytes: every distinct sector of each launch moved once (what an ideal cache
    /// lets through to DRAM); compare with the bytes an ideal kernel needs.
    pub fn compulsory_bytes(&self) -> u64 {
        32 * (self.unique_load_sectors + self.unique_store_sectors)
    }

    /// The roofline estimate of this work on `gpu`.
    pub fn roofline(&self, gpu: &GpuSpec) -> Roofline {
        let bytes = self.dram_bytes();
        let memory_s = bytes as f64 / gpu.dram_bytes_per_s;
        let compute_s = self.flops as f64 / gpu.dense_flops_per_s;
        Roofline {
            gpu: gpu.name,
            bytes,
            flops: self.flops,
            memory_s,
            compute_s,
            estimate_s: memory_s.max(compute_s),
            bound: if memory_s >= compute_s {
                "memory"
            } else {
                "compute"
            },
        }
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "instructions: {} thread, {} warp, {} CTAs",
            self.thread_instructions, self.warp_instructions, self.ctas
        )?;
        for (k, v) in &self.by_class {
            writeln!(f, "  {k:?}: {v}")?;
        }
        writeln!(
            f,
            "global loads: {} requests, {} sectors ({:.2}/request), {} bytes",
            self.global_load_requests,
            self.global_load_sectors,
            self.sectors_per_load_request(),
            self.global_bytes_read
        )?;
        writeln!(
            f,
            "distinct sectors: {} loaded, {} stored ({} compulsory bytes)",
            self.unique_load_sectors,
            self.unique_store_sectors,
            self.compulsory_bytes()
        )?;
        writeln!(
            f,
            "global stores: {} requests, {} sectors ({:.2}/request), {} bytes",
            self.global_store_requests,
            self.global_store_sectors,
            self.sectors_per_store_request(),
            self.global_bytes_written
        )?;
        writeln!(
            f,
            "shared: {} requests, {} wavefronts, {} bank conflicts",
            self.shared_requests, self.shared_wavefronts, self.shared_bank_conflicts
        )?;
        write!(f, "flops: {}", self.flops)
    }
}

/// The published peak figures of a GPU, for [`Metrics::roofline`].
#[derive(Clone, Debug, PartialEq)]
pub struct GpuSpec {
    /// Name.
    pub name: &'static str,
    /// DRAM (HBM) bandwidth in bytes per second.
    pub dram_bytes_per_s: f64,
    /// Dense tensor-core bf16 peak in FLOP/s.
    pub dense_flops_per_s: f64,
}

impl GpuSpec {
    /// NVIDIA H100 SXM5 80 GB: 3.35 TB/s HBM3, 989.4 TFLOP/s dense bf16 (NVIDIA H100 datasheet).
    pub fn h100_sxm() -> GpuSpec {
        GpuSpec {
            name: "H100 SXM",
            dram_bytes_per_s: 3.35e12,
            dense_flops_per_s: 989.4e12,
        }
    }

    /// NVIDIA A100 SXM4 80 GB: 2.039 TB/s HBM2e, 312 TFLOP/s dense bf16 (NVIDIA A100 datasheet).
    pub fn a100_sxm() -> GpuSpec {
        GpuSpec {
            name: "A100 SXM 80GB",
            dram_bytes_per_s: 2.039e12,
            dense_flops_per_s: 312e12,
        }
    }
}

/// A roofline estimate: the time is the larger of bytes / bandwidth and flops / peak.
#[derive(Clone, Debug, PartialEq)]
pub struct Roofline {
    /// The GPU.
    pub gpu: &'static str,
    /// DRAM bytes assumed (sectors × 32).
    pub bytes: u64,
    /// FLOPs.
    pub flops: u64,
    /// bytes / bandwidth.
    pub memory_s: f64,
    /// flops / peak.
    pub compute_s: f64,
    /// max of the two.
    pub estimate_s: f64,
    /// `memory` or `compute`.
    pub bound: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roofline_picks_the_larger_time() {
        let m = Metrics {
            global_load_sectors: 1000,
            flops: 1_000_000,
            ..Metrics::default()
        };
        let r = m.roofline(&GpuSpec::h100_sxm());
        assert_eq!(r.bytes, 32_000);
        assert!((r.memory_s - 32_000.0 / 3.35e12).abs() < 1e-18);
        assert_eq!(r.bound, "memory");
        let m = Metrics {
            flops: 1 << 40,
            ..Metrics::default()
        };
        assert_eq!(m.roofline(&GpuSpec::h100_sxm()).bound, "compute");
    }
}
