//! Streams and events, the same API on every backend.
//!
//! Every device operation is enqueued on a [`Stream`] the caller names and runs asynchronously, in
//! order, with respect to the other work on that stream. Order across streams is expressed with
//! an [`Event`]: record it on the producer, wait on it from the consumer (`Stream::wait`) or from
//! the host (`Event::synchronize`). On the CPU backend a stream is a real queue with its own
//! worker thread; on CUDA it is a `CUstream`.
//!
//! In checked mode ([`crate::DeviceConfig::checked`]) every op's buffer accesses are checked
//! against the happens-before order those events establish (module `checked`).

pub(crate) mod checked;
pub(crate) mod cpu_queue;

use crate::backend::cuda;
use crate::device::Device;
use crate::error::{Error, Result};
use cpu_queue::{CpuQueue, Task};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// An in-order asynchronous queue of device work. Cloning gives another handle to the same stream.
#[derive(Clone)]
pub struct Stream {
    inner: Arc<StreamInner>,
}

struct StreamInner {
    id: u64,
    /// Shared with the tasks that name the stream in an error (cloned without allocating).
    label: Arc<str>,
    device: Device,
    imp: StreamImpl,
    /// The f32 scratch buffer ops on a GPU stream reuse ([`Stream::scratch_f32`]).
    workspace: Mutex<Option<crate::tensor::Tensor>>,
}

pub(crate) enum StreamImpl {
    Cpu(CpuQueue),
    Cuda(Arc<cudarc::driver::CudaStream>),
}

impl Drop for StreamInner {
    fn drop(&mut self) {
        if self.device.is_checked() {
            checked::unregister_stream(self.id);
        }
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stream({})", self.inner.label)
    }
}

impl Stream {
    pub(crate) fn create(device: &Device, name: Option<&str>) -> Result<Stream> {
        let id = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        let label = match name {
            Some(n) => format!("{n}@{}", device.label()),
            None => format!("s{id}@{}", device.label()),
        };
        let imp = match device.cuda_state() {
            None => StreamImpl::Cpu(CpuQueue::new(&label)?),
            Some(cu) => StreamImpl::Cuda(cu.new_stream()?),
        };
        if device.is_checked() {
            checked::register_stream(id, &label);
        }
        Ok(Stream {
            inner: Arc::new(StreamInner {
                id,
                label: label.into(),
                device: device.clone(),
                imp,
                workspace: Mutex::new(None),
            }),
        })
    }

    /// An f32 scratch tensor of at least `elems` elements (shape `[capacity]`) for one op's
    /// intermediate results on this stream (e.g. the per-chunk partial sums of a fused backward).
    ///
    /// On a GPU it is the stream's workspace, grown when too small and otherwise reused: ops on
    /// one stream run in order, so an op's scratch is never overwritten while it still reads it,
    /// and a backward pass costs no allocation (no `cuMemAlloc`, no synchronization). An op
    /// needing several scratch regions asks once for their total. Elsewhere (emulated devices,
    /// the CPU) every call gets a fresh poisoned tensor, so the emulator's initialisation check
    /// still catches a kernel reading scratch it never wrote.
    pub(crate) fn scratch_f32(&self, elems: usize) -> Result<crate::tensor::Tensor> {
        use crate::tensor::Tensor;
        let elems = elems.max(1);
        let StreamImpl::Cuda(_) = &self.inner.imp else {
            return Tensor::poisoned(&self.inner.device, [elems], crate::DType::F32);
        };
        let mut ws = self
            .inner
            .workspace
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match ws.as_ref() {
            Some(t) if t.numel() >= elems => Ok(t.share()),
            _ => {
                // Grow geometrically: a few sizes settle after the first steps.
                let cap = elems.max(ws.as_ref().map_or(0, |t| 2 * t.numel()));
                let t = Tensor::zeros(&self.inner.device, [cap], crate::DType::F32)?;
                *ws = Some(t.share());
                Ok(t)
            }
        }
    }

    /// The device this stream runs on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// A process-unique id.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The stream's label as used in error messages (`name@device`).
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    pub(crate) fn imp(&self) -> &StreamImpl {
        &self.inner.imp
    }

