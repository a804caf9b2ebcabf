//! Warp-level data movement of the sm_80 tensor-core instructions.
//!
//! This module knows which lane holds which matrix element for
//!
//! * `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32` and
//! * `mma.sync.aligned.m16n8k8.row.col.f32.{bf16,f16}.{bf16,f16}.f32`
//!
//! (PTX ISA, "Warp Level Matrix Multiply-Accumulate Instructions", sections
//! "Matrix Fragments for mma.m16n8k8" and "Matrix Fragments for mma.m16n8k16 with
//! floating point type" — §9.7.14.5.7 and §9.7.14.5.8 in PTX ISA 8.7; older
//! releases number them 9.7.13.4.x), and it executes a whole warp's
//! `ldmatrix.sync.aligned.m8n8.x{1,2,4}{,.trans}.shared.b16` ("Warp-level matrix
//! load instruction: ldmatrix", §9.7.14.5.15 in PTX ISA 8.7).
//!
//! All fragment tables use the ISA's two helper quantities
//!
//! ```text
//! groupID           = %laneid >> 2
//! threadID_in_group = %laneid % 4
//! ```
//!
//! Element numbering: a fragment's 16-bit elements are numbered in register order,
//! low half first, so element `i` lives in register `i / 2`, bits `16 * (i % 2)..`.
//! That is the ISA's "Elements (low to high)" column (`a0, a1, ..., a7`).
//!
//! The layouts agree with CUTLASS/CuTe's `MMA_Traits<SM80_16x8x16_F32F16F16F32_TN>`
//! and `MMA_Traits<SM80_16x8x8_F32F16F16F32_TN>` (`include/cute/atom/mma_traits_sm80.hpp`);
//! the unit tests check that independently.

use std::ops::Range;

/// Number of lanes in a warp.
pub const WARP_SIZE: usize = 32;

/// Element type of the A/B operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MmaInput {
    /// `.bf16`: bfloat16 (1 sign, 8 exponent, 7 mantissa bits).
    Bf16,
    /// `.f16`: IEEE 754 binary16 (1 sign, 5 exponent, 10 mantissa bits).
    F16,
}

impl MmaInput {
    /// Widens one 16-bit element of this type to `f32`. Exact for every input
    /// (both formats are subsets of `f32`, subnormals included); NaNs stay NaN.
    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            MmaInput::Bf16 => half::bf16::from_bits(bits).to_f32(),
            MmaInput::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }
}

/// Packs two 16-bit elements into one `.b32` register: `lo` in bits 0..16 (the
/// lower-indexed element), `hi` in bits 16..32.
pub fn pack_b16x2(lo: u16, hi: u16) -> u32 {
    u32::from(lo) | (u32::from(hi) << 16)
}

/// Splits a `.b32` register into its two 16-bit elements `[low half, high half]`.
pub fn unpack_b16x2(reg: u32) -> [u16; 2] {
    [reg as u16, (reg >> 16) as u16]
}

/// Element `i` of a fragment held as packed 16-bit pairs (element `i` is in
/// register `i / 2`, low half for even `i`).
fn fragment_element(regs: &[u32], i: usize) -> u16 {
    unpack_b16x2(regs[i / 2])[i % 2]
}

/// Panics unless `lane` is a lane of a warp and `i < count`.
fn check(lane: usize, i: usize, count: usize, what: &str) {
    assert!(lane < WARP_SIZE, "{what}: lane {lane} is not in 0..32");
    assert!(i < count, "{what}: element index {i} is not in 0..{count}");
}

/// `groupID = %laneid >> 2` from the ISA fragment tables.
fn group_id(lane: usize) -> usize {
    lane >> 2
}

/// `threadID_in_group = %laneid % 4` from the ISA fragment tables.
fn thread_in_group(lane: usize) -> usize {
    lane % 4
}

/// Position `(row, col k)` in the 16x16 matrix A of element `a<i>` (`i` in `0..8`)
/// held by `lane` for `mma.m16n8k16` with `.f16`/`.bf16` A.
///
/// PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type", Multiplicand A:
/// `row = groupID` for `a0, a1, a4, a5`, `groupID + 8` otherwise;
/// `col = threadID_in_group * 2 + (i & 1)` for `i < 4`, plus 8 for `i >= 4`.
///
/// # Panics
/// If `lane >= 32` or `i >= 8`.
pub fn a_coord_m16n8k16(lane: usize, i: usize) -> (usize, usize) {
    check(lane, i, 8, "a_coord_m16n8k16");
    let row = group_id(lane) + 8 * ((i >> 1) & 1);
    let col = thread_in_group(lane) * 2 + (i & 1) + 8 * (i >> 2);
    (row, col)
}

/// Position `(row k, col n)` in the 16x8 matrix B of element `b<i>` (`i` in `0..4`)
/// held by `lane` for `mma.m16n8k16` with `.f16`/`.bf16` B.
///
/// PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type", Multiplicand B:
/// `row = threadID_in_group * 2 + (i & 1)` for `i < 2`, plus 8 for `i >= 2`;
/// `col = groupID`.
///
/// # Panics
/// If `lane >= 32` or `i >= 4`.
pub fn b_coord_m16n8k16(lane: usize, i: usize) -> (usize, usize) {
    check(lane, i, 4, "b_coord_m16n8k16");
    let row = thread_in_group(lane) * 2 + (i & 1) + 8 * (i >> 1);
    (row, group_id(lane))
}

/// Position `(row, col)` in the 16x8 accumulator C (and result D) of element `c<i>`
/// (`i` in `0..4`) held by `lane`, for both `mma.m16n8k16` and `mma.m16n8k8` with
/// `.f32` accumulators.
///
/// PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type" (and the
/// identical table of "Matrix Fragments for mma.m16n8k8"), Accumulators C or D:
/// `row = groupID` for `i < 2`, `groupID + 8` for `i >= 2`;
/// `col = threadID_in_group * 2 + (i & 1)`.
///
/// # Panics
/// If `lane >= 32` or `i >= 4`.
pub fn c_coord_m16n8k16(lane: usize, i: usize) -> (usize, usize) {
    check(lane, i, 4, "c_coord_m16n8k16");
    let row = group_id(lane) + 8 * (i >> 1);
    let col = thread_in_group(lane) * 2 + (i & 1);
    (row, col)
}

