//! `ferrotron::parallel::tp::TransformerBlock` (pre-LN: `y = x + Attn(LN1(x))`,
//! `z = y + MLP(LN2(y))`) against an f64 single-device reference, for tensor-parallel sizes
//! 1, 2, 3, 4 and 8 in f32 and bf16, with and without sequence parallelism: the output, the
//! input gradient and every parameter gradient (layer norms, QKV, projection, fc1, fc2;
//! gathered back from the shards).
//!
//! The reference rounds to the block's dtype exactly where the block stores a tensor: the
//! layer norms' outputs (f32 statistics), the attention's stored activations (as in
//! `tests/tp_attention.rs`), the residual sums, fc1's output, the bias+GeLU output, fc2's
//! per-rank partial outputs (for the tensor-parallel size under test), their reduced sum and
//! the bias sum; backward fc2's input gradient, the GeLU gradient, fc1's per-rank partial
//! input gradients and their sum, the layer norms' input gradients, the residual gradient
//! sums, and the layer norms' `dgamma`/`dbeta`, which the op stores in the block's dtype per
//! rank (over the rank's tokens under sequence parallelism) before they are added up in f32.
//! The linear layers' weight and bias gradients are f32 sums of products of stored values.
//! f32 results are held elementwise to [`tol`].
//!
//! bf16 results (see [`check_result`]) are held to the bf16 dtype tolerance norm-wise: for the
//! output and the input gradient (each rank's tokens) and every gradient,
//! `||got - want||_2 / ||want||_2 <= 1e-2` (`Tolerance::for_dtype(DType::BF16).rel`), plus an
//! elementwise outlier guard, `|got - want| <= 1e-2 |want| + 4e-2 rms(want)` per element
//! ([`BF16_GUARD_ABS`]). An elementwise relative tolerance alone cannot be met at the dtype
//! tolerance: the rounding model leaves *flips*, an intermediate the block accumulates in f32
//! and the reference in f64 landing within an f32 error of a bf16 rounding boundary and being
//! stored one bf16 ulp (2^-8 to 2^-7 relative) apart. That is rare per value, but the block
//! stores over 10^5 values per pass, cancelling steps (the softmax backward's `dy - sum(dy *
//! y)`, the layer norm backward's `g - mean(g) - xhat * mean(g * xhat)`) make it likelier, and
//! a flipped value moves on through every later GEMM, layer norm and f32-accumulated gradient
//! sum; an element that cancels to near zero then carries an error of a few percent of the
//! tensor's typical size. Modelling the flips would mean replaying the library's f32 summation
//! orders. Measured over 60 seed sets (tensor-parallel sizes 1, 2, 3, 4, 8, sequence
//! parallelism on and off, every rank; `bf16_error_survey` repeats it): the norm-wise error
//! reached at most 6.9e-3 (`ln1.dgamma`; 4.9e-3 for the input gradient, 3.5e-3 for the
//! output, 3.7e-3 for the linear layers' gradients), the largest elementwise error 4.5e-2 of
//! the tensor's RMS (the input gradient), and the guard needed at most 2.95e-2 RMS (`dWqkv`).
//! The criterion can fail, though only just for a missing rounding model: against the
//! unrounded (pure f64) reference the sequence-parallel test fails the guard (`dWqkv` at
//! p = 8, up to 1.07x its allowance) while every norm-wise error stays below 1e-2 (at most
//! 9.8e-3) and the test without sequence parallelism passes; over 20 other seed sets that
//! reference fails the norm-wise check too (up to 1.5e-2, `ln1.dbeta`) and the guard by up to
//! 2.0x. Without the sequence-parallel all-reduce of the layer norms' gradients their
//! norm-wise error is 0.4 to 1 (checked in [`check_block`]: the per-rank partial gradients
//! must fail by 10x). This replaces elementwise factors of 6 to 16 over
//! [`Tolerance::for_reduction`], which allowed 6-16% errors on typical elements and still
//! failed correct results on other seed sets (the output at 1.22x its allowance over 20).
//!
//! Also: sequence parallelism on and off agree; under sequence parallelism the layer norms'
//! gradients are per-rank partial sums until `allreduce_layernorm_grads` (and only then match
//! the reference); bad configurations are typed errors.

mod common;

use common::dense::{
    add, bias_rows, cols, colsum, concat, max_err_over_rms, mm_nn, mm_nt, mm_tn, normwise_rel,
    reduce, rms, round, scaled, worst_ratio,
};
use common::watchdog;
use ferrotron::comm::{launch_with, CommConfig, Communicator, RankCtx};
use ferrotron::parallel::tp::shard::{self, Partition};
use ferrotron::parallel::tp::{
    qkv_full_from_separate, BlockWeights, TpStreams, TransformerBlock, TransformerBlockConfig,
};
use ferrotron::reference::bias_gelu::{gelu_grad_ref, gelu_ref};
use ferrotron::reference::layernorm::{layernorm_bwd_ref, layernorm_fwd_ref};
use ferrotron::reference::softmax::{softmax_bwd_ref, softmax_fwd_ref};
use ferrotron::verify::{compare, random_vec, Tolerance};
use ferrotron::{BackendKind, DType, Device, Error, Result, Tensor};
use std::time::Duration;

