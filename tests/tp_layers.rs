//! The tensor-parallel layers (`ferrotron::parallel::tp::{linear, mlp, shard}`) against the
//! single-device computation: for tensor-parallel sizes 1..4, f32 and bf16, every layer's
//! forward and backward on shards cut from the same full weights, compared (gradients gathered
//! back) with an f64 reference built from `reference::gemm` and `reference::bias_gelu`.
//!
//! The reference rounds to the layer's dtype where the layer stores an activation (GEMM
//! outputs, reduced outputs, bias sums, and, before a reduction, each rank's partial result),
//! so a bf16 result is held to one rounding; in f32 that is the plain serial computation.
//! Also: sequence parallelism on vs off (bitwise the same), gradient accumulation over two
//! backward calls, the overlap of the input-gradient all-reduce with the weight-gradient GEMM
//! (host timestamps from inside the streams) with results bitwise equal to a single-stream run,
//! and bad configurations as typed errors that leave the group usable.

mod common;

use common::watchdog;
use ferrotron::comm::{launch_with, CommConfig, Communicator, RankCtx};
use ferrotron::ops::Transpose;
use ferrotron::parallel::tp::shard::{self, Partition};
use ferrotron::parallel::tp::{
    ColumnParallelConfig, ColumnParallelLinear, MlpActivations, ParallelMlp, ParallelMlpConfig,
    RowParallelConfig, RowParallelLinear, Span, TpStreams, Trace,
};
use ferrotron::reference::bias_gelu::{gelu_grad_ref, gelu_ref};
use ferrotron::reference::gemm::gemm_ref;
use ferrotron::verify::{compare, random_vec, Tolerance};
use ferrotron::{BackendKind, DType, Device, Error, Result, Tensor};
use std::time::Duration;

const WORLDS: &[usize] = &[1, 2, 3, 4];
const DTYPES: &[DType] = &[DType::F32, DType::BF16];
/// Tokens (divisible by every world size, for sequence parallelism).
const T: usize = 12;
/// Linear layers: `IN -> OUT` (column) and `OUT -> IN` (row); both 12 split over 1..4 ranks.
const IN: usize = 10;
const OUT: usize = 12;
/// MLP: `H -> FFN -> H`.
const H: usize = 10;
const FFN: usize = 24;

fn config() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(20),
        deadlock_grace: Duration::from_secs(1),
    }
}

// ---- host-side helpers -----------------------------------------------------------------------

fn round(v: &[f64], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => v.iter().map(|&x| x as f32 as f64).collect(),
        DType::BF16 => v
            .iter()
            .map(|&x| half::bf16::from_f64(x).to_f64())
            .collect(),
        _ => unreachable!(),
    }
}

/// Seeded values in `[-scale, scale)`, rounded to `dtype`.
fn data(seed: u64, n: usize, scale: f64, dtype: DType) -> Vec<f64> {
    round(&random_vec(seed, n, -scale, scale), dtype)
}

/// `a [m, k] * b^T` with `b` stored `[n, k]`.
fn mm_nt(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    gemm_ref(Transpose::N, Transpose::T, m, n, k, 1.0, a, b, 0.0, &mut c);
    c
}

/// `a [m, k] * b [k, n]`.
fn mm_nn(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    gemm_ref(Transpose::N, Transpose::N, m, n, k, 1.0, a, b, 0.0, &mut c);
    c
}

/// `a^T b` with `a` stored `[k, m]`, `b` `[k, n]`.
fn mm_tn(a: &[f64], b: &[f64], k: usize, m: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    gemm_ref(Transpose::T, Transpose::N, m, n, k, 1.0, a, b, 0.0, &mut c);
    c
}

/// Columns `lo .. lo + w` of every row of `x` (rows of `c`).
fn cols(x: &[f64], c: usize, lo: usize, w: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|row| row[lo..lo + w].to_vec())
        .collect()
}

/// Rows `lo .. lo + n` of `x` (rows of `c`).
fn rows(x: &[f64], c: usize, lo: usize, n: usize) -> Vec<f64> {
    x[lo * c..(lo + n) * c].to_vec()
}

/// Rank `r`'s chunk of the `T` tokens of `x` (rows of `c`) under sequence parallelism over `p`
/// ranks, else all of `x`.
fn tokens(x: &[f64], c: usize, sp: bool, r: usize, p: usize) -> Vec<f64> {
    if sp {
        rows(x, c, r * T / p, T / p)
    } else {
        x.to_vec()
    }
}

fn colsum(x: &[f64], c: usize) -> Vec<f64> {
    let mut s = vec![0.0; c];
    for row in x.chunks(c) {
        for (a, v) in s.iter_mut().zip(row) {
            *a += v;
        }
    }
    s
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn bias_rows(x: &[f64], b: &[f64]) -> Vec<f64> {
    x.chunks(b.len()).flat_map(|r| add(r, b)).collect()
}

/// `sum_r round(part(r))`, rounded: a reduction of per-rank partial results stored in `dtype`.
fn reduce(p: usize, dtype: DType, part: impl Fn(usize) -> Vec<f64>) -> Vec<f64> {
    let mut acc: Option<Vec<f64>> = None;
    for r in 0..p {
        let v = round(&part(r), dtype);
        acc = Some(match acc {
            None => v,
            Some(a) => add(&a, &v),
        });
    }
    round(&acc.expect("p >= 1"), dtype)
}

fn check(what: &str, got: &[f64], want: &[f64], tol: Tolerance) {
    let c = compare(got, want, tol);
    assert!(c.pass, "{what}: {c}");
}

fn bitwise(what: &str, a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            x.to_bits() == y.to_bits(),
            "{what}: element {i} differs: {x} vs {y}"
        );
    }
}

fn tensor(ctx: &RankCtx, v: &[f64], dims: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f64(&ctx.device, v, dims.to_vec(), dtype).unwrap()
}

/// Gathers a sharded f32 gradient back to its full shape on the compute stream.
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

