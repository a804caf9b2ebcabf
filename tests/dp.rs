//! Data parallelism (`ferrotron::parallel::dp`): a DDP step with bucketed, overlapped gradient
//! all-reduce equals the single-device step on the whole batch — every parameter after two
//! AdamW steps — for dp in {1, 2, 3, 4}, bucket caps from smaller than one parameter to one
//! bucket for everything, with and without gradient accumulation; and the overlap is real: a
//! bucket's all-reduce runs while earlier layers' backward does.

mod common;

use common::watchdog;
use ferrotron::comm::{launch_with, CommConfig, RankCtx};
use ferrotron::ops::{adamw_step, AdamW};
use ferrotron::parallel::dp::{BucketCaps, GradReducer};
use ferrotron::parallel::pp::dense::{CrossEntropyLoss, DenseGeluStage, DenseLayerInit};
use ferrotron::parallel::pp::{PipelineLoss, PipelineStage};
use ferrotron::verify::{compare, random_indices, random_vec, Tolerance};
use ferrotron::{BackendKind, DType, Device, Result, Stream, Tensor};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn config() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(30),
        deadlock_grace: Duration::from_secs(2),
    }
}

#[derive(Clone, Copy, Debug)]
struct Model {
    inputs: usize,
    hidden: usize,
    classes: usize,
    layers: usize,
    /// Rows per micro-batch.
    rows: usize,
}

const SMALL: Model = Model {
    inputs: 6,
    hidden: 10,
    classes: 5,
    layers: 4,
    rows: 3,
};

fn layers(m: Model) -> Vec<DenseLayerInit> {
    (0..m.layers)
        .map(|l| {
            let inputs = if l == 0 { m.inputs } else { m.hidden };
            let outputs = if l == m.layers - 1 {
                m.classes
            } else {
                m.hidden
            };
            let s = 1.5 / (inputs as f64).sqrt();
            DenseLayerInit {
                inputs,
                outputs,
                weight: random_vec(40 + 2 * l as u64, outputs * inputs, -s, s),
                bias: random_vec(41 + 2 * l as u64, outputs, -0.3, 0.3),
            }
        })
        .collect()
}

/// Micro-batch `i` of the global batch (inputs and targets), the same on every layout.
fn micro_batch(m: Model, step: usize, i: usize) -> (Vec<f64>, Vec<i32>) {
    let seed = 1000 * step as u64 + i as u64;
    (
        random_vec(seed, m.rows * m.inputs, -1.0, 1.0),
        random_indices(seed + 500, m.rows, m.classes),
    )
}

/// Parameter sizes in backward order: for each layer from the last, its weight then its bias.
fn numels(m: Model) -> Vec<usize> {
    layers(m)
        .iter()
        .rev()
        .flat_map(|l| [l.inputs * l.outputs, l.outputs])
        .collect()
}

/// Optimizer state: per layer (m, v) for weight and bias.
type Moments = Vec<[Tensor; 4]>;

fn moments(dev: &Device, model: &DenseGeluStage) -> Result<Moments> {
    (0..model.num_layers())
        .map(|l| {
            let t = model.tensors(l)?;
            Ok([
                Tensor::zeros(dev, t[0].dims(), DType::F32)?,
                Tensor::zeros(dev, t[0].dims(), DType::F32)?,
                Tensor::zeros(dev, t[1].dims(), DType::F32)?,
                Tensor::zeros(dev, t[1].dims(), DType::F32)?,
            ])
        })
        .collect()
}

fn adamw(s: &Stream, model: &mut DenseGeluStage, mom: &mut Moments, step: u32) -> Result<()> {
    let cfg = AdamW {
        lr: 1e-2,
        ..AdamW::default()
    };
    for (l, mv) in mom.iter_mut().enumerate() {
        let (w, b, dw, db) = model.params_mut(l)?;
        let [mw, vw, mb, vb] = mv;
        adamw_step(s, &cfg, step, w, dw, mw, vw)?;
        adamw_step(s, &cfg, step, b, db, mb, vb)?;
    }
    Ok(())
}

