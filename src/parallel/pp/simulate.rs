//! The pipeline simulator: runs a [`super::Schedule`] against per-action costs.
//!
//! The model is the executor's: per rank one compute lane that runs the compute actions in list
//! order, and four transfer lanes (activation send, activation receive, gradient send, gradient
//! receive), each first-in first-out in list order. A receive is posted as soon as its lane is
//! free; a send is ready when its lane is free and the compute action that produced its data has
//! ended. Transfers are rendezvous: a send and its matching receive (same [`Placement::tag`])
//! must both be at the head of their lanes, and then the transfer takes `p2p` seconds on both. A
//! compute action starts when the compute lane is free and the receive it consumes (if any) has
//! ended.
//!
//! Every start time is the maximum of the end times it waits for, so the simulator propagates
//! end times through that dependency graph (no time step, exact up to f64 rounding) and the
//! result does not depend on the order it visits ranks in. When nothing can move while actions
//! remain, it follows the waits until they close a cycle and reports it as
//! [`Error::Deadlock`].

use std::collections::{HashMap, VecDeque};

use super::action::{Action, Placement};
use super::schedule::Schedule;
use super::trace::{Lane, TraceSpan};
use crate::error::{Error, Result};

/// Costs of one global stage's compute actions, in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct StageCosts {
    /// A forward pass.
    pub forward: f64,
    /// The input-gradient half of the backward (a full backward costs
    /// `backward_input + backward_weight`).
    pub backward_input: f64,
    /// The weight-gradient half of the backward.
    pub backward_weight: f64,
    /// Re-running the forward before the backward.
    pub recompute: f64,
}

/// What every action of a schedule costs.
#[derive(Clone, Debug, PartialEq)]
pub struct Costs {
    /// One entry per global stage (`pp * chunks`).
    pub stages: Vec<StageCosts>,
    /// Seconds per point-to-point transfer.
    pub p2p: f64,
}

impl Costs {
    /// The same costs on each of `stages` stages; recomputation costs a forward.
    pub fn uniform(
        stages: usize,
        forward: f64,
        backward_input: f64,
        backward_weight: f64,
        p2p: f64,
    ) -> Costs {
        Costs {
            stages: vec![
                StageCosts {
                    forward,
                    backward_input,
                    backward_weight,
                    recompute: forward,
                };
                stages
            ],
            p2p,
        }
    }
}

/// What one rank did in a simulated step.
#[derive(Clone, Debug, PartialEq)]
pub struct RankReport {
    /// Seconds its compute lane was busy.
    pub busy: f64,
    /// Idle fraction of the makespan on its compute lane (0 when the makespan is 0).
    pub bubble: f64,
    /// Most `(micro-batch, chunk)`s holding full activations at once: from the forward (or the
    /// recomputation, on recomputing stages) until the backward (or, split, the weight-gradient
    /// half) ends.
    pub peak_activations: usize,
    /// Most stashed stage inputs at once (recomputing stages only): from the forward until the
    /// backward (or its weight-gradient half) ends.
    pub peak_stashed_inputs: usize,
}

/// The result of [`simulate`].
#[derive(Clone, Debug, PartialEq)]
pub struct SimReport {
    /// End of the last action, in seconds.
    pub makespan: f64,
    /// `1 - total busy / (pp * makespan)` (0 when the makespan is 0).
    pub bubble_fraction: f64,
    /// One report per rank.
    pub ranks: Vec<RankReport>,
    /// One span per action, compute and transfer lanes, by rank then list order.
    pub spans: Vec<TraceSpan>,
}

/// Transfer lane number (0..4) of an action, `None` for compute.
fn transfer_lane(a: &Action) -> Option<usize> {
    match a {
        Action::SendAct { .. } => Some(0),
        Action::RecvAct { .. } => Some(1),
        Action::SendGrad { .. } => Some(2),
        Action::RecvGrad { .. } => Some(3),
        _ => None,
    }
}

fn is_send(a: &Action) -> bool {
    matches!(a, Action::SendAct { .. } | Action::SendGrad { .. })
}

/// Static facts about one rank's actions.
struct RankPlan {
    /// Positions of compute actions, in order.
    compute: Vec<usize>,
    /// Positions of each transfer lane's actions, in order.
    lanes: [Vec<usize>; 4],
    /// For each position: its lane (4 = compute) and index within that lane.
    lane_pos: Vec<(usize, usize)>,
    /// For each position: the same-rank action it waits for (a compute action's receive, a
    /// send's producer).
    dep: Vec<Option<usize>>,
    /// For each transfer position: its partner `(rank, position)`.
    partner: Vec<Option<(usize, usize)>>,
    /// Duration of each compute position (transfers: 0, they cost `p2p`).
    cost: Vec<f64>,
}

