//! The bucketed gradient all-reduce of data parallelism (PyTorch DDP's reducer, explicit).
//!
//! As the backward produces each parameter's final gradient of the step (after the last
//! micro-batch: gradient accumulation reduces once per step, DDP's `no_sync` semantics), the
//! caller hands it to [`GradReducer::grad_ready`]: it is packed into its bucket on the compute
//! stream, and when that completes the bucket, the bucket's all-reduce (average) is enqueued on
//! the communication stream behind an event recorded on the compute stream — so it runs while the
//! backward of earlier layers goes on. Buckets are launched strictly in order (a bucket that
//! fills early waits for the ones before it), so every rank issues the same collectives in the
//! same order. [`GradReducer::finish`] makes the compute stream wait for each bucket's event and
//! unpacks the averages into the gradients; nothing blocks the host.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::buckets::{BucketCaps, BucketPlan};
use crate::comm::{Communicator, ReduceOp, Work};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::shard::{pack, unpack};
use crate::stream::Stream;
use crate::tensor::Tensor;

/// One bucket all-reduce's interval on the communication stream (seconds since the trace's
/// origin).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketSpan {
    /// The bucket.
    pub bucket: usize,
    /// When the all-reduce started on the stream.
    pub start: f64,
    /// When it ended.
    pub end: f64,
}

/// The reducer of one data-parallel group's gradients (see the [module docs](self)).
pub struct GradReducer {
    plan: BucketPlan,
    numels: Vec<usize>,
    flats: Vec<Tensor>,
    /// Per parameter: packed this step.
    packed: Vec<bool>,
    /// Per bucket: parameters still to pack this step.
    missing: Vec<usize>,
    /// Per bucket: its all-reduce, once launched.
    works: Vec<Option<Work>>,
    next_launch: usize,
    trace: Option<(Instant, Arc<Mutex<Vec<BucketSpan>>>)>,
}

impl GradReducer {
    /// A reducer for parameters of `numels` elements, in the order the backward produces their
    /// gradients, bucketed by `caps`; the f32 bucket buffers live on `device`.
    ///
    /// Errors: as [`BucketPlan::new`]; allocation errors.
    pub fn new(device: &Device, numels: &[usize], caps: BucketCaps) -> Result<Self> {
        let plan = BucketPlan::new(numels, caps)?;
        let flats = plan
            .buckets
            .iter()
            .map(|b| Tensor::zeros(device, [b.numel], DType::F32))
            .collect::<Result<Vec<_>>>()?;
        let missing = plan.buckets.iter().map(|b| b.params.len()).collect();
        let works = plan.buckets.iter().map(|_| None).collect();
        Ok(GradReducer {
            numels: numels.to_vec(),
            packed: vec![false; numels.len()],
            missing,
            works,
            next_launch: 0,
            flats,
            plan,
            trace: None,
        })
    }

    /// Records each bucket all-reduce's interval on the communication stream (CPU streams),
    /// in seconds since `origin`.
    pub fn with_trace(mut self, origin: Instant) -> Self {
        self.trace = Some((origin, Arc::new(Mutex::new(Vec::new()))));
        self
    }

    /// The bucket assignment.
    pub fn plan(&self) -> &BucketPlan {
        &self.plan
    }

    /// The recorded all-reduce intervals (empty without [`GradReducer::with_trace`]).
    pub fn spans(&self) -> Vec<BucketSpan> {
        self.trace.as_ref().map_or_else(Vec::new, |(_, s)| {
            s.lock().unwrap_or_else(|p| p.into_inner()).clone()
        })
    }

