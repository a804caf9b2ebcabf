//! The shipped variants: the fused kernels and GEMM epilogues build.rs generates (issue #10).
