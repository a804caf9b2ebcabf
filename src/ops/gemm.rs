//! GEMM: `C = alpha * op(A) * op(B) + beta * C`.

use super::launch::{enqueue_host, float_dispatch, prepare};
use super::validate;
use crate::backend::cpu::ops::gemm::{gemm as gemm_cpu, Transpose};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

/// GEMM arguments besides the operands.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    /// Whether A is stored transposed (`[k, m]` instead of `[m, k]`).
    pub ta: Transpose,
    /// Whether B is stored transposed (`[n, k]` instead of `[k, n]`).
    pub tb: Transpose,
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of the existing C; 0 overwrites C (a NaN in C does not leak through).
    pub beta: f32,
}

impl Default for Gemm {
    fn default() -> Self {
        Gemm {
            ta: Transpose::N,
            tb: Transpose::N,
            alpha: 1.0,
            beta: 0.0,
        }
    }
}

/// `c = alpha * op(a) * op(b) + beta * c`, row-major.
///
/// `a` and `b` share a float dtype (bf16 and f16 accumulate in f32); `c` is f32 or that dtype.
/// Shapes: `op(a)` is `[m, k]`, `op(b)` is `[k, n]`, `c` is `[m, n]`.
pub fn gemm(stream: &Stream, a: &Tensor, b: &Tensor, c: &mut Tensor, args: &Gemm) -> Result<()> {
    const OP: &str = "gemm";
    validate::rank(OP, "a", a, 2)?;
    validate::rank(OP, "b", b, 2)?;
    validate::rank(OP, "c", c, 2)?;
    for (n, t) in [("a", a), ("b", b), ("c", &*c)] {
        validate::nonzero(OP, n, t)?;
        validate::float(OP, n, t)?;
    }
    validate::dtype(OP, "b", b, a.dtype())?;
    if c.dtype() != DType::F32 && c.dtype() != a.dtype() {
        return Err(Error::DTypeMismatch {
            op: OP,
            what: "c (must be f32 or the dtype of a)".into(),
            expected: a.dtype(),
            got: c.dtype(),
        });
    }
    validate::finite(OP, "alpha", args.alpha)?;
    validate::finite(OP, "beta", args.beta)?;
    let (m, k) = match args.ta {
        Transpose::N => (a.dims()[0], a.dims()[1]),
        Transpose::T => (a.dims()[1], a.dims()[0]),
    };
    let (kb, n) = match args.tb {
        Transpose::N => (b.dims()[0], b.dims()[1]),
        Transpose::T => (b.dims()[1], b.dims()[0]),
    };
    if kb != k {
        return Err(Error::ShapeMismatch {
            op: OP,
            what: format!("inner dimension of op(b) (op(a) is [{m}, {k}])"),
            expected: vec![k, n],
            got: vec![kb, n],
        });
    }
    validate::shape(OP, "c", c, &[m, n])?;
    let reads = [("a", a), ("b", b)];
    let writes = [("c", &*c)];
    prepare(stream, OP, &reads, &writes)?;
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            let args = *args;
            let (ad, cd) = (a.dtype(), c.dtype());
            let threads = stream.device().config().threads;
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let par = match std::num::NonZeroUsize::new(threads) {
                    Some(t) if t.get() > 1 => faer::Par::Rayon(t),
                    _ => faer::Par::Seq,
                };
                let (r, mut w) = l.io();
                let out = &mut *w[0];
                float_dispatch!(ad, TA => {
                    let (av, bv) = (view::<TA>(r[0]), view::<TA>(r[1]));
                    if cd == DType::F32 {
                        gemm_cpu(args.ta, args.tb, m, n, k, args.alpha, av, bv, args.beta, view_mut::<f32>(out), par)
                    } else {
                        gemm_cpu(args.ta, args.tb, m, n, k, args.alpha, av, bv, args.beta, view_mut::<TA>(out), par)
                    }
                });
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}
