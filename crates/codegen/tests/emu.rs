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
//!
//! Reductions (row sum, max, mean) are drawn like the other operations, at any depth (so
//! reductions of expressions that use reductions, and per-row results with one value per row).
//! For a sum, the evaluator's depth counts the roundings of the kernel's fixed summation tree
//! (`emit::sum_rounding_steps`, about log2(cols)) and its scale the sum of the terms'
//! magnitudes: a sum of `cols` terms is within `steps * u * sum|terms|` to first order. Shapes
//! reach past one block of 256 threads per row (up to 599 columns) and include multiples of 8
//! (the vector path of elementwise kernels); a quarter of the cases run with every pointer one
//! element off alignment (the scalar path). Outputs are poisoned before each launch, and NaN
//! never passes a comparison.
//!
//! Named tests: softmax and a layernorm at odd shapes in f32 and bf16, per-row outputs, bitwise
//! determinism of reductions over interleavings and grid sizes, empty shapes, and the bytes and
//! coalescing of elementwise kernels at 64 x 1024 and of a softmax kernel (emulator counters).

use codegen::emit::{elementwise, Kernel};
use codegen::eval::evaluate;
use codegen::expr::{
    gelu, gelu_grad, max, mean, sum, Bcast, BinOp, CmpOp, Dtype, Expr, Graph, RedOp, UnOp,
};
use codegen::run::{compile_ptx, run_on_emu, run_on_emu_with, tolerance, RunOptions};
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
    Red(RedOp, Box<T>),
}

