//! The tensor-parallel mappings (`ferrotron::parallel::tp::mappings`) and the shard copies under
//! them: every mapping's forward and backward against the serial computation for group sizes
//! 1..4, f32 and bf16, per-rank inputs and poisoned outputs; the adjoint (dot-product) identity
//! that makes each backward the transpose of its forward; the returned `Work` ordering another
//! stream; and bad input as typed errors on every rank, leaving the group usable.

mod common;

use common::watchdog;
use ferrotron::comm::{launch_with, CommConfig, Communicator, RankCtx, Work};
use ferrotron::ops::shard;
use ferrotron::parallel::tp::mappings as tp;
use ferrotron::verify::{compare, random_vec, Tolerance};
use ferrotron::{BackendKind, DType, Device, DeviceConfig, Error, Result, Stream, Tensor};
use std::time::Duration;

const WORLDS: &[usize] = &[1, 2, 3, 4];
const DTYPES: &[DType] = &[DType::F32, DType::BF16];

fn config() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(20),
        deadlock_grace: Duration::from_secs(1),
    }
}

type MapFn = fn(&Stream, &dyn Communicator, &Tensor, &mut Tensor) -> Result<Work>;

/// How a tensor is laid out relative to the full `[s, b, h]` activation.
#[derive(Clone, Copy, Debug)]
enum Layout {
    Full,
    ShardLast,
    ShardFirst,
}

/// The serial computation of one direction of a mapping, from every rank's input.
#[derive(Clone, Copy, Debug)]
enum Serial {
    Identity,
    Sum,
    SplitLast,
    GatherLast,
    SplitFirst,
    GatherFirst,
    ReduceScatterFirst,
}

struct Mapping {
    name: &'static str,
    fwd: MapFn,
    bwd: MapFn,
    fwd_in: Layout,
    fwd_out: Layout,
    serial_fwd: Serial,
    serial_bwd: Serial,
    /// Whether the forward input (and so the backward output) is the same on every rank; the
    /// adjoint identity counts a replicated tensor once, a per-rank one summed over ranks.
    in_replicated: bool,
    /// Whether the forward output (and so the backward input) is the same on every rank.
    out_replicated: bool,
}

/// The table under test: name, (fwd, bwd), (fwd input, fwd output) layouts, (serial fwd, serial
/// bwd), (input replicated, output replicated).
#[rustfmt::skip]
fn mappings() -> Vec<Mapping> {
    use Layout::*;
    use Serial::*;
    let m = |name, (fwd, bwd): (MapFn, MapFn), (fwd_in, fwd_out), (serial_fwd, serial_bwd), (in_replicated, out_replicated)| Mapping {
        name, fwd, bwd, fwd_in, fwd_out, serial_fwd, serial_bwd, in_replicated, out_replicated,
    };
    vec![
        m("copy_to_tp_region", (tp::copy_to_tp_region_fwd, tp::copy_to_tp_region_bwd), (Full, Full), (Identity, Sum), (true, false)),
        m("reduce_from_tp_region", (tp::reduce_from_tp_region_fwd, tp::reduce_from_tp_region_bwd), (Full, Full), (Sum, Identity), (false, true)),
        m("scatter_to_tp_region", (tp::scatter_to_tp_region_fwd, tp::scatter_to_tp_region_bwd), (Full, ShardLast), (SplitLast, GatherLast), (true, false)),
        m("gather_from_tp_region", (tp::gather_from_tp_region_fwd, tp::gather_from_tp_region_bwd), (ShardLast, Full), (GatherLast, SplitLast), (false, true)),
        m("scatter_to_sp_region", (tp::scatter_to_sp_region_fwd, tp::scatter_to_sp_region_bwd), (Full, ShardFirst), (SplitFirst, GatherFirst), (true, false)),
        m("gather_from_sp_region", (tp::gather_from_sp_region_fwd, tp::gather_from_sp_region_bwd), (ShardFirst, Full), (GatherFirst, ReduceScatterFirst), (false, false)),
        m("reduce_scatter_to_sp_region", (tp::reduce_scatter_to_sp_region_fwd, tp::reduce_scatter_to_sp_region_bwd), (Full, ShardFirst), (ReduceScatterFirst, GatherFirst), (false, false)),
    ]
}

