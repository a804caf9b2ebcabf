//! The MPI communicator (feature `mpi`): CPU ranks as processes, on one machine or many, over
//! OpenMPI (or any MPI-3 library that provides `MPI_THREAD_MULTIPLE`).
//!
//! # Entry points
//! A program written against [`Communicator`] runs unchanged under `mpirun -np N`: call
//! [`launch`] (one closure per process, like [`crate::comm::launch`] runs one per thread), or
//! [`init`] once per process and make communicators with [`MpiWorld::comm`]. Dropping the
//! [`MpiWorld`] finalises MPI, after every call still running on any stream has returned.
//!
//! # How a call runs
//! Every call is validated on the host, then enqueued on the caller's CPU stream through the
//! shared host-memory path; the MPI traffic happens on the stream's worker thread with the
//! tensors locked. Collectives of one communicator run one at a time, in the order they were
//! enqueued (their sequence number), whatever streams they were enqueued on: MPI matches
//! collectives by order, so that order must be the same on every rank. Point-to-point calls are
//! ordered the same way per (peer, tag, direction).
//!
//! # Determinism
//! MPI's own reductions sum in an implementation-defined order, so none is used: a reduction
//! moves blocks with point-to-point messages (reduce-scatter: rank `r` receives block `r` of
//! every rank's input) and reduces them locally with the shared `reduce_to`, in rank order with f32
//! accumulation and one rounding for bf16: bitwise the thread backend's result. All-reduce is that
//! reduce-scatter followed by an all-gather of the reduced blocks; broadcast is a scatter from the
//! root followed by an all-gather. bf16 travels as its 16-bit words.
//!
//! # Checked semantics
//! Before each collective the ranks exchange a fixed-size record of the call's [`Signature`]
//! (op, dtype, counts' length, sum and hash, root, reduction, sequence number). Every rank
//! receives every record, so every rank reports the same [`Error::CollectiveMismatch`] when they
//! differ (the full counts are exchanged in a second round to name the calls exactly). The
//! exchange is point-to-point, so a timeout names the ranks whose records never arrived, and it is
//! also what [`Communicator::barrier`] is. Every wait polls nonblocking requests against
//! [`CommConfig::timeout`]. Sends carry a small header (dtype, count) that the receiver checks
//! before any data moves; it answers with an acknowledgement, so a size or dtype mismatch is an
//! [`Error::CollectiveMismatch`] on both sides. A rank whose [`launch`] closure fails tells every
//! other process, and their waits end with [`Error::PeerFailed`].
//!
//! # Safety of abandoned requests
//! MPI sends only out of staging buffers owned by the communicator, never out of a tensor, and
//! receives into a tensor only where the received data is final (all-gather, the all-gather half
//! of all-reduce, the data of a receive). A wait that gives up (timeout, failed peer) cancels
//! its receives into tensors and waits for them to end before it returns and unlocks the
//! tensors (if one can be neither cancelled nor finished within 10 s, the job is aborted rather
//! than risking a late write); everything else it abandons stays in staging, which a
//! communicator in that state leaks instead of reusing. The communicator is unusable from then
//! on (every later call fails at once, naming the first failure).
//!
//! # Not available over MPI
//! Deadlocks of point-to-point calls across processes are reported by the timeout, not as
//! [`Error::Deadlock`] (there is no shared view of who waits for whom).

use super::reduce::{self, Raw};
use super::{
    check_counts, check_rank, host, CollOp, CommConfig, Communicator, ReduceOp, Signature, Work,
};
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::stream::Stream;
use crate::tensor::Tensor;
use mpi::environment::{Threading, Universe};
use mpi::ffi;
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Tags on a communicator's collective channel.
const SIG_TAG: c_int = 1;
const DATA_TAG: c_int = 2;
const COUNTS_TAG: c_int = 3;
/// Tag of failure notices on the process-wide control channel.
const FAIL_TAG: c_int = 7;
/// Longest failure reason sent to peers.
const FAIL_BYTES: usize = 1024;
/// Largest single MPI message (counts are C ints); longer transfers are split.
const MAX_MSG: usize = 1 << 30;
/// Words of a signature record.
const REC_WORDS: usize = 8;
/// Words of a point-to-point header or acknowledgement.
const HDR_WORDS: usize = 4;
/// Marks ferrotron's records ("FRTN").
const MAGIC: u64 = 0x4652_544e;
/// After this long without a completed request, waits sleep between tests instead of yielding.
const SPIN: Duration = Duration::from_millis(50);
/// How often a wait checks for failure notices from peers.
const FAIL_POLL: Duration = Duration::from_millis(2);
/// Staging buffers kept for reuse per communicator.
const POOL: usize = 4;

// ---------------------------------------------------------------------------------------------
// Process-wide state: life cycle and failure notices.

/// Calls that may touch MPI right now (see [`Alive`]).
static ACTIVE: AtomicUsize = AtomicUsize::new(0);
/// Set once [`init`] succeeded.
static INITIALIZED: AtomicBool = AtomicBool::new(false);
/// Set when the [`MpiWorld`] is dropped: no call may start touching MPI any more.
static FINALIZING: AtomicBool = AtomicBool::new(false);
/// The first failure another process announced: (world rank, reason).
static FAILURE: OnceLock<(usize, String)> = OnceLock::new();
/// The channel failure notices travel on.
static CONTROL: Mutex<Option<Control>> = Mutex::new(None);

/// Proof that MPI is initialised and will not be finalised while this lives. Not a lock, so
/// holding several on one thread is fine.
struct Alive;

fn alive(op: &'static str) -> Result<Alive> {
    ACTIVE.fetch_add(1, Ordering::SeqCst);
    // SeqCst pairs with `MpiWorld::drop`: it sets FINALIZING and then waits for ACTIVE == 0, so
    // either it sees this call or this call sees FINALIZING.
    if FINALIZING.load(Ordering::SeqCst) || !INITIALIZED.load(Ordering::SeqCst) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
        return Err(Error::invalid(
            op,
            "MPI",
            "MPI is not initialised or already finalised (the MpiWorld was dropped)",
        ));
    }
    Ok(Alive)
}

