//! Acceptance tests of the pipeline schedules and the simulator: every schedule for a grid of
//! sizes is structurally complete, deadlock-free and causal; bubbles, makespans and peak memory
//! match the closed forms from the papers; broken schedules and configs are typed errors.
//!
//! Expectations are computed here from the closed forms and the validity rules, not by re-running
//! the generator's own logic.

use ferrotron::parallel::pp::simulate::simulate;
use ferrotron::parallel::pp::{
    build, Action, Costs, Lane, Placement, Schedule, ScheduleConfig, ScheduleKind, SimReport,
    StageCosts, TraceSpan,
};
use ferrotron::Error;

const PPS: [usize; 5] = [1, 2, 3, 4, 8];

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-9 * want.abs().max(1.0)
}

/// The validity rule, written independently of the generator: one chunk except for interleaved;
/// interleaved needs at least two ranks and a micro-batch count that is a multiple of pp.
fn should_be_valid(kind: ScheduleKind, pp: usize, m: usize, v: usize) -> bool {
    if pp == 0 || m == 0 || v == 0 {
        return false;
    }
    match kind {
        ScheduleKind::Interleaved => pp >= 2 && m % pp == 0,
        _ => v == 1,
    }
}

/// `F = 1`; the backward costs 2, split 1 + 1 (ZB-H1 runs its halves separately).
fn unit_costs(stages: usize, p2p: f64) -> Costs {
    Costs::uniform(stages, 1.0, 1.0, 1.0, p2p)
}

fn is_backward(a: &Action) -> bool {
    matches!(a, Action::Backward { .. } | Action::BackwardInput { .. })
}

/// The span of `want` on `rank`, exactly one.
fn span_of(rep: &SimReport, rank: usize, want: impl Fn(&Action) -> bool) -> TraceSpan {
    let found: Vec<&TraceSpan> = rep
        .spans
        .iter()
        .filter(|s| s.rank == rank && want(&s.action))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "rank {rank}: expected one span, got {found:?}"
    );
    *found[0]
}

/// Causality and completeness of a simulated run, from the spans alone.
fn assert_causal(sched: &Schedule, rep: &SimReport, what: &str) {
    let pl = sched.placement;
    let m = sched.microbatches;
    let stages = pl.pp * pl.chunks;
    let split = sched.kind == ScheduleKind::ZbH1;
    let per_pass = if split { 3 } else { 2 };
    let recomputes = sched.recompute.iter().filter(|&&r| r).count();
    let compute_spans = rep.spans.iter().filter(|s| s.lane == Lane::Compute).count();
    assert_eq!(
        compute_spans,
        stages * m * per_pass + recomputes * m,
        "{what}: compute span count"
    );
    let transfer_spans = rep.spans.len() - compute_spans;
    // Each of the stages-1 boundaries moves one activation and one gradient per micro-batch,
    // seen from both ends.
    assert_eq!(transfer_spans, (stages - 1) * m * 4, "{what}: transfers");
    for s in &rep.spans {
        assert!(
            s.start.is_finite() && s.end >= s.start && s.start >= 0.0,
            "{what}: bad span {s:?}"
        );
        assert_eq!(s.lane, Lane::of(&s.action));
    }
    // Lanes never run two things at once, and run in list order.
    for rank in 0..pl.pp {
        for lane in Lane::ALL {
            let mut spans: Vec<&TraceSpan> = rep
                .spans
                .iter()
                .filter(|s| s.rank == rank && s.lane == lane)
                .collect();
            let order: Vec<Action> = sched.ranks[rank]
                .iter()
                .filter(|a| Lane::of(a) == lane)
                .copied()
                .collect();
            let in_spans: Vec<Action> = spans.iter().map(|s| s.action).collect();
            assert_eq!(in_spans, order, "{what}: rank {rank} lane {lane:?} order");
            spans.sort_by(|a, b| a.start.total_cmp(&b.start));
            for w in spans.windows(2) {
                assert!(
                    w[0].end <= w[1].start + 1e-12,
                    "{what}: rank {rank} overlap {:?} {:?}",
                    w[0],
                    w[1]
                );
            }
        }
    }
    for stage in 0..stages {
        let (rank, chunk) = (stage % pl.pp, stage / pl.pp);
        for mb in 0..m {
            let f = span_of(rep, rank, |a| *a == Action::Forward { mb, chunk });
            let b = span_of(rep, rank, |a| {
                is_backward(a) && a.mb() == mb && a.chunk() == chunk
            });
            assert!(
                f.end <= b.start,
                "{what}: stage {stage} mb {mb}: F {f:?} after B {b:?}"
            );
            if split {
                let w = span_of(rep, rank, |a| *a == Action::BackwardWeight { mb, chunk });
                assert!(
                    b.end <= w.start,
                    "{what}: stage {stage} mb {mb}: W before B"
                );
            }
            if sched.recompute[stage] {
                let r = span_of(rep, rank, |a| *a == Action::Recompute { mb, chunk });
                assert!(
                    f.end <= r.start && r.end <= b.start,
                    "{what}: recompute order"
                );
            }
            if stage + 1 < stages {
                // The activation goes to stage + 1, the gradient comes back from it.
                let (nr, nc) = ((stage + 1) % pl.pp, (stage + 1) / pl.pp);
                let send = span_of(rep, rank, |a| {
                    *a == Action::SendAct {
                        mb,
                        chunk,
                        peer: nr,
                    }
                });
                let recv = span_of(rep, nr, |a| {
                    *a == Action::RecvAct {
                        mb,
                        chunk: nc,
                        peer: rank,
                    }
                });
                assert_eq!((send.start, send.end), (recv.start, recv.end), "{what}");
                assert!(f.end <= send.start, "{what}: send before its forward");
                let nf = span_of(rep, nr, |a| *a == Action::Forward { mb, chunk: nc });
                assert!(recv.end <= nf.start, "{what}: forward before its input");
                let gsend = span_of(rep, nr, |a| {
                    *a == Action::SendGrad {
                        mb,
                        chunk: nc,
                        peer: rank,
                    }
                });
                let grecv = span_of(rep, rank, |a| {
                    *a == Action::RecvGrad {
                        mb,
                        chunk,
                        peer: nr,
                    }
                });
                assert_eq!((gsend.start, gsend.end), (grecv.start, grecv.end), "{what}");
                let nb = span_of(rep, nr, |a| {
                    is_backward(a) && a.mb() == mb && a.chunk() == nc
                });
                assert!(
                    nb.end <= gsend.start,
                    "{what}: gradient sent before computed"
                );
                assert!(grecv.end <= b.start, "{what}: backward before its gradient");
            }
        }
    }
}

