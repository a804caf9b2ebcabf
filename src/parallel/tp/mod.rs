//! Tensor parallelism (Megatron-style): a group of ranks shares every layer, weights split along
//! the hidden dimension and, with sequence parallelism, activations outside the split layers
//! split along the sequence (first) dimension.
//!
//! - [`mappings`]: the region mappings (`f`, `g`, scatter/gather along the last dimension,
//!   sequence-parallel scatter/gather/reduce-scatter along the first), forward and backward.
//! - [`linear`]: [`ColumnParallelLinear`] and [`RowParallelLinear`] (with sequence parallelism
//!   and the input-gradient all-reduce overlapped with the weight-gradient GEMM), on
//!   [`TpStreams`].
//! - [`mlp`]: [`ParallelMlp`], column -> fused bias+GeLU -> row.
//! - [`shard`]: cutting a rank's shard from a full parameter and gathering the shards back.
//! - [`vocab`]: [`VocabParallelEmbedding`] (with an optional sequence-parallel, reduce-scattered
//!   output) and the vocabulary-parallel cross-entropy.

pub mod attention;
pub mod block;
pub mod linear;
pub mod mappings;
pub mod mlp;
pub mod shard;
pub mod vocab;

pub use attention::{
    qkv_full_from_separate, AttentionActivations, ParallelAttention, ParallelAttentionConfig,
};
pub use block::{
    BlockActivations, BlockWeights, LayerNormParams, TransformerBlock, TransformerBlockConfig,
};
pub use linear::{
    ColumnParallelConfig, ColumnParallelLinear, RowParallelConfig, RowParallelLinear, Span,
    TpStreams, Trace,
};
pub use mlp::{MlpActivations, ParallelMlp, ParallelMlpConfig};
pub use shard::{cut_shard, gather_shards, shard_of, Partition};
pub use vocab::{
    padded_vocab_size, vocab_parallel_cross_entropy_bwd, vocab_parallel_cross_entropy_fwd,
    vocab_range, CrossEntropyContext, VocabParallelEmbedding, VocabParallelEmbeddingConfig,
};

pub use mappings::{
    copy_to_tp_region_bwd, copy_to_tp_region_fwd, gather_from_sp_region_bwd,
    gather_from_sp_region_fwd, gather_from_tp_region_bwd, gather_from_tp_region_fwd,
    reduce_from_tp_region_bwd, reduce_from_tp_region_fwd, reduce_scatter_to_sp_region_bwd,
    reduce_scatter_to_sp_region_fwd, scatter_to_sp_region_bwd, scatter_to_sp_region_fwd,
    scatter_to_tp_region_bwd, scatter_to_tp_region_fwd,
};
