/*
 * ferrotron_params.h: the parameter structs of every ferrotron CUDA kernel.
 *
 * THIS FILE IS THE ABI'S SINGLE SOURCE. Kernels (kernels/<family>/<name>.cu) take these structs
 * BY VALUE as their only argument; Rust reads the very same definitions through bindgen, whose
 * output is committed as src/kernels/abi.rs. Never hand-edit src/kernels/abi.rs: change this
 * header, then regenerate it with
 *
 *     FERROTRON_BLESS=1 cargo test --test kernel_abi
 *
 * (bindgen needs libclang: `apt-get install libclang-dev`). Without FERROTRON_BLESS that test
 * fails when the committed file is stale, so the two cannot drift apart silently. A new struct
 * also needs its `unsafe impl DeviceRepr` in src/kernels/mod.rs.
 *
 * Rules, so that one layout holds for nvcc, clang/bindgen and the PTX emulator alike:
 *   - plain C only (no C++ features, no CUDA types): this header is also parsed as C by bindgen;
 *   - device pointers are `const void*` (inputs) / `void*` (outputs): the element type is the
 *     kernel's suffix (_f32, _bf16), not the struct's;
 *   - sizes and counts are uint64_t; order fields so that no padding is needed;
 *   - matrices are row-major and dense: element (r, c) is at index r * cols + c.
 */
#ifndef FERROTRON_PARAMS_H
#define FERROTRON_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Parameters of `ft_bias_gelu_fwd_{f32,bf16}`: `y[r, c] = gelu(x[r, c] + bias[c])`.
 *
 * GeLU is Megatron's tanh approximation, evaluated in f32 on `z = x + bias` (formed in f32), the
 * result rounded once to the element type. `y == x` (in place) is allowed; `y` may not overlap
 * `bias`.
 */
typedef struct FtBiasGeluFwdParams {
    /** Input, `[rows, cols]` row-major. */
    const void* x;
    /** Bias, `[cols]`. */
    const void* bias;
    /** Output, `[rows, cols]` row-major. */
    void* y;
    /** Number of rows (e.g. tokens). */
    uint64_t rows;
    /** Number of columns (e.g. hidden / tp); the bias length. */
    uint64_t cols;
} FtBiasGeluFwdParams;

/**
 * Parameters of the fused bias + GeLU backward with dbias, `ft_bias_gelu_bwd_dbias_{f32,bf16}`
 * then `ft_bias_gelu_dbias_reduce_{f32,bf16}` (same struct, same stream, in that order):
 * `dx[r, c] = dy[r, c] * gelu'(x[r, c] + bias[c])` and `dbias[c]` = the sum over rows of the
 * same f32 products, in ONE pass over dy and x.
 *
 * The rows are cut into `chunks` chunks of `chunk_rows` rows (the last may be shorter). The first
 * kernel writes dx and `partial[k, c]`, the f32 sum of chunk k's products in row order; the
 * second adds `partial[0, c], ..., partial[chunks - 1, c]` in order and rounds once into
 * `dbias[c]`. The products are summed BEFORE any rounding to the element type. The summation
 * order depends only on `rows` and `chunk_rows` (the host derives `chunk_rows` from the shape),
 * so results are bitwise the same run after run. `dx == dy` (in place) is allowed: each thread
 * reads an element before writing it. `dbias` and `partial` may not overlap anything else.
 */
typedef struct FtBiasGeluBwdDbiasParams {
    /** Gradient of the output, `[rows, cols]` row-major. */
    const void* dy;
    /** The forward input, `[rows, cols]` row-major. */
    const void* x;
    /** The forward bias, `[cols]`. */
    const void* bias;
    /** Gradient of the input (of `x + bias`), `[rows, cols]` row-major. */
    void* dx;
    /** Gradient of the bias, `[cols]`. */
    void* dbias;
    /** f32 scratch `[chunks, cols]`: the per-chunk column sums. */
    void* partial;
    /** Number of rows. */
    uint64_t rows;
    /** Number of columns; the bias length. */
    uint64_t cols;
    /** Rows per chunk (>= 1). */
    uint64_t chunk_rows;
    /** `ceil(rows / chunk_rows)` (0 when rows == 0). */
    uint64_t chunks;
} FtBiasGeluBwdDbiasParams;

