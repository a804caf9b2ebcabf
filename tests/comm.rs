//! The in-process communicator: every collective against the serial computation it replaces,
//! for world sizes 1..8, odd and uneven counts, f32 and bf16, outputs poisoned; sub-communicators;
//! bitwise determinism; and every failure mode as an error within seconds, never a hang.

mod common;

use common::watchdog;
use ferrotron::comm::{launch, launch_with, CommConfig, Communicator, RankCtx, ReduceOp};
use ferrotron::{BackendKind, DType, Error, Tensor};
use half::bf16;
use std::time::{Duration, Instant};

const SIZES: &[usize] = &[1, 2, 3, 4, 5, 8];

fn short() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(2),
        deadlock_grace: Duration::from_millis(200),
    }
}

/// Rank `r`'s input: deterministic, distinct per rank, not exactly representable sums.
fn data(rank: usize, n: usize, salt: u64) -> Vec<f64> {
    ferrotron::verify::random_vec(salt * 1000 + rank as u64, n, -2.0, 2.0)
}

fn to_dtype(v: &[f64], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => v.iter().map(|&x| x as f32 as f64).collect(),
        DType::BF16 => v.iter().map(|&x| bf16::from_f64(x).to_f64()).collect(),
        _ => unreachable!(),
    }
}

/// The serial result, computed exactly as specified: f32 accumulation in rank order, one
/// rounding to the dtype at the end (so the comparison is bitwise).
fn serial_reduce(inputs: &[Vec<f64>], op: ReduceOp, dtype: DType) -> Vec<f64> {
    let n = inputs[0].len();
    (0..n)
        .map(|i| {
            let mut acc = inputs[0][i] as f32;
            for inp in &inputs[1..] {
                let x = inp[i] as f32;
                acc = match op {
                    ReduceOp::Sum | ReduceOp::Avg => acc + x,
                    ReduceOp::Max => acc.max(x),
                    ReduceOp::Min => acc.min(x),
                };
            }
            if op == ReduceOp::Avg {
                acc /= inputs.len() as f32;
            }
            to_dtype(&[acc as f64], dtype)[0]
        })
        .collect()
}

fn tensor(ctx: &RankCtx, v: &[f64], dtype: DType) -> Tensor {
    Tensor::from_f64(&ctx.device, v, [v.len()], dtype).unwrap()
}

fn bitwise_eq(got: &[f64], want: &[f64]) -> bool {
    got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(a, b)| a.to_bits() == b.to_bits())
}

#[test]
fn all_reduce_equals_the_serial_reduction() {
    watchdog(120, "all_reduce", || {
        for &world in SIZES {
            for &n in &[1usize, 7, 1000, 4099] {
                for dtype in [DType::F32, DType::BF16] {
                    for op in [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min] {
                        let inputs: Vec<Vec<f64>> = (0..world)
                            .map(|r| to_dtype(&data(r, n, 1), dtype))
                            .collect();
                        let want = serial_reduce(&inputs, op, dtype);
                        let got = launch_with(world, BackendKind::Cpu, short(), |ctx| {
                            let s = ctx.device.new_stream()?;
                            let mut t = tensor(&ctx, &inputs[ctx.rank], dtype);
                            ctx.comm.all_reduce(&s, &mut t, op)?.wait()?;
                            t.to_f64_vec(&s)
                        })
                        .unwrap();
                        for (r, g) in got.iter().enumerate() {
                            assert!(
                                bitwise_eq(g, &want),
                                "world {world} n {n} {dtype} {op:?}: rank {r} differs"
                            );
                        }
                    }
                }
            }
        }
    });
}

