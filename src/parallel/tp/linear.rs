//! Megatron-Core's tensor-parallel linear layers (`tensor_parallel/layers.py`):
//! [`ColumnParallelLinear`] and [`RowParallelLinear`], each an explicit `forward` and
//! `backward` over a [`Communicator`] and a pair of streams ([`TpStreams`]).
//!
//! Both compute `y = x W^T + b` (Megatron's layout: the weight is `[out, in]`) for a 2-D
//! activation `x` of shape `[tokens, in]`. `tokens` is the flattened `[s, b]` of a Megatron
//! activation `[s, b, h]` in sequence-major order, so splitting the tokens into `p` contiguous
//! chunks (sequence parallelism) is Megatron's split of the sequence dimension. `p` is the
//! tensor-parallel size (`comm.size()`), `r` this rank.
//!
//! | layer | weight shard | forward | backward |
//! |-------|--------------|---------|----------|
//! | column | `[out/p, in]` (rows block `r`) | `x` (all-gathered along the tokens under SP, fused with the GEMM: [`Communicator::all_gather_gemm`]) `W_r^T + b_r`; optionally gathered along the last dimension | `dx = sum_r dy_r W_r` (all-reduce, or reduce-scatter under SP), **overlapped** with `dW_r += dy_r^T x` |
//! | row | `[out, in/p]` (columns block `r`) | `sum_r x_r W_r^T` (all-reduce, or under SP reduce-scatter fused with the GEMM: [`Communicator::gemm_reduce_scatter`]) `+ b` | `dx_r = dy W_r` (dy all-gathered under SP), `dW_r += dy^T x_r` |
//!
//! Conventions:
//! - **Parameters and gradients.** A layer owns its weight and bias shards (f32 or bf16, the
//!   parameter dtype, which is also the activation dtype) and their gradients, which are
//!   **always f32** (Megatron's `main_grad`), created zeroed on the weight's device. `backward`
//!   *accumulates* into them (`grad += ...`, the GEMM with `beta = 1`), so gradients of several
//!   micro-batches add up; `zero_grad` resets them (in place, on the compute stream). With
//!   `skip_bias_add` the bias is not applied by the layer and its gradient is not accumulated by
//!   `backward` either: whoever applies the bias (a fused bias+GeLU, a bias-dropout-add)
//!   accumulates into `grad_bias_mut()`, as Megatron's fused ops do.
//! - **Saved tensors.** There is no autograd: `backward` takes the forward's input `x` again
//!   (the same tensor, as passed to `forward`) besides the output gradient `dy`. Under sequence
//!   parallelism the column layer re-gathers `x` in backward, as Megatron-Core does, instead of
//!   keeping the gathered copy.
//! - **Streams.** Compute runs on `streams.compute`, communication on `streams.comm`, ordered by
//!   events only (record on the producer, wait on the consumer). The inputs must be ready on
//!   `streams.compute` (produced there, or ordered before it by an event); everything a call
//!   returns or updates (output, input gradient, parameter gradients) is ready on
//!   `streams.compute` when the call returns: later work there needs no wait, other streams wait
//!   on an event recorded there. Nothing blocks the host. [`TpStreams::serial`] runs everything
//!   on one stream (no overlap, the same results bit for bit).
//! - **Failures.** Every argument is validated before anything is enqueued, so a rejected call
//!   leaves the streams and the communicator's call sequence untouched (every rank of the group
//!   must make the same calls). A failure while the work runs (e.g. a peer that failed in a
//!   collective) is sticky on the stream it ran on and is passed on to `streams.compute` where
//!   it joins the communication stream: the next host wait there reports it.
//! - **Rounding points** (bf16): every activation stored by the layer is rounded to bf16 once:
//!   the GEMM outputs (f32 accumulation), the reduced outputs of the collectives (f32
//!   accumulation in rank order, Megatron reduces in the activation dtype too) and the bias
//!   sums. Per rank, the partial results that a collective reduces are rounded before the
//!   reduction. Gradients are f32 sums of products of bf16 values.
//! - **Determinism.** Same inputs and tensor-parallel size: the same bits, run after run, with
//!   or without overlap, and with sequence parallelism on or off.
//!
//! As in Megatron-Core, `gather_output` with `sequence_parallel`, and `sequence_parallel`
//! without `input_is_parallel`, are configuration errors ([`Error::InvalidArgument`]).
//! Differences: activations are 2-D (`[s, b, h]` flattened, see above); the layers hold no
//! saved tensors (`backward` takes `x` again, and the row layer without `input_is_parallel`
//! re-splits it); under sequence parallelism the row layer's bias gradient is the column sum of
//! the all-gathered output gradient, i.e. already the sum over the group that Megatron forms
//! later by all-reducing the gradients of its `sequence_parallel` parameters.

use crate::comm::{Communicator, ReduceOp};
use crate::device::{BackendKind, Device};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::bias::{bias_add, column_sum};
use crate::ops::{gemm, shard as copies, Epilogue, Gemm, Transpose};
use crate::parallel::tp::mappings;
use crate::parallel::tp::shard::{self, Partition};
use crate::stream::Stream;
use crate::tensor::Tensor;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- streams and traces ----------------------------------------------------------------------

/// The two streams a tensor-parallel layer runs on: GEMMs and elementwise work on `compute`,
/// collectives on `comm`, ordered by events. Optionally a [`Trace`] of the steps.
#[derive(Clone, Debug)]
pub struct TpStreams {
    /// The stream of the GEMMs and elementwise ops; inputs must be ready here and results are
    /// ready here when a call returns.
    pub compute: Stream,
    /// The stream of the collectives (may be `compute` itself: see [`TpStreams::serial`]).
    pub comm: Stream,
    /// When set, each traced step is bracketed by host functions that record its start and end
    /// ([`Stream::host_fn`]: CPU backend only; elsewhere a call fails with
    /// [`Error::Unsupported`] before anything is enqueued).
    pub trace: Option<Trace>,
}

