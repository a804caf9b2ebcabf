//! `ferrotron-mpi-check`: the MPI communicator against the serial computation it replaces.
//!
//! Run it under `mpirun -np N` (N >= 1). Every rank computes every rank's input from a seed, so
//! the expected result of each collective is known locally and compared bitwise (f32
//! accumulation in rank order, one rounding for bf16, as `tests/comm.rs` specifies). Outputs
//! are poisoned first. Rank 0 prints one line per check and a closing `N passed, M failed`; the
//! exit code is non-zero on every rank if any check failed on any rank.
//!
//! `--bench` instead times all-reduce and all-gather of 1, 16 and 64 MiB (f32) and prints
//! nccl-tests-style bandwidths, next to `MPI_Allreduce` / `MPI_Allgather` for reference.

use ferrotron::comm::mpi::{self as fmpi, MpiComm, MpiRankCtx, MpiWorld};
use ferrotron::comm::{CommConfig, Communicator, ReduceOp};
use ferrotron::{DType, Device, Error, Result, Stream, Tensor};
use half::bf16;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const OPS: [ReduceOp; 4] = [ReduceOp::Sum, ReduceOp::Avg, ReduceOp::Max, ReduceOp::Min];
const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

fn config(secs: f64) -> CommConfig {
    CommConfig {
        timeout: Duration::from_secs_f64(secs),
        deadlock_grace: Duration::from_secs(1),
    }
}

/// Rank `r`'s input: deterministic, distinct per rank, not exactly representable sums.
fn data(rank: usize, n: usize, salt: u64) -> Vec<f64> {
    ferrotron::verify::random_vec(salt * 1000 + rank as u64, n, -2.0, 2.0)
}

fn to_dtype(v: &[f64], dtype: DType) -> Vec<f64> {
    match dtype {
        DType::BF16 => v.iter().map(|&x| bf16::from_f64(x).to_f64()).collect(),
        _ => v.iter().map(|&x| x as f32 as f64).collect(),
    }
}

/// The serial reduction: f32 accumulation in rank order, one rounding to the dtype at the end.
fn serial_reduce(inputs: &[Vec<f64>], op: ReduceOp, dtype: DType) -> Vec<f64> {
    let n = inputs[0].len();
    let out: Vec<f64> = (0..n)
        .map(|i| {
            let mut acc = inputs[0][i] as f32;
            for inp in &inputs[1..] {
                let x = inp[i] as f32;
                acc = match op {
                    ReduceOp::Sum | ReduceOp::Avg => acc + x,
                    ReduceOp::Max => acc.max(x),
                    ReduceOp::Min => acc.min(x),
                };
            }
            if op == ReduceOp::Avg {
                acc /= inputs.len() as f32;
            }
            acc as f64
        })
        .collect();
    to_dtype(&out, dtype)
}

/// Where two results first differ, if they do (bitwise).
fn bitwise_diff(got: &[f64], want: &[f64]) -> Option<String> {
    if got.len() != want.len() {
        return Some(format!("{} elements, expected {}", got.len(), want.len()));
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a.to_bits() != b.to_bits())?;
    let bad = got
        .iter()
        .zip(want)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    Some(format!(
        "{bad} of {} elements differ; first at {i}: got {:e}, expected {:e}",
        got.len(),
        got[i],
        want[i]
    ))
}

type Outcome = std::result::Result<(), String>;

fn same(got: &[f64], want: &[f64]) -> Outcome {
    match bitwise_diff(got, want) {
        None => Ok(()),
        Some(d) => Err(d),
    }
}

fn err<T>(r: Result<T>) -> std::result::Result<T, String> {
    r.map_err(|e| format!("error: {e}"))
}

/// The checks' verdicts on this rank.
struct Checks {
    rank: usize,
    names: Vec<String>,
    failed: Vec<bool>,
}

impl Checks {
    fn run(&mut self, name: impl Into<String>, f: impl FnOnce() -> Outcome) {
        let name = name.into();
        let t0 = Instant::now();
        let out = f();
        if let Err(why) = &out {
            eprintln!(
                "rank {}: FAIL {name}: {why} ({:.2} s)",
                self.rank,
                t0.elapsed().as_secs_f64()
            );
        }
        self.names.push(name);
        self.failed.push(out.is_err());
    }
}

struct Ctx<'a> {
    world: &'a MpiWorld,
    comm: MpiComm,
    dev: Device,
    rank: usize,
    size: usize,
}

