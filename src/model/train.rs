//! One training run of the [GPT](super::gpt) on a dp x pp x tp mesh of CPU thread ranks: the
//! pipeline executor runs each step's micro-batches through the stages (tensor parallel inside
//! each), ZeRO-1 averages the gradients over the data-parallel group and updates the sharded
//! optimizer state, and the loss of the whole global batch is reported per step.
//!
//! Data: a synthetic corpus from a seeded Markov chain over the vocabulary (each token is
//! followed by one of two likely successors most of the time), so the loss visibly falls from
//! `ln(vocab)`. Step `k`'s global batch is `dp * microbatches` sequences; data-parallel rank `d`
//! takes sequences `d * microbatches ..`. Any layout sees the same global batch, so every layout
//! computes the same training run up to f32 summation order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::gpt::{GptConfig, GptLoss, GptStage};
use crate::comm::{launch_with, CommConfig, CommCounts, Communicator, Counting, RankCtx, ReduceOp};
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::AdamW;
use crate::parallel::dp::{Zero1, ZeroMemory};
use crate::parallel::mesh::Mesh;
use crate::parallel::pp::schedule::build;
use crate::parallel::pp::simulate::{simulate, Costs};
use crate::parallel::pp::{
    run_step, Boundary, ExecOptions, PipelineLoss, PipelineStage, PipelineStreams, ScheduleConfig,
    ScheduleKind,
};
use crate::tensor::Tensor;

/// What to train and how to lay it out.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The model.
    pub model: GptConfig,
    /// Data-parallel size.
    pub dp: usize,
    /// Pipeline-parallel size.
    pub pp: usize,
    /// Tensor-parallel size.
    pub tp: usize,
    /// Model chunks per pipeline rank (interleaved schedule only).
    pub chunks: usize,
    /// Micro-batches (sequences) per data-parallel rank per step.
    pub microbatches: usize,
    /// The pipeline schedule.
    pub schedule: ScheduleKind,
    /// Optimizer steps.
    pub steps: usize,
    /// AdamW's learning rate.
    pub lr: f32,
    /// Seed of the corpus.
    pub data_seed: u64,
}

impl Default for TrainConfig {
    /// `ferrotron train`'s defaults: the tiny GPT on dp 2 x pp 2 x tp 2 (8 thread ranks), 1F1B
    /// over 4 micro-batches per data-parallel rank, 200 steps.
    fn default() -> Self {
        TrainConfig {
            model: GptConfig::tiny(),
            dp: 2,
            pp: 2,
            tp: 2,
            chunks: 1,
            microbatches: 4,
            schedule: ScheduleKind::OneFOneB,
            steps: 200,
            lr: 3e-3,
            data_seed: 7,
        }
    }
}

/// Bytes one rank sent through each of its groups over the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBytes {
    /// Tensor-parallel group (all-reduces, gathers of the layers and the loss).
    pub tp: u64,
    /// Data-parallel group (ZeRO-1's reduce-scatter and all-gather, the loss average).
    pub dp: u64,
    /// Pipeline group (activations and gradients, sent plus received).
    pub pp: u64,
    /// Embedding group (the tied embedding/head gradient all-reduce).
    pub embedding: u64,
}

/// What one rank reports.
#[derive(Clone, Debug)]
pub struct RankReport {
    /// The world rank.
    pub rank: usize,
    /// Per step, the global batch's mean loss (on the ranks of the last stage; empty elsewhere).
    pub losses: Vec<f64>,
    /// Per step, wall seconds on this rank (step start to the optimizer update done).
    pub step_seconds: Vec<f64>,
    /// Bytes through each group.
    pub bytes: GroupBytes,
    /// The training state this rank holds (ZeRO-1 accounting).
    pub memory: ZeroMemory,
    /// The most tensor memory alive at once on this rank's device over the run (parameters,
    /// gradients, optimizer state, activations, communication buffers): the device's counter.
    pub peak_bytes: u64,
    /// This rank's (dp, pp, tp) coordinates.
    pub coords: (usize, usize, usize),
    /// A hash of the bits of each copy of the tied embedding/head matrix on this rank, after
    /// the last step (copies on the first and last stage of one (dp, tp) position must agree).
    pub tied_hashes: Vec<u64>,
}

/// The whole run.
#[derive(Clone, Debug)]
pub struct TrainReport {
    /// Every rank's report, by world rank.
    pub ranks: Vec<RankReport>,
    /// The loss curve (from the last stage's first rank).
    pub losses: Vec<f64>,
    /// The bubble fraction the simulator predicts for the schedule with uniform costs
    /// (forward 1, backward 2).
    pub bubble: f64,
}