/// Position `(row, col k)` in the 16x8 matrix A of element `a<i>` (`i` in `0..4`)
/// held by `lane` for `mma.m16n8k8` with `.f16`/`.bf16` A.
///
/// PTX ISA "Matrix Fragments for mma.m16n8k8", Multiplicand A (`.f16` and `.bf16`):
/// `row = groupID` for `a0, a1`, `groupID + 8` for `a2, a3`;
/// `col = threadID_in_group * 2 + (i & 1)`.
///
/// # Panics
/// If `lane >= 32` or `i >= 4`.
pub fn a_coord_m16n8k8(lane: usize, i: usize) -> (usize, usize) {
    check(lane, i, 4, "a_coord_m16n8k8");
    let row = group_id(lane) + 8 * (i >> 1);
    let col = thread_in_group(lane) * 2 + (i & 1);
    (row, col)
}

/// Position `(row k, col n)` in the 8x8 matrix B of element `b<i>` (`i` in `0..2`)
/// held by `lane` for `mma.m16n8k8` with `.f16`/`.bf16` B.
///
/// PTX ISA "Matrix Fragments for mma.m16n8k8", Multiplicand B (`.f16` and `.bf16`):
/// `row = threadID_in_group * 2 + i`; `col = groupID`.
///
/// # Panics
/// If `lane >= 32` or `i >= 2`.
pub fn b_coord_m16n8k8(lane: usize, i: usize) -> (usize, usize) {
    check(lane, i, 2, "b_coord_m16n8k8");
    (thread_in_group(lane) * 2 + i, group_id(lane))
}

/// Rounds the f64 accumulator to the f32 result: round-to-nearest-even, overflow to
/// ±infinity, subnormals kept; any NaN becomes the canonical NaN `0x7fff_ffff`.
fn round_accumulator(acc: f64) -> f32 {
    if acc.is_nan() {
        f32::from_bits(0x7fff_ffff)
    } else {
        acc as f32
    }
}

