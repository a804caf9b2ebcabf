//! Floating-point and conversion semantics of PTX instructions.
//!
//! This module implements, bit-exactly where the ISA is exact, the numeric behaviour of the PTX
//! instructions described in NVIDIA's *Parallel Thread Execution ISA* document:
//!
//! * "Floating Point Instructions" (`add`, `sub`, `mul`, `fma`, `div`, `rcp`, `sqrt`, `rsqrt`,
//!   `ex2`, `lg2`, `sin`, `cos`, `tanh`, `min`, `max`, `copysign`, `abs`, `neg`),
//! * "Half Precision Floating Point Instructions" (`add`/`mul`/`fma` on `.f16`, `.f16x2`,
//!   `.bf16`, `.bf16x2`),
//! * "Data Movement and Conversion Instructions: cvt" (all float/int conversions with the
//!   `.rn/.rz/.rm/.rp`, `.rni/.rzi/.rmi/.rpi`, `.relu` and `.satfinite` modifiers),
//! * "Comparison and Selection Instructions: setp / set" (the ordered/unordered float
//!   comparison operators).
//!
//! (Section numbers move between ISA revisions, so instructions are cited by name.)
//!
//! # Conventions
//!
//! * **Rounding.** Every operation with a rounding modifier is *correctly rounded* in every mode:
//!   the result is computed from the exact real value (using exact integer arithmetic on the
//!   significands where a native `f32`/`f64` operation could round twice), so `.rz/.rm/.rp`
//!   results are exact directed roundings and `.rn` results equal Rust's native IEEE operations
//!   bit for bit (native operations are used as the fast path for `.rn`).
//! * **NaN.** NVIDIA GPUs do not propagate NaN payloads out of arithmetic: every NaN *result*
//!   produced here is the canonical NaN ([`CANONICAL_NAN_F32`] = `0x7FFFFFFF`,
//!   [`CANONICAL_NAN_F64`], [`CANONICAL_NAN_F16`], [`CANONICAL_NAN_BF16`] = `0x7FFF`).
//! * **`.ftz`.** Flushes subnormal *inputs* and subnormal *results* (after rounding) to a zero of
//!   the same sign ([`ftz_f32`]). Without `.ftz`, subnormals are fully supported (sm_20+ behaviour).
//! * **`.sat`.** Clamps the result to `[+0.0, 1.0]`; NaN becomes `+0.0` and `-0.0` becomes `+0.0`
//!   ([`saturate_f32`]).
//! * **`.approx` instructions.** The ISA only bounds their error. The emulator returns the
//!   (nearly) correctly rounded value, computed in `f64` and rounded once to `f32`, which is
//!   within every bound the ISA documents; each function's documentation states the bound and
//!   the special-case table it implements. Callers comparing against hardware must use
//!   tolerances for these, never bitwise equality.
#![warn(missing_docs)]

use core::cmp::Ordering;

// ---------------------------------------------------------------------------------------------
// Public enums and constants
// ---------------------------------------------------------------------------------------------

/// Floating-point rounding modifiers (PTX ISA, "Rounding Modifiers": `.rn`, `.rz`, `.rm`, `.rp`).
///
/// `.rna` (round to nearest, ties away from zero) exists only for `cvt.rna.tf32.f32` and is not
/// modelled here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FloatRound {
    /// `.rn`: round to nearest, ties to even (IEEE 754 roundTiesToEven).
    Rn,
    /// `.rz`: round towards zero.
    Rz,
    /// `.rm`: round towards negative infinity.
    Rm,
    /// `.rp`: round towards positive infinity.
    Rp,
}

/// Integer rounding modifiers of `cvt` from a float to an integer, or to an integral value in a
/// float format (PTX ISA, "cvt": `.rni`, `.rzi`, `.rmi`, `.rpi`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntRound {
    /// `.rni`: round to nearest integer, ties to even.
    Rni,
    /// `.rzi`: round to the integer towards zero (truncate).
    Rzi,
    /// `.rmi`: round to the integer towards negative infinity (floor).
    Rmi,
    /// `.rpi`: round to the integer towards positive infinity (ceiling).
    Rpi,
}

/// The flavours of `div.f32` (PTX ISA, "Floating Point Instructions: div").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DivMode {
    /// `div.approx.f32`: fast approximation `a * (1/b)`; at most 2 ulp error for
    /// `|b|` in `[2^-126, 2^126]`.
    Approx,
    /// `div.full.f32`: full-range approximation; at most 2 ulp error over the whole range.
    Full,
    /// `div.rn/.rz/.rm/.rp.f32`: IEEE 754 compliant, correctly rounded division.
    Round(FloatRound),
}

/// Floating-point comparison operators of `setp`/`set` (PTX ISA, "Comparison and Selection
/// Instructions", "Floating Point Comparison Operators").
///
/// The ordered operators are false when either operand is NaN (including `ne`); the unordered
/// `*u` operators are true when either operand is NaN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FloatCmp {
    /// `eq`: `a == b`, false if either is NaN.
    Eq,
    /// `ne`: `a != b`, false if either is NaN.
    Ne,
    /// `lt`: `a < b`, false if either is NaN.
    Lt,
    /// `le`: `a <= b`, false if either is NaN.
    Le,
    /// `gt`: `a > b`, false if either is NaN.
    Gt,
    /// `ge`: `a >= b`, false if either is NaN.
    Ge,
    /// `equ`: `a == b` or either is NaN.
    Equ,
    /// `neu`: `a != b` or either is NaN.
    Neu,
    /// `ltu`: `a < b` or either is NaN.
    Ltu,
    /// `leu`: `a <= b` or either is NaN.
    Leu,
    /// `gtu`: `a > b` or either is NaN.
    Gtu,
    /// `geu`: `a >= b` or either is NaN.
    Geu,
    /// `num`: neither operand is NaN.
    Num,
    /// `nan`: at least one operand is NaN.
    Nan,
}

/// Canonical `.f32` NaN produced by PTX arithmetic (`0x7FFFFFFF`).
pub const CANONICAL_NAN_F32: u32 = 0x7FFF_FFFF;
/// Canonical `.f64` NaN used by this emulator for NaN results (`0x7FFFFFFFFFFFFFFF`).
pub const CANONICAL_NAN_F64: u64 = 0x7FFF_FFFF_FFFF_FFFF;
/// Canonical `.f16` NaN (`0x7FFF`).
pub const CANONICAL_NAN_F16: u16 = 0x7FFF;
/// Canonical `.bf16` NaN (`0x7FFF`).
pub const CANONICAL_NAN_BF16: u16 = 0x7FFF;

fn nan_f32() -> f32 {
    f32::from_bits(CANONICAL_NAN_F32)
}

fn nan_f64() -> f64 {
    f64::from_bits(CANONICAL_NAN_F64)
}

// ---------------------------------------------------------------------------------------------
// Exact arithmetic core
// ---------------------------------------------------------------------------------------------

/// An IEEE 754 binary interchange format described by its field widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Format {
    exp_bits: u32,
    frac_bits: u32,
}

const F64: Format = Format {
    exp_bits: 11,
    frac_bits: 52,
};
const F32: Format = Format {
    exp_bits: 8,
    frac_bits: 23,
};
const F16: Format = Format {
    exp_bits: 5,
    frac_bits: 10,
};
const BF16: Format = Format {
    exp_bits: 8,
    frac_bits: 7,
};

impl Format {
    fn bias(self) -> i32 {
        (1i32 << (self.exp_bits - 1)) - 1
    }
    /// Exponent of the smallest normal number.
    fn min_exp(self) -> i32 {
        1 - self.bias()
    }
    fn exp_all_ones(self) -> u64 {
        (1u64 << self.exp_bits) - 1
    }
    fn sign_mask(self) -> u64 {
        1u64 << (self.exp_bits + self.frac_bits)
    }
    fn inf(self) -> u64 {
        self.exp_all_ones() << self.frac_bits
    }
    fn max_finite(self) -> u64 {
        self.inf() - 1
    }
    fn canonical_nan(self) -> u64 {
        self.sign_mask() - 1
    }
    fn is_subnormal(self, bits: u64) -> bool {
        let exp = (bits >> self.frac_bits) & self.exp_all_ones();
        let frac = bits & ((1u64 << self.frac_bits) - 1);
        exp == 0 && frac != 0
    }
    fn flush(self, bits: u64) -> u64 {
        if self.is_subnormal(bits) {
            bits & self.sign_mask()
        } else {
            bits
        }
    }
}

/// An exact real value `(-1)^neg * (mag + f) * 2^exp`, where `f` is 0 if `!sticky` and some
/// unknown value strictly inside `(0, 1)` if `sticky`.
#[derive(Clone, Copy, Debug)]
struct Exact {
    neg: bool,
    mag: u128,
    exp: i32,
    sticky: bool,
}

fn bit_len(x: u128) -> i32 {
    128 - x.leading_zeros() as i32
}

impl Exact {
    /// Exact decomposition of a finite `f64`.
    fn from_f64(x: f64) -> Self {
        debug_assert!(x.is_finite());
        let bits = x.to_bits();
        let neg = bits >> 63 != 0;
        let biased = ((bits >> 52) & 0x7FF) as i32;
        let frac = bits & ((1u64 << 52) - 1);
        let (mag, exp) = if biased == 0 {
            (frac, -1074)
        } else {
            (frac | (1u64 << 52), biased - 1075)
        };
        Exact {
            neg,
            mag: u128::from(mag),
            exp,
            sticky: false,
        }
    }

    fn is_zero(self) -> bool {
        self.mag == 0 && !self.sticky
    }

