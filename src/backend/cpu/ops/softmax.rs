//! CPU fast path of the softmax over the last dimension of `x[batch, rows, cols]`, with a logit
//! scale and an optional causal mask, forward and backward. Arithmetic in f32; one rounding per
//! stored value; reductions in a fixed order (bitwise reproducible).

use crate::dtype::Element;

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

/// Largest element of `x` (`-inf` for an empty slice). A NaN may be skipped here; callers
/// rely on it reaching the result through the sum of exponentials instead.
#[inline]
fn max_lanes(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = x.chunks_exact(8);
    let rest = chunks.remainder();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for v in acc.into_iter().chain(rest.iter().copied()) {
        m = if v > m { v } else { m };
    }
    m
}

/// Number of unmasked leading columns of row `i` of a `rows x cols` score matrix: position
/// `(i, j)` is masked iff `causal` and `j > i + (cols - rows)`.
#[inline]
fn live_cols(rows: usize, cols: usize, i: usize, causal: bool) -> usize {
    if causal {
        (i + cols + 1).saturating_sub(rows).min(cols)
    } else {
        cols
    }
}

/// Forward: `y = softmax(scale * x)` over each row of length `cols`, for `x`, `y` of shape
/// `[batch, rows, cols]`.
///
/// When `causal`, position `(i, j)` of each `rows x cols` matrix is masked (probability 0) iff
/// `j > i + (cols - rows)`; a row that is masked entirely (possible when `rows > cols`) is all
/// zeros, never NaN. Numerically stable: the row max is subtracted before exponentiating. A NaN
/// (or `+inf`) among a row's unmasked logits makes that whole row NaN.
/// Slice lengths are validated by the caller; only debug builds re-check them.
pub fn softmax_fwd<T: Element>(
    batch: usize,
    rows: usize,
    cols: usize,
    scale: f32,
    causal: bool,
    x: &[T],
    y: &mut [T],
) {
    let n = batch * rows * cols;
    debug_assert!(x.len() >= n && y.len() >= n);
    if n == 0 {
        return;
    }
    let mut e = vec![0.0f32; cols];
    let zero = T::from_f32(0.0);
    for (r, (xr, yr)) in x[..n]
        .chunks_exact(cols)
        .zip(y[..n].chunks_exact_mut(cols))
        .enumerate()
    {
        let live = live_cols(rows, cols, r % rows, causal);
        let (y_live, y_masked) = yr.split_at_mut(live);
        y_masked.fill(zero);
        if live == 0 {
            continue;
        }
        let e = &mut e[..live];
        for (s, v) in e.iter_mut().zip(&xr[..live]) {
            *s = scale * v.to_f32();
        }
        let max = max_lanes(e);
        for s in e.iter_mut() {
            *s = (*s - max).exp();
        }
        let inv = 1.0 / sum_lanes(e);
        for (o, &s) in y_live.iter_mut().zip(e.iter()) {
            *o = T::from_f32(s * inv);
        }
    }
}

