//! The NCCL communicator (feature `nccl`): GPU ranks as processes, bootstrapped from the
//! torchrun-style environment.
//!
//! ```no_run
//! # fn main() -> ferrotron::Result<()> {
//! use ferrotron::comm::{nccl::{NcclComm, NcclEnv}, CommConfig, Communicator, ReduceOp};
//! use ferrotron::{DType, Device, Tensor};
//! ferrotron::comm::nccl::probe()?; // typed error when libnccl cannot be loaded
//! let env = NcclEnv::from_env()?; // RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
//! let device = Device::cuda(env.local_rank)?;
//! let comm = NcclComm::init(&device, &env, CommConfig::default())?;
//! let stream = device.new_stream()?;
//! let mut grads = Tensor::zeros(&device, [1024], DType::F32)?;
//! comm.all_reduce(&stream, &mut grads, ReduceOp::Sum)?.wait()?;
//! # Ok(()) }
//! ```
//!
//! Loading: libnccl is opened at run time (nothing links it at build time), so a build with this
//! feature runs anywhere; [`probe`] says whether NCCL is usable here, as a typed error, never a
//! panic. cudarc looks for `libnccl.so` and `libnccl.so.{13,12,...}` but not `libnccl.so.2`, the
//! only name the PyPI wheel ships: a `libnccl.so -> libnccl.so.2` symlink on `LD_LIBRARY_PATH`
//! fixes that. NCCL >= 2.10 is required (`ncclAvg`, `ncclBfloat16`); `split` needs 2.18.
//!
//! Every call validates its operands like the other backends (dtype, counts, ranks, devices,
//! aliasing, checked-mode access record), enqueues the NCCL call on the caller's CUDA stream and
//! returns a [`Work`] whose event is recorded on that stream right after it. An error NCCL
//! reports while enqueueing is returned at once; the `Work` carries no deferred error of its own.
//!
//! Differences from the in-process backend, stated plainly:
//! - **Determinism.** Reductions are NCCL's, not ferrotron's rank-order sums: the order in which
//!   ranks' values are combined depends on the algorithm (ring, tree, NVLS, ...), protocol and
//!   channel count NCCL picks for the topology and message size. For the same inputs, NCCL
//!   version, topology, world size and environment (`NCCL_ALGO`, `NCCL_PROTO`, channel counts)
//!   repeated runs give the same bits in practice, but NCCL documents no such guarantee, and the
//!   results generally differ bitwise from the threads backend (and between world sizes or
//!   machines). bf16 is reduced hop by hop with a bf16 result at every hop, not accumulated in
//!   f32 across ranks. Max/Min NaN handling is NCCL's.
//! - **No cross-rank checking.** Signatures are not compared across ranks (that would cost a
//!   host round trip per call): ranks that call different collectives, or the same one with
//!   different counts, hang or corrupt data as with plain NCCL. Debug such programs on the
//!   threads backend, which checks every call; bound host waits with [`Work::wait_timeout`] and
//!   end a stuck communicator with [`NcclComm::abort`].
//! - **Tags.** NCCL point-to-point has no tags: sends and receives between two ranks match in
//!   the order they are issued, whatever their `tag`.
//! - **Uneven collectives.** `all_gather_v` is a group of one `ncclBroadcast` per rank with a
//!   non-zero count (rank `r`'s block is broadcast from `r` into its place in every output);
//!   `reduce_scatter_v` is a group of one `ncclReduce` per rank (block `r` of every input
//!   reduced to rank `r`). Equal counts use `ncclAllGather` / `ncclReduceScatter` directly.
//! - **Split** (`ncclCommSplit`) and **initialisation** block the host; initialisation gives up
//!   after [`CommConfig::timeout`], split waits as long as NCCL does.

mod bootstrap;
mod ffi;

pub use bootstrap::NcclEnv;

