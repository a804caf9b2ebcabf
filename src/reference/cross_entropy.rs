//! f64 reference cross-entropy over logits `[n, v]` with integer class targets.

/// Forward: `loss[r] = logsumexp(logits[r, :]) - logits[r, targets[r]]`, computed stably
/// (the row max is subtracted before exponentiating).
///
/// # Panics
/// If a slice is shorter than its shape needs or a target is outside `[0, v)`.
pub fn cross_entropy_fwd_ref(n: usize, v: usize, logits: &[f64], targets: &[i32]) -> Vec<f64> {
    assert!(logits.len() >= n * v && targets.len() >= n);
    (0..n)
        .map(|r| {
            let row = &logits[r * v..(r + 1) * v];
            let t = usize::try_from(targets[r]).expect("target >= 0");
            let max = row.iter().copied().fold(f64::NEG_INFINITY, nan_max);
            let sum: f64 = row.iter().map(|&l| (l - max).exp()).sum();
            max + sum.ln() - row[t]
        })
        .collect()
}

/// Backward: `dlogits[r, c] = (softmax(logits[r, :])[c] - [c == targets[r]]) * dloss[r]`.
///
/// # Panics
/// If a slice is shorter than its shape needs or a target is outside `[0, v)`.
pub fn cross_entropy_bwd_ref(
    n: usize,
    v: usize,
    logits: &[f64],
    targets: &[i32],
    dloss: &[f64],
) -> Vec<f64> {
    assert!(logits.len() >= n * v && targets.len() >= n && dloss.len() >= n);
    let mut d = vec![0.0; n * v];
    for r in 0..n {
        let row = &logits[r * v..(r + 1) * v];
        let t = usize::try_from(targets[r]).expect("target >= 0");
        let max = row.iter().copied().fold(f64::NEG_INFINITY, nan_max);
        let sum: f64 = row.iter().map(|&l| (l - max).exp()).sum();
        for c in 0..v {
            let p = (row[c] - max).exp() / sum;
            let onehot = if c == t { 1.0 } else { 0.0 };
            d[r * v + c] = (p - onehot) * dloss[r];
        }
    }
    d
}

/// Max that propagates NaN (`f64::max` would drop it).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{random_indices, random_vec};

    #[test]
    fn uniform_logits_give_log_v() {
        let loss = cross_entropy_fwd_ref(2, 4, &[3.0; 8], &[0, 3]);
        for l in loss {
            assert!((l - 4f64.ln()).abs() < 1e-12);
        }
        // Huge logits stay finite.
        let loss = cross_entropy_fwd_ref(1, 2, &[1000.0, 0.0], &[0]);
        assert!(loss[0].abs() < 1e-12);
    }

    #[test]
    fn bwd_matches_finite_differences() {
        let (n, v) = (4, 9);
        let logits = random_vec(41, n * v, -3.0, 3.0);
        let targets = random_indices(42, n, v);
        let w = random_vec(43, n, 0.1, 1.0);
        let loss = |l: &[f64]| -> f64 {
            let per = cross_entropy_fwd_ref(n, v, l, &targets);
            per.iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let d = cross_entropy_bwd_ref(n, v, &logits, &targets, &w);
        let h = 1e-6;
        for i in 0..n * v {
            let (mut p, mut m) = (logits.clone(), logits.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p) - loss(&m)) / (2.0 * h);
            assert!(
                (fd - d[i]).abs() < 1e-7 * (1.0 + fd.abs()),
                "d[{i}]: {fd} vs {}",
                d[i]
            );
        }
    }
}
