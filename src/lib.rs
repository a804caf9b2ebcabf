//! # ferrotron
//!
//! The low-level layer under model-parallel training: hand-written CUDA kernels, the collectives
//! and the parallel operators built on them, every one checked against a CPU reference.
//!
//! Layers, bottom to top (see `docs/` and the README):
//! - [`backend`]: where work runs: `cpu` (ranks are threads, the default) and `cuda` (real GPUs
//!   through `cudarc`, loaded dynamically so nothing links CUDA at build time).
//! - [`stream`]: explicit in-order streams and events on every backend, with checked mode
//!   (every buffer remembers its last writer; an unordered access is an error, never a race).
//! - [`tensor`]: a buffer on a device with a shape and a dtype, row-major.
//! - [`ops`]: the operators (GEMM, bias+GeLU, layernorm, softmax, cross-entropy, AdamW), each
//!   enqueued on a stream the caller names, with its f64 reference twin in [`mod@reference`].
//! - [`kernels`]: the CUDA images build.rs compiled from `kernels/`, and their parameter ABI.
#![warn(missing_docs)]

pub mod backend;
pub mod bench;
pub mod check;
pub mod comm;
pub mod device;
pub mod dtype;
pub mod error;
pub mod fused;
pub mod kernels;
pub mod model;
pub mod ops;
pub mod parallel;
pub mod reference;
pub mod shape;
pub mod stream;
pub mod tensor;
pub mod verify;

pub use device::{BackendKind, Device, DeviceConfig, MemoryUsage};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use shape::Shape;
pub use stream::{Event, Stream};
pub use tensor::Tensor;

/// The README's Rust examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
