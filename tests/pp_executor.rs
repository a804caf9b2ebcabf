//! The pipeline executor (`ferrotron::parallel::pp::run_step`) against the single-device step it
//! replaces: for every schedule (naive, GPipe, 1F1B, interleaved 1F1B, ZB-H1), with and without
//! activation recomputation, f32 and bf16, a step on `pp` CPU thread ranks gives the same loss
//! and every layer's weight and bias gradient as one device running the whole mini-batch
//! through the whole model at once. The single-device model itself is checked against an f64
//! reference first.
//!
//! Tolerances: micro-batching changes only the order of the f32 gradient accumulation (each
//! micro-batch's GEMM adds into the f32 main gradient, where the single device sums every row in
//! one GEMM); activations are computed row by row the same way on both sides. So both dtypes
//! are held to the f32 reduction tolerance over the mini-batch rows, plus the dtype's own
//! rounding for bf16.
//!
//! Also: a schedule whose receives are swapped is refused before running (simulator deadlock)
//! and, with validation off, fails at run time with an error (never a hang); removing the
//! compute stream's wait on a receive is caught by checked mode; traces cover every action.

mod common;

use common::watchdog;
use ferrotron::comm::{launch_with, CommConfig, RankCtx};
use ferrotron::parallel::pp::dense::{CrossEntropyLoss, DenseGeluStage, DenseLayerInit};
use ferrotron::parallel::pp::partition;
use ferrotron::parallel::pp::schedule::build;
use ferrotron::parallel::pp::{
    run_step, Action, Boundary, ExecOptions, Lane, PipelineLoss, PipelineStage, PipelineStreams,
    Schedule, ScheduleConfig, ScheduleKind,
};
use ferrotron::reference::bias_gelu::{gelu_grad_ref, gelu_ref};
use ferrotron::verify::{compare, random_indices, random_vec, Tolerance};
use ferrotron::{BackendKind, DType, Device, Error, Result, Tensor};
use std::time::{Duration, Instant};

/// Model: `IN -> HID -> ... -> HID -> CLASSES`, `LAYERS` dense GeLU layers.
const IN: usize = 6;
const HID: usize = 8;
const CLASSES: usize = 5;
const LAYERS: usize = 8;
/// Rows per micro-batch.
const ROWS: usize = 3;

fn config() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(20),
        deadlock_grace: Duration::from_secs(1),
    }
}

fn layers(seed: u64) -> Vec<DenseLayerInit> {
    (0..LAYERS)
        .map(|l| {
            let inputs = if l == 0 { IN } else { HID };
            let outputs = if l == LAYERS - 1 { CLASSES } else { HID };
            let s = 1.5 / (inputs as f64).sqrt();
            DenseLayerInit {
                inputs,
                outputs,
                weight: random_vec(seed + 2 * l as u64, outputs * inputs, -s, s),
                bias: random_vec(seed + 2 * l as u64 + 1, outputs, -0.3, 0.3),
            }
        })
        .collect()
}

/// A mini-batch of `m` micro-batches: inputs `[ROWS, IN]` each and their targets.
fn batch(seed: u64, m: usize) -> (Vec<Vec<f64>>, Vec<Vec<i32>>) {
    let x = (0..m)
        .map(|i| random_vec(seed + 100 + i as u64, ROWS * IN, -1.0, 1.0))
        .collect();
    let t = (0..m)
        .map(|i| random_indices(seed + 200 + i as u64, ROWS, CLASSES))
        .collect();
    (x, t)
}

/// A step's results: the mean loss and, per global layer, `(dW, db)`.
#[derive(Debug)]
struct StepResult {
    loss: f64,
    grads: Vec<(Vec<f64>, Vec<f64>)>,
}

fn stage_grads(
    stage: &DenseGeluStage,
    stream: &ferrotron::Stream,
) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    (0..stage.num_layers())
        .map(|l| {
            let t = stage.tensors(l)?;
            Ok((t[2].to_f64_vec(stream)?, t[3].to_f64_vec(stream)?))
        })
        .collect()
}

