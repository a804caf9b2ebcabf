//! Per instruction family: tiny hand-written PTX kernels whose results, stored to a zeroed
//! buffer of u64 words, are compared with hand-computed values (edge cases included). Then
//! parse errors, unsupported forms and bad launches.

mod common;

use common::{cfg1, Dev, Params};
use ptx_emu::{EmuError, LaunchConfig, Module};

const HEADER: &str = ".version 9.0\n.target sm_80\n.address_size 64\n";

/// Registers every snippet may use.
const REGS: &str = "\t.reg .pred %p<16>;\n\t.reg .b16 %rs<16>;\n\t.reg .b32 %r<40>;\n\
                    \t.reg .b64 %rd<40>;\n\t.reg .f32 %f<40>;\n\t.reg .f64 %fd<16>;\n";

/// A kernel `t(.param .u64 out_param)` running `body` with `%out` holding the (global) address
/// of the output buffer. `decls` go before the standard registers (e.g. a `.shared` variable).
fn kernel(decls: &str, body: &str) -> String {
    format!(
        "{HEADER}.visible .entry t(.param .u64 out_param)\n{{\n\t.reg .b64 %out;\n{REGS}{decls}\n\
         \tld.param.u64 %out, [out_param];\n\tcvta.to.global.u64 %out, %out;\n{body}\n\tret;\n}}\n"
    )
}

/// Runs `body` on one thread with a zeroed output buffer of `words` u64 words.
fn try_run(decls: &str, body: &str, words: usize) -> Result<Vec<u64>, EmuError> {
    let src = kernel(decls, body);
    let dev = Dev::new(&src);
    let out = dev.zeroed(8 * words as u64);
    dev.launch("t", &Params::new().ptr(out), &cfg1(1, 1, 0))?;
    Ok(dev.read_u64(out, words))
}

fn run(decls: &str, body: &str, words: usize) -> Vec<u64> {
    try_run(decls, body, words)
        .unwrap_or_else(|e| panic!("{e}\n--- kernel ---\n{}", kernel(decls, body)))
}