    /// Records `event` at the current end of this stream: the event completes when all work
    /// enqueued so far has run. Re-recording an event moves it.
    pub fn record(&self, event: &Event) -> Result<()> {
        self.same_device("Stream::record", "event", event.device())?;
        let clock = self
            .inner
            .device
            .is_checked()
            .then(|| checked::snapshot(self.inner.id));
        match (&self.inner.imp, &event.inner.imp) {
            (StreamImpl::Cpu(q), EventImpl::Cpu(ev)) => {
                let generation = ev.begin_record();
                let ev2 = event.inner.clone();
                let probe = q.error_probe();
                let label = self.inner.label.clone();
                q.push(Task {
                    op: "event_record",
                    run: Box::new(move || {
                        if let EventImpl::Cpu(e) = &ev2.imp {
                            // A record on a failed stream still completes (no waiter hangs) but
                            // carries the failure, so the streams and hosts that wait on it fail
                            // too instead of running on garbage.
                            let failure = probe().map(|err| (label.to_string(), err));
                            e.complete(generation, failure);
                        }
                        Ok(())
                    }),
                });
            }
            (StreamImpl::Cuda(s), EventImpl::Cuda(e)) => e
                .record(s)
                .map_err(|e| cuda::driver_error("cuEventRecord", e))?,
            _ => unreachable!("device kinds checked above"),
        }
        *event.inner.clock.lock().unwrap_or_else(|p| p.into_inner()) = clock;
        Ok(())
    }

    /// Creates an event and records it on this stream.
    pub fn record_event(&self) -> Result<Event> {
        let e = Event::new(&self.inner.device)?;
        self.record(&e)?;
        Ok(e)
    }

    /// Makes all work enqueued on this stream from now on wait until `event` (as last recorded
    /// before this call) has completed. Waiting on a never-recorded event is a no-op, as in CUDA.
    /// The host does not block.
    pub fn wait(&self, event: &Event) -> Result<()> {
        self.same_device("Stream::wait", "event", event.device())?;
        match (&self.inner.imp, &event.inner.imp) {
            (StreamImpl::Cpu(q), EventImpl::Cpu(ev)) => {
                let target = ev.recorded();
                if target > 0 {
                    let ev2 = event.inner.clone();
                    q.push(Task {
                        op: "event_wait",
                        run: Box::new(move || {
                            if let EventImpl::Cpu(e) = &ev2.imp {
                                e.wait_for(target, None);
                                if let Some((stream, err)) = e.failure_of(target) {
                                    return Err(match err {
                                        // Already wrapped upstream: keep the original source.
                                        up @ Error::UpstreamFailed { .. } => up,
                                        err => Error::UpstreamFailed {
                                            stream,
                                            error: Box::new(err),
                                        },
                                    });
                                }
                            }
                            Ok(())
                        }),
                    });
                }
            }
            (StreamImpl::Cuda(s), EventImpl::Cuda(e)) => s
                .wait(e)
                .map_err(|e| cuda::driver_error("cuStreamWaitEvent", e))?,
            _ => unreachable!("device kinds checked above"),
        }
        if self.inner.device.is_checked() {
            if let Some(c) = event
                .inner
                .clock
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
            {
                checked::stream_waits(self.inner.id, c);
            }
        }
        Ok(())
    }

    /// Blocks the host until all work enqueued so far on this stream has run; returns the first
    /// asynchronous failure of the stream, if any.
    pub fn synchronize(&self) -> Result<()> {
        self.sync_inner(None)
    }

    /// Like [`Stream::synchronize`], failing with [`Error::Timeout`] after `timeout`.
    pub fn synchronize_timeout(&self, timeout: Duration) -> Result<()> {
        self.sync_inner(Some(timeout))
    }