/**
 * Parameters of every `ft_gemm_<layout>_<epilogue>_<out>[_small|_unaligned]` kernel
 * (kernels/gemm/gemm.cu): `c[M, N] = epilogue(op(a)[M, K] * op(b)[K, N])`, bf16 `a`/`b`, f32
 * accumulation, `c` of the kernel's output type (`_bf16` or `_f32`).
 *
 * Storage (row-major, dense): layout `nt`: `a` is `[m, k]`, `b` is `[n, k]`; `nn`: `a` is
 * `[m, k]`, `b` is `[k, n]`; `tn`: `a` is `[k, m]`, `b` is `[k, n]`. `bias` and `pre` have the
 * output's element type. `c` may not overlap `a`, `b`, `bias` or `pre`.
 */
typedef struct FtGemmParams {
    /** A operand (bf16), `[m, k]` (`nt`, `nn`) or `[k, m]` (`tn`). */
    const void* a;
    /** B operand (bf16), `[n, k]` (`nt`) or `[k, n]` (`nn`, `tn`). */
    const void* b;
    /** Output `[m, n]`; also read by the `accum` epilogue (`c += acc`). */
    void* c;
    /** Bias `[n]` (`bias`, `bias_gelu` epilogues), else unused (may be NULL). */
    const void* bias;
    /** `[m, n]`: written with the pre-activation `acc + bias` by `bias_gelu` when non-NULL; the
     *  GeLU input read by `dgelu`; else unused (may be NULL). */
    void* pre;
    /** Rows of `op(a)` and `c`. */
    uint64_t m;
    /** Columns of `op(b)` and `c`. */
    uint64_t n;
    /** The reduction dimension. */
    uint64_t k;
    /** Scale of the product: every epilogue sees `acc = alpha * op(a) op(b)`. */
    float alpha;
    /** Unused (keeps the struct free of padding). */
    uint32_t reserved;
} FtGemmParams;

/**
 * Parameters of `ft_add_{f32,bf16}` (kernels/elementwise/residual.cu): `out[i] = a[i] + b[i]`
 * for `i < n`, summed in f32 and rounded once. `out` may not overlap `a` or `b` partially
 * (`out == a` is allowed).
 */
typedef struct FtAddParams {
    /** First input, `[n]`. */
    const void* a;
    /** Second input, `[n]`. */
    const void* b;
    /** Output, `[n]`. */
    void* out;
    /** Number of elements. */
    uint64_t n;
} FtAddParams;

/**
 * Parameters of `ft_bias_add_{f32,bf16}` (kernels/elementwise/residual.cu):
 * `y[r, c] = x[r, c] + bias[c]`, summed in f32 and rounded once.
 */
typedef struct FtBiasAddParams {
    /** Input, `[rows, cols]` row-major. */
    const void* x;
    /** Bias, `[cols]`. */
    const void* bias;
    /** Output, `[rows, cols]` row-major. */
    void* y;
    /** Number of rows. */
    uint64_t rows;
    /** Number of columns; the bias length. */
    uint64_t cols;
} FtBiasAddParams;

/**
 * Parameters of `ft_column_sum_<x>_<out>` (kernels/elementwise/residual.cu; `<x>_<out>` is
 * `f32_f32`, `bf16_bf16` or `bf16_f32`): `s[c] = x[0, c] + ... + x[rows - 1, c]` in f32, rows
 * added in order starting from zero; then `out[c] = s[c]`, or with `accumulate != 0`,
 * `out[c] = out[c] + s[c]` (one f32 addition), rounded once to the output type.
 */
