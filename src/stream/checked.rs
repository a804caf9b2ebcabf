//! Checked mode: happens-before tracking of every buffer access across streams.
//!
//! Each stream has a position (ops enqueued so far) and a vector clock: for every other stream,
//! the position up to which it is known to have completed, learnt through events (`wait`) and
//! through the host (`synchronize` followed by an enqueue). Each buffer remembers its last write
//! and the reads since it, as (stream, position). An op that reads a buffer whose last write is on
//! another stream and not covered by the reader's clock, or writes a buffer with an uncovered
//! read or write, is a race: it is refused with [`Error::UnsynchronizedAccess`] before it is
//! enqueued. The check runs at enqueue time on logical positions, so it is deterministic: it does
//! not depend on how the threads or the GPU happen to be scheduled.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

/// A vector clock: stream id -> completed position known.
pub(crate) type Clock = HashMap<u64, u64>;

fn merge(into: &mut Clock, from: &Clock) {
    for (&s, &p) in from {
        let e = into.entry(s).or_insert(0);
        if *e < p {
            *e = p;
        }
    }
}

/// One access of a buffer by a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Access {
    pub stream: u64,
    pub pos: u64,
}

/// What checked mode remembers per buffer.
#[derive(Default, Debug)]
pub(crate) struct AccessState {
    last_write: Option<Access>,
    reads: Vec<Access>,
}

#[derive(Default)]
struct StreamClock {
    label: String,
    pos: u64,
    known: Clock,
}

#[derive(Default)]
struct Tracker {
    streams: HashMap<u64, StreamClock>,
    host: Clock,
}

fn tracker() -> MutexGuard<'static, Tracker> {
    static T: OnceLock<Mutex<Tracker>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(Tracker::default()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Registers a stream with the tracker.
pub(crate) fn register_stream(id: u64, label: &str) {
    tracker().streams.insert(
        id,
        StreamClock {
            label: label.to_string(),
            ..Default::default()
        },
    );
}

/// Forgets a dropped stream.
pub(crate) fn unregister_stream(id: u64) {
    tracker().streams.remove(&id);
}

/// A buffer as the tracker sees it: its id, a label for messages, and its access state.
pub(crate) struct TrackedBuffer<'a> {
    pub id: u64,
    pub label: &'a str,
    pub state: &'a Mutex<AccessState>,
}

fn label_of(t: &Tracker, stream: u64) -> String {
    t.streams
        .get(&stream)
        .map(|s| s.label.clone())
        .unwrap_or_else(|| format!("#{stream} (dropped)"))
}

/// Checks and records one op on `stream` that reads `reads` and writes `writes`.
///
/// On success the op's accesses are recorded at the stream's next position; on a race nothing is
/// recorded and the error names the buffer, both streams and the earlier access.
pub(crate) fn record_op(
    stream: u64,
    reads: &[TrackedBuffer<'_>],
    writes: &[TrackedBuffer<'_>],
) -> Result<()> {
    let mut t = tracker();
    let host = t.host.clone();
    let me_label;
    let pos;
    let known = {
        let sc = t
            .streams
            .get_mut(&stream)
            .expect("stream registered at creation");
        merge(&mut sc.known, &host);
        me_label = sc.label.clone();
        pos = sc.pos + 1;
        sc.known.clone()
    };
    let covered =
        |a: &Access| a.stream == stream || known.get(&a.stream).copied().unwrap_or(0) >= a.pos;
    let mut states: Vec<(MutexGuard<'_, AccessState>, bool)> = Vec::new();
    // Lock every state once (a buffer may appear as both read and write: treat it as a write).
    let mut seen: Vec<u64> = Vec::new();
    let mut order: Vec<(&TrackedBuffer<'_>, bool)> = Vec::new();
    for w in writes {
        if !seen.contains(&w.id) {
            seen.push(w.id);
            order.push((w, true));
        }
    }
    for r in reads {
        if !seen.contains(&r.id) {
            seen.push(r.id);
            order.push((r, false));
        }
    }
    for (b, is_write) in &order {
        let st = b.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = st.last_write {
            if !covered(&w) {
                return Err(Error::UnsynchronizedAccess {
                    buffer: b.label.to_string(),
                    stream: me_label,
                    access: if *is_write { "write" } else { "read" },
                    other_stream: label_of(&t, w.stream),
                    previous: "write",
                    other_position: w.pos,
                });
            }
        }
        if *is_write {
            if let Some(r) = st.reads.iter().find(|r| !covered(r)) {
                return Err(Error::UnsynchronizedAccess {
                    buffer: b.label.to_string(),
                    stream: me_label,
                    access: "write",
                    other_stream: label_of(&t, r.stream),
                    previous: "read",
                    other_position: r.pos,
                });
            }
        }
        states.push((st, *is_write));
    }
    let me = Access { stream, pos };
    for (st, is_write) in states.iter_mut() {
        if *is_write {
            st.last_write = Some(me);
            st.reads.clear();
        } else if let Some(r) = st.reads.iter_mut().find(|r| r.stream == stream) {
            r.pos = pos;
        } else {
            st.reads.push(me);
        }
    }
    drop(states);
    t.streams.get_mut(&stream).expect("registered").pos = pos;
    Ok(())
}

/// The clock an event recorded now on `stream` carries: everything the stream knows plus its own
/// position.
pub(crate) fn snapshot(stream: u64) -> Clock {
    let mut t = tracker();
    let host = t.host.clone();
    let sc = t.streams.get_mut(&stream).expect("registered");
    merge(&mut sc.known, &host);
    let mut c = sc.known.clone();
    c.insert(stream, sc.pos);
    c
}

/// `stream` waits for an event that carried `clock`.
pub(crate) fn stream_waits(stream: u64, clock: &Clock) {
    let mut t = tracker();
    if let Some(sc) = t.streams.get_mut(&stream) {
        merge(&mut sc.known, clock);
    }
}

/// The host waited for an event that carried `clock` (or for a whole stream).
pub(crate) fn host_waits(clock: &Clock) {
    let mut t = tracker();
    merge(&mut t.host, clock);
}
