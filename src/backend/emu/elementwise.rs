//! Launches of the elementwise kernels (`kernels/elementwise/`) on the emulator, with the same
//! parameter structs and launch shapes as the CUDA backend.

use crate::backend::cuda::elementwise::{grid_for, suffix, BLOCK, MODULE};
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
    let (function, params) = (format!("ft_bias_gelu_fwd_{sfx}"), param_bytes(&p));
    let grid = grid_for(rows * cols).grid_dim.0;
    let keep: Vec<Arc<crate::tensor::Buffer>> =
        [x, bias, y].iter().map(|t| t.buffer().clone()).collect();
    let dev = stream
        .device()
        .emu_state()
        .expect("emu stream on an emu device")
        .clone();
    stream.push_host("bias_gelu_fwd", move || {
        let _keep = keep;
        dev.launch(MODULE, &function, &params, grid, BLOCK)
            .map(|_| ())
    });
    Ok(())
}
