//! The executor: runs one rank's part of a [`Schedule`] for one training step.
//!
//! The rank walks its action list once, front to back, enqueueing without waiting:
//! - compute actions on `streams.compute`, in list order;
//! - each transfer on the p2p stream of its direction (`send_act`, `recv_act`, `send_grad`,
//!   `recv_grad`), in list order, as a [`Communicator::send`] / [`Communicator::recv`];
//! - order between them by events only: a send's stream waits for an event recorded right after
//!   the compute action that produced the tensor; a compute action waits for the event recorded
//!   right after the receive of its input (or output gradient). Nothing synchronizes a device;
//!   the one host wait is at the end of the step, where the API says so.
//!
//! A sent tensor is owned by the executor until the end of the step (ownership covers the
//! asynchronous send, so a buffer is never reused before its send completes); every received
//! tensor is a fresh buffer. Before anything runs, the schedule is checked and simulated with unit
//! costs (unless [`ExecOptions::validate`] is off): a schedule that would deadlock is an
//! [`Error::Deadlock`] on every rank before a single message is posted. A deadlock that gets past
//! that (validation off) is still an error, from the communicator's deadlock detection or timeout,
//! never a hang.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::action::{Action, Placement};
use super::schedule::Schedule;
use super::simulate::{simulate, Costs};
use super::stage::{PipelineLoss, PipelineStage, Saved};
use super::trace::{Lane, TraceSpan};
use crate::comm::{Communicator, Work};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::stream::{Event, Stream};
use crate::tensor::Tensor;

const OP: &str = "pipeline step";

/// One rank's streams: compute plus one p2p stream per transfer direction, so that a send
/// waiting for its receiver never holds up a receive, or the compute.
pub struct PipelineStreams {
    /// Forward, backward, recompute, loss.
    pub compute: Stream,
    /// Activation sends (to the next stage).
    pub send_act: Stream,
    /// Activation receives (from the previous stage).
    pub recv_act: Stream,
    /// Gradient sends (to the previous stage).
    pub send_grad: Stream,
    /// Gradient receives (from the next stage).
    pub recv_grad: Stream,
}

impl PipelineStreams {
    /// Five new streams on `device`.
    pub fn new(device: &Device) -> Result<Self> {
        Ok(PipelineStreams {
            compute: device.new_stream()?,
            send_act: device.new_stream()?,
            recv_act: device.new_stream()?,
            send_grad: device.new_stream()?,
            recv_grad: device.new_stream()?,
        })
    }

    /// The stream of `lane`.
    pub fn lane(&self, lane: Lane) -> &Stream {
        match lane {
            Lane::Compute => &self.compute,
            Lane::SendAct => &self.send_act,
            Lane::RecvAct => &self.recv_act,
            Lane::SendGrad => &self.send_grad,
            Lane::RecvGrad => &self.recv_grad,
        }
    }

    /// Waits for all five streams (a host wait); the first error found, if any.
    pub fn synchronize(&self) -> Result<()> {
        let mut first = None;
        for lane in Lane::ALL {
            if let Err(e) = self.lane(lane).synchronize() {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The tensor that flows between stages (an activation, and its gradient backwards): every
/// stage's input except the first, every stage's output except the last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Boundary {
    /// Its shape, e.g. `[micro-batch rows, hidden]`.
    pub dims: Vec<usize>,
    /// Its dtype.
    pub dtype: DType,
}

/// How to run a step.
#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// Check and simulate the schedule before running it (default on): a schedule that would
    /// deadlock fails on every rank before anything is posted.
    pub validate: bool,
    /// Record each action's start and end on its stream, in seconds since this instant (CPU
    /// streams only). All ranks of a step should share one origin.
    pub trace: Option<Instant>,
    /// Fault injection for tests: forget the compute stream's wait on receive events. Checked
    /// mode must then report [`Error::UnsynchronizedAccess`]; never set it otherwise.
    pub omit_recv_wait: bool,
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            validate: true,
            trace: None,
            omit_recv_wait: false,
        }
    }
}

/// What a step leaves besides the gradients in the stages and the losses in the loss.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    /// This rank's spans (empty unless [`ExecOptions::trace`] was set), in the order they ended.
    pub spans: Vec<TraceSpan>,
}