use super::{check_rank, host, CommConfig, Communicator, ReduceOp, Work};
use crate::backend::cuda::driver_error;
use crate::device::Device;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::ops::launch::prepare;
use crate::stream::{Stream, StreamImpl};
use crate::tensor::Tensor;
use cudarc::driver::{CudaContext, CudaStream, DevicePtr};
use cudarc::nccl::sys;
use ffi::RawComm;
use std::ffi::c_void;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Checks that NCCL can be used on this machine: libnccl loads and is at least version 2.10.
/// Otherwise [`Error::Cuda`] says why and how to fix it (e.g. the `libnccl.so` symlink for the
/// PyPI wheel). Never panics; the answer is computed once per process.
pub fn probe() -> Result<()> {
    ffi::probe_version().map(|_| ())
}

/// The loaded NCCL's version as `(major, minor, patch)`, or [`probe`]'s error.
pub fn version() -> Result<(u32, u32, u32)> {
    ffi::probe_version().map(ffi::decode_version)
}

fn nccl_dtype(op: &'static str, what: &str, t: &Tensor) -> Result<sys::ncclDataType_t> {
    Ok(match host::comm_dtype(op, what, t)? {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        d => {
            return Err(Error::UnsupportedDType {
                op,
                what: what.into(),
                dtype: d,
            })
        }
    })
}

fn nccl_redop(op: ReduceOp) -> sys::ncclRedOp_t {
    match op {
        ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
        ReduceOp::Avg => sys::ncclRedOp_t::ncclAvg,
        ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
        ReduceOp::Min => sys::ncclRedOp_t::ncclMin,
    }
}

/// One rank's block of an uneven collective: `count` elements at element `offset`, rooted at
/// rank `root`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    root: usize,
    offset: usize,
    count: usize,
}

/// How an all-gather / reduce-scatter with per-rank `counts` is issued.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Plan {
    /// Every rank has `count` elements: one ncclAllGather / ncclReduceScatter (none for 0).
    Even(usize),
    /// One grouped broadcast / reduce per rank with a non-zero count.
    PerRoot(Vec<Block>),
}

fn plan(counts: &[usize]) -> Plan {
    if counts.iter().all(|&c| c == counts[0]) {
        return Plan::Even(counts[0]);
    }
    let offsets = host::offsets(counts);
    Plan::PerRoot(
        counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(r, &c)| Block {
                root: r,
                offset: offsets[r],
                count: c,
            })
            .collect(),
    )
}

/// `ncclCommSplit`'s color and key for `split(color, key)`.
fn split_args(color: Option<u32>, key: usize) -> Result<(i32, i32)> {
    let c = match color {
        None => ffi::SPLIT_NOCOLOR,
        Some(c) => i32::try_from(c).map_err(|_| {
            Error::invalid(
                "split",
                "color",
                format!("{c} exceeds NCCL's limit {}", i32::MAX),
            )
        })?,
    };
    let k = i32::try_from(key).map_err(|_| {
        Error::invalid(
            "split",
            "key",
            format!("{key} exceeds NCCL's limit {}", i32::MAX),
        )
    })?;
    Ok((c, k))
}

fn int(v: usize) -> std::ffi::c_int {
    // Ranks and world sizes were checked against i32::MAX when the communicator was made.
    v as std::ffi::c_int
}

/// The CUDA context of `device`, or [`Error::Unsupported`] for a CPU device.
fn cuda_context(op: &'static str, device: &Device) -> Result<Arc<CudaContext>> {
    let cu = device.cuda_state().ok_or_else(|| Error::Unsupported {
        op,
        backend: format!("{} (NCCL needs a CUDA device)", device.kind()),
    })?;
    Ok(cu.new_stream()?.context().clone())
}

/// A rank's handle on an NCCL communicator, bound to one CUDA device.
pub struct NcclComm {
    /// Destroyed first on drop (fields drop in order), while the context is still held.
    comm: Mutex<RawComm>,
    rank: usize,
    size: usize,
    name: String,
    device: Device,
    ctx: Arc<CudaContext>,
    version: i32,
}

impl std::fmt::Debug for NcclComm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NcclComm({}, rank {} of {}, {})",
            self.name,
            self.rank,
            self.size,
            self.device.label()
        )
    }
}

impl NcclComm {
    /// The world communicator of a torchrun-style launch on `device`: [`probe`], then
    /// [`NcclEnv::from_env`], then [`NcclComm::init`]. Usually `device` is
    /// `Device::cuda(env.local_rank)` (NCCL refuses two ranks on one GPU).
    pub fn from_env(device: &Device, config: CommConfig) -> Result<NcclComm> {
        probe()?;
        cuda_context("NcclComm::from_env", device)?;
        let env = NcclEnv::from_env()?;
        NcclComm::init(device, &env, config)
    }