impl TpStreams {
    /// Two new streams on `device`, named `tp-compute` and `tp-comm`.
    pub fn new(device: &Device) -> Result<TpStreams> {
        Ok(TpStreams {
            compute: device.new_named_stream("tp-compute")?,
            comm: device.new_named_stream("tp-comm")?,
            trace: None,
        })
    }

    /// Everything on `stream`: no overlap of communication and compute, the same results.
    pub fn serial(stream: &Stream) -> TpStreams {
        TpStreams {
            compute: stream.clone(),
            comm: stream.clone(),
            trace: None,
        }
    }

    /// The same streams, with `trace` recording the steps.
    pub fn with_trace(mut self, trace: Trace) -> TpStreams {
        self.trace = Some(trace);
        self
    }

    /// Whether `compute` and `comm` are the same stream.
    pub fn is_serial(&self) -> bool {
        self.compute.id() == self.comm.id()
    }

    /// The device of the streams.
    pub fn device(&self) -> &Device {
        self.compute.device()
    }

    /// Blocks the host until both streams have run everything enqueued so far; returns the
    /// first asynchronous failure of either.
    pub fn synchronize(&self) -> Result<()> {
        let a = self.comm.synchronize();
        self.compute.synchronize()?;
        a
    }

    /// The checks every layer call makes before it enqueues anything.
    fn check(&self, op: &'static str) -> Result<()> {
        self.compute
            .same_device(op, "streams.comm", self.comm.device())?;
        if self.trace.is_some() && self.device().kind() != BackendKind::Cpu {
            return Err(Error::Unsupported {
                op: "TpStreams::trace (host functions on the stream)",
                backend: self.device().kind().to_string(),
            });
        }
        Ok(())
    }

    /// Orders the work enqueued on `comm` from now on after everything enqueued on `compute`.
    fn comm_after_compute(&self) -> Result<()> {
        if !self.is_serial() {
            self.comm.wait(&self.compute.record_event()?)?;
        }
        Ok(())
    }

    /// Orders the work enqueued on `compute` from now on after everything enqueued on `comm`.
    /// A failure on `comm` travels along the event: `compute` then fails with
    /// [`Error::UpstreamFailed`] instead of running on the un-reduced data.
    fn compute_after_comm(&self) -> Result<()> {
        if !self.is_serial() {
            self.compute.wait(&self.comm.record_event()?)?;
        }
        Ok(())
    }

    /// Runs `f` (which enqueues one step on `stream`) bracketed by trace markers when tracing.
    fn span<R>(
        &self,
        stream: &Stream,
        name: &'static str,
        f: impl FnOnce() -> Result<R>,
    ) -> Result<R> {
        let Some(trace) = &self.trace else {
            return f();
        };
        let start: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let slot = start.clone();
        stream.host_fn(move || {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        })?;
        let out = f()?;
        let (trace, label) = (trace.clone(), stream.label().to_string());
        stream.host_fn(move || {
            let end = Instant::now();
            if let Some(s) = start.lock().unwrap_or_else(|p| p.into_inner()).take() {
                trace.push(name, label, s, end);
            }
        })?;
        Ok(out)
    }
}

/// One traced step: its name, the stream it ran on and when it started and ended (since the
/// trace's origin, host clock, measured on the stream's worker just before and after the step).
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// The step (e.g. `"bwd: wgrad gemm"`, `"bwd: all_reduce dx"`).
    pub name: &'static str,
    /// The stream's label (`name@device`).
    pub stream: String,
    /// When the step started.
    pub start: Duration,
    /// When it ended.
    pub end: Duration,
}

impl Span {
    /// How long this span and `other` ran at the same time (zero when they are disjoint).
    pub fn overlap(&self, other: &Span) -> Duration {
        let (s, e) = (self.start.max(other.start), self.end.min(other.end));
        e.saturating_sub(s)
    }
}

/// A shared, thread-safe log of [`Span`]s (clones log into the same trace).
#[derive(Clone, Debug)]
pub struct Trace {
    origin: Instant,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Default for Trace {
    fn default() -> Self {
        Trace::new()
    }
}

impl Trace {
    /// An empty trace whose origin is now.
    pub fn new() -> Trace {
        Trace {
            origin: Instant::now(),
            spans: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn push(&self, name: &'static str, stream: String, start: Instant, end: Instant) {
        let span = Span {
            name,
            stream,
            start: start.saturating_duration_since(self.origin),
            end: end.saturating_duration_since(self.origin),
        };
        self.spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(span);
    }

    /// The spans recorded so far, in the order they ended.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The spans named `name`.
    pub fn named(&self, name: &str) -> Vec<Span> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name)
            .collect()
    }

    /// Forgets every span.
    pub fn clear(&self) {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

// ---- shared checks and steps -----------------------------------------------------------------

/// The parameter dtypes the layers support (what the communicators carry).
fn param_dtype(op: &'static str, weight: &Tensor) -> Result<DType> {
    match weight.dtype() {
        DType::F32 | DType::BF16 => Ok(weight.dtype()),
        d => Err(Error::UnsupportedDType {
            op,
            what: "weight (the layers support f32 and bf16 parameters)".into(),
            dtype: d,
        }),
    }
}

fn shape_is(op: &'static str, what: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        return Err(Error::ShapeMismatch {
            op,
            what: what.into(),
            expected: want.to_vec(),
            got: t.dims().to_vec(),
        });
    }
    Ok(())
}

fn dtype_is(op: &'static str, what: &str, t: &Tensor, want: DType) -> Result<()> {
    if t.dtype() != want {
        return Err(Error::DTypeMismatch {
            op,
            what: what.into(),
            expected: want,
            got: t.dtype(),
        });
    }
    Ok(())
}

fn same_device(op: &'static str, what: &str, t: &Tensor, dev: &Device) -> Result<()> {
    if !dev.compatible(t.device()) {
        return Err(Error::DeviceMismatch {
            op,
            what: what.into(),
            expected: dev.label().to_string(),
            got: t.device().label().to_string(),
        });
    }
    Ok(())
}

