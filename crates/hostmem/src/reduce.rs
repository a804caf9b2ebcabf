//! The fused reduction.

use crate::{bf16_to_f32, f32_to_bf16, Elem, Op};

/// Elements per step of [`reduce`]: 64 bytes of f32. The fixed-size array arithmetic compiles
/// to vector instructions and the accumulator stays in registers.
pub const LANES: usize = 16;

/// Reduces `n` elements of every source with `op`, in source order, and writes the result to
/// every destination: for each `i`, `dst[i] = (src_0[i] op src_1[i]) op ...` (Avg then divides
/// by the number of sources), accumulated in f32 and rounded once to `elem`.
///
/// The sources are read and the destinations written one step of [`LANES`] elements at a time,
/// every source before any destination, so a destination may be the very same range as a
/// source (an in-place all-reduce). With no sources, nothing is written.
///
/// # Safety
/// Every pointer must address `n` elements of `elem` (any alignment): sources readable and not
/// written by anyone else during the call, destinations writable and not accessed by anyone
/// else during the call. A destination may overlap a source only by being exactly the same
/// range; destinations must not overlap each other.
pub unsafe fn reduce(elem: Elem, op: Op, srcs: &[*const u8], dsts: &[*mut u8], n: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: per this function's contract; the CPU has AVX2.
        return unsafe { reduce_avx2(elem, op, srcs, dsts, n) };
    }
    // SAFETY: per this function's contract.
    unsafe { reduce_any(elem, op, srcs, dsts, n) }
}

/// [`reduce`] compiled for AVX2 (twice the vector width of the x86-64 baseline: the bf16
/// conversions are otherwise the bottleneck, not memory).
///
/// # Safety
/// As [`reduce`], on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn reduce_avx2(elem: Elem, op: Op, srcs: &[*const u8], dsts: &[*mut u8], n: usize) {
    // SAFETY: per this function's contract.
    unsafe { reduce_any(elem, op, srcs, dsts, n) }
}

/// [`reduce`] for whatever instruction set the caller is compiled for.
///
/// # Safety
/// As [`reduce`].
#[inline(always)]
unsafe fn reduce_any(elem: Elem, op: Op, srcs: &[*const u8], dsts: &[*mut u8], n: usize) {
    if srcs.is_empty() {
        return;
    }
    let k = srcs.len() as f32;
    // One instance per operation and type, so the fold and the finish are constants in the loop
    // (a division that is only sometimes needed would otherwise be computed for every element).
    // SAFETY (every arm): per this function's contract.
    unsafe {
        match op {
            Op::Sum => by_elem(elem, srcs, dsts, n, |a, b| a + b, |a| a),
            // With one source, a / 1 is exact: no special case.
            Op::Avg => by_elem(elem, srcs, dsts, n, |a, b| a + b, |a| a / k),
            Op::Max => by_elem(elem, srcs, dsts, n, |a, b| nan_or(a, b, a.max(b)), |a| a),
            Op::Min => by_elem(elem, srcs, dsts, n, |a, b| nan_or(a, b, a.min(b)), |a| a),
        }
    }
}

/// NaN if `a` or `b` is NaN (`f32::max` would return the other operand), else `v`.
#[inline(always)]
fn nan_or(a: f32, b: f32, v: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        v
    }
}

/// [`fused`] for `elem`'s storage type.
///
/// # Safety
/// As [`reduce`].
#[inline(always)]
unsafe fn by_elem(
    elem: Elem,
    srcs: &[*const u8],
    dsts: &[*mut u8],
    n: usize,
    fold: impl Fn(f32, f32) -> f32 + Copy,
    finish: impl Fn(f32) -> f32 + Copy,
) {
    // SAFETY (both arms): per the contract, with `elem`'s storage type.
    unsafe {
        match elem {
            Elem::F32 => fused::<f32>(srcs, dsts, n, fold, finish, |x| x, |x| x),
            Elem::BF16 => fused::<u16>(srcs, dsts, n, fold, finish, bf16_to_f32, f32_to_bf16),
        }
    }
}

