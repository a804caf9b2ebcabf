//! A pre-LayerNorm transformer block (Megatron's `TransformerLayer` with the default GPT spec,
//! dropout off): `y = x + Attn(LN1(x))`, `z = y + MLP(LN2(y))`, built from
//! [`ParallelAttention`] and [`ParallelMlp`], forward and backward.
//!
//! | | input `x` | output `z` |
//! |-|-----------|------------|
//! | default | `[s, h]`, the same on every rank | `[s, h]` on every rank |
//! | `sequence_parallel` | `[s/p, h]`, this rank's chunk of the tokens | `[s/p, h]` |
//!
//! **Layer norms.** Their parameters (`gamma`, `beta`, `[h]` each, in the parameter dtype) are
//! replicated on every rank, with f32 gradients that accumulate ([`LayerNormParams`]). Without
//! sequence parallelism every rank normalizes all the tokens and gets the full (identical)
//! gradients. **With sequence parallelism** every rank normalizes only its `s/p` tokens, so its
//! `gamma`/`beta` gradients are *partial sums* over its chunk: they must be summed over the
//! tensor-parallel group before the optimizer uses them, or the replicas diverge. As in
//! Megatron-Core (`finalize_model_grads` -> `_allreduce_layernorm_grads`, once per step after
//! all the micro-batches' backwards), [`TransformerBlock::backward`] does **not** reduce them;
//! call [`TransformerBlock::allreduce_layernorm_grads`] once after the last backward of a step
//! (it is a no-op without sequence parallelism or with `p == 1`).
//!
//! Conventions (streams, f32 gradients that accumulate, validation before anything is
//! enqueued): see [`super::linear`]. The residual sums and the layer norms run on
//! `streams.compute`; the layer norms' statistics (`mean`, `rstd`) are f32.

use super::attention::{AttentionActivations, ParallelAttention, ParallelAttentionConfig};
use super::linear::{check_activation, TpStreams};
use super::mlp::{MlpActivations, ParallelMlp, ParallelMlpConfig};
use super::shard::{shard_of, Partition};
use crate::comm::{Communicator, ReduceOp};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::bias::{add, column_sum};
use crate::ops::{layernorm_bwd, layernorm_fwd};
use crate::stream::Stream;
use crate::tensor::Tensor;

/// The options of a [`TransformerBlock`].
#[derive(Clone, Debug, PartialEq)]
pub struct TransformerBlockConfig {
    /// `h`: the input and output features.
    pub hidden_size: usize,
    /// The attention heads (split over the group).
    pub num_heads: usize,
    /// The MLP's intermediate features (split over the group).
    pub ffn_hidden_size: usize,
    /// Whether the attention's and the MLP's linear layers have biases.
    pub bias: bool,
    /// The input and output are this rank's chunk of the tokens (`[s/p, h]`).
    pub sequence_parallel: bool,
    /// The layer norms' epsilon.
    pub layernorm_eps: f32,
}

impl TransformerBlockConfig {
    /// `h` features, `num_heads` heads, an MLP of `ffn` features, biases, no sequence
    /// parallelism, `eps = 1e-5`.
    pub fn new(hidden_size: usize, num_heads: usize, ffn_hidden_size: usize) -> Self {
        TransformerBlockConfig {
            hidden_size,
            num_heads,
            ffn_hidden_size,
            bias: true,
            sequence_parallel: false,
            layernorm_eps: 1e-5,
        }
    }

    /// The attention's options.
    pub fn attention(&self) -> ParallelAttentionConfig {
        ParallelAttentionConfig {
            hidden_size: self.hidden_size,
            num_heads: self.num_heads,
            bias: self.bias,
            sequence_parallel: self.sequence_parallel,
        }
    }

    /// The MLP's options (the output bias added by the MLP).
    pub fn mlp(&self) -> ParallelMlpConfig {
        ParallelMlpConfig {
            hidden_size: self.hidden_size,
            ffn_hidden_size: self.ffn_hidden_size,
            bias: self.bias,
            sequence_parallel: self.sequence_parallel,
            skip_bias_add: false,
        }
    }

