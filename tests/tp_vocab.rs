//! Vocabulary parallelism (`ferrotron::parallel::tp::vocab`): the vocab-parallel cross-entropy
//! (forward losses and backward logits gradient) and the vocab-parallel embedding (forward rows,
//! backward weight gradient) for group sizes 1..4, f32 and bf16, against the single-device f64
//! computation on the same full logits / table, with poisoned outputs; bad input as typed errors.
//!
//! The embedding under sequence parallelism (reduce-scattered output): each rank's `[n/tp, h]`
//! output is bit for bit its rows of the all-reduced `[n, h]` output (exactly one rank
//! contributes a nonzero row per token, so both sums are exact, in f32 and bf16), and the weight
//! gradient from each rank's chunk of the output gradient (all-gathered in the backward) is bit
//! for bit the one from the full output gradient (the same f32 sums in the same token order);
//! tokens that do not divide by the group size are [`Error::NotDivisible`].

mod common;

use common::watchdog;
use ferrotron::comm::{launch_with, CommConfig, Communicator};
use ferrotron::parallel::tp::vocab::{
    vocab_parallel_cross_entropy_bwd, vocab_parallel_cross_entropy_fwd, vocab_range,
    VocabParallelEmbedding, VocabParallelEmbeddingConfig,
};
use ferrotron::reference::cross_entropy::{cross_entropy_bwd_ref, cross_entropy_fwd_ref};
use ferrotron::verify::{compare, random_vec, Tolerance};
use ferrotron::{BackendKind, DType, Error, Tensor};
use std::time::Duration;

const V: usize = 24; // divisible by 1, 2, 3, 4
const N: usize = 7;
const H: usize = 5;

fn config() -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs(20),
        deadlock_grace: Duration::from_secs(1),
    }
}

/// Values as the device stores them (rounded to `dtype`).
fn rounded(dtype: DType, v: &[f64]) -> Vec<f64> {
    match dtype {
        DType::BF16 => v
            .iter()
            .map(|&x| half::bf16::from_f64(x).to_f64())
            .collect(),
        _ => v.iter().map(|&x| x as f32 as f64).collect(),
    }
}

fn targets(seed: u64) -> Vec<i32> {
    random_vec(seed, N, 0.0, V as f64 - 1e-9)
        .iter()
        .map(|&x| x as i32)
        .collect()
}

#[test]
fn vocab_parallel_cross_entropy_matches_the_full_softmax() {
    watchdog(60, "tp_vocab_ce", || {
        for &w in &[1usize, 2, 3, 4] {
            for dtype in [DType::F32, DType::BF16] {
                let logits = rounded(dtype, &random_vec(11, N * V, -4.0, 4.0));
                let tg = targets(12);
                let dloss: Vec<f64> = rounded(DType::F32, &random_vec(13, N, 0.1, 1.0));
                let want_loss = cross_entropy_fwd_ref(N, V, &logits, &tg);
                let want_d = cross_entropy_bwd_ref(N, V, &logits, &tg, &dloss);
                let out = launch_with(w, BackendKind::Cpu, config(), |ctx| {
                    let s = ctx.device.new_stream()?;
                    let (lo, hi) = vocab_range(V, ctx.rank, w)?;
                    let shard: Vec<f64> = (0..N)
                        .flat_map(|r| logits[r * V + lo..r * V + hi].to_vec())
                        .collect();
                    let x = Tensor::from_f64(&ctx.device, &shard, [N, hi - lo], dtype)?;
                    let t = Tensor::from_slice(&ctx.device, &tg, [N])?;
                    let mut loss = Tensor::poisoned(&ctx.device, [N], DType::F32)?;
                    let ce = vocab_parallel_cross_entropy_fwd(&s, &ctx.comm, &x, &t, &mut loss)?;
                    let dl: Vec<f32> = dloss.iter().map(|&v| v as f32).collect();
                    let dl = Tensor::from_slice(&ctx.device, &dl, [N])?;
                    let mut dx = Tensor::poisoned(&ctx.device, [N, hi - lo], dtype)?;
                    vocab_parallel_cross_entropy_bwd(&s, &ce, &t, &dl, &mut dx)?;
                    Ok((lo, hi, loss.to_f64_vec(&s)?, dx.to_f64_vec(&s)?))
                })
                .unwrap();
                let tol = Tolerance::for_reduction(DType::F32, V);
                for (rank, (lo, hi, loss, dx)) in out.iter().enumerate() {
                    let c = compare(loss, &want_loss, tol);
                    assert!(c.pass, "tp={w} {dtype} rank {rank} loss: {c}");
                    let want: Vec<f64> = (0..N)
                        .flat_map(|r| want_d[r * V + lo..r * V + hi].to_vec())
                        .collect();
                    let c = compare(dx, &want, Tolerance::for_dtype(dtype));
                    assert!(c.pass, "tp={w} {dtype} rank {rank} dlogits: {c}");
                }
                // The losses are the same on every rank, bitwise.
                assert!(out.windows(2).all(|p| p[0].2 == p[1].2), "tp={w}");
            }
        }
    });
}