const WORLDS: &[usize] = &[1, 2, 3, 4, 8];
/// Tokens (one causal sequence; divisible by every world size).
const S: usize = 24;
const H: usize = 48;
const HEADS: usize = 24;
const D: usize = H / HEADS;
const F: usize = 48;
const EPS: f64 = 1e-5;
const DTYPE: DType = DType::F32;
const DTYPES: &[DType] = &[DType::F32, DType::BF16];
/// The bf16 elementwise outlier guard's relative part: the bf16 dtype tolerance
/// (`Tolerance::for_dtype(DType::BF16).rel`). See [`BF16_GUARD_ABS`].
const BF16_GUARD_REL: f64 = 1e-2;
/// The bf16 elementwise outlier guard's absolute part, as a fraction of the reference tensor's
/// RMS: `|got - want| <= 1e-2 |want| + 4e-2 rms(want)` for every element. The norm-wise check
/// (see [`check_result`]) is the criterion; this one only bounds a single element, which a
/// one-ulp flip of a stored intermediate (see the module docs) can move by a few percent of the
/// tensor's typical size however close to zero the element is. Measured need at relative part
/// 1e-2, over 60 seed sets (tensor-parallel sizes 1, 2, 3, 4, 8, sequence parallelism on and
/// off, every rank): at most 2.95e-2 rms (`dWqkv`; 1.79e-2 for the input gradient, 1.35e-2 for
/// the layer norms' gradients, 1.15e-2 for the output), so 4e-2 leaves a 1.36x margin.
const BF16_GUARD_ABS: f64 = 4e-2;

/// The gradients, in this order (LN grads first).
const NAMES: [&str; 12] = [
    "ln1.dgamma",
    "ln1.dbeta",
    "ln2.dgamma",
    "ln2.dbeta",
    "dWqkv",
    "dbqkv",
    "dWproj",
    "dbproj",
    "dW1",
    "db1",
    "dW2",
    "db2",
];

fn config() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(20),
        deadlock_grace: Duration::from_secs(1),
    }
}

fn data(seed: u64, n: usize, lo: f64, hi: f64, dtype: DType) -> Vec<f64> {
    random_vec(seed, n, lo, hi)
        .iter()
        .map(|&v| match dtype {
            DType::BF16 => half::bf16::from_f64(v).to_f64(),
            _ => v as f32 as f64,
        })
        .collect()
}

/// This rank's tokens of a full `[S, c]` tensor.
fn tokens(x: &[f64], c: usize, sp: bool, r: usize, p: usize) -> Vec<f64> {
    if sp {
        x[r * S / p * c..(r + 1) * S / p * c].to_vec()
    } else {
        x.to_vec()
    }
}

fn tol() -> Tolerance {
    // Chains of f32 GEMMs, softmax and two layer norms (whose rstd amplifies differences).
    Tolerance::for_reduction(DTYPE, H).scaled(2.0)
}

/// Checks one block result against the reference. f32: elementwise under [`tol`]. bf16: the
/// norm-wise relative error `||got - want||_2 / ||want||_2` at most the bf16 dtype tolerance
/// (`Tolerance::for_dtype(DType::BF16).rel`, 1e-2), and every element within the outlier guard
/// [`BF16_GUARD_REL`] `|want|` + [`BF16_GUARD_ABS`] `rms(want)`.
fn check_result(what: &str, got: &[f64], want: &[f64], dtype: DType) {
    match dtype {
        DType::BF16 => {
            let limit = Tolerance::for_dtype(DType::BF16).rel;
            let nw = normwise_rel(got, want);
            assert!(
                nw <= limit,
                "{what}: norm-wise relative error {nw:.3e} > {limit:.0e} (the bf16 tolerance)"
            );
            let guard = Tolerance::new(BF16_GUARD_REL, BF16_GUARD_ABS * rms(want));
            check(what, got, want, guard);
        }
        _ => check(what, got, want, tol()),
    }
}

fn check(what: &str, got: &[f64], want: &[f64], tol: Tolerance) {
    let c = compare(got, want, tol);
    assert!(
        c.pass,
        "{what}: {c}, worst error / allowance {:.2}",
        worst_ratio(got, want, tol)
    );
}

fn tensor(dev: &Device, v: &[f64], dims: &[usize]) -> Tensor {
    tensor_as(dev, v, dims, DTYPE)
}

fn tensor_as(dev: &Device, v: &[f64], dims: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f64(dev, v, dims.to_vec(), dtype).unwrap()
}

fn gather(
    streams: &TpStreams,
    comm: &dyn Communicator,
    shard_t: &Tensor,
    partition: Partition,
) -> Result<Vec<f64>> {
    let dims = shard::full_dims(shard_t.dims(), partition, comm.size());
    let mut full = Tensor::poisoned(streams.device(), dims, shard_t.dtype())?;
    shard::gather_shards(&streams.compute, comm, shard_t, partition, &mut full)?;
    full.to_f64_vec(&streams.compute)
}

/// The full tensors (f32 values).
struct Data {
    dtype: DType,
    x: Vec<f64>,
    g1: Vec<f64>,
    be1: Vec<f64>,
    wq: Vec<f64>,
    wk: Vec<f64>,
    wv: Vec<f64>,
    bq: Vec<f64>,
    bk: Vec<f64>,
    bv: Vec<f64>,
    wo: Vec<f64>,
    bo: Vec<f64>,
    g2: Vec<f64>,
    be2: Vec<f64>,
    w1: Vec<f64>,
    b1: Vec<f64>,
    w2: Vec<f64>,
    b2: Vec<f64>,
    dz: Vec<f64>,
}