/// The whole mini-batch through the whole model on one device.
fn single_device(dtype: DType, m: usize) -> Result<StepResult> {
    let dev = Device::cpu();
    let stream = dev.new_stream()?;
    let (x, t) = batch(7, m);
    let mut model = DenseGeluStage::new(&dev, &layers(1), dtype)?;
    let input = Tensor::from_f64(&dev, &x.concat(), [m * ROWS, IN], dtype)?;
    let mut loss = CrossEntropyLoss::new(&dev, &[t.concat()])?;
    let (out, saved) = model.forward(&stream, &input)?;
    let dout = loss.forward_backward(&stream, 0, &out)?;
    model.backward(&stream, &input, saved, &dout)?;
    Ok(StepResult {
        loss: loss.mean(&stream)?,
        grads: stage_grads(&model, &stream)?,
    })
}

/// How one pipeline run is set up.
#[derive(Clone, Debug)]
struct Run {
    cfg: ScheduleConfig,
    dtype: DType,
    opts: ExecOptions,
    /// Replace the built schedule (e.g. a broken one).
    schedule: Option<Schedule>,
}

impl Run {
    fn new(kind: ScheduleKind, pp: usize, m: usize, v: usize, dtype: DType) -> Run {
        Run {
            cfg: ScheduleConfig::new(kind, pp, m, v),
            dtype,
            opts: ExecOptions::default(),
            schedule: None,
        }
    }
}

