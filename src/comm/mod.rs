//! Communicators: the collective and point-to-point API every parallel layer talks to.
//!
//! One trait, [`Communicator`], implemented per backend (today: [`threads`], in-process ranks
//! over shared memory). Every call is enqueued on a stream the caller names and returns a
//! [`Work`] handle at once: wait on it from the host, or make another stream wait on its event,
//! so communication overlaps compute on other streams.
//!
//! Checked semantics (all backends): each call carries a [`Signature`]; ranks whose calls differ
//! at the same sequence number all get [`crate::Error::CollectiveMismatch`]; every wait has a
//! timeout naming the op, the sequence number and the ranks that never arrived; a rank that fails
//! makes the others fail fast with [`crate::Error::PeerFailed`].
//!
//! [`Counting`] wraps any communicator and counts the payload bytes it forwards.

pub mod counting;
mod host;
mod launch;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod peer;
mod reduce;
mod signature;
pub mod threads;

pub use counting::{CommCounts, Counting};
pub use launch::{launch, launch_with, RankCtx};
pub use peer::{PeerComm, PeerConfig};
pub use signature::{CollOp, ReduceOp, Signature};

use crate::error::{Error, Result};
use crate::ops::{Epilogue, Gemm, Transpose};
use crate::stream::{Event, Stream};
use crate::tensor::Tensor;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of a communicator.
#[derive(Clone, Debug)]
pub struct CommConfig {
    /// How long any wait for peers may take before it fails with [`Error::Timeout`].
    /// Default 300 s (`FERROTRON_COMM_TIMEOUT_S` overrides); tests use a few seconds.
    pub timeout: Duration,
    /// How long a cycle of blocked point-to-point waits must persist before it is reported as
    /// [`Error::Deadlock`] (rather than waiting for the timeout). Default 5 s.
    pub deadlock_grace: Duration,
}

impl Default for CommConfig {
    fn default() -> Self {
        let secs = std::env::var("FERROTRON_COMM_TIMEOUT_S")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .unwrap_or(300.0);
        CommConfig {
            timeout: Duration::from_secs_f64(secs),
            deadlock_grace: Duration::from_secs(5),
        }
    }
}

/// The handle of an enqueued communication call.
#[derive(Clone)]
pub struct Work {
    event: Event,
    stream: Stream,
    status: Arc<Mutex<Option<Error>>>,
    /// A check run once the call has completed (a GPU backend reads back what its kernels
    /// reported, e.g. the peer communicator's abort word).
    check: Option<Arc<dyn Fn() -> Result<()> + Send + Sync>>,
}

impl Work {
    pub(crate) fn new(event: Event, stream: Stream, status: Arc<Mutex<Option<Error>>>) -> Work {
        Work {
            event,
            stream,
            status,
            check: None,
        }
    }

    /// This work with `check` run by [`Work::wait`] after the call completed.
    pub(crate) fn with_check(mut self, check: Arc<dyn Fn() -> Result<()> + Send + Sync>) -> Work {
        self.check = Some(check);
        self
    }

    /// The call's own error, else the stream's (a call skipped because earlier work on its
    /// stream failed reports that failure).
    fn outcome(&self) -> Result<()> {
        if let Some(e) = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Err(e.clone());
        }
        if let Some(e) = self.stream.error() {
            return Err(e);
        }
        match &self.check {
            Some(check) => check(),
            None => Ok(()),
        }
    }

    /// The event recorded after the call: make a stream wait on it to order work after the call.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Blocks the host until the call has completed; returns its error if it failed.
    pub fn wait(&self) -> Result<()> {
        self.event.synchronize()?;
        self.outcome()
    }

    /// Like [`Work::wait`], failing with [`Error::Timeout`] after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<()> {
        self.event.synchronize_timeout(timeout)?;
        self.outcome()
    }
}

