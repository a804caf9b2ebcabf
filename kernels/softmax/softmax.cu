// softmax.cu: softmax over the last dimension with an optional causal mask, forward and backward.
//
// Entry points (extern "C", parameter struct BY VALUE):
//   ft_softmax_fwd_f32 / _bf16   y = softmax(scale * x) (masked: 0)        FtSoftmaxFwdParams
//   ft_softmax_bwd_f32 / _bf16   dx = scale * y * (dy - sum(dy * y))       FtSoftmaxBwdParams
//
// Numerics: f32; the forward subtracts the row maximum before expf (CUDA's accurate expf, not
// __expf) and multiplies by the reciprocal of the sum, like the CPU backend. A row whose every
// position is masked is all zeros (never NaN).
//
// Launch (ft_rows.cuh): one block per row (grid-stride over batch * rows rows), blockDim.x a
// multiple of 32; dynamic shared memory arrays * cols * 4 bytes (fwd 1 array, bwd 2) when that
// is at most FT_ROW_CACHE_BYTES, else 0 (the kernel then reads its inputs again).

#include "ft_rows.cuh"

template <typename T>
__device__ __forceinline__ void ft_softmax_fwd(const FtSoftmaxFwdParams& p) {
    __shared__ float scratch[32];
    const T* x = static_cast<const T*>(p.x);
    T* y = static_cast<T*>(p.y);
    const uint64_t cols = p.cols, total = p.batch * p.rows;
    const bool cached = ft_row_cached(cols, 1);
    float* se = ft_row_cache;
    for (uint64_t r = blockIdx.x; r < total; r += gridDim.x) {
        const uint64_t base = r * cols;
        uint64_t live = cols;
        if (p.causal) {
            // Position j of row i is live when j <= i + cols - rows.
            const uint64_t i = r % p.rows;
            live = (i + cols + 1 > p.rows) ? min(cols, i + cols + 1 - p.rows) : 0;
        }
        float mx = -INFINITY;
        for (uint64_t c = threadIdx.x; c < live; c += blockDim.x) {
            const float v = p.scale * ft_load_f32(x, base + c);
            if (cached) se[c] = v;
            mx = fmaxf(mx, v);
        }
        mx = ft_block_max(mx, scratch);
        float s = 0.0f;
        for (uint64_t c = threadIdx.x; c < live; c += blockDim.x) {
            const float v = cached ? se[c] : p.scale * ft_load_f32(x, base + c);
            const float e = expf(v - mx);
            if (cached) se[c] = e;
            s += e;
        }
        s = ft_block_sum(s, scratch);
        const float inv = 1.0f / s;
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            float out = 0.0f;
            if (c < live) {
                const float e = cached ? se[c] : expf(p.scale * ft_load_f32(x, base + c) - mx);
                out = e * inv;
            }
            ft_store_f32(y, base + c, out);
        }
    }
}

extern "C" __global__ void ft_softmax_fwd_f32(FtSoftmaxFwdParams p) { ft_softmax_fwd<float>(p); }

extern "C" __global__ void ft_softmax_fwd_bf16(FtSoftmaxFwdParams p) {
    ft_softmax_fwd<__nv_bfloat16>(p);
}

template <typename T>
__device__ __forceinline__ void ft_softmax_bwd(const FtSoftmaxBwdParams& p) {
    __shared__ float scratch[32];
    const T* dy = static_cast<const T*>(p.dy);
    const T* y = static_cast<const T*>(p.y);
    T* dx = static_cast<T*>(p.dx);
    const uint64_t cols = p.cols;
    const bool cached = ft_row_cached(cols, 2);
    float* sd = ft_row_cache;
    float* sy = sd + cols;
    for (uint64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const uint64_t base = r * cols;
        float dot = 0.0f;
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float d = ft_load_f32(dy, base + c), v = ft_load_f32(y, base + c);
            if (cached) {
                sd[c] = d;
                sy[c] = v;
            }
            dot += d * v;
        }
        dot = ft_block_sum(dot, scratch);
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float d = cached ? sd[c] : ft_load_f32(dy, base + c);
            const float v = cached ? sy[c] : ft_load_f32(y, base + c);
            ft_store_f32(dx, base + c, p.scale * v * (d - dot));
        }
    }
}

extern "C" __global__ void ft_softmax_bwd_f32(FtSoftmaxBwdParams p) { ft_softmax_bwd<float>(p); }

extern "C" __global__ void ft_softmax_bwd_bf16(FtSoftmaxBwdParams p) {
    ft_softmax_bwd<__nv_bfloat16>(p);
}
