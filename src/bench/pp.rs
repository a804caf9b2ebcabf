//! `ferrotron schedule` (the simulator's table and timeline for a schedule) and
//! `ferrotron pipeline` (the executor on CPU thread ranks, measured step time next to the
//! simulator's prediction for the per-action costs measured in the same run).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Instant;

use crate::comm::{launch, Communicator, RankCtx};
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::parallel::pp::dense::{CrossEntropyLoss, DenseGeluStage, DenseLayerInit};
use crate::parallel::pp::partition;
use crate::parallel::pp::schedule::build;
use crate::parallel::pp::simulate::{simulate, Costs, SimReport, StageCosts};
use crate::parallel::pp::{
    run_step, ActionKind, Boundary, ExecOptions, Lane, PipelineLoss, PipelineStage,
    PipelineStreams, ScheduleConfig, ScheduleKind, TraceSpan,
};
use crate::tensor::Tensor;
use crate::verify::{random_indices, random_vec};

/// The textbook bubble fraction (idle time over total time) of a schedule with uniform costs,
/// `t_f` forward, `t_b` backward input half, `t_w` weight half, no p2p latency; `None` where
/// there is no simple closed form (ZB-H1 with m < p).
pub fn closed_form_bubble(cfg: &ScheduleConfig, tf: f64, tb: f64, tw: f64) -> Option<f64> {
    let (p, m, v) = (cfg.pp as f64, cfg.microbatches as f64, cfg.chunks as f64);
    let ideal = m * (tf + tb + tw);
    let bubble = match cfg.kind {
        ScheduleKind::Naive => (p - 1.0) * m * (tf + tb + tw),
        ScheduleKind::GPipe | ScheduleKind::OneFOneB => (p - 1.0) * (tf + tb + tw),
        ScheduleKind::Interleaved => (p - 1.0) * (tf + tb + tw) / v,
        ScheduleKind::ZbH1 if cfg.microbatches >= cfg.pp => (p - 1.0) * (tf + tb - tw),
        ScheduleKind::ZbH1 => return None,
    };
    Some(bubble / (ideal + bubble))
}

/// The simulator's table for one schedule: makespan, bubble (and the closed form), and per
/// rank busy time, bubble and peak live activations.
pub fn schedule_table(cfg: &ScheduleConfig, costs: &Costs) -> Result<(String, SimReport)> {
    let s = build(cfg)?;
    let r = simulate(&s, costs)?;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# schedule {} pp={} microbatches={} chunks={} recompute={}",
        cfg.kind,
        cfg.pp,
        cfg.microbatches,
        cfg.chunks,
        s.recompute.iter().filter(|&&x| x).count()
    );
    let c0 = &costs.stages[0];
    let _ = writeln!(
        t,
        "# costs (stage 0): forward {} backward-input {} backward-weight {} p2p {}",
        c0.forward, c0.backward_input, c0.backward_weight, costs.p2p
    );
    let _ = writeln!(t, "makespan        {:.4}", r.makespan);
    let _ = write!(t, "bubble          {:.4}", r.bubble_fraction);
    let uniform = costs.stages.iter().all(|c| c == c0) && costs.p2p == 0.0;
    if let (true, Some(b)) = (
        uniform,
        closed_form_bubble(cfg, c0.forward, c0.backward_input, c0.backward_weight),
    ) {
        let _ = write!(t, "   (closed form {b:.4})");
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "{:>5} {:>10} {:>8} {:>16} {:>14}",
        "rank", "busy", "bubble", "peak activations", "peak stashed"
    );
    for (i, rr) in r.ranks.iter().enumerate() {
        let _ = writeln!(
            t,
            "{:>5} {:>10.4} {:>8.4} {:>16} {:>14}",
            i, rr.busy, rr.bubble, rr.peak_activations, rr.peak_stashed_inputs
        );
    }
    Ok((t, r))
}

/// What `ferrotron pipeline` runs.
#[derive(Clone, Debug)]
pub struct PipelineBench {
    /// Schedules to run (each is measured and predicted).
    pub kinds: Vec<ScheduleKind>,
    /// Pipeline-parallel size (CPU thread ranks).
    pub pp: usize,
    /// Micro-batches per step.
    pub microbatches: usize,
    /// Chunks per rank for the interleaved schedule (others use 1).
    pub chunks: usize,
    /// Dense GeLU layers in the model (split evenly over the stages).
    pub layers: usize,
    /// Layer width.
    pub hidden: usize,
    /// Rows per micro-batch.
    pub rows: usize,
    /// f32 or bf16.
    pub dtype: DType,
    /// Timed steps per schedule (after one untimed).
    pub steps: usize,
    /// Recompute every stage.
    pub recompute: bool,
}

