//! Fixture kernels compiled by nvcc (tests/kernels/*.cu -> *.ptx, committed), launched through
//! the public API and checked against CPU references, plus the sanitizer checks they exist to
//! trigger (out-of-bounds, shared races, pending cp.async, divergence, deadlock) and the
//! coalescing / bank-conflict counters.

mod common;

use common::{bf16_bits, bf16_value, cfg, cfg1, Dev, Params};
use ptx_emu::{EmuError, Module};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const OOB_WRITE: &str = include_str!("kernels/oob_write.ptx");
const MISSING_SYNC: &str = include_str!("kernels/missing_sync.ptx");
const CP_ASYNC: &str = include_str!("kernels/cp_async.ptx");
const MMA_GEMM: &str = include_str!("kernels/mma_gemm.ptx");
const WARP_OPS: &str = include_str!("kernels/warp_ops.ptx");
const METRICS: &str = include_str!("kernels/metrics.ptx");
const SGEMM_TILED: &str = include_str!("kernels/sgemm_tiled.ptx");

/// Every fixture: (file stem, committed PTX, kernels it must define).
const FIXTURES: &[(&str, &str, &[&str])] = &[
    ("oob_write", OOB_WRITE, &["scale", "scale_oob"]),
    (
        "missing_sync",
        MISSING_SYNC,
        &["block_sum", "block_sum_nosync", "rotate", "rotate_nosync"],
    ),
    (
        "cp_async",
        CP_ASYNC,
        &["stage_reverse", "stage_reverse_nowait"],
    ),
    ("mma_gemm", MMA_GEMM, &["mma_gemm_bf16"]),
    (
        "warp_ops",
        WARP_OPS,
        &[
            "atomics",
            "bar_deadlock_exit",
            "bar_deadlock_split",
            "shfl_after_exit",
            "shfl_up",
            "tickets",
            "warp_collectives",
        ],
    ),
    (
        "metrics",
        METRICS,
        &["copy_f32", "gather_stride32", "smem_stride"],
    ),
    ("sgemm_tiled", SGEMM_TILED, &["sgemm_tiled"]),
];

const SEEDS: std::ops::Range<u64> = 0..4;

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(0x5eed_0000 + seed)
}

fn random_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

// ---- the committed PTX is nvcc's output ------------------------------------------------------

