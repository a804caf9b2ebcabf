//! CPU fast path of the fused bias + GeLU (Megatron's tanh approximation), forward and backward,
//! on row-major `[rows, cols]` slices. Arithmetic in f32; one rounding per stored value.

use super::softmax::exp_f32;
use crate::dtype::Element;

/// `sqrt(2 / pi)`.
const K0: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh approximation.
const K1: f32 = 0.044_715;
/// `3 * 0.044715 * sqrt(2 / pi)`, the derivative's `z^2` coefficient.
const K2: f32 = 3.0 * 0.044_715 * 0.797_884_6;

// With u = sqrt(2/pi) (z + 0.044715 z^3) and s = sigmoid(2u) = 1 / (1 + e^(-2u)) we have
// 1 + tanh(u) = 2s and 1 - tanh(u)^2 = 4 s (1 - s), so
//   gelu(z)  = z s
//   gelu'(z) = 2 z s (1 - s) (sqrt(2/pi) + 3 * 0.044715 * sqrt(2/pi) z^2) + s.
// This needs one exp (vectorizable, see `exp_f32`) instead of a libm tanh, and `z s` keeps full
// relative accuracy for very negative z, where 0.5 z (1 + tanh(u)) cancels.

/// `gelu(z) = 0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))` in f32, computed as `z s`.
#[inline(always)]
fn gelu(z: f32) -> f32 {
    let u = K0 * (z + K1 * z * z * z);
    z / (1.0 + exp_f32(-2.0 * u))
}

/// `gelu'(z) = 0.5 z (1 - t^2) (sqrt(2/pi) + 3 * 0.044715 * sqrt(2/pi) z^2) + 0.5 (1 + t)`
/// with `t = tanh(u)`, computed in the sigmoid form above.
#[inline(always)]
fn gelu_grad(z: f32) -> f32 {
    let u = K0 * (z + K1 * z * z * z);
    let e = exp_f32(-2.0 * u);
    let s = 1.0 / (1.0 + e);
    // 1 - s = e s, exact in form; where e overflowed (z very negative) s = 0 and 1 - s = 1.
    // A NaN e is not infinite, so it propagates.
    let one_minus_s = if e == f32::INFINITY { 1.0 } else { e * s };
    let sp = s * one_minus_s;
    // Where the sigmoid has saturated (sp == 0) the first term is exactly 0; without this
    // select a huge finite z would give 0 * inf = NaN. NaN inputs still propagate (NaN != 0).
    let first = if sp == 0.0 {
        0.0
    } else {
        2.0 * z * sp * (K0 + K2 * z * z)
    };
    first + s
}

/// Forward: `y[r, c] = gelu(x[r, c] + bias[c])` for `x`, `y` of shape `[rows, cols]`.
///
/// Slice lengths are validated by the caller; only debug builds re-check them.
pub fn bias_gelu_fwd<T: Element>(rows: usize, cols: usize, x: &[T], bias: &[T], y: &mut [T]) {
    debug_assert!(x.len() >= rows * cols && y.len() >= rows * cols && bias.len() >= cols);
    if rows == 0 || cols == 0 {
        return;
    }
    let b32: Vec<f32> = bias[..cols].iter().map(|v| v.to_f32()).collect();
    let x = &x[..rows * cols];
    let y = &mut y[..rows * cols];
    for (yr, xr) in y.chunks_exact_mut(cols).zip(x.chunks_exact(cols)) {
        for ((out, &xi), &bi) in yr.iter_mut().zip(xr).zip(&b32) {
            *out = T::from_f32(gelu(xi.to_f32() + bi));
        }
    }
}

