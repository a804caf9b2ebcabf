// gemm_core.cuh: the core of the sm_80 GEMM tier (see kernels/gemm/gemm.cu for the layouts,
// tiles, pipeline, swizzles and epilogues): `ftg::gemm_kernel` (one block tile of C per CTA,
// blockIdx.y over M tiles, blockIdx.x over N tiles) and `ftg::gemm_tile`, the same with the
// A operand's rows given explicitly (kernels/overlap/ag_gemm.cu reads them from a peer's
// staging buffer). Included by gemm.cu and the overlap kernels; every helper is __forceinline__.

#pragma once

#include "ft_common.cuh"
#include "ft_epilogues.cuh"  // generated: the epilogue functors ft_epi_<name>

namespace ftg {

enum Layout { LAYOUT_NT = 0, LAYOUT_NN = 1, LAYOUT_TN = 2 };

constexpr int BK = 32;
constexpr int STAGES = 3;

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// 16-byte cp.async with zero-fill: copies `valid ? 16 : 0` bytes and zero-fills the rest.
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
    const unsigned src_size = valid ? 16u : 0u;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
                 "r"(src_size)
                 : "memory");
}

__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(unsigned (&r)[4], unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Byte offset of logical chunk `c` of row `r` in a K-contiguous [rows][32] bf16 tile.
__device__ __forceinline__ unsigned kc_off(int r, int c) {
    return static_cast<unsigned>(r * 64 + ((c ^ ((r >> 1) & 3)) << 4));
}

// Byte offset of logical chunk `c` of row `r` in an MN-contiguous [32][COLS] bf16 tile.
template <int COLS>
__device__ __forceinline__ unsigned mn_off(int r, int c) {
    return static_cast<unsigned>(r * (COLS * 2) + ((c ^ (r & 7)) << 4));
}

// Fills one 16-byte chunk of shared memory from 8 consecutive bf16 of row `row` (elements
// col .. col + 7) of a row-major [rows, cols] matrix, zero outside it: cp.async when ALIGNED
// (then cols % 8 == 0 and col % 8 == 0, so a chunk is all in or all out), else 8 bounds-checked
// scalar loads and one 16-byte shared store.
template <bool ALIGNED>
__device__ __forceinline__ void load_chunk(unsigned char* smem, unsigned off,
                                           const __nv_bfloat16* g, uint64_t rows, uint64_t cols,
                                           uint64_t row, uint64_t col) {
    if (ALIGNED) {
        const bool valid = row < rows && col < cols;
        const __nv_bfloat16* src = valid ? g + row * cols + col : g;
        cp_async16(smem_u32(smem + off), src, valid);
    } else {
        const unsigned short* gs = reinterpret_cast<const unsigned short*>(g);
        unsigned short v[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            v[e] = (row < rows && col + e < cols) ? gs[row * cols + col + e] : (unsigned short)0;
        }
        uint4 w;
        w.x = (unsigned)v[0] | ((unsigned)v[1] << 16);
        w.y = (unsigned)v[2] | ((unsigned)v[3] << 16);
        w.z = (unsigned)v[4] | ((unsigned)v[5] << 16);
        w.w = (unsigned)v[6] | ((unsigned)v[7] << 16);
        *reinterpret_cast<uint4*>(smem + off) = w;
    }
}

// Loads a K-contiguous tile: rows row0 .. row0 + R - 1 and k0 .. k0 + 31 of a row-major
// [rows, K] matrix into a [R][32] swizzled tile.
template <int R, int NT, bool ALIGNED>
__device__ __forceinline__ void load_k_tile(unsigned char* smem, const __nv_bfloat16* g,
                                            uint64_t rows, uint64_t K, uint64_t row0,
                                            uint64_t k0, int tid) {
    constexpr int CHUNKS = R * 4;
    static_assert(CHUNKS % NT == 0, "tile chunks must split evenly over the threads");
#pragma unroll
    for (int i = 0; i < CHUNKS / NT; ++i) {
        const int id = tid + i * NT;
        const int r = id >> 2, c = id & 3;
        load_chunk<ALIGNED>(smem, kc_off(r, c), g, rows, K, row0 + r, k0 + c * 8);
    }
}

// Loads an MN-contiguous tile: k0 .. k0 + 31 (rows) and col0 .. col0 + COLS - 1 of a row-major
// [K, cols] matrix into a [32][COLS] swizzled tile.
template <int COLS, int NT, bool ALIGNED>
__device__ __forceinline__ void load_mn_tile(unsigned char* smem, const __nv_bfloat16* g,
                                             uint64_t K, uint64_t cols, uint64_t k0,
                                             uint64_t col0, int tid) {
    constexpr int CPR = COLS / 8;  // chunks per row
    constexpr int CHUNKS = BK * CPR;
    static_assert(CHUNKS % NT == 0, "tile chunks must split evenly over the threads");
#pragma unroll
    for (int i = 0; i < CHUNKS / NT; ++i) {
        const int id = tid + i * NT;
        const int r = id / CPR, c = id % CPR;
        load_chunk<ALIGNED>(smem, mn_off<COLS>(r, c), g, K, cols, k0 + r, col0 + c * 8);
    }
}

template <typename OutT>
struct Pair;
template <>
struct Pair<float> {
    typedef float2 T;
    __device__ __forceinline__ static T make(float a, float b) { return make_float2(a, b); }
};
template <>
struct Pair<__nv_bfloat16> {
    typedef __nv_bfloat162 T;
    __device__ __forceinline__ static T make(float a, float b) {
        return __floats2bfloat162_rn(a, b);
    }
};

// The epilogue of one output element: scales by alpha once, then the generated functor EPI
// returns the value to store (and writes pre when it stores one).
template <typename EPI, typename OutT>
__device__ __forceinline__ float epi_value(const FtGemmParams& p, float alpha, float acc,
                                           uint64_t m, uint64_t n) {
    if (alpha != 1.0f) acc *= alpha;  // alpha * op(a) op(b), once, before any epilogue
    return EPI::template apply<OutT>(p, acc, m, n);
}

// One BM x BN tile of C: rows m0 .. m0 + BM - 1, columns n0 .. n0 + BN - 1, whose A operand is
// `A` with `a_rows` rows (nt, nn: `[a_rows, K]`; tn: stored `[K, a_rows]`), the tile's first row
// being A's row `a_row0` (p.a, p.m and m0 for the plain GEMM). The epilogue writes rows m0 ..
// of p.c (bounded by p.m).
template <int LAYOUT, typename EPI, typename OutT, int BM, int BN, int WARPS_M, int WARPS_N,
          bool ALIGNED>
__device__ __forceinline__ void gemm_tile(const FtGemmParams& p, const __nv_bfloat16* A,
                                          uint64_t a_rows, uint64_t a_row0, uint64_t m0,
                                          uint64_t n0) {
    constexpr int NT = WARPS_M * WARPS_N * 32;  // threads
    constexpr int WM = BM / WARPS_M;  // warp tile
    constexpr int WN = BN / WARPS_N;
    constexpr int MI = WM / 16;  // m16 fragments per warp
    constexpr int NI = WN / 8;   // n8 fragments per warp
    static_assert(MI >= 1 && NI >= 2 && NI % 2 == 0, "warp tile");
    constexpr int A_BYTES = BM * BK * 2;
    constexpr int B_BYTES = BN * BK * 2;
    constexpr int STAGE_BYTES = A_BYTES + B_BYTES;

    extern __shared__ __align__(128) unsigned char ft_gemm_smem[];

    const uint64_t M = p.m, N = p.n, K = p.k;
    const __nv_bfloat16* B = static_cast<const __nv_bfloat16*>(p.b);
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int wm = warp / WARPS_N;
    const int wn = warp % WARPS_N;
    const int ktiles = (int)((K + BK - 1) / BK);

    auto load_stage = [&](int stage, int kt) {
        unsigned char* sa = ft_gemm_smem + stage * STAGE_BYTES;
        unsigned char* sb = sa + A_BYTES;
        const uint64_t k0 = (uint64_t)kt * BK;
        if (LAYOUT == LAYOUT_TN) {
            load_mn_tile<BM, NT, ALIGNED>(sa, A, K, a_rows, k0, a_row0, tid);
        } else {
            load_k_tile<BM, NT, ALIGNED>(sa, A, a_rows, K, a_row0, k0, tid);
        }
        if (LAYOUT == LAYOUT_NT) {
            load_k_tile<BN, NT, ALIGNED>(sb, B, N, K, n0, k0, tid);
        } else {
            load_mn_tile<BN, NT, ALIGNED>(sb, B, K, N, k0, n0, tid);
        }
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }

    const int q = lane >> 3;  // which 8x8 matrix of an x4 this lane addresses
    const int r8 = lane & 7;  // which row of it

    for (int kt = 0; kt < ktiles; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {
            const int nk = kt + STAGES - 1;
            if (nk < ktiles) load_stage(nk % STAGES, nk);
            cp_async_commit();
        }
        const unsigned char* sa = ft_gemm_smem + (kt % STAGES) * STAGE_BYTES;
        const unsigned char* sb = sa + A_BYTES;
        const unsigned sa32 = smem_u32(sa), sb32 = smem_u32(sb);
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
            unsigned af[MI][4];
            unsigned bf[NI / 2][4];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const int mb = wm * WM + i * 16;
                if (LAYOUT == LAYOUT_TN) {
                    // stored [k][m]: matrix q covers k half q >> 1, m half q & 1.
                    const int kr = kk * 16 + (q >> 1) * 8 + r8;
                    const int mc = (mb + (q & 1) * 8) >> 3;
                    ldmatrix_x4_trans(af[i], sa32 + mn_off<BM>(kr, mc));
                } else {
                    // stored [m][k]: lanes 0-15 rows at k half 0, lanes 16-31 at k half 1.
                    const int mr = mb + (lane & 15);
                    const int kc = kk * 2 + (lane >> 4);
                    ldmatrix_x4(af[i], sa32 + kc_off(mr, kc));
                }
            }
#pragma unroll
            for (int j = 0; j < NI / 2; ++j) {
                const int nb = wn * WN + j * 16;
                if (LAYOUT == LAYOUT_NT) {
                    // stored [n][k]: matrix q covers n half q >> 1, k half q & 1.
                    const int nr = nb + (q >> 1) * 8 + r8;
                    const int kc = kk * 2 + (q & 1);
                    ldmatrix_x4(bf[j], sb32 + kc_off(nr, kc));
                } else {
                    // stored [k][n]: matrix q covers k half q & 1, n half q >> 1.
                    const int kr = kk * 16 + (q & 1) * 8 + r8;
                    const int nc = (nb + (q >> 1) * 8) >> 3;
                    ldmatrix_x4_trans(bf[j], sb32 + mn_off<BN>(kr, nc));
                }
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j)
                    mma_bf16(acc[i][j], af[i], bf[j >> 1][(j & 1) * 2],
                             bf[j >> 1][(j & 1) * 2 + 1]);
        }
    }
    cp_async_wait<0>();

    // Epilogue straight from the accumulator fragments: element e of fragment (i, j) is row
    // g (+8 for e >= 2), columns 2 * tig, 2 * tig + 1.
    OutT* C = static_cast<OutT*>(p.c);
    const float alpha = p.alpha;  // in a register: the stores below may not alias it
    const bool pairs = (N % 2 == 0) && ft_aligned(p.c, 2 * sizeof(OutT) - 1);
    const int g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int i = 0; i < MI; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint64_t m = m0 + wm * WM + i * 16 + h * 8 + g;
            if (m >= M) continue;