    /// Validates the options for a group of `p` ranks.
    ///
    /// Errors: [`Error::InvalidArgument`] for `p == 0`, no heads, a zero size or a bad epsilon;
    /// [`Error::NotDivisible`] when `hidden % p`, `hidden % heads`, `heads % p` or `ffn % p` is
    /// not zero.
    pub fn check(&self, p: usize) -> Result<()> {
        const OP: &str = "TransformerBlockConfig::check";
        if p == 0 {
            return Err(Error::invalid(
                OP,
                "tensor-parallel size",
                "must be at least 1",
            ));
        }
        if self.hidden_size == 0 || self.ffn_hidden_size == 0 {
            return Err(Error::invalid(
                OP,
                "sizes",
                "hidden and ffn must be at least 1",
            ));
        }
        if !(self.layernorm_eps > 0.0 && self.layernorm_eps.is_finite()) {
            return Err(Error::invalid(
                OP,
                "layernorm_eps",
                format!("{} must be positive and finite", self.layernorm_eps),
            ));
        }
        for (what, d) in [
            ("hidden_size", self.hidden_size),
            ("ffn_hidden_size", self.ffn_hidden_size),
        ] {
            if d % p != 0 {
                return Err(Error::NotDivisible {
                    what: format!("{OP}: {what}"),
                    dim: d,
                    parts: p,
                    why: "tensor-parallel size".into(),
                });
            }
        }
        self.attention().check(p).map(|_| ())
    }

    /// The tokens of this rank's input for a sequence of `s` tokens over `p` ranks: `s / p`
    /// under sequence parallelism, else `s`.
    ///
    /// Errors: [`Error::NotDivisible`] when sequence parallel and `s % p != 0`,
    /// [`Error::InvalidArgument`] when `p == 0`.
    pub fn local_tokens(&self, s: usize, p: usize) -> Result<usize> {
        const OP: &str = "TransformerBlockConfig::local_tokens";
        if p == 0 {
            return Err(Error::invalid(
                OP,
                "tensor-parallel size",
                "must be at least 1",
            ));
        }
        if !self.sequence_parallel {
            return Ok(s);
        }
        if s % p != 0 {
            return Err(Error::NotDivisible {
                what: format!("{OP}: sequence length (sequence parallelism splits the tokens)"),
                dim: s,
                parts: p,
                why: "tensor-parallel size".into(),
            });
        }
        Ok(s / p)
    }
}

/// A layer norm's replicated parameters (`[h]`, the parameter dtype) and their f32 gradients.
#[derive(Debug)]
pub struct LayerNormParams {
    gamma: Tensor,
    beta: Tensor,
    grad_gamma: Tensor,
    grad_beta: Tensor,
}

impl LayerNormParams {
    /// `(gamma, its gradient)` and `(beta, its gradient)`, for an optimizer.
    pub fn pairs(&mut self) -> Vec<(&mut Tensor, &Tensor)> {
        vec![
            (&mut self.gamma, &self.grad_gamma),
            (&mut self.beta, &self.grad_beta),
        ]
    }

    /// `LN(x)` over the last dimension with epsilon `eps`, and the row statistics (`mean`,
    /// `rstd`, f32) the backward needs, on `stream`.
    ///
    /// Errors: the shape, dtype and device errors of [`layernorm_fwd`].
    pub fn forward(
        &self,
        stream: &Stream,
        x: &Tensor,
        eps: f32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (dev, rows) = (stream.device(), x.dims().first().copied().unwrap_or(0));
        let mut y = Tensor::poisoned(dev, x.dims(), x.dtype())?;
        let mut mean = Tensor::poisoned(dev, [rows], DType::F32)?;
        let mut rstd = Tensor::poisoned(dev, [rows], DType::F32)?;
        layernorm_fwd(
            stream,
            x,
            &self.gamma,
            &self.beta,
            eps,
            &mut y,
            &mut mean,
            &mut rstd,
        )?;
        Ok((y, mean, rstd))
    }