/// Recompiles every fixture with the flags the product uses for the emulator's PTX and checks
/// that the committed .ptx is exactly nvcc's output (header comment aside), so the fixtures
/// cannot go stale. Skipped (with the reason printed) when there is no nvcc.
#[test]
fn committed_ptx_matches_nvcc_output() {
    let nvcc = match common::find_nvcc() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("SKIPPED committed_ptx_matches_nvcc_output: {why}");
            return;
        }
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernels");
    let tmp = std::env::temp_dir().join(format!("ptx-emu-fixtures-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let handles: Vec<_> = FIXTURES
        .iter()
        .map(|&(stem, committed, _)| {
            let nvcc = nvcc.clone();
            let src = dir.join(format!("{stem}.cu"));
            let out = tmp.join(format!("{stem}.ptx"));
            std::thread::spawn(move || {
                let res = std::process::Command::new(&nvcc)
                    .args(common::NVCC_PTX_FLAGS)
                    .arg("-o")
                    .arg(&out)
                    .arg(&src)
                    .output()
                    .unwrap_or_else(|e| panic!("could not run {}: {e}", nvcc.display()));
                assert!(
                    res.status.success(),
                    "nvcc failed on {}:\n{}",
                    src.display(),
                    String::from_utf8_lossy(&res.stderr)
                );
                let fresh = std::fs::read_to_string(&out).unwrap();
                (stem, committed, fresh)
            })
        })
        .collect();
    let mut stale = Vec::new();
    for h in handles {
        let (stem, committed, fresh) = h.join().unwrap();
        if common::strip_ptx_header(committed) != common::strip_ptx_header(&fresh) {
            stale.push(stem);
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        stale.is_empty(),
        "committed PTX differs from nvcc's output for {stale:?}; regenerate (tests/kernels/README.md)"
    );
}

#[test]
fn every_fixture_parses_and_defines_its_kernels() {
    for &(stem, ptx, kernels) in FIXTURES {
        let m = Module::parse(ptx).unwrap_or_else(|e| panic!("{stem}.ptx: {e}"));
        assert_eq!(m.kernel_names(), kernels.to_vec(), "{stem}.ptx");
    }
}

// ---- 1. out-of-bounds store ------------------------------------------------------------------

#[test]
fn scale_matches_reference() {
    let dev = Dev::new(OOB_WRITE);
    for seed in SEEDS {
        for &(n, block) in &[(1usize, 32u32), (33, 32), (257, 96), (1000, 128)] {
            let mut r = rng(seed);
            let x = random_f32(&mut r, n);
            let a = r.random_range(-3.0f32..3.0);
            let dx = dev.upload_f32(&x);
            let dy = dev.output(4 * n as u64);
            let p = Params::new().ptr(dy).ptr(dx).f32(a).i32(n as i32);
            let grid = (n as u32).div_ceil(block);
            dev.launch("scale", &p, &cfg1(grid, block, seed))
                .unwrap_or_else(|e| panic!("n={n} seed={seed}: {e}"));
            let y = dev.read_f32(dy, n);
            for i in 0..n {
                // The kernel computes fma.rn(x, a, 1).
                let want = x[i].mul_add(a, 1.0);
                assert_eq!(y[i].to_bits(), want.to_bits(), "n={n} seed={seed} i={i}");
            }
        }
    }
}

#[test]
fn scale_oob_reports_the_store_past_the_end() {
    let dev = Dev::new(OOB_WRITE);
    for seed in SEEDS {
        for &(n, block) in &[(33usize, 32u32), (257, 96), (1000, 128)] {
            let mut r = rng(seed);
            let x = random_f32(&mut r, n);
            let dx = dev.upload_f32(&x);
            let dy = dev.output(4 * n as u64);
            let p = Params::new().ptr(dy).ptr(dx).f32(2.0).i32(n as i32);
            let grid = (n as u32 + 1).div_ceil(block);
            let err = dev
                .launch("scale_oob", &p, &cfg1(grid, block, seed))
                .expect_err("the store of y[n] must be reported");
            let msg = err.to_string();
            match &err {
                EmuError::OutOfBounds {
                    access,
                    size,
                    address,
                    space,
                    site,
                    nearest,
                } => {
                    assert_eq!(*access, "write", "{msg}");
                    assert_eq!(*size, 4, "{msg}");
                    assert_eq!(*address, dy + 4 * n as u64, "{msg}");
                    assert_eq!(*space, "global", "{msg}");
                    assert_eq!(site.kernel, "scale_oob", "{msg}");
                    // The thread with global index n.
                    assert_eq!(site.cta, [n as u32 / block, 0, 0], "{msg}");
                    assert_eq!(site.thread, [n as u32 % block, 0, 0], "{msg}");
                    assert!(site.instruction.starts_with("st.global"), "{msg}");
                    assert!(nearest.contains("past the end"), "{msg}");
                    assert!(
                        nearest.contains(&format!("{}-byte allocation", 4 * n)),
                        "{msg}"
                    );
                }
                other => panic!("expected OutOfBounds, got {other:?}"),
            }
            // The Display names all of it.
            assert!(msg.contains("scale_oob"), "{msg}");
            assert!(
                msg.contains(&format!("thread ({},0,0)", n as u32 % block)),
                "{msg}"
            );
            assert!(msg.contains("`st.global.f32`"), "{msg}");
            assert!(msg.contains(&format!("{:#x}", dy + 4 * n as u64)), "{msg}");
            assert!(msg.contains("past the end"), "{msg}");
        }
    }
}

// ---- 2. missing __syncthreads -----------------------------------------------------------------

/// The kernel's tree reduction, replayed in f32 in the same order (so the result is bitwise).
fn block_sum_ref(x: &[f32], block: usize) -> Vec<f32> {
    x.chunks(block)
        .map(|chunk| {
            let mut s = vec![0f32; block];
            s[..chunk.len()].copy_from_slice(chunk);
            let mut stride = block / 2;
            while stride > 0 {
                for t in 0..stride {
                    s[t] += s[t + stride];
                }
                stride /= 2;
            }
            s[0]
        })
        .collect()
}

#[test]
fn block_sum_with_barrier_matches_reference() {
    let dev = Dev::new(MISSING_SYNC);
    for seed in 0..8 {
        for &(n, block) in &[(1usize, 64usize), (100, 64), (1000, 128), (777, 256)] {
            let mut r = rng(seed);
            let x = random_f32(&mut r, n);
            let dx = dev.upload_f32(&x);
            let blocks = n.div_ceil(block);
            let dout = dev.output(4 * blocks as u64);
            let p = Params::new().ptr(dx).ptr(dout).i32(n as i32);
            dev.launch("block_sum", &p, &cfg1(blocks as u32, block as u32, seed))
                .unwrap_or_else(|e| panic!("n={n} seed={seed}: {e}"));
            let got = dev.read_f32(dout, blocks);
            let want = block_sum_ref(&x, block);
            for b in 0..blocks {
                assert_eq!(
                    got[b].to_bits(),
                    want[b].to_bits(),
                    "n={n} seed={seed} block {b}"
                );
                let exact: f64 = x[b * block..((b + 1) * block).min(n)]
                    .iter()
                    .map(|&v| f64::from(v))
                    .sum();
                assert!(
                    (f64::from(got[b]) - exact).abs() < 1e-4,
                    "{} vs {exact}",
                    got[b]
                );
            }
        }
    }
}

/// What a launch of a kernel with a missing barrier reported.
#[derive(Debug, Default)]
struct RaceOutcomes {
    races: usize,
    uninit: usize,
}

fn check_missing_barrier(err: &EmuError, kernel: &str, seed: u64, out: &mut RaceOutcomes) {
    let msg = err.to_string();
    match err {
        EmuError::SharedRace {
            first,
            second,
            first_access,
            second_access,
            offset,
        } => {
            out.races += 1;
            assert_eq!(first.kernel, kernel, "{msg}");
            // Threads of different warps of one CTA, one of them writing.
            assert_ne!(first.thread[0] / 32, second.thread[0] / 32, "{msg}");
            assert_eq!(first.cta, second.cta, "{msg}");
            assert!([*first_access, *second_access].contains(&"write"), "{msg}");
            assert!(*offset < 256 * 4, "{msg}");
            assert!(msg.contains("shared-memory race"), "{msg}");
            assert!(msg.contains("no barrier between"), "{msg}");
        }
        EmuError::UninitializedRead {
            space, site, state, ..
        } => {
            out.uninit += 1;
            assert_eq!(*space, "shared", "{msg}");
            assert_eq!(*state, "uninitialised", "{msg}");
            assert_eq!(site.kernel, kernel, "{msg}");
            assert!(site.instruction.starts_with("ld.shared"), "{msg}");
        }
        other => {
            panic!("{kernel} seed {seed}: expected SharedRace or UninitializedRead, got {other}")
        }
    }
}

#[test]
fn block_sum_without_barrier_never_passes() {
    let dev = Dev::new(MISSING_SYNC);
    let (n, block) = (500usize, 128u32);
    let mut outcomes = RaceOutcomes::default();
    for seed in 0..8 {
        let x = random_f32(&mut rng(seed), n);
        let dx = dev.upload_f32(&x);
        let blocks = (n as u32).div_ceil(block);
        let dout = dev.output(4 * u64::from(blocks));
        let p = Params::new().ptr(dx).ptr(dout).i32(n as i32);
        let err = dev
            .launch("block_sum_nosync", &p, &cfg1(blocks, block, seed))
            .expect_err("a missing barrier must never pass");
        check_missing_barrier(&err, "block_sum_nosync", seed, &mut outcomes);
    }
    // The first conflicting read is usually one whose writer has not run yet.
    eprintln!("block_sum_nosync over seeds 0..8: {outcomes:?}");
}

fn rotate_ref(x: &[f32], block: usize, iters: usize) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let (b, t) = (i / block, i % block);
            let mut w = x[i];
            for _ in 0..iters {
                w = w.mul_add(0.5, 1.0);
            }
            w + x[b * block + (t + 32) % block]
        })
        .collect()
}