/// The reduction for elements stored as `T` (f32, or bf16 bits): each step loads [`LANES`]
/// elements of every source, widens and folds them, finishes (Avg: divides) and narrows the
/// result and stores it to every destination; the tail goes one element at a time with the
/// same arithmetic.
///
/// # Safety
/// As [`reduce`], with `T` the storage type; `srcs` is not empty.
#[inline(always)]
unsafe fn fused<T: Copy>(
    srcs: &[*const u8],
    dsts: &[*mut u8],
    n: usize,
    fold: impl Fn(f32, f32) -> f32,
    finish: impl Fn(f32) -> f32,
    widen: impl Fn(T) -> f32,
    narrow: impl Fn(f32) -> T,
) {
    let (first, rest) = srcs.split_first().expect("at least one source");
    let mut i = 0;
    while i + LANES <= n {
        // SAFETY (the accesses of this step): elements `i..i + LANES` lie within the `n`
        // elements every pointer addresses; the accesses are unaligned.
        let load = |p: *const u8| unsafe {
            (p.add(i * size_of::<T>()) as *const [T; LANES]).read_unaligned()
        };
        let v = load(*first);
        let mut acc = [0f32; LANES];
        for (a, x) in acc.iter_mut().zip(v) {
            *a = widen(x);
        }
        for &s in rest {
            for (a, x) in acc.iter_mut().zip(load(s)) {
                *a = fold(*a, widen(x));
            }
        }
        let mut out = v; // overwritten: every lane below
        for (o, a) in out.iter_mut().zip(acc) {
            *o = narrow(finish(a));
        }
        for &d in dsts {
            // SAFETY: as above.
            unsafe { (d.add(i * size_of::<T>()) as *mut [T; LANES]).write_unaligned(out) };
        }
        i += LANES;
    }
    while i < n {
        // SAFETY: element `i < n` lies within every source and destination.
        let load =
            |p: *const u8| unsafe { (p.add(i * size_of::<T>()) as *const T).read_unaligned() };
        let a = rest
            .iter()
            .fold(widen(load(*first)), |a, &s| fold(a, widen(load(s))));
        let out = narrow(finish(a));
        for &d in dsts {
            // SAFETY: as above.
            unsafe { (d.add(i * size_of::<T>()) as *mut T).write_unaligned(out) };
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;
    use rand::{Rng, SeedableRng};

    /// The element-at-a-time definition: widen, fold in source order, divide, narrow.
    fn reference(elem: Elem, op: Op, srcs: &[Vec<f32>]) -> Vec<f32> {
        let round = |x: f32| match elem {
            Elem::F32 => x,
            Elem::BF16 => bf16::from_f32(x).to_f32(),
        };
        (0..srcs[0].len())
            .map(|i| {
                let mut a = srcs[0][i];
                for s in &srcs[1..] {
                    let b = s[i];
                    a = match op {
                        Op::Sum | Op::Avg => a + b,
                        _ if a.is_nan() || b.is_nan() => f32::NAN,
                        Op::Max => a.max(b),
                        Op::Min => a.min(b),
                    };
                }
                if op == Op::Avg && srcs.len() > 1 {
                    a /= srcs.len() as f32;
                }
                round(a)
            })
            .collect()
    }

    /// `v` stored as `elem` at byte offset `skew` of a fresh byte buffer.
    fn store(elem: Elem, v: &[f32], skew: usize) -> Vec<u8> {
        let mut b = vec![0x5Au8; skew];
        for x in v {
            match elem {
                Elem::F32 => b.extend(x.to_le_bytes()),
                Elem::BF16 => b.extend(bf16::from_f32(*x).to_le_bytes()),
            }
        }
        b.extend([0x5Au8; 3]);
        b
    }

    fn load(elem: Elem, b: &[u8], skew: usize, n: usize) -> Vec<f32> {
        let b = &b[skew..];
        (0..n)
            .map(|i| match elem {
                Elem::F32 => f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()),
                Elem::BF16 => bf16::from_le_bytes([b[2 * i], b[2 * i + 1]]).to_f32(),
            })
            .collect()
    }

    fn same_bits(got: &[f32], want: &[f32]) -> bool {
        got.iter()
            .zip(want)
            .all(|(g, w)| g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()))
    }

    #[test]
    fn equals_the_element_at_a_time_definition_in_place_and_out_of_place() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        // The first half through the dispatching entry (AVX2 where the CPU has it), the second
        // through the baseline instruction set's instance.
        for case in 0..800 {
            let baseline = case >= 400;
            let elem = if case % 2 == 0 { Elem::F32 } else { Elem::BF16 };
            let op = [Op::Sum, Op::Avg, Op::Max, Op::Min][case / 2 % 4];
            let k = rng.random_range(1..=9);
            let n = rng.random_range(0..5 * LANES);
            let skew = rng.random_range(0..4);
            let srcs: Vec<Vec<f32>> = (0..k)
                .map(|_| {
                    (0..n)
                        .map(|_| match rng.random_range(0..40) {
                            0 if op != Op::Sum => f32::NAN,
                            _ => rng.random_range(-1e3f32..1e3),
                        })
                        .collect()
                })
                .collect();
            // The inputs as they are stored: the reference sees the rounded bf16 values.
            let stored: Vec<Vec<f32>> = srcs
                .iter()
                .map(|s| load(elem, &store(elem, s, 0), 0, n))
                .collect();
            let want = reference(elem, op, &stored);
            let mut bufs: Vec<Vec<u8>> = srcs.iter().map(|s| store(elem, s, skew)).collect();
            let mut out = store(elem, &vec![-7.0; n], skew);
            let in_place = case % 3 == 0;
            let ptrs: Vec<*mut u8> = bufs.iter_mut().map(|b| b[skew..].as_mut_ptr()).collect();
            let src_ptrs: Vec<*const u8> = ptrs.iter().map(|p| p.cast_const()).collect();
            let dsts = if in_place {
                ptrs.clone()
            } else {
                vec![out[skew..].as_mut_ptr()]
            };
            // SAFETY: every pointer addresses n elements (plus 3 spare bytes); in place, each
            // destination is exactly its source's range.
            unsafe {
                if baseline {
                    reduce_any(elem, op, &src_ptrs, &dsts, n)
                } else {
                    reduce(elem, op, &src_ptrs, &dsts, n)
                }
            };
            let results: Vec<&Vec<u8>> = if in_place {
                bufs.iter().collect()
            } else {
                vec![&out]
            };
            for r in results {
                let got = load(elem, r, skew, n);
                assert!(
                    same_bits(&got, &want),
                    "{elem:?} {op:?} k {k} n {n} skew {skew} in place {in_place} baseline {baseline}:\n got {got:?}\nwant {want:?}"
                );
                assert!(r[..skew]
                    .iter()
                    .chain(&r[r.len() - 3..])
                    .all(|&b| b == 0x5A));
            }
        }
    }

    #[test]
    fn sums_in_source_order() {
        // (1e8 + 1) - 1e8 = 0 in f32, but 1e8 + (1 - 1e8) = 1: the order is observable.
        let v = [[1e8f32; LANES + 1], [1.0; LANES + 1], [-1e8; LANES + 1]];
        let srcs: Vec<*const u8> = v.iter().map(|s| s.as_ptr() as *const u8).collect();
        let mut out = [9f32; LANES + 1];
        // SAFETY: every pointer addresses LANES + 1 f32s.
        unsafe {
            reduce(
                Elem::F32,
                Op::Sum,
                &srcs,
                &[out.as_mut_ptr() as *mut u8],
                LANES + 1,
            )
        };
        assert!(out.iter().all(|&x| x == 0.0), "{out:?}");
    }
}