    /// Drops low bits (folding them into the sticky flag) so that `mag` has at most `width` bits.
    fn compact(mut self, width: i32) -> Self {
        let len = bit_len(self.mag);
        if len > width {
            let s = (len - width) as u32;
            let lost = self.mag & ((1u128 << s) - 1) != 0;
            self.mag >>= s;
            self.exp += s as i32;
            self.sticky |= lost;
        }
        self
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    Zero,
    Below,
    Half,
    Above,
}

/// Rounds an exact value into `fmt` with rounding `rnd`; returns the encoding (sign included).
/// Overflow goes to infinity or to the largest finite number as IEEE 754 prescribes for `rnd`,
/// or always to the largest finite number when `satfinite` is set. A zero `Exact` keeps its sign.
fn round_exact(x: Exact, rnd: FloatRound, fmt: Format, satfinite: bool) -> u64 {
    let sign = if x.neg { fmt.sign_mask() } else { 0 };
    let x = x.compact(120);
    let (mut mag, mut exp) = (x.mag, x.exp);
    if x.sticky {
        // (m + f) with f in (0,1) rounds exactly like m + 1/4 at any position at or above the
        // original last bit, and every caller rounds at least two bits above it.
        mag = (mag << 2) | 1;
        exp -= 2;
    }
    if mag == 0 {
        return sign;
    }
    let p = fmt.frac_bits as i32;
    let top = bit_len(mag) - 1 + exp;
    let mut q = (top - p).max(fmt.min_exp() - p);
    let shift = q - exp;
    let (mut r, tail) = if shift <= 0 {
        (mag << (-shift) as u32, Tail::Zero)
    } else if shift >= 127 {
        // mag < 2^123 < 2^(shift-1): nonzero and below half an ulp.
        (0, Tail::Below)
    } else {
        let s = shift as u32;
        let rem = mag & ((1u128 << s) - 1);
        let half = 1u128 << (s - 1);
        let tail = match rem.cmp(&half) {
            Ordering::Less if rem == 0 => Tail::Zero,
            Ordering::Less => Tail::Below,
            Ordering::Equal => Tail::Half,
            Ordering::Greater => Tail::Above,
        };
        (mag >> s, tail)
    };
    let inexact = tail != Tail::Zero;
    let up = match rnd {
        FloatRound::Rn => tail == Tail::Above || (tail == Tail::Half && r & 1 == 1),
        FloatRound::Rz => false,
        FloatRound::Rm => x.neg && inexact,
        FloatRound::Rp => !x.neg && inexact,
    };
    if up {
        r += 1;
    }
    if r >> (p + 1) != 0 {
        r >>= 1;
        q += 1;
    }
    if r < (1u128 << p) {
        // Subnormal (or zero): exponent field 0.
        return sign | r as u64;
    }
    let biased = q + p + fmt.bias();
    if i64::from(biased) >= fmt.exp_all_ones() as i64 {
        let to_inf = !satfinite
            && match rnd {
                FloatRound::Rn => true,
                FloatRound::Rz => false,
                FloatRound::Rm => x.neg,
                FloatRound::Rp => !x.neg,
            };
        return sign | if to_inf { fmt.inf() } else { fmt.max_finite() };
    }
    sign | ((biased as u64) << p) | (r as u64 & ((1u64 << p) - 1))
}

/// Exact product of two exact values without sticky bits.
fn mul_exact(x: Exact, y: Exact) -> Exact {
    debug_assert!(!x.sticky && !y.sticky && bit_len(x.mag) <= 64 && bit_len(y.mag) <= 64);
    Exact {
        neg: x.neg != y.neg,
        mag: x.mag * y.mag,
        exp: x.exp + y.exp,
        sticky: false,
    }
}

/// Exact sum of two exact values (magnitudes up to 110 bits, no sticky bits). Bits of the
/// smaller operand lying more than 120 bits below the larger one's leading bit are folded into
/// the sticky flag; the result then has at least 118 significant bits, so this never affects
/// rounding to any format of at most 53 bits.
fn add_exact(x: Exact, y: Exact) -> Exact {
    debug_assert!(!x.sticky && !y.sticky && bit_len(x.mag) <= 110 && bit_len(y.mag) <= 110);
    if x.mag == 0 {
        return y;
    }
    if y.mag == 0 {
        return x;
    }
    let tx = bit_len(x.mag) - 1 + x.exp;
    let ty = bit_len(y.mag) - 1 + y.exp;
    let (hi, lo) = if tx >= ty { (x, y) } else { (y, x) };
    let top = tx.max(ty);
    let base = x.exp.min(y.exp).max(top - 120);
    let hm = hi.mag << (hi.exp - base) as u32;
    let (lm, sticky) = if lo.exp >= base {
        (lo.mag << (lo.exp - base) as u32, false)
    } else {
        let s = (base - lo.exp) as u32;
        if s >= 128 {
            (0, true)
        } else {
            (lo.mag >> s, lo.mag & ((1u128 << s) - 1) != 0)
        }
    };
    if hi.neg == lo.neg {
        Exact {
            neg: hi.neg,
            mag: hm + lm,
            exp: base,
            sticky,
        }
    } else if sticky {
        // hm - (lm + f) = (hm - lm - 1) + (1 - f); hm exceeds lm by far here.
        Exact {
            neg: hi.neg,
            mag: hm - lm - 1,
            exp: base,
            sticky: true,
        }
    } else if hm >= lm {
        Exact {
            neg: hi.neg,
            mag: hm - lm,
            exp: base,
            sticky: false,
        }
    } else {
        Exact {
            neg: lo.neg,
            mag: lm - hm,
            exp: base,
            sticky: false,
        }
    }
}

/// Rounds the exact sum `x + y`, applying the IEEE 754 sign rules for exact zero sums: the sum
/// of two zeros of equal sign keeps that sign, any other exact zero is `+0` except under `.rm`,
/// where it is `-0`.
fn round_sum(x: Exact, y: Exact, rnd: FloatRound, fmt: Format) -> u64 {
    let s = add_exact(x, y);
    if s.is_zero() {
        let neg = if x.is_zero() && y.is_zero() && x.neg == y.neg {
            x.neg
        } else {
            rnd == FloatRound::Rm
        };
        return if neg { fmt.sign_mask() } else { 0 };
    }
    round_exact(s, rnd, fmt, false)
}

/// Normalises a nonzero significand to exactly 53 bits.
fn normalize53(mag: u128, exp: i32) -> (u128, i32) {
    let s = 53 - bit_len(mag);
    debug_assert!(s >= 0);
    (mag << s as u32, exp - s)
}

/// Exact quotient `a / b` of finite nonzero values (62+ quotient bits plus a sticky remainder).
fn div_exact(a: f64, b: f64) -> Exact {
    let x = Exact::from_f64(a);
    let y = Exact::from_f64(b);
    let (xm, xe) = normalize53(x.mag, x.exp);
    let (ym, ye) = normalize53(y.mag, y.exp);
    let num = xm << 62;
    Exact {
        neg: x.neg != y.neg,
        mag: num / ym,
        exp: xe - 62 - ye,
        sticky: num % ym != 0,
    }
}

/// Exact square root of a finite positive value (61+ root bits plus a sticky remainder).
fn sqrt_exact(a: f64) -> Exact {
    let x = Exact::from_f64(a);
    let mut s = 124 - bit_len(x.mag);
    if (x.exp - s) & 1 != 0 {
        s -= 1;
    }
    let n = x.mag << s as u32;
    let e = x.exp - s;
    let r = n.isqrt();
    Exact {
        neg: false,
        mag: r,
        exp: e / 2,
        sticky: r * r != n,
    }
}

/// Correctly rounded `a * b + c` of finite values into `fmt`.
fn fma_bits(a: f64, b: f64, c: f64, rnd: FloatRound, fmt: Format) -> u64 {
    let p = mul_exact(Exact::from_f64(a), Exact::from_f64(b));
    round_sum(p, Exact::from_f64(c), rnd, fmt)
}

/// Correctly rounded `a + b` of finite values into `fmt`.
fn add_bits(a: f64, b: f64, rnd: FloatRound, fmt: Format) -> u64 {
    round_sum(Exact::from_f64(a), Exact::from_f64(b), rnd, fmt)
}

/// Correctly rounded `a * b` of finite values into `fmt`.
fn mul_bits(a: f64, b: f64, rnd: FloatRound, fmt: Format) -> u64 {
    round_exact(
        mul_exact(Exact::from_f64(a), Exact::from_f64(b)),
        rnd,
        fmt,
        false,
    )
}

/// Converts any `f64` into `fmt` per `cvt`: NaN becomes the canonical NaN, `.relu` clamps
/// negative values (and `-0.0`) to `+0`, `.satfinite` maps infinities and overflow to the largest
/// finite value of the same sign.
fn convert_f64(x: f64, rnd: FloatRound, relu: bool, satfinite: bool, fmt: Format) -> u64 {
    if x.is_nan() {
        return fmt.canonical_nan();
    }
    if relu && x.is_sign_negative() {
        return 0;
    }
    if x.is_infinite() {
        let sign = if x < 0.0 { fmt.sign_mask() } else { 0 };
        return sign
            | if satfinite {
                fmt.max_finite()
            } else {
                fmt.inf()
            };
    }
    round_exact(Exact::from_f64(x), rnd, fmt, satfinite)
}

/// Converts an integer into `fmt` with rounding `rnd`.
fn convert_int(v: i128, rnd: FloatRound, fmt: Format) -> u64 {
    let x = Exact {
        neg: v < 0,
        mag: v.unsigned_abs(),
        exp: 0,
        sticky: false,
    };
    round_exact(x, rnd, fmt, false)
}

// ---------------------------------------------------------------------------------------------
// Half-precision decoding / encoding and cvt
// ---------------------------------------------------------------------------------------------

/// Decodes a `.bf16` value to `f32` (exact; PTX ISA "cvt.f32.bf16"). NaN payloads are kept.
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Decodes an IEEE binary16 `.f16` value to `f32` (exact, subnormals included; PTX ISA
/// "cvt.f32.f16"). NaN payloads are kept.
pub fn f16_to_f32(bits: u16) -> f32 {
    let sign = (u32::from(bits) & 0x8000) << 16;
    let exp = u32::from((bits >> 10) & 0x1F);
    let frac = u32::from(bits & 0x3FF);
    let mag = match exp {
        0 => {
            // frac * 2^-24, exact in f32.
            (frac as f32 * f32::from_bits(0x3380_0000)).to_bits()
        }
        0x1F => 0x7F80_0000 | (frac << 13),
        _ => ((exp + 112) << 23) | (frac << 13),
    };
    f32::from_bits(sign | mag)
}

/// `cvt.frnd{.relu}{.satfinite}.bf16.f32`: converts `x` to `.bf16` with rounding `rnd`
/// (PTX ISA, "cvt").
///
/// * NaN input gives the canonical NaN `0x7FFF`.
/// * `.relu` clamps negative results (and `-0.0`) to `+0`.
/// * `.satfinite` turns infinities, and finite values that round beyond the largest finite
///   `.bf16`, into `±0x7F7F` (the largest finite value with the input's sign). Without it,
///   overflow follows IEEE 754 for `rnd` (`.rn` gives infinity, `.rz` gives `±MAX`, `.rm`/`.rp`
///   depend on the sign).
/// * Subnormal `.bf16` results are produced exactly (no flushing).
pub fn f32_to_bf16(x: f32, rnd: FloatRound, relu: bool, sat_finite: bool) -> u16 {
    convert_f64(f64::from(x), rnd, relu, sat_finite, BF16) as u16
}

/// `cvt.frnd{.relu}{.satfinite}.f16.f32`: converts `x` to IEEE binary16 with rounding `rnd`
/// (PTX ISA, "cvt"). Same NaN, `.relu` and `.satfinite` rules as [`f32_to_bf16`]; the largest
/// finite `.f16` is `0x7BFF` (65504) and the canonical NaN is `0x7FFF`.
pub fn f32_to_f16(x: f32, rnd: FloatRound, relu: bool, sat_finite: bool) -> u16 {
    convert_f64(f64::from(x), rnd, relu, sat_finite, F16) as u16
}

/// `cvt.frnd{.relu}{.satfinite}.f16.f64`: converts an `f64` directly (single rounding) to
/// `.f16`. Same rules as [`f32_to_f16`].
pub fn f64_to_f16(x: f64, rnd: FloatRound, relu: bool, sat_finite: bool) -> u16 {
    convert_f64(x, rnd, relu, sat_finite, F16) as u16
}

/// `cvt.frnd{.relu}{.satfinite}.bf16.f64`: converts an `f64` directly (single rounding) to
/// `.bf16`. Same rules as [`f32_to_bf16`].
pub fn f64_to_bf16(x: f64, rnd: FloatRound, relu: bool, sat_finite: bool) -> u16 {
    convert_f64(x, rnd, relu, sat_finite, BF16) as u16
}

/// `cvt.frnd.f32.f64`: rounds an `f64` to `f32` with rounding `rnd` (PTX ISA, "cvt").
///
/// NaN gives the canonical NaN; overflow follows IEEE 754 for `rnd`; subnormal results are exact
/// (apply [`ftz_f32`] afterwards for `cvt.ftz`). `.rn` equals Rust's `x as f32`.
pub fn f64_to_f32(x: f64, rnd: FloatRound) -> f32 {
    f32::from_bits(convert_f64(x, rnd, false, false, F32) as u32)
}

/// `cvt.irnd{.ftz}.{u,s}{8,16,32,64}.{f16,bf16,f32,f64}`: float to integer (PTX ISA, "cvt").
///
/// Rounds `x` to an integral value per `rnd`, then saturates to the range of the destination
/// type (PTX float-to-integer conversions always saturate); NaN converts to 0. `bits` is the
/// destination width (8, 16, 32 or 64). The result is returned zero-extended to `u64`; signed
/// results are in two's complement masked to `bits` (e.g. `-1` as `.s8` is `0xFF`).
/// `f32`/`f16`/`bf16` sources are passed widened (exactly) to `f64`; apply [`ftz_f32`] first for
/// `.ftz`.
pub fn float_to_int(x: f64, rnd: IntRound, bits: u32, signed: bool) -> u64 {
    assert!((1..=64).contains(&bits), "integer width must be 1..=64");
    if x.is_nan() {
        return 0;
    }
    let r = round_f64_integral(x, rnd);
    let (lo, hi) = if signed {
        (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
    } else {
        (0, (1i128 << bits) - 1)
    };
    // `as` saturates at the i128 range (infinities included), which lies outside [lo, hi].
    let v = (r as i128).clamp(lo, hi);
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    (v as u64) & mask
}

/// `cvt.frnd.f32.{u,s}{8,16,32,64}`: integer to `f32` with rounding `rnd` (PTX ISA, "cvt").
/// The integer is passed as `i128` so every `u64` and `i64` value fits. `.rn` equals Rust's
/// `as f32`.
pub fn int_to_f32(v: i128, rnd: FloatRound) -> f32 {
    f32::from_bits(convert_int(v, rnd, F32) as u32)
}

/// `cvt.frnd.f64.{u,s}{8,16,32,64}`: integer to `f64` with rounding `rnd` (PTX ISA, "cvt").
/// `.rn` equals Rust's `as f64`.
pub fn int_to_f64(v: i128, rnd: FloatRound) -> f64 {
    f64::from_bits(convert_int(v, rnd, F64))
}

/// `cvt.frnd.f16.{u,s}N`: integer to `.f16` bits with rounding `rnd` (overflow per IEEE 754).
pub fn int_to_f16(v: i128, rnd: FloatRound) -> u16 {
    convert_int(v, rnd, F16) as u16
}

/// `cvt.frnd.bf16.{u,s}N`: integer to `.bf16` bits with rounding `rnd` (overflow per IEEE 754).
pub fn int_to_bf16(v: i128, rnd: FloatRound) -> u16 {
    convert_int(v, rnd, BF16) as u16
}

/// `cvt.irnd{.ftz}.f32.f32`: rounds to an integral value kept in `f32` format (PTX ISA, "cvt").
/// Signs of zero are preserved (`-0.4` with `.rni` gives `-0.0`); infinities pass through; NaN
/// gives the canonical NaN. Apply [`ftz_f32`] first for `.ftz`.
pub fn round_f32_integral(x: f32, rnd: IntRound) -> f32 {
    if x.is_nan() {
        return nan_f32();
    }
    match rnd {
        IntRound::Rni => x.round_ties_even(),
        IntRound::Rzi => x.trunc(),
        IntRound::Rmi => x.floor(),
        IntRound::Rpi => x.ceil(),
    }
}

/// `cvt.irnd.f64.f64`: rounds to an integral value kept in `f64` format (PTX ISA, "cvt").
/// Same rules as [`round_f32_integral`].
pub fn round_f64_integral(x: f64, rnd: IntRound) -> f64 {
    if x.is_nan() {
        return nan_f64();
    }
    match rnd {
        IntRound::Rni => x.round_ties_even(),
        IntRound::Rzi => x.trunc(),
        IntRound::Rmi => x.floor(),
        IntRound::Rpi => x.ceil(),
    }
}

// ---------------------------------------------------------------------------------------------
// .ftz / .sat helpers
// ---------------------------------------------------------------------------------------------

/// `.ftz`: flushes a subnormal `f32` to a zero of the same sign; other values (NaN included)
/// are returned unchanged (PTX ISA, "Floating Point Instructions", subnormal handling).
pub fn ftz_f32(x: f32) -> f32 {
    if x.is_subnormal() {
        f32::from_bits(x.to_bits() & 0x8000_0000)
    } else {
        x
    }
}

/// `.sat` for `.f32` results: clamps to `[0.0, 1.0]`; NaN and `-0.0` give `+0.0`
/// (PTX ISA, "Floating Point Instructions: add", `.sat` modifier).
pub fn saturate_f32(x: f32) -> f32 {
    if x.is_nan() || x <= 0.0 {
        0.0
    } else if x > 1.0 {
        1.0
    } else {
        x
    }
}

fn input_f32(x: f32, ftz: bool) -> f32 {
    if ftz {
        ftz_f32(x)
    } else {
        x
    }
}

/// Canonicalises NaN, then applies `.ftz` and `.sat` to an `f32` result.
fn finish_f32(r: f32, ftz: bool, sat: bool) -> f32 {
    let r = if r.is_nan() {
        nan_f32()
    } else if ftz {
        ftz_f32(r)
    } else {
        r
    };
    if sat {
        saturate_f32(r)
    } else {
        r
    }
}

fn finish_f64(r: f64) -> f64 {
    if r.is_nan() {
        nan_f64()
    } else {
        r
    }
}

// ---------------------------------------------------------------------------------------------
// f32 / f64 arithmetic
// ---------------------------------------------------------------------------------------------

/// `add{.rnd}{.ftz}{.sat}.f32` (PTX ISA, "Floating Point Instructions: add").
///
/// Correctly rounded in every rounding mode (`.rn` is bitwise equal to `a + b`). `.ftz` flushes
/// subnormal inputs and a subnormal result to sign-preserving zero; `.sat` clamps to `[0, 1]`
/// with NaN giving `+0.0`. NaN results are canonical. Exact zero sums follow IEEE 754 (`x + -x`
/// is `+0`, or `-0` under `.rm`).
pub fn add_f32(a: f32, b: f32, rnd: FloatRound, ftz: bool, sat: bool) -> f32 {
    let (a, b) = (input_f32(a, ftz), input_f32(b, ftz));
    let r = if rnd == FloatRound::Rn || !a.is_finite() || !b.is_finite() {
        a + b
    } else {
        f32::from_bits(add_bits(f64::from(a), f64::from(b), rnd, F32) as u32)
    };
    finish_f32(r, ftz, sat)
}

/// `sub{.rnd}{.ftz}{.sat}.f32` (PTX ISA, "Floating Point Instructions: sub"): `a - b`, defined
/// as [`add_f32`]`(a, -b)`.
pub fn sub_f32(a: f32, b: f32, rnd: FloatRound, ftz: bool, sat: bool) -> f32 {
    add_f32(a, -b, rnd, ftz, sat)
}

/// `mul{.rnd}{.ftz}{.sat}.f32` (PTX ISA, "Floating Point Instructions: mul").
///
/// Correctly rounded in every mode (`.rn` is bitwise equal to `a * b`); `.ftz`/`.sat`/NaN as in
/// [`add_f32`].
pub fn mul_f32(a: f32, b: f32, rnd: FloatRound, ftz: bool, sat: bool) -> f32 {
    let (a, b) = (input_f32(a, ftz), input_f32(b, ftz));
    let r = if rnd == FloatRound::Rn || !a.is_finite() || !b.is_finite() {
        a * b
    } else {
        // The product of two f32 values is exact in f64.
        f64_to_f32(f64::from(a) * f64::from(b), rnd)
    };
    finish_f32(r, ftz, sat)
}

/// `fma.rnd{.ftz}{.sat}.f32` and `mad.rnd.f32` (PTX ISA, "Floating Point Instructions: fma").
///
/// Computes `a * b + c` with a single rounding (the product is never rounded) in every mode;
/// `.rn` is bitwise equal to `a.mul_add(b, c)`. `.ftz`/`.sat`/NaN as in [`add_f32`].
pub fn fma_f32(a: f32, b: f32, c: f32, rnd: FloatRound, ftz: bool, sat: bool) -> f32 {
    let (a, b, c) = (input_f32(a, ftz), input_f32(b, ftz), input_f32(c, ftz));
    let r = if rnd == FloatRound::Rn || !a.is_finite() || !b.is_finite() || !c.is_finite() {
        a.mul_add(b, c)
    } else {
        f32::from_bits(fma_bits(f64::from(a), f64::from(b), f64::from(c), rnd, F32) as u32)
    };
    finish_f32(r, ftz, sat)
}

/// `add.rnd.f64` (PTX ISA, "Floating Point Instructions: add"): correctly rounded in every
/// mode, `.rn` bitwise equal to `a + b`; NaN results are canonical; subnormals supported.
pub fn add_f64(a: f64, b: f64, rnd: FloatRound) -> f64 {
    let r = if rnd == FloatRound::Rn || !a.is_finite() || !b.is_finite() {
        a + b
    } else {
        f64::from_bits(add_bits(a, b, rnd, F64))
    };
    finish_f64(r)
}

/// `sub.rnd.f64`: `a - b`, defined as [`add_f64`]`(a, -b)`.
pub fn sub_f64(a: f64, b: f64, rnd: FloatRound) -> f64 {
    add_f64(a, -b, rnd)
}

/// `mul.rnd.f64` (PTX ISA, "Floating Point Instructions: mul"): correctly rounded in every mode
/// (computed from the exact 106-bit product, so subnormal results are right too); `.rn` bitwise
/// equal to `a * b`; NaN results are canonical.
pub fn mul_f64(a: f64, b: f64, rnd: FloatRound) -> f64 {
    let r = if rnd == FloatRound::Rn || !a.is_finite() || !b.is_finite() {
        a * b
    } else {
        f64::from_bits(mul_bits(a, b, rnd, F64))
    };
    finish_f64(r)
}

/// `fma.rnd.f64` / `mad.rnd.f64` (PTX ISA, "Floating Point Instructions: fma"): `a * b + c`
/// with a single rounding in every mode; `.rn` bitwise equal to `a.mul_add(b, c)`; NaN results
/// are canonical.
pub fn fma_f64(a: f64, b: f64, c: f64, rnd: FloatRound) -> f64 {
    let r = if rnd == FloatRound::Rn || !a.is_finite() || !b.is_finite() || !c.is_finite() {
        a.mul_add(b, c)
    } else {
        f64::from_bits(fma_bits(a, b, c, rnd, F64))
    };
    finish_f64(r)
}

/// Correctly rounded division of `f64` operands into `fmt`; IEEE special cases (zeros,
/// infinities, NaN) are independent of the rounding mode and taken from the native operation.
fn div_round_bits(a: f64, b: f64, rnd: FloatRound, fmt: Format) -> Option<u64> {
    if !a.is_finite() || !b.is_finite() || a == 0.0 || b == 0.0 {
        return None;
    }
    Some(round_exact(div_exact(a, b), rnd, fmt, false))
}

/// `div.approx{.ftz}.f32`, `div.full{.ftz}.f32` and `div.rnd{.ftz}.f32` (PTX ISA, "Floating
/// Point Instructions: div").
///
/// * [`DivMode::Round`]: IEEE 754 compliant, correctly rounded in the given mode (`.rn` is
///   bitwise `a / b`).
/// * [`DivMode::Full`]: the ISA guarantees at most 2 ulp error over the full range; the emulator
///   returns the correctly rounded quotient (0.5 ulp), which satisfies that bound.
/// * [`DivMode::Approx`]: the ISA defines it as `a * (1/b)` with at most 2 ulp error for `|b|` in
///   `[2^-126, 2^126]`, and states that for `2^126 < |b| < 2^128` the result is 0 (NaN if `a`
///   is infinite) because the reciprocal underflows. The emulator implements that documented
///   special range exactly (giving `a * ±0`) and returns the correctly rounded quotient
///   otherwise.
///
/// `.ftz` flushes subnormal inputs and results; NaN results are canonical.
pub fn div_f32(a: f32, b: f32, mode: DivMode, ftz: bool) -> f32 {
    let (a, b) = (input_f32(a, ftz), input_f32(b, ftz));
    let r = match mode {
        DivMode::Approx => {
            let mag = b.abs();
            if mag > f32::from_bits(0x7E80_0000) && mag.is_finite() {
                // 1/b underflows to (signed) zero: d = a * (1/b).
                a * 0.0f32.copysign(b)
            } else {
                a / b
            }
        }
        DivMode::Full | DivMode::Round(FloatRound::Rn) => a / b,
        DivMode::Round(rnd) => match div_round_bits(f64::from(a), f64::from(b), rnd, F32) {
            Some(bits) => f32::from_bits(bits as u32),
            None => a / b,
        },
    };
    finish_f32(r, ftz, false)
}

/// `div.rnd.f64` (PTX ISA, "Floating Point Instructions: div"): IEEE 754 compliant, correctly
/// rounded in every mode (subnormal quotients included); `.rn` bitwise equal to `a / b`; NaN
/// results are canonical.
pub fn div_f64(a: f64, b: f64, rnd: FloatRound) -> f64 {
    let r = if rnd == FloatRound::Rn {
        a / b
    } else {
        match div_round_bits(a, b, rnd, F64) {
            Some(bits) => f64::from_bits(bits),
            None => a / b,
        }
    };
    finish_f64(r)
}

/// `sqrt.approx{.ftz}.f32` (`approx_or_rnd == None`) and `sqrt.rnd{.ftz}.f32` (PTX ISA,
/// "Floating Point Instructions: sqrt").
///
/// * `.rnd`: IEEE 754 compliant, correctly rounded in the given mode.
/// * `.approx`: the ISA documents a fast approximation (maximum relative error about 2^-23
///   over the whole range); the emulator returns the correctly rounded square root, which is
///   within that bound.
///
/// Special cases (both forms): `sqrt(-0.0) = -0.0`, `sqrt(+inf) = +inf`, negative inputs and NaN
/// give the canonical NaN. `.ftz` flushes a subnormal input to sign-preserving zero (so a
/// negative subnormal gives `-0.0`).
pub fn sqrt_f32(x: f32, approx_or_rnd: Option<FloatRound>, ftz: bool) -> f32 {
    let x = input_f32(x, ftz);
    let r = match approx_or_rnd {
        None | Some(FloatRound::Rn) => x.sqrt(),
        Some(rnd) => {
            if x.is_nan() || x < 0.0 {
                nan_f32()
            } else if x == 0.0 || x.is_infinite() {
                x
            } else {
                f32::from_bits(round_exact(sqrt_exact(f64::from(x)), rnd, F32, false) as u32)
            }
        }
    };
    finish_f32(r, ftz, false)
}

/// `sqrt.rnd.f64` (PTX ISA, "Floating Point Instructions: sqrt"): correctly rounded in every
/// mode; `sqrt(-0.0) = -0.0`; negative inputs give the canonical NaN.
pub fn sqrt_f64(x: f64, rnd: FloatRound) -> f64 {
    let r = if rnd == FloatRound::Rn || x.is_nan() || x <= 0.0 || x.is_infinite() {
        x.sqrt()
    } else {
        f64::from_bits(round_exact(sqrt_exact(x), rnd, F64, false))
    };
    finish_f64(r)
}

/// `rcp.approx{.ftz}.f32` (`approx_or_rnd == None`) and `rcp.rnd{.ftz}.f32` (PTX ISA,
/// "Floating Point Instructions: rcp").
///
/// * `.rnd`: IEEE 754 compliant `1/x`, correctly rounded in the given mode.
/// * `.approx`: the ISA documents a maximum error of 1 ulp across the full range; the emulator
///   returns the correctly rounded reciprocal (0.5 ulp).
///
/// Special cases: `rcp(±0) = ±inf`, `rcp(±inf) = ±0`, NaN gives the canonical NaN. With `.ftz`
/// subnormal inputs are flushed (so `rcp` of a subnormal is `±inf`) and subnormal results
/// (`|x| > 2^126`) become `±0`.
pub fn rcp_f32(x: f32, approx_or_rnd: Option<FloatRound>, ftz: bool) -> f32 {
    match approx_or_rnd {
        None => {
            let x = input_f32(x, ftz);
            finish_f32(1.0 / x, ftz, false)
        }
        Some(rnd) => div_f32(1.0, x, DivMode::Round(rnd), ftz),
    }
}

/// `rcp.rnd.f64` (PTX ISA, "Floating Point Instructions: rcp"): IEEE 754 compliant `1/x`,
/// correctly rounded in every mode.
pub fn rcp_f64(x: f64, rnd: FloatRound) -> f64 {
    div_f64(1.0, x, rnd)
}

/// `rcp.approx.ftz.f64` (PTX ISA, "Floating Point Instructions: rcp.approx.ftz.f64").
///
/// The ISA describes a fast, low-precision approximation of `1/x` (intended as the seed of a
/// Newton iteration). The emulator returns the correctly rounded reciprocal with `.ftz`
/// applied: subnormal inputs and results are flushed to sign-preserving zero, so
/// `rcp(±0) = rcp(±subnormal) = ±inf` and `rcp(±inf) = ±0`. NaN gives the canonical NaN.
pub fn rcp_approx_ftz_f64(x: f64) -> f64 {
    let x = if x.is_subnormal() {
        0.0f64.copysign(x)
    } else {
        x
    };
    let r = 1.0 / x;
    let r = if r.is_subnormal() {
        0.0f64.copysign(r)
    } else {
        r
    };
    finish_f64(r)
}

/// `rsqrt.approx{.ftz}.f32` (PTX ISA, "Floating Point Instructions: rsqrt").
///
/// The ISA documents a maximum relative error of 2^-22.9 over the entire range. The emulator
/// computes `1/sqrt(x)` in `f64` and rounds once to `f32` (error ≤ 0.5 ulp + 2^-50 relative),
/// which is within that bound.
///
/// Special cases (ISA table): `-inf`, negative normals and NaN give NaN (canonical);
/// `rsqrt(-0.0) = -inf`, `rsqrt(+0.0) = +inf`, `rsqrt(+inf) = +0`. With `.ftz` a subnormal input
/// is treated as a zero of the same sign (`±inf` result); without it a subnormal input gives the
/// finite reciprocal square root.
pub fn rsqrt_approx_f32(x: f32, ftz: bool) -> f32 {
    let x = input_f32(x, ftz);
    let r = if x.is_nan() || x < 0.0 {
        nan_f32()
    } else if x == 0.0 {
        f32::INFINITY.copysign(x)
    } else {
        (1.0 / f64::from(x).sqrt()) as f32
    };
    finish_f32(r, ftz, false)
}

/// `rsqrt.approx{.ftz}.f64` (PTX ISA, "Floating Point Instructions: rsqrt"): the ISA only
/// describes an approximation; the emulator returns `1/sqrt(x)` rounded twice in `f64`
/// (≤ 1 ulp). Same special cases as [`rsqrt_approx_f32`]; `.ftz` flushes subnormal inputs.
pub fn rsqrt_approx_f64(x: f64, ftz: bool) -> f64 {
    let x = if ftz && x.is_subnormal() {
        0.0f64.copysign(x)
    } else {
        x
    };
    let r = if x.is_nan() || x < 0.0 {
        nan_f64()
    } else if x == 0.0 {
        f64::INFINITY.copysign(x)
    } else {
        1.0 / x.sqrt()
    };
    finish_f64(r)
}

/// `ex2.approx{.ftz}.f32` (PTX ISA, "Floating Point Instructions: ex2"): `2^x`.
///
/// The ISA documents a fast approximation with a maximum error of about 2 ulp (relative error
/// around 2^-22) across the full range. The emulator evaluates `exp2` in `f64` and rounds once
/// to `f32` (≈ 0.5 ulp), which is within that bound.
///
/// Special cases (ISA table): `ex2(-inf) = +0`, `ex2(±0) = ex2(±subnormal) = +1`,
/// `ex2(+inf) = +inf`, NaN gives the canonical NaN. With `.ftz` subnormal inputs are flushed and
/// subnormal results (`x` below -126) become `+0`; without it subnormal results are produced.
pub fn ex2_approx_f32(x: f32, ftz: bool) -> f32 {
    let x = input_f32(x, ftz);
    let r = if x.is_nan() {
        nan_f32()
    } else {
        f64::from(x).exp2() as f32
    };
    finish_f32(r, ftz, false)
}

/// `lg2.approx{.ftz}.f32` (PTX ISA, "Floating Point Instructions: lg2"): `log2(x)`.
///
/// The ISA documents a maximum absolute error of 2^-22.6 for the mantissa part (newer
/// revisions: 2^-22 absolute for `x` in `(0.5, 2)`, 2^-22 relative elsewhere). The emulator
/// evaluates `log2` in `f64` and rounds once to `f32`, which is within those bounds.
///
/// Special cases (ISA table): `lg2(±0) = -inf`, `lg2(+inf) = +inf`, negative inputs (including
/// `-inf`) and NaN give the canonical NaN. With `.ftz` a subnormal input is treated as zero
/// (result `-inf`); without it subnormal inputs are supported (`lg2(2^-149) = -149`).
pub fn lg2_approx_f32(x: f32, ftz: bool) -> f32 {
    let x = input_f32(x, ftz);
    let r = if x.is_nan() || x < 0.0 {
        nan_f32()
    } else {
        f64::from(x).log2() as f32
    };
    finish_f32(r, ftz, false)
}

/// `sin.approx{.ftz}.f32` (PTX ISA, "Floating Point Instructions: sin").
///
/// The ISA documents a maximum absolute error of about 2^-20.9 over `[-π, π]` (growing for
/// larger arguments, as the hardware reduces the argument with limited precision). The emulator
/// evaluates `sin` in `f64` (accurate argument reduction) and rounds once to `f32`, within that
/// bound everywhere.
///
/// Special cases: `sin(±0) = ±0`, `sin(±inf)` and NaN give the canonical NaN. With `.ftz`
/// subnormal inputs and results are flushed to sign-preserving zero.
pub fn sin_approx_f32(x: f32, ftz: bool) -> f32 {
    let x = input_f32(x, ftz);
    finish_f32(f64::from(x).sin() as f32, ftz, false)
}

/// `cos.approx{.ftz}.f32` (PTX ISA, "Floating Point Instructions: cos").
///
/// Same accuracy statement as [`sin_approx_f32`] (maximum absolute error about 2^-20.9 over
/// `[-π, π]` per the ISA; the emulator is within it). Special cases: `cos(±0) = +1`,
/// `cos(±inf)` and NaN give the canonical NaN.
pub fn cos_approx_f32(x: f32, ftz: bool) -> f32 {
    let x = input_f32(x, ftz);
    finish_f32(f64::from(x).cos() as f32, ftz, false)
}

/// `tanh.approx.f32` (PTX ISA, "Floating Point Instructions: tanh", sm_75+).
///
/// The ISA documents a maximum relative error of 2^-10.987 (about 11 bits; the hardware unit is
/// low precision). The emulator evaluates `tanh` in `f64` and rounds once to `f32`, which is far
/// inside that bound — kernels that compare against hardware need a tolerance of at least
/// 2^-11 relative.
///
/// Special cases: `tanh(±0) = ±0`, `tanh(±inf) = ±1`, NaN gives the canonical NaN; subnormal
/// inputs are supported (`tanh(x) = x`).
pub fn tanh_approx_f32(x: f32) -> f32 {
    finish_f32(f64::from(x).tanh() as f32, false, false)
}

// ---------------------------------------------------------------------------------------------
// min / max / copysign / abs / neg / comparisons
// ---------------------------------------------------------------------------------------------

/// `min{.ftz}{.NaN}.f32` (PTX ISA, "Floating Point Instructions: min").
///
/// If exactly one input is NaN the other is returned; if both are NaN the canonical NaN is
/// returned; with `.NaN` (`nan == true`) any NaN input gives the canonical NaN. `-0.0` is
/// treated as less than `+0.0`. `.ftz` flushes subnormal inputs (and thus the result).
pub fn min_f32(a: f32, b: f32, ftz: bool, nan: bool) -> f32 {
    let (a, b) = (input_f32(a, ftz), input_f32(b, ftz));
    match (a.is_nan(), b.is_nan()) {
        (true, true) => nan_f32(),
        (true, false) | (false, true) if nan => nan_f32(),
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if a == b {
                if a.is_sign_negative() {
                    a
                } else {
                    b
                }
            } else if a < b {
                a
            } else {
                b
            }
        }
    }
}

/// `max{.ftz}{.NaN}.f32` (PTX ISA, "Floating Point Instructions: max"). Same NaN and `.ftz`
/// rules as [`min_f32`]; `+0.0` is treated as greater than `-0.0`.
pub fn max_f32(a: f32, b: f32, ftz: bool, nan: bool) -> f32 {
    let (a, b) = (input_f32(a, ftz), input_f32(b, ftz));
    match (a.is_nan(), b.is_nan()) {
        (true, true) => nan_f32(),
        (true, false) | (false, true) if nan => nan_f32(),
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if a == b {
                if a.is_sign_negative() {
                    b
                } else {
                    a
                }
            } else if a > b {
                a
            } else {
                b
            }
        }
    }
}

/// `min.f64` (PTX ISA, "Floating Point Instructions: min"): one NaN input gives the other input,
/// two NaN inputs give the canonical NaN, `-0.0 < +0.0`.
pub fn min_f64(a: f64, b: f64) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => nan_f64(),
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if a == b {
                if a.is_sign_negative() {
                    a
                } else {
                    b
                }
            } else if a < b {
                a
            } else {
                b
            }
        }
    }
}