#[test]
fn every_schedule_builds_checks_and_runs_without_deadlock() {
    let mut built = 0;
    for kind in ScheduleKind::ALL {
        for pp in PPS {
            for m in 1..=16 {
                for v in [1, 2, 3] {
                    if v > 1 && kind != ScheduleKind::Interleaved {
                        continue;
                    }
                    let cfg = ScheduleConfig::new(kind, pp, m, v);
                    let what = format!("{kind} pp={pp} m={m} v={v}");
                    let res = build(&cfg);
                    if !should_be_valid(kind, pp, m, v) {
                        assert!(
                            matches!(res, Err(Error::InvalidArgument { .. })),
                            "{what}: expected a typed error, got {res:?}"
                        );
                        continue;
                    }
                    let sched = res.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(sched.ranks.len(), pp);
                    sched.check().unwrap_or_else(|e| panic!("{what}: {e}"));
                    for p2p in [0.0, 0.25] {
                        let rep = simulate(&sched, &unit_costs(pp * v, p2p))
                            .unwrap_or_else(|e| panic!("{what} p2p={p2p}: {e}"));
                        assert_causal(&sched, &rep, &what);
                    }
                    if pp > 1 {
                        // Every rank has the data of its neighbours' stages.
                        let rc = build(&cfg.clone().recompute_all()).unwrap();
                        rc.check().unwrap();
                        let rep = simulate(&rc, &unit_costs(pp * v, 0.1)).unwrap();
                        assert_causal(&rc, &rep, &format!("{what} recompute"));
                    }
                    built += 1;
                }
            }
        }
    }
    // 4 one-chunk kinds x 5 pp x 16 m, plus interleaved: pp in {2,3,4,8} x v in {1,2,3} x the
    // multiples of pp up to 16 (8 + 5 + 4 + 2).
    assert_eq!(built, 4 * 5 * 16 + 3 * (8 + 5 + 4 + 2));
}

