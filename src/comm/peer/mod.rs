//! The `peer` backend: collectives between GPUs of one process (or several virtual ranks on one
//! GPU) run by our own kernels (`kernels/comm/peer.cu`) straight between the devices' memories,
//! over symmetric buffers: every rank has a staging buffer and a flag array on its own device,
//! and every rank knows every rank's (its *peer table*). This is what NCCL refuses (several ranks
//! on one GPU). It runs on emulated devices ([`crate::Device::emu`], verified in CI) and on GPUs
//! ([`crate::Device::cuda`]; one rank per GPU with peer access, or several ranks on one GPU).
//!
//! # Protocol
//!
//! A call goes through two layers:
//!
//! 1. **Host rendezvous** (checked semantics, like every backend): on the stream's worker, each
//!    rank arrives with the call's [`Signature`] at the call's sequence number; when all have
//!    arrived and the signatures agree, the call gets its *epoch base* `e` from the group's epoch
//!    counter (which then advances by three per launch). A mismatch fails every rank with
//!    [`Error::CollectiveMismatch`], a missing rank with [`Error::Timeout`], a failed rank the
//!    others with [`Error::PeerFailed`]; no kernel is launched in these cases, so a mismatched
//!    call never spins.
//! 2. **Flag barriers** inside the kernels: each phase of a collective ends with every CTA
//!    publishing `e + phase` (release store, system scope) into its slot of every rank's flag
//!    array, then waiting (acquire loads) until every slot of its own array reached it. The last
//!    phase (`e + 3`) is a "done" barrier, so a staging buffer is never overwritten while a peer
//!    still reads it. Values only grow: the flags are zeroed once, never reset.
//!
//! The kernels of the ranks run concurrently and wait for each other *inside* the launch. On a
//! GPU the host rendezvous runs when the call is enqueued (on the calling thread) and the
//! launches go onto the rank's stream, so a mismatch, a timeout or a failed peer is the error
//! of the call itself, and a kernel that gave up (abort word raised) is reported by
//! [`Work::wait`]. Ranks sharing a GPU never take the overlap kernels (their spinning GEMM CTAs
//! could occupy every SM and starve the peer launch they wait for); they run the unfused path. The emulator allows this too: a launch on one emulated device holds no lock on the address space
//! (each global access locks only its allocation, briefly, and is immediately visible), so a
//! kernel on device 0 spinning on a flag sees the release store of a kernel on device 1 running
//! on another host thread. The rendezvous guarantees every rank launches its kernel, so the
//! spinning ends; should a kernel fault, its rank raises the abort word of every peer table and
//! the spinning kernels return (a bounded number of polls, [`PeerConfig::spin_limit`], is the
//! last resort).
//!
//! # Collectives
//!
//! - all-reduce: one-shot (stage, barrier, every rank reduces everything) up to
//!   [`PeerConfig::one_shot_max_bytes`], else two-shot (stage; rank `r` reduces block `r` of every
//!   rank's staging buffer into its own; every rank gathers the reduced blocks); buffers larger
//!   than the staging buffer go in chunks, one launch each;
//! - all-gather(_v), reduce-scatter(_v), broadcast, barrier;
//! - all-gather + GEMM ([`Communicator::all_gather_gemm`], the forward GEMM of a column-parallel
//!   layer under sequence parallelism), fused by `kernels/overlap/ag_gemm.cu` when the shapes
//!   allow it (bf16, `k % 8 == 0`, a GEMM tile height dividing the shard's rows): one
//!   rendezvous, then three launches sharing the call's epoch block: each rank copies its shard
//!   into its staging buffer and publishes "ready" (`e + 1`) without waiting; the GEMM's CTAs
//!   each wait for the one shard their tile needs and read it straight from its owner's staging
//!   buffer (each rank starting with its own shard); a "done" barrier (`e + 3`) ends the call.
//!   Bitwise equal to the unfused all-gather then GEMM ([`super::all_gather_then_gemm`], which
//!   runs otherwise).
//!
//! Reductions sum `((x_0 op x_1) op x_2) ...` in rank order with f32 accumulation (bf16 rounded
//! once), like the threads backend, so results are bitwise equal to it.
//!
//! Not implemented (they return [`Error::Unsupported`]): `send`, `recv`, `split`. Calls on one
//! communicator must be ordered (issue them on one stream per rank, or order the streams with
//! events): concurrent calls would share the staging buffers.

use super::Work;
use super::{
    check_counts, check_rank, host, CollOp, CommConfig, Communicator, ReduceOp, Signature,
};
use crate::backend::cuda::gemm::params as gemm_params;
use crate::backend::cuda::layers::device_ptr;
use crate::backend::emu::LaunchShape;
use crate::device::{BackendKind, Device};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::kernels::abi::{FtAgGemmParams, FtPeerCollParams};
use crate::ops::launch::prepare_kernel;
use crate::ops::Epilogue;
use crate::stream::{Stream, StreamImpl};
use crate::tensor::{Buffer, Tensor};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use symmetric::{RankMem, Target};

mod symmetric;

/// The image of `kernels/comm/peer.cu`.
const MODULE: &str = "comm/peer";
/// Flag slots per rank (`FT_PEER_MAX_CTAS` in `ferrotron_params.h`).
const MAX_CTAS: u32 = 64;
/// The image of `kernels/overlap/ag_gemm.cu`.
const OVERLAP_MODULE: &str = "overlap/ag_gemm";