fn params(s: &Stream, model: &DenseGeluStage) -> Result<Vec<Vec<f64>>> {
    let mut out = Vec::new();
    for l in 0..model.num_layers() {
        let t = model.tensors(l)?;
        out.push(t[0].to_f64_vec(s)?);
        out.push(t[1].to_f64_vec(s)?);
    }
    Ok(out)
}

const STEPS: usize = 2;

/// One device: each step, the whole batch (`dp * accum` micro-batches) at once.
fn single_device(m: Model, dp: usize, accum: usize) -> Vec<Vec<f64>> {
    let dev = Device::cpu();
    let s = dev.new_stream().expect("stream");
    let mut model = DenseGeluStage::new(&dev, &layers(m), DType::F32).expect("model");
    let mut mom = moments(&dev, &model).expect("moments");
    for step in 0..STEPS {
        model.zero_grad().expect("zero");
        let (mut x, mut t) = (Vec::new(), Vec::new());
        for i in 0..dp * accum {
            let (xi, ti) = micro_batch(m, step, i);
            x.extend(xi);
            t.extend(ti);
        }
        let n = dp * accum * m.rows;
        let input = Tensor::from_f64(&dev, &x, [n, m.inputs], DType::F32).expect("x");
        let mut loss = CrossEntropyLoss::new(&dev, &[t]).expect("loss");
        let (out, saved) = model.forward(&s, &input).expect("fwd");
        let dout = loss.forward_backward(&s, 0, &out).expect("loss");
        model.backward(&s, &input, saved, &dout).expect("bwd");
        adamw(&s, &mut model, &mut mom, step as u32 + 1).expect("adamw");
    }
    params(&s, &model).expect("params")
}

/// What one DDP rank measured besides its parameters.
struct RankTrace {
    /// When each layer's backward finished on the compute stream (last micro-batch of the
    /// last step), by layer.
    layer_done: Vec<f64>,
    /// Bucket all-reduce intervals of the last step, and the buckets' first/last layer.
    buckets: Vec<(f64, f64, usize)>,
    /// When the last micro-batch's backward started on the compute stream (last step).
    backward_start: f64,
}

