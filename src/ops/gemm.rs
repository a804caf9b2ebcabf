//! GEMM: `C = alpha * op(A) * op(B) + beta * C`, optionally with a fused epilogue (bias, bias +
//! GeLU, GeLU backward): the CPU fast path everywhere, the sm_80 kernels of `kernels/gemm/` on
//! CUDA and the emulator.

use super::launch::{enqueue_host, float_dispatch, prepare, prepare_kernel};
use super::validate;
use crate::backend::cpu::ops::bias_gelu as cpu_gelu;
use crate::backend::cpu::ops::gemm::{gemm as gemm_cpu, Transpose};
use crate::backend::cuda::gemm as cuda;
use crate::backend::emu::gemm as emu;
use crate::device::BackendKind;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, HostData, Tensor};

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

/// The fused epilogue of [`gemm_epilogue`], applied to `acc = alpha * op(a) * op(b) + beta * c`
/// per element `(i, j)` of the `[m, n]` output before it is rounded (once) to `c`'s dtype.
///
/// `bias` and `pre` have `c`'s dtype. GeLU is Megatron's tanh approximation (the same formula
/// as [`crate::ops::bias_gelu_fwd`]).
#[derive(Debug)]
pub enum Epilogue<'a> {
    /// `c = acc`.
    None,
    /// `c = acc + bias[j]`; `bias` is `[n]`.
    Bias(&'a Tensor),
    /// `c = gelu(acc + bias[j])`, and when `pre` is given it is written with the pre-activation
    /// `acc + bias[j]` (`[m, n]`, what the backward's [`Epilogue::DGelu`] reads).
    BiasGelu {
        /// `[n]`.
        bias: &'a Tensor,
        /// Written: `[m, n]`, the pre-activation.
        pre: Option<&'a mut Tensor>,
    },
    /// `c = acc * gelu'(pre[i, j])`: the GeLU backward fused into the dgrad GEMM.
    DGelu {
        /// Read: `[m, n]`, the forward's pre-activation.
        pre: &'a Tensor,
    },
}

impl Epilogue<'_> {
    fn name(&self) -> &'static str {
        match self {
            Epilogue::None => "none",
            Epilogue::Bias(_) => "bias",
            Epilogue::BiasGelu { .. } => "bias_gelu",
            Epilogue::DGelu { .. } => "dgelu",
        }
    }
}

/// `c = alpha * op(a) * op(b) + beta * c`, row-major.
///
/// `a` and `b` share a float dtype (bf16 and f16 accumulate in f32); `c` is f32 or that dtype.
/// Shapes: `op(a)` is `[m, k]`, `op(b)` is `[k, n]`, `c` is `[m, n]`. The same as
/// [`gemm_epilogue`] with [`Epilogue::None`]; see there for what the device backends support.
pub fn gemm(stream: &Stream, a: &Tensor, b: &Tensor, c: &mut Tensor, args: &Gemm) -> Result<()> {
    gemm_epilogue(stream, a, b, c, args, Epilogue::None)
}

/// Checks operands and arguments; returns `(m, n, k)`.
fn validate_gemm(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
    args: &Gemm,
) -> Result<(usize, usize, usize)> {
    validate::rank(op, "a", a, 2)?;
    validate::rank(op, "b", b, 2)?;
    validate::rank(op, "c", c, 2)?;
    for (n, t) in [("a", a), ("b", b), ("c", c)] {
        validate::nonzero(op, n, t)?;
        validate::float(op, n, t)?;
    }
    validate::dtype(op, "b", b, a.dtype())?;
    if c.dtype() != DType::F32 && c.dtype() != a.dtype() {
        return Err(Error::DTypeMismatch {
            op,
            what: "c (must be f32 or the dtype of a)".into(),
            expected: a.dtype(),
            got: c.dtype(),
        });
    }
    validate::finite(op, "alpha", args.alpha)?;
    validate::finite(op, "beta", args.beta)?;
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
            op,
            what: format!("inner dimension of op(b) (op(a) is [{m}, {k}])"),
            expected: vec![k, n],
            got: vec![kb, n],
        });
    }
    validate::shape(op, "c", c, &[m, n])?;
    Ok((m, n, k))
}

