//! Property test: random expression trees (proptest strategies, drawn deterministically), each
//! emitted as a CUDA kernel, all compiled in one nvcc call to sm_80 PTX, run on ptx-emu at random
//! odd shapes with broadcasts, and compared element by element with the f64 CPU evaluator.
//!
//! Needs nvcc: `FERROTRON_NVCC` (what `scripts/install-cuda-toolchain.sh` prints). Without it the
//! test prints why and passes, unless `FERROTRON_REQUIRE_KERNELS=1` (CI), where it fails.
//!
//! Tolerance per element: `|got - want| <= r |want| + k * depth * u * scale`, with `u` the unit
//! roundoff of the narrowest type the expression rounds through (f32 `2^-24`, bf16 `2^-9`),
//! `scale` the largest intermediate magnitude of that element (rounding errors are relative to
//! the operands, not the result, when values cancel), `depth` the expression depth, `k = 16`
//! (CUDA's transcendentals are within 2-4 ulp, and an error is amplified at most a few times by
//! the bounded derivatives of the operations the generator uses), `r` one rounding of the output
//! type. Domains are kept finite by construction: log(1 + |a|), rsqrt(1 + |a|), exp(tanh a),
//! a / (1 + |b|), comparisons only of an input against 0.

use codegen::emit::{elementwise, Kernel};
use codegen::eval::evaluate;
use codegen::expr::{gelu, gelu_grad, Bcast, BinOp, CmpOp, Dtype, Expr, Graph, UnOp};
use codegen::run::{compile_ptx, run_on_emu, tolerance};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use ptx_emu::{Memory, Module};
use std::path::PathBuf;

/// An expression tree as plain data (what proptest generates).
#[derive(Clone, Debug)]
enum T {
    In(usize),
    C(f32),
    U(UnOp, Box<T>),
    B(BinOp, Box<T>, Box<T>),
    Sel(Box<T>, Box<T>),
    CastBf16(Box<T>),
}

fn tree() -> impl Strategy<Value = T> {
    let leaf = prop_oneof![(0usize..4).prop_map(T::In), (-2.0f32..2.0).prop_map(T::C),];
    leaf.prop_recursive(5, 24, 2, |inner| {
        prop_oneof![
            (
                prop_oneof![
                    Just(UnOp::Neg),
                    Just(UnOp::Abs),
                    Just(UnOp::Exp),
                    Just(UnOp::Log),
                    Just(UnOp::Tanh),
                    Just(UnOp::Erf),
                    Just(UnOp::Sqrt),
                    Just(UnOp::Rsqrt),
                    Just(UnOp::Gelu),
                    Just(UnOp::GeluGrad),
                ],
                inner.clone()
            )
                .prop_map(|(op, a)| T::U(op, Box::new(a))),
            (
                prop_oneof![
                    Just(BinOp::Add),
                    Just(BinOp::Sub),
                    Just(BinOp::Mul),
                    Just(BinOp::Div),
                    Just(BinOp::Max),
                    Just(BinOp::Min),
                ],
                inner.clone(),
                inner.clone()
            )
                .prop_map(|(op, a, b)| T::B(op, Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| T::Sel(Box::new(a), Box::new(b))),
            inner.prop_map(|a| T::CastBf16(Box::new(a))),
        ]
    })
}

/// Builds `t` over the four inputs, with the domain guards described in the module docs.
fn build(t: &T, ins: &[Expr]) -> (Expr, bool) {
    let g = ins[0].graph();
    match t {
        T::In(i) => (ins[*i].clone(), false),
        T::C(c) => (g.constant(f64::from(*c)), false),
        T::U(op, a) => {
            let (a, cast) = build(a, ins);
            let one = g.constant(1.0);
            let e = match op {
                UnOp::Neg => -&a,
                UnOp::Abs => a.abs(),
                UnOp::Exp => a.tanh().exp(),
                UnOp::Log => (&one + &a.abs()).log(),
                UnOp::Tanh => a.tanh(),
                UnOp::Erf => a.erf(),
                UnOp::Sqrt => a.abs().sqrt(),
                UnOp::Rsqrt => (&one + &a.abs()).rsqrt(),
                UnOp::Gelu => gelu(a),
                UnOp::GeluGrad => gelu_grad(a),
            };
            (e, cast)
        }
        T::B(op, a, b) => {
            let (a, c1) = build(a, ins);
            let (b, c2) = build(b, ins);
            let e = match op {
                BinOp::Add => &a + &b,
                BinOp::Sub => &a - &b,
                BinOp::Mul => &a * &b,
                BinOp::Div => &a / &(g.constant(1.0) + b.abs()),
                BinOp::Max => a.max(&b),
                BinOp::Min => a.min(&b),
            };
            (e, c1 || c2)
        }
        T::Sel(a, b) => {
            let (a, c1) = build(a, ins);
            let (b, c2) = build(b, ins);
            let cond = ins[0].cmp(CmpOp::Gt, &g.constant(0.0));
            (cond.select(&a, &b), c1 || c2)
        }
        T::CastBf16(a) => {
            let (a, _) = build(a, ins);
            (a.cast(Dtype::Bf16), true)
        }
    }
}

struct Case {
    kernel: Kernel,
    expr: Expr,
    rounds_bf16: bool,
    rows: usize,
    cols: usize,
    x_dtype: Dtype,
    b_dtype: Dtype,
}

fn nvcc() -> Option<PathBuf> {
    match std::env::var_os("FERROTRON_NVCC") {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => None,
    }
}

fn values(seed: u64, n: usize, dtype: Dtype) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let u = ((s >> 11) as f64) / ((1u64 << 53) as f64);
            f64::from(dtype.round((4.0 * u - 2.0) as f32))
        })
        .collect()
}

