//! Softmax over the last dimension with an optional causal mask, forward and backward.
//!
//! CPU backend: `crate::backend::cpu::ops::softmax`; CUDA and emulated backends: the kernels of
//! `kernels/softmax/softmax.cu` (f32 and bf16, one block per row).

use super::launch::{enqueue_host, float_dispatch, prepare_kernel};
use super::validate;
use crate::backend::cpu::ops::softmax as cpu;
use crate::backend::cuda::layers::{self as dev, device_ptr};
use crate::device::BackendKind;
use crate::error::Result;
use crate::kernels::abi::{FtSoftmaxBwdParams, FtSoftmaxFwdParams};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

/// The kernel image of these ops.
const MODULE: &str = "softmax/softmax";

/// Whether `stream` runs its ops on the host (the CPU backend) rather than through a kernel.
fn on_host(stream: &Stream) -> bool {
    matches!(stream.imp(), StreamImpl::Cpu(_)) && stream.device().kind() != BackendKind::Emu
}

/// `(batch, rows, cols)` of a `[..., rows, cols]` tensor (rank 1 is one row).
fn dims3(t: &Tensor) -> (usize, usize, usize) {
    let d = t.dims();
    match d.len() {
        1 => (1, 1, d[0]),
        n => (d[..n - 2].iter().product(), d[n - 2], d[n - 1]),
    }
}

/// `y = softmax(scale * x)` over the last dimension. With `causal`, for a `[..., rows, cols]`
/// tensor position `(i, j)` is masked when `j > i + (cols - rows)` (the usual lower triangle when
/// `rows == cols`; a row with every position masked comes out all zero, never NaN).
pub fn softmax_fwd(
    stream: &Stream,
    x: &Tensor,
    y: &mut Tensor,
    scale: f32,
    causal: bool,
) -> Result<()> {
    const OP: &str = "softmax_fwd";
    validate::min_rank(OP, "x", x, if causal { 2 } else { 1 })?;
    validate::nonzero(OP, "x", x)?;
    validate::float(OP, "x", x)?;
    validate::finite(OP, "scale", scale)?;
    validate::shape(OP, "y", y, x.dims())?;
    validate::dtype(OP, "y", y, x.dtype())?;
    let (batch, rows, cols) = dims3(x);
    let reads = [("x", x)];
    let writes = [("y", &*y)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    if on_host(stream) {
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut w) = l.io();
            float_dispatch!(dtype, T => cpu::softmax_fwd::<T>(
                batch, rows, cols, scale, causal, view(r[0]), view_mut(&mut *w[0]),
            ));
            Ok(())
        });
        return Ok(());
    }
    let sfx = dev::suffix(OP, "x", dtype)?;
    let p = FtSoftmaxFwdParams {
        x: device_ptr(stream, x),
        y: device_ptr(stream, y),
        batch: batch as u64,
        rows: rows as u64,
        cols: cols as u64,
        scale,
        causal: causal as u32,
    };
    let launch = dev::rowwise(
        MODULE,
        format!("ft_softmax_fwd_{sfx}"),
        batch * rows,
        cols,
        1,
        1,
    );
    dev::run(stream, OP, launch, &p, &[x, y])
}

/// Backward of [`softmax_fwd`] from its output `y`: `dx = scale * y * (dy - sum(dy * y))`.
/// Masked positions have `y = 0` and so get `dx = 0`.
pub fn softmax_bwd(
    stream: &Stream,
    dy: &Tensor,
    y: &Tensor,
    dx: &mut Tensor,
    scale: f32,
) -> Result<()> {
    const OP: &str = "softmax_bwd";
    validate::min_rank(OP, "y", y, 1)?;
    validate::nonzero(OP, "y", y)?;
    validate::float(OP, "y", y)?;
    validate::finite(OP, "scale", scale)?;
    validate::shape(OP, "dy", dy, y.dims())?;
    validate::dtype(OP, "dy", dy, y.dtype())?;
    validate::shape(OP, "dx", dx, y.dims())?;
    validate::dtype(OP, "dx", dx, y.dtype())?;
    let (batch, rows, cols) = dims3(y);
    let reads = [("dy", dy), ("y", y)];
    let writes = [("dx", &*dx)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = y.dtype();
    if on_host(stream) {
        enqueue_host(stream, OP, &reads, &writes, move |l| {
            let (r, mut w) = l.io();
            float_dispatch!(dtype, T => cpu::softmax_bwd::<T>(
                batch, rows, cols, scale, view(r[0]), view(r[1]), view_mut(&mut *w[0]),
            ));
            Ok(())
        });
        return Ok(());
    }
    let sfx = dev::suffix(OP, "y", dtype)?;
    let p = FtSoftmaxBwdParams {
        dy: device_ptr(stream, dy),
        y: device_ptr(stream, y),
        dx: device_ptr(stream, dx),
        rows: (batch * rows) as u64,
        cols: cols as u64,
        scale,
        reserved: 0,
    };
    let launch = dev::rowwise(
        MODULE,
        format!("ft_softmax_bwd_{sfx}"),
        batch * rows,
        cols,
        2,
        1,
    );
    dev::run(stream, OP, launch, &p, &[dy, y, dx])
}
