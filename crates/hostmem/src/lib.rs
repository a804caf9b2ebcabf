//! The memory-bound loops of ferrotron's CPU collectives, over raw host memory.
//!
//! The in-process (thread) and MPI communicators move data between buffers that other ranks
//! published as raw pointers; these functions are the arithmetic they run there:
//!
//! - [`reduce`]: element `i` of the result is `((src_0[i] op src_1[i]) op src_2[i]) ...`, in
//!   the order of the sources, accumulated in f32 (bf16 widened) and rounded once on store, then
//!   written to every destination. Deterministic: the bits depend only on the inputs and their
//!   order, never on how the work is split or scheduled.
//! - [`copy_to`]: one source range copied to several destinations, with streaming stores when
//!   the collective's output is larger than the last-level cache ([`Stores`]).
//!
//! Both pass over memory once. A reduction step loads [`LANES`] elements of every source into
//! registers, folds them and stores the result to every destination before moving on (no
//! staging copy through the cache); a copy reads each cache-sized chunk of its source once
//! for all destinations. On a memory-bound machine that is what decides the speed of a
//! collective. On x86-64 CPUs with AVX2 the reduction runs an AVX2 instance of the same code
//! (chosen at run time): at the baseline's vector width the bf16 conversions, not memory, were
//! the bottleneck.
//!
//! The crate is its own compilation unit so that it is optimised in debug builds too (see the
//! workspace's `profile.dev.package.hostmem`): every test of the parallel layers runs these
//! loops.

mod bf16;
mod copy;
mod reduce;
mod stream;

use bf16::{bf16_to_f32, f32_to_bf16};
pub use copy::copy_to;
pub use reduce::{reduce, LANES};
pub use stream::{fill, last_level_cache_bytes, Stores};

/// The element types the reductions handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// IEEE binary32.
    F32,
    /// bfloat16 (the upper half of a binary32), reduced in f32.
    BF16,
}

/// How [`reduce`] combines its sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sum in source order.
    Sum,
    /// Sum in source order, then divided by the number of sources (a division, not a
    /// multiplication by the reciprocal, which would round twice).
    Avg,
    /// Maximum; NaN if any source is NaN.
    Max,
    /// Minimum; NaN if any source is NaN.
    Min,
}
