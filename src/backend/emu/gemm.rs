//! Launches of the sm_80 GEMM kernels (`kernels/gemm/gemm.cu`) on the emulator, with the same
//! parameter struct, kernel choice and launch shape as the CUDA backend
//! (`crate::backend::cuda::gemm::plan`).

use super::LaunchShape;
use crate::backend::cuda::gemm::{GemmPlan, MODULE};
use crate::kernels::abi::FtGemmParams;
use crate::stream::Stream;
use crate::tensor::Buffer;
use std::sync::Arc;

/// The bytes of the parameter struct, as the kernel's `.param` space holds them.
fn param_bytes(p: &FtGemmParams) -> Vec<u8> {
    let n = std::mem::size_of::<FtGemmParams>();
    // SAFETY: FtGemmParams is the `#[repr(C)]` plain-old-data struct bindgen made from
    // `kernels/include/ferrotron_params.h` (pointers and u64s, every field 8 bytes, no padding),
    // so all `n` bytes are initialised and reading them as `u8` is sound.
    let bytes = unsafe { std::slice::from_raw_parts((p as *const FtGemmParams).cast::<u8>(), n) };
    bytes.to_vec()
}

/// Enqueues `plan` with `p` on the emu stream; `keep` holds every operand's buffer alive until
/// the launch has run.
pub(crate) fn launch(stream: &Stream, plan: &GemmPlan, p: &FtGemmParams, keep: Vec<Arc<Buffer>>) {
    let dev = stream
        .device()
        .emu_state()
        .expect("emu stream on an emu device")
        .clone();
    let params = param_bytes(p);
    let function = plan.function.clone();
    let shape = LaunchShape {
        grid: plan.grid,
        block: plan.block,
        dynamic_shared: plan.dynamic_shared,
    };
    stream.push_host("gemm", move || {
        let _keep = keep;
        dev.launch_with(MODULE, &function, &params, shape)?;
        Ok(())
    });
}