/// One pipeline step on `cfg.pp` CPU thread ranks; per rank: its global layers' gradients, the
/// loss (last stage's rank), and its trace spans.
fn pipeline(run: &Run) -> Result<(StepResult, Vec<Vec<ferrotron::parallel::pp::TraceSpan>>)> {
    let (pp, m, v, dtype) = (run.cfg.pp, run.cfg.microbatches, run.cfg.chunks, run.dtype);
    let schedule = match &run.schedule {
        Some(s) => s.clone(),
        None => build(&run.cfg)?,
    };
    let all = layers(1);
    let (x, t) = batch(7, m);
    let per_rank = launch_with(pp, BackendKind::Cpu, config(), |ctx: RankCtx| {
        let rank = ctx.rank;
        let dev = ctx.device.clone();
        let streams = PipelineStreams::new(&dev)?;
        let ranges = partition::virtual_chunks(LAYERS, pp, v)?;
        let mut stages = ranges[rank]
            .iter()
            .map(|r| DenseGeluStage::new(&dev, &all[r.clone()], dtype))
            .collect::<Result<Vec<_>>>()?;
        let inputs = if rank == 0 {
            x.iter()
                .map(|xi| Tensor::from_f64(&dev, xi, [ROWS, IN], dtype))
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let last_rank = (pp * v - 1) % pp;
        let mut loss = if rank == last_rank {
            Some(CrossEntropyLoss::new(&dev, &t)?)
        } else {
            None
        };
        let mut chunks: Vec<&mut dyn PipelineStage> = stages
            .iter_mut()
            .map(|s| s as &mut dyn PipelineStage)
            .collect();
        let report = run_step(
            &schedule,
            &ctx.comm,
            &streams,
            &mut chunks,
            &inputs,
            loss.as_mut().map(|l| l as &mut dyn PipelineLoss),
            &Boundary {
                dims: vec![ROWS, HID],
                dtype,
            },
            &run.opts,
        )?;
        let l = loss.map(|l| l.mean(&streams.compute)).transpose()?;
        let mut grads = Vec::new();
        for (range, stage) in ranges[rank].iter().zip(&stages) {
            for (i, g) in stage_grads(stage, &streams.compute)?
                .into_iter()
                .enumerate()
            {
                grads.push((range.start + i, g));
            }
        }
        Ok((l, grads, report.spans))
    })?;
    let mut loss = None;
    let mut grads: Vec<Option<(Vec<f64>, Vec<f64>)>> = (0..LAYERS).map(|_| None).collect();
    let mut spans = Vec::new();
    for (l, g, s) in per_rank {
        loss = loss.or(l);
        for (i, gi) in g {
            assert!(grads[i].is_none(), "layer {i} on two ranks");
            grads[i] = Some(gi);
        }
        spans.push(s);
    }
    let grads = grads
        .into_iter()
        .enumerate()
        .map(|(i, g)| g.unwrap_or_else(|| panic!("layer {i} on no rank")))
        .collect();
    Ok((
        StepResult {
            loss: loss.expect("the last stage's rank reports the loss"),
            grads,
        },
        spans,
    ))
}

fn tol(dtype: DType, m: usize) -> Tolerance {
    Tolerance::for_reduction(dtype, m * ROWS)
}

fn check_equal(what: &str, got: &StepResult, want: &StepResult, tol: Tolerance) {
    let c = compare(&[got.loss], &[want.loss], tol);
    assert!(c.pass, "{what}: loss {} vs {}: {c}", got.loss, want.loss);
    for (l, (g, w)) in got.grads.iter().zip(&want.grads).enumerate() {
        let c = compare(&g.0, &w.0, tol);
        assert!(c.pass, "{what}: layer {l} dW: {c}");
        let c = compare(&g.1, &w.1, tol);
        assert!(c.pass, "{what}: layer {l} db: {c}");
    }
}

// ---- the single-device model against f64 -----------------------------------------------------

/// f64 forward + mean cross-entropy + backward of the dense GeLU stack on the whole batch.
fn reference(m: usize) -> StepResult {
    let ls = layers(1);
    let (x, t) = batch(7, m);
    let (x, t) = (x.concat(), t.concat());
    let n = m * ROWS;
    let mut acts = vec![x];
    let mut pre = Vec::new();
    for l in &ls {
        let a = acts.last().expect("input");
        let mut h = vec![0.0; n * l.outputs];
        for r in 0..n {
            for o in 0..l.outputs {
                h[r * l.outputs + o] = (0..l.inputs)
                    .map(|i| a[r * l.inputs + i] * l.weight[o * l.inputs + i])
                    .sum::<f64>()
                    + l.bias[o];
            }
        }
        acts.push(h.iter().map(|&v| gelu_ref(v)).collect());
        pre.push(h);
    }
    let logits = acts.last().expect("output");
    let mut loss = 0.0;
    let mut dy = vec![0.0; n * CLASSES];
    for r in 0..n {
        let row = &logits[r * CLASSES..(r + 1) * CLASSES];
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - mx).exp()).sum();
        loss += z.ln() + mx - row[t[r] as usize];
        for c in 0..CLASSES {
            let p = (row[c] - mx).exp() / z;
            dy[r * CLASSES + c] = (p - if c == t[r] as usize { 1.0 } else { 0.0 }) / n as f64;
        }
    }
    let mut grads = vec![(Vec::new(), Vec::new()); LAYERS];
    for (li, l) in ls.iter().enumerate().rev() {
        let dh: Vec<f64> = dy
            .iter()
            .zip(&pre[li])
            .map(|(g, &h)| g * gelu_grad_ref(h))
            .collect();
        let a = &acts[li];
        let mut dw = vec![0.0; l.outputs * l.inputs];
        let mut db = vec![0.0; l.outputs];
        let mut dx = vec![0.0; n * l.inputs];
        for r in 0..n {
            for o in 0..l.outputs {
                let g = dh[r * l.outputs + o];
                db[o] += g;
                for i in 0..l.inputs {
                    dw[o * l.inputs + i] += g * a[r * l.inputs + i];
                    dx[r * l.inputs + i] += g * l.weight[o * l.inputs + i];
                }
            }
        }
        grads[li] = (dw, db);
        dy = dx;
    }
    StepResult {
        loss: loss / n as f64,
        grads,
    }
}

#[test]
fn dense_stage_matches_f64_reference() {
    watchdog(60, "dense_stage_matches_f64_reference", || {
        for m in [1, 4] {
            let got = single_device(DType::F32, m).expect("single device");
            // Eight layers deep: a chain of eight f32 reductions of up to HID terms each.
            let t = Tolerance::for_reduction(DType::F32, m * ROWS * HID).scaled(4.0);
            check_equal(&format!("f32 m={m}"), &got, &reference(m), t);
        }
    });
}