/// The GEMM + reduce-scatter kernels' image.
const GEMM_RS_MODULE: &str = "overlap/gemm_rs";
/// Shared-memory stages and K depth of the GEMM tiles (`STAGES`, `BK` in gemm_core.cuh).
const GEMM_STAGES: usize = 3;
const GEMM_BK: usize = 32;
/// Threads per CTA.
const BLOCK: u32 = 256;
/// Epoch values one launch uses.
const PHASES: u64 = 3;
/// How often a rendezvous waiter re-checks for failed peers and its deadline.
const POLL: Duration = Duration::from_millis(20);

/// Settings of a peer communicator group.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Timeouts (the rendezvous of every call waits at most `comm.timeout`).
    pub comm: CommConfig,
    /// Bytes of each rank's staging buffer: all-reduce goes in chunks of this size; an
    /// all-gather block or a reduce-scatter input larger than this is an error.
    pub staging_bytes: usize,
    /// All-reduce of at most this many bytes (per chunk) is one-shot, larger is two-shot.
    pub one_shot_max_bytes: usize,
    /// CTAs per launch (0: automatic), clamped to 1..=64, to `256 / ranks` (a barrier's waiting
    /// threads) and on emulated devices to what the emulator keeps resident (4): every CTA of a
    /// launch must be resident at once. Automatic: 2 on emulated devices (they run on host
    /// threads), on GPUs as many as allowed (a bandwidth-bound copy needs many SMs).
    pub ctas: u32,
    /// Polls of one flag before a kernel gives up with a timeout (0: never).
    pub spin_limit: u64,
}

impl Default for PeerConfig {
    fn default() -> Self {
        PeerConfig {
            comm: CommConfig::default(),
            staging_bytes: 1 << 20,
            one_shot_max_bytes: 64 << 10,
            ctas: 0,
            spin_limit: 1 << 26,
        }
    }
}

/// One rank's device and symmetric resources (staging buffer, flags and peer table: see
/// `FtPeerCollParams` in `ferrotron_params.h`).
struct RankRes {
    device: Device,
    mem: RankMem,
}

struct Round {
    sigs: Vec<Option<Signature>>,
    seen: Vec<bool>,
    arrived: usize,
    left: usize,
    /// Set once everyone arrived: the epoch base, or the mismatch.
    outcome: Option<std::result::Result<u64, Error>>,
}

#[derive(Default)]
struct GroupState {
    rounds: HashMap<u64, Round>,
    epoch: u64,
}

/// The state shared by the ranks of one group.
struct PeerGroup {
    name: String,
    config: PeerConfig,
    ranks: Vec<RankRes>,
    state: Mutex<GroupState>,
    cv: Condvar,
    failed: Mutex<Option<(usize, String)>>,
    /// Whether the overlap kernels may run: not when two ranks share a GPU (a rank's GEMM CTAs
    /// spinning on a flag could occupy every SM and starve the launch that would raise it).
    fuse_overlap: bool,
}

impl Drop for PeerGroup {
    fn drop(&mut self) {
        // Kernels of one rank use every rank's buffers: free none while any GPU still runs.
        for r in &self.ranks {
            r.mem.quiesce();
        }
    }
}

impl PeerGroup {
    fn size(&self) -> usize {
        self.ranks.len()
    }

    fn lock(&self) -> MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn first_failure(&self) -> Option<(usize, String)> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Byte offset of the abort word in a peer table.
    fn abort_offset(&self) -> usize {
        (3 * self.size() + 1) * 8
    }

    /// Byte offset of the block offsets in a peer table.
    fn offsets_offset(&self) -> usize {
        2 * self.size() * 8
    }

    /// The error for call `seq` of `opname` whose kernels on `rank` left `word` in the abort
    /// word (2: a flag wait ran out of polls; else a peer failed); marks the group failed.
    fn aborted(&self, rank: usize, word: u64, what: &str) -> Error {
        if word == 2 {
            let e = Error::Timeout {
                what: format!(
                    "{what} on {}: flags of rank {rank}'s kernels after {} polls",
                    self.name, self.config.spin_limit
                ),
                seconds: 0.0,
            };
            self.fail(rank, e.to_string());
            return e;
        }
        let (failed, reason) = self
            .first_failure()
            .unwrap_or((rank, "aborted".to_string()));
        Error::PeerFailed {
            rank: failed,
            reason,
            waiting_in: format!("{what} on {}", self.name),
        }
    }

