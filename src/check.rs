//! `ferrotron check`: every operator on every available backend against its f64 reference, on
//! fresh random inputs with NaN-poisoned outputs, tolerances by dtype.
//!
//! Each case builds random inputs (rounded to the dtype under test, and the reference runs on the
//! rounded values), runs the op on a stream of the device, reads the outputs back and compares
//! them with [`crate::verify::compare`]. A case the backend does not implement is listed in the
//! report's notes, never counted as a pass.
//!
//! On an emu device it also runs every shipped fused elementwise kernel of the code generator
//! (`codegen::variants::fused`, the embedded image `generated/fused`): the PTX that ships, on
//! ptx-emu, against the generator's f64 evaluator within `codegen::run::tolerance` per element,
//! outputs poisoned, at an odd and a larger aligned shape ([`FUSED_SHAPES`]). Their rows are
//! named `fused <variant>`.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::{self, AdamW, Epilogue, Gemm, Transpose};
use crate::reference as r;
use crate::stream::Stream;
use crate::tensor::Tensor;
use crate::verify::{compare, random_indices, random_vec, Comparison, Tolerance};
use std::fmt::Write;

/// One compared output of one case.
#[derive(Clone, Debug)]
pub struct CheckRow {
    /// Operator and output, e.g. `layernorm_bwd.dgamma`.
    pub op: String,
    /// The dtype under test.
    pub dtype: DType,
    /// The problem shape as shown in the table.
    pub shape: String,
    /// The backend's device label (`cpu`, `cuda:0`).
    pub backend: String,
    /// The tolerance applied.
    pub tol: Tolerance,
    /// The comparison, or the error the op returned.
    pub result: std::result::Result<Comparison, String>,
}

impl CheckRow {
    /// Whether the row passed.
    pub fn passed(&self) -> bool {
        matches!(&self.result, Ok(c) if c.pass)
    }
}

/// All rows of a check run, plus notes on what was not run.
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// One row per compared output.
    pub rows: Vec<CheckRow>,
    /// Cases that a backend does not implement (not counted as passes).
    pub notes: Vec<String>,
}

impl CheckReport {
    /// (passed, failed) row counts.
    pub fn counts(&self) -> (usize, usize) {
        let pass = self.rows.iter().filter(|r| r.passed()).count();
        (pass, self.rows.len() - pass)
    }

    /// The rows that failed.
    pub fn failures(&self) -> Vec<&CheckRow> {
        self.rows.iter().filter(|r| !r.passed()).collect()
    }

    /// The table: op, dtype, shape, backend, max abs / max rel error, tolerance, PASS/FAIL.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<26} {:<5} {:<14} {:<7} {:>10} {:>10} {:>17} {:<6}",
            "op", "dtype", "shape", "backend", "max_abs", "max_rel", "tol (rel/abs)", "result"
        );
        let _ = writeln!(s, "{}", "-".repeat(102));
        for row in &self.rows {
            let tol = format!("{:.1e}/{:.1e}", row.tol.rel, row.tol.abs);
            match &row.result {
                Ok(c) => {
                    let _ = writeln!(
                        s,
                        "{:<26} {:<5} {:<14} {:<7} {:>10.3e} {:>10.3e} {:>17} {:<6}",
                        row.op,
                        row.dtype.name(),
                        row.shape,
                        row.backend,
                        c.max_abs,
                        c.max_rel,
                        tol,
                        if c.pass { "PASS" } else { "FAIL" }
                    );
                    if !c.pass {
                        let _ = writeln!(s, "    {c}");
                    }
                }
                Err(e) => {
                    let _ = writeln!(
                        s,
                        "{:<26} {:<5} {:<14} {:<7} {:>10} {:>10} {:>17} FAIL",
                        row.op,
                        row.dtype.name(),
                        row.shape,
                        row.backend,
                        "-",
                        "-",
                        tol
                    );
                    let _ = writeln!(s, "    error: {e}");
                }
            }
        }
        s
    }
}

/// One output of a case: what the op produced, what the reference says, and the tolerance.
struct Out {
    name: &'static str,
    got: Vec<f64>,
    want: Vec<f64>,
    tol: Tolerance,
}

type CaseFn = fn(&Stream, DType, &[usize], u64) -> Result<Vec<Out>>;

struct Case {
    op: &'static str,
    dtypes: &'static [DType],
    shapes: &'static [&'static [usize]],
    run: CaseFn,
}

const FLOATS: &[DType] = &[DType::F32, DType::BF16];

/// Shapes (m, n, k) of the bf16 GEMM epilogue cases: unaligned (odd k: the scalar-load kernel),
/// boundary tiles (64 x 64 tile), and more than one 128 x 128 x 32 tile in every dimension.
const GEMM_EPI_SHAPES: &[&[usize]] = &[&[7, 9, 5], &[130, 72, 48], &[200, 136, 72]];