// ---- every schedule == single device --------------------------------------------------------

/// `(pp, m, v)` shapes per schedule kind (interleaving needs m % pp == 0 and v > 1 to differ
/// from 1F1B; the others take v = 1).
fn shapes(kind: ScheduleKind) -> Vec<(usize, usize, usize)> {
    match kind {
        ScheduleKind::Interleaved => vec![(2, 4, 2), (4, 4, 2), (2, 6, 3)],
        _ => vec![(1, 3, 1), (2, 4, 1), (3, 5, 1), (4, 8, 1), (4, 2, 1)],
    }
}

fn every_schedule(dtype: DType) {
    let mut ran = 0;
    for m in [2, 3, 4, 5, 6, 8] {
        let want = single_device(dtype, m).expect("single device");
        for kind in ScheduleKind::ALL {
            for (pp, mm, v) in shapes(kind) {
                if mm != m || pp * v > LAYERS {
                    continue;
                }
                for recompute in [false, true] {
                    let mut run = Run::new(kind, pp, m, v, dtype);
                    if recompute {
                        run.cfg = run.cfg.recompute_all();
                    }
                    let what = format!("{kind} pp={pp} m={m} v={v} recompute={recompute} {dtype}");
                    let (got, _) = pipeline(&run).unwrap_or_else(|e| panic!("{what}: {e}"));
                    check_equal(&what, &got, &want, tol(dtype, m));
                    ran += 1;
                }
            }
        }
    }
    // 4 kinds x 5 shapes + interleaved x 3 shapes, each with and without recomputation.
    assert_eq!(ran, (4 * 5 + 3) * 2, "configurations run");
}

#[test]
fn every_schedule_equals_single_device_f32() {
    watchdog(240, "every_schedule_equals_single_device_f32", || {
        every_schedule(DType::F32)
    });
}

#[test]
fn every_schedule_equals_single_device_bf16() {
    watchdog(240, "every_schedule_equals_single_device_bf16", || {
        every_schedule(DType::BF16)
    });
}

/// Recomputing only some stages (here: every other one) still gives the single-device step.
#[test]
fn partial_recompute_equals_single_device() {
    watchdog(60, "partial_recompute_equals_single_device", || {
        let want = single_device(DType::F32, 4).expect("single device");
        let mut run = Run::new(ScheduleKind::OneFOneB, 4, 4, 1, DType::F32);
        run.cfg.recompute = vec![true, false, true, false];
        let (got, _) = pipeline(&run).expect("pipeline");
        check_equal("1f1b pp=4 recompute 0,2", &got, &want, tol(DType::F32, 4));
    });
}

// ---- broken schedules, missing waits, bad input ----------------------------------------------

/// 1F1B pp=2 m=4 with rank 1's first two activation receives swapped (mb 1's posted before
/// mb 0's, both still before their forwards): structurally valid, but rank 0 sends mb 0 first.
fn swapped_receives() -> Schedule {
    let mut s = build(&ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4, 1)).expect("build");
    let r1 = &mut s.ranks[1];
    let pos = |list: &Vec<Action>, mb: usize| {
        list.iter()
            .position(|a| matches!(a, Action::RecvAct { mb: b, .. } if *b == mb))
            .expect("recv")
    };
    let (i1, i0) = (pos(r1, 1), pos(r1, 0));
    let a = r1.remove(i1);
    r1.insert(i0, a);
    s
}

fn root_cause(e: &Error) -> &Error {
    match e {
        Error::RankFailed { error, .. } => root_cause(error),
        e => e,
    }
}

#[test]
fn broken_schedule_is_refused_before_running() {
    watchdog(60, "broken_schedule_is_refused_before_running", || {
        let mut run = Run::new(ScheduleKind::OneFOneB, 2, 4, 1, DType::F32);
        run.schedule = Some(swapped_receives());
        let e = pipeline(&run).expect_err("a deadlocking schedule must fail");
        assert!(
            matches!(root_cause(&e), Error::Deadlock { .. }),
            "expected a deadlock from validation, got {e}"
        );
    });
}