#pragma unroll
            for (int j = 0; j < NI; ++j) {
                const uint64_t n = n0 + wn * WN + j * 8 + tig * 2;
                if (n >= N) continue;
                const float v0 = epi_value<EPI, OutT>(p, alpha, acc[i][j][h * 2], m, n);
                if (n + 1 < N) {
                    const float v1 = epi_value<EPI, OutT>(p, alpha, acc[i][j][h * 2 + 1], m, n + 1);
                    if (pairs) {
                        *reinterpret_cast<typename Pair<OutT>::T*>(C + m * N + n) =
                            Pair<OutT>::make(v0, v1);
                    } else {
                        ft_store_f32(C, m * N + n, v0);
                        ft_store_f32(C, m * N + n + 1, v1);
                    }
                } else {
                    ft_store_f32(C, m * N + n, v0);
                }
            }
        }
    }
}

// The plain GEMM: CTA (blockIdx.x, blockIdx.y) computes the tile at (blockIdx.y * BM,
// blockIdx.x * BN) of C = op(p.a) op(p.b).
template <int LAYOUT, typename EPI, typename OutT, int BM, int BN, int WARPS_M, int WARPS_N,
          bool ALIGNED>
__device__ __forceinline__ void gemm_kernel(const FtGemmParams& p) {
    const uint64_t m0 = (uint64_t)blockIdx.y * BM;
    const uint64_t n0 = (uint64_t)blockIdx.x * BN;
    gemm_tile<LAYOUT, EPI, OutT, BM, BN, WARPS_M, WARPS_N, ALIGNED>(
        p, static_cast<const __nv_bfloat16*>(p.a), p.m, m0, m0, n0);
}

}  // namespace ftg