    /// Marks `rank` failed (the first failure wins) and raises every rank's abort word, so that
    /// kernels waiting for it return.
    fn fail(&self, rank: usize, reason: String) {
        {
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some((rank, reason));
            }
        }
        for r in &self.ranks {
            let _ = r.mem.store_word(self.abort_offset(), 1);
        }
        self.cv.notify_all();
    }

    /// The host rendezvous of call `seq`: returns the call's epoch base once every rank arrived
    /// with the same signature. `launches` is how many launches (of [`PHASES`] epochs) it takes.
    fn rendezvous(&self, me: usize, seq: u64, sig: Signature, launches: u64) -> Result<u64> {
        let size = self.size();
        let opname = sig.op.name();
        let mut st = self.lock();
        {
            let round = st.rounds.entry(seq).or_insert_with(|| Round {
                sigs: vec![None; size],
                seen: vec![false; size],
                arrived: 0,
                left: 0,
                outcome: None,
            });
            round.sigs[me] = Some(sig);
            round.seen[me] = true;
            round.arrived += 1;
            if round.arrived == size {
                let sigs: Vec<Signature> = round.sigs.iter().flatten().cloned().collect();
                let outcome = match self.mismatch(seq, &sigs) {
                    Some(e) => Err(e),
                    None => Ok(st.epoch),
                };
                if outcome.is_ok() {
                    st.epoch += launches * PHASES;
                }
                st.rounds.get_mut(&seq).expect("round").outcome = Some(outcome);
            }
        }
        self.cv.notify_all();
        let deadline = Instant::now() + self.config.comm.timeout;
        loop {
            if st.rounds[&seq].outcome.is_some() {
                break;
            }
            let failure = self.first_failure();
            let now = Instant::now();
            if failure.is_some() || now >= deadline {
                // Retract the arrival: this call will not run here.
                let r = st.rounds.get_mut(&seq).expect("round");
                r.sigs[me] = None;
                r.arrived -= 1;
                let missing: Vec<usize> = (0..size).filter(|&i| !r.seen[i]).collect();
                if r.arrived == 0 {
                    st.rounds.remove(&seq);
                }
                let what = format!(
                    "{opname} #{seq} on {}: ranks {missing:?} never arrived",
                    self.name
                );
                return Err(match failure {
                    Some((rank, reason)) => Error::PeerFailed {
                        rank,
                        reason,
                        waiting_in: what,
                    },
                    None => Error::Timeout {
                        what,
                        seconds: self.config.comm.timeout.as_secs_f64(),
                    },
                });
            }
            st = self
                .cv
                .wait_timeout(st, POLL.min(deadline - now))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let r = st.rounds.get_mut(&seq).expect("round");
        let outcome = r.outcome.clone().expect("complete");
        r.left += 1;
        if r.left == size {
            st.rounds.remove(&seq);
        }
        outcome
    }

    fn mismatch(&self, seq: u64, sigs: &[Signature]) -> Option<Error> {
        let first = &sigs[0];
        let b = sigs.iter().find(|s| *s != first)?;
        let ranks_with =
            |s: &Signature| -> Vec<usize> { (0..sigs.len()).filter(|&i| &sigs[i] == s).collect() };
        Some(Error::CollectiveMismatch {
            comm: self.name.clone(),
            seq,
            call_a: first.to_string(),
            ranks_a: ranks_with(first).into(),
            call_b: b.to_string(),
            ranks_b: ranks_with(b).into(),
        })
    }
}

/// One launch of a peer kernel: the function and the parameters that vary per launch.
struct Launch {
    /// The kernel image ([`MODULE`] or [`OVERLAP_MODULE`]).
    module: &'static str,
    /// Which block of [`PHASES`] epoch values of the call the launch uses (the launches of one
    /// fused call share a block).
    epoch_block: u64,
    /// An all-gather + GEMM launch (`FtAgGemmParams`), else a peer collective
    /// (`FtPeerCollParams`).
    gemm: Option<AgGemmLaunch>,
    function: String,
    input: u64,
    output: u64,
    count: u64,
    /// Element offsets of the ranks' blocks (`world + 1` values), written into the peer table.
    offsets: Vec<u64>,
    root: u64,
}

impl Launch {
    /// A launch of `function` (image `module`) with no operands, in the call's first epoch
    /// block; set the rest with struct-update syntax.
    fn new(module: &'static str, function: impl Into<String>) -> Launch {
        Launch {
            module,
            epoch_block: 0,
            gemm: None,
            function: function.into(),
            input: 0,
            output: 0,
            count: 0,
            offsets: Vec::new(),
            root: 0,
        }
    }
}

/// The GEMM launch of an all-gather + GEMM (device addresses as `u64`: the launch is sent to
/// the stream worker).
#[derive(Clone, Debug)]
struct AgGemmLaunch {
    /// The GEMM's `a` (GEMM + reduce-scatter: this rank's `x`; 0 for all-gather + GEMM, whose
    /// rows come from the staging buffers).
    a: u64,
    w: u64,
    y: u64,
    bias: u64,
    m_local: u64,
    n: u64,
    k: u64,
    shape: LaunchShape,
}

/// A rank's handle on a peer communicator.
pub struct PeerComm {
    rank: usize,
    group: Arc<PeerGroup>,
    seq: AtomicU64,
}