    /// Parameter `i`'s gradient (f32, `numels[i]` elements) is final for this step: packs it
    /// into its bucket on `compute` and launches, on `comm`, the average all-reduce over
    /// `group` of every bucket that is now complete and next in line.
    ///
    /// Errors: [`Error::InvalidArgument`] for an unknown or already reported parameter, or a
    /// gradient of the wrong size or dtype; whatever the collective reports.
    pub fn grad_ready(
        &mut self,
        compute: &Stream,
        comm: &Stream,
        group: &dyn Communicator,
        i: usize,
        grad: &Tensor,
    ) -> Result<()> {
        const OP: &str = "GradReducer::grad_ready";
        let Some(&(b, off)) = self.plan.location.get(i) else {
            return Err(Error::invalid(
                OP,
                "i",
                format!("parameter {i} of {}", self.numels.len()),
            ));
        };
        if self.packed[i] {
            return Err(Error::invalid(
                OP,
                format!("parameter {i}"),
                "reported ready twice in one step",
            ));
        }
        if grad.numel() != self.numels[i] || grad.dtype() != DType::F32 {
            return Err(Error::invalid(
                OP,
                format!("parameter {i}"),
                format!(
                    "gradient has {} {} elements, the reducer expects {} f32",
                    grad.numel(),
                    grad.dtype(),
                    self.numels[i]
                ),
            ));
        }
        pack(compute, grad, &mut self.flats[b], off)?;
        self.packed[i] = true;
        self.missing[b] -= 1;
        while self.next_launch < self.flats.len() && self.missing[self.next_launch] == 0 {
            self.launch(compute, comm, group, self.next_launch)?;
            self.next_launch += 1;
        }
        Ok(())
    }

    fn launch(
        &mut self,
        compute: &Stream,
        comm: &Stream,
        group: &dyn Communicator,
        b: usize,
    ) -> Result<()> {
        let ev = compute.record_event()?;
        comm.wait(&ev)?;
        let cell = self.mark(comm, b, None)?;
        let work = group.all_reduce(comm, &mut self.flats[b], ReduceOp::Avg)?;
        self.mark(comm, b, cell)?;
        self.works[b] = Some(work);
        Ok(())
    }

    /// Trace helper: the first call records the start, the second (given the first's cell) the
    /// end.
    fn mark(
        &self,
        stream: &Stream,
        bucket: usize,
        start: Option<Arc<Mutex<f64>>>,
    ) -> Result<Option<Arc<Mutex<f64>>>> {
        let Some((origin, spans)) = &self.trace else {
            return Ok(None);
        };
        let origin = *origin;
        match start {
            None => {
                let cell = Arc::new(Mutex::new(0.0));
                let c = cell.clone();
                stream.host_fn(move || {
                    *c.lock().unwrap_or_else(|p| p.into_inner()) = origin.elapsed().as_secs_f64();
                })?;
                Ok(Some(cell))
            }
            Some(cell) => {
                let spans = spans.clone();
                stream.host_fn(move || {
                    let start = *cell.lock().unwrap_or_else(|p| p.into_inner());
                    spans
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(BucketSpan {
                            bucket,
                            start,
                            end: origin.elapsed().as_secs_f64(),
                        });
                })?;
                Ok(None)
            }
        }
    }

    /// After the step's backward: makes `compute` wait for every bucket's all-reduce and unpacks
    /// the averaged gradients into `grads` (in the reducer's parameter order), ready on
    /// `compute`. Resets the reducer for the next step.
    ///
    /// Errors: [`Error::InvalidArgument`] when a parameter was never reported (naming it) or
    /// `grads` does not match the parameters.
    pub fn finish(&mut self, compute: &Stream, grads: &mut [&mut Tensor]) -> Result<()> {
        const OP: &str = "GradReducer::finish";
        if let Some(i) = self.packed.iter().position(|&p| !p) {
            return Err(Error::invalid(
                OP,
                format!("parameter {i}"),
                "its gradient was never reported ready this step",
            ));
        }
        if grads.len() != self.numels.len() {
            return Err(Error::invalid(
                OP,
                "grads",
                format!(
                    "{} gradients for {} parameters",
                    grads.len(),
                    self.numels.len()
                ),
            ));
        }
        // Bucket by bucket: the compute stream waits for one bucket's all-reduce, then unpacks
        // just its gradients, so work enqueued after a gradient's unpack waits only on the
        // buckets up to its own.
        for (b, w) in self.works.iter_mut().enumerate() {
            let w = w.take().ok_or_else(|| {
                Error::invalid(OP, format!("bucket {b}"), "its all-reduce never launched")
            })?;
            compute.wait(w.event())?;
            let bucket = &self.plan.buckets[b];
            for (j, i) in bucket.params.clone().enumerate() {
                unpack(compute, &self.flats[b], bucket.offsets[j], grads[i])?;
            }
        }
        self.packed.iter_mut().for_each(|p| *p = false);
        for (m, b) in self.missing.iter_mut().zip(&self.plan.buckets) {
            *m = b.params.len();
        }
        self.next_launch = 0;
        Ok(())
    }
}
