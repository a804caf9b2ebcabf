//! The peer communicator (`kernels/comm/peer.cu` on emulated GPUs): every collective on 2, 3 and
//! 4 emulated devices (and two virtual ranks on one device) against the threads backend on the
//! same inputs, bitwise (both sum in rank order with f32 accumulation); a mismatched call is an
//! error, not a hang.
//!
//! Without kernels (built without nvcc) each test prints why it skipped; with
//! `FERROTRON_REQUIRE_KERNELS=1` (CI) a missing image fails instead.

mod common;

use common::{kernels_or_skip, watchdog};
use ferrotron::comm::peer::{self, PeerConfig};
use ferrotron::comm::{launch_with, CommConfig, Communicator, ReduceOp};
use ferrotron::{BackendKind, DType, Device, Error, Tensor};
use std::time::{Duration, Instant};

fn short() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(20),
        deadlock_grace: Duration::from_millis(200),
    }
}

/// Small buffers, so that the tests reach two-shot all-reduce and chunking with few elements.
fn small() -> PeerConfig {
    PeerConfig {
        comm: short(),
        staging_bytes: 4096,
        one_shot_max_bytes: 256,
        ..PeerConfig::default()
    }
}

/// Rank `r`'s input: deterministic, distinct per rank and call.
fn data(rank: usize, n: usize, salt: u64) -> Vec<f64> {
    ferrotron::verify::random_vec(salt * 1000 + rank as u64, n, -2.0, 2.0)
}

/// Every result of one rank, as the bits of the f64 values read back.
type Bits = Vec<Vec<u64>>;

fn bits(t: &Tensor, stream: &ferrotron::Stream) -> Vec<u64> {
    t.to_f64_vec(stream)
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// The scenario every backend runs: all-reduce (one-shot, two-shot, chunked; every op), uneven
/// all-gather and reduce-scatter, broadcast and barrier, f32 and bf16.
fn scenario(rank: usize, world: usize, device: &Device, comm: &dyn Communicator) -> Bits {
    let stream = device.new_stream().unwrap();
    let mut out = Vec::new();
    let mut salt = 0;
    for dtype in [DType::F32, DType::BF16] {
        // 1, 37: one-shot; 301: two-shot; 2500: chunked (4096-byte staging), two-shot chunks.
        for &n in &[1usize, 37, 301, 2500] {
            let ops: &[ReduceOp] = if n == 37 {
                &[ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min]
            } else {
                &[ReduceOp::Sum]
            };
            for &op in ops {
                salt += 1;
                let mut t = Tensor::from_f64(device, &data(rank, n, salt), [n], dtype).unwrap();
                comm.all_reduce(&stream, &mut t, op)
                    .unwrap()
                    .wait()
                    .unwrap();
                out.push(bits(&t, &stream));
            }
        }
        // Uneven blocks: rank r has 2r + 3 elements.
        let counts: Vec<usize> = (0..world).map(|r| 2 * r + 3).collect();
        salt += 1;
        let input = Tensor::from_f64(
            device,
            &data(rank, counts[rank], salt),
            [counts[rank]],
            dtype,
        )
        .unwrap();
        let total: usize = counts.iter().sum();
        let mut gathered = Tensor::poisoned(device, [total], dtype).unwrap();
        comm.all_gather_v(&stream, &input, &mut gathered, &counts)
            .unwrap()
            .wait()
            .unwrap();
        out.push(bits(&gathered, &stream));
        // Even all-gather.
        let mut even = Tensor::poisoned(device, [world * counts[0]], dtype).unwrap();
        let first =
            Tensor::from_f64(device, &data(rank, counts[0], salt + 7), [counts[0]], dtype).unwrap();
        comm.all_gather(&stream, &first, &mut even)
            .unwrap()
            .wait()
            .unwrap();
        out.push(bits(&even, &stream));
        for op in [ReduceOp::Sum, ReduceOp::Max] {
            salt += 1;
            let input = Tensor::from_f64(device, &data(rank, total, salt), [total], dtype).unwrap();
            let mut block = Tensor::poisoned(device, [counts[rank]], dtype).unwrap();
            comm.reduce_scatter_v(&stream, &input, &mut block, &counts, op)
                .unwrap()
                .wait()
                .unwrap();
            out.push(bits(&block, &stream));
        }
        salt += 1;
        let root = world - 1;
        let mut b = Tensor::from_f64(device, &data(rank, 41, salt), [41], dtype).unwrap();
        comm.broadcast(&stream, &mut b, root)
            .unwrap()
            .wait()
            .unwrap();
        out.push(bits(&b, &stream));
        comm.barrier(&stream).unwrap().wait().unwrap();
    }
    out
}

fn threads_results(world: usize) -> Vec<Bits> {
    launch_with(world, BackendKind::Cpu, short(), |ctx| {
        Ok(scenario(ctx.rank, world, &ctx.device, &ctx.comm))
    })
    .unwrap()
}

fn peer_results(devices: &[Device], config: PeerConfig) -> Vec<Bits> {
    let world = devices.len();
    let instructions = |d: &Device| d.emu_metrics().map(|m| m.thread_instructions);
    let before: Vec<Option<u64>> = devices.iter().map(instructions).collect();
    let out = peer::launch(devices, config, |ctx| {
        Ok(scenario(ctx.rank, world, &ctx.device, &ctx.comm))
    })
    .unwrap();
    for (d, b) in devices.iter().zip(before) {
        // Emulated devices count what ran: proof the kernels (not a host path) did the work.
        if let (Some(b), Some(a)) = (b, instructions(d)) {
            assert!(a > b, "no peer kernel ran on {}", d.label());
            eprintln!("{}: {} thread instructions", d.label(), a - b);
        }
    }
    out
}

fn compare(world: usize, got: &[Bits], want: &[Bits]) {
    assert_eq!(got.len(), world);
    for (rank, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len());
        for (call, (a, b)) in g.iter().zip(w).enumerate() {
            assert_eq!(
                a, b,
                "world {world}, rank {rank}, call {call}: peer != threads"
            );
        }
    }
}

