//! CPU fast path of one AdamW optimizer step (PyTorch semantics: decoupled weight decay, bias
//! correction), on flat parameter / gradient slices with f32 moment buffers.

use crate::dtype::Element;
use crate::error::{Error, Result};

/// AdamW hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f32,
    /// Decay rate of the first moment (mean of gradients).
    pub beta1: f32,
    /// Decay rate of the second moment (mean of squared gradients).
    pub beta2: f32,
    /// Added to the denominator `sqrt(vhat)` for stability.
    pub eps: f32,
    /// Decoupled weight decay: each step multiplies the parameters by `1 - lr * weight_decay`.
    pub weight_decay: f32,
}

impl Default for AdamW {
    /// PyTorch's `torch.optim.AdamW` defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
    /// weight decay 0.01.
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamW {
    /// Checks the hyper-parameters: `lr`, `eps` and `weight_decay` finite and `>= 0`, betas in
    /// `[0, 1)`. Returns [`Error::InvalidArgument`] naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let op = "adamw";
        let non_negative = |what: &str, v: f32| -> Result<()> {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(
                    op,
                    what,
                    format!("must be finite and >= 0, got {v}"),
                ))
            }
        };
        let beta = |what: &str, v: f32| -> Result<()> {
            if (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::invalid(
                    op,
                    what,
                    format!("must lie in [0, 1), got {v}"),
                ))
            }
        };
        non_negative("lr", self.lr)?;
        beta("beta1", self.beta1)?;
        beta("beta2", self.beta2)?;
        non_negative("eps", self.eps)?;
        non_negative("weight_decay", self.weight_decay)
    }
}

