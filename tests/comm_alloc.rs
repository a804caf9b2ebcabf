//! The thread backend's hot path does not churn the heap: after warm-up, an all-reduce,
//! all-gather, reduce-scatter, send or receive costs each rank a small fixed number of
//! allocations, whatever the world size and the element count (counted by a global allocator
//! over every thread).
//!
//! Measured with checked mode off (the release default); checked mode's access records allocate
//! by design. The allocations left are the stream's task (a boxed closure on the CPU stream's queue) and the
//! completion record the caller waits on; everything the collective itself needs (signature,
//! rendezvous slot, the arrivals, the block split) is allocation-free once warm.

mod common;

use common::watchdog;
use ferrotron::comm::{launch, Communicator, ReduceOp};
use ferrotron::{BackendKind, DType, Tensor};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Barrier;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

// SAFETY: forwards every call to the system allocator unchanged; the counter is a relaxed atomic
// that never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The most allocations one rank may make per collective once warm: the collective's task, the
/// completion event, the event-record task, the call's status slot, and a fraction for the
/// stream queue's channel, which allocates a block every 31 messages.
const PER_CALL: f64 = 4.2;

/// Allocations per rank per call of `op` at `world` ranks and `n` elements.
fn allocs_per_call(world: usize, n: usize, op: &'static str) -> f64 {
    const CALLS: usize = 200;
    let barrier = Barrier::new(world);
    let counted = launch(world, BackendKind::Cpu, |ctx| {
        let s = ctx.device.new_stream()?;
        let mut buf =
            Tensor::from_f64(&ctx.device, &vec![1.0; n * world], [n * world], DType::F32)?;
        let mut part = Tensor::from_f64(&ctx.device, &vec![1.0; n], [n], DType::F32)?;
        let mut run = |k: usize| -> ferrotron::Result<()> {
            for _ in 0..k {
                // send_recv: even ranks send to the next odd rank, which receives.
                let w = match op {
                    "all_reduce" => ctx.comm.all_reduce(&s, &mut buf, ReduceOp::Sum)?,
                    "all_gather" => ctx.comm.all_gather(&s, &part, &mut buf)?,
                    "send_recv" if ctx.rank % 2 == 0 => {
                        ctx.comm.send(&s, &part, ctx.rank + 1, 7)?
                    }
                    "send_recv" => ctx.comm.recv(&s, &mut part, ctx.rank - 1, 7)?,
                    _ => ctx
                        .comm
                        .reduce_scatter(&s, &buf, &mut part, ReduceOp::Sum)?,
                };
                w.wait()?;
            }
            Ok(())
        };
        run(20)?; // warm-up: pools and maps reach their working size
        barrier.wait();
        if ctx.rank == 0 {
            ALLOCS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
        }
        barrier.wait();
        run(CALLS)?;
        barrier.wait();
        COUNTING.store(false, Ordering::SeqCst);
        Ok(())
    });
    counted.unwrap();
    ALLOCS.load(Ordering::SeqCst) as f64 / (CALLS * world) as f64
}

#[test]
fn collectives_allocate_a_fixed_handful_per_call() {
    // The production hot path: checked mode (on by default in debug builds) records every access
    // for the race detector, which allocates by design. This binary has this one test, so the
    // variable is set before any device exists and no other thread reads the environment.
    std::env::set_var("FERROTRON_CHECKED", "0");
    watchdog(120, "comm_alloc", || {
        let mut report = Vec::new();
        for op in ["all_reduce", "all_gather", "reduce_scatter", "send_recv"] {
            for (world, n) in [(2, 1000), (4, 1000), (4, 100_000), (8, 17)] {
                let per = allocs_per_call(world, n, op);
                report.push(format!(
                    "{op} world {world} n {n}: {per:.2} allocations/rank/call"
                ));
                assert!(
                    per <= PER_CALL,
                    "{op} at world {world}, n {n}: {per:.2} allocations per rank per call (at most {PER_CALL})\n{}",
                    report.join("\n")
                );
            }
        }
        println!("{}", report.join("\n"));
    });
}