/// The activation `[s, b, h]` of a test, split over `w` ranks.
#[derive(Clone, Copy, Debug)]
struct Geom {
    s: usize,
    b: usize,
    h: usize,
    w: usize,
}

impl Geom {
    fn new(w: usize) -> Geom {
        // Sizes that are not powers of two, so a block boundary off by one shows.
        Geom {
            s: 3 * w,
            b: 2,
            h: 5 * w,
            w,
        }
    }

    fn dims(&self, l: Layout) -> Vec<usize> {
        match l {
            Layout::Full => vec![self.s, self.b, self.h],
            Layout::ShardLast => vec![self.s, self.b, self.h / self.w],
            Layout::ShardFirst => vec![self.s / self.w, self.b, self.h],
        }
    }

    fn len(&self, l: Layout) -> usize {
        self.dims(l).iter().product()
    }
}

fn round(v: &[f64], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::F32 => v.iter().map(|&x| x as f32 as f64).collect(),
        DType::BF16 => v
            .iter()
            .map(|&x| half::bf16::from_f64(x).to_f64())
            .collect(),
        _ => unreachable!(),
    }
}

/// Rank `rank`'s input for a direction of a mapping: seeded by (salt, rank), or by salt alone
/// when the tensor is replicated; already rounded to `dtype`.
fn input(salt: u64, rank: usize, replicated: bool, n: usize, dtype: DType) -> Vec<f64> {
    let who = if replicated { 0 } else { rank as u64 + 1 };
    round(&random_vec(salt * 100 + who, n, -2.0, 2.0), dtype)
}

fn sum(inputs: &[Vec<f64>]) -> Vec<f64> {
    (0..inputs[0].len())
        .map(|i| inputs.iter().map(|v| v[i]).sum())
        .collect()
}

/// `x` (`rows` rows of `c`): columns `lo .. lo + w` of every row.
fn cols(x: &[f64], c: usize, lo: usize, w: usize) -> Vec<f64> {
    x.chunks(c)
        .flat_map(|row| row[lo..lo + w].to_vec())
        .collect()
}

/// The serial result on `rank`, from every rank's input.
fn serial(kind: Serial, inputs: &[Vec<f64>], rank: usize, g: Geom) -> Vec<f64> {
    let hp = g.h / g.w;
    let chunk = g.len(Layout::ShardFirst);
    match kind {
        Serial::Identity => inputs[rank].clone(),
        Serial::Sum => sum(inputs),
        Serial::SplitLast => cols(&inputs[rank], g.h, rank * hp, hp),
        Serial::GatherLast => {
            let rows = g.s * g.b;
            (0..rows)
                .flat_map(|r| {
                    inputs
                        .iter()
                        .flat_map(move |v| v[r * hp..(r + 1) * hp].to_vec())
                })
                .collect()
        }
        Serial::SplitFirst => inputs[rank][rank * chunk..(rank + 1) * chunk].to_vec(),
        Serial::GatherFirst => inputs.concat(),
        Serial::ReduceScatterFirst => sum(inputs)[rank * chunk..(rank + 1) * chunk].to_vec(),
    }
}

fn tolerance(kind: Serial, dtype: DType, w: usize) -> Tolerance {
    match kind {
        // Sums: f32 accumulation of w terms, one rounding to the dtype.
        Serial::Sum | Serial::ReduceScatterFirst => Tolerance::for_reduction(dtype, w),
        // Pure data movement: exact.
        _ => Tolerance::new(0.0, 0.0),
    }
}

fn tensor(ctx: &RankCtx, v: &[f64], dims: Vec<usize>, dtype: DType) -> Tensor {
    Tensor::from_f64(&ctx.device, v, dims, dtype).unwrap()
}