/// A 2-D activation on the compute stream's device with the parameter dtype and no zero
/// dimension; returns its first dimension (tokens).
fn activation(
    op: &'static str,
    what: &str,
    t: &Tensor,
    streams: &TpStreams,
    dtype: DType,
) -> Result<usize> {
    if t.shape().rank() != 2 {
        return Err(Error::RankMismatch {
            op,
            what: format!("{what} ([tokens, features]; flatten [s, b, h] to [s*b, h])"),
            expected: 2,
            got: t.dims().to_vec(),
        });
    }
    streams.compute.same_device(op, what, t.device())?;
    dtype_is(op, what, t, dtype)?;
    if t.shape().has_zero_dim() {
        return Err(Error::ZeroDim {
            op,
            what: what.into(),
            shape: t.dims().to_vec(),
        });
    }
    Ok(t.dims()[0])
}

/// [`activation`] with the exact shape `want`.
pub(crate) fn check_activation(
    op: &'static str,
    what: &str,
    t: &Tensor,
    streams: &TpStreams,
    dtype: DType,
    want: &[usize],
) -> Result<()> {
    activation(op, what, t, streams, dtype)?;
    shape_is(op, what, t, want)
}

/// The communicator is the group the layer was built for.
fn check_group(op: &'static str, comm: &dyn Communicator, rank: usize, size: usize) -> Result<()> {
    if comm.size() != size || comm.rank() != rank {
        return Err(Error::invalid(
            op,
            "comm",
            format!(
                "{} is rank {} of {}, but the layer holds the shard of rank {rank} of {size}",
                comm.name(),
                comm.rank(),
                comm.size()
            ),
        ));
    }
    Ok(())
}

fn positive(op: &'static str, what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::invalid(op, what, "must be at least 1"));
    }
    Ok(())
}

/// `d / p`, or [`Error::NotDivisible`] naming the dimension.
fn divide(what: String, d: usize, p: usize, why: &str) -> Result<usize> {
    if d % p != 0 {
        return Err(Error::NotDivisible {
            what,
            dim: d,
            parts: p,
            why: why.into(),
        });
    }
    Ok(d / p)
}

/// The parameters of one layer: shards in the parameter dtype, f32 gradients.
#[derive(Debug)]
struct Params {
    weight: Tensor,
    bias: Option<Tensor>,
    grad_weight: Tensor,
    grad_bias: Option<Tensor>,
}

impl Params {
    /// `(parameter, its gradient)` pairs: the weight, then the bias if any.
    fn pairs(&mut self) -> Vec<(&mut Tensor, &Tensor)> {
        let mut v = vec![(&mut self.weight, &self.grad_weight)];
        if let (Some(b), Some(g)) = (self.bias.as_mut(), self.grad_bias.as_ref()) {
            v.push((b, g));
        }
        v
    }

    /// Validates the shards (shape, dtype, device, presence of the bias) and creates zeroed
    /// gradients on the weight's device.
    fn new(
        op: &'static str,
        weight: Tensor,
        bias: Option<Tensor>,
        weight_dims: &[usize],
        bias_dims: &[usize],
        with_bias: bool,
    ) -> Result<Params> {
        let dtype = param_dtype(op, &weight)?;
        shape_is(op, "weight shard", &weight, weight_dims)?;
        match (&bias, with_bias) {
            (None, true) => {
                return Err(Error::invalid(
                    op,
                    "bias",
                    "the config asks for a bias but none was given",
                ))
            }
            (Some(_), false) => {
                return Err(Error::invalid(
                    op,
                    "bias",
                    "a bias was given but the config has bias = false",
                ))
            }
            (Some(b), true) => {
                shape_is(op, "bias shard", b, bias_dims)?;
                dtype_is(op, "bias shard", b, dtype)?;
                same_device(op, "bias shard", b, weight.device())?;
            }
            (None, false) => {}
        }
        let dev = weight.device().clone();
        let grad_weight = Tensor::zeros(&dev, weight_dims.to_vec(), DType::F32)?;
        let grad_bias = match with_bias {
            true => Some(Tensor::zeros(&dev, bias_dims.to_vec(), DType::F32)?),
            false => None,
        };
        Ok(Params {
            weight,
            bias,
            grad_weight,
            grad_bias,
        })
    }

    fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// Zeroes the gradients in place, on `streams.compute`.
    fn zero_grad(&mut self, op: &'static str, streams: &TpStreams) -> Result<()> {
        self.check_streams(op, streams)?;
        let c = &streams.compute;
        let n = self.grad_weight.numel();
        self.grad_weight.copy_from_slice(c, &vec![0.0f32; n])?;
        if let Some(g) = &mut self.grad_bias {
            let n = g.numel();
            g.copy_from_slice(c, &vec![0.0f32; n])?;
        }
        Ok(())
    }

    fn check_streams(&self, op: &'static str, streams: &TpStreams) -> Result<()> {
        streams.check(op)?;
        streams
            .compute
            .same_device(op, "weight", self.weight.device())
    }
}

/// Checks a full parameter before it is cut.
fn check_full(
    op: &'static str,
    weight: &Tensor,
    bias: Option<&Tensor>,
    weight_dims: &[usize],
    bias_dims: &[usize],
) -> Result<()> {
    let dtype = param_dtype(op, weight)?;
    shape_is(op, "full weight", weight, weight_dims)?;
    if let Some(b) = bias {
        shape_is(op, "full bias", b, bias_dims)?;
        dtype_is(op, "full bias", b, dtype)?;
    }
    Ok(())
}

fn poisoned(streams: &TpStreams, dims: [usize; 2], dtype: DType) -> Result<Tensor> {
    Tensor::poisoned(streams.device(), dims, dtype)
}

const Y_XWT: Gemm = Gemm {
    ta: Transpose::N,
    tb: Transpose::T,
    alpha: 1.0,
    beta: 0.0,
};
const DX_DYW: Gemm = Gemm {
    ta: Transpose::N,
    tb: Transpose::N,
    alpha: 1.0,
    beta: 0.0,
};
const DW_ACC: Gemm = Gemm {
    ta: Transpose::T,
    tb: Transpose::N,
    alpha: 1.0,
    beta: 1.0,
};

