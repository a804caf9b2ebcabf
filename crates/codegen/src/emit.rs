//! The CUDA C emitter: one readable kernel per expression.
//!
//! Every node of the graph becomes one `const float vN = ...;` line, in topological order,
//! computed once (the graph is already CSE'd) in f32; inputs are widened to f32 on load and the
//! result is rounded once to the output type on store. The kernel's name is
//! `ft_fused_<16 hex digits>`, an FNV-1a hash of the expression's canonical form and the output
//! type: the same expression always gets the same name (and a cache key), on every machine.
//!
//! **Elementwise kernels** (no reduction) are a grid-stride loop over the `rows * cols` output
//! elements with a *vector path*: `V` consecutive elements per thread and step, where `V` makes
//! the widest tensor's access 16 bytes (`V = 4` when an f32 tensor is read or written, else 8),
//! so every full and row tensor moves in one `V`-element access per step (16-byte `float4` /
//! `uint4`, or 8 bytes for bf16 next to f32; bf16 widens and packs in pairs, bf16x2). Whether the
//! vector path applies is checked **in the kernel, at run time**: every pointer it vector-loads
//! or stores is aligned to its access size, and, when a [`Bcast::Row`] or [`Bcast::Col`] input
//! is read, `cols % V == 0` (so a step stays in one row: the row input is one aligned vector at
//! column `c`, the column input one value at row `r`). A scalar loop then does the rest: the
//! tail `n % V`, or every element when the vector path does not apply (odd `cols` with a
//! broadcast, an offset pointer). [`Kernel::launch`] sizes the grid for the vector path.
//!
//! **Reduction kernels** (the expression has a [`crate::expr::RedOp`] node) give each row one
//! block of [`REDUCE_THREADS`] threads (a grid-stride loop over rows). The row's reductions run
//! in dependency phases (a reduction whose operand uses another one runs in a later phase);
//! each phase is one loop over the row's columns (thread `t` takes columns `t, t + T, ...` and
//! accumulates its partial in that order) followed by one block reduction per reduction: a
//! shuffle tree within each warp, then warp 0 over the per-warp partials in shared memory. The
//! order is fixed (no atomics), so the result is bitwise the same on every run and for every
//! grid size. A reduced value is a per-row value, computed once per row like every other node
//! that does not vary along the row (a [`Bcast::Col`] input, a scalar). Then the output pass:
//! a loop over the columns writing `out[r * cols + c]`, or, for a per-row expression
//! ([`Expr::per_row`]), thread 0 writing `out[r]` (the output has `rows` elements). Loads are
//! scalar and coalesced (consecutive threads, consecutive columns); each phase and the output
//! pass re-read the row's inputs (from cache on a GPU: a row of a few KiB), recomputing the
//! elementwise values they need rather than keeping them.
//!
//! Parameters, in order: one pointer per non-scalar input (declaration order, used or not), the
//! output pointer, `rows` and `cols` (`unsigned long long`), then one `float` per scalar input.

use std::fmt::Write as _;

use crate::expr::{Bcast, BinOp, CmpOp, Dtype, Expr, Node, NodeId, RedOp, UnOp};

/// A generated kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// The entry point's name.
    pub name: String,
    /// The CUDA C source (self-contained: `cuda_bf16.h` only).
    pub source: String,
    /// The inputs, in declaration order: name, dtype, broadcast.
    pub inputs: Vec<(String, Dtype, Bcast)>,
    /// The output element type.
    pub out: Dtype,
    /// The expression's canonical form.
    pub canonical: String,
    /// Elements per step of an elementwise kernel's vector path (4 or 8); 1 for a reduction
    /// kernel.
    pub vector: usize,
    /// Whether the kernel has reductions (one block of [`REDUCE_THREADS`] per row).
    pub reduces: bool,
    /// Whether it writes one value per row ([`Expr::per_row`]) rather than `rows * cols`.
    pub per_row: bool,
}

/// Threads per block of a reduction kernel (one block per row).
pub const REDUCE_THREADS: usize = 256;

/// Threads per block of an elementwise kernel.
pub const ELEMENTWISE_THREADS: usize = 256;

/// The most blocks [`Kernel::launch`] asks for (the kernels loop over the rest).
pub const MAX_BLOCKS: usize = 1024;

/// `ceil(log2 n)` for `n >= 1` (0 for 0 and 1).
fn ceil_log2(n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        (usize::BITS - (n - 1).leading_zeros()) as usize
    }
}

