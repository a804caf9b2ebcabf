// ft_rows.cuh: helpers of the row-wise kernels (layernorm, softmax, cross-entropy): block-wide
// reductions and the shared-memory row cache.
//
// Row kernels run one block per row (grid-stride over rows: any gridDim.x >= 1), with blockDim.x
// a multiple of 32 (the launcher uses 256). Thread t owns columns t, t + blockDim.x, ... of every
// row, so a value a thread caches in shared memory is only read back by that same thread: the
// row cache needs no barrier. The reductions are deterministic: each warp reduces with a fixed
// butterfly, then every thread adds the warp totals in warp order.
#pragma once

#include "ft_common.cuh"

// Dynamic shared memory a row kernel may use for its row cache. The launcher passes
// `arrays * cols * 4` bytes when that is at most this bound (then the kernel caches), else 0
// (then the kernel reads global memory again instead). Mirrored in Rust
// (`ROW_CACHE_BYTES` in src/backend/cuda/layers.rs).
#define FT_ROW_CACHE_BYTES 45056u

extern __shared__ float ft_row_cache[];

// Whether `arrays` f32 arrays of `cols` elements fit the row cache.
__device__ __forceinline__ bool ft_row_cached(uint64_t cols, uint64_t arrays) {
    return cols * arrays * 4u <= (uint64_t)FT_ROW_CACHE_BYTES;
}

__device__ __forceinline__ float ft_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float ft_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum of `v` over the block; every thread gets the same value. `scratch` is a __shared__
// float[32]. Every thread of the block must call it (it contains barriers).
__device__ __forceinline__ float ft_block_sum(float v, float* scratch) {
    v = ft_warp_sum(v);
    const unsigned warps = blockDim.x >> 5;
    __syncthreads();  // the previous reduction's readers are done with scratch
    if ((threadIdx.x & 31u) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.0f;
    for (unsigned w = 0; w < warps; ++w) t += scratch[w];
    return t;
}

// Maximum of `v` over the block (see ft_block_sum).
__device__ __forceinline__ float ft_block_max(float v, float* scratch) {
    v = ft_warp_max(v);
    const unsigned warps = blockDim.x >> 5;
    __syncthreads();
    if ((threadIdx.x & 31u) == 0) scratch[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = -INFINITY;
    for (unsigned w = 0; w < warps; ++w) t = fmaxf(t, scratch[w]);
    return t;
}