/// Runs `body` and compares word k of the output with `want[k].0` (labelled `want[k].1`),
/// reporting every mismatch at once.
fn expect_with(decls: &str, body: &str, want: &[(u64, &str)]) {
    let got = run(decls, body, want.len());
    let bad: Vec<String> = want
        .iter()
        .zip(&got)
        .enumerate()
        .filter(|(_, ((w, _), g))| w != *g)
        .map(|(k, ((w, label), g))| format!("word {k} ({label}): got {g:#x}, want {w:#x}"))
        .collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

fn expect(body: &str, want: &[(u64, &str)]) {
    expect_with("", body, want);
}

fn f32w(x: f32) -> u64 {
    u64::from(x.to_bits())
}

fn wf32(w: u64) -> f32 {
    f32::from_bits(w as u32)
}

// ---- integer arithmetic ------------------------------------------------------------------------

#[test]
fn int_add_sub_wrap_and_saturate() {
    expect(
        "
        mov.u32 %r1, 2147483647;
        add.s32 %r2, %r1, 1;
        st.global.u32 [%out+0], %r2;
        mov.u32 %r3, 0xFFFFFFFF;
        add.u32 %r4, %r3, 1;
        st.global.u32 [%out+8], %r4;
        mov.u32 %r5, 0;
        sub.u32 %r6, %r5, 1;
        st.global.u32 [%out+16], %r6;
        add.sat.s32 %r7, %r1, 1;
        st.global.u32 [%out+24], %r7;
        mov.u32 %r8, 0x80000000;
        sub.sat.s32 %r9, %r8, 1;
        st.global.u32 [%out+32], %r9;
        mov.u64 %rd1, 0x7FFFFFFFFFFFFFFF;
        add.s64 %rd2, %rd1, 1;
        st.global.u64 [%out+40], %rd2;
        mov.u64 %rd3, 0;
        sub.s64 %rd4, %rd3, 1;
        st.global.u64 [%out+48], %rd4;
        mov.u16 %rs1, 0xFFFF;
        add.u16 %rs2, %rs1, 2;
        st.global.u16 [%out+56], %rs2;
        add.sat.s32 %r10, %r8, -1;
        st.global.u32 [%out+64], %r10;
        ",
        &[
            (0x8000_0000, "add.s32 wraps"),
            (0, "add.u32 wraps"),
            (0xFFFF_FFFF, "sub.u32 wraps"),
            (0x7FFF_FFFF, "add.sat.s32 clamps high"),
            (0x8000_0000, "sub.sat.s32 clamps low"),
            (0x8000_0000_0000_0000, "add.s64 wraps"),
            (u64::MAX, "sub.s64 wraps"),
            (1, "add.u16 wraps"),
            (0x8000_0000, "add.sat.s32 negative clamp"),
        ],
    );
}

#[test]
fn int_mul_hi_wide_mad() {
    expect(
        "
        mov.u32 %r1, -3;
        mul.lo.s32 %r2, %r1, 5;
        st.global.u32 [%out+0], %r2;
        mov.u32 %r3, 0xFFFFFFFF;
        mul.hi.u32 %r4, %r3, %r3;
        st.global.u32 [%out+8], %r4;
        mul.hi.s32 %r5, %r3, %r3;
        st.global.u32 [%out+16], %r5;
        mov.u32 %r6, 0x80000000;
        mul.hi.s32 %r7, %r6, 2;
        st.global.u32 [%out+24], %r7;
        mov.u32 %r8, -2;
        mul.wide.s32 %rd1, %r8, 3;
        st.global.u64 [%out+32], %rd1;
        mul.wide.u32 %rd2, %r3, %r3;
        st.global.u64 [%out+40], %rd2;
        mov.u64 %rd3, 0xFFFFFFFFFFFFFFFF;
        mul.hi.u64 %rd4, %rd3, 2;
        st.global.u64 [%out+48], %rd4;
        mul.hi.s64 %rd5, %rd3, 2;
        st.global.u64 [%out+56], %rd5;
        mov.u32 %r9, 3;
        mad.lo.s32 %r10, %r9, -4, 5;
        st.global.u32 [%out+64], %r10;
        mov.u64 %rd6, 0x100000000;
        mad.wide.u32 %rd7, %r3, 2, %rd6;
        st.global.u64 [%out+72], %rd7;
        mov.u16 %rs1, 0xFFFF;
        mul.wide.u16 %r11, %rs1, %rs1;
        st.global.u32 [%out+80], %r11;
        mov.u32 %r12, 0x01000003;
        mul24.lo.u32 %r13, %r12, 2;
        st.global.u32 [%out+88], %r13;
        mad.hi.u32 %r14, %r3, %r3, 1;
        st.global.u32 [%out+96], %r14;
        mul.wide.s16 %r15, %rs1, %rs1;
        st.global.u32 [%out+104], %r15;
        ",
        &[
            (0xFFFF_FFF1, "mul.lo.s32 -3*5"),
            (0xFFFF_FFFE, "mul.hi.u32 max*max"),
            (0, "mul.hi.s32 -1*-1"),
            (0xFFFF_FFFF, "mul.hi.s32 -2^31*2"),
            (0xFFFF_FFFF_FFFF_FFFA, "mul.wide.s32 -2*3"),
            (0xFFFF_FFFE_0000_0001, "mul.wide.u32 max*max"),
            (1, "mul.hi.u64 max*2"),
            (u64::MAX, "mul.hi.s64 -1*2"),
            (0xFFFF_FFF9, "mad.lo.s32 3*-4+5"),
            (0x2_FFFF_FFFE, "mad.wide.u32"),
            (0xFFFE_0001, "mul.wide.u16"),
            (6, "mul24.lo.u32 uses 24 bits"),
            (0xFFFF_FFFF, "mad.hi.u32 (hi 0xfffffffe) + 1"),
            (1, "mul.wide.s16 -1*-1"),
        ],
    );
}

#[test]
fn int_div_rem_signed_negatives() {
    expect(
        "
        mov.u32 %r1, -7;
        div.s32 %r2, %r1, 2;
        st.global.u32 [%out+0], %r2;
        rem.s32 %r3, %r1, 2;
        st.global.u32 [%out+8], %r3;
        mov.u32 %r4, 7;
        div.s32 %r5, %r4, -2;
        st.global.u32 [%out+16], %r5;
        rem.s32 %r6, %r4, -2;
        st.global.u32 [%out+24], %r6;
        mov.u32 %r7, 0xFFFFFFF9;
        div.u32 %r8, %r7, 2;
        st.global.u32 [%out+32], %r8;
        rem.u32 %r9, %r7, 2;
        st.global.u32 [%out+40], %r9;
        mov.u64 %rd1, -9;
        div.s64 %rd2, %rd1, 4;
        st.global.u64 [%out+48], %rd2;
        rem.s64 %rd3, %rd1, 4;
        st.global.u64 [%out+56], %rd3;
        ",
        &[
            (0xFFFF_FFFD, "div.s32 -7/2 = -3 (truncates)"),
            (0xFFFF_FFFF, "rem.s32 -7%2 = -1"),
            (0xFFFF_FFFD, "div.s32 7/-2 = -3"),
            (1, "rem.s32 7%-2 = 1"),
            (0x7FFF_FFFC, "div.u32"),
            (1, "rem.u32"),
            (0xFFFF_FFFF_FFFF_FFFE, "div.s64 -9/4 = -2"),
            (u64::MAX, "rem.s64 -9%4 = -1"),
        ],
    );
}

#[test]
fn int_abs_neg_min_max() {
    expect(
        "
        mov.u32 %r1, 0x80000000;
        abs.s32 %r2, %r1;
        st.global.u32 [%out+0], %r2;
        mov.u32 %r3, -5;
        abs.s32 %r4, %r3;
        st.global.u32 [%out+8], %r4;
        neg.s32 %r5, %r4;
        st.global.u32 [%out+16], %r5;
        mov.u32 %r6, 1;
        min.s32 %r7, %r3, %r6;
        st.global.u32 [%out+24], %r7;
        min.u32 %r8, %r3, %r6;
        st.global.u32 [%out+32], %r8;
        max.s32 %r9, %r3, %r6;
        st.global.u32 [%out+40], %r9;
        max.u32 %r10, %r3, %r6;
        st.global.u32 [%out+48], %r10;
        mov.u64 %rd1, -3;
        max.s64 %rd2, %rd1, -4;
        st.global.u64 [%out+56], %rd2;
        mov.u32 %r11, 10;
        sad.u32 %r12, %r11, 13, 100;
        st.global.u32 [%out+64], %r12;
        ",
        &[
            (0x8000_0000, "abs.s32 INT_MIN wraps"),
            (5, "abs.s32 -5"),
            (0xFFFF_FFFB, "neg.s32 5"),
            (0xFFFF_FFFB, "min.s32 -5, 1"),
            (1, "min.u32 0xfffffffb, 1"),
            (1, "max.s32 -5, 1"),
            (0xFFFF_FFFB, "max.u32"),
            (u64::MAX - 2, "max.s64 -3, -4"),
            (103, "sad.u32 |10-13|+100"),
        ],
    );
}

// ---- shifts and bit manipulation ----------------------------------------------------------------

#[test]
fn shifts_with_amounts_at_and_past_the_width() {
    expect(
        "
        mov.u32 %r1, 1;
        shl.b32 %r2, %r1, 31;
        st.global.u32 [%out+0], %r2;
        shl.b32 %r3, %r1, 32;
        st.global.u32 [%out+8], %r3;
        mov.u32 %r4, 0xFFFFFFFF;
        mov.u32 %r30, 40;
        shl.b32 %r5, %r4, %r30;
        st.global.u32 [%out+16], %r5;
        mov.u32 %r6, 0x80000000;
        shr.u32 %r7, %r6, 32;
        st.global.u32 [%out+24], %r7;
        shr.s32 %r8, %r6, 33;
        st.global.u32 [%out+32], %r8;
        mov.u32 %r9, 0x40000000;
        shr.s32 %r10, %r9, %r30;
        st.global.u32 [%out+40], %r10;
        mov.u32 %r11, -8;
        shr.s32 %r12, %r11, 1;
        st.global.u32 [%out+48], %r12;
        shr.u32 %r13, %r11, 1;
        st.global.u32 [%out+56], %r13;
        mov.u64 %rd1, 1;
        shl.b64 %rd2, %rd1, 63;
        st.global.u64 [%out+64], %rd2;
        shl.b64 %rd3, %rd1, 64;
        st.global.u64 [%out+72], %rd3;
        mov.u64 %rd4, 0x8000000000000000;
        shr.s64 %rd5, %rd4, 100;
        st.global.u64 [%out+80], %rd5;
        shr.b32 %r14, %r6, 31;
        st.global.u32 [%out+88], %r14;
        mov.u32 %r15, 0x80000001;
        shf.l.wrap.b32 %r16, %r15, %r1, 4;
        st.global.u32 [%out+96], %r16;
        mov.u32 %r17, 0x10;
        shf.r.clamp.b32 %r18, %r17, %r1, 40;
        st.global.u32 [%out+104], %r18;
        shf.r.wrap.b32 %r19, %r17, %r1, 36;
        st.global.u32 [%out+112], %r19;
        shf.l.clamp.b32 %r20, %r15, %r1, 33;
        st.global.u32 [%out+120], %r20;
        ",
        &[
            (0x8000_0000, "shl.b32 1<<31"),
            (0, "shl.b32 by 32 gives 0"),
            (0, "shl.b32 by 40 gives 0"),
            (0, "shr.u32 by 32 gives 0"),
            (0xFFFF_FFFF, "shr.s32 by 33 sign-fills"),
            (0, "shr.s32 positive by 40"),
            (0xFFFF_FFFC, "shr.s32 -8>>1"),
            (0x7FFF_FFFC, "shr.u32 -8>>1"),
            (0x8000_0000_0000_0000, "shl.b64 1<<63"),
            (0, "shl.b64 by 64"),
            (u64::MAX, "shr.s64 by 100 sign-fills"),
            (1, "shr.b32 is logical"),
            (0x18, "shf.l.wrap {1:0x80000001} << 4, upper word"),
            (1, "shf.r.clamp by 40 clamps to 32"),
            (0x1000_0001, "shf.r.wrap by 36 = by 4"),
            (
                0x8000_0001,
                "shf.l.clamp by 33 clamps to 32 (gives the low word)",
            ),
        ],
    );
}

#[test]
fn bfe_bfi_prmt_lop3() {
    let (a, b, c) = (0x0F0F_00FFu32, 0x00FF_0F0Fu32, 0x3333_3333u32);
    expect(
        "
        mov.u32 %r1, 0x12345678;
        bfe.u32 %r2, %r1, 8, 8;
        st.global.u32 [%out+0], %r2;
        mov.u32 %r3, 0x0000F000;
        bfe.s32 %r4, %r3, 12, 4;
        st.global.u32 [%out+8], %r4;
        mov.u32 %r5, 0x00007000;
        bfe.s32 %r6, %r5, 12, 4;
        st.global.u32 [%out+16], %r6;
        bfe.u32 %r7, %r1, 4, 0;
        st.global.u32 [%out+24], %r7;
        bfe.u32 %r8, %r1, 28, 8;
        st.global.u32 [%out+32], %r8;
        mov.u32 %r9, 0x92345678;
        bfe.s32 %r10, %r9, 28, 8;
        st.global.u32 [%out+40], %r10;
        mov.u32 %r11, 0xAB;
        mov.u32 %r12, 0xFFFFFFFF;
        bfi.b32 %r13, %r11, %r12, 8, 8;
        st.global.u32 [%out+48], %r13;
        bfi.b32 %r14, %r11, %r1, 8, 0;
        st.global.u32 [%out+56], %r14;
        mov.u32 %r15, 0xFF;
        mov.u32 %r16, 0;
        bfi.b32 %r17, %r15, %r16, 28, 8;
        st.global.u32 [%out+64], %r17;
        mov.u32 %r18, 0x03020100;
        mov.u32 %r19, 0x07060504;
        prmt.b32 %r20, %r18, %r19, 0x5410;
        st.global.u32 [%out+72], %r20;
        prmt.b32 %r21, %r18, %r19, 0x7654;
        st.global.u32 [%out+80], %r21;
        mov.u32 %r22, 0x00008000;
        prmt.b32 %r23, %r22, %r16, 0x0009;
        st.global.u32 [%out+88], %r23;
        mov.u32 %r24, 0x0F0F00FF;
        mov.u32 %r25, 0x00FF0F0F;
        mov.u32 %r26, 0x33333333;
        lop3.b32 %r27, %r24, %r25, %r26, 0x96;
        st.global.u32 [%out+96], %r27;
        lop3.b32 %r28, %r24, %r25, %r26, 0xE8;
        st.global.u32 [%out+104], %r28;
        lop3.b32 %r29, %r24, %r25, %r26, 0x80;
        st.global.u32 [%out+112], %r29;
        lop3.b32 %r30, %r24, %r25, %r26, 0xF0;
        st.global.u32 [%out+120], %r30;
        lop3.b32 %r31, %r24, %r25, %r26, 0xAA;
        st.global.u32 [%out+128], %r31;
        ",
        &[
            (0x56, "bfe.u32 pos 8 len 8"),
            (0xFFFF_FFFF, "bfe.s32 sign-extends the field"),
            (7, "bfe.s32 positive field"),
            (0, "bfe len 0"),
            (1, "bfe.u32 field past the msb"),
            (
                0xFFFF_FFF9,
                "bfe.s32 field past the msb sign-extends bit 31",
            ),
            (0xFFFF_ABFF, "bfi.b32"),
            (0x1234_5678, "bfi len 0 returns b"),
            (0xF000_0000, "bfi field clipped at bit 31"),
            (0x0504_0100, "prmt 0x5410"),
            (0x0706_0504, "prmt 0x7654 selects b"),
            (0xFF, "prmt sign-replicate nibble"),
            (u64::from(a ^ b ^ c), "lop3 0x96 = xor3"),
            (
                u64::from((a & b) | (a & c) | (b & c)),
                "lop3 0xE8 = majority",
            ),
            (u64::from(a & b & c), "lop3 0x80 = and3"),
            (u64::from(a), "lop3 0xF0 = a"),
            (u64::from(c), "lop3 0xAA = c"),
        ],
    );
}

#[test]
fn popc_clz_brev_bfind_not_cnot_logic() {
    expect(
        "
        mov.u32 %r1, 0xF0F0F0F0;
        popc.b32 %r2, %r1;
        st.global.u32 [%out+0], %r2;
        mov.u64 %rd1, 0xFFFFFFFFFFFFFFFF;
        popc.b64 %r3, %rd1;
        st.global.u32 [%out+8], %r3;
        mov.u32 %r4, 0x00010000;
        clz.b32 %r5, %r4;
        st.global.u32 [%out+16], %r5;
        mov.u32 %r6, 0;
        clz.b32 %r7, %r6;
        st.global.u32 [%out+24], %r7;
        mov.u64 %rd2, 1;
        clz.b64 %r8, %rd2;
        st.global.u32 [%out+32], %r8;
        mov.u32 %r9, 1;
        brev.b32 %r10, %r9;
        st.global.u32 [%out+40], %r10;
        mov.u32 %r11, 0x12345678;
        brev.b32 %r12, %r11;
        st.global.u32 [%out+48], %r12;
        bfind.u32 %r13, %r4;
        st.global.u32 [%out+56], %r13;
        bfind.u32 %r14, %r6;
        st.global.u32 [%out+64], %r14;
        mov.u32 %r15, -1;
        bfind.s32 %r16, %r15;
        st.global.u32 [%out+72], %r16;
        mov.u32 %r17, 0xFFFF0000;
        bfind.s32 %r18, %r17;
        st.global.u32 [%out+80], %r18;
        mov.u32 %r19, 5;
        bfind.s32 %r20, %r19;
        st.global.u32 [%out+88], %r20;
        mov.u64 %rd3, 0x10000000000;
        bfind.u64 %r21, %rd3;
        st.global.u32 [%out+96], %r21;
        mov.u32 %r22, 0x0F0F0F0F;
        not.b32 %r23, %r22;
        st.global.u32 [%out+104], %r23;
        cnot.b32 %r24, %r6;
        st.global.u32 [%out+112], %r24;
        cnot.b32 %r25, %r19;
        st.global.u32 [%out+120], %r25;
        and.b32 %r26, %r1, %r22;
        or.b32 %r27, %r1, %r22;
        xor.b32 %r28, %r1, %r4;
        st.global.u32 [%out+128], %r26;
        st.global.u32 [%out+136], %r27;
        st.global.u32 [%out+144], %r28;
        ",
        &[
            (16, "popc.b32"),
            (64, "popc.b64"),
            (15, "clz.b32"),
            (32, "clz.b32 of 0"),
            (63, "clz.b64 of 1"),
            (0x8000_0000, "brev.b32 1"),
            (0x1E6A_2C48, "brev.b32 0x12345678"),
            (16, "bfind.u32"),
            (0xFFFF_FFFF, "bfind.u32 of 0"),
            (0xFFFF_FFFF, "bfind.s32 of -1 (no non-sign bit)"),
            (15, "bfind.s32 of 0xffff0000"),
            (2, "bfind.s32 of 5"),
            (40, "bfind.u64"),
            (0xF0F0_F0F0, "not.b32"),
            (1, "cnot of 0"),
            (0, "cnot of 5"),
            (0, "and"),
            (0xFFFF_FFFF, "or"),
            (0xF0F1_F0F0, "xor"),
        ],
    );
}

// ---- comparisons and selection -----------------------------------------------------------------

/// `selp.u32 %rK, 1, 0, %pK; st.global.u32 [%out+8k], %rK;` for k in 1..=n.
fn store_preds(n: usize) -> String {
    (1..=n)
        .map(|k| {
            format!(
                "selp.u32 %r{k}, 1, 0, %p{k};\nst.global.u32 [%out+{}], %r{k};\n",
                8 * (k - 1)
            )
        })
        .collect()
}

#[test]
fn setp_integer_signed_unsigned_and_combined() {
    let body = "
        mov.u32 %r20, -1;
        mov.u32 %r21, 1;
        setp.lt.s32 %p1, %r20, %r21;
        setp.lt.u32 %p2, %r20, %r21;
        setp.lo.u32 %p3, %r21, %r20;
        setp.hi.u32 %p4, %r20, %r21;
        mov.u64 %rd1, -5;
        setp.ge.s64 %p5, %rd1, -5;
        setp.ne.s32 %p6, %r20, %r21;
        setp.le.s32 %p14, %r21, %r21;
        setp.lt.and.s32 %p7, %r21, 2, %p2;
        setp.lt.or.s32 %p8, 2, %r21, %p1;
        setp.lt.xor.s32 %p9, %r21, 2, %p1;
        setp.lt.s32 %p10|%p11, %r21, 2;
        and.pred %p12, %p1, %p2;
        or.pred %p13, %p1, %p2;
        not.pred %p14, %p14;
        "
    .to_string()
        + &store_preds(14);
    expect(
        &body,
        &[
            (1, "lt.s32 -1 < 1"),
            (0, "lt.u32 0xffffffff < 1"),
            (1, "lo.u32 1 < 0xffffffff"),
            (1, "hi.u32"),
            (1, "ge.s64 -5 >= -5"),
            (1, "ne.s32"),
            (0, "lt.and with false"),
            (1, "lt.or with true"),
            (0, "lt.xor with true"),
            (1, "pair: p"),
            (0, "pair: !p"),
            (0, "and.pred"),
            (1, "or.pred"),
            (0, "not.pred of (le 1 <= 1)"),
        ],
    );
}

#[test]
fn setp_float_ordered_unordered_and_nan() {
    let body = "
        mov.b32 %f1, 0f7FC00000;
        mov.f32 %f2, 0f3F800000;
        mov.f32 %f3, 0f00000000;
        mov.f32 %f4, 0f80000000;
        mov.f32 %f5, 0f40000000;
        setp.lt.f32 %p1, %f1, %f2;
        setp.ltu.f32 %p2, %f1, %f2;
        setp.eq.f32 %p3, %f1, %f1;
        setp.ne.f32 %p4, %f1, %f2;
        setp.neu.f32 %p5, %f1, %f2;
        setp.equ.f32 %p6, %f1, %f1;
        setp.num.f32 %p7, %f2, %f5;
        setp.nan.f32 %p8, %f1, %f2;
        setp.eq.f32 %p9, %f3, %f4;
        setp.gt.f32 %p10, %f3, %f4;
        setp.ge.f32 %p11, %f1, %f1;
        setp.geu.f32 %p12, %f1, %f2;
        mov.f64 %fd1, 0d7FF8000000000000;
        mov.f64 %fd2, 0d3FF0000000000000;
        setp.gtu.f64 %p13, %fd1, %fd2;
        setp.lt.f64 %p14, %fd2, 0d4000000000000000;
        "
    .to_string()
        + &store_preds(14);
    expect(
        &body,
        &[
            (0, "lt.f32 NaN < 1 is false"),
            (1, "ltu.f32 NaN < 1 is true"),
            (0, "eq.f32 NaN == NaN is false"),
            (0, "ne.f32 with NaN is false"),
            (1, "neu.f32 with NaN is true"),
            (1, "equ.f32 NaN NaN is true"),
            (1, "num.f32 of two numbers"),
            (1, "nan.f32 with a NaN"),
            (1, "eq.f32 +0 == -0"),
            (0, "gt.f32 +0 > -0 is false"),
            (0, "ge.f32 NaN >= NaN is false"),
            (1, "geu.f32 NaN is true"),
            (1, "gtu.f64 NaN is true"),
            (1, "lt.f64 1 < 2"),
        ],
    );
}

#[test]
fn selp_all_widths() {
    expect(
        "
        mov.u32 %r1, 3;
        setp.eq.u32 %p1, %r1, 3;
        setp.ne.u32 %p2, %r1, 3;
        selp.b32 %r2, 10, 20, %p1;
        selp.b32 %r3, 10, 20, %p2;
        st.global.u32 [%out+0], %r2;
        st.global.u32 [%out+8], %r3;
        mov.u64 %rd1, 0x1122334455667788;
        selp.b64 %rd2, %rd1, 7, %p1;
        st.global.u64 [%out+16], %rd2;
        selp.f32 %f1, 0f3F800000, 0f40000000, %p2;
        st.global.f32 [%out+24], %f1;
        selp.u16 %rs1, 0xABCD, 1, %p1;
        st.global.u16 [%out+32], %rs1;
        ",
        &[
            (10, "selp true"),
            (20, "selp false"),
            (0x1122_3344_5566_7788, "selp.b64"),
            (0x4000_0000, "selp.f32 false -> 2.0"),
            (0xABCD, "selp.u16"),
        ],
    );
}

// ---- conversions ---------------------------------------------------------------------------------

#[test]
fn cvt_int_to_int_truncation_extension_saturation() {
    expect(
        "
        mov.u32 %r1, 0x12345;
        cvt.u16.u32 %rs1, %r1;
        st.global.u16 [%out+0], %rs1;
        mov.u16 %rs2, 0x8000;
        cvt.s32.s16 %r2, %rs2;
        st.global.u32 [%out+8], %r2;
        cvt.u32.u16 %r3, %rs2;
        st.global.u32 [%out+16], %r3;
        mov.u16 %rs3, 0x0180;
        cvt.s32.s8 %r4, %rs3;
        st.global.u32 [%out+24], %r4;
        cvt.u32.u8 %r5, %rs3;
        st.global.u32 [%out+32], %r5;
        mov.u32 %r6, -5;
        cvt.sat.u8.s32 %rs4, %r6;
        cvt.u32.u8 %r7, %rs4;
        st.global.u32 [%out+40], %r7;
        mov.u32 %r8, 300;
        cvt.sat.u8.s32 %rs5, %r8;
        cvt.u32.u8 %r9, %rs5;
        st.global.u32 [%out+48], %r9;
        mov.u32 %r10, -300;
        cvt.sat.s8.s32 %rs6, %r10;
        cvt.s32.s8 %r11, %rs6;
        st.global.u32 [%out+56], %r11;
        mov.u64 %rd1, 0x10000000000;
        cvt.sat.s32.s64 %r12, %rd1;
        st.global.u32 [%out+64], %r12;
        mov.u64 %rd2, -1;
        cvt.sat.u32.s64 %r13, %rd2;
        st.global.u32 [%out+72], %r13;
        mov.u64 %rd3, 0x100000005;
        cvt.u32.u64 %r14, %rd3;
        st.global.u32 [%out+80], %r14;
        mov.u32 %r15, -1;
        cvt.s64.s32 %rd4, %r15;
        st.global.u64 [%out+88], %rd4;
        cvt.u64.u32 %rd5, %r15;
        st.global.u64 [%out+96], %rd5;
        cvt.u64.s32 %rd6, %r15;
        st.global.u64 [%out+104], %rd6;
        cvt.s64.u32 %rd7, %r15;
        st.global.u64 [%out+112], %rd7;
        cvt.sat.u16.s32 %rs7, %r8;
        st.global.u16 [%out+120], %rs7;
        ",
        &[
            (0x2345, "cvt.u16.u32 truncates"),
            (0xFFFF_8000, "cvt.s32.s16 sign-extends"),
            (0x8000, "cvt.u32.u16 zero-extends"),
            (0xFFFF_FF80, "cvt.s32.s8 takes the low byte, sign-extends"),
            (0x80, "cvt.u32.u8"),
            (0, "cvt.sat.u8.s32 -5"),
            (255, "cvt.sat.u8.s32 300"),
            (0xFFFF_FF80, "cvt.sat.s8.s32 -300 = -128"),
            (0x7FFF_FFFF, "cvt.sat.s32.s64 2^40"),
            (0, "cvt.sat.u32.s64 -1"),
            (5, "cvt.u32.u64 truncates"),
            (u64::MAX, "cvt.s64.s32 -1"),
            (0xFFFF_FFFF, "cvt.u64.u32"),
            (u64::MAX, "cvt.u64.s32 extends by the source sign"),
            (0xFFFF_FFFF, "cvt.s64.u32 zero-extends"),
            (300, "cvt.sat.u16.s32 300 fits"),
        ],
    );
}

#[test]
fn cvt_float_to_int_rounding_nan_and_saturation() {
    expect(
        "
        mov.f32 %f1, 0fC0200000;
        cvt.rzi.s32.f32 %r1, %f1;
        st.global.u32 [%out+0], %r1;
        cvt.rni.s32.f32 %r2, %f1;
        st.global.u32 [%out+8], %r2;
        mov.f32 %f2, 0f40600000;
        cvt.rni.s32.f32 %r3, %f2;
        st.global.u32 [%out+16], %r3;
        cvt.rmi.s32.f32 %r4, %f1;
        st.global.u32 [%out+24], %r4;
        cvt.rpi.s32.f32 %r5, %f1;
        st.global.u32 [%out+32], %r5;
        mov.b32 %f3, 0f7FC00000;
        cvt.rzi.s32.f32 %r6, %f3;
        st.global.u32 [%out+40], %r6;
        mov.f32 %f4, 0f4F32D05E;
        cvt.rzi.s32.f32 %r7, %f4;
        st.global.u32 [%out+48], %r7;
        mov.f32 %f5, 0fCF32D05E;
        cvt.rzi.s32.f32 %r8, %f5;
        st.global.u32 [%out+56], %r8;
        mov.f32 %f6, 0fBF800000;
        cvt.rzi.u32.f32 %r9, %f6;
        st.global.u32 [%out+64], %r9;
        mov.f32 %f7, 0f4F9502F9;
        cvt.rzi.u32.f32 %r10, %f7;
        st.global.u32 [%out+72], %r10;
        mov.f32 %f8, 0f5F0AC723;
        cvt.rni.s64.f32 %rd1, %f8;
        st.global.u64 [%out+80], %rd1;
        mov.f64 %fd1, 0dFE37E43C8800759C;
        cvt.rzi.s64.f64 %rd2, %fd1;
        st.global.u64 [%out+88], %rd2;
        mov.f32 %f9, 0f40200000;
        cvt.rni.f32.f32 %f10, %f9;
        st.global.f32 [%out+96], %f10;
        cvt.rzi.f32.f32 %f11, %f1;
        st.global.f32 [%out+104], %f11;
        ",
        &[
            (0xFFFF_FFFE, "cvt.rzi.s32.f32 -2.5 = -2"),
            (0xFFFF_FFFE, "cvt.rni.s32.f32 -2.5 = -2 (ties to even)"),
            (4, "cvt.rni.s32.f32 3.5 = 4"),
            (0xFFFF_FFFD, "cvt.rmi.s32.f32 -2.5 = -3"),
            (0xFFFF_FFFE, "cvt.rpi.s32.f32 -2.5 = -2"),
            (0, "cvt.rzi.s32.f32 NaN = 0"),
            (0x7FFF_FFFF, "cvt.rzi.s32.f32 3e9 saturates"),
            (0x8000_0000, "cvt.rzi.s32.f32 -3e9 saturates"),
            (0, "cvt.rzi.u32.f32 -1 saturates to 0"),
            (0xFFFF_FFFF, "cvt.rzi.u32.f32 5e9 saturates"),
            (0x7FFF_FFFF_FFFF_FFFF, "cvt.rni.s64.f32 1e19 saturates"),
            (0x8000_0000_0000_0000, "cvt.rzi.s64.f64 -1e300 saturates"),
            (f32w(2.0), "cvt.rni.f32.f32 2.5 = 2.0"),
            (f32w(-2.0), "cvt.rzi.f32.f32 -2.5 = -2.0"),
        ],
    );
}

#[test]
fn cvt_int_to_float_rounding() {
    expect(
        "
        mov.u64 %rd1, 0xFFFFFFFFFFFFFFFF;
        cvt.rn.f32.u64 %f1, %rd1;
        st.global.f32 [%out+0], %f1;
        mov.u64 %rd2, 0x0100000000000001;
        cvt.rn.f32.u64 %f2, %rd2;
        st.global.f32 [%out+8], %f2;
        mov.u32 %r1, 0xFFFFFFFF;
        cvt.rz.f32.u32 %f3, %r1;
        st.global.f32 [%out+16], %f3;
        cvt.rn.f32.u32 %f4, %r1;
        st.global.f32 [%out+24], %f4;
        mov.u32 %r2, -16777217;
        cvt.rn.f32.s32 %f5, %r2;
        st.global.f32 [%out+32], %f5;
        mov.u32 %r3, 16777219;
        cvt.rn.f32.s32 %f6, %r3;
        st.global.f32 [%out+40], %f6;
        mov.u32 %r4, 16777217;
        cvt.rm.f32.s32 %f7, %r4;
        st.global.f32 [%out+48], %f7;
        cvt.rp.f32.s32 %f8, %r4;
        st.global.f32 [%out+56], %f8;
        mov.u64 %rd3, -3;
        cvt.rn.f64.s64 %fd1, %rd3;
        st.global.f64 [%out+64], %fd1;
        cvt.rn.f32.s32 %f9, %r1;
        st.global.f32 [%out+72], %f9;
        ",
        &[
            (0x5F80_0000, "cvt.rn.f32.u64 max = 2^64"),
            (0x5B80_0000, "cvt.rn.f32.u64 2^56+1 = 2^56"),
            (0x4F7F_FFFF, "cvt.rz.f32.u32 max"),
            (0x4F80_0000, "cvt.rn.f32.u32 max = 2^32"),
            (f32w(-16_777_216.0), "cvt.rn.f32.s32 -(2^24+1), tie to even"),
            (f32w(16_777_220.0), "cvt.rn.f32.s32 2^24+3, tie to even"),
            (f32w(16_777_216.0), "cvt.rm.f32.s32 2^24+1"),
            (f32w(16_777_218.0), "cvt.rp.f32.s32 2^24+1"),
            ((-3.0f64).to_bits(), "cvt.rn.f64.s64 -3"),
            (f32w(-1.0), "cvt.rn.f32.s32 -1"),
        ],
    );
}

#[test]
fn cvt_float_to_float_bf16_f16_and_packing() {
    expect(
        "
        mov.b32 %f1, 0f3F808000;
        cvt.rn.bf16.f32 %rs1, %f1;
        st.global.u16 [%out+0], %rs1;
        mov.b32 %f2, 0f3F818000;
        cvt.rn.bf16.f32 %rs2, %f2;
        st.global.u16 [%out+8], %rs2;
        mov.b32 %f3, 0f3F808001;
        cvt.rn.bf16.f32 %rs3, %f3;
        st.global.u16 [%out+16], %rs3;
        mov.b32 %f4, 0f3F80FFFF;
        cvt.rz.bf16.f32 %rs4, %f4;
        st.global.u16 [%out+24], %rs4;
        mov.b16 %rs5, 0x3F81;
        cvt.f32.bf16 %f5, %rs5;
        st.global.f32 [%out+32], %f5;
        mov.f32 %f6, 0f3F800000;
        mov.f32 %f7, 0f40000000;
        cvt.rn.bf16x2.f32 %r1, %f6, %f7;
        st.global.u32 [%out+40], %r1;
        mov.f32 %f8, 0f477FF000;
        cvt.rn.f16.f32 %rs6, %f8;
        st.global.u16 [%out+48], %rs6;
        mov.f32 %f9, 0f477FEF00;
        cvt.rn.f16.f32 %rs7, %f9;
        st.global.u16 [%out+56], %rs7;
        mov.b16 %rs8, 0x3C01;
        cvt.f32.f16 %f10, %rs8;
        st.global.f32 [%out+64], %f10;
        mov.f32 %f11, 0fC0000000;
        cvt.rn.f16x2.f32 %r2, %f6, %f11;
        st.global.u32 [%out+72], %r2;
        mov.f32 %f12, 0fBF800000;
        cvt.rn.relu.bf16.f32 %rs9, %f12;
        st.global.u16 [%out+80], %rs9;
        mov.f64 %fd1, 0d3FF0000010000000;
        cvt.rn.f32.f64 %f13, %fd1;
        st.global.f32 [%out+88], %f13;
        mov.f64 %fd2, 0d3FF0000010001000;
        cvt.rn.f32.f64 %f14, %fd2;
        st.global.f32 [%out+96], %f14;
        mov.f64 %fd3, 0d3FFFFFFFFFF920C8;
        cvt.rz.f32.f64 %f15, %fd3;
        st.global.f32 [%out+104], %f15;
        mov.f32 %f16, 0f3FC00000;
        cvt.f64.f32 %fd4, %f16;
        st.global.f64 [%out+112], %fd4;
        ",
        &[
            (0x3F80, "cvt.rn.bf16.f32 tie rounds to even (down)"),
            (0x3F82, "cvt.rn.bf16.f32 tie rounds to even (up)"),
            (0x3F81, "cvt.rn.bf16.f32 above the tie"),
            (0x3F80, "cvt.rz.bf16.f32 truncates"),
            (0x3F81_0000, "cvt.f32.bf16 is exact"),
            (
                0x3F80_4000,
                "cvt.rn.bf16x2.f32 d, a, b: a in the upper half",
            ),
            (0x7C00, "cvt.rn.f16.f32 65520 overflows to inf"),
            (0x7BFF, "cvt.rn.f16.f32 65519 = 65504"),
            (0x3F80_2000, "cvt.f32.f16 1.0009765625"),
            (0x3C00_C000, "cvt.rn.f16x2.f32 {1.0, -2.0}"),
            (0, "cvt.rn.relu.bf16.f32 -1 = 0"),
            (f32w(1.0), "cvt.rn.f32.f64 tie to even"),
            (0x3F80_0001, "cvt.rn.f32.f64 above the tie"),
            (0x3FFF_FFFF, "cvt.rz.f32.f64 1.9999999999"),
            (1.5f64.to_bits(), "cvt.f64.f32"),
        ],
    );
}

#[test]
fn cvt_bf16_of_nan_is_a_nan() {
    let got = run(
        "",
        "
        mov.b32 %f1, 0f7FC00001;
        cvt.rn.bf16.f32 %rs1, %f1;
        st.global.u16 [%out+0], %rs1;
        mov.b32 %f2, 0fFF800000;
        cvt.rn.bf16.f32 %rs2, %f2;
        st.global.u16 [%out+8], %rs2;
        ",
        2,
    );
    let nan = half::bf16::from_bits(got[0] as u16);
    assert!(nan.is_nan(), "{:#x}", got[0]);
    assert_eq!(got[1], 0xFF80, "-inf stays -inf");
}

// ---- moves, vectors, parameters -------------------------------------------------------------------

#[test]
fn mov_pack_and_unpack() {
    expect(
        "
        mov.u16 %rs1, 0x1111;
        mov.u16 %rs2, 0x2222;
        mov.b32 %r1, {%rs1, %rs2};
        st.global.u32 [%out+0], %r1;
        mov.u32 %r2, 0xAAAABBBB;
        mov.b32 {%rs3, %rs4}, %r2;
        st.global.u16 [%out+8], %rs3;
        st.global.u16 [%out+16], %rs4;
        mov.u32 %r3, 1;
        mov.u32 %r4, 2;
        mov.b64 %rd1, {%r3, %r4};
        st.global.u64 [%out+24], %rd1;
        mov.u64 %rd2, 0x1234567890ABCDEF;
        mov.b64 {%r5, %r6}, %rd2;
        st.global.u32 [%out+32], %r5;
        st.global.u32 [%out+40], %r6;
        mov.b32 {_, %rs5}, %r2;
        st.global.u16 [%out+48], %rs5;
        mov.b32 %f1, 0f3F800000;
        mov.b32 %r7, %f1;
        st.global.u32 [%out+56], %r7;
        ",
        &[
            (0x2222_1111, "pack: first element in the low half"),
            (0xBBBB, "unpack low"),
            (0xAAAA, "unpack high"),
            (0x0000_0002_0000_0001, "mov.b64 pack"),
            (0x90AB_CDEF, "mov.b64 unpack low"),
            (0x1234_5678, "mov.b64 unpack high"),
            (0xAAAA, "unpack with a sink"),
            (0x3F80_0000, "mov.b32 of a float register"),
        ],
    );
}

#[test]
fn ld_st_vectors_and_narrow_widths() {
    let got = run(
        "",
        "
        mov.u32 %r1, 1;
        mov.u32 %r2, 2;
        st.global.v2.u32 [%out+0], {%r1, %r2};
        mov.u32 %r3, 3;
        mov.u32 %r4, 4;
        st.global.v4.u32 [%out+16], {%r1, %r2, %r3, %r4};
        ld.global.v4.u32 {%r5, %r6, %r7, %r8}, [%out+16];
        st.global.v4.u32 [%out+32], {%r8, %r7, %r6, %r5};
        ld.global.v2.u64 {%rd1, %rd2}, [%out+16];
        st.global.u64 [%out+48], %rd2;
        st.global.u64 [%out+56], %rd1;
        mov.u16 %rs1, 0xFF;
        st.global.u8 [%out+64], %rs1;
        ld.global.s8 %r9, [%out+64];
        st.global.u32 [%out+72], %r9;
        ld.global.u8 %r10, [%out+64];
        st.global.u32 [%out+80], %r10;
        mov.f32 %f1, 0f3F800000;
        mov.f32 %f2, 0fBF800000;
        st.global.v2.f32 [%out+88], {%f1, %f2};
        ld.global.v2.f32 {%f3, %f4}, [%out+88];
        add.f32 %f5, %f3, %f4;
        st.global.f32 [%out+96], %f5;
        ld.global.v4.u16 {%rs2, %rs3, %rs4, %rs5}, [%out+16];
        st.global.u16 [%out+104], %rs4;
        ",
        14,
    );
    assert_eq!(got[0], 0x0000_0002_0000_0001, "st.v2.u32");
    assert_eq!(got[2], 0x0000_0002_0000_0001, "st.v4.u32 lanes 0-1");
    assert_eq!(got[3], 0x0000_0004_0000_0003, "st.v4.u32 lanes 2-3");
    assert_eq!(got[4], 0x0000_0003_0000_0004, "ld.v4 then reversed st.v4");
    assert_eq!(got[5], 0x0000_0001_0000_0002);
    assert_eq!(got[6], 0x0000_0004_0000_0003, "ld.v2.u64 second element");
    assert_eq!(got[7], 0x0000_0002_0000_0001, "ld.v2.u64 first element");
    assert_eq!(got[8], 0xFF, "st.u8 writes one byte");
    assert_eq!(got[9], 0xFFFF_FFFF, "ld.s8 sign-extends");
    assert_eq!(got[10], 0xFF, "ld.u8 zero-extends");
    assert_eq!(got[11], (u64::from(0xBF80_0000u32) << 32) | 0x3F80_0000);
    assert_eq!(got[12], 0, "1 + -1");
    assert_eq!(got[13], 2, "ld.v4.u16 lane 2 (low half of the second u32)");
}

#[test]
fn ld_param_scalars_arrays_and_vectors() {
    let src = format!(
        "{HEADER}.visible .entry t(.param .u64 out_param, .param .u32 a, .param .u64 b, \
         .param .f32 c, .param .align 8 .b8 arr[16])\n{{\n{REGS}\t.reg .b64 %out;\n\
         ld.param.u64 %out, [out_param];\n\
         ld.param.u32 %r1, [a];\n\
         ld.param.u64 %rd1, [b];\n\
         ld.param.f32 %f1, [c];\n\
         ld.param.u32 %r2, [arr+4];\n\
         ld.param.v2.u32 {{%r3, %r4}}, [arr+8];\n\
         st.global.u32 [%out+0], %r1;\n\
         st.global.u64 [%out+8], %rd1;\n\
         st.global.f32 [%out+16], %f1;\n\
         st.global.u32 [%out+24], %r2;\n\
         st.global.u32 [%out+32], %r3;\n\
         st.global.u32 [%out+40], %r4;\n\
         ret;\n}}\n"
    );
    let dev = Dev::new(&src);
    let out = dev.zeroed(8 * 6);
    // C layout: out @0, a @8, b @16, c @24, arr (align 8) @32..48.
    let mut p = Params::new()
        .ptr(out)
        .u32(0xA)
        .ptr(0x1122_3344_5566_7788)
        .f32(1.5)
        .align(8);
    for v in [0u32, 0xB0, 0xC0, 0xD0] {
        p = p.u32(v);
    }
    assert_eq!(p.bytes().len(), 48);
    dev.launch("t", &p, &cfg1(1, 1, 0)).unwrap();
    assert_eq!(
        dev.read_u64(out, 6),
        vec![0xA, 0x1122_3344_5566_7788, f32w(1.5), 0xB0, 0xC0, 0xD0]
    );
}

// ---- control flow -------------------------------------------------------------------------------

#[test]
fn predicated_instructions_and_loops() {
    expect(
        "
        mov.u32 %r1, 0;
        mov.u32 %r2, 1;
    LOOP:
        add.u32 %r1, %r1, %r2;
        add.u32 %r2, %r2, 1;
        setp.le.u32 %p1, %r2, 10;
        @%p1 bra LOOP;
        st.global.u32 [%out+0], %r1;
        setp.eq.u32 %p2, %r1, 55;
        mov.u32 %r3, 7;
        @!%p2 mov.u32 %r3, 8;
        @%p2 add.u32 %r3, %r3, 100;
        st.global.u32 [%out+8], %r3;
        mov.u32 %r4, 1;
        @!%p2 st.global.u32 [%out+16], %r4;
        @%p2 bra.uni SKIP;
        st.global.u32 [%out+24], %r4;
    SKIP:
        mov.u32 %r5, 0;
        mov.u32 %r6, 5;
    DOWN:
        add.u32 %r5, %r5, 2;
        sub.u32 %r6, %r6, 1;
        setp.ne.u32 %p3, %r6, 0;
        @%p3 bra DOWN;
        st.global.u32 [%out+32], %r5;
        ",
        &[
            (55, "loop sum 1..10"),
            (107, "guard true executes, @! false skips"),
            (0, "@!%p store skipped"),
            (0, "bra.uni skipped the store"),
            (10, "count-down loop"),
        ],
    );
}

#[test]
fn special_registers_per_thread() {
    let src = format!(
        "{HEADER}.visible .entry t(.param .u64 out_param)\n{{\n{REGS}\t.reg .b64 %out;\n\
         ld.param.u64 %out, [out_param];\n\
         mov.u32 %r1, %tid.x;\n mov.u32 %r2, %tid.y;\n mov.u32 %r3, %ntid.x;\n\
         mov.u32 %r4, %ctaid.x;\n mov.u32 %r5, %nctaid.x;\n mov.u32 %r6, %laneid;\n\
         mov.u32 %r7, %warpid;\n mov.u32 %r8, %lanemask_lt;\n mov.u32 %r9, %ntid.y;\n\
         mad.lo.u32 %r10, %r2, %r3, %r1;\n\
         mul.lo.u32 %r11, %r3, %r9;\n\
         mad.lo.u32 %r12, %r4, %r11, %r10;\n\
         mul.wide.u32 %rd1, %r12, 64;\n add.s64 %rd2, %out, %rd1;\n\
         st.global.v4.u32 [%rd2], {{%r1, %r2, %r3, %r4}};\n\
         st.global.v4.u32 [%rd2+16], {{%r5, %r6, %r7, %r8}};\n\
         ret;\n}}\n"
    );
    let dev = Dev::new(&src);
    let (bx, by, grid) = (20u32, 3u32, 2u32);
    let n = (bx * by * grid) as usize;
    let out = dev.zeroed(64 * n as u64);
    let c = LaunchConfig {
        grid: [grid, 1, 1],
        block: [bx, by, 1],
        seed: 3,
        ..LaunchConfig::default()
    };
    dev.launch("t", &Params::new().ptr(out), &c).unwrap();
    let words = dev.read_bytes(out, 64 * n);
    for g in 0..n {
        let w = |k: usize| {
            u32::from_le_bytes(
                words[64 * g + 4 * k..64 * g + 4 * k + 4]
                    .try_into()
                    .unwrap(),
            )
        };
        let linear = g as u32 % (bx * by);
        let lane = linear % 32;
        assert_eq!(w(0), linear % bx, "tid.x of {g}");
        assert_eq!(w(1), linear / bx, "tid.y of {g}");
        assert_eq!(w(2), bx, "ntid.x");
        assert_eq!(w(3), g as u32 / (bx * by), "ctaid.x");
        assert_eq!(w(4), grid, "nctaid.x");
        assert_eq!(w(5), lane, "laneid of {g}");
        assert_eq!(w(6), linear / 32, "warpid of {g}");
        assert_eq!(w(7), (1u32 << lane) - 1, "lanemask_lt of {g}");
    }
}

// ---- floating point ------------------------------------------------------------------------------

#[test]
fn f32_add_mul_fma_rounding_modes() {
    // a = 1, b = 1.5 * 2^-24: the exact sum lies between 1 and 1 + 2^-23, above the midpoint.
    // c = 1 + 2^-23: c*c = 1 + 2^-22 + 2^-46 exactly.
    expect(
        "
        mov.f32 %f1, 0f3F800000;
        mov.b32 %f2, 0f33C00000;
        add.rn.f32 %f3, %f1, %f2;
        add.rz.f32 %f4, %f1, %f2;
        add.rm.f32 %f5, %f1, %f2;
        add.rp.f32 %f6, %f1, %f2;
        add.f32 %f7, %f1, %f2;
        st.global.f32 [%out+0], %f3;
        st.global.f32 [%out+8], %f4;
        st.global.f32 [%out+16], %f5;
        st.global.f32 [%out+24], %f6;
        st.global.f32 [%out+32], %f7;
        neg.f32 %f8, %f1;
        sub.rz.f32 %f9, %f8, %f2;
        sub.rm.f32 %f10, %f8, %f2;
        st.global.f32 [%out+40], %f9;
        st.global.f32 [%out+48], %f10;
        mov.b32 %f11, 0f3F800001;
        mul.rn.f32 %f12, %f11, %f11;
        mul.rz.f32 %f13, %f11, %f11;
        mul.rp.f32 %f14, %f11, %f11;
        st.global.f32 [%out+56], %f12;
        st.global.f32 [%out+64], %f13;
        st.global.f32 [%out+72], %f14;
        mov.b32 %f15, 0fBF800002;
        fma.rn.f32 %f16, %f11, %f11, %f15;
        st.global.f32 [%out+80], %f16;
        mul.rn.f32 %f17, %f11, %f11;
        add.rn.f32 %f18, %f17, %f15;
        st.global.f32 [%out+88], %f18;
        fma.rz.f32 %f19, %f11, %f11, %f1;
        fma.rp.f32 %f20, %f11, %f11, %f1;
        st.global.f32 [%out+96], %f19;
        st.global.f32 [%out+104], %f20;
        mov.f32 %f21, 0f40400000;
        div.rn.f32 %f22, %f1, %f21;
        div.rz.f32 %f23, %f1, %f21;
        st.global.f32 [%out+112], %f22;
        st.global.f32 [%out+120], %f23;
        mov.f32 %f24, 0f40000000;
        sqrt.rn.f32 %f25, %f24;
        st.global.f32 [%out+128], %f25;
        rcp.rn.f32 %f26, %f21;
        st.global.f32 [%out+136], %f26;
        ",
        &[
            (0x3F80_0001, "add.rn rounds up"),
            (0x3F80_0000, "add.rz truncates"),
            (0x3F80_0000, "add.rm rounds down"),
            (0x3F80_0001, "add.rp rounds up"),
            (0x3F80_0001, "add.f32 defaults to rn"),
            (0xBF80_0000, "sub.rz toward zero"),
            (0xBF80_0001, "sub.rm toward -inf"),
            (0x3F80_0002, "mul.rn"),
            (0x3F80_0002, "mul.rz"),
            (0x3F80_0003, "mul.rp"),
            (0x2880_0000, "fma.rn keeps the 2^-46 the separate mul loses"),
            (0, "mul.rn then add.rn"),
            (0x4000_0001, "fma.rz 1 + c*c"),
            (0x4000_0002, "fma.rp 1 + c*c"),
            (0x3EAA_AAAB, "div.rn 1/3"),
            (0x3EAA_AAAA, "div.rz 1/3"),
            (0x3FB5_04F3, "sqrt.rn 2"),
            (0x3EAA_AAAB, "rcp.rn 3"),
        ],
    );
}

#[test]
fn f32_ftz_sat_abs_neg_copysign() {
    expect(
        "
        mov.b32 %f1, 0f00000001;
        mov.f32 %f2, 0f00000000;
        add.ftz.f32 %f3, %f1, %f2;
        add.f32 %f4, %f1, %f2;
        st.global.f32 [%out+0], %f3;
        st.global.f32 [%out+8], %f4;
        mov.b32 %f5, 0f00800000;
        mov.f32 %f6, 0f3F000000;
        mul.ftz.f32 %f7, %f5, %f6;
        mul.f32 %f8, %f5, %f6;
        st.global.f32 [%out+16], %f7;
        st.global.f32 [%out+24], %f8;
        mov.f32 %f9, 0f3FC00000;
        add.sat.f32 %f10, %f9, %f2;
        st.global.f32 [%out+32], %f10;
        mov.f32 %f11, 0fBF800000;
        add.sat.f32 %f12, %f11, %f2;
        st.global.f32 [%out+40], %f12;
        mov.b32 %f13, 0f7FC00000;
        add.sat.f32 %f14, %f13, %f2;
        st.global.f32 [%out+48], %f14;
        mov.f32 %f15, 0f80000000;
        abs.f32 %f16, %f15;
        st.global.f32 [%out+56], %f16;
        neg.f32 %f17, %f9;
        st.global.f32 [%out+64], %f17;
        mov.f32 %f18, 0f40000000;
        copysign.f32 %f19, %f11, %f18;
        st.global.f32 [%out+72], %f19;
        mov.f64 %fd1, 0d3FF0000000000000;
        mov.f64 %fd2, 0d3C30000000000000;
        add.rz.f64 %fd3, %fd1, %fd2;
        add.rp.f64 %fd4, %fd1, %fd2;
        st.global.f64 [%out+80], %fd3;
        st.global.f64 [%out+88], %fd4;
        fma.rn.f64 %fd5, %fd1, %fd1, %fd2;
        st.global.f64 [%out+96], %fd5;
        ",
        &[
            (0, "add.ftz flushes the subnormal input"),
            (1, "add keeps the subnormal"),
            (0, "mul.ftz flushes the subnormal result"),
            (0x0040_0000, "mul keeps the subnormal result"),
            (f32w(1.0), "add.sat clamps to 1"),
            (0, "add.sat clamps to +0"),
            (0, "add.sat of NaN is +0"),
            (0, "abs.f32 -0 = +0"),
            (f32w(-1.5), "neg.f32"),
            (
                f32w(-2.0),
                "copysign.f32 d, a, b: sign of a, magnitude of b",
            ),
            (1.0f64.to_bits(), "add.rz.f64 1 + 2^-60"),
            ((1.0f64 + f64::EPSILON).to_bits(), "add.rp.f64 1 + 2^-60"),
            (1.0f64.to_bits(), "fma.rn.f64 1*1 + 2^-60"),
        ],
    );
}

#[test]
fn f32_min_max_with_nan() {
    let got = run(
        "",
        "
        mov.b32 %f1, 0f7FC00000;
        mov.f32 %f2, 0f3F800000;
        min.f32 %f3, %f1, %f2;
        max.f32 %f4, %f2, %f1;
        min.f32 %f5, %f1, %f1;
        st.global.f32 [%out+0], %f3;
        st.global.f32 [%out+8], %f4;
        st.global.f32 [%out+16], %f5;
        mov.f32 %f6, 0fC0000000;
        min.f32 %f7, %f2, %f6;
        max.f32 %f8, %f2, %f6;
        st.global.f32 [%out+24], %f7;
        st.global.f32 [%out+32], %f8;
        mov.f64 %fd1, 0d7FF8000000000000;
        mov.f64 %fd2, 0d4000000000000000;
        min.f64 %fd3, %fd1, %fd2;
        st.global.f64 [%out+40], %fd3;
        ",
        6,
    );
    assert_eq!(got[0], f32w(1.0), "min(NaN, 1) = 1");
    assert_eq!(got[1], f32w(1.0), "max(1, NaN) = 1");
    assert!(wf32(got[2]).is_nan(), "min(NaN, NaN) is NaN: {:#x}", got[2]);
    assert_eq!(got[3], f32w(-2.0));
    assert_eq!(got[4], f32w(1.0));
    assert_eq!(got[5], 2.0f64.to_bits(), "min.f64(NaN, 2) = 2");
}

#[test]
fn f32_min_max_nan_modifier_propagates_nan() {
    let got = run(
        "",
        "
        mov.b32 %f1, 0f7FC00000;
        mov.f32 %f2, 0f3F800000;
        min.NaN.f32 %f3, %f1, %f2;
        max.NaN.f32 %f4, %f2, %f1;
        st.global.f32 [%out+0], %f3;
        st.global.f32 [%out+8], %f4;
        ",
        2,
    );
    assert!(wf32(got[0]).is_nan(), "min.NaN(NaN, 1): {:#x}", got[0]);
    assert!(wf32(got[1]).is_nan(), "max.NaN(1, NaN): {:#x}", got[1]);
}

#[test]
fn approximate_functions_within_tolerance() {
    let got = run(
        "",
        "
        mov.f32 %f1, 0f40400000;
        ex2.approx.f32 %f2, %f1;
        st.global.f32 [%out+0], %f2;
        mov.f32 %f3, 0fBF800000;
        ex2.approx.ftz.f32 %f4, %f3;
        st.global.f32 [%out+8], %f4;
        mov.f32 %f5, 0f41000000;
        lg2.approx.f32 %f6, %f5;
        st.global.f32 [%out+16], %f6;
        rcp.approx.f32 %f7, %f1;
        st.global.f32 [%out+24], %f7;
        mov.f32 %f8, 0f40800000;
        rsqrt.approx.f32 %f9, %f8;
        st.global.f32 [%out+32], %f9;
        mov.f32 %f10, 0f3F000000;
        tanh.approx.f32 %f11, %f10;
        st.global.f32 [%out+40], %f11;
        mov.f32 %f12, 0f41200000;
        tanh.approx.f32 %f13, %f12;
        st.global.f32 [%out+48], %f13;
        mov.f32 %f14, 0f3F800000;
        sin.approx.f32 %f15, %f14;
        cos.approx.f32 %f16, %f14;
        st.global.f32 [%out+56], %f15;
        st.global.f32 [%out+64], %f16;
        div.approx.f32 %f17, %f14, %f1;
        div.full.f32 %f18, %f14, %f1;
        st.global.f32 [%out+72], %f17;
        st.global.f32 [%out+80], %f18;
        mov.f32 %f19, 0f40000000;
        sqrt.approx.f32 %f20, %f19;
        st.global.f32 [%out+88], %f20;
        ",
        12,
    );
    let check = |k: usize, want: f64, rel: f64, what: &str| {
        let g = f64::from(wf32(got[k]));
        assert!(
            (g - want).abs() <= rel * want.abs(),
            "{what}: got {g}, want {want} (rel {rel})"
        );
    };
    let ulp = f64::from(f32::EPSILON);
    check(0, 8.0, 2.0 * ulp, "ex2.approx(3)");
    check(1, 0.5, 2.0 * ulp, "ex2.approx.ftz(-1)");
    check(2, 3.0, 2.0 * ulp, "lg2.approx(8)");
    check(3, 1.0 / 3.0, ulp, "rcp.approx(3)");
    check(4, 0.5, 2.0 * ulp, "rsqrt.approx(4)");
    check(5, 0.5f64.tanh(), 2f64.powi(-10), "tanh.approx(0.5)");
    check(6, 10f64.tanh(), 2f64.powi(-10), "tanh.approx(10)");
    assert!(
        (f64::from(wf32(got[7])) - 1f64.sin()).abs() < 2f64.powi(-20),
        "sin.approx(1)"
    );
    assert!(
        (f64::from(wf32(got[8])) - 1f64.cos()).abs() < 2f64.powi(-20),
        "cos.approx(1)"
    );
    check(9, 1.0 / 3.0, 2.0 * ulp, "div.approx 1/3");
    check(10, 1.0 / 3.0, 2.0 * ulp, "div.full 1/3");
    check(11, 2f64.sqrt(), 2.0 * ulp, "sqrt.approx(2)");
}

#[test]
fn half_precision_packed_fma() {
    // {lo, hi}: a = {1.0, 2.0}, b = {3.0, 0.5}, c = {0.5, 0.25} -> {3.5, 1.25}.
    expect(
        "
        mov.b32 %r1, 0x40003F80;
        mov.b32 %r2, 0x3F004040;
        mov.b32 %r3, 0x3E803F00;
        fma.rn.bf16x2 %r4, %r1, %r2, %r3;
        st.global.u32 [%out+0], %r4;
        mov.b32 %r5, 0x40003C00;
        mov.b32 %r6, 0x38004200;
        mov.b32 %r7, 0x34003800;
        fma.rn.f16x2 %r8, %r5, %r6, %r7;
        st.global.u32 [%out+8], %r8;
        mov.b16 %rs1, 0x3C00;
        mov.b16 %rs2, 0x4000;
        mul.rn.f16 %rs3, %rs1, %rs2;
        st.global.u16 [%out+16], %rs3;
        ",
        &[
            (0x3FA0_4060, "fma.rn.bf16x2"),
            (0x3D00_4300, "fma.rn.f16x2"),
            (0x4000, "mul.rn.f16 1*2"),
        ],
    );
}

// ---- warp collectives and named barriers (several threads) ----------------------------------------

/// Runs `body` on one CTA of `threads` threads (seed `seed`) with a zeroed output buffer.
fn run_threads(decls: &str, body: &str, threads: u32, words: usize, seed: u64) -> Vec<u64> {
    let src = kernel(decls, body);
    let dev = Dev::new(&src);
    let out = dev.zeroed(8 * words as u64);
    dev.launch("t", &Params::new().ptr(out), &cfg1(1, threads, seed))
        .unwrap_or_else(|e| panic!("seed {seed}: {e}\n--- kernel ---\n{src}"));
    dev.read_u64(out, words)
}

#[test]
fn vote_redux_and_partial_mask_shuffle() {
    // Lane l writes 8 words at out + 64 l.
    let body = "
        mov.u32 %r1, %laneid;
        mul.wide.u32 %rd1, %r1, 64;
        add.s64 %rd2, %out, %rd1;
        setp.lt.u32 %p1, %r1, 32;
        vote.sync.uni.pred %p2, %p1, 0xffffffff;
        selp.u32 %r2, 1, 0, %p2;
        st.global.u32 [%rd2+0], %r2;
        setp.lt.u32 %p3, %r1, 5;
        vote.sync.uni.pred %p4, %p3, 0xffffffff;
        selp.u32 %r3, 1, 0, %p4;
        st.global.u32 [%rd2+8], %r3;
        vote.sync.ballot.b32 %r4, %p3, 0xffffffff;
        st.global.u32 [%rd2+16], %r4;
        mov.u32 %r5, 1;
        shl.b32 %r6, %r5, %r1;
        or.b32 %r7, %r6, 0x80000000;
        redux.sync.and.b32 %r8, %r7, 0xffffffff;
        st.global.u32 [%rd2+24], %r8;
        redux.sync.or.b32 %r9, %r6, 0xffffffff;
        st.global.u32 [%rd2+32], %r9;
        redux.sync.xor.b32 %r10, %r7, 0xffffffff;
        st.global.u32 [%rd2+40], %r10;
        sub.u32 %r11, 10, %r1;
        redux.sync.max.s32 %r12, %r11, 0xffffffff;
        redux.sync.min.u32 %r13, %r11, 0xffffffff;
        mov.b64 %rd3, {%r12, %r13};
        st.global.u64 [%rd2+48], %rd3;
        setp.lt.u32 %p5, %r1, 16;
        @!%p5 bra SKIP;
        shfl.sync.bfly.b32 %r14, %r1, 1, 0x1f, 0x0000ffff;
        st.global.u32 [%rd2+56], %r14;
    SKIP:
        ";
    let xor_all = (0..32u32).fold(0u32, |acc, l| acc ^ ((1 << l) | 0x8000_0000));
    for seed in 0..4 {
        let got = run_threads("", body, 32, 8 * 32, seed);
        for l in 0..32usize {
            let w = |k: usize| got[8 * l + k];
            assert_eq!(w(0), 1, "vote.uni of a uniform true, lane {l}");
            assert_eq!(w(1), 0, "vote.uni of a non-uniform predicate, lane {l}");
            assert_eq!(w(2), 0x1F, "ballot of lane < 5, lane {l}");
            assert_eq!(w(3), 0x8000_0000, "redux.and, lane {l}");
            assert_eq!(w(4), 0xFFFF_FFFF, "redux.or, lane {l}");
            assert_eq!(w(5), u64::from(xor_all), "redux.xor, lane {l}");
            // 10 - l: max.s32 = 10 (lane 0); min.u32 = 0 at lane 10.
            assert_eq!(w(6), 10, "redux.max.s32 / redux.min.u32, lane {l}");
            let want = if l < 16 { (l ^ 1) as u64 } else { 0 };
            assert_eq!(w(7), want, "shfl.bfly among lanes 0-15, lane {l}");
        }
    }
}

/// `if (lane < 16) x = __shfl_xor_sync(0xffff, x, 1); __syncwarp();` is valid CUDA: the
/// half-warp shuffle completes among its 16 members, then all 32 lanes meet at the warp barrier.
#[test]
fn half_warp_shuffle_then_syncwarp_is_valid() {
    let body = "
        mov.u32 %r1, %laneid;
        mul.wide.u32 %rd1, %r1, 8;
        add.s64 %rd2, %out, %rd1;
        mov.u32 %r2, %r1;
        setp.lt.u32 %p1, %r1, 16;
        @!%p1 bra SKIP;
        shfl.sync.bfly.b32 %r2, %r1, 1, 0x1f, 0x0000ffff;
    SKIP:
        bar.warp.sync 0xffffffff;
        st.global.u32 [%rd2], %r2;
        ";
    for seed in 0..8 {
        let got = run_threads("", body, 32, 32, seed);
        let want: Vec<u64> = (0..32u64).map(|l| if l < 16 { l ^ 1 } else { l }).collect();
        assert_eq!(got, want, "seed {seed}");
    }
}

#[test]
fn named_barrier_producer_consumer() {
    // Warp 0 fills sm and arrives at barrier 1; warp 1 waits there, then copies sm out.
    let body = "
        mov.u32 %r1, %tid.x;
        mov.u32 %r4, sm;
        setp.lt.u32 %p1, %r1, 32;
        @!%p1 bra CONSUMER;
        mul.lo.u32 %r2, %r1, 3;
        shl.b32 %r3, %r1, 2;
        add.u32 %r5, %r4, %r3;
        st.shared.u32 [%r5], %r2;
        bar.arrive 1, 64;
        bra.uni DONE;
    CONSUMER:
        bar.sync 1, 64;
        sub.u32 %r6, %r1, 32;
        shl.b32 %r7, %r6, 2;
        add.u32 %r8, %r4, %r7;
        ld.shared.u32 %r9, [%r8];
        mul.wide.u32 %rd1, %r6, 8;
        add.s64 %rd2, %out, %rd1;
        st.global.u32 [%rd2], %r9;
    DONE:
        ";
    for seed in 0..8 {
        let got = run_threads("\t.shared .align 4 .b8 sm[128];\n", body, 64, 32, seed);
        let want: Vec<u64> = (0..32).map(|k| 3 * k).collect();
        assert_eq!(got, want, "seed {seed}");
    }
}

/// 32 lanes store words 0..128 of `tile` (word w holds w) with four conflict-free scalar stores,
/// then ldmatrix.x4 with lane l addressing row l at tile + 16 l (rows are contiguous: every
/// 8-row phase covers 128 consecutive bytes, all 32 banks once). Lane t gets register
/// j = word 4 (8 j + t / 4) + t % 4 = 32 j + t.
const LDMATRIX_BODY: &str = "
        mov.u32 %r1, %laneid;
        mov.u32 %r2, tile;
        shl.b32 %r3, %r1, 2;
        add.u32 %r4, %r2, %r3;
        add.u32 %r10, %r1, 32;
        add.u32 %r11, %r1, 64;
        add.u32 %r12, %r1, 96;
        st.shared.u32 [%r4], %r1;
        st.shared.u32 [%r4+128], %r10;
        st.shared.u32 [%r4+256], %r11;
        st.shared.u32 [%r4+384], %r12;
        bar.warp.sync 0xffffffff;
        shl.b32 %r5, %r1, 4;
        add.u32 %r6, %r2, %r5;
        ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r20, %r21, %r22, %r23}, [%r6];
        mul.wide.u32 %rd1, %r1, 16;
        add.s64 %rd2, %out, %rd1;
        st.global.v4.u32 [%rd2], {%r20, %r21, %r22, %r23};
        ";