/// The roundings on the longest path of a row sum over `cols` terms in a reduction kernel's
/// fixed order: a thread adds its `ceil(cols / T)` terms one by one (`ceil(cols / T) - 1`
/// roundings; `T` = [`REDUCE_THREADS`]), then the block's tree adds the `min(cols, T)` non-empty
/// partials in `ceil(log2 min(cols, T))` levels (a level whose partner is an empty partial adds
/// an exact 0). About `log2(cols)` for rows up to a few thousand; the evaluator's depth uses it.
pub fn sum_rounding_steps(cols: usize) -> usize {
    if cols <= 1 {
        return 0;
    }
    cols.div_ceil(REDUCE_THREADS) - 1 + ceil_log2(cols.min(REDUCE_THREADS))
}

impl Kernel {
    /// The kernel's parameter bytes (the C ABI: 8-byte pointers and integers, then 4-byte
    /// floats) for device addresses `ptrs` (one per non-scalar input, in order), `out`, the
    /// shape and `scalars` (one per scalar input, in order).
    pub fn params(&self, ptrs: &[u64], out: u64, rows: u64, cols: u64, scalars: &[f32]) -> Vec<u8> {
        let mut p = Vec::new();
        for a in ptrs {
            p.extend_from_slice(&a.to_le_bytes());
        }
        p.extend_from_slice(&out.to_le_bytes());
        p.extend_from_slice(&rows.to_le_bytes());
        p.extend_from_slice(&cols.to_le_bytes());
        for s in scalars {
            p.extend_from_slice(&s.to_le_bytes());
        }
        p
    }

    /// The number of output elements for a `[rows, cols]` problem: `rows` for a per-row
    /// kernel, else `rows * cols`.
    pub fn out_len(&self, rows: usize, cols: usize) -> usize {
        if self.per_row {
            rows
        } else {
            rows.saturating_mul(cols)
        }
    }

    /// The launch shape for a `[rows, cols]` problem: `(grid, block, dynamic shared bytes)`.
    /// A reduction kernel takes one block of [`REDUCE_THREADS`] per row (at most
    /// [`MAX_BLOCKS`], looping over the rest); an elementwise kernel one thread per vector step
    /// in blocks of [`ELEMENTWISE_THREADS`] (at most [`MAX_BLOCKS`]). Neither needs dynamic
    /// shared memory. Any grid gives the same result (the kernels loop).
    pub fn launch(&self, rows: usize, cols: usize) -> (u32, u32, u32) {
        if self.reduces {
            (rows.clamp(1, MAX_BLOCKS) as u32, REDUCE_THREADS as u32, 0)
        } else {
            let steps = rows.saturating_mul(cols).div_ceil(self.vector.max(1));
            let blocks = steps.div_ceil(ELEMENTWISE_THREADS).clamp(1, MAX_BLOCKS);
            (blocks as u32, ELEMENTWISE_THREADS as u32, 0)
        }
    }
}

/// FNV-1a, 64 bits.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// An f32 constant as C: the shortest decimal that round-trips, or the bits for non-finite.
fn c_float(bits: u32) -> String {
    let v = f32::from_bits(bits);
    if v.is_finite() {
        let s = format!("{v:?}");
        let s = if s.contains(['.', 'e']) {
            s
        } else {
            format!("{s}.0")
        };
        format!("{s}f")
    } else {
        format!("__int_as_float(0x{bits:08x})")
    }
}

/// The device helpers every generated source starts with (GeLU, NaN-propagating max/min).
pub const PRELUDE: &str = r#"#include <cuda_bf16.h>

#ifndef FT_CODEGEN_PRELUDE
#define FT_CODEGEN_PRELUDE
// Not `static`: nvcc warns (#177) about unused static functions, and not every kernel uses every
// helper. Whole-program compilation keeps them private to the module all the same.
// Megatron's GeLU (tanh approximation) and its derivative, as in kernels/include/ft_gelu.cuh.
__device__ __forceinline__ float ft_cg_gelu_t(float z) {
    return tanhf(0.7978845608028654f * (z + 0.044715f * z * z * z));
}
__device__ __forceinline__ float ft_cg_gelu(float z) {
    return 0.5f * z * (1.0f + ft_cg_gelu_t(z));
}
__device__ __forceinline__ float ft_cg_gelu_grad(float z) {
    const float t = ft_cg_gelu_t(z);
    return 0.5f * z * ((1.0f - t * t) * (0.7978845608028654f + (float)(3.0 * 0.044715 * 0.7978845608028654) * z * z))
        + 0.5f * (1.0f + t);
}
// max/min that propagate NaN (fmaxf/fminf drop it).
__device__ __forceinline__ float ft_cg_max(float a, float b) {
    return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b);
}
__device__ __forceinline__ float ft_cg_min(float a, float b) {
    return (a != a || b != b) ? __int_as_float(0x7fc00000) : fminf(a, b);
}
#endif
"#;

