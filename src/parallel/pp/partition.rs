//! Cutting a stack of layers into pipeline stages.
//!
//! A stage is a contiguous range of layer indices; the ranges returned by every function here
//! tile `0..layers` in order, and every stage holds at least one layer.
//!
//! - [`even`]: equal layer counts (sizes differ by at most one, earlier stages get the extra).
//! - [`by_cost`]: balanced by a cost per layer, minimising the most expensive stage (exact).
//! - [`virtual_chunks`]: the interleaved layout, `pp * chunks` even stages dealt round-robin
//!   over the ranks (stage `s` on rank `s % pp` as its local chunk `s / pp`, as in
//!   [`Placement`](super::Placement)).

use std::ops::Range;

use crate::error::{Error, Result};

/// Splits `layers` layers into `stages` contiguous stages of (nearly) equal size.
///
/// Stage sizes differ by at most one; when `layers` is not a multiple of `stages`, the *earlier*
/// stages get one extra layer each (`10` layers over `4` stages: `3, 3, 2, 2`). (Megatron-LM can
/// instead shrink the first and last stages to make room for embedding and loss; use
/// [`by_cost`] with heavier costs on those layers for that.)
///
/// # Errors
/// [`Error::InvalidArgument`] when `stages == 0` or `stages > layers` (a stage would be empty).
pub fn even(layers: usize, stages: usize) -> Result<Vec<Range<usize>>> {
    check_counts("partition::even", layers, stages)?;
    let base = layers / stages;
    let extra = layers % stages;
    let mut out = Vec::with_capacity(stages);
    let mut start = 0;
    for s in 0..stages {
        let len = base + usize::from(s < extra);
        out.push(start..start + len);
        start += len;
    }
    debug_assert_eq!(start, layers);
    Ok(out)
}

/// Splits layers with the given per-layer `costs` into `stages` contiguous, non-empty stages so
/// that the largest stage cost (the sum of its layers' costs) is as small as possible.
///
/// The result is exactly optimal for stage costs computed as differences of prefix sums (in
/// `f64`): the optimal bottleneck is found by a binary search over the (ordered) bit patterns of
/// non-negative `f64` values with a greedy feasibility check, so at most 64 linear passes.
///
/// Ties: among all partitions reaching the optimal bottleneck, the one returned gives each stage,
/// from the first on, as many layers as it can take (while leaving one layer for each later
/// stage). With equal costs the bottleneck equals that of [`even`], but the layers are
/// front-loaded (`10` equal layers over `4` stages: `3, 3, 3, 1`).
///
/// # Errors
/// [`Error::InvalidArgument`] when `stages == 0`, `costs` is empty, there are more stages than
/// layers, a cost is NaN, infinite or negative, or the total cost overflows to infinity.
pub fn by_cost(costs: &[f64], stages: usize) -> Result<Vec<Range<usize>>> {
    const OP: &str = "partition::by_cost";
    if costs.is_empty() {
        return Err(Error::invalid(OP, "costs", "no layers to partition"));
    }
    check_counts(OP, costs.len(), stages)?;
    for (i, &c) in costs.iter().enumerate() {
        if !c.is_finite() || c < 0.0 {
            return Err(Error::invalid(
                OP,
                format!("costs[{i}]"),
                format!("cost {c} must be finite and >= 0"),
            ));
        }
    }
    let mut prefix = Vec::with_capacity(costs.len() + 1);
    let mut acc = 0.0f64;
    prefix.push(acc);
    for &c in costs {
        acc += c;
        prefix.push(acc);
    }
    if !acc.is_finite() {
        return Err(Error::invalid(
            OP,
            "costs",
            "the total cost overflows to infinity",
        ));
    }
    let n = costs.len();
    // Cost of layers i..j. Monotone: non-decreasing in j, non-increasing in i (rounding is
    // monotone), so the greedy check below is exact for this cost function.
    let cost = |i: usize, j: usize| prefix[j] - prefix[i];
    // Any valid partition puts every layer in some stage, so the bottleneck is at least the
    // largest single layer cost.
    let lower = (0..n).map(|i| cost(i, i + 1)).fold(0.0f64, f64::max);
    // Minimum number of stages with bottleneck <= t (given t >= lower, so every layer fits).
    let min_stages = |t: f64| -> usize {
        let mut count = 0;
        let mut i = 0;
        while i < n {
            let mut j = i + 1;
            while j < n && cost(i, j + 1) <= t {
                j += 1;
            }
            count += 1;
            i = j;
        }
        count
    };
    // Non-negative f64s are ordered like their bit patterns: binary search for the smallest
    // feasible value in [lower, total].
    let (mut lo, mut hi) = (lower.to_bits(), acc.max(lower).to_bits());
    if min_stages(f64::from_bits(lo)) > stages {
        // Invariant: lo infeasible, hi feasible.
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if min_stages(f64::from_bits(mid)) <= stages {
                hi = mid;
            } else {
                lo = mid;
            }
        }
    } else {
        hi = lo;
    }
    let best = f64::from_bits(hi);
    // Front-loaded greedy at the optimal bottleneck, leaving one layer per remaining stage.
    let mut out = Vec::with_capacity(stages);
    let mut start = 0;
    for s in 0..stages {
        let cap = n - (stages - s - 1);
        let mut end = start + 1;
        if s + 1 == stages {
            end = n;
        } else {
            while end < cap && cost(start, end + 1) <= best {
                end += 1;
            }
        }
        out.push(start..end);
        start = end;
    }
    debug_assert!(out.iter().all(|r| cost(r.start, r.end) <= best));
    Ok(out)
}

