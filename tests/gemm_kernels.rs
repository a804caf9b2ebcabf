//! The sm_80 GEMM kernels (`kernels/gemm/gemm.cu`) on the PTX emulator, and the same
//! [`ops::gemm_epilogue`] API on the CPU backend, against the f64 reference
//! [`reference::gemm::gemm_epilogue_ref`]: every layout x its epilogues x output dtype at odd and
//! boundary shapes, fresh random bf16-rounded inputs, poisoned outputs, tolerance
//! `Tolerance::for_reduction(out_dtype, k)` (NaN never passes); the emulator's sanitizer checks
//! (bounds, uninitialised / poisoned reads, shared races) stay on. Plus the shared-memory and
//! coalescing metrics of the main loop and the typed errors of unsupported combinations.
//!
//! Without kernels (built without nvcc) the emulator tests print why they skipped; with
//! `FERROTRON_REQUIRE_KERNELS=1` a missing image fails instead.

mod common;

use common::{kernels_or_skip, watchdog};
use ferrotron::backend::emu::EmuOptions;
use ferrotron::ops::{self, Epilogue, Gemm, Transpose};
use ferrotron::reference::gemm::{gemm_epilogue_ref, RefEpilogue};
use ferrotron::verify::{compare, random_vec, Tolerance};
use ferrotron::{DType, Device, Error, Stream, Tensor};
use std::time::Instant;

/// The epilogues under test (`BiasGeluPre` also writes and checks the pre-activation).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Epi {
    None,
    Bias,
    BiasGelu,
    BiasGeluPre,
    DGelu,
    Accum,
}

/// Every instantiated (layout, epilogue, output dtype).
fn combos() -> Vec<(Transpose, Transpose, Epi, DType)> {
    use DType::{BF16, F32};
    use Transpose::{N, T};
    let mut v = Vec::new();
    for out in [BF16, F32] {
        for epi in [Epi::None, Epi::Bias, Epi::BiasGelu, Epi::BiasGeluPre] {
            v.push((N, T, epi, out));
        }
        for epi in [Epi::None, Epi::DGelu] {
            v.push((N, N, epi, out));
        }
        v.push((T, N, Epi::None, out));
    }
    v.push((T, N, Epi::Accum, F32));
    v
}

/// Odd, boundary, unaligned (k = 5, 37; m = 17 for tn) and multi-CTA shapes (m, n, k); the last
/// two exceed one 64 x 64 x 32 / 128 x 128 x 32 block tile in every dimension.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 9, 5),
    (17, 24, 40),
    (64, 64, 64),
    (130, 72, 48),
    (70, 66, 37),
    (33, 64, 129),
    (200, 136, 72),
];

fn bf16_input(
    s: &Stream,
    shape: &[usize],
    seed: u64,
    lo: f64,
    hi: f64,
    dtype: DType,
) -> (Tensor, Vec<f64>) {
    let n: usize = shape.iter().product();
    let v: Vec<f64> = random_vec(seed, n, lo, hi)
        .into_iter()
        .map(|x| match dtype {
            DType::BF16 => half::bf16::from_f64(x).to_f64(),
            DType::F32 => x as f32 as f64,
            _ => unreachable!(),
        })
        .collect();
    let t = Tensor::from_f64(s.device(), &v, shape.to_vec(), dtype).expect("upload");
    (t, v)
}