/// [`Error::Unsupported`] naming the backend and what it lacks.
fn device_unsupported(op: &'static str, stream: &Stream, why: &str) -> Error {
    Error::Unsupported {
        op,
        backend: format!("{} ({why})", stream.device().kind()),
    }
}

/// `c = epilogue(alpha * op(a) * op(b) + beta * c)`, row-major: [`gemm`] with a fused
/// [`Epilogue`].
///
/// Shapes and dtypes as in [`gemm`]; `bias` is `[n]` and `pre` is `[m, n]`, both of `c`'s
/// dtype. Every written tensor (`c`, a `BiasGelu` `pre`) is recorded as a write in checked mode.
///
/// Backends:
/// - CPU: everything (any float dtypes, alpha, beta, transposes, epilogue); the GEMM runs in f32
///   and the epilogue is an f32 pass over the result, rounded once to the output dtype.
/// - CUDA and the emulator (the sm_80 kernels of `kernels/gemm/gemm.cu`): bf16 `a`/`b`, bf16 or
///   f32 `c`, any finite `alpha`; layouts (`ta`, `tb`) = (N, T) with `None`/`Bias`/`BiasGelu`,
///   (N, N) with `None`/`DGelu`, (T, N) with `None`, plus `beta == 1` with an f32 `c` and
///   `None` on (T, N) (weight-gradient accumulation, `c += alpha op(a) op(b)`) and on (N, T)
///   (a residual added in place, `c += alpha a b^T`); otherwise `beta == 0`. The instantiated
///   set is `codegen::variants::GEMM_INSTANCES`.
///
/// # Errors
/// Shape, rank, dtype, device and aliasing problems are typed errors naming the operand
/// ([`Error::ShapeMismatch`], [`Error::DTypeMismatch`], ...); a combination a device backend
/// does not implement (non-bf16 operands, beta, layout, epilogue) is
/// [`Error::Unsupported`], whose `backend` says what is missing.
pub fn gemm_epilogue(
    stream: &Stream,
    a: &Tensor,
    b: &Tensor,
    c: &mut Tensor,
    args: &Gemm,
    epilogue: Epilogue<'_>,
) -> Result<()> {
    const OP: &str = "gemm";
    let (m, n, k) = validate_gemm(OP, a, b, c, args)?;
    let cd = c.dtype();
    match &epilogue {
        Epilogue::None => {}
        Epilogue::Bias(bias) => {
            validate::shape(OP, "bias", bias, &[n])?;
            validate::dtype(OP, "bias", bias, cd)?;
        }
        Epilogue::BiasGelu { bias, pre } => {
            validate::shape(OP, "bias", bias, &[n])?;
            validate::dtype(OP, "bias", bias, cd)?;
            if let Some(p) = pre.as_deref() {
                validate::shape(OP, "pre", p, &[m, n])?;
                validate::dtype(OP, "pre", p, cd)?;
            }
        }
        Epilogue::DGelu { pre } => {
            validate::shape(OP, "pre", pre, &[m, n])?;
            validate::dtype(OP, "pre", pre, cd)?;
        }
    }
    let mut reads: Vec<(&str, &Tensor)> = vec![("a", a), ("b", b)];
    let mut writes: Vec<(&str, &Tensor)> = vec![("c", &*c)];
    match &epilogue {
        Epilogue::None => {}
        Epilogue::Bias(bias) => reads.push(("bias", bias)),
        Epilogue::BiasGelu { bias, pre } => {
            reads.push(("bias", bias));
            if let Some(p) = pre.as_deref() {
                writes.push(("pre", p));
            }
        }
        Epilogue::DGelu { pre } => reads.push(("pre", pre)),
    }
    match stream.imp() {
        StreamImpl::Cpu(_) if stream.device().kind() == BackendKind::Cpu => {
            prepare(stream, OP, &reads, &writes)?;
            cpu_gemm_epilogue(stream, &reads, &writes, args, &epilogue, m, n, k, cd);
            Ok(())
        }
        _ => {
            let (layout, kepi) = device_kernel(OP, stream, a, c, args, &epilogue)?;
            prepare_kernel(stream, OP, &reads, &writes)?;
            let (bias, pre): (Option<&Tensor>, Option<&Tensor>) = match &epilogue {
                Epilogue::None => (None, None),
                Epilogue::Bias(bias) => (Some(bias), None),
                Epilogue::BiasGelu { bias, pre } => (Some(bias), pre.as_deref()),
                Epilogue::DGelu { pre } => (None, Some(pre)),
            };
            match stream.imp() {
                StreamImpl::Cuda(s) => {
                    let addr = |t: &Tensor| t.buffer().cuda().ptr(s);
                    let plan = cuda::plan(layout, kepi, cd, m, n, k, addr(a), addr(b))?;
                    let p = cuda::params(
                        addr(a),
                        addr(b),
                        addr(c),
                        bias.map_or(0, addr),
                        pre.map_or(0, addr),
                        m,
                        n,
                        k,
                        args.alpha,
                    );
                    cuda::launch(stream, s, &plan, &p)
                }
                StreamImpl::Cpu(_) => {
                    let addr = |t: &Tensor| t.buffer().emu().addr();
                    let plan = cuda::plan(layout, kepi, cd, m, n, k, addr(a), addr(b))?;
                    let p = cuda::params(
                        addr(a),
                        addr(b),
                        addr(c),
                        bias.map_or(0, addr),
                        pre.map_or(0, addr),
                        m,
                        n,
                        k,
                        args.alpha,
                    );
                    let keep = reads
                        .iter()
                        .chain(&writes)
                        .map(|(_, t)| t.buffer().clone())
                        .collect();
                    emu::launch(stream, &plan, &p, keep);
                    Ok(())
                }
            }
        }
    }
}