const TILE: &str = "\t.shared .align 16 .b8 tile[512];\n";

#[test]
fn ldmatrix_x4_fragment_layout() {
    let got = run_threads(TILE, LDMATRIX_BODY, 32, 64, 0);
    for t in 0..32u64 {
        for j in 0..4u64 {
            let word = got[(2 * t + j / 2) as usize] >> (32 * (j % 2)) & 0xFFFF_FFFF;
            assert_eq!(word, 32 * j + t, "lane {t} register {j}");
        }
    }
}

/// The metrics doc counts each ldmatrix phase (8 rows) as a shared request; with rows laid out
/// contiguously every phase is one conflict-free wavefront, as are the four scalar stores.
#[test]
fn ldmatrix_x4_conflict_free_layout_has_no_bank_conflicts() {
    let src = kernel(TILE, LDMATRIX_BODY);
    let dev = Dev::new(&src);
    let out = dev.zeroed(8 * 64);
    let m = dev
        .launch("t", &Params::new().ptr(out), &cfg1(1, 32, 0))
        .unwrap();
    assert_eq!(
        (
            m.shared_requests,
            m.shared_wavefronts,
            m.shared_bank_conflicts
        ),
        (8, 8, 0),
        "{m}"
    );
}

// ---- memory spaces and atomics --------------------------------------------------------------------