impl PeerComm {
    /// Creates a group over `devices` (rank `r` on `devices[r]`; a device may appear several
    /// times: several virtual ranks on one GPU) and returns one communicator per rank. Enables
    /// peer access between every pair of the devices and allocates each rank's staging buffer,
    /// flag array and peer table on its device.
    pub fn group(devices: &[Device], config: PeerConfig) -> Result<Vec<PeerComm>> {
        const OP: &str = "PeerComm::group";
        if devices.is_empty() {
            return Err(Error::invalid(OP, "devices", "need at least one device"));
        }
        let world = devices.len();
        let kind = devices[0].kind();
        if let Some(d) = devices.iter().find(|d| d.kind() != kind) {
            return Err(Error::invalid(
                OP,
                "devices",
                format!("{} and {} in one group", devices[0].label(), d.label()),
            ));
        }
        // Every CTA of a launch must be resident at once (CTAs wait for each other's flags); the
        // emulator keeps `LaunchConfig::resident_ctas` of a launch resident, a GPU many more.
        let (resident, auto) = match kind {
            BackendKind::Emu => (ptx_emu::LaunchConfig::default().resident_ctas, 2),
            _ => (MAX_CTAS, MAX_CTAS),
        };
        if world > BLOCK as usize {
            return Err(Error::invalid(
                OP,
                "devices",
                format!("at most {BLOCK} ranks in a peer group, got {world}"),
            ));
        }
        // A barrier's waiting threads: one per (rank, CTA) slot, within one block.
        let fit = BLOCK / world as u32;
        let asked = if config.ctas == 0 { auto } else { config.ctas };
        let ctas = asked.clamp(1, MAX_CTAS.min(resident).min(fit));
        if config.staging_bytes == 0 {
            return Err(Error::invalid(OP, "staging_bytes", "must be positive"));
        }
        for a in devices {
            for b in devices {
                if a.ordinal() != b.ordinal() {
                    a.enable_peer_access(b)?;
                }
            }
        }
        let flag_bytes = world * MAX_CTAS as usize * 8;
        let mems = RankMem::create(devices, config.staging_bytes, flag_bytes)?;
        let ranks: Vec<RankRes> = devices
            .iter()
            .zip(mems)
            .map(|(device, mem)| RankRes {
                device: device.clone(),
                mem,
            })
            .collect();
        let shares_gpu = kind == BackendKind::Cuda
            && devices
                .iter()
                .enumerate()
                .any(|(i, a)| devices[..i].iter().any(|b| b.ordinal() == a.ordinal()));
        let group = Arc::new(PeerGroup {
            name: "peer:world".to_string(),
            config: PeerConfig { ctas, ..config },
            ranks,
            state: Mutex::new(GroupState::default()),
            cv: Condvar::new(),
            failed: Mutex::new(None),
            fuse_overlap: !shares_gpu,
        });
        Ok((0..world)
            .map(|rank| PeerComm {
                rank,
                group: group.clone(),
                seq: AtomicU64::new(0),
            })
            .collect())
    }

    /// This rank's device.
    pub fn device(&self) -> &Device {
        &self.group.ranks[self.rank].device
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Marks this rank failed: the peers' pending calls fail fast with [`Error::PeerFailed`].
    pub fn fail(&self, reason: String) {
        self.group.fail(self.rank, reason);
    }

    fn sig(op: CollOp, dtype: Option<DType>, counts: Vec<usize>) -> Signature {
        Signature {
            op,
            dtype,
            counts: counts.into(),
            root: None,
            redop: None,
        }
    }

    /// Validates the operands, then enqueues the rendezvous and the launches on `stream`.
    #[allow(clippy::too_many_arguments)]
    fn enqueue(
        &self,
        stream: &Stream,
        op: &'static str,
        sig: Signature,
        redop: u64,
        reads: &[(&str, &Tensor)],
        writes: &[(&str, &Tensor)],
        launches: Vec<Launch>,
    ) -> Result<Work> {
        stream.same_device(op, "communicator", self.device())?;
        prepare_kernel(stream, op, reads, writes)?;
        let seq = self.next_seq();
        let keep: Vec<Arc<Buffer>> = reads
            .iter()
            .chain(writes)
            .map(|(_, t)| t.buffer().clone())
            .collect();
        let status: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
        let (group, me) = (self.group.clone(), self.rank);
        match stream.imp() {
            StreamImpl::Cpu(_) => {
                let slot = status.clone();
                stream.push_host(op, move || {
                    let _keep = keep;
                    let out = run_call(&group, me, seq, sig, redop, &launches, Target::Emu);
                    if let Err(e) = &out {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                    }
                    out
                });
                Ok(Work::new(stream.record_event()?, stream.clone(), status))
            }
            StreamImpl::Cuda(s) => {
                // The rendezvous runs here; the launches are enqueued on `s` (the operands stay
                // alive past them: `CudaMem` orders its free after every stream that used it).
                drop(keep);
                let opname = sig.op.name();
                run_call(&group, me, seq, sig, redop, &launches, Target::Cuda(s))?;
                let check = move || -> Result<()> {
                    match group.ranks[me].mem.load_word(group.abort_offset())? {
                        0 => Ok(()),
                        word => Err(group.aborted(me, word, &format!("{opname} #{seq}"))),
                    }
                };
                Ok(Work::new(stream.record_event()?, stream.clone(), status)
                    .with_check(Arc::new(check)))
            }
        }
    }

    /// `t`'s device address for kernels on `stream` (noting the use on a CUDA stream), or 0
    /// when `t` and `stream` are on different kinds of device (then the call's validation
    /// rejects it before anything is launched).
    fn addr(stream: &Stream, t: &Tensor) -> u64 {
        match (stream.imp(), t.device().kind()) {
            (StreamImpl::Cuda(_), BackendKind::Cuda) | (StreamImpl::Cpu(_), BackendKind::Emu) => {
                device_ptr(stream, t) as u64
            }
            _ => 0,
        }
    }

    fn suffix(dtype: DType) -> &'static str {
        match dtype {
            DType::BF16 => "bf16",
            _ => "f32",
        }
    }

    fn redop(op: ReduceOp) -> u64 {
        match op {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Max => 2,
            ReduceOp::Min => 3,
        }
    }