    /// The input gradient of [`LayerNormParams::forward`]; accumulates `gamma`'s and `beta`'s
    /// gradients (f32) on `stream`.
    ///
    /// Errors: the shape, dtype and device errors of [`layernorm_bwd`].
    pub fn backward(
        &mut self,
        stream: &Stream,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
    ) -> Result<Tensor> {
        let (dev, dtype) = (stream.device(), x.dtype());
        let h = self.gamma.dims()[0];
        let mut dx = Tensor::poisoned(dev, x.dims(), dtype)?;
        let mut dg = Tensor::poisoned(dev, [h], dtype)?;
        let mut db = Tensor::poisoned(dev, [h], dtype)?;
        layernorm_bwd(
            stream,
            dy,
            x,
            &self.gamma,
            mean,
            rstd,
            &mut dx,
            &mut dg,
            &mut db,
        )?;
        // The op overwrites its (parameter-dtype) dgamma/dbeta: add them into the f32 grads.
        column_sum(stream, &dg, &mut self.grad_gamma, true)?;
        column_sum(stream, &db, &mut self.grad_beta, true)?;
        Ok(dx)
    }

    /// Parameters from `gamma` and `beta` (`[h]` each, same dtype and device); gradients are
    /// created zeroed (f32).
    ///
    /// Errors: shape, dtype and device errors.
    pub fn new(gamma: Tensor, beta: Tensor) -> Result<LayerNormParams> {
        const OP: &str = "LayerNormParams::new";
        if gamma.shape().rank() != 1 || gamma.dims()[0] == 0 {
            return Err(Error::invalid(
                OP,
                "gamma",
                "must be a non-empty vector [h]",
            ));
        }
        if beta.dims() != gamma.dims() {
            return Err(Error::ShapeMismatch {
                op: OP,
                what: "beta".into(),
                expected: gamma.dims().to_vec(),
                got: beta.dims().to_vec(),
            });
        }
        if beta.dtype() != gamma.dtype() {
            return Err(Error::DTypeMismatch {
                op: OP,
                what: "beta".into(),
                expected: gamma.dtype(),
                got: beta.dtype(),
            });
        }
        if !gamma.device().compatible(beta.device()) {
            return Err(Error::DeviceMismatch {
                op: OP,
                what: "beta".into(),
                expected: gamma.device().label().to_string(),
                got: beta.device().label().to_string(),
            });
        }
        let dev = gamma.device().clone();
        let h = gamma.dims()[0];
        Ok(LayerNormParams {
            grad_gamma: Tensor::zeros(&dev, [h], DType::F32)?,
            grad_beta: Tensor::zeros(&dev, [h], DType::F32)?,
            gamma,
            beta,
        })
    }

    /// `gamma` `[h]`.
    pub fn gamma(&self) -> &Tensor {
        &self.gamma
    }

    /// `beta` `[h]`.
    pub fn beta(&self) -> &Tensor {
        &self.beta
    }

    /// The accumulated `gamma` gradient `[h]`, f32 (partial per rank under sequence
    /// parallelism until [`TransformerBlock::allreduce_layernorm_grads`]).
    pub fn grad_gamma(&self) -> &Tensor {
        &self.grad_gamma
    }

    /// The accumulated `beta` gradient `[h]`, f32 (partial under sequence parallelism, as
    /// [`LayerNormParams::grad_gamma`]).
    pub fn grad_beta(&self) -> &Tensor {
        &self.grad_beta
    }

    /// The gradients, mutable (an optimizer or a gradient bucket).
    pub fn grads_mut(&mut self) -> (&mut Tensor, &mut Tensor) {
        (&mut self.grad_gamma, &mut self.grad_beta)
    }

    /// Resets both gradients to zero, in place, on `streams.compute`.
    pub fn zero_grad(&mut self, streams: &TpStreams) -> Result<()> {
        let c = &streams.compute;
        for g in [&mut self.grad_gamma, &mut self.grad_beta] {
            let n = g.numel();
            g.copy_from_slice(c, &vec![0.0f32; n])?;
        }
        Ok(())
    }
}