/// Runs `f` on a fresh poisoned output of `dims` and returns the output's values.
fn run(
    s: &Stream,
    ctx: &RankCtx,
    f: MapFn,
    x: &Tensor,
    dims: Vec<usize>,
    dtype: DType,
) -> Result<Vec<f64>> {
    let mut y = Tensor::poisoned(&ctx.device, dims, dtype)?;
    f(s, &ctx.comm, x, &mut y)?;
    y.to_f64_vec(s)
}

/// Per rank, per mapping: (forward output, backward output) for the inputs of `input(..)`.
type Outputs = Vec<(Vec<f64>, Vec<f64>)>;

/// Every mapping forward and backward on every rank of a `w`-rank group; inputs seeded by
/// `salt` (replicated where the mapping's contract says so when `respect_replication`).
fn run_all(w: usize, dtype: DType, salt: u64, respect_replication: bool) -> Vec<Outputs> {
    let g = Geom::new(w);
    launch_with(w, BackendKind::Cpu, config(), |ctx| {
        let s = ctx.device.new_named_stream("tp")?;
        let mut out = Vec::new();
        for (k, m) in mappings().iter().enumerate() {
            let salt = salt + 2 * k as u64;
            let xr = respect_replication && m.in_replicated;
            let yr = respect_replication && m.out_replicated;
            let xv = input(salt, ctx.rank, xr, g.len(m.fwd_in), dtype);
            let yv = input(salt + 1, ctx.rank, yr, g.len(m.fwd_out), dtype);
            let x = tensor(&ctx, &xv, g.dims(m.fwd_in), dtype);
            let y = tensor(&ctx, &yv, g.dims(m.fwd_out), dtype);
            let fx = run(&s, &ctx, m.fwd, &x, g.dims(m.fwd_out), dtype)?;
            let by = run(&s, &ctx, m.bwd, &y, g.dims(m.fwd_in), dtype)?;
            out.push((fx, by));
        }
        Ok(out)
    })
    .unwrap()
}

#[test]
fn every_mapping_matches_the_serial_computation() {
    watchdog(120, "tp_mappings_serial", || {
        for &w in WORLDS {
            for &dtype in DTYPES {
                let g = Geom::new(w);
                let got = run_all(w, dtype, 10, false);
                for (k, m) in mappings().iter().enumerate() {
                    let salt = 10 + 2 * k as u64;
                    let xs: Vec<_> = (0..w)
                        .map(|r| input(salt, r, false, g.len(m.fwd_in), dtype))
                        .collect();
                    let ys: Vec<_> = (0..w)
                        .map(|r| input(salt + 1, r, false, g.len(m.fwd_out), dtype))
                        .collect();
                    for (r, outs) in got.iter().enumerate() {
                        let (fx, by) = &outs[k];
                        for (dir, kind, ins, got) in [
                            ("fwd", m.serial_fwd, &xs, fx),
                            ("bwd", m.serial_bwd, &ys, by),
                        ] {
                            let want = serial(kind, ins, r, g);
                            let c = compare(got, &want, tolerance(kind, dtype, w));
                            assert!(c.pass, "{}_{dir} w={w} {dtype} rank {r}: {c}", m.name);
                        }
                    }
                }
            }
        }
    });
}

fn dot(a: &[f64], b: &[f64]) -> (f64, f64) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold((0.0, 0.0), |(s, m), (x, y)| (s + x * y, m + (x * y).abs()))
}

