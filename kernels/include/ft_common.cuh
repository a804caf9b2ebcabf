// ft_common.cuh: small device helpers shared by ferrotron's CUDA kernels.
//
// Conventions every kernel follows (so that the Rust launcher may pick any launch configuration):
//   - 1-D grids with grid-stride loops: any gridDim.x >= 1 and blockDim.x >= 1 gives the same
//     result; the launcher only tunes occupancy;
//   - 64-bit element indices (tensors may exceed 2^32 elements);
//   - loads widen to f32, arithmetic is f32, stores round once (round-to-nearest-even for bf16).
#pragma once

#include <stdint.h>
#include <cuda_bf16.h>

#include "ferrotron_params.h"

// This thread's index in the whole (1-D) grid.
__device__ __forceinline__ uint64_t ft_global_thread() {
    return (uint64_t)blockIdx.x * (uint64_t)blockDim.x + (uint64_t)threadIdx.x;
}

// Threads in the whole (1-D) grid: the stride of a grid-stride loop.
__device__ __forceinline__ uint64_t ft_grid_threads() {
    return (uint64_t)gridDim.x * (uint64_t)blockDim.x;
}

// Whether every bit of `mask` is clear in the address `p` (e.g. mask 3 = 4-byte aligned).
__device__ __forceinline__ bool ft_aligned(const void* p, uintptr_t mask) {
    return ((uintptr_t)p & mask) == 0;
}

// Tracks the column of a flattened row-major index along a grid-stride loop without a 64-bit
// division per element: one `%` when the loop starts, then an add and a compare per step.
// Requires cols > 0; i and stride may be anything.
struct FtColumnCursor {
    uint64_t col;   // column of the current index
    uint64_t step;  // stride % cols
    uint64_t cols;

    __device__ __forceinline__ FtColumnCursor(uint64_t index, uint64_t stride, uint64_t ncols)
        : col(index % ncols), step(stride % ncols), cols(ncols) {}

    // Moves to index + stride. col + step < 2 * cols, so one subtraction suffices.
    __device__ __forceinline__ void advance() {
        col += step;
        if (col >= cols) col -= cols;
    }
};

// Element loads / stores through f32, overloaded on the storage type.
__device__ __forceinline__ float ft_load_f32(const float* p, uint64_t i) { return p[i]; }
__device__ __forceinline__ float ft_load_f32(const __nv_bfloat16* p, uint64_t i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void ft_store_f32(float* p, uint64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void ft_store_f32(__nv_bfloat16* p, uint64_t i, float v) {
    p[i] = __float2bfloat16_rn(v);  // round to nearest even
}
