//! CPU fast path of layer normalization over the last dimension (biased variance), forward and
//! backward, on row-major `[rows, cols]` slices. Arithmetic in f32; one rounding per stored
//! value; reductions in a fixed order (bitwise reproducible).

use crate::dtype::Element;

/// Sum of `x` in f32 with 8 interleaved partial sums (a fixed order the compiler can vectorize,
/// and a smaller error than one running sum).
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

/// Dot product of `a` and `b` in f32, in the same fixed lane order as [`sum_lanes`].
#[inline]
fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &p), &q) in acc.iter_mut().zip(x).zip(y) {
            *s += p * q;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (&p, &q) in ra.iter().zip(rb) {
        s += p * q;
    }
    s
}

/// Copies `src` into `dst` as f32.
#[inline]
fn widen_into<T: Element>(dst: &mut [f32], src: &[T]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// Forward: `y = (x - mean) * rstd * gamma + beta` per row of `x[rows, cols]`, where
/// `mean[r]` is the row mean and `rstd[r] = 1 / sqrt(var + eps)` with the biased variance;
/// `mean` and `rstd` are saved (f32) for the backward.
///
/// The variance is computed in two passes (mean first, then the centered sum of squares), so a
/// large row offset does not cancel catastrophically.
/// Slice lengths are validated by the caller; only debug builds re-check them.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd<T: Element>(
    rows: usize,
    cols: usize,
    x: &[T],
    gamma: &[T],
    beta: &[T],
    eps: f32,
    y: &mut [T],
    mean: &mut [f32],
    rstd: &mut [f32],
) {
    let n = rows * cols;
    debug_assert!(x.len() >= n && y.len() >= n && gamma.len() >= cols && beta.len() >= cols);
    debug_assert!(mean.len() >= rows && rstd.len() >= rows);
    if rows == 0 || cols == 0 {
        return;
    }
    let g32: Vec<f32> = gamma[..cols].iter().map(|v| v.to_f32()).collect();
    let b32: Vec<f32> = beta[..cols].iter().map(|v| v.to_f32()).collect();
    let mut xc = vec![0.0f32; cols];
    let inv_cols = 1.0 / cols as f32;
    let rows_iter = x[..n]
        .chunks_exact(cols)
        .zip(y[..n].chunks_exact_mut(cols))
        .zip(mean[..rows].iter_mut().zip(rstd[..rows].iter_mut()));
    for ((xr, yr), (mu_out, rs_out)) in rows_iter {
        widen_into(&mut xc, xr);
        let mu = sum_lanes(&xc) * inv_cols;
        for v in xc.iter_mut() {
            *v -= mu;
        }
        let var = dot_lanes(&xc, &xc) * inv_cols;
        let rs = 1.0 / (var + eps).sqrt();
        for (((o, &c), &g), &b) in yr.iter_mut().zip(&xc).zip(&g32).zip(&b32) {
            *o = T::from_f32(c * rs * g + b);
        }
        *mu_out = mu;
        *rs_out = rs;
    }
}

