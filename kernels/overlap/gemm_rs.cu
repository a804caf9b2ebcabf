// gemm_rs.cu: GEMM + reduce-scatter overlap (issue #8): the forward GEMM of a row-parallel layer
// under sequence parallelism, `Y_r[M_local, N] = sum_q (X_q[M, K] W_q[N, K]^T)[rows of rank r]`:
// each rank multiplies its K shard, and every finished output tile is pushed at once into the
// staging buffer of the rank that owns its rows (the symmetric buffers of kernels/comm/peer.cu,
// addressed through the peer table), instead of a full partial product followed by a
// reduce-scatter.
//
// A call (one host rendezvous, epoch base e, see src/comm/peer.rs) is four launches per rank:
//   1. ft_gemm_rs_nt_bf16[_small] (FtAgGemmParams): the sm_80 GEMM of kernels/gemm/gemm_core.cuh,
//      one block tile per CTA (the tile height divides M_local, so a tile's rows belong to one
//      rank q). Its epilogue stores the tile, rounded to bf16 exactly as the plain GEMM's
//      epilogue, into slot [rank] of rank q's staging buffer (`[world, M_local, N]`): a peer
//      store as soon as the tile is done.
//   2. ft_peer_barrier (epoch block 0): every rank's tiles have landed everywhere.
//   3. ft_gemm_rs_reduce_bf16 (FtPeerCollParams, `count` = M_local * N): y[i] = the slots of
//      this rank's staging added in rank order in f32 (slot 0 first), rounded once.
//   4. ft_peer_barrier (epoch block 1): the "done" barrier, so no rank pushes tiles of its next
//      call into a staging buffer whose owner is still reducing this one.
// Flag values only grow (epochs), the arrays are never reset.
//
// Results: each slot holds exactly what the plain GEMM (ft_gemm_nt_none_bf16, same tile) writes
// for those rows, and the reduction is the threads backend's (f32 in rank order, one rounding),
// so the output is bitwise that of GEMM followed by reduce-scatter.

#include "ft_common.cuh"
#include "ft_vec.cuh"
#include "ft_epilogues.cuh"  // generated: the epilogue functors ft_epi_<name>
#include "../gemm/gemm_core.cuh"

namespace {

// Launch 1: one BM x BN tile of this rank's partial product, stored into the owner's staging.
template <int BM, int BN, int WARPS_M, int WARPS_N>
__device__ __forceinline__ void gemm_rs_tile(const FtAgGemmParams& p) {
    const uint64_t m0 = (uint64_t)blockIdx.y * BM;
    const uint64_t q = m0 / p.m_local;  // the rank owning these rows
    FtGemmParams g = p.gemm;
    // Row m of the product goes to row m - q * m_local of slot `rank` of rank q's staging: the
    // epilogue writes g.c + m * n, so shift the base by (rank - q) * m_local rows (integer
    // arithmetic on the address: the shifted base itself is never dereferenced).
    const uint64_t stage = p.table[q];
    const uint64_t row_bytes = g.n * sizeof(__nv_bfloat16);
    g.c = reinterpret_cast<void*>(stage + p.rank * p.m_local * row_bytes - q * p.m_local * row_bytes);
    ftg::gemm_tile<ftg::LAYOUT_NT, ft_epi_none, __nv_bfloat16, BM, BN, WARPS_M, WARPS_N, true>(
        g, static_cast<const __nv_bfloat16*>(g.a), g.m, m0, m0, (uint64_t)blockIdx.x * BN);
}

}  // namespace

// The GEMM entries, in the tiles of gemm.cu's aligned variants (no suffix: 128 x 128, 8 warps;
// _small: 64 x 64, 4 warps).
extern "C" __global__ void __launch_bounds__(256) ft_gemm_rs_nt_bf16(FtAgGemmParams p) {
    gemm_rs_tile<128, 128, 2, 4>(p);
}
extern "C" __global__ void __launch_bounds__(128) ft_gemm_rs_nt_bf16_small(FtAgGemmParams p) {
    gemm_rs_tile<64, 64, 2, 2>(p);
}

// Launch 3: this rank's rows, the slots of its staging added in rank order.
extern "C" __global__ void ft_gemm_rs_reduce_bf16(FtPeerCollParams p) {
    const __nv_bfloat16* stage = reinterpret_cast<const __nv_bfloat16*>(p.table[p.rank]);
    __nv_bfloat16* y = static_cast<__nv_bfloat16*>(p.output);
    constexpr uint64_t N = FtVec<__nv_bfloat16>::N;
    uint64_t done = 0;
    // 16-byte vectors when the slots (count elements apart) and y are 16-byte aligned; the same
    // adds in the same order as the element loop, one rounding.
    if (ft_aligned(stage, 15) && ft_aligned(y, 15) && p.count % N == 0) {
        const uint64_t nv = p.count / N;
        for (uint64_t i = ft_global_thread(); i < nv; i += ft_grid_threads()) {
            float acc[N], v[N];
            ft_load_vec(stage, i, acc);
            for (uint64_t src = 1; src < p.world; ++src) {
                ft_load_vec(stage + src * p.count, i, v);
#pragma unroll
                for (uint64_t j = 0; j < N; ++j) acc[j] += v[j];
            }
            ft_store_vec(y, i, acc);
        }
        done = nv * N;
    }
    for (uint64_t i = done + ft_global_thread(); i < p.count; i += ft_grid_threads()) {
        float acc = __bfloat162float(stage[i]);
        for (uint64_t src = 1; src < p.world; ++src) acc += __bfloat162float(stage[src * p.count + i]);
        y[i] = __float2bfloat16_rn(acc);
    }
}