/// A DDP run on `dp` thread ranks: each rank takes micro-batches `rank * accum ..` of each
/// step's global batch; the reducer averages once per step.
fn ddp(m: Model, dp: usize, accum: usize, caps: BucketCaps) -> Vec<(Vec<Vec<f64>>, RankTrace)> {
    let numels = numels(m);
    launch_with(dp, BackendKind::Cpu, config(), |ctx: RankCtx| {
        let dev = ctx.device.clone();
        let (compute, comm) = (dev.new_stream()?, dev.new_stream()?);
        let mut model = DenseGeluStage::new(&dev, &layers(m), DType::F32)?;
        let mut mom = moments(&dev, &model)?;
        let mut trace = RankTrace {
            layer_done: vec![0.0; m.layers],
            buckets: Vec::new(),
            backward_start: 0.0,
        };
        let mut reducer = GradReducer::new(&dev, &numels, caps)?;
        for step in 0..STEPS {
            let origin = Instant::now();
            if step + 1 == STEPS {
                reducer = reducer.with_trace(origin);
            }
            model.zero_grad()?;
            let batches: Vec<_> = (0..accum)
                .map(|j| micro_batch(m, step, ctx.rank * accum + j))
                .collect();
            let targets: Vec<Vec<i32>> = batches.iter().map(|b| b.1.clone()).collect();
            let mut loss = CrossEntropyLoss::new(&dev, &targets)?;
            let done: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(vec![0.0; m.layers]));
            let bwd_start: Arc<Mutex<f64>> = Arc::new(Mutex::new(0.0));
            for (j, (x, _)) in batches.iter().enumerate() {
                let input = Tensor::from_f64(&dev, x, [m.rows, m.inputs], DType::F32)?;
                let (out, saved) = model.forward(&compute, &input)?;
                let dout = loss.forward_backward(&compute, j, &out)?;
                let last = j + 1 == accum;
                if last {
                    let b = bwd_start.clone();
                    compute.host_fn(move || {
                        *b.lock().unwrap_or_else(|p| p.into_inner()) =
                            origin.elapsed().as_secs_f64();
                    })?;
                }
                let nl = m.layers;
                let mut hook = |l: usize, dw: &Tensor, db: &Tensor| -> Result<()> {
                    if !last {
                        return Ok(()); // no_sync: accumulate locally
                    }
                    let d = done.clone();
                    compute.host_fn(move || {
                        d.lock().unwrap_or_else(|p| p.into_inner())[l] =
                            origin.elapsed().as_secs_f64();
                    })?;
                    let i = 2 * (nl - 1 - l);
                    reducer.grad_ready(&compute, &comm, &ctx.comm, i, dw)?;
                    reducer.grad_ready(&compute, &comm, &ctx.comm, i + 1, db)
                };
                model.backward_with_hook(&compute, &input, saved, &dout, &mut hook)?;
            }
            {
                let mut grads: Vec<&mut Tensor> = Vec::new();
                for (dw, db) in model.grads_mut().into_iter().rev() {
                    grads.push(dw);
                    grads.push(db);
                }
                reducer.finish(&compute, &mut grads)?;
            }
            adamw(&compute, &mut model, &mut mom, step as u32 + 1)?;
            compute.synchronize()?;
            comm.synchronize()?;
            trace.layer_done = done.lock().unwrap_or_else(|p| p.into_inner()).clone();
            trace.backward_start = *bwd_start.lock().unwrap_or_else(|p| p.into_inner());
        }
        let plan = reducer.plan().clone();
        trace.buckets = reducer
            .spans()
            .iter()
            .map(|s| {
                // The earliest layer (smallest index) whose gradients are in the bucket.
                let last_param = plan.buckets[s.bucket].params.end - 1;
                (s.start, s.end, m.layers - 1 - last_param / 2)
            })
            .collect();
        Ok((params(&compute, &model)?, trace))
    })
    .unwrap_or_else(|e| panic!("dp {dp} accum {accum} {caps:?}: {e}"))
}

#[test]
fn ddp_step_equals_single_device() {
    watchdog(120, "ddp_step_equals_single_device", || {
        let total: usize = numels(SMALL).iter().sum();
        let caps = [
            // Smaller than any parameter: one bucket per parameter.
            BucketCaps::uniform(4),
            // A few parameters per bucket, with DDP's smaller first bucket.
            BucketCaps {
                bucket_cap_bytes: 4 * 60,
                first_bucket_cap_bytes: 4 * 20,
            },
            // Everything in one bucket.
            BucketCaps::uniform(4 * total),
        ];
        let mut ran = 0;
        for dp in [1, 2, 3, 4] {
            for accum in [1, 3] {
                let want = single_device(SMALL, dp, accum);
                for c in caps {
                    let got = ddp(SMALL, dp, accum, c);
                    for (r, (p, _)) in got.iter().enumerate() {
                        for (i, (g, w)) in p.iter().zip(&want).enumerate() {
                            // Gradients differ from the single device's only in f32 summation
                            // order (per-rank sums, then the average); AdamW's normalisation
                            // divides much of that back out.
                            let t = Tolerance::for_reduction(DType::F32, dp * accum * SMALL.rows)
                                .scaled(4.0);
                            let cmp = compare(g, w, t);
                            assert!(
                                cmp.pass,
                                "dp {dp} accum {accum} {c:?} rank {r} param {i}: {cmp}"
                            );
                        }
                        // Every replica holds the same parameters, bit for bit.
                        assert_eq!(p, &got[0].0, "rank {r} diverged from rank 0");
                    }
                    ran += 1;
                }
            }
        }
        assert_eq!(ran, 4 * 2 * 3);
    });
}