    fn sync_inner(&self, timeout: Option<Duration>) -> Result<()> {
        let clock = self
            .inner
            .device
            .is_checked()
            .then(|| checked::snapshot(self.inner.id));
        match &self.inner.imp {
            StreamImpl::Cpu(q) => q.synchronize(timeout)?,
            StreamImpl::Cuda(s) => {
                // A CUDA stream sync has no timeout of its own: poll with an event when asked.
                match timeout {
                    None => s
                        .synchronize()
                        .map_err(|e| cuda::driver_error("cuStreamSynchronize", e))?,
                    Some(t) => {
                        let ev = s
                            .record_event(None)
                            .map_err(|e| cuda::driver_error("cuEventRecord", e))?;
                        let deadline = Instant::now() + t;
                        while !ev
                            .try_is_complete()
                            .map_err(|e| cuda::driver_error("cuEventQuery", e))?
                        {
                            if Instant::now() >= deadline {
                                return Err(Error::Timeout {
                                    what: format!("stream {}", self.inner.label),
                                    seconds: t.as_secs_f64(),
                                });
                            }
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                }
            }
        }
        if let Some(c) = clock {
            checked::host_waits(&c);
        }
        Ok(())
    }

    /// The stream's first asynchronous failure so far, if any (never blocks). On the CPU backend
    /// a failed stream skips the work enqueued after the failure (events still complete).
    pub fn error(&self) -> Option<Error> {
        match &self.inner.imp {
            StreamImpl::Cpu(q) => q.error(),
            StreamImpl::Cuda(_) => None,
        }
    }

    /// Whether all work enqueued so far has finished (never blocks).
    pub fn is_idle(&self) -> Result<bool> {
        match &self.inner.imp {
            StreamImpl::Cpu(q) => Ok(q.is_idle()),
            StreamImpl::Cuda(s) => {
                let ev = s
                    .record_event(None)
                    .map_err(|e| cuda::driver_error("cuEventRecord", e))?;
                ev.try_is_complete()
                    .map_err(|e| cuda::driver_error("cuEventQuery", e))
            }
        }
    }

    /// Enqueues a host function: `f` runs on the stream in order with its other work (like
    /// `cuLaunchHostFunc`). CPU backend only for now: on CUDA it returns [`Error::Unsupported`].
    pub fn host_fn(&self, f: impl FnOnce() + Send + 'static) -> Result<()> {
        match &self.inner.imp {
            StreamImpl::Cpu(q) => {
                q.push(Task {
                    op: "host_fn",
                    run: Box::new(move || {
                        f();
                        Ok(())
                    }),
                });
                Ok(())
            }
            StreamImpl::Cuda(_) => Err(Error::Unsupported {
                op: "Stream::host_fn",
                backend: "cuda".into(),
            }),
        }
    }

    /// Enqueues a host closure on a CPU stream. The op layer calls this after validating and
    /// checking every access.
    pub(crate) fn push_host(
        &self,
        op: &'static str,
        run: impl FnOnce() -> Result<()> + Send + 'static,
    ) {
        match &self.inner.imp {
            StreamImpl::Cpu(q) => {
                q.push(Task {
                    op,
                    run: Box::new(run),
                });
            }
            StreamImpl::Cuda(_) => unreachable!("push_host on a CUDA stream"),
        }
    }

    pub(crate) fn same_device(&self, op: &'static str, what: &str, other: &Device) -> Result<()> {
        if self.inner.device.compatible(other) {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                op,
                what: what.to_string(),
                expected: self.inner.device.label().to_string(),
                got: other.label().to_string(),
            })
        }
    }
}

/// A marker in a stream's work. Record it on one stream; wait on it from another stream or the
/// host. Cloning gives another handle to the same event.
#[derive(Clone)]
pub struct Event {
    inner: Arc<EventInner>,
}

struct EventInner {
    device: Device,
    imp: EventImpl,
    /// Checked mode: the vector clock of the last record.
    clock: Mutex<Option<checked::Clock>>,
}

enum EventImpl {
    Cpu(CpuEvent),
    Cuda(cudarc::driver::CudaEvent),
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Event({})", self.inner.device.label())
    }
}

impl Event {
    /// A new, never-recorded event on `device`.
    pub fn new(device: &Device) -> Result<Event> {
        let imp = match device.cuda_state() {
            None => EventImpl::Cpu(CpuEvent::default()),
            Some(cu) => EventImpl::Cuda(cu.new_event()?),
        };
        Ok(Event {
            inner: Arc::new(EventInner {
                device: device.clone(),
                imp,
                clock: Mutex::new(None),
            }),
        })
    }

    /// The device the event belongs to.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// Blocks the host until the event's last record has completed (immediately if never
    /// recorded).
    pub fn synchronize(&self) -> Result<()> {
        self.sync_inner(None)
    }

    /// Like [`Event::synchronize`] but fails with [`Error::Timeout`] after `timeout`.
    pub fn synchronize_timeout(&self, timeout: Duration) -> Result<()> {
        self.sync_inner(Some(timeout))
    }

