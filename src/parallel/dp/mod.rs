//! Data parallelism: every rank of a data-parallel group holds the whole (pipeline/tensor
//! shard of the) model, runs its own slice of the batch, and averages gradients.
//!
//! - [`buckets`]: which gradients share a bucket (PyTorch DDP's assignment by size).
//! - [`reducer`]: [`GradReducer`], the bucketed all-reduce overlapped with the backward.
//! - [`zero`]: [`Zero1`], the optimizer state sharded over the group (ZeRO stage 1).

pub mod buckets;
pub mod reducer;
pub mod zero;

pub use buckets::{Bucket, BucketCaps, BucketPlan};
pub use reducer::{BucketSpan, GradReducer};
pub use zero::{Zero1, ZeroMemory};