impl Data {
    fn new(seed: u64) -> Data {
        Data::with_dtype(seed, DTYPE)
    }

    /// Values representable in `dtype`.
    fn with_dtype(seed: u64, dtype: DType) -> Data {
        let data = |seed, n, lo, hi| data(seed, n, lo, hi, dtype);
        let ws = 1.0 / (H as f64).sqrt();
        let wf = 1.0 / (F as f64).sqrt();
        Data {
            dtype,
            x: data(seed, S * H, -1.0, 1.0),
            g1: data(seed + 1, H, 0.7, 1.3),
            be1: data(seed + 2, H, -0.2, 0.2),
            wq: data(seed + 3, H * H, -2.0 * ws, 2.0 * ws),
            wk: data(seed + 4, H * H, -2.0 * ws, 2.0 * ws),
            wv: data(seed + 5, H * H, -ws, ws),
            bq: data(seed + 6, H, -0.2, 0.2),
            bk: data(seed + 7, H, -0.2, 0.2),
            bv: data(seed + 8, H, -0.2, 0.2),
            wo: data(seed + 9, H * H, -ws, ws),
            bo: data(seed + 10, H, -0.2, 0.2),
            g2: data(seed + 11, H, 0.7, 1.3),
            be2: data(seed + 12, H, -0.2, 0.2),
            w1: data(seed + 13, F * H, -ws, ws),
            b1: data(seed + 14, F, -0.2, 0.2),
            w2: data(seed + 15, H * F, -wf, wf),
            b2: data(seed + 16, H, -0.2, 0.2),
            dz: data(seed + 17, S * H, -1.0, 1.0),
        }
    }

    fn w_qkv(&self) -> Vec<f64> {
        qkv_full_from_separate(&self.wq, &self.wk, &self.wv, HEADS, H)
    }

    fn b_qkv(&self) -> Vec<f64> {
        qkv_full_from_separate(&self.bq, &self.bk, &self.bv, HEADS, 1)
    }
}

/// What the LN backward of the reference saw, to form per-chunk partial gradients.
struct LnSaved {
    dy: Vec<f64>,
    x: Vec<f64>,
    gamma: Vec<f64>,
    mean: Vec<f64>,
    rstd: Vec<f64>,
}

impl LnSaved {
    /// (dgamma, dbeta) over the rows `lo..hi`, unrounded.
    fn partial(&self, lo: usize, hi: usize) -> (Vec<f64>, Vec<f64>) {
        let rows = hi - lo;
        let (_, dg, db) = layernorm_bwd_ref(
            rows,
            H,
            &self.dy[lo * H..hi * H],
            &self.x[lo * H..hi * H],
            &self.gamma,
            &self.mean[lo..hi],
            &self.rstd[lo..hi],
        );
        (dg, db)
    }
}

struct Reference {
    z: Vec<f64>,
    dx: Vec<f64>,
    /// In the order of [`NAMES`].
    grads: Vec<Vec<f64>>,
    ln1: LnSaved,
    ln2: LnSaved,
}

/// How the reference runs: the block's dtype (where it rounds), the tensor-parallel size (how
/// the reductions of per-rank partial GEMMs are split) and sequence parallelism (how the layer
/// norms' parameter gradients are split into per-rank partial sums).
#[derive(Clone, Copy)]
struct Mode {
    dtype: DType,
    p: usize,
    sp: bool,
}

impl Mode {
    fn rnd(&self, v: &[f64]) -> Vec<f64> {
        round(v, self.dtype)
    }
}

/// Layer norm forward as the block stores it: (y rounded to the dtype, mean, rstd).
fn ln_fwd(m: Mode, x: &[f64], gamma: &[f64], beta: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (y, mean, rstd) = layernorm_fwd_ref(S, H, x, gamma, beta, EPS);
    (m.rnd(&y), mean, rstd)
}

/// Layer norm backward as the block computes it: `dx` rounded to the dtype; `dgamma`, `dbeta`
/// are stored by the op in the dtype per rank (over the rank's tokens under sequence
/// parallelism, else over all of them) and summed in f32 (added into the f32 gradient, then
/// all-reduced under sequence parallelism).
fn ln_bwd(m: Mode, saved: &LnSaved) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (dx, _, _) = layernorm_bwd_ref(
        S,
        H,
        &saved.dy,
        &saved.x,
        &saved.gamma,
        &saved.mean,
        &saved.rstd,
    );
    let chunks = if m.sp { m.p } else { 1 };
    let (mut dg, mut db) = (vec![0.0; H], vec![0.0; H]);
    for c in 0..chunks {
        let (g, b) = saved.partial(c * S / chunks, (c + 1) * S / chunks);
        dg = add(&dg, &m.rnd(&g));
        db = add(&db, &m.rnd(&b));
    }
    (m.rnd(&dx), dg, db)
}