    /// The world communicator of the launch `env` describes, on `device` (a CUDA device): rank 0
    /// creates NCCL's unique id and serves it on `MASTER_ADDR:MASTER_PORT`, every rank fetches
    /// it (waiting at most `config.timeout` for everyone to arrive), then all call
    /// `ncclCommInitRank` (again at most `config.timeout`). Collective over all ranks.
    pub fn init(device: &Device, env: &NcclEnv, config: CommConfig) -> Result<NcclComm> {
        let version = ffi::probe_version()?;
        let ctx = cuda_context("NcclComm::init", device)?;
        ctx.bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        let mine = if env.rank == 0 {
            let mut id = sys::ncclUniqueId { internal: [0; 128] };
            // SAFETY: ncclGetUniqueId writes one ncclUniqueId through a valid pointer.
            ffi::call("ncclGetUniqueId", None, || unsafe {
                sys::ncclGetUniqueId(&mut id)
            })?;
            Some(id.internal.map(|c| c as u8))
        } else {
            None
        };
        let bytes = bootstrap::exchange_unique_id(env, mine, config.timeout)?;
        let id = sys::ncclUniqueId {
            internal: bytes.map(|b| b as std::ffi::c_char),
        };
        let raw = init_rank(&ctx, id, env.rank, env.world_size, config.timeout)?;
        Ok(NcclComm {
            comm: Mutex::new(raw),
            rank: env.rank,
            size: env.world_size,
            name: "nccl:world".to_string(),
            device: device.clone(),
            ctx,
            version,
        })
    }