/// Runs one case and compares every output with the reference; returns a description on failure.
#[allow(clippy::too_many_arguments)]
fn run_case(
    s: &Stream,
    ta: Transpose,
    tb: Transpose,
    epi: Epi,
    out: DType,
    (m, n, k): (usize, usize, usize),
    seed: u64,
) -> Result<(), String> {
    let label = format!("{ta:?}{tb:?} {epi:?} {} {m}x{n}x{k}", out.name());
    let a_shape = if ta == Transpose::N { [m, k] } else { [k, m] };
    let b_shape = if tb == Transpose::N { [k, n] } else { [n, k] };
    let (a, av) = bf16_input(s, &a_shape, seed, -1.0, 1.0, DType::BF16);
    let (b, bv) = bf16_input(s, &b_shape, seed + 1, -1.0, 1.0, DType::BF16);
    let (bias, biasv) = bf16_input(s, &[n], seed + 2, -1.0, 1.0, out);
    let (prein, preinv) = bf16_input(s, &[m, n], seed + 3, -3.0, 3.0, out);
    let (mut c, mut want, beta) = if epi == Epi::Accum {
        let (c, cv) = bf16_input(s, &[m, n], seed + 4, -1.0, 1.0, out);
        (c, cv, 1.0)
    } else {
        let c = Tensor::poisoned(s.device(), vec![m, n], out).expect("alloc");
        (c, vec![f64::NAN; m * n], 0.0)
    };
    let mut pre = Tensor::poisoned(s.device(), vec![m, n], out).expect("alloc");
    let args = Gemm {
        ta,
        tb,
        alpha: 1.0,
        beta,
    };
    let e = match epi {
        Epi::None | Epi::Accum => Epilogue::None,
        Epi::Bias => Epilogue::Bias(&bias),
        Epi::BiasGelu => Epilogue::BiasGelu {
            bias: &bias,
            pre: None,
        },
        Epi::BiasGeluPre => Epilogue::BiasGelu {
            bias: &bias,
            pre: Some(&mut pre),
        },
        Epi::DGelu => Epilogue::DGelu { pre: &prein },
    };
    ops::gemm_epilogue(s, &a, &b, &mut c, &args, e).map_err(|e| format!("{label}: {e}"))?;
    let repi = match epi {
        Epi::None | Epi::Accum => RefEpilogue::None,
        Epi::Bias => RefEpilogue::Bias(&biasv),
        Epi::BiasGelu | Epi::BiasGeluPre => RefEpilogue::BiasGelu(&biasv),
        Epi::DGelu => RefEpilogue::DGelu(&preinv),
    };
    let mut want_pre = vec![f64::NAN; m * n];
    gemm_epilogue_ref(
        ta,
        tb,
        m,
        n,
        k,
        1.0,
        &av,
        &bv,
        beta as f64,
        &mut want,
        repi,
        Some(&mut want_pre),
    );
    let tol = Tolerance::for_reduction(out, k);
    let got = c.to_f64_vec(s).map_err(|e| format!("{label}: {e}"))?;
    let cmp = compare(&got, &want, tol);
    if !cmp.pass {
        return Err(format!("{label}: c: {cmp}"));
    }
    if epi == Epi::BiasGeluPre {
        let got = pre.to_f64_vec(s).map_err(|e| format!("{label}: {e}"))?;
        let cmp = compare(&got, &want_pre, tol);
        if !cmp.pass {
            return Err(format!("{label}: pre: {cmp}"));
        }
    }
    Ok(())
}

fn run_all(dev: &Device, filter: impl Fn(Transpose, Transpose) -> bool, seed: u64) {
    let s = dev.new_named_stream("gemm_kernels").unwrap();
    let mut failures = Vec::new();
    let mut cases = 0;
    for (ci, &(ta, tb, epi, out)) in combos().iter().enumerate() {
        if !filter(ta, tb) {
            continue;
        }
        for (si, &shape) in SHAPES.iter().enumerate() {
            cases += 1;
            let case_seed = seed + (ci * 100 + si) as u64 * 10;
            if let Err(e) = run_case(&s, ta, tb, epi, out, shape, case_seed) {
                failures.push(e);
            }
        }
    }
    assert!(cases > 0);
    assert!(
        failures.is_empty(),
        "{} of {cases} cases failed on {}:\n{}",
        failures.len(),
        dev.label(),
        failures.join("\n")
    );
}

#[test]
fn emu_sanitizer_checks_are_on_by_default() {
    let o = EmuOptions::default();
    assert!(o.checks.initcheck && o.checks.racecheck, "{o:?}");
}

#[test]
fn emu_gemm_nt_forward_epilogues_match_reference() {
    if !kernels_or_skip("emu_gemm_nt") {
        return;
    }
    watchdog(300, "emu_gemm_nt", || {
        let dev = Device::emu(0).unwrap();
        run_all(
            &dev,
            |ta, tb| (ta, tb) == (Transpose::N, Transpose::T),
            1000,
        );
    });
}

