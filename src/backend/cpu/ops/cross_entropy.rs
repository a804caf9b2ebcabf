//! CPU fast path of the cross-entropy loss over logits `[n, v]` with integer targets, forward
//! (per-row loss, always f32) and backward. Arithmetic in f32; reductions in a fixed order
//! (bitwise reproducible).

use super::softmax::exp_f32;
use crate::dtype::Element;

/// Largest logit of a row as f32 (`-inf` for an empty row). A NaN may be skipped here; it
/// reaches the result through the sum of exponentials instead.
#[inline]
fn row_max<T: Element>(row: &[T]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = row.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, v) in acc.iter_mut().zip(ch) {
            let v = v.to_f32();
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.into_iter().chain(rest.iter().map(|v| v.to_f32())) {
        m = if v > m { v } else { m };
    }
    m
}

/// Sum of `x` in f32 with 8 interleaved partial sums (fixed order, vectorizable).
#[inline]
fn sum_lanes(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a += v;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for &v in rest {
        s += v;
    }
    s
}

/// Writes `exp(row - max)` into `e` and returns `(max, sum of e)`.
#[inline]
fn exp_row<T: Element>(row: &[T], e: &mut [f32]) -> (f32, f32) {
    let max = row_max(row);
    for (s, v) in e.iter_mut().zip(row) {
        *s = exp_f32(v.to_f32() - max);
    }
    (max, sum_lanes(e))
}

/// Forward: `loss[r] = logsumexp(logits[r, :]) - logits[r, targets[r]]` for `logits[n, v]`,
/// written as f32 whatever `T` is.
///
/// Computed as `(max - logits[r, t]) + ln(sum_c exp(logits[r, c] - max))`: stable for any finite
/// logits, and without the cancellation of subtracting two large numbers. A NaN logit makes its
/// row's loss NaN. Targets must lie in `[0, v)` (validated by the caller, like the slice lengths;
/// an out-of-range target panics rather than reading out of bounds).
pub fn cross_entropy_fwd<T: Element>(
    n: usize,
    v: usize,
    logits: &[T],
    targets: &[i32],
    loss: &mut [f32],
) {
    debug_assert!(logits.len() >= n * v && targets.len() >= n && loss.len() >= n);
    if n == 0 {
        return;
    }
    debug_assert!(v > 0, "cross_entropy_fwd: v must be > 0");
    let mut e = vec![0.0f32; v];
    for ((row, &t), out) in logits[..n * v]
        .chunks_exact(v)
        .zip(&targets[..n])
        .zip(&mut loss[..n])
    {
        debug_assert!(
            t >= 0 && (t as usize) < v,
            "cross_entropy_fwd: target {t} outside [0, {v})"
        );
        let (max, sum) = exp_row(row, &mut e);
        *out = (max - row[t as usize].to_f32()) + sum.ln();
    }
}

