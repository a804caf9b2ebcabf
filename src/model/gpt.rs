//! A small GPT built only from the parallel layers: a vocabulary-parallel embedding, pre-LN
//! transformer blocks (tensor parallel), a final layer norm and a vocabulary-parallel LM head
//! (column-parallel, no bias; untied from the embedding), trained with the vocabulary-parallel
//! cross-entropy. Every weight comes from one seed, so any (dp, pp, tp) layout starts from the
//! same full model: a stage cuts its rank's shard out of the full tensors.
//!
//! One micro-batch is one sequence of `seq` tokens.

use std::sync::Arc;

use crate::comm::Communicator;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::parallel::pp::stage::{downcast, PipelineLoss, PipelineStage, Saved};
use crate::parallel::tp::{vocab_parallel_cross_entropy_bwd, vocab_parallel_cross_entropy_fwd};
use crate::parallel::tp::{
    BlockActivations, BlockWeights, ColumnParallelConfig, ColumnParallelLinear,
    CrossEntropyContext, LayerNormParams, TpStreams, TransformerBlock, TransformerBlockConfig,
    VocabParallelEmbedding,
};
use crate::stream::Stream;
use crate::tensor::Tensor;
use crate::verify::random_vec;

/// The model's sizes and seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GptConfig {
    /// Vocabulary size (divisible by tp).
    pub vocab: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Attention heads (divisible by tp).
    pub heads: usize,
    /// MLP hidden size (divisible by tp).
    pub ffn: usize,
    /// Transformer blocks (divisible by the number of pipeline stages).
    pub layers: usize,
    /// Tokens per sequence (one sequence per micro-batch).
    pub seq: usize,
    /// Seed of every weight.
    pub seed: u64,
    /// The LM head is the embedding matrix (GPT-2's weight tying). Across pipeline stages the
    /// first and last stage each hold a copy whose gradients are summed over the embedding
    /// group before the optimizer step ([`GptStage::reduce_tied_grads`]), so the copies stay
    /// identical.
    pub tie_embeddings: bool,
}

impl GptConfig {
    /// A tiny model that trains in seconds on CPU ranks: vocab 64, hidden 32, 4 heads, ffn 128,
    /// 4 blocks, 16 tokens.
    pub fn tiny() -> Self {
        GptConfig {
            vocab: 64,
            hidden: 32,
            heads: 4,
            ffn: 128,
            layers: 4,
            seq: 16,
            seed: 1234,
            tie_embeddings: true,
        }
    }

    fn block(&self) -> TransformerBlockConfig {
        TransformerBlockConfig::new(self.hidden, self.heads, self.ffn)
    }

    /// Checks the sizes against `stages` pipeline stages and `tp` tensor-parallel ranks.
    ///
    /// Errors: [`Error::InvalidArgument`] for a zero size, [`Error::NotDivisible`] for layers
    /// not divisible by the stages or vocab/heads/ffn not divisible by tp.
    pub fn check(&self, stages: usize, tp: usize) -> Result<()> {
        const OP: &str = "GptConfig::check";
        for (what, v) in [
            ("vocab", self.vocab),
            ("hidden", self.hidden),
            ("heads", self.heads),
            ("ffn", self.ffn),
            ("layers", self.layers),
            ("seq", self.seq),
            ("stages", stages),
            ("tp", tp),
        ] {
            if v == 0 {
                return Err(Error::invalid(OP, what, "must be at least 1"));
            }
        }
        let divisible = |what: &str, dim: usize, parts: usize, why: &str| {
            if dim % parts == 0 {
                Ok(())
            } else {
                Err(Error::NotDivisible {
                    what: what.into(),
                    dim,
                    parts,
                    why: why.into(),
                })
            }
        };
        divisible(
            "layers",
            self.layers,
            stages,
            "pipeline stages (pp x chunks)",
        )?;
        divisible("vocab", self.vocab, tp, "tensor-parallel size")?;
        self.block().check(tp)
    }