#[test]
fn bucket_all_reduce_overlaps_the_backward() {
    watchdog(120, "bucket_all_reduce_overlaps_the_backward", || {
        // Wide layers: each layer's backward takes long enough to overlap with an all-reduce.
        let m = Model {
            inputs: 192,
            hidden: 192,
            classes: 192,
            layers: 6,
            rows: 96,
        };
        // One bucket per layer (weight + bias just over the cap).
        let caps = BucketCaps::uniform(4 * 192 * 192);
        let mut overlapped = 0;
        let attempts = 6;
        let (mut hidden, mut total) = (0.0, 0.0);
        for _ in 0..attempts {
            let runs = ddp(m, 2, 1, caps);
            // The fraction of all-reduce time hidden under the backward: each bucket's interval
            // intersected with [backward start, layer 0's backward end].
            for (_, t) in &runs {
                let (bs, be) = (t.backward_start, t.layer_done[0]);
                for &(s, e, _) in &t.buckets {
                    total += e - s;
                    hidden += (e.min(be) - s.max(bs)).max(0.0);
                }
            }
            let hit = runs.iter().any(|(_, t)| {
                t.buckets.iter().any(|&(s, e, first_layer)| {
                    // The backward of layer l runs from layer l+1's end to its own end; an
                    // earlier layer than the bucket's own overlapping its all-reduce.
                    (0..first_layer).any(|l| {
                        let (ls, le) = (t.layer_done[l + 1], t.layer_done[l]);
                        ls < e && s < le
                    })
                })
            });
            if hit {
                overlapped += 1;
            }
        }
        println!(
            "{overlapped} of {attempts} attempts overlapped a bucket all-reduce with the backward; \
             {:.1}% of all-reduce time hidden under the backward ({:.2} of {:.2} ms)",
            100.0 * hidden / total,
            hidden * 1e3,
            total * 1e3
        );
        assert!(
            overlapped > 0,
            "no bucket all-reduce ever overlapped the backward"
        );
    });
}

#[test]
fn reducer_rejects_bad_use() {
    let dev = Device::cpu();
    let s = dev.new_stream().expect("stream");
    let r = launch_with(1, BackendKind::Cpu, config(), |ctx: RankCtx| {
        let mut red = GradReducer::new(&dev, &[4, 2], BucketCaps::uniform(4))?;
        let g = Tensor::zeros(&dev, [3], DType::F32)?;
        assert!(
            red.grad_ready(&s, &s, &ctx.comm, 0, &g).is_err(),
            "wrong size"
        );
        assert!(
            red.grad_ready(&s, &s, &ctx.comm, 7, &g).is_err(),
            "unknown parameter"
        );
        let g4 = Tensor::zeros(&dev, [4], DType::F32)?;
        red.grad_ready(&s, &s, &ctx.comm, 0, &g4)?;
        assert!(red.grad_ready(&s, &s, &ctx.comm, 0, &g4).is_err(), "twice");
        let mut a = Tensor::zeros(&dev, [4], DType::F32)?;
        let mut b = Tensor::zeros(&dev, [2], DType::F32)?;
        let e = red
            .finish(&s, &mut [&mut a, &mut b])
            .expect_err("parameter 1 missing");
        assert!(e.to_string().contains("parameter 1"), "{e}");
        Ok(())
    });
    r.expect("typed errors");
    assert!(GradReducer::new(&dev, &[], BucketCaps::default()).is_err());
}

// ---- ZeRO-1 ----------------------------------------------------------------------------------

use ferrotron::parallel::dp::Zero1;

