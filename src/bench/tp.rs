//! `ferrotron tp`: one tensor-parallel transformer block, forward + backward on CPU thread ranks,
//! against the same block on one rank: the largest difference, the time per step for tp = 1 and
//! tp = N, and the bytes each rank's collectives carried per step next to Megatron's formula.

use crate::comm::{launch, Communicator, Counting};
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::parallel::tp::{BlockWeights, TpStreams, TransformerBlock, TransformerBlockConfig};
use crate::tensor::Tensor;
use crate::verify::{compare, random_vec, Comparison, Tolerance};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// What to run.
#[derive(Clone, Debug)]
pub struct TpBench {
    /// Tensor-parallel size N.
    pub tp: usize,
    /// Hidden size h.
    pub hidden: usize,
    /// Attention heads.
    pub heads: usize,
    /// Sequence length s (tokens; batch 1).
    pub seq: usize,
    /// Sequence parallelism.
    pub sequence_parallel: bool,
    /// Element type.
    pub dtype: DType,
    /// Timed steps (after one untimed).
    pub steps: usize,
}

/// One configuration's run: rank 0's step times, every rank's z and dx chunks, bytes per step.
struct Run {
    step_s: Vec<f64>,
    z: Vec<f64>,
    dx: Vec<f64>,
    bytes: [u64; 3],
    calls: u64,
}

/// The full weights (the same on every rank: fixed seeds).
struct Full {
    t: Vec<Tensor>,
}

fn full_weights(dev: &crate::Device, h: usize, ffn: usize, dtype: DType) -> Result<Full> {
    let w = |seed: u64, shape: Vec<usize>, scale: f64, base: f64| -> Result<Tensor> {
        let n = shape.iter().product();
        let v: Vec<f64> = random_vec(seed, n, -scale, scale)
            .into_iter()
            .map(|x| x + base)
            .collect();
        Tensor::from_f64(dev, &v, shape, dtype)
    };
    let s = 1.0 / (h as f64).sqrt();
    Ok(Full {
        t: vec![
            w(1, vec![h], 0.1, 1.0)?,
            w(2, vec![h], 0.1, 0.0)?,
            w(3, vec![3 * h, h], s, 0.0)?,
            w(4, vec![3 * h], 0.02, 0.0)?,
            w(5, vec![h, h], s, 0.0)?,
            w(6, vec![h], 0.02, 0.0)?,
            w(7, vec![h], 0.1, 1.0)?,
            w(8, vec![h], 0.1, 0.0)?,
            w(9, vec![ffn, h], s, 0.0)?,
            w(10, vec![ffn], 0.02, 0.0)?,
            w(11, vec![h, ffn], 1.0 / (ffn as f64).sqrt(), 0.0)?,
            w(12, vec![h], 0.02, 0.0)?,
        ],
    })
}

