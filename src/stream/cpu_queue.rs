//! The CPU backend's stream: an in-order queue drained by its own worker thread, so work enqueued
//! on a stream really runs asynchronously from the caller and concurrently with other streams.

use crate::error::{Error, Result};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A unit of work: its op name (for error messages) and the closure.
pub(crate) struct Task {
    pub op: &'static str,
    pub run: Box<dyn FnOnce() -> Result<()> + Send>,
}

#[derive(Default)]
struct Progress {
    completed: u64,
    first_error: Option<Error>,
}

/// Shared between the queue handle and its worker.
struct Shared {
    label: String,
    progress: Mutex<Progress>,
    done: Condvar,
}

/// An in-order asynchronous queue with one worker thread.
pub(crate) struct CpuQueue {
    tx: Mutex<Option<Sender<Task>>>,
    enqueued: Mutex<u64>,
    shared: Arc<Shared>,
}

impl CpuQueue {
    /// Starts the worker thread.
    pub fn new(label: &str) -> Result<Self> {
        let (tx, rx) = channel::<Task>();
        let shared = Arc::new(Shared {
            label: label.to_string(),
            progress: Mutex::new(Progress::default()),
            done: Condvar::new(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name(format!("ferrotron-{label}"))
            .spawn(move || {
                while let Ok(task) = rx.recv() {
                    let op = task.op;
                    // After a failure the stream is poisoned, like a CUDA stream after a sticky
                    // error: later work is skipped (its results would be garbage), except event
                    // records, which still complete so that no waiter hangs.
                    let poisoned = worker
                        .progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .first_error
                        .is_some();
                    if poisoned && op != "event_record" {
                        let mut p = worker.progress.lock().unwrap_or_else(|e| e.into_inner());
                        p.completed += 1;
                        drop(p);
                        worker.done.notify_all();
                        continue;
                    }
                    let outcome = catch_unwind(AssertUnwindSafe(task.run));
                    let err = match outcome {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e),
                        Err(panic) => Some(Error::AsyncFailure {
                            stream: worker.label.clone(),
                            op: op.to_string(),
                            message: crate::error::panic_message(&*panic),
                        }),
                    };
                    let mut p = worker.progress.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(e) = err {
                        if p.first_error.is_none() {
                            p.first_error = Some(e);
                        }
                    }
                    p.completed += 1;
                    drop(p);
                    worker.done.notify_all();
                }
            })
            .map_err(|e| Error::invalid("Stream::new", "worker thread", e.to_string()))?;
        Ok(CpuQueue {
            tx: Mutex::new(Some(tx)),
            enqueued: Mutex::new(0),
            shared,
        })
    }

    /// A handle the worker's tasks can use to read the stream's first failure.
    pub fn error_probe(&self) -> impl Fn() -> Option<Error> + Send + 'static {
        let shared = self.shared.clone();
        move || {
            shared
                .progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first_error
                .clone()
        }
    }

    /// Appends a task; returns its 1-based position in the queue.
    pub fn push(&self, task: Task) -> u64 {
        let mut n = self.enqueued.lock().unwrap_or_else(|e| e.into_inner());
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        // The worker only exits when the sender is dropped (in Drop), so send cannot fail here.
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(task);
        }
        *n += 1;
        *n
    }

    /// Number of tasks enqueued so far.
    pub fn enqueued(&self) -> u64 {
        *self.enqueued.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stream's first asynchronous failure, if any (does not wait).
    pub fn error(&self) -> Option<Error> {
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first_error
            .clone()
    }

    /// Whether every task enqueued so far has run.
    pub fn is_idle(&self) -> bool {
        let target = self.enqueued();
        self.shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .completed
            >= target
    }

    /// Blocks until every task enqueued before the call has run, then reports the stream's first
    /// asynchronous failure, if any (sticky, like a CUDA stream error).
    pub fn synchronize(&self, timeout: Option<Duration>) -> Result<()> {
        let target = self.enqueued();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut p = self
            .shared
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while p.completed < target {
            match deadline {
                None => p = self.shared.done.wait(p).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(Error::Timeout {
                            what: format!(
                                "stream {} ({} of {} ops done)",
                                self.shared.label, p.completed, target
                            ),
                            seconds: timeout.unwrap_or_default().as_secs_f64(),
                        });
                    }
                    p = self
                        .shared
                        .done
                        .wait_timeout(p, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
        match &p.first_error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl Drop for CpuQueue {
    fn drop(&mut self) {
        // Closing the channel lets the worker finish what is queued and exit; work already
        // enqueued still runs (it owns its buffers), so dropping a stream never loses work.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}