/// The vector loads and stores of elementwise kernels: 4 or 8 consecutive elements as f32 in
/// one 8- or 16-byte access; bf16 in pairs (bf16x2), low half first.
pub const VECTOR_PRELUDE: &str = r#"
#ifndef FT_CODEGEN_VECTOR
#define FT_CODEGEN_VECTOR
// Vector accesses: `p` must be aligned to the access (16 bytes for f32x4 and bf16x8, 8 for
// bf16x4). A bf16 widens to f32 exactly (its bits are the high half of the f32's); stores round
// to nearest even, as __float2bfloat16_rn does.
__device__ __forceinline__ void ft_cg_ld_f32x4(const float* p, float* v) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w;
}
__device__ __forceinline__ void ft_cg_st_f32x4(float* p, const float* v) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ __forceinline__ void ft_cg_unpack_bf16x2(unsigned int u, float* v) {
    v[0] = __uint_as_float(u << 16);
    v[1] = __uint_as_float(u & 0xffff0000u);
}
__device__ __forceinline__ unsigned int ft_cg_pack_bf16x2(const float* v) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v[0], v[1]);
    return *reinterpret_cast<const unsigned int*>(&h);
}
__device__ __forceinline__ void ft_cg_ld_bf16x4(const __nv_bfloat16* p, float* v) {
    const uint2 t = *reinterpret_cast<const uint2*>(p);
    ft_cg_unpack_bf16x2(t.x, v); ft_cg_unpack_bf16x2(t.y, v + 2);
}
__device__ __forceinline__ void ft_cg_st_bf16x4(__nv_bfloat16* p, const float* v) {
    *reinterpret_cast<uint2*>(p) = make_uint2(ft_cg_pack_bf16x2(v), ft_cg_pack_bf16x2(v + 2));
}
__device__ __forceinline__ void ft_cg_ld_bf16x8(const __nv_bfloat16* p, float* v) {
    const uint4 t = *reinterpret_cast<const uint4*>(p);
    ft_cg_unpack_bf16x2(t.x, v); ft_cg_unpack_bf16x2(t.y, v + 2);
    ft_cg_unpack_bf16x2(t.z, v + 4); ft_cg_unpack_bf16x2(t.w, v + 6);
}
__device__ __forceinline__ void ft_cg_st_bf16x8(__nv_bfloat16* p, const float* v) {
    *reinterpret_cast<uint4*>(p) = make_uint4(ft_cg_pack_bf16x2(v), ft_cg_pack_bf16x2(v + 2),
                                              ft_cg_pack_bf16x2(v + 4), ft_cg_pack_bf16x2(v + 6));
}
#endif
"#;