fn run(cfg: &TpBench, tp: usize) -> Result<Run> {
    let (h, s) = (cfg.hidden, cfg.seq);
    let ffn = 4 * h;
    let mut block_cfg = TransformerBlockConfig::new(h, cfg.heads, ffn);
    block_cfg.sequence_parallel = cfg.sequence_parallel && tp > 1;
    let xs = random_vec(100, s * h, -1.0, 1.0);
    let dzs = random_vec(101, s * h, -1.0, 1.0);
    let out = launch(tp, BackendKind::Cpu, |ctx| {
        let counting = Counting::borrowed(&ctx.comm);
        let counts = counting.counts();
        let comm: &dyn Communicator = &counting;
        let streams = TpStreams::new(&ctx.device)?;
        let f = full_weights(&ctx.device, h, ffn, cfg.dtype)?;
        let t = &f.t;
        let weights = BlockWeights::from_slice(t)?;
        let mut block = TransformerBlock::from_full(&streams, comm, block_cfg.clone(), weights)?;
        let local = block_cfg.local_tokens(s, tp)?;
        let lo = if block_cfg.sequence_parallel {
            ctx.rank * local
        } else {
            0
        };
        let x = Tensor::from_f64(
            &ctx.device,
            &xs[lo * h..(lo + local) * h],
            [local, h],
            cfg.dtype,
        )?;
        let dz = Tensor::from_f64(
            &ctx.device,
            &dzs[lo * h..(lo + local) * h],
            [local, h],
            cfg.dtype,
        )?;
        streams.compute.synchronize()?;
        let mut times = Vec::new();
        let mut last = None;
        let mut before = [0u64; 4];
        for step in 0..=cfg.steps {
            if step == 1 {
                before = [
                    counts.all_reduce.load(Ordering::Relaxed),
                    counts.all_gather.load(Ordering::Relaxed),
                    counts.reduce_scatter.load(Ordering::Relaxed),
                    counts.calls.load(Ordering::Relaxed),
                ];
            }
            let start = Instant::now();
            let (z, acts) = block.forward(&streams, comm, &x)?;
            let dx = block.backward(&streams, comm, &x, &acts, &dz)?;
            block.allreduce_layernorm_grads(&streams, comm)?;
            streams.compute.synchronize()?;
            streams.comm.synchronize()?;
            if step > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
            last = Some((z, dx));
        }
        let (z, dx) = last.expect("at least one step");
        let steps = cfg.steps.max(1) as u64;
        let per = |i: usize, a: &AtomicU64| (a.load(Ordering::Relaxed) - before[i]) / steps;
        Ok((
            times,
            z.to_f64_vec(&streams.compute)?,
            dx.to_f64_vec(&streams.compute)?,
            [
                per(0, &counts.all_reduce),
                per(1, &counts.all_gather),
                per(2, &counts.reduce_scatter),
            ],
            per(3, &counts.calls),
        ))
    })?;
    let sp = block_cfg.sequence_parallel;
    let mut z = Vec::new();
    let mut dx = Vec::new();
    for (r, (_, zr, dxr, _, _)) in out.iter().enumerate() {
        if sp || r == 0 {
            z.extend_from_slice(zr);
            dx.extend_from_slice(dxr);
        }
    }
    let (times, _, _, b, calls) = &out[0];
    Ok(Run {
        step_s: times.clone(),
        z,
        dx,
        bytes: *b,
        calls: *calls,
    })
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The report of one `ferrotron tp` run.
pub struct TpReport {
    /// The printable table.
    pub text: String,
    /// z and dx against tp = 1.
    pub diffs: [Comparison; 2],
}

/// Runs the block at tp = 1 and tp = N and reports.
pub fn bench(cfg: &TpBench) -> Result<TpReport> {
    if cfg.tp == 0 {
        return Err(Error::invalid("ferrotron tp", "--tp", "must be at least 1"));
    }
    let one = run(cfg, 1)?;
    let n = run(cfg, cfg.tp)?;
    let tol = Tolerance::for_reduction(cfg.dtype, cfg.hidden * 4).scaled(4.0);
    let dz = compare(&n.z, &one.z, tol);
    let ddx = compare(&n.dx, &one.dx, tol);
    let (s, h, p) = (cfg.seq as f64, cfg.hidden as f64, cfg.tp as f64);
    let e = cfg.dtype.size_in_bytes() as f64;
    let act = s * h * e;
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# transformer block (pre-LN), h={} heads={} ffn={} s={} {} sp={}: forward+backward on CPU thread ranks",
        cfg.hidden, cfg.heads, 4 * cfg.hidden, cfg.seq, cfg.dtype, cfg.sequence_parallel
    );
    let _ = writeln!(t, "max difference tp={} vs tp=1: z {dz}", cfg.tp);
    let _ = writeln!(t, "max difference tp={} vs tp=1: dx {ddx}", cfg.tp);
    let _ = writeln!(
        t,
        "time per step (median of {}): tp=1 {:.1} ms, tp={} {:.1} ms",
        cfg.steps,
        median(&one.step_s) * 1e3,
        cfg.tp,
        median(&n.step_s) * 1e3
    );
    let _ = writeln!(
        t,
        "collective payload per rank per step at tp={} ({} calls): all-reduce {} B, all-gather {} B (output), reduce-scatter {} B (input)",
        cfg.tp, n.calls, n.bytes[0], n.bytes[1], n.bytes[2]
    );
    if cfg.tp > 1 {
        if cfg.sequence_parallel {
            let _ = writeln!(
                t,
                "Megatron (SP): forward 2 all-gathers + 2 reduce-scatters of s*h, backward the same: {:.0} B each kind per step (+ the backward's input re-gathers, + 4 LN-grad all-reduces of h)",
                4.0 * act
            );
        } else {
            let _ = writeln!(
                t,
                "Megatron (no SP): 2 all-reduces of s*h forward + 2 backward = {:.0} B per step",
                4.0 * act
            );
        }
        let _ = writeln!(
            t,
            "ring traffic each rank sends for that payload: all-reduce 2(p-1)/p = {:.3}x, all-gather / reduce-scatter (p-1)/p = {:.3}x",
            2.0 * (p - 1.0) / p,
            (p - 1.0) / p
        );
    }
    Ok(TpReport {
        text: t,
        diffs: [dz, ddx],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tp_block_matches_tp1_and_counts_megatrons_bytes() {
        for sp in [false, true] {
            let cfg = TpBench {
                tp: 2,
                hidden: 32,
                heads: 4,
                seq: 8,
                sequence_parallel: sp,
                dtype: DType::F32,
                steps: 1,
            };
            let r = bench(&cfg).unwrap();
            assert!(r.diffs.iter().all(|c| c.pass), "{}", r.text);
            let n = run(&cfg, 2).unwrap();
            let act = (8 * 32 * 4) as u64;
            if sp {
                // 2 all-gathers + 2 reduce-scatters of s*h each way, plus the backward's two
                // input re-gathers; the 4 LN-grad all-reduces of h.
                assert_eq!(n.bytes, [4 * 32 * 4, 6 * act, 4 * act], "{}", r.text);
            } else {
                assert_eq!(n.bytes, [4 * act, 0, 0], "{}", r.text);
            }
        }
    }
}
