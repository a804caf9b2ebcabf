// residual.cu: residual add, bias add and column sums (the linear layers' helpers).
//
// Entry points (extern "C", each takes its parameter struct from ferrotron_params.h BY VALUE):
//   ft_add_f32 / _bf16               out = a + b                              FtAddParams
//   ft_bias_add_f32 / _bf16          y[r, c] = x[r, c] + bias[c]              FtBiasAddParams
//   ft_column_sum_f32_f32 / _bf16_bf16 / _bf16_f32
//                                    out[c] (+)= sum_r x[r, c]                FtColumnSumParams
//
// Numerics: loads widen to f32, sums are f32, stores round once (nearest even for bf16): the
// results equal the CPU backend's bit for bit (column sums add the rows in the same order).
//
// Launch: any 1-D grid and block (grid-stride loops). Work items: `add`: n (bf16: n / 2 pairs);
// `bias_add`: cols * ceil(rows / FT_BIAS_ROWS) (bf16 pairs: cols / 2 instead of cols); column
// sums: cols.
//
// Memory traffic: every input byte is read once and every output byte written once, except the
// bias, which a `bias_add` thread loads once for FT_BIAS_ROWS rows (1/32 extra of the bias per
// row). Neighbouring threads own neighbouring columns, so every access is coalesced.

#include "ft_common.cuh"

// Rows one bias_add thread covers (it loads its bias element once for all of them).
#define FT_BIAS_ROWS 32u

// ---------------------------------------------------------------------------------------------
// add

template <typename T>
__device__ __forceinline__ void ft_add_scalar(const T* a, const T* b, T* out, uint64_t n) {
    const uint64_t stride = ft_grid_threads();
    for (uint64_t i = ft_global_thread(); i < n; i += stride) {
        ft_store_f32(out, i, ft_load_f32(a, i) + ft_load_f32(b, i));
    }
}

extern "C" __global__ void ft_add_f32(FtAddParams p) {
    ft_add_scalar(static_cast<const float*>(p.a), static_cast<const float*>(p.b),
                  static_cast<float*>(p.out), p.n);
}

extern "C" __global__ void ft_add_bf16(FtAddParams p) {
    const bool pairs =
        (p.n % 2 == 0) && ft_aligned(p.a, 3) && ft_aligned(p.b, 3) && ft_aligned(p.out, 3);
    if (pairs) {
        const __nv_bfloat162* a = static_cast<const __nv_bfloat162*>(p.a);
        const __nv_bfloat162* b = static_cast<const __nv_bfloat162*>(p.b);
        __nv_bfloat162* out = static_cast<__nv_bfloat162*>(p.out);
        const uint64_t n2 = p.n / 2, stride = ft_grid_threads();
        for (uint64_t i = ft_global_thread(); i < n2; i += stride) {
            const float2 av = __bfloat1622float2(a[i]);
            const float2 bv = __bfloat1622float2(b[i]);
            out[i] = __floats2bfloat162_rn(av.x + bv.x, av.y + bv.y);
        }
    } else {
        ft_add_scalar(static_cast<const __nv_bfloat16*>(p.a),
                      static_cast<const __nv_bfloat16*>(p.b),
                      static_cast<__nv_bfloat16*>(p.out), p.n);
    }
}

// ---------------------------------------------------------------------------------------------
// bias_add: item i covers column i % cols of rows [FT_BIAS_ROWS * (i / cols), ... + FT_BIAS_ROWS).

template <typename T>
__device__ __forceinline__ void ft_bias_add_scalar(const T* x, const T* __restrict__ bias, T* y,
                                                   uint64_t rows, uint64_t cols) {
    const uint64_t chunks = (rows + FT_BIAS_ROWS - 1) / FT_BIAS_ROWS;
    const uint64_t items = chunks * cols, stride = ft_grid_threads();
    for (uint64_t it = ft_global_thread(); it < items; it += stride) {
        const uint64_t c = it % cols, r0 = (it / cols) * FT_BIAS_ROWS;
        const uint64_t r1 = min(rows, r0 + FT_BIAS_ROWS);
        const float bv = ft_load_f32(bias, c);
        for (uint64_t r = r0, i = r0 * cols + c; r < r1; ++r, i += cols) {
            ft_store_f32(y, i, ft_load_f32(x, i) + bv);
        }
    }
}

extern "C" __global__ void ft_bias_add_f32(FtBiasAddParams p) {
    if (p.rows == 0 || p.cols == 0) return;
    ft_bias_add_scalar(static_cast<const float*>(p.x), static_cast<const float*>(p.bias),
                       static_cast<float*>(p.y), p.rows, p.cols);
}

extern "C" __global__ void ft_bias_add_bf16(FtBiasAddParams p) {
    if (p.rows == 0 || p.cols == 0) return;
    const bool pairs = (p.cols % 2 == 0) && ft_aligned(p.x, 3) && ft_aligned(p.bias, 3) &&
                       ft_aligned(p.y, 3);
    if (pairs) {
        const __nv_bfloat162* x = static_cast<const __nv_bfloat162*>(p.x);
        const __nv_bfloat162* bias = static_cast<const __nv_bfloat162*>(p.bias);
        __nv_bfloat162* y = static_cast<__nv_bfloat162*>(p.y);
        const uint64_t cols = p.cols / 2, rows = p.rows;
        const uint64_t chunks = (rows + FT_BIAS_ROWS - 1) / FT_BIAS_ROWS;
        const uint64_t items = chunks * cols, stride = ft_grid_threads();
        for (uint64_t it = ft_global_thread(); it < items; it += stride) {
            const uint64_t c = it % cols, r0 = (it / cols) * FT_BIAS_ROWS;
            const uint64_t r1 = min(rows, r0 + FT_BIAS_ROWS);
            const float2 bv = __bfloat1622float2(bias[c]);
            for (uint64_t r = r0, i = r0 * cols + c; r < r1; ++r, i += cols) {
                const float2 xv = __bfloat1622float2(x[i]);
                y[i] = __floats2bfloat162_rn(xv.x + bv.x, xv.y + bv.y);
            }
        }
    } else {
        ft_bias_add_scalar(static_cast<const __nv_bfloat16*>(p.x),
                           static_cast<const __nv_bfloat16*>(p.bias),
                           static_cast<__nv_bfloat16*>(p.y), p.rows, p.cols);
    }
}

// ---------------------------------------------------------------------------------------------
// column sums: one thread per column, rows in order 0, 1, ..., rows - 1 (bitwise reproducible).

template <typename T, typename O>
__device__ __forceinline__ void ft_column_sum(const FtColumnSumParams& p) {
    const T* x = static_cast<const T*>(p.x);
    O* out = static_cast<O*>(p.out);
    const uint64_t stride = ft_grid_threads();
    for (uint64_t c = ft_global_thread(); c < p.cols; c += stride) {
        float acc = 0.0f;
        uint64_t i = c;
        for (uint64_t r = 0; r < p.rows; ++r, i += p.cols) acc += ft_load_f32(x, i);
        if (p.accumulate) acc = ft_load_f32(out, c) + acc;
        ft_store_f32(out, c, acc);
    }
}

extern "C" __global__ void ft_column_sum_f32_f32(FtColumnSumParams p) {
    ft_column_sum<float, float>(p);
}

extern "C" __global__ void ft_column_sum_bf16_bf16(FtColumnSumParams p) {
    ft_column_sum<__nv_bfloat16, __nv_bfloat16>(p);
}

extern "C" __global__ void ft_column_sum_bf16_f32(FtColumnSumParams p) {
    ft_column_sum<__nv_bfloat16, float>(p);
}