fn devices(world: usize) -> Vec<Device> {
    (0..world).map(|r| Device::emu(r).unwrap()).collect()
}

#[test]
fn peer_collectives_on_2_3_4_emulated_gpus_equal_the_threads_backend_bitwise() {
    if !kernels_or_skip("peer_collectives") {
        return;
    }
    watchdog(900, "peer_collectives", || {
        // CTAs per launch vary too (1, 2, 4): the flag barriers span every CTA of every rank.
        for (world, ctas) in [(2usize, 1u32), (3, 2), (4, 4), (4, 1)] {
            let t0 = Instant::now();
            let config = PeerConfig { ctas, ..small() };
            let got = peer_results(&devices(world), config);
            let want = threads_results(world);
            compare(world, &got, &want);
            eprintln!(
                "world {world}, {ctas} CTAs: {:.1} s",
                t0.elapsed().as_secs_f64()
            );
        }
    });
}

#[test]
fn two_virtual_ranks_on_one_emulated_gpu() {
    if !kernels_or_skip("peer_virtual_ranks") {
        return;
    }
    watchdog(600, "peer_virtual_ranks", || {
        let dev = Device::emu(5).unwrap();
        let got = peer_results(&[dev.clone(), dev], small());
        compare(2, &got, &threads_results(2));
    });
}

/// The same scenario on real GPUs (`scripts/gpu-check.sh`): 2 and 3 virtual ranks on GPU 0,
/// and one rank per GPU on 2 to 4 GPUs when the machine has them.
#[test]
fn peer_collectives_on_gpus_equal_the_threads_backend_bitwise() {
    let gpus = common::gpus_or_skip("peer_collectives_gpu");
    if gpus == 0 || !kernels_or_skip("peer_collectives_gpu") {
        return;
    }
    watchdog(600, "peer_collectives_gpu", move || {
        for world in [2usize, 3] {
            let got = peer_results(&common::cuda_ranks(world, 1), small());
            compare(world, &got, &threads_results(world));
        }
        for world in 2..=gpus.min(4) {
            let config = PeerConfig { ctas: 4, ..small() };
            let got = peer_results(&common::cuda_ranks(world, gpus), config);
            compare(world, &got, &threads_results(world));
        }
    });
}

#[test]
fn a_mismatched_call_is_an_error_on_every_rank_not_a_hang() {
    if !kernels_or_skip("peer_mismatch") {
        return;
    }
    watchdog(300, "peer_mismatch", || {
        let devs = devices(2);
        let r = peer::launch(&devs, small(), |ctx| {
            let stream = ctx.device.new_stream()?;
            let n = 10 + ctx.rank;
            let mut t = Tensor::from_f64(&ctx.device, &vec![1.0; n], [n], DType::F32)?;
            ctx.comm.all_reduce(&stream, &mut t, ReduceOp::Sum)?.wait()
        });
        match r {
            Err(Error::RankFailed { error, .. }) => assert!(
                matches!(*error, Error::CollectiveMismatch { .. }),
                "{error}"
            ),
            Err(e) => panic!("expected a mismatch, got {e}"),
            Ok(_) => panic!("a mismatched all-reduce succeeded"),
        }
    });
}