/// The device kernel for these arguments, or the typed error saying why there is none.
fn device_kernel(
    op: &'static str,
    stream: &Stream,
    a: &Tensor,
    c: &Tensor,
    args: &Gemm,
    epilogue: &Epilogue<'_>,
) -> Result<(cuda::Layout, cuda::KernelEpilogue)> {
    if a.dtype() != DType::BF16 {
        let why = format!("a and b must be bf16, got {}", a.dtype().name());
        return Err(device_unsupported(op, stream, &why));
    }
    let layout = match (args.ta, args.tb) {
        (Transpose::N, Transpose::T) => cuda::Layout::Nt,
        (Transpose::N, Transpose::N) => cuda::Layout::Nn,
        (Transpose::T, Transpose::N) => cuda::Layout::Tn,
        (Transpose::T, Transpose::T) => {
            return Err(device_unsupported(op, stream, "ta = T with tb = T"))
        }
    };
    let kepi = if args.beta == 0.0 {
        match epilogue {
            Epilogue::None => cuda::KernelEpilogue::None,
            Epilogue::Bias(_) => cuda::KernelEpilogue::Bias,
            Epilogue::BiasGelu { .. } => cuda::KernelEpilogue::BiasGelu,
            Epilogue::DGelu { .. } => cuda::KernelEpilogue::DGelu,
        }
    } else if args.beta == 1.0 {
        if c.dtype() != DType::F32 {
            return Err(device_unsupported(op, stream, "beta == 1 needs an f32 c"));
        }
        if !matches!(epilogue, Epilogue::None) {
            return Err(device_unsupported(
                op,
                stream,
                "beta == 1 with a fused epilogue",
            ));
        }
        cuda::KernelEpilogue::Accum
    } else {
        return Err(device_unsupported(op, stream, "beta other than 0 or 1"));
    };
    if !cuda::instantiated(layout, kepi, c.dtype()) {
        let why = format!(
            "no {} kernel with the {} epilogue{} and a {} c",
            layout.name(),
            epilogue.name(),
            if kepi == cuda::KernelEpilogue::Accum {
                " and beta == 1"
            } else {
                ""
            },
            c.dtype().name()
        );
        return Err(device_unsupported(op, stream, &why));
    }
    Ok((layout, kepi))
}

/// Widens a host tensor's data to f32.
fn to_f32_vec(dtype: DType, d: &HostData) -> Vec<f32> {
    float_dispatch!(dtype, T => view::<T>(d).iter().map(|v| v.to_f32()).collect())
}

