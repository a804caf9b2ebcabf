// Fixture for the tensor-core path: C[M,N] (f32) = A[M,K] (bf16, row-major) x B[K,N] (bf16,
// row-major). A CTA of 4 warps computes a 16 x 32 tile of C, one warp per 16 x 8 sub-tile.
// Per 16-wide K step the CTA stages the 16 x 16 A tile and the 16 x 32 B tile in shared memory
// with cp.async (16 bytes per thread), then every warp loads its fragments with
// ldmatrix.x4 (A) and ldmatrix.x2.trans (B) and issues mma.m16n8k16.row.col.f32.bf16.bf16.f32.
// Launch: block (128, 1, 1), grid (N / 32, M / 16, 1); M % 16 == 0, N % 32 == 0, K % 16 == 0.
// bf16 values are passed as their raw 16-bit patterns.

__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void copy16(void* dst_smem, const void* src_gmem) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst_smem)),
                 "l"(src_gmem)
                 : "memory");
}

extern "C" __global__ void mma_gemm_bf16(const unsigned short* A, const unsigned short* B,
                                         float* C, int M, int N, int K) {
    __shared__ __align__(16) unsigned short As[16 * 16];
    __shared__ __align__(16) unsigned short Bs[16 * 32];
    int t = threadIdx.x;
    int warp = t / 32;
    int lane = t % 32;
    int row0 = blockIdx.y * 16;
    int col0 = blockIdx.x * 32;
    float acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
    for (int k0 = 0; k0 < K; k0 += 16) {
        if (t < 32) {
            // A tile: 16 rows of 16 elements = 32 chunks of 8 elements.
            int r = t / 2, c = (t % 2) * 8;
            copy16(&As[r * 16 + c], A + static_cast<size_t>(row0 + r) * K + k0 + c);
        } else if (t < 96) {
            // B tile: 16 rows of 32 elements = 64 chunks of 8 elements.
            int q = t - 32;
            int r = q / 4, c = (q % 4) * 8;
            copy16(&Bs[r * 32 + c], B + static_cast<size_t>(k0 + r) * N + col0 + c);
        }
        asm volatile("cp.async.commit_group;\n" ::: "memory");
        asm volatile("cp.async.wait_group 0;\n" ::: "memory");
        __syncthreads();

        unsigned a0, a1, a2, a3, b0, b1;
        // Lanes 0-15 address rows 0-15 at k 0..7, lanes 16-31 rows 0-15 at k 8..15.
        unsigned pa = smem_addr(&As[(lane % 16) * 16 + (lane / 16) * 8]);
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3)
                     : "r"(pa));
        // Lanes 0-7 address k rows 0-7, lanes 8-15 k rows 8-15 of this warp's 8 columns.
        unsigned pb = smem_addr(&Bs[(lane % 16) * 32 + warp * 8]);
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(b0), "=r"(b1)
                     : "r"(pb));
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
            "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(acc0), "+f"(acc1), "+f"(acc2), "+f"(acc3)
            : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
        __syncthreads();
    }
    int g = lane / 4, tig = lane % 4;
    int r = row0 + g;
    int c = col0 + warp * 8 + tig * 2;
    C[static_cast<size_t>(r) * N + c] = acc0;
    C[static_cast<size_t>(r) * N + c + 1] = acc1;
    C[static_cast<size_t>(r + 8) * N + c] = acc2;
    C[static_cast<size_t>(r + 8) * N + c + 1] = acc3;
}