/// Computes D = A * B + C for a 16 x 8 x K tile already gathered into matrices,
/// scattering D back into the accumulator fragment layout.
///
/// Order (see [`mma_m16n8k16`]): `acc = c[m][n]` in f64, then `acc += a[m][k] * b[k][n]`
/// for `k = 0, 1, ..., K-1`, each product exact in f64 and each addition rounded to
/// f64; the final value is rounded once to f32.
fn mma_gathered<const K: usize>(
    a: &[[f64; K]; 16],
    b: &[[f64; 8]; K],
    c: &[[f32; 4]; 32],
) -> [[f32; 4]; 32] {
    let mut d = [[0f32; 4]; WARP_SIZE];
    for (lane, d_lane) in d.iter_mut().enumerate() {
        for (i, d_elem) in d_lane.iter_mut().enumerate() {
            let (m, n) = c_coord_m16n8k16(lane, i);
            let mut acc = f64::from(c[lane][i]);
            for k in 0..K {
                acc += a[m][k] * b[k][n];
            }
            *d_elem = round_accumulator(acc);
        }
    }
    d
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32` for a whole warp.
///
/// `a[lane]` = the 4 `.b32` registers of the A fragment (each packs two 16-bit
/// elements, low half = lower index: register `r` holds `a<2r>` low, `a<2r+1>` high),
/// `b[lane]` = the 2 `.b32` registers of B, `c[lane]` = the 4 f32 accumulators.
/// Returns `d[lane]`. Element positions follow [`a_coord_m16n8k16`],
/// [`b_coord_m16n8k16`], [`c_coord_m16n8k16`] (PTX ISA "Matrix Fragments for
/// mma.m16n8k16 with floating point type").
///
/// # Accumulation order
///
/// The ISA leaves the internal order and precision unspecified. This emulation fixes:
///
/// ```text
/// acc = (f64) c[m][n]
/// for k in 0..16 (ascending):  acc = acc + (f64) a[m][k] * (f64) b[k][n]
/// d[m][n] = (f32) acc          // one final rounding, round-to-nearest-even
/// ```
///
/// * every product is **exact** in f64 (at most 11 x 11 significant bits and an
///   exponent range far inside f64's, for both bf16 and f16, subnormals included);
/// * each addition is an IEEE f64 addition (round-to-nearest-even), so for "small"
///   data (e.g. integers, or any sum whose terms fit in 53 bits) the whole sum is
///   exact and `d` is the correctly rounded f32 of the exact `A*B+C`;
/// * no flush-to-zero: subnormal inputs, products and results are honoured;
/// * overflow past f32 gives ±infinity; `inf * 0`, `inf - inf` and NaN inputs give
///   the canonical NaN `0x7fff_ffff`.
///
/// Real tensor cores accumulate with less internal precision, so results for inputs
/// that are not exactly summable may differ from hardware in the last bits.
pub fn mma_m16n8k16(
    ty: MmaInput,
    a: &[[u32; 4]; 32],
    b: &[[u32; 2]; 32],
    c: &[[f32; 4]; 32],
) -> [[f32; 4]; 32] {
    let mut a_mat = [[0f64; 16]; 16];
    let mut b_mat = [[0f64; 8]; 16];
    for lane in 0..WARP_SIZE {
        for i in 0..8 {
            let (m, k) = a_coord_m16n8k16(lane, i);
            a_mat[m][k] = f64::from(ty.to_f32(fragment_element(&a[lane], i)));
        }
        for i in 0..4 {
            let (k, n) = b_coord_m16n8k16(lane, i);
            b_mat[k][n] = f64::from(ty.to_f32(fragment_element(&b[lane], i)));
        }
    }
    mma_gathered(&a_mat, &b_mat, c)
}

/// `mma.sync.aligned.m16n8k8.row.col.f32.{bf16,f16}.{bf16,f16}.f32` for a whole warp.
///
/// `a[lane]` = the 2 `.b32` registers of A (`a0..a3`), `b[lane]` = the 1 `.b32`
/// register of B (`b0, b1`), `c[lane]` = the 4 f32 accumulators; returns `d[lane]`.
/// Element positions follow [`a_coord_m16n8k8`], [`b_coord_m16n8k8`],
/// [`c_coord_m16n8k16`] (PTX ISA "Matrix Fragments for mma.m16n8k8").
///
/// Accumulation order and rounding are exactly those documented on
/// [`mma_m16n8k16`], with `k` running over `0..8`.
pub fn mma_m16n8k8(
    ty: MmaInput,
    a: &[[u32; 2]; 32],
    b: &[[u32; 1]; 32],
    c: &[[f32; 4]; 32],
) -> [[f32; 4]; 32] {
    let mut a_mat = [[0f64; 8]; 16];
    let mut b_mat = [[0f64; 8]; 8];
    for lane in 0..WARP_SIZE {
        for i in 0..4 {
            let (m, k) = a_coord_m16n8k8(lane, i);
            a_mat[m][k] = f64::from(ty.to_f32(fragment_element(&a[lane], i)));
        }
        for i in 0..2 {
            let (k, n) = b_coord_m16n8k8(lane, i);
            b_mat[k][n] = f64::from(ty.to_f32(fragment_element(&b[lane], i)));
        }
    }
    mma_gathered(&a_mat, &b_mat, c)
}

/// Which lanes' addresses `ldmatrix` uses for `num` matrices: `0..8 * num`.
///
/// PTX ISA "ldmatrix": for `.x1` threads 0–7 supply the row addresses of matrix 0,
/// for `.x2` threads 0–15 (8–15: matrix 1), for `.x4` all 32 (16–23: matrix 2,
/// 24–31: matrix 3). Lane `l` in that range supplies row `l % 8` of matrix `l / 8`.
///
/// # Panics
/// If `num` is not 1, 2 or 4.
pub fn ldmatrix_address_lanes(num: usize) -> Range<usize> {
    assert!(
        matches!(num, 1 | 2 | 4),
        "ldmatrix: .num must be .x1, .x2 or .x4 (got {num})"
    );
    0..8 * num
}

/// Position `(row, col)`, inside one 8x8 matrix *as stored in memory* (row = the
/// row whose address a lane supplied, col = the 16-bit element within those 16
/// bytes), of the 16-bit half `h` (0 = low, 1 = high) of the register that `lane`
/// receives from that matrix.
///
/// PTX ISA "ldmatrix": each thread receives a fragment of a row — lane `l` holds
/// row `l / 4`, elements `2 * (l % 4)` and `2 * (l % 4) + 1` — of the matrix; with
/// `.trans` the matrix is loaded column-major, i.e. the row/column roles swap.
///
/// # Panics
/// If `lane >= 32` or `h >= 2`.
pub fn ldmatrix_coord(lane: usize, h: usize, trans: bool) -> (usize, usize) {
    check(lane, h, 2, "ldmatrix_coord");
    let frag_row = lane / 4;
    let frag_col = 2 * (lane % 4) + h;
    if trans {
        (frag_col, frag_row)
    } else {
        (frag_row, frag_col)
    }
}

/// `ldmatrix.sync.aligned.m8n8.x{1,2,4}{,.trans}.shared.b16` for a whole warp.
///
/// `num` in {1, 2, 4}; lanes `8*j..8*j+8` supply the addresses of the 8 rows of
/// matrix `j` (`row_addr[lane]`; the other lanes' addresses are ignored, see
/// [`ldmatrix_address_lanes`]). `read_row(addr)` returns the 8 consecutive 16-bit
/// elements (16 bytes) at that address, or an error that is propagated unchanged;
/// address-space, bounds and 16-byte-alignment checks are `read_row`'s job.
///
/// Rows are read in lane order (matrix 0 rows 0..8, then matrix 1, ...), exactly
/// once each; the first error stops the load and is returned.
///
/// Returns, per lane, `num` `.b32` registers (entries `num..4` are zero). Without
/// `.trans`, lane `l` gets in register `j` the elements (row `l/4`, cols `2*(l%4)`,
/// `2*(l%4)+1`) of matrix `j`, lower column in the low half; with `.trans` the
/// matrix is transposed, so it gets (rows `2*(l%4)`, `2*(l%4)+1`, col `l/4`)
/// (see [`ldmatrix_coord`]). PTX ISA "Warp-level matrix load instruction: ldmatrix".
///
/// # Panics
/// If `num` is not 1, 2 or 4 (the interpreter validates `.num` at decode time).
pub fn ldmatrix<E>(
    num: usize,
    trans: bool,
    row_addr: &[u64; 32],
    mut read_row: impl FnMut(u64) -> Result<[u16; 8], E>,
) -> Result<[[u32; 4]; 32], E> {
    let mut mats = [[[0u16; 8]; 8]; 4];
    for lane in ldmatrix_address_lanes(num) {
        mats[lane / 8][lane % 8] = read_row(row_addr[lane])?;
    }
    let mut out = [[0u32; 4]; WARP_SIZE];
    for (lane, regs) in out.iter_mut().enumerate() {
        let (r0, c0) = ldmatrix_coord(lane, 0, trans);
        let (r1, c1) = ldmatrix_coord(lane, 1, trans);
        for (reg, mat) in regs.iter_mut().zip(&mats).take(num) {
            *reg = pack_b16x2(mat[r0][c0], mat[r1][c1]);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    // ---------------------------------------------------------------------------
    // Independent transcriptions of the layouts.
    // ---------------------------------------------------------------------------

    /// The ISA's piecewise definition for m16n8k16 A, written out literally.
    fn isa_a16(lane: usize, i: usize) -> (usize, usize) {
        let group_id = lane >> 2;
        let tig = lane % 4;
        let row = if i < 2 || (4..6).contains(&i) {
            group_id
        } else {
            group_id + 8
        };
        let col = if i < 4 {
            (tig * 2) + (i & 0x1)
        } else {
            (tig * 2) + (i & 0x1) + 8
        };
        (row, col)
    }

    /// The ISA's piecewise definition for m16n8k16 B.
    fn isa_b16(lane: usize, i: usize) -> (usize, usize) {
        let group_id = lane >> 2;
        let tig = lane % 4;
        let row = if i < 2 {
            (tig * 2) + (i & 0x1)
        } else {
            (tig * 2) + (i & 0x1) + 8
        };
        (row, group_id)
    }

    /// The ISA's piecewise definition for the C/D accumulators.
    fn isa_c(lane: usize, i: usize) -> (usize, usize) {
        let group_id = lane >> 2;
        let tig = lane % 4;
        let row = if i < 2 { group_id } else { group_id + 8 };
        (row, (tig * 2) + (i & 0x1))
    }

    /// The ISA's definitions for m16n8k8 A and B.
    fn isa_a8(lane: usize, i: usize) -> (usize, usize) {
        let row = if i < 2 { lane >> 2 } else { (lane >> 2) + 8 };
        (row, (lane % 4) * 2 + (i & 0x1))
    }
    fn isa_b8(lane: usize, i: usize) -> (usize, usize) {
        ((lane % 4) * 2 + i, lane >> 2)
    }

    /// Evaluates a CuTe layout `((4,8),(v...)) : ((s_t0,s_t1),(s_v...))` at
    /// thread `t` (= t0 + 4*t1) and value `v` (mixed radix over `vshape`).
    fn cute_offset(
        t: usize,
        v: usize,
        tstride: [usize; 2],
        vshape: &[usize],
        vstride: &[usize],
    ) -> usize {
        let mut off = (t % 4) * tstride[0] + (t / 4) * tstride[1];
        let mut rest = v;
        for (s, st) in vshape.iter().zip(vstride) {
            off += (rest % s) * st;
            rest /= s;
        }
        off
    }

    #[test]
    fn coords_match_isa_transcription_and_cutlass_layouts() {
        for lane in 0..32 {
            for i in 0..8 {
                assert_eq!(a_coord_m16n8k16(lane, i), isa_a16(lane, i));
                // CuTe SM80_16x8x16 ALayout: ((4,8),(2,2,2)):((32,1),(16,8,128)),
                // flat (m,k) index m + 16*k.
                let off = cute_offset(lane, i, [32, 1], &[2, 2, 2], &[16, 8, 128]);
                assert_eq!(a_coord_m16n8k16(lane, i), (off % 16, off / 16));
            }
            for i in 0..4 {
                assert_eq!(b_coord_m16n8k16(lane, i), isa_b16(lane, i));
                assert_eq!(c_coord_m16n8k16(lane, i), isa_c(lane, i));
                assert_eq!(a_coord_m16n8k8(lane, i), isa_a8(lane, i));
                // CuTe BLayout ((4,8),(2,2)):((16,1),(8,64)), flat (n,k) = n + 8*k.
                let off = cute_offset(lane, i, [16, 1], &[2, 2], &[8, 64]);
                assert_eq!(b_coord_m16n8k16(lane, i), (off / 8, off % 8));
                // CuTe SM80_16x8_Row ((4,8),(2,2)):((32,1),(16,8)), flat (m,n) = m + 16*n;
                // it is both the C layout and the m16n8k8 A layout ((m,k) = m + 16*k).
                let off = cute_offset(lane, i, [32, 1], &[2, 2], &[16, 8]);
                assert_eq!(c_coord_m16n8k16(lane, i), (off % 16, off / 16));
                assert_eq!(a_coord_m16n8k8(lane, i), (off % 16, off / 16));
            }
            for i in 0..2 {
                assert_eq!(b_coord_m16n8k8(lane, i), isa_b8(lane, i));
                // CuTe SM80_8x8_Row ((4,8),2):((16,1),8), flat (n,k) = n + 8*k.
                let off = cute_offset(lane, i, [16, 1], &[2], &[8]);
                assert_eq!(b_coord_m16n8k8(lane, i), (off / 8, off % 8));
            }
        }
    }

    /// Asserts that `coord` maps lanes x `0..per_lane` one-to-one onto `rows x cols`.
    fn assert_bijective(
        name: &str,
        coord: fn(usize, usize) -> (usize, usize),
        per_lane: usize,
        rows: usize,
        cols: usize,
    ) {
        assert_eq!(32 * per_lane, rows * cols, "{name}: element count");
        let mut hits = vec![0u32; rows * cols];
        for lane in 0..32 {
            for i in 0..per_lane {
                let (r, c) = coord(lane, i);
                assert!(r < rows && c < cols, "{name}: ({r},{c}) out of range");
                hits[r * cols + c] += 1;
            }
        }
        assert!(hits.iter().all(|&h| h == 1), "{name}: not a bijection");
    }

    #[test]
    fn every_element_hit_exactly_once() {
        assert_bijective("A m16n8k16", a_coord_m16n8k16, 8, 16, 16);
        assert_bijective("B m16n8k16", b_coord_m16n8k16, 4, 16, 8);
        assert_bijective("C/D", c_coord_m16n8k16, 4, 16, 8);
        assert_bijective("A m16n8k8", a_coord_m16n8k8, 4, 16, 8);
        assert_bijective("B m16n8k8", b_coord_m16n8k8, 2, 8, 8);
    }

    #[test]
    fn literal_table_entries() {
        // lane 0: groupID 0, threadID_in_group 0.
        let a0: Vec<_> = (0..8).map(|i| a_coord_m16n8k16(0, i)).collect();
        assert_eq!(
            a0,
            [
                (0, 0),
                (0, 1),
                (8, 0),
                (8, 1),
                (0, 8),
                (0, 9),
                (8, 8),
                (8, 9)
            ]
        );
        // lane 5: groupID 1, threadID_in_group 1.
        let a5: Vec<_> = (0..8).map(|i| a_coord_m16n8k16(5, i)).collect();
        assert_eq!(
            a5,
            [
                (1, 2),
                (1, 3),
                (9, 2),
                (9, 3),
                (1, 10),
                (1, 11),
                (9, 10),
                (9, 11)
            ]
        );
        // lane 31: groupID 7, threadID_in_group 3.
        let a31: Vec<_> = (0..8).map(|i| a_coord_m16n8k16(31, i)).collect();
        assert_eq!(
            a31,
            [
                (7, 6),
                (7, 7),
                (15, 6),
                (15, 7),
                (7, 14),
                (7, 15),
                (15, 14),
                (15, 15)
            ]
        );

        let b0: Vec<_> = (0..4).map(|i| b_coord_m16n8k16(0, i)).collect();
        assert_eq!(b0, [(0, 0), (1, 0), (8, 0), (9, 0)]);
        let b5: Vec<_> = (0..4).map(|i| b_coord_m16n8k16(5, i)).collect();
        assert_eq!(b5, [(2, 1), (3, 1), (10, 1), (11, 1)]);
        // lane 30: groupID 7, threadID_in_group 2.
        let b30: Vec<_> = (0..4).map(|i| b_coord_m16n8k16(30, i)).collect();
        assert_eq!(b30, [(4, 7), (5, 7), (12, 7), (13, 7)]);

        let c0: Vec<_> = (0..4).map(|i| c_coord_m16n8k16(0, i)).collect();
        assert_eq!(c0, [(0, 0), (0, 1), (8, 0), (8, 1)]);
        let c5: Vec<_> = (0..4).map(|i| c_coord_m16n8k16(5, i)).collect();
        assert_eq!(c5, [(1, 2), (1, 3), (9, 2), (9, 3)]);
        let c31: Vec<_> = (0..4).map(|i| c_coord_m16n8k16(31, i)).collect();
        assert_eq!(c31, [(7, 6), (7, 7), (15, 6), (15, 7)]);

        let a8_5: Vec<_> = (0..4).map(|i| a_coord_m16n8k8(5, i)).collect();
        assert_eq!(a8_5, [(1, 2), (1, 3), (9, 2), (9, 3)]);
        let a8_31: Vec<_> = (0..4).map(|i| a_coord_m16n8k8(31, i)).collect();
        assert_eq!(a8_31, [(7, 6), (7, 7), (15, 6), (15, 7)]);
        let b8_5: Vec<_> = (0..2).map(|i| b_coord_m16n8k8(5, i)).collect();
        assert_eq!(b8_5, [(2, 1), (3, 1)]);
        let b8_31: Vec<_> = (0..2).map(|i| b_coord_m16n8k8(31, i)).collect();
        assert_eq!(b8_31, [(6, 7), (7, 7)]);
    }

    #[test]
    #[should_panic(expected = "element index")]
    fn coord_rejects_bad_index() {
        let _ = a_coord_m16n8k16(0, 8);
    }

    #[test]
    #[should_panic(expected = ".x1, .x2 or .x4")]
    fn ldmatrix_rejects_bad_num() {
        let _ = ldmatrix(3, false, &[0; 32], |_| Ok::<_, ()>([0; 8]));
    }

    // ---------------------------------------------------------------------------
    // mma helpers: scatter matrices into fragments, gather D, reference matmul.
    // ---------------------------------------------------------------------------

    /// A dense row-major test matrix.
    type Mat = Vec<Vec<f32>>;
    /// The A, B and C matrices of one test case.
    type Mats = (Mat, Mat, Mat);

    fn encode(ty: MmaInput, v: f32) -> u16 {
        match ty {
            MmaInput::Bf16 => bf16::from_f32(v).to_bits(),
            MmaInput::F16 => f16::from_f32(v).to_bits(),
        }
    }

    /// Scatters a row-major M x K (or K x N) matrix into per-lane packed registers.
    fn scatter<const R: usize>(
        ty: MmaInput,
        mat: &[Vec<f32>],
        coord: fn(usize, usize) -> (usize, usize),
    ) -> [[u32; R]; 32] {
        let mut regs = [[0u32; R]; 32];
        for (lane, lane_regs) in regs.iter_mut().enumerate() {
            for i in 0..2 * R {
                let (r, c) = coord(lane, i);
                let bits = u32::from(encode(ty, mat[r][c]));
                lane_regs[i / 2] |= bits << (16 * (i % 2));
            }
        }
        regs
    }

    fn scatter_c(c: &[Vec<f32>]) -> [[f32; 4]; 32] {
        let mut out = [[0f32; 4]; 32];
        for (lane, regs) in out.iter_mut().enumerate() {
            for (i, r) in regs.iter_mut().enumerate() {
                let (m, n) = c_coord_m16n8k16(lane, i);
                *r = c[m][n];
            }
        }
        out
    }

    fn gather_d(d: &[[f32; 4]; 32]) -> Vec<Vec<f32>> {
        let mut out = vec![vec![f32::NAN; 8]; 16];
        for (lane, regs) in d.iter().enumerate() {
            for (i, &v) in regs.iter().enumerate() {
                let (m, n) = c_coord_m16n8k16(lane, i);
                out[m][n] = v;
            }
        }
        out
    }

    /// Plain triple loop in f64: A (16 x k) * B (k x 8) + C.
    fn matmul_ref(a: &[Vec<f32>], b: &[Vec<f32>], c: &[Vec<f32>]) -> Vec<Vec<f64>> {
        let k = b.len();
        let mut out = vec![vec![0f64; 8]; 16];
        for m in 0..16 {
            for n in 0..8 {
                let mut s = 0f64;
                for kk in 0..k {
                    s += f64::from(a[m][kk]) * f64::from(b[kk][n]);
                }
                out[m][n] = s + f64::from(c[m][n]);
            }
        }
        out
    }

    /// Distinct small integers: A[m][k] = 16m + k - 128 etc. (|v| <= 128, exact in
    /// bf16 and f16; every sum stays far below 2^24, so exact in f32).
    fn int_mats(k: usize) -> Mats {
        let a = (0..16)
            .map(|m| (0..k).map(|kk| (m * k + kk) as f32 - 128.0).collect())
            .collect();
        let b = (0..k)
            .map(|kk| (0..8).map(|n| (kk * 8 + n) as f32 - 64.0).collect())
            .collect();
        let c = (0..16)
            .map(|m| (0..8).map(|n| (m * 8 + n) as f32 * 3.0 - 100.0).collect())
            .collect();
        (a, b, c)
    }

    fn run16(ty: MmaInput, a: &[Vec<f32>], b: &[Vec<f32>], c: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let ar = scatter::<4>(ty, a, a_coord_m16n8k16);
        let br = scatter::<2>(ty, b, b_coord_m16n8k16);
        gather_d(&mma_m16n8k16(ty, &ar, &br, &scatter_c(c)))
    }

    fn run8(ty: MmaInput, a: &[Vec<f32>], b: &[Vec<f32>], c: &[Vec<f32>]) -> Vec<Vec<f32>> {
        let ar = scatter::<2>(ty, a, a_coord_m16n8k8);
        let br = scatter::<1>(ty, b, b_coord_m16n8k8);
        gather_d(&mma_m16n8k8(ty, &ar, &br, &scatter_c(c)))
    }

    fn assert_exact(got: &[Vec<f32>], want: &[Vec<f64>]) {
        for m in 0..16 {
            for n in 0..8 {
                assert_eq!(f64::from(got[m][n]), want[m][n], "D[{m}][{n}]");
            }
        }
    }

    #[test]
    fn mma_m16n8k16_small_ints_exact() {
        let (a, b, c) = int_mats(16);
        let want = matmul_ref(&a, &b, &c);
        for ty in [MmaInput::Bf16, MmaInput::F16] {
            assert_exact(&run16(ty, &a, &b, &c), &want);
        }
    }

    #[test]
    fn mma_m16n8k8_small_ints_exact() {
        let (a, b, c) = int_mats(8);
        let want = matmul_ref(&a, &b, &c);
        for ty in [MmaInput::Bf16, MmaInput::F16] {
            assert_exact(&run8(ty, &a, &b, &c), &want);
        }
    }

    #[test]
    fn mma_one_hot_places_every_product() {
        // A = e(m0,k0), B = e(k0,n0) * 2 => D = C except D[m0][n0] += 2.
        let c: Vec<Vec<f32>> = (0..16)
            .map(|m| (0..8).map(|n| (m * 8 + n) as f32).collect())
            .collect();
        for m0 in 0..16 {
            for k0 in 0..16 {
                let mut a = vec![vec![0f32; 16]; 16];
                a[m0][k0] = 1.0;
                for n0 in 0..8 {
                    let mut b = vec![vec![0f32; 8]; 16];
                    b[k0][n0] = 2.0;
                    let d = run16(MmaInput::F16, &a, &b, &c);
                    for m in 0..16 {
                        for n in 0..8 {
                            let extra = if (m, n) == (m0, n0) { 2.0 } else { 0.0 };
                            assert_eq!(d[m][n], c[m][n] + extra);
                        }
                    }
                }
            }
        }
    }

    fn random_mats(rng: &mut StdRng, ty: MmaInput, k: usize) -> Mats {
        // Round the random values through the 16-bit type so the reference sees
        // exactly the operands the mma sees.
        let q = |rng: &mut StdRng| ty.to_f32(encode(ty, rng.random_range(-4.0f32..4.0)));
        let a = (0..16).map(|_| (0..k).map(|_| q(rng)).collect()).collect();
        let b = (0..k).map(|_| (0..8).map(|_| q(rng)).collect()).collect();
        let c = (0..16)
            .map(|_| (0..8).map(|_| rng.random_range(-10.0f32..10.0)).collect())
            .collect();
        (a, b, c)
    }

    fn assert_close(got: &[Vec<f32>], a: &[Vec<f32>], b: &[Vec<f32>], c: &[Vec<f32>]) {
        let want = matmul_ref(a, b, c);
        for m in 0..16 {
            for n in 0..8 {
                let mag: f64 = (0..b.len())
                    .map(|k| (f64::from(a[m][k]) * f64::from(b[k][n])).abs())
                    .sum::<f64>()
                    + f64::from(c[m][n]).abs();
                let tol = mag * f64::from(f32::EPSILON);
                let err = (f64::from(got[m][n]) - want[m][n]).abs();
                assert!(err <= tol, "D[{m}][{n}] = {} vs {}", got[m][n], want[m][n]);
            }
        }
    }

    #[test]
    fn mma_random_vs_f64_reference() {
        let mut rng = StdRng::seed_from_u64(0x5eed_f00d);
        for _ in 0..20 {
            for ty in [MmaInput::Bf16, MmaInput::F16] {
                let (a, b, c) = random_mats(&mut rng, ty, 16);
                assert_close(&run16(ty, &a, &b, &c), &a, &b, &c);
                let (a, b, c) = random_mats(&mut rng, ty, 8);
                assert_close(&run8(ty, &a, &b, &c), &a, &b, &c);
            }
        }
    }

    #[test]
    fn mma_documented_rounding_and_specials() {
        let zero_a = [[0u32; 4]; 32];
        let zero_b = [[0u32; 2]; 32];
        let zero_c = [[0f32; 4]; 32];
        // Only lane 0's a0 and b0 set: both land at k = 0, affecting D[0][0] (lane 0, d0).
        let with = |ty: MmaInput, x: u16, y: u16, c0: f32| {
            let mut a = zero_a;
            let mut b = zero_b;
            let mut c = zero_c;
            a[0][0] = u32::from(x);
            b[0][0] = u32::from(y);
            c[0][0] = c0;
            mma_m16n8k16(ty, &a, &b, &c)[0][0]
        };
        // f16 smallest subnormal squared = 2^-48: exact, no flush to zero.
        assert_eq!(with(MmaInput::F16, 0x0001, 0x0001, 0.0), 2f32.powi(-48));
        // bf16 max * max overflows f32 => +inf.
        assert_eq!(with(MmaInput::Bf16, 0x7f7f, 0x7f7f, 0.0), f32::INFINITY);
        // inf * 0 => canonical NaN.
        assert_eq!(with(MmaInput::F16, 0x7c00, 0, 0.0).to_bits(), 0x7fff_ffff);
        // NaN input => canonical NaN.
        assert_eq!(
            with(MmaInput::Bf16, 0xffc1, 0x3f80, 1.0).to_bits(),
            0x7fff_ffff
        );
        // The sum is kept in f64 and rounded once: 1 + 2^-30 - 1 would vanish if
        // accumulated in f32 after adding c first; here it survives.
        // c = 1.0, a0*b0 = 2^-30 (bf16 0x3080 = 2^-30), then lane 0's a1*b1 = -1.
        let mut a = zero_a;
        let mut b = zero_b;
        let mut c = zero_c;
        a[0][0] = pack_b16x2(0x3080, 0xbf80); // a(0,0) = 2^-30, a(0,1) = -1
        b[0][0] = pack_b16x2(0x3f80, 0x3f80); // b(0,0) = 1, b(1,0) = 1
        c[0][0] = 1.0;
        let d = mma_m16n8k16(MmaInput::Bf16, &a, &b, &c);
        assert_eq!(d[0][0], 2f32.powi(-30));
    }

    // ---------------------------------------------------------------------------
    // ldmatrix
    // ---------------------------------------------------------------------------

    /// A fake shared memory: 16-bit words, byte addresses.
    struct Smem {
        words: Vec<u16>,
        reads: Vec<u64>,
    }

    impl Smem {
        fn new(len: usize) -> Self {
            // Distinct values everywhere.
            let words = (0..len)
                .map(|i| (i as u16).wrapping_mul(7).wrapping_add(3))
                .collect();
            Smem {
                words,
                reads: Vec::new(),
            }
        }
        fn word(&self, byte_addr: u64) -> u16 {
            self.words[(byte_addr / 2) as usize]
        }
        fn read_row(&mut self, addr: u64) -> Result<[u16; 8], String> {
            self.reads.push(addr);
            if addr % 16 != 0 || (addr / 2) as usize + 8 > self.words.len() {
                return Err(format!("bad address {addr:#x}"));
            }
            let base = (addr / 2) as usize;
            let mut row = [0u16; 8];
            row.copy_from_slice(&self.words[base..base + 8]);
            Ok(row)
        }
    }

    const STRIDE_BYTES: u64 = 48; // 16 bytes of data + 32 bytes of padding per row
    const MAT_BYTES: u64 = 8 * STRIDE_BYTES + 64; // matrices are not contiguous

    /// Byte address of row `r` of matrix `j` in the test layout.
    fn row_address(j: usize, r: usize) -> u64 {
        64 + j as u64 * MAT_BYTES + r as u64 * STRIDE_BYTES
    }

    fn test_addresses(num: usize) -> [u64; 32] {
        // Unused lanes carry garbage that read_row would reject.
        let mut addrs = [0xdead_beefu64; 32];
        for (lane, a) in addrs.iter_mut().enumerate().take(8 * num) {
            *a = row_address(lane / 8, lane % 8);
        }
        addrs
    }

    #[test]
    fn ldmatrix_all_shapes() {
        for num in [1usize, 2, 4] {
            for trans in [false, true] {
                let mut smem = Smem::new(4096);
                let addrs = test_addresses(num);
                let regs = ldmatrix(num, trans, &addrs, |a| smem.read_row(a)).unwrap();
                // Exactly the used lanes' addresses, in lane order.
                assert_eq!(smem.reads, addrs[..8 * num].to_vec());
                for (lane, lane_regs) in regs.iter().enumerate() {
                    for (j, &reg) in lane_regs.iter().enumerate() {
                        if j >= num {
                            assert_eq!(reg, 0, "unused register");
                            continue;
                        }
                        // Element (row, col) of matrix j, straight from memory.
                        let elem = |row: usize, col: usize| {
                            smem.word(row_address(j, row) + 2 * col as u64)
                        };
                        let (lo, hi) = if trans {
                            (
                                elem(2 * (lane % 4), lane / 4),
                                elem(2 * (lane % 4) + 1, lane / 4),
                            )
                        } else {
                            (
                                elem(lane / 4, 2 * (lane % 4)),
                                elem(lane / 4, 2 * (lane % 4) + 1),
                            )
                        };
                        assert_eq!(unpack_b16x2(reg), [lo, hi], "lane {lane} reg {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn ldmatrix_literal_lanes() {
        // One 8x8 matrix with M[r][c] = 10*r + c, rows 16 bytes apart.
        let mem: Vec<u16> = (0..64).map(|i| (10 * (i / 8) + i % 8) as u16).collect();
        let read = |a: u64| -> Result<[u16; 8], ()> {
            let b = (a / 2) as usize;
            Ok(mem[b..b + 8].try_into().unwrap())
        };
        let mut addrs = [0u64; 32];
        for (l, a) in addrs.iter_mut().enumerate().take(8) {
            *a = 16 * l as u64;
        }
        let r = ldmatrix(1, false, &addrs, read).unwrap();
        assert_eq!(unpack_b16x2(r[0][0]), [0, 1]); // row 0, cols 0,1
        assert_eq!(unpack_b16x2(r[5][0]), [12, 13]); // row 1, cols 2,3
        assert_eq!(unpack_b16x2(r[31][0]), [76, 77]); // row 7, cols 6,7
        let t = ldmatrix(1, true, &addrs, read).unwrap();
        assert_eq!(unpack_b16x2(t[0][0]), [0, 10]); // col 0, rows 0,1
        assert_eq!(unpack_b16x2(t[5][0]), [21, 31]); // col 1, rows 2,3
        assert_eq!(unpack_b16x2(t[31][0]), [67, 77]); // col 7, rows 6,7
    }

    #[test]
    fn ldmatrix_error_propagates() {
        let mut smem = Smem::new(4096);
        let mut addrs = test_addresses(4);
        addrs[13] = 0x7; // misaligned: matrix 1, row 5
        let err = ldmatrix(4, true, &addrs, |a| smem.read_row(a)).unwrap_err();
        assert_eq!(err, "bad address 0x7");
        // Stopped at the failing row.
        assert_eq!(smem.reads.len(), 14);
        // A failing address in an unused lane is never read.
        let mut addrs = test_addresses(2);
        addrs[20] = 0x7;
        assert!(ldmatrix(2, false, &addrs, |a| smem.read_row(a)).is_ok());
        assert_eq!(ldmatrix_address_lanes(1), 0..8);
        assert_eq!(ldmatrix_address_lanes(2), 0..16);
        assert_eq!(ldmatrix_address_lanes(4), 0..32);
    }

    proptest! {
        /// `.trans` of memory M equals the plain load of M's transpose.
        #[test]
        fn ldmatrix_trans_is_transpose(vals in proptest::collection::vec(any::<u16>(), 64)) {
            let mut transposed = vec![0u16; 64];
            for r in 0..8 {
                for c in 0..8 {
                    transposed[c * 8 + r] = vals[r * 8 + c];
                }
            }
            let mut addrs = [0u64; 32];
            for (l, a) in addrs.iter_mut().enumerate().take(8) {
                *a = 16 * l as u64;
            }
            let reader = |m: &Vec<u16>| {
                let m = m.clone();
                move |a: u64| -> Result<[u16; 8], ()> {
                    let b = (a / 2) as usize;
                    Ok(m[b..b + 8].try_into().unwrap())
                }
            };
            let t = ldmatrix(1, true, &addrs, reader(&vals)).unwrap();
            let p = ldmatrix(1, false, &addrs, reader(&transposed)).unwrap();
            prop_assert_eq!(t, p);
        }
    }

    // ---------------------------------------------------------------------------
    // ldmatrix + mma round trip, the pattern of real sm_80 GEMM kernels.
    // ---------------------------------------------------------------------------

    /// Lays a row-major `rows x cols` matrix into a 16-bit shared-memory image at
    /// byte offset `base` with `stride` elements per row.
    fn store_tile(mem: &mut [u16], base: usize, stride: usize, ty: MmaInput, m: &[Vec<f32>]) {
        for (r, row) in m.iter().enumerate() {
            for (c, &v) in row.iter().enumerate() {
                mem[base / 2 + r * stride + c] = encode(ty, v);
            }
        }
    }

    #[test]
    fn ldmatrix_then_mma_m16n8k16_round_trip() {
        const A_BASE: usize = 0;
        const A_STRIDE: usize = 24; // 16 elements + 8 padding
        const B_BASE: usize = 1024;
        const B_STRIDE: usize = 16; // 8 elements + 8 padding
        let (a, b, c) = int_mats(16);
        for ty in [MmaInput::Bf16, MmaInput::F16] {
            let mut mem = vec![0u16; 2048];
            store_tile(&mut mem, A_BASE, A_STRIDE, ty, &a);
            store_tile(&mut mem, B_BASE, B_STRIDE, ty, &b);
            let read = |addr: u64| -> Result<[u16; 8], ()> {
                let w = (addr / 2) as usize;
                Ok(mem[w..w + 8].try_into().unwrap())
            };
            // A: x4, lane l -> row l % 16, col 8 * (l / 16).
            let mut a_addr = [0u64; 32];
            for (l, addr) in a_addr.iter_mut().enumerate() {
                *addr = (A_BASE + 2 * ((l % 16) * A_STRIDE + 8 * (l / 16))) as u64;
            }
            let a_regs = ldmatrix(4, false, &a_addr, read).unwrap();
            // B (k-major, row = k): x2.trans, lane l < 16 -> row k = l.
            let mut b_addr = [u64::MAX; 32];
            for (l, addr) in b_addr.iter_mut().enumerate().take(16) {
                *addr = (B_BASE + 2 * l * B_STRIDE) as u64;
            }
            let b_full = ldmatrix(2, true, &b_addr, read).unwrap();
            let mut a4 = [[0u32; 4]; 32];
            let mut b2 = [[0u32; 2]; 32];
            for l in 0..32 {
                a4[l] = a_regs[l];
                b2[l] = [b_full[l][0], b_full[l][1]];
            }
            // The loaded fragments equal the ISA-table scatter...
            assert_eq!(a4, scatter::<4>(ty, &a, a_coord_m16n8k16));
            assert_eq!(b2, scatter::<2>(ty, &b, b_coord_m16n8k16));
            // ...and the product is the plain matmul.
            let d = gather_d(&mma_m16n8k16(ty, &a4, &b2, &scatter_c(&c)));
            assert_exact(&d, &matmul_ref(&a, &b, &c));
        }
    }

    #[test]
    fn ldmatrix_then_mma_m16n8k8_round_trip() {
        const A_STRIDE: usize = 16; // 8 elements + 8 padding
        const B_BASE: usize = 1024;
        const B_STRIDE: usize = 8;
        let (a, b, c) = int_mats(8);
        for ty in [MmaInput::Bf16, MmaInput::F16] {
            let mut mem = vec![0u16; 1024];
            store_tile(&mut mem, 0, A_STRIDE, ty, &a);
            store_tile(&mut mem, B_BASE, B_STRIDE, ty, &b);
            let read = |addr: u64| -> Result<[u16; 8], ()> {
                let w = (addr / 2) as usize;
                Ok(mem[w..w + 8].try_into().unwrap())
            };
            // A (16x8): x2, lane l < 16 -> row l.
            let mut a_addr = [u64::MAX; 32];
            for (l, addr) in a_addr.iter_mut().enumerate().take(16) {
                *addr = (2 * l * A_STRIDE) as u64;
            }
            let a_full = ldmatrix(2, false, &a_addr, read).unwrap();
            // B (8x8, row = k): x1.trans, lane l < 8 -> row k = l.
            let mut b_addr = [u64::MAX; 32];
            for (l, addr) in b_addr.iter_mut().enumerate().take(8) {
                *addr = (B_BASE + 2 * l * B_STRIDE) as u64;
            }
            let b_full = ldmatrix(1, true, &b_addr, read).unwrap();
            let mut a2 = [[0u32; 2]; 32];
            let mut b1 = [[0u32; 1]; 32];
            for l in 0..32 {
                a2[l] = [a_full[l][0], a_full[l][1]];
                b1[l] = [b_full[l][0]];
            }
            assert_eq!(a2, scatter::<2>(ty, &a, a_coord_m16n8k8));
            assert_eq!(b1, scatter::<1>(ty, &b, b_coord_m16n8k8));
            let d = gather_d(&mma_m16n8k8(ty, &a2, &b1, &scatter_c(&c)));
            assert_exact(&d, &matmul_ref(&a, &b, &c));
        }
    }
}