/// Every case `ferrotron check` runs.
fn cases() -> Vec<Case> {
    vec![
        Case {
            op: "gemm_nn",
            dtypes: FLOATS,
            shapes: &[&[1, 1, 1], &[7, 129, 64], &[64, 7, 129], &[129, 64, 7]],
            run: |s, d, sh, seed| gemm_case(s, d, sh, seed, Transpose::N, Transpose::N, 0.0),
        },
        Case {
            op: "gemm_nt",
            dtypes: FLOATS,
            shapes: &[&[7, 129, 64], &[64, 1, 33]],
            run: |s, d, sh, seed| gemm_case(s, d, sh, seed, Transpose::N, Transpose::T, 0.0),
        },
        Case {
            op: "gemm_tn",
            dtypes: FLOATS,
            shapes: &[&[7, 129, 64], &[33, 64, 1]],
            run: |s, d, sh, seed| gemm_case(s, d, sh, seed, Transpose::T, Transpose::N, 0.0),
        },
        Case {
            op: "gemm_tt",
            dtypes: FLOATS,
            shapes: &[&[7, 129, 64]],
            run: |s, d, sh, seed| gemm_case(s, d, sh, seed, Transpose::T, Transpose::T, 0.0),
        },
        Case {
            op: "gemm_nn(beta=0.5)",
            dtypes: &[DType::F32],
            shapes: &[&[64, 65, 66]],
            run: |s, d, sh, seed| gemm_case(s, d, sh, seed, Transpose::N, Transpose::N, 0.5),
        },
        Case {
            op: "gemm_bf16_out",
            dtypes: &[DType::BF16],
            shapes: &[&[33, 64, 129]],
            run: gemm_bf16_out_case,
        },
        // The bf16 GEMM tier with fused epilogues (`ops::gemm_epilogue`; the sm_80 kernels on
        // CUDA and the emulator): bf16 inputs, the dtype column is the output's.
        Case {
            op: "gemm_bf16_nt",
            dtypes: FLOATS,
            shapes: GEMM_EPI_SHAPES,
            run: |s, d, sh, seed| {
                gemm_epi_case(s, d, sh, seed, Transpose::N, Transpose::T, EpiCase::None)
            },
        },
        Case {
            op: "gemm_bf16_nn",
            dtypes: FLOATS,
            shapes: GEMM_EPI_SHAPES,
            run: |s, d, sh, seed| {
                gemm_epi_case(s, d, sh, seed, Transpose::N, Transpose::N, EpiCase::None)
            },
        },
        Case {
            op: "gemm_bf16_tn",
            dtypes: FLOATS,
            shapes: GEMM_EPI_SHAPES,
            run: |s, d, sh, seed| {
                gemm_epi_case(s, d, sh, seed, Transpose::T, Transpose::N, EpiCase::None)
            },
        },
        Case {
            op: "gemm_nt_bias",
            dtypes: FLOATS,
            shapes: GEMM_EPI_SHAPES,
            run: |s, d, sh, seed| {
                gemm_epi_case(s, d, sh, seed, Transpose::N, Transpose::T, EpiCase::Bias)
            },
        },
        Case {
            op: "gemm_nt_bias_gelu",
            dtypes: FLOATS,
            shapes: GEMM_EPI_SHAPES,
            run: |s, d, sh, seed| {
                gemm_epi_case(
                    s,
                    d,
                    sh,
                    seed,
                    Transpose::N,
                    Transpose::T,
                    EpiCase::BiasGelu,
                )
            },
        },
        Case {
            op: "gemm_nn_dgelu",
            dtypes: FLOATS,
            shapes: GEMM_EPI_SHAPES,
            run: |s, d, sh, seed| {
                gemm_epi_case(s, d, sh, seed, Transpose::N, Transpose::N, EpiCase::DGelu)
            },
        },
        Case {
            op: "gemm_tn_accum",
            dtypes: &[DType::F32],
            shapes: GEMM_EPI_SHAPES,
            run: |s, d, sh, seed| {
                gemm_epi_case(s, d, sh, seed, Transpose::T, Transpose::N, EpiCase::Accum)
            },
        },
        Case {
            op: "bias_gelu_fwd",
            dtypes: FLOATS,
            shapes: &[&[1, 1], &[7, 129], &[64, 64], &[3, 5, 66]],
            run: bias_gelu_fwd_case,
        },
        Case {
            op: "bias_gelu_bwd",
            dtypes: FLOATS,
            // 130 and 200 rows: several 64-row dbias chunks, the last one short.
            shapes: &[
                &[1, 1],
                &[7, 129],
                &[64, 64],
                &[3, 5, 66],
                &[130, 33],
                &[200, 64],
            ],
            run: bias_gelu_bwd_case,
        },
        Case {
            op: "add",
            dtypes: FLOATS,
            shapes: &[&[1, 1], &[7, 129], &[64, 1000], &[3, 5, 66]],
            run: add_case,
        },
        Case {
            op: "bias_add",
            dtypes: FLOATS,
            shapes: &[&[1, 1], &[7, 129], &[64, 1000], &[3, 5, 66]],
            run: bias_add_case,
        },
        Case {
            op: "column_sum",
            dtypes: FLOATS,
            shapes: &[&[1, 1], &[7, 129], &[64, 1000], &[3, 5, 66]],
            run: column_sum_case,
        },
        Case {
            op: "layernorm_fwd",
            dtypes: FLOATS,
            shapes: &[&[1, 7], &[7, 129], &[64, 64]],
            run: layernorm_fwd_case,
        },
        Case {
            op: "layernorm_bwd",
            dtypes: FLOATS,
            shapes: &[&[1, 7], &[7, 129], &[64, 64]],
            run: layernorm_bwd_case,
        },
        Case {
            op: "softmax",
            dtypes: FLOATS,
            shapes: &[&[1, 1, 1], &[2, 7, 7], &[3, 64, 129]],
            run: |s, d, sh, seed| softmax_case(s, d, sh, seed, false),
        },
        Case {
            op: "softmax(causal)",
            dtypes: FLOATS,
            shapes: &[&[2, 7, 7], &[3, 64, 129], &[1, 9, 4]],
            run: |s, d, sh, seed| softmax_case(s, d, sh, seed, true),
        },
        Case {
            op: "cross_entropy",
            dtypes: FLOATS,
            shapes: &[&[1, 1], &[7, 129], &[64, 1000]],
            run: cross_entropy_case,
        },
        Case {
            op: "adamw_step(x3)",
            dtypes: FLOATS,
            shapes: &[&[1], &[129], &[64, 64]],
            run: adamw_case,
        },
        // The residual add into an f32 c (beta 1) fused into the forward GEMM: a generated
        // instantiation (last, so the earlier cases keep their seeds).
        Case {
            op: "gemm_nt_accum",
            dtypes: &[DType::F32],
            shapes: GEMM_EPI_SHAPES,
            run: |s, d, sh, seed| {
                gemm_epi_case(s, d, sh, seed, Transpose::N, Transpose::T, EpiCase::Accum)
            },
        },
    ]
}

