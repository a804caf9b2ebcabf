// gemm.cu: the portable sm_80 GEMM tier (issue #8): bf16 inputs, f32 accumulation on the tensor
// cores (mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32), bf16 or f32 output, fused
// compile-time epilogues.
//
//   C[M, N] = epilogue( op(A)[M, K] * op(B)[K, N] )          every matrix dense and row-major
//
// Layouts (the op(A), op(B) storage):
//   nt  A [M, K], B stored [N, K]   forward   y  = x W^T
//   nn  A [M, K], B [K, N]          dgrad     dx = dy W
//   tn  A stored [K, M], B [K, N]   wgrad     dW = dy^T x
//
// Epilogues (per output element, acc = the f32 dot product; OutT = the output element type;
// bias and pre have the output's element type):
//   none        c = acc
//   bias        c = acc + bias[n]
//   bias_gelu   z = acc + bias[n]; c = gelu(z); and pre[m, n] = z when p.pre != NULL
//   dgelu       c = acc * gelu'(pre[m, n])         (pre is an input here: GeLU backward fused
//                                                    into the dgrad GEMM)
//   accum       c += acc                           (f32 c only: weight-gradient accumulation)
// GeLU is ft_gelu.cuh's (Megatron tanh approximation, f32). Every value is formed in f32 and
// rounded once to OutT (round-to-nearest-even for bf16).
//
// Entry points: ft_gemm_<layout>_<epilogue>_<out>[_small|_unaligned], instantiated for
//   nt: none, bias, bias_gelu   x  bf16, f32
//   nn: none, dgelu             x  bf16, f32
//   tn: none (bf16, f32), accum (f32)
// each in three tile variants:
//   (no suffix)   128 x 128 x 32 block tile, 8 warps (2 x 4, 64 x 32 per warp), 256 threads
//   _small         64 x  64 x 32 block tile, 4 warps (2 x 2, 32 x 32 per warp), 128 threads
//   _unaligned     the _small tile, operands loaded with bounds-checked scalar loads
// The aligned variants (no suffix, _small) need the contiguous dimension of A and B (K for
// row-major A and nt's B, N for nn/tn's B, M for tn's A) to be a multiple of 8 and both base
// pointers 16-byte aligned; the host picks _unaligned otherwise. Any M, N, K >= 1 is correct in
// every variant (boundary tiles are zero-filled / predicated).
//
// Launch: grid (ceil(N / BN), ceil(M / BM), 1), block (32 * warps, 1, 1), dynamic shared memory
// STAGES * (BM + BN) * BK * 2 bytes (3 stages: 48 KiB for the 128 tile, 24 KiB for the 64 tile;
// never above the 48 KiB default, so no cuFuncSetAttribute is needed). See src/backend/cuda/gemm.rs.
//
// Pipeline: STAGES = 3 shared-memory stages filled by cp.async.cg (16 bytes, src-size 0 for
// zero-fill outside the matrix), one commit group per k-tile (empty groups at the tail keep the
// count uniform), cp.async.wait_group STAGES-2 + __syncthreads before a k-tile is consumed; the
// load of k-tile kt + STAGES - 1 is issued before the math of k-tile kt into the stage k-tile
// kt - 1 used (the barrier just passed separates them).
//
// Shared-memory layouts and swizzles (a "chunk" is 16 bytes = 8 bf16):
//   K-contiguous tiles ([rows][BK = 32], 4 chunks = 64 bytes per row: A of nt/nn, B of nt):
//     chunk c of row r lives at chunk c ^ ((r >> 1) & 3). An ldmatrix 8x8 matrix reads 8
//     consecutive rows at one logical chunk: rows r, r + 1 share a 128-byte line and (r >> 1)
//     takes 4 values, so the 8 reads hit 8 distinct 16-byte bank groups: 0 conflicts.
//   MN-contiguous tiles ([BK = 32][cols], cols / 8 = 8 or 16 chunks per row: B of nn/tn, A of tn,
//     read with ldmatrix .trans): chunk c of row r lives at chunk c ^ (r & 7): the 8 rows of a
//     matrix hit 8 distinct bank groups.
//   cp.async writes: a warp writes 32 consecutive logical chunks = 512 contiguous bytes (the
//   swizzle permutes chunks within a row), so each bank gets 4 words: the 4-wavefront minimum.
// Fragments: A row-major via ldmatrix.x4 (K-contiguous) or ldmatrix.x4.trans (tn); B via
// ldmatrix.x4 (nt, B stored [N, K] is op(B) column-major, exactly the .col operand) or
// ldmatrix.x4.trans (nn, tn); each x4 feeds one m16 A fragment or two n8 B fragments.
//
// No .func calls (the emulator runs inlined code only): every helper is __forceinline__.

#include "ft_common.cuh"
#include "ft_gelu.cuh"