/// `<fwd(x), y> == <x, bwd(y)>` over the group, each side's inner product counting a
/// replicated tensor once and summing a per-rank one over the ranks. A replicated result must
/// also be bitwise the same on every rank.
#[test]
fn every_backward_is_the_adjoint_of_its_forward() {
    watchdog(120, "tp_mappings_adjoint", || {
        for &w in WORLDS {
            for &dtype in DTYPES {
                let g = Geom::new(w);
                let got = run_all(w, dtype, 1000, true);
                let rel = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
                for (k, m) in mappings().iter().enumerate() {
                    let salt = 1000 + 2 * k as u64;
                    let xs: Vec<_> = (0..w)
                        .map(|r| input(salt, r, m.in_replicated, g.len(m.fwd_in), dtype))
                        .collect();
                    let ys: Vec<_> = (0..w)
                        .map(|r| input(salt + 1, r, m.out_replicated, g.len(m.fwd_out), dtype))
                        .collect();
                    // <fwd(x), y>: fwd(x) lives where y does.
                    let lhs: Vec<_> = (0..w).map(|r| dot(&got[r][k].0, &ys[r])).collect();
                    // <x, bwd(y)>: bwd(y) lives where x does.
                    let rhs: Vec<_> = (0..w).map(|r| dot(&xs[r], &got[r][k].1)).collect();
                    let side = |v: &[(f64, f64)], replicated: bool, outs: usize| {
                        if replicated {
                            for r in 1..w {
                                let (a, b) = (&got[0][k], &got[r][k]);
                                let (a, b) = if outs == 0 {
                                    (&a.0, &b.0)
                                } else {
                                    (&a.1, &b.1)
                                };
                                assert!(
                                    a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                                    "{}: replicated result differs on rank {r}",
                                    m.name
                                );
                            }
                            v[0]
                        } else {
                            v.iter().fold((0.0, 0.0), |(s, a), (x, y)| (s + x, a + y))
                        }
                    };
                    let (l, lm) = side(&lhs, m.out_replicated, 0);
                    let (r, rm) = side(&rhs, m.in_replicated, 1);
                    let scale = lm.max(rm).max(f64::MIN_POSITIVE);
                    assert!(
                        (l - r).abs() <= rel * scale,
                        "{} w={w} {dtype}: <fwd(x), y> = {l}, <x, bwd(y)> = {r} (scale {scale})",
                        m.name
                    );
                }
            }
        }
    });
}

#[test]
fn the_returned_work_orders_another_stream() {
    watchdog(60, "tp_mappings_work", || {
        let w = 3;
        let g = Geom::new(w);
        let out = launch_with(w, BackendKind::Cpu, config(), |ctx| {
            let (s, other) = (
                ctx.device.new_named_stream("comm")?,
                ctx.device.new_named_stream("compute")?,
            );
            let xv = vec![ctx.rank as f64 + 1.0; g.len(Layout::ShardLast)];
            let x = tensor(&ctx, &xv, g.dims(Layout::ShardLast), DType::F32);
            let mut y = Tensor::poisoned(&ctx.device, g.dims(Layout::Full), DType::F32)?;
            let work = tp::gather_from_tp_region_fwd(&s, &ctx.comm, &x, &mut y)?;
            // Checked mode: reading y on `other` without this wait is UnsynchronizedAccess.
            other.wait(work.event())?;
            let v = y.to_f64_vec(&other)?;
            work.wait()?;
            Ok(v)
        })
        .unwrap();
        let row: Vec<f64> = (0..w).flat_map(|q| vec![q as f64 + 1.0; g.h / w]).collect();
        for v in out {
            assert_eq!(v, row.repeat(g.s * g.b));
        }
    });
}

#[test]
fn reading_the_output_from_another_stream_without_the_event_is_caught() {
    watchdog(60, "tp_mappings_unordered", || {
        let errs = launch_with(2, BackendKind::Cpu, config(), |ctx| {
            // Checked mode explicitly, so the test holds in release builds too.
            let dev = Device::cpu_with(DeviceConfig {
                checked: true,
                threads: 1,
            });
            let (s, other) = (
                dev.new_named_stream("comm")?,
                dev.new_named_stream("compute")?,
            );
            let x = Tensor::from_f64(&dev, &[1.0; 8], [2, 4], DType::F32)?;
            let mut y = Tensor::poisoned(&dev, [2, 4], DType::F32)?;
            let work = tp::reduce_from_tp_region_fwd(&s, &ctx.comm, &x, &mut y)?;
            let e = y.to_f64_vec(&other).unwrap_err();
            work.wait()?;
            Ok(e)
        })
        .unwrap();
        for e in errs {
            assert!(matches!(e, Error::UnsynchronizedAccess { .. }), "{e}");
        }
    });
}

