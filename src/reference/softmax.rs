//! f64 reference softmax over the last dimension of `x[batch, rows, cols]`, with a logit scale
//! and an optional causal mask.

/// Whether position `(i, j)` of a `rows x cols` score matrix is masked by the causal mask:
/// `j > i + (cols - rows)`. With `rows == cols` this is the usual strict upper triangle; with
/// `rows > cols` the first `rows - cols` rows are masked entirely.
pub fn causal_masked(rows: usize, cols: usize, i: usize, j: usize) -> bool {
    // j > i + cols - rows, written without underflow.
    j + rows > i + cols
}

/// Forward: `y = softmax(scale * x)` over each row of length `cols`; masked positions (when
/// `causal`) get probability 0, and a row that is masked entirely is all zeros.
///
/// # Panics
/// If `x` is shorter than `batch * rows * cols`.
pub fn softmax_fwd_ref(
    batch: usize,
    rows: usize,
    cols: usize,
    scale: f64,
    causal: bool,
    x: &[f64],
) -> Vec<f64> {
    assert!(x.len() >= batch * rows * cols);
    let mut y = vec![0.0; batch * rows * cols];
    for b in 0..batch {
        for i in 0..rows {
            let base = (b * rows + i) * cols;
            let live = |j: usize| !(causal && causal_masked(rows, cols, i, j));
            let mut max = f64::NEG_INFINITY;
            let mut any = false;
            for j in (0..cols).filter(|&j| live(j)) {
                let s = scale * x[base + j];
                // NaN-propagating max: a NaN logit makes the whole row NaN.
                max = if s.is_nan() || s > max { s } else { max };
                any = true;
            }
            if !any {
                continue;
            }
            let mut sum = 0.0;
            for j in (0..cols).filter(|&j| live(j)) {
                let e = (scale * x[base + j] - max).exp();
                y[base + j] = e;
                sum += e;
            }
            for j in (0..cols).filter(|&j| live(j)) {
                y[base + j] /= sum;
            }
        }
    }
    y
}

/// Backward: `dx = scale * y * (dy - sum_j dy[j] * y[j])` per row, given the forward output `y`.
///
/// # Panics
/// If a slice is shorter than `batch * rows * cols`.
pub fn softmax_bwd_ref(
    batch: usize,
    rows: usize,
    cols: usize,
    scale: f64,
    dy: &[f64],
    y: &[f64],
) -> Vec<f64> {
    let n = batch * rows * cols;
    assert!(dy.len() >= n && y.len() >= n);
    let mut dx = vec![0.0; n];
    for r in 0..batch * rows {
        let base = r * cols;
        let dot: f64 = (0..cols).map(|j| dy[base + j] * y[base + j]).sum();
        for j in 0..cols {
            dx[base + j] = scale * y[base + j] * (dy[base + j] - dot);
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::random_vec;

    fn fd_check(batch: usize, rows: usize, cols: usize, causal: bool, seed: u64) {
        let n = batch * rows * cols;
        let scale = 0.7;
        let x = random_vec(seed, n, -2.0, 2.0);
        let w = random_vec(seed + 1, n, -1.0, 1.0);
        let loss = |x: &[f64]| -> f64 {
            let y = softmax_fwd_ref(batch, rows, cols, scale, causal, x);
            y.iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let y = softmax_fwd_ref(batch, rows, cols, scale, causal, &x);
        let dx = softmax_bwd_ref(batch, rows, cols, scale, &w, &y);
        let h = 1e-6;
        for i in 0..n {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
            assert!(
                (fd - dx[i]).abs() < 1e-7 * (1.0 + fd.abs()),
                "dx[{i}]: {fd} vs {}",
                dx[i]
            );
        }
    }

    #[test]
    fn bwd_matches_finite_differences() {
        fd_check(2, 3, 5, false, 21);
        fd_check(2, 4, 4, true, 22);
        // rows > cols: the first rows are fully masked (zero output, zero gradient).
        fd_check(1, 5, 3, true, 23);
        fd_check(1, 3, 6, true, 24);
    }

    #[test]
    fn rows_sum_to_one_and_masked_rows_are_zero() {
        let (rows, cols) = (6, 4);
        let x = random_vec(3, rows * cols, -5.0, 5.0);
        let y = softmax_fwd_ref(1, rows, cols, 1.0, true, &x);
        for i in 0..rows {
            let s: f64 = y[i * cols..(i + 1) * cols].iter().sum();
            if i < rows - cols {
                assert_eq!(s, 0.0);
            } else {
                assert!((s - 1.0).abs() < 1e-12);
            }
        }
        assert!(causal_masked(3, 3, 0, 1));
        assert!(!causal_masked(3, 3, 1, 1));
        assert!(!causal_masked(2, 4, 0, 2));
        assert!(causal_masked(2, 4, 0, 3));
    }
}
