//! Bad input to every public entry point is a typed error naming what was wrong: never a panic,
//! never garbage. Shapes are drawn by proptest.

use ferrotron::ops::{self, AdamW, Gemm, Transpose};
use ferrotron::{DType, Device, Error, Stream, Tensor};
use proptest::prelude::*;

fn setup() -> (Device, Stream) {
    let d = Device::cpu();
    let s = d.new_stream().unwrap();
    (d, s)
}

fn t(d: &Device, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(d, shape.to_vec(), dtype).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn gemm_with_mismatched_inner_dims_is_a_shape_error(m in 1usize..40, n in 1usize..40, k in 1usize..40, dk in 1usize..5) {
        let (d, s) = setup();
        let a = t(&d, &[m, k], DType::F32);
        let b = t(&d, &[k + dk, n], DType::F32);
        let mut c = t(&d, &[m, n], DType::F32);
        let err = ops::gemm(&s, &a, &b, &mut c, &Gemm::default()).unwrap_err();
        prop_assert!(matches!(err, Error::ShapeMismatch { op: "gemm", .. }), "{err}");
        // Wrong output shape.
        let b = t(&d, &[k, n], DType::F32);
        let mut c = t(&d, &[m, n + dk], DType::F32);
        let err = ops::gemm(&s, &a, &b, &mut c, &Gemm::default()).unwrap_err();
        prop_assert!(matches!(&err, Error::ShapeMismatch { what, .. } if what == "c"), "{err}");
    }

    #[test]
    fn a_zero_dimension_is_a_zero_dim_error(m in 0usize..5, n in 0usize..5, k in 0usize..5) {
        prop_assume!(m == 0 || n == 0 || k == 0);
        let (d, s) = setup();
        let a = t(&d, &[m, k], DType::F32);
        let b = t(&d, &[k, n], DType::F32);
        let mut c = t(&d, &[m, n], DType::F32);
        let err = ops::gemm(&s, &a, &b, &mut c, &Gemm::default()).unwrap_err();
        prop_assert!(matches!(err, Error::ZeroDim { .. }), "{err}");
        if m == 0 || n == 0 {
            let x = t(&d, &[m, n], DType::F32);
            let bias = t(&d, &[n], DType::F32);
            let mut y = t(&d, &[m, n], DType::F32);
            let err = ops::bias_gelu_fwd(&s, &x, &bias, &mut y).unwrap_err();
            prop_assert!(matches!(err, Error::ZeroDim { .. }), "{err}");
        }
    }

    #[test]
    fn elementwise_shape_errors_name_the_operand(rows in 1usize..20, cols in 1usize..20, extra in 1usize..4) {
        let (d, s) = setup();
        let x = t(&d, &[rows, cols], DType::F32);
        let bad_bias = t(&d, &[cols + extra], DType::F32);
        let mut y = t(&d, &[rows, cols], DType::F32);
        let err = ops::bias_gelu_fwd(&s, &x, &bad_bias, &mut y).unwrap_err();
        prop_assert!(matches!(&err, Error::ShapeMismatch { what, .. } if what == "bias"), "{err}");
        let bias = t(&d, &[cols], DType::F32);
        let mut bad_y = t(&d, &[rows + extra, cols], DType::F32);
        let err = ops::bias_gelu_fwd(&s, &x, &bias, &mut bad_y).unwrap_err();
        prop_assert!(matches!(&err, Error::ShapeMismatch { what, .. } if what == "y"), "{err}");
        let mut bad_mean = t(&d, &[rows + extra], DType::F32);
        let mut rstd = t(&d, &[rows], DType::F32);
        let err = ops::layernorm_fwd(&s, &x, &bias, &bias, 1e-5, &mut y, &mut bad_mean, &mut rstd).unwrap_err();
        prop_assert!(matches!(&err, Error::ShapeMismatch { what, .. } if what == "mean"), "{err}");
        let mut bad_sm = t(&d, &[rows, cols + extra], DType::F32);
        let err = ops::softmax_fwd(&s, &x, &mut bad_sm, 1.0, false).unwrap_err();
        prop_assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
    }

    #[test]
    fn tensor_from_a_wrong_element_count_is_an_error(n in 0usize..50, extra in 1usize..5) {
        let d = Device::cpu();
        let data = vec![0.0f32; n];
        let err = Tensor::from_slice(&d, &data, [n + extra]).unwrap_err();
        prop_assert!(matches!(err, Error::ElementCount { .. }), "{err}");
    }
}