#[test]
fn rotate_with_barrier_matches_reference() {
    let dev = Dev::new(MISSING_SYNC);
    for seed in 0..8 {
        for &(blocks, block, iters) in &[(1usize, 64usize, 0usize), (3, 128, 5), (2, 256, 64)] {
            let n = blocks * block;
            let x = random_f32(&mut rng(seed), n);
            let dx = dev.upload_f32(&x);
            let dy = dev.output(4 * n as u64);
            let p = Params::new().ptr(dx).ptr(dy).i32(iters as i32);
            dev.launch("rotate", &p, &cfg1(blocks as u32, block as u32, seed))
                .unwrap_or_else(|e| panic!("seed={seed} block={block}: {e}"));
            let y = dev.read_f32(dy, n);
            let want = rotate_ref(&x, block, iters);
            for i in 0..n {
                assert_eq!(
                    y[i].to_bits(),
                    want[i].to_bits(),
                    "seed={seed} block={block} i={i}"
                );
            }
        }
    }
}

#[test]
fn rotate_without_barrier_reports_a_shared_race() {
    let dev = Dev::new(MISSING_SYNC);
    let (blocks, block) = (2u32, 128u32);
    let n = (blocks * block) as usize;
    let mut outcomes = RaceOutcomes::default();
    for seed in 0..8 {
        let x = random_f32(&mut rng(seed), n);
        let dx = dev.upload_f32(&x);
        let dy = dev.output(4 * n as u64);
        let p = Params::new().ptr(dx).ptr(dy).i32(64);
        let err = dev
            .launch("rotate_nosync", &p, &cfg1(blocks, block, seed))
            .expect_err("a missing barrier must never pass");
        check_missing_barrier(&err, "rotate_nosync", seed, &mut outcomes);
    }
    eprintln!("rotate_nosync over seeds 0..8: {outcomes:?}");
    assert!(
        outcomes.races > 0,
        "no seed reported a SharedRace: {outcomes:?}"
    );
}