#[test]
fn gpipe_and_1f1b_match_the_closed_forms() {
    // F = 1, B = Bi + W = 1.25 + 0.75 = 2.
    let (f, b) = (1.0, 2.0);
    for kind in [ScheduleKind::GPipe, ScheduleKind::OneFOneB] {
        for pp in PPS {
            for m in 1..=16 {
                let sched = build(&ScheduleConfig::new(kind, pp, m, 1)).unwrap();
                let rep = simulate(&sched, &Costs::uniform(pp, f, 1.25, 0.75, 0.0)).unwrap();
                let (p, mf) = (pp as f64, m as f64);
                let what = format!("{kind} pp={pp} m={m}");
                assert!(
                    close(rep.makespan, (mf + p - 1.0) * (f + b)),
                    "{what}: makespan {}",
                    rep.makespan
                );
                assert!(
                    close(rep.bubble_fraction, (p - 1.0) / (mf + p - 1.0)),
                    "{what}: bubble {}",
                    rep.bubble_fraction
                );
                for (i, r) in rep.ranks.iter().enumerate() {
                    let want = match kind {
                        ScheduleKind::GPipe => m,
                        _ => (pp - i).min(m),
                    };
                    assert_eq!(r.peak_activations, want, "{what}: rank {i} peak");
                    assert!(close(r.busy, mf * (f + b)));
                    assert_eq!(r.peak_stashed_inputs, 0);
                }
            }
        }
    }
}

#[test]
fn naive_bubble_is_p_minus_one_over_p() {
    for pp in PPS {
        for m in 1..=16 {
            let sched = build(&ScheduleConfig::new(ScheduleKind::Naive, pp, m, 1)).unwrap();
            let rep = simulate(&sched, &Costs::uniform(pp, 1.0, 1.5, 0.5, 0.0)).unwrap();
            let p = pp as f64;
            assert!(close(rep.bubble_fraction, (p - 1.0) / p), "pp={pp} m={m}");
            assert!(close(rep.makespan, m as f64 * p * 3.0), "pp={pp} m={m}");
            for r in &rep.ranks {
                assert_eq!(r.peak_activations, 1);
            }
        }
    }
}

#[test]
fn interleaved_matches_megatron_bubble_and_warmup_memory() {
    for pp in [2usize, 3, 4, 8] {
        for v in [1usize, 2, 3] {
            for m in (pp..=16).step_by(pp) {
                let sched =
                    build(&ScheduleConfig::new(ScheduleKind::Interleaved, pp, m, v)).unwrap();
                // Per chunk: F = 1, B = 2.
                let rep = simulate(&sched, &Costs::uniform(pp * v, 1.0, 1.5, 0.5, 0.0)).unwrap();
                let (p, mf, vf) = (pp as f64, m as f64, v as f64);
                let what = format!("interleaved pp={pp} v={v} m={m}");
                assert!(
                    close(rep.bubble_fraction, (p - 1.0) / (vf * mf + p - 1.0)),
                    "{what}: bubble {} want {}",
                    rep.bubble_fraction,
                    (p - 1.0) / (vf * mf + p - 1.0)
                );
                assert!(
                    close(rep.makespan, (vf * mf + p - 1.0) * 3.0),
                    "{what}: makespan {}",
                    rep.makespan
                );
                for (r, rank) in rep.ranks.iter().enumerate() {
                    // Megatron's warm-up: min(2 (p - r - 1) + (v - 1) p, m v) forwards, then one
                    // more forward before the first backward, so at most warm-up + 1 (model
                    // chunk, micro-batch) pairs hold activations (all m v when everything is
                    // warm-up).
                    let warm = (2 * (pp - r - 1) + (v - 1) * pp).min(m * v);
                    let bound = (warm + 1).min(m * v);
                    assert!(
                        rank.peak_activations <= bound,
                        "{what}: rank {r} peak {} > {bound}",
                        rank.peak_activations
                    );
                    assert_eq!(rank.peak_activations, bound, "{what}: rank {r}");
                }
            }
        }
    }
}