/// `x W^T (+ bias)` on the compute stream, into a new `[tokens, rows of W]` tensor.
fn gemm_bias(streams: &TpStreams, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let c = &streams.compute;
    let mut y = poisoned(streams, [x.dims()[0], w.dims()[0]], x.dtype())?;
    streams.span(c, "fwd: gemm", || gemm(c, x, w, &mut y, &Y_XWT))?;
    add_bias(streams, y, bias)
}

/// `y (+ bias)` on the compute stream: `y` itself without a bias, else a new tensor.
fn add_bias(streams: &TpStreams, y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        None => Ok(y),
        Some(b) => {
            let mut yb = poisoned(streams, [y.dims()[0], y.dims()[1]], y.dtype())?;
            bias_add(&streams.compute, &y, b, &mut yb)?;
            Ok(yb)
        }
    }
}

/// `grad_weight += dy^T x` and, when given, `grad_bias += column sums of dy`, on the compute
/// stream.
fn accumulate_grads(
    streams: &TpStreams,
    dy: &Tensor,
    x: &Tensor,
    grad_weight: &mut Tensor,
    grad_bias: Option<&mut Tensor>,
) -> Result<()> {
    let c = &streams.compute;
    streams.span(c, "bwd: wgrad gemm", || {
        gemm(c, dy, x, grad_weight, &DW_ACC)
    })?;
    if let Some(gb) = grad_bias {
        streams.span(c, "bwd: dbias", || column_sum(c, dy, gb, true))?;
    }
    Ok(())
}

// ---- ColumnParallelLinear --------------------------------------------------------------------

/// The options of a [`ColumnParallelLinear`] (Megatron-Core's names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColumnParallelConfig {
    /// `in`: the input features (the weight's last dimension).
    pub input_size: usize,
    /// `out`: the output features of the whole layer (split over the group).
    pub output_size: usize,
    /// Whether the layer has a bias (`[out]`, split like the weight's rows).
    pub bias: bool,
    /// All-gather the output along the last dimension (`[tokens, out]` on every rank) instead of
    /// returning this rank's `[tokens, out/p]`.
    pub gather_output: bool,
    /// Do not add the bias: the caller fuses it into the next op (and accumulates its gradient).
    pub skip_bias_add: bool,
    /// The input is this rank's chunk of the tokens, all-gathered before the GEMM; the input
    /// gradient is reduce-scattered back. Incompatible with `gather_output`.
    pub sequence_parallel: bool,
}

impl ColumnParallelConfig {
    /// `input_size -> output_size` with a bias, no gathering, no sequence parallelism.
    pub fn new(input_size: usize, output_size: usize) -> ColumnParallelConfig {
        ColumnParallelConfig {
            input_size,
            output_size,
            bias: true,
            gather_output: false,
            skip_bias_add: false,
            sequence_parallel: false,
        }
    }

    /// Validates the options for a group of `p` ranks; returns `out / p`.
    fn check(&self, op: &'static str, p: usize) -> Result<usize> {
        positive(op, "input_size", self.input_size)?;
        positive(op, "output_size", self.output_size)?;
        if self.gather_output && self.sequence_parallel {
            return Err(Error::invalid(
                op,
                "gather_output",
                "incompatible with sequence_parallel (the output would be neither sharded \
                 along the sequence nor the hidden dimension; Megatron-Core asserts the same)",
            ));
        }
        divide(
            format!("{op}: output_size (first dimension of the weight [out, in])"),
            self.output_size,
            p,
            "tensor-parallel size",
        )
    }
}

/// `y = x W^T + b` with the weight `[out, in]` split along its rows (the output features):
/// rank `r` holds rows `r*out/p .. (r+1)*out/p` and computes that block of the output columns.
/// See the [module docs](self) for the conventions.
///
/// | option | input `x` | output |
/// |--------|-----------|--------|
/// | default | `[t, in]`, the same on every rank | `[t, out/p]`, this rank's columns |
/// | `gather_output` | `[t, in]` | `[t, out]` on every rank |
/// | `sequence_parallel` | `[t/p, in]`, this rank's chunk of the tokens | `[t, out/p]` |
///
/// Backward takes `dy` shaped like the output and returns `dx` shaped like `x`; the input
/// gradient's all-reduce (reduce-scatter under SP) runs on `streams.comm` while the weight
/// gradient GEMM runs on `streams.compute` (Megatron's async gradient all-reduce).
#[derive(Debug)]
pub struct ColumnParallelLinear {
    config: ColumnParallelConfig,
    tp_rank: usize,
    tp_size: usize,
    params: Params,
}

impl ColumnParallelLinear {
    /// A layer over this rank's shards: `weight` `[out/p, in]` (f32 or bf16) and, when
    /// `config.bias`, `bias` `[out/p]` (same dtype and device). Gradients are created zeroed
    /// (f32) on the weight's device. `comm` names the group (its size and this rank).
    ///
    /// Errors: [`Error::NotDivisible`] when `out` does not divide by the group size,
    /// [`Error::InvalidArgument`] for incompatible options or a missing/unexpected bias, and
    /// shape, dtype and device errors for the shards.
    pub fn new(
        config: ColumnParallelConfig,
        comm: &dyn Communicator,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> Result<ColumnParallelLinear> {
        const OP: &str = "ColumnParallelLinear::new";
        let (r, p) = (comm.rank(), comm.size());
        let out_p = config.check(OP, p)?;
        let params = Params::new(
            OP,
            weight,
            bias,
            &[out_p, config.input_size],
            &[out_p],
            config.bias,
        )?;
        Ok(ColumnParallelLinear {
            config,
            tp_rank: r,
            tp_size: p,
            params,
        })
    }

    /// A layer whose shards are cut ([`shard::shard_of`], [`Partition::First`]) from the full
    /// `weight` `[out, in]` and `bias` `[out]` (the same on every rank). The copies are enqueued
    /// on `streams.compute`.
    ///
    /// Errors: as [`ColumnParallelLinear::new`], plus shape errors for the full tensors.
    pub fn from_full(
        streams: &TpStreams,
        comm: &dyn Communicator,
        config: ColumnParallelConfig,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<ColumnParallelLinear> {
        const OP: &str = "ColumnParallelLinear::from_full";
        let (r, p) = (comm.rank(), comm.size());
        config.check(OP, p)?;
        let (out, inp) = (config.output_size, config.input_size);
        check_full(OP, weight, bias, &[out, inp], &[out])?;
        streams.compute.same_device(OP, "weight", weight.device())?;
        if let Some(b) = bias {
            streams.compute.same_device(OP, "bias", b.device())?;
        }
        if bias.is_some() != config.bias {
            return Err(Error::invalid(
                OP,
                "bias",
                format!(
                    "config.bias = {} but bias given: {}",
                    config.bias,
                    bias.is_some()
                ),
            ));
        }
        let c = &streams.compute;
        let w = shard::shard_of(c, weight, Partition::First, r, p)?;
        let b = bias
            .map(|b| shard::shard_of(c, b, Partition::First, r, p))
            .transpose()?;
        ColumnParallelLinear::new(config, comm, w, b)
    }

    /// The options.
    pub fn config(&self) -> &ColumnParallelConfig {
        &self.config
    }

    /// This rank's index in the group the layer was built for.
    pub fn tp_rank(&self) -> usize {
        self.tp_rank
    }

    /// The group size the layer was built for.
    pub fn tp_size(&self) -> usize {
        self.tp_size
    }

    /// The parameter (and activation) dtype.
    pub fn dtype(&self) -> DType {
        self.params.dtype()
    }

    /// This rank's weight shard `[out/p, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.params.weight
    }

    /// This rank's bias shard `[out/p]`, if the layer has a bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.params.bias.as_ref()
    }

