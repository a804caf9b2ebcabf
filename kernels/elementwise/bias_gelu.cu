// bias_gelu.cu: fused bias + GeLU (forward and backward) and the dbias reduction.
//
// Entry points (extern "C", each takes its parameter struct from ferrotron_params.h BY VALUE):
//   ft_bias_gelu_fwd_f32 / _bf16   y  = gelu(x + bias[col])                  FtBiasGeluFwdParams
//   ft_bias_gelu_bwd_dbias_f32 / _bf16   dx = dy * gelu'(x + bias[col]), plus per-chunk f32
//                                        column sums of those products (one pass over dy and x)
//                                        FtBiasGeluBwdDbiasParams
//   ft_bias_gelu_dbias_reduce_f32 / _bf16  dbias[c] = the chunk sums in order, rounded once
//                                        (launch after the previous kernel, same struct)
//
// Numerics: every element is widened to f32, z = x + bias is formed in f32 (NOT rounded to bf16
// first), GeLU and its derivative are evaluated in f32 (ft_gelu.cuh), and the result is rounded
// once to the storage type (round-to-nearest-even for bf16).
//
// dx alone (no dbias) is the code generator's shipped variant `bias_gelu_bwd_<dtype>`
// (crates/codegen/src/variants.rs), not a kernel of this file.
//
// Launch: any 1-D grid and block (grid-stride loops); e.g. 256 threads per block and
// min(ceil(work / 256), 32 * SMs) blocks, where work is rows * cols for the elementwise kernels
// (rows * cols / 2 on the bf16x2 path), chunks * cols for the fused backward and cols for the
// dbias reduction. rows * cols == 0 is a no-op.
//
// bf16 vectorisation: when cols is even and every pointer is 4-byte aligned, the bf16 kernels move
// pairs (__nv_bfloat162, one 32-bit access per thread); a pair never straddles two rows because
// cols is even. Otherwise they fall back to one element per thread. The choice depends only on the
// parameters, so it is uniform across the grid.
//
// Determinism: the elementwise kernels compute each output from its own inputs only; a dbias
// partial is one thread's sum of one chunk's rows in order, and the reduction adds the chunks
// in order, so results are bitwise reproducible for any launch configuration (the order depends
// on chunk_rows only).

#include "ft_common.cuh"
#include "ft_gelu.cuh"

// ---------------------------------------------------------------------------------------------
// Forward

template <typename T>
__device__ __forceinline__ void ft_bias_gelu_fwd_scalar(const T* x, const T* __restrict__ bias,
                                                        T* y, uint64_t n, uint64_t cols) {
    const uint64_t stride = ft_grid_threads();
    uint64_t i = ft_global_thread();
    if (i >= n) return;
    FtColumnCursor cur(i, stride, cols);
    for (; i < n; i += stride, cur.advance()) {
        const float z = ft_load_f32(x, i) + ft_load_f32(bias, cur.col);
        ft_store_f32(y, i, ft_gelu(z));
    }
}

// Pairs of bf16: n2 = rows * cols / 2 pairs, cols2 = cols / 2 pairs per row.
__device__ __forceinline__ void ft_bias_gelu_fwd_bf16x2(const __nv_bfloat162* x,
                                                        const __nv_bfloat162* __restrict__ bias,
                                                        __nv_bfloat162* y, uint64_t n2,
                                                        uint64_t cols2) {
    const uint64_t stride = ft_grid_threads();
    uint64_t i = ft_global_thread();
    if (i >= n2) return;
    FtColumnCursor cur(i, stride, cols2);
    for (; i < n2; i += stride, cur.advance()) {
        const float2 xv = __bfloat1622float2(x[i]);
        const float2 bv = __bfloat1622float2(bias[cur.col]);
        y[i] = __floats2bfloat162_rn(ft_gelu(xv.x + bv.x), ft_gelu(xv.y + bv.y));
    }
}

extern "C" __global__ void ft_bias_gelu_fwd_f32(FtBiasGeluFwdParams p) {
    const uint64_t n = p.rows * p.cols;
    if (n == 0) return;
    ft_bias_gelu_fwd_scalar(static_cast<const float*>(p.x), static_cast<const float*>(p.bias),
                            static_cast<float*>(p.y), n, p.cols);
}

extern "C" __global__ void ft_bias_gelu_fwd_bf16(FtBiasGeluFwdParams p) {
    const uint64_t n = p.rows * p.cols;
    if (n == 0) return;
    const bool pairs = (p.cols % 2 == 0) && ft_aligned(p.x, 3) && ft_aligned(p.bias, 3) &&
                       ft_aligned(p.y, 3);
    if (pairs) {
        ft_bias_gelu_fwd_bf16x2(static_cast<const __nv_bfloat162*>(p.x),
                                static_cast<const __nv_bfloat162*>(p.bias),
                                static_cast<__nv_bfloat162*>(p.y), n / 2, p.cols / 2);
    } else {
        ft_bias_gelu_fwd_scalar(static_cast<const __nv_bfloat16*>(p.x),
                                static_cast<const __nv_bfloat16*>(p.bias),
                                static_cast<__nv_bfloat16*>(p.y), n, p.cols);
    }
}