    fn staging_check(
        &self,
        op: &'static str,
        what: &str,
        elems: usize,
        dtype: DType,
    ) -> Result<()> {
        let bytes = elems * dtype.size_in_bytes();
        if bytes > self.group.config.staging_bytes {
            return Err(Error::invalid(
                op,
                what,
                format!(
                    "{bytes} bytes exceed the peer staging buffer ({} bytes, PeerConfig::staging_bytes)",
                    self.group.config.staging_bytes
                ),
            ));
        }
        Ok(())
    }

    fn reduce_scatter_impl(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: Vec<usize>,
        op: ReduceOp,
    ) -> Result<Work> {
        const OP: &str = "reduce_scatter";
        let dtype = host::comm_dtype(OP, "input", input)?;
        host::same_dtype(OP, "output", output, dtype)?;
        let total: usize = counts.iter().sum();
        host::count(OP, "input", input, total)?;
        host::count(OP, "output", output, counts[self.rank])?;
        self.staging_check(OP, "input", total, dtype)?;
        let mut sig = Self::sig(CollOp::ReduceScatter, Some(dtype), counts.clone());
        sig.redop = Some(op);
        let launch = Launch {
            input: Self::addr(stream, input),
            output: Self::addr(stream, output),
            count: total as u64,
            offsets: offsets(&counts),
            ..Launch::new(
                MODULE,
                format!("ft_peer_reduce_scatter_{}", Self::suffix(dtype)),
            )
        };
        self.enqueue(
            stream,
            OP,
            sig,
            Self::redop(op),
            &[("input", input)],
            &[("output", &*output)],
            vec![launch],
        )
    }

    /// Whether an overlap kernel may run on `stream` over `tensors`: the group allows it (no two
    /// ranks share a GPU), and the stream and every tensor are bf16 on this rank's device.
    fn may_fuse(&self, stream: &Stream, tensors: &[&Tensor]) -> bool {
        let here = self.device();
        self.group.fuse_overlap
            && here.compatible(stream.device())
            && tensors
                .iter()
                .all(|t| t.dtype() == DType::BF16 && here.compatible(t.device()))
    }

    /// The fused all-gather + GEMM (`kernels/overlap/ag_gemm.cu`) when the operands allow it:
    /// bf16 tensors on this rank's device, `x [m_local, k]`, `w [n, k]`, `y [size * m_local, n]`,
    /// `k % 8 == 0` and `w` 16-byte aligned (the cp.async loads), a GEMM tile height (128 or
    /// 64) dividing `m_local`, the shard fitting the staging buffer, epilogue none or bias.
    /// Returns the call's signature and launches, or `None` (then the unfused path runs, and
    /// reports any error).
    fn ag_gemm_plan(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
        epilogue: &Epilogue<'_>,
    ) -> Option<(Signature, Vec<Launch>)> {
        if !self.may_fuse(stream, &[x, w, y]) {
            return None;
        }
        let (&[m_local, k], &[n, kw], &[my, ny]) = (x.dims(), w.dims(), y.dims()) else {
            return None;
        };
        let m = self.size() * m_local;
        if kw != k || my != m || ny != n || m_local == 0 || n == 0 || k == 0 || k % 8 != 0 {
            return None;
        }
        if Self::addr(stream, w) % 16 != 0 || m_local * k * 2 > self.group.config.staging_bytes {
            return None;
        }
        let (epi, bias) = match epilogue {
            Epilogue::None => ("none", 0),
            Epilogue::Bias(b) if self.may_fuse(stream, &[b]) && b.numel() == n => {
                ("bias", Self::addr(stream, b))
            }
            _ => return None,
        };
        let (shape, suffix) = overlap_tile(m, n, m_local)?;
        let sig = Signature {
            op: CollOp::AllGatherGemm,
            dtype: Some(DType::BF16),
            counts: vec![m_local, k, n, usize::from(bias != 0)].into(),
            root: None,
            redop: None,
        };
        let stage = Launch {
            input: Self::addr(stream, x),
            count: (m_local * k) as u64,
            ..Launch::new(OVERLAP_MODULE, "ft_ag_gemm_stage_bf16")
        };
        let gemm = Launch {
            gemm: Some(AgGemmLaunch {
                a: 0,
                w: Self::addr(stream, w),
                y: Self::addr(stream, y),
                bias,
                m_local: m_local as u64,
                n: n as u64,
                k: k as u64,
                shape,
            }),
            ..Launch::new(OVERLAP_MODULE, format!("ft_ag_gemm_nt_{epi}_bf16{suffix}"))
        };
        // The "done" barrier (epoch + 3) of the same epoch block: no rank overwrites its
        // staging buffer (next call) while a peer may still read it.
        let done = Launch::new(MODULE, "ft_peer_barrier");
        Some((sig, vec![stage, gemm, done]))
    }

