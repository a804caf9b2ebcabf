//! Layer normalisation over the last dimension, forward and backward.
//!
//! CPU backend: `crate::backend::cpu::ops::layernorm`; CUDA and emulated backends: the kernels
//! of `kernels/norm/layernorm.cu` (f32 and bf16), one block per row with f32 statistics, and a
//! deterministic (fixed-order, atomic-free) dgamma / dbeta.

use super::launch::{enqueue_host, float_dispatch, prepare_kernel};
use super::validate;
use crate::backend::cpu::ops::layernorm as cpu;
use crate::backend::cuda::layers::{self as dev, device_ptr};
use crate::device::BackendKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::abi::{FtLayerNormBwdParams, FtLayerNormFwdParams};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

/// The kernel image of these ops.
const MODULE: &str = "norm/layernorm";

/// The widest rows of the fused backward: `FT_LN_COLS_PER_THREAD * FT_LN_BWD_BLOCK` in
/// `kernels/norm/layernorm.cu` (the launch's block is [`dev::BLOCK`] = 256).
const BWD_FUSED_MAX_COLS: usize = 32 * 256;

/// Whether `stream` runs its ops on the host (the CPU backend) rather than through a kernel.
fn on_host(stream: &Stream) -> bool {
    matches!(stream.imp(), StreamImpl::Cpu(_)) && stream.device().kind() != BackendKind::Emu
}

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
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    if on_host(stream) {
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
        return Ok(());
    }
    let sfx = dev::suffix(OP, "x", dtype)?;
    let p = FtLayerNormFwdParams {
        x: device_ptr(stream, x),
        gamma: device_ptr(stream, gamma),
        beta: device_ptr(stream, beta),
        y: device_ptr(stream, y),
        mean: device_ptr(stream, mean),
        rstd: device_ptr(stream, rstd),
        rows: rows as u64,
        cols: cols as u64,
        eps,
        reserved: 0,
    };
    let launch = dev::rowwise(
        MODULE,
        format!("ft_layernorm_fwd_{sfx}"),
        rows,
        cols,
        3,
        dev::layernorm_rows_per_block(),
    );
    dev::run(stream, OP, launch, &p, &[x, gamma, beta, y, mean, rstd])
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
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    if on_host(stream) {
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
        return Ok(());
    }
    let sfx = dev::suffix(OP, "x", dtype)?;
    let dx_launch = dev::rowwise(
        MODULE,
        format!("ft_layernorm_bwd_{sfx}"),
        rows,
        cols,
        3,
        dev::layernorm_bwd_rows_per_block(),
    );
    // Fused path: the dx kernel also leaves per-block partial dgamma / dbeta (f32, in a scratch
    // tensor) that the dparams kernel adds up in block order; rows wider than one block's
    // register accumulators use the unfused dparams kernel (which re-reads dy and x).
    let fused = cols <= BWD_FUSED_MAX_COLS;
    let partials = if fused {
        let blocks = dx_launch.grid as usize;
        // `[blocks, 2 * cols]` f32 partials, in the stream's scratch.
        Some(stream.scratch_f32(blocks * 2 * cols)?)
    } else {
        None
    };
    let p = FtLayerNormBwdParams {
        dy: device_ptr(stream, dy),
        x: device_ptr(stream, x),
        gamma: device_ptr(stream, gamma),
        mean: device_ptr(stream, mean),
        rstd: device_ptr(stream, rstd),
        dx: device_ptr(stream, dx),
        dgamma: device_ptr(stream, dgamma),
        dbeta: device_ptr(stream, dbeta),
        partials: partials
            .as_ref()
            .map_or(std::ptr::null_mut(), |t| device_ptr(stream, t)),
        rows: rows as u64,
        cols: cols as u64,
        partial_blocks: if fused { dx_launch.grid as u64 } else { 0 },
    };
    let mut all = vec![dy, x, gamma, mean, rstd, &*dx, &*dgamma, &*dbeta];
    if let Some(t) = partials.as_ref() {
        all.push(t);
    }
    dev::run(stream, OP, dx_launch, &p, &all)?;
    let dparams = dev::flat(MODULE, format!("ft_layernorm_dparams_{sfx}"), cols);
    dev::run(stream, OP, dparams, &p, &all)
}
