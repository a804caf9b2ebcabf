//! NCCL through cudarc's `sys` layer, without panics.
//!
//! cudarc loads `libnccl` lazily on the first call and panics when the library or a symbol is
//! missing. Everything here goes through [`call`], which turns such a panic into
//! [`Error::Cuda`], and [`probe`] checks for the library (and its version) before anything
//! else touches it.

use crate::error::{Error, Result};
use cudarc::nccl::sys;
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::OnceLock;

/// The oldest NCCL this backend runs on: 2.10 introduced `ncclAvg` and `ncclBfloat16`.
pub(crate) const MIN_VERSION: i32 = 2_10_00;
/// `ncclGetLastError` appeared in NCCL 2.13.
const LAST_ERROR_VERSION: i32 = 2_13_00;
/// `ncclCommSplit` appeared in NCCL 2.18.
pub(crate) const SPLIT_VERSION: i32 = 2_18_00;
/// `NCCL_SPLIT_NOCOLOR` from `nccl.h`: the rank takes no part in the new communicator.
pub(crate) const SPLIT_NOCOLOR: i32 = -1;

/// How to make the PyPI NCCL wheel loadable (cudarc looks for `libnccl.so`, `libnccl.so.13`,
/// `.12`, ... but not `libnccl.so.2`, the only name the wheel ships).
pub(crate) const SYMLINK_HINT: &str =
    "cudarc looks for libnccl.so (or libnccl.so.13/.12/.11/...), not libnccl.so.2, which is all \
     the PyPI wheel nvidia-nccl-cu13 ships: create a symlink `ln -s libnccl.so.2 libnccl.so` in \
     the directory holding libnccl.so.2 (e.g. site-packages/nvidia/nccl/lib) and put that \
     directory on LD_LIBRARY_PATH";

/// Runs a `sys` call, mapping a failure status and a missing library or symbol (cudarc panics)
/// to [`Error::Cuda`] naming `name`. `comm` adds NCCL's last error message for that
/// communicator.
pub(crate) fn call(
    name: &str,
    comm: Option<sys::ncclComm_t>,
    f: impl FnOnce() -> sys::ncclResult_t,
) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(sys::ncclResult_t::ncclSuccess) => Ok(()),
        Ok(status) => Err(Error::Cuda {
            call: name.to_string(),
            message: describe(status, comm),
        }),
        Err(panic) => Err(Error::Cuda {
            call: name.to_string(),
            message: format!(
                "libnccl could not be used: {}",
                crate::error::panic_message(&*panic)
            ),
        }),
    }
}