/// Collective and point-to-point communication among the ranks of a group.
///
/// Buffers are dense tensors; counts are element counts (a tensor's first dimension is its
/// outermost, so "along the first dimension" and "contiguous blocks" coincide). f32 and bf16
/// are supported; bf16 reduces with f32 accumulation. Reductions sum in rank order, so results
/// are bitwise reproducible for the same inputs and group size.
pub trait Communicator: Send + Sync {
    /// This rank's index in the group.
    fn rank(&self) -> usize;
    /// The number of ranks in the group.
    fn size(&self) -> usize;
    /// A name for messages (e.g. `threads:world`, `threads:world/split(1)`).
    fn name(&self) -> &str;

    /// The all-gather + GEMM of a column-parallel layer under sequence parallelism:
    /// `y = epilogue(X w^T)` on this rank, where `X` (`[size * m_local, k]`) is the
    /// concatenation in rank order of every rank's `x` (`[m_local, k]`), `w` is `[n, k]` and `y`
    /// is `[size * m_local, n]`; every rank calls it (with its own `w`, `y`).
    ///
    /// Default: [`all_gather_then_gemm`] (an [`Communicator::all_gather`] into a temporary, then
    /// [`crate::ops::gemm_epilogue`], both on `stream`). A backend that can overlap the two
    /// overrides it (the peer communicator runs `kernels/overlap/ag_gemm.cu`: the GEMM consumes
    /// each rank's rows as soon as they arrived) with bitwise the same result as its default.
    /// The returned work completes after the GEMM.
    ///
    /// Errors: those of the all-gather and the GEMM (shapes, dtypes, devices).
    fn all_gather_gemm(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
        epilogue: Epilogue<'_>,
    ) -> Result<Work> {
        all_gather_then_gemm(self, stream, x, w, y, epilogue)
    }

    /// The GEMM + reduce-scatter of a row-parallel layer under sequence parallelism: `y`
    /// (`[m_local, n]`) is block `rank` (of `size` blocks of rows) of the sum over the ranks of
    /// `x w^T`, where each rank's `x` is `[size * m_local, k]` and `w` is `[n, k]`; every rank
    /// calls it.
    ///
    /// Default: [`gemm_then_reduce_scatter`] (the GEMM into a temporary, then
    /// [`Communicator::reduce_scatter`], both on `stream`). A backend that can overlap the two
    /// overrides it (the peer communicator runs `kernels/overlap/gemm_rs.cu`: each finished tile
    /// goes straight to the rank owning its rows) with bitwise the same result as its default.
    /// The returned work completes after the reduction.
    ///
    /// Errors: those of the GEMM and the reduce-scatter (shapes, dtypes, devices).
    fn gemm_reduce_scatter(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
    ) -> Result<Work> {
        gemm_then_reduce_scatter(self, stream, x, w, y)
    }

    /// In place: every rank's `buf` becomes the reduction of all ranks' `buf`.
    fn all_reduce(&self, stream: &Stream, buf: &mut Tensor, op: ReduceOp) -> Result<Work>;
    /// `output` (size x input count) is the concatenation of every rank's `input`, in rank order.
    /// Default: [`Communicator::all_gather_v`] with equal counts.
    fn all_gather(&self, stream: &Stream, input: &Tensor, output: &mut Tensor) -> Result<Work> {
        let counts = vec![input.numel(); self.size()];
        self.all_gather_v(stream, input, output, &counts)
    }
    /// Like [`Communicator::all_gather`] with `counts[r]` elements from rank `r`.
    fn all_gather_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
    ) -> Result<Work>;
    /// `output` is block `rank` (of `size` equal blocks) of the reduction of every `input`.
    /// Default: [`Communicator::reduce_scatter_v`] with equal counts.
    fn reduce_scatter(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        op: ReduceOp,
    ) -> Result<Work> {
        let counts = vec![output.numel(); self.size()];
        self.reduce_scatter_v(stream, input, output, &counts, op)
    }
    /// Like [`Communicator::reduce_scatter`] with block `r` of `counts[r]` elements.
    fn reduce_scatter_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<Work>;
    /// In place: every rank's `buf` becomes rank `root`'s.
    fn broadcast(&self, stream: &Stream, buf: &mut Tensor, root: usize) -> Result<Work>;
    /// Sends `buf` to `peer`; matched in order with `peer`'s receives from this rank with `tag`.
    fn send(&self, stream: &Stream, buf: &Tensor, peer: usize, tag: u32) -> Result<Work>;
    /// Receives into `buf` from `peer` (size and dtype must match the send).
    fn recv(&self, stream: &Stream, buf: &mut Tensor, peer: usize, tag: u32) -> Result<Work>;
    /// Completes once every rank has reached it.
    fn barrier(&self, stream: &Stream) -> Result<Work>;
    /// Collective over the group, blocking the host: ranks with the same `color` form a new
    /// group, ordered by `(key, rank)`; `None` opts out (returns `None`).
    fn split(&self, color: Option<u32>, key: usize) -> Result<Option<Box<dyn Communicator>>>;
}

