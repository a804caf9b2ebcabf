//! Element types: [`DType`] names a tensor's element type at run time, [`Element`] is the
//! compile-time trait the CPU kernels are generic over.
//!
//! Reduced-precision types (bf16, f16) are storage formats only: every CPU kernel widens them to
//! f32 for arithmetic and rounds once (round-to-nearest-even) when it stores a result.

use half::{bf16, f16};
use std::fmt;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE-754 binary32.
    F32,
    /// bfloat16 (8-bit exponent, 7-bit mantissa), arithmetic in f32.
    BF16,
    /// IEEE-754 binary16, arithmetic in f32.
    F16,
    /// 32-bit signed integer (indices such as class labels).
    I32,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }

    /// Whether this is a floating-point type.
    pub fn is_float(self) -> bool {
        !matches!(self, DType::I32)
    }

    /// Relative tolerance used when comparing a result in this dtype with an f64 reference.
    ///
    /// f32 results are held to ~1e-5 relative error; bf16 (8 significant bits) to ~1e-2 and
    /// f16 (11 bits) to ~2e-3. Op-specific checks may scale these for long reductions.
    pub fn rel_tolerance(self) -> f64 {
        match self {
            DType::F32 => 1e-5,
            DType::BF16 => 1e-2,
            DType::F16 => 2e-3,
            DType::I32 => 0.0,
        }
    }

    /// Short lower-case name (`f32`, `bf16`, `f16`, `i32`).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A floating-point element the CPU kernels can read and write.
///
/// Kernels load with [`Element::to_f32`], compute in f32 and store with [`Element::from_f32`].
pub trait Element: Copy + Send + Sync + Default + fmt::Debug + PartialEq + 'static {
    /// The matching run-time dtype.
    const DTYPE: DType;
    /// Widens to f32 (exact for every supported type).
    fn to_f32(self) -> f32;
    /// Rounds an f32 to this type (round-to-nearest-even).
    fn from_f32(v: f32) -> Self;
    /// Widens to f64 (exact).
    fn to_f64(self) -> f64 {
        self.to_f32() as f64
    }
    /// Rounds an f64 to this type.
    fn from_f64(v: f64) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    #[inline(always)]
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_names() {
        assert_eq!(DType::F32.size_in_bytes(), 4);
        assert_eq!(DType::BF16.size_in_bytes(), 2);
        assert_eq!(DType::BF16.to_string(), "bf16");
        assert!(!DType::I32.is_float());
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        // 1 + 2^-8 lies exactly between two bf16 values (1 and 1 + 2^-7): ties go to even (1.0).
        let v = 1.0f32 + 2f32.powi(-8);
        assert_eq!(<bf16 as Element>::from_f32(v).to_f32(), 1.0);
        let w = 1.0f32 + 3.0 * 2f32.powi(-8);
        assert_eq!(<bf16 as Element>::from_f32(w).to_f32(), 1.0 + 2f32.powi(-6));
    }
}