/// What [`TransformerBlock::forward`] keeps for the backward.
#[derive(Debug)]
pub struct BlockActivations {
    /// `LN1(x)`, shaped like `x`: the attention's input.
    pub ln1_out: Tensor,
    /// LN1's row means `[t_local]`, f32.
    pub ln1_mean: Tensor,
    /// LN1's row `1/sqrt(var + eps)` `[t_local]`, f32.
    pub ln1_rstd: Tensor,
    /// The attention's activations.
    pub attn: AttentionActivations,
    /// `y = x + Attn(LN1(x))`, shaped like `x`: LN2's input.
    pub residual: Tensor,
    /// `LN2(y)`, shaped like `x`: the MLP's input.
    pub ln2_out: Tensor,
    /// LN2's row means, f32.
    pub ln2_mean: Tensor,
    /// LN2's row `rstd`, f32.
    pub ln2_rstd: Tensor,
    /// The MLP's activations.
    pub mlp: MlpActivations,
}

/// The full (unsharded) weights of a block, the same on every rank, for
/// [`TransformerBlock::from_full`]: the attention's in the layout of [`super::attention`]
/// (`w_qkv` `[3h, h]` interleaved per head, `b_qkv` `[3h]`, `w_proj` `[h, h]`, `b_proj` `[h]`),
/// the MLP's (`w_fc1` `[ffn, h]`, `b_fc1` `[ffn]`, `w_fc2` `[h, ffn]`, `b_fc2` `[h]`), the layer
/// norms' `[h]` each. Biases iff `config.bias`.
#[derive(Clone, Copy, Debug)]
pub struct BlockWeights<'a> {
    /// LN1's `gamma`.
    pub ln1_gamma: &'a Tensor,
    /// LN1's `beta`.
    pub ln1_beta: &'a Tensor,
    /// The fused QKV weight.
    pub w_qkv: &'a Tensor,
    /// The fused QKV bias.
    pub b_qkv: Option<&'a Tensor>,
    /// The attention's output projection.
    pub w_proj: &'a Tensor,
    /// Its bias.
    pub b_proj: Option<&'a Tensor>,
    /// LN2's `gamma`.
    pub ln2_gamma: &'a Tensor,
    /// LN2's `beta`.
    pub ln2_beta: &'a Tensor,
    /// The MLP's first weight.
    pub w_fc1: &'a Tensor,
    /// Its bias.
    pub b_fc1: Option<&'a Tensor>,
    /// The MLP's second weight.
    pub w_fc2: &'a Tensor,
    /// Its bias.
    pub b_fc2: Option<&'a Tensor>,
}