/// Mutable progress of one rank.
struct RankState {
    /// Next index in the compute lane.
    cpos: usize,
    /// Next index in each transfer lane.
    lpos: [usize; 4],
    /// When the compute lane is free.
    cfree: f64,
    /// When each transfer lane is free.
    lfree: [f64; 4],
    /// Start and end time of each position, once run.
    times: Vec<Option<(f64, f64)>>,
}

fn check_cost(what: String, x: f64) -> Result<()> {
    if x.is_finite() && x >= 0.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "simulate",
            what,
            format!("must be finite and >= 0, got {x}"),
        ))
    }
}

/// Runs `schedule` (after [`Schedule::check`]) against `costs`: start and end of every action,
/// makespan, bubble and peak memory per rank, or [`Error::Deadlock`] naming a cycle of waits.
pub fn simulate(schedule: &Schedule, costs: &Costs) -> Result<SimReport> {
    schedule.check()?;
    let pl: Placement = schedule.placement;
    let stages = pl.stages();
    if costs.stages.len() != stages {
        return Err(Error::invalid(
            "simulate",
            "costs.stages",
            format!(
                "one entry per stage needed ({stages}), got {}",
                costs.stages.len()
            ),
        ));
    }
    for (s, c) in costs.stages.iter().enumerate() {
        check_cost(format!("costs.stages[{s}].forward"), c.forward)?;
        check_cost(
            format!("costs.stages[{s}].backward_input"),
            c.backward_input,
        )?;
        check_cost(
            format!("costs.stages[{s}].backward_weight"),
            c.backward_weight,
        )?;
        check_cost(format!("costs.stages[{s}].recompute"), c.recompute)?;
    }
    check_cost("costs.p2p".to_string(), costs.p2p)?;
    let pp = pl.pp;

    // Index every action (check() proved them unique per rank) and every message.
    let mut index: Vec<HashMap<Action, usize>> = Vec::with_capacity(pp);
    let mut recv_by_tag: HashMap<(usize, usize, u32), (usize, usize)> = HashMap::new();
    for (rank, list) in schedule.ranks.iter().enumerate() {
        let mut map = HashMap::with_capacity(list.len());
        for (i, a) in list.iter().enumerate() {
            map.insert(*a, i);
            if let (Some(peer), false) = (a.peer(), is_send(a)) {
                if let Some(tag) = pl.tag(rank, a) {
                    recv_by_tag.insert((peer, rank, tag), (rank, i));
                }
            }
        }
        index.push(map);
    }
    let mut plans = Vec::with_capacity(pp);
    for (rank, list) in schedule.ranks.iter().enumerate() {
        let here = &index[rank];
        let mut plan = RankPlan {
            compute: Vec::new(),
            lanes: Default::default(),
            lane_pos: Vec::with_capacity(list.len()),
            dep: Vec::with_capacity(list.len()),
            partner: Vec::with_capacity(list.len()),
            cost: Vec::with_capacity(list.len()),
        };
        for (i, a) in list.iter().enumerate() {
            let (mb, chunk) = (a.mb(), a.chunk());
            let c = &costs.stages[pl.stage(rank, chunk)];
            let find = |x: Action| here.get(&x).copied();
            let (dep, cost) = match *a {
                Action::Forward { .. } => (
                    find(Action::RecvAct {
                        mb,
                        chunk,
                        peer: pl.prev_rank(rank),
                    }),
                    c.forward,
                ),
                Action::Recompute { .. } => (None, c.recompute),
                Action::Backward { .. } | Action::BackwardInput { .. } => {
                    let recv = find(Action::RecvGrad {
                        mb,
                        chunk,
                        peer: pl.next_rank(rank),
                    });
                    let cost = if matches!(a, Action::Backward { .. }) {
                        c.backward_input + c.backward_weight
                    } else {
                        c.backward_input
                    };
                    (recv, cost)
                }
                Action::BackwardWeight { .. } => (None, c.backward_weight),
                Action::SendAct { .. } => (find(Action::Forward { mb, chunk }), 0.0),
                Action::SendGrad { .. } => (
                    find(Action::Backward { mb, chunk })
                        .or_else(|| find(Action::BackwardInput { mb, chunk })),
                    0.0,
                ),
                Action::RecvAct { .. } | Action::RecvGrad { .. } => (None, 0.0),
            };
            let partner = match (a.peer(), is_send(a)) {
                (Some(peer), true) => pl
                    .tag(rank, a)
                    .and_then(|tag| recv_by_tag.get(&(rank, peer, tag)).copied()),
                _ => None,
            };
            let lp = match transfer_lane(a) {
                Some(l) => {
                    plan.lanes[l].push(i);
                    (l, plan.lanes[l].len() - 1)
                }
                None => {
                    plan.compute.push(i);
                    (4, plan.compute.len() - 1)
                }
            };
            plan.lane_pos.push(lp);
            plan.dep.push(dep);
            plan.partner.push(partner);
            plan.cost.push(cost);
        }
        plans.push(plan);
    }
    // Receives learn their partner from the send side.
    for rank in 0..pp {
        for i in 0..plans[rank].partner.len() {
            if let Some((q, j)) = plans[rank].partner[i] {
                plans[q].partner[j] = Some((rank, i));
            }
        }
    }

    let mut st: Vec<RankState> = schedule
        .ranks
        .iter()
        .map(|list| RankState {
            cpos: 0,
            lpos: [0; 4],
            cfree: 0.0,
            lfree: [0.0; 4],
            times: vec![None; list.len()],
        })
        .collect();

    let end_of = |st: &[RankState], r: usize, i: usize| st[r].times[i].map(|t| t.1);
    let mut queue: VecDeque<usize> = (0..pp).collect();
    let mut queued = vec![true; pp];
    while let Some(r) = queue.pop_front() {
        queued[r] = false;
        loop {
            let mut moved = false;
            // Compute lane.
            while let Some(&i) = plans[r].compute.get(st[r].cpos) {
                let ready = match plans[r].dep[i] {
                    None => Some(0.0),
                    Some(d) => end_of(&st, r, d),
                };
                let Some(ready) = ready else { break };
                let start = st[r].cfree.max(ready);
                let end = start + plans[r].cost[i];
                st[r].times[i] = Some((start, end));
                st[r].cfree = end;
                st[r].cpos += 1;
                moved = true;
            }
            // Transfer lanes: find a head send (here or on the peer) whose partner is at the head.
            for lane in 0..4 {
                let Some(&i) = plans[r].lanes[lane].get(st[r].lpos[lane]) else {
                    continue;
                };
                let Some((q, j)) = plans[r].partner[i] else {
                    continue;
                };
                let ((sr, si), (rr, ri)) = if lane % 2 == 0 {
                    ((r, i), (q, j))
                } else {
                    ((q, j), (r, i))
                };
                let (sl, spos) = plans[sr].lane_pos[si];
                let (rl, rpos) = plans[rr].lane_pos[ri];
                if st[sr].lpos[sl] != spos || st[rr].lpos[rl] != rpos {
                    continue;
                }
                let produced = match plans[sr].dep[si] {
                    Some(d) => end_of(&st, sr, d),
                    None => Some(0.0),
                };
                let Some(produced) = produced else { continue };
                let start = st[sr].lfree[sl].max(produced).max(st[rr].lfree[rl]);
                let end = start + costs.p2p;
                st[sr].times[si] = Some((start, end));
                st[rr].times[ri] = Some((start, end));
                st[sr].lfree[sl] = end;
                st[rr].lfree[rl] = end;
                st[sr].lpos[sl] += 1;
                st[rr].lpos[rl] += 1;
                moved = true;
                if q != r && !queued[q] {
                    queued[q] = true;
                    queue.push_back(q);
                }
            }
            if !moved {
                break;
            }
        }
    }

    if st.iter().any(|s| s.times.iter().any(Option::is_none)) {
        return Err(deadlock(schedule, &plans, &st));
    }

    let mut spans = Vec::new();
    let mut makespan: f64 = 0.0;
    for (rank, list) in schedule.ranks.iter().enumerate() {
        for (i, a) in list.iter().enumerate() {
            if let Some((start, end)) = st[rank].times[i] {
                makespan = makespan.max(end);
                spans.push(TraceSpan {
                    rank,
                    lane: Lane::of(a),
                    action: *a,
                    start,
                    end,
                });
            }
        }
    }
    let mut ranks = Vec::with_capacity(pp);
    let mut total_busy = 0.0;
    for (rank, list) in schedule.ranks.iter().enumerate() {
        let busy: f64 = plans[rank]
            .compute
            .iter()
            .map(|&i| plans[rank].cost[i])
            .sum();
        total_busy += busy;
        let (peak_activations, peak_stashed_inputs) = memory(schedule, rank, list);
        ranks.push(RankReport {
            busy,
            bubble: if makespan > 0.0 {
                1.0 - busy / makespan
            } else {
                0.0
            },
            peak_activations,
            peak_stashed_inputs,
        });
    }
    let bubble_fraction = if makespan > 0.0 {
        1.0 - total_busy / (pp as f64 * makespan)
    } else {
        0.0
    };
    Ok(SimReport {
        makespan,
        bubble_fraction,
        ranks,
        spans,
    })
}