/// Attention forward and backward on input `a` `[S, H]` (stored) with output gradient `dout`,
/// rounded where `ParallelAttention` stores: (out, da, [dWqkv, dbqkv, dWo, dbo]).
fn attention_ref(
    m: Mode,
    d: &Data,
    a: &[f64],
    dout: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>, Vec<Vec<f64>>) {
    let p = m.p;
    let rnd = |v: &[f64]| m.rnd(v);
    // The layer scales by an f32 `1/sqrt(d)` (the GEMM's alpha).
    let scale = (1.0 / (D as f32).sqrt()) as f64;
    // QKV: GEMM output stored, then the bias sum stored.
    let proj = |w: &[f64], b: &[f64]| rnd(&bias_rows(&rnd(&mm_nt(a, w, S, H, H)), b));
    let (q, k, v) = (proj(&d.wq, &d.bq), proj(&d.wk, &d.bk), proj(&d.wv, &d.bv));
    let head = |t: &[f64], h: usize| cols(t, H, h * D, D);
    let mut probs = Vec::new();
    let mut ctxs = Vec::new();
    for h in 0..HEADS {
        let scores = rnd(&scaled(&mm_nt(&head(&q, h), &head(&k, h), S, D, S), scale));
        let pr = rnd(&softmax_fwd_ref(1, S, S, 1.0, true, &scores));
        ctxs.push(rnd(&mm_nn(&pr, &head(&v, h), S, S, D)));
        probs.push(pr);
    }
    let context = concat(&ctxs, S);
    // The row-parallel projection: per-rank partial GEMMs stored, reduced, then the bias.
    let hp = H / p;
    let out = reduce(p, m.dtype, |r| {
        mm_nt(
            &cols(&context, H, r * hp, hp),
            &cols(&d.wo, H, r * hp, hp),
            S,
            hp,
            H,
        )
    });
    let out = rnd(&bias_rows(&out, &d.bo));
    let Some(dy) = dout else {
        return (out, vec![], vec![]);
    };
    // Weight gradients: f32 sums of products of stored values.
    let dwo = mm_tn(dy, &context, S, H, H);
    let dbo = colsum(dy, H);
    let dctx = rnd(&mm_nn(dy, &d.wo, S, H, H));
    let (mut dq, mut dk, mut dv) = (vec![], vec![], vec![]);
    for (h, pr) in probs.iter().enumerate() {
        let dc = head(&dctx, h);
        let dp = rnd(&mm_nt(&dc, &head(&v, h), S, D, S));
        dv.push(rnd(&mm_tn(pr, &dc, S, S, D)));
        let ds = rnd(&softmax_bwd_ref(1, S, S, 1.0, &dp, pr));
        dq.push(rnd(&scaled(&mm_nn(&ds, &head(&k, h), S, S, D), scale)));
        dk.push(rnd(&scaled(&mm_tn(&ds, &head(&q, h), S, S, D), scale)));
    }
    let (dq, dk, dv) = (concat(&dq, S), concat(&dk, S), concat(&dv, S));
    // The column-parallel QKV's input gradient: per-rank partial GEMMs (the rank's heads, in
    // the interleaved layout) stored, then reduced.
    let per_head: Vec<Vec<f64>> = (0..HEADS)
        .flat_map(|h| [head(&dq, h), head(&dk, h), head(&dv, h)])
        .collect();
    let dqkv = concat(&per_head, S);
    let w_qkv = d.w_qkv();
    let (c3, c3p) = (3 * H, 3 * H / p);
    let da = reduce(p, m.dtype, |r| {
        mm_nn(
            &cols(&dqkv, c3, r * c3p, c3p),
            &w_qkv[r * c3p * H..(r + 1) * c3p * H],
            S,
            c3p,
            H,
        )
    });
    let dw = |g: &[f64]| mm_tn(g, a, S, H, H);
    let dwqkv = qkv_full_from_separate(&dw(&dq), &dw(&dk), &dw(&dv), HEADS, H);
    let dbqkv = qkv_full_from_separate(&colsum(&dq, H), &colsum(&dk, H), &colsum(&dv, H), HEADS, 1);
    (out, da, vec![dwqkv, dbqkv, dwo, dbo])
}