    /// The bias the caller must add itself: `Some` when `skip_bias_add` (Megatron's
    /// `output_bias`), else `None`.
    pub fn output_bias(&self) -> Option<&Tensor> {
        self.params
            .bias
            .as_ref()
            .filter(|_| self.config.skip_bias_add)
    }

    /// The accumulated weight gradient `[out/p, in]`, f32.
    pub fn grad_weight(&self) -> &Tensor {
        &self.params.grad_weight
    }

    /// The accumulated bias gradient `[out/p]`, f32.
    pub fn grad_bias(&self) -> Option<&Tensor> {
        self.params.grad_bias.as_ref()
    }

    /// `(parameter, gradient)` pairs — this rank's weight shard, then its bias — for an
    /// optimizer that updates the parameters in place.
    pub fn params_mut(&mut self) -> Vec<(&mut Tensor, &Tensor)> {
        self.params.pairs()
    }

    /// The weight gradient, for an optimizer or a gradient bucket to update in place.
    pub fn grad_weight_mut(&mut self) -> &mut Tensor {
        &mut self.params.grad_weight
    }

    /// The bias gradient, for the op that applies the bias under `skip_bias_add` to accumulate
    /// into (e.g. [`crate::ops::bias_gelu_bwd`] then [`crate::ops::bias::column_sum`]).
    pub fn grad_bias_mut(&mut self) -> Option<&mut Tensor> {
        self.params.grad_bias.as_mut()
    }

    /// Resets the gradients to zero, in place, on `streams.compute` (asynchronous, ordered
    /// like a backward).
    pub fn zero_grad(&mut self, streams: &TpStreams) -> Result<()> {
        self.params
            .zero_grad("ColumnParallelLinear::zero_grad", streams)
    }

    /// Validates a call; returns (local tokens of `x`, tokens of the GEMMs).
    pub(crate) fn check_call(
        &self,
        op: &'static str,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
    ) -> Result<(usize, usize)> {
        check_group(op, comm, self.tp_rank, self.tp_size)?;
        self.params.check_streams(op, streams)?;
        let t_local = activation(op, "x", x, streams, self.dtype())?;
        shape_is(op, "x", x, &[t_local, self.config.input_size])?;
        let t = if self.config.sequence_parallel {
            t_local * self.tp_size
        } else {
            t_local
        };
        Ok((t_local, t))
    }

    /// Under sequence parallelism (and `p > 1`), all-gathers `x` along the tokens on the comm
    /// stream and returns the gathered tensor with the event after the gather.
    fn gather_input(
        &self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        t: usize,
        step: &'static str,
    ) -> Result<Option<Tensor>> {
        if !(self.config.sequence_parallel && self.tp_size > 1) {
            return Ok(None);
        }
        let mut xt = poisoned(streams, [t, self.config.input_size], self.dtype())?;
        streams.comm_after_compute()?;
        streams.span(&streams.comm, step, || {
            comm.all_gather(&streams.comm, x, &mut xt)
        })?;
        Ok(Some(xt))
    }

    /// Forward: returns the output (see the table in the type's docs), ready on
    /// `streams.compute`.
    ///
    /// Errors (before anything is enqueued): shape, dtype and device errors for `x`
    /// ([`Error::RankMismatch`] unless 2-D), [`Error::InvalidArgument`] when `comm` is not the
    /// group the layer was built for.
    pub fn forward(
        &self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "ColumnParallelLinear::forward";
        let (_, t) = self.check_call(OP, streams, comm, x)?;
        let bias = self
            .params
            .bias
            .as_ref()
            .filter(|_| !self.config.skip_bias_add);
        let y_local = if self.config.sequence_parallel && self.tp_size > 1 {
            // The all-gather of x and the GEMM in one call on comm: the communicator may overlap
            // them (the peer communicator's fused kernel), with the same result.
            let w = &self.params.weight;
            let mut y = poisoned(streams, [t, w.dims()[0]], self.dtype())?;
            streams.comm_after_compute()?;
            streams.span(&streams.comm, "fwd: all_gather x + gemm", || {
                comm.all_gather_gemm(&streams.comm, x, w, &mut y, Epilogue::None)
            })?;
            streams.compute_after_comm()?;
            add_bias(streams, y, bias)?
        } else {
            gemm_bias(streams, x, &self.params.weight, bias)?
        };
        if !(self.config.gather_output && self.tp_size > 1) {
            return Ok(y_local);
        }
        let mut y = poisoned(streams, [t, self.config.output_size], self.dtype())?;
        streams.comm_after_compute()?;
        streams.span(&streams.comm, "fwd: gather y", || {
            mappings::gather_from_tp_region_fwd(&streams.comm, comm, &y_local, &mut y)
        })?;
        streams.compute_after_comm()?;
        Ok(y)
    }