/// One schedule's measurement.
#[derive(Clone, Debug)]
pub struct PipelineRow {
    /// The schedule.
    pub kind: ScheduleKind,
    /// Chunks per rank it ran with.
    pub chunks: usize,
    /// Best measured step time (seconds).
    pub measured: f64,
    /// The simulator's makespan for the per-action costs measured in that step.
    pub predicted: f64,
    /// The simulator's bubble fraction for those costs.
    pub bubble: f64,
    /// The mean loss of the step.
    pub loss: f64,
    /// The measured spans of the best step (all ranks).
    pub spans: Vec<TraceSpan>,
    /// The simulator's spans for the measured costs.
    pub sim_spans: Vec<TraceSpan>,
}

/// The measured per-action costs of a step: mean duration per (stage, compute kind); p2p is the
/// median transfer duration (a transfer's span also covers waiting for its peer, so the median
/// of many is the better estimate of the copy itself).
pub fn measured_costs(cfg: &ScheduleConfig, spans: &[TraceSpan]) -> Costs {
    let stages = cfg.pp * cfg.chunks;
    let mut sums: HashMap<(usize, ActionKind), (f64, usize)> = HashMap::new();
    let mut transfers = Vec::new();
    for s in spans {
        let d = s.end - s.start;
        if s.lane == Lane::Compute {
            let stage = s.action.chunk() * cfg.pp + s.rank;
            let e = sums.entry((stage, s.action.kind())).or_insert((0.0, 0));
            e.0 += d;
            e.1 += 1;
        } else if matches!(s.action.kind(), ActionKind::SendAct | ActionKind::SendGrad) {
            transfers.push(d);
        }
    }
    let mean = |st: usize, k: ActionKind| sums.get(&(st, k)).map(|&(s, n)| s / n as f64);
    let per_stage = (0..stages)
        .map(|st| {
            let f = mean(st, ActionKind::Forward).unwrap_or(0.0);
            let (bi, bw) = match mean(st, ActionKind::Backward) {
                // A full backward: split it in the proportion of a GEMM layer's two halves.
                Some(b) => (b / 2.0, b / 2.0),
                None => (
                    mean(st, ActionKind::BackwardInput).unwrap_or(0.0),
                    mean(st, ActionKind::BackwardWeight).unwrap_or(0.0),
                ),
            };
            StageCosts {
                forward: f,
                backward_input: bi,
                backward_weight: bw,
                recompute: mean(st, ActionKind::Recompute).unwrap_or(f),
            }
        })
        .collect();
    transfers.sort_by(f64::total_cmp);
    let p2p = transfers.get(transfers.len() / 2).copied().unwrap_or(0.0);
    Costs {
        stages: per_stage,
        p2p,
    }
}

fn model(cfg: &PipelineBench) -> Vec<DenseLayerInit> {
    let h = cfg.hidden;
    let s = 1.5 / (h as f64).sqrt();
    (0..cfg.layers)
        .map(|l| DenseLayerInit {
            inputs: h,
            outputs: h,
            weight: random_vec(11 + 2 * l as u64, h * h, -s, s),
            bias: random_vec(12 + 2 * l as u64, h, -0.1, 0.1),
        })
        .collect()
}