/// The f64 single-device block, rounded to the dtype where the block stores an activation
/// (with `m.p` ranks' partial results rounded before each reduction).
fn reference(d: &Data, p: usize, sp: bool) -> Reference {
    let m = Mode {
        dtype: d.dtype,
        p,
        sp,
    };
    let rnd = |v: &[f64]| m.rnd(v);
    let (a, m1, r1) = ln_fwd(m, &d.x, &d.g1, &d.be1);
    let (attn_out, _, _) = attention_ref(m, d, &a, None);
    let y = rnd(&add(&d.x, &attn_out));
    let (b, m2, r2) = ln_fwd(m, &y, &d.g2, &d.be2);
    // MLP: fc1 (bias skipped, fused into the GeLU), bias+GeLU, fc2 (row-parallel), bias.
    let pre = rnd(&mm_nt(&b, &d.w1, S, H, F));
    let z1 = bias_rows(&pre, &d.b1);
    let post = rnd(&z1.iter().map(|&v| gelu_ref(v)).collect::<Vec<_>>());
    let fp = F / p;
    let mlp_out = reduce(p, m.dtype, |r| {
        mm_nt(
            &cols(&post, F, r * fp, fp),
            &cols(&d.w2, F, r * fp, fp),
            S,
            fp,
            H,
        )
    });
    let mlp_out = rnd(&bias_rows(&mlp_out, &d.b2));
    let z = rnd(&add(&y, &mlp_out));

    // Backward.
    let dw2 = mm_tn(&d.dz, &post, S, H, F);
    let db2 = colsum(&d.dz, H);
    let dpost = rnd(&mm_nn(&d.dz, &d.w2, S, H, F));
    let dpre: Vec<f64> = dpost
        .iter()
        .zip(&z1)
        .map(|(&g, &zz)| g * gelu_grad_ref(zz))
        .collect();
    let dpre = rnd(&dpre);
    let db1 = colsum(&dpre, F);
    let dw1 = mm_tn(&dpre, &b, S, F, H);
    let db_ln2 = reduce(p, m.dtype, |r| {
        mm_nn(
            &cols(&dpre, F, r * fp, fp),
            &d.w1[r * fp * H..(r + 1) * fp * H],
            S,
            fp,
            H,
        )
    });
    let ln2 = LnSaved {
        dy: db_ln2,
        x: y,
        gamma: d.g2.clone(),
        mean: m2,
        rstd: r2,
    };
    let (dy_ln, dg2, dbe2) = ln_bwd(m, &ln2);
    let dy = rnd(&add(&d.dz, &dy_ln));
    let (_, da, attn_grads) = attention_ref(m, d, &a, Some(&dy));
    let ln1 = LnSaved {
        dy: da,
        x: d.x.clone(),
        gamma: d.g1.clone(),
        mean: m1,
        rstd: r1,
    };
    let (dx_ln, dg1, dbe1) = ln_bwd(m, &ln1);
    let dx = rnd(&add(&dy, &dx_ln));
    let mut grads = vec![dg1, dbe1, dg2, dbe2];
    grads.extend(attn_grads);
    grads.extend([dw1, db1, dw2, db2]);
    Reference {
        z,
        dx,
        grads,
        ln1,
        ln2,
    }
}

/// One rank's results.
struct Out {
    z: Vec<f64>,
    dx: Vec<f64>,
    /// This rank's LN grads [ln1.dgamma, ln1.dbeta, ln2.dgamma, ln2.dbeta] before the
    /// all-reduce.
    ln_before: Vec<Vec<f64>>,
    /// Every gradient (in the order of [`NAMES`]) after the all-reduce, gathered from shards.
    grads: Vec<Vec<f64>>,
}

fn run(p: usize, sp: bool, d: &Data) -> Vec<Out> {
    run_passes(p, sp, d, 1)
}

/// `passes` backwards of one forward (micro-batches of the same data), then one all-reduce of
/// the LN grads.
fn run_passes(p: usize, sp: bool, d: &Data, passes: usize) -> Vec<Out> {
    launch_with(p, BackendKind::Cpu, config(), |ctx: RankCtx| {
        let r = ctx.rank;
        let dev = &ctx.device;
        let streams = TpStreams::new(dev)?;
        let cfg = TransformerBlockConfig {
            sequence_parallel: sp,
            layernorm_eps: EPS as f32,
            ..TransformerBlockConfig::new(H, HEADS, F)
        };
        let t = |v: &[f64], dims: &[usize]| tensor_as(dev, v, dims, d.dtype);
        let (g1, be1, g2, be2) = (
            t(&d.g1, &[H]),
            t(&d.be1, &[H]),
            t(&d.g2, &[H]),
            t(&d.be2, &[H]),
        );
        let (wqkv, bqkv) = (t(&d.w_qkv(), &[3 * H, H]), t(&d.b_qkv(), &[3 * H]));
        let (wo, bo) = (t(&d.wo, &[H, H]), t(&d.bo, &[H]));
        let (w1, b1) = (t(&d.w1, &[F, H]), t(&d.b1, &[F]));
        let (w2, b2) = (t(&d.w2, &[H, F]), t(&d.b2, &[H]));
        let weights = BlockWeights {
            ln1_gamma: &g1,
            ln1_beta: &be1,
            w_qkv: &wqkv,
            b_qkv: Some(&bqkv),
            w_proj: &wo,
            b_proj: Some(&bo),
            ln2_gamma: &g2,
            ln2_beta: &be2,
            w_fc1: &w1,
            b_fc1: Some(&b1),
            w_fc2: &w2,
            b_fc2: Some(&b2),
        };
        let mut block = TransformerBlock::from_full(&streams, &ctx.comm, cfg.clone(), weights)?;
        let tl = cfg.local_tokens(S, p)?;
        let x = t(&tokens(&d.x, H, sp, r, p), &[tl, H]);
        let (z, acts) = block.forward(&streams, &ctx.comm, &x)?;
        let dz = t(&tokens(&d.dz, H, sp, r, p), &[tl, H]);
        let mut dx = block.backward(&streams, &ctx.comm, &x, &acts, &dz)?;
        for _ in 1..passes {
            dx = block.backward(&streams, &ctx.comm, &x, &acts, &dz)?;
        }
        let c = &streams.compute;
        let ln_grads = |b: &TransformerBlock| -> Result<Vec<Vec<f64>>> {
            Ok(vec![
                b.ln1().grad_gamma().to_f64_vec(c)?,
                b.ln1().grad_beta().to_f64_vec(c)?,
                b.ln2().grad_gamma().to_f64_vec(c)?,
                b.ln2().grad_beta().to_f64_vec(c)?,
            ])
        };
        let ln_before = ln_grads(&block)?;
        block.allreduce_layernorm_grads(&streams, &ctx.comm)?;
        let mut grads = ln_grads(&block)?;
        let (q, o) = (
            block.attention().linear_qkv(),
            block.attention().linear_proj(),
        );
        let (f1, f2) = (block.mlp().linear_fc1(), block.mlp().linear_fc2());
        let cm = &ctx.comm;
        grads.extend([
            gather(&streams, cm, q.grad_weight(), Partition::First)?,
            gather(&streams, cm, q.grad_bias().expect("bias"), Partition::First)?,
            gather(&streams, cm, o.grad_weight(), Partition::Last)?,
            gather(
                &streams,
                cm,
                o.grad_bias().expect("bias"),
                Partition::Replicated,
            )?,
            gather(&streams, cm, f1.grad_weight(), Partition::First)?,
            gather(
                &streams,
                cm,
                f1.grad_bias().expect("bias"),
                Partition::First,
            )?,
            gather(&streams, cm, f2.grad_weight(), Partition::Last)?,
            gather(
                &streams,
                cm,
                f2.grad_bias().expect("bias"),
                Partition::Replicated,
            )?,
        ]);
        Ok(Out {
            z: z.to_f64_vec(c)?,
            dx: dx.to_f64_vec(c)?,
            ln_before,
            grads,
        })
    })
    .unwrap()
}