/// What one rank of a layer test returns: its output and input gradient (rank-local), the
/// full (gathered) gradients.
#[derive(Clone, Debug)]
struct Out {
    y: Vec<f64>,
    dx: Vec<f64>,
    grads: Vec<Vec<f64>>,
}

// ---- ColumnParallelLinear --------------------------------------------------------------------

/// Full tensors of a linear-layer test, rounded to the dtype: x `[T, in]`, w `[out, in]`,
/// b `[out]`, and output gradients `[T, out]`.
struct LinearData {
    inp: usize,
    out: usize,
    x: Vec<f64>,
    w: Vec<f64>,
    b: Vec<f64>,
    dys: Vec<Vec<f64>>,
}

impl LinearData {
    fn new(seed: u64, inp: usize, out: usize, dtype: DType, backward_calls: usize) -> Self {
        let ws = 1.0 / (inp as f64).sqrt();
        LinearData {
            inp,
            out,
            x: data(seed, T * inp, 1.0, dtype),
            w: data(seed + 1, out * inp, ws, dtype),
            b: data(seed + 2, out, 0.5, dtype),
            dys: (0..backward_calls)
                .map(|k| data(seed + 10 + k as u64, T * out, 1.0, dtype))
                .collect(),
        }
    }
}

/// Runs a column-parallel layer on `p` ranks: forward once, backward once per `d.dys`.
fn run_column(p: usize, dtype: DType, cfg: &ColumnParallelConfig, d: &LinearData) -> Vec<Out> {
    let (inp, out) = (d.inp, d.out);
    launch_with(p, BackendKind::Cpu, config(), |ctx| {
        let r = ctx.rank;
        let streams = TpStreams::new(&ctx.device)?;
        let w = tensor(&ctx, &d.w, &[out, inp], dtype);
        let b = tensor(&ctx, &d.b, &[out], dtype);
        let bias = cfg.bias.then_some(&b);
        let mut layer =
            ColumnParallelLinear::from_full(&streams, &ctx.comm, cfg.clone(), &w, bias)?;
        let tl = if cfg.sequence_parallel { T / p } else { T };
        let x = tensor(
            &ctx,
            &tokens(&d.x, inp, cfg.sequence_parallel, r, p),
            &[tl, inp],
            dtype,
        );
        let y = layer.forward(&streams, &ctx.comm, &x)?;
        let mut dx = None;
        for dy in &d.dys {
            let dy_t = if cfg.gather_output {
                tensor(&ctx, dy, &[T, out], dtype)
            } else {
                tensor(
                    &ctx,
                    &cols(dy, out, r * out / p, out / p),
                    &[T, out / p],
                    dtype,
                )
            };
            dx = Some(layer.backward(&streams, &ctx.comm, &x, &dy_t)?);
        }
        let c = &streams.compute;
        let mut grads = vec![gather(
            &streams,
            &ctx.comm,
            layer.grad_weight(),
            Partition::First,
        )?];
        if let Some(gb) = layer.grad_bias() {
            grads.push(gather(&streams, &ctx.comm, gb, Partition::First)?);
        }
        Ok(Out {
            y: y.to_f64_vec(c)?,
            dx: dx.expect("one backward").to_f64_vec(c)?,
            grads,
        })
    })
    .unwrap()
}

/// The reference of a column-parallel layer over `p` ranks: (y `[T, out]`, dx `[T, in]` of the
/// last backward, dW `[out, in]` and db `[out]` summed over the backward calls).
fn column_ref(
    p: usize,
    dtype: DType,
    cfg: &ColumnParallelConfig,
    d: &LinearData,
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let (inp, out) = (d.inp, d.out);
    let op = out / p;
    let xw = round(&mm_nt(&d.x, &d.w, T, inp, out), dtype);
    let y = if cfg.bias && !cfg.skip_bias_add {
        round(&bias_rows(&xw, &d.b), dtype)
    } else {
        xw
    };
    let mut dw = vec![0.0; out * inp];
    let mut db = vec![0.0; out];
    let mut dx = vec![];
    for dy in &d.dys {
        dx = reduce(p, dtype, |r| {
            let dy_r = cols(dy, out, r * op, op);
            let w_r = rows(&d.w, inp, r * op, op);
            mm_nn(&dy_r, &w_r, T, op, inp)
        });
        dw = add(&dw, &mm_tn(dy, &d.x, T, out, inp));
        db = add(&db, &colsum(dy, out));
    }
    (y, dx, dw, db)
}

fn check_column(p: usize, dtype: DType, cfg: &ColumnParallelConfig, d: &LinearData, got: &[Out]) {
    let (inp, out) = (d.inp, d.out);
    let (y, dx, dw, db) = column_ref(p, dtype, cfg, d);
    let calls = d.dys.len();
    let name = format!("column p={p} {dtype} {cfg:?}");
    for (r, o) in got.iter().enumerate() {
        let y_r = if cfg.gather_output {
            y.clone()
        } else {
            cols(&y, out, r * out / p, out / p)
        };
        let dx_r = if cfg.sequence_parallel {
            rows(&dx, inp, r * T / p, T / p)
        } else {
            dx.clone()
        };
        check(
            &format!("{name} y rank {r}"),
            &o.y,
            &y_r,
            Tolerance::for_reduction(dtype, inp),
        );
        check(
            &format!("{name} dx rank {r}"),
            &o.dx,
            &dx_r,
            Tolerance::for_reduction(dtype, out),
        );
        let gt = Tolerance::for_reduction(DType::F32, T * calls);
        check(&format!("{name} dW rank {r}"), &o.grads[0], &dw, gt);
        if cfg.bias && !cfg.skip_bias_add {
            check(&format!("{name} db rank {r}"), &o.grads[1], &db, gt);
        }
    }
}