// ---- 3. cp.async -----------------------------------------------------------------------------

#[test]
fn cp_async_staging_matches_reference() {
    let dev = Dev::new(CP_ASYNC);
    for seed in SEEDS {
        for &(blocks, block) in &[(1usize, 32usize), (5, 96), (3, 160), (2, 256)] {
            let len = 4 * block;
            let n = blocks * len;
            let mut r = rng(seed);
            let x = random_f32(&mut r, n);
            let a = r.random_range(-3.0f32..3.0);
            let dx = dev.upload_f32(&x);
            let dy = dev.output(4 * n as u64);
            let p = Params::new().ptr(dx).ptr(dy).f32(a);
            let m = dev
                .launch(
                    "stage_reverse",
                    &p,
                    &cfg1(blocks as u32, block as u32, seed),
                )
                .unwrap_or_else(|e| panic!("blocks={blocks} block={block} seed={seed}: {e}"));
            let y = dev.read_f32(dy, n);
            for b in 0..blocks {
                for j in 0..len {
                    let want = a * x[b * len + len - 1 - j];
                    assert_eq!(y[b * len + j].to_bits(), want.to_bits(), "block {b} j {j}");
                }
            }
            assert_eq!(m.global_bytes_read, 4 * n as u64);
            assert_eq!(m.global_bytes_written, 4 * n as u64);
        }
    }
}

#[test]
fn cp_async_without_wait_reports_a_pending_read() {
    let dev = Dev::new(CP_ASYNC);
    for seed in SEEDS {
        let (blocks, block) = (3usize, 96usize);
        let n = blocks * 4 * block;
        let x = random_f32(&mut rng(seed), n);
        let dx = dev.upload_f32(&x);
        let dy = dev.output(4 * n as u64);
        let p = Params::new().ptr(dx).ptr(dy).f32(1.5);
        let err = dev
            .launch(
                "stage_reverse_nowait",
                &p,
                &cfg1(blocks as u32, block as u32, seed),
            )
            .expect_err("reading cp.async destinations before the wait must be reported");
        let msg = err.to_string();
        match &err {
            EmuError::UninitializedRead {
                state, space, site, ..
            } => {
                assert_eq!(*state, "pending cp.async", "{msg}");
                assert_eq!(*space, "shared", "{msg}");
                assert_eq!(site.kernel, "stage_reverse_nowait", "{msg}");
                assert!(site.instruction.starts_with("ld.shared"), "{msg}");
            }
            other => panic!("expected UninitializedRead, got {other}"),
        }
        assert!(msg.contains("pending cp.async"), "{msg}");
    }
}

// ---- 4. tensor-core GEMM -----------------------------------------------------------------------