    fn sync_inner(&self, timeout: Option<Duration>) -> Result<()> {
        let clock = self
            .inner
            .clock
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match &self.inner.imp {
            EventImpl::Cpu(e) => {
                let target = e.recorded();
                if !e.wait_for(target, timeout) {
                    return Err(Error::Timeout {
                        what: format!("event on {}", self.inner.device.label()),
                        seconds: timeout.unwrap_or_default().as_secs_f64(),
                    });
                }
                // The host gets the recording stream's own failure, as from that stream's
                // synchronize.
                if let Some((_, err)) = e.failure_of(target) {
                    return Err(err);
                }
            }
            EventImpl::Cuda(e) => {
                let deadline = timeout.map(|t| Instant::now() + t);
                match deadline {
                    None => e
                        .synchronize()
                        .map_err(|e| cuda::driver_error("cuEventSynchronize", e))?,
                    Some(d) => {
                        while !e
                            .try_is_complete()
                            .map_err(|e| cuda::driver_error("cuEventQuery", e))?
                        {
                            if Instant::now() >= d {
                                return Err(Error::Timeout {
                                    what: format!("event on {}", self.inner.device.label()),
                                    seconds: timeout.unwrap_or_default().as_secs_f64(),
                                });
                            }
                            std::thread::sleep(Duration::from_micros(50));
                        }
                    }
                }
            }
        }
        if self.inner.device.is_checked() {
            if let Some(c) = clock {
                checked::host_waits(&c);
            }
        }
        Ok(())
    }

    /// Whether the event's last record has completed (never blocks).
    pub fn query(&self) -> Result<bool> {
        match &self.inner.imp {
            EventImpl::Cpu(e) => Ok(e.completed() >= e.recorded()),
            EventImpl::Cuda(e) => e
                .try_is_complete()
                .map_err(|e| cuda::driver_error("cuEventQuery", e)),
        }
    }
}

/// A CPU event: records are numbered (generations); a record completes when the recording
/// stream's worker reaches it.
#[derive(Default)]
struct CpuEvent {
    state: Mutex<(u64, u64)>, // (last generation recorded, highest generation completed)
    /// The generation whose recording stream had failed, with that stream and its error.
    failure: Mutex<Option<(u64, String, Error)>>,
    cv: Condvar,
}

impl CpuEvent {
    fn begin_record(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        s.0
    }

    fn recorded(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn completed(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    fn complete(&self, generation: u64, failure: Option<(String, Error)>) {
        {
            let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
            match failure {
                Some((stream, err)) => *f = Some((generation, stream, err)),
                None => {
                    if f.as_ref().is_some_and(|(g, _, _)| *g < generation) {
                        *f = None;
                    }
                }
            }
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.1 < generation {
            s.1 = generation;
        }
        drop(s);
        self.cv.notify_all();
    }

    /// The failure carried by generation `target`, if its recording stream had failed.
    fn failure_of(&self, target: u64) -> Option<(String, Error)> {
        let f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.as_ref()
            .filter(|(g, _, _)| *g == target)
            .map(|(_, s, e)| (s.clone(), e.clone()))
    }

    /// Waits until generation `target` has completed; false on timeout.
    fn wait_for(&self, target: u64, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.1 < target {
            match deadline {
                None => s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    s = self
                        .cv
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_off_the_gpu_is_fresh_and_poisoned() {
        for dev in [Device::cpu(), Device::emu(0).expect("emu")] {
            let s = dev.new_stream().unwrap();
            let a = s.scratch_f32(10).unwrap();
            let b = s.scratch_f32(10).unwrap();
            assert!(a.numel() >= 10 && b.numel() >= 10);
            assert_ne!(a.buffer_id(), b.buffer_id(), "{}", dev.label());
            if dev.kind() == crate::BackendKind::Cpu {
                // Poisoned: a read of scratch nobody wrote shows up as NaN.
                assert!(a.to_f64_vec(&s).unwrap().iter().all(|v| v.is_nan()));
            }
        }
    }

    /// On a GPU the stream's workspace is reused (no allocation per op) and grown when too
    /// small; another stream has its own.
    #[test]
    fn scratch_on_a_gpu_is_the_streams_reused_workspace() {
        let required = std::env::var("FERROTRON_REQUIRE_GPU").as_deref() == Ok("1");
        if let Some(why) = cuda::unavailable_reason() {
            assert!(!required, "FERROTRON_REQUIRE_GPU=1 but no GPU: {why}");
            eprintln!("SKIP scratch_on_a_gpu: no GPU ({why})");
            return;
        }
        let dev = Device::cuda(0).unwrap();
        let (s, t) = (dev.new_stream().unwrap(), dev.new_stream().unwrap());
        let a = s.scratch_f32(1000).unwrap();
        let b = s.scratch_f32(600).unwrap();
        assert_eq!(a.buffer_id(), b.buffer_id(), "reused");
        let c = s.scratch_f32(5000).unwrap();
        assert!(c.numel() >= 5000);
        assert_ne!(c.buffer_id(), a.buffer_id(), "grown");
        let d = t.scratch_f32(10).unwrap();
        assert_ne!(d.buffer_id(), c.buffer_id(), "per stream");
    }
}