#[test]
fn column_parallel_linear_matches_the_serial_layer() {
    watchdog(120, "tp_layers_column", || {
        for &p in WORLDS {
            for &dtype in DTYPES {
                let d = LinearData::new(100, IN, OUT, dtype, 1);
                for gather_output in [false, true] {
                    let cfg = ColumnParallelConfig {
                        gather_output,
                        ..ColumnParallelConfig::new(IN, OUT)
                    };
                    check_column(p, dtype, &cfg, &d, &run_column(p, dtype, &cfg, &d));
                }
                // skip_bias_add: the bias is the caller's, the layer leaves its gradient alone.
                let cfg = ColumnParallelConfig {
                    skip_bias_add: true,
                    ..ColumnParallelConfig::new(IN, OUT)
                };
                let got = run_column(p, dtype, &cfg, &d);
                check_column(p, dtype, &cfg, &d, &got);
                assert!(got.iter().all(|o| o.grads[1].iter().all(|&v| v == 0.0)));
                // No bias at all.
                let cfg = ColumnParallelConfig {
                    bias: false,
                    ..ColumnParallelConfig::new(IN, OUT)
                };
                check_column(p, dtype, &cfg, &d, &run_column(p, dtype, &cfg, &d));
            }
        }
    });
}

// ---- RowParallelLinear -----------------------------------------------------------------------

fn run_row(p: usize, dtype: DType, cfg: &RowParallelConfig, d: &LinearData) -> Vec<Out> {
    let (inp, out) = (d.inp, d.out);
    launch_with(p, BackendKind::Cpu, config(), |ctx| {
        let r = ctx.rank;
        let streams = TpStreams::new(&ctx.device)?;
        let w = tensor(&ctx, &d.w, &[out, inp], dtype);
        let b = tensor(&ctx, &d.b, &[out], dtype);
        let bias = cfg.bias.then_some(&b);
        let mut layer = RowParallelLinear::from_full(&streams, &ctx.comm, cfg.clone(), &w, bias)?;
        let ip = inp / p;
        let x = if cfg.input_is_parallel {
            tensor(&ctx, &cols(&d.x, inp, r * ip, ip), &[T, ip], dtype)
        } else {
            tensor(&ctx, &d.x, &[T, inp], dtype)
        };
        let y = layer.forward(&streams, &ctx.comm, &x)?;
        let tl = if cfg.sequence_parallel { T / p } else { T };
        let mut dx = None;
        for dy in &d.dys {
            let dy_t = tensor(
                &ctx,
                &tokens(dy, out, cfg.sequence_parallel, r, p),
                &[tl, out],
                dtype,
            );
            dx = Some(layer.backward(&streams, &ctx.comm, &x, &dy_t)?);
        }
        let c = &streams.compute;
        let mut grads = vec![gather(
            &streams,
            &ctx.comm,
            layer.grad_weight(),
            Partition::Last,
        )?];
        if let Some(gb) = layer.grad_bias() {
            grads.push(gather(&streams, &ctx.comm, gb, Partition::Replicated)?);
        }
        Ok(Out {
            y: y.to_f64_vec(c)?,
            dx: dx.expect("one backward").to_f64_vec(c)?,
            grads,
        })
    })
    .unwrap()
}

fn check_row(p: usize, dtype: DType, cfg: &RowParallelConfig, d: &LinearData, got: &[Out]) {
    let (inp, out) = (d.inp, d.out);
    let ip = inp / p;
    let mut y = reduce(p, dtype, |r| {
        mm_nt(
            &cols(&d.x, inp, r * ip, ip),
            &cols(&d.w, inp, r * ip, ip),
            T,
            ip,
            out,
        )
    });
    if cfg.bias && !cfg.skip_bias_add {
        y = round(&bias_rows(&y, &d.b), dtype);
    }
    let mut dw = vec![0.0; out * inp];
    let mut db = vec![0.0; out];
    let mut dx = vec![];
    for dy in &d.dys {
        dx = round(&mm_nn(dy, &d.w, T, out, inp), dtype);
        dw = add(&dw, &mm_tn(dy, &d.x, T, out, inp));
        db = add(&db, &colsum(dy, out));
    }
    let name = format!("row p={p} {dtype} {cfg:?}");
    for (r, o) in got.iter().enumerate() {
        let dx_r = if cfg.input_is_parallel {
            cols(&dx, inp, r * ip, ip)
        } else {
            dx.clone()
        };
        let y_r = tokens(&y, out, cfg.sequence_parallel, r, p);
        check(
            &format!("{name} y rank {r}"),
            &o.y,
            &y_r,
            Tolerance::for_reduction(dtype, inp),
        );
        check(
            &format!("{name} dx rank {r}"),
            &o.dx,
            &dx_r,
            Tolerance::for_reduction(dtype, out),
        );
        let gt = Tolerance::for_reduction(DType::F32, T * d.dys.len());
        check(&format!("{name} dW rank {r}"), &o.grads[0], &dw, gt);
        if cfg.bias && !cfg.skip_bias_add {
            check(&format!("{name} db rank {r}"), &o.grads[1], &db, gt);
        }
    }
}

#[test]
fn row_parallel_linear_matches_the_serial_layer() {
    watchdog(120, "tp_layers_row", || {
        for &p in WORLDS {
            for &dtype in DTYPES {
                // The row layer maps OUT (split) -> IN.
                let d = LinearData::new(200, OUT, IN, dtype, 1);
                for input_is_parallel in [true, false] {
                    let cfg = RowParallelConfig {
                        input_is_parallel,
                        ..RowParallelConfig::new(OUT, IN)
                    };
                    check_row(p, dtype, &cfg, &d, &run_row(p, dtype, &cfg, &d));
                }
                let cfg = RowParallelConfig {
                    skip_bias_add: true,
                    ..RowParallelConfig::new(OUT, IN)
                };
                let got = run_row(p, dtype, &cfg, &d);
                check_row(p, dtype, &cfg, &d, &got);
                assert!(got.iter().all(|o| o.grads[1].iter().all(|&v| v == 0.0)));
            }
        }
    });
}