    /// Backward: given the forward's input `x` and the output gradient `dy` (shaped like the
    /// forward's output), returns `dx` (shaped like `x`) and accumulates `grad_weight += dy_r^T
    /// x` and (unless `skip_bias_add`) `grad_bias += column sums of dy_r`, `dy_r` being this
    /// rank's columns of `dy`.
    ///
    /// Order of the work: `dx_partial = dy_r W_r` on compute; then, at the same time, its
    /// all-reduce (reduce-scatter under SP) on comm and the weight-gradient GEMM on compute
    /// (under SP the re-gather of `x` on comm overlaps the first GEMM). All results are ready on
    /// `streams.compute` on return.
    ///
    /// Errors: as [`ColumnParallelLinear::forward`], for `x` and `dy`.
    pub fn backward(
        &mut self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        dy: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "ColumnParallelLinear::backward";
        let (t_local, t) = self.check_call(OP, streams, comm, x)?;
        let (p, r, dtype) = (self.tp_size, self.tp_rank, self.dtype());
        let (inp, out) = (self.config.input_size, self.config.output_size);
        let out_p = out / p;
        let dy_cols = if self.config.gather_output {
            out
        } else {
            out_p
        };
        activation(OP, "dy", dy, streams, dtype)?;
        shape_is(OP, "dy", dy, &[t, dy_cols])?;
        let c = &streams.compute;

        // This rank's columns of dy (gather_from_tp_region's backward).
        let dy_split = if self.config.gather_output && p > 1 {
            let mut d = poisoned(streams, [t, out_p], dtype)?;
            copies::split_last(c, dy, r, p, &mut d)?;
            Some(d)
        } else {
            None
        };
        let dy_r = dy_split.as_ref().unwrap_or(dy);

        // SP: re-gather x on comm while the data-gradient GEMM runs.
        let gathered = self.gather_input(streams, comm, x, t, "bwd: all_gather x")?;
        let x_ready = match gathered {
            Some(_) => Some(streams.comm.record_event()?),
            None => None,
        };

        // dx_partial = dy_r W_r: this rank's share of the input gradient.
        let mut dx_partial = poisoned(streams, [t, inp], dtype)?;
        streams.span(c, "bwd: dgrad gemm", || {
            gemm(c, dy_r, &self.params.weight, &mut dx_partial, &DX_DYW)
        })?;

        // Launch the reduction of dx on comm (asynchronous) ...
        let dx = if p == 1 {
            dx_partial
        } else {
            streams.comm_after_compute()?;
            if self.config.sequence_parallel {
                let mut dx = poisoned(streams, [t_local, inp], dtype)?;
                streams.span(&streams.comm, "bwd: reduce_scatter dx", || {
                    comm.reduce_scatter(&streams.comm, &dx_partial, &mut dx, ReduceOp::Sum)
                })?;
                dx
            } else {
                streams.span(&streams.comm, "bwd: all_reduce dx", || {
                    comm.all_reduce(&streams.comm, &mut dx_partial, ReduceOp::Sum)
                })?;
                dx_partial
            }
        };

        // ... while the weight gradient is accumulated on compute.
        if let Some(ev) = &x_ready {
            c.wait(ev)?;
        }
        let x_total = gathered.as_ref().unwrap_or(x);
        let grad_bias = match self.config.skip_bias_add {
            true => None,
            false => self.params.grad_bias.as_mut(),
        };
        accumulate_grads(
            streams,
            dy_r,
            x_total,
            &mut self.params.grad_weight,
            grad_bias,
        )?;
        if p > 1 {
            streams.compute_after_comm()?;
        }
        Ok(dx)
    }
}

// ---- RowParallelLinear -----------------------------------------------------------------------

/// The options of a [`RowParallelLinear`] (Megatron-Core's names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowParallelConfig {
    /// `in`: the input features of the whole layer (split over the group).
    pub input_size: usize,
    /// `out`: the output features.
    pub output_size: usize,
    /// Whether the layer has a bias (`[out]`, not split: added once, after the reduction).
    pub bias: bool,
    /// The input is already this rank's `[t, in/p]` block of the features (the output of a
    /// [`ColumnParallelLinear`] without `gather_output`); otherwise it is the full `[t, in]` and
    /// is split here.
    pub input_is_parallel: bool,
    /// Do not add the bias: the caller fuses it into the next op (and accumulates its gradient).
    pub skip_bias_add: bool,
    /// Reduce-scatter the output along the tokens (`[t/p, out]`) instead of all-reducing it;
    /// the output gradient is this rank's chunk of the tokens. Needs `input_is_parallel`.
    pub sequence_parallel: bool,
}

impl RowParallelConfig {
    /// `input_size -> output_size` with a bias, a parallel input and no sequence parallelism.
    pub fn new(input_size: usize, output_size: usize) -> RowParallelConfig {
        RowParallelConfig {
            input_size,
            output_size,
            bias: true,
            input_is_parallel: true,
            skip_bias_add: false,
            sequence_parallel: false,
        }
    }

    /// Validates the options for a group of `p` ranks; returns `in / p`.
    fn check(&self, op: &'static str, p: usize) -> Result<usize> {
        positive(op, "input_size", self.input_size)?;
        positive(op, "output_size", self.output_size)?;
        if self.sequence_parallel && !self.input_is_parallel {
            return Err(Error::invalid(
                op,
                "sequence_parallel",
                "needs input_is_parallel = true (as in Megatron-Core)",
            ));
        }
        divide(
            format!("{op}: input_size (last dimension of the weight [out, in])"),
            self.input_size,
            p,
            "tensor-parallel size",
        )
    }
}