#[test]
fn emu_gemm_nn_tn_backward_epilogues_match_reference() {
    if !kernels_or_skip("emu_gemm_nn_tn") {
        return;
    }
    watchdog(300, "emu_gemm_nn_tn", || {
        let dev = Device::emu(1).unwrap();
        run_all(
            &dev,
            |ta, tb| (ta, tb) != (Transpose::N, Transpose::T),
            2000,
        );
    });
}

#[test]
fn cpu_gemm_epilogues_match_reference() {
    let dev = Device::cpu();
    run_all(&dev, |_, _| true, 3000);
}

/// The epilogue API on the CPU with what the device kernels do not take: f32 operands, alpha,
/// beta and the (T, T) layout.
#[test]
fn cpu_gemm_epilogue_general_arguments() {
    let dev = Device::cpu();
    let s = dev.new_stream().unwrap();
    let (m, n, k) = (13, 11, 9);
    let (a, av) = bf16_input(&s, &[k, m], 1, -1.0, 1.0, DType::F32);
    let (b, bv) = bf16_input(&s, &[n, k], 2, -1.0, 1.0, DType::F32);
    let (bias, biasv) = bf16_input(&s, &[n], 3, -1.0, 1.0, DType::F32);
    let (mut c, mut want) = bf16_input(&s, &[m, n], 4, -1.0, 1.0, DType::F32);
    let mut pre = Tensor::poisoned(&dev, vec![m, n], DType::F32).unwrap();
    let args = Gemm {
        ta: Transpose::T,
        tb: Transpose::T,
        alpha: 0.5,
        beta: 0.25,
    };
    ops::gemm_epilogue(
        &s,
        &a,
        &b,
        &mut c,
        &args,
        Epilogue::BiasGelu {
            bias: &bias,
            pre: Some(&mut pre),
        },
    )
    .unwrap();
    let mut want_pre = vec![0.0; m * n];
    gemm_epilogue_ref(
        Transpose::T,
        Transpose::T,
        m,
        n,
        k,
        0.5,
        &av,
        &bv,
        0.25,
        &mut want,
        RefEpilogue::BiasGelu(&biasv),
        Some(&mut want_pre),
    );
    let tol = Tolerance::for_reduction(DType::F32, k);
    let cmp = compare(&c.to_f64_vec(&s).unwrap(), &want, tol);
    assert!(cmp.pass, "{cmp}");
    let cmp = compare(&pre.to_f64_vec(&s).unwrap(), &want_pre, tol);
    assert!(cmp.pass, "{cmp}");
}

/// Field-by-field difference of two metric snapshots (the counters only grow).
fn delta(after: &ptx_emu::Metrics, before: &ptx_emu::Metrics) -> ptx_emu::Metrics {
    ptx_emu::Metrics {
        thread_instructions: after.thread_instructions - before.thread_instructions,
        warp_instructions: after.warp_instructions - before.warp_instructions,
        global_load_requests: after.global_load_requests - before.global_load_requests,
        global_load_sectors: after.global_load_sectors - before.global_load_sectors,
        global_store_requests: after.global_store_requests - before.global_store_requests,
        global_store_sectors: after.global_store_sectors - before.global_store_sectors,
        global_bytes_read: after.global_bytes_read - before.global_bytes_read,
        global_bytes_written: after.global_bytes_written - before.global_bytes_written,
        shared_requests: after.shared_requests - before.shared_requests,
        shared_wavefronts: after.shared_wavefronts - before.shared_wavefronts,
        shared_bank_conflicts: after.shared_bank_conflicts - before.shared_bank_conflicts,
        flops: after.flops - before.flops,
        ctas: after.ctas - before.ctas,
        ..Default::default()
    }
}

