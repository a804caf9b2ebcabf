//! The overlap kernels (issue #8) on 2, 3 and 4 emulated GPUs: GEMM + reduce-scatter
//! (`kernels/overlap/gemm_rs.cu`, the tests at the end, built the same way) and the all-gather +
//! GEMM kernel (`kernels/overlap/ag_gemm.cu`) on 2, 3 and 4
//! emulated GPUs: `Communicator::all_gather_gemm` of the peer communicator (fused when the
//! shapes allow it) against the unfused all-gather then GEMM on the same emulated GPUs
//! (bitwise: the same dot products in the same order) and against the threads backend on the
//! CPU (to the bf16 reduction tolerance: the CPU GEMM sums in another order). Shapes cover both
//! fused tiles (64 and 128 rows), the bias epilogue, a shard height no tile divides (the
//! unfused fallback), and every shape twice in a row (epochs, staging reuse). Outputs start
//! poisoned, so an element the kernel never writes is caught.
//!
//! Without kernels (built without nvcc) each test prints why it skipped; with
//! `FERROTRON_REQUIRE_KERNELS=1` (CI) a missing image fails instead.

mod common;

use common::{kernels_or_skip, watchdog};
use ferrotron::comm::peer::{self, PeerConfig};
use ferrotron::comm::{
    all_gather_then_gemm, gemm_then_reduce_scatter, launch_with, CommConfig, Communicator,
};
use ferrotron::ops::Epilogue;
use ferrotron::verify::{compare, random_vec, Tolerance};
use ferrotron::{BackendKind, DType, Device, Error, Tensor};
use std::time::{Duration, Instant};

fn short() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(60),
        deadlock_grace: Duration::from_millis(200),
    }
}

/// `(m_local, k, n, bias)`: fused with the 64 tile (with and without bias), fused with the 128
/// tile (`m >= 128`, `n >= 128`, 128 | `m_local`), and unfused (64 does not divide 24).
const CASES: [(usize, usize, usize, bool); 4] = [
    (64, 64, 64, false),
    (64, 48, 72, true),
    (128, 32, 128, false),
    (24, 40, 48, true),
];

/// Per call: the bits of `y` from `all_gather_gemm`, then from the unfused path, as f64 bits.
type Out = Vec<(Vec<f64>, Vec<f64>)>;

/// Every case twice (different data), on this rank.
fn scenario(rank: usize, world: usize, device: &Device, comm: &dyn Communicator) -> Out {
    let stream = device.new_stream().unwrap();
    let mut out = Vec::new();
    for round in 0..2u64 {
        for (case, &(m_local, k, n, with_bias)) in CASES.iter().enumerate() {
            let salt = 100 * round + 10 * case as u64;
            let t = |seed: u64, dims: &[usize], scale: f64| {
                let len = dims.iter().product();
                Tensor::from_f64(
                    device,
                    &random_vec(seed, len, -scale, scale),
                    dims,
                    DType::BF16,
                )
                .unwrap()
            };
            // Every rank's shard differs; the weight and bias are this rank's own too (a
            // column-parallel layer's shard), the GEMM only needs them local.
            let x = t(salt + 1000 * (rank as u64 + 1), &[m_local, k], 1.0);
            let w = t(salt + 2 + 7 * rank as u64, &[n, k], 0.3);
            let b = t(salt + 3 + 7 * rank as u64, &[n], 0.5);
            let epi = || match with_bias {
                true => Epilogue::Bias(&b),
                false => Epilogue::None,
            };
            let mut fused = Tensor::poisoned(device, [world * m_local, n], DType::BF16).unwrap();
            comm.all_gather_gemm(&stream, &x, &w, &mut fused, epi())
                .unwrap()
                .wait()
                .unwrap();
            let mut plain = Tensor::poisoned(device, [world * m_local, n], DType::BF16).unwrap();
            all_gather_then_gemm(comm, &stream, &x, &w, &mut plain, epi())
                .unwrap()
                .wait()
                .unwrap();
            out.push((
                fused.to_f64_vec(&stream).unwrap(),
                plain.to_f64_vec(&stream).unwrap(),
            ));
        }
    }
    out
}