// ---- sequence parallelism and accumulation ---------------------------------------------------

/// With sequence parallelism each rank's output and input gradient are its chunk of the tokens
/// of the results without it, bit for bit, and the gradients are the same bits.
#[test]
fn sequence_parallelism_gives_the_same_results() {
    watchdog(120, "tp_layers_sp", || {
        for &p in WORLDS {
            for &dtype in DTYPES {
                let tl = T / p;
                let d = LinearData::new(300, IN, OUT, dtype, 1);
                let off = ColumnParallelConfig::new(IN, OUT);
                let on = ColumnParallelConfig {
                    sequence_parallel: true,
                    ..off.clone()
                };
                let (a, b) = (
                    run_column(p, dtype, &off, &d),
                    run_column(p, dtype, &on, &d),
                );
                check_column(p, dtype, &on, &d, &b);
                for r in 0..p {
                    let what = format!("column SP p={p} {dtype} rank {r}");
                    bitwise(&format!("{what} y"), &b[r].y, &a[r].y);
                    bitwise(
                        &format!("{what} dx"),
                        &b[r].dx,
                        &rows(&a[r].dx, IN, r * tl, tl),
                    );
                    for (g, h) in b[r].grads.iter().zip(&a[r].grads) {
                        bitwise(&format!("{what} grad"), g, h);
                    }
                }
                let d = LinearData::new(400, OUT, IN, dtype, 1);
                let off = RowParallelConfig::new(OUT, IN);
                let on = RowParallelConfig {
                    sequence_parallel: true,
                    ..off.clone()
                };
                let (a, b) = (run_row(p, dtype, &off, &d), run_row(p, dtype, &on, &d));
                check_row(p, dtype, &on, &d, &b);
                for r in 0..p {
                    let what = format!("row SP p={p} {dtype} rank {r}");
                    bitwise(
                        &format!("{what} y"),
                        &b[r].y,
                        &rows(&a[r].y, IN, r * tl, tl),
                    );
                    bitwise(&format!("{what} dx"), &b[r].dx, &a[r].dx);
                    for (g, h) in b[r].grads.iter().zip(&a[r].grads) {
                        bitwise(&format!("{what} grad"), g, h);
                    }
                }
                let (a, b) = (
                    run_mlp(p, dtype, MlpCase::new(false, 1, 500)),
                    run_mlp(p, dtype, MlpCase::new(true, 1, 500)),
                );
                for r in 0..p {
                    let what = format!("mlp SP p={p} {dtype} rank {r}");
                    bitwise(&format!("{what} y"), &b[r].y, &rows(&a[r].y, H, r * tl, tl));
                    bitwise(
                        &format!("{what} dx"),
                        &b[r].dx,
                        &rows(&a[r].dx, H, r * tl, tl),
                    );
                    for (g, h) in b[r].grads.iter().zip(&a[r].grads) {
                        bitwise(&format!("{what} grad"), g, h);
                    }
                }
            }
        }
    });
}

/// Two backward calls accumulate: the gradients are the sum of both calls' gradients.
#[test]
fn gradients_accumulate_over_backward_calls() {
    watchdog(120, "tp_layers_accumulate", || {
        for &p in WORLDS {
            for &dtype in DTYPES {
                let d = LinearData::new(600, IN, OUT, dtype, 2);
                for sequence_parallel in [false, true] {
                    let cfg = ColumnParallelConfig {
                        sequence_parallel,
                        ..ColumnParallelConfig::new(IN, OUT)
                    };
                    check_column(p, dtype, &cfg, &d, &run_column(p, dtype, &cfg, &d));
                }
                let d = LinearData::new(700, OUT, IN, dtype, 2);
                for sequence_parallel in [false, true] {
                    let cfg = RowParallelConfig {
                        sequence_parallel,
                        ..RowParallelConfig::new(OUT, IN)
                    };
                    check_row(p, dtype, &cfg, &d, &run_row(p, dtype, &cfg, &d));
                }
                check_mlp(p, dtype, MlpCase::new(false, 2, 800));
                check_mlp(p, dtype, MlpCase::new(true, 2, 850));
            }
        }
    });
}

// ---- ParallelMlp -----------------------------------------------------------------------------

/// Full tensors of an MLP test: x `[T, H]`, w1 `[FFN, H]`, b1 `[FFN]`, w2 `[H, FFN]`, b2 `[H]`,
/// output gradients `[T, H]`.
struct MlpData {
    x: Vec<f64>,
    w1: Vec<f64>,
    b1: Vec<f64>,
    w2: Vec<f64>,
    b2: Vec<f64>,
    dys: Vec<Vec<f64>>,
}

impl MlpData {
    fn new(seed: u64, dtype: DType, calls: usize) -> MlpData {
        MlpData {
            x: data(seed, T * H, 1.0, dtype),
            w1: data(seed + 1, FFN * H, 1.0 / (H as f64).sqrt(), dtype),
            b1: data(seed + 2, FFN, 0.5, dtype),
            w2: data(seed + 3, H * FFN, 1.0 / (FFN as f64).sqrt(), dtype),
            b2: data(seed + 4, H, 0.5, dtype),
            dys: (0..calls)
                .map(|k| data(seed + 10 + k as u64, T * H, 1.0, dtype))
                .collect(),
        }
    }
}

/// One MLP test configuration.
#[derive(Clone, Copy, Debug)]
struct MlpCase {
    sp: bool,
    bias: bool,
    skip_bias_add: bool,
    calls: usize,
    seed: u64,
}

impl MlpCase {
    fn new(sp: bool, calls: usize, seed: u64) -> MlpCase {
        MlpCase {
            sp,
            bias: true,
            skip_bias_add: false,
            calls,
            seed,
        }
    }
}