fn run_mma_gemm(dev: &Dev, m: usize, n: usize, k: usize, seed: u64) -> ptx_emu::Metrics {
    let mut r = rng(seed);
    let a: Vec<u16> = (0..m * k)
        .map(|_| bf16_bits(r.random_range(-1.0f32..1.0)))
        .collect();
    let b: Vec<u16> = (0..k * n)
        .map(|_| bf16_bits(r.random_range(-1.0f32..1.0)))
        .collect();
    let da = dev.upload_u16(&a);
    let db = dev.upload_u16(&b);
    let dc = dev.output(4 * (m * n) as u64);
    let p = Params::new()
        .ptr(da)
        .ptr(db)
        .ptr(dc)
        .i32(m as i32)
        .i32(n as i32)
        .i32(k as i32);
    let grid = [(n / 32) as u32, (m / 16) as u32, 1];
    let metrics = dev
        .launch("mma_gemm_bf16", &p, &cfg(grid, [128, 1, 1], seed))
        .unwrap_or_else(|e| panic!("{m}x{n}x{k} seed={seed}: {e}"));
    let c = dev.read_f32(dc, m * n);
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut mag) = (0f64, 0f64);
            for kk in 0..k {
                let p = f64::from(bf16_value(a[i * k + kk])) * f64::from(bf16_value(b[kk * n + j]));
                exact += p;
                mag += p.abs();
            }
            let got = f64::from(c[i * n + j]);
            assert!(
                (got - exact).abs() <= 1e-5 * mag + 1e-30,
                "{m}x{n}x{k} seed={seed} C[{i},{j}] = {got}, want {exact} (sum|ab| = {mag})"
            );
        }
    }
    metrics
}

#[test]
fn mma_gemm_matches_f64_reference_and_counts() {
    let dev = Dev::new(MMA_GEMM);
    for seed in 0..3 {
        for &(m, n, k) in &[(64usize, 32usize, 48usize), (32, 64, 80), (16, 32, 16)] {
            let metrics = run_mma_gemm(&dev, m, n, k, seed);
            assert_eq!(metrics.flops, (2 * m * n * k) as u64, "{metrics}");
            assert!(metrics.warp_instructions > 0);
            assert!(metrics.thread_instructions >= metrics.warp_instructions);
            assert_eq!(metrics.ctas, ((m / 16) * (n / 32)) as u64);
            // Per K step per CTA: 32 A chunks + 64 B chunks of 16 bytes, C written once.
            let ctas = (m / 16) * (n / 32);
            assert_eq!(
                metrics.global_bytes_read,
                (ctas * (k / 16) * (512 + 1024)) as u64
            );
            assert_eq!(metrics.global_bytes_written, (4 * m * n) as u64);
            if seed == 0 {
                println!(
                    "mma_gemm {m}x{n}x{k}: {} shared requests, {} wavefronts, {} bank conflicts; {} warp / {} thread instructions",
                    metrics.shared_requests,
                    metrics.shared_wavefronts,
                    metrics.shared_bank_conflicts,
                    metrics.warp_instructions,
                    metrics.thread_instructions
                );
            }
        }
    }
}

// ---- 5. warp collectives, atomics, divergence, deadlock ----------------------------------------