impl Ctx<'_> {
    fn tensor(&self, v: &[f64], dtype: DType) -> std::result::Result<Tensor, String> {
        err(Tensor::from_f64(&self.dev, v, [v.len()], dtype))
    }

    fn poisoned(&self, n: usize, dtype: DType) -> std::result::Result<Tensor, String> {
        err(Tensor::poisoned(&self.dev, [n], dtype))
    }

    fn stream(&self) -> std::result::Result<Stream, String> {
        err(self.dev.new_stream())
    }
}

fn collectives(cx: &Ctx, ck: &mut Checks) {
    let (p, me) = (cx.size, cx.rank);
    let comm = &cx.comm;
    for &n in &[1usize, 7, 1000, 4099, 65537] {
        for dtype in DTYPES {
            for op in OPS {
                ck.run(format!("all_reduce n={n} {dtype} {op:?}"), || {
                    let inputs: Vec<Vec<f64>> =
                        (0..p).map(|r| to_dtype(&data(r, n, 1), dtype)).collect();
                    let want = serial_reduce(&inputs, op, dtype);
                    let s = cx.stream()?;
                    let mut t = cx.tensor(&inputs[me], dtype)?;
                    err(comm.all_reduce(&s, &mut t, op).and_then(|w| w.wait()))?;
                    same(&err(t.to_f64_vec(&s))?, &want)
                });
            }
        }
    }
    for &n in &[1usize, 13, 1024, 4097] {
        for dtype in DTYPES {
            ck.run(format!("all_gather n={n} {dtype}"), || {
                let blocks: Vec<Vec<f64>> =
                    (0..p).map(|r| to_dtype(&data(r, n, 2), dtype)).collect();
                let s = cx.stream()?;
                let x = cx.tensor(&blocks[me], dtype)?;
                let mut out = cx.poisoned(n * p, dtype)?;
                err(comm.all_gather(&s, &x, &mut out).and_then(|w| w.wait()))?;
                same(&err(out.to_f64_vec(&s))?, &blocks.concat())
            });
            for op in OPS {
                ck.run(format!("reduce_scatter n={n} {dtype} {op:?}"), || {
                    let inputs: Vec<Vec<f64>> = (0..p)
                        .map(|r| to_dtype(&data(r, n * p, 3), dtype))
                        .collect();
                    let want = serial_reduce(&inputs, op, dtype);
                    let s = cx.stream()?;
                    let x = cx.tensor(&inputs[me], dtype)?;
                    let mut out = cx.poisoned(n, dtype)?;
                    err(comm
                        .reduce_scatter(&s, &x, &mut out, op)
                        .and_then(|w| w.wait()))?;
                    same(&err(out.to_f64_vec(&s))?, &want[me * n..(me + 1) * n])
                });
            }
        }
    }
    // Uneven counts, zeros included.
    let counts: Vec<usize> = (0..p).map(|r| (r * 7 + 3) % 11).collect();
    let offs: Vec<usize> = (0..p).map(|r| counts[..r].iter().sum()).collect();
    let total: usize = counts.iter().sum();
    for dtype in DTYPES {
        ck.run(format!("all_gather_v counts={counts:?} {dtype}"), || {
            let mine: Vec<Vec<f64>> = (0..p)
                .map(|r| to_dtype(&data(r, counts[r], 4), dtype))
                .collect();
            let s = cx.stream()?;
            let x = cx.tensor(&mine[me], dtype)?;
            let mut out = cx.poisoned(total, dtype)?;
            err(comm
                .all_gather_v(&s, &x, &mut out, &counts)
                .and_then(|w| w.wait()))?;
            same(&err(out.to_f64_vec(&s))?, &mine.concat())
        });
        for op in OPS {
            ck.run(
                format!("reduce_scatter_v counts={counts:?} {dtype} {op:?}"),
                || {
                    let inputs: Vec<Vec<f64>> = (0..p)
                        .map(|r| to_dtype(&data(r, total, 5), dtype))
                        .collect();
                    let want = serial_reduce(&inputs, op, dtype);
                    let s = cx.stream()?;
                    let x = cx.tensor(&inputs[me], dtype)?;
                    let mut out = cx.poisoned(counts[me], dtype)?;
                    err(comm
                        .reduce_scatter_v(&s, &x, &mut out, &counts, op)
                        .and_then(|w| w.wait()))?;
                    same(
                        &err(out.to_f64_vec(&s))?,
                        &want[offs[me]..offs[me] + counts[me]],
                    )
                },
            );
        }
    }
    let mut roots = vec![p - 1, p / 2, 0];
    roots.dedup();
    for root in roots {
        for (n, dtype) in [
            (33usize, DType::BF16),
            (100_003, DType::F32),
            (2, DType::F32),
        ] {
            ck.run(format!("broadcast root={root} n={n} {dtype}"), || {
                let want = to_dtype(&data(root, n, 6), dtype);
                let s = cx.stream()?;
                let mut b = if me == root {
                    cx.tensor(&want, dtype)?
                } else {
                    cx.poisoned(n, dtype)?
                };
                err(comm.broadcast(&s, &mut b, root).and_then(|w| w.wait()))?;
                same(&err(b.to_f64_vec(&s))?, &want)
            });
        }
    }
    for (n, dtype) in [(17usize, DType::F32), (1000, DType::BF16)] {
        ck.run(format!("send/recv ring n={n} {dtype} tags 0 and 9"), || {
            if p == 1 {
                return Ok(());
            }
            let (next, prev) = ((me + 1) % p, (me + p - 1) % p);
            let s = cx.stream()?;
            let send_s = err(cx.dev.new_named_stream("p2p"))?;
            for tag in [0u32, 9] {
                let x = cx.tensor(&to_dtype(&data(me, n, 7 + tag as u64), dtype), dtype)?;
                let mut y = cx.poisoned(n, dtype)?;
                // Send on one stream and receive on another, so the ring cannot block.
                err(comm.send(&send_s, &x, next, tag))?;
                err(comm.recv(&s, &mut y, prev, tag).and_then(|w| w.wait()))?;
                let want = to_dtype(&data(prev, n, 7 + tag as u64), dtype);
                same(&err(y.to_f64_vec(&s))?, &want).map_err(|e| format!("tag {tag}: {e}"))?;
            }
            err(send_s.synchronize())
        });
    }
    ck.run("barrier", || {
        let s = cx.stream()?;
        for _ in 0..3 {
            err(comm.barrier(&s).and_then(|w| w.wait()))?;
        }
        Ok(())
    });
    ck.run("collectives on two streams, in enqueue order", || {
        let (a, b) = (cx.stream()?, cx.stream()?);
        let n = 3001;
        let inputs: Vec<Vec<f64>> = (0..p).map(|r| data(r, n, 8)).collect();
        let blocks: Vec<Vec<f64>> = (0..p)
            .map(|r| to_dtype(&data(r, 5, 9), DType::F32))
            .collect();
        let mut t = cx.tensor(&inputs[me], DType::F32)?;
        let x = cx.tensor(&blocks[me], DType::F32)?;
        let mut g = cx.poisoned(5 * p, DType::F32)?;
        let mut u = cx.tensor(&inputs[me], DType::BF16)?;
        let w1 = err(comm.all_reduce(&a, &mut t, ReduceOp::Sum))?;
        let w2 = err(comm.all_gather(&b, &x, &mut g))?;
        let w3 = err(comm.all_reduce(&b, &mut u, ReduceOp::Max))?;
        for w in [w1, w2, w3] {
            err(w.wait())?;
        }
        let f32_in: Vec<Vec<f64>> = inputs.iter().map(|v| to_dtype(v, DType::F32)).collect();
        let bf_in: Vec<Vec<f64>> = inputs.iter().map(|v| to_dtype(v, DType::BF16)).collect();
        same(
            &err(t.to_f64_vec(&a))?,
            &serial_reduce(&f32_in, ReduceOp::Sum, DType::F32),
        )?;
        same(&err(g.to_f64_vec(&b))?, &blocks.concat())?;
        same(
            &err(u.to_f64_vec(&b))?,
            &serial_reduce(&bf_in, ReduceOp::Max, DType::BF16),
        )
    });
    ck.run(
        "all_reduce bitwise identical over 5 runs with perturbed timing",
        || {
            let n = 10_007;
            let mut first: Option<Vec<f64>> = None;
            for run in 0..5u64 {
                std::thread::sleep(Duration::from_millis((run * 7 + me as u64 * 13) % 5));
                let s = cx.stream()?;
                let mut t = cx.tensor(&data(me, n, 10), DType::F32)?;
                err(comm
                    .all_reduce(&s, &mut t, ReduceOp::Sum)
                    .and_then(|w| w.wait()))?;
                let g = err(t.to_f64_vec(&s))?;
                match &first {
                    None => first = Some(g),
                    Some(f) => same(&g, f).map_err(|e| format!("run {run}: {e}"))?,
                }
            }
            Ok(())
        },
    );
    ck.run("split into two sub-communicators", || split_check(cx));
}