#[test]
fn vocab_parallel_embedding_matches_the_full_table() {
    watchdog(60, "tp_vocab_embedding", || {
        for &w in &[1usize, 2, 3, 4] {
            for dtype in [DType::F32, DType::BF16] {
                let table = rounded(dtype, &random_vec(21, V * H, -1.0, 1.0));
                // Repeated tokens: their gradients add up.
                let mut tok = targets(22);
                tok[3] = tok[1];
                let dout = rounded(dtype, &random_vec(23, N * H, -1.0, 1.0));
                let mut want_out = vec![0.0; N * H];
                let mut want_grad = vec![0.0; V * H];
                for (i, &t) in tok.iter().enumerate() {
                    let t = t as usize;
                    want_out[i * H..(i + 1) * H].copy_from_slice(&table[t * H..(t + 1) * H]);
                    for j in 0..H {
                        want_grad[t * H + j] += dout[i * H + j];
                    }
                }
                let out = launch_with(w, BackendKind::Cpu, config(), |ctx| {
                    let s = ctx.device.new_stream()?;
                    let (lo, hi) = vocab_range(V, ctx.rank, w)?;
                    let wt =
                        Tensor::from_f64(&ctx.device, &table[lo * H..hi * H], [hi - lo, H], dtype)?;
                    let mut emb = VocabParallelEmbedding::new(&ctx.comm, wt)?;
                    let t = Tensor::from_slice(&ctx.device, &tok, [N])?;
                    let mut y = Tensor::poisoned(&ctx.device, [N, H], dtype)?;
                    emb.forward(&s, &ctx.comm, &t, &mut y)?;
                    let d = Tensor::from_f64(&ctx.device, &dout, [N, H], dtype)?;
                    emb.backward(&s, &ctx.comm, &t, &d)?;
                    emb.backward(&s, &ctx.comm, &t, &d)?; // accumulates
                    Ok((lo, hi, y.to_f64_vec(&s)?, emb.grad.to_f64_vec(&s)?))
                })
                .unwrap();
                for (rank, (lo, hi, y, g)) in out.iter().enumerate() {
                    // Exactly one rank contributes each row: the sum is exact.
                    assert_eq!(y, &want_out, "tp={w} {dtype} rank {rank} rows");
                    let want: Vec<f64> =
                        want_grad[lo * H..hi * H].iter().map(|v| 2.0 * v).collect();
                    let c = compare(g, &want, Tolerance::for_reduction(DType::F32, 4));
                    assert!(c.pass, "tp={w} {dtype} rank {rank} grad: {c}");
                }
            }
        }
    });
}

/// Tokens for the sequence-parallel embedding tests: divisible by 1, 2, 3 and 4.
const N_SP: usize = 12;

