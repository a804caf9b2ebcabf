// cross_entropy.cu: cross-entropy of logits against int32 class indices, forward and backward.
//
// Entry points (extern "C", parameter struct BY VALUE, FtCrossEntropyParams):
//   ft_cross_entropy_fwd_f32 / _bf16   losses[r] = (max - l[t]) + ln(sum exp(l - max))  (f32)
//   ft_cross_entropy_bwd_f32 / _bf16   dlogits[r, c] = (softmax(l)[c] - [c == t]) * dloss[r]
//
// A target outside [0, classes) is the device-side assert of the CPU backend's check: the
// kernel atomicMin's the row index into *error (initialised to 0xFFFFFFFF by the host, which
// reads it back after the launch and fails the op) and writes NaN into that row's outputs.
//
// Launch (ft_rows.cuh): one block per row (grid-stride), blockDim.x a multiple of 32; dynamic
// shared memory classes * 4 bytes when that is at most FT_ROW_CACHE_BYTES, else 0.

#include "ft_rows.cuh"

// Validates row r's target (uniform across the block: thread 0 loads it once and shares it
// through `slot`, after a barrier that retires the previous row's readers); records a bad one.
// The backward's dloss[r] is shared the same way through `dl_slot`.
__device__ __forceinline__ bool ft_ce_target(const FtCrossEntropyParams& p, uint64_t r,
                                             int32_t* t, int32_t* slot, float* dl_slot) {
    __syncthreads();  // the previous row's readers are done with the slots
    if (threadIdx.x == 0) {
        *slot = static_cast<const int32_t*>(p.targets)[r];
        if (p.dloss != nullptr) *dl_slot = static_cast<const float*>(p.dloss)[r];
    }
    __syncthreads();
    *t = *slot;
    const bool ok = *t >= 0 && (uint64_t)*t < p.classes;
    if (!ok && threadIdx.x == 0) atomicMin(static_cast<unsigned int*>(p.error), (unsigned int)r);
    return ok;
}

// Leaves exp(l - max) in the cache (when cached) and returns max and the sum of exponentials.
template <typename T>
__device__ __forceinline__ float2 ft_ce_row(const T* l, uint64_t cols, bool cached, float* se,
                                            float* scratch) {
    float mx = -INFINITY;
    for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float v = ft_load_f32(l, c);
        if (cached) se[c] = v;
        mx = fmaxf(mx, v);
    }
    mx = ft_block_max(mx, scratch);
    float s = 0.0f;
    for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
        const float e = expf((cached ? se[c] : ft_load_f32(l, c)) - mx);
        if (cached) se[c] = e;
        s += e;
    }
    return make_float2(mx, ft_block_sum(s, scratch));
}

template <typename T>
__device__ __forceinline__ void ft_cross_entropy_fwd(const FtCrossEntropyParams& p) {
    __shared__ float scratch[32];
    __shared__ int32_t slot;
    __shared__ float dl_slot;
    const uint64_t cols = p.classes;
    const bool cached = ft_row_cached(cols, 1);
    float* losses = static_cast<float*>(p.out);
    for (uint64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const T* l = static_cast<const T*>(p.logits) + r * cols;
        int32_t t;
        if (!ft_ce_target(p, r, &t, &slot, &dl_slot)) {
            if (threadIdx.x == 0) losses[r] = __int_as_float(0x7fc00000);
            continue;
        }
        const float2 ms = ft_ce_row(l, cols, cached, ft_row_cache, scratch);
        if (threadIdx.x == 0) losses[r] = (ms.x - ft_load_f32(l, (uint64_t)t)) + logf(ms.y);
    }
}

extern "C" __global__ void ft_cross_entropy_fwd_f32(FtCrossEntropyParams p) {
    ft_cross_entropy_fwd<float>(p);
}

extern "C" __global__ void ft_cross_entropy_fwd_bf16(FtCrossEntropyParams p) {
    ft_cross_entropy_fwd<__nv_bfloat16>(p);
}

template <typename T>
__device__ __forceinline__ void ft_cross_entropy_bwd(const FtCrossEntropyParams& p) {
    __shared__ float scratch[32];
    __shared__ int32_t slot;
    __shared__ float dl_slot;
    const uint64_t cols = p.classes;
    const bool cached = ft_row_cached(cols, 1);
    for (uint64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const T* l = static_cast<const T*>(p.logits) + r * cols;
        T* out = static_cast<T*>(p.out) + r * cols;
        int32_t t;
        if (!ft_ce_target(p, r, &t, &slot, &dl_slot)) {
            for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
                ft_store_f32(out, c, __int_as_float(0x7fc00000));
            }
            continue;
        }
        const float2 ms = ft_ce_row(l, cols, cached, ft_row_cache, scratch);
        const float dl = dl_slot;
        const float w = dl / ms.y;
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float e = cached ? ft_row_cache[c] : expf(ft_load_f32(l, c) - ms.x);
            const float g = (c == (uint64_t)t) ? (e / ms.y - 1.0f) * dl : e * w;
            ft_store_f32(out, c, g);
        }
    }
}

extern "C" __global__ void ft_cross_entropy_bwd_f32(FtCrossEntropyParams p) {
    ft_cross_entropy_bwd<float>(p);
}

extern "C" __global__ void ft_cross_entropy_bwd_bf16(FtCrossEntropyParams p) {
    ft_cross_entropy_bwd<__nv_bfloat16>(p);
}
