//! CPU fast paths of every operator, on plain row-major slices. Each has an f64 twin in
//! [`crate::reference`] that tests compare against.

pub mod adamw;
pub mod bias_gelu;
pub mod cross_entropy;
pub mod gemm;
pub mod layernorm;
pub mod softmax;
