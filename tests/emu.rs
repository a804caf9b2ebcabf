//! The emu backend: the shipped kernels' sm_80 PTX interpreted by ptx-emu, through the same
//! ferrotron API as a GPU, against the f64 references; and the opcode gate (every opcode form
//! nvcc emits for `kernels/` must be implemented by the emulator).
//!
//! Without kernels (built without nvcc) each test prints why it skipped; with
//! `FERROTRON_REQUIRE_KERNELS=1` (CI) a missing image fails instead.

mod common;

use common::{kernels_or_skip, watchdog};
use ferrotron::{check, kernels, ops, DType, Device, Error, Tensor};

/// The CI gate: every embedded image parses and decodes on the emulator, i.e. every opcode form
/// nvcc emitted for `kernels/` is implemented. Prints the forms per image.
#[test]
fn every_opcode_form_nvcc_emits_is_implemented() {
    if !kernels_or_skip("opcode_gate") {
        return;
    }
    assert!(!kernels::images().is_empty());
    for img in kernels::images() {
        let m = ptx_emu::Module::parse(img.ptx).unwrap_or_else(|e| {
            panic!(
                "kernels/{}.cu: the emulator cannot run nvcc's PTX: {e}",
                img.name
            )
        });
        let forms = m.opcode_forms();
        eprintln!(
            "{}: {} kernels, {} opcode forms: {}",
            img.name,
            m.kernel_names().len(),
            forms.len(),
            forms.keys().cloned().collect::<Vec<_>>().join(" ")
        );
        assert_eq!(m.kernel_names().len(), img.entries().len(), "{}", img.name);
    }
}

#[test]
fn bias_gelu_kernels_match_the_reference_on_the_emulator() {
    if !kernels_or_skip("emu_bias_gelu") {
        return;
    }
    watchdog(300, "emu_bias_gelu", || {
        let dev = Device::emu(0).unwrap();
        for seed in [21u64, 22] {
            let report = check::run(std::slice::from_ref(&dev), seed);
            let rows: Vec<_> = report
                .rows
                .iter()
                .filter(|r| r.op.starts_with("bias_gelu"))
                .collect();
            // fwd: 4 shapes x 2 dtypes; bwd: dx and dbias for the same.
            assert!(rows.len() >= 24, "bias_gelu rows on emu: {}", rows.len());
            assert!(rows.iter().all(|r| r.backend == "emu:0"));
            assert!(report.failures().is_empty(), "{}", report.table());
            // Ops without a kernel yet are reported as notes, never as passes.
            assert!(
                report.notes.iter().any(|n| n.contains("gemm")),
                "{:?}",
                report.notes
            );
        }
        let m = dev.emu_metrics().expect("emu device");
        assert!(
            m.thread_instructions > 0 && m.global_load_requests > 0,
            "{m}"
        );
    });
}

/// Odd sizes (not a multiple of the block, odd column counts that force the scalar bf16 path),
/// several interleaving seeds, poisoned outputs.
#[test]
fn bias_gelu_on_the_emulator_for_odd_sizes_and_seeds() {
    if !kernels_or_skip("emu_bias_gelu_odd") {
        return;
    }
    watchdog(300, "emu_bias_gelu_odd", || {
        for seed in [1u64, 7, 1234] {
            let dev = Device::emu_with(
                0,
                Default::default(),
                ferrotron::backend::emu::EmuOptions {
                    seed,
                    ..Default::default()
                },
            )
            .unwrap();
            let s = dev.new_stream().unwrap();
            for (rows, cols, dtype) in [
                (3usize, 257usize, DType::F32),
                (5, 33, DType::BF16),
                (2, 130, DType::BF16),
            ] {
                let n = rows * cols;
                let xv = ferrotron::verify::random_vec(seed, n, -3.0, 3.0);
                let bv = ferrotron::verify::random_vec(seed + 1, cols, -1.0, 1.0);
                let x = Tensor::from_f64(&dev, &xv, [rows, cols], dtype).unwrap();
                let b = Tensor::from_f64(&dev, &bv, [cols], dtype).unwrap();
                let mut y = Tensor::poisoned(&dev, [rows, cols], dtype).unwrap();
                ops::bias_gelu_fwd(&s, &x, &b, &mut y).unwrap();
                let got = y.to_f64_vec(&s).unwrap();
                let xr = x.to_f64_vec(&s).unwrap();
                let br = b.to_f64_vec(&s).unwrap();
                let want = ferrotron::reference::bias_gelu::bias_gelu_fwd_ref(rows, cols, &xr, &br);
                let tol = ferrotron::verify::Tolerance::for_dtype(dtype);
                let c = ferrotron::verify::compare(&got, &want, tol);
                assert!(c.pass, "{rows}x{cols} {dtype} seed {seed}: {c}");
            }
        }
    });
}