/// A stage's input, kept from its forward until its weight gradient is done.
enum Input {
    /// `inputs[mb]` (stage 0).
    Data(usize),
    /// A received activation.
    Owned(Tensor),
}

/// The per-rank state of a step in flight.
struct Run<'a> {
    placement: Placement,
    recompute: &'a [bool],
    rank: usize,
    comm: &'a dyn Communicator,
    streams: &'a PipelineStreams,
    inputs: &'a [Tensor],
    boundary: &'a Boundary,
    opts: &'a ExecOptions,
    /// Received tensors and the events after their receives, by (mb, chunk).
    recv_act: HashMap<(usize, usize), (Tensor, Event)>,
    recv_grad: HashMap<(usize, usize), (Tensor, Event)>,
    /// Produced tensors waiting for their send, and the event after their producer.
    out_act: HashMap<(usize, usize), (Tensor, Event)>,
    out_grad: HashMap<(usize, usize), (Tensor, Event)>,
    /// Output gradients the loss produced on the last stage (ready on the compute stream).
    loss_grad: HashMap<(usize, usize), Tensor>,
    /// Stage inputs, and what the forward (or the backward-input half) saved.
    input: HashMap<(usize, usize), Input>,
    saved: HashMap<(usize, usize), Saved>,
    wsaved: HashMap<(usize, usize), Saved>,
    /// Sends in flight, with the tensors they read.
    in_flight: Vec<(Work, Tensor)>,
    spans: Arc<Mutex<Vec<TraceSpan>>>,
}

/// Runs this rank's part of one step of `schedule`: every action of `schedule.ranks[rank]`
/// (rank = `comm.rank()`), over `chunks` (this rank's model chunks, `chunks[c]` is global stage
/// `c * pp + rank`). Parameter gradients accumulate in the chunks across micro-batches (zero them
/// between steps); the loss (required on the rank of the last stage) records the losses.
/// `inputs` are the micro-batches (required on rank 0, ignored elsewhere). Returns after all of
/// this rank's work has finished.
///
/// Errors: [`Error::InvalidArgument`] for a communicator, chunk count, input count or loss that
/// does not fit the schedule, [`Error::Deadlock`] for a schedule that cannot complete (before
/// running), shape errors for a stage output that is not `boundary`, and whatever a stage, a
/// transfer or checked mode reports (e.g. [`Error::UnsynchronizedAccess`]).
#[allow(clippy::too_many_arguments)]
pub fn run_step(
    schedule: &Schedule,
    comm: &dyn Communicator,
    streams: &PipelineStreams,
    chunks: &mut [&mut dyn PipelineStage],
    inputs: &[Tensor],
    mut loss: Option<&mut dyn PipelineLoss>,
    boundary: &Boundary,
    opts: &ExecOptions,
) -> Result<StepReport> {
    let placement = schedule.placement;
    let rank = comm.rank();
    if comm.size() != placement.pp {
        return Err(Error::invalid(
            OP,
            "comm",
            format!(
                "{} has {} ranks, the schedule {}",
                comm.name(),
                comm.size(),
                placement.pp
            ),
        ));
    }
    if chunks.len() != placement.chunks {
        return Err(Error::invalid(
            OP,
            "chunks",
            format!(
                "rank {rank} passed {} chunks, the schedule has {} per rank",
                chunks.len(),
                placement.chunks
            ),
        ));
    }
    let last = placement.stages() - 1;
    if rank == 0 && inputs.len() != schedule.microbatches {
        return Err(Error::invalid(
            OP,
            "inputs",
            format!(
                "{} micro-batch inputs for {} micro-batches",
                inputs.len(),
                schedule.microbatches
            ),
        ));
    }
    if placement.locate(last).0 == rank && loss.is_none() {
        return Err(Error::invalid(
            OP,
            "loss",
            format!("rank {rank} holds the last stage and needs the loss"),
        ));
    }
    if opts.validate {
        schedule.check()?;
        let costs = Costs::uniform(placement.stages(), 1.0, 1.0, 1.0, 0.0);
        simulate(schedule, &costs)?;
    }
    let mut run = Run {
        placement,
        recompute: &schedule.recompute,
        rank,
        comm,
        streams,
        inputs,
        boundary,
        opts,
        recv_act: HashMap::new(),
        recv_grad: HashMap::new(),
        out_act: HashMap::new(),
        out_grad: HashMap::new(),
        loss_grad: HashMap::new(),
        input: HashMap::new(),
        saved: HashMap::new(),
        wsaved: HashMap::new(),
        in_flight: Vec::new(),
        spans: Arc::new(Mutex::new(Vec::new())),
    };
    for action in &schedule.ranks[rank] {
        run.action(action, chunks, &mut loss)?;
        run.in_flight
            .retain(|(w, _)| !w.event().query().unwrap_or(true));
    }
    streams.synchronize()?;
    run.in_flight.clear();
    let spans = run.spans.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(StepReport { spans })
}