fn check_block(p: usize, sp: bool, seed: u64, dtype: DType) {
    let d = Data::with_dtype(seed, dtype);
    let got = run(p, sp, &d);
    let want = reference(&d, p, sp);
    for (r, o) in got.iter().enumerate() {
        let what = format!("block p={p} {dtype} sp={sp} rank {r}");
        check_result(
            &format!("{what} z"),
            &o.z,
            &tokens(&want.z, H, sp, r, p),
            dtype,
        );
        check_result(
            &format!("{what} dx"),
            &o.dx,
            &tokens(&want.dx, H, sp, r, p),
            dtype,
        );
        assert_eq!(o.grads.len(), NAMES.len());
        for ((n, g), w) in NAMES.iter().zip(&o.grads).zip(&want.grads) {
            check_result(&format!("{what} {n}"), g, w, dtype);
        }
        if !sp {
            // Without SP the all-reduce is a no-op: the grads are the full ones already.
            assert_eq!(o.ln_before, o.grads[..4].to_vec(), "{what}: no-op expected");
        } else if p > 1 && matches!(dtype, DType::BF16) {
            // The bf16 criterion can fail: this rank's partial layer norm gradients (before the
            // all-reduce) are about 1 norm-wise from the full ones, 100x the tolerance.
            let limit = Tolerance::for_dtype(DType::BF16).rel;
            for ((n, part), full) in NAMES.iter().zip(&o.ln_before).zip(&want.grads) {
                let nw = normwise_rel(part, full);
                assert!(
                    nw > 10.0 * limit,
                    "{what} {n}: a partial gradient is {nw:.3e} norm-wise from the full one"
                );
            }
        }
    }
}

#[test]
fn block_matches_the_serial_block() {
    watchdog(120, "tp_block", || {
        for &p in WORLDS {
            for &dtype in DTYPES {
                check_block(p, false, 100 + p as u64, dtype);
            }
        }
    });
}

#[test]
fn block_with_sequence_parallelism_matches_the_serial_block() {
    watchdog(120, "tp_block_sp", || {
        for &p in WORLDS {
            for &dtype in DTYPES {
                check_block(p, true, 200 + p as u64, dtype);
            }
        }
    });
}

#[test]
fn sequence_parallelism_on_and_off_agree() {
    watchdog(120, "tp_block_sp_vs_tp", || {
        for &p in &[2usize, 4] {
            let d = Data::new(300 + p as u64);
            let off = run(p, false, &d);
            let on = run(p, true, &d);
            let z_on: Vec<f64> = on.iter().flat_map(|o| o.z.clone()).collect();
            let dx_on: Vec<f64> = on.iter().flat_map(|o| o.dx.clone()).collect();
            // The same tolerance as one f32 reduction chain: the two differ only in how the
            // LN sums are split and reduced.
            let t = tol();
            for o in &off {
                check(&format!("p={p} z sp on vs off"), &z_on, &o.z, t);
                check(&format!("p={p} dx sp on vs off"), &dx_on, &o.dx, t);
            }
            for (r, (a, b)) in on.iter().zip(&off).enumerate() {
                for ((n, ga), gb) in NAMES.iter().zip(&a.grads).zip(&b.grads) {
                    check(&format!("p={p} rank {r} {n} sp on vs off"), ga, gb, t);
                }
            }
        }
    });
}