#[test]
fn emu_rejects_ops_without_kernels_and_foreign_tensors() {
    let dev = Device::emu(0).unwrap();
    let s = dev.new_stream().unwrap();
    let a = Tensor::zeros(&dev, [4, 4], DType::F32).unwrap();
    let b = Tensor::zeros(&dev, [4, 4], DType::F32).unwrap();
    let mut c = Tensor::zeros(&dev, [4, 4], DType::F32).unwrap();
    let e = ops::gemm(&s, &a, &b, &mut c, &ops::Gemm::default())
        .expect_err("the emu GEMM kernels take bf16 inputs, not f32");
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let cpu = Tensor::zeros(&Device::cpu(), [4], DType::F32).unwrap();
    let mut y = Tensor::zeros(&dev, [4, 4], DType::F32).unwrap();
    let e = ops::bias_gelu_fwd(&s, &a, &cpu, &mut y).unwrap_err();
    assert!(matches!(e, Error::DeviceMismatch { .. }), "{e}");
    assert!(matches!(
        Device::emu(64).unwrap_err(),
        Error::NoEmuDevice { ordinal: 64 }
    ));
    // Round trip through the emulator's memory.
    let mut t = Tensor::zeros(&dev, [3], DType::F32).unwrap();
    t.copy_from_slice(&s, &[1.0f32, -2.0, 3.5]).unwrap();
    assert_eq!(t.to_vec::<f32>(&s).unwrap(), vec![1.0, -2.0, 3.5]);
}

/// A kernel fault surfaces through the ordinary API as a typed error: here the input was never
/// written (a poisoned tensor), so the kernel's first load is an uninitialised read, reported
/// with the kernel, thread, PTX line and address; the stream stays failed.
#[test]
fn a_kernel_reading_poisoned_memory_fails_the_stream_with_a_typed_error() {
    if !kernels_or_skip("emu_poisoned_read") {
        return;
    }
    watchdog(120, "emu_poisoned_read", || {
        let dev = Device::emu(0).unwrap();
        let s = dev.new_stream().unwrap();
        let x = Tensor::poisoned(&dev, [4, 33], DType::F32).unwrap();
        let b = Tensor::zeros(&dev, [33], DType::F32).unwrap();
        let mut y = Tensor::poisoned(&dev, [4, 33], DType::F32).unwrap();
        ops::bias_gelu_fwd(&s, &x, &b, &mut y).unwrap();
        let e = s.synchronize().unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("ft_bias_gelu_fwd_f32") && msg.contains("poisoned"),
            "{msg}"
        );
        assert!(msg.contains("ld.global"), "{msg}");
        // Sticky: later work on the stream reports the failure too.
        assert!(y.to_vec::<f32>(&s).is_err());
    });
}

/// `ferrotron bench kernels --quick`: every kernel-backed op runs on the emulator, and the
/// counters say the kernels are well built: compulsory global traffic equals the ideal (each
/// input read once, each output written once) within 5% — the fused bias+GeLU and layernorm
/// backwards included, whose f32 per-chunk partial sums are the only extra traffic — and no
/// kernel has shared-memory bank conflicts.
#[test]
fn kernel_bench_counters() {
    if !kernels_or_skip("kernel_bench_counters") {
        return;
    }
    let rows = ferrotron::bench::kernels::bench(true).expect("bench");
    assert!(rows.len() >= 24, "{} rows", rows.len());
    for fused in ["all_gather_gemm", "gemm_reduce_scatter"] {
        assert!(
            rows.iter().any(|r| r.name.starts_with(fused)),
            "no {fused} row"
        );
    }
    for r in &rows {
        let ratio = r.bytes_ratio();
        assert!(
            ratio <= 1.05,
            "{} {}: compulsory/ideal {ratio}",
            r.name,
            r.shape
        );
        assert_eq!(r.metrics.shared_bank_conflicts, 0, "{}", r.name);
        assert!(r.metrics.thread_instructions > 0, "{}", r.name);
    }
    print!("{}", ferrotron::bench::kernels::table(&rows));
}