#[test]
fn broken_schedule_without_validation_errors_at_run_time() {
    watchdog(
        60,
        "broken_schedule_without_validation_errors_at_run_time",
        || {
            let mut run = Run::new(ScheduleKind::OneFOneB, 2, 4, 1, DType::F32);
            run.schedule = Some(swapped_receives());
            run.opts.validate = false;
            let t0 = Instant::now();
            let e = pipeline(&run).expect_err("a deadlocking schedule must fail");
            let msg = e.to_string();
            println!("run-time error (after {:?}): {msg}", t0.elapsed());
            assert!(
                msg.contains("deadlock") || msg.contains("timed out") || msg.contains("failed"),
                "expected a deadlock or timeout, got {e}"
            );
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "took {:?}",
                t0.elapsed()
            );
        },
    );
}

#[test]
fn missing_receive_wait_is_caught_by_checked_mode() {
    watchdog(60, "missing_receive_wait_is_caught_by_checked_mode", || {
        let mut run = Run::new(ScheduleKind::OneFOneB, 2, 4, 1, DType::F32);
        run.opts.omit_recv_wait = true;
        let e = pipeline(&run).expect_err("an unordered read must be reported");
        assert!(
            matches!(root_cause(&e), Error::UnsynchronizedAccess { .. }),
            "expected UnsynchronizedAccess, got {e}"
        );
        // And with the wait in place, the same run is fine.
        run.opts.omit_recv_wait = false;
        pipeline(&run).expect("with the wait");
    });
}

#[test]
fn bad_input_is_a_typed_error() {
    watchdog(60, "bad_input_is_a_typed_error", || {
        // A schedule for 3 ranks on a 2-rank communicator.
        let mut run = Run::new(ScheduleKind::GPipe, 2, 2, 1, DType::F32);
        run.schedule =
            Some(build(&ScheduleConfig::new(ScheduleKind::GPipe, 3, 2, 1)).expect("build"));
        let e = pipeline(&run).expect_err("wrong size");
        assert!(
            matches!(root_cause(&e), Error::InvalidArgument { .. }),
            "{e}"
        );
        // Boundary shape that does not match the stage outputs.
        let r = launch_with(2, BackendKind::Cpu, config(), |ctx: RankCtx| {
            let dev = ctx.device.clone();
            let streams = PipelineStreams::new(&dev)?;
            let s = build(&ScheduleConfig::new(ScheduleKind::GPipe, 2, 1, 1))?;
            let all = layers(1);
            let mut stage = DenseGeluStage::new(
                &dev,
                if ctx.rank == 0 { &all[..4] } else { &all[4..] },
                DType::F32,
            )?;
            let inputs = vec![Tensor::zeros(&dev, [ROWS, IN], DType::F32)?];
            let mut loss = CrossEntropyLoss::new(&dev, &[vec![0; ROWS]])?;
            let mut chunks: Vec<&mut dyn PipelineStage> = vec![&mut stage];
            run_step(
                &s,
                &ctx.comm,
                &streams,
                &mut chunks,
                if ctx.rank == 0 { &inputs } else { &[] },
                if ctx.rank == 1 {
                    Some(&mut loss as &mut dyn PipelineLoss)
                } else {
                    None
                },
                &Boundary {
                    dims: vec![ROWS, HID + 1],
                    dtype: DType::F32,
                },
                &ExecOptions::default(),
            )
        });
        let e = r.expect_err("boundary mismatch");
        assert!(
            matches!(
                root_cause(&e),
                Error::ShapeMismatch { .. } | Error::PeerFailed { .. }
            ),
            "{e}"
        );
        // The last stage's rank without a loss.
        let r = launch_with(1, BackendKind::Cpu, config(), |ctx: RankCtx| {
            let dev = ctx.device.clone();
            let streams = PipelineStreams::new(&dev)?;
            let s = build(&ScheduleConfig::new(ScheduleKind::GPipe, 1, 1, 1))?;
            let mut stage = DenseGeluStage::new(&dev, &layers(1), DType::F32)?;
            let inputs = vec![Tensor::zeros(&dev, [ROWS, IN], DType::F32)?];
            let mut chunks: Vec<&mut dyn PipelineStage> = vec![&mut stage];
            let b = Boundary {
                dims: vec![ROWS, HID],
                dtype: DType::F32,
            };
            run_step(
                &s,
                &ctx.comm,
                &streams,
                &mut chunks,
                &inputs,
                None,
                &b,
                &ExecOptions::default(),
            )
        });
        let e = r.expect_err("no loss");
        assert!(
            matches!(root_cause(&e), Error::InvalidArgument { .. }),
            "{e}"
        );
    });
}

