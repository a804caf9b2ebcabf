//! GPU tests: the CUDA backend end to end (embedded fatbin -> module -> launch -> result) against
//! the f64 references, and streams/events/checked mode on CUDA.
//!
//! Without a GPU each test prints why it skipped; with `FERROTRON_REQUIRE_GPU=1` a missing GPU
//! fails instead (that is how `scripts/gpu-check.sh` runs them on a lent GPU).

mod common;

use common::watchdog;
use ferrotron::{check, ops, DType, Device, Error, Tensor};

/// The GPU to test on, or `None` after printing why not (panics if a GPU is required).
fn gpu_or_skip(test: &str) -> Option<Device> {
    let required = std::env::var("FERROTRON_REQUIRE_GPU").as_deref() == Ok("1");
    match ferrotron::backend::cuda::unavailable_reason() {
        None => Some(Device::cuda(0).expect("a device is present")),
        Some(why) if required => panic!("{test}: FERROTRON_REQUIRE_GPU=1 but no GPU: {why}"),
        Some(why) => {
            eprintln!("SKIP {test}: no GPU ({why})");
            None
        }
    }
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