#[test]
fn warp_collectives_match_hand_computed_lanes() {
    let dev = Dev::new(WARP_OPS);
    for seed in SEEDS {
        let (blocks, block) = (3usize, 64usize);
        let total = blocks * block;
        let mut r = rng(seed);
        // Warp 0 all non-negative (all() true), the others mixed; values in -50..=50.
        let x: Vec<i32> = (0..total)
            .map(|g| {
                let v = r.random_range(-50i32..=50);
                if g < 32 {
                    v.abs()
                } else {
                    v
                }
            })
            .collect();
        let dx = dev.upload_i32(&x);
        let dout = dev.output(4 * 10 * total as u64);
        let p = Params::new().ptr(dx).ptr(dout);
        dev.launch(
            "warp_collectives",
            &p,
            &cfg1(blocks as u32, block as u32, seed),
        )
        .unwrap_or_else(|e| panic!("seed={seed}: {e}"));
        let out = dev.read_i32(dout, 10 * total);
        let got = |k: usize, g: usize| out[k * total + g];
        for w in 0..total / 32 {
            let v: Vec<i32> = x[w * 32..w * 32 + 32].to_vec();
            let ballot = (0..32)
                .filter(|&l| v[l] & 1 != 0)
                .fold(0u32, |acc, l| acc | 1 << l);
            let all = v.iter().all(|&e| e >= 0) as i32;
            let any = v.iter().any(|&e| e > 40) as i32;
            let sum = v.iter().copied().fold(0i32, i32::wrapping_add);
            let min = *v.iter().min().unwrap();
            let max_u = v.iter().map(|&e| e as u32).max().unwrap() as i32;
            for l in 0..32 {
                let g = w * 32 + l;
                let ctx = format!("seed={seed} warp={w} lane={l}");
                // shfl.down 3: lanes 29..31 keep their own value.
                assert_eq!(
                    got(0, g),
                    if l + 3 < 32 { v[l + 3] } else { v[l] },
                    "down 3 {ctx}"
                );
                assert_eq!(got(1, g), v[l ^ 5], "xor 5 {ctx}");
                assert_eq!(got(2, g), v[(l * 7 + 3) % 32], "idx {ctx}");
                // Width 8: segments of 8 lanes.
                assert_eq!(
                    got(3, g),
                    if l % 8 + 3 < 8 { v[l + 3] } else { v[l] },
                    "down 3 w8 {ctx}"
                );
                assert_eq!(got(4, g) as u32, ballot, "ballot {ctx}");
                assert_eq!(got(5, g), all, "all {ctx}");
                assert_eq!(got(6, g), any, "any {ctx}");
                assert_eq!(got(7, g), sum, "redux add {ctx}");
                assert_eq!(got(8, g), min, "redux min.s32 {ctx}");
                assert_eq!(got(9, g), max_u, "redux max.u32 {ctx}");
            }
        }
        assert_eq!(got(5, 0), 1, "warp 0 is all non-negative");
    }
}

#[test]
fn shfl_up_matches_hand_computed_lanes() {
    let dev = Dev::new(WARP_OPS);
    for seed in SEEDS {
        let (blocks, block) = (2usize, 64usize);
        let total = blocks * block;
        let mut r = rng(seed);
        let x: Vec<i32> = (0..total).map(|_| r.random_range(-1000i32..1000)).collect();
        let dx = dev.upload_i32(&x);
        let dout = dev.output(4 * 2 * total as u64);
        let p = Params::new().ptr(dx).ptr(dout);
        dev.launch("shfl_up", &p, &cfg1(blocks as u32, block as u32, seed))
            .unwrap_or_else(|e| panic!("seed={seed}: {e}"));
        let out = dev.read_i32(dout, 2 * total);
        for g in 0..total {
            let l = g % 32;
            assert_eq!(
                out[g],
                if l >= 1 { x[g - 1] } else { x[g] },
                "up 1, lane {l}"
            );
            assert_eq!(
                out[total + g],
                if l % 8 >= 2 { x[g - 2] } else { x[g] },
                "up 2 w8, lane {l}"
            );
        }
    }
}

fn check_atomics(racecheck: bool) {
    let dev = Dev::new(WARP_OPS);
    for seed in SEEDS {
        for &(n, block) in &[(1usize, 32u32), (100, 64), (1000, 128)] {
            let mut r = rng(seed);
            let x: Vec<f32> = (0..n)
                .map(|_| r.random_range(0..64) as f32 * 0.25)
                .collect();
            let dx = dev.upload_f32(&x);
            let dtotal = dev.zeroed(4);
            let dhist = dev.zeroed(4 * 8);
            let p = Params::new().ptr(dx).ptr(dtotal).ptr(dhist).i32(n as i32);
            let grid = (n as u32).div_ceil(block);
            let mut c = cfg1(grid, block, seed);
            c.checks.racecheck = racecheck;
            dev.launch("atomics", &p, &c)
                .unwrap_or_else(|e| panic!("n={n} seed={seed}: {e}"));
            let total = dev.read_f32(dtotal, 1)[0];
            let want: f64 = x.iter().map(|&v| f64::from(v)).sum();
            assert_eq!(
                f64::from(total),
                want,
                "n={n} seed={seed}: every partial sum is exact"
            );
            let hist = dev.read_i32(dhist, 8);
            let mut want_hist = [0i32; 8];
            for &v in &x {
                want_hist[((v * 4.0) as i32 & 7) as usize] += 1;
            }
            assert_eq!(hist, want_hist.to_vec(), "n={n} seed={seed}");
        }
    }
}