fn devices(world: usize) -> Vec<Device> {
    (0..world).map(|r| Device::emu(r).unwrap()).collect()
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// A per-rank scenario: every call's (fused, unfused) outputs on this rank.
type Scenario = fn(usize, usize, &Device, &dyn Communicator) -> Out;

/// Runs `scenario` on 2, 3 and 4 emulated GPUs (the peer communicator) and on as many thread
/// ranks (CPU), and checks every call of every rank: `len(world, call)` finite values, fused ==
/// unfused bitwise on the emulated GPUs and on the CPU (whose default is the unfused path
/// itself), and the emulated result within `tol(call)` of the CPU's.
fn on_2_3_4_gpus(
    scenario: Scenario,
    len: impl Fn(usize, usize) -> usize,
    tol: impl Fn(usize, usize) -> Tolerance,
    describe: impl Fn(usize) -> String,
) {
    on_gpus(
        &[(2, 2), (3, 1), (4, 4)],
        devices,
        scenario,
        len,
        tol,
        describe,
    );
}

/// [`on_2_3_4_gpus`] for the `(world, CTAs)` pairs `worlds` on the devices `devices(world)`.
fn on_gpus(
    worlds: &[(usize, u32)],
    devices: impl Fn(usize) -> Vec<Device>,
    scenario: Scenario,
    len: impl Fn(usize, usize) -> usize,
    tol: impl Fn(usize, usize) -> Tolerance,
    describe: impl Fn(usize) -> String,
) {
    for &(world, ctas) in worlds {
        let t0 = Instant::now();
        let config = PeerConfig {
            comm: short(),
            ctas,
            ..PeerConfig::default()
        };
        let emu = peer::launch(&devices(world), config, |ctx| {
            Ok(scenario(ctx.rank, world, &ctx.device, &ctx.comm))
        })
        .unwrap();
        let cpu = launch_with(world, BackendKind::Cpu, short(), |ctx| {
            Ok(scenario(ctx.rank, world, &ctx.device, &ctx.comm))
        })
        .unwrap();
        for rank in 0..world {
            for (call, ((fused, plain), (cpu_fused, cpu_plain))) in
                emu[rank].iter().zip(&cpu[rank]).enumerate()
            {
                let what = format!(
                    "world {world}, rank {rank}, call {call} ({})",
                    describe(call)
                );
                assert_eq!(fused.len(), len(world, call), "{what}");
                assert!(fused.iter().all(|v| v.is_finite()), "{what}: non-finite");
                assert!(same_bits(fused, plain), "{what}: fused != unfused");
                assert!(same_bits(cpu_fused, cpu_plain), "{what}: cpu paths differ");
                let c = compare(fused, cpu_fused, tol(world, call));
                assert!(c.pass, "{what}: device vs cpu {c}");
            }
        }
        eprintln!("world {world}: {:.1} s", t0.elapsed().as_secs_f64());
    }
}

/// On 2 emulated GPUs, `run(m_local)` has rank 0 call the fused operation and rank 1 the unfused
/// default: at a tile-aligned `m_local` (64) that must be a collective mismatch (proof the fused
/// kernel runs), at 24 (no tile divides it) both take the unfused path and agree.
fn fused_only_when_tile_aligned(run: impl Fn(usize) -> ferrotron::Result<Vec<()>>) {
    match run(64) {
        Err(Error::RankFailed { error, .. }) => assert!(
            matches!(*error, Error::CollectiveMismatch { .. }),
            "{error}"
        ),
        Err(e) => panic!("expected a mismatch, got {e}"),
        Ok(_) => panic!("m_local 64 did not take the fused kernel"),
    }
    run(24).expect("m_local 24: both ranks unfused");
}

/// Elements of call `call`'s `y` on each of `world` ranks (all-gather + GEMM).
fn ag_len(world: usize, call: usize) -> usize {
    world * CASES[call % CASES.len()].0 * CASES[call % CASES.len()].2
}

/// Tolerance of call `call` against the CPU (a bf16 dot product over `k`).
fn ag_tol(_world: usize, call: usize) -> Tolerance {
    Tolerance::for_reduction(DType::BF16, CASES[call % CASES.len()].1).scaled(2.0)
}

fn ag_describe(call: usize) -> String {
    let (m_local, k, n, _) = CASES[call % CASES.len()];
    format!("{m_local}x{k}x{n}")
}

#[test]
fn all_gather_gemm_on_2_3_4_emulated_gpus_equals_unfused_and_the_threads_backend() {
    if !kernels_or_skip("all_gather_gemm") {
        return;
    }
    watchdog(1200, "all_gather_gemm", || {
        on_2_3_4_gpus(scenario, ag_len, ag_tol, ag_describe);
    });
}

/// The fused kernel really runs for tile-aligned shapes: a rank calling it while its peer
/// calls the unfused path is a collective mismatch (all-gather-GEMM vs all-gather), while for
/// a shard height no tile divides both ranks take the unfused path and agree.
#[test]
fn tile_aligned_shapes_take_the_fused_kernel() {
    if !kernels_or_skip("all_gather_gemm_fused") {
        return;
    }
    watchdog(300, "all_gather_gemm_fused", || {
        let run = |m_local: usize| {
            let config = PeerConfig {
                comm: short(),
                ..PeerConfig::default()
            };
            peer::launch(&devices(2), config, |ctx| {
                let dev = &ctx.device;
                let stream = dev.new_stream()?;
                let x = Tensor::from_f64(
                    dev,
                    &random_vec(1, m_local * 32, -1.0, 1.0),
                    [m_local, 32],
                    DType::BF16,
                )?;
                let w = Tensor::from_f64(
                    dev,
                    &random_vec(2, 64 * 32, -1.0, 1.0),
                    [64, 32],
                    DType::BF16,
                )?;
                let mut y = Tensor::poisoned(dev, [2 * m_local, 64], DType::BF16)?;
                let work = if ctx.rank == 0 {
                    ctx.comm
                        .all_gather_gemm(&stream, &x, &w, &mut y, Epilogue::None)?
                } else {
                    all_gather_then_gemm(&ctx.comm, &stream, &x, &w, &mut y, Epilogue::None)?
                };
                work.wait()
            })
        };
        fused_only_when_tile_aligned(run);
    });
}

/// `(m_local, k, n)` of the GEMM + reduce-scatter cases: fused with the 64 tile, fused with the
/// 128 tile (`m >= 128`, `n >= 128`, 128 | `m_local`), and unfused (64 does not divide 24).
const RS_CASES: [(usize, usize, usize); 3] = [(64, 48, 72), (128, 32, 128), (24, 40, 48)];

/// Every GEMM + reduce-scatter case twice (different data) on this rank: the bits of `y` from
/// `gemm_reduce_scatter`, then from the unfused path.
fn rs_scenario(rank: usize, world: usize, device: &Device, comm: &dyn Communicator) -> Out {
    let stream = device.new_stream().unwrap();
    let mut out = Vec::new();
    for round in 0..2u64 {
        for (case, &(m_local, k, n)) in RS_CASES.iter().enumerate() {
            let salt = 100 * round + 10 * case as u64;
            let t = |seed: u64, dims: &[usize], scale: f64| {
                let len = dims.iter().product();
                Tensor::from_f64(
                    device,
                    &random_vec(seed, len, -scale, scale),
                    dims,
                    DType::BF16,
                )
                .unwrap()
            };
            // A row-parallel layer: every rank has all the rows of its own K shard of x and
            // its own K shard of the weight.
            let x = t(salt + 1000 * (rank as u64 + 1), &[world * m_local, k], 1.0);
            let w = t(salt + 2 + 7 * rank as u64, &[n, k], 0.3);
            let mut fused = Tensor::poisoned(device, [m_local, n], DType::BF16).unwrap();
            comm.gemm_reduce_scatter(&stream, &x, &w, &mut fused)
                .unwrap()
                .wait()
                .unwrap();
            let mut plain = Tensor::poisoned(device, [m_local, n], DType::BF16).unwrap();
            gemm_then_reduce_scatter(comm, &stream, &x, &w, &mut plain)
                .unwrap()
                .wait()
                .unwrap();
            out.push((
                fused.to_f64_vec(&stream).unwrap(),
                plain.to_f64_vec(&stream).unwrap(),
            ));
        }
    }
    out
}

/// Elements of call `call`'s `y` (GEMM + reduce-scatter).
fn rs_len(_world: usize, call: usize) -> usize {
    RS_CASES[call % RS_CASES.len()].0 * RS_CASES[call % RS_CASES.len()].2
}

/// The sum over ranks of bf16 partial products: a reduction over `k * world` terms.
fn rs_tol(world: usize, call: usize) -> Tolerance {
    Tolerance::for_reduction(DType::BF16, RS_CASES[call % RS_CASES.len()].1 * world).scaled(2.0)
}

fn rs_describe(call: usize) -> String {
    let (m_local, k, n) = RS_CASES[call % RS_CASES.len()];
    format!("{m_local}x{k}x{n}")
}

#[test]
fn gemm_reduce_scatter_on_2_3_4_emulated_gpus_equals_unfused_and_the_threads_backend() {
    if !kernels_or_skip("gemm_reduce_scatter") {
        return;
    }
    watchdog(1200, "gemm_reduce_scatter", || {
        on_2_3_4_gpus(rs_scenario, rs_len, rs_tol, rs_describe);
    });
}

/// The fused GEMM + reduce-scatter really runs for tile-aligned shapes: a rank calling it while
/// its peer calls the unfused path is a collective mismatch, while for a shard height no tile
/// divides both ranks take the unfused path and agree.
#[test]
fn tile_aligned_shapes_take_the_fused_gemm_reduce_scatter() {
    if !kernels_or_skip("gemm_reduce_scatter_fused") {
        return;
    }
    watchdog(300, "gemm_reduce_scatter_fused", || {
        let run = |m_local: usize| {
            let config = PeerConfig {
                comm: short(),
                ..PeerConfig::default()
            };
            peer::launch(&devices(2), config, |ctx| {
                let dev = &ctx.device;
                let stream = dev.new_stream()?;
                let x = Tensor::from_f64(
                    dev,
                    &random_vec(1, 2 * m_local * 32, -1.0, 1.0),
                    [2 * m_local, 32],
                    DType::BF16,
                )?;
                let w = Tensor::from_f64(
                    dev,
                    &random_vec(2, 64 * 32, -1.0, 1.0),
                    [64, 32],
                    DType::BF16,
                )?;
                let mut y = Tensor::poisoned(dev, [m_local, 64], DType::BF16)?;
                let work = if ctx.rank == 0 {
                    ctx.comm.gemm_reduce_scatter(&stream, &x, &w, &mut y)?
                } else {
                    gemm_then_reduce_scatter(&ctx.comm, &stream, &x, &w, &mut y)?
                };
                work.wait()
            })
        };
        fused_only_when_tile_aligned(run);
    });
}

/// Both overlap operations on real GPUs (`scripts/gpu-check.sh`): one rank per GPU on 2 to 4
/// GPUs (the fused kernels), or, on a one-GPU machine, 2 and 3 virtual ranks on GPU 0 (ranks
/// sharing a GPU take the unfused path: spinning GEMM CTAs could starve a peer's launch), with
/// the same checks as on the emulator.
#[test]
fn overlap_on_gpus_equals_unfused_and_the_threads_backend() {
    let gpus = common::gpus_or_skip("overlap_gpu");
    if gpus == 0 || !kernels_or_skip("overlap_gpu") {
        return;
    }
    watchdog(600, "overlap_gpu", move || {
        let worlds: Vec<(usize, u32)> = if gpus >= 2 {
            (2..=gpus.min(4)).map(|w| (w, 2)).collect()
        } else {
            vec![(2, 2), (3, 1)]
        };
        let devices = move |world| common::cuda_ranks(world, gpus);
        on_gpus(&worlds, devices, scenario, ag_len, ag_tol, ag_describe);
        on_gpus(&worlds, devices, rs_scenario, rs_len, rs_tol, rs_describe);
    });
}