typedef struct FtColumnSumParams {
    /** Input, `[rows, cols]` row-major. */
    const void* x;
    /** Output, `[cols]` (also read when `accumulate != 0`). */
    void* out;
    /** Number of rows. */
    uint64_t rows;
    /** Number of columns. */
    uint64_t cols;
    /** Non-zero: add the sums to `out` instead of overwriting it. */
    uint64_t accumulate;
} FtColumnSumParams;

/**
 * Parameters of `ft_layernorm_fwd_{f32,bf16}` (kernels/norm/layernorm.cu): per row,
 * `mean = sum(x) / cols`, `var = sum((x - mean)^2) / cols` (biased, two passes),
 * `rstd = 1 / sqrt(var + eps)`, `y = (x - mean) * rstd * gamma + beta`; `mean` and `rstd` are
 * stored as f32. `y` may not overlap any input.
 */
typedef struct FtLayerNormFwdParams {
    /** Input, `[rows, cols]` row-major. */
    const void* x;
    /** Scale, `[cols]`. */
    const void* gamma;
    /** Shift, `[cols]`. */
    const void* beta;
    /** Output, `[rows, cols]` row-major. */
    void* y;
    /** Row means (f32), `[rows]`. */
    void* mean;
    /** Row reciprocal standard deviations (f32), `[rows]`. */
    void* rstd;
    /** Number of rows. */
    uint64_t rows;
    /** Number of columns (the normalised dimension). */
    uint64_t cols;
    /** Added to the variance; positive. */
    float eps;
    /** Unused; keeps the struct free of padding (set to 0). */
    uint32_t reserved;
} FtLayerNormFwdParams;

/**
 * Parameters of `ft_layernorm_bwd_{f32,bf16}` (dx, one block per row; fused path: also the
 * per-block partial dgamma / dbeta) and `ft_layernorm_dparams_{f32,bf16}` (dgamma, dbeta, one
 * thread per column: the partials in block order, or the rows in order) in
 * kernels/norm/layernorm.cu. With `xhat = (x - mean) * rstd` and `g = dy * gamma`:
 * `dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))`, `dgamma[c] = sum_r dy * xhat`,
 * `dbeta[c] = sum_r dy` (f32 accumulators, rounded once).
 */
typedef struct FtLayerNormBwdParams {
    /** Gradient of the output, `[rows, cols]`. */
    const void* dy;
    /** The forward input, `[rows, cols]`. */
    const void* x;
    /** The forward scale, `[cols]`. */
    const void* gamma;
    /** The forward's row means (f32), `[rows]`. */
    const void* mean;
    /** The forward's row rstd (f32), `[rows]`. */
    const void* rstd;
    /** Gradient of the input, `[rows, cols]`. */
    void* dx;
    /** Gradient of gamma, `[cols]`. */
    void* dgamma;
    /** Gradient of beta, `[cols]`. */
    void* dbeta;
    /** Fused path: f32 `[partial_blocks, 2, cols]`, the dx kernel's per-block partial sums of
     *  `dy * xhat` and `dy` (its blocks' rows in grid-stride order), which the dparams kernel
     *  adds up in block order; NULL: the dparams kernel sums the rows itself. */
    void* partials;
    /** Number of rows. */
    uint64_t rows;
    /** Number of columns. */
    uint64_t cols;
    /** Fused path: the dx kernel's grid size (it must equal gridDim.x of that launch), else 0. */
    uint64_t partial_blocks;
} FtLayerNormBwdParams;

/**
 * Parameters of `ft_softmax_fwd_{f32,bf16}` (kernels/softmax/softmax.cu):
 * `y = softmax(scale * x)` over each row of `x` viewed as `[batch, rows, cols]`. With
 * `causal != 0`, position `(i, j)` of each `[rows, cols]` matrix is masked (its `y` is 0) when
 * `j > i + cols - rows`; a fully masked row is all zeros.
 */