#[test]
fn atomics_global_f32_and_shared_int_without_racecheck() {
    check_atomics(false);
}

#[test]
fn atomics_global_f32_and_shared_int() {
    check_atomics(true);
}

#[test]
fn atomic_tickets_are_a_permutation() {
    let dev = Dev::new(WARP_OPS);
    for seed in SEEDS {
        let n = 333usize;
        let dcounter = dev.zeroed(4);
        let dout = dev.output(4 * n as u64);
        let p = Params::new().ptr(dcounter).ptr(dout).i32(n as i32);
        dev.launch("tickets", &p, &cfg1(3, 128, seed)).unwrap();
        let mut t = dev.read_i32(dout, n);
        t.sort_unstable();
        assert_eq!(t, (0..n as i32).collect::<Vec<_>>(), "seed={seed}");
        assert_eq!(dev.read_i32(dcounter, 1)[0], n as i32);
    }
}

/// Lane 0 exits (after `iters` loop steps), lanes 1..31 shuffle with a full mask that names it.
/// Whatever the interleaving, the launch must fail and say why.
#[test]
fn shuffle_naming_an_exited_lane_fails() {
    let dev = Dev::new(WARP_OPS);
    let mut kinds = (0, 0);
    for iters in [0, 300] {
        for seed in 0..8 {
            let dout = dev.output(4 * 64);
            let p = Params::new().ptr(dout).i32(iters);
            let err = dev
                .launch("shfl_after_exit", &p, &cfg1(1, 64, seed))
                .expect_err("a full-mask shuffle with an exited lane must fail");
            let msg = err.to_string();
            match &err {
                EmuError::Divergence { detail } => {
                    kinds.0 += 1;
                    assert!(detail.contains("which has exited"), "{msg}");
                    assert!(detail.contains("kernel shfl_after_exit"), "{msg}");
                    assert!(detail.contains("shfl.sync.idx.b32"), "{msg}");
                }
                EmuError::Deadlock { kernel, detail, .. } => {
                    kinds.1 += 1;
                    assert_eq!(kernel, "shfl_after_exit", "{msg}");
                    assert!(detail.contains("wait at a warp-collective"), "{msg}");
                }
                other => panic!("iters {iters} seed {seed}: expected Divergence, got {other}"),
            }
        }
    }
    eprintln!(
        "shfl_after_exit: {} Divergence, {} Deadlock",
        kinds.0, kinds.1
    );
}

/// The same kernel with lane 0 exiting late: the error should not depend on the interleaving.
/// Lane 0 is named in the member mask and has exited, a divergent collective, whichever lane
/// the scheduler ran first.
#[test]
fn shuffle_naming_a_lane_that_exits_late_is_divergence() {
    let dev = Dev::new(WARP_OPS);
    for seed in 0..8 {
        let dout = dev.output(4 * 64);
        let p = Params::new().ptr(dout).i32(300);
        let err = dev
            .launch("shfl_after_exit", &p, &cfg1(1, 64, seed))
            .expect_err("must fail");
        assert!(
            matches!(err, EmuError::Divergence { .. }),
            "seed {seed}: {err}"
        );
    }
}

#[test]
fn barrier_never_reached_is_a_deadlock_naming_the_waiters() {
    let dev = Dev::new(WARP_OPS);
    for seed in SEEDS {
        let dout = dev.output(4 * 128);
        let p = Params::new().ptr(dout);
        let err = dev
            .launch("bar_deadlock_exit", &p, &cfg1(2, 128, seed))
            .expect_err("barrier 1 never fills");
        let msg = err.to_string();
        match &err {
            EmuError::Deadlock {
                kernel,
                cta,
                detail,
            } => {
                assert_eq!(kernel, "bar_deadlock_exit");
                assert!(cta[0] < 2 && cta[1] == 0 && cta[2] == 0, "{msg}");
                assert!(
                    detail.contains("32 thread(s) 0-31 wait at barrier 1"),
                    "{msg}"
                );
                assert!(detail.contains("96 thread(s) exited"), "{msg}");
            }
            other => panic!("expected Deadlock, got {other}"),
        }
        assert!(
            msg.contains("deadlock in kernel bar_deadlock_exit block ("),
            "{msg}"
        );
    }
}

