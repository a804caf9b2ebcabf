//! The arithmetic of the in-process collectives: deterministic reductions of slices that live in
//! other ranks' buffers, reached through raw pointers published at a rendezvous.
//!
//! Determinism: element `i` of a result is always `((src_0[i] op src_1[i]) op src_2[i]) ...` in
//! rank order, accumulated in f32 (bf16 widened), rounded once on store. No matter how the work
//! is split between ranks or how threads are scheduled, the bits are the same.

use super::ReduceOp;
use crate::dtype::DType;
use half::bf16;

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

const CHUNK: usize = 2048;

#[inline(always)]
fn combine(op: ReduceOp, a: f32, b: f32) -> f32 {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => a + b,
        // NaN propagates: a comparison with NaN is false, so check explicitly.
        ReduceOp::Max => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.max(b)
            }
        }
        ReduceOp::Min => {
            if a.is_nan() || b.is_nan() {
                f32::NAN
            } else {
                a.min(b)
            }
        }
    }
}

/// # Safety
/// `p` must point to at least `off + n` elements of `dtype` that no one writes concurrently.
unsafe fn load(dtype: DType, p: *const u8, off: usize, out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            // SAFETY: the caller guarantees `off + out.len()` readable f32 elements.
            let s = unsafe { std::slice::from_raw_parts((p as *const f32).add(off), out.len()) };
            out.copy_from_slice(s);
        }
        DType::BF16 => {
            // SAFETY: as above, for bf16 elements.
            let s = unsafe { std::slice::from_raw_parts((p as *const bf16).add(off), out.len()) };
            for (o, v) in out.iter_mut().zip(s) {
                *o = v.to_f32();
            }
        }
        _ => unreachable!("validated: f32 or bf16"),
    }
}

/// # Safety
/// `p` must point to at least `off + n` elements of `dtype` that no one else accesses
/// concurrently.
unsafe fn store(dtype: DType, p: *mut u8, off: usize, v: &[f32]) {
    match dtype {
        DType::F32 => {
            // SAFETY: the caller guarantees exclusive access to this range.
            let d = unsafe { std::slice::from_raw_parts_mut((p as *mut f32).add(off), v.len()) };
            d.copy_from_slice(v);
        }
        DType::BF16 => {
            // SAFETY: as above.
            let d = unsafe { std::slice::from_raw_parts_mut((p as *mut bf16).add(off), v.len()) };
            for (o, x) in d.iter_mut().zip(v) {
                *o = bf16::from_f32(*x);
            }
        }
        _ => unreachable!("validated: f32 or bf16"),
    }
}

/// Reduces `n` elements: for each `i`, `srcs[0][i] op srcs[1][i] op ...` (rank order; Avg divides
/// by `srcs.len()`), and writes the result to every destination.
///
/// # Safety
/// Every `(raw, off)` in `srcs` must have `off + n` readable elements not written concurrently;
/// every one in `dsts` must have `off + n` elements that no one else reads or writes
/// concurrently (a source range may coincide with a destination range only when the same
/// caller owns both).
pub(crate) unsafe fn reduce_to(
    op: ReduceOp,
    srcs: &[(Raw, usize)],
    dsts: &[(Raw, usize)],
    n: usize,
) {
    debug_assert!(srcs.iter().chain(dsts).all(|(r, o)| o + n <= r.len));
    let mut acc = [0f32; CHUNK];
    let mut tmp = [0f32; CHUNK];
    let mut done = 0;
    while done < n {
        let c = CHUNK.min(n - done);
        let (acc, tmp) = (&mut acc[..c], &mut tmp[..c]);
        let (r0, o0) = srcs[0];
        // SAFETY: per this function's contract.
        unsafe { load(r0.dtype, r0.ptr, o0 + done, acc) };
        for &(r, o) in &srcs[1..] {
            // SAFETY: per this function's contract.
            unsafe { load(r.dtype, r.ptr, o + done, tmp) };
            match op {
                ReduceOp::Sum | ReduceOp::Avg => {
                    for (a, b) in acc.iter_mut().zip(tmp.iter()) {
                        *a += *b;
                    }
                }
                _ => {
                    for (a, b) in acc.iter_mut().zip(tmp.iter()) {
                        *a = combine(op, *a, *b);
                    }
                }
            }
        }
        if op == ReduceOp::Avg && srcs.len() > 1 {
            // Multiplying by 1/n would round twice; divide to match the reference exactly.
            let n = srcs.len() as f32;
            for a in acc.iter_mut() {
                *a /= n;
            }
        }
        for &(d, o) in dsts {
            // SAFETY: per this function's contract.
            unsafe { store(d.dtype, d.ptr, o + done, acc) };
        }
        done += c;
    }
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
