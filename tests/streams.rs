//! Streams and events on the CPU backend: ordering, asynchrony, checked-mode race detection and
//! buffer lifetime across asynchronous work.

mod common;

use common::watchdog;
use ferrotron::ops::{self, AdamW, Gemm};
use ferrotron::{DType, Device, DeviceConfig, Error, Tensor};
use std::sync::mpsc;

fn checked_cpu() -> Device {
    Device::cpu_with(DeviceConfig {
        checked: true,
        threads: 1,
    })
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| ((i % 17) as f32 - 8.0) * scale).collect()
}

#[test]
fn ops_on_one_stream_run_in_enqueue_order() {
    watchdog(30, "in_order", || {
        let dev = checked_cpu();
        let s = dev.new_stream().unwrap();
        // x is overwritten between two reads on the same stream: each read sees the value
        // written just before it in enqueue order.
        let mut x = Tensor::zeros(&dev, [4, 8], DType::F32).unwrap();
        let bias = Tensor::zeros(&dev, [8], DType::F32).unwrap();
        let mut y1 = Tensor::poisoned(&dev, [4, 8], DType::F32).unwrap();
        let mut y2 = Tensor::poisoned(&dev, [4, 8], DType::F32).unwrap();
        let a = ramp(32, 0.25);
        let b = ramp(32, -0.5);
        x.copy_from_slice(&s, &a).unwrap();
        ops::bias_gelu_fwd(&s, &x, &bias, &mut y1).unwrap();
        x.copy_from_slice(&s, &b).unwrap();
        ops::bias_gelu_fwd(&s, &x, &bias, &mut y2).unwrap();
        let g = |v: f32| ferrotron::reference::bias_gelu::gelu_ref(v as f64) as f32;
        let y1v = y1.to_vec::<f32>(&s).unwrap();
        let y2v = y2.to_vec::<f32>(&s).unwrap();
        for i in 0..32 {
            assert!(
                (y1v[i] - g(a[i])).abs() <= 1e-6 * (1.0 + g(a[i]).abs()),
                "y1[{i}]"
            );
            assert!(
                (y2v[i] - g(b[i])).abs() <= 1e-6 * (1.0 + g(b[i]).abs()),
                "y2[{i}]"
            );
        }
        // A chain of dependent in-place updates equals the same chain run serially.
        let mut p = Tensor::from_slice(&dev, &ramp(64, 0.1), [64]).unwrap();
        let g0 = Tensor::from_slice(&dev, &ramp(64, 0.01), [64]).unwrap();
        let mut m = Tensor::zeros(&dev, [64], DType::F32).unwrap();
        let mut v = Tensor::zeros(&dev, [64], DType::F32).unwrap();
        let cfg = AdamW::default();
        for step in 1..=5 {
            ops::adamw_step(&s, &cfg, step, &mut p, &g0, &mut m, &mut v).unwrap();
        }
        let got = p.to_vec::<f32>(&s).unwrap();
        let mut pr: Vec<f64> = ramp(64, 0.1).iter().map(|&x| x as f64).collect();
        let gr: Vec<f64> = ramp(64, 0.01).iter().map(|&x| x as f64).collect();
        let (mut mr, mut vr) = (vec![0.0; 64], vec![0.0; 64]);
        for step in 1..=5 {
            ferrotron::reference::adamw::adamw_step_ref(
                cfg.lr as f64,
                cfg.beta1 as f64,
                cfg.beta2 as f64,
                cfg.eps as f64,
                cfg.weight_decay as f64,
                step,
                &mut pr,
                &gr,
                &mut mr,
                &mut vr,
            );
        }
        for i in 0..64 {
            assert!(
                (got[i] as f64 - pr[i]).abs() <= 1e-5 * (1.0 + pr[i].abs()),
                "p[{i}]"
            );
        }
    });
}

