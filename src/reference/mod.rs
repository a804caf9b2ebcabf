//! Plain f64 references (`*_ref`) of every operator: the oracles that tests and `ferrotron check`
//! compare the fast paths and the CUDA kernels against. Simple loops, f64 accumulation, no tricks.

pub mod adamw;
pub mod bias_gelu;
pub mod cross_entropy;
pub mod gemm;
pub mod layernorm;
pub mod softmax;