/// Runs every case on every device.
pub fn run(devices: &[Device], seed: u64) -> CheckReport {
    let mut report = CheckReport::default();
    for dev in devices {
        let stream = match dev.new_named_stream("check") {
            Ok(s) => s,
            Err(e) => {
                report
                    .notes
                    .push(format!("{}: no stream: {e}", dev.label()));
                continue;
            }
        };
        let mut unsupported: Vec<&str> = Vec::new();
        for (ci, case) in cases().iter().enumerate() {
            for (di, &dtype) in case.dtypes.iter().enumerate() {
                for (si, shape) in case.shapes.iter().enumerate() {
                    let case_seed = seed
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .wrapping_add(((ci * 64 + di) * 64 + si) as u64);
                    let shape_str = shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join("x");
                    match (case.run)(&stream, dtype, shape, case_seed) {
                        Ok(outs) => {
                            for o in outs {
                                report.rows.push(CheckRow {
                                    op: if o.name.is_empty() {
                                        case.op.to_string()
                                    } else {
                                        format!("{}.{}", case.op, o.name)
                                    },
                                    dtype,
                                    shape: shape_str.clone(),
                                    backend: dev.label().to_string(),
                                    tol: o.tol,
                                    result: Ok(compare(&o.got, &o.want, o.tol)),
                                })
                            }
                        }
                        Err(Error::Unsupported { .. }) | Err(Error::UnsupportedDType { .. })
                            if dev.kind() != crate::BackendKind::Cpu =>
                        {
                            if !unsupported.contains(&case.op) {
                                unsupported.push(case.op);
                            }
                        }
                        Err(e) => report.rows.push(CheckRow {
                            op: case.op.to_string(),
                            dtype,
                            shape: shape_str.clone(),
                            backend: dev.label().to_string(),
                            tol: Tolerance::for_dtype(dtype),
                            result: Err(e.to_string()),
                        }),
                    }
                }
            }
        }
        if dev.kind() == crate::BackendKind::Emu {
            report
                .rows
                .extend(fused_rows(dev.label(), seed.wrapping_add(0xf05e)));
        }
        if !unsupported.is_empty() {
            report.notes.push(format!(
                "{}: not implemented on this backend yet (not counted): {}",
                dev.label(),
                unsupported.join(", ")
            ));
        }
    }
    report
}

/// Shapes `(rows, cols)` of the fused-variant checks: odd (broadcasts that do not line up with
/// the launch, a partial last block) and larger and aligned (several grid-stride steps).
pub const FUSED_SHAPES: &[(usize, usize)] = &[(7, 33), (64, 256)];

