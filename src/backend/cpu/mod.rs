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
    /// One read guard per distinct read buffer.
    read_guards: Vec<Option<RwLockReadGuard<'a, HostData>>>,
    /// For each read operand, the index of its guard in `read_guards`.
    read_slot: Vec<usize>,
    writes: Vec<Option<RwLockWriteGuard<'a, HostData>>>,
}

impl Locked<'_> {
    /// The inputs (in the order the op listed its reads) and the outputs (likewise its writes).
    pub fn io(&mut self) -> (Vec<&HostData>, Vec<&mut HostData>) {
        let r = self
            .read_slot
            .iter()
            .map(|&g| &**self.read_guards[g].as_ref().expect("locked"))
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
/// [`crate::Error::Aliasing`] first). A buffer read twice (`gemm(a, a)`) is locked once: taking
/// a second read lock on the same `RwLock` in one thread can deadlock when a writer is queued.
pub(crate) fn lock_all<'a>(reads: &'a [Arc<Buffer>], writes: &'a [Arc<Buffer>]) -> Locked<'a> {
    // Distinct read buffers, each with its guard slot.
    let mut read_slot = Vec::with_capacity(reads.len());
    let mut distinct: Vec<usize> = Vec::new();
    for b in reads {
        match distinct.iter().position(|&d| reads[d].id() == b.id()) {
            Some(k) => read_slot.push(k),
            None => {
                read_slot.push(distinct.len());
                distinct.push(read_slot.len() - 1);
            }
        }
    }
    let mut order: Vec<(u64, bool, usize)> = distinct
        .iter()
        .enumerate()
        .map(|(k, &i)| (reads[i].id(), false, k))
        .chain(writes.iter().enumerate().map(|(i, b)| (b.id(), true, i)))
        .collect();
    order.sort_unstable();
    let mut locked = Locked {
        read_guards: (0..distinct.len()).map(|_| None).collect(),
        read_slot,
        writes: (0..writes.len()).map(|_| None).collect(),
    };
    for (_, is_write, i) in order {
        if is_write {
            locked.writes[i] = Some(writes[i].host().write().unwrap_or_else(|p| p.into_inner()));
        } else {
            locked.read_guards[i] = Some(
                reads[distinct[i]]
                    .host()
                    .read()
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
    }
    locked
}

#[cfg(test)]
mod tests {
    use crate::ops::{gemm, Gemm};
    use crate::{Device, Tensor};

    #[test]
    fn an_op_reading_one_buffer_twice_locks_it_once() {
        let dev = Device::cpu();
        let s = dev.new_stream().unwrap();
        let a = Tensor::from_slice(&dev, &[1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
        let mut c = Tensor::zeros(&dev, [2, 2], crate::DType::F32).unwrap();
        gemm(&s, &a, &a, &mut c, &Gemm::default()).unwrap();
        assert_eq!(c.to_vec::<f32>(&s).unwrap(), vec![7.0, 10.0, 15.0, 22.0]);
    }
}