const SHARED_BUF: &str = "\t.shared .align 16 .b8 buf[64];\n";

#[test]
fn shared_variable_ld_st_and_generic_addressing() {
    expect_with(
        SHARED_BUF,
        "
        mov.u32 %r1, 7;
        st.shared.u32 [buf+4], %r1;
        ld.shared.u32 %r2, [buf+4];
        st.global.u32 [%out+0], %r2;
        mov.u32 %r3, buf;
        mov.u32 %r4, 11;
        mov.u32 %r5, 12;
        mov.u32 %r6, 13;
        mov.u32 %r7, 14;
        st.shared.v4.u32 [%r3+16], {%r4, %r5, %r6, %r7};
        ld.shared.v2.u64 {%rd1, %rd2}, [buf+16];
        st.global.u64 [%out+8], %rd1;
        st.global.u64 [%out+16], %rd2;
        mov.u64 %rd3, buf;
        cvta.shared.u64 %rd4, %rd3;
        ld.u32 %r8, [%rd4+4];
        st.global.u32 [%out+24], %r8;
        mov.u32 %r9, 99;
        st.u32 [%rd4+8], %r9;
        ld.shared.u32 %r10, [buf+8];
        st.global.u32 [%out+32], %r10;
        cvta.to.shared.u64 %rd5, %rd4;
        sub.s64 %rd6, %rd5, %rd3;
        st.global.u64 [%out+40], %rd6;
        ld.u32 %r11, [%out+0];
        st.global.u32 [%out+48], %r11;
        ld.shared.u32 %r12, [%r3+20];
        st.global.u32 [%out+56], %r12;
        ",
        &[
            (7, "st/ld.shared with a symbol"),
            (
                0x0000_000C_0000_000B,
                "st.shared.v4 then ld.shared.v2.u64 (lo)",
            ),
            (0x0000_000E_0000_000D, "ld.shared.v2.u64 (hi)"),
            (7, "generic ld through cvta.shared"),
            (99, "generic st lands in shared memory"),
            (0, "cvta.to.shared undoes cvta.shared"),
            (7, "generic ld of a global address"),
            (12, "ld.shared through a register"),
        ],
    );
}

