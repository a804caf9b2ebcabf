// bias_gelu.cu: fused bias + GeLU (forward and backward) and the dbias reduction.
//
// Entry points (extern "C", each takes its parameter struct from ferrotron_params.h BY VALUE):
//   ft_bias_gelu_fwd_f32 / _bf16   y  = gelu(x + bias[col])                  FtBiasGeluFwdParams
//   ft_bias_gelu_bwd_f32 / _bf16   dx = dy * gelu'(x + bias[col])            FtBiasGeluBwdParams
//   ft_bias_gelu_dbias_f32 / _bf16 dbias[c] = sum_r dy * gelu'(x + bias[c])  FtBiasGeluDbiasParams
//                                  (f32 products summed before rounding, rows in order)
//
// Numerics: every element is widened to f32, z = x + bias is formed in f32 (NOT rounded to bf16
// first), GeLU and its derivative are evaluated in f32 (ft_gelu.cuh), and the result is rounded
// once to the storage type (round-to-nearest-even for bf16).
//
// Launch: any 1-D grid and block (grid-stride loops); e.g. 256 threads per block and
// min(ceil(work / 256), 32 * SMs) blocks, where work is rows * cols for the elementwise kernels
// (rows * cols / 2 on the bf16x2 path) and cols for dbias. rows * cols == 0 is a no-op.
//
// bf16 vectorisation: when cols is even and every pointer is 4-byte aligned, the bf16 kernels move
// pairs (__nv_bfloat162, one 32-bit access per thread); a pair never straddles two rows because
// cols is even. Otherwise they fall back to one element per thread. The choice depends only on the
// parameters, so it is uniform across the grid.
//
// Determinism: the elementwise kernels compute each output from its own inputs only; dbias
// gives each column to exactly one thread, which adds the rows in order 0, 1, ..., rows - 1,
// so results are bitwise reproducible for any launch configuration. Neighbouring threads own
// neighbouring columns, so each row step of a warp is one coalesced access.

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
// Backward: dx (dbias is its own kernel below)

template <typename T>
__device__ __forceinline__ void ft_bias_gelu_bwd_scalar(const T* dy, const T* x,
                                                        const T* __restrict__ bias, T* dx,
                                                        uint64_t n, uint64_t cols) {
    const uint64_t stride = ft_grid_threads();
    uint64_t i = ft_global_thread();
    if (i >= n) return;
    FtColumnCursor cur(i, stride, cols);
    for (; i < n; i += stride, cur.advance()) {
        const float z = ft_load_f32(x, i) + ft_load_f32(bias, cur.col);
        ft_store_f32(dx, i, ft_load_f32(dy, i) * ft_gelu_grad(z));
    }
}

__device__ __forceinline__ void ft_bias_gelu_bwd_bf16x2(const __nv_bfloat162* dy,
                                                        const __nv_bfloat162* x,
                                                        const __nv_bfloat162* __restrict__ bias,
                                                        __nv_bfloat162* dx, uint64_t n2,
                                                        uint64_t cols2) {
    const uint64_t stride = ft_grid_threads();
    uint64_t i = ft_global_thread();
    if (i >= n2) return;
    FtColumnCursor cur(i, stride, cols2);
    for (; i < n2; i += stride, cur.advance()) {
        const float2 gv = __bfloat1622float2(dy[i]);
        const float2 xv = __bfloat1622float2(x[i]);
        const float2 bv = __bfloat1622float2(bias[cur.col]);
        dx[i] = __floats2bfloat162_rn(gv.x * ft_gelu_grad(xv.x + bv.x),
                                      gv.y * ft_gelu_grad(xv.y + bv.y));
    }
}

extern "C" __global__ void ft_bias_gelu_bwd_f32(FtBiasGeluBwdParams p) {
    const uint64_t n = p.rows * p.cols;
    if (n == 0) return;
    ft_bias_gelu_bwd_scalar(static_cast<const float*>(p.dy), static_cast<const float*>(p.x),
                            static_cast<const float*>(p.bias), static_cast<float*>(p.dx), n,
                            p.cols);
}

extern "C" __global__ void ft_bias_gelu_bwd_bf16(FtBiasGeluBwdParams p) {
    const uint64_t n = p.rows * p.cols;
    if (n == 0) return;
    const bool pairs = (p.cols % 2 == 0) && ft_aligned(p.dy, 3) && ft_aligned(p.x, 3) &&
                       ft_aligned(p.bias, 3) && ft_aligned(p.dx, 3);
    if (pairs) {
        ft_bias_gelu_bwd_bf16x2(static_cast<const __nv_bfloat162*>(p.dy),
                                static_cast<const __nv_bfloat162*>(p.x),
                                static_cast<const __nv_bfloat162*>(p.bias),
                                static_cast<__nv_bfloat162*>(p.dx), n / 2, p.cols / 2);
    } else {
        ft_bias_gelu_bwd_scalar(static_cast<const __nv_bfloat16*>(p.dy),
                                static_cast<const __nv_bfloat16*>(p.x),
                                static_cast<const __nv_bfloat16*>(p.bias),
                                static_cast<__nv_bfloat16*>(p.dx), n, p.cols);
    }
}

// ---------------------------------------------------------------------------------------------
// dbias: one thread per column, rows added in order, f32 accumulator over the unrounded f32
// products dy * gelu'(x + bias) (the values dx is rounded from).

template <typename T>
__device__ __forceinline__ void ft_bias_gelu_dbias(const T* dy, const T* x,
                                                   const T* __restrict__ bias,
                                                   T* __restrict__ dbias, uint64_t rows,
                                                   uint64_t cols) {
    const uint64_t stride = ft_grid_threads();
    for (uint64_t c = ft_global_thread(); c < cols; c += stride) {
        const float b = ft_load_f32(bias, c);
        float acc = 0.0f;
        uint64_t i = c;
        for (uint64_t r = 0; r < rows; ++r, i += cols) {
            acc += ft_load_f32(dy, i) * ft_gelu_grad(ft_load_f32(x, i) + b);
        }
        ft_store_f32(dbias, c, acc);
    }
}

extern "C" __global__ void ft_bias_gelu_dbias_f32(FtBiasGeluDbiasParams p) {
    ft_bias_gelu_dbias(static_cast<const float*>(p.dy), static_cast<const float*>(p.x),
                       static_cast<const float*>(p.bias), static_cast<float*>(p.dbias), p.rows,
                       p.cols);
}

extern "C" __global__ void ft_bias_gelu_dbias_bf16(FtBiasGeluDbiasParams p) {
    ft_bias_gelu_dbias(static_cast<const __nv_bfloat16*>(p.dy),
                       static_cast<const __nv_bfloat16*>(p.x),
                       static_cast<const __nv_bfloat16*>(p.bias),
                       static_cast<__nv_bfloat16*>(p.dbias), p.rows, p.cols);
}
