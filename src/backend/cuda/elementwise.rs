//! Launches of the elementwise kernels in `kernels/elementwise/` (the code generator's shipped
//! variants launch through `crate::fused::launch`).

use super::driver_error;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::abi::FtBiasGeluFwdParams;
use crate::stream::Stream;
use crate::tensor::Tensor;
use cudarc::driver::{CudaStream, LaunchConfig, PushKernelArg};
use std::ffi::c_void;
use std::sync::Arc;

pub(crate) const MODULE: &str = "elementwise/bias_gelu";
pub(crate) const BLOCK: u32 = 256;

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
