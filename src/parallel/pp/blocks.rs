//! A pipeline stage made of tensor-parallel transformer blocks ([`TransformerBlock`]): the
//! stage's blocks run one after another on the pipeline's compute stream, each over the stage's
//! tensor-parallel group (a group of one for pipeline parallelism alone).
//!
//! A block's backward is not split into input and weight halves, so
//! [`PipelineStage::backward_input`] runs the whole backward and
//! [`PipelineStage::backward_weight`] has nothing left to do: the zero-bubble schedules run
//! correctly but without their benefit on such stages.

use super::stage::{downcast, PipelineStage, Saved};
use crate::comm::Communicator;
use crate::error::{Error, Result};
use crate::parallel::tp::{BlockActivations, TpStreams, TransformerBlock};
use crate::stream::Stream;
use crate::tensor::Tensor;

/// Consecutive transformer blocks on one pipeline rank, over one tensor-parallel group.
pub struct BlockStage {
    blocks: Vec<TransformerBlock>,
    tp: Box<dyn Communicator>,
}

struct BlocksSaved {
    /// Inputs of blocks `1..n` (outputs of `0..n-1`).
    inputs: Vec<Tensor>,
    acts: Vec<BlockActivations>,
}

impl BlockStage {
    /// A stage of `blocks` (in model order) over the tensor-parallel group `tp` they were
    /// built for.
    ///
    /// Errors: [`Error::InvalidArgument`] for no blocks, or a block built for another group
    /// (rank or size).
    pub fn new(blocks: Vec<TransformerBlock>, tp: Box<dyn Communicator>) -> Result<Self> {
        const OP: &str = "BlockStage::new";
        if blocks.is_empty() {
            return Err(Error::invalid(
                OP,
                "blocks",
                "a stage needs at least one block",
            ));
        }
        for (i, b) in blocks.iter().enumerate() {
            if (b.tp_rank(), b.tp_size()) != (tp.rank(), tp.size()) {
                return Err(Error::invalid(
                    OP,
                    format!("block {i}"),
                    format!(
                        "built for rank {} of {}, the group is rank {} of {}",
                        b.tp_rank(),
                        b.tp_size(),
                        tp.rank(),
                        tp.size()
                    ),
                ));
            }
        }
        Ok(BlockStage { blocks, tp })
    }

    /// The blocks, in model order.
    pub fn blocks(&self) -> &[TransformerBlock] {
        &self.blocks
    }

    /// Zeroes every block's gradients on `stream`.
    pub fn zero_grad(&mut self, stream: &Stream) -> Result<()> {
        let ts = TpStreams::serial(stream);
        self.blocks.iter_mut().try_for_each(|b| b.zero_grad(&ts))
    }

    /// After a step's last backward: the sequence-parallel layer-norm gradient all-reduce of
    /// every block (a no-op without sequence parallelism).
    pub fn finish_step(&mut self, stream: &Stream) -> Result<()> {
        let ts = TpStreams::serial(stream);
        let tp = &*self.tp;
        self.blocks
            .iter_mut()
            .try_for_each(|b| b.allreduce_layernorm_grads(&ts, tp))
    }
}

impl PipelineStage for BlockStage {
    fn forward(&mut self, stream: &Stream, input: &Tensor) -> Result<(Tensor, Saved)> {
        let ts = TpStreams::serial(stream);
        let mut inputs: Vec<Tensor> = Vec::with_capacity(self.blocks.len());
        let mut acts = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let x = inputs.last().unwrap_or(input);
            let (z, a) = b.forward(&ts, &*self.tp, x)?;
            inputs.push(z);
            acts.push(a);
        }
        let out = inputs.pop().expect("at least one block");
        Ok((out, Box::new(BlocksSaved { inputs, acts })))
    }

    fn backward_input(
        &mut self,
        stream: &Stream,
        input: &Tensor,
        saved: Saved,
        grad_output: &Tensor,
    ) -> Result<(Tensor, Saved)> {
        let s = downcast::<BlocksSaved>("BlockStage::backward_input", saved)?;
        let ts = TpStreams::serial(stream);
        let mut dz: Option<Tensor> = None;
        for (i, (b, a)) in self.blocks.iter_mut().zip(&s.acts).enumerate().rev() {
            let x = if i == 0 { input } else { &s.inputs[i - 1] };
            let g = dz.as_ref().unwrap_or(grad_output);
            dz = Some(b.backward(&ts, &*self.tp, x, a, g)?);
        }
        Ok((dz.expect("at least one block"), Box::new(())))
    }

    fn backward_weight(&mut self, _stream: &Stream, _input: &Tensor, _saved: Saved) -> Result<()> {
        Ok(())
    }
}