/// The unfused [`Communicator::all_gather_gemm`] (its default): all-gathers `x` (`[m_local, k]`)
/// along the rows into a new `[size * m_local, k]` tensor, then `y = epilogue(gathered w^T)`
/// with [`crate::ops::gemm_epilogue`], both on `stream`; the returned work completes after the
/// GEMM.
pub fn all_gather_then_gemm<C: Communicator + ?Sized>(
    comm: &C,
    stream: &Stream,
    x: &Tensor,
    w: &Tensor,
    y: &mut Tensor,
    epilogue: Epilogue<'_>,
) -> Result<Work> {
    const OP: &str = "all_gather_gemm";
    if x.dims().len() != 2 {
        return Err(Error::invalid(
            OP,
            "x",
            format!("must be 2-D [m_local, k], got {:?}", x.dims()),
        ));
    }
    let dims = [comm.size() * x.dims()[0], x.dims()[1]];
    let mut gathered = Tensor::poisoned(stream.device(), dims, x.dtype())?;
    let work = comm.all_gather(stream, x, &mut gathered)?;
    let args = Gemm {
        ta: Transpose::N,
        tb: Transpose::T,
        alpha: 1.0,
        beta: 0.0,
    };
    crate::ops::gemm_epilogue(stream, &gathered, w, y, &args, epilogue)?;
    Ok(Work::new(
        stream.record_event()?,
        stream.clone(),
        work.status,
    ))
}

/// The unfused [`Communicator::gemm_reduce_scatter`] (its default): `x w^T` (`x` `[size *
/// m_local, k]`, `w` `[n, k]`) into a new `[size * m_local, n]` tensor with [`crate::ops::gemm`],
/// then its reduce-scatter (sum) along the rows into `y` (`[m_local, n]`), both on `stream`.
pub fn gemm_then_reduce_scatter<C: Communicator + ?Sized>(
    comm: &C,
    stream: &Stream,
    x: &Tensor,
    w: &Tensor,
    y: &mut Tensor,
) -> Result<Work> {
    const OP: &str = "gemm_reduce_scatter";
    let (&[m, _], &[n, _]) = (x.dims(), w.dims()) else {
        return Err(Error::invalid(
            OP,
            "x, w",
            format!(
                "must be 2-D ([size * m_local, k] and [n, k]), got {:?} and {:?}",
                x.dims(),
                w.dims()
            ),
        ));
    };
    let mut partial = Tensor::poisoned(stream.device(), [m, n], x.dtype())?;
    let args = Gemm {
        ta: Transpose::N,
        tb: Transpose::T,
        alpha: 1.0,
        beta: 0.0,
    };
    crate::ops::gemm(stream, x, w, &mut partial, &args)?;
    comm.reduce_scatter(stream, &partial, y, ReduceOp::Sum)
}

/// Validates the per-rank counts of a `_v` collective.
pub(crate) fn check_counts(op: &'static str, counts: &[usize], size: usize) -> Result<()> {
    if counts.len() != size {
        return Err(Error::invalid(
            op,
            "counts",
            format!("{} counts for {} ranks", counts.len(), size),
        ));
    }
    Ok(())
}

/// Validates a rank argument.
pub(crate) fn check_rank(op: &'static str, rank: usize, size: usize) -> Result<()> {
    if rank >= size {
        return Err(Error::InvalidRank { op, rank, size });
    }
    Ok(())
}
