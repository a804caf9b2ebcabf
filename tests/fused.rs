//! Run-time fused kernels (`ferrotron::fused`): generated CUDA C compiled by NVRTC, cached on
//! disk, run through one API on the emu, CPU and CUDA backends, against the f64 evaluator.
//!
//! Needs NVRTC (`scripts/install-cuda-toolchain.sh` installs it; see `ferrotron::fused::nvrtc`
//! for where it is looked for). Without it each test that compiles prints why it skipped, unless
//! `FERROTRON_REQUIRE_NVRTC=1` (CI), where it fails. The CUDA test skips without a GPU unless
//! `FERROTRON_REQUIRE_GPU=1`.

mod common;

use codegen::eval::evaluate;
use codegen::expr::{gelu, max, mean, Bcast, CmpOp, Dtype, Expr, Graph, Node};
use codegen::run::tolerance;
use common::watchdog;
use ferrotron::fused::{dtype_of, Fused, FusedCache, Nvrtc};
use ferrotron::{Device, Error, Tensor};
use std::path::PathBuf;

/// NVRTC, or `None` after printing why not (panics when `FERROTRON_REQUIRE_NVRTC=1`).
fn nvrtc_or_skip(test: &str) -> Option<Nvrtc> {
    match Nvrtc::from_env() {
        Ok(n) => Some(n),
        Err(e) if std::env::var("FERROTRON_REQUIRE_NVRTC").as_deref() == Ok("1") => {
            panic!("{test}: FERROTRON_REQUIRE_NVRTC=1 but NVRTC is unavailable: {e}")
        }
        Err(e) => {
            eprintln!("SKIP {test}: {e}");
            None
        }
    }
}

/// A fresh, empty cache directory for one test.
fn temp_dir(test: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrotron-fused-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A cache over NVRTC in a fresh directory, or `None` (skipped).
fn cache_or_skip(test: &str) -> Option<(FusedCache, PathBuf)> {
    let nvrtc = nvrtc_or_skip(test)?;
    let dir = temp_dir(test);
    Some((FusedCache::new(&dir, nvrtc).expect("cache dir"), dir))
}

/// Deterministic values in about [-2, 2], rounded to `dtype`.
fn values(n: usize, seed: u64, dtype: Dtype) -> Vec<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let v = (s >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0;
            f64::from(dtype.round(v as f32))
        })
        .collect()
}

/// Whether the expression rounds through bf16 (a cast node).
fn rounds_bf16(e: &Expr) -> bool {
    let nodes = e.graph().nodes();
    e.reachable()
        .into_iter()
        .any(|id| matches!(nodes[id], Node::Cast(Dtype::Bf16, _)))
}

/// One test case: an expression, its output type and the shape of its iteration space.
struct Case {
    what: &'static str,
    expr: Expr,
    out: Dtype,
    /// The shape of the iteration space (`[.., cols]`); the output drops the last dimension
    /// when the expression is per-row.
    dims: Vec<usize>,
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // Megatron's bias + GeLU, scaled: bf16 with a row bias and a scalar, odd shape.
    let g = Graph::new();
    let x = g.input("x", Dtype::Bf16, Bcast::Full);
    let b = g.input("b", Dtype::Bf16, Bcast::Row);
    let s = g.input("s", Dtype::F32, Bcast::Scalar);
    v.push(Case {
        what: "gelu(x + b) * s, bf16, 7 x 33",
        expr: gelu(&x + &b) * &s,
        out: Dtype::Bf16,
        dims: vec![7, 33],
    });
    // f32 with a column input, rank 3 (the column input is [2, 3]).
    let g = Graph::new();
    let x = g.input("x", Dtype::F32, Bcast::Full);
    let y = g.input("y", Dtype::F32, Bcast::Full);
    let c = g.input("c", Dtype::F32, Bcast::Col);
    v.push(Case {
        what: "tanh(x * y) + exp(c) / (1 + |x|), f32, 2 x 3 x 17",
        expr: (&x * &y).tanh() + c.exp() / (g.constant(1.0) + x.abs()),
        out: Dtype::F32,
        dims: vec![2, 3, 17],
    });
    // Mixed types, select, max, a bf16 cast, an aligned shape (the vector path).
    let g = Graph::new();
    let x = g.input("x", Dtype::Bf16, Bcast::Full);
    let w = g.input("w", Dtype::F32, Bcast::Row);
    let k = g.input("k", Dtype::Bf16, Bcast::Scalar);
    let pos = x.cmp(CmpOp::Gt, &g.constant(0.0));
    v.push(Case {
        what: "select(x > 0, x * w, (k * x) cast bf16) max -1, f32 out, 9 x 64",
        expr: pos
            .select(&(&x * &w), &(&k * &x).cast(Dtype::Bf16))
            .max(&g.constant(-1.0)),
        out: Dtype::F32,
        dims: vec![9, 64],
    });
    // One element.
    let g = Graph::new();
    let x = g.input("x", Dtype::F32, Bcast::Full);
    v.push(Case {
        what: "sqrt(|x|) - x, f32, 1 x 1",
        expr: x.abs().sqrt() - &x,
        out: Dtype::F32,
        dims: vec![1, 1],
    });
    v
}

