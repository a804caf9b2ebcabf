//! The crate's error type. Every variant names what was wrong, so a caller (or a person reading a
//! log from rank 7 of 64) can act on it without a debugger.

use crate::dtype::DType;

/// Result alias used throughout ferrotron.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in ferrotron, as a value.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// Two shapes that must agree do not.
    #[error("{op}: shape mismatch for {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch {
        /// The operation that checked the shapes.
        op: &'static str,
        /// Which operand (e.g. `"bias"`, `"a x b inner dimension"`).
        what: String,
        /// The shape the op needed.
        expected: Vec<usize>,
        /// The shape it was given.
        got: Vec<usize>,
    },
    /// An operand has the wrong number of dimensions.
    #[error("{op}: {what} must have rank {expected}, got shape {got:?}")]
    RankMismatch {
        /// The operation.
        op: &'static str,
        /// Which operand.
        what: String,
        /// The rank the op needed.
        expected: usize,
        /// The shape it was given.
        got: Vec<usize>,
    },
    /// A dimension that must be non-zero is zero.
    #[error("{op}: {what} has a zero dimension (shape {shape:?})")]
    ZeroDim {
        /// The operation.
        op: &'static str,
        /// Which operand.
        what: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// An operand has the wrong element type.
    #[error("{op}: {what} has dtype {got}, expected {expected}")]
    DTypeMismatch {
        /// The operation.
        op: &'static str,
        /// Which operand.
        what: String,
        /// The dtype the op needed.
        expected: DType,
        /// The dtype it was given.
        got: DType,
    },
    /// The op does not support this dtype (combination) at all.
    #[error("{op}: unsupported dtype {dtype} for {what}")]
    UnsupportedDType {
        /// The operation.
        op: &'static str,
        /// Which operand.
        what: String,
        /// The dtype.
        dtype: DType,
    },
    /// A dimension must split evenly over a parallel group and does not.
    #[error("{what} = {dim} is not divisible by {parts} ({why})")]
    NotDivisible {
        /// The dimension's name (e.g. `"hidden"`).
        what: String,
        /// Its size.
        dim: usize,
        /// The number of parts it must split into.
        parts: usize,
        /// Which parallel size asked for the split (e.g. `"tensor-parallel size"`).
        why: String,
    },
    /// A tensor's element count does not match the data or shape it was built from.
    #[error("{what}: {got} elements given for shape {shape:?} ({expected} expected)")]
    ElementCount {
        /// What was being built.
        what: String,
        /// The shape.
        shape: Vec<usize>,
        /// Elements the shape holds.
        expected: usize,
        /// Elements given.
        got: usize,
    },
    /// A class index (label) lies outside `[0, classes)`.
    #[error("{op}: index {index} at position {position} is out of range for {classes} classes")]
    IndexOutOfRange {
        /// The operation.
        op: &'static str,
        /// Where in the index tensor.
        position: usize,
        /// The bad index.
        index: i64,
        /// The number of classes.
        classes: usize,
    },
    /// An invalid scalar argument (e.g. a negative epsilon or a learning rate that is NaN).
    #[error("{op}: invalid argument {what}: {why}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// The argument.
        what: String,
        /// Why it is invalid.
        why: String,
    },
    /// A file could not be read or written (a trace, a plot).
    #[error("{op}: {path}: {message}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file.
        path: String,
        /// The operating system's error.
        message: String,
    },
    /// Operands live on different devices, or a tensor is used with a stream of another device.
    #[error("{op}: {what} lives on {got}, but the stream is on {expected}")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
        /// Which operand.
        what: String,
        /// The stream's device.
        expected: String,
        /// The operand's device.
        got: String,
    },
    /// The same buffer is passed as two operands where that is not allowed (e.g. input and output).
    #[error("{op}: {first} and {second} are the same buffer {buffer}")]
    Aliasing {
        /// The operation.
        op: &'static str,
        /// One operand.
        first: String,
        /// The other operand.
        second: String,
        /// The buffer's id.
        buffer: u64,
    },
    /// Checked mode: a stream touched a buffer whose last conflicting access (on another stream)
    /// is not ordered before it by an event, i.e. a data race that would silently corrupt results.
    #[error(
        "unsynchronized access: {access} of buffer {buffer} on stream {stream} is not ordered after \
         its {previous} on stream {other_stream} (op #{other_position} there); record an event on \
         stream {other_stream} after that op and wait on it from stream {stream}"
    )]
    UnsynchronizedAccess {
        /// The buffer (its id and, when known, its label).
        buffer: String,
        /// The stream making the new access.
        stream: String,
        /// `"read"` or `"write"`.
        access: &'static str,
        /// The stream of the earlier conflicting access.
        other_stream: String,
        /// `"write"` or `"read"`: the earlier access kind.
        previous: &'static str,
        /// Position of that access in its stream (1-based count of ops enqueued there).
        other_position: u64,
    },
    /// An op failed while it ran asynchronously on a stream; reported at the next host wait.
    #[error("stream {stream}: asynchronous failure in {op}: {message}")]
    AsyncFailure {
        /// The stream.
        stream: String,
        /// The op that failed.
        op: String,
        /// What went wrong.
        message: String,
    },
    /// A host wait ran past its deadline.
    #[error("timed out after {seconds:.1} s waiting for {what}")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long it waited.
        seconds: f64,
    },
    /// Ranks called different collectives (or the same one with different arguments) at the
    /// same position of a communicator's sequence. Every rank of the communicator gets this error.
    #[error(
        "collective mismatch on {comm} at call #{seq}: ranks {ranks_a:?} called {call_a}, but ranks \
         {ranks_b:?} called {call_b}"
    )]
    CollectiveMismatch {
        /// The communicator.
        comm: String,
        /// The call's sequence number on that communicator (0-based).
        seq: u64,
        /// One call, as its signature.
        call_a: String,
        /// The ranks that made it.
        ranks_a: Box<[usize]>,
        /// A different call.
        call_b: String,
        /// The ranks that made that one.
        ranks_b: Box<[usize]>,
    },
    /// Another rank failed (returned an error or panicked), so this rank stopped waiting for it.
    #[error("rank {rank} failed, so this rank gave up waiting in {waiting_in}: {reason}")]
    PeerFailed {
        /// The rank that failed.
        rank: usize,
        /// Why it failed.
        reason: String,
        /// What this rank was doing.
        waiting_in: String,
    },
    /// A rank of `launch` failed; the error it returned (or its panic message).
    #[error("rank {rank}: {error}")]
    RankFailed {
        /// The rank.
        rank: usize,
        /// Its error.
        error: Box<Error>,
    },
    /// Point-to-point operations wait on each other in a cycle that can never resolve.
    #[error("deadlock: {cycle}")]
    Deadlock {
        /// The cycle of waits, e.g. `rank 0 send->1 waits for rank 1, rank 1 send->0 waits for rank 0`.
        cycle: String,
    },
    /// A rank number outside a communicator.
    #[error("{op}: rank {rank} is out of range for a communicator of {size} ranks")]
    InvalidRank {
        /// The operation.
        op: &'static str,
        /// The rank given.
        rank: usize,
        /// The communicator size.
        size: usize,
    },
    /// No CUDA driver (`libcuda.so`) could be loaded on this machine.
    #[error("no CUDA driver: libcuda.so could not be loaded ({detail})")]
    NoCudaDriver {
        /// Details from the probe.
        detail: String,
    },
    /// The driver loaded but there is no device with this ordinal.
    #[error("no CUDA device {ordinal} (the driver reports {count})")]
    NoCudaDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },
    /// The crate was built without this kernel image (no nvcc at build time).
    #[error(
        "kernel image {name} is not embedded in this build (no such module, or it was built \
         without nvcc: run scripts/install-cuda-toolchain.sh and rebuild, or build with \
         FERROTRON_REQUIRE_KERNELS=1 to see why)"
    )]
    KernelImageMissing {
        /// The kernel module's name (e.g. `elementwise/bias_gelu`).
        name: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {call}: {message}")]
    Cuda {
        /// The call (or ferrotron step) that failed.
        call: String,
        /// The driver's message.
        message: String,
    },
    /// No emulated device with this ordinal can exist (ordinals 0..64).
    #[error("emulated device {ordinal} is out of range (0..64)")]
    NoEmuDevice {
        /// The ordinal asked for.
        ordinal: usize,
    },
    /// The PTX emulator reported a fault while loading or running a kernel: an out-of-bounds,
    /// misaligned or uninitialised access, a shared-memory race, a deadlock, an unsupported
    /// instruction... (the inner error names the kernel, thread, instruction and address).
    #[error("emulator: {kernel}: {error}")]
    Emu {
        /// The kernel (or module) concerned.
        kernel: String,
        /// What the emulator found.
        error: ptx_emu::EmuError,
    },
    /// A stream waited on an event recorded on a stream that had failed: the failure travels
    /// along the event (the waiting work would otherwise run on garbage).
    #[error("upstream stream {stream} failed before the event this work waited on: {error}")]
    UpstreamFailed {
        /// The stream the event was recorded on.
        stream: String,
        /// Its failure.
        error: Box<Error>,
    },
    /// NVRTC (the run-time CUDA C compiler, `libnvrtc.so.13`) could not be found or loaded, so
    /// generated kernels cannot be compiled ([`crate::fused`]).
    #[error(
        "NVRTC is unavailable: {reason} (install it with scripts/install-cuda-toolchain.sh, which \
         puts libnvrtc.so.13 in its venv under nvidia/cu13/lib, or set FERROTRON_NVRTC to a \
         libnvrtc.so.13 or its directory)"
    )]
    NvrtcUnavailable {
        /// What was tried, and why each attempt failed.
        reason: String,
    },
    /// A run-time compiler (NVRTC) rejected a generated kernel: its log.
    #[error("{compiler} could not compile {kernel}:\n{log}")]
    KernelCompile {
        /// The kernel's name.
        kernel: String,
        /// The compiler (and version).
        compiler: String,
        /// The compiler's log (or the cache's I/O error).
        log: String,
    },
    /// The op is not available on this backend (yet).
    #[error("{op} is not implemented on the {backend} backend")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The backend.
        backend: String,
    },
}

/// The message of a caught panic (`&str` or `String` payloads; anything else is "panic").
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

impl Error {
    /// Convenience for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, what: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            what: what.into(),
            why: why.into(),
        }
    }
}