/// The interleaved (virtual pipeline) layout: `layers` cut evenly (see [`even`]) into
/// `pp * chunks` stages, dealt round-robin over the `pp` ranks.
///
/// Returns, per rank, the layer ranges of its chunks in local chunk order: stage `s` lives on
/// rank `s % pp` as chunk `s / pp`, so rank `r` holds stages `r, r + pp, r + 2 pp, ...`
/// (Megatron-LM's layout). `8` layers, `pp = 2`, `chunks = 2`: rank 0 holds `[0..2, 4..6]`,
/// rank 1 holds `[2..4, 6..8]`.
///
/// # Errors
/// [`Error::InvalidArgument`] when `pp == 0`, `chunks == 0`, or `pp * chunks > layers`.
pub fn virtual_chunks(layers: usize, pp: usize, chunks: usize) -> Result<Vec<Vec<Range<usize>>>> {
    const OP: &str = "partition::virtual_chunks";
    if pp == 0 {
        return Err(Error::invalid(OP, "pp", "must be at least 1"));
    }
    if chunks == 0 {
        return Err(Error::invalid(OP, "chunks", "must be at least 1"));
    }
    let stages = pp
        .checked_mul(chunks)
        .ok_or_else(|| Error::invalid(OP, "pp * chunks", "overflows usize"))?;
    check_counts(OP, layers, stages)?;
    let ranges = even(layers, stages)?;
    let mut out = vec![Vec::with_capacity(chunks); pp];
    for (s, r) in ranges.into_iter().enumerate() {
        out[s % pp].push(r);
    }
    Ok(out)
}

