//! The tensor-parallel region mappings of Megatron-Core (`tensor_parallel/mappings.py`), as
//! named pairs of functions: `<mapping>_fwd` and `<mapping>_bwd`, the backward being the adjoint
//! of the forward. `w` is the group size (`comm.size()`), `r` this rank (`comm.rank()`).
//!
//! | mapping | forward | backward | Megatron-Core |
//! |---------|---------|----------|---------------|
//! | `copy_to_tp_region` (`f`) | identity | all-reduce (sum) | `copy_to_tensor_model_parallel_region` |
//! | `reduce_from_tp_region` (`g`) | all-reduce (sum) | identity | `reduce_from_tensor_model_parallel_region` |
//! | `scatter_to_tp_region` | split the last dimension, keep block `r` | all-gather along the last dimension | `scatter_to_tensor_model_parallel_region` |
//! | `gather_from_tp_region` | all-gather along the last dimension | split the last dimension, keep block `r` | `gather_from_tensor_model_parallel_region` |
//! | `scatter_to_sp_region` | split the first (sequence) dimension, keep chunk `r` | all-gather along the first dimension | `scatter_to_sequence_parallel_region` |
//! | `gather_from_sp_region` | all-gather along the first dimension | reduce-scatter (sum) along the first dimension | `gather_from_sequence_parallel_region` (`tensor_parallel_output_grad=True`) |
//! | `reduce_scatter_to_sp_region` | reduce-scatter (sum) along the first dimension | all-gather along the first dimension | `reduce_scatter_to_sequence_parallel_region` |
//!
//! Shapes (input -> output): identity and all-reduce keep the shape; a split along the last
//! dimension maps `[..., c]` to `[..., c/w]` and the gather back; along the first dimension
//! `[s, ...]` to `[s/w, ...]` and back; the reduce-scatter maps `[s, ...]` to `[s/w, ...]`. A
//! dimension that must split and does not divide by `w` is [`Error::NotDivisible`] (naming the
//! dimension, its size and the tensor-parallel size).
//!
//! Adjoints: a tensor is either replicated (the same on every rank: `f`'s input, `g`'s output,
//! the scatters' inputs, `gather_from_tp_region`'s output) or per-rank (everything else). With
//! the inner product that counts a replicated tensor once and sums a per-rank one over the
//! ranks, `<fwd(x), y> = <x, bwd(y)>` for every mapping (checked by `tests/tp_mappings.rs`).
//!
//! Conventions:
//! - **Caller-provided outputs**, as for every op: the output (`y` forward, `dx` backward) has
//!   the shape above and the input's dtype (f32 or bf16, what every [`Communicator`] carries),
//!   lives on the stream's device and is not the input. Everything is validated before anything is enqueued, so a rejected call
//!   leaves the stream and the communicator's call sequence untouched. Every rank of the group
//!   must make the same calls (collectives are matched by sequence number; a mismatch is
//!   [`Error::CollectiveMismatch`] on every rank).
//! - **Asynchronous, stream-ordered**: copies and collectives alike are enqueued on `stream`, and
//!   nothing waits on the host. The returned [`Work`] stands for the mapping's last step:
//!   `work.wait()` blocks the host until the output is ready (and reports any failure),
//!   `other.wait(work.event())` orders another stream after it; later work on `stream` needs
//!   neither.
//! - **Group size 1**: every mapping is a plain copy, no communicator call (Megatron returns the
//!   input itself; with a caller-provided output that is one copy).
//! - **Extra copies** compared with Megatron: [`Communicator::all_reduce`] works in place, so the
//!   all-reduce mappings copy the input into the output and reduce there (one more pass over
//!   the tensor). The gather along the last dimension is an all-gather along the first into a
//!   scratch `[w, ..., c/w]` tensor allocated per call, then [`shard::concat_last_stacked`]
//!   (one more copy of the output, like Megatron's `torch.cat`); the communicator has no
//!   strided collective.
//! - Sums are taken in rank order with f32 accumulation: bitwise the same result on every rank
//!   and every run.