/// Backward: `dx[r, c] = dy[r, c] * gelu'(x[r, c] + bias[c])` and, when `dbias` is given,
/// `dbias[c] = sum_r dx[r, c]`.
///
/// `dbias` sums the f32 values of `dx` (before they are rounded to `T`) over the rows in
/// increasing order, so the result is bitwise reproducible.
/// Slice lengths are validated by the caller; only debug builds re-check them.
pub fn bias_gelu_bwd<T: Element>(
    rows: usize,
    cols: usize,
    dy: &[T],
    x: &[T],
    bias: &[T],
    dx: &mut [T],
    dbias: Option<&mut [T]>,
) {
    let n = rows * cols;
    debug_assert!(dy.len() >= n && x.len() >= n && dx.len() >= n && bias.len() >= cols);
    debug_assert!(dbias.as_ref().is_none_or(|d| d.len() >= cols));
    if cols == 0 {
        return;
    }
    let b32: Vec<f32> = bias[..cols].iter().map(|v| v.to_f32()).collect();
    let (dy, x, dx) = (&dy[..n], &x[..n], &mut dx[..n]);
    let rows_iter = dx
        .chunks_exact_mut(cols)
        .zip(dy.chunks_exact(cols).zip(x.chunks_exact(cols)));
    match dbias {
        None => {
            for (dxr, (dyr, xr)) in rows_iter {
                for (((o, &g), &xi), &bi) in dxr.iter_mut().zip(dyr).zip(xr).zip(&b32) {
                    *o = T::from_f32(g.to_f32() * gelu_grad(xi.to_f32() + bi));
                }
            }
        }
        Some(dbias) => {
            let mut acc = vec![0.0f32; cols];
            for (dxr, (dyr, xr)) in rows_iter {
                for ((((o, a), &g), &xi), &bi) in dxr
                    .iter_mut()
                    .zip(acc.iter_mut())
                    .zip(dyr)
                    .zip(xr)
                    .zip(&b32)
                {
                    let d = g.to_f32() * gelu_grad(xi.to_f32() + bi);
                    *a += d;
                    *o = T::from_f32(d);
                }
            }
            for (o, &a) in dbias[..cols].iter_mut().zip(&acc) {
                *o = T::from_f32(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::bias_gelu::{
        bias_gelu_bwd_ref, bias_gelu_fwd_ref, gelu_grad_ref, gelu_ref,
    };
    use crate::verify::{compare, from_f64, poison, random_vec, round_through, to_f64, Tolerance};
    use half::bf16;

    const SHAPES: [(usize, usize); 6] = [(1, 1), (7, 5), (1, 129), (64, 129), (129, 7), (3, 64)];

    struct Out<T> {
        y: Vec<T>,
        dx: Vec<T>,
        dbias: Vec<T>,
    }

    fn check<T: Element>(seed: u64, rows: usize, cols: usize) -> Out<T> {
        let n = rows * cols;
        let x64 = round_through::<T>(&random_vec(seed, n, -3.0, 3.0));
        let b64 = round_through::<T>(&random_vec(seed + 1, cols, -1.0, 1.0));
        let dy64 = round_through::<T>(&random_vec(seed + 2, n, -1.0, 1.0));
        let (x, bias, dy): (Vec<T>, Vec<T>, Vec<T>) =
            (from_f64(&x64), from_f64(&b64), from_f64(&dy64));
        let mut y = vec![T::default(); n];
        let mut dx = vec![T::default(); n];
        let mut dbias = vec![T::default(); cols];
        poison(&mut y);
        poison(&mut dx);
        poison(&mut dbias);
        bias_gelu_fwd(rows, cols, &x, &bias, &mut y);
        bias_gelu_bwd(rows, cols, &dy, &x, &bias, &mut dx, Some(&mut dbias));
        let what = format!("bias_gelu {} rows={rows} cols={cols}", T::DTYPE);
        // Elementwise results: one dtype tolerance. dbias is a rows-long f32 column sum.
        let tol = Tolerance::for_reduction(T::DTYPE, 1);
        let c = compare(&to_f64(&y), &bias_gelu_fwd_ref(rows, cols, &x64, &b64), tol);
        assert!(c.pass, "{what} y: {c}");
        let (dx_ref, db_ref) = bias_gelu_bwd_ref(rows, cols, &dy64, &x64, &b64);
        let c = compare(&to_f64(&dx), &dx_ref, tol);
        assert!(c.pass, "{what} dx: {c}");
        let c = compare(
            &to_f64(&dbias),
            &db_ref,
            Tolerance::for_reduction(T::DTYPE, rows),
        );
        assert!(c.pass, "{what} dbias: {c}");
        // Without dbias, dx is the same.
        let mut dx2 = vec![T::default(); n];
        poison(&mut dx2);
        bias_gelu_bwd(rows, cols, &dy, &x, &bias, &mut dx2, None);
        assert_eq!(dx2, dx);
        Out { y, dx, dbias }
    }

    #[test]
    fn f32_matches_reference() {
        for (i, &(r, c)) in SHAPES.iter().enumerate() {
            check::<f32>(10 * i as u64, r, c);
        }
    }

    #[test]
    fn bf16_matches_reference() {
        for (i, &(r, c)) in SHAPES.iter().enumerate() {
            check::<bf16>(1000 + 10 * i as u64, r, c);
        }
    }

    #[test]
    fn scalar_gelu_matches_reference() {
        let grid = (-1200..=1200).map(|i| i as f32 * 0.01);
        let special = [-1e30f32, -1e10, -20.0, -10.05, -1e-6, 1e-6, 1e10, 1e30];
        for z in grid.chain(special) {
            let zd = z as f64;
            let (y, g) = (gelu(z) as f64, gelu_grad(z) as f64);
            let (y_ref, g_ref) = (gelu_ref(zd), gelu_grad_ref(zd));
            assert!(
                (y - y_ref).abs() <= 1e-7 + 1e-5 * y_ref.abs(),
                "gelu({z}) = {y}, want {y_ref}"
            );
            assert!(
                (g - g_ref).abs() <= 1e-6 + 1e-5 * g_ref.abs(),
                "gelu'({z}) = {g}, want {g_ref}"
            );
        }
        assert!(gelu(f32::NAN).is_nan() && gelu_grad(f32::NAN).is_nan());
    }

    #[test]
    fn deterministic() {
        let a = check::<f32>(77, 129, 64);
        let b = check::<f32>(77, 129, 64);
        assert!(a
            .y
            .iter()
            .zip(&b.y)
            .all(|(p, q)| p.to_bits() == q.to_bits()));
        assert!(a
            .dx
            .iter()
            .zip(&b.dx)
            .all(|(p, q)| p.to_bits() == q.to_bits()));
        assert!(a
            .dbias
            .iter()
            .zip(&b.dbias)
            .all(|(p, q)| p.to_bits() == q.to_bits()));
        let a = check::<bf16>(78, 64, 129);
        let b = check::<bf16>(78, 64, 129);
        assert_eq!((a.y, a.dx, a.dbias), (b.y, b.dx, b.dbias));
    }

    #[test]
    fn nan_propagates() {
        let (rows, cols) = (3, 4);
        let mut x = vec![0.5f32; rows * cols];
        x[cols + 2] = f32::NAN;
        let bias = vec![0.1f32; cols];
        let mut y = vec![0.0f32; rows * cols];
        bias_gelu_fwd(rows, cols, &x, &bias, &mut y);
        let mut dx = vec![0.0f32; rows * cols];
        let mut db = vec![0.0f32; cols];
        bias_gelu_bwd(rows, cols, &[1.0; 12], &x, &bias, &mut dx, Some(&mut db));
        for i in 0..rows * cols {
            assert_eq!(y[i].is_nan(), i == cols + 2);
            assert_eq!(dx[i].is_nan(), i == cols + 2);
        }
        assert!(db[2].is_nan() && !db[1].is_nan());
    }
}