/// The embedding with and without sequence parallelism on the same shard, tokens and output
/// gradient, on one rank of a group of `w`: (non-SP output, SP output, non-SP weight gradient
/// from the full `dout`, SP weight gradient from this rank's chunk of `dout`, the vocabulary
/// range).
#[allow(clippy::type_complexity)]
fn embed_both(
    w: usize,
    dtype: DType,
    table: &[f64],
    tok: &[i32],
    dout: &[f64],
) -> Vec<(Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, usize, usize)> {
    let n = tok.len();
    launch_with(w, BackendKind::Cpu, config(), |ctx| {
        let (dev, r) = (&ctx.device, ctx.rank);
        let s = dev.new_stream()?;
        let (lo, hi) = vocab_range(V, r, w)?;
        let shard = || Tensor::from_f64(dev, &table[lo * H..hi * H], [hi - lo, H], dtype);
        let mut plain = VocabParallelEmbedding::new(&ctx.comm, shard()?)?;
        let sp_cfg = VocabParallelEmbeddingConfig {
            sequence_parallel: true,
        };
        let mut sp = VocabParallelEmbedding::with_config(&ctx.comm, shard()?, sp_cfg)?;
        assert!(!plain.config().sequence_parallel && sp.config().sequence_parallel);
        assert_eq!((plain.local_tokens(n)?, sp.local_tokens(n)?), (n, n / w));
        let t = Tensor::from_slice(dev, tok, [n])?;
        let mut y = Tensor::poisoned(dev, [n, H], dtype)?;
        plain.forward(&s, &ctx.comm, &t, &mut y)?;
        let rows = n / w;
        let mut y_sp = Tensor::poisoned(dev, [rows, H], dtype)?;
        sp.forward(&s, &ctx.comm, &t, &mut y_sp)?.wait()?;
        let d = Tensor::from_f64(dev, dout, [n, H], dtype)?;
        plain.backward(&s, &ctx.comm, &t, &d)?;
        let chunk = &dout[r * rows * H..(r + 1) * rows * H];
        let d_sp = Tensor::from_f64(dev, chunk, [rows, H], dtype)?;
        sp.backward(&s, &ctx.comm, &t, &d_sp)?;
        Ok((
            y.to_f64_vec(&s)?,
            y_sp.to_f64_vec(&s)?,
            plain.grad.to_f64_vec(&s)?,
            sp.grad.to_f64_vec(&s)?,
            lo,
            hi,
        ))
    })
    .unwrap()
}

#[test]
fn sequence_parallel_embedding_reduce_scatters_the_rows() {
    watchdog(60, "tp_vocab_embedding_sp", || {
        for &w in &[1usize, 2, 3, 4] {
            for dtype in [DType::F32, DType::BF16] {
                let table = rounded(dtype, &random_vec(31, V * H, -1.0, 1.0));
                let mut tok: Vec<i32> = random_vec(32, N_SP, 0.0, V as f64 - 1e-9)
                    .iter()
                    .map(|&x| x as i32)
                    .collect();
                // Repeated tokens, also across the ranks' chunks: their gradients add up.
                tok[5] = tok[0];
                tok[N_SP - 1] = tok[0];
                let dout = rounded(dtype, &random_vec(33, N_SP * H, -1.0, 1.0));
                let mut want_grad = vec![0.0; V * H];
                for (i, &t) in tok.iter().enumerate() {
                    for j in 0..H {
                        want_grad[t as usize * H + j] += dout[i * H + j];
                    }
                }
                let rows = N_SP / w;
                let out = embed_both(w, dtype, &table, &tok, &dout);
                for (r, (y, y_sp, g, g_sp, lo, hi)) in out.iter().enumerate() {
                    let what = format!("tp={w} {dtype} rank {r}");
                    // This rank's rows of the all-reduced output, bit for bit (one nonzero
                    // contribution per row: both collectives' sums are exact).
                    assert_eq!(y_sp.len(), rows * H, "{what}");
                    assert_eq!(
                        y_sp[..],
                        y[r * rows * H..(r + 1) * rows * H],
                        "{what}: SP output rows"
                    );
                    // And they are the table's rows.
                    let want: Vec<f64> = tok[r * rows..(r + 1) * rows]
                        .iter()
                        .flat_map(|&t| table[t as usize * H..(t as usize + 1) * H].to_vec())
                        .collect();
                    assert_eq!(y_sp, &want, "{what}: SP output vs table");
                    // The weight gradient from this rank's dout chunk (all-gathered) is bit
                    // for bit the one from the full dout: the same f32 sums in token order.
                    assert_eq!(g_sp, g, "{what}: SP weight gradient");
                    let c = compare(
                        g_sp,
                        &want_grad[lo * H..hi * H],
                        Tolerance::for_reduction(DType::F32, 3),
                    );
                    assert!(c.pass, "{what} SP grad vs reference: {c}");
                }
            }
        }
    });
}