    /// The number of weights (the full model).
    pub fn parameters(&self) -> usize {
        let (v, h, f) = (self.vocab, self.hidden, self.ffn);
        let block = 4 * h + 3 * h * h + 3 * h + h * h + h + f * h + f + h * f + h;
        let head = if self.tie_embeddings { 0 } else { v * h };
        v * h + self.layers * block + 2 * h + head
    }
}

/// Seeds of the full tensors: one stream of seeds per tensor, derived from the config's seed.
fn seed(cfg: &GptConfig, tensor: u64) -> u64 {
    cfg.seed.wrapping_mul(1_000_003).wrapping_add(tensor)
}

fn full(
    stream: &Stream,
    cfg: &GptConfig,
    id: u64,
    dims: &[usize],
    lo: f64,
    hi: f64,
) -> Result<Tensor> {
    let n = dims.iter().product();
    Tensor::from_f64(
        stream.device(),
        &random_vec(seed(cfg, id), n, lo, hi),
        dims,
        DType::F32,
    )
}

/// Block `l`'s full weights (the same on every rank): GPT-2-like scales.
fn block_weights(stream: &Stream, cfg: &GptConfig, l: usize) -> Result<Vec<Tensor>> {
    let (h, f) = (cfg.hidden, cfg.ffn);
    let b = 100 + 20 * l as u64;
    let s = |fan_in: usize| 1.0 / (fan_in as f64).sqrt();
    Ok(vec![
        full(stream, cfg, b, &[h], 0.9, 1.1)?,
        full(stream, cfg, b + 1, &[h], -0.05, 0.05)?,
        full(stream, cfg, b + 2, &[3 * h, h], -s(h), s(h))?,
        full(stream, cfg, b + 3, &[3 * h], -0.02, 0.02)?,
        full(stream, cfg, b + 4, &[h, h], -s(h), s(h))?,
        full(stream, cfg, b + 5, &[h], -0.02, 0.02)?,
        full(stream, cfg, b + 6, &[h], 0.9, 1.1)?,
        full(stream, cfg, b + 7, &[h], -0.05, 0.05)?,
        full(stream, cfg, b + 8, &[f, h], -s(h), s(h))?,
        full(stream, cfg, b + 9, &[f], -0.02, 0.02)?,
        full(stream, cfg, b + 10, &[h, f], -s(f), s(f))?,
        full(stream, cfg, b + 11, &[h], -0.02, 0.02)?,
    ])
}

/// One pipeline stage of the GPT on one tensor-parallel rank: the embedding on the first stage,
/// its share of the blocks, the final layer norm and the LM head on the last.
pub struct GptStage {
    embed: Option<VocabParallelEmbedding>,
    blocks: Vec<TransformerBlock>,
    final_ln: Option<LayerNormParams>,
    head: Option<ColumnParallelLinear>,
    tp: Arc<dyn Communicator>,
    eps: f32,
    tied: bool,
}

struct GptSaved {
    /// The input of every block (the embedding output on the first stage).
    inputs: Vec<Tensor>,
    acts: Vec<BlockActivations>,
    /// Last stage: the last block's output, the final LN's output and statistics.
    head: Option<(Tensor, Tensor, Tensor, Tensor)>,
}

