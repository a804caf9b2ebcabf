//! The parallel layer: model-parallel building blocks over the [`crate::comm::Communicator`]
//! trait, each an explicit forward and backward enqueued on a stream the caller names (no general
//! autograd).
//!
//! - [`tp`]: tensor (and sequence) parallelism after Megatron-Core: the [`tp::mappings`]
//!   between replicated, partial and sharded activations, column/row-parallel linear layers,
//!   the parallel MLP, and the vocabulary-parallel embedding and cross-entropy.
//! - [`dp`]: data parallelism: bucketed gradient all-reduce overlapped with the backward.
//! - [`mesh`]: the dp x pp x tp layout (tp fastest) and its groups.
//! - [`pp`]: pipeline parallelism: partitioning, schedules as data, a simulator that proves
//!   them, an executor over send/recv streams, and traces of both.

pub mod dp;
pub mod mesh;
pub mod pp;
pub mod tp;
