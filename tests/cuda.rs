//! GPU tests: the CUDA backend end to end (embedded fatbin -> module -> launch -> result) against
//! the f64 references, and streams/events/checked mode on CUDA.
//!
//! Without a GPU each test prints why it skipped; with `FERROTRON_REQUIRE_GPU=1` a missing GPU
//! fails instead (that is how `scripts/gpu-check.sh` runs them on a lent GPU).

mod common;

use common::watchdog;
use ferrotron::{check, ops, DType, Device, Error, Tensor};

/// GPU 0, or `None` after printing why not (panics if a GPU is required): see
/// [`common::gpus_or_skip`].
fn gpu_or_skip(test: &str) -> Option<Device> {
    (common::gpus_or_skip(test) > 0).then(|| Device::cuda(0).expect("a device is present"))
}

#[test]
fn bias_gelu_kernels_match_the_reference_on_the_gpu() {
    let Some(dev) = gpu_or_skip("bias_gelu_kernels") else {
        return;
    };
    watchdog(120, "bias_gelu_gpu", move || {
        for seed in [11u64, 12] {
            let report = check::run(std::slice::from_ref(&dev), seed);
            let gelu_rows: Vec<_> = report
                .rows
                .iter()
                .filter(|r| r.op.starts_with("bias_gelu"))
                .collect();
            assert!(
                gelu_rows.len() >= 24,
                "bias_gelu rows on cuda: {}",
                gelu_rows.len()
            );
            assert!(report.failures().is_empty(), "{}", report.table());
        }
    });
}

#[test]
fn cuda_streams_events_and_checked_mode() {
    let Some(dev) = gpu_or_skip("cuda_streams") else {
        return;
    };
    watchdog(120, "cuda_streams", move || {
        let a = dev.new_named_stream("producer").unwrap();
        let b = dev.new_named_stream("consumer").unwrap();
        let mut x = Tensor::zeros(&dev, [64, 256], DType::F32).unwrap();
        let data: Vec<f32> = (0..64 * 256)
            .map(|i| (i % 13) as f32 * 0.25 - 1.5)
            .collect();
        x.copy_from_slice(&a, &data).unwrap();
        let bias = Tensor::zeros(&dev, [256], DType::F32).unwrap();
        let mut y = Tensor::poisoned(&dev, [64, 256], DType::F32).unwrap();
        if dev.is_checked() {
            let err = ops::bias_gelu_fwd(&b, &x, &bias, &mut y).unwrap_err();
            assert!(matches!(err, Error::UnsynchronizedAccess { .. }), "{err}");
        }
        let ev = a.record_event().unwrap();
        b.wait(&ev).unwrap();
        ops::bias_gelu_fwd(&b, &x, &bias, &mut y).unwrap();
        drop(x); // freed only after b is past the kernel
        let got = y.to_vec::<f32>(&b).unwrap();
        for (i, (&g, &d)) in got.iter().zip(&data).enumerate() {
            let w = ferrotron::reference::bias_gelu::gelu_ref(d as f64);
            assert!(
                (g as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "y[{i}] = {g}, want {w}"
            );
        }
    });
}

#[test]
fn bench_kernels_gpu_times_every_op_against_its_baseline() {
    let Some(_dev) = gpu_or_skip("bench_kernels_gpu") else {
        return;
    };
    watchdog(600, "bench_kernels_gpu", move || {
        let rows = ferrotron::bench::kernels_gpu::bench_gpu(true).unwrap();
        let table = ferrotron::bench::kernels_gpu::table_gpu(&rows);
        eprintln!("{table}");
        let gemms = rows.iter().filter(|r| r.check.is_some()).count();
        assert_eq!(gemms, 6, "{table}");
        assert!(rows.len() >= 6 + 2 * 8, "{table}");
        for r in &rows {
            assert!(
                r.time_s.is_finite() && r.time_s > 0.0,
                "{}: {table}",
                r.name
            );
            assert!(
                r.baseline_s.is_finite() && r.baseline_s > 0.0,
                "{}: {table}",
                r.name
            );
            assert!(
                r.ratio().is_finite() && r.ratio() > 0.0,
                "{}: {table}",
                r.name
            );
            assert!(r.baseline_rate().is_finite(), "{}: {table}", r.name);
            if let Some(c) = r.check {
                assert!(c.pass, "{}: cuBLASLt disagrees: {c:?}\n{table}", r.name);
                assert!(r.tflops().is_finite() && r.tflops() > 0.0, "{table}");
            }
        }
    });
}

#[test]
fn bench_kernels_gpu_without_a_gpu_is_an_error_not_a_panic() {
    let Some(why) = ferrotron::backend::cuda::unavailable_reason() else {
        eprintln!("SKIP bench_kernels_gpu_without_a_gpu: a GPU is present");
        return;
    };
    let err = ferrotron::bench::kernels_gpu::bench_gpu(true).unwrap_err();
    assert!(
        matches!(err, Error::NoCudaDriver { .. } | Error::NoCudaDevice { .. }),
        "{err} ({why})"
    );
}