/// NCCL's text for `status`, plus its last error message for `comm` where the library has it.
fn describe(status: sys::ncclResult_t, comm: Option<sys::ncclComm_t>) -> String {
    let text = catch_unwind(|| {
        // SAFETY: ncclGetErrorString returns a pointer to a static NUL-terminated string for
        // every status value (or NULL, checked below).
        let p = unsafe { sys::ncclGetErrorString(status) };
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: non-null, NUL-terminated and static (see above).
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    })
    .unwrap_or_default();
    let last = match (comm, cached_version()) {
        (Some(c), Some(v)) if v >= LAST_ERROR_VERSION => catch_unwind(|| {
            // SAFETY: `c` is a live communicator handle (or NULL, which NCCL accepts and answers
            // with the last error of the calling thread); the string is owned by NCCL and read
            // at once.
            let p = unsafe { sys::ncclGetLastError(c) };
            if p.is_null() {
                String::new()
            } else {
                // SAFETY: non-null and NUL-terminated, per the NCCL API.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        })
        .unwrap_or_default(),
        _ => String::new(),
    };
    let mut m = format!("{status:?}");
    if !text.is_empty() {
        m.push_str(&format!(" ({text})"));
    }
    if !last.is_empty() {
        m.push_str(&format!(": {last}"));
    }
    m
}

/// `major.minor.patch` of an NCCL version code (`major * 10000 + minor * 100 + patch` since
/// 2.9; `major * 1000 + minor * 100 + patch` before).
pub(crate) fn decode_version(code: i32) -> (u32, u32, u32) {
    let code = code.max(0) as u32;
    if code >= 10_000 {
        (code / 10_000, (code % 10_000) / 100, code % 100)
    } else {
        (code / 1000, (code % 1000) / 100, code % 100)
    }
}

static PROBED: OnceLock<Result<i32>> = OnceLock::new();

fn cached_version() -> Option<i32> {
    PROBED.get().and_then(|r| r.as_ref().ok().copied())
}

/// Loads libnccl once and returns its version code, or why it cannot be used.
pub(crate) fn probe_version() -> Result<i32> {
    PROBED
        .get_or_init(|| {
            // SAFETY: only tries to dlopen libnccl by its usual names (and closes it again);
            // no NCCL function runs.
            if !unsafe { sys::is_culib_present() } {
                return Err(Error::Cuda {
                    call: "loading libnccl".to_string(),
                    message: format!(
                        "no libnccl could be loaded on this machine (none on the loader path, \
                         or it failed to load; the NCCL communicator needs NVIDIA's NCCL >= \
                         2.10); {SYMLINK_HINT}"
                    ),
                });
            }
            let mut v: std::ffi::c_int = 0;
            // SAFETY: ncclGetVersion writes one int through a valid pointer.
            call("ncclGetVersion", None, || unsafe {
                sys::ncclGetVersion(&mut v)
            })?;
            if v < MIN_VERSION {
                let (a, b, c) = decode_version(v);
                return Err(Error::Cuda {
                    call: "ncclGetVersion".to_string(),
                    message: format!(
                        "libnccl {a}.{b}.{c} is too old: the NCCL communicator needs NCCL >= \
                         2.10 (ncclAvg, ncclBfloat16)"
                    ),
                });
            }
            Ok(v)
        })
        .clone()
}

/// An NCCL communicator handle, destroyed on drop.
pub(crate) struct RawComm(pub(crate) sys::ncclComm_t);

// SAFETY: an ncclComm_t may be used from any thread, one thread at a time; `NcclComm` keeps the
// handle behind a mutex, so no two threads enqueue on it at once.
unsafe impl Send for RawComm {}

impl RawComm {
    /// Takes the handle out (leaving NULL, which drop ignores).
    pub(crate) fn take(&mut self) -> sys::ncclComm_t {
        std::mem::replace(&mut self.0, std::ptr::null_mut())
    }
}

impl Drop for RawComm {
    fn drop(&mut self) {
        let c = self.take();
        if !c.is_null() {
            // SAFETY: `c` came from ncclCommInitRank/ncclCommSplit and is destroyed once (the
            // handle was taken out above); NCCL waits for the work enqueued on it to finish.
            let _ = call("ncclCommDestroy", None, || unsafe {
                sys::ncclCommDestroy(c)
            });
        }
    }
}

/// Runs `body` between ncclGroupStart and ncclGroupEnd (the end is called even when `body`
/// fails, which is what resets NCCL's group state).
pub(crate) fn group(body: impl FnOnce() -> Result<()>) -> Result<()> {
    // SAFETY: ncclGroupStart only bumps a thread-local depth counter.
    call("ncclGroupStart", None, || unsafe { sys::ncclGroupStart() })?;
    let out = body();
    // SAFETY: matches the ncclGroupStart above on this thread.
    let end = call("ncclGroupEnd", None, || unsafe { sys::ncclGroupEnd() });
    out.and(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decode() {
        assert_eq!(decode_version(22105), (2, 21, 5));
        assert_eq!(decode_version(21000), (2, 10, 0));
        assert_eq!(decode_version(2708), (2, 7, 8));
    }

    #[test]
    fn a_failed_call_names_the_call_and_never_panics() {
        let e = call("ncclTest", None, || panic!("Missing symbol ncclTest")).unwrap_err();
        match e {
            Error::Cuda { call, message } => {
                assert_eq!(call, "ncclTest");
                assert!(message.contains("Missing symbol ncclTest"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
