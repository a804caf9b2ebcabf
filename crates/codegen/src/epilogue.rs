//! GEMM epilogue functors from the expression IR (issue #10).
//!
//! An epilogue is an elementwise expression over named **operands** of one GEMM output element
//! `(m, n)`:
//!
//! | name   | broadcast        | C load (OutT = the GEMM's output element type)             |
//! |--------|------------------|------------------------------------------------------------|
//! | `acc`  | [`Bcast::Full`]  | the f32 dot product, already scaled by `alpha`             |
//! | `bias` | [`Bcast::Row`]   | `ft_epi_load(static_cast<const OutT*>(p.bias), n)`         |
//! | `pre`  | [`Bcast::Full`]  | `ft_epi_load(static_cast<const OutT*>(p.pre), m * p.n + n)`|
//! | `c`    | [`Bcast::Full`]  | `ft_epi_load(static_cast<const OutT*>(p.c), m * p.n + n)`  |
//!
//! plus, optionally, an auxiliary expression stored to `p.pre` (when `p.pre` is not NULL) in the
//! output type: `bias_gelu` stores its pre-activation `acc + bias` there for the backward pass.
//! The declared dtype of `bias`, `pre` and `c` is not used by the functor: like every GEMM
//! operand other than `a` and `b`, they have the output's element type, which is a template
//! parameter; `acc` is f32.
//!
//! [`functor`] turns one into a C++ struct the GEMM kernels (`kernels/gemm/gemm.cu`) take as
//! their epilogue template parameter:
//!
//! ```text
//! struct ft_epi_bias_gelu {
//!     template <typename OutT>
//!     static __device__ __forceinline__ float apply(const FtGemmParams& p, float acc,
//!                                                   uint64_t m, uint64_t n) { ... }
//! };
//! ```
//!
//! whose body is the graph's nodes in topological order, one `const float vN = ...;` each, spelled
//! by [`crate::emit::node_c`] (the same C as the elementwise kernels); the value returned is
//! rounded once to `OutT` by the kernel's store. [`header`] puts the functors after the device
//! helpers ([`crate::emit::PRELUDE`], the loads and stores) into one self-contained header.

use std::fmt::Write as _;

use crate::emit::{fnv1a, node_c, PRELUDE};
use crate::expr::{Bcast, Expr, Node, NodeId};

/// An operand an epilogue expression may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operand {
    /// `acc`: the f32 dot product after `alpha` scaling.
    Acc,
    /// `bias`: `p.bias[n]`.
    Bias,
    /// `pre`: `p.pre[m, n]` (read).
    Pre,
    /// `c`: the existing output `p.c[m, n]` (accumulation).
    C,
}

impl Operand {
    /// Every operand.
    pub const ALL: [Operand; 4] = [Operand::Acc, Operand::Bias, Operand::Pre, Operand::C];

    /// The input name an expression uses for it.
    pub fn name(self) -> &'static str {
        match self {
            Operand::Acc => "acc",
            Operand::Bias => "bias",
            Operand::Pre => "pre",
            Operand::C => "c",
        }
    }

    /// The broadcast its input must be declared with.
    pub fn bcast(self) -> Bcast {
        match self {
            Operand::Bias => Bcast::Row,
            Operand::Acc | Operand::Pre | Operand::C => Bcast::Full,
        }
    }

    /// The operand called `name`, if any.
    pub fn from_name(name: &str) -> Option<Operand> {
        Operand::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The C expression (f32) that loads it inside `apply`.
    fn load_c(self) -> &'static str {
        match self {
            Operand::Acc => "acc",
            Operand::Bias => "ft_epi_load(static_cast<const OutT*>(p.bias), n)",
            Operand::Pre => "ft_epi_load(static_cast<const OutT*>(p.pre), idx)",
            Operand::C => "ft_epi_load(static_cast<const OutT*>(p.c), idx)",
        }
    }
}

/// Why an expression is not a GEMM epilogue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EpilogueError {
    /// An input whose name is none of [`Operand::ALL`].
    UnknownOperand {
        /// The input's name.
        name: String,
    },
    /// An operand declared with the wrong broadcast (`bias` is per column, the rest per
    /// element).
    WrongBroadcast {
        /// The operand's name.
        name: String,
        /// The broadcast it has.
        expected: Bcast,
        /// The broadcast it was declared with.
        got: Bcast,
    },
    /// A node that is not elementwise (e.g. a reduction): an epilogue sees one element.
    NotElementwise {
        /// The node, as text.
        node: String,
    },
    /// The value and the stored expression come from graphs with different nodes.
    DifferentGraphs,
    /// The functor name is not a lower-case C identifier (`[a-z][a-z0-9_]*`).
    BadName {
        /// The name given.
        name: String,
    },
}

