// Fixture for the out-of-bounds check: `scale_oob` has the classic off-by-one guard
// (`i <= n`), so the thread with i == n stores one element past the end of `y`.
// `scale` is the correct variant. Compiled to oob_write.ptx (see README.md).

extern "C" __global__ void scale(float* y, const float* x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        y[i] = a * x[i] + 1.0f;
    }
}

extern "C" __global__ void scale_oob(float* y, const float* x, float a, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) {  // BUG (on purpose): should be i < n
        int j = i < n ? i : n - 1;  // the read stays in bounds; only the store overruns
        y[i] = a * x[j] + 1.0f;
    }
}