/// One AdamW step at 1-based `step`, updating `param`, `m` and `v` in place:
/// `p *= 1 - lr * wd; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;`
/// `mhat = m / (1 - b1^step); vhat = v / (1 - b2^step); p -= lr * mhat / (sqrt(vhat) + eps)`.
///
/// Arithmetic in f32 (the bias corrections are computed in f64, then rounded); a bf16/f16
/// parameter is widened, updated and rounded once. `step >= 1` and equal slice lengths are
/// validated by the caller; only debug builds re-check them.
pub fn adamw_step<T: Element>(
    cfg: &AdamW,
    step: u32,
    param: &mut [T],
    grad: &[T],
    m: &mut [f32],
    v: &mut [f32],
) {
    debug_assert!(step >= 1, "adamw_step: step is 1-based");
    debug_assert!(grad.len() == param.len() && m.len() == param.len() && v.len() == param.len());
    let t = step.min(i32::MAX as u32) as i32;
    let inv_bc1 = (1.0 / (1.0 - (cfg.beta1 as f64).powi(t))) as f32;
    let inv_bc2 = (1.0 / (1.0 - (cfg.beta2 as f64).powi(t))) as f32;
    let decay = 1.0 - cfg.lr * cfg.weight_decay;
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    let (c1, c2) = (1.0 - b1, 1.0 - b2);
    let (lr, eps) = (cfg.lr, cfg.eps);
    for (((p, g), m), v) in param
        .iter_mut()
        .zip(grad)
        .zip(m.iter_mut())
        .zip(v.iter_mut())
    {
        let g = g.to_f32();
        let mut pf = p.to_f32() * decay;
        let mn = b1 * *m + c1 * g;
        let vn = b2 * *v + c2 * g * g;
        let mhat = mn * inv_bc1;
        let vhat = vn * inv_bc2;
        pf -= lr * mhat / (vhat.sqrt() + eps);
        *m = mn;
        *v = vn;
        *p = T::from_f32(pf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtype::DType;
    use crate::reference::adamw::adamw_step_ref;
    use crate::verify::{compare, from_f64, random_vec, round_through, to_f64, Tolerance};
    use half::bf16;

    fn cfg() -> AdamW {
        AdamW {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }

    fn ref_step(c: &AdamW, step: u32, p: &mut [f64], g: &[f64], m: &mut [f64], v: &mut [f64]) {
        let f = |x: f32| x as f64;
        adamw_step_ref(
            f(c.lr),
            f(c.beta1),
            f(c.beta2),
            f(c.eps),
            f(c.weight_decay),
            step,
            p,
            g,
            m,
            v,
        );
    }

    /// One step from a random state (m, v already warm), compared with the reference from the
    /// same (rounded) state.
    fn check<T: Element>(seed: u64, n: usize, step: u32) -> (Vec<T>, Vec<f32>, Vec<f32>) {
        let c = cfg();
        let mut p64 = round_through::<T>(&random_vec(seed, n, -1.0, 1.0));
        let g64 = round_through::<T>(&random_vec(seed + 1, n, -1.0, 1.0));
        let mut m64 = round_through::<f32>(&random_vec(seed + 2, n, -0.1, 0.1));
        let mut v64 = round_through::<f32>(&random_vec(seed + 3, n, 0.0, 0.01));
        let (mut p, g): (Vec<T>, Vec<T>) = (from_f64(&p64), from_f64(&g64));
        let (mut m, mut v): (Vec<f32>, Vec<f32>) = (from_f64(&m64), from_f64(&v64));
        adamw_step(&c, step, &mut p, &g, &mut m, &mut v);
        ref_step(&c, step, &mut p64, &g64, &mut m64, &mut v64);
        let what = format!("adamw {} n={n} step={step}", T::DTYPE);
        // Elementwise: a short f32 chain per element, rounded once on store.
        let cp = compare(&to_f64(&p), &p64, Tolerance::for_dtype(T::DTYPE));
        assert!(cp.pass, "{what} param: {cp}");
        let f32_tol = Tolerance::for_dtype(DType::F32);
        let cm = compare(&to_f64(&m), &m64, f32_tol);
        assert!(cm.pass, "{what} m: {cm}");
        let cv = compare(&to_f64(&v), &v64, f32_tol);
        assert!(cv.pass, "{what} v: {cv}");
        (p, m, v)
    }

    #[test]
    fn matches_reference() {
        for (i, &n) in [1usize, 7, 64, 129, 1000].iter().enumerate() {
            for &step in &[1u32, 2, 10, 1000] {
                check::<f32>(10 * i as u64 + step as u64, n, step);
                check::<bf16>(500 + 10 * i as u64 + step as u64, n, step);
            }
        }
    }

    #[test]
    fn many_steps_f32_track_reference() {
        let c = AdamW::default();
        let n = 129;
        let mut p64 = round_through::<f32>(&random_vec(1, n, -1.0, 1.0));
        let mut p: Vec<f32> = from_f64(&p64);
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let (mut m64, mut v64) = (vec![0.0; n], vec![0.0; n]);
        for step in 1..=20u32 {
            let g64 = round_through::<f32>(&random_vec(100 + step as u64, n, -1.0, 1.0));
            let g: Vec<f32> = from_f64(&g64);
            adamw_step(&c, step, &mut p, &g, &mut m, &mut v);
            ref_step(&c, step, &mut p64, &g64, &mut m64, &mut v64);
        }
        let cp = compare(&to_f64(&p), &p64, Tolerance::for_dtype(DType::F32));
        assert!(cp.pass, "param after 20 steps: {cp}");
        let cv = compare(&to_f64(&v), &v64, Tolerance::for_dtype(DType::F32));
        assert!(cv.pass, "v after 20 steps: {cv}");
    }

    #[test]
    fn deterministic() {
        let a = check::<f32>(900, 1000, 3);
        let b = check::<f32>(900, 1000, 3);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.0), bits(&b.0));
        assert_eq!(bits(&a.1), bits(&b.1));
        assert_eq!(bits(&a.2), bits(&b.2));
        assert_eq!(check::<bf16>(901, 129, 5), check::<bf16>(901, 129, 5));
    }

    #[test]
    fn nan_propagates() {
        let mut p = vec![1.0f32, 2.0, 3.0];
        let g = [0.1f32, f32::NAN, 0.3];
        let (mut m, mut v) = (vec![0.0f32; 3], vec![0.0f32; 3]);
        adamw_step(&AdamW::default(), 1, &mut p, &g, &mut m, &mut v);
        assert!(p[1].is_nan() && m[1].is_nan() && v[1].is_nan());
        assert!(p[0].is_finite() && p[2].is_finite());
    }

    #[test]
    fn validate_rejects_bad_hyperparameters() {
        assert!(AdamW::default().validate().is_ok());
        let bad = [
            AdamW {
                lr: f32::NAN,
                ..AdamW::default()
            },
            AdamW {
                beta1: 1.0,
                ..AdamW::default()
            },
            AdamW {
                beta2: -0.1,
                ..AdamW::default()
            },
            AdamW {
                eps: -1.0,
                ..AdamW::default()
            },
            AdamW {
                weight_decay: f32::INFINITY,
                ..AdamW::default()
            },
        ];
        for b in bad {
            assert!(
                matches!(b.validate(), Err(Error::InvalidArgument { .. })),
                "{b:?}"
            );
        }
    }
}