/// The image holding the shipped fused kernels.
const FUSED_IMAGE: &str = "generated/fused";

fn dtype_of(d: codegen::expr::Dtype) -> DType {
    match d {
        codegen::expr::Dtype::F32 => DType::F32,
        codegen::expr::Dtype::Bf16 => DType::BF16,
    }
}

/// One row per shipped fused variant (`codegen::variants::fused`) and shape of
/// [`FUSED_SHAPES`]: the embedded PTX of the image `generated/fused` on a fresh ptx-emu memory
/// against `codegen::eval` (see the module docs), labelled with `backend`. [`run`] adds these
/// rows for every emu device. Without the image (built without nvcc) every row is an error row.
pub fn fused_rows(backend: &str, seed: u64) -> Vec<CheckRow> {
    let loaded = crate::kernels::image(FUSED_IMAGE)
        .map_err(|e| e.to_string())
        .and_then(|img| ptx_emu::Module::parse(img.ptx).map_err(|e| e.to_string()))
        .and_then(|m| {
            let mem = ptx_emu::Memory::new();
            let loaded = m.load(&mem, 0).map_err(|e| e.to_string())?;
            Ok((mem, loaded))
        });
    let mut rows = Vec::new();
    for (vi, v) in codegen::variants::fused().iter().enumerate() {
        for (si, &(r, c)) in FUSED_SHAPES.iter().enumerate() {
            let case_seed = seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add((vi * 64 + si) as u64);
            let result = match &loaded {
                Ok((mem, module)) => fused_case(mem, module, v, r, c, case_seed),
                Err(e) => Err(e.clone()),
            };
            let (tol, result) = match result {
                Ok((tol, cmp)) => (tol, Ok(cmp)),
                Err(e) => (Tolerance::for_dtype(dtype_of(v.out)), Err(e)),
            };
            rows.push(CheckRow {
                op: format!("fused {}", v.name),
                dtype: dtype_of(v.out),
                shape: format!("{r}x{c}"),
                backend: backend.to_string(),
                tol,
                result,
            });
        }
    }
    rows
}

/// Runs fused variant `v` at `rows x cols` on random inputs; returns the table's tolerance (the
/// loosest per-element one) and the comparison, failed when any element is outside its own
/// `codegen::run::tolerance` (or not finite).
fn fused_case(
    mem: &ptx_emu::Memory,
    module: &ptx_emu::LoadedModule,
    v: &codegen::variants::FusedVariant,
    rows: usize,
    cols: usize,
    seed: u64,
) -> std::result::Result<(Tolerance, Comparison), String> {
    use codegen::expr::Bcast;
    let expr = v.expr();
    let kernel = codegen::emit::elementwise(&expr, v.out);
    let data: Vec<Vec<f64>> = kernel
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (_, dtype, bcast))| {
            let n = match bcast {
                Bcast::Full => rows * cols,
                Bcast::Row => cols,
                Bcast::Col => rows,
                Bcast::Scalar => 1,
            };
            random_vec(seed.wrapping_add(i as u64), n, -3.0, 3.0)
                .into_iter()
                .map(|x| f64::from(dtype.round(x as f32)))
                .collect()
        })
        .collect();
    let views: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
    let want = codegen::eval::evaluate(&expr, rows, cols, &views).map_err(|e| e.to_string())?;
    let got = codegen::run::run_on_emu(module, mem, &kernel, rows, cols, &views)
        .map_err(|e| format!("{} ({}): {e}", v.name, kernel.name))?;
    let rounds_bf16 = kernel.canonical.contains("CastBf16");
    let tol_of = |i: usize| {
        codegen::run::tolerance(
            v.out,
            rounds_bf16,
            want.depth,
            want.scale[i],
            want.values[i],
        )
    };
    // The table's tolerance: the relative part of `tolerance` and its largest absolute part.
    let rel = codegen::run::tolerance(v.out, rounds_bf16, want.depth, 0.0, 1.0);
    let abs = (0..got.len())
        .map(|i| codegen::run::tolerance(v.out, rounds_bf16, want.depth, want.scale[i], 0.0))
        .fold(0.0, f64::max);
    let tol = Tolerance::new(rel, abs);
    let mut cmp = compare(&got, &want.values, tol);
    let strict = got
        .iter()
        .zip(&want.values)
        .enumerate()
        .all(|(i, (g, w))| g.is_finite() && (g - w).abs() <= tol_of(i));
    cmp.pass &= strict;
    Ok((tol, cmp))
}

/// Rounds f64 values to `dtype` and back, as the device will see them.
fn rounded(dtype: DType, v: &[f64]) -> Vec<f64> {
    match dtype {
        DType::F32 => v.iter().map(|&x| x as f32 as f64).collect(),
        DType::BF16 => v
            .iter()
            .map(|&x| half::bf16::from_f64(x).to_f64())
            .collect(),
        DType::F16 => v.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect(),
        DType::I32 => v.iter().map(|&x| x.round()).collect(),
    }
}

