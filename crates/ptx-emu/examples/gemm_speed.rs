//! Interpretation speed on a GEMM-sized workload: C[M,N] = A[M,K] x B[K,N] with M = N = K = 256
//! (16.8 M multiply-accumulates), run through the emulator twice:
//!
//! - `sgemm_tiled` (tests/kernels/sgemm_tiled.cu): f32, shared-memory tiles, a 4 x 4 register
//!   tile of FMAs per thread (4096 threads). Every MAC is one `fma.rn.f32` thread instruction, so
//!   this run executes at least 16.8 M thread instructions.
//! - `mma_gemm_bf16` (tests/kernels/mma_gemm.cu): bf16 inputs, f32 accumulation on the tensor-core
//!   path (cp.async, ldmatrix, mma.m16n8k16): 2048 MACs per warp-level `mma`, so the same MACs
//!   take a few million thread instructions.
//!
//! Each result is checked against an f64 CPU reference, then the figures are printed:
//!
//! ```text
//! cargo run --release -p ptx-emu --example gemm_speed [M N K]
//! ```

use ptx_emu::{LaunchConfig, Memory, Metrics, Module};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

const SGEMM_TILED: &str = include_str!("../tests/kernels/sgemm_tiled.ptx");
const MMA_GEMM: &str = include_str!("../tests/kernels/mma_gemm.ptx");

fn bytes_of<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    v.iter().flat_map(|&x| f(x)).collect()
}

fn params(ptrs: &[u64], ints: &[i32]) -> Vec<u8> {
    let mut p: Vec<u8> = ptrs.iter().flat_map(|x| x.to_le_bytes()).collect();
    p.extend(ints.iter().flat_map(|x| x.to_le_bytes()));
    p
}

/// Checks `c` against an f64 reference: |c - exact| <= K * eps_f32 * sum |a b| per element.
/// Returns the largest error relative to that bound.
fn check(c: &[f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> f64 {
    let mut worst = 0f64;
    for i in 0..m {
        for j in 0..n {
            let (mut exact, mut mag) = (0f64, 0f64);
            for kk in 0..k {
                let p = f64::from(a[i * k + kk]) * f64::from(b[kk * n + j]);
                exact += p;
                mag += p.abs();
            }
            let bound = k as f64 * f64::from(f32::EPSILON) * mag + 1e-30;
            let err = (f64::from(c[i * n + j]) - exact).abs();
            assert!(
                err <= bound,
                "C[{i},{j}] = {}, want {exact} (bound {bound})",
                c[i * n + j]
            );
            worst = worst.max(err / bound);
        }
    }
    worst
}

fn report(name: &str, m: &Metrics, macs: u64, secs: f64, worst: f64) {
    println!("{name}");
    println!("  thread-instructions: {}", m.thread_instructions);
    println!("  warp-instructions:   {}", m.warp_instructions);
    println!("  MACs:                {macs}");
    println!("  flops (counted):     {}", m.flops);
    println!(
        "  shared: {} requests, {} bank conflicts; global loads {:.2} sectors/request",
        m.shared_requests,
        m.shared_bank_conflicts,
        m.sectors_per_load_request()
    );
    println!("  wall seconds:        {secs:.3}");
    println!(
        "  rate:                {:.1} M thread-instructions/s",
        m.thread_instructions as f64 / secs / 1e6
    );
    println!("  max error / bound:   {worst:.3} (verified against an f64 reference)");
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("M N K must be integers"))
        .collect();
    let (m, n, k) = match args.as_slice() {
        [] => (256, 256, 256),
        [m, n, k] => (*m, *n, *k),
        _ => panic!("usage: gemm_speed [M N K]"),
    };
    assert!(
        m % 64 == 0 && n % 64 == 0 && k % 16 == 0,
        "M, N multiples of 64, K of 16"
    );
    let macs = (m * n * k) as u64;
    let mut rng = StdRng::seed_from_u64(1);
    let mem = Memory::new();

    // f32 tiled GEMM.
    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let module = Module::parse(SGEMM_TILED).expect("parse sgemm_tiled.ptx");
    let loaded = module.load(&mem, 0).expect("load");
    let da = mem.alloc(0, 4 * (m * k) as u64).unwrap();
    let db = mem.alloc(0, 4 * (k * n) as u64).unwrap();
    let dc = mem.alloc(0, 4 * (m * n) as u64).unwrap();
    mem.write(da, &bytes_of(&a, f32::to_le_bytes)).unwrap();
    mem.write(db, &bytes_of(&b, f32::to_le_bytes)).unwrap();
    mem.poison(dc, 4 * (m * n) as u64).unwrap();
    let cfg = LaunchConfig {
        grid: [(n / 64) as u32, (m / 64) as u32, 1],
        block: [256, 1, 1],
        ..LaunchConfig::default()
    };
    let p = params(&[da, db, dc], &[m as i32, n as i32, k as i32]);
    let t = Instant::now();
    let metrics = loaded.launch("sgemm_tiled", &p, &cfg).expect("sgemm_tiled");
    let secs = t.elapsed().as_secs_f64();
    let mut out = vec![0u8; 4 * m * n];
    mem.read_bytes(dc, &mut out).unwrap();
    let c: Vec<f32> = out
        .chunks_exact(4)
        .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
        .collect();
    let worst = check(&c, &a, &b, m, n, k);
    report(
        &format!("sgemm_tiled {m}x{n}x{k} (f32 FMA, 4x4 register tile per thread)"),
        &metrics,
        macs,
        secs,
        worst,
    );

    // bf16 tensor-core GEMM.
    let ab: Vec<u16> = a
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect();
    let bb: Vec<u16> = b
        .iter()
        .map(|&x| half::bf16::from_f32(x).to_bits())
        .collect();
    let af: Vec<f32> = ab
        .iter()
        .map(|&x| half::bf16::from_bits(x).to_f32())
        .collect();
    let bf: Vec<f32> = bb
        .iter()
        .map(|&x| half::bf16::from_bits(x).to_f32())
        .collect();
    let module = Module::parse(MMA_GEMM).expect("parse mma_gemm.ptx");
    let loaded = module.load(&mem, 0).expect("load");
    let da = mem.alloc(0, 2 * (m * k) as u64).unwrap();
    let db = mem.alloc(0, 2 * (k * n) as u64).unwrap();
    let dc = mem.alloc(0, 4 * (m * n) as u64).unwrap();
    mem.write(da, &bytes_of(&ab, u16::to_le_bytes)).unwrap();
    mem.write(db, &bytes_of(&bb, u16::to_le_bytes)).unwrap();
    mem.poison(dc, 4 * (m * n) as u64).unwrap();
    let cfg = LaunchConfig {
        grid: [(n / 32) as u32, (m / 16) as u32, 1],
        block: [128, 1, 1],
        ..LaunchConfig::default()
    };
    let p = params(&[da, db, dc], &[m as i32, n as i32, k as i32]);
    let t = Instant::now();
    let metrics = loaded
        .launch("mma_gemm_bf16", &p, &cfg)
        .expect("mma_gemm_bf16");
    let secs = t.elapsed().as_secs_f64();
    mem.read_bytes(dc, &mut out).unwrap();
    let c: Vec<f32> = out
        .chunks_exact(4)
        .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
        .collect();
    let worst = check(&c, &af, &bf, m, n, k);
    assert_eq!(metrics.flops, 2 * macs);
    report(
        &format!("mma_gemm_bf16 {m}x{n}x{k} (bf16 mma.m16n8k16, f32 accumulate)"),
        &metrics,
        macs,
        secs,
        worst,
    );
}