/// The block reductions of reduction kernels (they need the NaN-propagating max of
/// [`PRELUDE`]).
pub const REDUCE_PRELUDE: &str = r#"
#ifndef FT_CODEGEN_REDUCE
#define FT_CODEGEN_REDUCE
// Block-wide reductions over blockDim.x threads (a multiple of 32, at most 1024) in a fixed
// order, so the result is the same on every run and every thread gets it: a shuffle tree in
// each warp (lane i takes lane i + 16, 8, 4, 2, 1), then warp 0 the same over the per-warp
// results, kept in shared memory `red` (33 floats: one per warp, then the result). No atomics.
__device__ __forceinline__ float ft_cg_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float ft_cg_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = ft_cg_max(v, __shfl_down_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float ft_cg_block_sum(float v, float* red) {
    v = ft_cg_warp_sum(v);
    if ((threadIdx.x & 31u) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = ft_cg_warp_sum(threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f);
        if (threadIdx.x == 0) red[32] = v;
    }
    __syncthreads();
    v = red[32];
    __syncthreads(); // `red` is free for the next reduction
    return v;
}
__device__ __forceinline__ float ft_cg_block_max(float v, float* red) {
    v = ft_cg_warp_max(v);
    if ((threadIdx.x & 31u) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = ft_cg_warp_max(threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : __int_as_float(0xff800000));
        if (threadIdx.x == 0) red[32] = v;
    }
    __syncthreads();
    v = red[32];
    __syncthreads(); // `red` is free for the next reduction
    return v;
}
#endif
"#;

/// The C load (widened to f32) of input `index`, with `i`, `r`, `c` the C names of the element,
/// row and column indices.
fn load_c(index: usize, dtype: Dtype, bcast: Bcast, i: &str, r: &str, c: &str) -> String {
    let p = format!("in{index}");
    let at = match bcast {
        Bcast::Full => format!("{p}[{i}]"),
        Bcast::Row => format!("{p}[{c}]"),
        Bcast::Col => format!("{p}[{r}]"),
        Bcast::Scalar => return p,
    };
    match dtype {
        Dtype::F32 => at,
        Dtype::Bf16 => format!("__bfloat162float({at})"),
    }
}

/// The C store of f32 `v` as `out`.
fn store_c(out: Dtype, v: &str) -> String {
    match out {
        Dtype::F32 => v.to_string(),
        Dtype::Bf16 => format!("__float2bfloat16_rn({v})"),
    }
}

fn v(id: NodeId) -> String {
    format!("v{id}")
}

/// The nodes `targets` need, operands first, not looking into reductions (their values are
/// per-row variables by then).
fn needed(targets: &[NodeId], nodes: &[Node]) -> Vec<NodeId> {
    crate::expr::topo_order(targets, nodes, |n| !matches!(n, Node::Reduce(..)))
}

/// The right-hand side of node `id`'s `const float vN = ...;` line, with a scalar load (element
/// `i`, row `r`, column `c`) for an input.
fn value_c(nodes: &[Node], id: NodeId) -> String {
    match &nodes[id] {
        Node::Input {
            index,
            dtype,
            bcast,
            ..
        } => load_c(*index, *dtype, *bcast, "i", "r", "c"),
        other => node_c(other, &v).unwrap_or_default(),
    }
}

/// Emits the kernel computing `expr` into an output of type `out` (see the module docs for the
/// two kernel shapes).
pub fn elementwise(expr: &Expr, out: Dtype) -> Kernel {
    let g = expr.graph();
    let nodes = g.nodes();
    let canonical = format!("{} -> {out:?}", expr.canonical());
    let name = format!("ft_fused_{:016x}", fnv1a(canonical.as_bytes()));
    let order = expr.reachable();
    let reduces = order
        .iter()
        .any(|&id| matches!(nodes[id], Node::Reduce(..)));
    let per_row = expr.per_row();
    let mut inputs = Vec::new();
    let (mut ptr_params, mut scalar_params) = (Vec::new(), Vec::new());
    for id in g.inputs() {
        if let Node::Input {
            name: n,
            dtype,
            bcast,
            index,
        } = &nodes[id]
        {
            inputs.push((n.clone(), *dtype, *bcast));
            let pname = format!("in{index}");
            match bcast {
                Bcast::Scalar => scalar_params.push(format!("float {pname} /* {n} */")),
                _ => ptr_params.push(format!(
                    "const {}* __restrict__ {pname} /* {n} */",
                    dtype.c_type()
                )),
            }
        }
    }
    // The inputs the expression reads: (index, dtype, broadcast).
    let used: Vec<(usize, Dtype, Bcast)> = order
        .iter()
        .filter_map(|&id| match &nodes[id] {
            Node::Input {
                index,
                dtype,
                bcast,
                ..
            } => Some((*index, *dtype, *bcast)),
            _ => None,
        })
        .collect();
    // The widest tensor access is 16 bytes.
    let widest = used
        .iter()
        .filter(|(_, _, b)| matches!(b, Bcast::Full | Bcast::Row))
        .map(|(_, d, _)| d.size())
        .chain([out.size()])
        .max()
        .unwrap_or(4);
    let vector = if reduces { 1 } else { 16 / widest };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Generated by ferrotron codegen. Expression:\n//   {canonical}"
    );
    if reduces {
        let _ = writeln!(
            s,
            "// One block per row; the row's reductions in fixed-order block reductions, then {}.",
            if per_row {
                "one value per row"
            } else {
                "the elementwise output pass"
            }
        );
    } else {
        let _ = writeln!(
            s,
            "// Elementwise: {vector} elements per step when aligned, a scalar loop for the rest."
        );
    }
    s.push_str(PRELUDE);
    s.push_str(if reduces {
        REDUCE_PRELUDE
    } else {
        VECTOR_PRELUDE
    });
    let mut params = ptr_params;
    params.push(format!("{}* __restrict__ out", out.c_type()));
    params.push("unsigned long long rows".into());
    params.push("unsigned long long cols".into());
    params.extend(scalar_params);
    let _ = writeln!(s, "\nextern \"C\" __global__ void {name}(");
    let _ = writeln!(s, "    {}) {{", params.join(",\n    "));
    if reduces {
        emit_rows(&mut s, expr, &nodes, out, per_row);
    } else {
        emit_flat(&mut s, expr, &nodes, &order, &used, out, vector);
    }
    let _ = writeln!(s, "}}");
    Kernel {
        name,
        source: s,
        inputs,
        out,
        canonical,
        vector,
        reduces,
        per_row,
    }
}

