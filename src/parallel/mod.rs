//! The parallel layer: model-parallel building blocks over the [`crate::comm::Communicator`]
//! trait, each an explicit forward and backward enqueued on a stream the caller names (no general
//! autograd).
//!
//! - [`tp`]: tensor (and sequence) parallelism after Megatron-Core: today the
//!   [`tp::mappings`] between replicated, partial and sharded activations.

pub mod tp;