impl<'a> BlockWeights<'a> {
    /// The weights of a block with biases from the twelve tensors in field order: LN1 gamma,
    /// LN1 beta, QKV weight, QKV bias, projection weight, projection bias, LN2 gamma, LN2 beta,
    /// FC1 weight, FC1 bias, FC2 weight, FC2 bias.
    ///
    /// Errors: [`Error::InvalidArgument`] unless there are exactly twelve.
    pub fn from_slice(t: &'a [Tensor]) -> Result<BlockWeights<'a>> {
        let [ln1_gamma, ln1_beta, w_qkv, b_qkv, w_proj, b_proj, ln2_gamma, ln2_beta, w_fc1, b_fc1, w_fc2, b_fc2] =
            t
        else {
            return Err(Error::invalid(
                "BlockWeights::from_slice",
                "t",
                format!("{} tensors, a block with biases has 12", t.len()),
            ));
        };
        Ok(BlockWeights {
            ln1_gamma,
            ln1_beta,
            w_qkv,
            b_qkv: Some(b_qkv),
            w_proj,
            b_proj: Some(b_proj),
            ln2_gamma,
            ln2_beta,
            w_fc1,
            b_fc1: Some(b_fc1),
            w_fc2,
            b_fc2: Some(b_fc2),
        })
    }
}

/// The pre-LN transformer block (see the [module docs](self)).
#[derive(Debug)]
pub struct TransformerBlock {
    config: TransformerBlockConfig,
    tp_rank: usize,
    tp_size: usize,
    ln1: LayerNormParams,
    attn: ParallelAttention,
    ln2: LayerNormParams,
    mlp: ParallelMlp,
}

impl TransformerBlock {
    /// A block from its parts, which must match `config` (same group, dtype and device).
    ///
    /// Errors: as [`TransformerBlockConfig::check`]; [`Error::InvalidArgument`] when a part's
    /// options or group do not match the config; shape, dtype and device errors for the layer
    /// norms.
    pub fn new(
        config: TransformerBlockConfig,
        ln1: LayerNormParams,
        attn: ParallelAttention,
        ln2: LayerNormParams,
        mlp: ParallelMlp,
    ) -> Result<TransformerBlock> {
        const OP: &str = "TransformerBlock::new";
        let (r, p) = (attn.linear_qkv().tp_rank(), attn.linear_qkv().tp_size());
        config.check(p)?;
        if *attn.config() != config.attention() {
            return Err(Error::invalid(
                OP,
                "attention",
                format!(
                    "options {:?}, the config needs {:?}",
                    attn.config(),
                    config.attention()
                ),
            ));
        }
        if *mlp.config() != config.mlp() {
            return Err(Error::invalid(
                OP,
                "mlp",
                format!(
                    "options {:?}, the config needs {:?}",
                    mlp.config(),
                    config.mlp()
                ),
            ));
        }
        let fc1 = mlp.linear_fc1();
        if (fc1.tp_rank(), fc1.tp_size()) != (r, p) {
            return Err(Error::invalid(
                OP,
                "mlp",
                "built for another tensor-parallel group than the attention",
            ));
        }
        let dtype = attn.linear_qkv().dtype();
        let dev = attn.linear_qkv().weight().device().clone();
        for (what, t) in [
            ("ln1 parameters", &ln1.gamma),
            ("ln2 parameters", &ln2.gamma),
            ("mlp parameters", fc1.weight()),
        ] {
            if t.dtype() != dtype {
                return Err(Error::DTypeMismatch {
                    op: OP,
                    what: what.into(),
                    expected: dtype,
                    got: t.dtype(),
                });
            }
            if !dev.compatible(t.device()) {
                return Err(Error::DeviceMismatch {
                    op: OP,
                    what: what.into(),
                    expected: dev.label().to_string(),
                    got: t.device().label().to_string(),
                });
            }
        }
        for (what, ln) in [("ln1 gamma", &ln1), ("ln2 gamma", &ln2)] {
            if ln.gamma.dims() != [config.hidden_size] {
                return Err(Error::ShapeMismatch {
                    op: OP,
                    what: what.into(),
                    expected: vec![config.hidden_size],
                    got: ln.gamma.dims().to_vec(),
                });
            }
        }
        Ok(TransformerBlock {
            config,
            tp_rank: r,
            tp_size: p,
            ln1,
            attn,
            ln2,
            mlp,
        })
    }