#[test]
fn a_missing_rank_times_out() {
    if !kernels_or_skip("peer_missing_rank") {
        return;
    }
    watchdog(300, "peer_missing_rank", || {
        let devs = devices(3);
        let mut cfg = small();
        cfg.comm.timeout = Duration::from_millis(500);
        let t0 = Instant::now();
        let r = peer::launch(&devs, cfg, |ctx| {
            if ctx.rank == 2 {
                return Ok(());
            }
            let stream = ctx.device.new_stream()?;
            let mut t = Tensor::from_f64(&ctx.device, &[1.0; 5], [5], DType::F32)?;
            ctx.comm.all_reduce(&stream, &mut t, ReduceOp::Sum)?.wait()
        });
        let e = r.expect_err("rank 2 never called");
        let text = e.to_string();
        assert!(
            text.contains("never arrived") || text.contains("timed out") || text.contains("[2]"),
            "{text}"
        );
        assert!(t0.elapsed() < Duration::from_secs(60));
    });
}

#[test]
fn unsupported_calls_name_themselves() {
    if !kernels_or_skip("peer_unsupported") {
        return;
    }
    let devs = devices(2);
    let comms = ferrotron::comm::PeerComm::group(&devs, small()).unwrap();
    match comms[0].split(Some(0), 0) {
        Err(Error::Unsupported { op, .. }) => assert_eq!(op, "split"),
        _ => panic!("split should be unsupported"),
    }
    let cpu = Device::cpu();
    assert!(matches!(
        ferrotron::comm::PeerComm::group(&[cpu.clone(), cpu], small()),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn a_kernel_fault_on_one_rank_fails_the_others_fast() {
    if !kernels_or_skip("peer_fault") {
        return;
    }
    watchdog(300, "peer_fault", || {
        let devs = devices(3);
        let t0 = Instant::now();
        // Rank 1's buffer is poisoned: its kernel faults (initcheck) while staging it, after the
        // rendezvous, so the other ranks' kernels are already waiting on its flags.
        let errors = peer::launch(&devs, small(), |ctx| {
            let stream = ctx.device.new_stream()?;
            let mut t = if ctx.rank == 1 {
                Tensor::poisoned(&ctx.device, [64], DType::F32)?
            } else {
                Tensor::from_f64(&ctx.device, &[1.0; 64], [64], DType::F32)?
            };
            Ok(ctx
                .comm
                .all_reduce(&stream, &mut t, ReduceOp::Sum)?
                .wait()
                .err())
        })
        .unwrap();
        assert!(
            matches!(errors[1], Some(Error::Emu { .. })),
            "{:?}",
            errors[1]
        );
        for r in [0, 2] {
            assert!(
                matches!(errors[r], Some(Error::PeerFailed { rank: 1, .. })),
                "rank {r}: {:?}",
                errors[r]
            );
        }
        assert!(t0.elapsed() < Duration::from_secs(60));
    });
}

/// `ferrotron bench comm --backend peer-emu` (and `peer-gpu`): the nccl-tests loop over the peer
/// kernels on 3 emulated GPUs checks every result element, and the device-copy baseline runs.
#[test]
fn the_comm_benchmark_runs_on_the_peer_kernels() {
    use ferrotron::bench::comm::{device_copy_gbps, run_rank, BenchOp, CommBench};
    if !kernels_or_skip("peer_bench") {
        return;
    }
    watchdog(300, "peer_bench", || {
        for op in [
            BenchOp::AllReduce,
            BenchOp::AllGather,
            BenchOp::ReduceScatter,
            BenchOp::Broadcast,
        ] {
            let cfg = CommBench {
                op,
                dtype: DType::BF16,
                min_bytes: 600,
                max_bytes: 6000,
                factor: 10,
                iters: 1,
                warmup: 0,
            };
            let config = PeerConfig {
                staging_bytes: 8192,
                ..small()
            };
            let rows = peer::launch(&devices(3), config, |ctx| {
                run_rank(&ctx.device, &ctx.comm, &cfg)
            })
            .unwrap();
            assert_eq!(rows[0].len(), 2, "{op:?}");
            for r in rows.iter().flatten() {
                assert_eq!(r.wrong, 0, "{op:?} {} bytes", r.bytes);
                assert!(r.time_us > 0.0 && r.busbw.is_finite());
            }
        }
        let gbps = device_copy_gbps(&Device::emu(0).unwrap(), 4096, 2).unwrap();
        assert!(gbps.is_finite() && gbps > 0.0, "{gbps}");
    });
}