fn tree() -> impl Strategy<Value = T> {
    let leaf = prop_oneof![(0usize..4).prop_map(T::In), (-2.0f32..2.0).prop_map(T::C),];
    leaf.prop_recursive(5, 24, 2, |inner| {
        prop_oneof![
            3 => (
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
            3 => (
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
            1 => (inner.clone(), inner.clone()).prop_map(|(a, b)| T::Sel(Box::new(a), Box::new(b))),
            1 => inner.clone().prop_map(|a| T::CastBf16(Box::new(a))),
            2 => (
                prop_oneof![Just(RedOp::Sum), Just(RedOp::Max), Just(RedOp::Mean)],
                inner
            )
                .prop_map(|(op, a)| T::Red(op, Box::new(a))),
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
        T::Red(op, a) => {
            let (a, cast) = build(a, ins);
            (a.reduce(*op), cast)
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
    misalign: bool,
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

/// Compares `got` with the evaluator element by element; returns the worst error/tolerance.
#[allow(clippy::too_many_arguments)]
fn compare(
    tag: &str,
    kernel: &Kernel,
    expr: &Expr,
    rounds_bf16: bool,
    rows: usize,
    cols: usize,
    inputs: &[&[f64]],
    got: &[f64],
) -> f64 {
    let want = evaluate(expr, rows, cols, inputs).expect("evaluate");
    assert_eq!(
        got.len(),
        want.values.len(),
        "{tag}: output length ({rows}x{cols})"
    );
    assert_eq!(got.len(), kernel.out_len(rows, cols), "{tag}");
    let mut worst: f64 = 0.0;
    for (e, (&g, &w)) in got.iter().zip(&want.values).enumerate() {
        assert!(
            w.is_finite(),
            "{tag}: the evaluator produced {w} (generator bug)"
        );
        let tol = tolerance(kernel.out, rounds_bf16, want.depth, want.scale[e], w);
        let err = (g - w).abs();
        assert!(
            g.is_finite() && err <= tol,
            "{tag} element {e} ({rows}x{cols}, out {:?}): got {g}, want {w}, err {err:.3e} > tol {tol:.3e}\n{}",
            kernel.out,
            kernel.canonical
        );
        worst = worst.max(err / tol);
    }
    worst
}

/// Compiles `source` and loads it on a fresh emulator memory.
fn load(nvcc: &std::path::Path, source: &str) -> (Memory, ptx_emu::LoadedModule) {
    let ptx = compile_ptx(nvcc, source).unwrap_or_else(|e| panic!("{e}"));
    let module = Module::parse(&ptx)
        .unwrap_or_else(|e| panic!("the emulator rejects the generated PTX: {e}"));
    let mem = Memory::new();
    let loaded = module.load(&mem, 0).expect("load");
    (mem, loaded)
}

/// nvcc, or `None` (the test then passes with a note) unless `FERROTRON_REQUIRE_KERNELS=1`.
fn nvcc_or_skip() -> Option<PathBuf> {
    let n = nvcc();
    if n.is_none() {
        if std::env::var("FERROTRON_REQUIRE_KERNELS").as_deref() == Ok("1") {
            panic!("FERROTRON_REQUIRE_KERNELS=1 but FERROTRON_NVCC is not set");
        }
        println!("skipped: FERROTRON_NVCC is not set (no nvcc to compile the generated kernels)");
    }
    n
}

#[test]
fn generated_kernels_on_the_emulator_match_the_evaluator() {
    let Some(nvcc) = nvcc_or_skip() else {
        return;
    };
    // Draw the cases deterministically from the strategies.
    // A fixed seed: the same 64 cases on every run (reproducible in CI).
    let mut runner = TestRunner::deterministic();
    let shape = (
        1usize..9,
        prop_oneof![
            2 => 1usize..70,
            1 => (1usize..40).prop_map(|k| 8 * k),
            1 => 200usize..600,
        ],
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::bool::weighted(0.25),
    );
    let mut cases = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    let mut source = String::new();
    while cases.len() < 64 {
        let t = tree().new_tree(&mut runner).expect("tree").current();
        let (rows, cols, xb, bb, ob, misalign) =
            shape.new_tree(&mut runner).expect("shape").current();
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
            misalign,
        });
    }
    let (mem, loaded) = load(&nvcc, &source);
    let (mut worst, mut worst_reducing): (f64, f64) = (0.0, 0.0);
    for (ci, c) in cases.iter().enumerate() {
        let (rows, cols) = (c.rows, c.cols);
        let x = values(10 * ci as u64 + 1, rows * cols, c.x_dtype);
        let b = values(10 * ci as u64 + 2, cols, c.b_dtype);
        let s = values(10 * ci as u64 + 3, rows, Dtype::F32);
        let k = values(10 * ci as u64 + 4, 1, Dtype::F32);
        let options = RunOptions {
            misalign: c.misalign,
            ..RunOptions::default()
        };
        let got = run_on_emu_with(
            &loaded,
            &mem,
            &c.kernel,
            rows,
            cols,
            &[&x, &b, &s, &k],
            &options,
        )
        .unwrap_or_else(|e| panic!("case {ci} {}: {e}", c.kernel.canonical))
        .values;
        let w = compare(
            &format!("case {ci}"),
            &c.kernel,
            &c.expr,
            c.rounds_bf16,
            rows,
            cols,
            &[&x, &b, &s, &k],
            &got,
        );
        worst = worst.max(w);
        if c.kernel.reduces {
            worst_reducing = worst_reducing.max(w);
        }
    }
    let count = |f: &dyn Fn(&Case) -> bool| cases.iter().filter(|c| f(c)).count();
    let reducing = count(&|c| c.kernel.reduces);
    let per_row = count(&|c| c.kernel.per_row);
    let vector = count(&|c| !c.kernel.reduces && !c.misalign && c.cols % c.kernel.vector == 0);
    let wide = count(&|c| c.kernel.reduces && c.cols > 256);
    println!(
        "{} generated kernels ({} distinct; {reducing} with reductions, {per_row} per-row, {wide} of them over 256 columns; {vector} elementwise on the vector path) match the evaluator; worst error/tolerance {worst:.3} ({worst_reducing:.3} with reductions)",
        cases.len(),
        names.len()
    );
    // The draw covers what it is meant to (a change to the strategies must keep it so).
    assert!(
        reducing >= 12 && per_row >= 3 && vector >= 4 && wide >= 2,
        "too few cases of a kind"
    );
}

/// The inputs of softmax / layernorm tests: x full, g and b rows (all `dtype`).
fn norm_inputs(seed: u64, rows: usize, cols: usize, dtype: Dtype) -> Vec<Vec<f64>> {
    vec![
        values(seed, rows * cols, dtype),
        values(seed + 1, cols, dtype),
        values(seed + 2, cols, dtype),
    ]
}

/// Softmax and a layernorm (with per-row statistics as their own per-row kernels) at odd
/// shapes, f32 and bf16, against the evaluator; softmax rows also sum to 1.
#[test]
fn softmax_and_layernorm_match_the_evaluator_at_odd_shapes() {
    let Some(nvcc) = nvcc_or_skip() else {
        return;
    };
    let mut kernels = Vec::new();
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let g = Graph::new();
        let x = g.input("x", dtype, Bcast::Full);
        let gamma = g.input("g", dtype, Bcast::Row);
        let beta = g.input("b", dtype, Bcast::Row);
        let e = (&x - &max(&x)).exp();
        let softmax = &e / &sum(&e);
        let d = &x - &mean(&x);
        let rstd = (mean(&(&d * &d)) + 1e-5).rsqrt();
        let layernorm = &d * &rstd * &gamma + &beta;
        assert!(!softmax.per_row() && !layernorm.per_row() && rstd.per_row());
        for (name, expr) in [
            ("softmax", softmax),
            ("layernorm", layernorm),
            ("rstd", rstd),
            ("rowmax", max(&x)),
        ] {
            kernels.push((name, dtype, elementwise(&expr, dtype), expr));
        }
    }
    let source: String = kernels.iter().map(|k| k.2.source.as_str()).collect();
    let (mem, loaded) = load(&nvcc, &source);
    let mut worst: f64 = 0.0;
    for (rows, cols) in [(7, 33), (3, 1000), (2, 1), (5, 257)] {
        for (name, dtype, kernel, expr) in &kernels {
            let data = norm_inputs(rows as u64 * 7 + cols as u64, rows, cols, *dtype);
            let views: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
            let got = run_on_emu(&loaded, &mem, kernel, rows, cols, &views)
                .unwrap_or_else(|e| panic!("{name} {dtype:?} {rows}x{cols}: {e}"));
            let tag = format!("{name} {dtype:?} {rows}x{cols}");
            worst = worst.max(compare(&tag, kernel, expr, false, rows, cols, &views, &got));
            if *name == "softmax" {
                for r in 0..rows {
                    let total: f64 = got[r * cols..(r + 1) * cols].iter().sum();
                    let slack = match dtype {
                        Dtype::F32 => 1e-5,
                        Dtype::Bf16 => cols as f64 * 2f64.powi(-8),
                    };
                    assert!(
                        (total - 1.0).abs() <= slack,
                        "{tag}: row {r} sums to {total}"
                    );
                }
            }
        }
    }
    println!("softmax / layernorm / per-row statistics: worst error/tolerance {worst:.3}");
}

/// Reductions are deterministic: the same bits for every thread interleaving and grid size
/// (fixed-order block reductions, no atomics).
#[test]
fn reductions_are_bitwise_deterministic() {
    let Some(nvcc) = nvcc_or_skip() else {
        return;
    };
    let g = Graph::new();
    let x = g.input("x", Dtype::F32, Bcast::Full);
    let e = (&x - &max(&x)).exp();
    let softmax = &e / &sum(&e);
    let kernels = [
        elementwise(&softmax, Dtype::F32),
        elementwise(&sum(&x), Dtype::F32),
    ];
    let source: String = kernels.iter().map(|k| k.source.as_str()).collect();
    let (mem, loaded) = load(&nvcc, &source);
    let (rows, cols) = (3, 1000);
    let xs = values(99, rows * cols, Dtype::F32);
    for k in &kernels {
        let run = |seed: u64, grid: Option<u32>| {
            let o = RunOptions {
                seed,
                grid,
                ..RunOptions::default()
            };
            run_on_emu_with(&loaded, &mem, k, rows, cols, &[&xs], &o)
                .expect("run")
                .values
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<u64>>()
        };
        let first = run(0, None);
        for (seed, grid) in [(1, None), (7, Some(1)), (12345, Some(2))] {
            assert_eq!(
                run(seed, grid),
                first,
                "{}: seed {seed}, grid {grid:?}",
                k.canonical
            );
        }
    }
}

/// Empty shapes: nothing to write for `rows = 0` or an elementwise output with `cols = 0`; a
/// per-row kernel over empty rows writes each row's empty reduction (sum 0, max -inf, mean
/// NaN), as the evaluator says.
#[test]
fn empty_shapes_launch_and_match_the_evaluator() {
    let Some(nvcc) = nvcc_or_skip() else {
        return;
    };
    let g = Graph::new();
    let x = g.input("x", Dtype::F32, Bcast::Full);
    let b = g.input("b", Dtype::Bf16, Bcast::Row);
    let e = (&x - &max(&x)).exp();
    let exprs = [&e / &sum(&e), &x + &b, sum(&x), max(&x), mean(&x)];
    let kernels: Vec<Kernel> = exprs.iter().map(|e| elementwise(e, Dtype::F32)).collect();
    let source: String = kernels.iter().map(|k| k.source.as_str()).collect();
    let (mem, loaded) = load(&nvcc, &source);
    for (rows, cols) in [(0, 5), (3, 0), (0, 0)] {
        for (expr, k) in exprs.iter().zip(&kernels) {
            let (xs, bs) = (
                values(1, rows * cols, Dtype::F32),
                values(2, cols, Dtype::Bf16),
            );
            let got = run_on_emu(&loaded, &mem, k, rows, cols, &[&xs, &bs])
                .unwrap_or_else(|e| panic!("{} at {rows}x{cols}: {e}", k.canonical));
            let want = evaluate(expr, rows, cols, &[&xs, &bs]).expect("evaluate");
            assert_eq!(got.len(), k.out_len(rows, cols));
            assert_eq!(got.len(), want.values.len());
            for (g, w) in got.iter().zip(&want.values) {
                assert!(
                    g == w || (g.is_nan() && w.is_nan()),
                    "{} at {rows}x{cols}: got {g}, want {w}",
                    k.canonical
                );
            }
        }
    }
}

/// Generated elementwise kernels move the ideal bytes (each input read once, broadcast inputs
/// once, the output written once) within 5%, in requests coalesced as well as their access
/// width allows, on the vector path at 64 x 1024 (and with an odd shape's scalar tail).
#[test]
fn elementwise_kernels_move_the_ideal_bytes() {
    let Some(nvcc) = nvcc_or_skip() else {
        return;
    };
    struct Bytes {
        name: &'static str,
        expr: Expr,
        out: Dtype,
        rows: usize,
        cols: usize,
    }
    let mut cases = Vec::new();
    {
        let g = Graph::new();
        let x = g.input("x", Dtype::Bf16, Bcast::Full);
        let b = g.input("b", Dtype::Bf16, Bcast::Row);
        let s = g.input("s", Dtype::F32, Bcast::Col);
        let k = g.input("k", Dtype::F32, Bcast::Scalar);
        cases.push(Bytes {
            name: "bf16 gelu(x + b) * s * k",
            expr: gelu(&x + &b) * &s * &k,
            out: Dtype::Bf16,
            rows: 64,
            cols: 1024,
        });
    }
    {
        let g = Graph::new();
        let x = g.input("x", Dtype::F32, Bcast::Full);
        let y = g.input("y", Dtype::F32, Bcast::Full);
        let k = g.input("k", Dtype::F32, Bcast::Scalar);
        cases.push(Bytes {
            name: "f32 x * y + k",
            expr: &x * &y + &k,
            out: Dtype::F32,
            rows: 64,
            cols: 1024,
        });
    }
    {
        let g = Graph::new();
        let x = g.input("x", Dtype::Bf16, Bcast::Full);
        let b = g.input("b", Dtype::F32, Bcast::Row);
        cases.push(Bytes {
            name: "bf16 -> f32 gelu(x) + b",
            expr: gelu(x) + &b,
            out: Dtype::F32,
            rows: 64,
            cols: 1024,
        });
    }
    {
        let g = Graph::new();
        let x = g.input("x", Dtype::Bf16, Bcast::Full);
        cases.push(Bytes {
            name: "bf16 tanh(x), odd shape",
            expr: x.tanh(),
            out: Dtype::Bf16,
            rows: 63,
            cols: 1023,
        });
    }
    let kernels: Vec<Kernel> = cases.iter().map(|c| elementwise(&c.expr, c.out)).collect();
    let source: String = kernels.iter().map(|k| k.source.as_str()).collect();
    let (mem, loaded) = load(&nvcc, &source);
    for (ci, (c, k)) in cases.iter().zip(&kernels).enumerate() {
        let (rows, cols) = (c.rows, c.cols);
        let mut data = Vec::new();
        // The ideal: every input once (a broadcast input at its own size), the output once.
        let mut ideal = rows * cols * c.out.size();
        // Sectors and requests of a perfectly coalesced warp step: a full or row tensor moves
        // 32 lanes x `vector` elements (one request of 32 x vector x size / 32 sectors), a
        // column input one value for the whole warp (the step stays in one row: 1 sector).
        let (mut step_sectors, mut step_requests) = (0usize, 0usize);
        for (i, (_, dtype, bcast)) in k.inputs.iter().enumerate() {
            let n = match bcast {
                Bcast::Full => rows * cols,
                Bcast::Row => cols,
                Bcast::Col => rows,
                Bcast::Scalar => 1,
            };
            match bcast {
                Bcast::Full | Bcast::Row => {
                    step_sectors += k.vector * dtype.size();
                    step_requests += 1;
                }
                Bcast::Col => {
                    step_sectors += 1;
                    step_requests += 1;
                }
                Bcast::Scalar => {}
            }
            if *bcast != Bcast::Scalar {
                ideal += n * dtype.size();
            }
            data.push(values(ci as u64 * 10 + i as u64, n, *dtype));
        }
        let views: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
        let run = run_on_emu_with(&loaded, &mem, k, rows, cols, &views, &RunOptions::default())
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        compare(c.name, k, &c.expr, false, rows, cols, &views, &run.values);
        let m = &run.metrics;
        let ratio = m.compulsory_bytes() as f64 / ideal as f64;
        let (load_spr, store_spr) = (m.sectors_per_load_request(), m.sectors_per_store_request());
        let ideal_load = step_sectors as f64 / step_requests as f64;
        let ideal_store = (k.vector * c.out.size()) as f64;
        println!(
            "{} at {rows}x{cols}: {} vector elements; compulsory/ideal bytes {ratio:.4} ({} / {ideal}); sectors per load request {load_spr:.2} (ideal {ideal_load:.2}), per store request {store_spr:.2} (ideal {ideal_store:.2}); requested bytes {} read, {} written",
            c.name,
            k.vector,
            m.compulsory_bytes(),
            m.global_bytes_read,
            m.global_bytes_written
        );
        assert!(
            (0.999..=1.05).contains(&ratio),
            "{}: compulsory/ideal bytes {ratio}",
            c.name
        );
        if cols % k.vector == 0 {
            // On the vector path: requests as wide and as coalesced as the access allows.
            assert!(
                (load_spr / ideal_load - 1.0).abs() <= 0.05,
                "{}: {load_spr} sectors per load request, ideal {ideal_load}",
                c.name
            );
            assert!(
                (store_spr / ideal_store - 1.0).abs() <= 0.05,
                "{}: {store_spr} sectors per store request, ideal {ideal_store}",
                c.name
            );
        }
    }
}

/// A reduction kernel (softmax, bf16, 64 x 1024) touches each input and output sector once per
/// launch (its phases re-read the row, from cache on a GPU: the requested bytes show it), in
/// coalesced scalar requests (32 lanes x 2 bytes = 2 sectors).
#[test]
fn reduction_kernels_touch_the_ideal_sectors() {
    let Some(nvcc) = nvcc_or_skip() else {
        return;
    };
    let g = Graph::new();
    let x = g.input("x", Dtype::Bf16, Bcast::Full);
    let e = (&x - &max(&x)).exp();
    let softmax = &e / &sum(&e);
    let k = elementwise(&softmax, Dtype::Bf16);
    let (mem, loaded) = load(&nvcc, &k.source);
    let (rows, cols) = (64, 1024);
    let xs = values(5, rows * cols, Dtype::Bf16);
    let run = run_on_emu_with(
        &loaded,
        &mem,
        &k,
        rows,
        cols,
        &[&xs],
        &RunOptions::default(),
    )
    .expect("run");
    compare(
        "softmax",
        &k,
        &softmax,
        false,
        rows,
        cols,
        &[&xs],
        &run.values,
    );
    let m = &run.metrics;
    let ideal = 2 * rows * cols * 2;
    let ratio = m.compulsory_bytes() as f64 / ideal as f64;
    println!(
        "softmax bf16 at {rows}x{cols}: compulsory/ideal bytes {ratio:.4}; requested bytes {} read ({:.2}x the input: one read per phase), {} written; sectors per load request {:.2}, per store request {:.2}",
        m.global_bytes_read,
        m.global_bytes_read as f64 / (rows * cols * 2) as f64,
        m.global_bytes_written,
        m.sectors_per_load_request(),
        m.sectors_per_store_request()
    );
    assert!((0.999..=1.05).contains(&ratio), "compulsory/ideal {ratio}");
    assert!((m.sectors_per_load_request() - 2.0).abs() <= 0.1);
    assert!((m.sectors_per_store_request() - 2.0).abs() <= 0.1);
}

/// The PTX cache: a second compile of the same expression does not run the compiler (also from
/// a fresh cache over the same directory, as a later process would), a changed expression does.
#[test]
fn ptx_cache_compiles_each_expression_once() {
    use codegen::run::PtxCache;
    let Some(nvcc) = nvcc_or_skip() else {
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
