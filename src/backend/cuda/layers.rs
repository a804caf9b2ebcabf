//! Launch shapes and launches of the layer kernels (`kernels/elementwise/residual.cu`,
//! `kernels/norm/`, `kernels/softmax/`, `kernels/loss/`, `kernels/optim/`), for the CUDA backend
//! and, through [`run`], the emulator (which runs the same PTX with the same parameter structs
//! and launch shapes).

use super::driver_error;
use crate::device::BackendKind;
use crate::error::{Error, Result};
use crate::stream::{Stream, StreamImpl};
use crate::tensor::Tensor;
use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use std::ffi::c_void;
use std::sync::Arc;

/// Threads per block of every layer kernel (a multiple of 32, as the row kernels require).
pub(crate) const BLOCK: u32 = 256;

/// Dynamic shared memory a row kernel may use for its row cache; mirrors `FT_ROW_CACHE_BYTES`
/// in `kernels/include/ft_rows.cuh`.
pub(crate) const ROW_CACHE_BYTES: usize = 45056;

/// Rows a layernorm block covers at least (its gamma / beta are loaded once per block).
const LAYERNORM_ROWS_PER_BLOCK: usize = 32;

/// Rows one `bias_add` thread covers; mirrors `FT_BIAS_ROWS` in `residual.cu`.
const BIAS_ROWS: usize = 32;

/// One kernel launch: image, entry point and 1-D shape.
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    /// The kernel image (`<family>/<name>`).
    pub module: &'static str,
    /// The entry point.
    pub function: String,
    /// Blocks.
    pub grid: u32,
    /// Threads per block.
    pub block: u32,
    /// Dynamic shared memory bytes.
    pub shared: u32,
}

/// The kernel-name suffix of a float dtype the kernels support.
pub(crate) fn suffix(
    op: &'static str,
    what: &str,
    dtype: crate::dtype::DType,
) -> Result<&'static str> {
    match dtype {
        crate::dtype::DType::F32 => Ok("f32"),
        crate::dtype::DType::BF16 => Ok("bf16"),
        other => Err(Error::UnsupportedDType {
            op,
            what: format!("{what} on a device backend"),
            dtype: other,
        }),
    }
}

/// A grid-stride launch over `items` work items.
pub(crate) fn flat(module: &'static str, function: String, items: usize) -> Launch {
    Launch {
        module,
        function,
        grid: items.div_ceil(BLOCK as usize).clamp(1, 4096) as u32,
        block: BLOCK,
        shared: 0,
    }
}

/// A row kernel's launch: one block per row (at most 4096 blocks, each covering at least
/// `rows_per_block` rows), with the row cache for `arrays` f32 arrays of `cols` when it fits.
pub(crate) fn rowwise(
    module: &'static str,
    function: String,
    rows: usize,
    cols: usize,
    arrays: usize,
    rows_per_block: usize,
) -> Launch {
    let bytes = cols.saturating_mul(arrays).saturating_mul(4);
    Launch {
        module,
        function,
        grid: rows.div_ceil(rows_per_block.max(1)).clamp(1, 4096) as u32,
        block: BLOCK,
        shared: if bytes <= ROW_CACHE_BYTES {
            bytes as u32
        } else {
            0
        },
    }
}

/// The `bias_add` launch (items: one per column (pair) and `BIAS_ROWS`-row chunk).
pub(crate) fn bias_add_items(rows: usize, cols: usize, pairs: bool) -> usize {
    let c = if pairs { cols / 2 } else { cols };
    rows.div_ceil(BIAS_ROWS) * c
}

/// Rows per block of the layernorm forward launch.
pub(crate) fn layernorm_rows_per_block() -> usize {
    LAYERNORM_ROWS_PER_BLOCK
}

/// Rows per block of the fused layernorm backward: each block writes and the dparams kernel
/// reads back an f32 partial dgamma and dbeta row, `16 / (64 * 3 * size)` of the ideal traffic
/// (4.2% in bf16, 2.1% in f32; at 32 rows it was 8.3%).
pub(crate) fn layernorm_bwd_rows_per_block() -> usize {
    2 * LAYERNORM_ROWS_PER_BLOCK
}

/// The bytes of a kernel parameter struct, as the kernel's `.param` space holds them.
pub(crate) fn param_bytes<P: DeviceRepr + Copy>(p: &P) -> Vec<u8> {
    let n = std::mem::size_of::<P>();
    // SAFETY: `P` is one of the `#[repr(C)]` parameter structs bindgen made from
    // `kernels/include/ferrotron_params.h`, which are padding-free by construction (8-byte
    // pointers and u64s, 4-byte floats / u32s in even counts with explicit `reserved` fields),
    // so all `n` bytes are initialised and reading them as `u8` is sound.
    let bytes = unsafe { std::slice::from_raw_parts((p as *const P).cast::<u8>(), n) };
    bytes.to_vec()
}

