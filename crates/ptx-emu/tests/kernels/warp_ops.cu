// Fixtures for warp collectives, atomics and the synchronisation checks.

// Every thread writes 10 results, out[k * total + gid] for k = 0..9 (total = all threads).
// Launch with blockDim.x a multiple of 32.
extern "C" __global__ void warp_collectives(const int* x, int* out) {
    const unsigned full = 0xffffffffu;
    int gid = blockIdx.x * blockDim.x + threadIdx.x;
    int total = gridDim.x * blockDim.x;
    int lane = threadIdx.x % 32;
    int v = x[gid];
    out[0 * total + gid] = __shfl_down_sync(full, v, 3);
    out[1 * total + gid] = __shfl_xor_sync(full, v, 5);
    out[2 * total + gid] = __shfl_sync(full, v, (lane * 7 + 3) % 32);
    out[3 * total + gid] = __shfl_down_sync(full, v, 3, 8);
    out[4 * total + gid] = static_cast<int>(__ballot_sync(full, v & 1));
    out[5 * total + gid] = __all_sync(full, v >= 0);
    out[6 * total + gid] = __any_sync(full, v > 40);
    out[7 * total + gid] = __reduce_add_sync(full, v);
    out[8 * total + gid] = __reduce_min_sync(full, v);
    out[9 * total + gid] = static_cast<int>(__reduce_max_sync(full, static_cast<unsigned>(v)));
}

// shfl.sync.up: out[gid] = from lane - 1 (width 32), out[total + gid] = from lane - 2 within
// segments of 8 lanes; lanes below the delta keep their own value.
extern "C" __global__ void shfl_up(const int* x, int* out) {
    const unsigned full = 0xffffffffu;
    int gid = blockIdx.x * blockDim.x + threadIdx.x;
    int total = gridDim.x * blockDim.x;
    int v = x[gid];
    out[gid] = __shfl_up_sync(full, v, 1);
    out[total + gid] = __shfl_up_sync(full, v, 2, 8);
}

// x holds multiples of 0.25 in [0, 16), so every f32 partial sum is exact in any order.
// `total` and `hist` must be zeroed by the host.
extern "C" __global__ void atomics(const float* x, float* total, int* hist, int n) {
    __shared__ int sh[8];
    int t = threadIdx.x;
    int i = blockIdx.x * blockDim.x + t;
    if (t < 8) {
        sh[t] = 0;
    }
    __syncthreads();
    if (i < n) {
        float v = x[i];
        atomicAdd(total, v);
        int bin = static_cast<int>(v * 4.0f) & 7;
        atomicAdd(&sh[bin], 1);
    }
    __syncthreads();
    if (t < 8) {
        atomicAdd(&hist[t], sh[t]);
    }
}

// Every thread takes a ticket: the tickets are a permutation of 0..n-1. `counter` zeroed.
extern "C" __global__ void tickets(int* counter, int* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        out[i] = atomicAdd(counter, 1);
    }
}

// Lane 0 of every warp spends `iters` loop steps and returns; the other lanes call a full-mask
// shuffle, which names lane 0. With iters == 0 lane 0 is usually gone before the others arrive;
// with a large `iters` the others usually wait at the shuffle before lane 0 exits.
extern "C" __global__ void shfl_after_exit(int* out, int iters) {
    int lane = threadIdx.x % 32;
    if (lane == 0) {
        int acc = 0;
        for (int k = 0; k < iters; ++k) {
            acc = acc * 3 + k;
        }
        out[threadIdx.x] = acc;
        return;
    }
    out[threadIdx.x] = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x), lane ^ 1);
}

// Warp 0 waits at barrier 1 for 64 threads; nobody else ever arrives (the others exit).
// Launch with 128 threads.
extern "C" __global__ void bar_deadlock_exit(int* out) {
    if (threadIdx.x < 32) {
        asm volatile("bar.sync 1, 64;" ::: "memory");
        out[threadIdx.x] = 1;
    }
}

// Threads 0-63 wait at barrier 1, threads 64-127 at barrier 2, each expecting 128 threads.
// Launch with 128 threads.
extern "C" __global__ void bar_deadlock_split(int* out) {
    if (threadIdx.x < 64) {
        asm volatile("bar.sync 1, 128;" ::: "memory");
    } else {
        asm volatile("bar.sync 2, 128;" ::: "memory");
    }
    out[threadIdx.x] = 1;
}
