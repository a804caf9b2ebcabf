// adamw.cu: one AdamW step (PyTorch semantics: decoupled weight decay, bias-corrected moments).
//
// Entry points (extern "C", FtAdamWParams BY VALUE): ft_adamw_f32 / ft_adamw_bf16 (the element
// type of param and grad; m and v are always f32). Per element, in f32:
//   p = p * decay; m = beta1 * m + (1 - beta1) * g; v = beta2 * v + (1 - beta2) * g * g;
//   p -= lr * (m * inv_bc1) / (sqrtf(v * inv_bc2) + eps)
// with the same operation order as the CPU backend; p is rounded once.
//
// Launch: any 1-D grid and block (grid-stride loop over n). Each element is read and written
// once: ideal memory traffic.

#include "ft_common.cuh"

template <typename T>
__device__ __forceinline__ void ft_adamw(const FtAdamWParams& p) {
    T* param = static_cast<T*>(p.param);
    const T* grad = static_cast<const T*>(p.grad);
    float* m = static_cast<float*>(p.m);
    float* v = static_cast<float*>(p.v);
    const uint64_t stride = ft_grid_threads();
    for (uint64_t i = ft_global_thread(); i < p.n; i += stride) {
        const float g = ft_load_f32(grad, i);
        float pf = ft_load_f32(param, i) * p.decay;
        const float mn = p.beta1 * m[i] + p.one_minus_beta1 * g;
        const float vn = p.beta2 * v[i] + p.one_minus_beta2 * g * g;
        const float mhat = mn * p.inv_bc1;
        const float vhat = vn * p.inv_bc2;
        pf -= p.lr * mhat / (sqrtf(vhat) + p.eps);
        m[i] = mn;
        v[i] = vn;
        ft_store_f32(param, i, pf);
    }
}

extern "C" __global__ void ft_adamw_f32(FtAdamWParams p) { ft_adamw<float>(p); }

extern "C" __global__ void ft_adamw_bf16(FtAdamWParams p) { ft_adamw<__nv_bfloat16>(p); }
