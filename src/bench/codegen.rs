//! `ferrotron codegen`: emit the CUDA C of a fused elementwise expression (with reductions along
//! the last dim: `sum(x)`, `max(x)`, `mean(x)`, e.g. softmax
//! `exp(x - max(x)) / sum(exp(x - max(x)))`) and, with `--check`, compile it (nvcc, sm_80 PTX),
//! run it on the emulator and compare it with the f64 evaluator. A per-row expression
//! (`rsqrt(mean(x * x) + 1e-5)`) has one value per row.

use std::fmt::Write as _;
use std::path::PathBuf;

use codegen::emit::elementwise;
use codegen::eval::evaluate;
use codegen::expr::{Bcast, Dtype};
use codegen::run::{compile_ptx, run_on_emu, tolerance};

/// Parses an input declaration `name:dtype:bcast` (`x:bf16:full`, `b:f32:row`, `s:f32:col`,
/// `k:f32:scalar`).
///
/// # Errors
/// A message naming the bad part.
pub fn parse_input(spec: &str) -> Result<(String, Dtype, Bcast), String> {
    let parts: Vec<&str> = spec.split(':').collect();
    let [name, dtype, bcast] = parts.as_slice() else {
        return Err(format!("input {spec:?}: expected name:dtype:bcast"));
    };
    let dtype = match *dtype {
        "f32" => Dtype::F32,
        "bf16" => Dtype::Bf16,
        d => return Err(format!("input {spec:?}: dtype {d} (f32 or bf16)")),
    };
    let bcast = match *bcast {
        "full" => Bcast::Full,
        "row" => Bcast::Row,
        "col" => Bcast::Col,
        "scalar" => Bcast::Scalar,
        b => {
            return Err(format!(
                "input {spec:?}: broadcast {b} (full, row, col, scalar)"
            ))
        }
    };
    Ok((name.to_string(), dtype, bcast))
}

fn values(seed: u64, n: usize, dtype: Dtype) -> Vec<f64> {
    crate::verify::random_vec(seed, n, -2.0, 2.0)
        .into_iter()
        .map(|v| f64::from(dtype.round(v as f32)))
        .collect()
}

/// Emits the kernel for `expr` over `inputs` into an `out` output; with `check`, runs it on the
/// emulator at `rows x cols` against the evaluator. Returns the text to print.
///
/// # Errors
/// A message for a bad expression, a missing nvcc, a compile error, an emulator error or a
/// mismatch.
pub fn codegen(
    expr: &str,
    inputs: &[String],
    out: Dtype,
    check: Option<(usize, usize)>,
) -> Result<String, String> {
    let decl = inputs
        .iter()
        .map(|s| parse_input(s))
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<(&str, Dtype, Bcast)> =
        decl.iter().map(|(n, d, b)| (n.as_str(), *d, *b)).collect();
    let e = codegen::parse::parse(expr, &refs).map_err(|e| format!("{expr:?}: {e}"))?;
    let k = elementwise(&e, out);
    let mut s = k.source.clone();
    let Some((rows, cols)) = check else {
        return Ok(s);
    };
    let nvcc = std::env::var_os("FERROTRON_NVCC")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let ptx = compile_ptx(&nvcc, &k.source).map_err(|e| {
        format!(
            "{e} (set FERROTRON_NVCC to the nvcc that scripts/install-cuda-toolchain.sh prints)"
        )
    })?;
    let module = ptx_emu::Module::parse(&ptx).map_err(|e| e.to_string())?;
    let mem = ptx_emu::Memory::new();
    let loaded = module.load(&mem, 0).map_err(|e| e.to_string())?;
    let data: Vec<Vec<f64>> = decl
        .iter()
        .enumerate()
        .map(|(i, (_, d, b))| {
            let n = match b {
                Bcast::Full => rows * cols,
                Bcast::Row => cols,
                Bcast::Col => rows,
                Bcast::Scalar => 1,
            };
            values(17 + i as u64, n, *d)
        })
        .collect();
    let views: Vec<&[f64]> = data.iter().map(Vec::as_slice).collect();
    let want = evaluate(&e, rows, cols, &views).map_err(|e| e.to_string())?;
    let got = run_on_emu(&loaded, &mem, &k, rows, cols, &views).map_err(|e| e.to_string())?;
    if got.len() != want.values.len() {
        return Err(format!(
            "the kernel wrote {} values, the evaluator has {}",
            got.len(),
            want.values.len()
        ));
    }
    let rounds = k.canonical.contains("CastBf16");
    let mut worst = 0f64;
    let mut bad = 0;
    for (i, (&g, &w)) in got.iter().zip(&want.values).enumerate() {
        let tol = tolerance(out, rounds, want.depth, want.scale[i], w);
        let err = (g - w).abs();
        if !(g.is_finite() == w.is_finite() && err <= tol) {
            bad += 1;
        }
        if tol > 0.0 && err.is_finite() {
            worst = worst.max(err / tol);
        }
    }
    let _ = writeln!(
        s,
        "// check on ptx-emu ({} at {rows}x{cols}): {} of {} {} within tolerance, worst error/tolerance {worst:.3} -> {}",
        k.name,
        got.len() - bad,
        got.len(),
        if k.per_row {
            "per-row values"
        } else {
            "elements"
        },
        if bad == 0 { "PASS" } else { "FAIL" }
    );
    if bad > 0 {
        return Err(s);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reductions through the command: softmax emits a per-row reduction kernel and, with an
    /// nvcc, checks on the emulator; a per-row expression reports one value per row.
    #[test]
    fn codegen_accepts_reductions() {
        let ins = vec!["x:bf16:full".to_string(), "g:f32:row".to_string()];
        let softmax = "exp(x - max(x)) / sum(exp(x - max(x)))";
        let text = codegen(softmax, &ins, Dtype::Bf16, None).expect("emit");
        assert!(text.contains("ft_cg_block_max(") && text.contains("ft_cg_block_sum("));
        assert!(codegen("sum(x, g)", &ins, Dtype::F32, None).is_err());
        if std::env::var_os("FERROTRON_NVCC").is_none() {
            return;
        }
        let text = codegen(softmax, &ins, Dtype::Bf16, Some((7, 33))).expect("check");
        assert!(
            text.contains("231 of 231 elements") && text.contains("-> PASS"),
            "{text}"
        );
        let ln = "(x - mean(x)) * rsqrt(mean((x - mean(x)) * (x - mean(x))) + 1e-5) * g";
        let text = codegen(ln, &ins, Dtype::F32, Some((3, 1000))).expect("check");
        assert!(text.contains("-> PASS"), "{text}");
        let text =
            codegen("rsqrt(mean(x * x) + 1e-5)", &ins, Dtype::F32, Some((5, 67))).expect("check");
        assert!(
            text.contains("5 of 5 per-row values") && text.contains("-> PASS"),
            "{text}"
        );
    }
}