/// Backward: `dx = scale * y * (dy - sum_j dy[j] * y[j])` per row, given the forward output `y`
/// (masked positions have `y == 0`, so their gradient is 0 without looking at the mask).
///
/// Slice lengths are validated by the caller; only debug builds re-check them.
pub fn softmax_bwd<T: Element>(
    batch: usize,
    rows: usize,
    cols: usize,
    scale: f32,
    dy: &[T],
    y: &[T],
    dx: &mut [T],
) {
    let n = batch * rows * cols;
    debug_assert!(dy.len() >= n && y.len() >= n && dx.len() >= n);
    if n == 0 {
        return;
    }
    let mut dyr = vec![0.0f32; cols];
    let mut yv = vec![0.0f32; cols];
    let rows_iter = dy[..n]
        .chunks_exact(cols)
        .zip(y[..n].chunks_exact(cols))
        .zip(dx[..n].chunks_exact_mut(cols));
    for ((dy_row, y_row), dx_row) in rows_iter {
        for ((a, b), (&p, &q)) in dyr
            .iter_mut()
            .zip(yv.iter_mut())
            .zip(dy_row.iter().zip(y_row))
        {
            *a = p.to_f32();
            *b = q.to_f32();
        }
        let mut acc = [0.0f32; 8];
        let (ca, cb) = (dyr.chunks_exact(8), yv.chunks_exact(8));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (p, q) in ca.zip(cb) {
            for ((s, &a), &b) in acc.iter_mut().zip(p).zip(q) {
                *s += a * b;
            }
        }
        let mut dot =
            ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for (&a, &b) in ra.iter().zip(rb) {
            dot += a * b;
        }
        for ((o, &d), &p) in dx_row.iter_mut().zip(&dyr).zip(&yv) {
            *o = T::from_f32(scale * p * (d - dot));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::softmax::{softmax_bwd_ref, softmax_fwd_ref};
    use crate::verify::{compare, from_f64, poison, random_vec, round_through, to_f64, Tolerance};
    use half::bf16;

    /// (batch, rows, cols)
    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 1, 1),
        (2, 7, 7),
        (1, 64, 129),
        (2, 129, 64),
        (2, 5, 3),
        (1, 3, 9),
        (3, 1, 129),
        (1, 129, 1),
    ];

    fn check<T: Element>(
        seed: u64,
        (batch, rows, cols): (usize, usize, usize),
        scale: f32,
        causal: bool,
    ) -> (Vec<T>, Vec<T>) {
        let n = batch * rows * cols;
        let x64 = round_through::<T>(&random_vec(seed, n, -4.0, 4.0));
        let dy64 = round_through::<T>(&random_vec(seed + 1, n, -1.0, 1.0));
        let (x, dy): (Vec<T>, Vec<T>) = (from_f64(&x64), from_f64(&dy64));
        let mut y = vec![T::default(); n];
        let mut dx = vec![T::default(); n];
        poison(&mut y);
        poison(&mut dx);
        softmax_fwd(batch, rows, cols, scale, causal, &x, &mut y);
        softmax_bwd(batch, rows, cols, scale, &dy, &y, &mut dx);
        let what = format!(
            "softmax {} b={batch} r={rows} c={cols} scale={scale} causal={causal}",
            T::DTYPE
        );
        // Both directions reduce over a row of cols terms in f32.
        let tol = Tolerance::for_reduction(T::DTYPE, cols);
        let c = compare(
            &to_f64(&y),
            &softmax_fwd_ref(batch, rows, cols, scale as f64, causal, &x64),
            tol,
        );
        assert!(c.pass, "{what} y: {c}");
        // The backward is checked on its own: the reference gets the fast path's (rounded) y.
        let dx_ref = softmax_bwd_ref(batch, rows, cols, scale as f64, &dy64, &to_f64(&y));
        let c = compare(&to_f64(&dx), &dx_ref, tol);
        assert!(c.pass, "{what} dx: {c}");
        (y, dx)
    }

    #[test]
    fn f32_matches_reference() {
        for (i, &shape) in SHAPES.iter().enumerate() {
            for (j, &(scale, causal)) in [(1.0, false), (0.125, true), (2.0, true)]
                .iter()
                .enumerate()
            {
                check::<f32>(1000 + 10 * i as u64 + j as u64, shape, scale, causal);
            }
        }
    }

    #[test]
    fn bf16_matches_reference() {
        for (i, &shape) in SHAPES.iter().enumerate() {
            check::<bf16>(2000 + 10 * i as u64, shape, 1.0, false);
            check::<bf16>(2005 + 10 * i as u64, shape, 0.5, true);
        }
    }

    #[test]
    fn rows_sum_to_one_and_masked_rows_are_zero() {
        for &(batch, rows, cols) in &[(2usize, 6usize, 4usize), (1, 5, 5), (1, 3, 8)] {
            let (y, dx) = check::<f32>(3000, (batch, rows, cols), 1.0, true);
            for r in 0..batch * rows {
                let i = r % rows;
                let row = &y[r * cols..(r + 1) * cols];
                let s: f64 = row.iter().map(|&v| v as f64).sum();
                if i + cols < rows {
                    // j > i + cols - rows holds for every j >= 0: fully masked.
                    assert!(
                        row.iter().all(|&v| v == 0.0),
                        "row {r} must be zeros: {row:?}"
                    );
                    assert!(dx[r * cols..(r + 1) * cols].iter().all(|&v| v == 0.0));
                } else {
                    assert!((s - 1.0).abs() < 1e-5 * cols as f64, "row {r} sums to {s}");
                }
            }
        }
        // Huge logits do not overflow.
        let mut y = vec![0.0f32; 3];
        softmax_fwd(1, 1, 3, 1.0, false, &[1e30f32, 1e30, -1e30], &mut y);
        assert_eq!(y, vec![0.5, 0.5, 0.0]);
    }

    #[test]
    fn deterministic() {
        let a = check::<f32>(4000, (2, 129, 64), 0.3, true);
        let b = check::<f32>(4000, (2, 129, 64), 0.3, true);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0));
        assert_eq!(bits(&a.1), bits(&b.1));
        assert_eq!(
            check::<bf16>(4001, (1, 64, 129), 1.0, false),
            check::<bf16>(4001, (1, 64, 129), 1.0, false)
        );
    }

    #[test]
    fn nan_propagates() {
        let (rows, cols) = (3, 4);
        let mut x: Vec<f32> = from_f64(&random_vec(5, rows * cols, -1.0, 1.0));
        x[cols + 1] = f32::NAN; // row 1, column 1
        let mut y = vec![0.0f32; rows * cols];
        softmax_fwd(1, rows, cols, 1.0, false, &x, &mut y);
        for r in 0..rows {
            let row = &y[r * cols..(r + 1) * cols];
            assert!(if r == 1 {
                row.iter().all(|v| v.is_nan())
            } else {
                row.iter().all(|v| v.is_finite())
            });
        }
        let mut dx = vec![0.0f32; rows * cols];
        softmax_bwd(1, rows, cols, 1.0, &[1.0; 12], &y, &mut dx);
        assert!(dx[cols..2 * cols].iter().all(|v| v.is_nan()));
        assert!(dx[..cols].iter().all(|v| v.is_finite()));
        // A NaN in a masked position cannot reach the row (it is never read).
        let mut y = vec![0.0f32; rows * cols];
        let mut x2 = vec![0.0f32; rows * cols];
        x2[3] = f32::NAN; // row 0, column 3: masked under causal with rows = 3, cols = 4
        softmax_fwd(1, rows, cols, 1.0, true, &x2, &mut y);
        assert!(y.iter().all(|v| v.is_finite()));
        // A NaN at the row max's position also propagates.
        let mut y = vec![0.0f32; 2];
        softmax_fwd(1, 1, 2, 1.0, false, &[f32::NAN, f32::NAN], &mut y);
        assert!(y.iter().all(|v| v.is_nan()));
    }
}
