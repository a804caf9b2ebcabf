//! The tensor-parallel layers on emulated GPUs: the parallel MLP (column-parallel linear ->
//! fused bias+GeLU -> row-parallel linear), tp = 2, bf16, with and without sequence parallelism,
//! on 2 emulated GPUs talking through `comm::peer` (our peer-collective kernels) — the very same
//! parallel code as on CPU thread ranks — against the CPU backend run on identical inputs.
//!
//! The GEMM kernel accumulates in another order than the CPU GEMM, so the two agree to the bf16
//! reduction tolerance, not bitwise; the collectives themselves are bitwise equal to the thread
//! backend's (tests/peer_comm.rs).

mod common;

use common::watchdog;
use ferrotron::comm::peer::{self, PeerConfig};
use ferrotron::comm::{launch, Communicator};
use ferrotron::parallel::tp::{ParallelMlp, ParallelMlpConfig, TpStreams};
use ferrotron::verify::{compare, random_vec, Tolerance};
use ferrotron::{kernels, BackendKind, DType, Device, Result, Tensor};

const T: usize = 16;
const H: usize = 32;
const FFN: usize = 64;
const P: usize = 2;

/// Per rank: y, dx and the four gradients (this rank's shards), as f64.
type Out = Vec<Vec<f64>>;

fn run_rank(dev: &Device, comm: &dyn Communicator, sp: bool) -> Result<Out> {
    let streams = TpStreams::new(dev)?;
    let c = &streams.compute;
    let t = |seed: u64, dims: &[usize], scale: f64| {
        let n = dims.iter().product();
        Tensor::from_f64(dev, &random_vec(seed, n, -scale, scale), dims, DType::BF16)
    };
    let (w1, b1) = (t(1, &[FFN, H], 0.2)?, t(2, &[FFN], 0.1)?);
    let (w2, b2) = (t(3, &[H, FFN], 0.15)?, t(4, &[H], 0.1)?);
    let cfg = ParallelMlpConfig {
        sequence_parallel: sp,
        ..ParallelMlpConfig::new(H, FFN)
    };
    let mut mlp = ParallelMlp::from_full(&streams, comm, cfg, (&w1, Some(&b1)), (&w2, Some(&b2)))?;
    let tl = if sp { T / P } else { T };
    // Every rank's input is its chunk of the tokens under SP, all of them otherwise.
    let off = if sp { comm.rank() * tl * H } else { 0 };
    let xs = random_vec(5, T * H, -1.0, 1.0);
    let dys = random_vec(6, T * H, -1.0, 1.0);
    let x = Tensor::from_f64(dev, &xs[off..off + tl * H], [tl, H], DType::BF16)?;
    let dy = Tensor::from_f64(dev, &dys[off..off + tl * H], [tl, H], DType::BF16)?;
    let (y, acts) = mlp.forward(&streams, comm, &x)?;
    let dx = mlp.backward(&streams, comm, &x, &acts, &dy)?;
    streams.synchronize()?;
    let (fc1, fc2) = (mlp.linear_fc1(), mlp.linear_fc2());
    let mut out = vec![y.to_f64_vec(c)?, dx.to_f64_vec(c)?];
    for g in [
        fc1.grad_weight(),
        fc1.grad_bias().expect("bias"),
        fc2.grad_weight(),
        fc2.grad_bias().expect("bias"),
    ] {
        out.push(g.to_f64_vec(c)?);
    }
    Ok(out)
}

#[test]
fn parallel_mlp_on_two_emulated_gpus_matches_the_cpu_backend() {
    if !kernels::kernels_built() {
        assert!(
            std::env::var("FERROTRON_REQUIRE_KERNELS").as_deref() != Ok("1"),
            "FERROTRON_REQUIRE_KERNELS=1 but the kernels were not built"
        );
        println!("skipped: kernels not built (no nvcc)");
        return;
    }
    watchdog(
        300,
        "parallel_mlp_on_two_emulated_gpus_matches_the_cpu_backend",
        || {
            let devices: Vec<Device> = (0..P).map(|i| Device::emu(i).expect("emu")).collect();
            mlp_matches_the_cpu_backend(&devices);
            // The work really ran as kernels on the emulated GPUs.
            for d in &devices {
                let m = d.emu_metrics().expect("emulated");
                assert!(m.thread_instructions > 100_000, "{} ran {m:?}", d.label());
                assert_eq!(m.shared_bank_conflicts, 0, "{}", d.label());
            }
        },
    );
}

