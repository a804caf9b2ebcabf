//! Layer normalisation over the last dimension, forward and backward.

use super::launch::{enqueue_host, float_dispatch, prepare};
use super::validate;
use crate::backend::cpu::ops::layernorm as cpu;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

fn check_x_gamma(op: &'static str, x: &Tensor, gamma: &Tensor) -> Result<(usize, usize)> {
    validate::min_rank(op, "x", x, 1)?;
    validate::nonzero(op, "x", x)?;
    validate::float(op, "x", x)?;
    let cols = x.shape().last();
    validate::shape(op, "gamma", gamma, &[cols])?;
    validate::dtype(op, "gamma", gamma, x.dtype())?;
    Ok((x.shape().rows(), cols))
}

fn check_stats(op: &'static str, rows: usize, mean: &Tensor, rstd: &Tensor) -> Result<()> {
    validate::shape(op, "mean", mean, &[rows])?;
    validate::dtype(op, "mean", mean, DType::F32)?;
    validate::shape(op, "rstd", rstd, &[rows])?;
    validate::dtype(op, "rstd", rstd, DType::F32)
}

/// `y = (x - mean) * rstd * gamma + beta` over the last dimension; also writes the per-row
/// `mean` and `rstd = 1 / sqrt(var + eps)` (f32, biased variance) for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd(
    stream: &Stream,
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f32,
    y: &mut Tensor,
    mean: &mut Tensor,
    rstd: &mut Tensor,
) -> Result<()> {
    const OP: &str = "layernorm_fwd";
    let (rows, cols) = check_x_gamma(OP, x, gamma)?;
    validate::shape(OP, "beta", beta, &[cols])?;
    validate::dtype(OP, "beta", beta, x.dtype())?;
    validate::shape(OP, "y", y, x.dims())?;
    validate::dtype(OP, "y", y, x.dtype())?;
    check_stats(OP, rows, mean, rstd)?;
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(Error::invalid(
            OP,
            "eps",
            format!("{eps} must be positive and finite"),
        ));
    }
    let reads = [("x", x), ("gamma", gamma), ("beta", beta)];
    let writes = [("y", &*y), ("mean", &*mean), ("rstd", &*rstd)];
    prepare(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                let [yd, md, rd] = &mut w[..] else {
                    unreachable!("three outputs")
                };
                float_dispatch!(dtype, T => cpu::layernorm_fwd::<T>(
                    rows, cols, view(r[0]), view(r[1]), view(r[2]), eps,
                    view_mut(yd), view_mut(md), view_mut(rd),
                ));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}

/// Backward of [`layernorm_fwd`]: `dx`, and the parameter gradients `dgamma`, `dbeta` (summed
/// over rows in a fixed order).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    stream: &Stream,
    dy: &Tensor,
    x: &Tensor,
    gamma: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dx: &mut Tensor,
    dgamma: &mut Tensor,
    dbeta: &mut Tensor,
) -> Result<()> {
    const OP: &str = "layernorm_bwd";
    let (rows, cols) = check_x_gamma(OP, x, gamma)?;
    validate::shape(OP, "dy", dy, x.dims())?;
    validate::dtype(OP, "dy", dy, x.dtype())?;
    check_stats(OP, rows, mean, rstd)?;
    validate::shape(OP, "dx", dx, x.dims())?;
    validate::dtype(OP, "dx", dx, x.dtype())?;
    for (n, t) in [("dgamma", &*dgamma), ("dbeta", &*dbeta)] {
        validate::shape(OP, n, t, &[cols])?;
        validate::dtype(OP, n, t, x.dtype())?;
    }
    let reads = [
        ("dy", dy),
        ("x", x),
        ("gamma", gamma),
        ("mean", mean),
        ("rstd", rstd),
    ];
    let writes = [("dx", &*dx), ("dgamma", &*dgamma), ("dbeta", &*dbeta)];
    prepare(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    match stream.imp() {
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                let [dxd, dgd, dbd] = &mut w[..] else {
                    unreachable!("three outputs")
                };
                float_dispatch!(dtype, T => cpu::layernorm_bwd::<T>(
                    rows, cols, view(r[0]), view(r[1]), view(r[2]), view(r[3]), view(r[4]),
                    view_mut(dxd), view_mut(dgd), view_mut(dbd),
                ));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(_) => Err(super::unsupported(OP, stream)),
    }
}