#[test]
fn zb_h1_makespan_and_memory() {
    let (f, b, w) = (1.0, 1.0, 1.0);
    for pp in PPS {
        for m in 1..=16 {
            let sched = build(&ScheduleConfig::new(ScheduleKind::ZbH1, pp, m, 1)).unwrap();
            let rep = simulate(&sched, &Costs::uniform(pp, f, b, w, 0.0)).unwrap();
            let what = format!("zb-h1 pp={pp} m={m}");
            let (p, mf) = (pp as f64, m as f64);
            if m >= pp {
                let want = mf * (f + b + w) + (p - 1.0) * (f + b - w);
                assert!(
                    close(rep.makespan, want),
                    "{what}: makespan {} want {want}",
                    rep.makespan
                );
                // A third of 1F1B's bubble (1F1B: (p-1)(F+B+W)).
                let one_f_one_b = mf * (f + b + w) + (p - 1.0) * (f + b + w);
                assert!(pp == 1 || rep.makespan < one_f_one_b);
            }
            for (i, r) in rep.ranks.iter().enumerate() {
                assert!(
                    r.peak_activations <= pp,
                    "{what}: rank {i} peak {}",
                    r.peak_activations
                );
                assert!(r.peak_activations <= m);
            }
            // Same memory as 1F1B on the first rank.
            assert_eq!(rep.ranks[0].peak_activations, pp.min(m), "{what}");
        }
    }
}

#[test]
fn recompute_all_keeps_one_activation_and_stashes_inputs() {
    for kind in ScheduleKind::ALL {
        for pp in PPS {
            for m in [1usize, 3, 4, 8, 16] {
                let v = if kind == ScheduleKind::Interleaved {
                    2
                } else {
                    1
                };
                if !should_be_valid(kind, pp, m, v) {
                    continue;
                }
                let cfg = ScheduleConfig::new(kind, pp, m, v);
                let costs = Costs::uniform(pp * v, 1.0, 1.0, 1.0, 0.0);
                let plain = simulate(&build(&cfg).unwrap(), &costs).unwrap();
                let rc = simulate(&build(&cfg.recompute_all()).unwrap(), &costs).unwrap();
                let what = format!("{kind} pp={pp} m={m}");
                for (r, (a, b)) in plain.ranks.iter().zip(&rc.ranks).enumerate() {
                    assert_eq!(b.peak_stashed_inputs, a.peak_activations, "{what} rank {r}");
                    if kind == ScheduleKind::ZbH1 {
                        // Under ZB the recomputed activations stay until the deferred weight
                        // gradient, so several can be live; never more than without recompute.
                        assert!(b.peak_activations <= a.peak_activations, "{what} rank {r}");
                    } else {
                        assert!(b.peak_activations <= 1, "{what} rank {r}");
                    }
                    // Recomputation costs one forward per (stage, micro-batch) pass.
                    assert!(close(b.busy, a.busy + (m * v) as f64), "{what} rank {r}");
                }
            }
        }
    }
}

/// 1F1B pp=2 m=4 with rank 1's receive of micro-batch 1 moved in front of that of micro-batch 0:
/// still structurally fine, but rank 0 sends micro-batch 0 first.
fn swapped_receives() -> Schedule {
    let mut sched = build(&ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4, 1)).unwrap();
    let list = &mut sched.ranks[1];
    let r0 = Action::RecvAct {
        mb: 0,
        chunk: 0,
        peer: 0,
    };
    let r1 = Action::RecvAct {
        mb: 1,
        chunk: 0,
        peer: 0,
    };
    let i1 = list.iter().position(|a| *a == r1).unwrap();
    list.remove(i1);
    let i0 = list.iter().position(|a| *a == r0).unwrap();
    list.insert(i0, r1);
    sched
}

#[test]
fn swapped_receives_deadlock_naming_both_ranks() {
    let sched = swapped_receives();
    sched
        .check()
        .expect("the broken schedule is structurally complete");
    let err = simulate(&sched, &unit_costs(2, 0.0)).unwrap_err();
    let Error::Deadlock { cycle } = &err else {
        panic!("expected a deadlock, got {err:?}");
    };
    let text = err.to_string();
    eprintln!("{text}");
    assert!(text.contains("rank 0") && text.contains("rank 1"), "{text}");
    assert!(
        cycle.contains("sA(mb 0") && cycle.contains("rA(mb 1"),
        "{cycle}"
    );
    // The unbroken schedule runs.
    let ok = build(&ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4, 1)).unwrap();
    simulate(&ok, &unit_costs(2, 0.0)).unwrap();
}

