// Fixtures for the shared-memory race check and initcheck (launch with >= 64 threads, so that
// two warps share the data).
//
// `block_sum` is a block reduction through shared memory; `block_sum_nosync` omits the
// __syncthreads() between every thread staging its element and the first tree step, where thread
// t (t < blockDim/2) reads s[t + blockDim/2], written by a thread of another warp. Which error
// comes first depends on the interleaving: a read of the not-yet-written word (uninitialised) or
// a read of a word another warp wrote since the last barrier (race).
//
// `rotate` stages x in shared memory, does some per-thread work, then adds the element of the
// thread 32 places on (another warp): y[i] = poly(x[i]) + s[(t + 32) % blockDim]. In
// `rotate_nosync` the barrier is missing; because of the work between each thread's store and its
// read, the other warp has usually stored already, so the race is what is usually reported.
// Launch with blockDim.x a power of two <= 256.

extern "C" __global__ void block_sum(const float* x, float* out, int n) {
    __shared__ float s[256];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            s[t] += s[t + stride];
        }
        __syncthreads();
    }
    if (t == 0) {
        out[blockIdx.x] = s[0];
    }
}

extern "C" __global__ void block_sum_nosync(const float* x, float* out, int n) {
    __shared__ float s[256];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    s[t] = i < n ? x[i] : 0.0f;
    // BUG (on purpose): no __syncthreads() here.
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (t < stride) {
            s[t] += s[t + stride];
        }
        __syncthreads();
    }
    if (t == 0) {
        out[blockIdx.x] = s[0];
    }
}

// `iters` steps of w = w * 0.5 + 1 (fma), then plus the neighbouring warp's element.
extern "C" __global__ void rotate(const float* x, float* y, int iters) {
    __shared__ float s[256];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    float v = x[i];
    s[t] = v;
    __syncthreads();
    float w = v;
    for (int k = 0; k < iters; ++k) {
        w = w * 0.5f + 1.0f;
    }
    y[i] = w + s[(t + 32) % blockDim.x];
}

extern "C" __global__ void rotate_nosync(const float* x, float* y, int iters) {
    __shared__ float s[256];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    float v = x[i];
    s[t] = v;
    // BUG (on purpose): no __syncthreads() here.
    float w = v;
    for (int k = 0; k < iters; ++k) {
        w = w * 0.5f + 1.0f;
    }
    y[i] = w + s[(t + 32) % blockDim.x];
}
