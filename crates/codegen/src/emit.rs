//! The CUDA C emitter: one readable kernel per expression.
//!
//! The kernel is a grid-stride loop over the `rows * cols` output elements. Each input is read
//! by index according to its broadcast (`x[i]`, `b[c]`, `s[r]`, or a parameter), widened to
//! f32; every node of the graph becomes one `const float vN = ...;` line, in topological order,
//! computed once (the graph is already CSE'd); the result is rounded once to the output type on
//! store. The kernel's name is `ft_fused_<16 hex digits>`, an FNV-1a hash of the expression's
//! canonical form and the output type: the same expression always gets the same name (and a
//! cache key), on every machine.
//!
//! Parameters, in order: one pointer per non-scalar input (declaration order), the output
//! pointer, `rows` and `cols` (`unsigned long long`), then one `float` per scalar input.

use std::fmt::Write as _;

use crate::expr::{Bcast, BinOp, CmpOp, Dtype, Expr, Node, UnOp};

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
// Megatron's GeLU (tanh approximation) and its derivative, as in kernels/include/ft_gelu.cuh.
static __device__ __forceinline__ float ft_cg_gelu_t(float z) {
    return tanhf(0.7978845608028654f * (z + 0.044715f * z * z * z));
}
static __device__ __forceinline__ float ft_cg_gelu(float z) {
    return 0.5f * z * (1.0f + ft_cg_gelu_t(z));
}
static __device__ __forceinline__ float ft_cg_gelu_grad(float z) {
    const float t = ft_cg_gelu_t(z);
    return 0.5f * z * ((1.0f - t * t) * (0.7978845608028654f + (float)(3.0 * 0.044715 * 0.7978845608028654) * z * z))
        + 0.5f * (1.0f + t);
}
// max/min that propagate NaN (fmaxf/fminf drop it).
static __device__ __forceinline__ float ft_cg_max(float a, float b) {
    return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b);
}
static __device__ __forceinline__ float ft_cg_min(float a, float b) {
    return (a != a || b != b) ? __int_as_float(0x7fc00000) : fminf(a, b);
}
#endif
"#;

/// Emits the kernel computing `expr` into an output of type `out`.
pub fn elementwise(expr: &Expr, out: Dtype) -> Kernel {
    let g = expr.graph();
    let nodes = g.nodes();
    let canonical = format!("{} -> {out:?}", expr.canonical());
    let name = format!("ft_fused_{:016x}", fnv1a(canonical.as_bytes()));
    let mut inputs = Vec::new();
    let (mut ptr_params, mut scalar_params) = (Vec::new(), Vec::new());
    let mut needs_rc = false;
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
            needs_rc |= matches!(bcast, Bcast::Row | Bcast::Col);
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "// Generated by ferrotron codegen. Expression:\n//   {canonical}"
    );
    s.push_str(PRELUDE);
    let mut params = ptr_params;
    params.push(format!("{}* __restrict__ out", out.c_type()));
    params.push("unsigned long long rows".into());
    params.push("unsigned long long cols".into());
    params.extend(scalar_params);
    let _ = writeln!(s, "\nextern \"C\" __global__ void {name}(");
    let _ = writeln!(s, "    {}) {{", params.join(",\n    "));
    let _ = writeln!(s, "    const unsigned long long n = rows * cols;");
    let _ = writeln!(
        s,
        "    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;"
    );
    let _ = writeln!(
        s,
        "    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {{"
    );
    if needs_rc {
        let _ = writeln!(s, "        const unsigned long long r = i / cols;");
        let _ = writeln!(s, "        const unsigned long long c = i - r * cols;");
    }
    let v = |id: usize| format!("v{id}");
    let v = &v;
    for id in expr.reachable() {
        let rhs = match &nodes[id] {
            Node::Input {
                index,
                dtype,
                bcast,
                ..
            } => {
                let p = format!("in{index}");
                let at = match bcast {
                    Bcast::Full => format!("{p}[i]"),
                    Bcast::Row => format!("{p}[c]"),
                    Bcast::Col => format!("{p}[r]"),
                    Bcast::Scalar => p.clone(),
                };
                match (dtype, bcast) {
                    (_, Bcast::Scalar) | (Dtype::F32, _) => at,
                    (Dtype::Bf16, _) => format!("__bfloat162float({at})"),
                }
            }
            other => node_c(other, v).unwrap_or_default(),
        };
        let _ = writeln!(s, "        const float {} = {rhs};", v(id));
    }
    let store = match out {
        Dtype::F32 => v(expr.id()),
        Dtype::Bf16 => format!("__float2bfloat16_rn({})", v(expr.id())),
    };
    let _ = writeln!(s, "        out[i] = {store};");
    let _ = writeln!(s, "    }}\n}}");
    Kernel {
        name,
        source: s,
        inputs,
        out,
        canonical,
    }
}

/// The C expression (f32) of one node that is not an input, with `v(id)` the name of the
/// variable holding node `id`'s value: the one place the IR's operations are spelled in CUDA C
/// (the elementwise kernels and the GEMM epilogue functors share it). `None` for an input node,
/// whose load depends on where the kernel reads it from.
pub fn node_c(node: &Node, v: &dyn Fn(usize) -> String) -> Option<String> {
    Some(match node {
        Node::Input { .. } => return None,
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
    use crate::expr::{gelu, Graph};

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
}