    /// A block whose shards are cut from the full weights (see [`BlockWeights`]); the layer
    /// norms' parameters are copied. The copies are enqueued on `streams.compute`.
    ///
    /// Errors: [`TransformerBlockConfig::check`] first (before anything is enqueued), then as
    /// [`ParallelAttention::from_full`], [`ParallelMlp::from_full`] and
    /// [`TransformerBlock::new`].
    pub fn from_full(
        streams: &TpStreams,
        comm: &dyn Communicator,
        config: TransformerBlockConfig,
        w: BlockWeights<'_>,
    ) -> Result<TransformerBlock> {
        config.check(comm.size())?;
        let (r, p, c) = (comm.rank(), comm.size(), &streams.compute);
        let h = config.hidden_size;
        for t in [w.ln1_gamma, w.ln1_beta, w.ln2_gamma, w.ln2_beta] {
            if t.dims() != [h] {
                return Err(Error::ShapeMismatch {
                    op: "TransformerBlock::from_full",
                    what: "layer norm parameter".into(),
                    expected: vec![h],
                    got: t.dims().to_vec(),
                });
            }
        }
        let attn = ParallelAttention::from_full(
            streams,
            comm,
            config.attention(),
            (w.w_qkv, w.b_qkv),
            (w.w_proj, w.b_proj),
        )?;
        let mlp = ParallelMlp::from_full(
            streams,
            comm,
            config.mlp(),
            (w.w_fc1, w.b_fc1),
            (w.w_fc2, w.b_fc2),
        )?;
        let rep = |t: &Tensor| shard_of(c, t, Partition::Replicated, r, p);
        let ln1 = LayerNormParams::new(rep(w.ln1_gamma)?, rep(w.ln1_beta)?)?;
        let ln2 = LayerNormParams::new(rep(w.ln2_gamma)?, rep(w.ln2_beta)?)?;
        TransformerBlock::new(config, ln1, attn, ln2, mlp)
    }

    /// The options.
    pub fn config(&self) -> &TransformerBlockConfig {
        &self.config
    }

    /// This rank's index in the group.
    pub fn tp_rank(&self) -> usize {
        self.tp_rank
    }

    /// The group size.
    pub fn tp_size(&self) -> usize {
        self.tp_size
    }

    /// The first layer norm (before the attention).
    pub fn ln1(&self) -> &LayerNormParams {
        &self.ln1
    }

    /// The second layer norm (before the MLP).
    pub fn ln2(&self) -> &LayerNormParams {
        &self.ln2
    }

    /// The first layer norm, mutable.
    pub fn ln1_mut(&mut self) -> &mut LayerNormParams {
        &mut self.ln1
    }

    /// The second layer norm, mutable.
    pub fn ln2_mut(&mut self) -> &mut LayerNormParams {
        &mut self.ln2
    }

    /// The attention.
    pub fn attention(&self) -> &ParallelAttention {
        &self.attn
    }

    /// The MLP.
    pub fn mlp(&self) -> &ParallelMlp {
        &self.mlp
    }

    /// The attention, mutable (its gradients).
    pub fn attention_mut(&mut self) -> &mut ParallelAttention {
        &mut self.attn
    }

    /// The MLP, mutable (its gradients).
    pub fn mlp_mut(&mut self) -> &mut ParallelMlp {
        &mut self.mlp
    }

    /// Every `(parameter, gradient)` pair of this rank's shard of the block, in a fixed order
    /// (LN1, QKV, projection, LN2, FC1, FC2; weight before bias), for an optimizer.
    pub fn params_mut(&mut self) -> Vec<(&mut Tensor, &Tensor)> {
        let mut v = self.ln1.pairs();
        v.extend(self.attn.params_mut());
        v.extend(self.ln2.pairs());
        v.extend(self.mlp.params_mut());
        v
    }

    /// Resets every gradient to zero, in place, on `streams.compute`.
    pub fn zero_grad(&mut self, streams: &TpStreams) -> Result<()> {
        self.ln1.zero_grad(streams)?;
        self.attn.zero_grad(streams)?;
        self.ln2.zero_grad(streams)?;
        self.mlp.zero_grad(streams)
    }

    fn dtype(&self) -> DType {
        self.attn.linear_qkv().dtype()
    }