fn split_check(cx: &Ctx) -> Outcome {
    let (p, me) = (cx.size, cx.rank);
    // color = rank % 2; the key reverses the order; with 4 or more ranks the last one opts out.
    let opt_out = p >= 4 && me == p - 1;
    let color = (!opt_out).then_some((me % 2) as u32);
    let sub = err(cx.comm.split(color, 100 - me))?;
    let s = cx.stream()?;
    if let Some(sub) = &sub {
        if opt_out {
            return Err("split returned a communicator for a rank that opted out".into());
        }
        sub_check(cx, &**sub)?;
    } else if !opt_out {
        return Err("split returned None for a rank with a color".into());
    }
    // The parent still works after the split (every rank, the one that opted out included).
    let mut t = cx.tensor(&[1.0], DType::F32)?;
    err(cx
        .comm
        .all_reduce(&s, &mut t, ReduceOp::Sum)
        .and_then(|w| w.wait()))?;
    same(&err(t.to_f64_vec(&s))?, &[p as f64])
}

fn sub_check(cx: &Ctx, sub: &dyn Communicator) -> Outcome {
    let (p, me) = (cx.size, cx.rank);
    let mut members: Vec<usize> = (0..p)
        .filter(|&r| r % 2 == me % 2 && !(p >= 4 && r == p - 1))
        .collect();
    members.reverse();
    let want_rank = members.iter().position(|&r| r == me).expect("member");
    if (sub.rank(), sub.size()) != (want_rank, members.len()) {
        return Err(format!(
            "sub rank/size ({}, {}), expected ({want_rank}, {})",
            sub.rank(),
            sub.size(),
            members.len()
        ));
    }
    let s = cx.stream()?;
    let mut t = cx.tensor(&[me as f64 + 1.0; 3], DType::F32)?;
    err(sub
        .all_reduce(&s, &mut t, ReduceOp::Sum)
        .and_then(|w| w.wait()))?;
    let sum: f64 = members.iter().map(|&r| r as f64 + 1.0).sum();
    same(&err(t.to_f64_vec(&s))?, &[sum; 3])?;
    let x = cx.tensor(&[me as f64], DType::F32)?;
    let mut g = cx.poisoned(members.len(), DType::F32)?;
    err(sub.all_gather(&s, &x, &mut g).and_then(|w| w.wait()))?;
    let want: Vec<f64> = members.iter().map(|&r| r as f64).collect();
    same(&err(g.to_f64_vec(&s))?, &want)
}