typedef struct FtSoftmaxFwdParams {
    /** Input, `[batch * rows, cols]`. */
    const void* x;
    /** Output, `[batch * rows, cols]`. */
    void* y;
    /** Number of `[rows, cols]` matrices. */
    uint64_t batch;
    /** Rows per matrix (the query positions of the causal mask). */
    uint64_t rows;
    /** Columns (the softmax dimension). */
    uint64_t cols;
    /** Multiplies `x` before the softmax. */
    float scale;
    /** Non-zero: apply the causal mask. */
    uint32_t causal;
} FtSoftmaxFwdParams;

/**
 * Parameters of `ft_softmax_bwd_{f32,bf16}` (kernels/softmax/softmax.cu), from the forward
 * output: `dx = scale * y * (dy - sum_c(dy * y))` per row.
 */
typedef struct FtSoftmaxBwdParams {
    /** Gradient of the output, `[rows, cols]`. */
    const void* dy;
    /** The forward output, `[rows, cols]`. */
    const void* y;
    /** Gradient of the input, `[rows, cols]`. */
    void* dx;
    /** Number of rows (every row of every matrix). */
    uint64_t rows;
    /** Columns. */
    uint64_t cols;
    /** The forward's scale. */
    float scale;
    /** Unused; keeps the struct free of padding (set to 0). */
    uint32_t reserved;
} FtSoftmaxBwdParams;

/**
 * Parameters of `ft_cross_entropy_fwd_{f32,bf16}` and `ft_cross_entropy_bwd_{f32,bf16}`
 * (kernels/loss/cross_entropy.cu). Forward: `losses[r] = (max - logits[r, t]) + ln(sum_c
 * exp(logits[r, c] - max))` (f32). Backward: `dlogits[r, c] = (softmax(logits[r])[c] -
 * [c == t]) * dloss[r]`. A target outside `[0, classes)` makes the kernel store
 * `min(r)` over such rows into `*error` (atomicMin; the host initialises it to 0xFFFFFFFF) and
 * write NaN into that row's outputs. `rows` must be below 2^32 - 1.
 */
typedef struct FtCrossEntropyParams {
    /** Logits, `[rows, classes]`. */
    const void* logits;
    /** Class indices (int32), `[rows]`. */
    const void* targets;
    /** Backward only: f32 `[rows]` gradient of each row's loss (else NULL). */
    const void* dloss;
    /** Forward: f32 losses `[rows]`; backward: `dlogits` `[rows, classes]`. */
    void* out;
    /** One uint32: the first row with an out-of-range target, or 0xFFFFFFFF. */
    void* error;
    /** Number of rows. */
    uint64_t rows;
    /** Number of classes. */
    uint64_t classes;
} FtCrossEntropyParams;

/**
 * Parameters of `ft_adamw_{f32,bf16}` (kernels/optim/adamw.cu), one AdamW step with PyTorch
 * semantics: `p = p * decay; m = beta1 * m + (1 - beta1) * g; v = beta2 * v + (1 - beta2) * g^2;
 * p -= lr * (m * inv_bc1) / (sqrt(v * inv_bc2) + eps)`, in f32 (`m`, `v` are f32), `p` rounded
 * once. The host computes `decay = 1 - lr * weight_decay` and the bias corrections
 * `inv_bc = 1 / (1 - beta^step)`.
 */
typedef struct FtAdamWParams {
    /** Parameters, `[n]`, updated in place. */
    void* param;
    /** Gradients, `[n]`. */
    const void* grad;
    /** First moments (f32), `[n]`, updated in place. */
    void* m;
    /** Second moments (f32), `[n]`, updated in place. */
    void* v;
    /** Number of elements. */
    uint64_t n;
    /** Learning rate. */
    float lr;
    /** `beta1`. */
    float beta1;
    /** `beta2`. */
    float beta2;
    /** `1 - beta1`. */
    float one_minus_beta1;
    /** `1 - beta2`. */
    float one_minus_beta2;
    /** Added to the denominator. */
    float eps;
    /** `1 / (1 - beta1^step)`. */
    float inv_bc1;
    /** `1 / (1 - beta2^step)`. */
    float inv_bc2;
    /** `1 - lr * weight_decay`. */
    float decay;
    /** Unused; keeps the struct free of padding (set to 0). */
    uint32_t reserved;
} FtAdamWParams;