#[test]
fn mismatched_dtypes_are_dtype_errors() {
    let (d, s) = setup();
    let a = t(&d, &[4, 4], DType::F32);
    let b = t(&d, &[4, 4], DType::BF16);
    let mut c = t(&d, &[4, 4], DType::F32);
    let err = ops::gemm(&s, &a, &b, &mut c, &Gemm::default()).unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { what, .. } if what == "b"),
        "{err}"
    );
    // bf16 inputs may write f32 or bf16, never f16.
    let a16 = t(&d, &[4, 4], DType::BF16);
    let mut c16 = t(&d, &[4, 4], DType::F16);
    let err = ops::gemm(&s, &a16, &b, &mut c16, &Gemm::default()).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
    // Integer tensors are not float operands.
    let ai = t(&d, &[4, 4], DType::I32);
    let err = ops::gemm(&s, &ai, &ai, &mut c, &Gemm::default()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedDType { .. }), "{err}");

    let x = t(&d, &[3, 4], DType::F32);
    let bias = t(&d, &[4], DType::BF16);
    let mut y = t(&d, &[3, 4], DType::F32);
    let err = ops::bias_gelu_fwd(&s, &x, &bias, &mut y).unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { what, .. } if what == "bias"),
        "{err}"
    );

    // Cross-entropy: targets must be i32, losses f32.
    let logits = t(&d, &[3, 5], DType::F32);
    let ft = t(&d, &[3], DType::F32);
    let mut losses = t(&d, &[3], DType::F32);
    let err = ops::cross_entropy_fwd(&s, &logits, &ft, &mut losses).unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { what, .. } if what == "targets"),
        "{err}"
    );
    let it = t(&d, &[3], DType::I32);
    let mut bl = t(&d, &[3], DType::BF16);
    let err = ops::cross_entropy_fwd(&s, &logits, &it, &mut bl).unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { what, .. } if what == "losses"),
        "{err}"
    );

    // AdamW moments must be f32.
    let mut p = t(&d, &[8], DType::BF16);
    let g = t(&d, &[8], DType::BF16);
    let mut m = t(&d, &[8], DType::BF16);
    let mut v = t(&d, &[8], DType::F32);
    let err = ops::adamw_step(&s, &AdamW::default(), 1, &mut p, &g, &mut m, &mut v).unwrap_err();
    assert!(
        matches!(&err, Error::DTypeMismatch { what, .. } if what == "m"),
        "{err}"
    );
    // To the host as the wrong type.
    let err = a.to_vec::<half::bf16>(&s).unwrap_err();
    assert!(matches!(err, Error::DTypeMismatch { .. }), "{err}");
}

#[test]
fn bad_scalars_and_ranks_are_errors() {
    let (d, s) = setup();
    let a = t(&d, &[4, 4, 1], DType::F32);
    let b = t(&d, &[4, 4], DType::F32);
    let mut c = t(&d, &[4, 4], DType::F32);
    let err = ops::gemm(&s, &a, &b, &mut c, &Gemm::default()).unwrap_err();
    assert!(matches!(err, Error::RankMismatch { .. }), "{err}");
    let a = t(&d, &[4, 4], DType::F32);
    let args = Gemm {
        alpha: f32::NAN,
        ..Gemm::default()
    };
    let err = ops::gemm(&s, &a, &b, &mut c, &args).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let args = Gemm {
        ta: Transpose::T,
        tb: Transpose::T,
        alpha: 1.0,
        beta: 0.0,
    };
    ops::gemm(&s, &a, &b, &mut c, &args).unwrap();

    let x = t(&d, &[2, 3], DType::F32);
    let g = t(&d, &[3], DType::F32);
    let (mut y, mut mean, mut rstd) = (
        t(&d, &[2, 3], DType::F32),
        t(&d, &[2], DType::F32),
        t(&d, &[2], DType::F32),
    );
    for eps in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let err =
            ops::layernorm_fwd(&s, &x, &g, &g, eps, &mut y, &mut mean, &mut rstd).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { what, .. } if what == "eps"),
            "{err}"
        );
    }
    let x1 = t(&d, &[5], DType::F32);
    let mut y1 = t(&d, &[5], DType::F32);
    let err = ops::softmax_fwd(&s, &x1, &mut y1, 1.0, true).unwrap_err();
    assert!(
        matches!(err, Error::RankMismatch { .. }),
        "causal needs rows and cols: {err}"
    );
    let err = ops::softmax_fwd(&s, &x1, &mut y1, f32::INFINITY, false).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");

    let mut p = t(&d, &[8], DType::F32);
    let gr = t(&d, &[8], DType::F32);
    let (mut m, mut v) = (t(&d, &[8], DType::F32), t(&d, &[8], DType::F32));
    let err = ops::adamw_step(&s, &AdamW::default(), 0, &mut p, &gr, &mut m, &mut v).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { what, .. } if what == "step"),
        "{err}"
    );
    for bad in [
        AdamW {
            lr: -1.0,
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
            eps: f32::NAN,
            ..AdamW::default()
        },
    ] {
        let err = ops::adamw_step(&s, &bad, 1, &mut p, &gr, &mut m, &mut v).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
    s.synchronize().unwrap();
}

#[test]
fn cuda_without_a_driver_is_a_typed_error_not_a_panic() {
    match Device::cuda(0) {
        Ok(_) => eprintln!("a CUDA device is present: nothing to check here"),
        Err(e) => assert!(
            matches!(e, Error::NoCudaDriver { .. } | Error::NoCudaDevice { .. }),
            "{e}"
        ),
    }
    // An absurd ordinal is NoCudaDevice (or NoCudaDriver without a driver), never a panic.
    let err = Device::cuda(10_000).unwrap_err();
    assert!(
        matches!(err, Error::NoCudaDriver { .. } | Error::NoCudaDevice { .. }),
        "{err}"
    );
}
