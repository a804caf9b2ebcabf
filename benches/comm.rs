//! Collectives on the in-process backend (4 ranks), as criterion benches: one all-reduce /
//! all-gather / reduce-scatter of 1 MiB and 16 MiB per iteration, timed on rank 0 between
//! barriers. The nccl-tests-style table with its memcpy baseline is `ferrotron bench comm`.
//!
//! `cargo bench --bench comm`

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ferrotron::bench::comm::{run_rank, BenchOp, CommBench};
use ferrotron::comm::launch;
use ferrotron::{BackendKind, DType};
use std::time::Duration;

fn collectives(c: &mut Criterion) {
    let mut g = c.benchmark_group("threads_4ranks_f32");
    g.sample_size(10);
    for op in [
        BenchOp::AllReduce,
        BenchOp::AllGather,
        BenchOp::ReduceScatter,
    ] {
        for bytes in [1usize << 20, 16 << 20] {
            g.throughput(Throughput::Bytes(bytes as u64));
            g.bench_function(format!("{op:?}/{}MiB", bytes >> 20), |b| {
                b.iter_custom(|iters| {
                    let cfg = CommBench {
                        op,
                        dtype: DType::F32,
                        min_bytes: bytes,
                        max_bytes: bytes,
                        factor: 2,
                        iters: iters as usize,
                        warmup: 1,
                    };
                    let rows = launch(4, BackendKind::Cpu, |ctx| {
                        run_rank(&ctx.device, &ctx.comm, &cfg)
                    })
                    .expect("bench");
                    assert_eq!(rows[0][0].wrong, 0);
                    Duration::from_secs_f64(rows[0][0].time_us * 1e-6 * iters as f64)
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, collectives);
criterion_main!(benches);