/// A random tensor on the stream's device and its values as the device holds them.
fn input(
    s: &Stream,
    shape: &[usize],
    dtype: DType,
    seed: u64,
    lo: f64,
    hi: f64,
) -> Result<(Tensor, Vec<f64>)> {
    let n: usize = shape.iter().product();
    let v = rounded(dtype, &random_vec(seed, n, lo, hi));
    Ok((Tensor::from_f64(s.device(), &v, shape.to_vec(), dtype)?, v))
}

fn poisoned(s: &Stream, shape: &[usize], dtype: DType) -> Result<Tensor> {
    Tensor::poisoned(s.device(), shape.to_vec(), dtype)
}

#[allow(clippy::too_many_arguments)]
fn gemm_case(
    s: &Stream,
    dtype: DType,
    sh: &[usize],
    seed: u64,
    ta: Transpose,
    tb: Transpose,
    beta: f32,
) -> Result<Vec<Out>> {
    let (m, n, k) = (sh[0], sh[1], sh[2]);
    let a_shape = if ta == Transpose::N { [m, k] } else { [k, m] };
    let b_shape = if tb == Transpose::N { [k, n] } else { [n, k] };
    let (a, av) = input(s, &a_shape, dtype, seed, -1.0, 1.0)?;
    let (b, bv) = input(s, &b_shape, dtype, seed + 1, -1.0, 1.0)?;
    let (mut c, mut want) = if beta == 0.0 {
        (poisoned(s, &[m, n], DType::F32)?, vec![f64::NAN; m * n])
    } else {
        input(s, &[m, n], DType::F32, seed + 2, -1.0, 1.0)?
    };
    let alpha = 1.5f32;
    ops::gemm(
        s,
        &a,
        &b,
        &mut c,
        &Gemm {
            ta,
            tb,
            alpha,
            beta,
        },
    )?;
    r::gemm::gemm_ref(
        ta,
        tb,
        m,
        n,
        k,
        alpha as f64,
        &av,
        &bv,
        beta as f64,
        &mut want,
    );
    Ok(vec![Out {
        name: "",
        got: c.to_f64_vec(s)?,
        want,
        tol: Tolerance::for_reduction(DType::F32, k),
    }])
}

fn gemm_bf16_out_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (m, n, k) = (sh[0], sh[1], sh[2]);
    let (a, av) = input(s, &[m, k], dtype, seed, -1.0, 1.0)?;
    let (b, bv) = input(s, &[k, n], dtype, seed + 1, -1.0, 1.0)?;
    let mut c = poisoned(s, &[m, n], dtype)?;
    ops::gemm(s, &a, &b, &mut c, &Gemm::default())?;
    let mut want = vec![f64::NAN; m * n];
    r::gemm::gemm_ref(
        Transpose::N,
        Transpose::N,
        m,
        n,
        k,
        1.0,
        &av,
        &bv,
        0.0,
        &mut want,
    );
    Ok(vec![Out {
        name: "",
        got: c.to_f64_vec(s)?,
        want,
        tol: Tolerance::for_reduction(dtype, k),
    }])
}

/// The epilogue of a [`gemm_epi_case`].
#[derive(Clone, Copy, PartialEq)]
enum EpiCase {
    None,
    Bias,
    BiasGelu,
    DGelu,
    Accum,
}