    /// The launches of a fused GEMM + reduce-scatter (`kernels/overlap/gemm_rs.cu`) of `x`
    /// (`[world * m_local, k]`), `w` (`[n, k]`) into `y` (`[m_local, n]`), or `None` when the
    /// operands do not fit it (then the caller runs the unfused default).
    fn gemm_rs_plan(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &Tensor,
    ) -> Option<(Signature, Vec<Launch>)> {
        if !self.may_fuse(stream, &[x, w, y]) {
            return None;
        }
        let (&[m, k], &[n, kw], &[m_local, ny]) = (x.dims(), w.dims(), y.dims()) else {
            return None;
        };
        let world = self.size();
        if kw != k || ny != n || m != world * m_local || m_local == 0 || n == 0 || k == 0 {
            return None;
        }
        if k % 8 != 0 || Self::addr(stream, x) % 16 != 0 || Self::addr(stream, w) % 16 != 0 {
            return None;
        }
        if world * m_local * n * 2 > self.group.config.staging_bytes {
            return None;
        }
        let (shape, suffix) = overlap_tile(m, n, m_local)?;
        let sig = Signature {
            op: CollOp::GemmReduceScatter,
            dtype: Some(DType::BF16),
            counts: vec![m_local, k, n].into(),
            root: None,
            redop: None,
        };
        let gemm = Launch {
            gemm: Some(AgGemmLaunch {
                a: Self::addr(stream, x),
                w: Self::addr(stream, w),
                y: 0,
                bias: 0,
                m_local: m_local as u64,
                n: n as u64,
                k: k as u64,
                shape,
            }),
            ..Launch::new(GEMM_RS_MODULE, format!("ft_gemm_rs_nt_bf16{suffix}"))
        };
        let count = (m_local * n) as u64;
        Some((
            sig,
            vec![
                gemm,
                // Every tile has landed in its owner's staging buffer.
                Launch::new(MODULE, "ft_peer_barrier"),
                Launch {
                    epoch_block: 1,
                    count,
                    output: Self::addr(stream, y),
                    ..Launch::new(GEMM_RS_MODULE, "ft_gemm_rs_reduce_bf16")
                },
                // Done: no rank pushes its next call's tiles while an owner still reduces.
                Launch {
                    epoch_block: 1,
                    ..Launch::new(MODULE, "ft_peer_barrier")
                },
            ],
        ))
    }

    fn all_gather_impl(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: Vec<usize>,
    ) -> Result<Work> {
        const OP: &str = "all_gather";
        let dtype = host::comm_dtype(OP, "input", input)?;
        host::same_dtype(OP, "output", output, dtype)?;
        host::count(OP, "input", input, counts[self.rank])?;
        host::count(OP, "output", output, counts.iter().sum())?;
        let largest = counts.iter().copied().max().unwrap_or(0);
        self.staging_check(OP, "input", largest, dtype)?;
        let sig = Self::sig(CollOp::AllGather, Some(dtype), counts.clone());
        let launch = Launch {
            input: Self::addr(stream, input),
            output: Self::addr(stream, output),
            offsets: offsets(&counts),
            ..Launch::new(
                MODULE,
                format!("ft_peer_all_gather_{}", Self::suffix(dtype)),
            )
        };
        self.enqueue(
            stream,
            OP,
            sig,
            0,
            &[("input", input)],
            &[("output", &*output)],
            vec![launch],
        )
    }
}

/// `world + 1` element offsets of consecutive blocks of `counts`.
fn offsets(counts: &[usize]) -> Vec<u64> {
    let mut o = Vec::with_capacity(counts.len() + 1);
    let mut acc = 0u64;
    o.push(0);
    for &c in counts {
        acc += c as u64;
        o.push(acc);
    }
    o
}

/// Blocks of a two-shot all-reduce of `n` elements: `size` contiguous blocks with edges aligned
/// to 16 elements (as the threads backend splits its work; the result does not depend on it).
fn blocks(n: usize, size: usize) -> Vec<u64> {
    let mut o: Vec<u64> = (0..size)
        .map(|r| ((n * r / size).div_ceil(16) * 16).min(n) as u64)
        .collect();
    o.push(n as u64);
    o
}

