// Peer collectives for GPUs (or emulated GPUs) in one process over symmetric buffers: every rank
// has a staging buffer and a flag array on its own device, and every rank knows the addresses of
// every rank's (the peer table, `FtPeerCollParams::table`).
//
// Protocol. A call reserves three consecutive epoch values e+1, e+2, e+3 (the host's per-group
// epoch counter; every rank gets the same e because calls are matched in order). A phase ends
// with a flag barrier: each CTA, once its share of the phase is done, publishes the phase's value
// with a release store into slot [rank][cta] of *every* rank's flag array (after a system-scope
// fence), then waits (acquire loads) until every slot [src][cta'] of its own array, for every rank
// `src` and every CTA `cta'` of the grid, has reached the value. Values only grow, so the arrays
// are never reset and a rank at most one phase ahead does not confuse a slower one. The last
// phase of every call is a "done" barrier, so no rank overwrites its staging buffer while a peer
// may still read it.
//
// All CTAs of a launch must be co-resident (the grid is a few CTAs; the launcher keeps
// `world * gridDim.x <= blockDim.x`).
//
// Determinism: element i of a reduction is `((s_0[i] op s_1[i]) op s_2[i]) ...` over the ranks in
// rank order, accumulated in f32 (bf16 widened) and rounded once on store; Avg divides the sum by
// the number of ranks. This is the order of the in-process threads backend, so results are
// bitwise equal to it.
//
// Failure: a waiting thread gives up when the host raises the abort word of this rank's table
// (a peer failed) or after `spin_limit` polls (0: never), then writes 2 into the abort word
// (timeout) if it was still 0 and the whole CTA returns without finishing the call.

#include "../include/ft_vec.cuh"