impl Run<'_> {
    fn action(
        &mut self,
        a: &Action,
        chunks: &mut [&mut dyn PipelineStage],
        loss: &mut Option<&mut dyn PipelineLoss>,
    ) -> Result<()> {
        let lane = Lane::of(a);
        let stream = self.streams.lane(lane);
        let key = (a.mb(), a.chunk());
        if a.chunk() >= self.placement.chunks {
            return Err(Error::invalid(OP, format!("{a}"), "chunk out of range"));
        }
        let stage = self.placement.stage(self.rank, a.chunk());
        // The span starts once the action's own waits are enqueued (it measures the work, not
        // the wait for its inputs).
        let start;
        match *a {
            Action::RecvAct { peer, .. } | Action::RecvGrad { peer, .. } => {
                let tag = self.tag(a)?;
                start = self.mark_start(stream)?;
                let mut buf = Tensor::poisoned(
                    stream.device(),
                    self.boundary.dims.as_slice(),
                    self.boundary.dtype,
                )?;
                self.comm.recv(stream, &mut buf, peer, tag)?;
                let ev = stream.record_event()?;
                let map = if lane == Lane::RecvAct {
                    &mut self.recv_act
                } else {
                    &mut self.recv_grad
                };
                map.insert(key, (buf, ev));
            }
            Action::SendAct { peer, .. } | Action::SendGrad { peer, .. } => {
                let tag = self.tag(a)?;
                let map = if lane == Lane::SendAct {
                    &mut self.out_act
                } else {
                    &mut self.out_grad
                };
                let (t, ev) = map
                    .remove(&key)
                    .ok_or_else(|| missing(a, "its producer has not run"))?;
                stream.wait(&ev)?;
                start = self.mark_start(stream)?;
                let work = self.comm.send(stream, &t, peer, tag)?;
                self.in_flight.push((work, t));
            }
            Action::Forward { mb, chunk } => {
                let input = if stage == 0 {
                    if mb >= self.inputs.len() {
                        return Err(missing(a, "no such micro-batch input"));
                    }
                    Input::Data(mb)
                } else {
                    let (t, ev) = self
                        .recv_act
                        .remove(&key)
                        .ok_or_else(|| missing(a, "its input was never received"))?;
                    if !self.opts.omit_recv_wait {
                        stream.wait(&ev)?;
                    }
                    Input::Owned(t)
                };
                start = self.mark_start(stream)?;
                let (out, saved) = chunks[chunk].forward(stream, self.input_ref(&input))?;
                if stage == self.placement.stages() - 1 {
                    let l = loss
                        .as_deref_mut()
                        .ok_or_else(|| missing(a, "the last stage has no loss"))?;
                    self.loss_grad
                        .insert(key, l.forward_backward(stream, mb, &out)?);
                } else {
                    self.check_boundary(a, "output", &out)?;
                    self.out_act.insert(key, (out, stream.record_event()?));
                }
                if !self.recompute.get(stage).copied().unwrap_or(false) {
                    self.saved.insert(key, saved);
                }
                self.input.insert(key, input);
            }
            Action::Recompute { chunk, .. } => {
                let input = self
                    .input
                    .get(&key)
                    .ok_or_else(|| missing(a, "no stashed input (forward not run)"))?;
                start = self.mark_start(stream)?;
                let (_, saved) = chunks[chunk].forward(stream, self.input_ref(input))?;
                self.saved.insert(key, saved);
            }
            Action::Backward { chunk, .. } | Action::BackwardInput { chunk, .. } => {
                let grad = self.output_grad(a, stage, stream)?;
                let saved = self
                    .saved
                    .remove(&key)
                    .ok_or_else(|| missing(a, "no saved activations (forward/recompute)"))?;
                let input = self
                    .input
                    .get(&key)
                    .ok_or_else(|| missing(a, "no input (forward not run)"))?;
                let x = self.input_ref(input);
                start = self.mark_start(stream)?;
                let dx = if matches!(a, Action::Backward { .. }) {
                    let dx = chunks[chunk].backward(stream, x, saved, &grad)?;
                    self.input.remove(&key);
                    dx
                } else {
                    let (dx, rest) = chunks[chunk].backward_input(stream, x, saved, &grad)?;
                    self.wsaved.insert(key, rest);
                    dx
                };
                if stage > 0 {
                    self.check_boundary(a, "input gradient", &dx)?;
                    self.out_grad.insert(key, (dx, stream.record_event()?));
                }
            }
            Action::BackwardWeight { chunk, .. } => {
                let rest = self
                    .wsaved
                    .remove(&key)
                    .ok_or_else(|| missing(a, "its BackwardInput has not run"))?;
                let input = self
                    .input
                    .remove(&key)
                    .ok_or_else(|| missing(a, "no input (forward not run)"))?;
                start = self.mark_start(stream)?;
                chunks[chunk].backward_weight(stream, self.input_ref(&input), rest)?;
            }
        }
        if let Some(start) = start {
            self.mark_end(stream, lane, *a, start)?;
        }
        Ok(())
    }

    fn input_ref<'b>(&'b self, input: &'b Input) -> &'b Tensor {
        match input {
            Input::Data(mb) => &self.inputs[*mb],
            Input::Owned(t) => t,
        }
    }

    /// The gradient of a stage's output: from the loss on the last stage, else received.
    fn output_grad(&mut self, a: &Action, stage: usize, stream: &Stream) -> Result<Tensor> {
        let key = (a.mb(), a.chunk());
        if stage == self.placement.stages() - 1 {
            return self
                .loss_grad
                .remove(&key)
                .ok_or_else(|| missing(a, "no loss gradient (forward not run)"));
        }
        let (t, ev) = self
            .recv_grad
            .remove(&key)
            .ok_or_else(|| missing(a, "its output gradient was never received"))?;
        if !self.opts.omit_recv_wait {
            stream.wait(&ev)?;
        }
        Ok(t)
    }

    fn tag(&self, a: &Action) -> Result<u32> {
        self.placement
            .tag(self.rank, a)
            .ok_or_else(|| missing(a, "no message tag (first stage sends no gradient)"))
    }

    fn check_boundary(&self, a: &Action, what: &str, t: &Tensor) -> Result<()> {
        if t.dims() != self.boundary.dims.as_slice() || t.dtype() != self.boundary.dtype {
            return Err(Error::ShapeMismatch {
                op: OP,
                what: format!(
                    "{what} of {a} on rank {} ({}; boundary dtype {})",
                    self.rank,
                    t.dtype(),
                    self.boundary.dtype
                ),
                expected: self.boundary.dims.clone(),
                got: t.dims().to_vec(),
            });
        }
        Ok(())
    }

    fn mark_start(&self, stream: &Stream) -> Result<Option<Arc<Mutex<Option<Instant>>>>> {
        if self.opts.trace.is_none() {
            return Ok(None);
        }
        let cell = Arc::new(Mutex::new(None));
        let c = cell.clone();
        stream
            .host_fn(move || *c.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now()))?;
        Ok(Some(cell))
    }

    fn mark_end(
        &self,
        stream: &Stream,
        lane: Lane,
        action: Action,
        start: Arc<Mutex<Option<Instant>>>,
    ) -> Result<()> {
        let Some(origin) = self.opts.trace else {
            return Ok(());
        };
        let (spans, rank) = (self.spans.clone(), self.rank);
        stream.host_fn(move || {
            let end = Instant::now();
            let begin = start
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or(end);
            let secs = |t: Instant| t.saturating_duration_since(origin).as_secs_f64();
            spans
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(TraceSpan {
                    rank,
                    lane,
                    action,
                    start: secs(begin),
                    end: secs(end),
                });
        })
    }
}

fn missing(a: &Action, why: &str) -> Error {
    Error::invalid(OP, format!("{a}"), why.to_string())
}