#[test]
fn all_gather_and_reduce_scatter_equal_the_serial_computation() {
    watchdog(120, "ag_rs", || {
        for &world in SIZES {
            for &n in &[1usize, 13, 1024] {
                for dtype in [DType::F32, DType::BF16] {
                    let inputs: Vec<Vec<f64>> = (0..world)
                        .map(|r| to_dtype(&data(r, n * world, 2), dtype))
                        .collect();
                    let blocks: Vec<Vec<f64>> = inputs.iter().map(|v| v[..n].to_vec()).collect();
                    let gathered: Vec<f64> = blocks.concat();
                    let reduced = serial_reduce(&inputs, ReduceOp::Sum, dtype);
                    let got = launch_with(world, BackendKind::Cpu, short(), |ctx| {
                        let s = ctx.device.new_stream()?;
                        let x = tensor(&ctx, &blocks[ctx.rank], dtype);
                        let mut ag = Tensor::poisoned(&ctx.device, [world * n], dtype)?;
                        ctx.comm.all_gather(&s, &x, &mut ag)?;
                        let big = tensor(&ctx, &inputs[ctx.rank], dtype);
                        let mut rs = Tensor::poisoned(&ctx.device, [n], dtype)?;
                        ctx.comm
                            .reduce_scatter(&s, &big, &mut rs, ReduceOp::Sum)?
                            .wait()?;
                        Ok((ag.to_f64_vec(&s)?, rs.to_f64_vec(&s)?))
                    })
                    .unwrap();
                    for (r, (ag, rs)) in got.iter().enumerate() {
                        assert!(
                            bitwise_eq(ag, &gathered),
                            "all_gather world {world} n {n} rank {r}"
                        );
                        assert!(
                            bitwise_eq(rs, &reduced[r * n..(r + 1) * n]),
                            "reduce_scatter world {world} n {n} {dtype} rank {r}"
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn uneven_gather_and_scatter_with_explicit_counts() {
    watchdog(60, "v_variants", || {
        for &world in SIZES {
            let counts: Vec<usize> = (0..world).map(|r| (r * 7 + 3) % 11).collect();
            let total: usize = counts.iter().sum();
            let inputs: Vec<Vec<f64>> = (0..world)
                .map(|r| to_dtype(&data(r, total, 3), DType::F32))
                .collect();
            let mine: Vec<Vec<f64>> = (0..world).map(|r| data(r, counts[r], 4)).collect();
            let reduced = serial_reduce(&inputs, ReduceOp::Sum, DType::F32);
            let got = launch_with(world, BackendKind::Cpu, short(), |ctx| {
                let s = ctx.device.new_stream()?;
                let x = tensor(&ctx, &mine[ctx.rank], DType::F32);
                let mut ag = Tensor::poisoned(&ctx.device, [total], DType::F32)?;
                ctx.comm.all_gather_v(&s, &x, &mut ag, &counts)?;
                let big = tensor(&ctx, &inputs[ctx.rank], DType::F32);
                let mut rs = Tensor::poisoned(&ctx.device, [counts[ctx.rank]], DType::F32)?;
                ctx.comm
                    .reduce_scatter_v(&s, &big, &mut rs, &counts, ReduceOp::Sum)?
                    .wait()?;
                Ok((ag.to_f64_vec(&s)?, rs.to_f64_vec(&s)?))
            })
            .unwrap();
            let gathered: Vec<f64> = mine.iter().flat_map(|v| to_dtype(v, DType::F32)).collect();
            let mut off = 0;
            for (r, (ag, rs)) in got.iter().enumerate() {
                assert!(
                    bitwise_eq(ag, &gathered),
                    "all_gather_v world {world} rank {r}"
                );
                assert!(
                    bitwise_eq(rs, &reduced[off..off + counts[r]]),
                    "reduce_scatter_v rank {r}"
                );
                off += counts[r];
            }
        }
    });
}

#[test]
fn broadcast_send_recv_and_barrier() {
    watchdog(60, "bcast_p2p", || {
        for &world in SIZES {
            let root = world / 2;
            let got = launch_with(world, BackendKind::Cpu, short(), |ctx| {
                let s = ctx.device.new_stream()?;
                let mut b = if ctx.rank == root {
                    tensor(&ctx, &data(root, 33, 5), DType::BF16)
                } else {
                    Tensor::poisoned(&ctx.device, [33], DType::BF16)?
                };
                ctx.comm.broadcast(&s, &mut b, root)?;
                // A ring: send to the next rank, receive from the previous, twice with two tags.
                let mut ring = Vec::new();
                if world > 1 {
                    let next = (ctx.rank + 1) % world;
                    let prev = (ctx.rank + world - 1) % world;
                    let comm_s = ctx.device.new_named_stream("p2p")?;
                    for tag in [0u32, 9] {
                        let x = tensor(&ctx, &data(ctx.rank, 17, 6 + tag as u64), DType::F32);
                        let mut y = Tensor::poisoned(&ctx.device, [17], DType::F32)?;
                        // Send on one stream and receive on another so the ring cannot block.
                        ctx.comm.send(&comm_s, &x, next, tag)?;
                        ctx.comm.recv(&s, &mut y, prev, tag)?.wait()?;
                        ring.push(y.to_f64_vec(&s)?);
                    }
                    comm_s.synchronize()?;
                }
                ctx.comm.barrier(&s)?.wait()?;
                Ok((b.to_f64_vec(&s)?, ring))
            })
            .unwrap();
            let want = to_dtype(&data(root, 33, 5), DType::BF16);
            for (r, (b, ring)) in got.iter().enumerate() {
                assert!(bitwise_eq(b, &want), "broadcast world {world} rank {r}");
                if world > 1 {
                    let prev = (r + world - 1) % world;
                    for (i, tag) in [0u64, 9].iter().enumerate() {
                        let w = to_dtype(&data(prev, 17, 6 + tag), DType::F32);
                        assert!(
                            bitwise_eq(&ring[i], &w),
                            "ring world {world} rank {r} tag {tag}"
                        );
                    }
                }
            }
        }
    });
}

#[test]
fn split_makes_working_subgroups() {
    watchdog(60, "split", || {
        // 6 ranks: color = rank % 2 (two groups of 3), key reverses the order; rank 5 opts out.
        let got = launch_with(6, BackendKind::Cpu, short(), |ctx| {
            let color = if ctx.rank == 5 {
                None
            } else {
                Some((ctx.rank % 2) as u32)
            };
            let sub = ctx.comm.split(color, 100 - ctx.rank)?;
            let Some(sub) = sub else {
                return Ok(None);
            };
            let s = ctx.device.new_stream()?;
            let mut t = Tensor::from_slice(&ctx.device, &[ctx.rank as f32 + 1.0], [1])?;
            sub.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait()?;
            Ok(Some((sub.rank(), sub.size(), t.to_vec::<f32>(&s)?[0])))
        })
        .unwrap();
        // Even group {0, 2, 4}: sum 1+3+5 = 9, ranks by descending world rank. Odd {1, 3}: 2+4.
        assert_eq!(got[0], Some((2, 3, 9.0)));
        assert_eq!(got[4], Some((0, 3, 9.0)));
        assert_eq!(got[1], Some((1, 2, 6.0)));
        assert_eq!(got[3], Some((0, 2, 6.0)));
        assert_eq!(got[5], None);
    });
}

#[test]
fn all_reduce_is_bitwise_deterministic_under_varying_timing() {
    watchdog(120, "determinism", || {
        let world = 4;
        let n = 10_007;
        let mut first: Option<Vec<f64>> = None;
        for run in 0..20u64 {
            let got = launch_with(world, BackendKind::Cpu, short(), |ctx| {
                // Perturb the arrival order differently every run.
                let delay = (run * 7 + ctx.rank as u64 * 13) % 5;
                std::thread::sleep(Duration::from_millis(delay));
                let s = ctx.device.new_stream()?;
                let mut t = tensor(&ctx, &data(ctx.rank, n, 9), DType::F32);
                ctx.comm.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait()?;
                t.to_f64_vec(&s)
            })
            .unwrap();
            let g = got[0].clone();
            assert!(
                got.iter().all(|x| bitwise_eq(x, &g)),
                "ranks disagree in run {run}"
            );
            match &first {
                None => first = Some(g),
                Some(f) => assert!(bitwise_eq(f, &g), "run {run} differs from run 0"),
            }
        }
    });
}

fn expect_on_every_rank(err: Error, pred: impl Fn(&Error) -> bool) {
    match &err {
        Error::RankFailed { error, .. } => assert!(pred(error), "unexpected error: {err}"),
        other => panic!("expected RankFailed, got {other}"),
    }
}

#[test]
fn mismatched_collectives_fail_on_every_rank() {
    watchdog(30, "mismatch", || {
        let t0 = Instant::now();
        let mut seen = Vec::new();
        let r = launch_with(3, BackendKind::Cpu, short(), |ctx| {
            let s = ctx.device.new_stream()?;
            let mut t = Tensor::zeros(&ctx.device, [8], DType::F32)?;
            let res = if ctx.rank == 1 {
                ctx.comm.broadcast(&s, &mut t, 0)?.wait()
            } else {
                ctx.comm.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait()
            };
            Ok(res)
        })
        .unwrap();
        for res in &r {
            match res {
                Err(Error::CollectiveMismatch {
                    ranks_a,
                    ranks_b,
                    call_a,
                    call_b,
                    seq,
                    ..
                }) => {
                    assert_eq!(*seq, 0);
                    assert_eq!((&ranks_a[..], &ranks_b[..]), (&[0, 2][..], &[1][..]));
                    assert!(call_a.starts_with("all_reduce") && call_b.starts_with("broadcast"));
                    seen.push(());
                }
                other => panic!("every rank must see the mismatch, got {other:?}"),
            }
        }
        assert_eq!(seen.len(), 3);
        // Same op, different counts.
        let r = launch_with(2, BackendKind::Cpu, short(), |ctx| {
            let s = ctx.device.new_stream()?;
            let mut t = Tensor::zeros(&ctx.device, [8 + ctx.rank], DType::F32)?;
            Ok(ctx.comm.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait())
        })
        .unwrap();
        assert!(
            r.iter()
                .all(|x| matches!(x, Err(Error::CollectiveMismatch { .. }))),
            "{r:?}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    });
}

#[test]
fn a_rank_that_skips_a_collective_is_named_by_the_timeout() {
    watchdog(30, "skip", || {
        let t0 = Instant::now();
        let err = launch_with(3, BackendKind::Cpu, short(), |ctx| {
            let s = ctx.device.new_stream()?;
            let mut t = Tensor::zeros(&ctx.device, [8], DType::F32)?;
            if ctx.rank != 2 {
                ctx.comm.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait()?;
            }
            Ok(())
        })
        .unwrap_err();
        expect_on_every_rank(
            err,
            |e| matches!(e, Error::Timeout { what, .. } if what.contains("all_reduce #0") && what.contains("[2]")),
        );
        assert!(t0.elapsed() < Duration::from_secs(10));
    });
}

#[test]
fn a_panicking_rank_makes_the_others_fail_fast() {
    watchdog(30, "panic", || {
        let cfg = CommConfig {
            timeout: Duration::from_secs(60),
            ..short()
        };
        let t0 = Instant::now();
        let results = std::sync::Mutex::new(Vec::new());
        let err = launch_with(4, BackendKind::Cpu, cfg, |ctx| {
            if ctx.rank == 3 {
                panic!("rank 3 exploded");
            }
            let s = ctx.device.new_stream()?;
            let mut t = Tensor::zeros(&ctx.device, [8], DType::F32)?;
            let r = ctx.comm.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait();
            results
                .lock()
                .unwrap()
                .push((ctx.rank, t0.elapsed(), r.clone()));
            r
        })
        .unwrap_err();
        assert!(matches!(&err, Error::RankFailed { rank: 3, .. }), "{err}");
        let results = results.into_inner().unwrap();
        assert_eq!(results.len(), 3);
        for (rank, elapsed, r) in results {
            assert!(
                matches!(&r, Err(Error::PeerFailed { rank: 3, .. })),
                "rank {rank}: {r:?}"
            );
            assert!(
                elapsed < Duration::from_secs(1),
                "rank {rank} took {elapsed:?}"
            );
        }
    });
}

#[test]
fn send_recv_errors_are_errors_not_hangs() {
    watchdog(30, "p2p_errors", || {
        // Size mismatch between a send and its recv: both sides get the error.
        let r = launch_with(2, BackendKind::Cpu, short(), |ctx| {
            let s = ctx.device.new_stream()?;
            Ok(if ctx.rank == 0 {
                let x = Tensor::zeros(&ctx.device, [8], DType::F32)?;
                ctx.comm.send(&s, &x, 1, 0)?.wait()
            } else {
                let mut y = Tensor::zeros(&ctx.device, [9], DType::F32)?;
                ctx.comm.recv(&s, &mut y, 0, 0)?.wait()
            })
        })
        .unwrap();
        assert!(
            r.iter()
                .all(|x| matches!(x, Err(Error::CollectiveMismatch { .. }))),
            "{r:?}"
        );
        // A recv from a rank that never sends: the timeout names it.
        let err = launch_with(2, BackendKind::Cpu, short(), |ctx| {
            let s = ctx.device.new_stream()?;
            if ctx.rank == 1 {
                let mut y = Tensor::zeros(&ctx.device, [4], DType::F32)?;
                ctx.comm.recv(&s, &mut y, 0, 5)?.wait()?;
            }
            Ok(())
        })
        .unwrap_err();
        expect_on_every_rank(
            err,
            |e| matches!(e, Error::Timeout { what, .. } if what.contains("recv #0 from rank 0 (tag 5)")),
        );
        // Everyone sends first on a single stream: a cycle, reported as a deadlock.
        let t0 = Instant::now();
        let err = launch_with(3, BackendKind::Cpu, short(), |ctx| {
            let s = ctx.device.new_stream()?;
            let x = Tensor::zeros(&ctx.device, [4], DType::F32)?;
            let mut y = Tensor::zeros(&ctx.device, [4], DType::F32)?;
            ctx.comm.send(&s, &x, (ctx.rank + 1) % 3, 0)?;
            ctx.comm.recv(&s, &mut y, (ctx.rank + 2) % 3, 0)?.wait()?;
            Ok(())
        })
        .unwrap_err();
        expect_on_every_rank(
            err,
            |e| matches!(e, Error::Deadlock { cycle } if cycle.contains("waits for rank")),
        );
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "deadlock found in {:?}",
            t0.elapsed()
        );
        // Bad arguments are rejected before anything is enqueued.
        launch(2, BackendKind::Cpu, |ctx| {
            let s = ctx.device.new_stream()?;
            let x = Tensor::zeros(&ctx.device, [4], DType::F32)?;
            assert!(matches!(
                ctx.comm.send(&s, &x, 7, 0),
                Err(Error::InvalidRank { .. })
            ));
            assert!(matches!(
                ctx.comm.send(&s, &x, ctx.rank, 0),
                Err(Error::InvalidArgument { .. })
            ));
            let i = Tensor::zeros(&ctx.device, [4], DType::I32)?;
            let mut o = Tensor::zeros(&ctx.device, [4], DType::I32)?;
            assert!(matches!(
                ctx.comm.all_gather(&s, &i, &mut o),
                Err(Error::UnsupportedDType { .. })
            ));
            let mut small = Tensor::zeros(&ctx.device, [5], DType::F32)?;
            assert!(matches!(
                ctx.comm.all_gather(&s, &x, &mut small),
                Err(Error::ShapeMismatch { .. })
            ));
            Ok(())
        })
        .unwrap();
    });
}

#[test]
fn async_all_reduce_overlaps_compute_and_is_ordered_by_its_event() {
    watchdog(30, "overlap", || {
        launch_with(2, BackendKind::Cpu, short(), |ctx| {
            let compute = ctx.device.new_named_stream("compute")?;
            let comm_s = ctx.device.new_named_stream("comm")?;
            let mut g = Tensor::from_slice(&ctx.device, &[1.0f32; 64], [64])?;
            let work = ctx.comm.all_reduce(&comm_s, &mut g, ReduceOp::Sum)?;
            // Reading g on the compute stream without waiting is a checked-mode error...
            let bias = Tensor::zeros(&ctx.device, [64], DType::F32)?;
            let mut y = Tensor::poisoned(&ctx.device, [64], DType::F32)?;
            let early = ferrotron::ops::bias_gelu_fwd(&compute, &g, &bias, &mut y);
            assert!(
                matches!(early, Err(Error::UnsynchronizedAccess { .. })),
                "{early:?}"
            );
            // ...and fine after waiting on the collective's event.
            compute.wait(work.event())?;
            ferrotron::ops::bias_gelu_fwd(&compute, &g, &bias, &mut y)?;
            assert_eq!(g.to_vec::<f32>(&compute)?, vec![2.0f32; 64]);
            Ok(())
        })
        .unwrap();
    });
}

#[test]
fn the_comm_benchmark_checks_its_results() {
    use ferrotron::bench::comm::{run_rank, BenchOp, CommBench};
    watchdog(60, "bench", || {
        for op in [
            BenchOp::AllReduce,
            BenchOp::AllGather,
            BenchOp::ReduceScatter,
            BenchOp::Broadcast,
        ] {
            for dtype in [DType::F32, DType::BF16] {
                let cfg = CommBench {
                    op,
                    dtype,
                    min_bytes: 1000,
                    max_bytes: 70_000,
                    factor: 8,
                    iters: 2,
                    warmup: 1,
                };
                let rows = launch_with(3, BackendKind::Cpu, short(), |ctx| {
                    run_rank(&ctx.device, &ctx.comm, &cfg)
                })
                .unwrap();
                assert_eq!(rows[0].len(), 3, "{op:?}");
                for r in rows.iter().flatten() {
                    assert_eq!(r.wrong, 0, "{op:?} {dtype} {} bytes", r.bytes);
                    assert!(r.time_us > 0.0 && r.busbw.is_finite());
                }
            }
        }
    });
}

/// Collectives whose outputs exceed the last-level cache copy with streaming stores (all-gather,
/// broadcast) and reduce in one pass over buffers the cache cannot hold: still exact, every
/// element, on every rank.
#[test]
fn collectives_larger_than_the_cache_are_exact() {
    watchdog(120, "large collectives", || {
        let world = 4;
        // Twice the cache in all, written by the collective (bounded: a machine with a huge
        // cache tests the cached path only, and says so).
        let llc = hostmem::last_level_cache_bytes();
        let written = 2 * llc.min(256 << 20);
        if llc > 256 << 20 {
            println!("NOTE: last-level cache {llc} B: the streaming path is not exercised here");
        }
        let m = written / 4 / world / world; // f32 elements per rank's block
                                             // Exact small integers, distinct per rank and position.
        let value = |r: usize, i: usize| ((r * m + i) % (1 << 24)) as f64;
        let got = launch_with(world, BackendKind::Cpu, short(), |ctx| {
            let s = ctx.device.new_stream()?;
            let r = ctx.rank;
            let block: Vec<f64> = (0..m).map(|i| value(r, i)).collect();
            let x = Tensor::from_f64(&ctx.device, &block, [m], DType::F32)?;
            let mut ag = Tensor::poisoned(&ctx.device, [world * m], DType::F32)?;
            ctx.comm.all_gather(&s, &x, &mut ag)?;
            let mut bc = if r == 1 {
                Tensor::from_f64(
                    &ctx.device,
                    &ag_want(world, m, &value),
                    [world * m],
                    DType::F32,
                )?
            } else {
                Tensor::poisoned(&ctx.device, [world * m], DType::F32)?
            };
            ctx.comm.broadcast(&s, &mut bc, 1)?;
            let mut ar = Tensor::from_f64(
                &ctx.device,
                &ag_want(world, m, &value),
                [world * m],
                DType::F32,
            )?;
            ctx.comm.all_reduce(&s, &mut ar, ReduceOp::Sum)?.wait()?;
            Ok((ag.to_f64_vec(&s)?, bc.to_f64_vec(&s)?, ar.to_f64_vec(&s)?))
        })
        .unwrap();
        let want = ag_want(world, m, &value);
        for (r, (ag, bc, ar)) in got.iter().enumerate() {
            let wrong =
                |v: &[f64], k: f64| v.iter().zip(&want).filter(|(g, w)| **g != k * **w).count();
            assert_eq!(wrong(ag, 1.0), 0, "all_gather of {written} B: rank {r}");
            assert_eq!(wrong(bc, 1.0), 0, "broadcast: rank {r}");
            assert_eq!(wrong(ar, world as f64), 0, "all_reduce: rank {r}");
        }
    });
}

/// The all-gather of `value(rank, i)` blocks of `m` elements.
fn ag_want(world: usize, m: usize, value: &dyn Fn(usize, usize) -> f64) -> Vec<f64> {
    (0..world * m).map(|j| value(j / m, j % m)).collect()
}