impl TrainReport {
    /// Mean step time over steps after the first (the slowest rank each step).
    pub fn mean_step_seconds(&self) -> f64 {
        let steps = self.ranks.first().map_or(0, |r| r.step_seconds.len());
        if steps < 2 {
            return self
                .ranks
                .iter()
                .flat_map(|r| r.step_seconds.iter().copied())
                .fold(0.0, f64::max);
        }
        let total: f64 = (1..steps)
            .map(|s| {
                self.ranks
                    .iter()
                    .map(|r| r.step_seconds[s])
                    .fold(0.0, f64::max)
            })
            .sum();
        total / (steps - 1) as f64
    }
}

/// Sequence `i` of step `step`: `seq + 1` tokens from the seeded Markov chain.
pub fn sequence(cfg: &TrainConfig, step: usize, i: usize) -> Vec<i32> {
    let v = cfg.model.vocab as u64;
    let mut state = cfg
        .data_seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add((step as u64) << 20)
        .wrapping_add(i as u64)
        | 1;
    let mut next = || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    // The chain's two likely successors of token t (fixed by the data seed, not the step).
    let succ = |t: u64, k: u64| (t.wrapping_mul(7).wrapping_add(3 + 11 * k + cfg.data_seed)) % v;
    let mut t = next() % v;
    let mut out = Vec::with_capacity(cfg.model.seq + 1);
    for _ in 0..=cfg.model.seq {
        out.push(t as i32);
        let r = next() % 10;
        t = match r {
            0..=5 => succ(t, 0),
            6..=8 => succ(t, 1),
            _ => next() % v,
        };
    }
    out
}