/// Runs the MLP on `p` ranks; grads are [dW1, db1, dW2, db2] (without biases [dW1, dW2]),
/// gathered.
fn run_mlp(p: usize, dtype: DType, case: MlpCase) -> Vec<Out> {
    let d = MlpData::new(case.seed, dtype, case.calls);
    let sp = case.sp;
    launch_with(p, BackendKind::Cpu, config(), |ctx| {
        let r = ctx.rank;
        let streams = TpStreams::new(&ctx.device)?;
        let cfg = ParallelMlpConfig {
            sequence_parallel: sp,
            bias: case.bias,
            skip_bias_add: case.skip_bias_add,
            ..ParallelMlpConfig::new(H, FFN)
        };
        let w1 = tensor(&ctx, &d.w1, &[FFN, H], dtype);
        let b1 = tensor(&ctx, &d.b1, &[FFN], dtype);
        let w2 = tensor(&ctx, &d.w2, &[H, FFN], dtype);
        let b2 = tensor(&ctx, &d.b2, &[H], dtype);
        let (b1, b2) = (case.bias.then_some(&b1), case.bias.then_some(&b2));
        let mut mlp = ParallelMlp::from_full(&streams, &ctx.comm, cfg, (&w1, b1), (&w2, b2))?;
        let tl = if sp { T / p } else { T };
        let x = tensor(&ctx, &tokens(&d.x, H, sp, r, p), &[tl, H], dtype);
        let (y, acts): (Tensor, MlpActivations) = mlp.forward(&streams, &ctx.comm, &x)?;
        let mut dx = None;
        for dy in &d.dys {
            let dy_t = tensor(&ctx, &tokens(dy, H, sp, r, p), &[tl, H], dtype);
            dx = Some(mlp.backward(&streams, &ctx.comm, &x, &acts, &dy_t)?);
        }
        let c = &streams.compute;
        let (f1, f2) = (mlp.linear_fc1(), mlp.linear_fc2());
        let mut grads = vec![gather(
            &streams,
            &ctx.comm,
            f1.grad_weight(),
            Partition::First,
        )?];
        if let Some(g) = f1.grad_bias() {
            grads.push(gather(&streams, &ctx.comm, g, Partition::First)?);
        }
        grads.push(gather(
            &streams,
            &ctx.comm,
            f2.grad_weight(),
            Partition::Last,
        )?);
        if let Some(g) = f2.grad_bias() {
            grads.push(gather(&streams, &ctx.comm, g, Partition::Replicated)?);
        }
        Ok(Out {
            y: y.to_f64_vec(c)?,
            dx: dx.expect("one backward").to_f64_vec(c)?,
            grads,
        })
    })
    .unwrap()
}

/// Runs the MLP and compares it with the reference (rounding where the layer stores).
fn check_mlp(p: usize, dtype: DType, case: MlpCase) {
    let got = run_mlp(p, dtype, case);
    let d = MlpData::new(case.seed, dtype, case.calls);
    let (b1, b2) = match case.bias {
        true => (d.b1.clone(), d.b2.clone()),
        false => (vec![0.0; FFN], vec![0.0; H]),
    };
    let fp = FFN / p;
    let h = round(&mm_nt(&d.x, &d.w1, T, H, FFN), dtype);
    let z = bias_rows(&h, &b1);
    let g = round(&z.iter().map(|&v| gelu_ref(v)).collect::<Vec<_>>(), dtype);
    let mut y = reduce(p, dtype, |r| {
        let (g_r, w2_r) = (cols(&g, FFN, r * fp, fp), cols(&d.w2, FFN, r * fp, fp));
        mm_nt(&g_r, &w2_r, T, fp, H)
    });
    if case.bias && !case.skip_bias_add {
        y = round(&bias_rows(&y, &b2), dtype);
    }
    // [dW1, db1, dW2, db2].
    let mut grads = vec![
        vec![0.0; FFN * H],
        vec![0.0; FFN],
        vec![0.0; H * FFN],
        vec![0.0; H],
    ];
    let mut dx = vec![];
    for dy in &d.dys {
        let dg = round(&mm_nn(dy, &d.w2, T, H, FFN), dtype);
        let dh: Vec<f64> = dg
            .iter()
            .zip(&z)
            .map(|(&a, &zz)| a * gelu_grad_ref(zz))
            .collect();
        let dh = round(&dh, dtype);
        dx = reduce(p, dtype, |r| {
            let (dh_r, w1_r) = (cols(&dh, FFN, r * fp, fp), rows(&d.w1, H, r * fp, fp));
            mm_nn(&dh_r, &w1_r, T, fp, H)
        });
        let db2 = match case.skip_bias_add {
            true => vec![0.0; H],
            false => colsum(dy, H),
        };
        let new = [
            mm_tn(&dh, &d.x, T, FFN, H),
            colsum(&dh, FFN),
            mm_tn(dy, &g, T, H, FFN),
            db2,
        ];
        for (acc, n) in grads.iter_mut().zip(new) {
            *acc = add(acc, &n);
        }
    }
    let (names, grads) = match case.bias {
        true => (vec!["dW1", "db1", "dW2", "db2"], grads),
        false => (vec!["dW1", "dW2"], vec![grads[0].clone(), grads[2].clone()]),
    };
    let gt = Tolerance::for_reduction(dtype, T * case.calls);
    let (sp, yt) = (case.sp, Tolerance::for_reduction(dtype, FFN));
    for (r, o) in got.iter().enumerate() {
        let what = format!("mlp p={p} {dtype} {case:?} rank {r}");
        check(&format!("{what} y"), &o.y, &tokens(&y, H, sp, r, p), yt);
        check(&format!("{what} dx"), &o.dx, &tokens(&dx, H, sp, r, p), yt);
        assert_eq!(o.grads.len(), names.len(), "{what}: gradients");
        for ((n, gg), want) in names.iter().zip(&o.grads).zip(&grads) {
            check(&format!("{what} {n}"), gg, want, gt);
        }
    }
}

