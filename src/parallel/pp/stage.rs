//! What the executor runs: a model chunk ([`PipelineStage`]) and the loss on the last stage
//! ([`PipelineLoss`]).
//!
//! Each method enqueues its work on the stream it is given and returns without waiting; the
//! executor orders it against the transfers with events.

use std::any::Any;

use crate::error::Result;
use crate::stream::Stream;
use crate::tensor::Tensor;

/// What a forward keeps for its backward, opaque to the executor (and what a split backward's
/// input half leaves for its weight half).
pub type Saved = Box<dyn Any + Send>;

/// One model chunk on one pipeline rank: forward, and a backward that may be split into its
/// input-gradient and weight-gradient halves (the zero-bubble schedules run them apart).
///
/// The executor keeps the chunk's `input` alive from the forward until the weight half ends
/// and passes it to every call, so an implementation need not copy it.
pub trait PipelineStage {
    /// Forward of one micro-batch: the output (shaped like the next stage's input) and what the
    /// backward needs. Must be deterministic: recomputation runs it twice and expects the same
    /// activations.
    fn forward(&mut self, stream: &Stream, input: &Tensor) -> Result<(Tensor, Saved)>;

    /// Input-gradient half of the backward: returns `d loss / d input` and what the weight
    /// half needs.
    fn backward_input(
        &mut self,
        stream: &Stream,
        input: &Tensor,
        saved: Saved,
        grad_output: &Tensor,
    ) -> Result<(Tensor, Saved)>;

    /// Weight-gradient half: accumulates this micro-batch's parameter gradients.
    fn backward_weight(&mut self, stream: &Stream, input: &Tensor, saved: Saved) -> Result<()>;

    /// The full backward: input gradient returned, parameter gradients accumulated. The default
    /// runs the two halves back to back.
    fn backward(
        &mut self,
        stream: &Stream,
        input: &Tensor,
        saved: Saved,
        grad_output: &Tensor,
    ) -> Result<Tensor> {
        let (dx, rest) = self.backward_input(stream, input, saved, grad_output)?;
        self.backward_weight(stream, input, rest)?;
        Ok(dx)
    }
}

/// The loss, run on the rank that holds the last stage right after that stage's forward.
pub trait PipelineLoss {
    /// Loss forward and backward of micro-batch `mb` from the last stage's `output`: records the
    /// loss (for the caller to read after the step) and returns `d loss / d output`, with the
    /// mini-batch scaling already applied (a mean over the whole mini-batch divides by every
    /// micro-batch's rows, not just this one's).
    fn forward_backward(&mut self, stream: &Stream, mb: usize, output: &Tensor) -> Result<Tensor>;
}

/// Downcasts a [`Saved`] a stage made itself, with a typed error instead of a panic when the
/// executor hands it something else (a bug, but one that must not crash a rank).
pub fn downcast<T: Any>(op: &'static str, saved: Saved) -> Result<Box<T>> {
    saved.downcast::<T>().map_err(|_| {
        crate::error::Error::invalid(op, "saved", "not the state this stage saved in its forward")
    })
}