#[test]
fn work_runs_asynchronously_from_the_host() {
    watchdog(30, "async", || {
        let dev = checked_cpu();
        let s = dev.new_stream().unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        // The stream blocks in a host function until the test releases it: enqueueing more work
        // must still return at once, and the stream must report itself busy.
        s.host_fn(move || {
            release_rx.recv().unwrap();
        })
        .unwrap();
        let x = Tensor::from_slice(&dev, &ramp(16, 1.0), [2, 8]).unwrap();
        let bias = Tensor::zeros(&dev, [8], DType::F32).unwrap();
        let mut y = Tensor::poisoned(&dev, [2, 8], DType::F32).unwrap();
        ops::bias_gelu_fwd(&s, &x, &bias, &mut y).unwrap();
        assert!(
            !s.is_idle().unwrap(),
            "the stream cannot be idle while blocked"
        );
        let done = s.record_event().unwrap();
        assert!(!done.query().unwrap());
        release_tx.send(()).unwrap();
        done.synchronize().unwrap();
        assert!(done.query().unwrap());
        assert!(y.to_vec::<f32>(&s).unwrap().iter().all(|v| v.is_finite()));
    });
}

/// Producer on stream A (blocked until released, so the consumer would surely run first if it
/// were not ordered), consumer on stream B after an event: B must see A's result.
#[test]
fn an_event_orders_two_streams() {
    watchdog(30, "event_orders", || {
        let dev = checked_cpu();
        let a = dev.new_named_stream("producer").unwrap();
        let b = dev.new_named_stream("consumer").unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        a.host_fn(move || {
            release_rx.recv().unwrap();
        })
        .unwrap();
        let mut x = Tensor::zeros(&dev, [3, 5], DType::F32).unwrap();
        let data = ramp(15, 0.3);
        x.copy_from_slice(&a, &data).unwrap();
        let ready = a.record_event().unwrap();
        b.wait(&ready).unwrap();
        let bias = Tensor::zeros(&dev, [5], DType::F32).unwrap();
        let mut y = Tensor::poisoned(&dev, [3, 5], DType::F32).unwrap();
        ops::bias_gelu_fwd(&b, &x, &bias, &mut y).unwrap();
        let done = b.record_event().unwrap();
        assert!(!done.query().unwrap(), "b must be waiting for a");
        release_tx.send(()).unwrap();
        let got = y.to_vec::<f32>(&b).unwrap();
        for (i, (&g, &d)) in got.iter().zip(&data).enumerate() {
            let want = ferrotron::reference::bias_gelu::gelu_ref(d as f64) as f32;
            assert!(
                (g - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "y[{i}] = {g}, want {want}"
            );
        }
    });
}

#[test]
fn a_missing_event_is_an_unsynchronized_access() {
    watchdog(30, "missing_event", || {
        let dev = checked_cpu();
        let a = dev.new_named_stream("producer").unwrap();
        let b = dev.new_named_stream("consumer").unwrap();
        let mut x = Tensor::zeros(&dev, [2, 4], DType::F32).unwrap();
        x.copy_from_slice(&a, &ramp(8, 1.0)).unwrap();
        let bias = Tensor::zeros(&dev, [4], DType::F32).unwrap();
        let mut y = Tensor::poisoned(&dev, [2, 4], DType::F32).unwrap();
        // Read on b without waiting for a's write: refused before anything runs.
        let err = ops::bias_gelu_fwd(&b, &x, &bias, &mut y).unwrap_err();
        match &err {
            Error::UnsynchronizedAccess {
                stream,
                other_stream,
                access,
                previous,
                ..
            } => {
                assert!(stream.starts_with("consumer"), "{err}");
                assert!(other_stream.starts_with("producer"), "{err}");
                assert_eq!((*access, *previous), ("read", "write"));
            }
            other => panic!("expected UnsynchronizedAccess, got {other:?}"),
        }
        // The host reading through b is refused the same way.
        assert!(matches!(
            x.to_vec::<f32>(&b),
            Err(Error::UnsynchronizedAccess { .. })
        ));
        // Write-after-read: b reads y's input on its own after ordering, then a overwrites x
        // while b's read is not known to be done.
        let ev = a.record_event().unwrap();
        b.wait(&ev).unwrap();
        ops::bias_gelu_fwd(&b, &x, &bias, &mut y).unwrap();
        let err = x.copy_from_slice(&a, &ramp(8, 2.0)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsynchronizedAccess {
                    access: "write",
                    previous: "read",
                    ..
                }
            ),
            "{err}"
        );
        // Ordering back from b to a (event) makes the write legal.
        let back = b.record_event().unwrap();
        a.wait(&back).unwrap();
        x.copy_from_slice(&a, &ramp(8, 2.0)).unwrap();
        // A host synchronize also orders: after a.synchronize(), b may read x.
        a.synchronize().unwrap();
        ops::bias_gelu_fwd(&b, &x, &bias, &mut y).unwrap();
        b.synchronize().unwrap();
    });
}