/// Runs each schedule of `cfg` on `cfg.pp` CPU thread ranks: one untimed step, then
/// `cfg.steps` timed steps; keeps the fastest, measures its per-action costs from its trace and
/// simulates the schedule with them.
pub fn bench(cfg: &PipelineBench) -> Result<Vec<PipelineRow>> {
    const OP: &str = "ferrotron pipeline";
    if cfg.steps == 0 || cfg.rows == 0 || cfg.hidden == 0 {
        return Err(Error::invalid(
            OP,
            "steps/rows/hidden",
            "must be at least 1",
        ));
    }
    let layers = model(cfg);
    let m = cfg.microbatches;
    let x: Vec<Vec<f64>> = (0..m)
        .map(|i| random_vec(100 + i as u64, cfg.rows * cfg.hidden, -1.0, 1.0))
        .collect();
    let t: Vec<Vec<i32>> = (0..m)
        .map(|i| random_indices(200 + i as u64, cfg.rows, cfg.hidden))
        .collect();
    let mut rows = Vec::new();
    for &kind in &cfg.kinds {
        let chunks = if kind == ScheduleKind::Interleaved {
            cfg.chunks
        } else {
            1
        };
        let mut sc = ScheduleConfig::new(kind, cfg.pp, m, chunks);
        if cfg.recompute {
            sc = sc.recompute_all();
        }
        let schedule = build(&sc)?;
        let ranges = partition::virtual_chunks(cfg.layers, cfg.pp, chunks)?;
        let (dtype, nrows, h) = (cfg.dtype, cfg.rows, cfg.hidden);
        let steps = cfg.steps;
        // One origin for every rank, so spans of different ranks are comparable.
        let origin = Instant::now();
        let per_rank = launch(cfg.pp, BackendKind::Cpu, |ctx: RankCtx| {
            let rank = ctx.rank;
            let dev = ctx.device.clone();
            let streams = PipelineStreams::new(&dev)?;
            let mut stages = ranges[rank]
                .iter()
                .map(|r| DenseGeluStage::new(&dev, &layers[r.clone()], dtype))
                .collect::<Result<Vec<_>>>()?;
            let inputs = if rank == 0 {
                x.iter()
                    .map(|xi| Tensor::from_f64(&dev, xi, [nrows, h], dtype))
                    .collect::<Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            let last_rank = (cfg.pp * chunks - 1) % cfg.pp;
            let mut loss = if rank == last_rank {
                Some(CrossEntropyLoss::new(&dev, &t)?)
            } else {
                None
            };
            let boundary = Boundary {
                dims: vec![nrows, h],
                dtype,
            };
            // (spans, loss) per step; step 0 is the untimed warm-up.
            let mut out = Vec::new();
            for step in 0..=steps {
                for s in &mut stages {
                    s.zero_grad()?;
                }
                if let Some(l) = loss.as_mut() {
                    l.reset();
                }
                ctx.comm.barrier(&streams.compute)?.wait()?;
                // Validated once, in the untimed step.
                let opts = ExecOptions {
                    trace: Some(origin),
                    validate: step == 0,
                    ..ExecOptions::default()
                };
                let mut refs: Vec<&mut dyn PipelineStage> = stages
                    .iter_mut()
                    .map(|s| s as &mut dyn PipelineStage)
                    .collect();
                let rep = run_step(
                    &schedule,
                    &ctx.comm,
                    &streams,
                    &mut refs,
                    &inputs,
                    loss.as_mut().map(|l| l as &mut dyn PipelineLoss),
                    &boundary,
                    &opts,
                )?;
                let l = loss
                    .as_ref()
                    .map(|l| l.mean(&streams.compute))
                    .transpose()?;
                if step > 0 {
                    out.push((rep.spans, l));
                }
            }
            Ok(out)
        })?;
        // A step runs from its first action's start on any rank to its last action's end on
        // any rank (what the simulator's makespan measures); keep the fastest step.
        let step_spans = |i: usize| -> Vec<TraceSpan> {
            per_rank
                .iter()
                .flat_map(|r| r[i].0.iter().copied())
                .collect()
        };
        let length = |spans: &[TraceSpan]| {
            let first = spans.iter().map(|s| s.start).fold(f64::INFINITY, f64::min);
            let last = spans.iter().map(|s| s.end).fold(0.0, f64::max);
            (first, (last - first).max(0.0))
        };
        let best = (0..steps)
            .min_by(|&a, &b| {
                length(&step_spans(a))
                    .1
                    .total_cmp(&length(&step_spans(b)).1)
            })
            .unwrap_or(0);
        let mut spans = step_spans(best);
        let (first, measured) = length(&spans);
        for s in &mut spans {
            s.start -= first;
            s.end -= first;
        }
        let loss = per_rank.iter().find_map(|r| r[best].1).unwrap_or(f64::NAN);
        let costs = measured_costs(&sc, &spans);
        let sim = simulate(&schedule, &costs)?;
        rows.push(PipelineRow {
            kind,
            chunks,
            measured,
            predicted: sim.makespan,
            bubble: sim.bubble_fraction,
            loss,
            spans,
            sim_spans: sim.spans,
        });
    }
    Ok(rows)
}

/// The table `ferrotron pipeline` prints.
pub fn pipeline_table(cfg: &PipelineBench, rows: &[PipelineRow]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# pipeline pp={} microbatches={} layers={} hidden={} rows/mb={} dtype={} recompute={} (CPU thread ranks, best of {} steps)",
        cfg.pp, cfg.microbatches, cfg.layers, cfg.hidden, cfg.rows, cfg.dtype, cfg.recompute, cfg.steps
    );
    let _ = writeln!(
        t,
        "{:>12} {:>6} {:>12} {:>14} {:>8} {:>8} {:>10}",
        "schedule", "chunks", "step ms", "simulated ms", "ratio", "bubble", "loss"
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:>12} {:>6} {:>12.3} {:>14.3} {:>8.3} {:>8.3} {:>10.5}",
            r.kind.name(),
            r.chunks,
            r.measured * 1e3,
            r.predicted * 1e3,
            r.measured / r.predicted,
            r.bubble,
            r.loss
        );
    }
    t
}