#[test]
fn parallel_mlp_matches_the_serial_mlp() {
    watchdog(120, "tp_layers_mlp", || {
        for &p in WORLDS {
            for &dtype in DTYPES {
                check_mlp(p, dtype, MlpCase::new(false, 1, 900));
                check_mlp(p, dtype, MlpCase::new(true, 1, 950));
                let no_bias = MlpCase {
                    bias: false,
                    ..MlpCase::new(false, 1, 970)
                };
                check_mlp(p, dtype, no_bias);
                let skip = MlpCase {
                    skip_bias_add: true,
                    ..MlpCase::new(true, 1, 990)
                };
                check_mlp(p, dtype, skip);
            }
        }
    });
}

// ---- shards ----------------------------------------------------------------------------------

#[test]
fn shards_cut_and_gather_back_exactly() {
    watchdog(60, "tp_layers_shards", || {
        for &p in WORLDS {
            let full: Vec<f64> = (0..12 * 24).map(|i| i as f64).collect();
            let got = launch_with(p, BackendKind::Cpu, config(), |ctx| {
                let s = ctx.device.new_stream()?;
                let f = tensor(&ctx, &full, &[12, 24], DType::F32);
                let mut out = Vec::new();
                for part in [Partition::First, Partition::Last, Partition::Replicated] {
                    let sh = shard::shard_of(&s, &f, part, ctx.rank, p)?;
                    let mut back = Tensor::poisoned(&ctx.device, [12, 24], DType::F32)?;
                    shard::gather_shards(&s, &ctx.comm, &sh, part, &mut back)?;
                    out.push((sh.dims().to_vec(), sh.to_f64_vec(&s)?, back.to_f64_vec(&s)?));
                }
                Ok(out)
            })
            .unwrap();
            for (r, outs) in got.iter().enumerate() {
                let (first, last, repl) = (&outs[0], &outs[1], &outs[2]);
                assert_eq!(first.0, [12 / p, 24]);
                assert_eq!(first.1, rows(&full, 24, r * 12 / p, 12 / p));
                assert_eq!(last.0, [12, 24 / p]);
                assert_eq!(last.1, cols(&full, 24, r * 24 / p, 24 / p));
                assert_eq!(repl.1, full);
                for o in outs {
                    assert_eq!(o.2, full, "gather back p={p}");
                }
            }
        }
        // 20 does not split 3 ways: NotDivisible naming the dimension.
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let f = Tensor::zeros(&dev, [12, 20], DType::F32).unwrap();
        let e = shard::shard_of(&s, &f, Partition::Last, 0, 3).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotDivisible {
                    dim: 20,
                    parts: 3,
                    ..
                }
            ),
            "{e}"
        );
        let e = shard::shard_of(&s, &f, Partition::First, 3, 3).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidRank {
                    rank: 3,
                    size: 3,
                    ..
                }
            ),
            "{e}"
        );
    });
}

// ---- overlap ---------------------------------------------------------------------------------

/// ColumnParallelLinear::backward launches the input-gradient all-reduce on the comm stream
/// and runs the weight-gradient GEMM on the compute stream meanwhile: host timestamps taken on
/// the streams' workers show the two intervals intersecting (in at least one of a few
/// attempts: the cores are shared by both ranks' streams), and the results are bitwise those of
/// a single-stream run.
#[test]
fn column_backward_overlaps_the_dx_all_reduce_with_the_wgrad_gemm() {
    watchdog(120, "tp_layers_overlap", || {
        const P: usize = 2;
        const ATTEMPTS: usize = 4;
        let (t, inp, out) = (256, 512, 512);
        let x = data(1, t * inp, 1.0, DType::F32);
        let w = data(2, out * inp, 1.0 / (inp as f64).sqrt(), DType::F32);
        let b = data(3, out, 0.5, DType::F32);
        let dy = data(4, t * out, 1.0, DType::F32);
        let res = launch_with(P, BackendKind::Cpu, config(), |ctx| {
            let r = ctx.rank;
            let trace = Trace::new();
            let streams = TpStreams::new(&ctx.device)?.with_trace(trace.clone());
            let cfg = ColumnParallelConfig::new(inp, out);
            let wt = tensor(&ctx, &w, &[out, inp], DType::F32);
            let bt = tensor(&ctx, &b, &[out], DType::F32);
            let mut layer =
                ColumnParallelLinear::from_full(&streams, &ctx.comm, cfg.clone(), &wt, Some(&bt))?;
            let xt = tensor(&ctx, &x, &[t, inp], DType::F32);
            let op = out / P;
            let dyt = tensor(&ctx, &cols(&dy, out, r * op, op), &[t, op], DType::F32);
            let mut spans: Vec<(Span, Span)> = Vec::new();
            let mut last = None;
            for _ in 0..ATTEMPTS {
                layer.zero_grad(&streams)?;
                trace.clear();
                let dx = layer.backward(&streams, &ctx.comm, &xt, &dyt)?;
                streams.synchronize()?;
                let wg = trace.named("bwd: wgrad gemm");
                let ar = trace.named("bwd: all_reduce dx");
                assert_eq!((wg.len(), ar.len()), (1, 1), "{:?}", trace.spans());
                spans.push((wg[0].clone(), ar[0].clone()));
                let c = &streams.compute;
                last = Some((
                    dx.to_f64_vec(c)?,
                    layer.grad_weight().to_f64_vec(c)?,
                    layer.grad_bias().unwrap().to_f64_vec(c)?,
                ));
            }
            // The same backward on a single stream: no overlap, the same bits.
            let s = ctx.device.new_named_stream("serial")?;
            let serial = TpStreams::serial(&s);
            let mut layer2 =
                ColumnParallelLinear::from_full(&serial, &ctx.comm, cfg, &wt, Some(&bt))?;
            let dx2 = layer2.backward(&serial, &ctx.comm, &xt, &dyt)?;
            let ser = (
                dx2.to_f64_vec(&s)?,
                layer2.grad_weight().to_f64_vec(&s)?,
                layer2.grad_bias().unwrap().to_f64_vec(&s)?,
            );
            Ok((spans, last.expect("attempts"), ser))
        })
        .unwrap();
        let mut overlapped = false;
        for (r, (spans, ovl, ser)) in res.iter().enumerate() {
            for (k, (wg, ar)) in spans.iter().enumerate() {
                let o = wg.overlap(ar);
                eprintln!(
                    "rank {r} attempt {k}: wgrad gemm [{:.3}, {:.3}] ms on {}, all_reduce dx \
                     [{:.3}, {:.3}] ms on {}, overlap {:.3} ms",
                    wg.start.as_secs_f64() * 1e3,
                    wg.end.as_secs_f64() * 1e3,
                    wg.stream,
                    ar.start.as_secs_f64() * 1e3,
                    ar.end.as_secs_f64() * 1e3,
                    ar.stream,
                    o.as_secs_f64() * 1e3
                );
                assert_ne!(wg.stream, ar.stream);
                overlapped |= o > Duration::ZERO;
            }
            bitwise(&format!("overlap rank {r} dx"), &ovl.0, &ser.0);
            bitwise(&format!("overlap rank {r} dW"), &ovl.1, &ser.1);
            bitwise(&format!("overlap rank {r} db"), &ovl.2, &ser.2);
        }
        assert!(
            overlapped,
            "the dx all-reduce never overlapped the wgrad GEMM in {ATTEMPTS} attempts"
        );
    });
}