#[test]
fn shared_read_before_write_is_reported() {
    let err = try_run(
        SHARED_BUF,
        "
        ld.shared.u32 %r1, [buf+60];
        st.global.u32 [%out+0], %r1;
        ",
        1,
    )
    .unwrap_err();
    match &err {
        EmuError::UninitializedRead {
            state,
            space,
            address,
            site,
            ..
        } => {
            assert_eq!(*state, "uninitialised");
            assert_eq!(*space, "shared");
            assert_eq!(*address, 60);
            assert_eq!(site.instruction, "ld.shared.u32");
        }
        other => panic!("expected UninitializedRead, got {other}"),
    }
}

#[test]
fn shared_access_past_the_end_is_reported() {
    let err = try_run(
        SHARED_BUF,
        "mov.u32 %r1, 1;\nst.shared.u32 [buf+64], %r1;",
        1,
    )
    .unwrap_err();
    match &err {
        EmuError::OutOfBounds {
            space,
            address,
            nearest,
            ..
        } => {
            assert_eq!(*space, "shared");
            assert_eq!(*address, 64);
            assert!(nearest.contains("64 bytes of shared memory"), "{err}");
        }
        other => panic!("expected OutOfBounds, got {other}"),
    }
}

#[test]
fn global_atomics_single_thread() {
    expect(
        "
        mov.u32 %r1, 10;
        st.global.u32 [%out+0], %r1;
        atom.global.add.u32 %r2, [%out+0], 5;
        st.global.u32 [%out+8], %r2;
        atom.global.cas.b32 %r3, [%out+0], 15, 100;
        atom.global.cas.b32 %r4, [%out+0], 15, 200;
        st.global.u32 [%out+16], %r3;
        st.global.u32 [%out+24], %r4;
        atom.global.exch.b32 %r5, [%out+0], 3;
        st.global.u32 [%out+32], %r5;
        atom.global.inc.u32 %r6, [%out+0], 3;
        st.global.u32 [%out+40], %r6;
        ld.global.u32 %r7, [%out+0];
        st.global.u32 [%out+48], %r7;
        atom.global.dec.u32 %r8, [%out+0], 5;
        ld.global.u32 %r9, [%out+0];
        st.global.u32 [%out+56], %r9;
        mov.u32 %r10, -4;
        atom.global.min.s32 %r11, [%out+0], %r10;
        ld.global.u32 %r12, [%out+0];
        st.global.u32 [%out+64], %r12;
        atom.global.max.u32 %r13, [%out+0], 7;
        ld.global.u32 %r14, [%out+0];
        st.global.u32 [%out+72], %r14;
        mov.f32 %f1, 0f3FC00000;
        st.global.f32 [%out+80], %f1;
        atom.global.add.f32 %f2, [%out+80], %f1;
        st.global.f32 [%out+88], %f2;
        mov.u64 %rd1, 0xFFFFFFFF;
        st.global.u64 [%out+96], %rd1;
        atom.global.add.u64 %rd2, [%out+96], 1;
        red.global.add.u32 [%out+104], 9;
        mov.u32 %r15, 0xF0;
        st.global.u32 [%out+112], %r15;
        atom.global.and.b32 %r16, [%out+112], 0x3C;
        atom.global.or.b32 %r17, [%out+112], 0x1;
        atom.global.xor.b32 %r18, [%out+112], 0xFF;
        ",
        &[
            (
                0xFFFF_FFFC,
                "final value after min/max (0xfffffffc is the u32 max)",
            ),
            (10, "atom.add returns the old value"),
            (15, "cas succeeds, returns old"),
            (100, "cas fails, returns current"),
            (100, "exch returns old"),
            (3, "inc returns old"),
            (0, "inc wraps to 0 at the bound (old 3 >= 3)"),
            (5, "dec of 0 gives the bound"),
            (0xFFFF_FFFC, "min.s32 5, -4"),
            (0xFFFF_FFFC, "max.u32 0xfffffffc, 7"),
            (f32w(3.0), "atom.add.f32 result in memory"),
            (f32w(1.5), "atom.add.f32 returns old"),
            (0x1_0000_0000, "atom.add.u64 carries into the high word"),
            (9, "red.add on a zeroed word"),
            (0xCE, "and/or/xor: ((0xF0 & 0x3C) | 1) ^ 0xFF"),
        ],
    );
}

