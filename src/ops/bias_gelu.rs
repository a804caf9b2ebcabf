//! Fused bias + GeLU (tanh approximation, Megatron's constants), forward and backward.

use super::launch::{enqueue_host, float_dispatch, prepare_kernel};
use super::validate;
use crate::backend::cpu::ops::bias_gelu as cpu;
use crate::backend::cuda::elementwise as cuda;
use crate::backend::cuda::layers::{self as dev, device_ptr};
use crate::backend::emu::elementwise as emu;
use crate::device::BackendKind;
use crate::error::Result;
use crate::fused::launch;
use crate::kernels::abi::FtBiasGeluBwdDbiasParams;
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{view, view_mut, Tensor};

fn check_x_bias(op: &'static str, x: &Tensor, bias: &Tensor) -> Result<(usize, usize)> {
    validate::min_rank(op, "x", x, 1)?;
    validate::nonzero(op, "x", x)?;
    validate::float(op, "x", x)?;
    let cols = x.shape().last();
    validate::shape(op, "bias", bias, &[cols])?;
    validate::dtype(op, "bias", bias, x.dtype())?;
    Ok((x.shape().rows(), cols))
}

/// `y = gelu(x + bias)`, `bias` broadcast along the last dimension of `x`.
pub fn bias_gelu_fwd(stream: &Stream, x: &Tensor, bias: &Tensor, y: &mut Tensor) -> Result<()> {
    const OP: &str = "bias_gelu_fwd";
    let (rows, cols) = check_x_bias(OP, x, bias)?;
    validate::shape(OP, "y", y, x.dims())?;
    validate::dtype(OP, "y", y, x.dtype())?;
    let reads = [("x", x), ("bias", bias)];
    let writes = [("y", &*y)];
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    match stream.imp() {
        StreamImpl::Cpu(_) if stream.device().kind() == BackendKind::Emu => {
            emu::bias_gelu_fwd(stream, x, bias, y, rows, cols)
        }
        StreamImpl::Cpu(_) => {
            enqueue_host(stream, OP, &reads, &writes, move |l| {
                let (r, mut w) = l.io();
                float_dispatch!(dtype, T => cpu::bias_gelu_fwd::<T>(
                    rows, cols, view(r[0]), view(r[1]), view_mut(&mut *w[0])
                ));
                Ok(())
            });
            Ok(())
        }
        StreamImpl::Cuda(s) => cuda::bias_gelu_fwd(stream, s, x, bias, y, rows, cols),
    }
}

/// Backward of [`bias_gelu_fwd`]: `dx = dy * gelu'(x + bias)` and, when given,
/// `dbias = sum over rows of dx` (fixed summation order: deterministic).
pub fn bias_gelu_bwd(
    stream: &Stream,
    dy: &Tensor,
    x: &Tensor,
    bias: &Tensor,
    dx: &mut Tensor,
    dbias: Option<&mut Tensor>,
) -> Result<()> {
    const OP: &str = "bias_gelu_bwd";
    let (rows, cols) = check_x_bias(OP, x, bias)?;
    validate::shape(OP, "dy", dy, x.dims())?;
    validate::dtype(OP, "dy", dy, x.dtype())?;
    validate::shape(OP, "dx", dx, x.dims())?;
    validate::dtype(OP, "dx", dx, x.dtype())?;
    if let Some(db) = dbias.as_deref() {
        validate::shape(OP, "dbias", db, &[cols])?;
        validate::dtype(OP, "dbias", db, x.dtype())?;
    }
    let reads = [("dy", dy), ("x", x), ("bias", bias)];
    let mut writes: Vec<(&str, &Tensor)> = vec![("dx", &*dx)];
    if let Some(db) = dbias.as_deref() {
        writes.push(("dbias", db));
    }
    prepare_kernel(stream, OP, &reads, &writes)?;
    let dtype = x.dtype();
    let device =
        !matches!(stream.imp(), StreamImpl::Cpu(_)) || stream.device().kind() == BackendKind::Emu;
    if let (true, Some(db)) = (device, dbias.as_deref()) {
        return bwd_dbias_on_device(stream, dy, x, bias, dx, db, rows, cols);
    }
    if device {
        // dx alone: the code generator's shipped variant `dy * gelu'(x + bias[c])`.
        let sfx = dev::suffix(OP, "x", dtype)?;
        let k = launch::shipped(&format!("bias_gelu_bwd_{sfx}"))?;
        let inputs = launch::in_order(OP, k, &reads)?;
        let code = launch::Code::Image(launch::SHIPPED_MODULE);
        return launch::launch(stream, OP, code, k, &inputs, dx, rows, cols, &[]);
    }
    enqueue_host(stream, OP, &reads, &writes, move |l| {
        let (r, mut w) = l.io();
        let mut outs = w.iter_mut();
        let dxd = outs.next().expect("dx");
        let dbd = outs.next();
        float_dispatch!(dtype, T => cpu::bias_gelu_bwd::<T>(
            rows, cols, view(r[0]), view(r[1]), view(r[2]), view_mut(dxd),
            dbd.map(|d| view_mut::<T>(d)),
        ));
        Ok(())
    });
    Ok(())
}

/// Rows per chunk of the fused backward: its f32 partial sums cost `8 / (3 * 64 * size)` of the
/// ideal traffic (about 2% in bf16), and `rows / 64` chunks give the GPU enough threads.
const DBIAS_CHUNK_ROWS: usize = 64;

/// The fused backward with dbias on a CUDA or emulated device: one pass over dy and x writes dx
/// and per-chunk f32 column sums, then a small kernel adds the chunks in order into dbias.
#[allow(clippy::too_many_arguments)]
fn bwd_dbias_on_device(
    stream: &Stream,
    dy: &Tensor,
    x: &Tensor,
    bias: &Tensor,
    dx: &Tensor,
    dbias: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "bias_gelu_bwd";
    const MODULE: &str = "elementwise/bias_gelu";
    let sfx = dev::suffix(OP, "x", x.dtype())?;
    let chunks = rows.div_ceil(DBIAS_CHUNK_ROWS);
    // `[chunks, cols]` f32 partial sums, in the stream's scratch.
    let partial = stream.scratch_f32(chunks.max(1) * cols)?;
    let p = FtBiasGeluBwdDbiasParams {
        dy: device_ptr(stream, dy),
        x: device_ptr(stream, x),
        bias: device_ptr(stream, bias),
        dx: device_ptr(stream, dx),
        dbias: device_ptr(stream, dbias),
        partial: device_ptr(stream, &partial),
        rows: rows as u64,
        cols: cols as u64,
        chunk_rows: DBIAS_CHUNK_ROWS as u64,
        chunks: chunks as u64,
    };
    let all = [dy, x, bias, dx, dbias, &partial];
    let fused = dev::flat(
        MODULE,
        format!("ft_bias_gelu_bwd_dbias_{sfx}"),
        chunks * cols,
    );
    dev::run(stream, OP, fused, &p, &all)?;
    let reduce = dev::flat(MODULE, format!("ft_bias_gelu_dbias_reduce_{sfx}"), cols);
    dev::run(stream, OP, reduce, &p, &all)
}
