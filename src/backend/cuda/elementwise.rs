//! Launches of the elementwise kernels in `kernels/elementwise/`, and of the code generator's
//! shipped fused kernels (`codegen::variants::fused`, the image `FUSED_MODULE`): the bias +
//! GeLU backward's `dx` is the generated `bias_gelu_bwd_<dtype>` variant.

use super::driver_error;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::abi::FtBiasGeluFwdParams;
use crate::stream::Stream;
use crate::tensor::Tensor;
use codegen::emit::Kernel;
use codegen::expr::Bcast;
use cudarc::driver::{CudaStream, LaunchConfig, PushKernelArg};
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

pub(crate) const MODULE: &str = "elementwise/bias_gelu";
pub(crate) const BLOCK: u32 = 256;

/// The embedded image of the code generator's shipped fused kernels (`codegen::variants::fused`,
/// compiled by build.rs from `OUT_DIR/generated/fused.cu`).
pub(crate) const FUSED_MODULE: &str = "generated/fused";

/// The generated kernel of the shipped fused variant `name` (e.g. `bias_gelu_bwd_bf16`),
/// emitted once per process: its entry point's name (a hash of the expression, the name build.rs
/// compiled), its parameter order and its launch shape.
///
/// # Errors
/// [`Error::KernelImageMissing`] when `codegen::variants::fused` has no such variant.
pub(crate) fn fused_kernel(name: &str) -> Result<&'static Kernel> {
    static KERNELS: OnceLock<Vec<(&'static str, Kernel)>> = OnceLock::new();
    KERNELS
        .get_or_init(|| {
            codegen::variants::fused()
                .iter()
                .map(|v| (v.name, v.kernel()))
                .collect()
        })
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, k)| k)
        .ok_or_else(|| Error::KernelImageMissing {
            name: format!("{FUSED_MODULE} (no variant {name})"),
        })
}

/// The device addresses of `k`'s pointer inputs in its parameter order, from `named`
/// (input name, address).
///
/// # Errors
/// [`Error::InvalidArgument`] when `named` lacks one of them.
pub(crate) fn fused_ptrs(op: &'static str, k: &Kernel, named: &[(&str, u64)]) -> Result<Vec<u64>> {
    k.inputs
        .iter()
        .filter(|(_, _, b)| *b != Bcast::Scalar)
        .map(|(n, _, _)| {
            named
                .iter()
                .find(|(m, _)| m == n)
                .map(|(_, a)| *a)
                .ok_or_else(|| {
                    Error::invalid(
                        op,
                        n.clone(),
                        format!("the generated kernel {} reads it; not given", k.name),
                    )
                })
        })
        .collect()
}

pub(crate) fn suffix(op: &'static str, dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => Err(Error::UnsupportedDType {
            op,
            what: "x on the cuda backend".into(),
            dtype: other,
        }),
    }
}

/// A grid-stride launch over `n` items: enough blocks to fill any current GPU, no more.
pub(crate) fn grid_for(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 4096) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launch<P: cudarc::driver::DeviceRepr>(
    stream: &Stream,
    s: &Arc<CudaStream>,
    function: &str,
    params: &P,
    cfg: LaunchConfig,
) -> Result<()> {
    let dev = stream
        .device()
        .cuda_state()
        .expect("cuda stream on a cuda device");
    let f = dev.function(MODULE, function)?;
    let mut b = s.launch_builder(&f);
    b.arg(params);
    // SAFETY: `params` is the #[repr(C)] struct the kernel takes by value (one ABI header, see
    // `crate::kernels::abi`); every pointer in it addresses a live buffer of the element count
    // the op layer validated, and those buffers stay alive until this stream is past the kernel
    // (`CudaMem`'s Drop orders the free after every user stream).
    unsafe { b.launch(cfg) }
        .map_err(|e| driver_error(&format!("cuLaunchKernel({function})"), e))?;
    Ok(())
}

fn ptr(s: &Arc<CudaStream>, t: &Tensor) -> *mut c_void {
    t.buffer().cuda().ptr(s) as usize as *mut c_void
}

/// `y = gelu(x + bias)` on the GPU.
pub(crate) fn bias_gelu_fwd(
    stream: &Stream,
    s: &Arc<CudaStream>,
    x: &Tensor,
    bias: &Tensor,
    y: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let sfx = suffix("bias_gelu_fwd", x.dtype())?;
    let p = FtBiasGeluFwdParams {
        x: ptr(s, x),
        bias: ptr(s, bias),
        y: ptr(s, y),
        rows: rows as u64,
        cols: cols as u64,
    };
    launch(
        stream,
        s,
        &format!("ft_bias_gelu_fwd_{sfx}"),
        &p,
        grid_for(rows * cols),
    )
}

/// `dx = dy * gelu'(x + bias)` on the GPU: the generated `bias_gelu_bwd_<dtype>` variant (with
/// dbias, the op runs the fused one-pass kernels of `kernels/elementwise/bias_gelu.cu`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bias_gelu_bwd(
    stream: &Stream,
    s: &Arc<CudaStream>,
    dy: &Tensor,
    x: &Tensor,
    bias: &Tensor,
    dx: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let sfx = suffix("bias_gelu_bwd", x.dtype())?;
    // dx: the generated fused kernel `dy * gelu'(x + bias[c])`.
    let k = fused_kernel(&format!("bias_gelu_bwd_{sfx}"))?;
    let addr = |t: &Tensor| t.buffer().cuda().ptr(s);
    let mut args = fused_ptrs(
        "bias_gelu_bwd",
        k,
        &[("dy", addr(dy)), ("x", addr(x)), ("bias", addr(bias))],
    )?;
    args.extend([addr(dx), rows as u64, cols as u64]);
    let dev = stream
        .device()
        .cuda_state()
        .expect("cuda stream on a cuda device");
    let f = dev.function(FUSED_MODULE, &k.name)?;
    let (grid, block, shared) = k.launch(rows, cols);
    let cfg = LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (block, 1, 1),
        shared_mem_bytes: shared,
    };
    let mut b = s.launch_builder(&f);
    for a in &args {
        b.arg(a);
    }
    // SAFETY: the generated kernel takes its pointer inputs (dy, x, bias, in `k.inputs` order),
    // the output pointer and rows, cols as 8-byte values, exactly `args` (`Kernel::params`'s
    // ABI); each pointer addresses a live buffer of the shape the op layer validated, which
    // stays alive until this stream is past the kernel (`CudaMem`'s Drop orders the free).
    unsafe { b.launch(cfg) }
        .map_err(|e| driver_error(&format!("cuLaunchKernel({})", k.name), e))?;
    Ok(())
}