fn expect_mismatch(
    r: Result<()>,
    seq: u64,
    check: impl Fn(&str, &[usize], &str, &[usize]) -> bool,
) -> Outcome {
    match r {
        Err(Error::CollectiveMismatch {
            seq: s,
            call_a,
            ranks_a,
            call_b,
            ranks_b,
            ..
        }) if s == seq => {
            if check(&call_a, &ranks_a, &call_b, &ranks_b) {
                Ok(())
            } else {
                Err(format!(
                    "unexpected mismatch report: ranks {ranks_a:?} {call_a} vs ranks {ranks_b:?} \
                     {call_b}"
                ))
            }
        }
        other => Err(format!(
            "expected CollectiveMismatch at call #{seq}, got {other:?}"
        )),
    }
}

fn failure_checks(cx: &Ctx, ck: &mut Checks) {
    let (p, me) = (cx.size, cx.rank);
    let others: Vec<usize> = (0..p).filter(|&r| r != 1).collect();
    // Communicators with a short timeout, made while every rank is in step (making one is
    // collective, and the timeout checks below leave the ranks seconds apart).
    let short: Vec<Option<MpiComm>> = (0..2).map(|_| cx.world.comm(config(2.0)).ok()).collect();
    ck.run("mismatch: rank 1 broadcasts, the others all-reduce", || {
        let comm = err(cx.world.comm(config(20.0)))?;
        if p == 1 {
            return Ok(());
        }
        let t0 = Instant::now();
        let s = cx.stream()?;
        let mut t = err(Tensor::zeros(&cx.dev, [8], DType::F32))?;
        let r = if me == 1 {
            comm.broadcast(&s, &mut t, 0).and_then(|w| w.wait())
        } else {
            comm.all_reduce(&s, &mut t, ReduceOp::Sum)
                .and_then(|w| w.wait())
        };
        expect_mismatch(r, 0, |a, ra, b, rb| {
            a.starts_with("all_reduce") && b.starts_with("broadcast") && ra == others && rb == [1]
        })?;
        // Same op, different counts.
        let s = cx.stream()?;
        let mut t = err(Tensor::zeros(&cx.dev, [8 + me], DType::F32))?;
        let r = comm
            .all_reduce(&s, &mut t, ReduceOp::Sum)
            .and_then(|w| w.wait());
        expect_mismatch(r, 1, |a, _, b, _| {
            a.contains("count=8") && b.contains("count=9")
        })?;
        // Explicit counts that disagree are named in full.
        let s = cx.stream()?;
        let mut counts = vec![2usize; p];
        if me == 0 {
            counts[p - 1] = 3;
        }
        let x = err(Tensor::zeros(&cx.dev, [counts[me]], DType::F32))?;
        let mut out = err(Tensor::zeros(
            &cx.dev,
            [counts.iter().sum::<usize>()],
            DType::F32,
        ))?;
        let r = comm
            .all_gather_v(&s, &x, &mut out, &counts)
            .and_then(|w| w.wait());
        let mut c0 = vec![2usize; p];
        c0[p - 1] = 3;
        let a_counts = format!("counts={c0:?}");
        let b_counts = format!("counts={:?}", vec![2usize; p]);
        expect_mismatch(r, 2, |a, ra, b, _| {
            a.contains(&a_counts) && b.contains(&b_counts) && ra == [0]
        })?;
        // The communicator still works.
        let s = cx.stream()?;
        let mut t = cx.tensor(&[1.0, 2.0], DType::F32)?;
        err(comm
            .all_reduce(&s, &mut t, ReduceOp::Sum)
            .and_then(|w| w.wait()))?;
        same(&err(t.to_f64_vec(&s))?, &[p as f64, 2.0 * p as f64])?;
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(format!("took {:?}", t0.elapsed()));
        }
        Ok(())
    });
    ck.run(
        "send/recv size and dtype mismatch: an error on both sides",
        || {
            if p == 1 || me > 1 {
                return Ok(());
            }
            let comm = &cx.comm;
            for (sent, want) in [
                ((8usize, DType::F32), (9usize, DType::F32)),
                ((8, DType::F32), (8, DType::BF16)),
            ] {
                let s = cx.stream()?;
                let r = if me == 0 {
                    let x = err(Tensor::zeros(&cx.dev, [sent.0], sent.1))?;
                    comm.send(&s, &x, 1, 3).and_then(|w| w.wait())
                } else {
                    let mut y = err(Tensor::zeros(&cx.dev, [want.0], want.1))?;
                    comm.recv(&s, &mut y, 0, 3).and_then(|w| w.wait())
                };
                match r {
                    Err(Error::CollectiveMismatch { call_a, call_b, .. })
                        if call_a.starts_with("send to rank 1 (tag 3)")
                            && call_b.starts_with("recv from rank 0 (tag 3)") => {}
                    other => return Err(format!("{sent:?} vs {want:?}: got {other:?}")),
                }
            }
            // The channel still works.
            let s = cx.stream()?;
            let v = to_dtype(&data(0, 8, 11), DType::F32);
            if me == 0 {
                let x = cx.tensor(&v, DType::F32)?;
                err(comm.send(&s, &x, 1, 3).and_then(|w| w.wait()))
            } else {
                let mut y = cx.poisoned(8, DType::F32)?;
                err(comm.recv(&s, &mut y, 0, 3).and_then(|w| w.wait()))?;
                same(&err(y.to_f64_vec(&s))?, &v)
            }
        },
    );
    ck.run(
        "a collective rejected when enqueued (unordered access) leaves the communicator usable",
        || {
            if !cx.dev.is_checked() {
                return Ok(()); // Only checked mode rejects an unordered access.
            }
            let comm = &cx.comm;
            let (a, b) = (cx.stream()?, cx.stream()?);
            let mut t = cx.tensor(&[1.0; 4], DType::F32)?;
            let first = err(comm.all_reduce(&a, &mut t, ReduceOp::Sum))?;
            // `t` is still being written on stream a: on stream b this is a race.
            match comm.all_reduce(&b, &mut t, ReduceOp::Sum) {
                Err(Error::UnsynchronizedAccess { .. }) => {}
                other => {
                    return Err(format!(
                        "expected UnsynchronizedAccess, got {:?}",
                        other.err()
                    ))
                }
            }
            err(first.wait())?;
            err(b.wait(first.event()))?;
            err(comm
                .all_reduce(&b, &mut t, ReduceOp::Sum)
                .and_then(|w| w.wait()))?;
            let pp = (p * p) as f64;
            same(&err(t.to_f64_vec(&b))?, &[pp; 4])
        },
    );
    ck.run(
        "bad arguments are rejected before anything is enqueued",
        || {
            let comm = &cx.comm;
            let s = cx.stream()?;
            let x = err(Tensor::zeros(&cx.dev, [4], DType::F32))?;
            let bad = |what: &str, ok: bool| if ok { Ok(()) } else { Err(what.to_string()) };
            bad(
                "send to rank p",
                matches!(comm.send(&s, &x, p, 0), Err(Error::InvalidRank { .. })),
            )?;
            bad(
                "send to self",
                matches!(comm.send(&s, &x, me, 0), Err(Error::InvalidArgument { .. })),
            )?;
            let i = err(Tensor::zeros(&cx.dev, [4], DType::I32))?;
            let mut o = err(Tensor::zeros(&cx.dev, [4 * p], DType::I32))?;
            bad(
                "i32 all_gather",
                matches!(
                    comm.all_gather(&s, &i, &mut o),
                    Err(Error::UnsupportedDType { .. })
                ),
            )?;
            let mut small = err(Tensor::zeros(&cx.dev, [4 * p + 1], DType::F32))?;
            bad(
                "all_gather output size",
                matches!(
                    comm.all_gather(&s, &x, &mut small),
                    Err(Error::ShapeMismatch { .. })
                ),
            )?;
            bad(
                "broadcast root p",
                matches!(
                    comm.broadcast(&s, &mut small, p),
                    Err(Error::InvalidRank { .. })
                ),
            )
        },
    );
    let last = p - 1;
    ck.run(
        format!("a rank that skips a collective is named by the timeout ([{last}])"),
        || {
            let comm = short[0].as_ref().ok_or("could not make the communicator")?;
            if me == last {
                return Ok(());
            }
            let t0 = Instant::now();
            let s = cx.stream()?;
            let mut t = err(Tensor::zeros(&cx.dev, [8], DType::F32))?;
            let r = comm
                .all_reduce(&s, &mut t, ReduceOp::Sum)
                .and_then(|w| w.wait());
            let named = format!("[{last}]");
            match r {
                Err(Error::Timeout { what, .. })
                    if what.contains("all_reduce #0") && what.contains(&named) =>
                {
                    if t0.elapsed() > Duration::from_secs(8) {
                        return Err(format!("took {:?}", t0.elapsed()));
                    }
                    // Later calls fail at once.
                    let s = cx.stream()?;
                    match comm.barrier(&s).and_then(|w| w.wait()) {
                        Err(Error::AsyncFailure { .. }) => Ok(()),
                        other => Err(format!("after the timeout, barrier gave {other:?}")),
                    }
                }
                other => Err(format!(
                    "expected a timeout naming rank {last}, got {other:?}"
                )),
            }
        },
    );
    ck.run("a recv that is never sent times out naming it", || {
        let comm = short[1].as_ref().ok_or("could not make the communicator")?;
        if p == 1 || me != 1 {
            return Ok(());
        }
        let s = cx.stream()?;
        let mut y = err(Tensor::zeros(&cx.dev, [4], DType::F32))?;
        match comm.recv(&s, &mut y, 0, 5).and_then(|w| w.wait()) {
            Err(Error::Timeout { what, .. }) if what.contains("recv #0 from rank 0 (tag 5)") => {
                Ok(())
            }
            other => Err(format!("got {other:?}")),
        }
    });
}