/// The device address of `t` for a kernel on `stream` (CUDA or emulated device).
pub(crate) fn device_ptr(stream: &Stream, t: &Tensor) -> *mut c_void {
    match stream.imp() {
        StreamImpl::Cuda(s) => t.buffer().cuda().ptr(s) as usize as *mut c_void,
        StreamImpl::Cpu(_) => t.buffer().emu().addr() as usize as *mut c_void,
    }
}

/// Launches `launch` with `params` on a CUDA stream.
pub(crate) fn launch_cuda<P: DeviceRepr>(
    stream: &Stream,
    s: &Arc<CudaStream>,
    launch: &Launch,
    params: &P,
) -> Result<()> {
    let dev = stream
        .device()
        .cuda_state()
        .expect("cuda stream on a cuda device");
    let f = dev.function(launch.module, &launch.function)?;
    let cfg = LaunchConfig {
        grid_dim: (launch.grid, 1, 1),
        block_dim: (launch.block, 1, 1),
        shared_mem_bytes: launch.shared,
    };
    let mut b = s.launch_builder(&f);
    b.arg(params);
    // SAFETY: `params` is the #[repr(C)] struct the kernel takes by value (one ABI header, see
    // `crate::kernels::abi`); every pointer in it addresses a live buffer of the element count
    // the op layer validated, kept alive until this stream is past the kernel (`CudaMem`'s Drop
    // orders the free after every user stream); the dynamic shared memory is below 48 KiB.
    unsafe { b.launch(cfg) }
        .map_err(|e| driver_error(&format!("cuLaunchKernel({})", launch.function), e))?;
    Ok(())
}

/// Enqueues `launch` with the parameters `params` on `stream`: a CUDA launch, or an emulated one
/// on an emu device (`tensors` are kept alive until it has run). Plain CPU streams never get
/// here (the ops run their host path).
pub(crate) fn run<P: DeviceRepr + Copy>(
    stream: &Stream,
    op: &'static str,
    launch: Launch,
    params: &P,
    tensors: &[&Tensor],
) -> Result<()> {
    match stream.imp() {
        StreamImpl::Cuda(s) => launch_cuda(stream, s, &launch, params),
        StreamImpl::Cpu(_) => {
            debug_assert_eq!(stream.device().kind(), BackendKind::Emu);
            let keep = tensors.iter().map(|t| t.buffer().clone()).collect();
            crate::backend::emu::layers::launch(
                stream,
                op,
                vec![(launch, param_bytes(params))],
                keep,
            );
            Ok(())
        }
    }
}

/// The cross-entropy launch with its out-of-range-target flag on a CUDA stream: allocates the
/// flag (0xFFFFFFFF), lets `build` put its address into the parameters, launches, then copies
/// the flag back and **synchronizes the stream** so that a bad target fails this call with
/// [`Error::IndexOutOfRange`] (like the CPU backend's check, but immediately).
pub(crate) fn run_cuda_flagged<P: DeviceRepr>(
    stream: &Stream,
    s: &Arc<CudaStream>,
    op: &'static str,
    launch: &Launch,
    targets: &Tensor,
    classes: usize,
    build: impl FnOnce(*mut c_void) -> P,
) -> Result<()> {
    let dev = stream
        .device()
        .cuda_state()
        .expect("cuda stream on a cuda device");
    let flag = dev.alloc(4, 0xff)?;
    let p = build(flag.ptr(s) as usize as *mut c_void);
    launch_cuda(stream, s, launch, &p)?;
    let mut bytes = [0u8; 4];
    flag.download(s, &mut bytes)?;
    s.synchronize()
        .map_err(|e| driver_error("cuStreamSynchronize", e))?;
    let position = u32::from_le_bytes(bytes);
    if position == u32::MAX {
        return Ok(());
    }
    let mut t = vec![0u8; targets.numel() * 4];
    targets.buffer().cuda().download(s, &mut t)?;
    s.synchronize()
        .map_err(|e| driver_error("cuStreamSynchronize", e))?;
    Err(bad_target(op, &t, position as usize, classes))
}

/// The [`Error::IndexOutOfRange`] of the target at `position` of the little-endian i32 bytes
/// `targets`.
pub(crate) fn bad_target(
    op: &'static str,
    targets: &[u8],
    position: usize,
    classes: usize,
) -> Error {
    let i = position * 4;
    let index = targets
        .get(i..i + 4)
        .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
        .unwrap_or(-1);
    Error::IndexOutOfRange {
        op,
        position,
        index,
        classes,
    }
}
