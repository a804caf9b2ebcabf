//! f64 reference AdamW step (PyTorch semantics: decoupled weight decay, bias correction).

/// One AdamW step in f64 at 1-based `step`, updating `param`, `m` and `v` in place:
/// `p *= 1 - lr * wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;`
/// `mhat = m / (1 - b1^step); vhat = v / (1 - b2^step); p -= lr * mhat / (sqrt(vhat) + eps)`.
///
/// # Panics
/// If `step == 0` or the slices' lengths differ.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step_ref(
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u32,
    param: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
) {
    assert!(step >= 1, "adamw_step_ref: step is 1-based");
    let n = param.len();
    assert!(grad.len() == n && m.len() == n && v.len() == n);
    let bc1 = 1.0 - beta1.powi(step as i32);
    let bc2 = 1.0 - beta2.powi(step as i32);
    for i in 0..n {
        let g = grad[i];
        param[i] *= 1.0 - lr * weight_decay;
        m[i] = beta1 * m[i] + (1.0 - beta1) * g;
        v[i] = beta2 * v[i] + (1.0 - beta2) * g * g;
        let mhat = m[i] / bc1;
        let vhat = v[i] / bc2;
        param[i] -= lr * mhat / (vhat.sqrt() + eps);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_by_lr() {
        // At step 1, mhat = g and vhat = g^2, so the update is lr * g / (|g| + eps) ~ lr sign(g).
        let mut p = [1.0, -2.0];
        let (mut m, mut v) = ([0.0; 2], [0.0; 2]);
        adamw_step_ref(
            0.1,
            0.9,
            0.999,
            1e-8,
            0.0,
            1,
            &mut p,
            &[0.5, -3.0],
            &mut m,
            &mut v,
        );
        assert!((p[0] - 0.9).abs() < 1e-6 && (p[1] + 1.9).abs() < 1e-6);
        assert!((m[0] - 0.05).abs() < 1e-15 && (v[1] - 0.009).abs() < 1e-15);
        // Weight decay alone (zero gradient): p *= 1 - lr * wd.
        let mut p = [2.0];
        let (mut m, mut v) = ([0.0], [0.0]);
        adamw_step_ref(
            0.1,
            0.9,
            0.999,
            1e-8,
            0.5,
            1,
            &mut p,
            &[0.0],
            &mut m,
            &mut v,
        );
        assert!((p[0] - 1.9).abs() < 1e-15);
    }
}