/// Every bad call on every rank is a typed error before anything is enqueued; afterwards the
/// group still runs a mapping correctly (no rank entered a collective the others skipped).
#[test]
fn bad_input_is_a_typed_error_and_leaves_the_group_usable() {
    watchdog(60, "tp_mappings_bad_input", || {
        for w in [2usize, 3] {
            let results = launch_with(w, BackendKind::Cpu, config(), |ctx| {
                let s = ctx.device.new_named_stream("tp")?;
                let c: &dyn Communicator = &ctx.comm;
                let f32t = |dims: &[usize]| Tensor::zeros(&ctx.device, dims.to_vec(), DType::F32);
                let mut errs: Vec<(&str, Error)> = Vec::new();
                let mut bad = |what, r: Result<Work>| errs.push((what, r.err().expect(what)));
                // Hidden 7 does not split over w = 2 or 3.
                let x = f32t(&[4, 7])?;
                bad(
                    "scatter_tp h",
                    tp::scatter_to_tp_region_fwd(&s, c, &x, &mut f32t(&[4, 3])?),
                );
                bad(
                    "gather_tp bwd h",
                    tp::gather_from_tp_region_bwd(&s, c, &x, &mut f32t(&[4, 3])?),
                );
                // Sequence 5 does not split over w = 2 or 3.
                let x = f32t(&[5, 2, 6])?;
                let mut y = f32t(&[2, 2, 6])?;
                bad(
                    "scatter_sp s",
                    tp::scatter_to_sp_region_fwd(&s, c, &x, &mut y),
                );
                bad(
                    "gather_sp bwd s",
                    tp::gather_from_sp_region_bwd(&s, c, &x, &mut y),
                );
                bad(
                    "rs_sp s",
                    tp::reduce_scatter_to_sp_region_fwd(&s, c, &x, &mut y),
                );
                // Output of the wrong shape / dtype.
                let x = f32t(&[6, 6])?;
                bad(
                    "gather_tp shape",
                    tp::gather_from_tp_region_fwd(&s, c, &x, &mut f32t(&[6, 6])?),
                );
                bad(
                    "copy_to shape",
                    tp::copy_to_tp_region_fwd(&s, c, &x, &mut f32t(&[36])?),
                );
                let mut yb = Tensor::zeros(&ctx.device, [6, 6], DType::BF16)?;
                bad(
                    "reduce_from dtype",
                    tp::reduce_from_tp_region_fwd(&s, c, &x, &mut yb),
                );
                // A dtype no communicator carries.
                let xh = Tensor::zeros(&ctx.device, [6, 6], DType::F16)?;
                let mut yh = Tensor::zeros(&ctx.device, [6, 6], DType::F16)?;
                bad("f16", tp::copy_to_tp_region_bwd(&s, c, &xh, &mut yh));
                // A tensor on another device (an emulated GPU).
                let emu = Device::emu(0)?;
                let xe = Tensor::zeros(&emu, [6, 6], DType::F32)?;
                bad(
                    "device in",
                    tp::reduce_from_tp_region_fwd(&s, c, &xe, &mut f32t(&[6, 6])?),
                );
                let mut ye = Tensor::zeros(&emu, [6 * w, 6], DType::F32)?;
                bad(
                    "device out",
                    tp::gather_from_sp_region_fwd(&s, c, &x, &mut ye),
                );
                // A zero dimension and a rank-0 tensor.
                bad(
                    "zero",
                    tp::copy_to_tp_region_fwd(&s, c, &f32t(&[0, 6])?, &mut f32t(&[0, 6])?),
                );
                bad(
                    "rank0",
                    tp::copy_to_tp_region_fwd(&s, c, &f32t(&[])?, &mut f32t(&[])?),
                );
                // The group still works: all ranks are at the same point of its call sequence.
                let xv = vec![ctx.rank as f32; 6];
                let x = Tensor::from_slice(&ctx.device, &xv, [3, 2])?;
                let mut y = Tensor::poisoned(&ctx.device, [3, 2 * w], DType::F32)?;
                tp::gather_from_tp_region_fwd(&s, c, &x, &mut y)?.wait()?;
                let good = y.to_vec::<f32>(&s)?;
                Ok((errs, good))
            })
            .unwrap();
            for (errs, good) in results {
                let row: Vec<f32> = (0..w).flat_map(|q| [q as f32; 2]).collect();
                assert_eq!(good, row.repeat(3));
                for (what, e) in &errs {
                    let ok = match *what {
                        "scatter_tp h" | "gather_tp bwd h" => {
                            matches!(
                                e, Error::NotDivisible { dim: 7, parts, .. } if *parts == w
                            ) && e.to_string().contains("last dimension (hidden)")
                        }
                        "scatter_sp s" | "gather_sp bwd s" | "rs_sp s" => {
                            matches!(
                                e, Error::NotDivisible { dim: 5, parts, .. } if *parts == w
                            ) && e.to_string().contains("sequence")
                                && e.to_string().contains("tensor-parallel size")
                        }
                        "gather_tp shape" => matches!(
                            e, Error::ShapeMismatch { expected, got, .. }
                                if *expected == vec![6, 6 * w] && *got == vec![6, 6]
                        ),
                        "copy_to shape" => matches!(e, Error::ShapeMismatch { .. }),
                        "reduce_from dtype" => matches!(
                            e,
                            Error::DTypeMismatch {
                                expected: DType::F32,
                                got: DType::BF16,
                                ..
                            }
                        ),
                        "f16" => matches!(
                            e,
                            Error::UnsupportedDType {
                                dtype: DType::F16,
                                ..
                            }
                        ),
                        "device in" | "device out" => matches!(e, Error::DeviceMismatch { .. }),
                        "zero" => matches!(e, Error::ZeroDim { .. }),
                        "rank0" => matches!(e, Error::RankMismatch { .. }),
                        _ => unreachable!(),
                    };
                    assert!(ok, "w={w} {what}: unexpected error {e:?}");
                }
                assert_eq!(errs.len(), 13);
            }
        }
    });
}