/// Peak live full activations and stashed inputs of one rank. The compute lane runs in list
/// order, so walking the list is walking time.
fn memory(schedule: &Schedule, rank: usize, list: &[Action]) -> (usize, usize) {
    let split: std::collections::HashSet<(usize, usize)> = list
        .iter()
        .filter(|a| matches!(a, Action::BackwardWeight { .. }))
        .map(|a| (a.mb(), a.chunk()))
        .collect();
    let (mut live, mut stash, mut peak_live, mut peak_stash) = (0usize, 0usize, 0usize, 0usize);
    for a in list {
        let s = schedule.placement.stage(rank, a.chunk());
        let recompute = schedule.recompute.get(s).copied().unwrap_or(false);
        let release = match a {
            Action::Forward { .. } => {
                if recompute {
                    stash += 1;
                    peak_stash = peak_stash.max(stash);
                } else {
                    live += 1;
                    peak_live = peak_live.max(live);
                }
                false
            }
            Action::Recompute { .. } => {
                live += 1;
                peak_live = peak_live.max(live);
                false
            }
            Action::Backward { .. } => true,
            Action::BackwardInput { .. } => !split.contains(&(a.mb(), a.chunk())),
            Action::BackwardWeight { .. } => true,
            _ => false,
        };
        if release {
            live = live.saturating_sub(1);
            if recompute {
                stash = stash.saturating_sub(1);
            }
        }
    }
    (peak_live, peak_stash)
}

