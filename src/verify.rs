//! Comparing results with their references: the utilities behind every numerical test and the
//! `ferrotron check` table.
//!
//! A result is compared element by element with an f64 reference under a [`Tolerance`]: element
//! `i` passes iff `|got[i] - want[i]| <= abs + rel * |want[i]|`. Non-finite values are never
//! excused by a tolerance: a NaN or infinity in `got` where `want` is finite fails, and so does a
//! finite `got` where `want` is NaN or infinite (a NaN must never be silently hidden). Where both
//! are non-finite they must agree (both NaN, or the same infinity).
//!
//! Also here: seeded random inputs ([`random_vec`]), conversions between [`Element`] slices and
//! f64 ([`to_f64`], [`from_f64`], [`round_through`]) and [`poison`] for output buffers.

use crate::dtype::{DType, Element};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::fmt;

/// How far a result may be from its reference: element passes iff
/// `|got - want| <= abs + rel * |want|`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tolerance {
    /// Relative part, multiplied by `|want|`.
    pub rel: f64,
    /// Absolute part, for results near zero.
    pub abs: f64,
}

impl Tolerance {
    /// A tolerance with the given relative and absolute parts.
    pub fn new(rel: f64, abs: f64) -> Self {
        Tolerance { rel, abs }
    }

    /// The default tolerance for one rounding-dominated result stored in `dtype`, compared with an
    /// f64 reference computed from the same (already rounded) inputs.
    ///
    /// - f32: rel 1e-5, abs 1e-6 (about 100 ulps: room for a short chain of f32 operations).
    /// - bf16: rel 1e-2, abs 1e-3 (8 significant bits: one rounding is at most 2^-9 ~ 2e-3
    ///   relative; the margin covers the f32 arithmetic before it).
    /// - f16: rel 2e-3, abs 1e-4 (11 significant bits: one rounding is at most 2^-12 ~ 2.4e-4).
    /// - i32: exact (rel 0, abs 0).
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::F32 => Tolerance::new(1e-5, 1e-6),
            DType::BF16 => Tolerance::new(1e-2, 1e-3),
            DType::F16 => Tolerance::new(2e-3, 1e-4),
            DType::I32 => Tolerance::new(0.0, 0.0),
        }
    }

    /// The tolerance for a result stored in `dtype` that comes out of an f32-accumulated
    /// reduction of `len` terms (a GEMM's inner dimension, a row sum, a column sum over rows).
    ///
    /// Rounding errors of an `len`-term f32 sum behave like a random walk, so the f32 part grows
    /// like `sqrt(len)` (it also has to cover results that cancel to near zero, hence the scaled
    /// absolute part). A bf16/f16 result adds one final rounding on store, covered by that
    /// dtype's own [`Tolerance::for_dtype`], which is added on top.
    pub fn for_reduction(dtype: DType, len: usize) -> Self {
        let f32_part = Tolerance::for_dtype(DType::F32).scaled((len.max(1) as f64).sqrt());
        match dtype {
            DType::F32 => f32_part,
            DType::I32 => Tolerance::for_dtype(DType::I32),
            other => {
                let own = Tolerance::for_dtype(other);
                Tolerance::new(own.rel + f32_part.rel, own.abs + f32_part.abs)
            }
        }
    }

    /// Both parts multiplied by `factor`.
    pub fn scaled(self, factor: f64) -> Self {
        Tolerance::new(self.rel * factor, self.abs * factor)
    }
}

/// The outcome of [`compare`].
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Largest `|got - want|` over the elements where both are finite (0 when there are none).
    pub max_abs: f64,
    /// Largest `|got - want| / max(|want|, tol.abs)` over the elements where both are finite.
    pub max_rel: f64,
    /// The element that failed worst: the first non-finite mismatch if there is one, else the
    /// element with the largest error relative to what the tolerance allows. `None` only when
    /// no element was compared.
    pub worst_index: Option<usize>,
    /// Elements where `got` and `want` disagree about being NaN/infinite (a NaN or infinity in
    /// `got` where `want` is finite, a finite `got` where `want` is not, or different non-finite
    /// values). Every one of them fails.
    pub nan_or_inf: usize,
    /// Whether every element passed and the lengths agree.
    pub pass: bool,
    /// Number of elements compared (the shorter length when the lengths differ).
    pub count: usize,
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} elements): max_abs {:.3e}, max_rel {:.3e}, nan/inf mismatches {}",
            if self.pass { "PASS" } else { "FAIL" },
            self.count,
            self.max_abs,
            self.max_rel,
            self.nan_or_inf
        )?;
        if let Some(i) = self.worst_index {
            write!(f, ", worst at index {i}")?;
        }
        Ok(())
    }
}

