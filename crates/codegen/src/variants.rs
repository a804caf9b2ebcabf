//! The shipped variants: the GEMM epilogues and fused elementwise kernels build.rs generates
//! (issue #10), the single list that build.rs compiles, the backends launch and `ferrotron check`
//! tests.
//!
//! - [`gemm_epilogues`]: the epilogue functors of `kernels/gemm/gemm.cu` (written by build.rs to
//!   `OUT_DIR/generated/ft_epilogues.cuh`), and [`GEMM_INSTANCES`], which of them each layout
//!   instantiates for which output type (the `FT_GEMM_ENTRY` lines of
//!   `OUT_DIR/generated/ft_gemm_entries.cuh`, see [`gemm_entries`]).
//! - [`fused`]: the fused elementwise kernels the parallel layers use (residual add, bias add,
//!   bias + GeLU and its backward, scaling, casts), all in one generated source
//!   ([`fused_source`], `OUT_DIR/generated/fused.cu`, the embedded image `generated/fused`).

use std::fmt::Write as _;

use crate::emit::{elementwise, Kernel};
use crate::epilogue::{functor, EpilogueError, Functor};
use crate::expr::{gelu, gelu_grad, Bcast, Dtype, Expr, Graph};

/// One shipped GEMM epilogue: a name and the IR over the epilogue operands.
#[derive(Clone, Copy, Debug)]
pub struct GemmEpilogue {
    /// The `<epilogue>` of the entry points `ft_gemm_<layout>_<epilogue>_<out>`.
    pub name: &'static str,
    /// What it computes, in words.
    pub doc: &'static str,
    build: fn(&Graph) -> (Expr, Option<Expr>),
}

impl GemmEpilogue {
    /// The value and the optional expression stored to `p.pre`, in a new graph.
    pub fn exprs(&self) -> (Expr, Option<Expr>) {
        (self.build)(&Graph::new())
    }

    /// The functor.
    ///
    /// # Errors
    /// [`EpilogueError`] if the IR is not a valid epilogue (a bug in this list; the unit tests
    /// build every one).
    pub fn functor(&self) -> Result<Functor, EpilogueError> {
        let (value, pre) = self.exprs();
        functor(self.name, &value, pre.as_ref())
    }
}

fn acc(g: &Graph) -> Expr {
    g.input("acc", Dtype::F32, Bcast::Full)
}

/// The shipped GEMM epilogues.
pub const GEMM_EPILOGUES: &[GemmEpilogue] = &[
    GemmEpilogue {
        name: "none",
        doc: "c = acc",
        build: |g| (acc(g), None),
    },
    GemmEpilogue {
        name: "bias",
        doc: "c = acc + bias[n]",
        build: |g| {
            let a = acc(g);
            let b = g.input("bias", Dtype::F32, Bcast::Row);
            (&a + &b, None)
        },
    },
    GemmEpilogue {
        name: "bias_gelu",
        doc: "z = acc + bias[n]; c = gelu(z); pre[m, n] = z when p.pre != NULL",
        build: |g| {
            let a = acc(g);
            let b = g.input("bias", Dtype::F32, Bcast::Row);
            let z = &a + &b;
            (gelu(z.clone()), Some(z))
        },
    },
    GemmEpilogue {
        name: "dgelu",
        doc: "c = acc * gelu'(pre[m, n]) (GeLU backward fused into the dgrad GEMM)",
        build: |g| {
            let a = acc(g);
            let pre = g.input("pre", Dtype::F32, Bcast::Full);
            (&a * &gelu_grad(pre), None)
        },
    },
    GemmEpilogue {
        name: "accum",
        doc: "c = acc + c (weight-gradient accumulation, residual add)",
        build: |g| {
            let a = acc(g);
            let c = g.input("c", Dtype::F32, Bcast::Full);
            (&a + &c, None)
        },
    },
];

/// Every shipped GEMM epilogue functor, in [`GEMM_EPILOGUES`] order.
///
/// # Errors
/// The first [`EpilogueError`] (a bug in the list).
pub fn gemm_epilogues() -> Result<Vec<Functor>, EpilogueError> {
    GEMM_EPILOGUES.iter().map(GemmEpilogue::functor).collect()
}

/// One instantiated GEMM kernel family (three tile variants each, see `kernels/gemm/gemm.cu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmInstance {
    /// `nt`, `nn` or `tn`.
    pub layout: &'static str,
    /// A [`GemmEpilogue::name`].
    pub epilogue: &'static str,
    /// The output (and bias / pre / c) element type.
    pub out: Dtype,
}

