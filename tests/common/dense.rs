//! Dense f64 helpers for the tensor-parallel reference computations (row-major matrices as
//! flat slices), shared by `tests/tp_attention.rs` and `tests/tp_block.rs`.

use ferrotron::ops::Transpose;
use ferrotron::reference::gemm::gemm_ref;
use ferrotron::DType;

pub fn mm(
    ta: Transpose,
    tb: Transpose,
    a: &[f64],
    b: &[f64],
    m: usize,
    k: usize,
    n: usize,
) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    gemm_ref(ta, tb, m, n, k, 1.0, a, b, 0.0, &mut c);
    c
}

/// `a [m, k] * b^T` with `b` stored `[n, k]`.
pub fn mm_nt(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    mm(Transpose::N, Transpose::T, a, b, m, k, n)
}

/// `a [m, k] * b [k, n]`.
pub fn mm_nn(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    mm(Transpose::N, Transpose::N, a, b, m, k, n)
}

/// `a^T b` with `a` stored `[k, m]`, `b` `[k, n]`.
pub fn mm_tn(a: &[f64], b: &[f64], k: usize, m: usize, n: usize) -> Vec<f64> {
    mm(Transpose::T, Transpose::N, a, b, m, k, n)
}

pub fn cols(x: &[f64], c: usize, lo: usize, w: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|row| row[lo..lo + w].to_vec())
        .collect()
}

/// Row-wise concatenation of `parts` (each `[rows, w_i]`).
pub fn concat(parts: &[Vec<f64>], rows: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for r in 0..rows {
        for p in parts {
            let w = p.len() / rows;
            out.extend_from_slice(&p[r * w..(r + 1) * w]);
        }
    }
    out
}

pub fn colsum(x: &[f64], c: usize) -> Vec<f64> {
    let mut s = vec![0.0; c];
    for row in x.chunks(c) {
        for (a, v) in s.iter_mut().zip(row) {
            *a += v;
        }
    }
    s
}

pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

pub fn bias_rows(x: &[f64], b: &[f64]) -> Vec<f64> {
    x.chunks(b.len()).flat_map(|r| add(r, b)).collect()
}

pub fn scaled(x: &[f64], f: f64) -> Vec<f64> {
    x.iter().map(|v| v * f).collect()
}

/// Rounds every value to `dtype` (f32 or bf16) and back: what a tensor of that dtype stores.
pub fn round(v: &[f64], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => v.iter().map(|&x| x as f32 as f64).collect(),
        DType::BF16 => v
            .iter()
            .map(|&x| half::bf16::from_f64(x).to_f64())
            .collect(),
        other => unreachable!("no {other} reference"),
    }
}

/// `sum_r round(part(r))`, rounded: a reduction (all-reduce or reduce-scatter, f32
/// accumulation in rank order, one rounding on store) of per-rank partial results that each
/// rank stored in `dtype`, over `p` ranks.
pub fn reduce(p: usize, dtype: DType, part: impl Fn(usize) -> Vec<f64>) -> Vec<f64> {
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

/// The largest `|got - want| / (tol.abs + tol.rel * |want|)` over the elements: how much of
/// its allowance the worst element uses (below 1 passes).
pub fn worst_ratio(got: &[f64], want: &[f64], tol: ferrotron::verify::Tolerance) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / (tol.abs + tol.rel * w.abs()))
        .fold(0.0, f64::max)
}

/// The root mean square of `v` (0 for an empty slice).
pub fn rms(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
}

/// The norm-wise relative error `||got - want||_2 / ||want||_2`: how far a whole tensor is from
/// its reference, insensitive to single elements that cancel to near zero. Infinite when the
/// lengths differ, a value is not finite, or `want` is zero and `got` is not (0 when both are).
pub fn normwise_rel(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().chain(want).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let diff: f64 = got.iter().zip(want).map(|(g, w)| (g - w) * (g - w)).sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    match (diff == 0.0, norm == 0.0) {
        (true, _) => 0.0,
        (false, true) => f64::INFINITY,
        (false, false) => (diff / norm).sqrt(),
    }
}

/// The largest elementwise error relative to the reference's RMS, `max |got - want| /
/// rms(want)` (infinite under the same conditions as [`normwise_rel`]).
pub fn max_err_over_rms(got: &[f64], want: &[f64]) -> f64 {
    if got.len() != want.len() || got.iter().chain(want).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let err = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f64::max);
    let r = rms(want);
    match (err == 0.0, r == 0.0) {
        (true, _) => 0.0,
        (false, true) => f64::INFINITY,
        (false, false) => err / r,
    }
}