impl Drop for Alive {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An MPI communicator handle.
#[derive(Clone, Copy, Debug)]
struct Handle(ffi::MPI_Comm);

// SAFETY: a communicator handle is an opaque reference into the MPI library, which `init` has
// verified runs with MPI_THREAD_MULTIPLE: any thread may use it, concurrently.
unsafe impl Send for Handle {}
// SAFETY: as above.
unsafe impl Sync for Handle {}

/// The world-wide channel for failure notices: one receive from any source stays posted.
struct Control {
    comm: Handle,
    req: ffi::MPI_Request,
    buf: Box<[u8; FAIL_BYTES]>,
    world_rank: usize,
    world_size: usize,
    notified: bool,
}

// SAFETY: the request and communicator are MPI handles (MPI_THREAD_MULTIPLE); the Mutex around
// `CONTROL` serialises every use of the request, as MPI requires for one request.
unsafe impl Send for Control {}

fn request_null() -> ffi::MPI_Request {
    // SAFETY: reading an immutable extern static of mpi-sys, initialised at load time.
    unsafe { ffi::RSMPI_REQUEST_NULL }
}

fn comm_null() -> ffi::MPI_Comm {
    // SAFETY: as above.
    unsafe { ffi::RSMPI_COMM_NULL }
}

fn byte_type() -> ffi::MPI_Datatype {
    // SAFETY: as above.
    unsafe { ffi::RSMPI_UINT8_T }
}

fn mpi_error(call: &str, rc: c_int) -> Error {
    let mut buf = [0u8; ffi::MPI_MAX_ERROR_STRING as usize + 1];
    let mut len: c_int = 0;
    // SAFETY: `buf` holds MPI_MAX_ERROR_STRING characters as MPI_Error_string requires.
    let ok = unsafe { ffi::MPI_Error_string(rc, buf.as_mut_ptr() as *mut _, &mut len) } == 0;
    let text = if ok {
        String::from_utf8_lossy(&buf[..len.clamp(0, buf.len() as c_int) as usize]).into_owned()
    } else {
        "unknown error".into()
    };
    Error::AsyncFailure {
        stream: "mpi".into(),
        op: call.into(),
        message: format!("MPI error {rc}: {text}"),
    }
}

fn check(call: &str, rc: c_int) -> Result<()> {
    if rc == ffi::MPI_SUCCESS as c_int {
        Ok(())
    } else {
        Err(mpi_error(call, rc))
    }
}

/// The failure another process announced, if any (tests the posted receive now and then).
fn peer_failure() -> Option<(usize, String)> {
    if let Some(f) = FAILURE.get() {
        return Some(f.clone());
    }
    let mut guard = CONTROL.try_lock().ok()?;
    let c = guard.as_mut()?;
    if c.req == request_null() {
        return None;
    }
    let mut flag: c_int = 0;
    let mut status = MaybeUninit::<ffi::MPI_Status>::zeroed();
    // SAFETY: `c.req` is the live receive posted into `c.buf` (kept alive by CONTROL); the Mutex
    // gives this thread exclusive use of the request.
    let rc = unsafe { ffi::MPI_Test(&mut c.req, &mut flag, status.as_mut_ptr()) };
    if rc != 0 || flag == 0 {
        return None;
    }
    // SAFETY: MPI_Test completed the request and filled in the status.
    let status = unsafe { status.assume_init() };
    let mut count: c_int = 0;
    // SAFETY: `status` describes a completed receive of bytes.
    unsafe { ffi::MPI_Get_count(&status, byte_type(), &mut count) };
    let n = (count.max(0) as usize).min(FAIL_BYTES);
    let reason = String::from_utf8_lossy(&c.buf[..n]).into_owned();
    let _ = FAILURE.set((status.MPI_SOURCE as usize, reason));
    FAILURE.get().cloned()
}

/// Tells every other process that this one failed (once; best effort, never blocks).
fn notify_failure(reason: &str) {
    let Ok(mut guard) = CONTROL.lock() else {
        return;
    };
    let Some(c) = guard.as_mut() else {
        return;
    };
    if c.notified {
        return;
    }
    c.notified = true;
    let bytes = reason.as_bytes();
    let msg: &'static [u8] = Box::leak(
        bytes[..bytes.len().min(FAIL_BYTES)]
            .to_vec()
            .into_boxed_slice(),
    );
    for q in (0..c.world_size).filter(|&q| q != c.world_rank) {
        let mut req = request_null();
        // SAFETY: `msg` is leaked, so it outlives the send, which completes on its own after
        // MPI_Request_free (allowed for send requests); the control communicator is live.
        unsafe {
            let rc = ffi::MPI_Isend(
                msg.as_ptr() as *const c_void,
                msg.len() as c_int,
                byte_type(),
                q as c_int,
                FAIL_TAG,
                c.comm.0,
                &mut req,
            );
            if rc == 0 {
                ffi::MPI_Request_free(&mut req);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Waiting for requests.

/// Why a wait ended early.
enum Stall {
    Timeout,
    Peer(usize, String),
    Mpi(c_int),
    Finalizing,
}

fn finalizing_error(what: &str) -> Error {
    Error::AsyncFailure {
        stream: "mpi".into(),
        op: what.to_string(),
        message: "MPI is being finalised (the MpiWorld was dropped) while this call waited".into(),
    }
}

/// Tests `reqs` until all are complete (null), the deadline passes or a peer announces failure.
/// Completed requests become null; on a stall the rest stay pending.
fn poll(reqs: &mut [ffi::MPI_Request], deadline: Instant) -> std::result::Result<(), Stall> {
    let n = reqs.len();
    if n == 0 {
        return Ok(());
    }
    let mut idx = vec![0 as c_int; n];
    // SAFETY: reading an immutable extern static of mpi-sys.
    let undefined = unsafe { ffi::RSMPI_UNDEFINED };
    let mut last = Instant::now();
    let mut next_fail_check = last;
    loop {
        let mut out: c_int = 0;
        // SAFETY: `reqs` and `idx` hold `n` elements; statuses are ignored.
        let rc = unsafe {
            ffi::MPI_Testsome(
                n as c_int,
                reqs.as_mut_ptr(),
                &mut out,
                idx.as_mut_ptr(),
                ffi::RSMPI_STATUSES_IGNORE,
            )
        };
        if rc != 0 {
            return Err(Stall::Mpi(rc));
        }
        if out == undefined {
            return Ok(());
        }
        let now = Instant::now();
        if out > 0 {
            last = now;
            if reqs.iter().all(|r| *r == request_null()) {
                return Ok(());
            }
            continue;
        }
        if now >= deadline {
            return Err(Stall::Timeout);
        }
        if now >= next_fail_check {
            if let Some((rank, why)) = peer_failure() {
                return Err(Stall::Peer(rank, why));
            }
            if FINALIZING.load(Ordering::SeqCst) {
                return Err(Stall::Finalizing);
            }
            next_fail_check = now + FAIL_POLL;
        }
        if now.duration_since(last) < SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Creates `k` duplicates of `src` (a collective over `src`), failing after `timeout`.
fn idup(src: Handle, k: usize, timeout: Duration, what: &str) -> Result<Vec<Handle>> {
    let mut comms = vec![comm_null(); k];
    let mut reqs = vec![request_null(); k];
    let deadline = Instant::now() + timeout;
    // One duplication at a time: with several MPI_Comm_idup outstanding on one communicator,
    // Open MPI 4.1 intermittently never completes them on some rank (seen here about 1 run in
    // 6 with -np 2), so each one is finished before the next starts.
    let mut outcome = Ok(());
    for i in 0..k {
        // SAFETY: `comms[i]` and `reqs[i]` stay in place (the Vecs are not resized) until the
        // requests complete or are abandoned with their handles leaked below.
        check("MPI_Comm_idup", unsafe {
            ffi::MPI_Comm_idup(src.0, &mut comms[i], &mut reqs[i])
        })?;
        outcome = poll(&mut reqs[i..=i], deadline);
        if outcome.is_err() {
            break;
        }
    }
    match outcome {
        Ok(()) => Ok(comms.into_iter().map(Handle).collect()),
        Err(stall) => {
            // The pending duplications may still write their handles: leak both vectors.
            std::mem::forget(comms);
            std::mem::forget(reqs);
            Err(match stall {
                Stall::Timeout => Error::Timeout {
                    what: format!(
                        "{what}: not every rank joined (MPI_Comm_idup does not say which ranks \
                         are missing)"
                    ),
                    seconds: timeout.as_secs_f64(),
                },
                Stall::Peer(rank, reason) => Error::PeerFailed {
                    rank,
                    reason,
                    waiting_in: what.to_string(),
                },
                Stall::Mpi(rc) => mpi_error("MPI_Comm_idup", rc),
                Stall::Finalizing => finalizing_error(what),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The world.

/// MPI, initialised for this process with `MPI_THREAD_MULTIPLE`: the factory of world
/// communicators. Dropping it finalises MPI (after every call in flight has returned); later
/// calls on any [`MpiComm`] fail with an error.
pub struct MpiWorld {
    universe: Option<Universe>,
    rank: usize,
    size: usize,
    library: String,
}

/// Initialises MPI with `MPI_THREAD_MULTIPLE` (stream workers call MPI concurrently) and opens
/// the channel failure notices travel on. Call once per process; under `mpirun -np N` each
/// process is one rank; run directly, the process is a world of one.
///
/// Fails if MPI was already initialised in this process or if the library cannot provide
/// `MPI_THREAD_MULTIPLE`.
pub fn init() -> Result<MpiWorld> {
    const OP: &str = "mpi::init";
    let (universe, provided) =
        mpi::initialize_with_threading(Threading::Multiple).ok_or_else(|| {
            Error::invalid(
                OP,
                "MPI",
                "MPI is already initialised in this process (one MpiWorld per process)",
            )
        })?;
    let library = mpi::environment::library_version()
        .unwrap_or_else(|_| "unknown MPI library".into())
        .trim()
        .to_string();
    if provided < Threading::Multiple {
        // Dropping `universe` finalises MPI again.
        return Err(Error::Unsupported {
            op: "MPI_THREAD_MULTIPLE (ferrotron calls MPI from stream worker threads)",
            backend: format!("mpi ({library} provides only {provided:?})"),
        });
    }
    INITIALIZED.store(true, Ordering::SeqCst);
    let world = Handle(
        // SAFETY: reading an immutable extern static of mpi-sys.
        unsafe { ffi::RSMPI_COMM_WORLD },
    );
    let (mut rank, mut size): (c_int, c_int) = (0, 0);
    // SAFETY: MPI is initialised; the out-pointers are valid.
    check("MPI_Comm_rank", unsafe {
        ffi::MPI_Comm_rank(world.0, &mut rank)
    })?;
    // SAFETY: as above.
    check("MPI_Comm_size", unsafe {
        ffi::MPI_Comm_size(world.0, &mut size)
    })?;
    let mpi_world = MpiWorld {
        universe: Some(universe),
        rank: rank as usize,
        size: size as usize,
        library,
    };
    let timeout = CommConfig::default().timeout;
    let comm = idup(world, 1, timeout, "mpi::init (control channel)")?[0];
    let mut buf = Box::new([0u8; FAIL_BYTES]);
    let mut req = request_null();
    // SAFETY: `buf` is moved into CONTROL below without moving its heap allocation, and stays
    // there until the receive is cancelled and completed in `MpiWorld::drop`.
    check("MPI_Irecv", unsafe {
        ffi::MPI_Irecv(
            buf.as_mut_ptr() as *mut c_void,
            FAIL_BYTES as c_int,
            byte_type(),
            ffi::RSMPI_ANY_SOURCE,
            FAIL_TAG,
            comm.0,
            &mut req,
        )
    })?;
    *CONTROL.lock().unwrap_or_else(|p| p.into_inner()) = Some(Control {
        comm,
        req,
        buf,
        world_rank: mpi_world.rank,
        world_size: mpi_world.size,
        notified: false,
    });
    Ok(mpi_world)
}

impl MpiWorld {
    /// This process's rank in `MPI_COMM_WORLD`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of processes in `MPI_COMM_WORLD`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The MPI library's version string (e.g. `Open MPI v4.1.4, ...`).
    pub fn library_version(&self) -> &str {
        &self.library
    }

    /// A new communicator over every process (named `mpi:world`). Collective: every process must
    /// call it, in the same order as its other `comm` calls; fails after `config.timeout` if some
    /// do not.
    pub fn comm(&self, config: CommConfig) -> Result<MpiComm> {
        let _alive = alive("MpiWorld::comm")?;
        // SAFETY: reading an immutable extern static of mpi-sys.
        let world = Handle(unsafe { ffi::RSMPI_COMM_WORLD });
        let comms = idup(world, 3, config.timeout, "creating mpi:world")?;
        Ok(MpiComm {
            inner: Arc::new(Inner::new(
                "mpi:world".into(),
                [comms[0], comms[1], comms[2]],
                config,
            )?),
        })
    }

    /// Tells every other process that this one failed: their pending and later waits end with
    /// [`Error::PeerFailed`] naming this rank and `reason`. [`launch`] calls it when its closure
    /// fails. Only the first call sends anything.
    pub fn notify_failure(&self, reason: &str) {
        if let Ok(_alive) = alive("MpiWorld::notify_failure") {
            notify_failure(reason);
        }
    }
}

impl Drop for MpiWorld {
    fn drop(&mut self) {
        FINALIZING.store(true, Ordering::SeqCst);
        // Every call in flight has a deadline, so this ends.
        while ACTIVE.load(Ordering::SeqCst) != 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(mut c) = CONTROL.lock().unwrap_or_else(|p| p.into_inner()).take() {
            if c.req != request_null() {
                // SAFETY: the receive is live; cancelling an unmatched receive and waiting for it
                // completes at once (a matched one has completed already).
                unsafe {
                    ffi::MPI_Cancel(&mut c.req);
                    ffi::MPI_Wait(&mut c.req, ffi::RSMPI_STATUS_IGNORE);
                }
            }
            // SAFETY: no request on the control channel is pending any more (sends were freed
            // and complete on their own).
            unsafe { ffi::MPI_Comm_free(&mut c.comm.0) };
        }
        // MPI_Finalize.
        drop(self.universe.take());
    }
}

/// What a process's closure gets from [`launch`]: the MPI twin of [`crate::comm::RankCtx`].
pub struct MpiRankCtx<'w> {
    /// This process's rank.
    pub rank: usize,
    /// The number of processes.
    pub world_size: usize,
    /// This process's device (the CPU).
    pub device: Device,
    /// The communicator over all processes.
    pub comm: MpiComm,
    /// MPI itself: more world communicators ([`MpiWorld::comm`]), failure notices.
    pub world: &'w MpiWorld,
}

/// Runs `f` once in this process as one rank of `mpirun -np N`: initialises MPI, builds the
/// world communicator, runs `f`, and finalises MPI. If `f` fails (returns an error that is not
/// itself [`Error::PeerFailed`], or panics) the other processes are told, so their waits end
/// with [`Error::PeerFailed`]; the error comes back as [`Error::RankFailed`] naming this rank.
pub fn launch<T>(config: CommConfig, f: impl FnOnce(MpiRankCtx<'_>) -> Result<T>) -> Result<T> {
    let world = init()?;
    let rank = world.rank();
    let comm = world.comm(config)?;
    let ctx = MpiRankCtx {
        rank,
        world_size: world.size(),
        device: Device::cpu(),
        comm,
        world: &world,
    };
    let out = super::launch::run_rank(rank, || f(ctx));
    if let Err(e) = &out {
        if !matches!(e, Error::PeerFailed { .. }) {
            world.notify_failure(&e.to_string());
        }
    }
    drop(world);
    out.map_err(|e| Error::RankFailed {
        rank,
        error: Box::new(e),
    })
}

// ---------------------------------------------------------------------------------------------
// Signature records.

fn op_code(op: CollOp) -> u64 {
    match op {
        CollOp::AllReduce => 1,
        CollOp::AllGather => 2,
        CollOp::ReduceScatter => 3,
        CollOp::Broadcast => 4,
        CollOp::Barrier => 5,
        CollOp::Send => 6,
        CollOp::Recv => 7,
        CollOp::Split => 8,
        CollOp::AllGatherGemm => 9,
        CollOp::GemmReduceScatter => 10,
    }
}

fn op_of(code: u64) -> Option<CollOp> {
    Some(match code {
        1 => CollOp::AllReduce,
        2 => CollOp::AllGather,
        3 => CollOp::ReduceScatter,
        4 => CollOp::Broadcast,
        5 => CollOp::Barrier,
        6 => CollOp::Send,
        7 => CollOp::Recv,
        8 => CollOp::Split,
        9 => CollOp::AllGatherGemm,
        10 => CollOp::GemmReduceScatter,
        _ => return None,
    })
}

fn dtype_code(d: Option<DType>) -> u64 {
    match d {
        None => 0,
        Some(DType::F32) => 1,
        Some(DType::BF16) => 2,
        Some(DType::F16) => 3,
        Some(DType::I32) => 4,
    }
}

fn dtype_of(code: u64) -> Option<Option<DType>> {
    Some(match code {
        0 => None,
        1 => Some(DType::F32),
        2 => Some(DType::BF16),
        3 => Some(DType::F16),
        4 => Some(DType::I32),
        _ => return None,
    })
}

fn redop_code(o: Option<ReduceOp>) -> u64 {
    match o {
        None => 0,
        Some(ReduceOp::Sum) => 1,
        Some(ReduceOp::Avg) => 2,
        Some(ReduceOp::Max) => 3,
        Some(ReduceOp::Min) => 4,
    }
}

fn redop_of(code: u64) -> Option<Option<ReduceOp>> {
    Some(match code {
        0 => None,
        1 => Some(ReduceOp::Sum),
        2 => Some(ReduceOp::Avg),
        3 => Some(ReduceOp::Max),
        4 => Some(ReduceOp::Min),
        _ => return None,
    })
}

/// FNV-1a over the counts.
fn counts_hash(counts: &[usize]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in counts {
        for b in (*c as u64).to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

type Record = [u64; REC_WORDS];

/// The fixed-size record of a call: what ranks compare.
fn encode(sig: &Signature, seq: u64) -> Record {
    [
        MAGIC << 32 | op_code(sig.op) << 16 | dtype_code(sig.dtype) << 8 | redop_code(sig.redop),
        seq,
        sig.root.map_or(0, |r| r as u64 + 1),
        sig.counts.len() as u64,
        sig.counts.first().map_or(0, |&c| c as u64),
        sig.counts.iter().map(|&c| c as u64).sum(),
        counts_hash(&sig.counts),
        0,
    ]
}

/// A record as text, e.g. `all_reduce(f32, count=8, sum)`; `counts` are the full counts when
/// known. Appends the call number when it is not `seq`.
fn describe(rec: &Record, counts: Option<&[usize]>, seq: u64) -> String {
    let w0 = rec[0];
    let parsed = (w0 >> 32 == MAGIC)
        .then(|| {
            Some(Signature {
                op: op_of((w0 >> 16) & 0xff)?,
                dtype: dtype_of((w0 >> 8) & 0xff)?,
                counts: match counts {
                    Some(c) => c.into(),
                    None if rec[3] == 1 => [rec[4] as usize].into(),
                    None => [].into(),
                },
                root: rec[2].checked_sub(1).map(|r| r as usize),
                redop: redop_of(w0 & 0xff)?,
            })
        })
        .flatten();
    let mut text = match parsed {
        Some(sig) => sig.to_string(),
        None => format!("an unrecognised call (record {rec:x?})"),
    };
    if counts.is_none() && rec[3] > 1 {
        text.push_str(&format!(" [{} counts, sum {}]", rec[3], rec[5]));
    }
    if rec[1] != seq {
        text.push_str(&format!(" as call #{}", rec[1]));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// The communicator.

/// What is ordered: a communicator's collectives, or one point-to-point channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum TurnKey {
    Coll,
    P2p { peer: usize, tag: u32, send: bool },
}

#[derive(Default)]
struct Turn {
    next: u64,
    /// Calls that finished (or were skipped) before their turn.
    early: BTreeSet<u64>,
}

/// One transfer of an exchange.
#[derive(Clone, Copy)]
struct Xfer {
    comm: Handle,
    peer: usize,
    tag: c_int,
    ptr: *mut u8,
    bytes: usize,
    recv: bool,
    /// A receive straight into a (locked) tensor rather than into staging.
    user: bool,
}

impl Xfer {
    /// This receive lands in a tensor: [`Inner::exchange`] does not return while it may still
    /// write there.
    fn into_tensor(self) -> Xfer {
        debug_assert!(self.recv, "sends always go out of staging");
        Xfer { user: true, ..self }
    }
}

/// How long a wait that gave up waits for receives into tensors to be cancelled or to finish.
const RECLAIM: Duration = Duration::from_secs(10);

/// Cancels the pending receives into tensors among `reqs` and waits for them to end (an
/// unmatched receive is cancelled at once; a matched one is finishing). If one does not end
/// within [`RECLAIM`], MPI could write into a tensor after it is released: the job is aborted
/// rather than risking silent corruption.
fn reclaim(reqs: &mut [ffi::MPI_Request], owner: &[usize], xfers: &[Xfer]) {
    let user = |i: usize| xfers[owner[i]].user;
    for (i, r) in reqs.iter_mut().enumerate() {
        if *r != request_null() && user(i) {
            // SAFETY: `r` is a live receive request of this exchange.
            unsafe { ffi::MPI_Cancel(r) };
        }
    }
    let deadline = Instant::now() + RECLAIM;
    loop {
        let mut pending = false;
        for (i, r) in reqs.iter_mut().enumerate() {
            if *r != request_null() && user(i) {
                let mut flag: c_int = 0;
                // SAFETY: `r` is a live (cancelled) request; the status is ignored.
                unsafe { ffi::MPI_Test(r, &mut flag, ffi::RSMPI_STATUS_IGNORE) };
                pending |= flag == 0;
            }
        }
        if !pending {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "ferrotron mpi: a receive into a tensor could be neither cancelled nor finished \
                 within {RECLAIM:?}; aborting the job rather than risk corrupting memory"
            );
            // SAFETY: plain library call on the world communicator; it does not return.
            unsafe { ffi::MPI_Abort(ffi::RSMPI_COMM_WORLD, 70) };
            std::process::abort();
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A staging buffer (8-byte aligned) from the communicator's pool. Returned to the pool when
/// dropped, or leaked if the communicator broke (MPI may still touch it).
struct Scratch<'a> {
    inner: &'a Inner,
    buf: Option<Vec<u64>>,
    ptr: *mut u8,
}

impl Scratch<'_> {
    fn raw(&self, dtype: DType, len: usize) -> Raw {
        Raw {
            ptr: self.ptr,
            len,
            dtype,
        }
    }

    /// The first `n` words (within the buffer asked for, rounded up to words).
    fn words(&mut self, n: usize) -> &mut [u64] {
        assert!(n <= self.buf.as_ref().map_or(0, |b| b.len()));
        // SAFETY: `ptr` is the start of the owned Vec's `len >= n` initialised words (taken
        // with `as_mut_ptr`, so it stays valid); `&mut self` excludes other uses meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u64, n) }
    }

    fn at(&self, byte_off: usize) -> *mut u8 {
        // SAFETY: callers stay within the buffer they asked for (offsets of its own layout).
        unsafe { self.ptr.add(byte_off) }
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        if self.inner.broken.load(Ordering::SeqCst) {
            std::mem::forget(buf);
            return;
        }
        let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.push(buf);
        if pool.len() > POOL {
            pool.sort_by_key(|b| std::cmp::Reverse(b.len()));
            pool.truncate(POOL);
        }
    }
}

struct Inner {
    name: String,
    rank: usize,
    size: usize,
    /// Collectives: signature records, data, counts.
    coll: Handle,
    /// Point-to-point headers and data (user tags).
    p2p: Handle,
    /// Point-to-point acknowledgements (user tags).
    ack: Handle,
    config: CommConfig,
    tag_ub: u32,
    seq: AtomicU64,
    turns: Mutex<HashMap<TurnKey, Turn>>,
    turn_cv: Condvar,
    p2p_count: Mutex<HashMap<TurnKey, u64>>,
    broken: AtomicBool,
    broken_why: Mutex<Option<String>>,
    pool: Mutex<Vec<Vec<u64>>>,
}

// SAFETY: the handles are MPI handles usable from any thread (MPI_THREAD_MULTIPLE); everything
// else is synchronised.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

impl Inner {
    fn new(name: String, [coll, p2p, ack]: [Handle; 3], config: CommConfig) -> Result<Inner> {
        let (mut rank, mut size): (c_int, c_int) = (0, 0);
        // SAFETY: `coll` is a live communicator; the out-pointers are valid.
        check("MPI_Comm_rank", unsafe {
            ffi::MPI_Comm_rank(coll.0, &mut rank)
        })?;
        // SAFETY: as above.
        check("MPI_Comm_size", unsafe {
            ffi::MPI_Comm_size(coll.0, &mut size)
        })?;
        let mut ub: *mut c_int = std::ptr::null_mut();
        let mut flag: c_int = 0;
        // SAFETY: MPI_TAG_UB is a predefined attribute whose value is a pointer to an int owned
        // by the library; `ub` receives that pointer.
        check("MPI_Comm_get_attr", unsafe {
            ffi::MPI_Comm_get_attr(
                coll.0,
                ffi::MPI_TAG_UB as c_int,
                &mut ub as *mut *mut c_int as *mut c_void,
                &mut flag,
            )
        })?;
        let tag_ub = if flag != 0 && !ub.is_null() {
            // SAFETY: the library set `ub` to its own int, valid while MPI is initialised.
            unsafe { *ub }.max(32767) as u32
        } else {
            32767
        };
        Ok(Inner {
            name,
            rank: rank as usize,
            size: size as usize,
            coll,
            p2p,
            ack,
            config,
            tag_ub,
            seq: AtomicU64::new(0),
            turns: Mutex::new(HashMap::new()),
            turn_cv: Condvar::new(),
            p2p_count: Mutex::new(HashMap::new()),
            broken: AtomicBool::new(false),
            broken_why: Mutex::new(None),
            pool: Mutex::new(Vec::new()),
        })
    }

    fn turns(&self) -> MutexGuard<'_, HashMap<TurnKey, Turn>> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the communicator unusable (the first reason wins).
    fn break_with(&self, why: String) {
        let mut w = self.broken_why.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            *w = Some(why);
        }
        self.broken.store(true, Ordering::SeqCst);
    }

    fn check_usable(&self, op: &'static str, stream: &str) -> Result<()> {
        if !self.broken.load(Ordering::SeqCst) {
            return Ok(());
        }
        let why = self
            .broken_why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        Err(Error::AsyncFailure {
            stream: stream.to_string(),
            op: op.to_string(),
            message: format!("communicator {} is unusable: {why}", self.name),
        })
    }

    fn scratch(&self, bytes: usize) -> Scratch<'_> {
        let words = bytes.div_ceil(8).max(1);
        let found = {
            let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
            let best = pool
                .iter()
                .enumerate()
                .filter(|(_, b)| b.len() >= words)
                .min_by_key(|(_, b)| b.len())
                .map(|(i, _)| i);
            best.map(|i| pool.swap_remove(i))
        };
        let mut buf = found.unwrap_or_else(|| vec![0u64; words]);
        let ptr = buf.as_mut_ptr() as *mut u8;
        Scratch {
            inner: self,
            buf: Some(buf),
            ptr,
        }
    }

    fn next_p2p(&self, key: TurnKey) -> u64 {
        let mut m = self.p2p_count.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(key).or_insert(0);
        let k = *n;
        *n += 1;
        k
    }

    /// Waits until call `n` of `key` may run.
    fn wait_turn(&self, key: TurnKey, n: u64, what: &str) -> Result<()> {
        let deadline = Instant::now() + self.config.timeout;
        let mut t = self.turns();
        loop {
            let next = t.entry(key).or_default().next;
            if next == n {
                return Ok(());
            }
            if FINALIZING.load(Ordering::SeqCst) {
                return Err(finalizing_error(what));
            }
            let now = Instant::now();
            if now >= deadline {
                let e = Error::Timeout {
                    what: format!(
                        "{what}: this rank's call #{next} (enqueued earlier, on another stream) \
                         never finished"
                    ),
                    seconds: self.config.timeout.as_secs_f64(),
                };
                self.break_with(format!("{what} timed out waiting for its turn"));
                return Err(e);
            }
            t = self
                .turn_cv
                .wait_timeout(t, (deadline - now).min(Duration::from_millis(100)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Call `n` of `key` was rejected before it was enqueued: give its number back, so peers and
    /// this rank stay in step; if a later call was numbered meanwhile, that is impossible.
    fn rollback(&self, key: TurnKey, n: u64, op: &str) {
        let undone = match key {
            TurnKey::Coll => self
                .seq
                .compare_exchange(n + 1, n, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok(),
            TurnKey::P2p { .. } => {
                let mut m = self.p2p_count.lock().unwrap_or_else(|p| p.into_inner());
                match m.get_mut(&key) {
                    Some(c) if *c == n + 1 => {
                        *c = n;
                        true
                    }
                    _ => false,
                }
            }
        };
        if !undone {
            self.break_with(format!(
                "{op} #{n} was rejected after a later call had been numbered (calls from \
                 several host threads?)"
            ));
            self.finish_turn(key, n);
        }
    }

    fn finish_turn(&self, key: TurnKey, n: u64) {
        let mut t = self.turns();
        let turn = t.entry(key).or_default();
        if turn.next == n {
            turn.next += 1;
            while turn.early.remove(&turn.next) {
                turn.next += 1;
            }
        } else if n > turn.next {
            turn.early.insert(n);
        }
        drop(t);
        self.turn_cv.notify_all();
    }

    /// Posts every transfer (receives first, split into messages of at most [`MAX_MSG`] bytes)
    /// and waits for all. On failure the communicator is broken (the buffers stay MPI's).
    /// `what(pending receives, pending sends)` names the wait.
    fn exchange(&self, xfers: &[Xfer], what: &dyn Fn(&[usize], &[usize]) -> String) -> Result<()> {
        let deadline = Instant::now() + self.config.timeout;
        let mut reqs: Vec<ffi::MPI_Request> = Vec::new();
        let mut owner: Vec<usize> = Vec::new();
        for recv_pass in [true, false] {
            for (i, x) in xfers.iter().enumerate() {
                if x.recv != recv_pass {
                    continue;
                }
                let mut off = 0;
                while off < x.bytes {
                    let len = (x.bytes - off).min(MAX_MSG);
                    let mut req = request_null();
                    // SAFETY: `x.ptr` points to `x.bytes` bytes of a staging buffer that outlives
                    // the request (returned to the pool only after completion, leaked if the
                    // communicator breaks), or of a tensor locked by this call, which this
                    // function does not leave while a receive into it may be pending (see
                    // `reclaim`); receive ranges are disjoint from every other range of the
                    // exchange; the communicator is live.
                    let rc = unsafe {
                        if x.recv {
                            ffi::MPI_Irecv(
                                x.ptr.add(off) as *mut c_void,
                                len as c_int,
                                byte_type(),
                                x.peer as c_int,
                                x.tag,
                                x.comm.0,
                                &mut req,
                            )
                        } else {
                            ffi::MPI_Isend(
                                x.ptr.add(off) as *const c_void,
                                len as c_int,
                                byte_type(),
                                x.peer as c_int,
                                x.tag,
                                x.comm.0,
                                &mut req,
                            )
                        }
                    };
                    if rc != 0 {
                        let e = mpi_error(if x.recv { "MPI_Irecv" } else { "MPI_Isend" }, rc);
                        self.break_with(e.to_string());
                        reclaim(&mut reqs, &owner, xfers);
                        return Err(e);
                    }
                    reqs.push(req);
                    owner.push(i);
                    off += len;
                }
            }
        }
        let stall = match poll(&mut reqs, deadline) {
            Ok(()) => return Ok(()),
            Err(s) => s,
        };
        let pending = |recv: bool| -> Vec<usize> {
            let mut v: Vec<usize> = reqs
                .iter()
                .zip(&owner)
                .filter(|(r, &i)| **r != request_null() && xfers[i].recv == recv)
                .map(|(_, &i)| xfers[i].peer)
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        let what = what(&pending(true), &pending(false));
        let e = match stall {
            Stall::Timeout => Error::Timeout {
                what: what.clone(),
                seconds: self.config.timeout.as_secs_f64(),
            },
            Stall::Peer(rank, reason) => Error::PeerFailed {
                rank,
                reason,
                waiting_in: what.clone(),
            },
            Stall::Mpi(rc) => mpi_error("MPI_Testsome", rc),
            Stall::Finalizing => finalizing_error(&what),
        };
        self.break_with(format!("{what}: {e}"));
        // Other pending requests are abandoned (not freed): their buffers are leaked with the
        // communicator's staging.
        reclaim(&mut reqs, &owner, xfers);
        Err(e)
    }

    fn data(&self, peer: usize, ptr: *mut u8, bytes: usize, recv: bool) -> Xfer {
        Xfer {
            comm: self.coll,
            peer,
            tag: DATA_TAG,
            ptr,
            bytes,
            recv,
            user: false,
        }
    }

    /// Exchanges the call's signature record with every rank; all ranks get the same mismatch
    /// error if any record differs. Also a barrier.
    fn agree(&self, seq: u64, sig: &Signature) -> Result<()> {
        let (p, me) = (self.size, self.rank);
        if p == 1 {
            return Ok(());
        }
        let mine = encode(sig, seq);
        let rb = REC_WORDS * 8;
        let mut sbuf = self.scratch(rb);
        sbuf.words(REC_WORDS).copy_from_slice(&mine);
        let mut rbuf = self.scratch(rb * p);
        let mut xfers = Vec::with_capacity(2 * p);
        for q in (0..p).filter(|&q| q != me) {
            xfers.push(Xfer {
                comm: self.coll,
                peer: q,
                tag: SIG_TAG,
                ptr: rbuf.at(q * rb),
                bytes: rb,
                recv: true,
                user: false,
            });
            xfers.push(Xfer {
                comm: self.coll,
                peer: q,
                tag: SIG_TAG,
                ptr: sbuf.ptr,
                bytes: rb,
                recv: false,
                user: false,
            });
        }
        let op = sig.op.name();
        self.exchange(&xfers, &|missing, _| {
            format!(
                "{op} #{seq} on {}: ranks {missing:?} never arrived",
                self.name
            )
        })?;
        let words = rbuf.words(REC_WORDS * p);
        let mut recs: Vec<Record> = (0..p)
            .map(|q| {
                words[q * REC_WORDS..(q + 1) * REC_WORDS]
                    .try_into()
                    .expect("8")
            })
            .collect();
        recs[me] = mine;
        let first = recs[0];
        let Some(other) = recs.iter().position(|r| *r != first) else {
            return Ok(());
        };
        // A mismatch. Where counts are longer than the record shows, fetch them to name the
        // calls exactly (every rank has every record, so all agree on doing this).
        let counts: Vec<Option<Vec<usize>>> = if recs.iter().any(|r| r[3] > 1) {
            Some(self.exchange_counts(seq, op, &recs, &sig.counts)?)
        } else {
            None
        }
        .map_or_else(|| vec![None; p], |v| v.into_iter().map(Some).collect());
        let ranks_with =
            |r: &Record| -> Box<[usize]> { (0..p).filter(|&i| recs[i] == *r).collect() };
        Err(Error::CollectiveMismatch {
            comm: self.name.clone(),
            seq,
            call_a: describe(&first, counts[0].as_deref(), seq),
            ranks_a: ranks_with(&first),
            call_b: describe(&recs[other], counts[other].as_deref(), seq),
            ranks_b: ranks_with(&recs[other]),
        })
    }

    /// Every rank's counts, after a mismatch (sizes from the records).
    fn exchange_counts(
        &self,
        seq: u64,
        op: &str,
        recs: &[Record],
        mine: &[usize],
    ) -> Result<Vec<Vec<usize>>> {
        let (p, me) = (self.size, self.rank);
        let lens: Vec<usize> = recs.iter().map(|r| r[3] as usize).collect();
        let offs = host::offsets(&lens);
        let total: usize = lens.iter().sum();
        let mut buf = self.scratch(total * 8);
        for (i, c) in mine.iter().enumerate() {
            buf.words(total)[offs[me] + i] = *c as u64;
        }
        let mut xfers = Vec::new();
        for q in (0..p).filter(|&q| q != me) {
            xfers.push(Xfer {
                comm: self.coll,
                peer: q,
                tag: COUNTS_TAG,
                ptr: buf.at(offs[q] * 8),
                bytes: lens[q] * 8,
                recv: true,
                user: false,
            });
            xfers.push(Xfer {
                comm: self.coll,
                peer: q,
                tag: COUNTS_TAG,
                ptr: buf.at(offs[me] * 8),
                bytes: lens[me] * 8,
                recv: false,
                user: false,
            });
        }
        self.exchange(&xfers, &|missing, _| {
            format!(
                "{op} #{seq} on {} (naming a mismatch): ranks {missing:?} never sent their counts",
                self.name
            )
        })?;
        let words = buf.words(total);
        Ok((0..p)
            .map(|q| {
                words[offs[q]..offs[q] + lens[q]]
                    .iter()
                    .map(|&c| c as usize)
                    .collect()
            })
            .collect())
    }

    fn data_what(&self, op: &'static str, seq: u64) -> impl Fn(&[usize], &[usize]) -> String + '_ {
        move |recv: &[usize], send: &[usize]| {
            format!(
                "{op} #{seq} on {} (data exchange, after every rank arrived): no data yet from \
                 ranks {recv:?}, sends to ranks {send:?} not done",
                self.name
            )
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(_alive) = alive("MpiComm::drop") {
            for h in [&mut self.coll, &mut self.p2p, &mut self.ack] {
                // SAFETY: the communicator is live and owned by this Inner; operations still
                // pending on it (abandoned after a failure) complete or stay pending normally,
                // as MPI_Comm_free allows.
                unsafe { ffi::MPI_Comm_free(&mut h.0) };
            }
        }
    }
}

/// A call's place in its order; finishing (or dropping) it lets the next call run. Dropped
/// without having run on its stream, the call was skipped on this rank (its stream had failed),
/// so peers will wait for it in vain: the communicator breaks. (Dropped while being enqueued, it
/// was rejected, and its number is given back: see [`enqueue_ticketed`].)
struct Ticket {
    inner: Arc<Inner>,
    key: TurnKey,
    n: u64,
    op: &'static str,
    ran: bool,
}

impl Ticket {
    fn new(inner: &Arc<Inner>, key: TurnKey, n: u64, op: &'static str) -> Ticket {
        Ticket {
            inner: inner.clone(),
            key,
            n,
            op,
            ran: false,
        }
    }

    fn wait(&mut self, what: &str) -> Result<()> {
        self.ran = true;
        self.inner.wait_turn(self.key, self.n, what)
    }
}

thread_local! {
    /// (inside `enqueue_ticketed` on this thread, a ticket was dropped unrun meanwhile)
    static ENQUEUING: Cell<(bool, bool)> = const { Cell::new((false, false)) };
}

/// Runs `enqueue` (which takes call `n`'s ticket); if the call was rejected before reaching its
/// stream (the ticket came back unrun on this thread), gives its number back.
fn enqueue_ticketed(
    inner: &Inner,
    key: TurnKey,
    n: u64,
    op: &str,
    enqueue: impl FnOnce() -> Result<Work>,
) -> Result<Work> {
    ENQUEUING.with(|c| c.set((true, false)));
    let out = enqueue();
    let (_, rejected) = ENQUEUING.with(|c| c.replace((false, false)));
    if rejected {
        inner.rollback(key, n, op);
    }
    out
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.ran {
            if ENQUEUING.with(|c| c.get().0) {
                // Rejected by the enqueue path on the caller's thread: `enqueue_ticketed` gives
                // the number back; nothing else happened.
                ENQUEUING.with(|c| c.set((true, true)));
                return;
            }
            self.inner.break_with(format!(
                "{} #{} was skipped on this rank (an earlier operation on its stream failed)",
                self.op, self.n
            ));
        }
        self.inner.finish_turn(self.key, self.n);
    }
}

/// Splits `0..n` into `size` contiguous blocks, as evenly as possible.
fn blocks(n: usize, size: usize) -> Vec<(usize, usize)> {
    (0..size)
        .map(|r| (n * r / size, n * (r + 1) / size))
        .collect()
}

/// A rank's handle on an MPI communicator (see the module docs). Made by [`MpiWorld::comm`],
/// [`launch`] or [`Communicator::split`].
pub struct MpiComm {
    inner: Arc<Inner>,
}

impl MpiComm {
    /// The world communicator of `world` (same as [`MpiWorld::comm`]).
    pub fn world(world: &MpiWorld, config: CommConfig) -> Result<MpiComm> {
        world.comm(config)
    }

    /// The communicator's settings.
    pub fn config(&self) -> &CommConfig {
        &self.inner.config
    }

    /// The largest point-to-point tag this communicator accepts (`MPI_TAG_UB`).
    pub fn max_tag(&self) -> u32 {
        self.inner.tag_ub
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

    /// Enqueues collective `sig` with the next sequence number: on the worker, waits for its
    /// turn, agrees on the signature, then runs `body(inner, reads, writes, seq)`.
    fn collective(
        &self,
        stream: &Stream,
        op: &'static str,
        reads: &[(&str, &Tensor)],
        writes: &[(&str, &Tensor)],
        sig: Signature,
        body: impl FnOnce(&Inner, &[Raw], &[Raw], u64) -> Result<()> + Send + 'static,
    ) -> Result<Work> {
        self.inner.check_usable(op, stream.label())?;
        let seq = self.inner.seq.fetch_add(1, Ordering::SeqCst);
        let mut ticket = Ticket::new(&self.inner, TurnKey::Coll, seq, op);
        let label = stream.label().to_string();
        enqueue_ticketed(&self.inner, TurnKey::Coll, seq, op, || {
            host::enqueue(stream, op, reads, writes, move |r, w| {
                let inner = ticket.inner.clone();
                let _alive = alive(op)?;
                inner.check_usable(op, &label)?;
                ticket.wait(&format!("{op} #{seq} on {}", inner.name))?;
                inner.agree(seq, &sig)?;
                let out = body(&inner, r, w, seq);
                drop(ticket);
                out
            })
        })
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
        host::count(OP, "input", input, counts.iter().sum())?;
        host::count(OP, "output", output, counts[self.rank()])?;
        let mut sig = Self::sig(CollOp::ReduceScatter, Some(dtype), counts.clone());
        sig.redop = Some(op);
        self.collective(
            stream,
            OP,
            &[("input", input)],
            &[("output", &*output)],
            sig,
            move |inner, r, w, seq| {
                let (p, me, es) = (inner.size, inner.rank, dtype.size_in_bytes());
                let offs = host::offsets(&counts);
                let total: usize = counts.iter().sum();
                let cm = counts[me];
                let st = inner.scratch(total * es);
                let rs = inner.scratch(p.saturating_sub(1) * cm * es);
                let slot = |q: usize| if q < me { q } else { q - 1 };
                // SAFETY: the input is locked for reading; the staging buffer is this call's.
                unsafe { reduce::copy(r[0], 0, st.raw(dtype, total), 0, total) };
                let mut xfers = Vec::new();
                for q in (0..p).filter(|&q| q != me) {
                    xfers.push(inner.data(q, st.at(offs[q] * es), counts[q] * es, false));
                    xfers.push(inner.data(q, rs.at(slot(q) * cm * es), cm * es, true));
                }
                inner.exchange(&xfers, &inner.data_what(OP, seq))?;
                let srcs: Vec<(Raw, usize)> = (0..p)
                    .map(|q| {
                        if q == me {
                            (r[0], offs[me])
                        } else {
                            (rs.raw(dtype, (p - 1) * cm), slot(q) * cm)
                        }
                    })
                    .collect();
                // SAFETY: every source range holds `cm` received or local elements, no longer
                // touched by MPI (the exchange completed); the output is locked for writing.
                unsafe { reduce::reduce_to(op, &srcs, &[(w[0], 0)], cm) };
                Ok(())
            },
        )
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
        host::count(OP, "input", input, counts[self.rank()])?;
        host::count(OP, "output", output, counts.iter().sum())?;
        let sig = Self::sig(CollOp::AllGather, Some(dtype), counts.clone());
        self.collective(
            stream,
            OP,
            &[("input", input)],
            &[("output", &*output)],
            sig,
            move |inner, r, w, seq| {
                let (p, me, es) = (inner.size, inner.rank, dtype.size_in_bytes());
                let offs = host::offsets(&counts);
                let st = inner.scratch(counts[me] * es);
                // SAFETY: the input is locked for reading, the output for writing; the staging
                // buffer is this call's.
                unsafe {
                    reduce::copy(r[0], 0, st.raw(dtype, counts[me]), 0, counts[me]);
                    reduce::copy(r[0], 0, w[0], offs[me], counts[me]);
                }
                // Blocks of other ranks land straight in the output.
                let mut xfers = Vec::new();
                for q in (0..p).filter(|&q| q != me) {
                    xfers.push(inner.data(q, st.ptr, counts[me] * es, false));
                    let dst = w[0].at(offs[q]);
                    xfers.push(inner.data(q, dst, counts[q] * es, true).into_tensor());
                }
                inner.exchange(&xfers, &inner.data_what(OP, seq))?;
                Ok(())
            },
        )
    }

    /// Validates a point-to-point call's peer and tag.
    fn check_peer(&self, op: &'static str, peer: usize, tag: u32, what: &str) -> Result<()> {
        check_rank(op, peer, self.size())?;
        if peer == self.rank() {
            return Err(Error::invalid(
                op,
                "peer",
                format!("a rank cannot {what} itself"),
            ));
        }
        if tag > self.inner.tag_ub {
            return Err(Error::invalid(
                op,
                "tag",
                format!(
                    "{tag} is above this MPI library's MPI_TAG_UB ({})",
                    self.inner.tag_ub
                ),
            ));
        }
        Ok(())
    }
}

/// A point-to-point header: (dtype, count) of the send, or of the matching receive in an ack
/// (word 0 also says whether they matched).
fn header(ok: bool, dtype: DType, count: usize, n: u64) -> [u64; HDR_WORDS] {
    [
        MAGIC << 32 | (ok as u64) << 16 | dtype_code(Some(dtype)),
        count as u64,
        n,
        0,
    ]
}

/// (matched flag, dtype, count) of a header, if it is one.
fn parse_header(h: &[u64]) -> Option<(bool, DType, usize)> {
    if h[0] >> 32 != MAGIC {
        return None;
    }
    let dtype = dtype_of(h[0] & 0xff)??;
    Some(((h[0] >> 16) & 1 == 1, dtype, h[1] as usize))
}

/// The error both sides of a mismatched send/recv report (as the thread backend words it).
#[allow(clippy::too_many_arguments)]
fn p2p_mismatch(
    comm: &str,
    n: u64,
    src: usize,
    dst: usize,
    tag: u32,
    sent: (DType, usize),
    want: (DType, usize),
) -> Error {
    let s = MpiComm::sig(CollOp::Send, Some(sent.0), vec![sent.1]);
    let w = MpiComm::sig(CollOp::Send, Some(want.0), vec![want.1]);
    Error::CollectiveMismatch {
        comm: comm.to_string(),
        seq: n,
        call_a: format!("send to rank {dst} (tag {tag}): {s}"),
        ranks_a: Box::new([src]),
        call_b: format!("recv from rank {src} (tag {tag}): {w}"),
        ranks_b: Box::new([dst]),
    }
}

impl Communicator for MpiComm {
    fn rank(&self) -> usize {
        self.inner.rank
    }

    fn size(&self) -> usize {
        self.inner.size
    }

    fn name(&self) -> &str {
        &self.inner.name
    }

    fn all_reduce(&self, stream: &Stream, buf: &mut Tensor, op: ReduceOp) -> Result<Work> {
        const OP: &str = "all_reduce";
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let mut sig = Self::sig(CollOp::AllReduce, Some(dtype), vec![n]);
        sig.redop = Some(op);
        self.collective(
            stream,
            OP,
            &[],
            &[("buf", &*buf)],
            sig,
            move |inner, _, w, seq| {
                let (p, me, es) = (inner.size, inner.rank, dtype.size_in_bytes());
                if p == 1 {
                    return Ok(());
                }
                let b = blocks(n, p);
                let (lo, hi) = b[me];
                let cm = hi - lo;
                let st = inner.scratch(n * es);
                let rs = inner.scratch((p - 1) * cm * es);
                let raw = st.raw(dtype, n);
                let slot = |q: usize| if q < me { q } else { q - 1 };
                // Stage the blocks that go to other ranks (this rank's own block is reduced from
                // the buffer itself).
                // SAFETY: the buffer is locked for writing by this call; the staging is this call's.
                unsafe {
                    reduce::copy(w[0], 0, raw, 0, lo);
                    reduce::copy(w[0], hi, raw, hi, n - hi);
                }
                // Reduce-scatter: block q of every rank's buffer goes to rank q.
                let mut xfers = Vec::new();
                for q in (0..p).filter(|&q| q != me) {
                    let (ql, qh) = b[q];
                    xfers.push(inner.data(q, st.at(ql * es), (qh - ql) * es, false));
                    xfers.push(inner.data(q, rs.at(slot(q) * cm * es), cm * es, true));
                }
                inner.exchange(&xfers, &inner.data_what(OP, seq))?;
                let srcs: Vec<(Raw, usize)> = (0..p)
                    .map(|q| {
                        if q == me {
                            (w[0], lo)
                        } else {
                            (rs.raw(dtype, (p - 1) * cm), slot(q) * cm)
                        }
                    })
                    .collect();
                // SAFETY: the exchange completed, so MPI no longer touches the staging; block
                // [lo, hi) of the buffer is both a source and a destination, which reduce_to
                // allows for one caller; the buffer is locked for writing.
                unsafe { reduce::reduce_to(op, &srcs, &[(raw, lo), (w[0], lo)], cm) };
                // All-gather of the reduced blocks, straight into the buffer (its old contents
                // were staged for the reduce-scatter).
                let mut xfers = Vec::new();
                for q in (0..p).filter(|&q| q != me) {
                    let (ql, qh) = b[q];
                    xfers.push(inner.data(q, st.at(lo * es), cm * es, false));
                    let dst = w[0].at(ql);
                    xfers.push(inner.data(q, dst, (qh - ql) * es, true).into_tensor());
                }
                inner.exchange(&xfers, &inner.data_what(OP, seq))?;
                Ok(())
            },
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
        let mut sig = Self::sig(CollOp::Broadcast, Some(dtype), vec![n]);
        sig.root = Some(root);
        self.collective(
            stream,
            OP,
            &[],
            &[("buf", &*buf)],
            sig,
            move |inner, _, w, seq| {
                let (p, me, es) = (inner.size, inner.rank, dtype.size_in_bytes());
                if p == 1 {
                    return Ok(());
                }
                // Scatter from the root (each rank gets its block and the root's), then an
                // all-gather among everyone but the root: every rank receives the buffer once.
                let b = blocks(n, p);
                let st = inner.scratch(n * es);
                let raw = st.raw(dtype, n);
                let span = |q: usize| (st.at(b[q].0 * es), (b[q].1 - b[q].0) * es);
                let mut xfers = Vec::new();
                if me == root {
                    // SAFETY: the buffer is locked; the staging is this call's.
                    unsafe { reduce::copy(w[0], 0, raw, 0, n) };
                    for q in (0..p).filter(|&q| q != root) {
                        for blk in [q, root] {
                            let (ptr, bytes) = span(blk);
                            xfers.push(inner.data(q, ptr, bytes, false));
                        }
                    }
                } else {
                    for blk in [me, root] {
                        let (ptr, bytes) = span(blk);
                        xfers.push(inner.data(root, ptr, bytes, true));
                    }
                }
                inner.exchange(&xfers, &inner.data_what(OP, seq))?;
                if me == root {
                    return Ok(());
                }
                let mut xfers = Vec::new();
                for q in (0..p).filter(|&q| q != me && q != root) {
                    let (ptr, bytes) = span(me);
                    xfers.push(inner.data(q, ptr, bytes, false));
                    let (ptr, bytes) = span(q);
                    xfers.push(inner.data(q, ptr, bytes, true));
                }
                inner.exchange(&xfers, &inner.data_what(OP, seq))?;
                // SAFETY: the exchanges completed; the buffer is locked for writing.
                unsafe { reduce::copy(raw, 0, w[0], 0, n) };
                Ok(())
            },
        )
    }

    fn send(&self, stream: &Stream, buf: &Tensor, peer: usize, tag: u32) -> Result<Work> {
        const OP: &str = "send";
        self.check_peer(OP, peer, tag, "send to")?;
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        self.inner.check_usable(OP, stream.label())?;
        let count = buf.numel();
        let key = TurnKey::P2p {
            peer,
            tag,
            send: true,
        };
        let n = self.inner.next_p2p(key);
        let mut ticket = Ticket::new(&self.inner, key, n, OP);
        let label = stream.label().to_string();
        let inner = self.inner.clone();
        enqueue_ticketed(&inner, key, n, OP, || {
            host::enqueue(stream, OP, &[("buf", buf)], &[], move |r, _| {
                let inner = ticket.inner.clone();
                let _alive = alive(OP)?;
                inner.check_usable(OP, &label)?;
                let what = format!("send #{n} to rank {peer} (tag {tag}) on {}", inner.name);
                ticket.wait(&what)?;
                let bytes = count * dtype.size_in_bytes();
                let mut hdr = inner.scratch(HDR_WORDS * 8);
                hdr.words(HDR_WORDS)
                    .copy_from_slice(&header(true, dtype, count, n));
                let mut ack = inner.scratch(HDR_WORDS * 8);
                let data = inner.scratch(bytes);
                // SAFETY: the tensor is locked for reading; the staging is this call's.
                unsafe { reduce::copy(r[0], 0, data.raw(dtype, count), 0, count) };
                let tag_c = tag as c_int;
                let x = |comm: Handle, ptr: *mut u8, bytes: usize, recv: bool| Xfer {
                    comm,
                    peer,
                    tag: tag_c,
                    ptr,
                    bytes,
                    recv,
                    user: false,
                };
                let wait_what = |_: &[usize], _: &[usize]| what.clone();
                inner.exchange(
                    &[
                        x(inner.p2p, hdr.ptr, HDR_WORDS * 8, false),
                        x(inner.ack, ack.ptr, HDR_WORDS * 8, true),
                    ],
                    &wait_what,
                )?;
                let reply = parse_header(ack.words(HDR_WORDS));
                match reply {
                    Some((true, _, _)) => {}
                    Some((false, d, c)) => {
                        return Err(p2p_mismatch(
                            &inner.name,
                            n,
                            inner.rank,
                            peer,
                            tag,
                            (dtype, count),
                            (d, c),
                        ))
                    }
                    None => {
                        let e = Error::invalid(OP, "acknowledgement", "not a ferrotron message");
                        inner.break_with(e.to_string());
                        return Err(e);
                    }
                }
                inner.exchange(&[x(inner.p2p, data.ptr, bytes, false)], &wait_what)?;
                drop(ticket);
                Ok(())
            })
        })
    }

    fn recv(&self, stream: &Stream, buf: &mut Tensor, peer: usize, tag: u32) -> Result<Work> {
        const OP: &str = "recv";
        self.check_peer(OP, peer, tag, "receive from")?;
        let dtype = host::comm_dtype(OP, "buf", buf)?;
        self.inner.check_usable(OP, stream.label())?;
        let count = buf.numel();
        let key = TurnKey::P2p {
            peer,
            tag,
            send: false,
        };
        let n = self.inner.next_p2p(key);
        let mut ticket = Ticket::new(&self.inner, key, n, OP);
        let label = stream.label().to_string();
        let inner = self.inner.clone();
        enqueue_ticketed(&inner, key, n, OP, || {
            host::enqueue(stream, OP, &[], &[("buf", &*buf)], move |_, w| {
                let inner = ticket.inner.clone();
                let _alive = alive(OP)?;
                inner.check_usable(OP, &label)?;
                let what = format!("recv #{n} from rank {peer} (tag {tag}) on {}", inner.name);
                ticket.wait(&what)?;
                let bytes = count * dtype.size_in_bytes();
                let mut hdr = inner.scratch(HDR_WORDS * 8);
                let tag_c = tag as c_int;
                let x = |comm: Handle, ptr: *mut u8, bytes: usize, recv: bool| Xfer {
                    comm,
                    peer,
                    tag: tag_c,
                    ptr,
                    bytes,
                    recv,
                    user: false,
                };
                let wait_what = |_: &[usize], _: &[usize]| what.clone();
                inner.exchange(&[x(inner.p2p, hdr.ptr, HDR_WORDS * 8, true)], &wait_what)?;
                let Some((_, sent_dtype, sent_count)) = parse_header(hdr.words(HDR_WORDS)) else {
                    let e = Error::invalid(OP, "header", "not a ferrotron message");
                    inner.break_with(e.to_string());
                    return Err(e);
                };
                let ok = (sent_dtype, sent_count) == (dtype, count);
                let mut ack = inner.scratch(HDR_WORDS * 8);
                ack.words(HDR_WORDS)
                    .copy_from_slice(&header(ok, dtype, count, n));
                if !ok {
                    inner.exchange(&[x(inner.ack, ack.ptr, HDR_WORDS * 8, false)], &wait_what)?;
                    return Err(p2p_mismatch(
                        &inner.name,
                        n,
                        peer,
                        inner.rank,
                        tag,
                        (sent_dtype, sent_count),
                        (dtype, count),
                    ));
                }
                // The data lands straight in the tensor.
                inner.exchange(
                    &[
                        x(inner.p2p, w[0].ptr, bytes, true).into_tensor(),
                        x(inner.ack, ack.ptr, HDR_WORDS * 8, false),
                    ],
                    &wait_what,
                )?;
                drop(ticket);
                Ok(())
            })
        })
    }

    fn barrier(&self, stream: &Stream) -> Result<Work> {
        // The signature exchange waits for every rank: it is the barrier.
        let sig = Self::sig(CollOp::Barrier, None, vec![]);
        self.collective(stream, "barrier", &[], &[], sig, |_, _, _, _| Ok(()))
    }

    fn split(&self, color: Option<u32>, key: usize) -> Result<Option<Box<dyn Communicator>>> {
        const OP: &str = "split";
        if color.is_some_and(|c| c > i32::MAX as u32) {
            return Err(Error::invalid(
                OP,
                "color",
                "must be at most i32::MAX for MPI",
            ));
        }
        let key = c_int::try_from(key)
            .map_err(|_| Error::invalid(OP, "key", "must be at most i32::MAX for MPI"))?;
        let inner = &self.inner;
        let _alive = alive(OP)?;
        inner.check_usable(OP, &inner.name)?;
        let seq = inner.seq.fetch_add(1, Ordering::SeqCst);
        let mut ticket = Ticket::new(inner, TurnKey::Coll, seq, OP);
        ticket.wait(&format!("{OP} #{seq} on {}", inner.name))?;
        inner.agree(seq, &Self::sig(CollOp::Split, None, vec![]))?;
        let mut new = comm_null();
        // SAFETY: every rank reached this point (the signature exchange completed), so the
        // blocking split returns; `new` receives the handle; MPI_UNDEFINED opts out.
        check("MPI_Comm_split", unsafe {
            ffi::MPI_Comm_split(
                inner.coll.0,
                color.map_or(ffi::RSMPI_UNDEFINED, |c| c as c_int),
                key,
                &mut new,
            )
        })?;
        drop(ticket);
        if new == comm_null() {
            return Ok(None);
        }
        let name = format!("{}/split({})", inner.name, color.unwrap_or(0));
        let base = Handle(new);
        let dups = idup(base, 2, inner.config.timeout, &format!("creating {name}"))?;
        Ok(Some(Box::new(MpiComm {
            inner: Arc::new(Inner::new(
                name,
                [base, dups[0], dups[1]],
                inner.config.clone(),
            )?),
        })))
    }
}
