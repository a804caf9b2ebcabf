//! CPU operator throughput, each next to the baseline it is judged against, measured in the same
//! run: GEMM in GFLOP/s (compare with numpy/OpenBLAS: `python3 scripts/bench_numpy_gemm.py`),
//! elementwise ops in GB/s of ideal traffic (each input read once, each output written once)
//! next to a plain memcpy of the same bytes.
//!
//! `cargo bench --bench ops`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrotron::ops::{self, Gemm};
use ferrotron::{DType, Device, DeviceConfig, Tensor};
use std::hint::black_box;

fn device(threads: usize) -> Device {
    Device::cpu_with(DeviceConfig {
        checked: false,
        threads,
    })
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_f32");
    g.sample_size(10);
    for &(n, threads) in &[(1024usize, 1usize), (1024, 2), (2048, 2)] {
        let dev = device(threads);
        let s = dev.new_stream().unwrap();
        let v = ferrotron::verify::random_vec(1, n * n, -1.0, 1.0);
        let a = Tensor::from_f64(&dev, &v, [n, n], DType::F32).unwrap();
        let b = Tensor::from_f64(&dev, &v, [n, n], DType::F32).unwrap();
        let mut out = Tensor::zeros(&dev, [n, n], DType::F32).unwrap();
        g.throughput(Throughput::Elements(2 * (n * n * n) as u64)); // FLOPs
        g.bench_function(format!("{n}^3/{threads}thr"), |bch| {
            bch.iter(|| {
                ops::gemm(&s, &a, &b, &mut out, &Gemm::default()).unwrap();
                s.synchronize().unwrap();
            })
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let (rows, cols) = (4096usize, 4096usize);
    let n = rows * cols;
    let mut g = c.benchmark_group("elementwise_f32_4096x4096");
    g.sample_size(10);
    // Ideal traffic of y = gelu(x + b): read x, write y (the bias is negligible).
    g.throughput(Throughput::Bytes((2 * n * 4) as u64));
    let src = vec![1.0f32; n];
    let mut dst = vec![0.0f32; n];
    g.bench_function("memcpy_baseline", |bch| {
        bch.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    let dev = device(1);
    let s = dev.new_stream().unwrap();
    let x = Tensor::from_slice(&dev, &src, [rows, cols]).unwrap();
    let bias = Tensor::zeros(&dev, [cols], DType::F32).unwrap();
    let mut y = Tensor::zeros(&dev, [rows, cols], DType::F32).unwrap();
    g.bench_function("bias_gelu_fwd", |bch| {
        bch.iter(|| {
            ops::bias_gelu_fwd(&s, &x, &bias, &mut y).unwrap();
            s.synchronize().unwrap();
        })
    });
    let gamma = Tensor::from_slice(&dev, &vec![1.0f32; cols], [cols]).unwrap();
    let mut mean = Tensor::zeros(&dev, [rows], DType::F32).unwrap();
    let mut rstd = Tensor::zeros(&dev, [rows], DType::F32).unwrap();
    g.bench_function("layernorm_fwd", |bch| {
        bch.iter(|| {
            ops::layernorm_fwd(&s, &x, &gamma, &bias, 1e-5, &mut y, &mut mean, &mut rstd).unwrap();
            s.synchronize().unwrap();
        })
    });
    let mut sm = Tensor::zeros(&dev, [1, rows, cols], DType::F32).unwrap();
    let x3 = Tensor::from_slice(&dev, &src, [1, rows, cols]).unwrap();
    g.bench_function("softmax_fwd", |bch| {
        bch.iter(|| {
            ops::softmax_fwd(&s, &x3, &mut sm, 1.0, false).unwrap();
            s.synchronize().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, gemm, elementwise);
criterion_main!(benches);