fn reduction_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let g = Graph::new();
    let x = g.input("x", Dtype::Bf16, Bcast::Full);
    v.push(Case {
        what: "exp(x - max(x)), bf16, 5 x 37",
        expr: (&x - &max(&x)).exp(),
        out: Dtype::Bf16,
        dims: vec![5, 37],
    });
    let g = Graph::new();
    let x = g.input("x", Dtype::F32, Bcast::Full);
    v.push(Case {
        what: "rsqrt(mean(x * x) + 1e-5) per row, f32, 6 x 45",
        expr: (mean(&(&x * &x)) + 1e-5).rsqrt(),
        out: Dtype::F32,
        dims: vec![6, 45],
    });
    v
}

/// Runs `case` through `f` on `dev` with deterministic inputs, the output poisoned first, and
/// checks every element against the evaluator. Returns the worst error / tolerance.
fn check_case(dev: &Device, f: &Fused, case: &Case, seed: u64) -> f64 {
    let stream = dev.new_stream().unwrap();
    let dims = &case.dims;
    let cols = *dims.last().unwrap();
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let lead = dims[..dims.len() - 1].to_vec();
    let mut data: Vec<Vec<f64>> = Vec::new();
    let mut tensors: Vec<Option<Tensor>> = Vec::new();
    for (i, (_, dtype, bcast)) in f.inputs().iter().enumerate() {
        let (n, shape) = match bcast {
            Bcast::Full => (rows * cols, dims.clone()),
            Bcast::Row => (cols, vec![cols]),
            Bcast::Col => (rows, lead.clone()),
            Bcast::Scalar => (1, vec![]),
        };
        let vals = values(n, seed * 31 + i as u64, *dtype);
        tensors.push(match bcast {
            Bcast::Scalar => None,
            _ => Some(Tensor::from_f64(dev, &vals, shape, dtype_of(*dtype)).unwrap()),
        });
        data.push(vals);
    }
    let out_dims = if f.per_row() {
        lead.clone()
    } else {
        dims.clone()
    };
    let mut out = Tensor::poisoned(dev, out_dims, dtype_of(case.out)).unwrap();
    let mut bind = f.bind();
    for ((name, _, _), (t, v)) in f.inputs().iter().zip(tensors.iter().zip(&data)) {
        bind = match t {
            Some(t) => bind.tensor(name, t),
            None => bind.scalar(name, v[0] as f32),
        };
    }
    bind.run(&stream, &mut out)
        .unwrap_or_else(|e| panic!("{} on {}: {e}", case.what, dev.label()));
    let got = out.to_f64_vec(&stream).unwrap();
    let slices: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
    let want = evaluate(&case.expr, rows, cols, &slices).unwrap();
    assert_eq!(got.len(), want.values.len(), "{}", case.what);
    let cast = rounds_bf16(&case.expr);
    let mut worst = 0f64;
    for (i, (&g, &w)) in got.iter().zip(&want.values).enumerate() {
        let tol = tolerance(case.out, cast, want.depth, want.scale[i], w);
        // NaN never passes: a NaN is right only where the evaluator says NaN.
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            g == w || (g - w).abs() <= tol
        };
        assert!(
            ok,
            "{} on {}: element {i}: got {g}, want {w} (tolerance {tol:e})\n{}",
            case.what,
            dev.label(),
            f.source()
        );
        if w.is_finite() {
            worst = worst.max((g - w).abs() / tol);
        }
    }
    worst
}