    /// Validates `x` (and, for the backward, the activations and `dz`) before anything is
    /// enqueued; returns (local tokens, tokens of the attention core).
    fn check_call(
        &self,
        op: &'static str,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        bwd: Option<(&BlockActivations, &Tensor)>,
    ) -> Result<(usize, usize)> {
        let (tl, t) = self.attn.linear_qkv().check_call(op, streams, comm, x)?;
        let Some((a, dz)) = bwd else {
            return Ok((tl, t));
        };
        let (dtype, h, p) = (self.dtype(), self.config.hidden_size, self.tp_size);
        let local = [tl, h];
        for (what, v) in [
            ("ln1_out", &a.ln1_out),
            ("residual", &a.residual),
            ("ln2_out", &a.ln2_out),
            ("dz", dz),
        ] {
            check_activation(op, what, v, streams, dtype, &local)?;
        }
        for (what, v) in [
            ("ln1_mean", &a.ln1_mean),
            ("ln1_rstd", &a.ln1_rstd),
            ("ln2_mean", &a.ln2_mean),
            ("ln2_rstd", &a.ln2_rstd),
        ] {
            streams.compute.same_device(op, what, v.device())?;
            if v.dims() != [tl] {
                return Err(Error::ShapeMismatch {
                    op,
                    what: what.into(),
                    expected: vec![tl],
                    got: v.dims().to_vec(),
                });
            }
            if v.dtype() != DType::F32 {
                return Err(Error::DTypeMismatch {
                    op,
                    what: what.into(),
                    expected: DType::F32,
                    got: v.dtype(),
                });
            }
        }
        // The inner layers' saved tensors, checked here too so that the MLP's backward never
        // runs before the attention's check fails.
        let at = &a.attn;
        check_activation(op, "attn.qkv", &at.qkv, streams, dtype, &[t, 3 * h / p])?;
        check_activation(op, "attn.context", &at.context, streams, dtype, &[t, h / p])?;
        if at.probs.len() != self.attn.local_heads() {
            return Err(Error::invalid(
                op,
                "attn.probs",
                format!(
                    "{} tensors, one per local head needs {}",
                    at.probs.len(),
                    self.attn.local_heads()
                ),
            ));
        }
        for pr in &at.probs {
            check_activation(op, "attn.probs", pr, streams, dtype, &[t, t])?;
        }
        let f = [t, self.config.ffn_hidden_size / p];
        check_activation(op, "mlp.pre_gelu", &a.mlp.pre_gelu, streams, dtype, &f)?;
        check_activation(op, "mlp.post_gelu", &a.mlp.post_gelu, streams, dtype, &f)?;
        Ok((tl, t))
    }

    /// `LN(x)` with the row statistics, on `streams.compute`.
    fn ln_fwd(
        &self,
        streams: &TpStreams,
        ln: &LayerNormParams,
        x: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        ln.forward(&streams.compute, x, self.config.layernorm_eps)
    }

    /// The layer norm's input gradient; accumulates its parameter gradients (this rank's rows).
    fn ln_bwd(
        streams: &TpStreams,
        ln: &mut LayerNormParams,
        dy: &Tensor,
        x: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
    ) -> Result<Tensor> {
        ln.backward(&streams.compute, dy, x, mean, rstd)
    }

    /// Forward: returns `z` (see the table in the [module docs](self)) and the activations the
    /// backward needs, all ready on `streams.compute`.
    ///
    /// Errors (before anything is enqueued): shape, dtype and device errors for `x`,
    /// [`Error::InvalidArgument`] when `comm` is not the block's group.
    pub fn forward(
        &self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
    ) -> Result<(Tensor, BlockActivations)> {
        const OP: &str = "TransformerBlock::forward";
        self.check_call(OP, streams, comm, x, None)?;
        let (c, dev) = (&streams.compute, streams.device());
        let (ln1_out, ln1_mean, ln1_rstd) = self.ln_fwd(streams, &self.ln1, x)?;
        let (attn_out, attn) = self.attn.forward(streams, comm, &ln1_out)?;
        let mut residual = Tensor::poisoned(dev, x.dims(), x.dtype())?;
        add(c, x, &attn_out, &mut residual)?;
        let (ln2_out, ln2_mean, ln2_rstd) = self.ln_fwd(streams, &self.ln2, &residual)?;
        let (mlp_out, mlp) = self.mlp.forward(streams, comm, &ln2_out)?;
        let mut z = Tensor::poisoned(dev, x.dims(), x.dtype())?;
        add(c, &residual, &mlp_out, &mut z)?;
        Ok((
            z,
            BlockActivations {
                ln1_out,
                ln1_mean,
                ln1_rstd,
                attn,
                residual,
                ln2_out,
                ln2_mean,
                ln2_rstd,
                mlp,
            },
        ))
    }

