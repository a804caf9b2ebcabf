//! f64 reference GEMM: `C = alpha * op(A) * op(B) + beta * C`, row-major, simple loops.

use crate::backend::cpu::ops::gemm::Transpose;

/// Reference GEMM in f64: `C[m,n] = alpha * op(A) * op(B) + beta * C`.
///
/// `a` is stored `[m, k]` when `ta` is [`Transpose::N`] and `[k, m]` when it is
/// [`Transpose::T`]; `b` is stored `[k, n]` (N) or `[n, k]` (T); `c` is `[m, n]`. All row-major.
/// When `beta == 0`, `C` is overwritten without being read (a NaN in `C` does not leak).
/// `k == 0` gives `C = beta * C`.
///
/// # Panics
/// If a slice is shorter than its shape needs.
#[allow(clippy::too_many_arguments)]
pub fn gemm_ref(
    ta: Transpose,
    tb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    b: &[f64],
    beta: f64,
    c: &mut [f64],
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    let a_at = |i: usize, p: usize| match ta {
        Transpose::N => a[i * k + p],
        Transpose::T => a[p * m + i],
    };
    let b_at = |p: usize, j: usize| match tb {
        Transpose::N => b[p * n + j],
        Transpose::T => b[j * k + p],
    };
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a_at(i, p) * b_at(p, j);
            }
            let out = &mut c[i * n + j];
            *out = if beta == 0.0 {
                alpha * acc
            } else {
                alpha * acc + beta * *out
            };
        }
    }
}

/// The epilogue of [`gemm_epilogue_ref`] (the f64 twin of [`crate::ops::Epilogue`]).
#[derive(Clone, Copy, Debug)]
pub enum RefEpilogue<'a> {
    /// `c = acc`.
    None,
    /// `c = acc + bias[j]` (`bias` is `[n]`).
    Bias(&'a [f64]),
    /// `c = gelu(acc + bias[j])` (`bias` is `[n]`); the pre-activation goes to `pre_out`.
    BiasGelu(&'a [f64]),
    /// `c = acc * gelu'(pre[i, j])` (`pre` is `[m, n]`).
    DGelu(&'a [f64]),
}

/// Reference GEMM with a fused epilogue, in f64: `acc = alpha * op(A) * op(B) + beta * C` as in
/// [`gemm_ref`], then `C = epilogue(acc)` per element. GeLU is
/// [`crate::reference::bias_gelu::gelu_ref`] / `gelu_grad_ref` (tanh approximation).
///
/// For [`RefEpilogue::BiasGelu`], `pre_out` (when given, `[m, n]`) receives `acc + bias[j]`.
///
/// # Panics
/// If a slice is shorter than its shape needs.
#[allow(clippy::too_many_arguments)]
pub fn gemm_epilogue_ref(
    ta: Transpose,
    tb: Transpose,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f64],
    b: &[f64],
    beta: f64,
    c: &mut [f64],
    epilogue: RefEpilogue<'_>,
    mut pre_out: Option<&mut [f64]>,
) {
    use crate::reference::bias_gelu::{gelu_grad_ref, gelu_ref};
    gemm_ref(ta, tb, m, n, k, alpha, a, b, beta, c);
    for i in 0..m {
        for j in 0..n {
            let idx = i * n + j;
            let acc = c[idx];
            c[idx] = match epilogue {
                RefEpilogue::None => acc,
                RefEpilogue::Bias(bias) => acc + bias[j],
                RefEpilogue::BiasGelu(bias) => {
                    let z = acc + bias[j];
                    if let Some(p) = pre_out.as_deref_mut() {
                        p[idx] = z;
                    }
                    gelu_ref(z)
                }
                RefEpilogue::DGelu(pre) => acc * gelu_grad_ref(pre[idx]),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_known_values() {
        // A = [[1, 2], [3, 4]], B = [[5, 6], [7, 8]]: A*B = [[19, 22], [43, 50]].
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0];
        let mut c = [f64::NAN; 4];
        gemm_ref(
            Transpose::N,
            Transpose::N,
            2,
            2,
            2,
            1.0,
            &a,
            &b,
            0.0,
            &mut c,
        );
        assert_eq!(c, [19.0, 22.0, 43.0, 50.0]);
        // A^T stored: [[1, 3], [2, 4]] as T gives the same product.
        let at = [1.0, 3.0, 2.0, 4.0];
        let bt = [5.0, 7.0, 6.0, 8.0];
        let mut c2 = [1.0; 4];
        gemm_ref(
            Transpose::T,
            Transpose::T,
            2,
            2,
            2,
            2.0,
            &at,
            &bt,
            1.0,
            &mut c2,
        );
        assert_eq!(c2, [39.0, 45.0, 87.0, 101.0]);
        // k == 0: C = beta * C.
        let mut c3 = [2.0; 4];
        gemm_ref(
            Transpose::N,
            Transpose::N,
            2,
            2,
            0,
            1.0,
            &[],
            &[],
            0.5,
            &mut c3,
        );
        assert_eq!(c3, [1.0; 4]);
    }
}