/// `y = x W^T + b` with the weight `[out, in]` split along its columns (the input features):
/// rank `r` holds columns `r*in/p .. (r+1)*in/p`, computes the partial product of its block of
/// the input, and the partials are summed over the group; the bias (not split) is added once,
/// after the reduction. See the [module docs](self) for the conventions.
///
/// | option | input `x` | output |
/// |--------|-----------|--------|
/// | default (`input_is_parallel`) | `[t, in/p]`, this rank's features | `[t, out]` on every rank (all-reduce) |
/// | `input_is_parallel = false` | `[t, in]`, split here | `[t, out]` |
/// | `sequence_parallel` | `[t, in/p]` | `[t/p, out]`, this rank's chunk of the tokens (reduce-scatter; `t` must divide by `p`) |
#[derive(Debug)]
pub struct RowParallelLinear {
    config: RowParallelConfig,
    tp_rank: usize,
    tp_size: usize,
    params: Params,
}

impl RowParallelLinear {
    /// A layer over this rank's shards: `weight` `[out, in/p]` (f32 or bf16) and, when
    /// `config.bias`, the whole `bias` `[out]`. Gradients are created zeroed (f32) on the
    /// weight's device.
    ///
    /// Errors: [`Error::NotDivisible`] when `in` does not divide by the group size,
    /// [`Error::InvalidArgument`] for incompatible options or a missing/unexpected bias, and
    /// shape, dtype and device errors for the shards.
    pub fn new(
        config: RowParallelConfig,
        comm: &dyn Communicator,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> Result<RowParallelLinear> {
        const OP: &str = "RowParallelLinear::new";
        let (r, p) = (comm.rank(), comm.size());
        let in_p = config.check(OP, p)?;
        let params = Params::new(
            OP,
            weight,
            bias,
            &[config.output_size, in_p],
            &[config.output_size],
            config.bias,
        )?;
        Ok(RowParallelLinear {
            config,
            tp_rank: r,
            tp_size: p,
            params,
        })
    }

    /// A layer whose weight shard is cut ([`shard::shard_of`], [`Partition::Last`]) from the
    /// full `weight` `[out, in]` and whose bias is a copy of `bias` `[out]`
    /// ([`Partition::Replicated`]). The copies are enqueued on `streams.compute`.
    ///
    /// Errors: as [`RowParallelLinear::new`], plus shape errors for the full tensors.
    pub fn from_full(
        streams: &TpStreams,
        comm: &dyn Communicator,
        config: RowParallelConfig,
        weight: &Tensor,
        bias: Option<&Tensor>,
    ) -> Result<RowParallelLinear> {
        const OP: &str = "RowParallelLinear::from_full";
        let (r, p) = (comm.rank(), comm.size());
        config.check(OP, p)?;
        let (out, inp) = (config.output_size, config.input_size);
        check_full(OP, weight, bias, &[out, inp], &[out])?;
        streams.compute.same_device(OP, "weight", weight.device())?;
        if let Some(b) = bias {
            streams.compute.same_device(OP, "bias", b.device())?;
        }
        if bias.is_some() != config.bias {
            return Err(Error::invalid(
                OP,
                "bias",
                format!(
                    "config.bias = {} but bias given: {}",
                    config.bias,
                    bias.is_some()
                ),
            ));
        }
        let c = &streams.compute;
        let w = shard::shard_of(c, weight, Partition::Last, r, p)?;
        let b = bias
            .map(|b| shard::shard_of(c, b, Partition::Replicated, r, p))
            .transpose()?;
        RowParallelLinear::new(config, comm, w, b)
    }

    /// The options.
    pub fn config(&self) -> &RowParallelConfig {
        &self.config
    }

    /// This rank's index in the group the layer was built for.
    pub fn tp_rank(&self) -> usize {
        self.tp_rank
    }

    /// The group size the layer was built for.
    pub fn tp_size(&self) -> usize {
        self.tp_size
    }

    /// The parameter (and activation) dtype.
    pub fn dtype(&self) -> DType {
        self.params.dtype()
    }

    /// This rank's weight shard `[out, in/p]`.
    pub fn weight(&self) -> &Tensor {
        &self.params.weight
    }

    /// The bias `[out]` (the same on every rank), if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.params.bias.as_ref()
    }

    /// The bias the caller must add itself: `Some` when `skip_bias_add` (Megatron's
    /// `output_bias`), else `None`.
    pub fn output_bias(&self) -> Option<&Tensor> {
        self.params
            .bias
            .as_ref()
            .filter(|_| self.config.skip_bias_add)
    }

    /// The accumulated weight gradient `[out, in/p]`, f32.
    pub fn grad_weight(&self) -> &Tensor {
        &self.params.grad_weight
    }

    /// The accumulated bias gradient `[out]`, f32 (the same on every rank).
    pub fn grad_bias(&self) -> Option<&Tensor> {
        self.params.grad_bias.as_ref()
    }

    /// `(parameter, gradient)` pairs — this rank's weight shard, then its bias — for an
    /// optimizer that updates the parameters in place.
    pub fn params_mut(&mut self) -> Vec<(&mut Tensor, &Tensor)> {
        self.params.pairs()
    }

    /// The weight gradient, for an optimizer or a gradient bucket to update in place.
    pub fn grad_weight_mut(&mut self) -> &mut Tensor {
        &mut self.params.grad_weight
    }

    /// The bias gradient, for the op that applies the bias under `skip_bias_add`.
    pub fn grad_bias_mut(&mut self) -> Option<&mut Tensor> {
        self.params.grad_bias.as_mut()
    }

    /// Resets the gradients to zero, in place, on `streams.compute`.
    pub fn zero_grad(&mut self, streams: &TpStreams) -> Result<()> {
        self.params
            .zero_grad("RowParallelLinear::zero_grad", streams)
    }

    /// Validates a call; returns the tokens `t` of `x` (the GEMMs' rows).
    fn check_call(
        &self,
        op: &'static str,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
    ) -> Result<usize> {
        check_group(op, comm, self.tp_rank, self.tp_size)?;
        self.params.check_streams(op, streams)?;
        let t = activation(op, "x", x, streams, self.dtype())?;
        let cols = if self.config.input_is_parallel {
            self.config.input_size / self.tp_size
        } else {
            self.config.input_size
        };
        shape_is(op, "x", x, &[t, cols])?;
        if self.config.sequence_parallel {
            divide(
                format!(
                    "{op}: tokens (first dimension of x {:?}, sequence-major), reduce-scattered \
                     under sequence parallelism",
                    x.dims()
                ),
                t,
                self.tp_size,
                "tensor-parallel size",
            )?;
        }
        Ok(t)
    }