#[test]
fn bad_configs_are_typed_errors() {
    use ScheduleKind::*;
    let bad = [
        ScheduleConfig::new(OneFOneB, 0, 4, 1),
        ScheduleConfig::new(OneFOneB, 2, 0, 1),
        ScheduleConfig::new(OneFOneB, 2, 4, 0),
        ScheduleConfig::new(Interleaved, 2, 4, 0),
        ScheduleConfig::new(OneFOneB, 2, 4, 2),
        ScheduleConfig::new(GPipe, 2, 4, 2),
        ScheduleConfig::new(Naive, 2, 4, 2),
        ScheduleConfig::new(ZbH1, 2, 4, 3),
        ScheduleConfig::new(Interleaved, 4, 6, 2),
        ScheduleConfig::new(Interleaved, 3, 4, 2),
        ScheduleConfig::new(Interleaved, 1, 4, 2),
        ScheduleConfig::new(GPipe, usize::MAX, usize::MAX, 1),
        ScheduleConfig::new(Interleaved, usize::MAX / 2, 2, 3),
        ScheduleConfig::new(GPipe, 1 << 20, 2, 1),
        ScheduleConfig::new(GPipe, 2, usize::MAX, 1),
        ScheduleConfig {
            recompute: vec![true; 3],
            ..ScheduleConfig::new(OneFOneB, 2, 4, 1)
        },
        ScheduleConfig {
            recompute: vec![true; 2],
            ..ScheduleConfig::new(Interleaved, 2, 4, 2)
        },
    ];
    for cfg in bad {
        let res = build(&cfg);
        assert!(
            matches!(res, Err(Error::InvalidArgument { .. })),
            "{cfg:?}: {res:?}"
        );
    }
    // Right length is fine, including a mix.
    let cfg = ScheduleConfig {
        recompute: vec![true, false, false, true],
        ..ScheduleConfig::new(Interleaved, 2, 4, 2)
    };
    let sched = build(&cfg).unwrap();
    simulate(&sched, &unit_costs(4, 0.0)).unwrap();
}

#[test]
fn bad_costs_are_typed_errors() {
    let sched = build(&ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 4, 1)).unwrap();
    let good = unit_costs(2, 0.0);
    simulate(&sched, &good).unwrap();
    let mut bad = vec![
        unit_costs(1, 0.0),
        unit_costs(3, 0.0),
        unit_costs(2, -1.0),
        unit_costs(2, f64::NAN),
        unit_costs(2, f64::INFINITY),
        Costs::uniform(2, -1.0, 1.0, 1.0, 0.0),
        Costs::uniform(2, f64::NAN, 1.0, 1.0, 0.0),
        Costs::uniform(2, 1.0, 1.0, f64::NEG_INFINITY, 0.0),
    ];
    let mut c = good.clone();
    c.stages[1] = StageCosts {
        recompute: -0.5,
        ..c.stages[1].clone()
    };
    bad.push(c);
    let mut c = good.clone();
    c.stages[0].backward_input = f64::NAN;
    bad.push(c);
    for costs in bad {
        let res = simulate(&sched, &costs);
        assert!(
            matches!(res, Err(Error::InvalidArgument { .. })),
            "{costs:?}: {res:?}"
        );
    }
    // Zero costs are fine: everything happens at time 0.
    let rep = simulate(&sched, &Costs::uniform(2, 0.0, 0.0, 0.0, 0.0)).unwrap();
    assert_eq!(rep.makespan, 0.0);
    assert_eq!(rep.bubble_fraction, 0.0);
}

