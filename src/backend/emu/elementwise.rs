//! Launches of the elementwise kernels (`kernels/elementwise/`) and of the code generator's
//! shipped fused kernels on the emulator, with the same parameters and launch shapes as the CUDA
//! backend.

use crate::backend::cuda::elementwise::{
    fused_kernel, fused_ptrs, grid_for, suffix, BLOCK, FUSED_MODULE, MODULE,
};
use crate::error::Result;
use crate::kernels::abi::FtBiasGeluFwdParams;
use crate::stream::Stream;
use crate::tensor::Tensor;
use std::ffi::c_void;
use std::sync::Arc;

/// The bytes of a kernel parameter struct, as the kernel's `.param` space holds them.
fn param_bytes<P: Copy>(p: &P) -> Vec<u8> {
    let n = std::mem::size_of::<P>();
    // SAFETY: `P` is one of the `#[repr(C)]` plain-old-data parameter structs bindgen made from
    // `kernels/include/ferrotron_params.h` (pointers and u64s, no padding bytes: every field is
    // 8 bytes), so all `n` bytes are initialised and reading them as `u8` is sound.
    let bytes = unsafe { std::slice::from_raw_parts((p as *const P).cast::<u8>(), n) };
    bytes.to_vec()
}

fn ptr(t: &Tensor) -> *mut c_void {
    t.buffer().emu().addr() as usize as *mut c_void
}

/// One launch: image, entry point, parameter bytes, grid and block (1-D).
type EmuLaunch = (&'static str, String, Vec<u8>, u32, u32);

fn enqueue(
    stream: &Stream,
    op: &'static str,
    launches: Vec<EmuLaunch>,
    keep: Vec<Arc<crate::tensor::Buffer>>,
) {
    let dev = stream
        .device()
        .emu_state()
        .expect("emu stream on an emu device")
        .clone();
    stream.push_host(op, move || {
        let _keep = keep;
        for (module, function, params, grid, block) in &launches {
            dev.launch(module, function, params, *grid, *block)?;
        }
        Ok(())
    });
}

/// `y = gelu(x + bias)` on the emulator.
pub(crate) fn bias_gelu_fwd(
    stream: &Stream,
    x: &Tensor,
    bias: &Tensor,
    y: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let sfx = suffix("bias_gelu_fwd", x.dtype())?;
    let p = FtBiasGeluFwdParams {
        x: ptr(x),
        bias: ptr(bias),
        y: ptr(y),
        rows: rows as u64,
        cols: cols as u64,
    };
    let launches = vec![(
        MODULE,
        format!("ft_bias_gelu_fwd_{sfx}"),
        param_bytes(&p),
        grid_for(rows * cols).grid_dim.0,
        BLOCK,
    )];
    let keep = [x, bias, y].iter().map(|t| t.buffer().clone()).collect();
    enqueue(stream, "bias_gelu_fwd", launches, keep);
    Ok(())
}

/// `dx = dy * gelu'(x + bias)` on the emulator, as on the GPU (with dbias, the op runs the fused
/// one-pass kernels).
#[allow(clippy::too_many_arguments)]
pub(crate) fn bias_gelu_bwd(
    stream: &Stream,
    dy: &Tensor,
    x: &Tensor,
    bias: &Tensor,
    dx: &Tensor,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let sfx = suffix("bias_gelu_bwd", x.dtype())?;
    let mut launches = Vec::new();
    let keep: Vec<_> = [dy, x, bias, dx]
        .iter()
        .map(|t| t.buffer().clone())
        .collect();
    // dx: the generated fused kernel `dy * gelu'(x + bias[c])`, as on the GPU.
    let k = fused_kernel(&format!("bias_gelu_bwd_{sfx}"))?;
    let addr = |t: &Tensor| t.buffer().emu().addr();
    let ptrs = fused_ptrs(
        "bias_gelu_bwd",
        k,
        &[("dy", addr(dy)), ("x", addr(x)), ("bias", addr(bias))],
    )?;
    let (grid, block, _) = k.launch(rows, cols);
    launches.push((
        FUSED_MODULE,
        k.name.clone(),
        k.params(&ptrs, addr(dx), rows as u64, cols as u64, &[]),
        grid,
        block,
    ));
    enqueue(stream, "bias_gelu_bwd", launches, keep);
    Ok(())
}