/// Main-loop properties on aligned shapes with no boundary tiles and the `none` epilogue (so
/// every global load is a 16-byte cp.async of the pipeline): 0 shared-memory bank conflicts
/// (ldmatrix reads and cp.async writes of the swizzled tiles) and every load request 512 fully
/// used bytes, i.e. 16 sectors per request and sectors * 32 == bytes read. Prints the counters
/// and the emulator time.
#[test]
fn emu_gemm_main_loop_metrics() {
    if !kernels_or_skip("emu_gemm_metrics") {
        return;
    }
    watchdog(300, "emu_gemm_metrics", || {
        let dev = Device::emu(2).unwrap();
        let s = dev.new_stream().unwrap();
        // Warm-up: the first launch parses and loads the module (not counted in the timings).
        run_case(
            &s,
            Transpose::N,
            Transpose::T,
            Epi::None,
            DType::F32,
            (1, 1, 1),
            5,
        )
        .unwrap();
        let cases = [
            (Transpose::N, Transpose::T, 128),
            (Transpose::N, Transpose::N, 128),
            (Transpose::T, Transpose::N, 128),
            (Transpose::N, Transpose::T, 64),
            (Transpose::N, Transpose::T, 256),
        ];
        for (ta, tb, size) in cases {
            let (m, n, k) = (size, size, size);
            let a_shape = if ta == Transpose::N { [m, k] } else { [k, m] };
            let b_shape = if tb == Transpose::N { [k, n] } else { [n, k] };
            let (a, _) = bf16_input(&s, &a_shape, 7, -1.0, 1.0, DType::BF16);
            let (b, _) = bf16_input(&s, &b_shape, 8, -1.0, 1.0, DType::BF16);
            let mut c = Tensor::poisoned(&dev, vec![m, n], DType::F32).unwrap();
            s.synchronize().unwrap();
            let before = dev.emu_metrics().unwrap();
            let t0 = Instant::now();
            ops::gemm(
                &s,
                &a,
                &b,
                &mut c,
                &Gemm {
                    ta,
                    tb,
                    alpha: 1.0,
                    beta: 0.0,
                },
            )
            .unwrap();
            s.synchronize().unwrap();
            let secs = t0.elapsed().as_secs_f64();
            let d = delta(&dev.emu_metrics().unwrap(), &before);
            eprintln!(
                "gemm {ta:?}{tb:?} {size}^3 f32 out: {} CTAs, {} thread-instructions in {secs:.2} s \
                 ({:.1} M/s), global loads {} requests / {} sectors ({:.2} sectors/request, {} bytes), \
                 shared {} requests / {} wavefronts / {} bank conflicts, {} flops",
                d.ctas,
                d.thread_instructions,
                d.thread_instructions as f64 / secs / 1e6,
                d.global_load_requests,
                d.global_load_sectors,
                d.sectors_per_load_request(),
                d.global_bytes_read,
                d.shared_requests,
                d.shared_wavefronts,
                d.shared_bank_conflicts,
                d.flops
            );
            assert_eq!(d.shared_bank_conflicts, 0, "{ta:?}{tb:?} {size}");
            assert_eq!(
                d.global_load_sectors * 32,
                d.global_bytes_read,
                "{ta:?}{tb:?} {size}"
            );
            assert_eq!(
                d.global_load_sectors,
                16 * d.global_load_requests,
                "{ta:?}{tb:?} {size}"
            );
            assert_eq!(d.flops, 2 * (m * n * k) as u64);
            // Every input byte read once per CTA row / column that needs it.
            let tile = if size >= 128 { 128 } else { 64 };
            let tiles = (size / tile) as u64;
            assert_eq!(d.global_bytes_read, 2 * 2 * (size * size) as u64 * tiles);
        }
    });
}

