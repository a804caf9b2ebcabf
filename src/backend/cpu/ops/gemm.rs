//! CPU GEMM fast path: `C = alpha * op(A) * op(B) + beta * C` on row-major slices, computed by
//! faer in f32 (bf16/f16 operands are widened to f32 first; a reduced-precision `C` is computed
//! in an f32 scratch and rounded once).

use crate::dtype::Element;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use std::any::TypeId;
use std::borrow::Cow;

/// Whether a GEMM operand is used as stored (`N`) or transposed (`T`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transpose {
    /// Use the operand as stored.
    N,
    /// Use the transpose of the stored operand.
    T,
}

/// `x` viewed as `&[f32]` when `T` is `f32` (zero-copy), `None` otherwise.
fn as_f32<T: Element>(x: &[T]) -> Option<&[f32]> {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: `T` is `f32` (same `TypeId`), so the pointer, length and lifetime describe a
        // valid `[f32]`.
        Some(unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) })
    } else {
        None
    }
}

/// `x` viewed as `&mut [f32]` when `T` is `f32` (zero-copy), `None` otherwise.
fn as_f32_mut<T: Element>(x: &mut [T]) -> Option<&mut [f32]> {
    if TypeId::of::<T>() == TypeId::of::<f32>() {
        // SAFETY: `T` is `f32` (same `TypeId`); the new slice reborrows `x` exclusively for the
        // same lifetime, so no aliasing is created.
        Some(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len()) })
    } else {
        None
    }
}

/// `x` as f32: borrowed when it already is, widened into a new buffer otherwise.
fn widen<T: Element>(x: &[T]) -> Cow<'_, [f32]> {
    match as_f32(x) {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(x.iter().map(|v| v.to_f32()).collect()),
    }
}

/// The `rows x cols` matrix `op(X)` for `X` stored row-major as `[rows, cols]` (N) or
/// `[cols, rows]` (T).
fn view(x: &[f32], t: Transpose, rows: usize, cols: usize) -> MatRef<'_, f32> {
    match t {
        Transpose::N => MatRef::from_row_major_slice(x, rows, cols),
        Transpose::T => MatRef::from_row_major_slice(x, cols, rows).transpose(),
    }
}