// ---- traces ----------------------------------------------------------------------------------

#[test]
fn trace_covers_every_action_once() {
    watchdog(60, "trace_covers_every_action_once", || {
        let mut run = Run::new(ScheduleKind::Interleaved, 2, 4, 2, DType::F32);
        run.opts.trace = Some(Instant::now());
        let schedule = build(&run.cfg).expect("build");
        let (_, spans) = pipeline(&run).expect("pipeline");
        for (rank, s) in spans.iter().enumerate() {
            let mut got: Vec<Action> = s.iter().map(|x| x.action).collect();
            let mut want = schedule.ranks[rank].clone();
            got.sort();
            want.sort();
            assert_eq!(got, want, "rank {rank}: traced actions");
            // Compute spans on one stream never overlap.
            let mut c: Vec<_> = s.iter().filter(|x| x.lane == Lane::Compute).collect();
            c.sort_by(|a, b| a.start.total_cmp(&b.start));
            for w in c.windows(2) {
                assert!(
                    w[0].end <= w[1].start,
                    "rank {rank}: {:?} overlaps {:?}",
                    w[0],
                    w[1]
                );
            }
            for x in s {
                assert!(x.start <= x.end && x.start >= 0.0, "{x:?}");
                assert_eq!(x.lane, Lane::of(&x.action));
            }
        }
        let flat: Vec<_> = spans.concat();
        let json = ferrotron::parallel::pp::chrome_trace_json(&flat, "executor").expect("json");
        assert_eq!(json.matches("\"ph\":\"X\"").count(), flat.len());
        let svg = ferrotron::parallel::pp::svg_timeline(&flat, "executor").expect("svg");
        assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"));
    });
}

// ---- a pipeline of transformer blocks --------------------------------------------------------

mod blocks {
    use super::*;
    use ferrotron::comm::Communicator;
    use ferrotron::parallel::pp::blocks::BlockStage;
    use ferrotron::parallel::tp::{
        BlockWeights, TpStreams, TransformerBlock, TransformerBlockConfig,
    };

    /// Blocks of hidden `BH`, `HEADS` heads, MLP `FFN`, on sequences of `SEQ` tokens (one
    /// sequence per micro-batch).
    const BH: usize = 16;
    const HEADS: usize = 2;
    const FFN: usize = 32;
    const SEQ: usize = 8;
    const BLOCKS: usize = 4;

    fn cfg() -> TransformerBlockConfig {
        TransformerBlockConfig::new(BH, HEADS, FFN)
    }

    /// Block `l`'s full weights in [`BlockWeights`] order, with their shapes.
    fn block_data(l: usize) -> Vec<(Vec<f64>, Vec<usize>)> {
        let s = 1000 + 20 * l as u64;
        let w = |i: u64, r: usize, c: usize| {
            let a = 1.0 / (c as f64).sqrt();
            (random_vec(s + i, r * c, -a, a), vec![r, c])
        };
        let v = |i: u64, n: usize, lo: f64, hi: f64| (random_vec(s + i, n, lo, hi), vec![n]);
        vec![
            v(0, BH, 0.8, 1.2),
            v(1, BH, -0.1, 0.1),
            w(2, 3 * BH, BH),
            v(3, 3 * BH, -0.1, 0.1),
            w(4, BH, BH),
            v(5, BH, -0.1, 0.1),
            v(6, BH, 0.8, 1.2),
            v(7, BH, -0.1, 0.1),
            w(8, FFN, BH),
            v(9, FFN, -0.1, 0.1),
            w(10, BH, FFN),
            v(11, BH, -0.1, 0.1),
        ]
    }