#[test]
fn check_rejects_broken_schedules() {
    let good = build(&ScheduleConfig::new(ScheduleKind::OneFOneB, 2, 2, 1)).unwrap();
    good.check().unwrap();
    let mut cases: Vec<(&str, Schedule)> = Vec::new();
    // A missing backward on rank 0.
    let mut s = good.clone();
    let i = s.ranks[0]
        .iter()
        .position(|a| matches!(a, Action::Backward { mb: 1, .. }))
        .unwrap();
    s.ranks[0].remove(i);
    cases.push(("missing backward", s));
    // A send to the wrong peer.
    let mut s = good.clone();
    for a in &mut s.ranks[0] {
        if let Action::SendAct { peer, .. } = a {
            *peer = 0;
        }
    }
    cases.push(("wrong peer", s));
    // Backward before forward.
    let mut s = good.clone();
    s.ranks[1] = vec![
        Action::RecvAct {
            mb: 0,
            chunk: 0,
            peer: 0,
        },
        Action::Backward { mb: 0, chunk: 0 },
        Action::Forward { mb: 0, chunk: 0 },
        Action::SendGrad {
            mb: 0,
            chunk: 0,
            peer: 0,
        },
    ];
    cases.push(("backward first", s));
    // Out-of-range micro-batch.
    let mut s = good.clone();
    s.ranks[0].push(Action::Forward { mb: 7, chunk: 0 });
    cases.push(("mb out of range", s));
    // Out-of-range chunk.
    let mut s = good.clone();
    s.ranks[0].push(Action::Forward { mb: 0, chunk: 1 });
    cases.push(("chunk out of range", s));
    // A receive with no send.
    let mut s = good.clone();
    s.ranks[0].retain(|a| !matches!(a, Action::SendAct { mb: 1, .. }));
    cases.push(("send missing", s));
    // A recompute on a stage that does not recompute.
    let mut s = good.clone();
    s.ranks[0].insert(2, Action::Recompute { mb: 0, chunk: 0 });
    cases.push(("stray recompute", s));
    // Missing recompute on a recomputing stage.
    let mut s = good.clone();
    s.recompute = vec![true, false];
    cases.push(("missing recompute", s));
    // Wrong rank count.
    let mut s = good.clone();
    s.ranks.pop();
    cases.push(("rank count", s));
    // Receive after its consumer.
    let mut s = good.clone();
    let i = s.ranks[1]
        .iter()
        .position(|a| matches!(a, Action::RecvAct { mb: 0, .. }))
        .unwrap();
    let r = s.ranks[1].remove(i);
    s.ranks[1].insert(i + 1, r);
    cases.push(("late receive", s));
    // Absurd placement.
    let mut s = good.clone();
    s.placement = Placement {
        pp: usize::MAX,
        chunks: 2,
    };
    cases.push(("overflow", s));
    for (what, s) in cases {
        let res = s.check();
        assert!(
            matches!(res, Err(Error::InvalidArgument { .. })),
            "{what}: {res:?}"
        );
        // The simulator refuses them too, without panicking.
        assert!(simulate(&s, &unit_costs(2, 0.0)).is_err(), "{what}");
    }
    // Messages name the rank and the action.
    let mut s = good.clone();
    for a in &mut s.ranks[0] {
        if let Action::SendAct { peer, .. } = a {
            *peer = 0;
        }
    }
    let text = s.check().unwrap_err().to_string();
    assert!(
        text.contains("rank 0") && text.contains("sA(mb 0"),
        "{text}"
    );
}

#[test]
fn schedule_kind_names_round_trip() {
    for kind in ScheduleKind::ALL {
        assert_eq!(kind.name().parse::<ScheduleKind>().unwrap(), kind);
        assert_eq!(kind.to_string().parse::<ScheduleKind>().unwrap(), kind);
        assert_eq!(
            kind.name().to_uppercase().parse::<ScheduleKind>().unwrap(),
            kind
        );
    }
    assert_eq!(
        "pipedream-flush".parse::<ScheduleKind>().unwrap(),
        ScheduleKind::OneFOneB
    );
    assert!(matches!(
        "2f2b".parse::<ScheduleKind>(),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn simulation_is_deterministic_and_counts_busy_time() {
    let sched = build(&ScheduleConfig::new(ScheduleKind::Interleaved, 4, 8, 2)).unwrap();
    let costs = Costs {
        stages: (0..8)
            .map(|s| StageCosts {
                forward: 1.0 + s as f64 * 0.1,
                backward_input: 1.3,
                backward_weight: 0.7,
                recompute: 1.0,
            })
            .collect(),
        p2p: 0.05,
    };
    let a = simulate(&sched, &costs).unwrap();
    let b = simulate(&sched, &costs).unwrap();
    assert_eq!(a, b);
    for (r, rank) in a.ranks.iter().enumerate() {
        // Rank r holds stages r and r + 4, 8 micro-batches each.
        let want = 8.0 * (2.0 + 0.1 * r as f64 + 0.1 * (r + 4) as f64 + 2.0 * 2.0);
        assert!(close(rank.busy, want), "rank {r}: {} vs {want}", rank.busy);
        assert!(close(rank.bubble, 1.0 - rank.busy / a.makespan));
    }
    let total: f64 = a.ranks.iter().map(|r| r.busy).sum();
    assert!(close(a.bubble_fraction, 1.0 - total / (4.0 * a.makespan)));
    // Transfers add latency: strictly slower than with free transfers.
    let free = simulate(&sched, &Costs { p2p: 0.0, ..costs }).unwrap();
    assert!(free.makespan < a.makespan);
}