fn check_counts(op: &'static str, layers: usize, stages: usize) -> Result<()> {
    if stages == 0 {
        return Err(Error::invalid(op, "stages", "must be at least 1"));
    }
    if stages > layers {
        return Err(Error::invalid(
            op,
            "stages",
            format!("{stages} stages for {layers} layers: every stage needs at least one layer"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_tiles(ranges: &[Range<usize>], n: usize) {
        let mut at = 0;
        for r in ranges {
            assert_eq!(r.start, at, "ranges {ranges:?} do not tile 0..{n}");
            assert!(r.end > r.start, "empty stage in {ranges:?}");
            at = r.end;
        }
        assert_eq!(at, n, "ranges {ranges:?} do not tile 0..{n}");
    }

    fn max_cost(costs: &[f64], ranges: &[Range<usize>]) -> f64 {
        // Same prefix-sum arithmetic as by_cost.
        let mut prefix = vec![0.0];
        for &c in costs {
            prefix.push(prefix.last().unwrap() + c);
        }
        ranges
            .iter()
            .map(|r| prefix[r.end] - prefix[r.start])
            .fold(0.0, f64::max)
    }

    /// Deterministic LCG (Knuth's MMIX constants).
    struct Lcg(u64);
    impl Lcg {
        fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 11
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
    }

    /// Best bottleneck over all ways to choose `stages - 1` cut positions among `1..n`.
    fn brute_force(costs: &[f64], stages: usize) -> f64 {
        fn rec(costs: &[f64], start: usize, left: usize, cuts: &mut Vec<usize>, best: &mut f64) {
            let n = costs.len();
            if left == 0 {
                let mut ranges = Vec::new();
                let mut s = 0;
                for &c in cuts.iter() {
                    ranges.push(s..c);
                    s = c;
                }
                ranges.push(s..n);
                *best = best.min(max_cost(costs, &ranges));
                return;
            }
            for c in start + 1..n {
                if n - c >= left {
                    cuts.push(c);
                    rec(costs, c, left - 1, cuts, best);
                    cuts.pop();
                }
            }
        }
        let mut best = f64::INFINITY;
        rec(costs, 0, stages - 1, &mut Vec::new(), &mut best);
        best
    }

    #[test]
    fn even_splits_tile_and_front_load() {
        for n in 1..=20 {
            for stages in 1..=n {
                let r = even(n, stages).unwrap();
                assert_eq!(r.len(), stages);
                assert_tiles(&r, n);
                let sizes: Vec<usize> = r.iter().map(|r| r.len()).collect();
                let (mx, mn) = (*sizes.iter().max().unwrap(), *sizes.iter().min().unwrap());
                assert!(mx - mn <= 1, "{sizes:?}");
                assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            }
        }
        assert_eq!(even(10, 4).unwrap(), vec![0..3, 3..6, 6..8, 8..10]);
        assert_eq!(even(8, 2).unwrap(), vec![0..4, 4..8]);
        assert_eq!(even(5, 5).unwrap(), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
        assert_eq!(even(7, 1).unwrap(), vec![0..7]);
    }

    #[test]
    fn even_rejects_bad_counts() {
        assert!(matches!(even(4, 0), Err(Error::InvalidArgument { .. })));
        assert!(matches!(even(3, 4), Err(Error::InvalidArgument { .. })));
        assert!(matches!(even(0, 1), Err(Error::InvalidArgument { .. })));
    }

    #[test]
    fn by_cost_matches_brute_force() {
        let mut rng = Lcg(0x5eed);
        for case in 0..300 {
            let n = 1 + rng.below(9) as usize;
            let stages = 1 + rng.below(n as u64) as usize;
            let costs: Vec<f64> = (0..n)
                .map(|_| {
                    if case % 3 == 0 {
                        // Small integers: many ties.
                        rng.below(4) as f64
                    } else {
                        rng.below(1000) as f64 / 37.0
                    }
                })
                .collect();
            let r = by_cost(&costs, stages).unwrap();
            assert_eq!(r.len(), stages);
            assert_tiles(&r, n);
            let got = max_cost(&costs, &r);
            let want = brute_force(&costs, stages);
            assert_eq!(got, want, "costs {costs:?}, stages {stages}, got {r:?}");
        }
    }

    #[test]
    fn by_cost_equal_costs_match_even_bottleneck() {
        for n in 1..=16 {
            for stages in 1..=n {
                let costs = vec![1.5; n];
                let r = by_cost(&costs, stages).unwrap();
                assert_tiles(&r, n);
                let e = even(n, stages).unwrap();
                assert_eq!(
                    max_cost(&costs, &r),
                    max_cost(&costs, &e),
                    "n {n} stages {stages}"
                );
            }
        }
        // Documented tie-break: front-loaded.
        assert_eq!(
            by_cost(&[1.0; 10], 4).unwrap(),
            vec![0..3, 3..6, 6..9, 9..10]
        );
    }

    #[test]
    fn by_cost_balances_uneven_costs() {
        // A heavy head layer gets a stage of its own.
        assert_eq!(
            by_cost(&[6.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2).unwrap(),
            vec![0..1, 1..7]
        );
        assert_eq!(
            by_cost(&[1.0, 2.0, 3.0, 4.0, 5.0], 3).unwrap(),
            vec![0..3, 3..4, 4..5]
        );
        // All-zero costs: still one layer at least per stage.
        let r = by_cost(&[0.0; 5], 3).unwrap();
        assert_tiles(&r, 5);
        assert_eq!(r.len(), 3);
        // One stage per layer.
        assert_eq!(
            by_cost(&[3.0, 1.0, 2.0], 3).unwrap(),
            vec![0..1, 1..2, 2..3]
        );
    }

    #[test]
    fn by_cost_rejects_bad_input() {
        let bad = |r: Result<Vec<Range<usize>>>| matches!(r, Err(Error::InvalidArgument { .. }));
        assert!(bad(by_cost(&[], 1)));
        assert!(bad(by_cost(&[1.0, 2.0], 0)));
        assert!(bad(by_cost(&[1.0, 2.0], 3)));
        assert!(bad(by_cost(&[1.0, f64::NAN], 1)));
        assert!(bad(by_cost(&[1.0, -0.5], 1)));
        assert!(bad(by_cost(&[f64::INFINITY, 1.0], 1)));
        assert!(bad(by_cost(&[f64::MAX, f64::MAX], 2)));
    }

    #[test]
    fn virtual_chunks_megatron_layout() {
        assert_eq!(
            virtual_chunks(8, 2, 2).unwrap(),
            vec![vec![0..2, 4..6], vec![2..4, 6..8]]
        );
        // Uneven: 10 layers, 4 stages (3, 3, 2, 2).
        assert_eq!(
            virtual_chunks(10, 2, 2).unwrap(),
            vec![vec![0..3, 6..8], vec![3..6, 8..10]]
        );
        // One chunk per rank is the plain even split.
        let v = virtual_chunks(12, 4, 1).unwrap();
        let flat: Vec<Range<usize>> = v.into_iter().flatten().collect();
        assert_eq!(flat, even(12, 4).unwrap());
    }

    #[test]
    fn virtual_chunks_rejects_bad_counts() {
        assert!(matches!(
            virtual_chunks(8, 0, 2),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            virtual_chunks(8, 2, 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            virtual_chunks(7, 2, 4),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            virtual_chunks(8, usize::MAX, 2),
            Err(Error::InvalidArgument { .. })
        ));
    }
}