impl std::fmt::Display for EpilogueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EpilogueError::UnknownOperand { name } => {
                write!(f, "epilogue operand {name:?} is none of acc, bias, pre, c")
            }
            EpilogueError::WrongBroadcast {
                name,
                expected,
                got,
            } => write!(
                f,
                "epilogue operand {name} must be declared {expected:?}, not {got:?}"
            ),
            EpilogueError::NotElementwise { node } => {
                write!(f, "an epilogue is elementwise, {node} is not")
            }
            EpilogueError::DifferentGraphs => write!(
                f,
                "the epilogue's value and stored expression come from different graphs"
            ),
            EpilogueError::BadName { name } => {
                write!(f, "epilogue name {name:?} is not a lower-case C identifier")
            }
        }
    }
}

impl std::error::Error for EpilogueError {}

/// A generated epilogue functor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Functor {
    /// The epilogue's name, e.g. `bias_gelu` (the `<epilogue>` of `ft_gemm_<layout>_<epilogue>_<out>`).
    pub name: String,
    /// The C++ struct's name: `ft_epi_<name>`.
    pub struct_name: String,
    /// The struct's definition (needs the helpers of [`header`]).
    pub source: String,
    /// The canonical forms of the value and of the stored expression: what the functor computes.
    pub canonical: String,
    /// The operands it reads, sorted.
    pub operands: Vec<Operand>,
    /// Whether it stores an auxiliary value to `p.pre`.
    pub stores_pre: bool,
}

/// The one `match` over node kinds: which nodes an epilogue may contain.
#[allow(unreachable_patterns)] // new (e.g. reduction) node kinds fall through to the error
fn check_node(node: &Node) -> Result<Option<Operand>, EpilogueError> {
    match node {
        Node::Input { name, bcast, .. } => {
            let op = Operand::from_name(name)
                .ok_or_else(|| EpilogueError::UnknownOperand { name: name.clone() })?;
            if *bcast != op.bcast() {
                return Err(EpilogueError::WrongBroadcast {
                    name: name.clone(),
                    expected: op.bcast(),
                    got: *bcast,
                });
            }
            Ok(Some(op))
        }
        Node::Const(_)
        | Node::Unary(..)
        | Node::Binary(..)
        | Node::Cmp(..)
        | Node::Select(..)
        | Node::Cast(..) => Ok(None),
        other => Err(EpilogueError::NotElementwise {
            node: format!("{other:?}"),
        }),
    }
}