/// Unsupported device combinations and bad operands are typed errors, never panics.
#[test]
fn gemm_epilogue_typed_errors() {
    if !kernels_or_skip("emu_gemm_errors") {
        return;
    }
    let dev = Device::emu(3).unwrap();
    let s = dev.new_stream().unwrap();
    let bf = |shape: &[usize]| Tensor::zeros(&dev, shape.to_vec(), DType::BF16).unwrap();
    let f32t = |shape: &[usize]| Tensor::zeros(&dev, shape.to_vec(), DType::F32).unwrap();
    let (a, b) = (bf(&[4, 8]), bf(&[8, 6]));
    let nn = Gemm::default();
    let err = |r: ferrotron::Result<()>| r.expect_err("must fail");
    // f32 operands on a device backend.
    let mut c = f32t(&[4, 6]);
    let e = err(ops::gemm(&s, &f32t(&[4, 8]), &f32t(&[8, 6]), &mut c, &nn));
    assert!(
        matches!(e, Error::Unsupported { ref backend, .. } if backend.contains("bf16")),
        "{e}"
    );
    // alpha is applied by the kernels (attention's 1/sqrt(d) scaling): c = alpha * a b.
    {
        let av: Vec<f64> = (0..32).map(|i| (i % 7) as f64 * 0.25 - 0.5).collect();
        let bv: Vec<f64> = (0..48).map(|i| (i % 5) as f64 * 0.5 - 1.0).collect();
        let a2 = Tensor::from_f64(&dev, &av, [4, 8], DType::BF16).unwrap();
        let b2 = Tensor::from_f64(&dev, &bv, [8, 6], DType::BF16).unwrap();
        let mut c2 = Tensor::poisoned(&dev, [4, 6], DType::F32).unwrap();
        ops::gemm(&s, &a2, &b2, &mut c2, &Gemm { alpha: 0.375, ..nn }).unwrap();
        let got = c2.to_f64_vec(&s).unwrap();
        for i in 0..4 {
            for j in 0..6 {
                let want: f64 = 0.375 * (0..8).map(|k| av[i * 8 + k] * bv[k * 6 + j]).sum::<f64>();
                assert!(
                    (got[i * 6 + j] - want).abs() < 1e-5,
                    "alpha: {} vs {want}",
                    got[i * 6 + j]
                );
            }
        }
    }
    // beta == 1 with a layout that has no accum kernel, and beta == 0.5.
    let e = err(ops::gemm(&s, &a, &b, &mut c, &Gemm { beta: 1.0, ..nn }));
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    let e = err(ops::gemm(&s, &a, &b, &mut c, &Gemm { beta: 0.5, ..nn }));
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // (T, T).
    let tt = Gemm {
        ta: Transpose::T,
        tb: Transpose::T,
        ..nn
    };
    let e = err(ops::gemm(&s, &bf(&[8, 4]), &bf(&[6, 8]), &mut c, &tt));
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // Bias epilogue on nn (not instantiated).
    let bias = f32t(&[6]);
    let e = err(ops::gemm_epilogue(
        &s,
        &a,
        &b,
        &mut c,
        &nn,
        Epilogue::Bias(&bias),
    ));
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    // Wrong bias length / dtype, wrong pre shape: validation errors on every backend.
    let nt = Gemm {
        tb: Transpose::T,
        ..nn
    };
    let bt = bf(&[6, 8]);
    let e = err(ops::gemm_epilogue(
        &s,
        &a,
        &bt,
        &mut c,
        &nt,
        Epilogue::Bias(&f32t(&[5])),
    ));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let e = err(ops::gemm_epilogue(
        &s,
        &a,
        &bt,
        &mut c,
        &nt,
        Epilogue::Bias(&bf(&[6])),
    ));
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
    let e = err(ops::gemm_epilogue(
        &s,
        &a,
        &b,
        &mut c,
        &nn,
        Epilogue::DGelu {
            pre: &f32t(&[4, 5]),
        },
    ));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    let mut pre = bf(&[4, 6]);
    let e = err(ops::gemm_epilogue(
        &s,
        &a,
        &bt,
        &mut c,
        &nt,
        Epilogue::BiasGelu {
            bias: &bias,
            pre: Some(&mut pre),
        },
    ));
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
    // Inner dimension mismatch.
    let e = err(ops::gemm(&s, &a, &bf(&[7, 6]), &mut c, &nn));
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e}");
    // The stream is still usable.
    ops::gemm(&s, &a, &b, &mut c, &nn).unwrap();
    assert_eq!(c.to_f64_vec(&s).unwrap(), vec![0.0; 24]);
}
