//! `launch`: one closure per rank, each on its own thread with its own device handle and
//! communicator; failures propagate so that no rank waits for a dead one.

use super::threads::{Group, ThreadComm, World};
use super::CommConfig;
use crate::device::{BackendKind, Device};
use crate::error::{Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a rank's closure gets: its rank, the world size, its own device handle and the world
/// communicator.
pub struct RankCtx {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// This rank's device (a CPU device per rank on the CPU backend).
    pub device: Device,
    /// The communicator over all ranks.
    pub comm: ThreadComm,
}

/// Runs `f` once per rank (ranks are threads on the CPU backend) and returns every rank's result
/// in rank order. If any rank fails (returns an error or panics), the others' pending waits fail
/// fast with [`Error::PeerFailed`], and the result is [`Error::RankFailed`] naming the rank that
/// failed first.
pub fn launch<T, F>(world_size: usize, backend: BackendKind, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(RankCtx) -> Result<T> + Sync,
{
    launch_with(world_size, backend, CommConfig::default(), f)
}

/// [`launch`] with explicit communicator settings (e.g. a short timeout in tests).
pub fn launch_with<T, F>(
    world_size: usize,
    backend: BackendKind,
    config: CommConfig,
    f: F,
) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(RankCtx) -> Result<T> + Sync,
{
    if world_size == 0 {
        return Err(Error::invalid("launch", "world_size", "must be at least 1"));
    }
    if backend != BackendKind::Cpu {
        return Err(Error::Unsupported {
            op: "launch",
            backend: backend.to_string(),
        });
    }
    let world = World::new(world_size);
    let group = Group::new_world(world.clone(), config);
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..world_size)
            .map(|rank| {
                let (world, group, f) = (world.clone(), group.clone(), &f);
                std::thread::Builder::new()
                    .name(format!("ferrotron-rank{rank}"))
                    .spawn_scoped(scope, move || {
                        let ctx = RankCtx {
                            rank,
                            world_size,
                            device: Device::cpu(),
                            comm: ThreadComm::new(rank, group),
                        };
                        let out = run_rank(rank, || f(ctx));
                        if let Err(e) = &out {
                            // A rank that only saw someone else's failure is not the cause.
                            if !matches!(e, Error::PeerFailed { .. }) {
                                world.fail(rank, e.to_string());
                            }
                        }
                        out
                    })
                    .expect("spawn rank thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank threads catch their panics"))
            .collect()
    });
    if let Some((rank, _)) = world.first_failure() {
        let error = results
            .into_iter()
            .nth(rank)
            .and_then(|r| r.err())
            .unwrap_or(Error::AsyncFailure {
                stream: format!("rank {rank}"),
                op: "launch".into(),
                message: "failed".into(),
            });
        return Err(Error::RankFailed {
            rank,
            error: Box::new(error),
        });
    }
    let mut out = Vec::with_capacity(world_size);
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => out.push(v),
            Err(e) => {
                return Err(Error::RankFailed {
                    rank,
                    error: Box::new(e),
                })
            }
        }
    }
    Ok(out)
}

/// Runs rank `rank`'s closure, turning a panic into [`Error::AsyncFailure`] naming the rank (so
/// a launcher can fail the other ranks instead of losing the thread). Shared by every launcher.
pub(crate) fn run_rank<T>(rank: usize, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(Error::AsyncFailure {
            stream: format!("rank {rank}"),
            op: "launch closure".into(),
            message: crate::error::panic_message(&*p),
        }),
    }
}