/// Combines every rank's verdicts (max over ranks) on a fresh communicator.
fn combine(world: &MpiWorld, dev: &Device, failed: &[bool]) -> Result<Vec<bool>> {
    let comm = world.comm(config(60.0))?;
    let s = dev.new_stream()?;
    let flags: Vec<f32> = failed.iter().map(|&f| f as u8 as f32).collect();
    let mut t = Tensor::from_slice(dev, &flags, [flags.len()])?;
    comm.all_reduce(&s, &mut t, ReduceOp::Max)?.wait()?;
    Ok(t.to_vec::<f32>(&s)?.iter().map(|&v| v != 0.0).collect())
}

/// The last check: a rank announces a failure; the others' pending waits end at once.
fn peer_failure_check(cx: &Ctx) -> Outcome {
    let (p, me) = (cx.size, cx.rank);
    let comm = err(cx.world.comm(config(60.0)))?;
    if p == 1 {
        return Ok(());
    }
    let culprit = p - 1;
    if me == culprit {
        std::thread::sleep(Duration::from_millis(300));
        cx.world
            .notify_failure("rank announces a deliberate failure (ferrotron-mpi-check)");
        return Ok(());
    }
    let t0 = Instant::now();
    let s = cx.stream()?;
    let mut t = err(Tensor::zeros(&cx.dev, [8], DType::F32))?;
    match comm
        .all_reduce(&s, &mut t, ReduceOp::Sum)
        .and_then(|w| w.wait())
    {
        Err(Error::PeerFailed { rank, .. }) if rank == culprit => {
            if t0.elapsed() > Duration::from_secs(5) {
                Err(format!("took {:?}", t0.elapsed()))
            } else {
                Ok(())
            }
        }
        other => Err(format!(
            "expected PeerFailed from rank {culprit}, got {other:?}"
        )),
    }
}