/// Compares `got` with the reference `want` element by element under `tol`.
///
/// Element `i` passes iff `|got[i] - want[i]| <= tol.abs + tol.rel * |want[i]|`; non-finite
/// values follow the rules in the [module docs](self). A length mismatch never passes (the
/// common prefix is still compared, so the statistics stay informative).
pub fn compare(got: &[f64], want: &[f64], tol: Tolerance) -> Comparison {
    let count = got.len().min(want.len());
    let mut max_abs = 0.0f64;
    let mut max_rel = 0.0f64;
    let mut nan_or_inf = 0usize;
    let mut first_nonfinite: Option<usize> = None;
    let mut worst: Option<(usize, f64)> = None;
    let mut all_pass = true;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() || !w.is_finite() {
            let agree = (g.is_nan() && w.is_nan()) || (g.is_infinite() && g == w);
            if !agree {
                nan_or_inf += 1;
                all_pass = false;
                first_nonfinite.get_or_insert(i);
            }
            continue;
        }
        let err = (g - w).abs();
        let allowed = tol.abs + tol.rel * w.abs();
        let denom = w.abs().max(tol.abs);
        let rel = if err == 0.0 {
            0.0
        } else if denom > 0.0 {
            err / denom
        } else {
            f64::INFINITY
        };
        max_abs = max_abs.max(err);
        max_rel = max_rel.max(rel);
        if err > allowed {
            all_pass = false;
        }
        // How badly this element uses its allowance; an exact match scores 0.
        let score = if err == 0.0 {
            0.0
        } else if allowed > 0.0 {
            err / allowed
        } else {
            f64::INFINITY
        };
        if worst.is_none_or(|(_, s)| score > s) {
            worst = Some((i, score));
        }
    }
    let worst_index = first_nonfinite.or(worst.map(|(i, _)| i));
    Comparison {
        max_abs,
        max_rel,
        worst_index,
        nan_or_inf,
        pass: all_pass && got.len() == want.len(),
        count,
    }
}

/// Widens a slice of elements to f64 (exact).
pub fn to_f64<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

/// Rounds a slice of f64 values to elements of type `T`.
pub fn from_f64<T: Element>(x: &[f64]) -> Vec<T> {
    x.iter().map(|&v| T::from_f64(v)).collect()
}

/// Rounds each value to `T` and back to f64: the inputs a reference must see to be compared
/// with a fast path that ran on `T` data.
pub fn round_through<T: Element>(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| T::from_f64(v).to_f64()).collect()
}

/// `n` values drawn uniformly from `[lo, hi)` by a generator seeded with `seed` (the same seed
/// gives the same values on every run and machine). `lo == hi` gives `n` copies of `lo`.
pub fn random_vec(seed: u64, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n)
        .map(|_| lo + (hi - lo) * rng.random::<f64>())
        .collect()
}

/// `n` class indices drawn uniformly from `[0, classes)` by a generator seeded with `seed`.
///
/// # Panics
/// If `classes` is 0 or does not fit in an `i32`.
pub fn random_indices(seed: u64, n: usize, classes: usize) -> Vec<i32> {
    let classes = i32::try_from(classes).expect("class count fits in i32");
    assert!(classes > 0, "random_indices: classes must be > 0");
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..classes)).collect()
}

/// Fills `x` with NaN, so that an output element a kernel forgets to write cannot pass a
/// comparison by accident.
pub fn poison<T: Element>(x: &mut [T]) {
    x.fill(T::from_f32(f32::NAN));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_rules() {
        let tol = Tolerance::new(1e-3, 1e-6);
        assert!(compare(&[1.0005], &[1.0], tol).pass);
        assert!(!compare(&[1.002], &[1.0], tol).pass);
        // Near zero the absolute part applies.
        assert!(compare(&[5e-7], &[0.0], tol).pass);
        assert!(!compare(&[5e-6], &[0.0], tol).pass);
        let c = compare(&[1.0, 2.0, 3.3], &[1.0, 2.0, 3.0], tol);
        assert!(!c.pass);
        assert_eq!(c.worst_index, Some(2));
        assert_eq!(c.count, 3);
        assert!((c.max_abs - 0.3).abs() < 1e-12);
        assert!((c.max_rel - 0.1).abs() < 1e-12);
    }

    #[test]
    fn non_finite_never_excused() {
        let tol = Tolerance::new(1e9, 1e9);
        let c = compare(&[1.0, f64::NAN], &[1.0, 2.0], tol);
        assert!(!c.pass);
        assert_eq!(c.nan_or_inf, 1);
        assert_eq!(c.worst_index, Some(1));
        assert!(!compare(&[f64::INFINITY], &[2.0], tol).pass);
        // A hidden NaN fails too.
        assert!(!compare(&[0.0], &[f64::NAN], tol).pass);
        // Agreeing non-finite values pass.
        assert!(
            compare(
                &[f64::NAN, f64::NEG_INFINITY],
                &[f64::NAN, f64::NEG_INFINITY],
                tol
            )
            .pass
        );
        assert!(!compare(&[f64::INFINITY], &[f64::NEG_INFINITY], tol).pass);
    }

    #[test]
    fn length_mismatch_fails() {
        let tol = Tolerance::for_dtype(DType::F32);
        let c = compare(&[1.0, 2.0], &[1.0, 2.0, 3.0], tol);
        assert!(!c.pass);
        assert_eq!(c.count, 2);
        assert!(compare(&[], &[], tol).pass);
    }

    #[test]
    fn random_and_poison() {
        let a = random_vec(7, 100, -2.0, 3.0);
        assert_eq!(a, random_vec(7, 100, -2.0, 3.0));
        assert_ne!(a, random_vec(8, 100, -2.0, 3.0));
        assert!(a.iter().all(|&v| (-2.0..3.0).contains(&v)));
        let t = random_indices(1, 50, 7);
        assert!(t.iter().all(|&v| (0..7).contains(&v)));
        let mut x = vec![half::bf16::from_f32(1.0); 4];
        poison(&mut x);
        assert!(x.iter().all(|v| v.is_nan()));
        let r = round_through::<half::bf16>(&[1.0 + 2f64.powi(-10)]);
        assert_eq!(r, vec![1.0]);
    }

    #[test]
    fn reduction_tolerance_grows() {
        let t1 = Tolerance::for_reduction(DType::F32, 1);
        assert_eq!(t1, Tolerance::for_dtype(DType::F32));
        let t = Tolerance::for_reduction(DType::BF16, 100);
        assert!((t.rel - (1e-2 + 1e-4)).abs() < 1e-15);
    }
}