/// Emits the functor `ft_epi_<name>` that returns `value` for one output element and, when `pre`
/// is given, stores `pre`'s value to `p.pre[m, n]` (if `p.pre` is not NULL).
///
/// # Errors
/// [`EpilogueError`] for a bad name, an input that is not an [`Operand`] (or has the wrong
/// broadcast), a node that is not elementwise, or a `pre` from another graph.
pub fn functor(name: &str, value: &Expr, pre: Option<&Expr>) -> Result<Functor, EpilogueError> {
    let mut chars = name.chars();
    let ident = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ident {
        return Err(EpilogueError::BadName {
            name: name.to_string(),
        });
    }
    let nodes = value.graph().nodes();
    if let Some(pre) = pre {
        // Node ids index one node list: the two must share it (same graph, or an identical one).
        if pre.graph().nodes() != nodes {
            return Err(EpilogueError::DifferentGraphs);
        }
    }
    // Node ids are in creation order, operands before users: the sorted union of what the two
    // expressions need is a topological order.
    let mut order: Vec<NodeId> = value.reachable();
    if let Some(pre) = pre {
        order.extend(pre.reachable());
    }
    order.sort_unstable();
    order.dedup();
    let mut operands = Vec::new();
    for &id in &order {
        if let Some(op) = check_node(&nodes[id])? {
            operands.push(op);
        }
    }
    operands.sort_unstable();
    operands.dedup();

    let struct_name = format!("ft_epi_{name}");
    let mut canonical = format!("value = {}", value.canonical());
    if let Some(pre) = pre {
        let _ = write!(canonical, "; pre = {}", pre.canonical());
    }
    let needs_idx = pre.is_some()
        || operands
            .iter()
            .any(|o| matches!(o, Operand::Pre | Operand::C));
    let v = |id: usize| format!("v{id}");
    let v = &v;

    let mut s = String::new();
    let _ = writeln!(s, "// {canonical}");
    let _ = writeln!(s, "// (hash {:016x})", fnv1a(canonical.as_bytes()));
    let _ = writeln!(s, "struct {struct_name} {{");
    let _ = writeln!(s, "    template <typename OutT>");
    let _ = writeln!(
        s,
        "    static __device__ __forceinline__ float apply(const FtGemmParams& p, float acc, uint64_t m, uint64_t n) {{"
    );
    if needs_idx {
        let _ = writeln!(s, "        const uint64_t idx = m * p.n + n;");
    }
    for &id in &order {
        let rhs = match &nodes[id] {
            Node::Input { name, .. } => Operand::from_name(name)
                .map(|o| o.load_c().to_string())
                .unwrap_or_default(),
            other => node_c(other, v).unwrap_or_default(),
        };
        let _ = writeln!(s, "        const float {} = {rhs};", v(id));
        // The auxiliary store as soon as its value exists (before the rest of the value).
        if pre.is_some_and(|pre| pre.id() == id) {
            let _ = writeln!(
                s,
                "        if (p.pre != nullptr) ft_epi_store(static_cast<OutT*>(p.pre), idx, {});",
                v(id)
            );
        }
    }
    let _ = writeln!(s, "        return {};", v(value.id()));
    let _ = writeln!(s, "    }}\n}};");
    Ok(Functor {
        name: name.to_string(),
        struct_name,
        source: s,
        canonical,
        operands,
        stores_pre: pre.is_some(),
    })
}

