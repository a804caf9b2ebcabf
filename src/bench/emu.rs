//! `ferrotron profile`: run a kernel-backed op on the emulator and report Nsight-Compute-like
//! counters (instructions by class, sectors per request, bank conflicts, bytes, FLOPs) and the
//! roofline time the same work would take on a named GPU. The counters are exact and
//! repeatable; the times are estimates from published peaks, not measurements.

use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops;
use crate::reference::bias_gelu::{bias_gelu_bwd_ref, bias_gelu_fwd_ref};
use crate::tensor::Tensor;
use crate::verify::{compare, random_vec, Comparison, Tolerance};
use ptx_emu::{GpuSpec, Metrics, Roofline};
use std::fmt::Write;

/// What one profiled run measured.
#[derive(Clone, Debug)]
pub struct EmuProfile {
    /// The op (`bias_gelu_fwd`, `bias_gelu_bwd`).
    pub op: String,
    /// Rows × cols.
    pub shape: (usize, usize),
    /// Element type.
    pub dtype: DType,
    /// The emulator's counters over every kernel the op launched.
    pub metrics: Metrics,
    /// Host seconds the interpretation took.
    pub wall_s: f64,
    /// The output(s) against the f64 reference.
    pub check: Vec<(String, Comparison)>,
    /// Roofline estimates.
    pub rooflines: Vec<Roofline>,
}

impl EmuProfile {
    /// A human-readable report.
    pub fn report(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# {} {}x{} {} on the emulator ({:.2} s interpreting, {:.1} M thread-instructions/s)",
            self.op,
            self.shape.0,
            self.shape.1,
            self.dtype,
            self.wall_s,
            self.metrics.thread_instructions as f64 / self.wall_s.max(1e-9) / 1e6
        );
        let _ = writeln!(s, "{}", self.metrics);
        for (name, c) in &self.check {
            let _ = writeln!(s, "check {name}: {c}");
        }
        for r in &self.rooflines {
            let _ = writeln!(
                s,
                "roofline {}: {} bytes, {} flops -> {:.3} us ({}-bound; memory {:.3} us, compute {:.3} us)",
                r.gpu,
                r.bytes,
                r.flops,
                r.estimate_s * 1e6,
                r.bound,
                r.memory_s * 1e6,
                r.compute_s * 1e6
            );
        }
        s
    }
}

/// Runs `op` (`bias_gelu_fwd` or `bias_gelu_bwd`) on a fresh emulated device.
pub fn profile(op: &str, rows: usize, cols: usize, dtype: DType, seed: u64) -> Result<EmuProfile> {
    let dev = Device::emu(0)?;
    let s = dev.new_named_stream("profile")?;
    let n = rows * cols;
    let x = Tensor::from_f64(&dev, &random_vec(seed, n, -3.0, 3.0), [rows, cols], dtype)?;
    let b = Tensor::from_f64(&dev, &random_vec(seed + 1, cols, -1.0, 1.0), [cols], dtype)?;
    let xr = x.to_f64_vec(&s)?;
    let br = b.to_f64_vec(&s)?;
    let tol = Tolerance::for_dtype(dtype);
    let start = std::time::Instant::now();
    let check = match op {
        "bias_gelu_fwd" => {
            let mut y = Tensor::poisoned(&dev, [rows, cols], dtype)?;
            ops::bias_gelu_fwd(&s, &x, &b, &mut y)?;
            s.synchronize()?;
            let got = y.to_f64_vec(&s)?;
            vec![(
                "y".to_string(),
                compare(&got, &bias_gelu_fwd_ref(rows, cols, &xr, &br), tol),
            )]
        }
        "bias_gelu_bwd" => {
            let dy = Tensor::from_f64(
                &dev,
                &random_vec(seed + 2, n, -1.0, 1.0),
                [rows, cols],
                dtype,
            )?;
            let dyr = dy.to_f64_vec(&s)?;
            let mut dx = Tensor::poisoned(&dev, [rows, cols], dtype)?;
            let mut db = Tensor::poisoned(&dev, [cols], dtype)?;
            ops::bias_gelu_bwd(&s, &dy, &x, &b, &mut dx, Some(&mut db))?;
            s.synchronize()?;
            let (wdx, wdb) = bias_gelu_bwd_ref(rows, cols, &dyr, &xr, &br);
            vec![
                ("dx".to_string(), compare(&dx.to_f64_vec(&s)?, &wdx, tol)),
                (
                    "dbias".to_string(),
                    compare(
                        &db.to_f64_vec(&s)?,
                        &wdb,
                        Tolerance::for_reduction(dtype, rows),
                    ),
                ),
            ]
        }
        other => {
            return Err(Error::invalid(
                "profile",
                "op",
                format!("{other:?} has no kernel (bias_gelu_fwd, bias_gelu_bwd)"),
            ))
        }
    };
    let wall_s = start.elapsed().as_secs_f64();
    let metrics = dev.emu_metrics().unwrap_or_default();
    let rooflines = vec![
        metrics.roofline(&GpuSpec::h100_sxm()),
        metrics.roofline(&GpuSpec::a100_sxm()),
    ];
    Ok(EmuProfile {
        op: op.to_string(),
        shape: (rows, cols),
        dtype,
        metrics,
        wall_s,
        check,
        rooflines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_counts_are_exact_and_checked() {
        if !crate::kernels::kernels_built() {
            eprintln!("SKIP profile test: kernels not built");
            return;
        }
        let p = profile("bias_gelu_fwd", 4, 256, DType::F32, 3).unwrap();
        assert!(p.check.iter().all(|(_, c)| c.pass), "{}", p.report());
        // 1024 f32 in, 1024 out, bias 256: every thread reads x and bias, writes y.
        assert_eq!(p.metrics.global_bytes_written, 4 * 1024);
        assert_eq!(p.metrics.global_bytes_read, 4 * 1024 * 2);
        // Consecutive lanes read consecutive f32: 4 sectors per warp request.
        assert!(
            (p.metrics.sectors_per_store_request() - 4.0).abs() < 1e-9,
            "{}",
            p.report()
        );
        let again = profile("bias_gelu_fwd", 4, 256, DType::F32, 3).unwrap();
        assert_eq!(p.metrics, again.metrics, "counters are repeatable");
        assert!(profile("gemm", 4, 4, DType::F32, 0).is_err());
    }
}