impl GemmInstance {
    /// The entry point's name without the tile suffix: `ft_gemm_nt_bias_gelu_bf16`.
    pub fn entry(&self) -> String {
        let out = match self.out {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
        };
        format!("ft_gemm_{}_{}_{out}", self.layout, self.epilogue)
    }
}

const fn inst(layout: &'static str, epilogue: &'static str, out: Dtype) -> GemmInstance {
    GemmInstance {
        layout,
        epilogue,
        out,
    }
}

/// Which epilogue each layout instantiates, for which output type: forward `nt` (none, bias,
/// bias + GeLU, and the residual add `c += x W^T` into an f32 `c`, which the generator makes
/// free: the `accum` functor in another layout), dgrad `nn` (none, GeLU backward), wgrad `tn`
/// (none, and f32 accumulation).
pub const GEMM_INSTANCES: &[GemmInstance] = &[
    inst("nt", "none", Dtype::Bf16),
    inst("nt", "none", Dtype::F32),
    inst("nt", "bias", Dtype::Bf16),
    inst("nt", "bias", Dtype::F32),
    inst("nt", "bias_gelu", Dtype::Bf16),
    inst("nt", "bias_gelu", Dtype::F32),
    inst("nt", "accum", Dtype::F32),
    inst("nn", "none", Dtype::Bf16),
    inst("nn", "none", Dtype::F32),
    inst("nn", "dgelu", Dtype::Bf16),
    inst("nn", "dgelu", Dtype::F32),
    inst("tn", "none", Dtype::Bf16),
    inst("tn", "none", Dtype::F32),
    inst("tn", "accum", Dtype::F32),
];

/// The `FT_GEMM_ENTRY(name, LAYOUT, functor, OutT)` line of every [`GEMM_INSTANCES`] entry, for
/// `kernels/gemm/gemm.cu` to include after it defines the macro.
pub fn gemm_entries() -> String {
    let mut s = String::from(
        "// Generated by ferrotron codegen from crates/codegen/src/variants.rs (GEMM_INSTANCES):\n\
         // the GEMM entry points, each in three tile variants (FT_GEMM_ENTRY, gemm.cu).\n",
    );
    for i in GEMM_INSTANCES {
        let _ = writeln!(
            s,
            "FT_GEMM_ENTRY({}, {}, ft_epi_{}, {})",
            i.entry(),
            i.layout.to_ascii_uppercase(),
            i.epilogue,
            i.out.c_type()
        );
    }
    s
}

/// The whole `ft_epilogues.cuh`: every [`gemm_epilogues`] functor after the helpers.
///
/// # Errors
/// As [`gemm_epilogues`].
pub fn epilogues_header() -> Result<String, EpilogueError> {
    Ok(crate::epilogue::header(&gemm_epilogues()?))
}

/// One shipped fused elementwise kernel.
#[derive(Clone, Copy, Debug)]
pub struct FusedVariant {
    /// Its name, e.g. `add_bf16` (what the backends and `ferrotron check` call it).
    pub name: &'static str,
    /// What it computes, in words.
    pub doc: &'static str,
    /// The output element type.
    pub out: Dtype,
    /// The element type of its tensor inputs.
    pub input: Dtype,
    build: fn(&Graph, Dtype) -> Expr,
}

impl FusedVariant {
    /// The expression, in a new graph.
    pub fn expr(&self) -> Expr {
        (self.build)(&Graph::new(), self.input)
    }

    /// The generated kernel (its name is a hash of the expression: stable).
    pub fn kernel(&self) -> Kernel {
        elementwise(&self.expr(), self.out)
    }
}

fn add(g: &Graph, t: Dtype) -> Expr {
    let x = g.input("x", t, Bcast::Full);
    let y = g.input("y", t, Bcast::Full);
    &x + &y
}

fn bias_add(g: &Graph, t: Dtype) -> Expr {
    let x = g.input("x", t, Bcast::Full);
    let b = g.input("bias", t, Bcast::Row);
    &x + &b
}

fn bias_gelu(g: &Graph, t: Dtype) -> Expr {
    gelu(bias_add(g, t))
}

fn bias_gelu_bwd(g: &Graph, t: Dtype) -> Expr {
    let dy = g.input("dy", t, Bcast::Full);
    let x = g.input("x", t, Bcast::Full);
    let b = g.input("bias", t, Bcast::Row);
    &dy * &gelu_grad(&x + &b)
}

fn scale(g: &Graph, t: Dtype) -> Expr {
    let x = g.input("x", t, Bcast::Full);
    let s = g.input("s", Dtype::F32, Bcast::Scalar);
    &x * &s
}

fn copy(g: &Graph, t: Dtype) -> Expr {
    g.input("x", t, Bcast::Full)
}