/// The body of an elementwise kernel: the vector path, then the scalar loop.
fn emit_flat(
    s: &mut String,
    expr: &Expr,
    nodes: &[Node],
    order: &[NodeId],
    used: &[(usize, Dtype, Bcast)],
    out: Dtype,
    w: usize,
) {
    let needs_rc = used
        .iter()
        .any(|(_, _, b)| matches!(b, Bcast::Row | Bcast::Col));
    let _ = writeln!(s, "    const unsigned long long n = rows * cols;");
    let _ = writeln!(
        s,
        "    const unsigned long long first = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;"
    );
    let _ = writeln!(
        s,
        "    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;"
    );
    // The vector path's condition and its accesses.
    let mut cond = Vec::new();
    let mut sizes = Vec::new();
    for (index, dtype, bcast) in used {
        if matches!(bcast, Bcast::Full | Bcast::Row) {
            let bytes = w * dtype.size();
            cond.push(format!("(unsigned long long)in{index} % {bytes} == 0"));
            sizes.push(format!("in{index} {bytes}"));
        }
    }
    let out_bytes = w * out.size();
    cond.push(format!("(unsigned long long)out % {out_bytes} == 0"));
    sizes.push(format!("out {out_bytes}"));
    if needs_rc {
        cond.push(format!("cols % {w} == 0"));
    }
    let _ = writeln!(
        s,
        "    // Elements below `tail` are done by the vector path."
    );
    let _ = writeln!(s, "    unsigned long long tail = 0;");
    let _ = writeln!(
        s,
        "    // Vector path: {w} consecutive elements per step, one access per tensor and step (bytes: {}),\n    // when every pointer is aligned to its access{}.",
        sizes.join(", "),
        if needs_rc {
            " and a step stays in one row"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "    if ({}) {{", cond.join(" && "));
    let _ = writeln!(
        s,
        "        for (unsigned long long j = first; j < n / {w}; j += stride) {{"
    );
    let _ = writeln!(s, "            const unsigned long long i = j * {w};");
    if needs_rc {
        let _ = writeln!(s, "            const unsigned long long r = i / cols;");
        let _ = writeln!(s, "            const unsigned long long c = i - r * cols;");
    }
    let vec_fn = |d: Dtype| match d {
        Dtype::F32 => format!("f32x{w}"),
        Dtype::Bf16 => format!("bf16x{w}"),
    };
    for (index, dtype, bcast) in used {
        match bcast {
            Bcast::Full | Bcast::Row => {
                let at = if *bcast == Bcast::Full { "i" } else { "c" };
                let _ = writeln!(
                    s,
                    "            float a{index}[{w}];\n            ft_cg_ld_{}(in{index} + {at}, a{index});",
                    vec_fn(*dtype)
                );
            }
            Bcast::Col => {
                let _ = writeln!(
                    s,
                    "            const float a{index} = {};",
                    load_c(*index, *dtype, *bcast, "i", "r", "c")
                );
            }
            Bcast::Scalar => {}
        }
    }
    let _ = writeln!(s, "            float o[{w}];");
    let _ = writeln!(s, "#pragma unroll");
    let _ = writeln!(s, "            for (int k = 0; k < {w}; ++k) {{");
    for &id in order {
        let rhs = match &nodes[id] {
            Node::Input { index, bcast, .. } => match bcast {
                Bcast::Full | Bcast::Row => format!("a{index}[k]"),
                Bcast::Col => format!("a{index}"),
                Bcast::Scalar => format!("in{index}"),
            },
            other => node_c(other, &v).unwrap_or_default(),
        };
        let _ = writeln!(s, "                const float {} = {rhs};", v(id));
    }
    let _ = writeln!(s, "                o[k] = {};", v(expr.id()));
    let _ = writeln!(s, "            }}");
    let _ = writeln!(s, "            ft_cg_st_{}(out + i, o);", vec_fn(out));
    let _ = writeln!(s, "        }}");
    let _ = writeln!(s, "        tail = n / {w} * {w};");
    let _ = writeln!(s, "    }}");
    let _ = writeln!(
        s,
        "    // Scalar path: the tail, or every element when the vector path does not apply."
    );
    let _ = writeln!(
        s,
        "    for (unsigned long long i = tail + first; i < n; i += stride) {{"
    );
    if needs_rc {
        let _ = writeln!(s, "        const unsigned long long r = i / cols;");
        let _ = writeln!(s, "        const unsigned long long c = i - r * cols;");
    }
    for &id in order {
        let _ = writeln!(s, "        const float {} = {};", v(id), value_c(nodes, id));
    }
    let _ = writeln!(s, "        out[i] = {};", store_c(out, &v(expr.id())));
    let _ = writeln!(s, "    }}");
}

/// The body of a reduction kernel: per row, the reduction phases, then the output pass.
fn emit_rows(s: &mut String, expr: &Expr, nodes: &[Node], out: Dtype, per_row: bool) {
    let (varies, _) = expr.graph().row_structure();
    let order = expr.reachable();
    // The phase of each reduction: one after the latest reduction its operand uses.
    let mut level = vec![0usize; nodes.len()];
    for &id in &order {
        level[id] = match &nodes[id] {
            Node::Input { .. } | Node::Const(_) => 0,
            Node::Reduce(_, a) => level[*a] + 1,
            Node::Unary(_, a) | Node::Cast(_, a) => level[*a],
            Node::Binary(_, a, b) | Node::Cmp(_, a, b) => level[*a].max(level[*b]),
            Node::Select(c, a, b) => level[*c].max(level[*a]).max(level[*b]),
        };
    }
    let phases = order
        .iter()
        .filter(|&&id| matches!(nodes[id], Node::Reduce(..)))
        .map(|&id| level[id])
        .max()
        .unwrap_or(0);
    let mut at_row = vec![false; nodes.len()];
    // Emits the per-row values `targets` need (at row scope, once) and returns the nodes that
    // vary along the row, for a loop over the columns.
    let mut row_values = |s: &mut String, targets: &[NodeId]| -> Vec<NodeId> {
        let need = needed(targets, nodes);
        let mut body = Vec::new();
        for id in need {
            if varies[id] {
                body.push(id);
            } else if !at_row[id] && !matches!(nodes[id], Node::Reduce(..)) {
                at_row[id] = true;
                let _ = writeln!(s, "        const float {} = {};", v(id), value_c(nodes, id));
            }
        }
        body
    };
    // The loop over the row's columns computing `body` (`i` indexes full inputs and the output).
    let column_loop = |s: &mut String, body: &[NodeId], stores: bool| {
        let _ = writeln!(
            s,
            "        for (unsigned long long c = threadIdx.x; c < cols; c += blockDim.x) {{"
        );
        let reads_full = body.iter().any(|&id| {
            matches!(
                nodes[id],
                Node::Input {
                    bcast: Bcast::Full,
                    ..
                }
            )
        });
        if stores || reads_full {
            let _ = writeln!(s, "            const unsigned long long i = r * cols + c;");
        }
        for &id in body {
            let _ = writeln!(
                s,
                "            const float {} = {};",
                v(id),
                value_c(nodes, id)
            );
        }
    };
    let _ = writeln!(
        s,
        "    // The block reductions' scratch: one partial per warp, then the result."
    );
    let _ = writeln!(s, "    __shared__ float ft_red[33];");
    let _ = writeln!(
        s,
        "    for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x) {{"
    );
    for phase in 1..=phases {
        let reds: Vec<(NodeId, RedOp, NodeId)> = order
            .iter()
            .filter_map(|&id| match &nodes[id] {
                Node::Reduce(op, a) if level[id] == phase => Some((id, *op, *a)),
                _ => None,
            })
            .collect();
        let operands: Vec<NodeId> = reds.iter().map(|r| r.2).collect();
        let body = row_values(s, &operands);
        let names: Vec<String> = reds.iter().map(|r| v(r.0)).collect();
        let _ = writeln!(
            s,
            "        // Phase {phase}: {} (each thread's partial over columns threadIdx.x, + blockDim.x, ...).",
            names.join(", ")
        );
        for &(id, op, _) in &reds {
            let init = match op {
                RedOp::Sum | RedOp::Mean => "0.0f",
                RedOp::Max => "__int_as_float(0xff800000) /* -inf */",
            };
            let _ = writeln!(s, "        float p{id} = {init};");
        }
        column_loop(s, &body, false);
        for &(id, op, a) in &reds {
            let line = match op {
                RedOp::Sum | RedOp::Mean => format!("p{id} += {};", v(a)),
                RedOp::Max => format!("p{id} = ft_cg_max(p{id}, {});", v(a)),
            };
            let _ = writeln!(s, "            {line}");
        }
        let _ = writeln!(s, "        }}");
        for &(id, op, _) in &reds {
            let rhs = match op {
                RedOp::Sum => format!("ft_cg_block_sum(p{id}, ft_red)"),
                RedOp::Mean => format!("ft_cg_block_sum(p{id}, ft_red) / (float)cols"),
                RedOp::Max => format!("ft_cg_block_max(p{id}, ft_red)"),
            };
            let _ = writeln!(s, "        const float {} = {rhs};", v(id));
        }
    }
    let root = expr.id();
    let body = row_values(s, &[root]);
    if per_row {
        let _ = writeln!(s, "        // One value per row.");
        let _ = writeln!(
            s,
            "        if (threadIdx.x == 0) out[r] = {};",
            store_c(out, &v(root))
        );
    } else {
        let _ = writeln!(s, "        // Output.");
        column_loop(s, &body, true);
        let _ = writeln!(s, "            out[i] = {};", store_c(out, &v(root)));
        let _ = writeln!(s, "        }}");
    }
    let _ = writeln!(s, "    }}");
}

/// The C expression (f32) of one node that is not an input, with `v(id)` the name of the
/// variable holding node `id`'s value: the one place the IR's operations are spelled in CUDA C
/// (the elementwise kernels and the GEMM epilogue functors share it). `None` for an input node,
/// whose load depends on where the kernel reads it from, and for a reduction, which is a loop
/// over the row (a reduction kernel computes it before the nodes that use it).
pub fn node_c(node: &Node, v: &dyn Fn(usize) -> String) -> Option<String> {
    Some(match node {
        Node::Input { .. } | Node::Reduce(..) => return None,
        Node::Const(bits) => c_float(*bits),
        Node::Unary(op, a) => {
            let a = v(*a);
            match op {
                UnOp::Neg => format!("-{a}"),
                UnOp::Abs => format!("fabsf({a})"),
                UnOp::Exp => format!("expf({a})"),
                UnOp::Log => format!("logf({a})"),
                UnOp::Tanh => format!("tanhf({a})"),
                UnOp::Erf => format!("erff({a})"),
                UnOp::Sqrt => format!("sqrtf({a})"),
                UnOp::Rsqrt => format!("1.0f / sqrtf({a})"),
                UnOp::Gelu => format!("ft_cg_gelu({a})"),
                UnOp::GeluGrad => format!("ft_cg_gelu_grad({a})"),
            }
        }
        Node::Binary(op, a, b) => {
            let (a, b) = (v(*a), v(*b));
            match op {
                BinOp::Add => format!("{a} + {b}"),
                BinOp::Sub => format!("{a} - {b}"),
                BinOp::Mul => format!("{a} * {b}"),
                BinOp::Div => format!("{a} / {b}"),
                BinOp::Max => format!("ft_cg_max({a}, {b})"),
                BinOp::Min => format!("ft_cg_min({a}, {b})"),
            }
        }
        Node::Cmp(op, a, b) => {
            let o = match op {
                CmpOp::Lt => "<",
                CmpOp::Le => "<=",
                CmpOp::Gt => ">",
                CmpOp::Eq => "==",
            };
            format!("({} {o} {}) ? 1.0f : 0.0f", v(*a), v(*b))
        }
        Node::Select(c, a, b) => format!("({} != 0.0f) ? {} : {}", v(*c), v(*a), v(*b)),
        Node::Cast(Dtype::F32, a) => v(*a),
        Node::Cast(Dtype::Bf16, a) => {
            format!("__bfloat162float(__float2bfloat16_rn({}))", v(*a))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{gelu, max, mean, sum, Graph};

    #[test]
    fn the_emitted_kernel_reads_like_the_expression() {
        let g = Graph::new();
        let x = g.input("x", Dtype::Bf16, Bcast::Full);
        let b = g.input("b", Dtype::Bf16, Bcast::Row);
        let s = g.input("s", Dtype::F32, Bcast::Scalar);
        let y = gelu(&x + &b) * &s;
        let k = elementwise(&y, Dtype::Bf16);
        assert!(k.name.starts_with("ft_fused_") && k.name.len() == 9 + 16);
        let src = &k.source;
        for want in [
            "__bfloat162float(in0[i])",
            "__bfloat162float(in1[c])",
            "ft_cg_gelu(",
            "float in2 /* s */",
            "out[i] = __float2bfloat16_rn(",
            "const unsigned long long c = i - r * cols;",
        ] {
            assert!(src.contains(want), "missing {want:?} in\n{src}");
        }
        // Stable names: the same expression in another graph gets the same kernel.
        let g2 = Graph::new();
        let x2 = g2.input("x", Dtype::Bf16, Bcast::Full);
        let b2 = g2.input("b", Dtype::Bf16, Bcast::Row);
        let s2 = g2.input("s", Dtype::F32, Bcast::Scalar);
        let k2 = elementwise(&(gelu(&x2 + &b2) * &s2), Dtype::Bf16);
        assert_eq!(k, k2);
        assert_ne!(elementwise(&y, Dtype::F32).name, k.name);
        assert_eq!(k.params(&[1, 2], 3, 4, 5, &[1.5]).len(), 8 * 5 + 4);
        assert_eq!(c_float(1.0f32.to_bits()), "1.0f");
        assert_eq!(
            c_float(f32::INFINITY.to_bits()),
            "__int_as_float(0x7f800000)"
        );
    }

    #[test]
    fn vector_widths_follow_the_widest_tensor() {
        let g = Graph::new();
        let x = g.input("x", Dtype::Bf16, Bcast::Full);
        let b = g.input("b", Dtype::F32, Bcast::Row);
        let k = elementwise(&gelu(x.clone()), Dtype::Bf16);
        assert_eq!(k.vector, 8);
        assert!(
            k.source.contains("ft_cg_ld_bf16x8(in0 + i, a0)"),
            "{}",
            k.source
        );
        assert!(k.source.contains("ft_cg_st_bf16x8(out + i, o)"));
        assert!(!k.source.contains("cols % 8"), "no broadcast: any cols");
        let k = elementwise(&(&x + &b), Dtype::Bf16);
        assert_eq!(
            k.vector, 4,
            "an f32 row input: 16-byte f32x4, 8-byte bf16x4"
        );
        for want in [
            "ft_cg_ld_bf16x4(in0 + i, a0)",
            "ft_cg_ld_f32x4(in1 + c, a1)",
            "(unsigned long long)in0 % 8 == 0",
            "(unsigned long long)in1 % 16 == 0",
            "cols % 4 == 0",
            "for (unsigned long long i = tail + first; i < n; i += stride)",
        ] {
            assert!(k.source.contains(want), "missing {want:?} in\n{}", k.source);
        }
        assert_eq!(
            k.launch(64, 1024),
            (64, 256, 0),
            "one thread per 4 elements"
        );
        assert_eq!(k.out_len(3, 5), 15);
    }

    #[test]
    fn reductions_run_in_phases_per_row() {
        let g = Graph::new();
        let x = g.input("x", Dtype::F32, Bcast::Full);
        let gamma = g.input("g", Dtype::Bf16, Bcast::Row);
        let d = &x - &mean(&x);
        let ln = &d * &(mean(&(&d * &d)) + 1e-5).rsqrt() * &gamma;
        let k = elementwise(&ln, Dtype::Bf16);
        assert!(k.reduces && !k.per_row && k.vector == 1);
        let src = &k.source;
        for want in [
            "__shared__ float ft_red[33];",
            "for (unsigned long long r = blockIdx.x; r < rows; r += gridDim.x)",
            "// Phase 1:",
            "// Phase 2:",
            "ft_cg_block_sum(",
            ") / (float)cols;",
            "for (unsigned long long c = threadIdx.x; c < cols; c += blockDim.x)",
            "__bfloat162float(in1[c])",
            "out[i] = __float2bfloat16_rn(",
        ] {
            assert!(src.contains(want), "missing {want:?} in\n{src}");
        }
        let body = &src[src.find("extern \"C\"").expect("entry")..];
        assert!(!body.contains("// Phase 3:") && !body.contains("atomic"));
        // The rsqrt of the variance is a per-row value: computed once per row, outside the
        // column loops.
        assert!(src.contains("\n        const float v"), "{src}");
        assert_eq!(k.launch(3, 1000), (3, REDUCE_THREADS as u32, 0));
        let m = elementwise(&max(&x), Dtype::F32);
        assert!(m.per_row && m.source.contains("if (threadIdx.x == 0) out[r] = "));
        assert!(m.source.contains("ft_cg_block_max(") && m.source.contains("/* -inf */"));
        assert_eq!(m.out_len(3, 1000), 3);
        assert_ne!(m.name, elementwise(&sum(&x), Dtype::F32).name);
    }

    #[test]
    fn sum_rounding_steps_follow_the_tree() {
        assert_eq!(sum_rounding_steps(0), 0);
        assert_eq!(sum_rounding_steps(1), 0);
        assert_eq!(sum_rounding_steps(2), 1);
        assert_eq!(sum_rounding_steps(33), 6);
        assert_eq!(sum_rounding_steps(256), 8);
        assert_eq!(sum_rounding_steps(257), 1 + 8);
        assert_eq!(sum_rounding_steps(1000), 3 + 8);
        assert_eq!(sum_rounding_steps(1024), 3 + 8, "log2(1024) + 1");
    }
}
