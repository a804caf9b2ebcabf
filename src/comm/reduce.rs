//! The arithmetic of the host-memory collectives: deterministic reductions and copies of slices
//! that live in other ranks' buffers, reached through raw pointers published at a rendezvous.
//! The loops themselves are the `hostmem` crate's (optimised even in debug builds); this module
//! maps the communicators' buffers and operations onto them.
//!
//! Determinism: element `i` of a result is always `((src_0[i] op src_1[i]) op src_2[i]) ...` in
//! rank order, accumulated in f32 (bf16 widened), rounded once on store. No matter how the work
//! is split between ranks or how threads are scheduled, the bits are the same.

use super::ReduceOp;
use crate::dtype::DType;
use std::cell::Cell;

/// A rank's buffer as published at a rendezvous: valid, and not accessed by its owner, until the
/// collective's closing barrier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Raw {
    pub ptr: *mut u8,
    pub len: usize,
    pub dtype: DType,
}

// SAFETY: a `Raw` is only dereferenced between a rendezvous and its closing barrier, while the
// owning rank keeps the buffer locked and alive; concurrent accessors touch disjoint ranges.
unsafe impl Send for Raw {}
// SAFETY: as above.
unsafe impl Sync for Raw {}

impl Raw {
    /// Where element `off` starts (`off == len`: one past the end).
    ///
    /// Panics if `off > len`.
    pub(crate) fn at(self, off: usize) -> *mut u8 {
        assert!(off <= self.len, "offset {off} beyond {} elements", self.len);
        // SAFETY: `off` is within (or one past) the buffer, checked above, whose elements are
        // `dtype`-sized.
        unsafe { self.ptr.add(off * self.dtype.size_in_bytes()) }
    }
}

thread_local! {
    /// Source and destination address lists handed to `hostmem`, reused call after call so the
    /// collectives' hot path does not allocate.
    static ADDRS: Cell<(Vec<*const u8>, Vec<*mut u8>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's address lists, filled with the addresses of `srcs` and `dsts`.
fn with_addrs(
    srcs: &[(Raw, usize)],
    dsts: &[(Raw, usize)],
    f: impl FnOnce(&[*const u8], &[*mut u8]),
) {
    let (mut s, mut d) = ADDRS.with(|a| a.take());
    s.clear();
    d.clear();
    s.extend(srcs.iter().map(|&(r, o)| r.at(o).cast_const()));
    d.extend(dsts.iter().map(|&(r, o)| r.at(o)));
    f(&s, &d);
    ADDRS.with(|a| a.set((s, d)));
}

/// The `hostmem` element type of a communicator dtype.
fn elem(dtype: DType) -> hostmem::Elem {
    match dtype {
        DType::F32 => hostmem::Elem::F32,
        DType::BF16 => hostmem::Elem::BF16,
        _ => unreachable!("validated: f32 or bf16"),
    }
}

/// Reduces `n` elements: for each `i`, `srcs[0][i] op srcs[1][i] op ...` (rank order; Avg divides
/// by `srcs.len()`), and writes the result to every destination ([`hostmem::reduce`]).
///
/// # Safety
/// Every `(raw, off)` in `srcs` must have `off + n` readable elements not written concurrently;
/// every one in `dsts` must have `off + n` elements that no one else reads or writes
/// concurrently (a source range may coincide with a destination range only when the same
/// caller owns both, and then exactly).
pub(crate) unsafe fn reduce_to(
    op: ReduceOp,
    srcs: &[(Raw, usize)],
    dsts: &[(Raw, usize)],
    n: usize,
) {
    debug_assert!(srcs.iter().chain(dsts).all(|(r, o)| o + n <= r.len));
    debug_assert!(srcs
        .iter()
        .chain(dsts)
        .all(|(r, _)| r.dtype == srcs[0].0.dtype));
    let op = match op {
        ReduceOp::Sum => hostmem::Op::Sum,
        ReduceOp::Avg => hostmem::Op::Avg,
        ReduceOp::Max => hostmem::Op::Max,
        ReduceOp::Min => hostmem::Op::Min,
    };
    let Some(&(first, _)) = srcs.first() else {
        return;
    };
    with_addrs(srcs, dsts, |s, d| {
        // SAFETY: per this function's contract, which is `hostmem::reduce`'s.
        unsafe { hostmem::reduce(elem(first.dtype), op, s, d, n) }
    });
}

/// Copies `n` elements from `src` at its offset to every destination at its offset (same
/// dtype), reading `src` from memory once however many destinations there are
/// ([`hostmem::copy_to`]). A destination equal to the source (same buffer and offset) is skipped.
/// `total_bytes`, what the whole collective writes (every rank together), chooses between
/// cached and streaming stores ([`hostmem::Stores::for_total`]).
///
/// # Safety
/// `src` must have `off + n` readable elements not written concurrently, and every destination
/// `off + n` elements that no one else accesses concurrently; destinations must not overlap the
/// source or each other unless they are the source exactly.
pub(crate) unsafe fn copy_to(
    src: (Raw, usize),
    dsts: &[(Raw, usize)],
    n: usize,
    total_bytes: usize,
) {
    debug_assert!(src.1 + n <= src.0.len);
    debug_assert!(dsts
        .iter()
        .all(|(d, o)| o + n <= d.len && d.dtype == src.0.dtype));
    with_addrs(&[src], dsts, |s, d| {
        let stores = hostmem::Stores::for_total(total_bytes);
        // SAFETY: per this function's contract, which is `hostmem::copy_to`'s.
        unsafe { hostmem::copy_to(s[0], d, n * src.0.dtype.size_in_bytes(), stores) }
    });
}

/// Copies `n` elements from `src` at `src_off` to `dst` at `dst_off` (same dtype).
///
/// # Safety
/// `src` must have `src_off + n` readable elements not written concurrently, and `dst` must have
/// `dst_off + n` elements no one else accesses concurrently.
pub(crate) unsafe fn copy(src: Raw, src_off: usize, dst: Raw, dst_off: usize, n: usize) {
    debug_assert!(src_off + n <= src.len && dst_off + n <= dst.len && src.dtype == dst.dtype);
    let es = src.dtype.size_in_bytes();
    // SAFETY: per this function's contract; the ranges do not overlap (different buffers, or
    // disjoint ranges of one).
    unsafe {
        std::ptr::copy_nonoverlapping(src.ptr.add(src_off * es), dst.ptr.add(dst_off * es), n * es)
    };
}
