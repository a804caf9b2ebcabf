//! Launches of the sm_80 GEMM kernels in `kernels/gemm/gemm.cu`, and the kernel choice shared
//! with the emulator (`plan`): which entry point, which tile, which grid.

use super::driver_error;
use crate::dtype::DType;
use crate::error::Result;
use crate::kernels::abi::FtGemmParams;
use crate::stream::Stream;
use cudarc::driver::{CudaStream, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// The embedded image of `kernels/gemm/gemm.cu`.
pub(crate) const MODULE: &str = "gemm/gemm";

/// Operand layout of a device GEMM (see `kernels/gemm/gemm.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `a [m, k]`, `b` stored `[n, k]`.
    Nt,
    /// `a [m, k]`, `b [k, n]`.
    Nn,
    /// `a` stored `[k, m]`, `b [k, n]`.
    Tn,
}

impl Layout {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Layout::Nt => "nt",
            Layout::Nn => "nn",
            Layout::Tn => "tn",
        }
    }
}

/// The compile-time epilogue of a device GEMM kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KernelEpilogue {
    None,
    Bias,
    BiasGelu,
    DGelu,
    Accum,
}

impl KernelEpilogue {
    pub(crate) fn name(self) -> &'static str {
        match self {
            KernelEpilogue::None => "none",
            KernelEpilogue::Bias => "bias",
            KernelEpilogue::BiasGelu => "bias_gelu",
            KernelEpilogue::DGelu => "dgelu",
            KernelEpilogue::Accum => "accum",
        }
    }
}

/// Whether `gemm.cu` instantiates `layout` x `epilogue` x output dtype: whether the code
/// generator's list of shipped GEMM kernels (`codegen::variants::GEMM_INSTANCES`, from which
/// build.rs generates gemm.cu's entry points) has it.
pub(crate) fn instantiated(layout: Layout, epi: KernelEpilogue, out: DType) -> bool {
    let out = match out {
        DType::BF16 => codegen::expr::Dtype::Bf16,
        DType::F32 => codegen::expr::Dtype::F32,
        _ => return false,
    };
    codegen::variants::GEMM_INSTANCES
        .iter()
        .any(|i| i.layout == layout.name() && i.epilogue == epi.name() && i.out == out)
}

/// One of the three tile variants of every kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tile {
    /// 128 x 128 x 32, 8 warps, cp.async.
    Large,
    /// 64 x 64 x 32, 4 warps, cp.async.
    Small,
    /// 64 x 64 x 32, 4 warps, bounds-checked scalar loads (any alignment).
    Unaligned,
}

impl Tile {
    fn dims(self) -> (u32, u32, u32) {
        // (BM, BN, threads)
        match self {
            Tile::Large => (128, 128, 256),
            Tile::Small | Tile::Unaligned => (64, 64, 128),
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Tile::Large => "",
            Tile::Small => "_small",
            Tile::Unaligned => "_unaligned",
        }
    }
}

/// Shared-memory stages of the kernels' cp.async pipeline (`STAGES` in gemm.cu).
const STAGES: u32 = 3;
/// K depth of a block tile (`BK` in gemm.cu).
const BK: u32 = 32;

/// What to launch for one GEMM: the entry point and its launch shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GemmPlan {
    pub function: String,
    pub tile: Tile,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: u32,
}

