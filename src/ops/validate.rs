//! Operand checks shared by the ops: each returns the typed error that names what was wrong.

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `t` has rank `r`.
pub(crate) fn rank(op: &'static str, what: &str, t: &Tensor, r: usize) -> Result<()> {
    if t.shape().rank() != r {
        return Err(Error::RankMismatch {
            op,
            what: what.into(),
            expected: r,
            got: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// `t` has rank at least `r`.
pub(crate) fn min_rank(op: &'static str, what: &str, t: &Tensor, r: usize) -> Result<()> {
    if t.shape().rank() < r {
        return Err(Error::RankMismatch {
            op,
            what: format!("{what} (at least)"),
            expected: r,
            got: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// `t` has exactly the shape `expected`.
pub(crate) fn shape(op: &'static str, what: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.dims() != expected {
        return Err(Error::ShapeMismatch {
            op,
            what: what.into(),
            expected: expected.to_vec(),
            got: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// No dimension of `t` is zero.
pub(crate) fn nonzero(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    if t.shape().has_zero_dim() {
        return Err(Error::ZeroDim {
            op,
            what: what.into(),
            shape: t.dims().to_vec(),
        });
    }
    Ok(())
}

/// `t` has dtype `expected`.
pub(crate) fn dtype(op: &'static str, what: &str, t: &Tensor, expected: DType) -> Result<()> {
    if t.dtype() != expected {
        return Err(Error::DTypeMismatch {
            op,
            what: what.into(),
            expected,
            got: t.dtype(),
        });
    }
    Ok(())
}

/// `t` has a floating-point dtype.
pub(crate) fn float(op: &'static str, what: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Err(Error::UnsupportedDType {
            op,
            what: what.into(),
            dtype: t.dtype(),
        });
    }
    Ok(())
}

/// A finite scalar argument.
pub(crate) fn finite(op: &'static str, what: &str, v: f32) -> Result<()> {
    if !v.is_finite() {
        return Err(Error::invalid(op, what, format!("{v} is not finite")));
    }
    Ok(())
}