#[test]
fn generated_kernels_on_the_emulator_match_the_evaluator() {
    let Some(nvcc) = nvcc() else {
        if std::env::var("FERROTRON_REQUIRE_KERNELS").as_deref() == Ok("1") {
            panic!("FERROTRON_REQUIRE_KERNELS=1 but FERROTRON_NVCC is not set");
        }
        println!("skipped: FERROTRON_NVCC is not set (no nvcc to compile the generated kernels)");
        return;
    };
    // Draw the cases deterministically from the strategies.
    // A fixed seed: the same 40 cases on every run (reproducible in CI).
    let mut runner = TestRunner::deterministic();
    let shape = (
        1usize..9,
        1usize..70,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
    );
    let mut cases = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    let mut source = String::new();
    while cases.len() < 40 {
        let t = tree().new_tree(&mut runner).expect("tree").current();
        let (rows, cols, xb, bb, ob) = shape.new_tree(&mut runner).expect("shape").current();
        let (x_dtype, b_dtype) = (
            if xb { Dtype::Bf16 } else { Dtype::F32 },
            if bb { Dtype::Bf16 } else { Dtype::F32 },
        );
        let out = if ob { Dtype::Bf16 } else { Dtype::F32 };
        let g = Graph::new();
        let ins = vec![
            g.input("x", x_dtype, Bcast::Full),
            g.input("b", b_dtype, Bcast::Row),
            g.input("s", Dtype::F32, Bcast::Col),
            g.input("k", Dtype::F32, Bcast::Scalar),
        ];
        let (expr, cast) = build(&t, &ins);
        let kernel = elementwise(&expr, out);
        if names.insert(kernel.name.clone()) {
            source.push_str(&kernel.source);
        }
        cases.push(Case {
            rounds_bf16: cast,
            kernel,
            expr,
            rows,
            cols,
            x_dtype,
            b_dtype,
        });
    }
    let ptx = compile_ptx(&nvcc, &source).unwrap_or_else(|e| panic!("{e}"));
    let module = Module::parse(&ptx)
        .unwrap_or_else(|e| panic!("the emulator rejects the generated PTX: {e}"));
    let mem = Memory::new();
    let loaded = module.load(&mem, 0).expect("load");
    let mut worst: f64 = 0.0;
    for (ci, c) in cases.iter().enumerate() {
        let (rows, cols) = (c.rows, c.cols);
        let x = values(10 * ci as u64 + 1, rows * cols, c.x_dtype);
        let b = values(10 * ci as u64 + 2, cols, c.b_dtype);
        let s = values(10 * ci as u64 + 3, rows, Dtype::F32);
        let k = values(10 * ci as u64 + 4, 1, Dtype::F32);
        let want = evaluate(&c.expr, rows, cols, &[&x, &b, &s, &k]).expect("evaluate");
        let got = run_on_emu(&loaded, &mem, &c.kernel, rows, cols, &[&x, &b, &s, &k])
            .unwrap_or_else(|e| panic!("case {ci} {}: {e}", c.kernel.canonical));
        for (e, (&g, &w)) in got.iter().zip(&want.values).enumerate() {
            assert!(
                w.is_finite(),
                "case {ci}: the evaluator produced {w} (generator bug)"
            );
            let tol = tolerance(c.kernel.out, c.rounds_bf16, want.depth, want.scale[e], w);
            let err = (g - w).abs();
            assert!(
                g.is_finite() && err <= tol,
                "case {ci} element {e} ({rows}x{cols}, out {:?}): got {g}, want {w}, err {err:.3e} > tol {tol:.3e}\n{}",
                c.kernel.out,
                c.kernel.canonical
            );
            worst = worst.max(err / tol);
        }
    }
    println!(
        "{} generated kernels ({} distinct) match the evaluator; worst error/tolerance {worst:.3}",
        cases.len(),
        names.len()
    );
}

/// The PTX cache: a second compile of the same expression does not run the compiler (also from
/// a fresh cache over the same directory, as a later process would), a changed expression does.
#[test]
fn ptx_cache_compiles_each_expression_once() {
    use codegen::run::PtxCache;
    let Some(nvcc) = nvcc() else {
        if std::env::var("FERROTRON_REQUIRE_KERNELS").as_deref() == Ok("1") {
            panic!("FERROTRON_REQUIRE_KERNELS=1 but FERROTRON_NVCC is not set");
        }
        println!("skipped: FERROTRON_NVCC is not set");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ferrotron-ptx-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let g = Graph::new();
    let x = g.input("x", Dtype::F32, Bcast::Full);
    let a = elementwise(&gelu(x.clone()), Dtype::F32);
    let b = elementwise(&x.tanh(), Dtype::F32);
    let cache = PtxCache::new(&dir, &nvcc).expect("cache");
    let pa = cache.ptx(&a.source).expect("compile a");
    assert_eq!(cache.compiles(), 1);
    assert_eq!(cache.ptx(&a.source).expect("a again"), pa);
    assert_eq!(cache.compiles(), 1, "a hit must not compile");
    cache.ptx(&b.source).expect("compile b");
    assert_eq!(cache.compiles(), 2, "a changed expression compiles");
    let later = PtxCache::new(&dir, &nvcc).expect("cache");
    assert_eq!(later.ptx(&a.source).expect("from disk"), pa);
    assert_eq!(later.compiles(), 0, "a later process finds it on disk");
    assert!(pa.contains(&a.name));
    let _ = std::fs::remove_dir_all(&dir);
}