/// A call of rank `me`: the rendezvous, then the launches on `target` (on an emulated device
/// each runs to completion and its abort word is checked; on a GPU they are enqueued).
fn run_call(
    group: &PeerGroup,
    me: usize,
    seq: u64,
    sig: Signature,
    redop: u64,
    launches: &[Launch],
    target: Target<'_>,
) -> Result<()> {
    let opname = sig.op.name();
    // A failed group stays failed (its abort words are raised).
    if let Some((rank, reason)) = group.first_failure() {
        return Err(Error::PeerFailed {
            rank,
            reason,
            waiting_in: format!("{opname} #{seq} on {}", group.name),
        });
    }
    let blocks = launches
        .iter()
        .map(|l| l.epoch_block + 1)
        .max()
        .unwrap_or(1);
    let epoch = group.rendezvous(me, seq, sig, blocks)?;
    let mem = &group.ranks[me].mem;
    let table = mem.table_addr() as usize as *mut u64;
    let world = group.size();
    let cfg = &group.config;
    for l in launches {
        let outcome = (|| -> Result<()> {
            if !l.offsets.is_empty() {
                let bytes: Vec<u8> = l.offsets.iter().flat_map(|w| w.to_le_bytes()).collect();
                mem.write_table(target, group.offsets_offset(), &bytes)?;
            }
            let epoch = epoch + l.epoch_block * PHASES;
            match &l.gemm {
                None => {
                    let p = FtPeerCollParams {
                        input: l.input as usize as *const std::ffi::c_void,
                        output: l.output as usize as *mut std::ffi::c_void,
                        table,
                        rank: me as u64,
                        world: world as u64,
                        count: l.count,
                        epoch,
                        op: redop,
                        root: l.root,
                        spin_limit: cfg.spin_limit,
                    };
                    let shape = LaunchShape {
                        grid: [cfg.ctas, 1, 1],
                        block: [BLOCK, 1, 1],
                        dynamic_shared: 0,
                    };
                    mem.launch(target, l.module, &l.function, &p, shape)?;
                }
                Some(g) => {
                    let (m_local, n, k) = (g.m_local as usize, g.n as usize, g.k as usize);
                    let p = FtAgGemmParams {
                        gemm: gemm_params(g.a, g.w, g.y, g.bias, 0, world * m_local, n, k, 1.0),
                        table,
                        rank: me as u64,
                        world: world as u64,
                        m_local: g.m_local,
                        epoch,
                        stage_ctas: cfg.ctas as u64,
                        spin_limit: cfg.spin_limit,
                    };
                    mem.launch(target, l.module, &l.function, &p, g.shape)?;
                }
            }
            if let Target::Emu = target {
                let word = mem.load_word(group.abort_offset())?;
                if word != 0 {
                    let what = format!("{opname} #{seq} (kernel {})", l.function);
                    return Err(group.aborted(me, word, &what));
                }
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            if !matches!(e, Error::PeerFailed { .. }) {
                group.fail(me, e.to_string());
            }
            return Err(e);
        }
    }
    Ok(())
}

impl Communicator for PeerComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.group.size()
    }

    fn name(&self) -> &str {
        &self.group.name
    }

    fn all_reduce(&self, stream: &Stream, buf: &mut Tensor, op: ReduceOp) -> Result<Work> {
        const OP: &str = "all_reduce";
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let es = dtype.size_in_bytes();
        let mut sig = Self::sig(CollOp::AllReduce, Some(dtype), vec![n]);
        sig.redop = Some(op);
        let cfg = &self.group.config;
        let chunk = (cfg.staging_bytes / es).max(1);
        let base = Self::addr(stream, buf);
        let sfx = Self::suffix(dtype);
        let mut launches = Vec::new();
        let mut lo = 0;
        while lo < n {
            let len = chunk.min(n - lo);
            let at = base + (lo * es) as u64;
            let (function, offsets) = if len * es <= cfg.one_shot_max_bytes {
                (format!("ft_peer_all_reduce_one_shot_{sfx}"), Vec::new())
            } else {
                (
                    format!("ft_peer_all_reduce_two_shot_{sfx}"),
                    blocks(len, self.size()),
                )
            };
            launches.push(Launch {
                epoch_block: launches.len() as u64,
                input: at,
                output: at,
                count: len as u64,
                offsets,
                ..Launch::new(MODULE, function)
            });
            lo += len;
        }
        self.enqueue(
            stream,
            OP,
            sig,
            Self::redop(op),
            &[],
            &[("buf", &*buf)],
            launches,
        )
    }

    fn all_gather_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
    ) -> Result<Work> {
        check_counts("all_gather_v", counts, self.size())?;
        self.all_gather_impl(stream, input, output, counts.to_vec())
    }

    fn reduce_scatter_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<Work> {
        check_counts("reduce_scatter_v", counts, self.size())?;
        self.reduce_scatter_impl(stream, input, output, counts.to_vec(), op)
    }

    fn broadcast(&self, stream: &Stream, buf: &mut Tensor, root: usize) -> Result<Work> {
        const OP: &str = "broadcast";
        check_rank(OP, root, self.size())?;
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        self.staging_check(OP, "buf", n, dtype)?;
        let mut sig = Self::sig(CollOp::Broadcast, Some(dtype), vec![n]);
        sig.root = Some(root);
        let launch = Launch {
            input: Self::addr(stream, buf),
            output: Self::addr(stream, buf),
            count: n as u64,
            root: root as u64,
            ..Launch::new(MODULE, format!("ft_peer_broadcast_{}", Self::suffix(dtype)))
        };
        self.enqueue(stream, OP, sig, 0, &[], &[("buf", &*buf)], vec![launch])
    }

    /// Fused (`kernels/overlap/ag_gemm.cu`, see [`PeerComm`]'s module docs) when the operands
    /// allow it (bf16, `k % 8 == 0`, a GEMM tile height of 128 or 64 dividing `m_local`, the
    /// shard within the staging buffer, epilogue none or bias), else the default
    /// [`super::all_gather_then_gemm`]; bitwise the same result either way. Every rank must take
    /// the same path (it depends on the shapes and on `w`'s alignment), else the call fails with
    /// [`Error::CollectiveMismatch`].
    fn all_gather_gemm(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
        epilogue: Epilogue<'_>,
    ) -> Result<Work> {
        let Some((sig, launches)) = self.ag_gemm_plan(stream, x, w, y, &epilogue) else {
            return super::all_gather_then_gemm(self, stream, x, w, y, epilogue);
        };
        let mut reads = vec![("x", x), ("w", w)];
        if let Epilogue::Bias(b) = epilogue {
            reads.push(("bias", b));
        }
        self.enqueue(
            stream,
            "all_gather_gemm",
            sig,
            0,
            &reads,
            &[("y", &*y)],
            launches,
        )
    }

    /// Fused (`kernels/overlap/gemm_rs.cu`: each finished tile is stored straight into the
    /// staging buffer of the rank owning its rows, which then adds the ranks' tiles in rank order)
    /// when the operands allow it (bf16, `k % 8 == 0`, 16-byte aligned `x` and `w`, a tile
    /// height of 128 or 64 dividing `m_local`, `world * m_local * n` within the staging buffer),
    /// else the default [`super::gemm_then_reduce_scatter`]; bitwise the same result either way.
    /// Every rank must take the same path, else the call fails with
    /// [`Error::CollectiveMismatch`].
    fn gemm_reduce_scatter(
        &self,
        stream: &Stream,
        x: &Tensor,
        w: &Tensor,
        y: &mut Tensor,
    ) -> Result<Work> {
        let Some((sig, launches)) = self.gemm_rs_plan(stream, x, w, y) else {
            return super::gemm_then_reduce_scatter(self, stream, x, w, y);
        };
        self.enqueue(
            stream,
            "gemm_reduce_scatter",
            sig,
            0,
            &[("x", x), ("w", w)],
            &[("y", &*y)],
            launches,
        )
    }

    fn send(&self, _stream: &Stream, _buf: &Tensor, _peer: usize, _tag: u32) -> Result<Work> {
        Err(Error::Unsupported {
            op: "send",
            backend: "peer communicator (not implemented)".into(),
        })
    }

    fn recv(&self, _stream: &Stream, _buf: &mut Tensor, _peer: usize, _tag: u32) -> Result<Work> {
        Err(Error::Unsupported {
            op: "recv",
            backend: "peer communicator (not implemented)".into(),
        })
    }

    fn barrier(&self, stream: &Stream) -> Result<Work> {
        let sig = Self::sig(CollOp::Barrier, None, vec![]);
        let launch = Launch::new(MODULE, "ft_peer_barrier");
        self.enqueue(stream, "barrier", sig, 0, &[], &[], vec![launch])
    }

    fn split(&self, _color: Option<u32>, _key: usize) -> Result<Option<Box<dyn Communicator>>> {
        Err(Error::Unsupported {
            op: "split",
            backend: "peer communicator (not implemented)".into(),
        })
    }
}