    /// The device the communicator runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Ends the communicator at once with `ncclCommAbort`, without waiting for its enqueued
    /// work (which may never finish, e.g. after a peer died or ranks called different
    /// collectives). Buffers used by that work must not be trusted afterwards.
    pub fn abort(self) -> Result<()> {
        let c = self.comm.lock().unwrap_or_else(|p| p.into_inner()).take();
        if c.is_null() {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        // SAFETY: `c` is this communicator's live handle, taken out so that drop will not
        // destroy it again; aborting is allowed with work still enqueued.
        ffi::call("ncclCommAbort", None, || unsafe { sys::ncclCommAbort(c) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RawComm> {
        self.comm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates the stream and the operands, then runs `body` (the NCCL calls) with the
    /// communicator locked and this device's context current, and records the call's event.
    fn enqueue(
        &self,
        stream: &Stream,
        op: &'static str,
        reads: &[(&str, &Tensor)],
        writes: &[(&str, &Tensor)],
        body: impl FnOnce(&Arc<CudaStream>, sys::ncclComm_t, sys::cudaStream_t) -> Result<()>,
    ) -> Result<Work> {
        let s = match stream.imp() {
            StreamImpl::Cuda(s) => s,
            StreamImpl::Cpu(_) => {
                return Err(Error::Unsupported {
                    op,
                    backend: format!(
                        "{} (the NCCL communicator needs a CUDA stream)",
                        stream.device().kind()
                    ),
                })
            }
        };
        stream.same_device(op, &format!("communicator {}", self.name), &self.device)?;
        prepare(stream, op, reads, writes)?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        let comm = self.lock();
        if comm.0.is_null() {
            return Err(Error::Cuda {
                call: format!("{op} on {}", self.name),
                message: "the communicator was aborted".into(),
            });
        }
        body(s, comm.0, s.cu_stream() as sys::cudaStream_t)?;
        drop(comm);
        Ok(Work::new(
            stream.record_event()?,
            stream.clone(),
            Arc::new(Mutex::new(None)),
        ))
    }

    fn call_name(&self, call: &str) -> String {
        format!(
            "{call} on {} (rank {} of {})",
            self.name, self.rank, self.size
        )
    }

    fn all_gather_impl(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
    ) -> Result<Work> {
        const OP: &str = "all_gather";
        let dt = nccl_dtype(OP, "input", input)?;
        host::same_dtype(OP, "output", output, input.dtype())?;
        host::count(OP, "input", input, counts[self.rank])?;
        host::count(OP, "output", output, counts.iter().sum())?;
        let esz = input.dtype().size_in_bytes() as u64;
        let output = &*output;
        self.enqueue(
            stream,
            OP,
            &[("input", input)],
            &[("output", output)],
            |s, comm, cs| {
                let src = dptr(s, input);
                let dst = dptr(s, output);
                match plan(counts) {
                    Plan::Even(0) => Ok(()),
                    Plan::Even(n) => {
                        ffi::call(&self.call_name("ncclAllGather"), Some(comm), || {
                            // SAFETY: `src` holds n elements and `dst` size * n of type `dt` on
                            // this device (counts validated above); both stay alive until the
                            // stream passes this call (CudaMem's drop orders the free after it).
                            unsafe { sys::ncclAllGather(vp(src), vpm(dst), n, dt, comm, cs) }
                        })
                    }
                    Plan::PerRoot(blocks) => ffi::group(|| {
                        for b in blocks {
                            let at = dst + b.offset as u64 * esz;
                            ffi::call(&self.call_name("ncclBroadcast"), Some(comm), || {
                                // SAFETY: on the root `src` holds b.count elements (its own
                                // count); every `at` addresses b.count elements inside this
                                // rank's output (offsets from the validated counts); buffers
                                // live until the stream passes the call.
                                unsafe {
                                    sys::ncclBroadcast(
                                        vp(src),
                                        vpm(at),
                                        b.count,
                                        dt,
                                        int(b.root),
                                        comm,
                                        cs,
                                    )
                                }
                            })?;
                        }
                        Ok(())
                    }),
                }
            },
        )
    }

    fn reduce_scatter_impl(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<Work> {
        const OP: &str = "reduce_scatter";
        let dt = nccl_dtype(OP, "input", input)?;
        host::same_dtype(OP, "output", output, input.dtype())?;
        host::count(OP, "input", input, counts.iter().sum())?;
        host::count(OP, "output", output, counts[self.rank])?;
        let esz = input.dtype().size_in_bytes() as u64;
        let redop = nccl_redop(op);
        let output = &*output;
        self.enqueue(
            stream,
            OP,
            &[("input", input)],
            &[("output", output)],
            |s, comm, cs| {
                let src = dptr(s, input);
                let dst = dptr(s, output);
                match plan(counts) {
                    Plan::Even(0) => Ok(()),
                    Plan::Even(n) => {
                        ffi::call(&self.call_name("ncclReduceScatter"), Some(comm), || {
                            // SAFETY: `src` holds size * n and `dst` n elements of `dt` on this
                            // device (validated above), alive until the stream passes the call.
                            unsafe {
                                sys::ncclReduceScatter(vp(src), vpm(dst), n, dt, redop, comm, cs)
                            }
                        })
                    }
                    Plan::PerRoot(blocks) => ffi::group(|| {
                        for b in blocks {
                            let from = src + b.offset as u64 * esz;
                            ffi::call(&self.call_name("ncclReduce"), Some(comm), || {
                                // SAFETY: `from` addresses b.count elements inside the input
                                // (offsets from the validated counts); `dst` holds this rank's
                                // count, which is b.count where this rank is the root (NCCL
                                // writes the receive buffer on the root only); buffers live
                                // until the stream passes the call.
                                unsafe {
                                    sys::ncclReduce(
                                        vp(from),
                                        vpm(dst),
                                        b.count,
                                        dt,
                                        redop,
                                        int(b.root),
                                        comm,
                                        cs,
                                    )
                                }
                            })?;
                        }
                        Ok(())
                    }),
                }
            },
        )
    }
}

fn dptr(s: &Arc<CudaStream>, t: &Tensor) -> u64 {
    t.buffer().cuda().ptr(s)
}

fn vp(p: u64) -> *const c_void {
    p as usize as *const c_void
}

fn vpm(p: u64) -> *mut c_void {
    p as usize as *mut c_void
}

fn check_counts(op: &'static str, counts: &[usize], size: usize) -> Result<()> {
    if counts.len() != size {
        return Err(Error::invalid(
            op,
            "counts",
            format!("{} counts for {size} ranks", counts.len()),
        ));
    }
    Ok(())
}

/// `ncclCommInitRank` on a helper thread (with `ctx` current there), so that the wait for the
/// other ranks ends after `timeout`. A communicator that completes after the timeout is
/// destroyed by the helper.
fn init_rank(
    ctx: &Arc<CudaContext>,
    id: sys::ncclUniqueId,
    rank: usize,
    size: usize,
    timeout: Duration,
) -> Result<RawComm> {
    let (tx, rx) = mpsc::channel::<Result<RawComm>>();
    let ctx2 = ctx.clone();
    std::thread::Builder::new()
        .name(format!("nccl-init-{rank}"))
        .spawn(move || {
            let out = (|| {
                ctx2.bind_to_thread()
                    .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
                let mut raw = RawComm(std::ptr::null_mut());
                let name = format!("ncclCommInitRank (rank {rank} of {size})");
                // SAFETY: `raw.0` is a valid out-pointer; `id` is the unique id every rank got
                // from rank 0; rank < size <= i32::MAX (checked by NcclEnv); the context of the
                // communicator's device is current on this thread.
                ffi::call(&name, None, || unsafe {
                    sys::ncclCommInitRank(&mut raw.0, int(size), id, int(rank))
                })?;
                Ok(raw)
            })();
            // If the caller gave up, the communicator comes back here and is destroyed on drop.
            let _ = tx.send(out);
        })
        .map_err(|e| Error::Cuda {
            call: "ncclCommInitRank".into(),
            message: format!("cannot start the init thread: {e}"),
        })?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout {
            what: format!(
                "ncclCommInitRank (rank {rank} of {size}): not every rank joined the NCCL \
                 communicator"
            ),
            seconds: timeout.as_secs_f64(),
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(Error::Cuda {
            call: "ncclCommInitRank".into(),
            message: "the init thread ended without a result".into(),
        }),
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn all_reduce(&self, stream: &Stream, buf: &mut Tensor, op: ReduceOp) -> Result<Work> {
        const OP: &str = "all_reduce";
        let dt = nccl_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let redop = nccl_redop(op);
        let buf = &*buf;
        self.enqueue(stream, OP, &[], &[("buf", buf)], |s, comm, cs| {
            if n == 0 {
                return Ok(());
            }
            let p = dptr(s, buf);
            ffi::call(&self.call_name("ncclAllReduce"), Some(comm), || {
                // SAFETY: in place on `buf`'s n elements of `dt` on this device, alive until
                // the stream passes the call.
                unsafe { sys::ncclAllReduce(vp(p), vpm(p), n, dt, redop, comm, cs) }
            })
        })
    }

    fn all_gather_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
    ) -> Result<Work> {
        check_counts("all_gather_v", counts, self.size)?;
        self.all_gather_impl(stream, input, output, counts)
    }

    fn reduce_scatter_v(
        &self,
        stream: &Stream,
        input: &Tensor,
        output: &mut Tensor,
        counts: &[usize],
        op: ReduceOp,
    ) -> Result<Work> {
        check_counts("reduce_scatter_v", counts, self.size)?;
        self.reduce_scatter_impl(stream, input, output, counts, op)
    }

    fn broadcast(&self, stream: &Stream, buf: &mut Tensor, root: usize) -> Result<Work> {
        const OP: &str = "broadcast";
        check_rank(OP, root, self.size)?;
        let dt = nccl_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let buf = &*buf;
        self.enqueue(stream, OP, &[], &[("buf", buf)], |s, comm, cs| {
            if n == 0 {
                return Ok(());
            }
            let p = dptr(s, buf);
            ffi::call(&self.call_name("ncclBroadcast"), Some(comm), || {
                // SAFETY: in place on `buf`'s n elements of `dt` on this device, alive until
                // the stream passes the call; root < size (checked above).
                unsafe { sys::ncclBroadcast(vp(p), vpm(p), n, dt, int(root), comm, cs) }
            })
        })
    }

    fn send(&self, stream: &Stream, buf: &Tensor, peer: usize, _tag: u32) -> Result<Work> {
        const OP: &str = "send";
        check_rank(OP, peer, self.size)?;
        if peer == self.rank {
            return Err(Error::invalid(OP, "peer", "a rank cannot send to itself"));
        }
        let dt = nccl_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        self.enqueue(stream, OP, &[("buf", buf)], &[], |s, comm, cs| {
            let p = dptr(s, buf);
            ffi::call(&self.call_name("ncclSend"), Some(comm), || {
                // SAFETY: `buf` holds n elements of `dt` on this device, alive until the stream
                // passes the call; peer < size and != this rank (checked above).
                unsafe { sys::ncclSend(vp(p), n, dt, int(peer), comm, cs) }
            })
        })
    }

    fn recv(&self, stream: &Stream, buf: &mut Tensor, peer: usize, _tag: u32) -> Result<Work> {
        const OP: &str = "recv";
        check_rank(OP, peer, self.size)?;
        if peer == self.rank {
            return Err(Error::invalid(
                OP,
                "peer",
                "a rank cannot receive from itself",
            ));
        }
        let dt = nccl_dtype(OP, "buf", buf)?;
        let n = buf.numel();
        let buf = &*buf;
        self.enqueue(stream, OP, &[], &[("buf", buf)], |s, comm, cs| {
            let p = dptr(s, buf);
            ffi::call(&self.call_name("ncclRecv"), Some(comm), || {
                // SAFETY: `buf` holds n elements of `dt` on this device, alive until the stream
                // passes the call; peer < size and != this rank (checked above).
                unsafe { sys::ncclRecv(vpm(p), n, dt, int(peer), comm, cs) }
            })
        })
    }

    fn barrier(&self, stream: &Stream) -> Result<Work> {
        self.enqueue(stream, "barrier", &[], &[], |s, comm, cs| {
            // One f32 on the caller's stream, freed on that stream after the all-reduce.
            let scratch = s
                .alloc_zeros::<f32>(1)
                .map_err(|e| driver_error("cuMemAllocAsync", e))?;
            let (p, _sync) = scratch.device_ptr(s);
            ffi::call(
                &self.call_name("ncclAllReduce (barrier)"),
                Some(comm),
                || {
                    // SAFETY: in place on one f32 allocated on this stream; its free is enqueued on
                    // the same stream when `scratch` drops, so after the all-reduce.
                    unsafe {
                        sys::ncclAllReduce(
                            vp(p),
                            vpm(p),
                            1,
                            sys::ncclDataType_t::ncclFloat32,
                            sys::ncclRedOp_t::ncclSum,
                            comm,
                            cs,
                        )
                    }
                },
            )
        })
    }

    fn split(&self, color: Option<u32>, key: usize) -> Result<Option<Box<dyn Communicator>>> {
        if self.version < ffi::SPLIT_VERSION {
            let (a, b, c) = ffi::decode_version(self.version);
            return Err(Error::Unsupported {
                op: "split",
                backend: format!("nccl {a}.{b}.{c} (ncclCommSplit needs NCCL >= 2.18)"),
            });
        }
        let (c, k) = split_args(color, key)?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_error("cuCtxSetCurrent", e))?;
        let mut child = RawComm(std::ptr::null_mut());
        {
            let comm = self.lock();
            if comm.0.is_null() {
                return Err(Error::Cuda {
                    call: self.call_name("ncclCommSplit"),
                    message: "the communicator was aborted".into(),
                });
            }
            let parent = comm.0;
            ffi::call(&self.call_name("ncclCommSplit"), Some(parent), || {
                // SAFETY: `parent` is live (locked, not aborted); `child.0` is a valid
                // out-pointer; a NULL config inherits the parent's.
                unsafe { sys::ncclCommSplit(parent, c, k, &mut child.0, std::ptr::null_mut()) }
            })?;
        }
        if child.0.is_null() {
            return Ok(None);
        }
        let (mut rank, mut size) = (0, 0);
        let h = child.0;
        // SAFETY: `h` is the live communicator ncclCommSplit just made; each call writes one
        // int through a valid pointer.
        ffi::call("ncclCommUserRank", Some(h), || unsafe {
            sys::ncclCommUserRank(h, &mut rank)
        })?;
        // SAFETY: as above.
        ffi::call("ncclCommCount", Some(h), || unsafe {
            sys::ncclCommCount(h, &mut size)
        })?;
        Ok(Some(Box::new(NcclComm {
            comm: Mutex::new(child),
            rank: rank.max(0) as usize,
            size: size.max(0) as usize,
            name: format!("{}/split({c})", self.name),
            device: self.device.clone(),
            ctx: self.ctx.clone(),
            version: self.version,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::CommConfig;

    #[test]
    fn probe_is_a_typed_error_without_libnccl() {
        // SAFETY: only tries to dlopen libnccl.
        let present = unsafe { sys::is_culib_present() };
        match probe() {
            Ok(()) => assert!(present, "probe succeeded without a loadable libnccl"),
            Err(Error::Cuda { call, message }) if !present => {
                assert_eq!(call, "loading libnccl");
                assert!(message.contains("libnccl"), "{message}");
                assert!(
                    message.contains("ln -s libnccl.so.2 libnccl.so"),
                    "{message}"
                );
                assert!(message.contains("LD_LIBRARY_PATH"), "{message}");
            }
            // libnccl present but too old or missing a symbol: still typed.
            Err(e) => assert!(present && matches!(e, Error::Cuda { .. }), "{e:?}"),
        }
        // Cached: the same answer again.
        assert_eq!(probe(), probe());
        assert_eq!(version().is_ok(), probe().is_ok());
    }

    #[test]
    fn construction_without_nccl_or_a_gpu_is_a_typed_error() {
        let config = CommConfig {
            timeout: Duration::from_millis(200),
            ..CommConfig::default()
        };
        let e = NcclComm::from_env(&Device::cpu(), config.clone()).unwrap_err();
        match probe() {
            Err(p) => assert_eq!(e, p),
            Ok(()) => assert!(matches!(e, Error::Unsupported { .. }), "{e:?}"),
        }
        let env = NcclEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 29500,
        };
        let e = NcclComm::init(&Device::cpu(), &env, config).unwrap_err();
        match probe() {
            Err(p) => assert_eq!(e, p),
            Ok(()) => assert!(matches!(e, Error::Unsupported { .. }), "{e:?}"),
        }
    }

    #[test]
    fn dtypes_and_reductions_map_to_nccl() {
        let dev = Device::cpu();
        let f = Tensor::zeros(&dev, [2], DType::F32).unwrap();
        let b = Tensor::zeros(&dev, [2], DType::BF16).unwrap();
        let h = Tensor::zeros(&dev, [2], DType::F16).unwrap();
        assert_eq!(
            nccl_dtype("t", "x", &f).unwrap(),
            sys::ncclDataType_t::ncclFloat32
        );
        assert_eq!(
            nccl_dtype("t", "x", &b).unwrap(),
            sys::ncclDataType_t::ncclBfloat16
        );
        assert!(matches!(
            nccl_dtype("t", "x", &h),
            Err(Error::UnsupportedDType { .. })
        ));
        assert_eq!(nccl_redop(ReduceOp::Sum), sys::ncclRedOp_t::ncclSum);
        assert_eq!(nccl_redop(ReduceOp::Avg), sys::ncclRedOp_t::ncclAvg);
        assert_eq!(nccl_redop(ReduceOp::Max), sys::ncclRedOp_t::ncclMax);
        assert_eq!(nccl_redop(ReduceOp::Min), sys::ncclRedOp_t::ncclMin);
    }

    #[test]
    fn uneven_collectives_are_one_call_per_nonempty_block() {
        assert_eq!(plan(&[3, 3, 3]), Plan::Even(3));
        assert_eq!(plan(&[0, 0]), Plan::Even(0));
        assert_eq!(
            plan(&[2, 0, 5, 1]),
            Plan::PerRoot(vec![
                Block {
                    root: 0,
                    offset: 0,
                    count: 2
                },
                Block {
                    root: 2,
                    offset: 2,
                    count: 5
                },
                Block {
                    root: 3,
                    offset: 7,
                    count: 1
                },
            ])
        );
    }

    #[test]
    fn split_arguments_fit_nccl() {
        assert_eq!(split_args(None, 3).unwrap(), (ffi::SPLIT_NOCOLOR, 3));
        assert_eq!(split_args(Some(7), 0).unwrap(), (7, 0));
        assert!(matches!(
            split_args(Some(u32::MAX), 0),
            Err(Error::InvalidArgument { .. })
        ));
        assert!(matches!(
            split_args(Some(1), usize::MAX),
            Err(Error::InvalidArgument { .. })
        ));
    }

    /// One-rank world on GPU 0 (NCCL refuses two ranks on one GPU, so one process cannot test
    /// more). Skips without a GPU (fails with `FERROTRON_REQUIRE_GPU=1`) or without libnccl
    /// (fails with `FERROTRON_REQUIRE_NCCL=1`).
    #[test]
    fn one_rank_world_on_a_gpu() {
        let need = |v: &str| std::env::var(v).as_deref() == Ok("1");
        if let Some(why) = crate::backend::cuda::unavailable_reason() {
            assert!(!need("FERROTRON_REQUIRE_GPU"), "no GPU: {why}");
            eprintln!("SKIP one_rank_world_on_a_gpu: no GPU ({why})");
            return;
        }
        if let Err(e) = probe() {
            assert!(!need("FERROTRON_REQUIRE_NCCL"), "no NCCL: {e}");
            eprintln!("SKIP one_rank_world_on_a_gpu: {e}");
            return;
        }
        let dev = Device::cuda(0).unwrap();
        let env = NcclEnv {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master_addr: "127.0.0.1".into(),
            master_port: 1,
        };
        let config = CommConfig {
            timeout: Duration::from_secs(60),
            ..CommConfig::default()
        };
        let comm = NcclComm::init(&dev, &env, config).unwrap();
        assert_eq!((comm.rank(), comm.size()), (0, 1));
        let s = dev.new_stream().unwrap();
        let t = Duration::from_secs(30);
        let mut x = Tensor::from_slice(&dev, &[1.0f32, -2.0, 3.5], [3]).unwrap();
        comm.all_reduce(&s, &mut x, ReduceOp::Sum)
            .unwrap()
            .wait_timeout(t)
            .unwrap();
        assert_eq!(x.to_vec::<f32>(&s).unwrap(), vec![1.0, -2.0, 3.5]);
        let mut y = Tensor::zeros(&dev, [3], DType::F32).unwrap();
        comm.all_gather(&s, &x, &mut y)
            .unwrap()
            .wait_timeout(t)
            .unwrap();
        assert_eq!(y.to_vec::<f32>(&s).unwrap(), vec![1.0, -2.0, 3.5]);
        let mut z = Tensor::zeros(&dev, [3], DType::F32).unwrap();
        comm.reduce_scatter(&s, &y, &mut z, ReduceOp::Avg)
            .unwrap()
            .wait_timeout(t)
            .unwrap();
        assert_eq!(z.to_vec::<f32>(&s).unwrap(), vec![1.0, -2.0, 3.5]);
        let mut w = Tensor::zeros(&dev, [3], DType::F32).unwrap();
        comm.all_gather_v(&s, &z, &mut w, &[3])
            .unwrap()
            .wait_timeout(t)
            .unwrap();
        assert_eq!(w.to_vec::<f32>(&s).unwrap(), vec![1.0, -2.0, 3.5]);
        comm.broadcast(&s, &mut w, 0)
            .unwrap()
            .wait_timeout(t)
            .unwrap();
        comm.barrier(&s).unwrap().wait_timeout(t).unwrap();
        let cpu = Device::cpu();
        let cs = cpu.new_stream().unwrap();
        let mut c = Tensor::zeros(&cpu, [3], DType::F32).unwrap();
        assert!(matches!(
            comm.all_reduce(&cs, &mut c, ReduceOp::Sum),
            Err(Error::Unsupported { .. })
        ));
        assert!(matches!(
            comm.all_reduce(&s, &mut c, ReduceOp::Sum),
            Err(Error::DeviceMismatch { .. })
        ));
        match comm.split(Some(0), 0) {
            Ok(Some(sub)) => assert_eq!((sub.rank(), sub.size()), (0, 1)),
            Err(Error::Unsupported { .. }) => {} // NCCL < 2.18
            other => panic!(
                "split: {:?}",
                other.map(|c| c.map(|c| c.name().to_string()))
            ),
        }
        comm.abort().unwrap();
    }
}
