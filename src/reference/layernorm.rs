//! f64 reference layer normalization over the last dimension (biased variance).

/// Forward: for `x` of shape `[rows, cols]` returns `(y, mean, rstd)` with
/// `mean[r] = sum_c x / cols`, `rstd[r] = 1 / sqrt(sum_c (x - mean)^2 / cols + eps)` and
/// `y = (x - mean) * rstd * gamma + beta`.
///
/// # Panics
/// If a slice is shorter than its shape needs.
pub fn layernorm_fwd_ref(
    rows: usize,
    cols: usize,
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert!(x.len() >= rows * cols && gamma.len() >= cols && beta.len() >= cols);
    let mut y = vec![0.0; rows * cols];
    let mut mean = vec![0.0; rows];
    let mut rstd = vec![0.0; rows];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let mu = row.iter().sum::<f64>() / cols as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / cols as f64;
        let rs = 1.0 / (var + eps).sqrt();
        for c in 0..cols {
            y[r * cols + c] = (row[c] - mu) * rs * gamma[c] + beta[c];
        }
        mean[r] = mu;
        rstd[r] = rs;
    }
    (y, mean, rstd)
}

/// Backward: given `dy`, the forward's `x`, `gamma` and its saved `mean` / `rstd`, returns
/// `(dx, dgamma, dbeta)`:
/// `xhat = (x - mean) * rstd`, `g = dy * gamma`,
/// `dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))`,
/// `dgamma[c] = sum_r dy * xhat`, `dbeta[c] = sum_r dy`.
///
/// # Panics
/// If a slice is shorter than its shape needs.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd_ref(
    rows: usize,
    cols: usize,
    dy: &[f64],
    x: &[f64],
    gamma: &[f64],
    mean: &[f64],
    rstd: &[f64],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    assert!(dy.len() >= rows * cols && x.len() >= rows * cols && gamma.len() >= cols);
    assert!(mean.len() >= rows && rstd.len() >= rows);
    let mut dx = vec![0.0; rows * cols];
    let mut dgamma = vec![0.0; cols];
    let mut dbeta = vec![0.0; cols];
    for r in 0..rows {
        let base = r * cols;
        let xhat: Vec<f64> = (0..cols)
            .map(|c| (x[base + c] - mean[r]) * rstd[r])
            .collect();
        let g: Vec<f64> = (0..cols).map(|c| dy[base + c] * gamma[c]).collect();
        let mean_g = g.iter().sum::<f64>() / cols as f64;
        let mean_gx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for c in 0..cols {
            dx[base + c] = rstd[r] * (g[c] - mean_g - xhat[c] * mean_gx);
            dgamma[c] += dy[base + c] * xhat[c];
            dbeta[c] += dy[base + c];
        }
    }
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::random_vec;

    #[test]
    fn fwd_normalizes() {
        let (rows, cols) = (3, 8);
        let x = random_vec(1, rows * cols, 5.0, 9.0);
        let (y, mean, rstd) = layernorm_fwd_ref(rows, cols, &x, &[1.0; 8], &[0.0; 8], 0.0);
        for r in 0..rows {
            let row = &y[r * cols..(r + 1) * cols];
            let m: f64 = row.iter().sum::<f64>() / cols as f64;
            let v: f64 = row.iter().map(|a| a * a).sum::<f64>() / cols as f64;
            assert!(m.abs() < 1e-12 && (v - 1.0).abs() < 1e-12);
            assert!(mean[r] > 5.0 && rstd[r] > 0.0);
        }
    }

    #[test]
    fn bwd_matches_finite_differences() {
        let (rows, cols) = (4, 6);
        let n = rows * cols;
        let eps = 1e-5;
        let x = random_vec(31, n, -2.0, 2.0);
        let gamma = random_vec(32, cols, 0.5, 1.5);
        let beta = random_vec(33, cols, -0.5, 0.5);
        let w = random_vec(34, n, -1.0, 1.0);
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64]| -> f64 {
            let (y, _, _) = layernorm_fwd_ref(rows, cols, x, gamma, beta, eps);
            y.iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let (_, mean, rstd) = layernorm_fwd_ref(rows, cols, &x, &gamma, &beta, eps);
        let (dx, dgamma, dbeta) = layernorm_bwd_ref(rows, cols, &w, &x, &gamma, &mean, &rstd);
        let h = 1e-6;
        let close = |fd: f64, an: f64| (fd - an).abs() < 1e-7 * (1.0 + fd.abs());
        for i in 0..n {
            let (mut p, mut m) = (x.clone(), x.clone());
            p[i] += h;
            m[i] -= h;
            let fd = (loss(&p, &gamma, &beta) - loss(&m, &gamma, &beta)) / (2.0 * h);
            assert!(close(fd, dx[i]), "dx[{i}]: {fd} vs {}", dx[i]);
        }
        for c in 0..cols {
            let (mut p, mut m) = (gamma.clone(), gamma.clone());
            p[c] += h;
            m[c] -= h;
            let fd = (loss(&x, &p, &beta) - loss(&x, &m, &beta)) / (2.0 * h);
            assert!(close(fd, dgamma[c]), "dgamma[{c}]: {fd} vs {}", dgamma[c]);
            let (mut p, mut m) = (beta.clone(), beta.clone());
            p[c] += h;
            m[c] -= h;
            let fd = (loss(&x, &gamma, &p) - loss(&x, &gamma, &m)) / (2.0 * h);
            assert!(close(fd, dbeta[c]), "dbeta[{c}]: {fd} vs {}", dbeta[c]);
        }
    }
}