// ---- bad configurations ----------------------------------------------------------------------

/// Every bad configuration or call is a typed error on every rank, before anything is
/// enqueued; afterwards the group still runs a layer correctly.
#[test]
fn bad_configurations_are_typed_errors_and_leave_the_group_usable() {
    watchdog(60, "tp_layers_bad", || {
        for p in [2usize, 3] {
            let results = launch_with(p, BackendKind::Cpu, config(), |ctx| {
                let streams = TpStreams::new(&ctx.device)?;
                let c: &dyn Communicator = &ctx.comm;
                let z = |dims: &[usize], dt: DType| Tensor::zeros(&ctx.device, dims.to_vec(), dt);
                let mut errs: Vec<(&str, Error)> = Vec::new();
                macro_rules! bad {
                    ($what:expr, $e:expr) => {
                        errs.push(($what, $e.err().expect($what)))
                    };
                }
                // Output features 7 do not split over 2 or 3 ranks (column), nor input
                // features 7 (row), nor an ffn of 7 (MLP).
                let w7 = z(&[7, 6], DType::F32)?;
                let b7 = z(&[7], DType::F32)?;
                bad!(
                    "column out",
                    ColumnParallelLinear::from_full(
                        &streams,
                        c,
                        ColumnParallelConfig::new(6, 7),
                        &w7,
                        Some(&b7)
                    )
                );
                let w67 = z(&[6, 7], DType::F32)?;
                let b6 = z(&[6], DType::F32)?;
                bad!(
                    "row in",
                    RowParallelLinear::from_full(
                        &streams,
                        c,
                        RowParallelConfig::new(7, 6),
                        &w67,
                        Some(&b6)
                    )
                );
                bad!(
                    "mlp ffn",
                    ParallelMlp::from_full(
                        &streams,
                        c,
                        ParallelMlpConfig::new(6, 7),
                        (&w7, Some(&b7)),
                        (&w67, Some(&b6))
                    )
                );
                // Incompatible options.
                let w = z(&[6 * p, 6], DType::F32)?;
                let b = z(&[6 * p], DType::F32)?;
                let cfg = ColumnParallelConfig {
                    gather_output: true,
                    sequence_parallel: true,
                    ..ColumnParallelConfig::new(6, 6 * p)
                };
                bad!(
                    "gather+sp",
                    ColumnParallelLinear::from_full(&streams, c, cfg, &w, Some(&b))
                );
                let wr = z(&[6, 6 * p], DType::F32)?;
                let cfg = RowParallelConfig {
                    sequence_parallel: true,
                    input_is_parallel: false,
                    ..RowParallelConfig::new(6 * p, 6)
                };
                bad!(
                    "sp needs parallel input",
                    RowParallelLinear::from_full(&streams, c, cfg, &wr, Some(&b6))
                );
                bad!(
                    "missing bias",
                    ColumnParallelLinear::from_full(
                        &streams,
                        c,
                        ColumnParallelConfig::new(6, 6 * p),
                        &w,
                        None
                    )
                );
                bad!(
                    "f16 weight",
                    ColumnParallelLinear::from_full(
                        &streams,
                        c,
                        ColumnParallelConfig {
                            bias: false,
                            ..ColumnParallelConfig::new(6, 6 * p)
                        },
                        &z(&[6 * p, 6], DType::F16)?,
                        None
                    )
                );
                bad!(
                    "full weight shape",
                    ColumnParallelLinear::from_full(
                        &streams,
                        c,
                        ColumnParallelConfig::new(6, 6 * p),
                        &z(&[6 * p, 5], DType::F32)?,
                        Some(&b)
                    )
                );
                // Calls with bad activations.
                let mut col = ColumnParallelLinear::from_full(
                    &streams,
                    c,
                    ColumnParallelConfig::new(6, 6 * p),
                    &w,
                    Some(&b),
                )?;
                let x = z(&[4, 6], DType::F32)?;
                bad!(
                    "x dtype",
                    col.forward(&streams, c, &z(&[4, 6], DType::BF16)?)
                );
                bad!(
                    "x shape",
                    col.forward(&streams, c, &z(&[4, 5], DType::F32)?)
                );
                bad!(
                    "x rank",
                    col.forward(&streams, c, &z(&[2, 2, 6], DType::F32)?)
                );
                bad!("x zero", col.forward(&streams, c, &z(&[0, 6], DType::F32)?));
                let emu = Device::emu(0)?;
                let xe = Tensor::zeros(&emu, [4, 6], DType::F32)?;
                bad!("x device", col.forward(&streams, c, &xe));
                bad!(
                    "dy shape",
                    col.backward(&streams, c, &x, &z(&[4, 6 * p], DType::F32)?)
                );
                let alone = ctx.comm.split(Some(ctx.rank as u32), 0)?.expect("member");
                bad!("other group", col.forward(&streams, alone.as_ref(), &x));
                // Sequence 5 does not split over 2 or 3 ranks under SP (row reduce-scatter).
                let cfg = RowParallelConfig {
                    sequence_parallel: true,
                    ..RowParallelConfig::new(6 * p, 6)
                };
                let mut row = RowParallelLinear::from_full(&streams, c, cfg, &wr, Some(&b6))?;
                bad!(
                    "sp tokens",
                    row.forward(&streams, c, &z(&[5, 6], DType::F32)?)
                );
                bad!(
                    "sp tokens bwd",
                    row.backward(
                        &streams,
                        c,
                        &z(&[5, 6], DType::F32)?,
                        &z(&[2, 6], DType::F32)?
                    )
                );
                // MLP backward with activations of the wrong shape.
                let wm1 = z(&[4 * p, 6], DType::F32)?;
                let bm1 = z(&[4 * p], DType::F32)?;
                let wm2 = z(&[6, 4 * p], DType::F32)?;
                let mut mlp = ParallelMlp::from_full(
                    &streams,
                    c,
                    ParallelMlpConfig::new(6, 4 * p),
                    (&wm1, Some(&bm1)),
                    (&wm2, Some(&b6)),
                )?;
                let acts = MlpActivations {
                    pre_gelu: z(&[4, 5], DType::F32)?,
                    post_gelu: z(&[4, 4], DType::F32)?,
                };
                bad!(
                    "mlp acts",
                    mlp.backward(&streams, c, &x, &acts, &z(&[4, 6], DType::F32)?)
                );
                // The group still works: a column layer forward and backward run everywhere.
                let xv: Vec<f64> = (0..24).map(|i| i as f64 / 24.0).collect();
                let xg = tensor(&ctx, &xv, &[4, 6], DType::F32);
                let y = col.forward(&streams, c, &xg)?;
                let dx = col.backward(&streams, c, &xg, &y)?;
                let good = dx.to_f64_vec(&streams.compute)?;
                Ok((errs, good))
            })
            .unwrap();
            for (errs, good) in results {
                // Zero weights: the input gradient is zero.
                assert_eq!(good, vec![0.0; 24]);
                for (what, e) in &errs {
                    let s = e.to_string();
                    let ok = match *what {
                        "column out" | "row in" | "mlp ffn" => {
                            matches!(e, Error::NotDivisible { dim: 7, parts, .. } if *parts == p)
                                && (s.contains("output_size") || s.contains("input_size"))
                        }
                        "gather+sp"
                        | "sp needs parallel input"
                        | "missing bias"
                        | "other group" => {
                            matches!(e, Error::InvalidArgument { .. })
                        }
                        "f16 weight" => {
                            matches!(
                                e,
                                Error::UnsupportedDType {
                                    dtype: DType::F16,
                                    ..
                                }
                            )
                        }
                        "full weight shape" | "x shape" | "dy shape" | "mlp acts" => {
                            matches!(e, Error::ShapeMismatch { .. })
                        }
                        "x dtype" => matches!(
                            e,
                            Error::DTypeMismatch {
                                expected: DType::F32,
                                got: DType::BF16,
                                ..
                            }
                        ),
                        "x rank" => matches!(e, Error::RankMismatch { .. }),
                        "x zero" => matches!(e, Error::ZeroDim { .. }),
                        "x device" => matches!(e, Error::DeviceMismatch { .. }),
                        "sp tokens" | "sp tokens bwd" => {
                            matches!(e, Error::NotDivisible { dim: 5, parts, .. } if *parts == p)
                                && s.contains("tokens")
                        }
                        other => panic!("unexpected case {other}"),
                    };
                    assert!(ok, "{what} (p = {p}): unexpected error {e:?}");
                }
            }
        }
    });
}