/** Flag slots per rank in a peer flag array: the most CTAs a peer-collective launch may use. */
#define FT_PEER_MAX_CTAS 64

/**
 * Parameters of the peer collectives (kernels/comm/peer.cu): `ft_peer_all_reduce_one_shot_<t>`,
 * `ft_peer_all_reduce_two_shot_<t>`, `ft_peer_all_gather_<t>`, `ft_peer_reduce_scatter_<t>`,
 * `ft_peer_broadcast_<t>` (`t` = `f32` or `bf16`) and `ft_peer_barrier`.
 *
 * `table` is this rank's peer table on its own device, `3 * world + 2` words: `[0, world)` the
 * staging buffer of every rank, `[world, 2 world)` the flag array of every rank
 * (`world * FT_PEER_MAX_CTAS` u64 slots, zeroed at creation), `[2 world, 3 world + 1)` element
 * offsets of the ranks' blocks (all-gather, reduce-scatter, two-shot all-reduce), and
 * `[3 world + 1]` the abort word (0; the host sets 1 when a peer failed, a kernel sets 2 when it
 * gave up waiting).
 */
typedef struct FtPeerCollParams {
    /** This rank's input: the all-reduce buffer, the all-gather block, the reduce-scatter input,
     *  the broadcast root's buffer. */
    const void* input;
    /** This rank's output (may equal `input` for all-reduce and broadcast). */
    void* output;
    /** This rank's peer table (see above). */
    uint64_t* table;
    /** This rank. */
    uint64_t rank;
    /** Number of ranks (at most `blockDim.x / gridDim.x`). */
    uint64_t world;
    /** Elements of the all-reduce / broadcast buffer. */
    uint64_t count;
    /** The call's epoch base: its phases publish `epoch + 1`, `epoch + 2`, `epoch + 3`. */
    uint64_t epoch;
    /** Reduction: 0 sum, 1 avg, 2 max, 3 min. */
    uint64_t op;
    /** Broadcast root. */
    uint64_t root;
    /** Polls of a flag before giving up (0: never). */
    uint64_t spin_limit;
} FtPeerCollParams;

/**
 * Parameters of the all-gather + GEMM overlap kernels (kernels/overlap/ag_gemm.cu):
 * `ft_ag_gemm_nt_<epilogue>_bf16[_small]` (`epilogue` = `none` or `bias`).
 *
 * `Y[m, n] = epilogue(X[m, k] W[n, k]^T)` where `X` is the all-gather along the rows of every
 * rank's `[m_local, k]` shard (`m = world * m_local`), each shard read straight from its rank's
 * peer staging buffer (`table`, as in `FtPeerCollParams`) once its "chunk ready" flags reached
 * `epoch + 1` (published by `ft_ag_gemm_stage_bf16`, a `FtPeerCollParams` launch of
 * `stage_ctas` CTAs). The tile height must divide `m_local`.
 */
typedef struct FtAgGemmParams {
    /** The GEMM (`nt` layout): `a` unused (the rows come from the staging buffers), `b` the
     *  weight `[n, k]`, `c` the output `[m, n]`, `bias` `[n]` for the `bias` epilogue, `m` =
     *  `world * m_local`. */
    FtGemmParams gemm;
    /** This rank's peer table (see `FtPeerCollParams`). */
    uint64_t* table;
    /** This rank. */
    uint64_t rank;
    /** Number of ranks. */
    uint64_t world;
    /** Rows of every rank's shard. */
    uint64_t m_local;
    /** The call's epoch base: the shards are ready at `epoch + 1`. */
    uint64_t epoch;
    /** CTAs of the staging launch: flag slots `[q][0, stage_ctas)` announce rank q's shard. */
    uint64_t stage_ctas;
    /** Polls of a flag before giving up (0: never). */
    uint64_t spin_limit;
} FtAgGemmParams;

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FERROTRON_PARAMS_H */