/// bf16 `a`, `b`; output (and bias / pre) of `dtype`; alpha 1; beta 1 for `Accum`, else 0.
#[allow(clippy::too_many_arguments)]
fn gemm_epi_case(
    s: &Stream,
    dtype: DType,
    sh: &[usize],
    seed: u64,
    ta: Transpose,
    tb: Transpose,
    epi: EpiCase,
) -> Result<Vec<Out>> {
    let (m, n, k) = (sh[0], sh[1], sh[2]);
    let a_shape = if ta == Transpose::N { [m, k] } else { [k, m] };
    let b_shape = if tb == Transpose::N { [k, n] } else { [n, k] };
    let (a, av) = input(s, &a_shape, DType::BF16, seed, -1.0, 1.0)?;
    let (b, bv) = input(s, &b_shape, DType::BF16, seed + 1, -1.0, 1.0)?;
    let (bias, biasv) = input(s, &[n], dtype, seed + 2, -1.0, 1.0)?;
    let (pre_in, pre_inv) = input(s, &[m, n], dtype, seed + 3, -3.0, 3.0)?;
    let (mut c, mut want, beta) = if epi == EpiCase::Accum {
        let (c, cv) = input(s, &[m, n], dtype, seed + 4, -1.0, 1.0)?;
        (c, cv, 1.0)
    } else {
        (poisoned(s, &[m, n], dtype)?, vec![f64::NAN; m * n], 0.0)
    };
    let mut pre = poisoned(s, &[m, n], dtype)?;
    let args = Gemm {
        ta,
        tb,
        alpha: 1.0,
        beta,
    };
    let e = match epi {
        EpiCase::None | EpiCase::Accum => Epilogue::None,
        EpiCase::Bias => Epilogue::Bias(&bias),
        EpiCase::BiasGelu => Epilogue::BiasGelu {
            bias: &bias,
            pre: Some(&mut pre),
        },
        EpiCase::DGelu => Epilogue::DGelu { pre: &pre_in },
    };
    ops::gemm_epilogue(s, &a, &b, &mut c, &args, e)?;
    let repi = match epi {
        EpiCase::None | EpiCase::Accum => r::gemm::RefEpilogue::None,
        EpiCase::Bias => r::gemm::RefEpilogue::Bias(&biasv),
        EpiCase::BiasGelu => r::gemm::RefEpilogue::BiasGelu(&biasv),
        EpiCase::DGelu => r::gemm::RefEpilogue::DGelu(&pre_inv),
    };
    let mut want_pre = vec![f64::NAN; m * n];
    r::gemm::gemm_epilogue_ref(
        ta,
        tb,
        m,
        n,
        k,
        1.0,
        &av,
        &bv,
        beta as f64,
        &mut want,
        repi,
        Some(&mut want_pre),
    );
    let tol = Tolerance::for_reduction(dtype, k);
    let mut outs = vec![Out {
        name: if epi == EpiCase::BiasGelu { "c" } else { "" },
        got: c.to_f64_vec(s)?,
        want,
        tol,
    }];
    if epi == EpiCase::BiasGelu {
        outs.push(Out {
            name: "pre",
            got: pre.to_f64_vec(s)?,
            want: want_pre,
            tol,
        });
    }
    Ok(outs)
}

fn rows_cols(sh: &[usize]) -> (usize, usize) {
    let cols = *sh.last().expect("non-empty shape");
    (sh.iter().product::<usize>() / cols, cols)
}

fn bias_gelu_fwd_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (rows, cols) = rows_cols(sh);
    let (x, xv) = input(s, sh, dtype, seed, -4.0, 4.0)?;
    let (b, bv) = input(s, &[cols], dtype, seed + 1, -1.0, 1.0)?;
    let mut y = poisoned(s, sh, dtype)?;
    ops::bias_gelu_fwd(s, &x, &b, &mut y)?;
    let want = r::bias_gelu::bias_gelu_fwd_ref(rows, cols, &xv, &bv);
    Ok(vec![Out {
        name: "",
        got: y.to_f64_vec(s)?,
        want,
        tol: Tolerance::for_dtype(dtype),
    }])
}

fn bias_gelu_bwd_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (rows, cols) = rows_cols(sh);
    let (dy, dyv) = input(s, sh, dtype, seed, -1.0, 1.0)?;
    let (x, xv) = input(s, sh, dtype, seed + 1, -4.0, 4.0)?;
    let (b, bv) = input(s, &[cols], dtype, seed + 2, -1.0, 1.0)?;
    let mut dx = poisoned(s, sh, dtype)?;
    let mut db = poisoned(s, &[cols], dtype)?;
    ops::bias_gelu_bwd(s, &dy, &x, &b, &mut dx, Some(&mut db))?;
    let (wdx, wdb) = r::bias_gelu::bias_gelu_bwd_ref(rows, cols, &dyv, &xv, &bv);
    Ok(vec![
        Out {
            name: "dx",
            got: dx.to_f64_vec(s)?,
            want: wdx,
            tol: Tolerance::for_dtype(dtype),
        },
        Out {
            name: "dbias",
            got: db.to_f64_vec(s)?,
            want: wdb,
            tol: Tolerance::for_reduction(dtype, rows),
        },
    ])
}

fn add_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (a, av) = input(s, sh, dtype, seed, -2.0, 2.0)?;
    let (b, bv) = input(s, sh, dtype, seed + 1, -2.0, 2.0)?;
    let mut out = poisoned(s, sh, dtype)?;
    ops::bias::add(s, &a, &b, &mut out)?;
    Ok(vec![Out {
        name: "",
        got: out.to_f64_vec(s)?,
        want: av.iter().zip(&bv).map(|(x, y)| x + y).collect(),
        tol: Tolerance::for_dtype(dtype),
    }])
}

fn bias_add_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (_, cols) = rows_cols(sh);
    let (x, xv) = input(s, sh, dtype, seed, -2.0, 2.0)?;
    let (b, bv) = input(s, &[cols], dtype, seed + 1, -1.0, 1.0)?;
    let mut y = poisoned(s, sh, dtype)?;
    ops::bias::bias_add(s, &x, &b, &mut y)?;
    Ok(vec![Out {
        name: "",
        got: y.to_f64_vec(s)?,
        want: xv
            .iter()
            .enumerate()
            .map(|(i, v)| v + bv[i % cols])
            .collect(),
        tol: Tolerance::for_dtype(dtype),
    }])
}

