// layernorm.cu: layer normalisation over the last dimension, forward and backward.
//
// Entry points (extern "C", parameter struct BY VALUE):
//   ft_layernorm_fwd_f32 / _bf16      y, mean, rstd                          FtLayerNormFwdParams
//   ft_layernorm_bwd_f32 / _bf16      dx (one block per row) and, fused      FtLayerNormBwdParams
//                                     (partials != NULL), per-block partial dgamma / dbeta
//   ft_layernorm_dparams_f32 / _bf16  dgamma, dbeta (one thread per column)  FtLayerNormBwdParams
//
// Numerics: f32 throughout; the variance is biased and two-pass (mean first, then the centred
// sum of squares), like the CPU backend; mean and rstd are f32 outputs.
//
// Launch (see ft_rows.cuh): fwd / bwd: blockDim.x a multiple of 32, any grid (grid-stride over
// rows; the launcher uses ceil(rows / 32) blocks so that gamma / beta, which each block caches
// once, are re-read by few blocks), dynamic shared memory 3 * cols * 4 bytes when that is at
// most FT_ROW_CACHE_BYTES, else 0. The backward's blockDim.x is at most FT_LN_BWD_BLOCK (256);
// its fused path needs cols <= FT_LN_COLS_PER_THREAD * blockDim.x and partial_blocks ==
// gridDim.x (wider rows use the unfused path). dparams: any 1-D launch over cols items, after the bwd kernel.
//
// Determinism: block reductions have a fixed order. dgamma / dbeta use no atomics: fused, each
// block adds its rows (grid-stride order) per column in registers and dparams adds the blocks'
// partials in block order; unfused, dparams adds the rows in order 0, 1, ..., rows - 1. The
// grid depends only on the shape, so results are bitwise reproducible run to run.
//
// Memory traffic (fused): dy and x read once, dx written once, plus the partials
// (2 * 4 * cols bytes per block, written and read once), about 1/32 of a row per row.

#include "ft_rows.cuh"

template <typename T>
__device__ __forceinline__ void ft_layernorm_fwd(const FtLayerNormFwdParams& p) {
    __shared__ float scratch[32];
    const T* x = static_cast<const T*>(p.x);
    const T* gamma = static_cast<const T*>(p.gamma);
    const T* beta = static_cast<const T*>(p.beta);
    T* y = static_cast<T*>(p.y);
    float* mean_out = static_cast<float*>(p.mean);
    float* rstd_out = static_cast<float*>(p.rstd);
    const uint64_t cols = p.cols;
    const bool cached = ft_row_cached(cols, 3);
    float* sg = ft_row_cache;
    float* sb = sg + cols;
    float* sx = sb + cols;
    const float inv_cols = 1.0f / (float)cols;
    if (cached) {
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            sg[c] = ft_load_f32(gamma, c);
            sb[c] = ft_load_f32(beta, c);
        }
    }
    for (uint64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const uint64_t base = r * cols;
        float s = 0.0f;
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float v = ft_load_f32(x, base + c);
            if (cached) sx[c] = v;
            s += v;
        }
        const float mean = ft_block_sum(s, scratch) * inv_cols;
        float q = 0.0f;
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float d = (cached ? sx[c] : ft_load_f32(x, base + c)) - mean;
            q += d * d;
        }
        const float var = ft_block_sum(q, scratch) * inv_cols;
        const float rs = 1.0f / sqrtf(var + p.eps);
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float v = cached ? sx[c] : ft_load_f32(x, base + c);
            const float g = cached ? sg[c] : ft_load_f32(gamma, c);
            const float b = cached ? sb[c] : ft_load_f32(beta, c);
            ft_store_f32(y, base + c, (v - mean) * rs * g + b);
        }
        if (threadIdx.x == 0) {
            mean_out[r] = mean;
            rstd_out[r] = rs;
        }
    }
}

extern "C" __global__ void ft_layernorm_fwd_f32(FtLayerNormFwdParams p) {
    ft_layernorm_fwd<float>(p);
}

extern "C" __global__ void ft_layernorm_fwd_bf16(FtLayerNormFwdParams p) {
    ft_layernorm_fwd<__nv_bfloat16>(p);
}

// Columns one thread covers at most on the fused backward path (its partial dgamma / dbeta
// live in registers, ~200 of them): the launcher uses the fused path when cols <=
// FT_LN_COLS_PER_THREAD * blockDim.x with blockDim.x = FT_LN_BWD_BLOCK (so up to 8192 columns).
#define FT_LN_BWD_BLOCK 256
#define FT_LN_COLS_PER_THREAD 32

