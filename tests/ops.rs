//! Every CPU operator against its f64 reference through the same harness `ferrotron check` uses,
//! on several seeds, plus determinism and NaN propagation at the tensor level.

mod common;

use common::watchdog;
use ferrotron::ops::{self, Gemm};
use ferrotron::{check, DType, Device, Tensor};

#[test]
fn every_cpu_op_matches_its_reference_on_fresh_seeds() {
    watchdog(120, "check_cpu", || {
        for seed in [1u64, 2, 0xdead_beef] {
            let report = check::run(&[Device::cpu()], seed);
            assert!(
                report.rows.len() > 100,
                "too few rows: {}",
                report.rows.len()
            );
            let fails = report.failures();
            assert!(fails.is_empty(), "seed {seed}:\n{}", report.table());
            // Every op family is present: none silently dropped out of the table.
            for op in [
                "gemm_nn",
                "gemm_nt",
                "gemm_tn",
                "gemm_tt",
                "bias_gelu_fwd",
                "bias_gelu_bwd.dx",
                "bias_gelu_bwd.dbias",
                "layernorm_fwd.y",
                "layernorm_bwd.dgamma",
                "softmax.y",
                "softmax(causal).dx",
                "cross_entropy.loss",
                "cross_entropy.dlogits",
                "adamw_step(x3).param",
            ] {
                assert!(report.rows.iter().any(|r| r.op == op), "missing {op}");
            }
        }
    });
}

#[test]
fn the_harness_rejects_a_wrong_result() {
    // A NaN output, a wrong value and a missing element never pass.
    use ferrotron::verify::{compare, Tolerance};
    let tol = Tolerance::for_dtype(DType::F32);
    assert!(!compare(&[f64::NAN], &[1.0], tol).pass);
    assert!(!compare(&[1.001], &[1.0], tol).pass);
    assert!(!compare(&[1.0], &[1.0, 2.0], tol).pass);
    assert!(compare(&[1.0 + 1e-7], &[1.0], tol).pass);
}

fn gemm_once(dev: &Device, seed: u64) -> Vec<f32> {
    let s = dev.new_stream().unwrap();
    let (m, n, k) = (37, 29, 301);
    let av = ferrotron::verify::random_vec(seed, m * k, -1.0, 1.0);
    let bv = ferrotron::verify::random_vec(seed + 1, k * n, -1.0, 1.0);
    let a = Tensor::from_f64(dev, &av, [m, k], DType::F32).unwrap();
    let b = Tensor::from_f64(dev, &bv, [k, n], DType::F32).unwrap();
    let mut c = Tensor::poisoned(dev, [m, n], DType::F32).unwrap();
    ops::gemm(&s, &a, &b, &mut c, &Gemm::default()).unwrap();
    c.to_vec::<f32>(&s).unwrap()
}

#[test]
fn ops_are_bitwise_deterministic() {
    watchdog(60, "determinism", || {
        let dev = Device::cpu();
        let first = gemm_once(&dev, 7);
        for _ in 0..3 {
            let again = gemm_once(&dev, 7);
            assert!(first
                .iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        // Reductions over rows (dbias) too.
        let s = dev.new_stream().unwrap();
        let run = || {
            let xv = ferrotron::verify::random_vec(3, 257 * 33, -3.0, 3.0);
            let x = Tensor::from_f64(&dev, &xv, [257, 33], DType::BF16).unwrap();
            let dy = Tensor::from_f64(&dev, &xv, [257, 33], DType::BF16).unwrap();
            let b = Tensor::zeros(&dev, [33], DType::BF16).unwrap();
            let mut dx = Tensor::poisoned(&dev, [257, 33], DType::BF16).unwrap();
            let mut db = Tensor::poisoned(&dev, [33], DType::BF16).unwrap();
            ops::bias_gelu_bwd(&s, &dy, &x, &b, &mut dx, Some(&mut db)).unwrap();
            db.to_vec::<half::bf16>(&s).unwrap()
        };
        let a = run();
        assert_eq!(a, run());
    });
}

#[test]
fn a_nan_input_is_never_hidden() {
    watchdog(30, "nan", || {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let mut xv = vec![0.5f32; 16];
        xv[5] = f32::NAN;
        let x = Tensor::from_slice(&dev, &xv, [2, 8]).unwrap();
        let g = Tensor::from_slice(&dev, &[1.0f32; 8], [8]).unwrap();
        let b = Tensor::zeros(&dev, [8], DType::F32).unwrap();
        let mut y = Tensor::poisoned(&dev, [2, 8], DType::F32).unwrap();
        let mut mean = Tensor::poisoned(&dev, [2], DType::F32).unwrap();
        let mut rstd = Tensor::poisoned(&dev, [2], DType::F32).unwrap();
        ops::layernorm_fwd(&s, &x, &g, &b, 1e-5, &mut y, &mut mean, &mut rstd).unwrap();
        let yv = y.to_vec::<f32>(&s).unwrap();
        assert!(
            yv[..8].iter().all(|v| v.is_nan()),
            "row with a NaN must be NaN"
        );
        assert!(
            yv[8..].iter().all(|v| v.is_finite()),
            "other rows unaffected"
        );
        let mut sm = Tensor::poisoned(&dev, [2, 8], DType::F32).unwrap();
        ops::softmax_fwd(&s, &x, &mut sm, 1.0, false).unwrap();
        assert!(sm.to_vec::<f32>(&s).unwrap()[..8]
            .iter()
            .any(|v| v.is_nan()));
    });
}