// ---------------------------------------------------------------------------------------------
// Fused backward with dbias, one pass over dy and x. Work item t = (chunk k, column unit u) with
// u fastest (a unit is a column, or a column pair on the bf16x2 path), so the threads of a warp
// walk neighbouring columns of the same rows: every row step is one coalesced access. Each item
// writes dx for its chunk's rows and leaves the f32 sum of its products in partial[k, c]; the
// reduce kernel adds the chunks in order. Extra traffic: 2 * 4 * chunks * cols bytes, i.e.
// 8 / (chunk_rows * 3 * element size) of the ideal (about 2% for bf16 at 64 rows per chunk).

template <typename T>
__device__ __forceinline__ void ft_bias_gelu_bwd_dbias_scalar(const FtBiasGeluBwdDbiasParams& p) {
    const T* dy = static_cast<const T*>(p.dy);
    const T* x = static_cast<const T*>(p.x);
    const T* bias = static_cast<const T*>(p.bias);
    T* dx = static_cast<T*>(p.dx);
    float* partial = static_cast<float*>(p.partial);
    const uint64_t items = p.chunks * p.cols;
    for (uint64_t t = ft_global_thread(); t < items; t += ft_grid_threads()) {
        const uint64_t k = t / p.cols, c = t - k * p.cols;
        const uint64_t r0 = k * p.chunk_rows;
        const uint64_t r1 = r0 + p.chunk_rows < p.rows ? r0 + p.chunk_rows : p.rows;
        const float b = ft_load_f32(bias, c);
        float acc = 0.0f;
        for (uint64_t i = r0 * p.cols + c; i < r1 * p.cols; i += p.cols) {
            const float g = ft_load_f32(dy, i) * ft_gelu_grad(ft_load_f32(x, i) + b);
            ft_store_f32(dx, i, g);
            acc += g;
        }
        partial[t] = acc;
    }
}

__device__ __forceinline__ void ft_bias_gelu_bwd_dbias_bf16x2(const FtBiasGeluBwdDbiasParams& p) {
    const __nv_bfloat162* dy = static_cast<const __nv_bfloat162*>(p.dy);
    const __nv_bfloat162* x = static_cast<const __nv_bfloat162*>(p.x);
    const __nv_bfloat162* bias = static_cast<const __nv_bfloat162*>(p.bias);
    __nv_bfloat162* dx = static_cast<__nv_bfloat162*>(p.dx);
    float2* partial = static_cast<float2*>(p.partial);
    const uint64_t cols2 = p.cols / 2;
    const uint64_t items = p.chunks * cols2;
    for (uint64_t t = ft_global_thread(); t < items; t += ft_grid_threads()) {
        const uint64_t k = t / cols2, c = t - k * cols2;
        const uint64_t r0 = k * p.chunk_rows;
        const uint64_t r1 = r0 + p.chunk_rows < p.rows ? r0 + p.chunk_rows : p.rows;
        const float2 b = __bfloat1622float2(bias[c]);
        float2 acc = make_float2(0.0f, 0.0f);
        for (uint64_t i = r0 * cols2 + c; i < r1 * cols2; i += cols2) {
            const float2 gv = __bfloat1622float2(dy[i]);
            const float2 xv = __bfloat1622float2(x[i]);
            const float g0 = gv.x * ft_gelu_grad(xv.x + b.x);
            const float g1 = gv.y * ft_gelu_grad(xv.y + b.y);
            dx[i] = __floats2bfloat162_rn(g0, g1);
            acc.x += g0;
            acc.y += g1;
        }
        partial[t] = acc;  // partial[k, 2c], partial[k, 2c + 1]
    }
}

extern "C" __global__ void ft_bias_gelu_bwd_dbias_f32(FtBiasGeluBwdDbiasParams p) {
    ft_bias_gelu_bwd_dbias_scalar<float>(p);
}

extern "C" __global__ void ft_bias_gelu_bwd_dbias_bf16(FtBiasGeluBwdDbiasParams p) {
    // Pairs when cols is even and dy, x, bias, dx are 4-byte aligned (partial, an f32 scratch
    // tensor, is 8-byte aligned; with cols even each of its rows is too).
    const bool pairs = (p.cols % 2 == 0) && ft_aligned(p.dy, 3) && ft_aligned(p.x, 3) &&
                       ft_aligned(p.bias, 3) && ft_aligned(p.dx, 3) && ft_aligned(p.partial, 7);
    if (pairs) {
        ft_bias_gelu_bwd_dbias_bf16x2(p);
    } else {
        ft_bias_gelu_bwd_dbias_scalar<__nv_bfloat16>(p);
    }
}

// dbias[c] = partial[0, c] + ... + partial[chunks - 1, c] (f32, in order), rounded once.
template <typename T>
__device__ __forceinline__ void ft_bias_gelu_dbias_reduce(const FtBiasGeluBwdDbiasParams& p) {
    const float* partial = static_cast<const float*>(p.partial);
    T* dbias = static_cast<T*>(p.dbias);
    for (uint64_t c = ft_global_thread(); c < p.cols; c += ft_grid_threads()) {
        float acc = 0.0f;
        for (uint64_t k = 0; k < p.chunks; ++k) acc += partial[k * p.cols + c];
        ft_store_f32(dbias, c, acc);
    }
}

extern "C" __global__ void ft_bias_gelu_dbias_reduce_f32(FtBiasGeluBwdDbiasParams p) {
    ft_bias_gelu_dbias_reduce<float>(p);
}

extern "C" __global__ void ft_bias_gelu_dbias_reduce_bf16(FtBiasGeluBwdDbiasParams p) {
    ft_bias_gelu_dbias_reduce<__nv_bfloat16>(p);
}