#[test]
fn two_half_filled_barriers_are_a_deadlock_naming_both_groups() {
    let dev = Dev::new(WARP_OPS);
    for seed in SEEDS {
        let dout = dev.output(4 * 128);
        let p = Params::new().ptr(dout);
        let err = dev
            .launch("bar_deadlock_split", &p, &cfg1(1, 128, seed))
            .expect_err("neither barrier fills");
        let msg = err.to_string();
        match &err {
            EmuError::Deadlock {
                kernel,
                cta,
                detail,
            } => {
                assert_eq!(kernel, "bar_deadlock_split");
                assert_eq!(*cta, [0, 0, 0]);
                assert!(
                    detail.contains("64 thread(s) 0-63 wait at barrier 1"),
                    "{msg}"
                );
                assert!(
                    detail.contains("64 thread(s) 64-127 wait at barrier 2"),
                    "{msg}"
                );
                assert!(detail.contains("0 thread(s) exited"), "{msg}");
            }
            other => panic!("expected Deadlock, got {other}"),
        }
        assert!(msg.contains("block (0,0,0)"), "{msg}");
    }
}

// ---- 6. coalescing and bank conflicts ----------------------------------------------------------

#[test]
fn consecutive_f32_loads_are_four_sectors_per_request() {
    let dev = Dev::new(METRICS);
    for seed in SEEDS {
        let n = 32 * 24;
        let x = random_f32(&mut rng(seed), n);
        let dx = dev.upload_f32(&x);
        let dy = dev.output(4 * n as u64);
        let p = Params::new().ptr(dx).ptr(dy);
        let m = dev.launch("copy_f32", &p, &cfg1(3, 256, seed)).unwrap();
        assert_eq!(dev.read_f32(dy, n), x);
        assert_eq!(m.global_load_requests, (n / 32) as u64, "{m}");
        assert_eq!(m.sectors_per_load_request(), 4.0, "{m}");
        assert_eq!(m.sectors_per_store_request(), 4.0, "{m}");
        assert_eq!(m.global_bytes_read, 4 * n as u64);
    }
}

#[test]
fn stride_32_f32_loads_are_32_sectors_per_request() {
    let dev = Dev::new(METRICS);
    for seed in SEEDS {
        let n = 32 * 8;
        let x = random_f32(&mut rng(seed), 32 * n);
        let dx = dev.upload_f32(&x);
        let dy = dev.output(4 * n as u64);
        let p = Params::new().ptr(dx).ptr(dy);
        let m = dev
            .launch("gather_stride32", &p, &cfg1(2, 128, seed))
            .unwrap();
        let y = dev.read_f32(dy, n);
        for i in 0..n {
            assert_eq!(y[i], x[32 * i]);
        }
        assert_eq!(m.global_load_requests, (n / 32) as u64, "{m}");
        assert_eq!(m.sectors_per_load_request(), 32.0, "{m}");
        assert_eq!(m.sectors_per_store_request(), 4.0, "{m}");
    }
}

#[test]
fn shared_bank_conflicts_follow_the_stride() {
    let dev = Dev::new(METRICS);
    // (stride, wavefronts per request)
    for &(stride, wavefronts) in &[(1i32, 1u64), (2, 2), (33, 1), (32, 32)] {
        for seed in SEEDS {
            let blocks = 3u32;
            let dy = dev.output(4 * 32 * u64::from(blocks));
            let p = Params::new().ptr(dy).i32(stride);
            let m = dev
                .launch("smem_stride", &p, &cfg1(blocks, 32, seed))
                .unwrap();
            let y = dev.read_f32(dy, 32 * blocks as usize);
            for (i, v) in y.iter().enumerate() {
                assert_eq!(*v, ((i % 32 + 1) % 32) as f32);
            }
            // One store and one load request per warp.
            assert_eq!(
                m.shared_requests,
                2 * u64::from(blocks),
                "stride {stride}: {m}"
            );
            assert_eq!(
                m.shared_wavefronts,
                wavefronts * m.shared_requests,
                "stride {stride}: {m}"
            );
            assert_eq!(
                m.shared_bank_conflicts,
                (wavefronts - 1) * m.shared_requests,
                "stride {stride}: {m}"
            );
        }
    }
}