/// Column sums into an f32 and a `dtype` output, the latter accumulating onto random values.
fn column_sum_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (rows, cols) = rows_cols(sh);
    let (x, xv) = input(s, sh, dtype, seed, -2.0, 2.0)?;
    let sums: Vec<f64> = (0..cols)
        .map(|c| (0..rows).map(|r| xv[r * cols + c]).sum())
        .collect();
    let mut o32 = poisoned(s, &[cols], DType::F32)?;
    ops::bias::column_sum(s, &x, &mut o32, false)?;
    let (mut acc, accv) = input(s, &[cols], dtype, seed + 1, -1.0, 1.0)?;
    ops::bias::column_sum(s, &x, &mut acc, true)?;
    Ok(vec![
        Out {
            name: "f32",
            got: o32.to_f64_vec(s)?,
            want: sums.clone(),
            tol: Tolerance::for_reduction(DType::F32, rows),
        },
        Out {
            name: "accumulate",
            got: acc.to_f64_vec(s)?,
            want: sums.iter().zip(&accv).map(|(a, b)| a + b).collect(),
            tol: Tolerance::for_reduction(dtype, rows + 1),
        },
    ])
}

fn layernorm_fwd_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (rows, cols) = rows_cols(sh);
    let (x, xv) = input(s, sh, dtype, seed, -3.0, 3.0)?;
    let (g, gv) = input(s, &[cols], dtype, seed + 1, 0.5, 1.5)?;
    let (b, bv) = input(s, &[cols], dtype, seed + 2, -0.5, 0.5)?;
    let mut y = poisoned(s, sh, dtype)?;
    let mut mean = poisoned(s, &[rows], DType::F32)?;
    let mut rstd = poisoned(s, &[rows], DType::F32)?;
    let eps = 1e-5;
    ops::layernorm_fwd(s, &x, &g, &b, eps, &mut y, &mut mean, &mut rstd)?;
    let (wy, wm, wr) = r::layernorm::layernorm_fwd_ref(rows, cols, &xv, &gv, &bv, eps as f64);
    let red = Tolerance::for_reduction(dtype, cols);
    Ok(vec![
        Out {
            name: "y",
            got: y.to_f64_vec(s)?,
            want: wy,
            tol: red,
        },
        Out {
            name: "mean",
            got: mean.to_f64_vec(s)?,
            want: wm,
            tol: Tolerance::for_reduction(DType::F32, cols),
        },
        Out {
            name: "rstd",
            got: rstd.to_f64_vec(s)?,
            want: wr,
            tol: Tolerance::for_reduction(DType::F32, cols),
        },
    ])
}

fn layernorm_bwd_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (rows, cols) = rows_cols(sh);
    let (x, xv) = input(s, sh, dtype, seed, -3.0, 3.0)?;
    let (g, gv) = input(s, &[cols], dtype, seed + 1, 0.5, 1.5)?;
    let (dy, dyv) = input(s, sh, dtype, seed + 2, -1.0, 1.0)?;
    let zero = Tensor::zeros(s.device(), vec![cols], dtype)?;
    let mut y = poisoned(s, sh, dtype)?;
    let mut mean = poisoned(s, &[rows], DType::F32)?;
    let mut rstd = poisoned(s, &[rows], DType::F32)?;
    let eps = 1e-5;
    ops::layernorm_fwd(s, &x, &g, &zero, eps, &mut y, &mut mean, &mut rstd)?;
    let (mut dx, mut dg, mut db) = (
        poisoned(s, sh, dtype)?,
        poisoned(s, &[cols], dtype)?,
        poisoned(s, &[cols], dtype)?,
    );
    ops::layernorm_bwd(s, &dy, &x, &g, &mean, &rstd, &mut dx, &mut dg, &mut db)?;
    // The reference backward uses the f64 statistics of the same (rounded) inputs.
    let (_, wm, wr) =
        r::layernorm::layernorm_fwd_ref(rows, cols, &xv, &gv, &vec![0.0; cols], eps as f64);
    let (wdx, wdg, wdb) = r::layernorm::layernorm_bwd_ref(rows, cols, &dyv, &xv, &gv, &wm, &wr);
    Ok(vec![
        Out {
            name: "dx",
            got: dx.to_f64_vec(s)?,
            want: wdx,
            tol: Tolerance::for_reduction(dtype, cols),
        },
        Out {
            name: "dgamma",
            got: dg.to_f64_vec(s)?,
            want: wdg,
            // Each dgamma term also carries its row's mean/variance error: rows + cols terms.
            tol: Tolerance::for_reduction(dtype, rows + cols),
        },
        Out {
            name: "dbeta",
            got: db.to_f64_vec(s)?,
            want: wdb,
            tol: Tolerance::for_reduction(dtype, rows),
        },
    ])
}