#[test]
fn unchecked_mode_does_not_track() {
    watchdog(30, "unchecked", || {
        let dev = Device::cpu_with(DeviceConfig {
            checked: false,
            threads: 1,
        });
        let a = dev.new_stream().unwrap();
        let b = dev.new_stream().unwrap();
        let mut x = Tensor::zeros(&dev, [2, 4], DType::F32).unwrap();
        x.copy_from_slice(&a, &ramp(8, 1.0)).unwrap();
        let bias = Tensor::zeros(&dev, [4], DType::F32).unwrap();
        let mut y = Tensor::poisoned(&dev, [2, 4], DType::F32).unwrap();
        // Racy but memory-safe: the buffers are locked while an op runs.
        ops::bias_gelu_fwd(&b, &x, &bias, &mut y).unwrap();
        a.synchronize().unwrap();
        b.synchronize().unwrap();
    });
}

#[test]
fn dropping_tensors_in_use_is_safe() {
    watchdog(60, "drop_in_use", || {
        let dev = checked_cpu();
        let s = dev.new_stream().unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        s.host_fn(move || {
            release_rx.recv().unwrap();
        })
        .unwrap();
        let n = 96;
        let a = Tensor::from_slice(&dev, &ramp(n * n, 0.01), [n, n]).unwrap();
        let b = Tensor::from_slice(&dev, &ramp(n * n, 0.02), [n, n]).unwrap();
        let mut c = Tensor::poisoned(&dev, [n, n], DType::F32).unwrap();
        ops::gemm(&s, &a, &b, &mut c, &Gemm::default()).unwrap();
        let bias = Tensor::zeros(&dev, [n], DType::F32).unwrap();
        let mut y = Tensor::poisoned(&dev, [n, n], DType::F32).unwrap();
        ops::bias_gelu_fwd(&s, &c, &bias, &mut y).unwrap();
        // Every input is dropped while the stream has not even started on them.
        drop(a);
        drop(b);
        drop(c);
        drop(bias);
        release_tx.send(()).unwrap();
        let got = y.to_vec::<f32>(&s).unwrap();
        assert!(got.iter().all(|v| v.is_finite()));
        // And dropping the stream itself with work queued loses nothing.
        let s2 = dev.new_stream().unwrap();
        let mut z = Tensor::poisoned(&dev, [n, n], DType::F32).unwrap();
        let x = Tensor::from_slice(&dev, &got, [n, n]).unwrap();
        let bias = Tensor::zeros(&dev, [n], DType::F32).unwrap();
        ops::bias_gelu_fwd(&s2, &x, &bias, &mut z).unwrap();
        let done = s2.record_event().unwrap();
        drop(s2);
        done.synchronize().unwrap();
        let s3 = dev.new_stream().unwrap();
        s3.wait(&done).unwrap();
        assert!(z.to_vec::<f32>(&s3).unwrap().iter().all(|v| v.is_finite()));
    });
}

#[test]
fn async_failures_are_reported_at_synchronize() {
    watchdog(30, "async_failure", || {
        let dev = checked_cpu();
        let s = dev.new_stream().unwrap();
        let logits = Tensor::from_slice(&dev, &ramp(12, 0.1), [3, 4]).unwrap();
        let targets = Tensor::from_slice(&dev, &[0i32, 7, 1], [3]).unwrap();
        let mut losses = Tensor::poisoned(&dev, [3], DType::F32).unwrap();
        ops::cross_entropy_fwd(&s, &logits, &targets, &mut losses).unwrap();
        let err = s.synchronize().unwrap_err();
        match err {
            Error::IndexOutOfRange {
                op,
                position,
                index,
                classes,
            } => assert_eq!(
                (op, position, index, classes),
                ("cross_entropy_fwd", 1, 7, 4)
            ),
            other => panic!("expected IndexOutOfRange, got {other:?}"),
        }
    });
}