use crate::comm::{Communicator, ReduceOp, Work};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::shard;
use crate::stream::Stream;
use crate::tensor::Tensor;
use std::sync::{Arc, Mutex};

// ---- copy_to_tp_region (f) -------------------------------------------------------------------

/// `f` forward: `y = x` (enters a tensor-parallel region with a replicated input).
pub fn copy_to_tp_region_fwd(
    stream: &Stream,
    comm: &dyn Communicator,
    x: &Tensor,
    y: &mut Tensor,
) -> Result<Work> {
    identity("copy_to_tp_region_fwd", stream, comm, x, y)
}

/// `f` backward: `dx = sum over ranks of dy` (all-reduce).
pub fn copy_to_tp_region_bwd(
    stream: &Stream,
    comm: &dyn Communicator,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<Work> {
    all_reduce("copy_to_tp_region_bwd", stream, comm, dy, dx)
}

// ---- reduce_from_tp_region (g) ---------------------------------------------------------------

/// `g` forward: `y = sum over ranks of x` (all-reduce of partial results).
pub fn reduce_from_tp_region_fwd(
    stream: &Stream,
    comm: &dyn Communicator,
    x: &Tensor,
    y: &mut Tensor,
) -> Result<Work> {
    all_reduce("reduce_from_tp_region_fwd", stream, comm, x, y)
}

/// `g` backward: `dx = dy` (identity).
pub fn reduce_from_tp_region_bwd(
    stream: &Stream,
    comm: &dyn Communicator,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<Work> {
    identity("reduce_from_tp_region_bwd", stream, comm, dy, dx)
}

// ---- scatter_to_tp_region --------------------------------------------------------------------

/// Forward: `y = x[..., r*c/w .. (r+1)*c/w]`, this rank's block of the last dimension.
pub fn scatter_to_tp_region_fwd(
    stream: &Stream,
    comm: &dyn Communicator,
    x: &Tensor,
    y: &mut Tensor,
) -> Result<Work> {
    split("scatter_to_tp_region_fwd", Axis::Last, stream, comm, x, y)
}

/// Backward: `dx = [dy of rank 0 | ... | dy of rank w-1]` along the last dimension.
pub fn scatter_to_tp_region_bwd(
    stream: &Stream,
    comm: &dyn Communicator,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<Work> {
    gather("scatter_to_tp_region_bwd", Axis::Last, stream, comm, dy, dx)
}

// ---- gather_from_tp_region -------------------------------------------------------------------

/// Forward: `y = [x of rank 0 | ... | x of rank w-1]` along the last dimension.
pub fn gather_from_tp_region_fwd(
    stream: &Stream,
    comm: &dyn Communicator,
    x: &Tensor,
    y: &mut Tensor,
) -> Result<Work> {
    gather("gather_from_tp_region_fwd", Axis::Last, stream, comm, x, y)
}

/// Backward: `dx = dy[..., r*c/w .. (r+1)*c/w]`.
pub fn gather_from_tp_region_bwd(
    stream: &Stream,
    comm: &dyn Communicator,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<Work> {
    split(
        "gather_from_tp_region_bwd",
        Axis::Last,
        stream,
        comm,
        dy,
        dx,
    )
}

// ---- scatter_to_sp_region --------------------------------------------------------------------

/// Forward: `y = x[r*s/w .. (r+1)*s/w, ...]`, this rank's chunk of the sequence.
pub fn scatter_to_sp_region_fwd(
    stream: &Stream,
    comm: &dyn Communicator,
    x: &Tensor,
    y: &mut Tensor,
) -> Result<Work> {
    split("scatter_to_sp_region_fwd", Axis::First, stream, comm, x, y)
}

/// Backward: `dx` = every rank's `dy` concatenated along the first dimension.
pub fn scatter_to_sp_region_bwd(
    stream: &Stream,
    comm: &dyn Communicator,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<Work> {
    gather(
        "scatter_to_sp_region_bwd",
        Axis::First,
        stream,
        comm,
        dy,
        dx,
    )
}

// ---- gather_from_sp_region -------------------------------------------------------------------

/// Forward: `y` = every rank's `x` concatenated along the first dimension.
pub fn gather_from_sp_region_fwd(
    stream: &Stream,
    comm: &dyn Communicator,
    x: &Tensor,
    y: &mut Tensor,
) -> Result<Work> {
    gather("gather_from_sp_region_fwd", Axis::First, stream, comm, x, y)
}

/// Backward: `dx` = chunk `r` (first dimension) of the sum over ranks of `dy`
/// (reduce-scatter: the region after the gather is tensor-parallel, so each rank holds a partial
/// gradient; Megatron's `tensor_parallel_output_grad=True`).
pub fn gather_from_sp_region_bwd(
    stream: &Stream,
    comm: &dyn Communicator,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<Work> {
    reduce_scatter("gather_from_sp_region_bwd", stream, comm, dy, dx)
}

// ---- reduce_scatter_to_sp_region -------------------------------------------------------------

/// Forward: `y` = chunk `r` (first dimension) of the sum over ranks of `x`.
pub fn reduce_scatter_to_sp_region_fwd(
    stream: &Stream,
    comm: &dyn Communicator,
    x: &Tensor,
    y: &mut Tensor,
) -> Result<Work> {
    reduce_scatter("reduce_scatter_to_sp_region_fwd", stream, comm, x, y)
}

/// Backward: `dx` = every rank's `dy` concatenated along the first dimension.
pub fn reduce_scatter_to_sp_region_bwd(
    stream: &Stream,
    comm: &dyn Communicator,
    dy: &Tensor,
    dx: &mut Tensor,
) -> Result<Work> {
    gather(
        "reduce_scatter_to_sp_region_bwd",
        Axis::First,
        stream,
        comm,
        dy,
        dx,
    )
}

// ---- the primitives --------------------------------------------------------------------------

/// The dimension a split or gather works on.
#[derive(Clone, Copy)]
enum Axis {
    /// The sequence dimension (sequence parallelism).
    First,
    /// The hidden dimension (tensor parallelism).
    Last,
}

impl Axis {
    fn index(self, dims: &[usize]) -> usize {
        match self {
            Axis::First => 0,
            Axis::Last => dims.len() - 1,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Axis::First => "first dimension (sequence)",
            Axis::Last => "last dimension (hidden)",
        }
    }
}

/// The input's dims, once it is known to have rank >= 1 and no zero dimension.
fn input_dims(op: &'static str, input: &Tensor) -> Result<Vec<usize>> {
    if input.shape().rank() == 0 {
        return Err(Error::RankMismatch {
            op,
            what: "input (at least)".into(),
            expected: 1,
            got: vec![],
        });
    }
    if input.shape().has_zero_dim() {
        return Err(Error::ZeroDim {
            op,
            what: "input".into(),
            shape: input.dims().to_vec(),
        });
    }
    Ok(input.dims().to_vec())
}

/// `dims[axis] / w`, or [`Error::NotDivisible`] naming the dimension and the group size.
fn divide(op: &'static str, axis: Axis, dims: &[usize], w: usize) -> Result<usize> {
    let d = dims[axis.index(dims)];
    if d % w != 0 {
        return Err(Error::NotDivisible {
            what: format!("{op}: {} of the input {dims:?}", axis.name()),
            dim: d,
            parts: w,
            why: "tensor-parallel size".into(),
        });
    }
    Ok(d / w)
}

/// Devices, dtypes and the output's shape (`want`), before anything is enqueued.
fn check(
    op: &'static str,
    stream: &Stream,
    input: &Tensor,
    output: &Tensor,
    want: &[usize],
) -> Result<()> {
    stream.same_device(op, "input", input.device())?;
    stream.same_device(op, "output", output.device())?;
    if !matches!(input.dtype(), DType::F32 | DType::BF16) {
        return Err(Error::UnsupportedDType {
            op,
            what: "input (communicators carry f32 and bf16)".into(),
            dtype: input.dtype(),
        });
    }
    if output.dtype() != input.dtype() {
        return Err(Error::DTypeMismatch {
            op,
            what: "output".into(),
            expected: input.dtype(),
            got: output.dtype(),
        });
    }
    if output.dims() != want {
        return Err(Error::ShapeMismatch {
            op,
            what: "output".into(),
            expected: want.to_vec(),
            got: output.dims().to_vec(),
        });
    }
    Ok(())
}

/// A [`Work`] for what has been enqueued on `stream` so far (its failure, if any, is the
/// stream's: a failed step makes the stream skip the rest).
fn done(stream: &Stream) -> Result<Work> {
    Ok(Work::new(
        stream.record_event()?,
        stream.clone(),
        Arc::new(Mutex::new(None)),
    ))
}

fn copy(stream: &Stream, input: &Tensor, output: &mut Tensor) -> Result<Work> {
    shard::copy(stream, input, output)?;
    done(stream)
}

fn identity(
    op: &'static str,
    stream: &Stream,
    _comm: &dyn Communicator,
    input: &Tensor,
    output: &mut Tensor,
) -> Result<Work> {
    check(op, stream, input, output, &input_dims(op, input)?)?;
    copy(stream, input, output)
}

fn all_reduce(
    op: &'static str,
    stream: &Stream,
    comm: &dyn Communicator,
    input: &Tensor,
    output: &mut Tensor,
) -> Result<Work> {
    check(op, stream, input, output, &input_dims(op, input)?)?;
    if comm.size() == 1 {
        return copy(stream, input, output);
    }
    shard::copy(stream, input, output)?;
    comm.all_reduce(stream, output, ReduceOp::Sum)
}

fn split(
    op: &'static str,
    axis: Axis,
    stream: &Stream,
    comm: &dyn Communicator,
    input: &Tensor,
    output: &mut Tensor,
) -> Result<Work> {
    let (w, r) = (comm.size(), comm.rank());
    let mut want = input_dims(op, input)?;
    let i = axis.index(&want);
    want[i] = divide(op, axis, &want, w)?;
    check(op, stream, input, output, &want)?;
    if w == 1 {
        return copy(stream, input, output);
    }
    match axis {
        Axis::First => shard::split_first(stream, input, r, w, output)?,
        Axis::Last => shard::split_last(stream, input, r, w, output)?,
    }
    done(stream)
}

fn gather(
    op: &'static str,
    axis: Axis,
    stream: &Stream,
    comm: &dyn Communicator,
    input: &Tensor,
    output: &mut Tensor,
) -> Result<Work> {
    let w = comm.size();
    let mut want = input_dims(op, input)?;
    let i = axis.index(&want);
    want[i] *= w;
    check(op, stream, input, output, &want)?;
    if w == 1 {
        return copy(stream, input, output);
    }
    match axis {
        Axis::First => comm.all_gather(stream, input, output),
        Axis::Last => {
            // All-gather along the first dimension into [w, ..., c/w], then interleave the
            // blocks row by row. The scratch buffer lives as long as the work that uses it.
            let mut dims = vec![w];
            dims.extend_from_slice(input.dims());
            let mut scratch = Tensor::zeros(input.device(), dims, input.dtype())?;
            comm.all_gather(stream, input, &mut scratch)?;
            shard::concat_last_stacked(stream, &scratch, output)?;
            done(stream)
        }
    }
}

fn reduce_scatter(
    op: &'static str,
    stream: &Stream,
    comm: &dyn Communicator,
    input: &Tensor,
    output: &mut Tensor,
) -> Result<Work> {
    let w = comm.size();
    let mut want = input_dims(op, input)?;
    want[0] = divide(op, Axis::First, &want, w)?;
    check(op, stream, input, output, &want)?;
    if w == 1 {
        return copy(stream, input, output);
    }
    comm.reduce_scatter(stream, input, output, ReduceOp::Sum)
}