#[test]
fn sequence_parallel_layernorm_grads_need_the_allreduce() {
    watchdog(120, "tp_block_ln_allreduce", || {
        for &p in &[2usize, 4] {
            let d = Data::new(400 + p as u64);
            let got = run(p, true, &d);
            let want = reference(&d, p, true);
            let chunk = S / p;
            for (r, o) in got.iter().enumerate() {
                let what = format!("p={p} rank {r}");
                let (g1, b1) = want.ln1.partial(r * chunk, (r + 1) * chunk);
                let (g2, b2) = want.ln2.partial(r * chunk, (r + 1) * chunk);
                for (i, partial) in [g1, b1, g2, b2].iter().enumerate() {
                    let n = NAMES[i];
                    // Before: this rank's partial sum over its chunk, not the full gradient.
                    check(
                        &format!("{what} {n} before = chunk partial"),
                        &o.ln_before[i],
                        partial,
                        tol(),
                    );
                    let c = compare(&o.ln_before[i], &want.grads[i], tol());
                    assert!(
                        !c.pass,
                        "{what} {n}: a partial gradient matched the full one: {c}"
                    );
                    // After: the full gradient.
                    check(
                        &format!("{what} {n} after = full"),
                        &o.grads[i],
                        &want.grads[i],
                        tol(),
                    );
                }
            }
            // The replicas differ before the all-reduce and agree bit for bit after it.
            for o in &got[1..] {
                assert_ne!(
                    o.ln_before, got[0].ln_before,
                    "p={p}: partial grads equal across ranks"
                );
                assert_eq!(
                    o.grads[..4],
                    got[0].grads[..4],
                    "p={p}: LN grads differ after all-reduce"
                );
            }
        }
    });
}

#[test]
fn gradients_accumulate_over_backwards() {
    watchdog(60, "tp_block_accumulate", || {
        for (p, sp) in [(2usize, true), (2, false)] {
            let d = Data::new(600 + p as u64);
            let got = run_passes(p, sp, &d, 2);
            let want = reference(&d, p, sp);
            for (r, o) in got.iter().enumerate() {
                let what = format!("two backwards p={p} sp={sp} rank {r}");
                check(
                    &format!("{what} dx"),
                    &o.dx,
                    &tokens(&want.dx, H, sp, r, p),
                    tol(),
                );
                for ((n, g), w) in NAMES.iter().zip(&o.grads).zip(&want.grads) {
                    let twice: Vec<f64> = w.iter().map(|v| 2.0 * v).collect();
                    check(&format!("{what} {n}"), g, &twice, tol());
                }
            }
        }
    });
}

