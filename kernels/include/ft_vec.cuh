// ft_vec.cuh: 16-byte vector access for the bandwidth-bound kernels that move whole buffers
// (the peer collectives, the overlap kernels' staging and reductions).
//
// One `uint4` holds FtVec<T>::N elements (4 f32 or 8 bf16). A thread that loads a vector widens
// each element to f32 exactly as `ft_load_f32` does and a store rounds each element once, as
// `ft_store_f32` does (nearest even for bf16), so a vectorised loop gives bitwise the results of
// the element loop it replaces. Callers take the vector path only when every address involved
// is 16-byte aligned and run the remaining elements one by one.
#pragma once

#include "ft_common.cuh"

template <typename T>
struct FtVec {
    static constexpr uint64_t N = 16 / sizeof(T);
};

// Vector `i` (elements [N i, N i + N)) of `p`, widened to f32.
__device__ __forceinline__ void ft_load_vec(const float* p, uint64_t i, float (&v)[4]) {
    const float4 x = reinterpret_cast<const float4*>(p)[i];
    v[0] = x.x;
    v[1] = x.y;
    v[2] = x.z;
    v[3] = x.w;
}

__device__ __forceinline__ void ft_load_vec(const __nv_bfloat16* p, uint64_t i, float (&v)[8]) {
    const uint4 x = reinterpret_cast<const uint4*>(p)[i];
    const uint32_t w[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        // bf16 -> f32 is exact: the bf16 bits are the high half of the f32.
        v[2 * j] = __uint_as_float(w[j] << 16);
        v[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
    }
}

// Stores `v` as vector `i` of `p`, each element rounded once.
__device__ __forceinline__ void ft_store_vec(float* p, uint64_t i, const float (&v)[4]) {
    reinterpret_cast<float4*>(p)[i] = make_float4(v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ void ft_store_vec(__nv_bfloat16* p, uint64_t i, const float (&v)[8]) {
    uint32_t w[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
        w[j] = *reinterpret_cast<const uint32_t*>(&h);
    }
    reinterpret_cast<uint4*>(p)[i] = make_uint4(w[0], w[1], w[2], w[3]);
}

// dst[i] = src[i] for i in [0, n), the whole grid sharing the work: 16-byte vectors when both
// are 16-byte aligned, then the tail (or everything, unaligned) element by element.
template <typename T>
__device__ __forceinline__ void ft_copy_range(T* dst, const T* src, uint64_t n) {
    uint64_t done = 0;
    if (ft_aligned(dst, 15) && ft_aligned(src, 15)) {
        const uint64_t nv = n / FtVec<T>::N;
        const uint4* s = reinterpret_cast<const uint4*>(src);
        uint4* d = reinterpret_cast<uint4*>(dst);
        for (uint64_t i = ft_global_thread(); i < nv; i += ft_grid_threads()) d[i] = s[i];
        done = nv * FtVec<T>::N;
    }
    for (uint64_t i = done + ft_global_thread(); i < n; i += ft_grid_threads()) dst[i] = src[i];
}