/// One self-contained header with `functors` after the helpers they use: the codegen
/// [`PRELUDE`] (GeLU, NaN-propagating max/min), `ferrotron_params.h` (for `FtGemmParams`; put its
/// directory on the include path) and `ft_epi_load` / `ft_epi_store` (f32 and bf16 overloads:
/// widen exactly; round to nearest even).
pub fn header(functors: &[Functor]) -> String {
    let mut s = String::from(
        "// Generated by ferrotron codegen (crates/codegen/src/epilogue.rs): the GEMM epilogue\n\
         // functors kernels/gemm/gemm.cu instantiates. Do not edit: edit\n\
         // crates/codegen/src/variants.rs.\n#pragma once\n\n#include <stdint.h>\n\
         #include \"ferrotron_params.h\"\n",
    );
    s.push_str(PRELUDE);
    s.push_str(
        "\n// Operand loads (widened to f32) and the auxiliary store (rounded once), by element type.\n\
         static __device__ __forceinline__ float ft_epi_load(const float* p, uint64_t i) { return p[i]; }\n\
         static __device__ __forceinline__ float ft_epi_load(const __nv_bfloat16* p, uint64_t i) {\n    \
         return __bfloat162float(p[i]);\n}\n\
         static __device__ __forceinline__ void ft_epi_store(float* p, uint64_t i, float v) { p[i] = v; }\n\
         static __device__ __forceinline__ void ft_epi_store(__nv_bfloat16* p, uint64_t i, float v) {\n    \
         p[i] = __float2bfloat16_rn(v);\n}\n",
    );
    for f in functors {
        s.push('\n');
        s.push_str(&f.source);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::{gelu, gelu_grad, Dtype, Graph};

    fn operands(g: &Graph) -> (Expr, Expr, Expr, Expr) {
        (
            g.input("acc", Dtype::F32, Bcast::Full),
            g.input("bias", Dtype::F32, Bcast::Row),
            g.input("pre", Dtype::F32, Bcast::Full),
            g.input("c", Dtype::F32, Bcast::Full),
        )
    }

    #[test]
    fn bias_gelu_reads_bias_and_stores_the_pre_activation() {
        let g = Graph::new();
        let (acc, bias, _, _) = operands(&g);
        let z = &acc + &bias;
        let f = functor("bias_gelu", &gelu(z.clone()), Some(&z)).expect("valid");
        assert_eq!(f.struct_name, "ft_epi_bias_gelu");
        assert_eq!(f.operands, vec![Operand::Acc, Operand::Bias]);
        assert!(f.stores_pre);
        let s = &f.source;
        for want in [
            "struct ft_epi_bias_gelu {",
            "template <typename OutT>",
            "static __device__ __forceinline__ float apply(const FtGemmParams& p, float acc, uint64_t m, uint64_t n) {",
            "const uint64_t idx = m * p.n + n;",
            "const float v0 = acc;",
            "const float v1 = ft_epi_load(static_cast<const OutT*>(p.bias), n);",
            "= v0 + v1;",
            "= ft_cg_gelu(v",
            "if (p.pre != nullptr) ft_epi_store(static_cast<OutT*>(p.pre), idx, v",
            "return v",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // z is computed once and both stored and fed to the GeLU.
        assert_eq!(s.matches("= v0 + v1;").count(), 1, "{s}");
        // Deterministic: the same epilogue built again is the same text.
        let g2 = Graph::new();
        let (acc2, bias2, _, _) = operands(&g2);
        let z2 = &acc2 + &bias2;
        assert_eq!(
            functor("bias_gelu", &gelu(z2.clone()), Some(&z2)).expect("valid"),
            f
        );
    }

    #[test]
    fn the_shipped_shapes_emit_what_they_read() {
        let g = Graph::new();
        let (acc, bias, pre, c) = operands(&g);
        let none = functor("none", &acc, None).expect("valid");
        assert!(!none.source.contains("idx"), "{}", none.source);
        assert!(none.source.contains("return v0;"), "{}", none.source);
        let dgelu = functor("dgelu", &(&acc * &gelu_grad(pre.clone())), None).expect("valid");
        assert!(dgelu
            .source
            .contains("ft_epi_load(static_cast<const OutT*>(p.pre), idx)"));
        assert!(dgelu.source.contains("ft_cg_gelu_grad("));
        assert!(!dgelu.source.contains("ft_epi_store"));
        let accum = functor("accum", &(&acc + &c), None).expect("valid");
        assert!(accum
            .source
            .contains("ft_epi_load(static_cast<const OutT*>(p.c), idx)"));
        let bias_f = functor("bias", &(&acc + &bias), None).expect("valid");
        let h = header(&[none, dgelu, accum, bias_f]);
        assert!(h.starts_with("// Generated by ferrotron codegen"));
        assert!(h.contains("#include \"ferrotron_params.h\""));
        assert!(h.contains("ft_cg_gelu_grad(float z)"), "the prelude");
        assert!(h.contains("ft_epi_load(const __nv_bfloat16* p, uint64_t i)"));
        for name in ["none", "dgelu", "accum", "bias"] {
            assert!(h.contains(&format!("struct ft_epi_{name} {{")), "{name}");
        }
        // Scaling by a constant folds into the text as a literal.
        let scaled = functor("scale_half", &(&acc * 0.5), None).expect("valid");
        assert!(scaled.source.contains("0.5f"), "{}", scaled.source);
    }

    #[test]
    fn bad_epilogues_are_typed_errors() {
        let g = Graph::new();
        let (acc, _, _, _) = operands(&g);
        let x = g.input("x", Dtype::F32, Bcast::Full);
        assert_eq!(
            functor("e", &(&acc + &x), None),
            Err(EpilogueError::UnknownOperand { name: "x".into() })
        );
        let g2 = Graph::new();
        let acc2 = g2.input("acc", Dtype::F32, Bcast::Full);
        let bias_full = g2.input("bias", Dtype::F32, Bcast::Full);
        assert_eq!(
            functor("e", &(&acc2 + &bias_full), None),
            Err(EpilogueError::WrongBroadcast {
                name: "bias".into(),
                expected: Bcast::Row,
                got: Bcast::Full
            })
        );
        assert_eq!(
            functor("e", &acc, Some(&acc2)),
            Err(EpilogueError::DifferentGraphs)
        );
        for bad in ["", "Bias", "1x", "a-b", "a b"] {
            assert_eq!(
                functor(bad, &acc, None),
                Err(EpilogueError::BadName { name: bad.into() }),
                "{bad:?}"
            );
        }
        let e = functor("e", &(&acc + &x), None).unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
        // A reduction needs the whole row: not an epilogue of one element.
        let g3 = Graph::new();
        let acc3 = g3.input("acc", Dtype::F32, Bcast::Full);
        let red = &acc3 - &crate::expr::sum(&acc3);
        assert!(matches!(
            functor("e", &red, None),
            Err(EpilogueError::NotElementwise { .. })
        ));
    }
}