#[test]
fn fused_kernels_match_the_evaluator_on_emu_and_cpu() {
    let Some((cache, dir)) = cache_or_skip("match") else {
        return;
    };
    watchdog(600, "fused_match", move || {
        let emu = Device::emu(0).unwrap();
        let cpu = Device::cpu();
        for (i, case) in cases().iter().enumerate() {
            let f = Fused::compile_in(&case.expr, case.out, &cache)
                .unwrap_or_else(|e| panic!("{}: {e}", case.what));
            let w_emu = check_case(&emu, &f, case, i as u64 + 1);
            let w_cpu = check_case(&cpu, &f, case, i as u64 + 1);
            println!(
                "{}: {} on emu (worst {w_emu:.3} of tolerance) and cpu ({w_cpu:.3})",
                case.what,
                f.name()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn fused_reductions_match_the_evaluator_on_emu_and_cpu() {
    let Some((cache, dir)) = cache_or_skip("reductions") else {
        return;
    };
    watchdog(600, "fused_reductions", move || {
        let emu = Device::emu(0).unwrap();
        let cpu = Device::cpu();
        for (i, case) in reduction_cases().iter().enumerate() {
            let f = Fused::compile_in(&case.expr, case.out, &cache)
                .unwrap_or_else(|e| panic!("{}: {e}", case.what));
            let w_emu = check_case(&emu, &f, case, i as u64 + 11);
            let w_cpu = check_case(&cpu, &f, case, i as u64 + 11);
            println!(
                "{}: {} on emu (worst {w_emu:.3} of tolerance) and cpu ({w_cpu:.3})",
                case.what,
                f.name()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// NVRTC 13.0's PTX is what ptx-emu (and 13.0 drivers) accept: PTX ISA 9.0 for sm_80.
#[test]
fn nvrtc_ptx_is_accepted_by_ptx_emu() {
    let Some((cache, dir)) = cache_or_skip("ptx") else {
        return;
    };
    let case = &cases()[0];
    let f = Fused::compile_in(&case.expr, case.out, &cache).unwrap();
    assert!(f.ptx().contains(".target sm_80"), "{}", f.ptx());
    assert!(f.ptx().contains(&format!(".entry {}", f.name())));
    let m = ptx_emu::Module::parse(f.ptx()).unwrap_or_else(|e| panic!("ptx-emu: {e}"));
    assert_eq!(m.kernel_names(), vec![f.name().to_string()]);
    println!(
        "{} ({}): {}",
        cache.compiler(),
        f.name(),
        f.ptx()
            .lines()
            .find(|l| l.starts_with(".version"))
            .unwrap_or("?")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A second compile of the same expression does not call NVRTC (also from a fresh cache over
/// the same directory, as a later process would); a changed expression or output type does.
#[test]
fn the_cache_compiles_each_expression_once() {
    let Some(nvrtc) = nvrtc_or_skip("cache") else {
        return;
    };
    let dir = temp_dir("cache");
    let cache = FusedCache::new(&dir, nvrtc.clone()).unwrap();
    let build = |scale: f64| {
        let g = Graph::new();
        let x = g.input("x", Dtype::F32, Bcast::Full);
        gelu(x) * scale
    };
    let a = Fused::compile_in(&build(2.0), Dtype::F32, &cache).unwrap();
    assert_eq!(cache.compiles(), 1);
    let again = Fused::compile_in(&build(2.0), Dtype::F32, &cache).unwrap();
    assert_eq!(
        cache.compiles(),
        1,
        "the same expression (another graph) is a hit"
    );
    assert_eq!((again.name(), again.ptx()), (a.name(), a.ptx()));
    let b = Fused::compile_in(&build(3.0), Dtype::F32, &cache).unwrap();
    assert_eq!(cache.compiles(), 2, "a changed expression compiles");
    assert_ne!(b.name(), a.name());
    Fused::compile_in(&build(2.0), Dtype::Bf16, &cache).unwrap();
    assert_eq!(cache.compiles(), 3, "another output type compiles");
    let later = FusedCache::new(&dir, nvrtc).unwrap();
    let from_disk = Fused::compile_in(&build(2.0), Dtype::F32, &later).unwrap();
    assert_eq!(later.compiles(), 0, "a fresh cache finds it on disk");
    assert_eq!(from_disk.ptx(), a.ptx());
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        files, 3,
        "one file per compiled kernel, no temporaries left"
    );
    assert!(
        cache.compiler().starts_with("nvrtc 13."),
        "{}",
        cache.compiler()
    );
    // The process-wide cache (FERROTRON_PTX_CACHE or ~/.cache/ferrotron/ptx) works too.
    let global = Fused::compile(&build(2.0), Dtype::F32).unwrap();
    assert_eq!(global.ptx(), a.ptx());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Source NVRTC rejects: the typed error carries its log.
#[test]
fn a_rejected_kernel_reports_nvrtcs_log() {
    let Some(nvrtc) = nvrtc_or_skip("log") else {
        return;
    };
    let bad = "extern \"C\" __global__ void broken(float* o) { o[0] = undeclared_name; }";
    match nvrtc.compile("broken", bad) {
        Err(Error::KernelCompile { kernel, log, .. }) => {
            assert_eq!(kernel, "broken");
            assert!(log.contains("undeclared_name"), "{log}");
        }
        other => panic!("expected KernelCompile, got {other:?}"),
    }
    assert!(matches!(
        nvrtc.compile("nul", "int x;\0"),
        Err(Error::KernelCompile { .. })
    ));
}

#[test]
fn missing_nvrtc_is_a_typed_error() {
    let reason = |r: Result<Nvrtc, Error>| match r {
        Err(Error::NvrtcUnavailable { reason }) => reason,
        other => panic!("expected NvrtcUnavailable, got {other:?}"),
    };
    let r = reason(Nvrtc::at("/nonexistent/libnvrtc.so.13".as_ref()));
    assert!(r.contains("/nonexistent/libnvrtc.so.13"), "{r}");
    let dir = temp_dir("missing");
    std::fs::create_dir_all(&dir).unwrap();
    let r = reason(Nvrtc::at(&dir));
    assert!(r.contains("libnvrtc.so.13"), "{r}");
    // A file that is not a library: dlopen refuses it, no panic.
    std::fs::write(dir.join("libnvrtc.so.13"), b"not a library").unwrap();
    let r = reason(Nvrtc::at(&dir));
    assert!(r.contains("libnvrtc.so.13"), "{r}");
    let shown = Error::NvrtcUnavailable { reason: r }.to_string();
    assert!(shown.contains("FERROTRON_NVRTC"), "{shown}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `FERROTRON_NVRTC` pointing nowhere: `Nvrtc::from_env` and `Fused::compile` return the typed
/// error (checked in a child process, so that the environment variable and the process-wide
/// cache of this process are left alone).
#[test]
fn a_bad_ferrotron_nvrtc_is_a_typed_error() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_with_bad_ferrotron_nvrtc",
            "--nocapture",
        ])
        .env("FERROTRON_NVRTC", "/nonexistent/nvrtc")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "{text}");
}

#[test]
#[ignore = "run by a_bad_ferrotron_nvrtc_is_a_typed_error in a child process"]
fn child_with_bad_ferrotron_nvrtc() {
    assert_eq!(
        std::env::var("FERROTRON_NVRTC").as_deref(),
        Ok("/nonexistent/nvrtc")
    );
    match Nvrtc::from_env() {
        Err(Error::NvrtcUnavailable { reason }) => {
            assert!(
                reason.contains("FERROTRON_NVRTC=/nonexistent/nvrtc"),
                "{reason}"
            )
        }
        other => panic!("expected NvrtcUnavailable, got {other:?}"),
    }
    let g = Graph::new();
    let x = g.input("x", Dtype::F32, Bcast::Full);
    match Fused::compile(&x.tanh(), Dtype::F32) {
        Err(Error::NvrtcUnavailable { .. }) => {}
        other => panic!("expected NvrtcUnavailable, got {other:?}"),
    }
}

/// Every misuse of the arguments is a typed error before anything runs.
#[test]
fn wrong_arguments_are_typed_errors() {
    let Some((cache, dir)) = cache_or_skip("args") else {
        return;
    };
    let case = &cases()[0]; // x: bf16 full, b: bf16 row, s: f32 scalar -> bf16
    let f = Fused::compile_in(&case.expr, case.out, &cache).unwrap();
    let dev = Device::emu(0).unwrap();
    let cpu = Device::cpu();
    let stream = dev.new_stream().unwrap();
    let bf = ferrotron::DType::BF16;
    let x = Tensor::zeros(&dev, [4, 8], bf).unwrap();
    let b = Tensor::zeros(&dev, [8], bf).unwrap();
    let b_short = Tensor::zeros(&dev, [7], bf).unwrap();
    let b_f32 = Tensor::zeros(&dev, [8], ferrotron::DType::F32).unwrap();
    let x_cpu = Tensor::zeros(&cpu, [4, 8], bf).unwrap();
    let mut y = Tensor::zeros(&dev, [4, 8], bf).unwrap();
    let mut y_f32 = Tensor::zeros(&dev, [4, 8], ferrotron::DType::F32).unwrap();
    let invalid = |r: ferrotron::Result<()>, what: &str| match r {
        Err(Error::InvalidArgument { what: w, why, .. }) => {
            assert!(w.contains(what), "{w}: {why}")
        }
        other => panic!("expected InvalidArgument about {what}, got {other:?}"),
    };
    let ok = || f.bind().tensor("x", &x).tensor("b", &b).scalar("s", 1.0);
    invalid(ok().tensor("z", &x).run(&stream, &mut y), "input z");
    invalid(ok().tensor("x", &x).run(&stream, &mut y), "input x");
    invalid(
        f.bind()
            .tensor("x", &x)
            .tensor("b", &b)
            .tensor("s", &x)
            .run(&stream, &mut y),
        "input s",
    );
    invalid(
        f.bind()
            .scalar("x", 1.0)
            .tensor("b", &b)
            .scalar("s", 1.0)
            .run(&stream, &mut y),
        "input x",
    );
    invalid(
        f.bind()
            .tensor("x", &x)
            .tensor("b", &b)
            .run(&stream, &mut y),
        "input s",
    );
    assert!(matches!(
        f.bind()
            .tensor("x", &x)
            .tensor("b", &b_short)
            .scalar("s", 1.0)
            .run(&stream, &mut y),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        f.bind()
            .tensor("x", &x)
            .tensor("b", &b_f32)
            .scalar("s", 1.0)
            .run(&stream, &mut y),
        Err(Error::DTypeMismatch { .. })
    ));
    assert!(matches!(
        ok().run(&stream, &mut y_f32),
        Err(Error::DTypeMismatch { .. })
    ));
    assert!(matches!(
        f.bind()
            .tensor("x", &x_cpu)
            .tensor("b", &b)
            .scalar("s", 1.0)
            .run(&stream, &mut y),
        Err(Error::DeviceMismatch { .. })
    ));
    // Nothing ran; the correct call still works.
    ok().run(&stream, &mut y).unwrap();
    stream.synchronize().unwrap();
    // Two inputs with one name cannot be bound by name: refused at compile time.
    let g = Graph::new();
    let a = g.input("a", Dtype::F32, Bcast::Full);
    let a2 = g.input("a", Dtype::F32, Bcast::Row);
    assert!(matches!(
        Fused::compile_in(&(&a + &a2), Dtype::F32, &cache),
        Err(Error::InvalidArgument { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same fused kernels on a GPU (PTX JIT-compiled by the driver).
#[test]
fn fused_kernels_match_the_evaluator_on_the_gpu() {
    if common::gpus_or_skip("fused_gpu") == 0 {
        return;
    }
    let Some((cache, dir)) = cache_or_skip("gpu") else {
        return;
    };
    watchdog(300, "fused_gpu", move || {
        let gpu = Device::cuda(0).unwrap();
        for (i, case) in cases().iter().chain(&reduction_cases()).enumerate() {
            let f = Fused::compile_in(&case.expr, case.out, &cache).unwrap();
            let w = check_case(&gpu, &f, case, i as u64 + 21);
            println!("{} on cuda: worst {w:.3} of tolerance", case.what);
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
