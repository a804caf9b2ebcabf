// ag_gemm.cu: all-gather + GEMM overlap (issue #8): the forward GEMM of a column-parallel layer
// under sequence parallelism, `Y[M, N] = epilogue(X[M, K] W[N, K]^T)` with X the all-gather
// along the rows of every rank's shard `[M_local, K]` (M = world * M_local), without gathering X
// first: the GEMM reads each rank's shard straight from that rank's peer staging buffer (the
// symmetric buffers of kernels/comm/peer.cu, addressed through the peer table) as soon as the
// shard's flags say it arrived.
//
// A call (one host rendezvous, epoch base e, see src/comm/peer.rs) is three launches per rank:
//   1. ft_ag_gemm_stage_bf16 (FtPeerCollParams, `count` = M_local * K): copies this rank's
//      shard into its own staging buffer; each CTA, once its share is copied, publishes e + 1
//      (system-scope fence, then release stores) into slot [rank][cta] of every rank's flag
//      array. It waits for nothing.
//   2. ft_ag_gemm_nt_<epilogue>_bf16[_small] (FtAgGemmParams): the sm_80 GEMM of
//      kernels/gemm/gemm_core.cuh, one block tile per CTA. Every m-tile lies in one rank's
//      chunk q (the tile height divides M_local); the CTA's thread 0 first waits (acquire
//      loads) until slots [q][0, stage_ctas) of this rank's flag array reached e + 1, then the
//      CTA runs the unchanged GEMM main loop with A = rank q's staging buffer (global row m is
//      its row m - q * M_local). The m-tiles are rotated by the rank, so each rank starts with
//      its own chunk (ready at once) while the peers' shards arrive.
//   3. ft_peer_barrier (kernels/comm/peer.cu) with the same epoch: the "done" barrier (e + 3),
//      so no rank overwrites its staging buffer for its next call while a peer may still read it.
// Flag values only grow (epochs), the arrays are never reset.
//
// Results: every output element is the same f32 dot product in the same k order as the plain
// GEMM kernel (ft_gemm_nt_<epilogue>_bf16, either tile), rounded once: bitwise equal to
// all-gather followed by that GEMM.
//
// Failure: a waiting thread gives up when the abort word of this rank's table is raised or after
// `spin_limit` polls (then it writes 2 into the abort word if it was 0); the CTA returns without
// computing its tile and the host reports the failure.

#include "ft_common.cuh"
#include "ft_vec.cuh"
#include "ft_epilogues.cuh"  // generated: the epilogue functors ft_epi_<name>
#include "../gemm/gemm_core.cuh"

namespace {

__device__ __forceinline__ void st_release_sys(uint64_t* p, uint64_t v) {
    asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

__device__ __forceinline__ uint64_t ld_acquire_sys(const uint64_t* p) {
    uint64_t v;
    asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}

// Launch 1: this rank's shard into its staging buffer, then "chunk ready" = epoch + 1.
__device__ __forceinline__ void ag_stage(const FtPeerCollParams& p) {
    ft_copy_range(reinterpret_cast<__nv_bfloat16*>(p.table[p.rank]),
                  static_cast<const __nv_bfloat16*>(p.input), p.count);
    __syncthreads();  // this CTA's share is written
    if (threadIdx.x == 0) {
        __threadfence_system();
        for (uint64_t q = 0; q < p.world; ++q) {
            uint64_t* flags = reinterpret_cast<uint64_t*>(p.table[p.world + q]);
            st_release_sys(flags + p.rank * FT_PEER_MAX_CTAS + blockIdx.x, p.epoch + 1);
        }
    }
}

// Launch 2: one BM x BN tile of Y, its A rows from the staging buffer of the rank owning them.
template <typename EPI, int BM, int BN, int WARPS_M, int WARPS_N>
__device__ __forceinline__ void ag_gemm(const FtAgGemmParams& p) {
    extern __shared__ __align__(128) unsigned char ft_gemm_smem[];
    const uint64_t per_chunk = p.m_local / BM;  // m-tiles per rank's chunk
    const uint64_t mtiles = p.world * per_chunk;
    const uint64_t t = ((uint64_t)blockIdx.y + p.rank * per_chunk) % mtiles;  // own chunk first
    const uint64_t q = t / per_chunk;
    if (threadIdx.x == 0) {
        const uint64_t* flags =
            reinterpret_cast<const uint64_t*>(p.table[p.world + p.rank]) + q * FT_PEER_MAX_CTAS;
        uint64_t* abort_word = &p.table[3 * p.world + 1];
        int ready = 1;
        for (uint64_t c = 0; c < p.stage_ctas && ready; ++c) {
            uint64_t spins = 0;
            while (ld_acquire_sys(flags + c) < p.epoch + 1) {
                if (ld_acquire_sys(abort_word) != 0) {
                    ready = 0;
                    break;
                }
                if (p.spin_limit != 0 && ++spins > p.spin_limit) {
                    atomicCAS((unsigned long long*)abort_word, 0ull, 2ull);
                    ready = 0;
                    break;
                }
            }
        }
        // The verdict goes through the (not yet used) dynamic shared memory: a static
        // __shared__ word would push the 128 tile past the 48 KiB default.
        *reinterpret_cast<volatile int*>(ft_gemm_smem) = ready;
    }
    __syncthreads();
    const int ready = *reinterpret_cast<volatile int*>(ft_gemm_smem);
    __syncthreads();  // everyone read it before the pipeline overwrites it
    if (!ready) return;
    const __nv_bfloat16* A = reinterpret_cast<const __nv_bfloat16*>(p.table[q]);
    ftg::gemm_tile<ftg::LAYOUT_NT, EPI, __nv_bfloat16, BM, BN, WARPS_M, WARPS_N, true>(
        p.gemm, A, p.m_local, (t % per_chunk) * BM, t * BM, (uint64_t)blockIdx.x * BN);
}

}  // namespace

extern "C" __global__ void ft_ag_gemm_stage_bf16(FtPeerCollParams p) { ag_stage(p); }

// The GEMM entries, in the tiles of gemm.cu's aligned variants (no suffix: 128 x 128, 8 warps;
// _small: 64 x 64, 4 warps).
#define FT_AG_GEMM_ENTRY(EPI)                                                                  \
    extern "C" __global__ void __launch_bounds__(256) ft_ag_gemm_nt_##EPI##_bf16(              \
        FtAgGemmParams p) {                                                                    \
        ag_gemm<ft_epi_##EPI, 128, 128, 2, 4>(p);                                              \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(128) ft_ag_gemm_nt_##EPI##_bf16_small(        \
        FtAgGemmParams p) {                                                                    \
        ag_gemm<ft_epi_##EPI, 64, 64, 2, 2>(p);                                                \
    }

FT_AG_GEMM_ENTRY(none)
FT_AG_GEMM_ENTRY(bias)