namespace ftg {

enum Layout { LAYOUT_NT = 0, LAYOUT_NN = 1, LAYOUT_TN = 2 };
enum Epi { EPI_NONE = 0, EPI_BIAS = 1, EPI_BIAS_GELU = 2, EPI_DGELU = 3, EPI_ACCUM = 4 };

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

__device__ __forceinline__ float load_out(const float* p, uint64_t i) { return p[i]; }
__device__ __forceinline__ float load_out(const __nv_bfloat16* p, uint64_t i) {
    return __bfloat162float(p[i]);
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

// The epilogue of one output element: returns the value to store, writes pre when asked.
template <int EPI, typename OutT>
__device__ __forceinline__ float epi_value(const FtGemmParams& p, float alpha, float acc,
                                           uint64_t m, uint64_t n) {
    const uint64_t idx = m * p.n + n;
    if (alpha != 1.0f) acc *= alpha;  // alpha * op(a) op(b), once, before any epilogue
    if (EPI == EPI_BIAS) {
        return acc + load_out(static_cast<const OutT*>(p.bias), n);
    } else if (EPI == EPI_BIAS_GELU) {
        const float z = acc + load_out(static_cast<const OutT*>(p.bias), n);
        if (p.pre != nullptr) ft_store_f32(static_cast<OutT*>(p.pre), idx, z);
        return ft_gelu(z);
    } else if (EPI == EPI_DGELU) {
        return acc * ft_gelu_grad(load_out(static_cast<const OutT*>(p.pre), idx));
    } else if (EPI == EPI_ACCUM) {
        return acc + load_out(static_cast<const OutT*>(p.c), idx);
    } else {
        return acc;
    }
}

template <int LAYOUT, int EPI, typename OutT, int BM, int BN, int WARPS_M, int WARPS_N,
          bool ALIGNED>
__device__ __forceinline__ void gemm_kernel(const FtGemmParams& p) {
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
    const uint64_t m0 = (uint64_t)blockIdx.y * BM;
    const uint64_t n0 = (uint64_t)blockIdx.x * BN;
    const __nv_bfloat16* A = static_cast<const __nv_bfloat16*>(p.a);
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
            load_mn_tile<BM, NT, ALIGNED>(sa, A, K, M, k0, m0, tid);
        } else {
            load_k_tile<BM, NT, ALIGNED>(sa, A, M, K, m0, k0, tid);
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

}  // namespace ftg

#define FT_GEMM_ENTRY(NAME, LAYOUT, EPI, OUTT)                                                 \
    extern "C" __global__ void __launch_bounds__(256) NAME(FtGemmParams p) {                   \
        ftg::gemm_kernel<ftg::LAYOUT_##LAYOUT, ftg::EPI, OUTT, 128, 128, 2, 4, true>(p);                \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(128) NAME##_small(FtGemmParams p) {           \
        ftg::gemm_kernel<ftg::LAYOUT_##LAYOUT, ftg::EPI, OUTT, 64, 64, 2, 2, true>(p);                  \
    }                                                                                          \
    extern "C" __global__ void __launch_bounds__(128) NAME##_unaligned(FtGemmParams p) {       \
        ftg::gemm_kernel<ftg::LAYOUT_##LAYOUT, ftg::EPI, OUTT, 64, 64, 2, 2, false>(p);                 \
    }

FT_GEMM_ENTRY(ft_gemm_nt_none_bf16, NT, EPI_NONE, __nv_bfloat16)
FT_GEMM_ENTRY(ft_gemm_nt_none_f32, NT, EPI_NONE, float)
FT_GEMM_ENTRY(ft_gemm_nt_bias_bf16, NT, EPI_BIAS, __nv_bfloat16)
FT_GEMM_ENTRY(ft_gemm_nt_bias_f32, NT, EPI_BIAS, float)
FT_GEMM_ENTRY(ft_gemm_nt_bias_gelu_bf16, NT, EPI_BIAS_GELU, __nv_bfloat16)
FT_GEMM_ENTRY(ft_gemm_nt_bias_gelu_f32, NT, EPI_BIAS_GELU, float)
FT_GEMM_ENTRY(ft_gemm_nn_none_bf16, NN, EPI_NONE, __nv_bfloat16)
FT_GEMM_ENTRY(ft_gemm_nn_none_f32, NN, EPI_NONE, float)
FT_GEMM_ENTRY(ft_gemm_nn_dgelu_bf16, NN, EPI_DGELU, __nv_bfloat16)
FT_GEMM_ENTRY(ft_gemm_nn_dgelu_f32, NN, EPI_DGELU, float)
FT_GEMM_ENTRY(ft_gemm_tn_none_bf16, TN, EPI_NONE, __nv_bfloat16)
FT_GEMM_ENTRY(ft_gemm_tn_none_f32, TN, EPI_NONE, float)
FT_GEMM_ENTRY(ft_gemm_tn_accum_f32, TN, EPI_ACCUM, float)