/// `ferrotron codegen`: the kernel text always; with an nvcc (`FERROTRON_NVCC`), the generated
/// kernel run on the emulator against the evaluator.
#[test]
fn codegen_command_emits_and_checks() {
    use ferrotron::bench::codegen::{codegen, parse_input};
    let ins: Vec<String> = ["x:bf16:full", "b:bf16:row", "s:f32:scalar"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = codegen("gelu(x + b) * s", &ins, codegen::expr::Dtype::Bf16, None).expect("emit");
    assert!(text.contains("__global__ void ft_fused_"), "{text}");
    assert!(parse_input("x:f64:full").is_err());
    assert!(parse_input("x:f32").is_err());
    assert!(codegen("gelu(y)", &ins, codegen::expr::Dtype::F32, None).is_err());
    if std::env::var_os("FERROTRON_NVCC").is_none() {
        println!("codegen --check skipped: FERROTRON_NVCC is not set");
        return;
    }
    let ins: Vec<String> = ["x:f32:full", "r:f32:col", "k:f32:scalar"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let text = codegen(
        "max(x * r, -k) - erf(x) / (1 + abs(r))",
        &ins,
        codegen::expr::Dtype::F32,
        Some((5, 67)),
    )
    .expect("check passes");
    assert!(text.contains("-> PASS"), "{text}");
}

/// The shard ops (device copies on the emulator) equal the CPU backend bit for bit.
#[test]
fn shard_ops_on_the_emulator_equal_the_cpu_backend() {
    use ferrotron::ops::shard;
    let run = |dev: &Device| -> Vec<Vec<f64>> {
        let s = dev.new_stream().unwrap();
        let x = Tensor::from_f64(
            dev,
            &ferrotron::verify::random_vec(5, 6 * 12, -1.0, 1.0),
            [6, 12],
            DType::BF16,
        )
        .unwrap();
        let y = Tensor::from_f64(
            dev,
            &ferrotron::verify::random_vec(6, 6 * 5, -1.0, 1.0),
            [6, 5],
            DType::BF16,
        )
        .unwrap();
        let mut out = Vec::new();
        let mut c = Tensor::poisoned(dev, [6, 12], DType::BF16).unwrap();
        shard::copy(&s, &x, &mut c).unwrap();
        out.push(c.to_f64_vec(&s).unwrap());
        let mut p = Tensor::poisoned(dev, [6, 4], DType::BF16).unwrap();
        shard::split_last(&s, &x, 2, 3, &mut p).unwrap();
        out.push(p.to_f64_vec(&s).unwrap());
        let mut f = Tensor::poisoned(dev, [2, 12], DType::BF16).unwrap();
        shard::split_first(&s, &x, 1, 3, &mut f).unwrap();
        out.push(f.to_f64_vec(&s).unwrap());
        let mut cat = Tensor::poisoned(dev, [6, 17], DType::BF16).unwrap();
        shard::concat_last(&s, &[&y, &x], &mut cat).unwrap();
        out.push(cat.to_f64_vec(&s).unwrap());
        let st = x.reshape([3, 2, 12]).unwrap();
        let mut cs = Tensor::poisoned(dev, [2, 36], DType::BF16).unwrap();
        shard::concat_last_stacked(&s, &st, &mut cs).unwrap();
        out.push(cs.to_f64_vec(&s).unwrap());
        let mut flat = Tensor::poisoned(dev, [40], DType::BF16).unwrap();
        shard::pack(&s, &y, &mut flat, 7).unwrap();
        let mut back = Tensor::poisoned(dev, [6, 5], DType::BF16).unwrap();
        shard::unpack(&s, &flat, 7, &mut back).unwrap();
        out.push(back.to_f64_vec(&s).unwrap());
        s.synchronize().unwrap();
        out
    };
    let want = run(&Device::cpu());
    let got = run(&Device::emu(0).unwrap());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(
            g.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            w.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "op {i}"
        );
    }
}