impl GptStage {
    /// Stage `stage` of `stages` (global pipeline stage: `chunk * pp + pp_rank`) of the model,
    /// on this rank of the tensor-parallel group `tp`, built on `stream`.
    ///
    /// Errors: as [`GptConfig::check`], and whatever building the layers reports.
    pub fn new(
        cfg: &GptConfig,
        stage: usize,
        stages: usize,
        tp: Arc<dyn Communicator>,
        stream: &Stream,
    ) -> Result<GptStage> {
        cfg.check(stages, tp.size())?;
        if stage >= stages {
            return Err(Error::invalid(
                "GptStage::new",
                "stage",
                format!("stage {stage} of {stages}"),
            ));
        }
        let ts = TpStreams::serial(stream);
        let (h, v, p, r) = (cfg.hidden, cfg.vocab, tp.size(), tp.rank());
        let per = cfg.layers / stages;
        let embed = if stage == 0 {
            let emb = full(stream, cfg, 1, &[v, h], -0.1, 0.1)?;
            let mut shard = Tensor::poisoned(stream.device(), [v / p, h], DType::F32)?;
            crate::ops::shard::split_first(stream, &emb, r, p, &mut shard)?;
            Some(VocabParallelEmbedding::new(&*tp, shard)?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(per);
        for l in stage * per..(stage + 1) * per {
            let t = block_weights(stream, cfg, l)?;
            let w = BlockWeights::from_slice(&t)?;
            blocks.push(TransformerBlock::from_full(&ts, &*tp, cfg.block(), w)?);
        }
        let (final_ln, head) = if stage + 1 == stages {
            let g = full(stream, cfg, 2, &[h], 0.9, 1.1)?;
            let b = full(stream, cfg, 3, &[h], -0.05, 0.05)?;
            // Tied: the embedding matrix itself (the head's vocabulary shard is the embedding's).
            let w = if cfg.tie_embeddings {
                full(stream, cfg, 1, &[v, h], -0.1, 0.1)?
            } else {
                full(
                    stream,
                    cfg,
                    4,
                    &[v, h],
                    -0.5 / (h as f64).sqrt(),
                    0.5 / (h as f64).sqrt(),
                )?
            };
            let hc = ColumnParallelConfig {
                bias: false,
                ..ColumnParallelConfig::new(h, v)
            };
            (
                Some(LayerNormParams::new(g, b)?),
                Some(ColumnParallelLinear::from_full(&ts, &*tp, hc, &w, None)?),
            )
        } else {
            (None, None)
        };
        Ok(GptStage {
            embed,
            blocks,
            final_ln,
            head,
            tp,
            eps: cfg.block().layernorm_eps,
            tied: cfg.tie_embeddings,
        })
    }

    /// With tied embeddings, after the step's last backward and before the optimizer: makes the
    /// gradient of every copy of the tied matrix the sum over all copies. On a stage holding
    /// both the embedding and the head (a single-stage pipeline) the two are added locally; on
    /// the first or last of several stages this copy's gradient is all-reduced (sum) over
    /// `embedding_group` (first and last stage of this rank's (dp, tp) position; Megatron's
    /// embedding group), on `stream`. A no-op without tying or on a middle stage.
    ///
    /// Errors: [`Error::InvalidArgument`] when a first/last stage of a multi-stage pipeline gets
    /// no group; whatever the ops and the collective report.
    pub fn reduce_tied_grads(
        &mut self,
        stream: &Stream,
        embedding_group: Option<&dyn Communicator>,
    ) -> Result<()> {
        const OP: &str = "GptStage::reduce_tied_grads";
        if !self.tied {
            return Ok(());
        }
        match (self.embed.as_mut(), self.head.as_mut()) {
            (Some(e), Some(hd)) => {
                let mut sum = Tensor::poisoned(stream.device(), e.grad.dims(), DType::F32)?;
                crate::ops::bias::add(stream, &e.grad, hd.grad_weight(), &mut sum)?;
                crate::ops::shard::copy(stream, &sum, &mut e.grad)?;
                crate::ops::shard::copy(stream, &sum, hd.grad_weight_mut())?;
                Ok(())
            }
            (Some(_), None) | (None, Some(_)) => {
                let g = embedding_group.ok_or_else(|| {
                    Error::invalid(OP, "embedding_group", "a tied first/last stage needs it")
                })?;
                let grad = match (self.embed.as_mut(), self.head.as_mut()) {
                    (Some(e), _) => &mut e.grad,
                    (_, Some(hd)) => hd.grad_weight_mut(),
                    _ => unreachable!("matched above"),
                };
                g.all_reduce(stream, grad, crate::comm::ReduceOp::Sum)?;
                Ok(())
            }
            (None, None) => Ok(()),
        }
    }

    /// The copies of the tied matrix on this stage (embedding shard, then head shard), empty
    /// on a middle stage or without tying.
    pub fn tied_weights(&self) -> Vec<&Tensor> {
        if !self.tied {
            return Vec::new();
        }
        let mut v = Vec::new();
        if let Some(e) = &self.embed {
            v.push(&e.weight);
        }
        if let Some(hd) = &self.head {
            v.push(hd.weight());
        }
        v
    }

    /// Every `(parameter, gradient)` pair of this stage's shard, in a fixed order (embedding,
    /// blocks, final LN, head), for an optimizer.
    pub fn params_mut(&mut self) -> Vec<(&mut Tensor, &Tensor)> {
        let mut v: Vec<(&mut Tensor, &Tensor)> = Vec::new();
        if let Some(e) = self.embed.as_mut() {
            v.push((&mut e.weight, &e.grad));
        }
        for b in &mut self.blocks {
            v.extend(b.params_mut());
        }
        if let Some(ln) = self.final_ln.as_mut() {
            v.extend(ln.pairs());
        }
        if let Some(hd) = self.head.as_mut() {
            v.extend(hd.params_mut());
        }
        v
    }

    /// Zeroes every gradient on `stream`.
    pub fn zero_grad(&mut self, stream: &Stream) -> Result<()> {
        let ts = TpStreams::serial(stream);
        if let Some(e) = self.embed.as_mut() {
            e.grad = Tensor::zeros(stream.device(), e.grad.dims(), DType::F32)?;
        }
        for b in &mut self.blocks {
            b.zero_grad(&ts)?;
        }
        if let Some(ln) = self.final_ln.as_mut() {
            ln.zero_grad(&ts)?;
        }
        if let Some(hd) = self.head.as_mut() {
            hd.zero_grad(&ts)?;
        }
        Ok(())
    }
}

impl PipelineStage for GptStage {
    fn forward(&mut self, stream: &Stream, input: &Tensor) -> Result<(Tensor, Saved)> {
        let ts = TpStreams::serial(stream);
        let tp = &*self.tp;
        let mut inputs: Vec<Tensor> = Vec::with_capacity(self.blocks.len() + 1);
        if let Some(e) = &self.embed {
            let n = input.numel();
            let h = e.weight.dims()[1];
            let mut x = Tensor::poisoned(stream.device(), [n, h], e.weight.dtype())?;
            e.forward(stream, tp, input, &mut x)?;
            inputs.push(x);
        }
        let mut acts = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let x = inputs.last().unwrap_or(input);
            let (z, a) = b.forward(&ts, tp, x)?;
            inputs.push(z);
            acts.push(a);
        }
        let (out, head) = match (&self.final_ln, &self.head) {
            (Some(ln), Some(hd)) => {
                let x = inputs
                    .pop()
                    .unwrap_or_else(|| unreachable!("a last stage has blocks"));
                let (y, mean, rstd) = ln.forward(stream, &x, self.eps)?;
                let logits = hd.forward(&ts, tp, &y)?;
                (logits, Some((x, y, mean, rstd)))
            }
            _ => (inputs.pop().expect("a stage has blocks"), None),
        };
        Ok((out, Box::new(GptSaved { inputs, acts, head })))
    }

    fn backward_input(
        &mut self,
        stream: &Stream,
        input: &Tensor,
        saved: Saved,
        grad_output: &Tensor,
    ) -> Result<(Tensor, Saved)> {
        let s = downcast::<GptSaved>("GptStage::backward_input", saved)?;
        let ts = TpStreams::serial(stream);
        let tp = &*self.tp;
        let mut dz = match (&mut self.final_ln, &mut self.head, &s.head) {
            (Some(ln), Some(hd), Some((x, y, mean, rstd))) => {
                let dy = hd.backward(&ts, tp, y, grad_output)?;
                ln.backward(stream, &dy, x, mean, rstd)?
            }
            _ => {
                // A stage's output gradient: copy, so the loop below owns it.
                let mut g =
                    Tensor::poisoned(stream.device(), grad_output.dims(), grad_output.dtype())?;
                crate::ops::shard::copy(stream, grad_output, &mut g)?;
                g
            }
        };
        let first = self.embed.is_some();
        for (i, (b, a)) in self.blocks.iter_mut().zip(&s.acts).enumerate().rev() {
            // Block i's input: the previous block's output, the embedding output, or the
            // stage input.
            let x = if first {
                &s.inputs[i]
            } else if i == 0 {
                input
            } else {
                &s.inputs[i - 1]
            };
            dz = b.backward(&ts, tp, x, a, &dz)?;
        }
        if let Some(e) = self.embed.as_mut() {
            e.backward(stream, tp, input, &dz)?;
        }
        Ok((dz, Box::new(())))
    }

    fn backward_weight(&mut self, _stream: &Stream, _input: &Tensor, _saved: Saved) -> Result<()> {
        Ok(())
    }
}

/// The vocabulary-parallel cross-entropy as the pipeline's loss: the mean over every token of
/// every micro-batch of this data-parallel rank.
pub struct GptLoss {
    tp: Arc<dyn Communicator>,
    targets: Vec<Tensor>,
    dloss: Tensor,
    losses: Vec<Option<Tensor>>,
    total: usize,
}

impl GptLoss {
    /// `targets[mb]` are micro-batch `mb`'s next tokens (i32, one per position).
    ///
    /// Errors: [`Error::InvalidArgument`] for no micro-batches or sequences of different lengths.
    pub fn new(stream: &Stream, tp: Arc<dyn Communicator>, targets: &[Vec<i32>]) -> Result<Self> {
        const OP: &str = "GptLoss::new";
        let n = targets.first().map_or(0, Vec::len);
        if n == 0 || targets.iter().any(|t| t.len() != n) {
            return Err(Error::invalid(
                OP,
                "targets",
                "need micro-batches of one non-zero length",
            ));
        }
        let total = n * targets.len();
        let dev = stream.device();
        Ok(GptLoss {
            tp,
            targets: targets
                .iter()
                .map(|t| Tensor::from_slice(dev, t, [n]))
                .collect::<Result<Vec<_>>>()?,
            dloss: Tensor::from_slice(dev, &vec![1.0 / total as f32; n], [n])?,
            losses: (0..targets.len()).map(|_| None).collect(),
            total,
        })
    }