/// Backward: given `dy`, the forward's `x`, `gamma` and its saved `mean` / `rstd`, writes
/// `dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))` with `xhat = (x - mean) * rstd` and
/// `g = dy * gamma`, and the parameter gradients `dgamma[c] = sum_r dy * xhat`,
/// `dbeta[c] = sum_r dy` (accumulated in f32 over the rows in increasing order, so bitwise
/// reproducible, and rounded once).
///
/// Slice lengths are validated by the caller; only debug builds re-check them.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd<T: Element>(
    rows: usize,
    cols: usize,
    dy: &[T],
    x: &[T],
    gamma: &[T],
    mean: &[f32],
    rstd: &[f32],
    dx: &mut [T],
    dgamma: &mut [T],
    dbeta: &mut [T],
) {
    let n = rows * cols;
    debug_assert!(dy.len() >= n && x.len() >= n && dx.len() >= n && gamma.len() >= cols);
    debug_assert!(mean.len() >= rows && rstd.len() >= rows);
    debug_assert!(dgamma.len() >= cols && dbeta.len() >= cols);
    if cols == 0 {
        return;
    }
    let g32: Vec<f32> = gamma[..cols].iter().map(|v| v.to_f32()).collect();
    let mut dgamma_acc = vec![0.0f32; cols];
    let mut dbeta_acc = vec![0.0f32; cols];
    let mut dyr = vec![0.0f32; cols];
    let mut xhat = vec![0.0f32; cols];
    let mut g = vec![0.0f32; cols];
    let inv_cols = 1.0 / cols as f32;
    let rows_iter = dy[..n]
        .chunks_exact(cols)
        .zip(x[..n].chunks_exact(cols))
        .zip(dx[..n].chunks_exact_mut(cols))
        .zip(mean[..rows].iter().zip(&rstd[..rows]));
    for (((dy_row, x_row), dx_row), (&mu, &rs)) in rows_iter {
        widen_into(&mut dyr, dy_row);
        for (h, xi) in xhat.iter_mut().zip(x_row) {
            *h = (xi.to_f32() - mu) * rs;
        }
        for ((gi, &d), &w) in g.iter_mut().zip(&dyr).zip(&g32) {
            *gi = d * w;
        }
        let mean_g = sum_lanes(&g) * inv_cols;
        let mean_gx = dot_lanes(&g, &xhat) * inv_cols;
        for ((o, &gi), &h) in dx_row.iter_mut().zip(&g).zip(&xhat) {
            *o = T::from_f32(rs * (gi - mean_g - h * mean_gx));
        }
        for (((ag, ab), &d), &h) in dgamma_acc
            .iter_mut()
            .zip(dbeta_acc.iter_mut())
            .zip(&dyr)
            .zip(&xhat)
        {
            *ag += d * h;
            *ab += d;
        }
    }
    for (o, &a) in dgamma[..cols].iter_mut().zip(&dgamma_acc) {
        *o = T::from_f32(a);
    }
    for (o, &a) in dbeta[..cols].iter_mut().zip(&dbeta_acc) {
        *o = T::from_f32(a);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::reference::layernorm::{layernorm_bwd_ref, layernorm_fwd_ref};
    use crate::verify::{compare, from_f64, poison, random_vec, round_through, to_f64, Tolerance};
    use half::bf16;

    const SHAPES: [(usize, usize); 7] = [
        (1, 1),
        (1, 7),
        (7, 64),
        (64, 129),
        (129, 7),
        (5, 1),
        (3, 1000),
    ];
    const EPS: f32 = 1e-5;

    type Outs<T> = (Vec<T>, Vec<f32>, Vec<f32>, Vec<T>, Vec<T>, Vec<T>);

    fn check<T: Element>(seed: u64, rows: usize, cols: usize) -> Outs<T> {
        let n = rows * cols;
        // Rows are offset from zero (mean ~0.5) to exercise the two-pass variance.
        let x64 = round_through::<T>(&random_vec(seed, n, -2.0, 3.0));
        let g64 = round_through::<T>(&random_vec(seed + 1, cols, 0.5, 1.5));
        let b64 = round_through::<T>(&random_vec(seed + 2, cols, -0.5, 0.5));
        let dy64 = round_through::<T>(&random_vec(seed + 3, n, -1.0, 1.0));
        let (x, gamma, beta, dy): (Vec<T>, Vec<T>, Vec<T>, Vec<T>) = (
            from_f64(&x64),
            from_f64(&g64),
            from_f64(&b64),
            from_f64(&dy64),
        );
        let mut y = vec![T::default(); n];
        let mut mean = vec![f32::NAN; rows];
        let mut rstd = vec![f32::NAN; rows];
        let mut dx = vec![T::default(); n];
        let mut dgamma = vec![T::default(); cols];
        let mut dbeta = vec![T::default(); cols];
        poison(&mut y);
        poison(&mut dx);
        poison(&mut dgamma);
        poison(&mut dbeta);
        layernorm_fwd(
            rows, cols, &x, &gamma, &beta, EPS, &mut y, &mut mean, &mut rstd,
        );
        layernorm_bwd(
            rows,
            cols,
            &dy,
            &x,
            &gamma,
            &mean,
            &rstd,
            &mut dx,
            &mut dgamma,
            &mut dbeta,
        );

        let what = format!("layernorm {} rows={rows} cols={cols}", T::DTYPE);
        let (y_ref, mean_ref, rstd_ref) =
            layernorm_fwd_ref(rows, cols, &x64, &g64, &b64, EPS as f64);
        let (dx_ref, dg_ref, db_ref) =
            layernorm_bwd_ref(rows, cols, &dy64, &x64, &g64, &mean_ref, &rstd_ref);
        // y, mean, rstd and dx all go through cols-long f32 row reductions; dgamma/dbeta sum
        // rows terms, each of which carries that row reduction's error.
        let row_tol = Tolerance::for_reduction(T::DTYPE, cols);
        let checks: [(&str, Vec<f64>, &[f64], Tolerance); 6] = [
            ("y", to_f64(&y), &y_ref, row_tol),
            (
                "mean",
                to_f64(&mean),
                &mean_ref,
                Tolerance::for_reduction(DType::F32, cols),
            ),
            (
                "rstd",
                to_f64(&rstd),
                &rstd_ref,
                Tolerance::for_reduction(DType::F32, cols),
            ),
            ("dx", to_f64(&dx), &dx_ref, row_tol),
            (
                "dgamma",
                to_f64(&dgamma),
                &dg_ref,
                Tolerance::for_reduction(T::DTYPE, rows + cols),
            ),
            (
                "dbeta",
                to_f64(&dbeta),
                &db_ref,
                Tolerance::for_reduction(T::DTYPE, rows),
            ),
        ];
        for (name, got, want, tol) in checks {
            let c = compare(&got, want, tol);
            assert!(c.pass, "{what} {name}: {c}");
        }
        (y, mean, rstd, dx, dgamma, dbeta)
    }

    #[test]
    fn f32_matches_reference() {
        for (i, &(r, c)) in SHAPES.iter().enumerate() {
            check::<f32>(500 + 10 * i as u64, r, c);
        }
    }

    #[test]
    fn bf16_matches_reference() {
        for (i, &(r, c)) in SHAPES.iter().enumerate() {
            check::<bf16>(600 + 10 * i as u64, r, c);
        }
    }

    #[test]
    fn large_offset_is_stable() {
        // Rows around 1000 with spread 1: a one-pass E[x^2] - E[x]^2 in f32 would lose most digits.
        let (rows, cols) = (4, 256);
        let x64 = random_vec(9, rows * cols, 999.0, 1001.0);
        let x: Vec<f32> = from_f64(&x64);
        let x64 = to_f64(&x);
        let ones = vec![1.0f32; cols];
        let zeros = vec![0.0f32; cols];
        let mut y = vec![f32::NAN; rows * cols];
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        layernorm_fwd(
            rows, cols, &x, &ones, &zeros, EPS, &mut y, &mut mean, &mut rstd,
        );
        let (y_ref, _, rstd_ref) =
            layernorm_fwd_ref(rows, cols, &x64, &[1.0; 256], &[0.0; 256], EPS as f64);
        // The centered values carry an absolute error of ~eps_f32 * 1000, relative to a spread of ~0.6.
        let c = compare(&to_f64(&y), &y_ref, Tolerance::new(1e-3, 1e-3));
        assert!(c.pass, "y: {c}");
        let c = compare(&to_f64(&rstd), &rstd_ref, Tolerance::new(1e-4, 0.0));
        assert!(c.pass, "rstd: {c}");
    }

    #[test]
    fn deterministic() {
        let a = check::<f32>(700, 129, 64);
        let b = check::<f32>(700, 129, 64);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0));
        assert_eq!(bits(&a.3), bits(&b.3));
        assert_eq!(bits(&a.4), bits(&b.4));
        assert_eq!(bits(&a.5), bits(&b.5));
        let a = check::<bf16>(701, 64, 129);
        let b = check::<bf16>(701, 64, 129);
        assert_eq!(a, b);
    }

    #[test]
    fn nan_propagates() {
        let (rows, cols) = (3, 5);
        let mut x: Vec<f32> = from_f64(&random_vec(1, rows * cols, -1.0, 1.0));
        x[cols + 1] = f32::NAN;
        let ones = vec![1.0f32; cols];
        let zeros = vec![0.0f32; cols];
        let mut y = vec![0.0f32; rows * cols];
        let (mut mean, mut rstd) = (vec![0.0; rows], vec![0.0; rows]);
        layernorm_fwd(
            rows, cols, &x, &ones, &zeros, EPS, &mut y, &mut mean, &mut rstd,
        );
        for r in 0..rows {
            let row_nan = y[r * cols..(r + 1) * cols].iter().all(|v| v.is_nan());
            let row_finite = y[r * cols..(r + 1) * cols].iter().all(|v| v.is_finite());
            assert!(if r == 1 { row_nan } else { row_finite }, "row {r}");
        }
        let dy = vec![1.0f32; rows * cols];
        let mut dx = vec![0.0f32; rows * cols];
        let (mut dg, mut db) = (vec![0.0f32; cols], vec![0.0f32; cols]);
        layernorm_bwd(
            rows, cols, &dy, &x, &ones, &mean, &rstd, &mut dx, &mut dg, &mut db,
        );
        assert!(dx[cols..2 * cols].iter().all(|v| v.is_nan()));
        assert!(dg.iter().all(|v| v.is_nan()));
        assert!(db.iter().all(|v| v.is_finite()));
    }
}
