//! A communicator wrapper that counts the payload bytes of every call it forwards: what a
//! training run reports as "bytes communicated per group".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Communicator, ReduceOp, Work};
use crate::error::Result;
use crate::ops::Epilogue;
use crate::stream::Stream;
use crate::tensor::Tensor;

/// Payload bytes per kind of call, and the number of calls (shared by clones of the handle).
#[derive(Debug, Default)]
pub struct CommCounts {
    /// All-reduce buffers.
    pub all_reduce: AtomicU64,
    /// All-gather outputs (the gathered size, nccl-tests' convention).
    pub all_gather: AtomicU64,
    /// Reduce-scatter inputs.
    pub reduce_scatter: AtomicU64,
    /// Broadcast buffers.
    pub broadcast: AtomicU64,
    /// Sent buffers.
    pub send: AtomicU64,
    /// Received buffers.
    pub recv: AtomicU64,
    /// Calls of any kind (barriers included).
    pub calls: AtomicU64,
}

impl CommCounts {
    /// Total payload bytes of every kind.
    pub fn total(&self) -> u64 {
        [
            &self.all_reduce,
            &self.all_gather,
            &self.reduce_scatter,
            &self.broadcast,
            &self.send,
            &self.recv,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }

    fn add(&self, what: &AtomicU64, t: &Tensor) {
        self.add_elems(what, t, t.numel());
    }

    /// Counts `elems` elements of `t`'s dtype as one call.
    fn add_elems(&self, what: &AtomicU64, t: &Tensor, elems: usize) {
        what.fetch_add(
            (elems * t.dtype().size_in_bytes()) as u64,
            Ordering::Relaxed,
        );
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

/// Forwards every call to `inner` and counts it in [`Counting::counts`].
pub struct Counting<'a> {
    inner: Box<dyn Communicator + 'a>,
    counts: Arc<CommCounts>,
}

impl<'a> Counting<'a> {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn Communicator + 'a>) -> Self {
        Counting {
            inner,
            counts: Arc::new(CommCounts::default()),
        }
    }

    /// Wraps a borrowed communicator.
    pub fn borrowed(inner: &'a dyn Communicator) -> Self {
        Counting::new(Box::new(inner))
    }

    /// The counters (a shared handle: it keeps counting after the call).
    pub fn counts(&self) -> Arc<CommCounts> {
        self.counts.clone()
    }
}

impl<T: Communicator + ?Sized> Communicator for &T {
    fn rank(&self) -> usize {
        (**self).rank()
    }
    fn size(&self) -> usize {
        (**self).size()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn all_reduce(&self, stream: &Stream, buf: &mut Tensor, op: ReduceOp) -> Result<Work> {
        (**self).all_reduce(stream, buf, op)
    }
    fn all_gather_gemm(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
        epilogue: Epilogue<'_>,
    ) -> Result<Work> {
        (**self).all_gather_gemm(stream, x, w, y, epilogue)
    }
    fn gemm_reduce_scatter(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
    ) -> Result<Work> {
        (**self).gemm_reduce_scatter(stream, x, w, y)
    }
    fn all_gather_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
    ) -> Result<Work> {
        (**self).all_gather_v(stream, input, output, counts)
    }
    fn reduce_scatter_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<Work> {
        (**self).reduce_scatter_v(stream, input, output, counts, op)
    }
    fn broadcast(&self, stream: &Stream, buf: &mut Tensor, root: usize) -> Result<Work> {
        (**self).broadcast(stream, buf, root)
    }
    fn send(&self, stream: &Stream, buf: &Tensor, peer: usize, tag: u32) -> Result<Work> {
        (**self).send(stream, buf, peer, tag)
    }
    fn recv(&self, stream: &Stream, buf: &mut Tensor, peer: usize, tag: u32) -> Result<Work> {
        (**self).recv(stream, buf, peer, tag)
    }
    fn barrier(&self, stream: &Stream) -> Result<Work> {
        (**self).barrier(stream)
    }
    fn split(&self, color: Option<u32>, key: usize) -> Result<Option<Box<dyn Communicator>>> {
        (**self).split(color, key)
    }
}

impl Communicator for Counting<'_> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn all_reduce(&self, stream: &Stream, buf: &mut Tensor, op: ReduceOp) -> Result<Work> {
        self.counts.add(&self.counts.all_reduce, buf);
        self.inner.all_reduce(stream, buf, op)
    }
    /// Counted as the all-gather it contains (the gathered bytes), then forwarded (fused where
    /// the inner communicator fuses it).
    fn all_gather_gemm(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
        epilogue: Epilogue<'_>,
    ) -> Result<Work> {
        let gathered = x.numel() * self.inner.size();
        self.counts.add_elems(&self.counts.all_gather, x, gathered);
        self.inner.all_gather_gemm(stream, x, w, y, epilogue)
    }
    /// Counted as the reduce-scatter it contains (the partial product's bytes), then forwarded
    /// (fused where the inner communicator fuses it).
    fn gemm_reduce_scatter(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
    ) -> Result<Work> {
        let partial = y.numel() * self.inner.size();
        self.counts
            .add_elems(&self.counts.reduce_scatter, y, partial);
        self.inner.gemm_reduce_scatter(stream, x, w, y)
    }
    fn all_gather_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
    ) -> Result<Work> {
        self.counts.add(&self.counts.all_gather, output);
        self.inner.all_gather_v(stream, input, output, counts)
    }
    fn reduce_scatter_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<Work> {
        self.counts.add(&self.counts.reduce_scatter, input);
        self.inner
            .reduce_scatter_v(stream, input, output, counts, op)
    }
    fn broadcast(&self, stream: &Stream, buf: &mut Tensor, root: usize) -> Result<Work> {
        self.counts.add(&self.counts.broadcast, buf);
        self.inner.broadcast(stream, buf, root)
    }
    fn send(&self, stream: &Stream, buf: &Tensor, peer: usize, tag: u32) -> Result<Work> {
        self.counts.add(&self.counts.send, buf);
        self.inner.send(stream, buf, peer, tag)
    }
    fn recv(&self, stream: &Stream, buf: &mut Tensor, peer: usize, tag: u32) -> Result<Work> {
        self.counts.add(&self.counts.recv, buf);
        self.inner.recv(stream, buf, peer, tag)
    }
    fn barrier(&self, stream: &Stream) -> Result<Work> {
        self.counts.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.barrier(stream)
    }
    fn split(&self, color: Option<u32>, key: usize) -> Result<Option<Box<dyn Communicator>>> {
        self.inner.split(color, key)
    }
}