/// FNV-1a over the bits of `v`.
fn hash_bits(v: &[f32]) -> u64 {
    v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn counts(c: &CommCounts) -> u64 {
    c.total()
}

/// Trains per `cfg` on `dp * pp * tp` CPU thread ranks; `progress(step, loss, seconds)` is
/// called from the reporting rank after every step.
///
/// Errors: [`Error::InvalidArgument`] / [`Error::NotDivisible`] for a bad layout (checked before
/// any rank starts), and whatever a rank reports.
pub fn train(
    cfg: &TrainConfig,
    progress: &(dyn Fn(usize, f64, f64) + Sync),
) -> Result<TrainReport> {
    const OP: &str = "train";
    let stages = cfg
        .pp
        .checked_mul(cfg.chunks)
        .ok_or_else(|| Error::invalid(OP, "pp * chunks", "overflows"))?;
    cfg.model.check(stages, cfg.tp)?;
    if cfg.steps == 0 {
        return Err(Error::invalid(OP, "steps", "must be at least 1"));
    }
    let sc = ScheduleConfig::new(cfg.schedule, cfg.pp, cfg.microbatches, cfg.chunks);
    let schedule = build(&sc)?;
    let bubble = simulate(&schedule, &Costs::uniform(stages, 1.0, 1.0, 1.0, 0.0))?.bubble_fraction;
    let world = crate::parallel::mesh::Layout::new(cfg.dp, cfg.pp, cfg.tp)?.world();
    let comm_cfg = CommConfig {
        timeout: std::time::Duration::from_secs(120),
        ..CommConfig::default()
    };
    let ranks = launch_with(world, BackendKind::Cpu, comm_cfg, |ctx: RankCtx| {
        train_rank(cfg, &schedule, ctx, progress)
    })?;
    let losses = ranks
        .iter()
        .find(|r| !r.losses.is_empty())
        .map(|r| r.losses.clone())
        .unwrap_or_default();
    Ok(TrainReport {
        ranks,
        losses,
        bubble,
    })
}

fn train_rank(
    cfg: &TrainConfig,
    schedule: &crate::parallel::pp::Schedule,
    ctx: RankCtx,
    progress: &(dyn Fn(usize, f64, f64) + Sync),
) -> Result<RankReport> {
    let m = &cfg.model;
    let mesh = Mesh::new(&ctx.comm, cfg.dp, cfg.pp, cfg.tp)?;
    let c = mesh.coords();
    let groups = mesh.into_groups();
    let (tp_g, dp_g, pp_g) = (groups.tp, groups.dp, groups.pp);
    let emb_g = groups.embedding.map(Counting::new);
    let emb_bytes = emb_g.as_ref().map(Counting::counts);
    let tp_count = Counting::new(tp_g);
    let (tp_bytes, dp_c, pp_c) = (tp_count.counts(), Counting::new(dp_g), Counting::new(pp_g));
    let (dp_bytes, pp_bytes) = (dp_c.counts(), pp_c.counts());
    let tp: Arc<dyn Communicator> = Arc::new(tp_count);
    let dev = ctx.device.clone();
    let streams = PipelineStreams::new(&dev)?;
    let s = &streams.compute;
    let stages = cfg.pp * cfg.chunks;
    let mut chunks = (0..cfg.chunks)
        .map(|k| GptStage::new(m, k * cfg.pp + c.pp, stages, tp.clone(), s))
        .collect::<Result<Vec<_>>>()?;
    let adamw = AdamW {
        lr: cfg.lr,
        weight_decay: 0.0,
        ..AdamW::default()
    };
    let mut opt = {
        let mut ps: Vec<&Tensor> = Vec::new();
        for ch in &mut chunks {
            for (p, _) in ch.params_mut() {
                ps.push(&*p);
            }
        }
        Zero1::new(s, &dp_c, &ps, adamw)?
    };
    let last_pp = cfg.pp - 1;
    let boundary = Boundary {
        dims: vec![m.seq, m.hidden],
        dtype: DType::F32,
    };
    let reporting = c.pp == last_pp && c.dp == 0 && c.tp == 0;
    let mut losses = Vec::new();
    let mut step_seconds = Vec::new();
    for step in 0..cfg.steps {
        let t0 = Instant::now();
        for ch in &mut chunks {
            ch.zero_grad(s)?;
        }
        let seqs: Vec<Vec<i32>> = (0..cfg.microbatches)
            .map(|j| sequence(cfg, step, c.dp * cfg.microbatches + j))
            .collect();
        let inputs = if c.pp == 0 {
            seqs.iter()
                .map(|q| Tensor::from_slice(&dev, &q[..m.seq], [m.seq]))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let mut loss = if c.pp == last_pp {
            let targets: Vec<Vec<i32>> = seqs.iter().map(|q| q[1..].to_vec()).collect();
            Some(GptLoss::new(s, tp.clone(), &targets)?)
        } else {
            None
        };
        {
            let mut refs: Vec<&mut dyn PipelineStage> = chunks
                .iter_mut()
                .map(|ch| ch as &mut dyn PipelineStage)
                .collect();
            run_step(
                schedule,
                &pp_c,
                &streams,
                &mut refs,
                &inputs,
                loss.as_mut().map(|l| l as &mut dyn PipelineLoss),
                &boundary,
                &ExecOptions {
                    validate: step == 0,
                    ..ExecOptions::default()
                },
            )?;
        }
        // Tied embedding/head gradients summed over their copies before ZeRO's reduce-scatter.
        for ch in &mut chunks {
            ch.reduce_tied_grads(s, emb_g.as_ref().map(|g| g as &dyn Communicator))?;
        }
        {
            let mut ps: Vec<&mut Tensor> = Vec::new();
            let mut gs: Vec<&Tensor> = Vec::new();
            for ch in &mut chunks {
                for (p, g) in ch.params_mut() {
                    ps.push(p);
                    gs.push(g);
                }
            }
            opt.step(s, &dp_c, &mut ps, &gs)?;
        }
        if let Some(l) = &loss {
            // The global batch's mean: the average of the data-parallel ranks' means.
            let mine = l.mean(s)?;
            let mut t = Tensor::from_slice(&dev, &[mine as f32], [1])?;
            dp_c.all_reduce(s, &mut t, ReduceOp::Avg)?;
            let global = if cfg.dp > 1 {
                t.to_f64_vec(s)?[0]
            } else {
                mine
            };
            losses.push(global);
        }
        s.synchronize()?;
        let secs = t0.elapsed().as_secs_f64();
        step_seconds.push(secs);
        if reporting {
            progress(step, *losses.last().unwrap_or(&f64::NAN), secs);
        }
    }
    let mut tied_hashes = Vec::new();
    for ch in &chunks {
        for w in ch.tied_weights() {
            tied_hashes.push(hash_bits(&w.to_vec::<f32>(s)?));
        }
    }
    Ok(RankReport {
        peak_bytes: dev.memory_usage().peak,
        coords: (c.dp, c.pp, c.tp),
        tied_hashes,
        rank: ctx.rank,
        losses: if c.pp == last_pp && c.dp == 0 && c.tp == 0 {
            losses
        } else {
            Vec::new()
        },
        step_seconds,
        bytes: GroupBytes {
            tp: counts(&tp_bytes),
            dp: counts(&dp_bytes),
            pp: pp_bytes.send.load(Ordering::Relaxed) + pp_bytes.recv.load(Ordering::Relaxed),
            embedding: emb_bytes.map_or(0, |c| counts(&c)),
        },
        memory: opt.memory(),
    })
}
