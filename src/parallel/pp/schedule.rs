//! Pipeline schedules as data: pure functions from a [`ScheduleConfig`] to, per rank, the ordered
//! list of [`Action`]s it performs.
//!
//! The list of a rank is also its *enqueue order*: the executor walks it front to back, putting
//! compute actions on the compute stream and each transfer on its own p2p stream (one per
//! direction: activation send, activation receive, gradient send, gradient receive), so a transfer
//! waits only for earlier transfers of its own kind and, for a send, for the compute action that
//! produced its data. The simulator ([`super::simulate`]) models exactly that.

use std::fmt;
use std::str::FromStr;

use super::action::{Action, Placement};
use crate::error::{Error, Result};

/// The schedules users know, by the names they know them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScheduleKind {
    /// No pipelining: each micro-batch goes through every stage forward and back before the
    /// next one starts (plain model parallelism with gradient accumulation).
    Naive,
    /// GPipe: all forwards, then all backwards.
    GPipe,
    /// 1F1B (PipeDream-flush): warm-up forwards, then one forward one backward, then cool-down.
    OneFOneB,
    /// Megatron's interleaved 1F1B with `chunks` model chunks per rank.
    Interleaved,
    /// Zero-bubble ZB-H1 (Qi et al. 2023): 1F1B with the backward split into input-gradient and
    /// weight-gradient halves, weight halves deferred into the bubbles, 1F1B's memory.
    ZbH1,
}

impl ScheduleKind {
    /// Every kind.
    pub const ALL: [ScheduleKind; 5] = [
        ScheduleKind::Naive,
        ScheduleKind::GPipe,
        ScheduleKind::OneFOneB,
        ScheduleKind::Interleaved,
        ScheduleKind::ZbH1,
    ];

    /// The name accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Naive => "naive",
            ScheduleKind::GPipe => "gpipe",
            ScheduleKind::OneFOneB => "1f1b",
            ScheduleKind::Interleaved => "interleaved",
            ScheduleKind::ZbH1 => "zb-h1",
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ScheduleKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        Ok(match s.as_str() {
            "naive" => ScheduleKind::Naive,
            "gpipe" => ScheduleKind::GPipe,
            "1f1b" | "pipedream-flush" => ScheduleKind::OneFOneB,
            "interleaved" | "interleaved-1f1b" => ScheduleKind::Interleaved,
            "zb-h1" | "zbh1" => ScheduleKind::ZbH1,
            _ => {
                return Err(Error::invalid(
                    "schedule",
                    "kind",
                    format!("unknown schedule {s:?} (naive, gpipe, 1f1b, interleaved, zb-h1)"),
                ))
            }
        })
    }
}

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// The schedule.
    pub kind: ScheduleKind,
    /// Pipeline-parallel size (ranks), at least 1.
    pub pp: usize,
    /// Micro-batches per step, at least 1.
    pub microbatches: usize,
    /// Model chunks per rank (`v`): must be 1 except for [`ScheduleKind::Interleaved`].
    pub chunks: usize,
    /// Per global stage (`pp * chunks` entries, or empty for none): recompute that stage's
    /// forward just before its backward, keeping only the stage input in between.
    pub recompute: Vec<bool>,
}

impl ScheduleConfig {
    /// A config without recomputation.
    pub fn new(kind: ScheduleKind, pp: usize, microbatches: usize, chunks: usize) -> Self {
        ScheduleConfig {
            kind,
            pp,
            microbatches,
            chunks,
            recompute: Vec::new(),
        }
    }

    /// The same config with every stage recomputing.
    pub fn recompute_all(mut self) -> Self {
        self.recompute = vec![true; self.pp * self.chunks];
        self
    }
}

/// A built schedule: per rank, the ordered actions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    /// Which schedule this is.
    pub kind: ScheduleKind,
    /// Where the stages live.
    pub placement: Placement,
    /// Micro-batches per step.
    pub microbatches: usize,
    /// Per global stage: whether it recomputes (always `placement.stages()` entries).
    pub recompute: Vec<bool>,
    /// `ranks[r]` is rank `r`'s action list, in order.
    pub ranks: Vec<Vec<Action>>,
}