/// `max.f64` (PTX ISA, "Floating Point Instructions: max"): one NaN input gives the other input,
/// two NaN inputs give the canonical NaN, `+0.0 > -0.0`.
pub fn max_f64(a: f64, b: f64) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => nan_f64(),
        (true, false) => b,
        (false, true) => a,
        (false, false) => {
            if a == b {
                if a.is_sign_negative() {
                    b
                } else {
                    a
                }
            } else if a > b {
                a
            } else {
                b
            }
        }
    }
}

/// `copysign.f32 d, a, b` (PTX ISA, "Floating Point Instructions: copysign"): returns `b`'s
/// magnitude with `a`'s sign — note the PTX operand order: the *first* source supplies the
/// sign. Pure bit operation (NaN payloads are kept).
pub fn copysign_f32(sign_from: f32, magnitude_from: f32) -> f32 {
    f32::from_bits((magnitude_from.to_bits() & 0x7FFF_FFFF) | (sign_from.to_bits() & 0x8000_0000))
}

/// `copysign.f64 d, a, b`: `b`'s magnitude with `a`'s sign (same operand order as
/// [`copysign_f32`]).
pub fn copysign_f64(sign_from: f64, magnitude_from: f64) -> f64 {
    const SIGN: u64 = 1 << 63;
    f64::from_bits((magnitude_from.to_bits() & !SIGN) | (sign_from.to_bits() & SIGN))
}

/// `abs{.ftz}.f32` (PTX ISA, "Floating Point Instructions: abs"): clears the sign bit after the
/// optional `.ftz` flush.
pub fn abs_f32(x: f32, ftz: bool) -> f32 {
    f32::from_bits(input_f32(x, ftz).to_bits() & 0x7FFF_FFFF)
}

/// `neg{.ftz}.f32` (PTX ISA, "Floating Point Instructions: neg"): flips the sign bit after the
/// optional `.ftz` flush.
pub fn neg_f32(x: f32, ftz: bool) -> f32 {
    f32::from_bits(input_f32(x, ftz).to_bits() ^ 0x8000_0000)
}

/// `setp.cmp.f64` / `set.cmp.*.f64` comparison (PTX ISA, "Comparison and Selection
/// Instructions", floating point comparison operators).
///
/// Ordered operators (`eq ne lt le gt ge`) are false when either operand is NaN — including
/// `ne` — so a NaN never compares true; unordered operators (`equ neu ltu leu gtu geu`) are true
/// when either operand is NaN; `num` is true when neither is NaN, `nan` when either is.
/// `-0.0 == +0.0`. `.f32` callers widen exactly to `f64` (or use [`compare_f32`] for `.ftz`).
pub fn compare_f64(a: f64, b: f64, cmp: FloatCmp) -> bool {
    let unordered = a.is_nan() || b.is_nan();
    match cmp {
        FloatCmp::Eq => a == b,
        FloatCmp::Ne => !unordered && a != b,
        FloatCmp::Lt => a < b,
        FloatCmp::Le => a <= b,
        FloatCmp::Gt => a > b,
        FloatCmp::Ge => a >= b,
        FloatCmp::Equ => unordered || a == b,
        FloatCmp::Neu => unordered || a != b,
        FloatCmp::Ltu => unordered || a < b,
        FloatCmp::Leu => unordered || a <= b,
        FloatCmp::Gtu => unordered || a > b,
        FloatCmp::Geu => unordered || a >= b,
        FloatCmp::Num => !unordered,
        FloatCmp::Nan => unordered,
    }
}

/// `setp.cmp{.ftz}.f32`: [`compare_f64`] on the (optionally flushed) operands widened to `f64`.
pub fn compare_f32(a: f32, b: f32, cmp: FloatCmp, ftz: bool) -> bool {
    compare_f64(
        f64::from(input_f32(a, ftz)),
        f64::from(input_f32(b, ftz)),
        cmp,
    )
}

// ---------------------------------------------------------------------------------------------
// Half precision arithmetic (f16, bf16, and their x2 packed forms)
// ---------------------------------------------------------------------------------------------

fn half_decode(fmt: Format, h: u16) -> f64 {
    if fmt == BF16 {
        f64::from(bf16_to_f32(h))
    } else {
        f64::from(f16_to_f32(h))
    }
}

/// Single-rounded `.rn` fma of one half-precision lane.
fn half_fma(fmt: Format, a: u16, b: u16, c: u16, ftz: bool) -> u16 {
    let flush = |h: u16| {
        if ftz {
            fmt.flush(u64::from(h)) as u16
        } else {
            h
        }
    };
    let (x, y, z) = (
        half_decode(fmt, flush(a)),
        half_decode(fmt, flush(b)),
        half_decode(fmt, flush(c)),
    );
    let bits = if x.is_finite() && y.is_finite() && z.is_finite() {
        fma_bits(x, y, z, FloatRound::Rn, fmt)
    } else {
        // Infinite or NaN operands: the result is exactly ±inf or NaN.
        convert_f64(x.mul_add(y, z), FloatRound::Rn, false, false, fmt)
    };
    if ftz {
        fmt.flush(bits) as u16
    } else {
        bits as u16
    }
}

fn half_lanes(a: u32) -> (u16, u16) {
    (a as u16, (a >> 16) as u16)
}

