// ft_gelu.cuh: GeLU (Megatron's tanh approximation) and its derivative, in f32.
//
//   gelu(z)  = 0.5 z (1 + t),  t = tanh(K0 (z + K1 z^3))
//   gelu'(z) = 0.5 z (1 - t^2) (K0 + K2 z^2) + 0.5 (1 + t)
//
// with the f32 constants K0 = 0.7978845608028654 (sqrt(2/pi)), K1 = 0.044715 and
// K2 = 3 K1 K0 = 0.10703222440890037 (as f32: 0x3ddb33b6 = 0.10703222453594208). tanh is the
// accurate `tanhf` (a few ulp), never the `tanh.approx.f32` instruction, so the GPU, the PTX
// emulator and the CPU reference agree to ~1e-6 relative. The CPU twin must use the same formula
// (f32 constants, the same grouping); nvcc may contract a*b+c into fma, which moves results by
// at most an ulp or so.
#pragma once

#define FT_GELU_K0 0.7978845608028654f
#define FT_GELU_K1 0.044715f
#define FT_GELU_K2 ((float)(3.0 * 0.044715 * 0.7978845608028654))

// tanh(K0 (z + K1 z^3)), the shared inner term.
__device__ __forceinline__ float ft_gelu_tanh_term(float z) {
    return tanhf(FT_GELU_K0 * (z + FT_GELU_K1 * z * z * z));
}

// GeLU, tanh approximation.
__device__ __forceinline__ float ft_gelu(float z) {
    const float t = ft_gelu_tanh_term(z);
    return 0.5f * z * (1.0f + t);
}

// d gelu(z) / dz for the tanh approximation.
__device__ __forceinline__ float ft_gelu_grad(float z) {
    const float t = ft_gelu_tanh_term(z);
    return 0.5f * z * ((1.0f - t * t) * (FT_GELU_K0 + FT_GELU_K2 * z * z)) + 0.5f * (1.0f + t);
}