// ---- errors: parse, unsupported, launches -------------------------------------------------------

#[test]
fn parse_error_names_the_line() {
    let src = format!(
        "{HEADER}.visible .entry t(.param .u64 p)\n{{\n\t.reg .b32 %r<4>;\n\
         \tadd.s32 %r1, %r2 %r3;\n\tret;\n}}\n"
    );
    // Line 1-3 header, 4 .entry, 5 {, 6 .reg, 7 the bad add.
    match Module::parse(&src).unwrap_err() {
        EmuError::Parse { line, message } => {
            assert_eq!(line, 7, "{message}");
        }
        other => panic!("expected Parse, got {other}"),
    }
    let e = Module::parse(&src).unwrap_err().to_string();
    assert!(e.contains("line 7"), "{e}");
}

#[test]
fn unknown_label_and_stray_text_are_parse_errors() {
    let src = kernel("", "\tbra NOWHERE;");
    let err = Module::parse(&src).unwrap_err();
    assert!(matches!(err, EmuError::Parse { .. }), "{err}");
    assert!(err.to_string().contains("NOWHERE"), "{err}");
    let err = Module::parse(".version 9.0\n.target sm_80\n#include <x>\n").unwrap_err();
    match err {
        EmuError::Parse { line, .. } => assert_eq!(line, 3),
        other => panic!("expected Parse, got {other}"),
    }
}

