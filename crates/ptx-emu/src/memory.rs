//! Global memory of every emulated device in one address space, with a shadow byte per byte
//! (uninitialised / written / poisoned) for the sanitizer checks.
//!
//! Device `d`'s allocations live at `(d + 1) << 40` upward, 256-byte aligned (like
//! `cudaMalloc`), and addresses are never reused, so a use after free is an out-of-bounds access
//! instead of silently reading someone else's buffer. A kernel on device `d` may touch another
//! device's memory only after [`Memory::enable_peer_access`]`(d, other)`.

use crate::error::{EmuError, Result};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

/// Shadow state of one byte.
pub(crate) const UNINIT: u8 = 0;
/// Written by the host or a kernel.
pub(crate) const INIT: u8 = 1;
/// Poisoned by the host ([`Memory::poison`]): reading it before writing is an error.
pub(crate) const POISONED: u8 = 2;
/// The destination of a `cp.async` that has not been waited for (shared memory only).
pub(crate) const PENDING: u8 = 3;

/// Name of a shadow state, for error messages.
pub(crate) fn shadow_name(s: u8) -> &'static str {
    match s {
        UNINIT => "uninitialised",
        POISONED => "poisoned",
        PENDING => "pending cp.async",
        _ => "initialised",
    }
}

/// Generic addresses of the CTA's shared window start here (`cvta.shared`).
pub const SHARED_GENERIC_BASE: u64 = 0xFE00_0000_0000_0000;
/// Generic addresses of the thread's local window start here (`cvta.local`).
pub const LOCAL_GENERIC_BASE: u64 = 0xFD00_0000_0000_0000;
/// Size of each generic window.
pub const WINDOW: u64 = 1 << 32;

const DEVICE_SPAN: u64 = 1 << 40;

/// One allocation.
pub(crate) struct Alloc {
    pub base: u64,
    pub size: u64,
    pub device: u32,
    pub data: Mutex<AllocData>,
}

/// Bytes and their shadow.
pub(crate) struct AllocData {
    pub bytes: Vec<u8>,
    pub shadow: Vec<u8>,
}

struct State {
    allocs: BTreeMap<u64, Arc<Alloc>>,
    next: Vec<u64>,
    peers: HashSet<(u32, u32)>,
}

/// The global memory of all emulated devices. Cheap to clone (shared).
#[derive(Clone)]
pub struct Memory {
    state: Arc<RwLock<State>>,
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new()
    }
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.read();
        write!(f, "Memory({} allocations)", st.allocs.len())
    }
}

/// A snapshot of the allocations a launch may touch (sorted by base).
pub(crate) struct View {
    pub allocs: Vec<Arc<Alloc>>,
    pub device: u32,
    pub peers: HashSet<u32>,
}

impl View {
    /// The allocation containing `[addr, addr + size)`, or a description of the nearest one.
    pub fn find(&self, addr: u64, size: u64) -> std::result::Result<&Arc<Alloc>, String> {
        let i = self.allocs.partition_point(|a| a.base <= addr);
        if i > 0 {
            let a = &self.allocs[i - 1];
            if addr >= a.base && addr + size <= a.base + a.size {
                if a.device != self.device && !self.peers.contains(&a.device) {
                    return Err(format!(
                        "the address is in an allocation of device {} and peer access from device {} is not enabled",
                        a.device, self.device
                    ));
                }
                return Ok(a);
            }
        }
        Err(self.nearest(addr))
    }

    fn nearest(&self, addr: u64) -> String {
        let i = self.allocs.partition_point(|a| a.base <= addr);
        let before = i.checked_sub(1).map(|k| &self.allocs[k]);
        let after = self.allocs.get(i);
        let describe = |a: &Arc<Alloc>| {
            let rel = if addr >= a.base + a.size {
                format!("{} bytes past the end of", addr - (a.base + a.size))
            } else if addr < a.base {
                format!("{} bytes before", a.base - addr)
            } else {
                "straddling the end of".to_string()
            };
            format!(
                "{rel} the {}-byte allocation at {:#x} (device {})",
                a.size, a.base, a.device
            )
        };
        match (before, after) {
            (Some(b), Some(a)) => {
                if addr.saturating_sub(b.base + b.size) <= a.base.saturating_sub(addr) {
                    describe(b)
                } else {
                    describe(a)
                }
            }
            (Some(b), None) => describe(b),
            (None, Some(a)) => describe(a),
            (None, None) => "there are no allocations".to_string(),
        }
    }
}