fn softmax_case(
    s: &Stream,
    dtype: DType,
    sh: &[usize],
    seed: u64,
    causal: bool,
) -> Result<Vec<Out>> {
    let (batch, rows, cols) = (sh[0], sh[1], sh[2]);
    let scale = 0.7f32;
    let (x, xv) = input(s, sh, dtype, seed, -4.0, 4.0)?;
    let (dy, dyv) = input(s, sh, dtype, seed + 1, -1.0, 1.0)?;
    let mut y = poisoned(s, sh, dtype)?;
    ops::softmax_fwd(s, &x, &mut y, scale, causal)?;
    let mut dx = poisoned(s, sh, dtype)?;
    ops::softmax_bwd(s, &dy, &y, &mut dx, scale)?;
    let wy = r::softmax::softmax_fwd_ref(batch, rows, cols, scale as f64, causal, &xv);
    // The backward is checked from the y the op produced (as the backward pass will see it).
    let yv = y.to_f64_vec(s)?;
    let wdx = r::softmax::softmax_bwd_ref(batch, rows, cols, scale as f64, &dyv, &yv);
    let tol = Tolerance::for_reduction(dtype, cols);
    Ok(vec![
        Out {
            name: "y",
            got: yv,
            want: wy,
            tol,
        },
        Out {
            name: "dx",
            got: dx.to_f64_vec(s)?,
            want: wdx,
            tol,
        },
    ])
}

fn cross_entropy_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let (n, v) = (sh[0], sh[1]);
    let (logits, lv) = input(s, sh, dtype, seed, -5.0, 5.0)?;
    let tv = random_indices(seed + 1, n, v);
    let targets = Tensor::from_slice(s.device(), &tv, vec![n])?;
    let dlv = rounded(DType::F32, &random_vec(seed + 2, n, 0.1, 1.0));
    let dloss = Tensor::from_f64(s.device(), &dlv, vec![n], DType::F32)?;
    let mut losses = poisoned(s, &[n], DType::F32)?;
    let mut dlogits = poisoned(s, sh, dtype)?;
    ops::cross_entropy_fwd(s, &logits, &targets, &mut losses)?;
    ops::cross_entropy_bwd(s, &logits, &targets, &dloss, &mut dlogits)?;
    let wl = r::cross_entropy::cross_entropy_fwd_ref(n, v, &lv, &tv);
    let wd = r::cross_entropy::cross_entropy_bwd_ref(n, v, &lv, &tv, &dlv);
    Ok(vec![
        Out {
            name: "loss",
            got: losses.to_f64_vec(s)?,
            want: wl,
            tol: Tolerance::for_reduction(DType::F32, v),
        },
        Out {
            name: "dlogits",
            got: dlogits.to_f64_vec(s)?,
            want: wd,
            tol: Tolerance::for_reduction(dtype, v),
        },
    ])
}

fn adamw_case(s: &Stream, dtype: DType, sh: &[usize], seed: u64) -> Result<Vec<Out>> {
    let n: usize = sh.iter().product();
    let (mut p, mut pv) = input(s, sh, dtype, seed, -1.0, 1.0)?;
    let mut m = Tensor::zeros(s.device(), sh.to_vec(), DType::F32)?;
    let mut v = Tensor::zeros(s.device(), sh.to_vec(), DType::F32)?;
    let (mut mv, mut vv) = (vec![0.0; n], vec![0.0; n]);
    let cfg = AdamW {
        lr: 1e-2,
        ..AdamW::default()
    };
    for step in 1..=3u32 {
        let (g, gv) = input(s, sh, dtype, seed + 10 + step as u64, -1.0, 1.0)?;
        ops::adamw_step(s, &cfg, step, &mut p, &g, &mut m, &mut v)?;
        r::adamw::adamw_step_ref(
            cfg.lr as f64,
            cfg.beta1 as f64,
            cfg.beta2 as f64,
            cfg.eps as f64,
            cfg.weight_decay as f64,
            step,
            &mut pv,
            &gv,
            &mut mv,
            &mut vv,
        );
        // The device rounds the parameter to its dtype after every step; so does the reference.
        pv = rounded(dtype, &pv);
    }
    // Three dependent steps, each rounding once: three roundings' worth of error.
    let tol = Tolerance::for_dtype(dtype).scaled(3.0);
    Ok(vec![
        Out {
            name: "param",
            got: p.to_f64_vec(s)?,
            want: pv,
            tol,
        },
        Out {
            name: "m",
            got: m.to_f64_vec(s)?,
            want: mv,
            tol: Tolerance::for_dtype(DType::F32).scaled(3.0),
        },
        Out {
            name: "v",
            got: v.to_f64_vec(s)?,
            want: vv,
            tol: Tolerance::for_dtype(DType::F32).scaled(3.0),
        },
    ])
}