/// The GEMM tile of an overlap kernel over `m = world * m_local` rows and `n` columns: the
/// 128 x 128 tile (8 warps) when `m`, `n` >= 128 and 128 divides `m_local`, else the 64 x 64 tile
/// (4 warps) when 64 divides it (a tile's rows then belong to one rank), else `None` (the caller
/// runs the unfused path). Returns the launch shape (one CTA per output tile, the pipeline's
/// dynamic shared memory) and the entry point's suffix.
fn overlap_tile(m: usize, n: usize, m_local: usize) -> Option<(LaunchShape, &'static str)> {
    let (bm, bn, threads, suffix) = if m >= 128 && n >= 128 && m_local % 128 == 0 {
        (128, 128, 256, "")
    } else if m_local % 64 == 0 {
        (64, 64, 128, "_small")
    } else {
        return None;
    };
    let gx = u32::try_from(n.div_ceil(bn)).ok()?;
    let gy = u32::try_from(m / bm).ok().filter(|&g| g <= 65535)?;
    let shape = LaunchShape {
        grid: [gx, gy, 1],
        block: [threads, 1, 1],
        dynamic_shared: (GEMM_STAGES * (bm + bn) * GEMM_BK * 2) as u32,
    };
    Some((shape, suffix))
}

/// What a rank's closure gets from [`launch`].
pub struct PeerRankCtx {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// This rank's device.
    pub device: Device,
    /// The communicator over all ranks.
    pub comm: PeerComm,
}

/// Runs `f` once per rank, rank `r` on its own thread with `devices[r]` and a [`PeerComm`] of one
/// group over `devices`; returns every rank's result in rank order. If a rank fails (returns an
/// error or panics), the others' pending calls fail fast with [`Error::PeerFailed`], and the
/// result is [`Error::RankFailed`] naming the rank that failed first.
pub fn launch<T, F>(devices: &[Device], config: PeerConfig, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(PeerRankCtx) -> Result<T> + Sync,
{
    let comms = PeerComm::group(devices, config)?;
    let group = comms[0].group.clone();
    let world_size = comms.len();
    let mut results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Vec<_> = comms
            .into_iter()
            .enumerate()
            .map(|(rank, comm)| {
                let (group, f) = (group.clone(), &f);
                std::thread::Builder::new()
                    .name(format!("ferrotron-peer{rank}"))
                    .spawn_scoped(scope, move || {
                        let ctx = PeerRankCtx {
                            rank,
                            world_size,
                            device: comm.device().clone(),
                            comm,
                        };
                        let out = super::launch::run_rank(rank, || f(ctx));
                        if let Err(e) = &out {
                            if !matches!(e, Error::PeerFailed { .. }) {
                                group.fail(rank, e.to_string());
                            }
                        }
                        out
                    })
                    .expect("spawn rank thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank threads catch their panics"))
            .collect()
    });
    // The rank that failed first is the cause, if its closure failed (a closure may also have
    // handled a failed call and returned normally).
    if let Some((rank, _)) = group.first_failure() {
        if results[rank].is_err() {
            let e = results.swap_remove(rank).err().expect("checked");
            return Err(Error::RankFailed {
                rank,
                error: Box::new(e),
            });
        }
    }
    let mut out = Vec::with_capacity(world_size);
    for (rank, r) in results.into_iter().enumerate() {
        match r {
            Ok(v) => out.push(v),
            Err(e) => {
                return Err(Error::RankFailed {
                    rank,
                    error: Box::new(e),
                })
            }
        }
    }
    Ok(out)
}
