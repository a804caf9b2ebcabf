//! The code generator without MLIR: plain Rust that writes CUDA C.
//!
//! A fused elementwise computation is described once, with a small builder API over an
//! expression graph ([`expr`]):
//!
//! ```
//! use codegen::expr::{gelu, Graph, Bcast, Dtype};
//! let g = Graph::new();
//! let x = g.input("x", Dtype::Bf16, Bcast::Full);
//! let b = g.input("b", Dtype::Bf16, Bcast::Row);
//! let s = g.input("s", Dtype::F32, Bcast::Scalar);
//! let y = gelu(&x + &b) * &s;
//! let kernel = codegen::emit::elementwise(&y, Dtype::Bf16);
//! assert!(kernel.source.contains("__global__"));
//! ```
//!
//! and yields three things that agree with each other:
//! - [`emit`]: one readable CUDA C kernel (grid-stride loop, broadcasting by index, f32 math,
//!   one rounding on store) whose name is a stable hash of the expression;
//! - [`eval`]: the CPU evaluator of the same graph in f64, the oracle the kernel is tested
//!   against;
//! - [`cache`] and `run` (feature `emu`, on by default): nvcc to sm_80 PTX (cached on disk) and ptx-emu, so a generated kernel is checked against the
//!   evaluator on any machine ([`parse`] reads expressions from text for the command line);
//! - the graph itself, simplified as it is built: constants fold, and structurally equal
//!   subexpressions are one node (common-subexpression elimination by hash-consing), so the
//!   emitted code computes each value once, deterministically.

pub mod cache;
pub mod emit;
pub mod epilogue;
pub mod eval;
pub mod expr;
pub mod parse;
#[cfg(feature = "emu")]
pub mod run;
pub mod variants;