namespace {

enum : uint64_t { OP_SUM = 0, OP_AVG = 1, OP_MAX = 2, OP_MIN = 3 };

__device__ __forceinline__ void st_release_sys(uint64_t* p, uint64_t v) {
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* p) {
    uint64_t v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

// The peer table: [0, W) staging buffers, [W, 2W) flag arrays, [2W, 3W + 1) element offsets of
// the ranks' blocks, [3W + 1] the abort word.
__device__ __forceinline__ void* stage_of(const FtPeerCollParams& p, uint64_t q) {
    return (void*)p.table[q];
}
__device__ __forceinline__ uint64_t* flags_of(const FtPeerCollParams& p, uint64_t q) {
    return (uint64_t*)p.table[p.world + q];
}
__device__ __forceinline__ uint64_t offset_of(const FtPeerCollParams& p, uint64_t q) {
    return p.table[2 * p.world + q];
}
__device__ __forceinline__ uint64_t* abort_word(const FtPeerCollParams& p) {
    return (uint64_t*)&p.table[3 * p.world + 1];
}

// Ends a phase with the flag barrier described above. Returns false (for every thread of the
// CTA) when the call was aborted.
__device__ bool phase_barrier(const FtPeerCollParams& p, uint64_t value) {
    __shared__ int aborted;
    __syncthreads();  // this CTA's share of the phase is done
    if (threadIdx.x == 0) {
        aborted = 0;
        __threadfence_system();
        for (uint64_t q = 0; q < p.world; ++q) {
            st_release_sys(flags_of(p, q) + p.rank * FT_PEER_MAX_CTAS + blockIdx.x, value);
        }
    }
    __syncthreads();
    const uint64_t* mine = flags_of(p, p.rank);
    const uint64_t slots = p.world * gridDim.x;
    for (uint64_t t = threadIdx.x; t < slots; t += blockDim.x) {
        const uint64_t src = t / gridDim.x, cta = t % gridDim.x;
        const uint64_t* f = mine + src * FT_PEER_MAX_CTAS + cta;
        uint64_t spins = 0;
        while (ld_acquire_sys(f) < value) {
            if (ld_acquire_sys(abort_word(p)) != 0) {
                atomicOr(&aborted, 1);
                break;
            }
            if (p.spin_limit != 0 && ++spins > p.spin_limit) {
                atomicCAS((unsigned long long*)abort_word(p), 0ull, 2ull);
                atomicOr(&aborted, 1);
                break;
            }
        }
    }
    __syncthreads();
    return aborted == 0;
}

__device__ __forceinline__ float combine(uint64_t op, float a, float b) {
    switch (op) {
        case OP_MAX:
            return (isnan(a) || isnan(b)) ? __int_as_float(0x7fc00000) : fmaxf(a, b);
        case OP_MIN:
            return (isnan(a) || isnan(b)) ? __int_as_float(0x7fc00000) : fminf(a, b);
        default:
            return a + b;
    }
}

// Element i reduced over every rank's staging buffer (at element offset `base`), in rank order.
template <typename T>
__device__ __forceinline__ float reduce_at(const FtPeerCollParams& p, uint64_t i) {
    float acc = ft_load_f32((const T*)stage_of(p, 0), i);
    for (uint64_t q = 1; q < p.world; ++q) {
        acc = combine(p.op, acc, ft_load_f32((const T*)stage_of(p, q), i));
    }
    if (p.op == OP_AVG && p.world > 1) acc = acc / (float)p.world;
    return acc;
}

// out[i] = element `at + i` reduced over every rank's staging buffer (rank order, f32), for i in
// [0, n), the whole grid sharing the work: 16-byte vectors (each thread all ranks' vector i, then
// one store) when `out` and every source are 16-byte aligned, the rest element by element.
// Bitwise the element loop's result: the same combines in the same order, one rounding.
template <typename T>
__device__ void reduce_range(const FtPeerCollParams& p, T* out, uint64_t at, uint64_t n) {
    constexpr uint64_t N = FtVec<T>::N;
    bool vec = ft_aligned(out, 15);
    for (uint64_t q = 0; q < p.world; ++q) vec = vec && ft_aligned((const T*)stage_of(p, q) + at, 15);
    uint64_t done = 0;
    if (vec) {
        const uint64_t nv = n / N;
        for (uint64_t i = ft_global_thread(); i < nv; i += ft_grid_threads()) {
            float acc[N], v[N];
            ft_load_vec((const T*)stage_of(p, 0) + at, i, acc);
            for (uint64_t q = 1; q < p.world; ++q) {
                ft_load_vec((const T*)stage_of(p, q) + at, i, v);
#pragma unroll
                for (uint64_t j = 0; j < N; ++j) acc[j] = combine(p.op, acc[j], v[j]);
            }
            if (p.op == OP_AVG && p.world > 1) {
#pragma unroll
                for (uint64_t j = 0; j < N; ++j) acc[j] = acc[j] / (float)p.world;
            }
            ft_store_vec(out, i, acc);
        }
        done = nv * N;
    }
    for (uint64_t i = done + ft_global_thread(); i < n; i += ft_grid_threads()) {
        ft_store_f32(out, i, reduce_at<T>(p, at + i));
    }
}

// Copies `n` elements of `src` into this rank's staging buffer at element `at`.
template <typename T>
__device__ __forceinline__ void stage_in(const FtPeerCollParams& p, const T* src, uint64_t at,
                                         uint64_t n) {
    ft_copy_range((T*)stage_of(p, p.rank) + at, src, n);
}

// One-shot all-reduce (small buffers): stage, barrier, every rank reduces everything, done.
template <typename T>
__device__ void all_reduce_one_shot(const FtPeerCollParams& p) {
    stage_in<T>(p, (const T*)p.input, 0, p.count);
    if (!phase_barrier(p, p.epoch + 1)) return;
    reduce_range<T>(p, (T*)p.output, 0, p.count);
    phase_barrier(p, p.epoch + 3);
}

// Two-shot all-reduce (large buffers): stage; reduce-scatter (rank r reduces block r of every
// staging buffer into its own block r); all-gather (every rank copies block q from rank q);
// done. Each element is read (world + 1) times and written twice per rank instead of world
// times read.
template <typename T>
__device__ void all_reduce_two_shot(const FtPeerCollParams& p) {
    stage_in<T>(p, (const T*)p.input, 0, p.count);
    if (!phase_barrier(p, p.epoch + 1)) return;
    {
        const uint64_t lo = offset_of(p, p.rank), hi = offset_of(p, p.rank + 1);
        // In place: all sources of an element (or vector) are read before it is written, by
        // the one thread that owns it.
        reduce_range<T>(p, (T*)stage_of(p, p.rank) + lo, lo, hi - lo);
    }
    if (!phase_barrier(p, p.epoch + 2)) return;
    T* out = (T*)p.output;
    for (uint64_t q = 0; q < p.world; ++q) {
        const uint64_t lo = offset_of(p, q), hi = offset_of(p, q + 1);
        ft_copy_range(out + lo, (const T*)stage_of(p, q) + lo, hi - lo);
    }
    phase_barrier(p, p.epoch + 3);
}

// All-gather: rank r's input (block r, `offsets[r+1] - offsets[r]` elements) lands at
// `offsets[r]` of every rank's output.
template <typename T>
__device__ void all_gather(const FtPeerCollParams& p) {
    const uint64_t mine = offset_of(p, p.rank + 1) - offset_of(p, p.rank);
    stage_in<T>(p, (const T*)p.input, 0, mine);
    if (!phase_barrier(p, p.epoch + 1)) return;
    T* out = (T*)p.output;
    for (uint64_t q = 0; q < p.world; ++q) {
        const uint64_t lo = offset_of(p, q), n = offset_of(p, q + 1) - lo;
        ft_copy_range(out + lo, (const T*)stage_of(p, q), n);
    }
    phase_barrier(p, p.epoch + 3);
}

// Reduce-scatter: `output` of rank r is block r (`[offsets[r], offsets[r+1])`) of the reduction
// of every rank's `input` (`offsets[world]` elements).
template <typename T>
__device__ void reduce_scatter(const FtPeerCollParams& p) {
    stage_in<T>(p, (const T*)p.input, 0, offset_of(p, p.world));
    if (!phase_barrier(p, p.epoch + 1)) return;
    const uint64_t lo = offset_of(p, p.rank), n = offset_of(p, p.rank + 1) - lo;
    reduce_range<T>(p, (T*)p.output, lo, n);
    phase_barrier(p, p.epoch + 3);
}

// Broadcast: rank `root`'s buffer (`count` elements) into every rank's.
template <typename T>
__device__ void broadcast(const FtPeerCollParams& p) {
    if (p.rank == p.root) stage_in<T>(p, (const T*)p.input, 0, p.count);
    if (!phase_barrier(p, p.epoch + 1)) return;
    if (p.rank != p.root) {
        ft_copy_range((T*)p.output, (const T*)stage_of(p, p.root), p.count);
    }
    phase_barrier(p, p.epoch + 3);
}

}  // namespace

#define FT_PEER_ENTRIES(SFX, T)                                                                  \
    extern "C" __global__ void ft_peer_all_reduce_one_shot_##SFX(FtPeerCollParams p) {           \
        all_reduce_one_shot<T>(p);                                                               \
    }                                                                                            \
    extern "C" __global__ void ft_peer_all_reduce_two_shot_##SFX(FtPeerCollParams p) {           \
        all_reduce_two_shot<T>(p);                                                               \
    }                                                                                            \
    extern "C" __global__ void ft_peer_all_gather_##SFX(FtPeerCollParams p) { all_gather<T>(p); } \
    extern "C" __global__ void ft_peer_reduce_scatter_##SFX(FtPeerCollParams p) {                \
        reduce_scatter<T>(p);                                                                    \
    }                                                                                            \
    extern "C" __global__ void ft_peer_broadcast_##SFX(FtPeerCollParams p) { broadcast<T>(p); }

FT_PEER_ENTRIES(f32, float)
FT_PEER_ENTRIES(bf16, __nv_bfloat16)

// Barrier: one flag barrier (the "done" value of the call).
extern "C" __global__ void ft_peer_barrier(FtPeerCollParams p) { phase_barrier(p, p.epoch + 3); }