/// The same training as [`ddp`] but the optimizer is ZeRO-1 (no reducer: its reduce-scatter
/// averages the gradients). Returns each rank's parameters and its optimizer's memory report.
fn zero1(
    m: Model,
    dp: usize,
    accum: usize,
) -> Vec<(
    Vec<Vec<f64>>,
    ferrotron::parallel::dp::ZeroMemory,
    Vec<usize>,
)> {
    launch_with(dp, BackendKind::Cpu, config(), |ctx: RankCtx| {
        let dev = ctx.device.clone();
        let s = dev.new_stream()?;
        let mut model = DenseGeluStage::new(&dev, &layers(m), DType::F32)?;
        let cfg = AdamW {
            lr: 1e-2,
            ..AdamW::default()
        };
        let mut opt = {
            let mut ps: Vec<&Tensor> = Vec::new();
            for l in 0..model.num_layers() {
                let t = model.tensors(l)?;
                ps.push(t[0]);
                ps.push(t[1]);
            }
            Zero1::new(&s, &ctx.comm, &ps, cfg)?
        };
        for step in 0..STEPS {
            model.zero_grad()?;
            let batches: Vec<_> = (0..accum)
                .map(|j| micro_batch(m, step, ctx.rank * accum + j))
                .collect();
            let targets: Vec<Vec<i32>> = batches.iter().map(|b| b.1.clone()).collect();
            let mut loss = CrossEntropyLoss::new(&dev, &targets)?;
            for (j, (x, _)) in batches.iter().enumerate() {
                let input = Tensor::from_f64(&dev, x, [m.rows, m.inputs], DType::F32)?;
                let (out, saved) = model.forward(&s, &input)?;
                let dout = loss.forward_backward(&s, j, &out)?;
                model.backward(&s, &input, saved, &dout)?;
            }
            // Gradients are read while parameters are written: copy the gradients' handles
            // first (the step packs them before it writes any parameter).
            let n = model.num_layers();
            let grads: Vec<Tensor> = (0..n)
                .flat_map(|l| {
                    let t = model.tensors(l).expect("layer");
                    [t[2].dims().to_vec(), t[3].dims().to_vec()]
                })
                .map(|d| Tensor::zeros(&dev, d.as_slice(), DType::F32))
                .collect::<Result<Vec<_>>>()?;
            let mut grads = grads;
            for l in 0..n {
                let t = model.tensors(l)?;
                ferrotron::ops::shard::copy(&s, t[2], &mut grads[2 * l])?;
                ferrotron::ops::shard::copy(&s, t[3], &mut grads[2 * l + 1])?;
            }
            let mut ps: Vec<&mut Tensor> = Vec::new();
            for (w, b) in model.weights_mut() {
                ps.push(w);
                ps.push(b);
            }
            let gs: Vec<&Tensor> = grads.iter().collect();
            opt.step(&s, &ctx.comm, &mut ps, &gs)?;
        }
        Ok((
            params(&s, &model)?,
            opt.memory(),
            opt.shard_sizes().to_vec(),
        ))
    })
    .unwrap_or_else(|e| panic!("zero1 dp {dp} accum {accum}: {e}"))
}

#[test]
fn zero1_step_equals_the_ddp_step_bitwise() {
    watchdog(120, "zero1_step_equals_the_ddp_step_bitwise", || {
        // Two models whose parameter counts (345 and 334) split unevenly over 2 and 3 ranks.
        let other = Model {
            classes: 4,
            ..SMALL
        };
        let mut uneven = 0;
        for m in [SMALL, other] {
            let total: usize = numels(m).iter().sum();
            for dp in [1, 2, 3] {
                for accum in [1, 2] {
                    let want = ddp(m, dp, accum, BucketCaps::default());
                    let got = zero1(m, dp, accum);
                    for (r, ((p, mem, sizes), (w, _))) in got.iter().zip(&want).enumerate() {
                        assert_eq!(p, w, "dp {dp} accum {accum} rank {r}: ZeRO-1 != DDP");
                        assert_eq!(sizes.iter().sum::<usize>(), total);
                        if sizes.iter().any(|&s| s != sizes[0]) {
                            uneven += 1;
                        }
                        // ZeRO-1 memory: f32 params 4Ψ, f32 grads 4Ψ, 12 bytes per shard element.
                        assert_eq!(mem.params, 4 * total);
                        assert_eq!(mem.grads, 4 * total);
                        assert_eq!(mem.optimizer, 12 * sizes[r]);
                    }
                }
            }
        }
        assert!(uneven > 0, "no uneven shards were exercised");
    });
}