/// The same MLP on real GPUs (`scripts/gpu-check.sh`): one rank per GPU, or both ranks on GPU 0
/// on a one-GPU machine.
#[test]
fn parallel_mlp_on_two_gpus_matches_the_cpu_backend() {
    let gpus = common::gpus_or_skip("parallel_mlp_gpu");
    if gpus == 0 || !common::kernels_or_skip("parallel_mlp_gpu") {
        return;
    }
    watchdog(300, "parallel_mlp_gpu", move || {
        mlp_matches_the_cpu_backend(&common::cuda_ranks(P, gpus));
    });
}

/// The MLP with and without sequence parallelism on `devices` (the peer communicator) against
/// the CPU thread ranks, every output and gradient of every rank.
fn mlp_matches_the_cpu_backend(devices: &[Device]) {
    for sp in [false, true] {
        let cpu = launch(P, BackendKind::Cpu, |ctx| {
            run_rank(&ctx.device, &ctx.comm, sp)
        })
        .expect("cpu ranks");
        let got = peer::launch(devices, PeerConfig::default(), |ctx| {
            run_rank(&ctx.device, &ctx.comm, sp)
        })
        .unwrap_or_else(|e| panic!("{} (sp {sp}): {e}", devices[0].label()));
        let names = ["y", "dx", "dW1", "db1", "dW2", "db2"];
        for r in 0..P {
            for (i, name) in names.iter().enumerate() {
                // Reductions over up to FFN (fc2, dx) or T (weight gradients) terms.
                let tol = Tolerance::for_reduction(DType::BF16, FFN.max(T)).scaled(2.0);
                let c = compare(&got[r][i], &cpu[r][i], tol);
                assert!(
                    c.pass,
                    "sp {sp} rank {r} {name}: {} vs cpu {c}",
                    devices[0].label()
                );
            }
        }
    }
}

/// The whole pre-LN transformer block (layer norms, attention split by heads, MLP, residuals),
/// tp = 2, bf16, with and without sequence parallelism, on 2 emulated GPUs: forward output,
/// input gradient and the layer norms' and QKV's gradients against the CPU backend.
#[test]
fn transformer_block_on_two_emulated_gpus_matches_the_cpu_backend() {
    use ferrotron::parallel::tp::{BlockWeights, TransformerBlock, TransformerBlockConfig};
    if !kernels::kernels_built() {
        println!("skipped: kernels not built (no nvcc)");
        return;
    }
    const S: usize = 16;
    const BH: usize = 32;
    const HEADS: usize = 4;
    const BFFN: usize = 64;
    fn rank(dev: &Device, comm: &dyn Communicator, sp: bool) -> Result<Out> {
        let streams = TpStreams::new(dev)?;
        let c = &streams.compute;
        let t = |seed: u64, dims: &[usize], lo: f64, hi: f64| {
            let n = dims.iter().product();
            Tensor::from_f64(dev, &random_vec(seed, n, lo, hi), dims, DType::BF16)
        };
        let w = [
            t(11, &[BH], 0.9, 1.1)?,
            t(12, &[BH], -0.1, 0.1)?,
            t(13, &[3 * BH, BH], -0.2, 0.2)?,
            t(14, &[3 * BH], -0.05, 0.05)?,
            t(15, &[BH, BH], -0.2, 0.2)?,
            t(16, &[BH], -0.05, 0.05)?,
            t(17, &[BH], 0.9, 1.1)?,
            t(18, &[BH], -0.1, 0.1)?,
            t(19, &[BFFN, BH], -0.2, 0.2)?,
            t(20, &[BFFN], -0.05, 0.05)?,
            t(21, &[BH, BFFN], -0.15, 0.15)?,
            t(22, &[BH], -0.05, 0.05)?,
        ];
        let weights = BlockWeights::from_slice(&w)?;
        let mut cfg = TransformerBlockConfig::new(BH, HEADS, BFFN);
        cfg.sequence_parallel = sp;
        let mut block = TransformerBlock::from_full(&streams, comm, cfg, weights)?;
        let tl = if sp { S / P } else { S };
        let off = if sp { comm.rank() * tl * BH } else { 0 };
        let xs = random_vec(30, S * BH, -1.0, 1.0);
        let dzs = random_vec(31, S * BH, -1.0, 1.0);
        let x = Tensor::from_f64(dev, &xs[off..off + tl * BH], [tl, BH], DType::BF16)?;
        let dz = Tensor::from_f64(dev, &dzs[off..off + tl * BH], [tl, BH], DType::BF16)?;
        let (z, acts) = block.forward(&streams, comm, &x)?;
        let dx = block.backward(&streams, comm, &x, &acts, &dz)?;
        block.allreduce_layernorm_grads(&streams, comm)?;
        streams.synchronize()?;
        let qkv = block.attention().linear_qkv();
        let mut out = vec![z.to_f64_vec(c)?, dx.to_f64_vec(c)?];
        for g in [
            block.ln1().grad_gamma(),
            block.ln2().grad_beta(),
            qkv.grad_weight(),
            block.mlp().linear_fc2().grad_weight(),
        ] {
            out.push(g.to_f64_vec(c)?);
        }
        Ok(out)
    }
    watchdog(600, "transformer_block_on_two_emulated_gpus", || {
        for sp in [false, true] {
            let cpu = launch(P, BackendKind::Cpu, |ctx| rank(&ctx.device, &ctx.comm, sp))
                .expect("cpu ranks");
            let devices: Vec<Device> = (0..P).map(|i| Device::emu(i).expect("emu")).collect();
            let emu = peer::launch(&devices, PeerConfig::default(), |ctx| {
                rank(&ctx.device, &ctx.comm, sp)
            })
            .unwrap_or_else(|e| panic!("emulated GPUs (sp {sp}): {e}"));
            for d in &devices {
                let m = d.emu_metrics().expect("emulated");
                assert!(m.thread_instructions > 100_000, "{} ran {m:?}", d.label());
            }
            let names = ["z", "dx", "ln1.dgamma", "ln2.dbeta", "dWqkv", "dWfc2"];
            for r in 0..P {
                for (i, name) in names.iter().enumerate() {
                    // A whole block in bf16: both sides round at the same points, but the GEMMs
                    // sum in different orders, and a one-ulp difference propagates; held like the
                    // block test holds bf16 (norm-wise to the bf16 tolerance).
                    let (g, w) = (&emu[r][i], &cpu[r][i]);
                    let num: f64 = g.iter().zip(w).map(|(a, b)| (a - b) * (a - b)).sum();
                    let den: f64 = w.iter().map(|b| b * b).sum();
                    let rel = (num / den.max(1e-300)).sqrt();
                    println!("block sp {sp} rank {r} {name}: norm-wise emu vs cpu {rel:.2e}");
                    assert!(
                        g.iter().all(|v| v.is_finite()) && rel <= 1e-2,
                        "sp {sp} rank {r} {name}: norm-wise emu vs cpu {rel:.2e}"
                    );
                }
            }
        }
    });
}