fn checks(ctx: MpiRankCtx) -> Result<bool> {
    let world = ctx.world;
    let (rank, size) = (ctx.rank, ctx.world_size);
    let dev = ctx.device.clone();
    let cx = Ctx {
        world,
        comm: ctx.comm,
        dev: dev.clone(),
        rank,
        size,
    };
    if rank == 0 {
        println!(
            "ferrotron-mpi-check: {size} ranks, {} on {}",
            cx.comm.name(),
            world.library_version().lines().next().unwrap_or("")
        );
    }
    let mut ck = Checks {
        rank,
        names: Vec::new(),
        failed: Vec::new(),
    };
    let t0 = Instant::now();
    collectives(&cx, &mut ck);
    failure_checks(&cx, &mut ck);
    let global = combine(world, &dev, &ck.failed)?;
    // Run last: once a peer announced a failure, every later wait in this process fails.
    let peer_name = format!(
        "a failing rank makes the others fail fast (PeerFailed from rank {})",
        size - 1
    );
    let peer = peer_failure_check(&cx);
    if let Err(why) = &peer {
        eprintln!("rank {rank}: FAIL {peer_name}: {why}");
    }
    let mut failed = 0;
    if rank == 0 {
        for (name, bad) in ck.names.iter().zip(&global) {
            println!("{} {name}", if *bad { "FAIL" } else { "ok  " });
            failed += *bad as usize;
        }
        println!(
            "{} {peer_name} (as seen by rank 0; other ranks exit non-zero if they disagree)",
            if peer.is_err() { "FAIL" } else { "ok  " }
        );
        failed += peer.is_err() as usize;
        let total = global.len() + 1;
        println!(
            "{} passed, {failed} failed ({:.1} s)",
            total - failed,
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(global.iter().all(|b| !b) && peer.is_ok())
}

fn bench(ctx: MpiRankCtx, iters: usize) -> Result<()> {
    use mpi::ffi;
    use std::os::raw::c_void;
    let (rank, p) = (ctx.rank, ctx.world_size);
    let dev = ctx.device.clone();
    let comm = ctx.comm;
    let s = dev.new_stream()?;
    // Times `f` (`iters` runs after one warm-up, between barriers); the slowest rank's mean.
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        comm.barrier(&s)?.wait()?;
        let t0 = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        let mine = t0.elapsed().as_secs_f64() / iters as f64;
        let mut t = Tensor::from_slice(&dev, &[mine as f32], [1])?;
        comm.all_reduce(&s, &mut t, ReduceOp::Max)?.wait()?;
        Ok(t.to_vec::<f32>(&s)?[0] as f64)
    };
    let gbs = |bytes: usize, secs: f64| bytes as f64 / secs / 1e9;
    if rank == 0 {
        println!(
            "bench: {p} processes, {iters} iterations after a warm-up; algbw = bytes/time, \
             busbw = algbw*2(n-1)/n (all_reduce), algbw*(n-1)/n (all_gather, bytes = output)"
        );
        println!(
            "{:<28} {:>9} {:>10} {:>12} {:>12}",
            "op", "MiB", "time ms", "algbw GB/s", "busbw GB/s"
        );
    }
    let report = |name: &str, bytes: usize, secs: f64, factor: f64| {
        if rank == 0 {
            let alg = gbs(bytes, secs);
            println!(
                "{name:<28} {:>9} {:>10.2} {:>12.3} {:>12.3}",
                bytes >> 20,
                secs * 1e3,
                alg,
                alg * factor
            );
        }
    };
    let ar = 2.0 * (p as f64 - 1.0) / p as f64;
    let ag = (p as f64 - 1.0) / p as f64;
    let secs = time(&mut || comm.barrier(&s)?.wait())?;
    let small = {
        let mut t = Tensor::zeros(&dev, [1024], DType::F32)?;
        time(&mut || comm.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait())?
    };
    let mpi_barrier = time(&mut || {
        // SAFETY: MPI_COMM_WORLD is live; blocking call.
        let rc = unsafe { ffi::MPI_Barrier(ffi::RSMPI_COMM_WORLD) };
        if rc != 0 {
            return Err(Error::invalid("MPI_Barrier", "rc", rc.to_string()));
        }
        Ok(())
    })?;
    if rank == 0 {
        println!(
            "latency: ferrotron barrier {:.1} us, all_reduce of 4 KiB {:.1} us; MPI_Barrier {:.1} us",
            secs * 1e6,
            small * 1e6,
            mpi_barrier * 1e6
        );
    }
    for mib in [1usize, 16, 64] {
        let bytes = mib << 20;
        let n = bytes / 4;
        let mut t = Tensor::from_f64(&dev, &data(rank, n, 12), [n], DType::F32)?;
        let secs = time(&mut || comm.all_reduce(&s, &mut t, ReduceOp::Sum)?.wait())?;
        report("ferrotron all_reduce f32", bytes, secs, ar);
        let mut raw: Vec<f32> = data(rank, n, 12).iter().map(|&x| x as f32).collect();
        let mut out = vec![0f32; n];
        let secs = time(&mut || {
            // SAFETY: both vectors hold `n` f32; MPI_COMM_WORLD is live; blocking call.
            let rc = unsafe {
                ffi::MPI_Allreduce(
                    raw.as_mut_ptr() as *const c_void,
                    out.as_mut_ptr() as *mut c_void,
                    n as i32,
                    ffi::RSMPI_FLOAT,
                    ffi::RSMPI_SUM,
                    ffi::RSMPI_COMM_WORLD,
                )
            };
            if rc != 0 {
                return Err(Error::invalid("MPI_Allreduce", "rc", rc.to_string()));
            }
            Ok(())
        })?;
        report("MPI_Allreduce f32 (ref)", bytes, secs, ar);
        let per = n / p;
        let x = Tensor::from_f64(&dev, &data(rank, per, 13), [per], DType::F32)?;
        let mut g = Tensor::zeros(&dev, [per * p], DType::F32)?;
        let secs = time(&mut || comm.all_gather(&s, &x, &mut g)?.wait())?;
        report("ferrotron all_gather f32", per * p * 4, secs, ag);
        let xs = vec![1f32; per];
        let mut gs = vec![0f32; per * p];
        let secs = time(&mut || {
            // SAFETY: `xs` holds `per` f32 and `gs` `per * p`; blocking call on a live comm.
            let rc = unsafe {
                ffi::MPI_Allgather(
                    xs.as_ptr() as *const c_void,
                    per as i32,
                    ffi::RSMPI_FLOAT,
                    gs.as_mut_ptr() as *mut c_void,
                    per as i32,
                    ffi::RSMPI_FLOAT,
                    ffi::RSMPI_COMM_WORLD,
                )
            };
            if rc != 0 {
                return Err(Error::invalid("MPI_Allgather", "rc", rc.to_string()));
            }
            Ok(())
        })?;
        report("MPI_Allgather f32 (ref)", per * p * 4, secs, ag);
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench_mode = args.iter().any(|a| a == "--bench");
    let iters = args
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: mpirun -np N ferrotron-mpi-check [--bench [--iters K]]");
        return ExitCode::SUCCESS;
    }
    // One process per rank: `launch` initialises MPI, runs the closure and finalises; if the
    // closure fails it tells the other ranks, whose waits then end at once.
    let timeout = if bench_mode { 120.0 } else { 20.0 };
    let out = fmpi::launch(config(timeout), |ctx| {
        if bench_mode {
            bench(ctx, iters).map(|()| true)
        } else {
            checks(ctx)
        }
    });
    match out {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ferrotron-mpi-check: {e}");
            ExitCode::FAILURE
        }
    }
}
