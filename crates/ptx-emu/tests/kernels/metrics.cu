// Fixtures for the coalescing and bank-conflict counters.

// Lane i of every warp reads x[i]: one 128-byte request = 4 sectors.
extern "C" __global__ void copy_f32(const float* x, float* y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = x[i];
}

// Lane i reads x[32 * i]: every lane its own sector, 32 per request.
extern "C" __global__ void gather_stride32(const float* x, float* y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    y[i] = x[static_cast<size_t>(i) * 32];
}

// One warp per CTA (launch with 32 threads): lane l writes s[l * stride], then reads the word of
// lane (l + 1) % 32. stride 1 or 33: no bank conflicts; stride 32: all 32 lanes in bank 0.
extern "C" __global__ void smem_stride(float* y, int stride) {
    __shared__ float s[32 * 33];
    int lane = threadIdx.x % 32;
    s[lane * stride] = static_cast<float>(lane);
    __syncwarp();
    y[blockIdx.x * 32 + lane] = s[((lane + 1) % 32) * stride];
}
