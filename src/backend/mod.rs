//! Where work runs. The operators in [`crate::ops`] validate their operands once and then hand
//! the work to one of these backends.
//!
//! - [`cpu`]: host memory, streams are worker threads; fast paths in [`cpu::ops`] with f64
//!   twins in [`crate::reference`].
//! - [`cuda`]: a GPU through `cudarc` (driver API loaded at run time), running the kernels that
//!   build.rs compiled from `kernels/`.
//! - [`emu`]: the CUDA backend's model over ptx-emu: the same kernels, their PTX interpreted on
//!   the CPU with sanitizer checks.

pub mod cpu;
pub mod cuda;
pub mod emu;