/// Describes a position for a deadlock message.
fn describe(schedule: &Schedule, node: (usize, usize)) -> String {
    format!("rank {} {}", node.0, schedule.ranks[node.0][node.1])
}

/// Follows the waits of the stuck actions until they close a cycle.
fn deadlock(schedule: &Schedule, plans: &[RankPlan], st: &[RankState]) -> Error {
    // What an unfinished action waits for: its lane predecessor when it is not at the head, else
    // the missing input (a receive, a producer) or the partner of its transfer.
    let waits_for = |(r, i): (usize, usize)| -> Option<((usize, usize), &'static str)> {
        let (lane, pos) = plans[r].lane_pos[i];
        let head = if lane == 4 {
            st[r].cpos
        } else {
            st[r].lpos[lane]
        };
        if pos > head {
            let prev = if lane == 4 {
                plans[r].compute[pos - 1]
            } else {
                plans[r].lanes[lane][pos - 1]
            };
            return Some(((r, prev), "is queued behind"));
        }
        if let Some(d) = plans[r].dep[i] {
            if st[r].times[d].is_none() {
                return Some(((r, d), "waits for"));
            }
        }
        plans[r].partner[i].map(|p| (p, "waits for"))
    };
    let start = (0..plans.len()).find_map(|r| {
        let i = plans[r]
            .compute
            .get(st[r].cpos)
            .copied()
            .or_else(|| (0..4).find_map(|l| plans[r].lanes[l].get(st[r].lpos[l]).copied()))?;
        Some((r, i))
    });
    let Some(mut node) = start else {
        return Error::Deadlock {
            cycle: "no action can run, but none is waiting either".to_string(),
        };
    };
    let mut seen: HashMap<(usize, usize), usize> = HashMap::new();
    let mut path: Vec<((usize, usize), &'static str)> = Vec::new();
    loop {
        if let Some(&k) = seen.get(&node) {
            let cycle = &path[k..];
            let text = cycle
                .iter()
                .enumerate()
                .map(|(n, &(at, verb))| {
                    let next = cycle.get(n + 1).map_or(node, |x| x.0);
                    if next.0 == at.0 {
                        format!(
                            "{} {verb} {}",
                            describe(schedule, at),
                            schedule.ranks[next.0][next.1]
                        )
                    } else {
                        format!(
                            "{} {verb} {}",
                            describe(schedule, at),
                            describe(schedule, next)
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            return Error::Deadlock { cycle: text };
        }
        let Some((next, verb)) = waits_for(node) else {
            return Error::Deadlock {
                cycle: format!(
                    "{} cannot run and waits for nothing",
                    describe(schedule, node)
                ),
            };
        };
        seen.insert(node, path.len());
        path.push((node, verb));
        node = next;
    }
}
