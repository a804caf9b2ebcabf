// Fixture for cp.async: every thread stages 16 bytes (4 floats) of its block's slice of `x` into
// shared memory with cp.async, waits, and after a barrier computes from the elements another
// thread staged: y[base + j] = a * tile[4 * blockDim.x - 1 - j] (the slice reversed, scaled).
// `stage_reverse_nowait` forgets `cp.async.wait_group 0`, so the reads see pending copies.
// Launch with blockDim.x <= 256 and gridDim.x * blockDim.x * 4 == n.

__device__ __forceinline__ void copy16(float* dst_smem, const float* src_gmem) {
    unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src_gmem) : "memory");
}

extern "C" __global__ void stage_reverse(const float* x, float* y, float a) {
    __shared__ __align__(16) float tile[4 * 256];
    int t = threadIdx.x;
    int len = 4 * blockDim.x;
    size_t base = static_cast<size_t>(blockIdx.x) * len;
    copy16(&tile[4 * t], x + base + 4 * t);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();
    for (int k = 0; k < 4; ++k) {
        int j = 4 * t + k;
        y[base + j] = a * tile[len - 1 - j];
    }
}

extern "C" __global__ void stage_reverse_nowait(const float* x, float* y, float a) {
    __shared__ __align__(16) float tile[4 * 256];
    int t = threadIdx.x;
    int len = 4 * blockDim.x;
    size_t base = static_cast<size_t>(blockIdx.x) * len;
    copy16(&tile[4 * t], x + base + 4 * t);
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    // BUG (on purpose): no cp.async.wait_group 0 here.
    __syncthreads();
    for (int k = 0; k < 4; ++k) {
        int j = 4 * t + k;
        y[base + j] = a * tile[len - 1 - j];
    }
}