macro_rules! both {
    ($name:literal, $doc:literal, $build:expr) => {
        [
            FusedVariant {
                name: concat!($name, "_f32"),
                doc: $doc,
                out: Dtype::F32,
                input: Dtype::F32,
                build: $build,
            },
            FusedVariant {
                name: concat!($name, "_bf16"),
                doc: $doc,
                out: Dtype::Bf16,
                input: Dtype::Bf16,
                build: $build,
            },
        ]
    };
}

/// The shipped fused elementwise kernels: for f32 and bf16 (inputs and output of one type,
/// scalars f32), the residual add `x + y`, the bias add `x + bias[c]`, bias + GeLU
/// `gelu(x + bias[c])` and its backward `dy * gelu'(x + bias[c])`, the scaling `x * s`; and the
/// casts `x` bf16 -> f32 and f32 -> bf16.
pub fn fused() -> Vec<FusedVariant> {
    let mut v = Vec::new();
    v.extend(both!("add", "out = x + y (residual add)", add));
    v.extend(both!("bias_add", "out = x + bias[c]", bias_add));
    v.extend(both!("bias_gelu", "out = gelu(x + bias[c])", bias_gelu));
    v.extend(both!(
        "bias_gelu_bwd",
        "out = dy * gelu'(x + bias[c])",
        bias_gelu_bwd
    ));
    v.extend(both!("scale", "out = x * s (s an f32 scalar)", scale));
    v.push(FusedVariant {
        name: "cast_bf16_f32",
        doc: "out (f32) = x (bf16)",
        out: Dtype::F32,
        input: Dtype::Bf16,
        build: copy,
    });
    v.push(FusedVariant {
        name: "cast_f32_bf16",
        doc: "out (bf16) = x (f32), rounded to nearest even",
        out: Dtype::Bf16,
        input: Dtype::F32,
        build: copy,
    });
    v
}

/// The shipped fused variant called `name`.
pub fn fused_variant(name: &str) -> Option<FusedVariant> {
    fused().into_iter().find(|v| v.name == name)
}

/// One CUDA C source with every [`fused`] kernel (the prelude is guarded, so the kernels
/// concatenate), each preceded by its variant name.
pub fn fused_source() -> String {
    let mut s = String::from(
        "// Generated by ferrotron codegen from crates/codegen/src/variants.rs (fused()): the\n\
         // shipped fused elementwise kernels. Do not edit.\n",
    );
    for v in fused() {
        let k = v.kernel();
        let _ = writeln!(s, "\n// ===== {}: {} =====", v.name, v.doc);
        s.push_str(&k.source);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epilogue_builds_and_every_instance_names_one() {
        let fs = gemm_epilogues().expect("valid epilogues");
        assert_eq!(fs.len(), GEMM_EPILOGUES.len());
        for i in GEMM_INSTANCES {
            assert!(GEMM_EPILOGUES.iter().any(|e| e.name == i.epilogue), "{i:?}");
            assert!(matches!(i.layout, "nt" | "nn" | "tn"), "{i:?}");
        }
        let entries = gemm_entries();
        assert!(entries.contains(
            "FT_GEMM_ENTRY(ft_gemm_nt_bias_gelu_bf16, NT, ft_epi_bias_gelu, __nv_bfloat16)"
        ));
        assert!(entries.contains("FT_GEMM_ENTRY(ft_gemm_tn_accum_f32, TN, ft_epi_accum, float)"));
        assert_eq!(
            entries.matches("FT_GEMM_ENTRY(").count(),
            GEMM_INSTANCES.len()
        );
        let h = epilogues_header().expect("valid");
        for e in GEMM_EPILOGUES {
            assert!(h.contains(&format!("struct ft_epi_{} {{", e.name)));
        }
    }

    #[test]
    fn fused_variants_have_unique_names_and_kernels() {
        let v = fused();
        let mut names: Vec<&str> = v.iter().map(|v| v.name).collect();
        let mut kernels: Vec<String> = v.iter().map(|v| v.kernel().name).collect();
        names.sort_unstable();
        names.dedup();
        kernels.sort_unstable();
        kernels.dedup();
        assert_eq!(names.len(), v.len());
        assert_eq!(kernels.len(), v.len(), "two variants emit the same kernel");
        let src = fused_source();
        for k in &kernels {
            assert!(src.contains(&format!("void {k}(")), "{k}");
        }
        assert_eq!(src, fused_source(), "deterministic");
        assert_eq!(fused_variant("add_bf16").map(|v| v.out), Some(Dtype::Bf16));
        assert!(fused_variant("nope").is_none());
    }
}