/// `C[m,n] = alpha * op(A) * op(B) + beta * C`, row-major, f32 arithmetic.
///
/// `a` is stored `[m, k]` when `ta` is [`Transpose::N`] and `[k, m]` when it is
/// [`Transpose::T`]; `b` is stored `[k, n]` (N) or `[n, k]` (T); `c` is `[m, n]`.
/// When `beta == 0`, `C` is overwritten without being read, so a NaN already in `C` never leaks
/// into the result. `k == 0` gives `C = beta * C` (zeros when `beta == 0`).
///
/// f32 operands are used in place; bf16/f16 operands are widened to f32 buffers. An f32 `C` is
/// accumulated into directly; any other `C` type is computed in an f32 scratch, `beta * C` is
/// added in f32, and the sum is rounded once. `par` is handed to faer (its only threading).
///
/// Slice lengths are validated by the caller (the op layer); only debug builds re-check them.
#[allow(clippy::too_many_arguments)]
pub fn gemm<TA: Element, TC: Element>(
    ta: Transpose,
    tb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[TA],
    b: &[TA],
    beta: f32,
    c: &mut [TC],
    par: Par,
) {
    debug_assert!(
        a.len() >= m * k,
        "gemm: a has {} elements, needs {}",
        a.len(),
        m * k
    );
    debug_assert!(
        b.len() >= k * n,
        "gemm: b has {} elements, needs {}",
        b.len(),
        k * n
    );
    debug_assert!(
        c.len() >= m * n,
        "gemm: c has {} elements, needs {}",
        c.len(),
        m * n
    );
    if m == 0 || n == 0 {
        return;
    }
    let c = &mut c[..m * n];
    if k == 0 {
        // op(A) * op(B) is the zero matrix.
        if beta == 0.0 {
            c.fill(TC::from_f32(0.0));
        } else {
            for v in c.iter_mut() {
                *v = TC::from_f32(beta * v.to_f32());
            }
        }
        return;
    }
    let a32 = widen(&a[..m * k]);
    let b32 = widen(&b[..k * n]);
    let lhs = view(&a32, ta, m, k);
    let rhs = view(&b32, tb, k, n);
    if let Some(c32) = as_f32_mut(c) {
        let accum = if beta == 0.0 {
            Accum::Replace
        } else {
            if beta != 1.0 {
                for v in c32.iter_mut() {
                    *v *= beta;
                }
            }
            Accum::Add
        };
        matmul(
            MatMut::from_row_major_slice_mut(c32, m, n),
            accum,
            lhs,
            rhs,
            alpha,
            par,
        );
    } else {
        let mut acc = vec![0.0f32; m * n];
        let dst = MatMut::from_row_major_slice_mut(&mut acc, m, n);
        matmul(dst, Accum::Replace, lhs, rhs, alpha, par);
        if beta == 0.0 {
            for (out, &s) in c.iter_mut().zip(&acc) {
                *out = TC::from_f32(s);
            }
        } else {
            for (out, &s) in c.iter_mut().zip(&acc) {
                *out = TC::from_f32(s + beta * out.to_f32());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::gemm::gemm_ref;
    use crate::verify::{compare, from_f64, poison, random_vec, round_through, to_f64, Tolerance};
    use half::{bf16, f16};

    const ALL: [(Transpose, Transpose); 4] = [
        (Transpose::N, Transpose::N),
        (Transpose::N, Transpose::T),
        (Transpose::T, Transpose::N),
        (Transpose::T, Transpose::T),
    ];

    /// Runs the fast path on random inputs (rounded to `TA`/`TC`) and compares it with the f64
    /// reference run on the same rounded values. Returns the fast path's output.
    #[allow(clippy::too_many_arguments)]
    fn check<TA: Element, TC: Element>(
        seed: u64,
        (ta, tb): (Transpose, Transpose),
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        beta: f32,
        par: Par,
    ) -> Vec<TC> {
        let a64 = round_through::<TA>(&random_vec(seed, m * k, -1.0, 1.0));
        let b64 = round_through::<TA>(&random_vec(seed ^ 0x5555, k * n, -1.0, 1.0));
        let mut c: Vec<TC>;
        let mut want: Vec<f64>;
        if beta == 0.0 {
            c = vec![TC::default(); m * n];
            poison(&mut c);
            want = vec![f64::NAN; m * n];
        } else {
            want = round_through::<TC>(&random_vec(seed ^ 0xaaaa, m * n, -1.0, 1.0));
            c = from_f64(&want);
        }
        let (a, b): (Vec<TA>, Vec<TA>) = (from_f64(&a64), from_f64(&b64));
        gemm(ta, tb, m, n, k, alpha, &a, &b, beta, &mut c, par);
        gemm_ref(
            ta,
            tb,
            m,
            n,
            k,
            alpha as f64,
            &a64,
            &b64,
            beta as f64,
            &mut want,
        );
        // Each output is a k-term f32 dot product: its rounding error grows like sqrt(k)
        // (random walk), and entries that cancel to near zero need the absolute part scaled
        // the same way. A bf16/f16 C adds one rounding on store (`for_reduction` adds that).
        let tol = Tolerance::for_reduction(TC::DTYPE, k);
        let cmp = compare(&to_f64(&c), &want, tol);
        assert!(
            cmp.pass,
            "gemm {ta:?}{tb:?} m={m} n={n} k={k} alpha={alpha} beta={beta} {}->{}: {cmp}",
            TA::DTYPE,
            TC::DTYPE
        );
        c
    }

    const SHAPES: [(usize, usize, usize); 7] = [
        (1, 1, 1),
        (7, 5, 3),
        (1, 129, 7),
        (129, 7, 64),
        (64, 64, 64),
        (33, 1, 129),
        (65, 129, 31),
    ];

    #[test]
    fn f32_all_transposes_match_reference() {
        for (s, &shape) in SHAPES.iter().enumerate() {
            for (t, &tr) in ALL.iter().enumerate() {
                let seed = (s * 4 + t) as u64;
                check::<f32, f32>(seed, tr, shape, 1.0, 0.0, Par::Seq);
            }
        }
    }

    #[test]
    fn f32_alpha_beta() {
        for (t, &tr) in ALL.iter().enumerate() {
            check::<f32, f32>(100 + t as u64, tr, (17, 9, 129), 0.5, -1.25, Par::Seq);
            check::<f32, f32>(110 + t as u64, tr, (7, 64, 5), -2.0, 1.0, Par::Seq);
            check::<f32, f32>(120 + t as u64, tr, (64, 7, 1), 1.5, 0.0, Par::Seq);
        }
    }

    #[test]
    fn k_zero_scales_or_clears_c() {
        check::<f32, f32>(1, ALL[0], (7, 5, 0), 1.0, 0.0, Par::Seq);
        check::<f32, f32>(2, ALL[3], (7, 5, 0), 1.0, 2.0, Par::Seq);
        check::<bf16, bf16>(3, ALL[1], (3, 4, 0), 1.0, 0.0, Par::Seq);
        check::<bf16, f32>(4, ALL[2], (3, 4, 0), 1.0, -0.5, Par::Seq);
        let mut c = vec![f32::NAN; 6];
        gemm::<f32, f32>(
            Transpose::N,
            Transpose::N,
            2,
            3,
            0,
            1.0,
            &[],
            &[],
            0.0,
            &mut c,
            Par::Seq,
        );
        assert_eq!(c, vec![0.0; 6]);
        // Empty outputs are a no-op.
        gemm::<f32, f32>(
            Transpose::N,
            Transpose::N,
            0,
            3,
            4,
            1.0,
            &[],
            &[0.0; 12],
            0.0,
            &mut [],
            Par::Seq,
        );
    }

    #[test]
    fn bf16_in_f32_out() {
        for (t, &tr) in ALL.iter().enumerate() {
            check::<bf16, f32>(200 + t as u64, tr, (129, 7, 64), 1.0, 0.0, Par::Seq);
            check::<bf16, f32>(210 + t as u64, tr, (5, 33, 129), 0.75, 0.5, Par::Seq);
        }
    }

    #[test]
    fn bf16_in_bf16_out() {
        for (t, &tr) in ALL.iter().enumerate() {
            check::<bf16, bf16>(300 + t as u64, tr, (64, 64, 64), 1.0, 0.0, Par::Seq);
            check::<bf16, bf16>(310 + t as u64, tr, (7, 129, 33), -0.5, 0.75, Par::Seq);
        }
        check::<f16, f16>(320, ALL[1], (31, 17, 129), 1.0, 0.0, Par::Seq);
        check::<f16, f32>(321, ALL[2], (31, 17, 129), 1.0, 1.0, Par::Seq);
    }

    #[test]
    fn deterministic_and_parallel() {
        let par = Par::rayon(2);
        let x = check::<f32, f32>(400, ALL[1], (129, 129, 129), 1.0, 0.0, par);
        let y = check::<f32, f32>(400, ALL[1], (129, 129, 129), 1.0, 0.0, par);
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()));
        let x = check::<bf16, bf16>(401, ALL[2], (64, 129, 7), 1.0, 0.5, par);
        let y = check::<bf16, bf16>(401, ALL[2], (64, 129, 7), 1.0, 0.5, par);
        assert_eq!(x, y);
    }

    #[test]
    fn nan_in_a_propagates() {
        let (m, n, k) = (4, 5, 6);
        let mut a = from_f64::<f32>(&random_vec(9, m * k, -1.0, 1.0));
        let b = from_f64::<f32>(&random_vec(10, k * n, -1.0, 1.0));
        a[2 * k + 3] = f32::NAN; // row 2 of A
        let mut c = vec![0.0f32; m * n];
        gemm(
            Transpose::N,
            Transpose::N,
            m,
            n,
            k,
            1.0,
            &a,
            &b,
            0.0,
            &mut c,
            Par::Seq,
        );
        for i in 0..m {
            for j in 0..n {
                assert_eq!(
                    c[i * n + j].is_nan(),
                    i == 2,
                    "c[{i},{j}] = {}",
                    c[i * n + j]
                );
            }
        }
        // A NaN already in C propagates when beta != 0 (but is discarded when beta == 0, above).
        let mut c2 = vec![0.0f32; m * n];
        c2[7] = f32::NAN;
        gemm(
            Transpose::N,
            Transpose::N,
            m,
            n,
            k,
            1.0,
            &a,
            &b,
            1.0,
            &mut c2,
            Par::Seq,
        );
        assert!(c2[7].is_nan());
    }
}