// ---- the shard copies --------------------------------------------------------------------------

#[test]
fn shard_split_and_concat_round_trip_in_every_float_dtype() {
    watchdog(60, "shard_round_trip", || {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (rows, c, p) = (7, 12, 4);
            let v: Vec<f64> = (0..rows * c).map(|i| i as f64).collect(); // exact in every dtype
            let x = Tensor::from_f64(&dev, &v, [rows, c], dtype).unwrap();
            let mut parts = Vec::new();
            for i in 0..p {
                let mut o = Tensor::poisoned(&dev, [rows, c / p], dtype).unwrap();
                shard::split_last(&s, &x, i, p, &mut o).unwrap();
                assert_eq!(o.to_f64_vec(&s).unwrap(), cols(&v, c, i * c / p, c / p));
                parts.push(o);
            }
            let refs: Vec<&Tensor> = parts.iter().collect();
            let mut back = Tensor::poisoned(&dev, [rows, c], dtype).unwrap();
            shard::concat_last(&s, &refs, &mut back).unwrap();
            assert_eq!(back.to_f64_vec(&s).unwrap(), v);
            let mut first = Tensor::poisoned(&dev, [rows, c], dtype).unwrap();
            shard::copy(&s, &x, &mut first).unwrap();
            assert_eq!(first.to_f64_vec(&s).unwrap(), v);
            // split_first along [7*12] viewed as [6, 14] would not divide; [4, 21] by 2 does.
            let x2 = Tensor::from_f64(&dev, &v, [4, 21], dtype).unwrap();
            let mut o2 = Tensor::poisoned(&dev, [2, 21], dtype).unwrap();
            shard::split_first(&s, &x2, 1, 2, &mut o2).unwrap();
            assert_eq!(o2.to_f64_vec(&s).unwrap(), v[42..].to_vec());
        }
    });
}