#[test]
fn synchronize_timeout_names_the_stream() {
    watchdog(30, "sync_timeout", || {
        let dev = checked_cpu();
        let s = dev.new_named_stream("stuck").unwrap();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        s.host_fn(move || {
            release_rx.recv().unwrap();
        })
        .unwrap();
        let err = s
            .synchronize_timeout(std::time::Duration::from_millis(50))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Timeout { what, .. } if what.contains("stuck")),
            "{err}"
        );
        release_tx.send(()).unwrap();
        s.synchronize().unwrap();
    });
}

/// A failure travels along events: a stream that waits on an event recorded after a failed op
/// fails too (instead of running on the garbage the failed op left), and so does a host waiting
/// on the event; an event recorded before the failure stays clean.
#[test]
fn failures_propagate_through_events() {
    watchdog(30, "failure_through_events", || {
        let dev = checked_cpu();
        let producer = dev.new_named_stream("producer").unwrap();
        let consumer = dev.new_named_stream("consumer").unwrap();
        let logits = Tensor::from_slice(&dev, &ramp(12, 0.1), [3, 4]).unwrap();
        let targets = Tensor::from_slice(&dev, &[0i32, 7, 1], [3]).unwrap();
        let mut losses = Tensor::poisoned(&dev, [3], DType::F32).unwrap();
        let before = producer.record_event().unwrap();
        ops::cross_entropy_fwd(&producer, &logits, &targets, &mut losses).unwrap();
        let after = producer.record_event().unwrap();
        before.synchronize().unwrap();
        // The host sees the producer's own failure through the event...
        let e = after.synchronize().unwrap_err();
        assert!(matches!(e, Error::IndexOutOfRange { index: 7, .. }), "{e}");
        // ...and a stream ordered after it fails too (its own work is skipped), naming the
        // upstream stream and its error.
        consumer.wait(&after).unwrap();
        let mut copy = Tensor::poisoned(&dev, [3], DType::F32).unwrap();
        let zero = Tensor::zeros(&dev, [3], DType::F32).unwrap();
        ops::bias::add(&consumer, &losses, &zero, &mut copy).unwrap();
        match consumer.synchronize().unwrap_err() {
            Error::UpstreamFailed { stream, error } => {
                assert!(stream.starts_with("producer"), "{stream}");
                assert!(
                    matches!(*error, Error::IndexOutOfRange { index: 7, .. }),
                    "{error}"
                );
            }
            other => panic!("expected UpstreamFailed, got {other:?}"),
        }
        // A fresh stream that does not wait on it is unaffected.
        let other = dev.new_stream().unwrap();
        let x = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0], [3]).unwrap();
        assert_eq!(x.to_vec::<f32>(&other).unwrap(), vec![1.0, 2.0, 3.0]);
    });
}

/// The device counts live tensor bytes: allocation adds, the last drop (after the stream that
/// used the buffer let go) subtracts, and the peak remembers the most alive at once.
#[test]
fn device_memory_usage_counts_live_tensors() {
    let dev = ferrotron::Device::cpu();
    assert_eq!(dev.memory_usage().current, 0);
    let a = ferrotron::Tensor::zeros(&dev, [256], ferrotron::DType::F32).unwrap();
    let b = ferrotron::Tensor::zeros(&dev, [128], ferrotron::DType::BF16).unwrap();
    assert_eq!(dev.memory_usage().current, 1024 + 256);
    drop(a);
    let u = dev.memory_usage();
    assert_eq!((u.current, u.peak), (256, 1280));
    dev.reset_peak_memory();
    assert_eq!(dev.memory_usage().peak, 256);
    drop(b);
    assert_eq!(dev.memory_usage().current, 0);
}