#[test]
fn bad_configs_are_typed_errors() {
    let not_div = |e: Result<()>, dim: usize, parts: usize| match e {
        Err(Error::NotDivisible {
            dim: d, parts: q, ..
        }) => assert_eq!((d, q), (dim, parts)),
        other => panic!("expected NotDivisible {dim}/{parts}, got {other:?}"),
    };
    // hidden % tp.
    not_div(TransformerBlockConfig::new(18, 2, 32).check(4), 18, 4);
    // heads % tp (hidden and ffn divide).
    not_div(TransformerBlockConfig::new(24, 6, 32).check(4), 6, 4);
    // ffn % tp.
    not_div(TransformerBlockConfig::new(16, 4, 30).check(4), 30, 4);
    // hidden % heads.
    not_div(TransformerBlockConfig::new(16, 3, 32).check(1), 16, 3);
    // s % tp under sequence parallelism (and no constraint without it).
    let sp = TransformerBlockConfig {
        sequence_parallel: true,
        ..TransformerBlockConfig::new(16, 4, 32)
    };
    not_div(sp.local_tokens(10, 4).map(|_| ()), 10, 4);
    assert_eq!(sp.local_tokens(8, 4).unwrap(), 2);
    assert_eq!(
        TransformerBlockConfig::new(16, 4, 32)
            .local_tokens(10, 4)
            .unwrap(),
        10
    );
    assert!(matches!(
        TransformerBlockConfig::new(16, 4, 32).check(0),
        Err(Error::InvalidArgument { .. })
    ));
    let bad_eps = TransformerBlockConfig {
        layernorm_eps: 0.0,
        ..TransformerBlockConfig::new(16, 4, 32)
    };
    assert!(matches!(
        bad_eps.check(1),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn from_full_and_backward_reject_bad_arguments() {
    watchdog(60, "tp_block_bad_args", || {
        let d = Data::new(500);
        let got = launch_with(4, BackendKind::Cpu, config(), |ctx| {
            let dev = &ctx.device;
            let streams = TpStreams::new(dev)?;
            // 6 heads over 4 ranks.
            let (h, heads, f) = (24, 6, 32);
            let z = |dims: &[usize]| Tensor::zeros(dev, dims.to_vec(), DTYPE);
            let (g, b) = (z(&[h])?, z(&[h])?);
            let (wqkv, bqkv, wo, bo) = (z(&[3 * h, h])?, z(&[3 * h])?, z(&[h, h])?, z(&[h])?);
            let (w1, b1, w2, b2) = (z(&[f, h])?, z(&[f])?, z(&[h, f])?, z(&[h])?);
            let w = BlockWeights {
                ln1_gamma: &g,
                ln1_beta: &b,
                w_qkv: &wqkv,
                b_qkv: Some(&bqkv),
                w_proj: &wo,
                b_proj: Some(&bo),
                ln2_gamma: &g,
                ln2_beta: &b,
                w_fc1: &w1,
                b_fc1: Some(&b1),
                w_fc2: &w2,
                b_fc2: Some(&b2),
            };
            let e_heads = TransformerBlock::from_full(
                &streams,
                &ctx.comm,
                TransformerBlockConfig::new(h, heads, f),
                w,
            )
            .err();
            // A good block; a backward with a bad dz must fail before touching anything.
            let t = |v: &[f64], dims: &[usize]| tensor(dev, v, dims);
            let (g1, be1) = (t(&d.g1, &[H]), t(&d.be1, &[H]));
            let (wqkv, bqkv) = (t(&d.w_qkv(), &[3 * H, H]), t(&d.b_qkv(), &[3 * H]));
            let (wo, bo) = (t(&d.wo, &[H, H]), t(&d.bo, &[H]));
            let (w1, b1) = (t(&d.w1, &[F, H]), t(&d.b1, &[F]));
            let (w2, b2) = (t(&d.w2, &[H, F]), t(&d.b2, &[H]));
            let w = BlockWeights {
                ln1_gamma: &g1,
                ln1_beta: &be1,
                w_qkv: &wqkv,
                b_qkv: Some(&bqkv),
                w_proj: &wo,
                b_proj: Some(&bo),
                ln2_gamma: &g1,
                ln2_beta: &be1,
                w_fc1: &w1,
                b_fc1: Some(&b1),
                w_fc2: &w2,
                b_fc2: Some(&b2),
            };
            let mut block = TransformerBlock::from_full(
                &streams,
                &ctx.comm,
                TransformerBlockConfig::new(H, HEADS, F),
                w,
            )?;
            let x = t(&d.x, &[S, H]);
            let e_fwd = block
                .forward(&streams, &ctx.comm, &t(&d.x[..S * (H - 1)], &[S, H - 1]))
                .err();
            let (_, mut acts) = block.forward(&streams, &ctx.comm, &x)?;
            let bad_dz = t(&d.dz[..(S - 1) * H], &[S - 1, H]);
            let e_dz = block
                .backward(&streams, &ctx.comm, &x, &acts, &bad_dz)
                .err();
            acts.attn.probs.pop();
            let dz = t(&d.dz, &[S, H]);
            let e_acts = block.backward(&streams, &ctx.comm, &x, &acts, &dz).err();
            let c = &streams.compute;
            let untouched = [
                block.ln1().grad_gamma().to_f64_vec(c)?,
                block.ln2().grad_beta().to_f64_vec(c)?,
                block.mlp().linear_fc2().grad_weight().to_f64_vec(c)?,
            ]
            .iter()
            .all(|g| g.iter().all(|&v| v == 0.0));
            Ok((e_heads, e_fwd, e_dz, e_acts, untouched))
        })
        .unwrap();
        for (e_heads, e_fwd, e_dz, e_acts, untouched) in got {
            assert!(
                matches!(
                    e_heads,
                    Some(Error::NotDivisible {
                        dim: 6,
                        parts: 4,
                        ..
                    })
                ),
                "{e_heads:?}"
            );
            assert!(
                matches!(e_fwd, Some(Error::ShapeMismatch { .. })),
                "{e_fwd:?}"
            );
            assert!(
                matches!(e_dz, Some(Error::ShapeMismatch { .. })),
                "{e_dz:?}"
            );
            assert!(
                matches!(e_acts, Some(Error::InvalidArgument { .. })),
                "{e_acts:?}"
            );
            assert!(
                untouched,
                "a rejected backward must not touch the gradients"
            );
        }
    });
}

/// Not a check: prints, per bf16 block quantity, the largest norm-wise relative error, the
/// largest `max |got - want| / rms(want)` and the largest RMS fraction the outlier guard needs
/// at its relative part, over `SURVEY_SEEDS` (default 10) seed sets, every tensor-parallel size
/// and sequence parallelism on and off: the measurement behind [`BF16_GUARD_ABS`], to repeat
/// when the library's summation orders change
/// (`cargo test --test tp_block -- --ignored --nocapture bf16_error_survey`).
#[test]
#[ignore]
fn bf16_error_survey() {
    let seeds: u64 = std::env::var("SURVEY_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut names = vec!["z", "dx"];
    names.extend(NAMES);
    // Per quantity: norm-wise, error / rms, guard need.
    let mut worst = vec![[0.0f64; 3]; names.len()];
    for seed in 1..=seeds {
        for &p in WORLDS {
            for sp in [false, true] {
                let d = Data::with_dtype(seed * 1000 + p as u64 + 7 * sp as u64, DType::BF16);
                let got = run(p, sp, &d);
                let want = reference(&d, p, sp);
                for (r, o) in got.iter().enumerate() {
                    let mut pairs = vec![
                        (o.z.clone(), tokens(&want.z, H, sp, r, p)),
                        (o.dx.clone(), tokens(&want.dx, H, sp, r, p)),
                    ];
                    pairs.extend(o.grads.iter().cloned().zip(want.grads.iter().cloned()));
                    for ((g, w), acc) in pairs.iter().zip(&mut worst) {
                        let rm = rms(w);
                        let need = g
                            .iter()
                            .zip(w)
                            .map(|(a, b)| ((a - b).abs() - BF16_GUARD_REL * b.abs()) / rm)
                            .fold(0.0, f64::max);
                        let now = [normwise_rel(g, w), max_err_over_rms(g, w), need];
                        for (a, v) in acc.iter_mut().zip(now) {
                            *a = a.max(v);
                        }
                    }
                }
            }
        }
    }
    eprintln!("bf16 block errors, max over {seeds} seed sets:");
    eprintln!("quantity      norm-wise  err / rms  guard need (x rms)");
    for (n, [nw, er, need]) in names.iter().zip(worst) {
        eprintln!("{n:12} {nw:10.3e} {er:10.3e} {need:10.3e}");
    }
}