/// Finds the 1-based line of the first line of `src` containing `needle`.
fn line_of(src: &str, needle: &str) -> u32 {
    src.lines()
        .position(|l| l.contains(needle))
        .expect("needle") as u32
        + 1
}

#[test]
fn unsupported_opcode_names_the_line() {
    let src = kernel(
        "",
        "\tmov.u32 %r1, 1;\n\
         \twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f1, %f2}, %rd1, %rd2, 1, 1, 1, 1, 1;",
    );
    let line = line_of(&src, "wgmma");
    match Module::parse(&src).unwrap_err() {
        EmuError::Unsupported { line: l, what } => {
            assert_eq!(l, line);
            assert!(what.contains("wgmma"), "{what}");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
    let e = Module::parse(&src).unwrap_err().to_string();
    assert!(e.contains(&format!("line {line}")), "{e}");
}

#[test]
fn unsupported_forms_are_rejected_at_parse_time() {
    // A video instruction the emulator does not implement, and a device-function call.
    let src = kernel(
        "",
        "\tmov.u32 %r1, 8;\n\tvabsdiff.u32.u32.u32 %r2, %r1, %r1, %r1;",
    );
    match Module::parse(&src).unwrap_err() {
        EmuError::Unsupported { line, what } => {
            assert_eq!(line, line_of(&src, "vabsdiff"));
            assert!(what.contains("vabsdiff"), "{what}");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
    let src = format!(
        "{HEADER}.func (.param .b32 r) f(.param .b32 x)\n{{\n\tret;\n}}\n\
         .visible .entry t()\n{{\n\tret;\n}}\n"
    );
    match Module::parse(&src).unwrap_err() {
        EmuError::Unsupported { line, what } => {
            assert_eq!(line, 4);
            assert!(what.contains(".func f"), "{what}");
        }
        other => panic!("expected Unsupported, got {other}"),
    }
}

fn small_kernel() -> String {
    kernel("", "\tmov.u32 %r1, 1;\n\tst.global.u32 [%out+0], %r1;")
}

#[test]
fn bad_launches_are_rejected() {
    let dev = Dev::new(&small_kernel());
    let out = dev.zeroed(8);
    let p = Params::new().ptr(out);
    let bad = |params: &[u8], c: &LaunchConfig, want: &str| match dev
        .module
        .launch("t", params, c)
        .unwrap_err()
    {
        EmuError::BadLaunch { kernel, why } => {
            assert_eq!(kernel, "t");
            assert!(why.contains(want), "{why}");
        }
        other => panic!("expected BadLaunch, got {other}"),
    };
    bad(p.bytes(), &cfg1(1, 2048, 0), "2048 threads");
    bad(
        p.bytes(),
        &LaunchConfig {
            block: [32, 32, 2],
            ..LaunchConfig::default()
        },
        "2048 threads",
    );
    bad(
        &p.bytes()[..4],
        &cfg1(1, 32, 0),
        "4 parameter bytes given, the kernel takes 8",
    );
    bad(&[], &cfg1(1, 32, 0), "0 parameter bytes");
    bad(p.bytes(), &cfg1(0, 32, 0), "zero dimension");
    bad(
        p.bytes(),
        &LaunchConfig {
            dynamic_shared: 228 * 1024,
            ..LaunchConfig::default()
        },
        "shared memory",
    );
    let e = dev
        .module
        .launch("t", p.bytes(), &cfg1(1, 2048, 0))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("bad launch of t:"), "{e}");
    // The correct launch works.
    dev.module.launch("t", p.bytes(), &cfg1(1, 1, 0)).unwrap();
    assert_eq!(dev.read_u64(out, 1), vec![1]);
}

#[test]
fn unknown_kernel_name() {
    let dev = Dev::new(&small_kernel());
    match dev
        .module
        .launch("nope", &[0; 8], &cfg1(1, 1, 0))
        .unwrap_err()
    {
        EmuError::UnknownName { kind, name } => {
            assert_eq!(kind, "kernel");
            assert_eq!(name, "nope");
        }
        other => panic!("expected UnknownName, got {other}"),
    }
}

#[test]
fn spin_loop_hits_the_instruction_limit() {
    let dev = Dev::new(&kernel("", "SPIN:\n\tbra SPIN;"));
    let out = dev.zeroed(8);
    let c = LaunchConfig {
        max_instructions: 10_000,
        ..cfg1(1, 64, 0)
    };
    match dev.launch("t", &Params::new().ptr(out), &c).unwrap_err() {
        EmuError::InstructionLimit { kernel, limit } => {
            assert_eq!(kernel, "t");
            assert_eq!(limit, 10_000);
        }
        other => panic!("expected InstructionLimit, got {other}"),
    }
}

#[test]
fn misaligned_and_uninitialised_global_accesses() {
    let err = try_run("", "\tmov.u32 %r1, 1;\n\tst.global.u32 [%out+2], %r1;", 1).unwrap_err();
    match &err {
        EmuError::Misaligned {
            access,
            size,
            space,
            site,
            ..
        } => {
            assert_eq!(*access, "write");
            assert_eq!(*size, 4);
            assert_eq!(*space, "global");
            assert_eq!(site.instruction, "st.global.u32");
        }
        other => panic!("expected Misaligned, got {other}"),
    }
    // A poisoned output buffer read before it is written.
    let src = kernel(
        "",
        "\tld.global.u32 %r1, [%out+4];\n\tst.global.u32 [%out+0], %r1;",
    );
    let dev = Dev::new(&src);
    let out = dev.output(8);
    match dev
        .launch("t", &Params::new().ptr(out), &cfg1(1, 1, 0))
        .unwrap_err()
    {
        EmuError::UninitializedRead { state, address, .. } => {
            assert_eq!(state, "poisoned");
            assert_eq!(address, out + 4);
        }
        other => panic!("expected UninitializedRead, got {other}"),
    }
    // A never-written allocation.
    let fresh = dev.mem.alloc(0, 8).unwrap();
    match dev
        .launch("t", &Params::new().ptr(fresh), &cfg1(1, 1, 0))
        .unwrap_err()
    {
        EmuError::UninitializedRead { state, .. } => assert_eq!(state, "uninitialised"),
        other => panic!("expected UninitializedRead, got {other}"),
    }
    // With initcheck off the same launch runs.
    let mut c = cfg1(1, 1, 0);
    c.checks.initcheck = false;
    dev.launch("t", &Params::new().ptr(fresh), &c).unwrap();
}

#[test]
fn trap_is_a_fault() {
    match try_run("", "\ttrap;", 1).unwrap_err() {
        EmuError::Fault { why, site } => {
            assert_eq!(why, "trap");
            assert_eq!(site.kernel, "t");
            assert_eq!(site.instruction, "trap");
        }
        other => panic!("expected Fault, got {other}"),
    }
}

/// `[%r + imm]` in the .shared space wraps modulo 2^32, as nvcc relies on when it folds a
/// constant tile offset into an address whose register part has wrapped below zero.
#[test]
fn shared_address_register_plus_offset_wraps_at_32_bits() {
    expect_with(
        "\t.shared .align 16 .b8 sm[64];\n",
        "\tmov.u32 %r1, sm;\n\tadd.s32 %r2, %r1, -16;\n\tmov.u32 %r3, 0x1234;\n\
         \tst.shared.u32 [%r2+32], %r3;\n\tld.shared.u32 %r4, [%r1+16];\n\
         \tcvt.u64.u32 %rd1, %r4;\n\tst.global.u64 [%out], %rd1;",
        &[(0x1234, "stored through a wrapped base")],
    );
}