#[test]
fn shard_concat_takes_uneven_and_repeated_parts_and_stacked_slabs() {
    watchdog(60, "shard_concat", || {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let a = Tensor::from_slice(&dev, &[1f32, 2., 3., 4.], [2, 2]).unwrap();
        let b = Tensor::from_slice(&dev, &[9f32, 8.], [2, 1]).unwrap();
        let mut out = Tensor::poisoned(&dev, [2, 5], DType::F32).unwrap();
        shard::concat_last(&s, &[&a, &b, &a], &mut out).unwrap();
        assert_eq!(
            out.to_vec::<f32>(&s).unwrap(),
            [1., 2., 9., 1., 2., 3., 4., 8., 3., 4.]
        );
        // [p=3, rows=2, w=2] -> [2, 6]
        let st: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let stacked = Tensor::from_slice(&dev, &st, [3, 2, 2]).unwrap();
        let mut out = Tensor::poisoned(&dev, [2, 6], DType::F32).unwrap();
        shard::concat_last_stacked(&s, &stacked, &mut out).unwrap();
        assert_eq!(
            out.to_vec::<f32>(&s).unwrap(),
            [0., 1., 4., 5., 8., 9., 2., 3., 6., 7., 10., 11.]
        );
    });
}

#[test]
fn shard_bad_input_is_a_typed_error() {
    watchdog(60, "shard_bad_input", || {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let z = |dims: &[usize], d| Tensor::zeros(&dev, dims.to_vec(), d).unwrap();
        let x = z(&[3, 10], DType::F32);
        let e = shard::split_last(&s, &x, 0, 4, &mut z(&[3, 2], DType::F32)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotDivisible {
                    dim: 10,
                    parts: 4,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = shard::split_last(&s, &x, 5, 5, &mut z(&[3, 2], DType::F32)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        let e = shard::split_last(&s, &x, 0, 0, &mut z(&[3, 2], DType::F32)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        let e = shard::split_last(&s, &x, 1, 5, &mut z(&[3, 3], DType::F32)).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        let e = shard::split_first(&s, &x, 0, 2, &mut z(&[1, 10], DType::F32)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotDivisible {
                    dim: 3,
                    parts: 2,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = shard::copy(&s, &x, &mut z(&[3, 10], DType::BF16)).unwrap_err();
        assert!(matches!(e, Error::DTypeMismatch { .. }), "{e:?}");
        let e = shard::copy(&s, &z(&[4], DType::I32), &mut z(&[4], DType::I32)).unwrap_err();
        assert!(matches!(e, Error::UnsupportedDType { .. }), "{e:?}");
        let e = shard::concat_last(&s, &[], &mut z(&[3, 10], DType::F32)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        let y = z(&[2, 10], DType::F32);
        let e = shard::concat_last(&s, &[&x, &y], &mut z(&[3, 20], DType::F32)).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        let yb = z(&[3, 10], DType::BF16);
        let e = shard::concat_last(&s, &[&x, &yb], &mut z(&[3, 20], DType::F32)).unwrap_err();
        assert!(matches!(e, Error::DTypeMismatch { .. }), "{e:?}");
        let e = shard::concat_last_stacked(&s, &x, &mut z(&[3, 10], DType::F32)).unwrap_err();
        assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
        // Another device: its tensors on this stream, and this op on its stream.
        let emu = Device::emu(0).unwrap();
        let xe = Tensor::zeros(&emu, [3, 10], DType::F32).unwrap();
        let e = shard::copy(&s, &xe, &mut z(&[3, 10], DType::F32)).unwrap_err();
        assert!(matches!(e, Error::DeviceMismatch { .. }), "{e:?}");
        let se = emu.new_stream().unwrap();
        let mut ye = Tensor::zeros(&emu, [3, 10], DType::F32).unwrap();
        // On an emulated GPU a copy is a device copy; converting dtypes there is unsupported.
        shard::copy(&se, &xe, &mut ye).expect("a device copy on the emulator");
        let mut fe = Tensor::zeros(&emu, [30], DType::BF16).unwrap();
        let e = shard::pack(&se, &xe, &mut fe, 0).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
        se.synchronize().unwrap();
        // Nothing above poisoned the stream.
        assert!(s.error().is_none());
        s.synchronize().unwrap();
    });
}