    fn make_block(
        dev: &Device,
        stream: &ferrotron::Stream,
        tp: &dyn Communicator,
        l: usize,
    ) -> Result<TransformerBlock> {
        let t = block_data(l)
            .iter()
            .map(|(v, d)| Tensor::from_f64(dev, v, d.as_slice(), DType::F32))
            .collect::<Result<Vec<_>>>()?;
        let w = BlockWeights::from_slice(&t)?;
        TransformerBlock::from_full(&TpStreams::serial(stream), tp, cfg(), w)
    }

    /// Every parameter gradient of a block, in [`BlockWeights`] order.
    fn block_grads(b: &TransformerBlock, stream: &ferrotron::Stream) -> Result<Vec<Vec<f64>>> {
        let (qkv, proj) = (b.attention().linear_qkv(), b.attention().linear_proj());
        let (fc1, fc2) = (b.mlp().linear_fc1(), b.mlp().linear_fc2());
        fn bias(t: Option<&Tensor>) -> &Tensor {
            t.expect("biases on")
        }
        [
            b.ln1().grad_gamma(),
            b.ln1().grad_beta(),
            qkv.grad_weight(),
            bias(qkv.grad_bias()),
            proj.grad_weight(),
            bias(proj.grad_bias()),
            b.ln2().grad_gamma(),
            b.ln2().grad_beta(),
            fc1.grad_weight(),
            bias(fc1.grad_bias()),
            fc2.grad_weight(),
            bias(fc2.grad_bias()),
        ]
        .iter()
        .map(|t| t.to_f64_vec(stream))
        .collect()
    }

    fn sequences(m: usize) -> (Vec<Vec<f64>>, Vec<Vec<i32>>) {
        let x = (0..m)
            .map(|i| random_vec(500 + i as u64, SEQ * BH, -1.0, 1.0))
            .collect();
        let t = (0..m)
            .map(|i| random_indices(600 + i as u64, SEQ, BH))
            .collect();
        (x, t)
    }

    type Grads = Vec<Vec<Vec<f64>>>;

    /// One device, the whole model: each sequence forward, loss, backward, gradients
    /// accumulated.
    fn single_device(m: usize) -> (f64, Grads) {
        let (x, t) = sequences(m);
        let mut out = launch_with(1, BackendKind::Cpu, config(), |ctx: RankCtx| {
            let dev = ctx.device.clone();
            let stream = dev.new_stream()?;
            let tp: Box<dyn Communicator> = Box::new(ctx.comm);
            let blocks = (0..BLOCKS)
                .map(|l| make_block(&dev, &stream, &*tp, l))
                .collect::<Result<Vec<_>>>()?;
            let mut stage = BlockStage::new(blocks, tp)?;
            let mut loss = CrossEntropyLoss::new(&dev, &t)?;
            for (mb, xi) in x.iter().enumerate() {
                let input = Tensor::from_f64(&dev, xi, [SEQ, BH], DType::F32)?;
                let (z, saved) = stage.forward(&stream, &input)?;
                let dz = loss.forward_backward(&stream, mb, &z)?;
                stage.backward(&stream, &input, saved, &dz)?;
            }
            let grads = stage
                .blocks()
                .iter()
                .map(|b| block_grads(b, &stream))
                .collect::<Result<Vec<_>>>()?;
            Ok((loss.mean(&stream)?, grads))
        })
        .expect("single device");
        out.pop().expect("one rank")
    }

