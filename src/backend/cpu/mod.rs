//! The CPU backend: host buffers and the fast paths of every operator.
//!
//! Streams are [`crate::stream`] worker threads; the op layer enqueues closures that lock the
//! operands' buffers (in buffer-id order, so two racing unchecked ops can never deadlock) and run
//! the slice-level kernels in [`ops`].

pub mod ops;

use crate::tensor::{Buffer, HostData};
use std::sync::{Arc, RwLockReadGuard, RwLockWriteGuard};

/// Operands of one host op, locked for its duration.
pub(crate) struct Locked<'a> {
    reads: Vec<Option<RwLockReadGuard<'a, HostData>>>,
    writes: Vec<Option<RwLockWriteGuard<'a, HostData>>>,
}

impl Locked<'_> {
    /// The inputs (in the order the op listed its reads) and the outputs (likewise its writes).
    pub fn io(&mut self) -> (Vec<&HostData>, Vec<&mut HostData>) {
        let r = self
            .reads
            .iter()
            .map(|g| &**g.as_ref().expect("locked"))
            .collect();
        let w = self
            .writes
            .iter_mut()
            .map(|g| &mut **g.as_mut().expect("locked"))
            .collect();
        (r, w)
    }
}

/// Locks `reads` for reading and `writes` for writing, in ascending buffer id.
///
/// The op layer guarantees that no buffer is both read and written by the same op (it reports
/// [`crate::Error::Aliasing`] first), so each buffer is locked once.
pub(crate) fn lock_all<'a>(reads: &'a [Arc<Buffer>], writes: &'a [Arc<Buffer>]) -> Locked<'a> {
    let mut order: Vec<(u64, bool, usize)> = reads
        .iter()
        .enumerate()
        .map(|(i, b)| (b.id(), false, i))
        .chain(writes.iter().enumerate().map(|(i, b)| (b.id(), true, i)))
        .collect();
    order.sort_unstable();
    let mut locked = Locked {
        reads: (0..reads.len()).map(|_| None).collect(),
        writes: (0..writes.len()).map(|_| None).collect(),
    };
    for (_, is_write, i) in order {
        if is_write {
            locked.writes[i] = Some(writes[i].host().write().unwrap_or_else(|p| p.into_inner()));
        } else {
            locked.reads[i] = Some(reads[i].host().read().unwrap_or_else(|p| p.into_inner()));
        }
    }
    locked
}
