//! f64 reference of the fused bias + GeLU (Megatron's tanh approximation), forward and backward.

/// `sqrt(2 / pi)`.
pub const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
/// The cubic coefficient of the tanh approximation.
pub const GELU_COEFF: f64 = 0.044_715;

/// GeLU, tanh approximation: `0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))`.
pub fn gelu_ref(z: f64) -> f64 {
    let t = (SQRT_2_OVER_PI * (z + GELU_COEFF * z * z * z)).tanh();
    0.5 * z * (1.0 + t)
}

/// Derivative of [`gelu_ref`]:
/// `0.5 z (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 z^2) + 0.5 (1 + t)`.
pub fn gelu_grad_ref(z: f64) -> f64 {
    let t = (SQRT_2_OVER_PI * (z + GELU_COEFF * z * z * z)).tanh();
    0.5 * z * (1.0 - t * t) * (SQRT_2_OVER_PI + 3.0 * GELU_COEFF * SQRT_2_OVER_PI * z * z)
        + 0.5 * (1.0 + t)
}

/// Forward: `y[r, c] = gelu(x[r, c] + bias[c])` for `x` of shape `[rows, cols]`.
///
/// # Panics
/// If a slice is shorter than its shape needs.
pub fn bias_gelu_fwd_ref(rows: usize, cols: usize, x: &[f64], bias: &[f64]) -> Vec<f64> {
    assert!(x.len() >= rows * cols && bias.len() >= cols);
    let mut y = vec![0.0; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            y[r * cols + c] = gelu_ref(x[r * cols + c] + bias[c]);
        }
    }
    y
}

/// Backward: returns `(dx, dbias)` with `dx[r, c] = dy[r, c] * gelu'(x[r, c] + bias[c])` and
/// `dbias[c] = sum_r dx[r, c]`.
///
/// # Panics
/// If a slice is shorter than its shape needs.
pub fn bias_gelu_bwd_ref(
    rows: usize,
    cols: usize,
    dy: &[f64],
    x: &[f64],
    bias: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    assert!(dy.len() >= rows * cols && x.len() >= rows * cols && bias.len() >= cols);
    let mut dx = vec![0.0; rows * cols];
    let mut dbias = vec![0.0; cols];
    for r in 0..rows {
        for c in 0..cols {
            let i = r * cols + c;
            dx[i] = dy[i] * gelu_grad_ref(x[i] + bias[c]);
            dbias[c] += dx[i];
        }
    }
    (dx, dbias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::random_vec;

    #[test]
    fn gelu_known_values() {
        assert_eq!(gelu_ref(0.0), 0.0);
        assert!((gelu_ref(1.0) - 0.841_191_990_607_477_9).abs() < 1e-12);
        assert!((gelu_grad_ref(0.0) - 0.5).abs() < 1e-15);
        assert!(gelu_ref(-30.0).abs() < 1e-12);
    }

    #[test]
    fn bwd_matches_finite_differences() {
        let (rows, cols) = (5, 7);
        let n = rows * cols;
        let x = random_vec(11, n, -3.0, 3.0);
        let bias = random_vec(12, cols, -1.0, 1.0);
        // Scalar loss L = sum w * y, so dL/dy = w.
        let w = random_vec(13, n, -1.0, 1.0);
        let loss = |x: &[f64], bias: &[f64]| -> f64 {
            let y = bias_gelu_fwd_ref(rows, cols, x, bias);
            y.iter().zip(&w).map(|(a, b)| a * b).sum()
        };
        let (dx, dbias) = bias_gelu_bwd_ref(rows, cols, &w, &x, &bias);
        let h = 1e-6;
        for i in 0..n {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (loss(&xp, &bias) - loss(&xm, &bias)) / (2.0 * h);
            assert!(
                (fd - dx[i]).abs() < 1e-7 * (1.0 + fd.abs()),
                "dx[{i}]: {fd} vs {}",
                dx[i]
            );
        }
        for c in 0..cols {
            let (mut bp, mut bm) = (bias.clone(), bias.clone());
            bp[c] += h;
            bm[c] -= h;
            let fd = (loss(&x, &bp) - loss(&x, &bm)) / (2.0 * h);
            assert!(
                (fd - dbias[c]).abs() < 1e-7 * (1.0 + fd.abs()),
                "dbias[{c}]"
            );
        }
    }
}