/// ColumnParallelLinear's forward under sequence parallelism on 2 emulated GPUs, with shapes the
/// fused all-gather + GEMM kernel takes (`kernels/overlap/ag_gemm.cu`: 64 tokens per rank, a
/// multiple of the GEMM tile; tests/overlap_emu.rs shows these shapes take the fused kernel),
/// against the CPU backend (whose communicator runs the unfused all-gather then GEMM).
#[test]
fn column_parallel_sp_forward_with_the_fused_all_gather_gemm_matches_the_cpu_backend() {
    use ferrotron::parallel::tp::{ColumnParallelConfig, ColumnParallelLinear};
    if !kernels::kernels_built() {
        assert!(
            std::env::var("FERROTRON_REQUIRE_KERNELS").as_deref() != Ok("1"),
            "FERROTRON_REQUIRE_KERNELS=1 but the kernels were not built"
        );
        println!("skipped: kernels not built (no nvcc)");
        return;
    }
    const TL: usize = 64;
    const IN: usize = 32;
    const OUT: usize = 128;
    fn rank(dev: &Device, comm: &dyn Communicator) -> Result<Vec<f64>> {
        let streams = TpStreams::new(dev)?;
        let t = |seed: u64, dims: &[usize], scale: f64| {
            let n = dims.iter().product();
            Tensor::from_f64(dev, &random_vec(seed, n, -scale, scale), dims, DType::BF16)
        };
        let (w, b) = (t(41, &[OUT, IN], 0.3)?, t(42, &[OUT], 0.2)?);
        let cfg = ColumnParallelConfig {
            sequence_parallel: true,
            ..ColumnParallelConfig::new(IN, OUT)
        };
        let layer = ColumnParallelLinear::from_full(&streams, comm, cfg, &w, Some(&b))?;
        let xs = random_vec(43, P * TL * IN, -1.0, 1.0);
        let off = comm.rank() * TL * IN;
        let x = Tensor::from_f64(dev, &xs[off..off + TL * IN], [TL, IN], DType::BF16)?;
        let mut out = Vec::new();
        // Twice: the second call reuses the staging buffers (epochs).
        for _ in 0..2 {
            let y = layer.forward(&streams, comm, &x)?;
            streams.synchronize()?;
            out.extend(y.to_f64_vec(&streams.compute)?);
        }
        Ok(out)
    }
    watchdog(300, "column_parallel_sp_fused_forward", || {
        let cpu = launch(P, BackendKind::Cpu, |ctx| rank(&ctx.device, &ctx.comm)).expect("cpu");
        let devices: Vec<Device> = (0..P).map(|i| Device::emu(i).expect("emu")).collect();
        let emu = peer::launch(&devices, PeerConfig::default(), |ctx| {
            rank(&ctx.device, &ctx.comm)
        })
        .unwrap_or_else(|e| panic!("emulated GPUs: {e}"));
        for r in 0..P {
            assert_eq!(emu[r].len(), 2 * P * TL * OUT / P);
            let tol = Tolerance::for_reduction(DType::BF16, IN).scaled(2.0);
            let c = compare(&emu[r], &cpu[r], tol);
            assert!(c.pass, "rank {r}: emu vs cpu {c}");
        }
    });
}