    fn pipeline_blocks(cfg: &ScheduleConfig) -> (f64, Grads) {
        let (pp, m, v) = (cfg.pp, cfg.microbatches, cfg.chunks);
        let (x, t) = sequences(m);
        let schedule = build(cfg).expect("build");
        let per_rank = launch_with(pp, BackendKind::Cpu, config(), |ctx: RankCtx| {
            let (rank, dev) = (ctx.rank, ctx.device.clone());
            let streams = PipelineStreams::new(&dev)?;
            let ranges = partition::virtual_chunks(BLOCKS, pp, v)?;
            let mut stages = Vec::new();
            for r in &ranges[rank] {
                // A tensor-parallel group of one per chunk (pipeline parallelism alone).
                let tp = ctx
                    .comm
                    .split(Some((rank * v + stages.len()) as u32), 0)?
                    .expect("in a group");
                let blocks = r
                    .clone()
                    .map(|l| make_block(&dev, &streams.compute, &*tp, l))
                    .collect::<Result<Vec<_>>>()?;
                stages.push(BlockStage::new(blocks, tp)?);
            }
            let inputs = if rank == 0 {
                x.iter()
                    .map(|xi| Tensor::from_f64(&dev, xi, [SEQ, BH], DType::F32))
                    .collect::<Result<Vec<_>>>()?
            } else {
                Vec::new()
            };
            let mut loss = if rank == (pp * v - 1) % pp {
                Some(CrossEntropyLoss::new(&dev, &t)?)
            } else {
                None
            };
            let mut chunks: Vec<&mut dyn PipelineStage> = stages
                .iter_mut()
                .map(|s| s as &mut dyn PipelineStage)
                .collect();
            let b = Boundary {
                dims: vec![SEQ, BH],
                dtype: DType::F32,
            };
            run_step(
                &schedule,
                &ctx.comm,
                &streams,
                &mut chunks,
                &inputs,
                loss.as_mut().map(|l| l as &mut dyn PipelineLoss),
                &b,
                &ExecOptions::default(),
            )?;
            let mut grads = Vec::new();
            for (r, s) in ranges[rank].iter().zip(&stages) {
                for (i, blk) in s.blocks().iter().enumerate() {
                    grads.push((r.start + i, block_grads(blk, &streams.compute)?));
                }
            }
            let l = loss.map(|l| l.mean(&streams.compute)).transpose()?;
            Ok((l, grads))
        })
        .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        let mut loss = None;
        let mut grads: Vec<Option<Vec<Vec<f64>>>> = (0..BLOCKS).map(|_| None).collect();
        for (l, g) in per_rank {
            loss = loss.or(l);
            for (i, gi) in g {
                grads[i] = Some(gi);
            }
        }
        let grads = grads.into_iter().map(|g| g.expect("every block")).collect();
        (loss.expect("loss"), grads)
    }

    #[test]
    fn transformer_block_pipeline_equals_single_device() {
        watchdog(
            120,
            "transformer_block_pipeline_equals_single_device",
            || {
                let m = 4;
                let (want_loss, want) = single_device(m);
                let mut ran = 0;
                for kind in ScheduleKind::ALL {
                    let (pp, v) = if kind == ScheduleKind::Interleaved {
                        (2, 2)
                    } else {
                        (2, 1)
                    };
                    for recompute in [false, true] {
                        let mut cfg = ScheduleConfig::new(kind, pp, m, v);
                        if recompute {
                            cfg = cfg.recompute_all();
                        }
                        let (loss, got) = pipeline_blocks(&cfg);
                        // The same ops on the same rows in the same order: only the f32 rounding
                        // of identical sums may differ.
                        let tol = Tolerance::for_reduction(DType::F32, m * SEQ);
                        let c = compare(&[loss], &[want_loss], tol);
                        assert!(c.pass, "{kind} recompute={recompute}: loss: {c}");
                        for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                            for (i, (gi, wi)) in g.iter().zip(w).enumerate() {
                                let c = compare(gi, wi, tol);
                                assert!(
                                    c.pass,
                                    "{kind} recompute={recompute}: block {b} grad {i}: {c}"
                                );
                            }
                        }
                        ran += 1;
                    }
                }
                assert_eq!(ran, 10);
            },
        );
    }
}