    /// This rank's `[t, in/p]` block of `x`: `x` itself when it already is, else a split copy
    /// on the compute stream.
    fn split_input(&self, streams: &TpStreams, x: &Tensor) -> Result<Option<Tensor>> {
        if self.config.input_is_parallel || self.tp_size == 1 {
            return Ok(None);
        }
        let (p, r) = (self.tp_size, self.tp_rank);
        let mut xp = poisoned(
            streams,
            [x.dims()[0], self.config.input_size / p],
            x.dtype(),
        )?;
        copies::split_last(&streams.compute, x, r, p, &mut xp)?;
        Ok(Some(xp))
    }

    /// Forward: returns the output (see the table in the type's docs), ready on
    /// `streams.compute`.
    ///
    /// Errors (before anything is enqueued): shape, dtype and device errors for `x`,
    /// [`Error::NotDivisible`] when under sequence parallelism the tokens do not divide by the
    /// group size, [`Error::InvalidArgument`] when `comm` is not the layer's group.
    pub fn forward(
        &self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "RowParallelLinear::forward";
        let t = self.check_call(OP, streams, comm, x)?;
        let (p, dtype, out) = (self.tp_size, self.dtype(), self.config.output_size);
        let split = self.split_input(streams, x)?;
        let x_r = split.as_ref().unwrap_or(x);
        let reduced = if p == 1 {
            gemm_bias(streams, x_r, &self.params.weight, None)?
        } else if self.config.sequence_parallel {
            // The GEMM and the reduce-scatter in one call on comm: the communicator may overlap
            // them (the peer communicator's fused kernel), with the same result.
            let mut y = poisoned(streams, [t / p, out], dtype)?;
            streams.comm_after_compute()?;
            streams.span(&streams.comm, "fwd: gemm + reduce_scatter y", || {
                comm.gemm_reduce_scatter(&streams.comm, x_r, &self.params.weight, &mut y)
            })?;
            streams.compute_after_comm()?;
            y
        } else {
            let mut partial = gemm_bias(streams, x_r, &self.params.weight, None)?;
            streams.comm_after_compute()?;
            streams.span(&streams.comm, "fwd: all_reduce y", || {
                comm.all_reduce(&streams.comm, &mut partial, ReduceOp::Sum)
            })?;
            streams.compute_after_comm()?;
            partial
        };
        match self
            .params
            .bias
            .as_ref()
            .filter(|_| !self.config.skip_bias_add)
        {
            None => Ok(reduced),
            Some(b) => {
                let mut y = poisoned(streams, [reduced.dims()[0], out], dtype)?;
                bias_add(&streams.compute, &reduced, b, &mut y)?;
                Ok(y)
            }
        }
    }

    /// Backward: given the forward's input `x` and the output gradient `dy` (shaped like the
    /// forward's output), returns `dx` (shaped like `x`) and accumulates `grad_weight += dy^T
    /// x_r` and (unless `skip_bias_add`) `grad_bias += column sums of dy` (under SP, of the
    /// all-gathered `dy`: the bias gradient summed over the group).
    ///
    /// Under SP `dy` is all-gathered on comm first; without `input_is_parallel` the gather of
    /// `dx` along the features runs on comm while the weight-gradient GEMM runs on compute.
    ///
    /// Errors: as [`RowParallelLinear::forward`], for `x` and `dy`.
    pub fn backward(
        &mut self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        dy: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "RowParallelLinear::backward";
        let t = self.check_call(OP, streams, comm, x)?;
        let (p, dtype) = (self.tp_size, self.dtype());
        let (inp, out) = (self.config.input_size, self.config.output_size);
        let sp = self.config.sequence_parallel && p > 1;
        let dy_rows = if self.config.sequence_parallel {
            t / p
        } else {
            t
        };
        activation(OP, "dy", dy, streams, dtype)?;
        shape_is(OP, "dy", dy, &[dy_rows, out])?;
        let c = &streams.compute;

        // SP: all-gather dy along the tokens (reduce_scatter_to_sp_region's backward).
        let gathered = if sp {
            let mut d = poisoned(streams, [t, out], dtype)?;
            streams.comm_after_compute()?;
            streams.span(&streams.comm, "bwd: all_gather dy", || {
                comm.all_gather(&streams.comm, dy, &mut d)
            })?;
            streams.compute_after_comm()?;
            Some(d)
        } else {
            None
        };
        let dy_total = gathered.as_ref().unwrap_or(dy);

        // dx_r = dy W_r.
        let mut dx_r = poisoned(streams, [t, inp / p], dtype)?;
        streams.span(c, "bwd: dgrad gemm", || {
            gemm(c, dy_total, &self.params.weight, &mut dx_r, &DX_DYW)
        })?;

        // Without a parallel input, gather dx along the features on comm (scatter's backward)...
        let dx = if !self.config.input_is_parallel && p > 1 {
            let mut dx = poisoned(streams, [t, inp], dtype)?;
            streams.comm_after_compute()?;
            streams.span(&streams.comm, "bwd: gather dx", || {
                mappings::gather_from_tp_region_fwd(&streams.comm, comm, &dx_r, &mut dx)
            })?;
            Some(dx)
        } else {
            None
        };

        // ... while the weight gradient is accumulated on compute.
        let split = self.split_input(streams, x)?;
        let x_r = split.as_ref().unwrap_or(x);
        let grad_bias = match self.config.skip_bias_add {
            true => None,
            false => self.params.grad_bias.as_mut(),
        };
        accumulate_grads(
            streams,
            dy_total,
            x_r,
            &mut self.params.grad_weight,
            grad_bias,
        )?;
        match dx {
            Some(dx) => {
                streams.compute_after_comm()?;
                Ok(dx)
            }
            None => Ok(dx_r),
        }
    }
}