/// RowParallelLinear's forward under sequence parallelism on 2 emulated GPUs, with shapes the
/// fused GEMM + reduce-scatter kernel takes (`kernels/overlap/gemm_rs.cu`: 64 tokens per rank;
/// tests/overlap_emu.rs shows these shapes take the fused kernel), against the CPU backend
/// (whose communicator runs the unfused GEMM then reduce-scatter).
#[test]
fn row_parallel_sp_forward_with_the_fused_gemm_reduce_scatter_matches_the_cpu_backend() {
    use ferrotron::parallel::tp::{RowParallelConfig, RowParallelLinear};
    if !kernels::kernels_built() {
        assert!(
            std::env::var("FERROTRON_REQUIRE_KERNELS").as_deref() != Ok("1"),
            "FERROTRON_REQUIRE_KERNELS=1 but the kernels were not built"
        );
        println!("skipped: kernels not built (no nvcc)");
        return;
    }
    const TL: usize = 64;
    const IN: usize = 64;
    const OUT: usize = 64;
    fn rank(dev: &Device, comm: &dyn Communicator) -> Result<Vec<f64>> {
        let streams = TpStreams::new(dev)?;
        let t = |seed: u64, dims: &[usize], scale: f64| {
            let n = dims.iter().product();
            Tensor::from_f64(dev, &random_vec(seed, n, -scale, scale), dims, DType::BF16)
        };
        let (w, b) = (t(51, &[OUT, IN], 0.3)?, t(52, &[OUT], 0.2)?);
        let cfg = RowParallelConfig {
            sequence_parallel: true,
            ..RowParallelConfig::new(IN, OUT)
        };
        let layer = RowParallelLinear::from_full(&streams, comm, cfg, &w, Some(&b))?;
        // input_is_parallel: this rank's columns of every token.
        let xs = random_vec(53, P * TL * IN, -1.0, 1.0);
        let cols = IN / P;
        let c0 = comm.rank() * cols;
        let xr: Vec<f64> = (0..P * TL)
            .flat_map(|row| xs[row * IN + c0..row * IN + c0 + cols].to_vec())
            .collect();
        let x = Tensor::from_f64(dev, &xr, [P * TL, cols], DType::BF16)?;
        let mut out = Vec::new();
        // Twice: the second call reuses the staging buffers (epochs).
        for _ in 0..2 {
            let y = layer.forward(&streams, comm, &x)?;
            streams.synchronize()?;
            out.extend(y.to_f64_vec(&streams.compute)?);
        }
        Ok(out)
    }
    watchdog(300, "row_parallel_sp_fused_forward", || {
        let cpu = launch(P, BackendKind::Cpu, |ctx| rank(&ctx.device, &ctx.comm)).expect("cpu");
        let devices: Vec<Device> = (0..P).map(|i| Device::emu(i).expect("emu")).collect();
        let emu = peer::launch(&devices, PeerConfig::default(), |ctx| {
            rank(&ctx.device, &ctx.comm)
        })
        .unwrap_or_else(|e| panic!("emulated GPUs: {e}"));
        for r in 0..P {
            assert_eq!(emu[r].len(), 2 * TL * OUT);
            let tol = Tolerance::for_reduction(DType::BF16, IN).scaled(2.0);
            let c = compare(&emu[r], &cpu[r], tol);
            assert!(c.pass, "rank {r}: emu vs cpu {c}");
        }
    });
}