#[test]
fn sequence_parallel_embedding_rejects_indivisible_tokens() {
    watchdog(60, "tp_vocab_embedding_sp_errors", || {
        for &w in &[2usize, 3, 4] {
            let errs = launch_with(w, BackendKind::Cpu, config(), |ctx| {
                let dev = &ctx.device;
                let s = dev.new_stream()?;
                let cfg = VocabParallelEmbeddingConfig {
                    sequence_parallel: true,
                };
                let wt = Tensor::zeros(dev, [V / w, H], DType::F32)?;
                let mut emb = VocabParallelEmbedding::with_config(&ctx.comm, wt, cfg)?;
                // N = 7 tokens divide by none of 2, 3, 4.
                let t = Tensor::from_slice(dev, &targets(41), [N])?;
                let e_local = emb.local_tokens(N).unwrap_err();
                let mut y = Tensor::poisoned(dev, [N / w, H], DType::F32)?;
                let e_fwd = emb
                    .forward(&s, &ctx.comm, &t, &mut y)
                    .err()
                    .expect("7 tokens");
                let d = Tensor::zeros(dev, [N / w, H], DType::F32)?;
                let e_bwd = emb.backward(&s, &ctx.comm, &t, &d).unwrap_err();
                // The full-size output is the wrong shape under sequence parallelism.
                let t12 = Tensor::from_slice(dev, &[0i32; N_SP], [N_SP])?;
                let mut full = Tensor::poisoned(dev, [N_SP, H], DType::F32)?;
                let e_shape = emb
                    .forward(&s, &ctx.comm, &t12, &mut full)
                    .err()
                    .expect("[12, h] out");
                // Nothing was enqueued and no collective issued: a good call still works on
                // every rank, and the gradient is untouched.
                let untouched = emb.grad.to_f64_vec(&s)?.iter().all(|&v| v == 0.0);
                let mut y12 = Tensor::poisoned(dev, [N_SP / w, H], DType::F32)?;
                emb.forward(&s, &ctx.comm, &t12, &mut y12)?.wait()?;
                let ok = y12.to_f64_vec(&s)?.iter().all(|&v| v == 0.0);
                Ok((e_local, e_fwd, e_bwd, e_shape, untouched && ok))
            })
            .unwrap();
            for (r, (e_local, e_fwd, e_bwd, e_shape, ok)) in errs.into_iter().enumerate() {
                let what = format!("tp={w} rank {r}");
                for e in [e_local, e_fwd, e_bwd] {
                    assert!(
                        matches!(e, Error::NotDivisible { dim: N, parts, .. } if parts == w),
                        "{what}: {e}"
                    );
                }
                assert!(
                    matches!(e_shape, Error::ShapeMismatch { .. }),
                    "{what}: {e_shape}"
                );
                assert!(
                    ok,
                    "{what}: a rejected call touched the layer or the stream"
                );
            }
        }
    });
}

#[test]
fn bad_vocab_input_is_a_typed_error() {
    watchdog(60, "tp_vocab_errors", || {
        assert!(matches!(
            vocab_range(25, 0, 2).unwrap_err(),
            Error::NotDivisible {
                dim: 25,
                parts: 2,
                ..
            }
        ));
        let errs = launch_with(2, BackendKind::Cpu, config(), |ctx| {
            let s = ctx.device.new_stream()?;
            let x = Tensor::zeros(&ctx.device, [N, V / 2], DType::F32)?;
            let mut loss = Tensor::zeros(&ctx.device, [N], DType::F32)?;
            // Wrong target dtype and loss shape: rejected before anything is enqueued.
            let tf = Tensor::zeros(&ctx.device, [N], DType::F32)?;
            let e1 =
                vocab_parallel_cross_entropy_fwd(&s, &ctx.comm, &x, &tf, &mut loss).unwrap_err();
            let ti = Tensor::from_slice(&ctx.device, &[0i32; N], [N])?;
            let mut short = Tensor::zeros(&ctx.device, [N - 1], DType::F32)?;
            let e2 =
                vocab_parallel_cross_entropy_fwd(&s, &ctx.comm, &x, &ti, &mut short).unwrap_err();
            // A target past the (whole) vocabulary fails the stream like a device-side assert.
            let mut bad = [0i32; N];
            bad[2] = V as i32;
            let tb = Tensor::from_slice(&ctx.device, &bad, [N])?;
            vocab_parallel_cross_entropy_fwd(&s, &ctx.comm, &x, &tb, &mut loss)?;
            let e3 = s.synchronize().unwrap_err();
            Ok((e1, e2, e3, ctx.comm.size()))
        })
        .unwrap();
        for (e1, e2, e3, _) in errs {
            assert!(matches!(e1, Error::DTypeMismatch { .. }), "{e1}");
            assert!(matches!(e2, Error::ShapeMismatch { .. }), "{e2}");
            assert!(
                e3.to_string().contains("out of range")
                    || matches!(e3, Error::IndexOutOfRange { .. })
                    || e3.to_string().contains("24"),
                "{e3}"
            );
        }
    });
}