fn half_pack(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// `fma.rn.bf16` (PTX ISA, "Half Precision Floating Point Instructions: fma"): `a * b + c` with
/// one rounding to nearest-even; subnormals supported (`.ftz` does not exist for `.bf16`); NaN
/// results are the canonical `0x7FFF`.
pub fn fma_bf16(a: u16, b: u16, c: u16) -> u16 {
    half_fma(BF16, a, b, c, false)
}

/// `add.rn.bf16`: `a + b` rounded once to nearest-even (same rules as [`fma_bf16`]).
pub fn add_bf16(a: u16, b: u16) -> u16 {
    half_fma(BF16, a, 0x3F80, b, false)
}

/// `mul.rn.bf16`: `a * b` rounded once to nearest-even (same rules as [`fma_bf16`]).
pub fn mul_bf16(a: u16, b: u16) -> u16 {
    // a*b + (-0) == a*b exactly, zero signs included.
    half_fma(BF16, a, b, 0x8000, false)
}

/// `fma.rn.bf16x2` (PTX ISA, "Half Precision Floating Point Instructions: fma"): lane-wise
/// [`fma_bf16`] on packed pairs; the low 16 bits hold the first element.
pub fn fma_bf16x2(a: u32, b: u32, c: u32) -> u32 {
    let ((a0, a1), (b0, b1), (c0, c1)) = (half_lanes(a), half_lanes(b), half_lanes(c));
    half_pack(fma_bf16(a0, b0, c0), fma_bf16(a1, b1, c1))
}

/// `add.rn.bf16x2`: lane-wise [`add_bf16`] (low half = first element).
pub fn add_bf16x2(a: u32, b: u32) -> u32 {
    let ((a0, a1), (b0, b1)) = (half_lanes(a), half_lanes(b));
    half_pack(add_bf16(a0, b0), add_bf16(a1, b1))
}

/// `mul.rn.bf16x2`: lane-wise [`mul_bf16`] (low half = first element).
pub fn mul_bf16x2(a: u32, b: u32) -> u32 {
    let ((a0, a1), (b0, b1)) = (half_lanes(a), half_lanes(b));
    half_pack(mul_bf16(a0, b0), mul_bf16(a1, b1))
}

/// `fma.rn{.ftz}.f16` (PTX ISA, "Half Precision Floating Point Instructions: fma"): `a * b + c`
/// with one rounding to nearest-even; `.ftz` flushes subnormal `.f16` inputs and results; NaN
/// results are the canonical `0x7FFF`.
pub fn fma_f16(a: u16, b: u16, c: u16, ftz: bool) -> u16 {
    half_fma(F16, a, b, c, ftz)
}

/// `add.rn{.ftz}.f16`: `a + b` rounded once to nearest-even (same rules as [`fma_f16`]).
pub fn add_f16(a: u16, b: u16, ftz: bool) -> u16 {
    half_fma(F16, a, 0x3C00, b, ftz)
}

/// `mul.rn{.ftz}.f16`: `a * b` rounded once to nearest-even (same rules as [`fma_f16`]).
pub fn mul_f16(a: u16, b: u16, ftz: bool) -> u16 {
    half_fma(F16, a, b, 0x8000, ftz)
}

/// `fma.rn{.ftz}.f16x2`: lane-wise [`fma_f16`] (low half = first element).
pub fn fma_f16x2(a: u32, b: u32, c: u32, ftz: bool) -> u32 {
    let ((a0, a1), (b0, b1), (c0, c1)) = (half_lanes(a), half_lanes(b), half_lanes(c));
    half_pack(fma_f16(a0, b0, c0, ftz), fma_f16(a1, b1, c1, ftz))
}

/// `add.rn{.ftz}.f16x2`: lane-wise [`add_f16`] (low half = first element).
pub fn add_f16x2(a: u32, b: u32, ftz: bool) -> u32 {
    let ((a0, a1), (b0, b1)) = (half_lanes(a), half_lanes(b));
    half_pack(add_f16(a0, b0, ftz), add_f16(a1, b1, ftz))
}

/// `mul.rn{.ftz}.f16x2`: lane-wise [`mul_f16`] (low half = first element).
pub fn mul_f16x2(a: u32, b: u32, ftz: bool) -> u32 {
    let ((a0, a1), (b0, b1)) = (half_lanes(a), half_lanes(b));
    half_pack(mul_f16(a0, b0, ftz), mul_f16(a1, b1, ftz))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::FloatRound::{Rm, Rn, Rp, Rz};
    use super::IntRound::{Rmi, Rni, Rpi, Rzi};
    use super::*;
    use proptest::prelude::*;

    const MODES: [FloatRound; 4] = [Rn, Rz, Rm, Rp];

    /// Exact power of two as f32 (-149..=127).
    fn p2f(e: i32) -> f32 {
        assert!((-149..=127).contains(&e));
        if e >= -126 {
            f32::from_bits(((e + 127) as u32) << 23)
        } else {
            f32::from_bits(1u32 << (e + 149))
        }
    }

    /// Exact power of two as f64 (-1074..=1023).
    fn p2(e: i32) -> f64 {
        assert!((-1074..=1023).contains(&e));
        if e >= -1022 {
            f64::from_bits(((e + 1023) as u64) << 52)
        } else {
            f64::from_bits(1u64 << (e + 1074))
        }
    }

    fn next_up_f32(x: f32) -> f32 {
        if x.is_nan() || x == f32::INFINITY {
            return x;
        }
        if x == 0.0 {
            return f32::from_bits(1);
        }
        let b = x.to_bits();
        if x > 0.0 {
            f32::from_bits(b + 1)
        } else {
            f32::from_bits(b - 1)
        }
    }

    fn next_down_f32(x: f32) -> f32 {
        -next_up_f32(-x)
    }

    fn next_up_f64(x: f64) -> f64 {
        if x.is_nan() || x == f64::INFINITY {
            return x;
        }
        if x == 0.0 {
            return f64::from_bits(1);
        }
        let b = x.to_bits();
        if x > 0.0 {
            f64::from_bits(b + 1)
        } else {
            f64::from_bits(b - 1)
        }
    }

    fn next_down_f64(x: f64) -> f64 {
        -next_up_f64(-x)
    }

    fn bits32(x: f32) -> u32 {
        x.to_bits()
    }

    fn all_f16(x: f32) -> [u16; 4] {
        MODES.map(|m| f32_to_f16(x, m, false, false))
    }

    fn all_bf16(x: f32) -> [u16; 4] {
        MODES.map(|m| f32_to_bf16(x, m, false, false))
    }

    fn all_f32(x: f64) -> [u32; 4] {
        MODES.map(|m| f64_to_f32(x, m).to_bits())
    }

    // ----------------------------------------------------------------------------- decoding

    #[test]
    fn numerics_half_decode() {
        assert_eq!(bf16_to_f32(0x3F80), 1.0);
        assert_eq!(bf16_to_f32(0xC040), -3.0);
        assert_eq!(bits32(bf16_to_f32(0x8000)), 0x8000_0000);
        assert_eq!(f16_to_f32(0x3C00), 1.0);
        assert_eq!(f16_to_f32(0x7BFF), 65504.0);
        assert_eq!(f16_to_f32(0x0001), p2f(-24));
        assert_eq!(f16_to_f32(0x8001), -p2f(-24));
        assert_eq!(f16_to_f32(0x03FF), p2f(-14) - p2f(-24));
        assert_eq!(f16_to_f32(0x7C00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xFC00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7E00).is_nan());
        assert_eq!(bits32(f16_to_f32(0x8000)), 0x8000_0000);
        // Exhaustive against the `half` crate.
        for h in 0..=u16::MAX {
            let ours = f16_to_f32(h);
            let theirs = half::f16::from_bits(h).to_f32();
            if theirs.is_nan() {
                assert!(ours.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(ours.to_bits(), theirs.to_bits(), "{h:#06x}");
            }
            let b = bf16_to_f32(h);
            let tb = half::bf16::from_bits(h).to_f32();
            assert!(b.to_bits() == tb.to_bits() || (b.is_nan() && tb.is_nan()));
        }
    }

    // ----------------------------------------------------------------------------- cvt to f16

    #[test]
    fn numerics_f32_to_f16_rounding() {
        // Exactly halfway between 0x3C00 and 0x3C01: ties to even.
        assert_eq!(all_f16(1.0 + p2f(-11)), [0x3C00, 0x3C00, 0x3C00, 0x3C01]);
        // Halfway between 0x3C01 and 0x3C02: ties to even goes up.
        assert_eq!(
            all_f16(1.0 + 3.0 * p2f(-11)),
            [0x3C02, 0x3C01, 0x3C01, 0x3C02]
        );
        // Just above / below halfway.
        assert_eq!(
            all_f16(1.0 + p2f(-11) + p2f(-20)),
            [0x3C01, 0x3C00, 0x3C00, 0x3C01]
        );
        assert_eq!(
            all_f16(1.0 + p2f(-11) - p2f(-20)),
            [0x3C00, 0x3C00, 0x3C00, 0x3C01]
        );
        // Negative: .rm moves away from zero, .rp towards zero.
        assert_eq!(all_f16(-(1.0 + p2f(-11))), [0xBC00, 0xBC00, 0xBC01, 0xBC00]);
        // Exact values are unchanged in every mode.
        assert_eq!(all_f16(-2.5), [0xC100; 4]);
        assert_eq!(all_f16(0.0), [0x0000; 4]);
        assert_eq!(all_f16(-0.0), [0x8000; 4]);
    }

    #[test]
    fn numerics_f32_to_f16_overflow_and_satfinite() {
        // 65520 = MAX + half ulp: .rn ties to even -> overflow to inf.
        assert_eq!(all_f16(65520.0), [0x7C00, 0x7BFF, 0x7BFF, 0x7C00]);
        assert_eq!(all_f16(65519.0), [0x7BFF, 0x7BFF, 0x7BFF, 0x7C00]);
        assert_eq!(all_f16(-65505.0), [0xFBFF, 0xFBFF, 0xFC00, 0xFBFF]);
        assert_eq!(all_f16(1e6), [0x7C00, 0x7BFF, 0x7BFF, 0x7C00]);
        for m in MODES {
            assert_eq!(f32_to_f16(1e6, m, false, true), 0x7BFF);
            assert_eq!(f32_to_f16(-1e6, m, false, true), 0xFBFF);
            assert_eq!(f32_to_f16(f32::INFINITY, m, false, true), 0x7BFF);
            assert_eq!(f32_to_f16(f32::NEG_INFINITY, m, false, true), 0xFBFF);
            assert_eq!(f32_to_f16(f32::INFINITY, m, false, false), 0x7C00);
            assert_eq!(f32_to_f16(f32::NAN, m, false, false), 0x7FFF);
            assert_eq!(f32_to_f16(-f32::NAN, m, true, true), 0x7FFF);
            // satfinite leaves representable values alone.
            assert_eq!(f32_to_f16(65504.0, m, false, true), 0x7BFF);
        }
    }

    #[test]
    fn numerics_f32_to_f16_relu_and_subnormals() {
        assert_eq!(f32_to_f16(-1.0, Rn, true, false), 0);
        assert_eq!(f32_to_f16(-0.0, Rn, true, false), 0);
        assert_eq!(f32_to_f16(-1e-10, Rz, true, false), 0);
        assert_eq!(f32_to_f16(f32::NEG_INFINITY, Rn, true, false), 0);
        assert_eq!(f32_to_f16(2.0, Rn, true, false), 0x4000);
        // Subnormal f16 results.
        assert_eq!(all_f16(p2f(-24)), [0x0001; 4]);
        assert_eq!(all_f16(p2f(-25)), [0x0000, 0x0000, 0x0000, 0x0001]);
        assert_eq!(all_f16(-p2f(-25)), [0x8000, 0x8000, 0x8001, 0x8000]);
        assert_eq!(all_f16(1.5 * p2f(-24)), [0x0002, 0x0001, 0x0001, 0x0002]);
        assert_eq!(all_f16(0.75 * p2f(-24)), [0x0001, 0x0000, 0x0000, 0x0001]);
        // Largest subnormal + half ulp rounds (ties-to-even) to the smallest normal.
        assert_eq!(
            all_f16(p2f(-14) - p2f(-25)),
            [0x0400, 0x03FF, 0x03FF, 0x0400]
        );
        assert_eq!(all_f16(1e-30), [0x0000, 0x0000, 0x0000, 0x0001]);
    }

    #[test]
    fn numerics_f32_to_bf16() {
        assert_eq!(all_bf16(1.0), [0x3F80; 4]);
        assert_eq!(all_bf16(1.0 + p2f(-8)), [0x3F80, 0x3F80, 0x3F80, 0x3F81]);
        assert_eq!(
            all_bf16(1.0 + 3.0 * p2f(-8)),
            [0x3F82, 0x3F81, 0x3F81, 0x3F82]
        );
        assert_eq!(
            all_bf16(1.0 + p2f(-8) + p2f(-20)),
            [0x3F81, 0x3F80, 0x3F80, 0x3F81]
        );
        assert_eq!(all_bf16(-(1.0 + p2f(-8))), [0xBF80, 0xBF80, 0xBF81, 0xBF80]);
        // f32::MAX is beyond bf16 MAX + half ulp.
        assert_eq!(all_bf16(f32::MAX), [0x7F80, 0x7F7F, 0x7F7F, 0x7F80]);
        assert_eq!(all_bf16(f32::MIN), [0xFF80, 0xFF7F, 0xFF80, 0xFF7F]);
        assert_eq!(f32_to_bf16(f32::MAX, Rn, false, true), 0x7F7F);
        assert_eq!(f32_to_bf16(f32::NEG_INFINITY, Rz, false, true), 0xFF7F);
        assert_eq!(f32_to_bf16(f32::NAN, Rn, false, false), 0x7FFF);
        assert_eq!(f32_to_bf16(-3.0, Rn, true, false), 0x0000);
        assert_eq!(f32_to_bf16(-0.0, Rn, false, false), 0x8000);
        // Subnormal bf16.
        assert_eq!(all_bf16(p2f(-133)), [0x0001; 4]);
        assert_eq!(all_bf16(p2f(-149)), [0x0000, 0x0000, 0x0000, 0x0001]);
        assert_eq!(all_bf16(-p2f(-149)), [0x8000, 0x8000, 0x8001, 0x8000]);
        // f64 sources round once.
        assert_eq!(
            f64_to_bf16(1.0 + p2(-8) + p2(-40), Rn, false, false),
            0x3F81
        );
        assert_eq!(
            f64_to_f16(1.0 + p2(-11) + p2(-40), Rn, false, false),
            0x3C01
        );
        assert_eq!(f64_to_f16(1e300, Rz, false, false), 0x7BFF);
    }

    // ----------------------------------------------------------------------------- f64 -> f32

    #[test]
    fn numerics_f64_to_f32() {
        let one = 0x3F80_0000;
        assert_eq!(all_f32(1.0 + p2(-24)), [one, one, one, one + 1]);
        assert_eq!(
            all_f32(1.0 + p2(-24) + p2(-50)),
            [one + 1, one, one, one + 1]
        );
        assert_eq!(all_f32(1.0 + p2(-24) - p2(-50)), [one, one, one, one + 1]);
        assert_eq!(
            all_f32(1.0 + 3.0 * p2(-24)),
            [one + 2, one + 1, one + 1, one + 2]
        );
        let neg_one = 0xBF80_0000;
        assert_eq!(
            all_f32(-(1.0 + p2(-24))),
            [neg_one, neg_one, neg_one + 1, neg_one]
        );
        // Overflow.
        let max = f32::MAX.to_bits();
        let inf = f32::INFINITY.to_bits();
        assert_eq!(all_f32(1e300), [inf, max, max, inf]);
        assert_eq!(
            all_f32(-1e300),
            [inf | 1 << 31, max | 1 << 31, inf | 1 << 31, max | 1 << 31]
        );
        // MAX + half ulp is a tie and MAX's significand is odd.
        let mid = f64::from(f32::MAX) + p2(103);
        assert_eq!(all_f32(mid), [inf, max, max, inf]);
        assert_eq!(all_f32(mid - p2(80)), [max, max, max, inf]);
        // Subnormal f32 results.
        assert_eq!(all_f32(p2(-150)), [0, 0, 0, 1]);
        assert_eq!(all_f32(1.5 * p2(-150)), [1, 0, 0, 1]);
        assert_eq!(all_f32(3.0 * p2(-150)), [2, 1, 1, 2]);
        assert_eq!(all_f32(1e-300), [0, 0, 0, 1]);
        assert_eq!(
            all_f32(-1e-300),
            [0x8000_0000, 0x8000_0000, 0x8000_0001, 0x8000_0000]
        );
        assert_eq!(
            all_f32(p2(-126) - p2(-150)),
            [0x0080_0000, 0x007F_FFFF, 0x007F_FFFF, 0x0080_0000]
        );
        assert_eq!(all_f32(f64::NAN), [CANONICAL_NAN_F32; 4]);
        assert_eq!(all_f32(f64::INFINITY), [inf; 4]);
        assert_eq!(all_f32(-0.0), [0x8000_0000; 4]);
    }

    // ----------------------------------------------------------------------------- float -> int

    #[test]
    fn numerics_float_to_int_saturation_every_width() {
        for bits in [8u32, 16, 32, 64] {
            let mask = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let smax = mask >> 1;
            let smin = 1u64 << (bits - 1);
            for rnd in [Rni, Rzi, Rmi, Rpi] {
                for signed in [false, true] {
                    assert_eq!(float_to_int(f64::NAN, rnd, bits, signed), 0);
                    assert_eq!(float_to_int(-f64::NAN, rnd, bits, signed), 0);
                    assert_eq!(float_to_int(0.0, rnd, bits, signed), 0);
                    assert_eq!(float_to_int(-0.0, rnd, bits, signed), 0);
                }
                assert_eq!(float_to_int(f64::INFINITY, rnd, bits, false), mask);
                assert_eq!(float_to_int(1e30, rnd, bits, false), mask);
                assert_eq!(float_to_int(f64::NEG_INFINITY, rnd, bits, false), 0);
                assert_eq!(float_to_int(-1e30, rnd, bits, false), 0);
                assert_eq!(float_to_int(-1.0, rnd, bits, false), 0);
                assert_eq!(float_to_int(f64::INFINITY, rnd, bits, true), smax);
                assert_eq!(float_to_int(1e30, rnd, bits, true), smax);
                assert_eq!(float_to_int(f64::NEG_INFINITY, rnd, bits, true), smin);
                assert_eq!(float_to_int(-1e30, rnd, bits, true), smin);
                assert_eq!(float_to_int(-1.0, rnd, bits, true), mask);
                assert_eq!(float_to_int(100.0, rnd, bits, true), 100);
            }
        }
    }

    #[test]
    fn numerics_float_to_int_rounding() {
        let all = |x: f64, bits: u32, signed: bool| {
            [Rni, Rzi, Rmi, Rpi].map(|r| float_to_int(x, r, bits, signed))
        };
        assert_eq!(all(2.5, 32, true), [2, 2, 2, 3]);
        assert_eq!(all(3.5, 32, true), [4, 3, 3, 4]);
        assert_eq!(
            all(-2.5, 32, true),
            [0xFFFF_FFFE, 0xFFFF_FFFE, 0xFFFF_FFFD, 0xFFFF_FFFE]
        );
        assert_eq!(all(-0.5, 32, true), [0, 0, 0xFFFF_FFFF, 0]);
        assert_eq!(all(0.5, 16, false), [0, 0, 0, 1]);
        assert_eq!(all(1.5, 16, false), [2, 1, 1, 2]);
        assert_eq!(all(-0.9, 8, false), [0, 0, 0, 0]);
        // s8 edges.
        assert_eq!(all(127.4, 8, true), [127, 127, 127, 127]);
        assert_eq!(all(127.6, 8, true), [127, 127, 127, 127]);
        assert_eq!(all(-128.6, 8, true), [0x80, 0x80, 0x80, 0x80]);
        assert_eq!(all(-127.6, 8, true), [0x80, 0x81, 0x80, 0x81]);
        // u8 edges.
        assert_eq!(all(255.5, 8, false), [255, 255, 255, 255]);
        assert_eq!(all(254.5, 8, false), [254, 254, 254, 255]);
        // u32 / u64 / s64 edges.
        assert_eq!(
            all(4294967295.5, 32, false),
            [0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF]
        );
        assert_eq!(float_to_int(4294967294.5, Rni, 32, false), 4294967294);
        assert_eq!(float_to_int(p2(64), Rzi, 64, false), u64::MAX);
        assert_eq!(
            float_to_int(p2(64) - 2048.0, Rzi, 64, false),
            18_446_744_073_709_549_568
        );
        assert_eq!(float_to_int(p2(63), Rni, 64, true), i64::MAX as u64);
        assert_eq!(float_to_int(-p2(63), Rni, 64, true), 1u64 << 63);
        assert_eq!(float_to_int(-p2(63) - 4096.0, Rni, 64, true), 1u64 << 63);
        assert_eq!(
            float_to_int(-p2(40) - 0.5, Rmi, 64, true),
            (-(1i64 << 40) - 1) as u64
        );
        // f32 source widened exactly.
        assert_eq!(
            float_to_int(f64::from(16_777_216.0f32), Rni, 32, true),
            16_777_216
        );
        assert_eq!(float_to_int(f64::from(2.5f32), Rni, 32, true), 2);
        assert_eq!(float_to_int(f64::from(p2f(-149)), Rpi, 32, true), 1);
        assert_eq!(
            float_to_int(f64::from(-p2f(-149)), Rmi, 32, true),
            0xFFFF_FFFF
        );
    }

    // ----------------------------------------------------------------------------- int -> float

    #[test]
    fn numerics_int_to_float() {
        let f = |v: i128| MODES.map(|m| int_to_f32(v, m));
        let t = 16_777_216.0f32;
        assert_eq!(f(16_777_217), [t, t, t, t + 2.0]);
        assert_eq!(f(-16_777_217), [-t, -t, -t - 2.0, -t]);
        assert_eq!(f(16_777_219), [t + 4.0, t + 2.0, t + 2.0, t + 4.0]);
        assert_eq!(f(16_777_218), [t + 2.0; 4]);
        let u = u64::MAX as i128;
        let two64 = p2f(63) * 2.0;
        let below = two64 - p2f(40);
        assert_eq!(f(u), [two64, below, below, two64]);
        assert_eq!(f(i128::MIN), [-p2f(126) * 2.0; 4]);
        assert_eq!(
            f(i128::MAX),
            [
                p2f(126) * 2.0,
                p2f(126) * 2.0 - p2f(103),
                p2f(126) * 2.0 - p2f(103),
                p2f(126) * 2.0
            ]
        );
        assert_eq!(bits32(int_to_f32(0, Rm)), 0);
        assert_eq!(int_to_f32(i64::MIN as i128, Rz), -p2f(63));

        let d = |v: i128| MODES.map(|m| int_to_f64(v, m));
        let t53 = p2(53);
        assert_eq!(d((1i128 << 53) + 1), [t53, t53, t53, t53 + 2.0]);
        assert_eq!(d(-(1i128 << 53) - 1), [-t53, -t53, -t53 - 2.0, -t53]);
        let below64 = p2(64) - 2048.0;
        assert_eq!(d(u), [p2(64), below64, below64, p2(64)]);
        assert_eq!(d(i64::MIN as i128), [-p2(63); 4]);

        // Half-precision destinations.
        assert_eq!(int_to_f16(2049, Rn), 0x6800); // 2048 (tie to even)
        assert_eq!(int_to_f16(2049, Rp), 0x6801); // 2050
        assert_eq!(int_to_f16(70000, Rn), 0x7C00);
        assert_eq!(int_to_f16(70000, Rz), 0x7BFF);
        assert_eq!(int_to_bf16(257, Rn), 0x4380); // 256
        assert_eq!(int_to_bf16(257, Rp), 0x4381); // 258
        assert_eq!(int_to_bf16(-257, Rm), 0xC381);
    }

    #[test]
    fn numerics_round_integral() {
        let f = |x: f32| [Rni, Rzi, Rmi, Rpi].map(|r| round_f32_integral(x, r).to_bits());
        assert_eq!(f(2.5), [2.0f32, 2.0, 2.0, 3.0].map(f32::to_bits));
        assert_eq!(f(3.5), [4.0f32, 3.0, 3.0, 4.0].map(f32::to_bits));
        assert_eq!(f(-2.5), [-2.0f32, -2.0, -3.0, -2.0].map(f32::to_bits));
        assert_eq!(f(-0.4), [-0.0f32, -0.0, -1.0, -0.0].map(f32::to_bits));
        assert_eq!(f(0.4), [0.0f32, 0.0, 0.0, 1.0].map(f32::to_bits));
        assert_eq!(f(1e20), [1e20f32.to_bits(); 4]);
        assert_eq!(f(f32::NEG_INFINITY), [f32::NEG_INFINITY.to_bits(); 4]);
        assert_eq!(f(f32::NAN), [CANONICAL_NAN_F32; 4]);
        assert_eq!(round_f64_integral(-1.5, Rni), -2.0);
        assert_eq!(round_f64_integral(0.5 + p2(-53), Rni), 1.0);
        assert_eq!(round_f64_integral(-0.5, Rpi).to_bits(), (-0.0f64).to_bits());
        assert_eq!(
            round_f64_integral(f64::NAN, Rzi).to_bits(),
            CANONICAL_NAN_F64
        );
    }

    #[test]
    fn numerics_ftz_and_sat_helpers() {
        assert_eq!(bits32(ftz_f32(p2f(-149))), 0);
        assert_eq!(bits32(ftz_f32(-p2f(-130))), 0x8000_0000);
        assert_eq!(ftz_f32(f32::MIN_POSITIVE), f32::MIN_POSITIVE);
        assert_eq!(ftz_f32(-1.5), -1.5);
        assert!(ftz_f32(f32::NAN).is_nan());
        assert_eq!(bits32(saturate_f32(-0.0)), 0);
        assert_eq!(bits32(saturate_f32(f32::NAN)), 0);
        assert_eq!(saturate_f32(f32::INFINITY), 1.0);
        assert_eq!(bits32(saturate_f32(f32::NEG_INFINITY)), 0);
        assert_eq!(saturate_f32(0.25), 0.25);
    }

    // ----------------------------------------------------------------------------- f32 arithmetic

    fn add_all(a: f32, b: f32) -> [u32; 4] {
        MODES.map(|m| add_f32(a, b, m, false, false).to_bits())
    }

    fn mul_all(a: f32, b: f32) -> [u32; 4] {
        MODES.map(|m| mul_f32(a, b, m, false, false).to_bits())
    }

    fn fma_all(a: f32, b: f32, c: f32) -> [u32; 4] {
        MODES.map(|m| fma_f32(a, b, c, m, false, false).to_bits())
    }

    #[test]
    fn numerics_add_f32_directed() {
        let one = 0x3F80_0000;
        let below_one = 0x3F7F_FFFF;
        assert_eq!(add_all(1.0, p2f(-30)), [one, one, one, one + 1]);
        assert_eq!(add_all(1.0, -p2f(-30)), [one, below_one, below_one, one]);
        let m1 = 0xBF80_0000;
        assert_eq!(add_all(-1.0, -p2f(-30)), [m1, m1, m1 + 1, m1]);
        // Huge exponent gap.
        let big = 1e30f32;
        assert_eq!(
            add_all(big, 1e-30),
            [
                big.to_bits(),
                big.to_bits(),
                big.to_bits(),
                big.to_bits() + 1
            ]
        );
        assert_eq!(
            add_all(-p2f(-149), big),
            [
                big.to_bits(),
                big.to_bits() - 1,
                big.to_bits() - 1,
                big.to_bits()
            ]
        );
        // Ties.
        assert_eq!(add_all(1.0, p2f(-24)), [one, one, one, one + 1]);
        assert_eq!(
            add_all(f32::from_bits(one + 1), p2f(-24)),
            [one + 2, one + 1, one + 1, one + 2]
        );
        // Exact zero sums.
        assert_eq!(add_all(1.0, -1.0), [0, 0, 0x8000_0000, 0]);
        assert_eq!(add_all(-0.0, -0.0), [0x8000_0000; 4]);
        assert_eq!(add_all(-0.0, 0.0), [0, 0, 0x8000_0000, 0]);
        assert_eq!(add_all(0.0, 0.0), [0; 4]);
        assert_eq!(add_all(-0.0, 2.0), [2.0f32.to_bits(); 4]);
        // Overflow.
        let max = f32::MAX.to_bits();
        let inf = f32::INFINITY.to_bits();
        let s = 0x8000_0000;
        assert_eq!(add_all(f32::MAX, f32::MAX), [inf, max, max, inf]);
        assert_eq!(
            add_all(f32::MIN, f32::MIN),
            [inf | s, max | s, inf | s, max | s]
        );
        assert_eq!(add_all(f32::MAX, p2f(103)), [inf, max, max, inf]);
        assert_eq!(add_all(f32::MAX, p2f(102)), [max, max, max, inf]);
        // NaN.
        assert_eq!(
            add_all(f32::INFINITY, f32::NEG_INFINITY),
            [CANONICAL_NAN_F32; 4]
        );
        assert_eq!(
            add_all(f32::from_bits(0x7FC0_1234), 1.0),
            [CANONICAL_NAN_F32; 4]
        );
        assert_eq!(sub_f32(1.0, 1.0, Rm, false, false).to_bits(), 0x8000_0000);
        assert_eq!(sub_f32(3.0, 1.0, Rz, false, false), 2.0);
    }

    #[test]
    fn numerics_add_f32_ftz_sat() {
        let tiny = p2f(-149);
        assert_eq!(add_f32(tiny, tiny, Rn, false, false).to_bits(), 2);
        assert_eq!(add_f32(tiny, tiny, Rn, true, false).to_bits(), 0);
        assert_eq!(
            add_f32(-tiny, -tiny, Rn, true, false).to_bits(),
            0x8000_0000
        );
        // Input flushing: the subnormal addend disappears before rounding.
        assert_eq!(add_f32(1.0, tiny, Rp, true, false), 1.0);
        assert_eq!(add_f32(1.0, tiny, Rp, false, false).to_bits(), 0x3F80_0001);
        // A subnormal input operand disappears under .ftz.
        assert_eq!(
            add_f32(f32::MIN_POSITIVE, -tiny, Rn, false, false).to_bits(),
            0x007F_FFFF
        );
        assert_eq!(
            add_f32(f32::MIN_POSITIVE, -tiny, Rn, true, false),
            f32::MIN_POSITIVE
        );
        // Output flushing: normal inputs, subnormal result 2^-127.
        let m = f32::MIN_POSITIVE;
        assert_eq!(
            add_f32(1.5 * m, -m, Rn, false, false).to_bits(),
            0x0040_0000
        );
        assert_eq!(add_f32(1.5 * m, -m, Rn, true, false).to_bits(), 0);
        assert_eq!(add_f32(-1.5 * m, m, Rz, true, false).to_bits(), 0x8000_0000);
        // A result that rounds up to the smallest normal is not flushed.
        assert_eq!(
            add_f32(f32::from_bits(0x007F_FFFF), tiny, Rn, false, false),
            f32::MIN_POSITIVE
        );
        // .sat
        assert_eq!(add_f32(0.5, 0.7, Rn, false, true), 1.0);
        assert_eq!(add_f32(0.25, 0.25, Rn, false, true), 0.5);
        assert_eq!(add_f32(-0.5, 0.2, Rn, false, true).to_bits(), 0);
        assert_eq!(add_f32(-0.0, -0.0, Rn, false, true).to_bits(), 0);
        assert_eq!(
            add_f32(f32::INFINITY, f32::NEG_INFINITY, Rn, false, true).to_bits(),
            0
        );
        assert_eq!(
            add_f32(f32::INFINITY, f32::NEG_INFINITY, Rn, false, false).to_bits(),
            CANONICAL_NAN_F32
        );
    }

    #[test]
    fn numerics_mul_f32_directed() {
        let a = f32::from_bits(0x3F80_0001); // 1 + 2^-23
                                             // (1 + 2^-23)^2 = 1 + 2^-22 + 2^-46.
        assert_eq!(
            mul_all(a, a),
            [0x3F80_0002, 0x3F80_0002, 0x3F80_0002, 0x3F80_0003]
        );
        assert_eq!(
            mul_all(-a, a),
            [0xBF80_0002, 0xBF80_0002, 0xBF80_0003, 0xBF80_0002]
        );
        // Underflow.
        assert_eq!(mul_all(p2f(-100), p2f(-100)), [0, 0, 0, 1]);
        assert_eq!(
            mul_all(-p2f(-100), p2f(-100)),
            [0x8000_0000, 0x8000_0000, 0x8000_0001, 0x8000_0000]
        );
        // 2^-140 is subnormal and exact.
        assert_eq!(mul_all(p2f(-70), p2f(-70)), [0x200; 4]);
        assert_eq!(mul_f32(p2f(-70), p2f(-70), Rn, true, false).to_bits(), 0);
        assert_eq!(
            mul_f32(-p2f(-70), p2f(-70), Rp, true, false).to_bits(),
            0x8000_0000
        );
        // Overflow.
        let max = f32::MAX.to_bits();
        let inf = f32::INFINITY.to_bits();
        assert_eq!(mul_all(f32::MAX, 2.0), [inf, max, max, inf]);
        // Specials and .sat.
        assert_eq!(mul_all(f32::INFINITY, 0.0), [CANONICAL_NAN_F32; 4]);
        assert_eq!(mul_f32(f32::INFINITY, 0.0, Rn, false, true).to_bits(), 0);
        assert_eq!(mul_f32(2.0, 3.0, Rz, false, true), 1.0);
        assert_eq!(mul_f32(-2.0, 3.0, Rn, false, true).to_bits(), 0);
        assert_eq!(mul_f32(0.5, 0.5, Rp, false, true), 0.25);
        assert_eq!(mul_all(-0.0, 5.0), [0x8000_0000; 4]);
    }

    #[test]
    fn numerics_fma_f32_single_rounding() {
        // (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24: the separate product rounds (tie) to 1 + 2^-11.
        let a = 1.0 + p2f(-12);
        let c = -(1.0 + p2f(-11));
        assert_eq!(fma_f32(a, a, c, Rn, false, false), p2f(-24));
        assert_eq!(a * a + c, 0.0);
        assert_eq!(fma_all(a, a, c), [p2f(-24).to_bits(); 4]);
        let base = (1.0 + p2f(-11)).to_bits();
        assert_eq!(fma_all(a, a, 0.0), [base, base, base, base + 1]);
        // A tiny product only acts as a sticky bit.
        let one = 0x3F80_0000;
        assert_eq!(fma_all(p2f(-100), p2f(-100), 1.0), [one, one, one, one + 1]);
        assert_eq!(
            fma_all(-p2f(-100), p2f(-100), 1.0),
            [one, one - 1, one - 1, one]
        );
        // Exact zeros.
        assert_eq!(fma_all(1.0, 1.0, -1.0), [0, 0, 0x8000_0000, 0]);
        assert_eq!(fma_all(-0.0, 1.0, -0.0), [0x8000_0000; 4]);
        assert_eq!(fma_all(0.0, -1.0, 0.0), [0, 0, 0x8000_0000, 0]);
        // The intermediate product does not overflow.
        assert_eq!(fma_all(f32::MAX, 2.0, f32::MIN), [f32::MAX.to_bits(); 4]);
        assert_eq!(fma_all(f32::INFINITY, 0.0, 1.0), [CANONICAL_NAN_F32; 4]);
        assert_eq!(
            fma_all(f32::INFINITY, 1.0, 1.0),
            [f32::INFINITY.to_bits(); 4]
        );
        // .ftz on inputs and output.
        assert_eq!(
            fma_f32(p2f(-70), p2f(-70), 0.0, Rn, true, false).to_bits(),
            0
        );
        assert_eq!(
            fma_f32(p2f(-140), p2f(100), 0.0, Rn, false, false),
            p2f(-40)
        );
        assert_eq!(fma_f32(p2f(-140), p2f(100), 0.0, Rn, true, false), 0.0);
        // .sat
        assert_eq!(fma_f32(2.0, 2.0, -3.5, Rn, false, true), 0.5);
        assert_eq!(fma_f32(2.0, 2.0, -5.0, Rn, false, true).to_bits(), 0);
        assert_eq!(fma_f32(2.0, 2.0, 5.0, Rn, false, true), 1.0);
    }

    // ----------------------------------------------------------------------------- f64 arithmetic

    fn f64_all(f: impl Fn(FloatRound) -> f64) -> [u64; 4] {
        MODES.map(|m| f(m).to_bits())
    }

    #[test]
    fn numerics_f64_directed() {
        let one = 1.0f64.to_bits();
        assert_eq!(
            f64_all(|m| add_f64(1.0, p2(-60), m)),
            [one, one, one, one + 1]
        );
        assert_eq!(
            f64_all(|m| add_f64(1.0, -p2(-60), m)),
            [one, one - 1, one - 1, one]
        );
        assert_eq!(f64_all(|m| add_f64(1.0, -1.0, m)), [0, 0, 1 << 63, 0]);
        assert_eq!(f64_all(|m| sub_f64(-0.0, 0.0, m)), [1 << 63; 4]);
        let max = f64::MAX.to_bits();
        let inf = f64::INFINITY.to_bits();
        assert_eq!(
            f64_all(|m| add_f64(f64::MAX, f64::MAX, m)),
            [inf, max, max, inf]
        );
        assert_eq!(
            f64_all(|m| add_f64(f64::MIN, -p2(970), m)),
            [inf | 1 << 63, max | 1 << 63, inf | 1 << 63, max | 1 << 63]
        );
        assert_eq!(
            f64_all(|m| add_f64(f64::MAX, p2(960), m)),
            [max, max, max, inf]
        );

        // (1 + 2^-52)^2 = 1 + 2^-51 + 2^-104.
        let a = f64::from_bits(one + 1);
        assert_eq!(
            f64_all(|m| mul_f64(a, a, m)),
            [one + 2, one + 2, one + 2, one + 3]
        );
        // Subnormal products: 0.75 * 2^-1074 and 2^-1200.
        let x = 1.5 * p2(-538);
        assert_eq!(f64_all(|m| mul_f64(x, p2(-537), m)), [1, 0, 0, 1]);
        assert_eq!(
            f64_all(|m| mul_f64(-x, p2(-537), m)),
            [1 | 1 << 63, 1 << 63, 1 | 1 << 63, 1 << 63]
        );
        assert_eq!(f64_all(|m| mul_f64(p2(-600), p2(-600), m)), [0, 0, 0, 1]);
        assert_eq!(f64_all(|m| mul_f64(p2(-537), p2(-537), m)), [1; 4]);
        assert_eq!(f64_all(|m| mul_f64(f64::MAX, 2.0, m)), [inf, max, max, inf]);
        assert_eq!(
            f64_all(|m| mul_f64(f64::INFINITY, 0.0, m)),
            [CANONICAL_NAN_F64; 4]
        );

        // fma: exact cancellation, sticky tiny products, subnormal results.
        let b = 1.0 + p2(-30);
        assert_eq!(
            f64_all(|m| fma_f64(b, b, -(1.0 + p2(-29)), m)),
            [p2(-60).to_bits(); 4]
        );
        assert_eq!(
            f64_all(|m| fma_f64(p2(-600), p2(-600), 1.0, m)),
            [one, one, one, one + 1]
        );
        assert_eq!(
            f64_all(|m| fma_f64(p2(-600), -p2(-600), 1.0, m)),
            [one, one - 1, one - 1, one]
        );
        assert_eq!(
            f64_all(|m| fma_f64(p2(-1000), p2(-74), p2(-1074), m)),
            [2; 4]
        );
        assert_eq!(f64_all(|m| fma_f64(x, p2(-537), 0.0, m)), [1, 0, 0, 1]);
        assert_eq!(f64_all(|m| fma_f64(x, p2(-537), -0.0, m)), [1, 0, 0, 1]);
        assert_eq!(f64_all(|m| fma_f64(1.0, 1.0, -1.0, m)), [0, 0, 1 << 63, 0]);
        assert_eq!(f64_all(|m| fma_f64(f64::MAX, 2.0, f64::MIN, m)), [max; 4]);
    }

    #[test]
    fn numerics_div_sqrt_f64() {
        let third = |m| div_f64(1.0, 3.0, m);
        assert_eq!(third(Rn), 1.0 / 3.0);
        assert_eq!(third(Rz), third(Rm));
        assert_eq!(third(Rp), next_up_f64(third(Rm)));
        assert!(third(Rm).mul_add(-3.0, 1.0) > 0.0);
        assert!(third(Rp).mul_add(-3.0, 1.0) < 0.0);
        assert_eq!(div_f64(-1.0, 3.0, Rm), -third(Rp));
        assert_eq!(f64_all(|m| div_f64(1.0, 4.0, m)), [0.25f64.to_bits(); 4]);
        // Subnormal quotients.
        let tiny = f64::from_bits(1);
        assert_eq!(f64_all(|m| div_f64(tiny, 2.0, m)), [0, 0, 0, 1]);
        assert_eq!(
            f64_all(|m| div_f64(-tiny, 2.0, m)),
            [1 << 63, 1 << 63, 1 | 1 << 63, 1 << 63]
        );
        assert_eq!(f64_all(|m| div_f64(3.0 * tiny, 2.0, m)), [2, 1, 1, 2]);
        // Overflow and specials.
        let max = f64::MAX.to_bits();
        let inf = f64::INFINITY.to_bits();
        assert_eq!(f64_all(|m| div_f64(f64::MAX, 0.5, m)), [inf, max, max, inf]);
        for m in MODES {
            assert_eq!(div_f64(1.0, 0.0, m), f64::INFINITY);
            assert_eq!(div_f64(-1.0, 0.0, m), f64::NEG_INFINITY);
            assert_eq!(div_f64(0.0, 0.0, m).to_bits(), CANONICAL_NAN_F64);
            assert_eq!(
                div_f64(f64::INFINITY, f64::INFINITY, m).to_bits(),
                CANONICAL_NAN_F64
            );
            assert_eq!(div_f64(-1.0, f64::INFINITY, m).to_bits(), 1 << 63);
            assert_eq!(div_f64(0.0, -5.0, m).to_bits(), 1 << 63);
            assert_eq!(rcp_f64(-0.0, m), f64::NEG_INFINITY);
            assert_eq!(sqrt_f64(-0.0, m).to_bits(), 1 << 63);
            assert_eq!(sqrt_f64(-1.0, m).to_bits(), CANONICAL_NAN_F64);
            assert_eq!(sqrt_f64(f64::INFINITY, m), f64::INFINITY);
            assert_eq!(sqrt_f64(4.0, m), 2.0);
        }
        let lo = sqrt_f64(2.0, Rm);
        let hi = sqrt_f64(2.0, Rp);
        assert_eq!(sqrt_f64(2.0, Rn), 2.0f64.sqrt());
        assert_eq!(sqrt_f64(2.0, Rz), lo);
        assert_eq!(hi, next_up_f64(lo));
        assert!(lo.mul_add(lo, -2.0) < 0.0 && hi.mul_add(hi, -2.0) > 0.0);
        // sqrt of the smallest subnormal: 2^-537 exactly.
        assert_eq!(sqrt_f64(tiny, Rz), p2(-537));
        assert_eq!(rcp_f64(3.0, Rp), third(Rp));
        // rcp.approx.ftz.f64 / rsqrt.approx.f64 special cases.
        assert_eq!(rcp_approx_ftz_f64(tiny), f64::INFINITY);
        assert_eq!(rcp_approx_ftz_f64(-0.0), f64::NEG_INFINITY);
        assert_eq!(rcp_approx_ftz_f64(f64::MAX).to_bits(), 0);
        assert_eq!(rcp_approx_ftz_f64(f64::NEG_INFINITY).to_bits(), 1 << 63);
        assert_eq!(rcp_approx_ftz_f64(4.0), 0.25);
        assert_eq!(rsqrt_approx_f64(4.0, false), 0.5);
        assert_eq!(rsqrt_approx_f64(-tiny, true), f64::NEG_INFINITY);
        assert!(rsqrt_approx_f64(-tiny, false).is_nan());
        assert_eq!(rsqrt_approx_f64(f64::INFINITY, false), 0.0);
    }

    #[test]
    fn numerics_div_f32_modes() {
        let q = |m| div_f32(1.0, 3.0, DivMode::Round(m), false);
        assert_eq!(q(Rn), 1.0f32 / 3.0);
        assert_eq!(q(Rz), q(Rm));
        assert_eq!(q(Rp), next_up_f32(q(Rm)));
        assert!(f64::from(q(Rm)) * 3.0 < 1.0 && f64::from(q(Rp)) * 3.0 > 1.0);
        assert_eq!(div_f32(-1.0, 3.0, DivMode::Round(Rm), false), -q(Rp));
        assert_eq!(div_f32(7.0, 3.0, DivMode::Full, false), 7.0f32 / 3.0);
        assert_eq!(div_f32(6.0, 3.0, DivMode::Approx, false), 2.0);
        // div.approx: 2^126 < |b| < 2^128 gives 0 (NaN for infinite a).
        let big = p2f(127);
        assert_eq!(div_f32(1.0, big, DivMode::Approx, false).to_bits(), 0);
        assert_eq!(
            div_f32(1.0, -big, DivMode::Approx, false).to_bits(),
            0x8000_0000
        );
        assert_eq!(
            div_f32(f32::INFINITY, big, DivMode::Approx, false).to_bits(),
            CANONICAL_NAN_F32
        );
        assert_eq!(div_f32(1.0, p2f(126), DivMode::Approx, false), p2f(-126));
        assert_eq!(div_f32(1.0, big, DivMode::Full, false), p2f(-127));
        // Subnormal quotient, directed.
        assert_eq!(
            div_f32(p2f(-149), 2.0, DivMode::Round(Rp), false).to_bits(),
            1
        );
        assert_eq!(
            div_f32(p2f(-149), 2.0, DivMode::Round(Rn), false).to_bits(),
            0
        );
        assert_eq!(
            div_f32(3.0 * p2f(-149), 2.0, DivMode::Round(Rz), false).to_bits(),
            1
        );
        // Overflow, directed.
        assert_eq!(div_f32(f32::MAX, 0.5, DivMode::Round(Rz), false), f32::MAX);
        assert_eq!(
            div_f32(f32::MAX, 0.5, DivMode::Round(Rp), false),
            f32::INFINITY
        );
        // .ftz
        assert_eq!(
            div_f32(p2f(-130), 1.0, DivMode::Round(Rn), true).to_bits(),
            0
        );
        assert_eq!(
            div_f32(p2f(-100), p2f(30), DivMode::Full, true).to_bits(),
            0
        );
        assert_eq!(div_f32(p2f(-100), p2f(30), DivMode::Full, false), p2f(-130));
        // Specials.
        for mode in [DivMode::Approx, DivMode::Full, DivMode::Round(Rz)] {
            assert_eq!(div_f32(1.0, 0.0, mode, false), f32::INFINITY);
            assert_eq!(div_f32(-1.0, 0.0, mode, false), f32::NEG_INFINITY);
            assert_eq!(div_f32(0.0, 0.0, mode, false).to_bits(), CANONICAL_NAN_F32);
            assert_eq!(div_f32(2.0, f32::INFINITY, mode, false).to_bits(), 0);
        }
    }

    #[test]
    fn numerics_sqrt_rcp_f32() {
        for m in MODES {
            assert_eq!(sqrt_f32(4.0, Some(m), false), 2.0);
            assert_eq!(sqrt_f32(-0.0, Some(m), false).to_bits(), 0x8000_0000);
            assert_eq!(sqrt_f32(-1.0, Some(m), false).to_bits(), CANONICAL_NAN_F32);
            assert_eq!(sqrt_f32(f32::INFINITY, Some(m), false), f32::INFINITY);
        }
        let lo = sqrt_f32(2.0, Some(Rm), false);
        let hi = sqrt_f32(2.0, Some(Rp), false);
        assert_eq!(sqrt_f32(2.0, Some(Rz), false), lo);
        assert_eq!(sqrt_f32(2.0, Some(Rn), false), 2.0f32.sqrt());
        assert_eq!(hi, next_up_f32(lo));
        assert!(f64::from(lo) * f64::from(lo) < 2.0 && f64::from(hi) * f64::from(hi) > 2.0);
        assert_eq!(sqrt_f32(2.0, None, false), 2.0f32.sqrt());
        assert_eq!(sqrt_f32(p2f(-149), None, false), p2f(-149).sqrt());
        assert_eq!(sqrt_f32(p2f(-148), Some(Rz), false), p2f(-74));
        assert_eq!(sqrt_f32(p2f(-149), None, true).to_bits(), 0);
        assert_eq!(sqrt_f32(-p2f(-149), None, true).to_bits(), 0x8000_0000);
        assert!(sqrt_f32(-p2f(-149), None, false).is_nan());

        assert_eq!(rcp_f32(0.0, None, false), f32::INFINITY);
        assert_eq!(rcp_f32(-0.0, None, false), f32::NEG_INFINITY);
        assert_eq!(rcp_f32(f32::INFINITY, None, false).to_bits(), 0);
        assert_eq!(
            rcp_f32(f32::NEG_INFINITY, None, true).to_bits(),
            0x8000_0000
        );
        assert_eq!(rcp_f32(2.0, None, false), 0.5);
        assert_eq!(
            rcp_f32(3.0, Some(Rz), false),
            div_f32(1.0, 3.0, DivMode::Round(Rz), false)
        );
        assert_eq!(rcp_f32(3.0, Some(Rn), false), 1.0f32 / 3.0);
        assert_eq!(rcp_f32(p2f(127), None, false), p2f(-127));
        assert_eq!(rcp_f32(p2f(127), None, true).to_bits(), 0);
        assert_eq!(rcp_f32(p2f(-127), None, false), p2f(127));
        assert_eq!(rcp_f32(p2f(-127), None, true), f32::INFINITY);
        assert_eq!(rcp_f32(f32::NAN, None, false).to_bits(), CANONICAL_NAN_F32);
    }

    // ----------------------------------------------------------------------------- approx

    fn rel_err(got: f32, want: f64) -> f64 {
        ((f64::from(got) - want) / want).abs()
    }

    fn sweep() -> impl Iterator<Item = f32> {
        (0..20_000).map(|i| -50.0 + i as f32 * 0.005_123)
    }

    #[test]
    fn numerics_rsqrt_approx() {
        assert_eq!(rsqrt_approx_f32(4.0, false), 0.5);
        assert_eq!(rsqrt_approx_f32(0.0, false), f32::INFINITY);
        assert_eq!(rsqrt_approx_f32(-0.0, false), f32::NEG_INFINITY);
        assert_eq!(rsqrt_approx_f32(f32::INFINITY, false).to_bits(), 0);
        assert_eq!(rsqrt_approx_f32(-1.0, false).to_bits(), CANONICAL_NAN_F32);
        assert_eq!(
            rsqrt_approx_f32(f32::NEG_INFINITY, false).to_bits(),
            CANONICAL_NAN_F32
        );
        assert_eq!(rsqrt_approx_f32(p2f(-148), false), p2f(74));
        assert_eq!(rsqrt_approx_f32(p2f(-148), true), f32::INFINITY);
        assert_eq!(rsqrt_approx_f32(-p2f(-148), true), f32::NEG_INFINITY);
        for x in sweep().map(f32::abs).filter(|x| *x > 0.0) {
            let want = 1.0 / f64::from(x).sqrt();
            assert!(rel_err(rsqrt_approx_f32(x, false), want) <= (-22.9f64).exp2());
        }
    }

    #[test]
    fn numerics_ex2_lg2_approx() {
        assert_eq!(ex2_approx_f32(f32::NEG_INFINITY, false).to_bits(), 0);
        assert_eq!(ex2_approx_f32(f32::INFINITY, true), f32::INFINITY);
        assert_eq!(ex2_approx_f32(f32::NAN, true).to_bits(), CANONICAL_NAN_F32);
        assert_eq!(ex2_approx_f32(0.0, false), 1.0);
        assert_eq!(ex2_approx_f32(-0.0, true), 1.0);
        assert_eq!(ex2_approx_f32(p2f(-149), true), 1.0);
        assert_eq!(ex2_approx_f32(-p2f(-149), false), 1.0);
        assert_eq!(ex2_approx_f32(3.0, true), 8.0);
        assert_eq!(ex2_approx_f32(-126.0, true), f32::MIN_POSITIVE);
        assert_eq!(ex2_approx_f32(-130.0, false), p2f(-130));
        assert_eq!(ex2_approx_f32(-130.0, true).to_bits(), 0);
        assert_eq!(ex2_approx_f32(128.0, false), f32::INFINITY);
        assert_eq!(ex2_approx_f32(-200.0, false).to_bits(), 0);
        for x in sweep() {
            let want = f64::from(x).exp2();
            assert!(rel_err(ex2_approx_f32(x, true), want) <= (-22.0f64).exp2());
        }

        assert_eq!(lg2_approx_f32(8.0, false), 3.0);
        assert_eq!(lg2_approx_f32(0.0, false), f32::NEG_INFINITY);
        assert_eq!(lg2_approx_f32(-0.0, true), f32::NEG_INFINITY);
        assert_eq!(lg2_approx_f32(f32::INFINITY, false), f32::INFINITY);
        assert_eq!(lg2_approx_f32(-1.0, false).to_bits(), CANONICAL_NAN_F32);
        assert_eq!(
            lg2_approx_f32(f32::NEG_INFINITY, false).to_bits(),
            CANONICAL_NAN_F32
        );
        assert_eq!(lg2_approx_f32(p2f(-149), false), -149.0);
        assert_eq!(lg2_approx_f32(p2f(-149), true), f32::NEG_INFINITY);
        assert_eq!(lg2_approx_f32(-p2f(-149), true), f32::NEG_INFINITY);
        for x in sweep().map(f32::abs).filter(|x| *x > 0.0) {
            let want = f64::from(x).log2();
            let err = (f64::from(lg2_approx_f32(x, false)) - want).abs();
            assert!(err <= (-22.0f64).exp2() * want.abs().max(1.0));
        }
    }

    #[test]
    fn numerics_sin_cos_tanh_approx() {
        assert_eq!(sin_approx_f32(0.0, false).to_bits(), 0);
        assert_eq!(sin_approx_f32(-0.0, false).to_bits(), 0x8000_0000);
        assert_eq!(cos_approx_f32(0.0, false), 1.0);
        assert_eq!(cos_approx_f32(-0.0, true), 1.0);
        assert_eq!(
            sin_approx_f32(f32::INFINITY, false).to_bits(),
            CANONICAL_NAN_F32
        );
        assert_eq!(
            cos_approx_f32(f32::NEG_INFINITY, false).to_bits(),
            CANONICAL_NAN_F32
        );
        assert_eq!(sin_approx_f32(f32::NAN, false).to_bits(), CANONICAL_NAN_F32);
        assert_eq!(sin_approx_f32(p2f(-140), false), p2f(-140));
        assert_eq!(sin_approx_f32(-p2f(-140), true).to_bits(), 0x8000_0000);
        assert_eq!(cos_approx_f32(p2f(-140), true), 1.0);
        let pi = core::f64::consts::PI;
        for i in -2000..=2000 {
            let x = (f64::from(i) * pi / 2000.0) as f32;
            let xs = f64::from(x);
            assert!((f64::from(sin_approx_f32(x, false)) - xs.sin()).abs() <= (-20.9f64).exp2());
            assert!((f64::from(cos_approx_f32(x, true)) - xs.cos()).abs() <= (-20.9f64).exp2());
        }

        assert_eq!(tanh_approx_f32(0.0).to_bits(), 0);
        assert_eq!(tanh_approx_f32(-0.0).to_bits(), 0x8000_0000);
        assert_eq!(tanh_approx_f32(f32::INFINITY), 1.0);
        assert_eq!(tanh_approx_f32(f32::NEG_INFINITY), -1.0);
        assert_eq!(tanh_approx_f32(20.0), 1.0);
        assert_eq!(tanh_approx_f32(f32::NAN).to_bits(), CANONICAL_NAN_F32);
        assert_eq!(tanh_approx_f32(p2f(-140)), p2f(-140));
        for x in sweep().filter(|x| *x != 0.0) {
            let want = f64::from(x).tanh();
            assert!(rel_err(tanh_approx_f32(x), want) <= (-10.987f64).exp2());
        }
    }

    // ----------------------------------------------------------------------------- min / max / cmp

    #[test]
    fn numerics_min_max() {
        let nan = f32::from_bits(0x7FC0_0001);
        assert_eq!(min_f32(1.0, nan, false, false), 1.0);
        assert_eq!(min_f32(nan, 1.0, false, false), 1.0);
        assert_eq!(max_f32(nan, -1.0, false, false), -1.0);
        assert_eq!(min_f32(nan, nan, false, false).to_bits(), CANONICAL_NAN_F32);
        assert_eq!(
            max_f32(nan, -nan, false, false).to_bits(),
            CANONICAL_NAN_F32
        );
        assert_eq!(min_f32(1.0, nan, false, true).to_bits(), CANONICAL_NAN_F32);
        assert_eq!(max_f32(nan, 1.0, false, true).to_bits(), CANONICAL_NAN_F32);
        assert_eq!(min_f32(1.0, 2.0, false, true), 1.0);
        assert_eq!(min_f32(-0.0, 0.0, false, false).to_bits(), 0x8000_0000);
        assert_eq!(min_f32(0.0, -0.0, false, false).to_bits(), 0x8000_0000);
        assert_eq!(max_f32(-0.0, 0.0, false, false).to_bits(), 0);
        assert_eq!(max_f32(0.0, -0.0, false, false).to_bits(), 0);
        assert_eq!(
            min_f32(f32::NEG_INFINITY, 1.0, false, false),
            f32::NEG_INFINITY
        );
        assert_eq!(max_f32(f32::INFINITY, 1.0, false, false), f32::INFINITY);
        let sub = -p2f(-140);
        assert_eq!(min_f32(sub, 0.0, false, false), sub);
        assert_eq!(min_f32(sub, 0.0, true, false).to_bits(), 0x8000_0000);
        assert_eq!(max_f32(-sub, 0.0, true, false).to_bits(), 0);
        assert_eq!(max_f32(-sub, 0.0, false, false), -sub);

        let dnan = f64::from_bits(0x7FF8_0000_0000_0042);
        assert_eq!(min_f64(2.0, dnan), 2.0);
        assert_eq!(max_f64(dnan, 2.0), 2.0);
        assert_eq!(min_f64(dnan, dnan).to_bits(), CANONICAL_NAN_F64);
        assert_eq!(max_f64(dnan, dnan).to_bits(), CANONICAL_NAN_F64);
        assert_eq!(min_f64(0.0, -0.0).to_bits(), 1 << 63);
        assert_eq!(max_f64(-0.0, 0.0).to_bits(), 0);
        assert_eq!(min_f64(-3.0, 2.0), -3.0);
        assert_eq!(max_f64(-3.0, 2.0), 2.0);
    }

    #[test]
    fn numerics_copysign_abs_neg() {
        assert_eq!(copysign_f32(-1.0, 2.0), -2.0);
        assert_eq!(copysign_f32(1.0, -3.0), 3.0);
        assert_eq!(copysign_f32(-0.0, 0.0).to_bits(), 0x8000_0000);
        assert_eq!(copysign_f32(-1.0, f32::NAN).to_bits(), 0xFFC0_0000);
        assert_eq!(copysign_f64(-1.0, 2.5), -2.5);
        assert_eq!(copysign_f64(0.0, -2.5), 2.5);
        assert_eq!(abs_f32(-2.0, false), 2.0);
        assert_eq!(abs_f32(-p2f(-140), true).to_bits(), 0);
        assert_eq!(neg_f32(2.0, false), -2.0);
        assert_eq!(neg_f32(p2f(-140), true).to_bits(), 0x8000_0000);
        assert_eq!(neg_f32(0.0, false).to_bits(), 0x8000_0000);
    }

    #[test]
    fn numerics_compare() {
        use FloatCmp::*;
        let ops = [
            Eq, Ne, Lt, Le, Gt, Ge, Equ, Neu, Ltu, Leu, Gtu, Geu, Num, Nan,
        ];
        let row = |a: f64, b: f64| ops.map(|c| compare_f64(a, b, c));
        let (t, f) = (true, false);
        //                       eq ne lt le gt ge equ neu ltu leu gtu geu num nan
        assert_eq!(row(1.0, 2.0), [f, t, t, t, f, f, f, t, t, t, f, f, t, f]);
        assert_eq!(row(2.0, 2.0), [t, f, f, t, f, t, t, f, f, t, f, t, t, f]);
        assert_eq!(row(3.0, 2.0), [f, t, f, f, t, t, f, t, f, f, t, t, t, f]);
        assert_eq!(row(-0.0, 0.0), [t, f, f, t, f, t, t, f, f, t, f, t, t, f]);
        let unordered = [f, f, f, f, f, f, t, t, t, t, t, t, f, t];
        assert_eq!(row(f64::NAN, 1.0), unordered);
        assert_eq!(row(1.0, f64::NAN), unordered);
        assert_eq!(row(f64::NAN, f64::NAN), unordered);
        assert_eq!(row(f64::INFINITY, f64::INFINITY)[0], t);
        // Ordered comparisons never hold with a NaN operand.
        for c in [Eq, Ne, Lt, Le, Gt, Ge, Num] {
            assert!(!compare_f64(f64::NAN, f64::NAN, c));
            assert!(!compare_f32(f32::NAN, 0.0, c, false));
        }
        // .ftz on setp.f32.
        assert!(!compare_f32(p2f(-140), 0.0, Eq, false));
        assert!(compare_f32(p2f(-140), 0.0, Eq, true));
        assert!(compare_f32(p2f(-140), 0.0, Gt, false));
    }

    // ----------------------------------------------------------------------------- packed halves

    fn pack(lo: u16, hi: u16) -> u32 {
        u32::from(lo) | (u32::from(hi) << 16)
    }

    fn bf(x: f32) -> u16 {
        f32_to_bf16(x, Rn, false, false)
    }

    fn hf(x: f32) -> u16 {
        f32_to_f16(x, Rn, false, false)
    }

    #[test]
    fn numerics_bf16x2() {
        assert_eq!(
            add_bf16x2(pack(bf(1.0), bf(2.0)), pack(bf(1.0), bf(3.0))),
            pack(bf(2.0), bf(5.0))
        );
        assert_eq!(
            mul_bf16x2(pack(bf(1.5), bf(-2.0)), pack(bf(2.0), bf(3.0))),
            pack(bf(3.0), bf(-6.0))
        );
        // Single rounding: (1 + 2^-4)^2 = 1 + 2^-3 + 2^-8, the product alone ties to 1 + 2^-3.
        let a = bf(1.0 + p2f(-4));
        let c = bf(-(1.0 + p2f(-3)));
        assert_eq!(fma_bf16(a, a, c), bf(p2f(-8)));
        assert_eq!(mul_bf16(a, a), bf(1.0 + p2f(-3)));
        assert_eq!(add_bf16(mul_bf16(a, a), c), 0);
        assert_eq!(
            fma_bf16x2(pack(a, bf(2.0)), pack(a, bf(3.0)), pack(c, bf(1.0))),
            pack(bf(p2f(-8)), bf(7.0))
        );
        // NaN only in its own lane; canonical.
        assert_eq!(
            add_bf16x2(pack(0x7FC1, bf(1.0)), pack(bf(1.0), bf(1.0))),
            pack(0x7FFF, bf(2.0))
        );
        assert_eq!(mul_bf16(bf(f32::INFINITY), 0), 0x7FFF);
        // Overflow and huge exponent gaps.
        assert_eq!(add_bf16(0x7F7F, 0x7F7F), 0x7F80);
        assert_eq!(add_bf16(bf(1.0), 0x0001), bf(1.0));
        assert_eq!(add_bf16(0x0001, 0x0001), 0x0002);
        // Signed zeros.
        assert_eq!(add_bf16(0x8000, 0x8000), 0x8000);
        assert_eq!(add_bf16(0x8000, 0x0000), 0x0000);
        assert_eq!(mul_bf16(0x8000, bf(3.0)), 0x8000);
        assert_eq!(add_bf16(bf(1.0), bf(-1.0)), 0x0000);
    }

    #[test]
    fn numerics_bf16_fma_no_double_rounding() {
        // a*b is exactly the bf16 midpoint -182.5 * 2^17 and c is a tiny negative value, so the
        // single-rounded result is -183 * 2^17 (rounding the product first would give -182).
        let (a, b, c) = (0xA6A0, 0x6492, 0xB4D6);
        let p = f64::from(bf16_to_f32(a)) * f64::from(bf16_to_f32(b));
        assert_eq!(p, -182.5 * p2(17));
        assert_eq!(fma_bf16(a, b, c), 0xCBB7);
        assert_eq!(bf16_to_f32(0xCBB7), -183.0 * p2f(17));
        assert_eq!(mul_bf16(a, b), 0xCBB6);
    }

    #[test]
    fn numerics_f64_to_f16_single_rounding() {
        // 1980.50006 ulps above 1.0: rounding through f32 would create a tie and give 0x3FBC.
        let x = 1.934_082_090_854_644_8;
        assert_eq!(f64_to_f16(x, Rn, false, false), 0x3FBD);
        assert_eq!(
            f64_to_f16(1.0 + 956.5 * p2(-10) + p2(-40), Rn, false, false),
            0x3FBD
        );
        assert_eq!(f64_to_f16(1.0 + 956.5 * p2(-10), Rn, false, false), 0x3FBC);
        // fma.rn.f16: exact value 2.10058581829..., nearer to 0x4033 (2.099609375) than to
        // 0x4034 (2.1015625) by 2.4e-8; rounding through f32 first would give 0x4034.
        assert_eq!(fma_f16(0x2486, 0x4595, 0x4001, false), 0x4033);
    }

    #[test]
    fn numerics_f16x2() {
        assert_eq!(
            add_f16x2(pack(hf(1.0), hf(2.0)), pack(hf(0.5), hf(-3.0)), false),
            pack(hf(1.5), hf(-1.0))
        );
        let a = hf(1.0 + p2f(-6));
        let c = hf(-(1.0 + p2f(-5)));
        // (1 + 2^-6)^2 = 1 + 2^-5 + 2^-12: single rounding keeps 2^-12.
        assert_eq!(fma_f16(a, a, c, false), hf(p2f(-12)));
        assert_eq!(mul_f16(a, a, false), hf(1.0 + p2f(-5)));
        assert_eq!(
            fma_f16x2(pack(a, hf(2.0)), pack(a, hf(2.0)), pack(c, hf(0.5)), false),
            pack(hf(p2f(-12)), hf(4.5))
        );
        // .ftz on f16 subnormals.
        assert_eq!(add_f16(0x0001, 0x0001, false), 0x0002);
        assert_eq!(add_f16(0x0001, 0x0001, true), 0x0000);
        assert_eq!(add_f16(0x8001, 0x8001, true), 0x8000);
        assert_eq!(mul_f16(hf(p2f(-10)), hf(p2f(-10)), false), 0x0010);
        assert_eq!(mul_f16(hf(p2f(-10)), hf(p2f(-10)), true), 0x0000);
        assert_eq!(
            mul_f16x2(pack(hf(2.0), 0x7C00), pack(hf(3.0), 0), false),
            pack(hf(6.0), 0x7FFF)
        );
        assert_eq!(add_f16(0x7BFF, 0x7BFF, false), 0x7C00);
    }

    // ----------------------------------------------------------------------------- proptests

    /// Finite f32 values, biased towards moderate exponents, short significands (ties) and
    /// subnormals.
    fn finite_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            any::<u32>()
                .prop_map(f32::from_bits)
                .prop_filter("finite", |x| x.is_finite()),
            (any::<bool>(), -40i32..40, any::<u32>()).prop_map(|(s, e, m)| {
                f32::from_bits((u32::from(s) << 31) | (((e + 127) as u32) << 23) | (m & 0x7F_FFFF))
            }),
            (any::<bool>(), -20i32..20, any::<u32>()).prop_map(|(s, e, m)| {
                f32::from_bits((u32::from(s) << 31) | (((e + 127) as u32) << 23) | (m & 0x7F_F000))
            }),
            (any::<bool>(), 0u32..0x80_0000)
                .prop_map(|(s, m)| f32::from_bits((u32::from(s) << 31) | m)),
        ]
    }

    fn finite_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<u64>()
                .prop_map(f64::from_bits)
                .prop_filter("finite", |x| x.is_finite()),
            (any::<bool>(), -60i32..60, any::<u64>()).prop_map(|(s, e, m)| {
                f64::from_bits(
                    (u64::from(s) << 63) | (((e + 1023) as u64) << 52) | (m & 0xF_FFFF_FFFF_FFFF),
                )
            }),
            (any::<bool>(), -20i32..20, any::<u64>()).prop_map(|(s, e, m)| {
                f64::from_bits(
                    (u64::from(s) << 63) | (((e + 1023) as u64) << 52) | (m & 0xF_FFFF_F000_0000),
                )
            }),
            (any::<bool>(), 0u64..(1 << 52))
                .prop_map(|(s, m)| f64::from_bits((u64::from(s) << 63) | m)),
        ]
    }

    /// Pairs that often nearly cancel.
    fn near_pair_f32() -> impl Strategy<Value = (f32, f32)> {
        (finite_f32(), -3i32..3).prop_map(|(a, k)| {
            let b = f32::from_bits(a.to_bits().wrapping_add(k as u32));
            (a, if b.is_finite() { -b } else { -a })
        })
    }

    /// TwoSum: `s + t == a + b` exactly.
    fn two_sum(a: f64, b: f64) -> (f64, f64) {
        let s = a + b;
        let bb = s - a;
        let t = (a - (s - bb)) + (b - bb);
        (s, t)
    }

    /// Directed rounding derived from the nearest result `rn` and the sign of `exact - rn`.
    fn directed_f32(rn: f32, d: f64, rnd: FloatRound) -> f32 {
        match rnd {
            Rn => rn,
            Rp if d > 0.0 => next_up_f32(rn),
            Rm if d < 0.0 => next_down_f32(rn),
            Rz if d < 0.0 && rn.is_sign_positive() => next_down_f32(rn),
            Rz if d > 0.0 && rn.is_sign_negative() => next_up_f32(rn),
            _ => rn,
        }
    }

    fn directed_f64(rn: f64, d: f64, rnd: FloatRound) -> f64 {
        match rnd {
            Rn => rn,
            Rp if d > 0.0 => next_up_f64(rn),
            Rm if d < 0.0 => next_down_f64(rn),
            Rz if d < 0.0 && rn.is_sign_positive() => next_down_f64(rn),
            Rz if d > 0.0 && rn.is_sign_negative() => next_up_f64(rn),
            _ => rn,
        }
    }

    /// Reference: exact value `s + t` (from TwoSum), rounded in every mode to f32.
    fn reference_f32(s: f64, t: f64, rn: f32, rnd: FloatRound) -> f32 {
        let d = (s - f64::from(rn)) + t;
        directed_f32(rn, d, rnd)
    }

    fn check_order_f32(r: [f32; 4]) -> Result<(), TestCaseError> {
        let [rn, rz, rm, rp] = r;
        prop_assert!(rm <= rn && rn <= rp, "{r:?}");
        prop_assert!(rz.abs() <= rn.abs(), "{r:?}");
        prop_assert!(rz == rm || rz == rp, "{r:?}");
        Ok(())
    }

    fn check_order_f64(r: [f64; 4]) -> Result<(), TestCaseError> {
        let [rn, rz, rm, rp] = r;
        prop_assert!(rm <= rn && rn <= rp, "{r:?}");
        prop_assert!(rz.abs() <= rn.abs(), "{r:?}");
        prop_assert!(rz == rm || rz == rp, "{r:?}");
        Ok(())
    }

    /// Independent check of `f64 -> f16/bf16` in every mode: `.rm`/`.rp` bracket `x` with
    /// adjacent encodings, `.rz` is the one towards zero and `.rn` the nearer one (ties to the
    /// even encoding). (`half`'s `from_f64` rounds through `f32`, so it is not a reference.)
    fn check_half_modes(x: f64, is_bf: bool) -> Result<(), TestCaseError> {
        let conv = |m| {
            if is_bf {
                f64_to_bf16(x, m, false, false)
            } else {
                f64_to_f16(x, m, false, false)
            }
        };
        let dec = |h: u16| {
            if is_bf {
                f64::from(bf16_to_f32(h))
            } else {
                f64::from(f16_to_f32(h))
            }
        };
        let [rn, rz, rm, rp] = MODES.map(conv);
        let (lo, hi) = (dec(rm), dec(rp));
        prop_assert!(lo <= x && x <= hi, "{x:e}: {lo:e} {hi:e}");
        prop_assert_eq!(rz, if x.is_sign_negative() { rp } else { rm });
        if lo == hi {
            prop_assert_eq!(lo, x);
            prop_assert_eq!(rn, rm);
            return Ok(());
        }
        let next = |h: u16| match h {
            0x8000 => 0x0001,
            h if h & 0x8000 == 0 => h + 1,
            h => h - 1,
        };
        prop_assert_eq!(dec(next(rm)), hi);
        let max = dec(if is_bf { 0x7F7F } else { 0x7BFF });
        if x.abs() <= max {
            let (dl, dh) = (x - lo, hi - x);
            let want = match dl.partial_cmp(&dh) {
                Some(Ordering::Less) => rm,
                Some(Ordering::Greater) => rp,
                _ if rm & 1 == 0 => rm,
                _ => rp,
            };
            prop_assert_eq!(rn, want, "{:e}", x);
        }
        Ok(())
    }

    /// f64 values around the half-precision ranges (subnormal to overflow).
    fn half_range_f64() -> impl Strategy<Value = f64> {
        prop_oneof![
            (any::<bool>(), -30i32..18, any::<u64>()).prop_map(|(s, e, m)| {
                f64::from_bits(
                    (u64::from(s) << 63) | (((e + 1023) as u64) << 52) | (m & 0xF_FFFF_FFFF_FFFF),
                )
            }),
            (any::<bool>(), -140i32..130, any::<u64>()).prop_map(|(s, e, m)| {
                f64::from_bits(
                    (u64::from(s) << 63) | (((e + 1023) as u64) << 52) | (m & 0xF_FFFF_FFFF_FFFF),
                )
            }),
            // Near ties: a few bits right after the half-precision rounding position.
            (any::<bool>(), -30i32..130, any::<u16>(), 0u64..8).prop_map(|(s, e, m, t)| {
                f64::from_bits(
                    (u64::from(s) << 63)
                        | (((e + 1023) as u64) << 52)
                        | (u64::from(m) << 36)
                        | (t << 30),
                )
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn numerics_prop_f64_to_half_modes(x in half_range_f64()) {
            check_half_modes(x, false)?;
            check_half_modes(x, true)?;
            // Single rounding from f32 agrees with the `half` crate.
            let y = x as f32;
            prop_assert_eq!(f64_to_f16(f64::from(y), Rn, false, false), half::f16::from_f32(y).to_bits());
            prop_assert_eq!(f64_to_bf16(f64::from(y), Rn, false, false), half::bf16::from_f32(y).to_bits());
        }

        #[test]
        fn numerics_prop_f32_rn_matches_native(a in finite_f32(), b in finite_f32(), c in finite_f32()) {
            let add = a + b;
            let mul = a * b;
            let fma = a.mul_add(b, c);
            if !add.is_nan() {
                prop_assert_eq!(add_f32(a, b, Rn, false, false).to_bits(), add.to_bits());
            }
            if !mul.is_nan() {
                prop_assert_eq!(mul_f32(a, b, Rn, false, false).to_bits(), mul.to_bits());
            }
            if !fma.is_nan() {
                prop_assert_eq!(fma_f32(a, b, c, Rn, false, false).to_bits(), fma.to_bits());
            }
            // The exact core (used for directed modes) agrees with native .rn, overflow included.
            let (x, y, z) = (f64::from(a), f64::from(b), f64::from(c));
            prop_assert_eq!(add_bits(x, y, Rn, F32) as u32, add.to_bits());
            prop_assert_eq!(mul_bits(x, y, Rn, F32) as u32, mul.to_bits());
            prop_assert_eq!(fma_bits(x, y, z, Rn, F32) as u32, fma.to_bits());
            prop_assert_eq!(f64_to_f32(x * y, Rn).to_bits(), mul.to_bits());
        }

        #[test]
        fn numerics_prop_f32_near_cancel_core((a, b) in near_pair_f32(), c in finite_f32()) {
            let (x, y, z) = (f64::from(a), f64::from(b), f64::from(c));
            prop_assert_eq!(add_bits(x, y, Rn, F32) as u32, (a + b).to_bits());
            prop_assert_eq!(fma_bits(z, 1.0, y, Rn, F32) as u32, c.mul_add(1.0, b).to_bits());
            // fma(a, c, -RN(a*c)) is the exact rounding error of the product.
            let pc = a * c;
            if pc.is_finite() {
                let want = a.mul_add(c, -pc);
                prop_assert_eq!(fma_bits(x, z, f64::from(-pc), Rn, F32) as u32, want.to_bits());
                prop_assert_eq!(fma_f32(a, c, -pc, Rn, false, false).to_bits(), want.to_bits());
            }
        }

        #[test]
        fn numerics_prop_f32_directed_reference(a in finite_f32(), b in finite_f32(), c in finite_f32()) {
            // add
            let rn = a + b;
            let (s, t) = two_sum(f64::from(a), f64::from(b));
            if rn.is_finite() && rn != 0.0 {
                for m in MODES {
                    let want = reference_f32(s, t, rn, m);
                    prop_assert_eq!(add_f32(a, b, m, false, false).to_bits(), want.to_bits(), "add {:?}", m);
                }
            }
            // mul (the f64 product is exact)
            let rn = a * b;
            if rn.is_finite() && rn != 0.0 {
                let p = f64::from(a) * f64::from(b);
                for m in MODES {
                    let want = directed_f32(rn, p - f64::from(rn), m);
                    prop_assert_eq!(mul_f32(a, b, m, false, false).to_bits(), want.to_bits(), "mul {:?}", m);
                }
            }
            // fma: exact value = s + t with p exact.
            let rn = a.mul_add(b, c);
            if rn.is_finite() && rn != 0.0 {
                let (s, t) = two_sum(f64::from(a) * f64::from(b), f64::from(c));
                for m in MODES {
                    let want = reference_f32(s, t, rn, m);
                    prop_assert_eq!(fma_f32(a, b, c, m, false, false).to_bits(), want.to_bits(), "fma {:?}", m);
                }
            }
        }

        #[test]
        fn numerics_prop_f32_mode_ordering(a in finite_f32(), b in finite_f32(), c in finite_f32()) {
            check_order_f32(MODES.map(|m| add_f32(a, b, m, false, false)))?;
            check_order_f32(MODES.map(|m| mul_f32(a, b, m, false, false)))?;
            check_order_f32(MODES.map(|m| fma_f32(a, b, c, m, false, false)))?;
            if b != 0.0 {
                check_order_f32(MODES.map(|m| div_f32(a, b, DivMode::Round(m), false)))?;
            }
        }

        #[test]
        fn numerics_prop_f64_ops(a in finite_f64(), b in finite_f64(), c in finite_f64()) {
            let add = a + b;
            let mul = a * b;
            let fma = a.mul_add(b, c);
            prop_assert_eq!(add_f64(a, b, Rn).to_bits(), add.to_bits());
            prop_assert_eq!(mul_f64(a, b, Rn).to_bits(), mul.to_bits());
            prop_assert_eq!(fma_f64(a, b, c, Rn).to_bits(), fma.to_bits());
            prop_assert_eq!(add_bits(a, b, Rn, F64), add.to_bits());
            prop_assert_eq!(mul_bits(a, b, Rn, F64), mul.to_bits());
            prop_assert_eq!(fma_bits(a, b, c, Rn, F64), fma.to_bits());
            check_order_f64(MODES.map(|m| add_f64(a, b, m)))?;
            check_order_f64(MODES.map(|m| mul_f64(a, b, m)))?;
            check_order_f64(MODES.map(|m| fma_f64(a, b, c, m)))?;
            // Directed add against TwoSum (exact when the sum does not overflow).
            if add.is_finite() && add != 0.0 {
                let (s, t) = two_sum(a, b);
                for m in MODES {
                    prop_assert_eq!(add_f64(a, b, m).to_bits(), directed_f64(s, t, m).to_bits(), "{:?}", m);
                }
            }
            if b != 0.0 {
                let q = a / b;
                prop_assert_eq!(div_f64(a, b, Rn).to_bits(), q.to_bits());
                prop_assert_eq!(div_round_bits(a, b, Rn, F64).unwrap_or(q.to_bits()), q.to_bits());
                check_order_f64(MODES.map(|m| div_f64(a, b, m)))?;
            }
            let r = a.abs().sqrt();
            prop_assert_eq!(sqrt_f64(a.abs(), Rn).to_bits(), r.to_bits());
            if a != 0.0 {
                prop_assert_eq!(round_exact(sqrt_exact(a.abs()), Rn, F64, false), r.to_bits());
            }
        }

        #[test]
        fn numerics_prop_div_sqrt_f32_bounds(a in finite_f32(), b in finite_f32()) {
            prop_assume!(a != 0.0 && b != 0.0);
            let (x, y) = (f64::from(a), f64::from(b));
            prop_assert_eq!(div_f32(a, b, DivMode::Round(Rn), false).to_bits(), (a / b).to_bits());
            prop_assert_eq!(
                div_round_bits(x, y, Rn, F32).map(|v| v as u32),
                Some((a / b).to_bits())
            );
            let lo = div_f32(a, b, DivMode::Round(Rm), false);
            let hi = div_f32(a, b, DivMode::Round(Rp), false);
            if lo.is_finite() && hi.is_finite() {
                // lo <= a/b <= hi, checked exactly (f32 * f32 is exact in f64).
                let (pl, ph) = (f64::from(lo) * y, f64::from(hi) * y);
                if y > 0.0 {
                    prop_assert!(pl <= x && x <= ph);
                } else {
                    prop_assert!(pl >= x && x >= ph);
                }
                prop_assert!(hi == lo || hi == next_up_f32(lo));
            }
            let s = a.abs();
            prop_assert_eq!(sqrt_f32(s, Some(Rn), false).to_bits(), s.sqrt().to_bits());
            prop_assert_eq!(
                round_exact(sqrt_exact(f64::from(s)), Rn, F32, false) as u32,
                s.sqrt().to_bits()
            );
            let lo = sqrt_f32(s, Some(Rm), false);
            let hi = sqrt_f32(s, Some(Rp), false);
            let sx = f64::from(s);
            prop_assert!(f64::from(lo) * f64::from(lo) <= sx);
            prop_assert!(f64::from(hi) * f64::from(hi) >= sx);
            prop_assert!(hi == lo || hi == next_up_f32(lo));
            prop_assert_eq!(sqrt_f32(s, Some(Rz), false), lo);
        }

        #[test]
        fn numerics_prop_conversions(x in finite_f64(), y in finite_f32(), v in any::<i128>(), w in any::<i64>()) {
            prop_assert_eq!(f64_to_f32(x, Rn).to_bits(), (x as f32).to_bits());
            let r = MODES.map(|m| f64_to_f32(x, m));
            check_order_f32(r)?;
            let [_, rz, rm, rp] = r;
            prop_assert!(f64::from(rm) <= x && x <= f64::from(rp));
            prop_assert!(f64::from(rz).abs() <= x.abs());

            prop_assert_eq!(f32_to_f16(y, Rn, false, false), half::f16::from_f32(y).to_bits());
            prop_assert_eq!(f32_to_bf16(y, Rn, false, false), half::bf16::from_f32(y).to_bits());
            let h = MODES.map(|m| f16_to_f32(f32_to_f16(y, m, false, false)));
            check_order_f32(h)?;
            let bh = MODES.map(|m| bf16_to_f32(f32_to_bf16(y, m, false, false)));
            check_order_f32(bh)?;
            prop_assert!(bh[2] <= y && y <= bh[3]);

            prop_assert_eq!(int_to_f32(v, Rn).to_bits(), (v as f32).to_bits());
            prop_assert_eq!(int_to_f64(v, Rn).to_bits(), (v as f64).to_bits());
            prop_assert_eq!(int_to_f32(i128::from(w), Rn).to_bits(), (w as f32).to_bits());
            prop_assert_eq!(int_to_f64(i128::from(w as u64), Rn).to_bits(), ((w as u64) as f64).to_bits());
            let fi = MODES.map(|m| int_to_f32(v, m));
            check_order_f32(fi)?;
            let di = MODES.map(|m| int_to_f64(i128::from(w), m));
            check_order_f64(di)?;
            prop_assert!(di[2] as i128 <= i128::from(w) && i128::from(w) <= di[3] as i128);

            // Rust's `as` casts truncate and saturate exactly like cvt.rzi (NaN -> 0).
            let z = f64::from(y);
            prop_assert_eq!(float_to_int(z, Rzi, 8, true), (z as i8) as u8 as u64);
            prop_assert_eq!(float_to_int(z, Rzi, 16, true), (z as i16) as u16 as u64);
            prop_assert_eq!(float_to_int(z, Rzi, 32, true), (z as i32) as u32 as u64);
            prop_assert_eq!(float_to_int(z, Rzi, 64, true), (z as i64) as u64);
            prop_assert_eq!(float_to_int(z, Rzi, 8, false), u64::from(z as u8));
            prop_assert_eq!(float_to_int(z, Rzi, 16, false), u64::from(z as u16));
            prop_assert_eq!(float_to_int(z, Rzi, 32, false), u64::from(z as u32));
            prop_assert_eq!(float_to_int(x, Rzi, 64, false), x as u64);
            prop_assert_eq!(float_to_int(x, Rmi, 32, true), (x.floor() as i32) as u32 as u64);
            prop_assert_eq!(float_to_int(x, Rpi, 16, false), u64::from(x.ceil() as u16));
            prop_assert_eq!(float_to_int(x, Rni, 64, true), (x.round_ties_even() as i64) as u64);
        }

        #[test]
        fn numerics_prop_half_ops(a in any::<u16>(), b in any::<u16>(), c in any::<u16>()) {
            for (fmt, is_bf) in [(BF16, true), (F16, false)] {
                let dec = |h: u16| half_decode(fmt, h);
                // `f64_to_*` is checked independently by `check_half_modes`; `half::*::from_f32`
                // is a second reference when the value is exact in f32.
                let conv = |v: f64| {
                    if is_bf {
                        f64_to_bf16(v, Rn, false, false)
                    } else {
                        f64_to_f16(v, Rn, false, false)
                    }
                };
                let ref32 = |v: f64| -> Option<u16> {
                    let w = v as f32;
                    if f64::from(w) != v {
                        None
                    } else if is_bf {
                        Some(half::bf16::from_f32(w).to_bits())
                    } else {
                        Some(half::f16::from_f32(w).to_bits())
                    }
                };
                let (x, y, z) = (dec(a), dec(b), dec(c));
                let (add, mul, fma) = if is_bf {
                    (add_bf16(a, b), mul_bf16(a, b), fma_bf16(a, b, c))
                } else {
                    (add_f16(a, b, false), mul_f16(a, b, false), fma_f16(a, b, c, false))
                };
                // Compare whenever the f64 evaluation is exact (then it is a single rounding).
                let s = x + y;
                if s.is_nan() {
                    prop_assert_eq!(add, 0x7FFF);
                } else if s.is_infinite() || two_sum(x, y).1 == 0.0 {
                    prop_assert_eq!(add, conv(s));
                    if let Some(w) = ref32(s) {
                        prop_assert_eq!(add, w);
                    }
                }
                let p = x * y; // always exact in f64
                if p.is_nan() {
                    prop_assert_eq!(mul, 0x7FFF);
                } else {
                    prop_assert_eq!(mul, conv(p));
                    if let Some(w) = ref32(p) {
                        prop_assert_eq!(mul, w);
                    }
                }
                let r = x.mul_add(y, z);
                if r.is_nan() {
                    prop_assert_eq!(fma, 0x7FFF);
                } else if r.is_finite() && two_sum(p, z).1 == 0.0 {
                    prop_assert_eq!(fma, conv(r));
                    if let Some(w) = ref32(r) {
                        prop_assert_eq!(fma, w);
                    }
                }
            }
        }
    }
}