    /// Backward: given the forward's input `x`, its activations and `dz` (shaped like `z`),
    /// returns `dx` (shaped like `x`) and accumulates every parameter gradient: the MLP's, the
    /// attention's and both layer norms'. Under sequence parallelism the layer norms' gradients
    /// are this rank's partial sums: call [`TransformerBlock::allreduce_layernorm_grads`] after
    /// the step's last backward.
    ///
    /// Errors: as [`TransformerBlock::forward`], for `x`, every saved activation and `dz`.
    pub fn backward(
        &mut self,
        streams: &TpStreams,
        comm: &dyn Communicator,
        x: &Tensor,
        acts: &BlockActivations,
        dz: &Tensor,
    ) -> Result<Tensor> {
        const OP: &str = "TransformerBlock::backward";
        self.check_call(OP, streams, comm, x, Some((acts, dz)))?;
        let (c, dev, dtype) = (&streams.compute, streams.device(), x.dtype());
        // z = y + MLP(LN2(y)).
        let d_ln2 = self
            .mlp
            .backward(streams, comm, &acts.ln2_out, &acts.mlp, dz)?;
        let d_res_ln = Self::ln_bwd(
            streams,
            &mut self.ln2,
            &d_ln2,
            &acts.residual,
            &acts.ln2_mean,
            &acts.ln2_rstd,
        )?;
        let mut dy = Tensor::poisoned(dev, x.dims(), dtype)?;
        add(c, dz, &d_res_ln, &mut dy)?;
        // y = x + Attn(LN1(x)).
        let d_ln1 = self
            .attn
            .backward(streams, comm, &acts.ln1_out, &acts.attn, &dy)?;
        let d_x_ln = Self::ln_bwd(
            streams,
            &mut self.ln1,
            &d_ln1,
            x,
            &acts.ln1_mean,
            &acts.ln1_rstd,
        )?;
        let mut dx = Tensor::poisoned(dev, x.dims(), dtype)?;
        add(c, &dy, &d_x_ln, &mut dx)?;
        Ok(dx)
    }

    /// Under sequence parallelism (and `p > 1`), sums both layer norms' `gamma` and `beta`
    /// gradients over the group (all-reduce on `streams.comm`, ordered after the work on
    /// `streams.compute`; the sums are ready on `streams.compute` on return). Megatron's
    /// `_allreduce_layernorm_grads`: call it once per step, after the last backward. A no-op
    /// otherwise (every rank then already holds the full gradients).
    ///
    /// Errors: [`Error::InvalidArgument`] when `comm` is not the block's group.
    pub fn allreduce_layernorm_grads(
        &mut self,
        streams: &TpStreams,
        comm: &dyn Communicator,
    ) -> Result<()> {
        const OP: &str = "TransformerBlock::allreduce_layernorm_grads";
        if comm.size() != self.tp_size || comm.rank() != self.tp_rank {
            return Err(Error::invalid(
                OP,
                "comm",
                format!(
                    "{} is rank {} of {}, but the block is rank {} of {}",
                    comm.name(),
                    comm.rank(),
                    comm.size(),
                    self.tp_rank,
                    self.tp_size
                ),
            ));
        }
        streams
            .compute
            .same_device(OP, "streams.comm", streams.comm.device())?;
        if !(self.config.sequence_parallel && self.tp_size > 1) {
            return Ok(());
        }
        let serial = streams.is_serial();
        if !serial {
            streams.comm.wait(&streams.compute.record_event()?)?;
        }
        for ln in [&mut self.ln1, &mut self.ln2] {
            for g in [&mut ln.grad_gamma, &mut ln.grad_beta] {
                comm.all_reduce(&streams.comm, g, ReduceOp::Sum)?;
            }
        }
        if !serial {
            streams.compute.wait(&streams.comm.record_event()?)?;
        }
        Ok(())
    }
}