/// A collective that fails on the comm stream (here: a peer that gave up) poisons the compute
/// stream too, so reading the input gradient reports the failure instead of returning garbage.
#[test]
fn a_failed_collective_is_reported_on_the_compute_stream() {
    watchdog(60, "tp_layers_peer_failed", || {
        let seen = std::sync::Mutex::new(None);
        let res = launch_with(2, BackendKind::Cpu, config(), |ctx| {
            let streams = TpStreams::new(&ctx.device)?;
            let w = Tensor::zeros(&ctx.device, [8, 4], DType::F32)?;
            let cfg = ColumnParallelConfig {
                bias: false,
                ..ColumnParallelConfig::new(4, 8)
            };
            let mut layer = ColumnParallelLinear::from_full(&streams, &ctx.comm, cfg, &w, None)?;
            if ctx.rank == 1 {
                return Err(Error::invalid("test", "rank 1", "gives up"));
            }
            let x = Tensor::zeros(&ctx.device, [3, 4], DType::F32)?;
            let dy = Tensor::zeros(&ctx.device, [3, 4], DType::F32)?;
            let outcome = layer
                .backward(&streams, &ctx.comm, &x, &dy)
                .and_then(|dx| dx.to_f64_vec(&streams.compute));
            *seen.lock().unwrap() = Some(outcome.clone());
            outcome.map(|_| ())
        });
        assert!(
            matches!(res, Err(Error::RankFailed { rank: 1, .. })),
            "{res:?}"
        );
        let outcome = seen.lock().unwrap().take().expect("rank 0 ran");
        let peer_failed = |e: &Error| matches!(e, Error::PeerFailed { rank: 1, .. });
        assert!(
            match &outcome {
                Err(Error::UpstreamFailed { error, .. }) => peer_failed(error),
                Err(e) => peer_failed(e),
                Ok(_) => false,
            },
            "{outcome:?}"
        );
    });
}