/// Picks the kernel for `m x n x k` (all >= 1) with operand base addresses `a_addr`, `b_addr`.
///
/// The cp.async variants need the contiguous dimension of both operands to be a multiple of 8
/// bf16 (16 bytes) and 16-byte aligned bases; otherwise the `_unaligned` variant. The 128 x 128
/// tile is used when both M and N fill at least one such tile, else the 64 x 64 one (TP shards
/// with a small M or N). Grid: x over N tiles, y over M tiles.
#[allow(clippy::too_many_arguments)]
pub(crate) fn plan(
    layout: Layout,
    epi: KernelEpilogue,
    out: DType,
    m: usize,
    n: usize,
    k: usize,
    a_addr: u64,
    b_addr: u64,
) -> Result<GemmPlan> {
    let out_name = match out {
        DType::BF16 => "bf16",
        DType::F32 => "f32",
        other => {
            return Err(crate::Error::UnsupportedDType {
                op: "gemm",
                what: "c on a device backend (bf16 or f32)".into(),
                dtype: other,
            })
        }
    };
    let (a_contig, b_contig) = match layout {
        Layout::Nt => (k, k),
        Layout::Nn => (k, n),
        Layout::Tn => (m, n),
    };
    let aligned = a_contig % 8 == 0 && b_contig % 8 == 0 && a_addr % 16 == 0 && b_addr % 16 == 0;
    let tile = if !aligned {
        Tile::Unaligned
    } else if m >= 128 && n >= 128 {
        Tile::Large
    } else {
        Tile::Small
    };
    let (bm, bn, threads) = tile.dims();
    let gx = n.div_ceil(bn as usize);
    let gy = m.div_ceil(bm as usize);
    let too_big = |what: &str| {
        crate::Error::invalid(
            "gemm",
            what.to_string(),
            format!("{m} x {n} needs more CTAs than a grid dimension holds"),
        )
    };
    let gx = u32::try_from(gx).map_err(|_| too_big("n"))?;
    let gy = u32::try_from(gy)
        .ok()
        .filter(|&g| g <= 65535)
        .ok_or_else(|| too_big("m"))?;
    Ok(GemmPlan {
        function: format!(
            "ft_gemm_{}_{}_{}{}",
            layout.name(),
            epi.name(),
            out_name,
            tile.suffix()
        ),
        tile,
        grid: [gx, gy, 1],
        block: [threads, 1, 1],
        dynamic_shared: STAGES * (bm + bn) * BK * 2,
    })
}

/// The kernel's parameters (device addresses as `u64`; 0 for an unused pointer).
#[allow(clippy::too_many_arguments)]
pub(crate) fn params(
    a: u64,
    b: u64,
    c: u64,
    bias: u64,
    pre: u64,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
) -> FtGemmParams {
    FtGemmParams {
        alpha,
        reserved: 0,
        a: a as usize as *const _,
        b: b as usize as *const _,
        c: c as usize as *mut _,
        bias: bias as usize as *const _,
        pre: pre as usize as *mut _,
        m: m as u64,
        n: n as u64,
        k: k as u64,
    }
}

/// Launches `plan` with `p` on the GPU stream `s`.
pub(crate) fn launch(
    stream: &Stream,
    s: &Arc<CudaStream>,
    plan: &GemmPlan,
    p: &FtGemmParams,
) -> Result<()> {
    let dev = stream
        .device()
        .cuda_state()
        .expect("cuda stream on a cuda device");
    let f = dev.function(MODULE, &plan.function)?;
    let cfg = LaunchConfig {
        grid_dim: (plan.grid[0], plan.grid[1], plan.grid[2]),
        block_dim: (plan.block[0], plan.block[1], plan.block[2]),
        shared_mem_bytes: plan.dynamic_shared,
    };
    let mut b = s.launch_builder(&f);
    b.arg(p);
    // SAFETY: `p` is the #[repr(C)] FtGemmParams the kernel takes by value (one ABI header, see
    // `crate::kernels::abi`); every non-null pointer in it addresses a live buffer of the shape
    // the op layer validated for this plan's layout, and those buffers stay alive until this
    // stream is past the kernel (`CudaMem`'s Drop orders the free after every user stream). The
    // dynamic shared memory (at most 48 KiB) needs no opt-in attribute.
    unsafe { b.launch(cfg) }
        .map_err(|e| driver_error(&format!("cuLaunchKernel({})", plan.function), e))?;
    Ok(())
}
