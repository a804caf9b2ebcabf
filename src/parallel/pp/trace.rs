//! Timelines of a pipeline step, planned (the simulator) or measured (the executor), in two
//! formats people can look at: Chrome/Perfetto trace JSON and an SVG timeline.

use super::action::Action;

/// The stream (lane) an action ran on. Compute actions run on [`Lane::Compute`]; each transfer
/// direction has its own p2p stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// The compute stream.
    Compute,
    /// Activation sends (to the next stage).
    SendAct,
    /// Activation receives (from the previous stage).
    RecvAct,
    /// Gradient sends (to the previous stage).
    SendGrad,
    /// Gradient receives (from the next stage).
    RecvGrad,
}

impl Lane {
    /// Every lane, in display order.
    pub const ALL: [Lane; 5] = [
        Lane::Compute,
        Lane::SendAct,
        Lane::RecvAct,
        Lane::SendGrad,
        Lane::RecvGrad,
    ];

    /// The lane an action runs on.
    pub fn of(action: &Action) -> Lane {
        match action {
            Action::SendAct { .. } => Lane::SendAct,
            Action::RecvAct { .. } => Lane::RecvAct,
            Action::SendGrad { .. } => Lane::SendGrad,
            Action::RecvGrad { .. } => Lane::RecvGrad,
            _ => Lane::Compute,
        }
    }

    /// A short name (`compute`, `send act`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Lane::Compute => "compute",
            Lane::SendAct => "send act",
            Lane::RecvAct => "recv act",
            Lane::SendGrad => "send grad",
            Lane::RecvGrad => "recv grad",
        }
    }
}

/// One action's interval on one rank's lane. Times are seconds from the start of the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceSpan {
    /// The pipeline rank.
    pub rank: usize,
    /// The lane it ran on.
    pub lane: Lane,
    /// What ran.
    pub action: Action,
    /// Start, seconds from the step's start.
    pub start: f64,
    /// End, seconds from the step's start.
    pub end: f64,
}
