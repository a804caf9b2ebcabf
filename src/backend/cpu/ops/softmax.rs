//! CPU fast path of the softmax over the last dimension of `x[batch, rows, cols]`, with a logit
//! scale and an optional causal mask, forward and backward. Arithmetic in f32; one rounding per
//! stored value; reductions in a fixed order (bitwise reproducible).

use crate::dtype::Element;

/// `e^x` in f32 to within ~2 ulp, written so loops over it vectorize (no libm call, only
/// selects, no float-to-int conversion): Cody-Waite reduction `x = n ln2 + r` with `n` rounded
/// by the 1.5 * 2^23 trick, Cephes' degree-6 polynomial for `e^r`, and `2^n` built from bits.
///
/// Edge cases: NaN gives NaN, `x > ln(f32::MAX)` (including `+inf`) gives `+inf`, and
/// `x < -86.5` (including `-inf`) gives 0: results below ~3e-38 are flushed to zero instead of
/// being returned as subnormals (an absolute error under 3e-38).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const HI: f32 = 88.722_84; // ln(f32::MAX), rounded up
    const LO: f32 = -86.5;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    const LN2_HI: f32 = 0.693_359_4; // 355/512, exact: n * LN2_HI is exact for |n| <= 128
    const LN2_LO: f32 = -2.121_944_4e-4; // ln 2 - LN2_HI
    const P0: f32 = 1.987_569_1e-4;
    const P1: f32 = 1.398_199_9e-3;
    const P2: f32 = 8.333_452e-3;
    const P3: f32 = 4.166_579_6e-2;
    const P4: f32 = 1.666_666_5e-1;
    // Cephes' last coefficient, 5.0000001201e-1, rounds to 0.5 in f32.
    const P5: f32 = 0.5;
    // `clamp` keeps NaN, which then propagates to the result.
    let xc = x.clamp(LO, HI);
    // k = 1.5 * 2^23 + n with n = round(xc / ln 2) in [-125, 128]; its low mantissa bits hold n.
    let k = xc * std::f32::consts::LOG2_E + MAGIC;
    let n = k - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let z = r * r;
    let p = (((((P0 * r + P1) * r + P2) * r + P3) * r + P4) * r + P5) * z + r + 1.0;
    // 2^(n - 1) from its exponent field n - 1 + 127 (in [1, 254]); times 2 at the end keeps
    // n = 128 (just below f32::MAX) representable.
    let scale = f32::from_bits(k.to_bits().wrapping_sub(0x4B40_0000 - 126) << 23);
    let y = p * scale * 2.0;
    if x > HI {
        f32::INFINITY
    } else if x < LO {
        0.0
    } else {
        y
    }
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
            *s = exp_f32(*s - max);
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
    fn exp_f32_is_accurate() {
        let xs = random_vec(6000, 20_000, -86.5, 88.7);
        for x in xs
            .iter()
            .map(|&v| v as f32)
            .chain([0.0, -0.0, 1.0, -1.0, 1e-8, -1e-8, 88.72, -86.4])
        {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            // ~2 ulp of f32 (2^-23 ~ 1.2e-7 relative per ulp).
            assert!(
                (got - want).abs() <= 2.5e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert_eq!(exp_f32(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp_f32(89.0), f32::INFINITY);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        // Below -86.5 results are flushed to zero: an absolute error under 3e-38.
        for x in [-86.51f32, -87.0, -87.5, -103.0] {
            assert!(exp_f32(x) == 0.0 && (x as f64).exp() < 3e-38);
        }
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