// dx for the rows of this block; with FUSED, also this block's partial dgamma / dbeta (its rows
// in grid-stride order, f32) into p.partials[blockIdx.x]. Row cache: gamma, dy, xhat.
template <typename T, bool FUSED>
__device__ __forceinline__ void ft_layernorm_bwd(const FtLayerNormBwdParams& p) {
    __shared__ float scratch[32];
    __shared__ float stats[2];
    const T* dy = static_cast<const T*>(p.dy);
    const T* x = static_cast<const T*>(p.x);
    const T* gamma = static_cast<const T*>(p.gamma);
    const float* mean_in = static_cast<const float*>(p.mean);
    const float* rstd_in = static_cast<const float*>(p.rstd);
    T* dx = static_cast<T*>(p.dx);
    const uint64_t cols = p.cols;
    const bool cached = ft_row_cached(cols, 3);
    float* sgam = ft_row_cache;
    float* sd = sgam + cols;  // dy
    float* sh = sd + cols;    // xhat
    const float inv_cols = 1.0f / (float)cols;
    float pdg[FUSED ? FT_LN_COLS_PER_THREAD : 1];
    float pdb[FUSED ? FT_LN_COLS_PER_THREAD : 1];
    if (FUSED) {
#pragma unroll
        for (int k = 0; k < FT_LN_COLS_PER_THREAD; ++k) pdg[k] = pdb[k] = 0.0f;
    }
    if (cached) {
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) sgam[c] = ft_load_f32(gamma, c);
    }
    for (uint64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {
        const uint64_t base = r * cols;
        // Thread 0 loads the row's statistics once and shares them.
        __syncthreads();  // the previous row's readers are done with stats
        if (threadIdx.x == 0) {
            stats[0] = mean_in[r];
            stats[1] = rstd_in[r];
        }
        __syncthreads();
        const float mu = stats[0], rs = stats[1];
        float sum_g = 0.0f, sum_gx = 0.0f;
        for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
            const float w = cached ? sgam[c] : ft_load_f32(gamma, c);
            const float d = ft_load_f32(dy, base + c);
            const float h = (ft_load_f32(x, base + c) - mu) * rs;
            if (cached) {
                sd[c] = d;
                sh[c] = h;
            }
            const float g = d * w;
            sum_g += g;
            sum_gx += g * h;
        }
        const float mean_g = ft_block_sum(sum_g, scratch) * inv_cols;
        const float mean_gx = ft_block_sum(sum_gx, scratch) * inv_cols;
        if (FUSED) {
#pragma unroll
            for (int k = 0; k < FT_LN_COLS_PER_THREAD; ++k) {
                const uint64_t c = threadIdx.x + (uint64_t)k * blockDim.x;
                if (c < cols) {
                    float d, h;
                    if (cached) {
                        d = sd[c];
                        h = sh[c];
                    } else {
                        d = ft_load_f32(dy, base + c);
                        h = (ft_load_f32(x, base + c) - mu) * rs;
                    }
                    const float g = d * (cached ? sgam[c] : ft_load_f32(gamma, c));
                    ft_store_f32(dx, base + c, rs * (g - mean_g - h * mean_gx));
                    pdg[k] += d * h;
                    pdb[k] += d;
                }
            }
        } else {
            for (uint64_t c = threadIdx.x; c < cols; c += blockDim.x) {
                float d, h;
                if (cached) {
                    d = sd[c];
                    h = sh[c];
                } else {
                    d = ft_load_f32(dy, base + c);
                    h = (ft_load_f32(x, base + c) - mu) * rs;
                }
                const float g = d * (cached ? sgam[c] : ft_load_f32(gamma, c));
                ft_store_f32(dx, base + c, rs * (g - mean_g - h * mean_gx));
            }
        }
    }
    if (FUSED) {
        float* part = static_cast<float*>(p.partials) + (uint64_t)blockIdx.x * 2 * cols;
#pragma unroll
        for (int k = 0; k < FT_LN_COLS_PER_THREAD; ++k) {
            const uint64_t c = threadIdx.x + (uint64_t)k * blockDim.x;
            if (c < cols) {
                part[c] = pdg[k];
                part[cols + c] = pdb[k];
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(FT_LN_BWD_BLOCK) ft_layernorm_bwd_f32(FtLayerNormBwdParams p) {
    if (p.partials != nullptr) {
        ft_layernorm_bwd<float, true>(p);
    } else {
        ft_layernorm_bwd<float, false>(p);
    }
}

extern "C" __global__ void __launch_bounds__(FT_LN_BWD_BLOCK) ft_layernorm_bwd_bf16(FtLayerNormBwdParams p) {
    if (p.partials != nullptr) {
        ft_layernorm_bwd<__nv_bfloat16, true>(p);
    } else {
        ft_layernorm_bwd<__nv_bfloat16, false>(p);
    }
}

// dgamma / dbeta, one thread per column: the fused path's partials added in block order, or
// (partials == NULL) the rows added in order 0, 1, ..., rows - 1.
template <typename T>
__device__ __forceinline__ void ft_layernorm_dparams(const FtLayerNormBwdParams& p) {
    const T* dy = static_cast<const T*>(p.dy);
    const T* x = static_cast<const T*>(p.x);
    const float* mean_in = static_cast<const float*>(p.mean);
    const float* rstd_in = static_cast<const float*>(p.rstd);
    const float* part = static_cast<const float*>(p.partials);
    const uint64_t stride = ft_grid_threads();
    for (uint64_t c = ft_global_thread(); c < p.cols; c += stride) {
        float ag = 0.0f, ab = 0.0f;
        if (part != nullptr) {
            for (uint64_t b = 0, i = c; b < p.partial_blocks; ++b, i += 2 * p.cols) {
                ag += part[i];
                ab += part[i + p.cols];
            }
        } else {
            uint64_t i = c;
            for (uint64_t r = 0; r < p.rows; ++r, i += p.cols) {
                const float d = ft_load_f32(dy, i);
                ag += d * ((ft_load_f32(x, i) - mean_in[r]) * rstd_in[r]);
                ab += d;
            }
        }
        ft_store_f32(static_cast<T*>(p.dgamma), c, ag);
        ft_store_f32(static_cast<T*>(p.dbeta), c, ab);
    }
}

extern "C" __global__ void ft_layernorm_dparams_f32(FtLayerNormBwdParams p) {
    ft_layernorm_dparams<float>(p);
}

extern "C" __global__ void ft_layernorm_dparams_bf16(FtLayerNormBwdParams p) {
    ft_layernorm_dparams<__nv_bfloat16>(p);
}
