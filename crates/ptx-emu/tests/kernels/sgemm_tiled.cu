// f32 GEMM for the speed example: C[M,N] = A[M,K] x B[K,N], all row-major f32. A CTA of 256
// threads computes a 64 x 64 tile of C through shared-memory tiles of A (64 x 8, stored
// transposed) and B (8 x 64); each thread accumulates a 4 x 4 register tile with FMAs.
// Launch: block (256, 1, 1), grid (N / 64, M / 64, 1); M % 64 == 0, N % 64 == 0, K % 8 == 0.

#define BM 64
#define BN 64
#define BK 8
#define TM 4
#define TN 4

extern "C" __global__ void sgemm_tiled(const float* A, const float* B, float* C, int M, int N,
                                       int K) {
    __shared__ __align__(16) float As[BK][BM];
    __shared__ __align__(16) float Bs[BK][BN];
    int t = threadIdx.x;
    int tx = t % 16, ty = t / 16;
    int row0 = blockIdx.y * BM, col0 = blockIdx.x * BN;
    float acc[TM][TN] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
        for (int e = t; e < BM * BK; e += 256) {
            int r = e / BK, c = e % BK;
            As[c][r] = A[static_cast<size_t>(row0 + r) * K + k0 + c];
        }
#pragma unroll
        for (int e = t; e < BK * BN; e += 256) {
            int r = e / BN, c = e % BN;
            Bs[r][c] = B[static_cast<size_t>(k0 + r) * N + col0 + c];
        }
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[TM], b[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As[k][ty * TM + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = Bs[k][tx * TN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j)
            C[static_cast<size_t>(row0 + ty * TM + i) * N + col0 + tx * TN + j] = acc[i][j];
}