impl Memory {
    /// An empty address space.
    pub fn new() -> Memory {
        Memory {
            state: Arc::new(RwLock::new(State {
                allocs: BTreeMap::new(),
                next: Vec::new(),
                peers: HashSet::new(),
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Allocates `size` bytes on `device` (uninitialised: a kernel reading them before anything
    /// writes them is reported). Returns the device address.
    pub fn alloc(&self, device: u32, size: u64) -> Result<u64> {
        let mut st = self.write_state();
        let d = device as usize;
        if st.next.len() <= d {
            st.next.resize(d + 1, 0);
        }
        let base = (u64::from(device) + 1) * DEVICE_SPAN + st.next[d];
        let span = size.max(1).div_ceil(256) * 256 + 256; // a gap between allocations
        if st.next[d] + span > DEVICE_SPAN {
            return Err(EmuError::Memory(format!(
                "device {device} is out of address space ({size} bytes requested)"
            )));
        }
        st.next[d] += span;
        st.allocs.insert(
            base,
            Arc::new(Alloc {
                base,
                size,
                device,
                data: Mutex::new(AllocData {
                    bytes: vec![0; size as usize],
                    shadow: vec![UNINIT; size as usize],
                }),
            }),
        );
        Ok(base)
    }

    /// Frees the allocation starting at `addr`.
    pub fn free(&self, addr: u64) -> Result<()> {
        let mut st = self.write_state();
        st.allocs.remove(&addr).map(|_| ()).ok_or_else(|| {
            EmuError::Memory(format!(
                "free of {addr:#x}, which is not the start of an allocation"
            ))
        })
    }

    /// Lets kernels on `device` access memory of `peer`.
    pub fn enable_peer_access(&self, device: u32, peer: u32) {
        self.write_state().peers.insert((device, peer));
    }

    fn alloc_for(&self, addr: u64, len: u64, what: &str) -> Result<Arc<Alloc>> {
        let st = self.read();
        let hit = st
            .allocs
            .range(..=addr)
            .next_back()
            .map(|(_, a)| a.clone())
            .filter(|a| addr + len <= a.base + a.size);
        hit.ok_or_else(|| {
            EmuError::Memory(format!(
                "{what} of {len} bytes at {addr:#x} is outside every allocation"
            ))
        })
    }

    /// Copies host bytes to device memory (marks them initialised).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        let a = self.alloc_for(addr, bytes.len() as u64, "write")?;
        let off = (addr - a.base) as usize;
        let mut d = a.data.lock().unwrap_or_else(|p| p.into_inner());
        d.bytes[off..off + bytes.len()].copy_from_slice(bytes);
        d.shadow[off..off + bytes.len()].fill(INIT);
        Ok(())
    }

    /// Copies device memory to the host.
    pub fn read_bytes(&self, addr: u64, out: &mut [u8]) -> Result<()> {
        let a = self.alloc_for(addr, out.len() as u64, "read")?;
        let off = (addr - a.base) as usize;
        let d = a.data.lock().unwrap_or_else(|p| p.into_inner());
        out.copy_from_slice(&d.bytes[off..off + out.len()]);
        Ok(())
    }

    /// Fills `len` bytes with `value` (initialised).
    pub fn memset(&self, addr: u64, value: u8, len: u64) -> Result<()> {
        let a = self.alloc_for(addr, len, "memset")?;
        let off = (addr - a.base) as usize;
        let mut d = a.data.lock().unwrap_or_else(|p| p.into_inner());
        d.bytes[off..off + len as usize].fill(value);
        d.shadow[off..off + len as usize].fill(INIT);
        Ok(())
    }

    /// Fills `len` bytes with 0xFF (a NaN in every float type) and marks them poisoned: a kernel
    /// that reads them before writing them is reported.
    pub fn poison(&self, addr: u64, len: u64) -> Result<()> {
        let a = self.alloc_for(addr, len, "poison")?;
        let off = (addr - a.base) as usize;
        let mut d = a.data.lock().unwrap_or_else(|p| p.into_inner());
        d.bytes[off..off + len as usize].fill(0xFF);
        d.shadow[off..off + len as usize].fill(POISONED);
        Ok(())
    }

    /// Device-to-device copy (within or across devices).
    pub fn copy(&self, dst: u64, src: u64, len: u64) -> Result<()> {
        let mut tmp = vec![0u8; len as usize];
        let a = self.alloc_for(src, len, "copy source")?;
        let off = (src - a.base) as usize;
        let shadow: Vec<u8> = {
            let d = a.data.lock().unwrap_or_else(|p| p.into_inner());
            tmp.copy_from_slice(&d.bytes[off..off + len as usize]);
            d.shadow[off..off + len as usize].to_vec()
        };
        let b = self.alloc_for(dst, len, "copy destination")?;
        let off = (dst - b.base) as usize;
        let mut d = b.data.lock().unwrap_or_else(|p| p.into_inner());
        d.bytes[off..off + len as usize].copy_from_slice(&tmp);
        d.shadow[off..off + len as usize].copy_from_slice(&shadow);
        Ok(())
    }

    /// The device that owns `addr`, if it is allocated.
    pub fn device_of(&self, addr: u64) -> Option<u32> {
        let st = self.read();
        st.allocs
            .range(..=addr)
            .next_back()
            .filter(|(_, a)| addr < a.base + a.size.max(1))
            .map(|(_, a)| a.device)
    }

    pub(crate) fn view(&self, device: u32) -> View {
        let st = self.read();
        View {
            allocs: st.allocs.values().cloned().collect(),
            device,
            peers: st
                .peers
                .iter()
                .filter(|(d, _)| *d == device)
                .map(|(_, p)| *p)
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_write_read_free() {
        let m = Memory::new();
        let a = m.alloc(0, 10).unwrap();
        let b = m.alloc(1, 10).unwrap();
        assert_eq!(a % 256, 0);
        assert_ne!(a >> 40, b >> 40);
        m.write(a + 2, &[1, 2, 3]).unwrap();
        let mut out = [0u8; 5];
        m.read_bytes(a, &mut out).unwrap();
        assert_eq!(out, [0, 0, 1, 2, 3]);
        assert!(m.write(a + 8, &[0; 3]).is_err());
        assert_eq!(m.device_of(b + 3), Some(1));
        m.free(a).unwrap();
        assert!(m.free(a).is_err());
        let v = m.view(0);
        let e = v.find(b, 4).err().unwrap();
        assert!(e.contains("peer access"), "{e}");
        m.enable_peer_access(0, 1);
        assert!(m.view(0).find(b, 4).is_ok());
        let e = m.view(1).find(b + 12, 4).err().unwrap();
        assert!(e.contains("past the end"), "{e}");
    }
}