/// Backward: `dlogits[r, c] = (softmax(logits[r, :])[c] - [c == targets[r]]) * dloss[r]`.
///
/// Targets must lie in `[0, v)` and slice lengths must match (validated by the caller; only
/// debug builds re-check them).
pub fn cross_entropy_bwd<T: Element>(
    n: usize,
    v: usize,
    logits: &[T],
    targets: &[i32],
    dloss: &[f32],
    dlogits: &mut [T],
) {
    debug_assert!(
        logits.len() >= n * v && targets.len() >= n && dloss.len() >= n && dlogits.len() >= n * v
    );
    if n == 0 {
        return;
    }
    debug_assert!(v > 0, "cross_entropy_bwd: v must be > 0");
    let mut e = vec![0.0f32; v];
    let rows_iter = logits[..n * v]
        .chunks_exact(v)
        .zip(dlogits[..n * v].chunks_exact_mut(v))
        .zip(targets[..n].iter().zip(&dloss[..n]));
    for ((row, drow), (&t, &dl)) in rows_iter {
        debug_assert!(
            t >= 0 && (t as usize) < v,
            "cross_entropy_bwd: target {t} outside [0, {v})"
        );
        let (_, sum) = exp_row(row, &mut e);
        let w = dl / sum;
        for (o, &s) in drow.iter_mut().zip(&e) {
            *o = T::from_f32(s * w);
        }
        let t = t as usize;
        drow[t] = T::from_f32((e[t] / sum - 1.0) * dl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::reference::cross_entropy::{cross_entropy_bwd_ref, cross_entropy_fwd_ref};
    use crate::verify::{
        compare, from_f64, poison, random_indices, random_vec, round_through, to_f64, Tolerance,
    };
    use half::bf16;

    const SHAPES: [(usize, usize); 7] = [
        (1, 1),
        (7, 5),
        (64, 129),
        (129, 64),
        (3, 1000),
        (1, 7),
        (129, 1),
    ];

    fn check<T: Element>(seed: u64, n: usize, v: usize, lo: f64, hi: f64) -> (Vec<f32>, Vec<T>) {
        let l64 = round_through::<T>(&random_vec(seed, n * v, lo, hi));
        let targets = random_indices(seed + 1, n, v);
        let dloss: Vec<f32> = from_f64(&random_vec(seed + 2, n, 0.1, 2.0));
        let logits: Vec<T> = from_f64(&l64);
        let mut loss = vec![f32::NAN; n];
        let mut d = vec![T::default(); n * v];
        poison(&mut d);
        cross_entropy_fwd(n, v, &logits, &targets, &mut loss);
        cross_entropy_bwd(n, v, &logits, &targets, &dloss, &mut d);
        let what = format!(
            "cross_entropy {} n={n} v={v} logits in [{lo}, {hi})",
            T::DTYPE
        );
        // Both reduce over a row of v terms in f32; the loss is always stored as f32.
        let c = compare(
            &to_f64(&loss),
            &cross_entropy_fwd_ref(n, v, &l64, &targets),
            Tolerance::for_reduction(DType::F32, v),
        );
        assert!(c.pass, "{what} loss: {c}");
        let d_ref = cross_entropy_bwd_ref(n, v, &l64, &targets, &to_f64(&dloss));
        let c = compare(&to_f64(&d), &d_ref, Tolerance::for_reduction(T::DTYPE, v));
        assert!(c.pass, "{what} dlogits: {c}");
        (loss, d)
    }

    #[test]
    fn f32_matches_reference() {
        for (i, &(n, v)) in SHAPES.iter().enumerate() {
            check::<f32>(10 * i as u64, n, v, -4.0, 4.0);
        }
        // Large, offset logits: stable (no overflow, no cancellation of big terms).
        check::<f32>(99, 7, 64, 80.0, 90.0);
    }

    #[test]
    fn bf16_matches_reference() {
        for (i, &(n, v)) in SHAPES.iter().enumerate() {
            check::<bf16>(100 + 10 * i as u64, n, v, -4.0, 4.0);
        }
        check::<bf16>(199, 7, 64, -90.0, -80.0);
    }

    #[test]
    fn deterministic() {
        let a = check::<f32>(300, 129, 64, -3.0, 3.0);
        let b = check::<f32>(300, 129, 64, -3.0, 3.0);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0));
        assert_eq!(bits(&a.1), bits(&b.1));
        assert_eq!(
            check::<bf16>(301, 64, 129, -3.0, 3.0),
            check::<bf16>(301, 64, 129, -3.0, 3.0)
        );
    }

    #[test]
    fn nan_propagates() {
        let (n, v) = (3, 4);
        let mut logits: Vec<f32> = from_f64(&random_vec(1, n * v, -1.0, 1.0));
        logits[v + 2] = f32::NAN;
        let targets = [0, 1, 3];
        let mut loss = vec![0.0f32; n];
        cross_entropy_fwd(n, v, &logits, &targets, &mut loss);
        assert!(loss[0].is_finite() && loss[1].is_nan() && loss[2].is_finite());
        let mut d = vec![0.0f32; n * v];
        cross_entropy_bwd(n, v, &logits, &targets, &[1.0; 3], &mut d);
        assert!(d[v..2 * v].iter().all(|x| x.is_nan()));
        assert!(d[..v].iter().chain(&d[2 * v..]).all(|x| x.is_finite()));
        // Gradients of a row sum to zero.
        let s: f32 = d[..v].iter().sum();
        assert!(s.abs() < 1e-6);
    }
}
