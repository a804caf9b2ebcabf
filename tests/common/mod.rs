//! Shared test helpers.
#![allow(dead_code)]

pub mod dense;

use std::sync::mpsc;
use std::time::Duration;

/// Runs `body` on its own thread and fails the test with a message if it does not finish within
/// `secs` seconds, so a hang in a stream, an event or a collective can never stall CI.
pub fn watchdog<T: Send + 'static>(
    secs: u64,
    name: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .name(format!("watchdog:{name}"))
        .spawn(move || {
            let out = body();
            let _ = tx.send(());
            out
        })
        .expect("spawn test thread");
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(()) => handle.join().expect("test body panicked"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("watchdog: test `{name}` did not finish within {secs} s (a hang?)")
        }
    }
}

/// Whether the kernels were built (nvcc at build time): false with a printed SKIP line, and a
/// panic instead when `FERROTRON_REQUIRE_KERNELS=1` (CI), so a kernel test never passes vacuously.
pub fn kernels_or_skip(test: &str) -> bool {
    if ferrotron::kernels::kernels_built() {
        return true;
    }
    if std::env::var("FERROTRON_REQUIRE_KERNELS").as_deref() == Ok("1") {
        panic!("{test}: FERROTRON_REQUIRE_KERNELS=1 but the kernels were not built");
    }
    eprintln!("SKIP {test}: the kernels were not built (no nvcc at build time)");
    false
}

/// How many CUDA GPUs this machine has: 0 after a printed SKIP line when there is none (no
/// driver or no device), and a panic instead when `FERROTRON_REQUIRE_GPU=1` (the lent-GPU run of
/// `scripts/gpu-check.sh`), so a GPU test never passes vacuously there.
pub fn gpus_or_skip(test: &str) -> usize {
    match ferrotron::backend::cuda::device_count() {
        Ok(n) if n > 0 => n,
        other => {
            let why = match other {
                Ok(_) => "the CUDA driver reports no device".to_string(),
                Err(e) => e.to_string(),
            };
            if std::env::var("FERROTRON_REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: FERROTRON_REQUIRE_GPU=1 but no GPU: {why}");
            }
            eprintln!("SKIP {test}: no GPU ({why})");
            0
        }
    }
}

/// `world` CUDA devices for a peer group on a machine with `gpus` GPUs: one rank per GPU when
/// there are enough, else every rank on GPU 0 (virtual ranks).
pub fn cuda_ranks(world: usize, gpus: usize) -> Vec<ferrotron::Device> {
    if gpus >= world {
        (0..world)
            .map(|r| ferrotron::Device::cuda(r).expect("a present GPU"))
            .collect()
    } else {
        vec![ferrotron::Device::cuda(0).expect("a present GPU"); world]
    }
}