/// Rounds `src` into the host tensor `d` of `dtype`.
fn store_f32(dtype: DType, d: &mut HostData, src: &[f32]) {
    float_dispatch!(dtype, T => {
        for (o, &v) in view_mut::<T>(d).iter_mut().zip(src) {
            *o = T::from_f32(v);
        }
    })
}

/// The CPU path: faer's GEMM (f32 accumulation), then the epilogue in f32.
#[allow(clippy::too_many_arguments)]
fn cpu_gemm_epilogue(
    stream: &Stream,
    reads: &[(&str, &Tensor)],
    writes: &[(&str, &Tensor)],
    args: &Gemm,
    epilogue: &Epilogue<'_>,
    m: usize,
    n: usize,
    k: usize,
    cd: DType,
) {
    let args = *args;
    let ad = reads[0].1.dtype();
    let threads = stream.device().config().threads;
    #[derive(Clone, Copy)]
    enum Kind {
        None,
        Bias,
        BiasGelu { pre: bool },
        DGelu,
    }
    let kind = match epilogue {
        Epilogue::None => Kind::None,
        Epilogue::Bias(_) => Kind::Bias,
        Epilogue::BiasGelu { pre, .. } => Kind::BiasGelu { pre: pre.is_some() },
        Epilogue::DGelu { .. } => Kind::DGelu,
    };
    enqueue_host(stream, "gemm", reads, writes, move |l| {
        let par = match std::num::NonZeroUsize::new(threads) {
            Some(t) if t.get() > 1 => faer::Par::Rayon(t),
            _ => faer::Par::Seq,
        };
        let (r, mut w) = l.io();
        if let Kind::None = kind {
            let out = &mut *w[0];
            float_dispatch!(ad, TA => {
                let (av, bv) = (view::<TA>(r[0]), view::<TA>(r[1]));
                if cd == DType::F32 {
                    gemm_cpu(args.ta, args.tb, m, n, k, args.alpha, av, bv, args.beta, view_mut::<f32>(out), par)
                } else {
                    gemm_cpu(args.ta, args.tb, m, n, k, args.alpha, av, bv, args.beta, view_mut::<TA>(out), par)
                }
            });
            return Ok(());
        }
        // acc = alpha * op(a) op(b) + beta * c, in an f32 scratch.
        let mut acc = if args.beta != 0.0 {
            to_f32_vec(cd, &*w[0])
        } else {
            vec![0.0f32; m * n]
        };
        float_dispatch!(ad, TA => {
            let (av, bv) = (view::<TA>(r[0]), view::<TA>(r[1]));
            gemm_cpu(args.ta, args.tb, m, n, k, args.alpha, av, bv, args.beta, &mut acc[..], par)
        });
        let mut out = vec![0.0f32; m * n];
        match kind {
            Kind::None => unreachable!("handled above"),
            Kind::Bias => {
                let bias = to_f32_vec(cd, r[2]);
                for (orow, arow) in out.chunks_mut(n).zip(acc.chunks(n)) {
                    for ((o, &x), &bv) in orow.iter_mut().zip(arow).zip(&bias) {
                        *o = x + bv;
                    }
                }
            }
            Kind::BiasGelu { pre } => {
                let bias = to_f32_vec(cd, r[2]);
                if pre {
                    let mut z = vec![0.0f32; m * n];
                    for (zrow, arow) in z.chunks_mut(n).zip(acc.chunks(n)) {
                        for ((o, &x), &bv) in zrow.iter_mut().zip(arow).zip(&bias) {
                            *o = x + bv;
                        }
                    }
                    store_f32(cd, &mut *w[1], &z);
                }
                cpu_gelu::bias_gelu_fwd::<f32>(m, n, &acc, &bias, &mut out);
            }
            Kind::DGelu => {
                let pre = to_f32_vec(cd, r[2]);
                let zeros = vec![0.0f32; n];
                cpu_gelu::bias_gelu_bwd::<f32>(m, n, &acc, &pre, &zeros, &mut out, None);
            }
        }
        store_f32(cd, &mut *w[0], &out);
        Ok(())
    });
}