    /// The mean loss of the micro-batches run (waits on `stream`).
    ///
    /// Errors: [`Error::InvalidArgument`] when a micro-batch has not run.
    pub fn mean(&self, stream: &Stream) -> Result<f64> {
        let mut sum = 0.0;
        for (mb, l) in self.losses.iter().enumerate() {
            let l = l.as_ref().ok_or_else(|| {
                Error::invalid("GptLoss::mean", format!("micro-batch {mb}"), "never ran")
            })?;
            sum += l.to_f64_vec(stream)?.iter().sum::<f64>();
        }
        Ok(sum / self.total as f64)
    }
}

impl PipelineLoss for GptLoss {
    fn forward_backward(&mut self, stream: &Stream, mb: usize, output: &Tensor) -> Result<Tensor> {
        let t = self.targets.get(mb).ok_or_else(|| {
            Error::invalid(
                "GptLoss::forward_backward",
                "mb",
                format!("micro-batch {mb}"),
            )
        })?;
        let dev = stream.device();
        let mut losses = Tensor::poisoned(dev, [t.numel()], DType::F32)?;
        let ctx: CrossEntropyContext =
            vocab_parallel_cross_entropy_fwd(stream, &*self.tp, output, t, &mut losses)?;
        let mut d = Tensor::poisoned(dev, output.dims(), output.dtype())?;
        vocab_parallel_cross_entropy_bwd(stream, &ctx, t, &self.dloss, &mut d)?;
        self.losses[mb] = Some(losses);
        Ok(d)
    }
}
