//! GEMM epilogue functors from the expression IR (see issue #10).
