//! One rank's symmetric resources of a peer group on its device (emulated or CUDA): the staging
//! buffer, the flag array and the peer table, and the four things the protocol does with them:
//! write a launch's block offsets into the table, launch a peer kernel, raise the abort word,
//! read it back.
//!
//! On an emulated device a launch runs to completion on the stream's worker thread; on a GPU it
//! is enqueued on the rank's CUDA stream, and the host's writes and reads of the abort word go
//! through a per-rank *control stream* (non-blocking, so a copy on it proceeds while the rank's
//! kernels spin on a flag).

use crate::backend::cuda::layers::param_bytes;
use crate::backend::cuda::{driver_error, CudaMem};
use crate::backend::emu::{memory, EmuHandle, EmuMem, LaunchShape};
use crate::device::{BackendKind, Device};
use crate::error::{Error, Result};
use cudarc::driver::{CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use std::sync::Arc;

/// Where a launch goes.
#[derive(Clone, Copy)]
pub(super) enum Target<'a> {
    /// The emulated device runs it now (on the stream's worker).
    Emu,
    /// Enqueued on this CUDA stream of the rank's GPU.
    Cuda(&'a Arc<CudaStream>),
}

/// A rank's staging buffer, flag array and peer table.
pub(super) enum RankMem {
    /// On an emulated device.
    Emu {
        emu: EmuHandle,
        table: EmuMem,
        _stage: EmuMem,
        _flags: EmuMem,
    },
    /// On a GPU.
    Cuda(Box<CudaRank>),
}

/// A rank's buffers on a GPU.
pub(super) struct CudaRank {
    device: Device,
    /// Orders the host's abort-word copies, independently of the rank's streams.
    control: Arc<CudaStream>,
    table: CudaMem,
    table_addr: u64,
    _stage: CudaMem,
    _flags: CudaMem,
}

/// A buffer of a group under construction.
enum Mem {
    Emu(EmuMem),
    Cuda(CudaMem),
}

impl Mem {
    fn alloc(
        device: &Device,
        control: Option<&Arc<CudaStream>>,
        bytes: usize,
        poison: bool,
    ) -> Result<(Mem, u64)> {
        if let Some(e) = device.emu_state() {
            let m = e.upload(&vec![0u8; bytes], poison)?;
            let addr = m.addr();
            return Ok((Mem::Emu(m), addr));
        }
        let (Some(cuda), Some(control)) = (device.cuda_state(), control) else {
            return Err(unsupported(device));
        };
        // 0xFF bytes are NaN in f32 and bf16: staging read before it is written shows up.
        let m = cuda.alloc(bytes, if poison { 0xFF } else { 0 })?;
        let addr = m.ptr(control);
        Ok((Mem::Cuda(m), addr))
    }
}

fn unsupported(device: &Device) -> Error {
    Error::Unsupported {
        op: "PeerComm::group",
        backend: format!(
            "{} (the peer communicator runs on emulated devices and GPUs)",
            device.label()
        ),
    }
}

impl RankMem {
    /// Allocates every rank's staging buffer (`staging_bytes`, poisoned) and flag array
    /// (`flag_bytes`, zeroed) on its device, then every rank's peer table: the staging
    /// addresses, the flag addresses, `world + 1` offsets and the abort word, all 0 but the
    /// addresses.
    pub(super) fn create(
        devices: &[Device],
        staging_bytes: usize,
        flag_bytes: usize,
    ) -> Result<Vec<RankMem>> {
        let world = devices.len();
        let mut controls = Vec::with_capacity(world);
        for d in devices {
            controls.push(match d.kind() {
                BackendKind::Emu => None,
                BackendKind::Cuda => {
                    let cuda = d.cuda_state().ok_or_else(|| unsupported(d))?;
                    Some(cuda.new_stream()?)
                }
                BackendKind::Cpu => return Err(unsupported(d)),
            });
        }
        let (mut stages, mut flags) = (Vec::with_capacity(world), Vec::with_capacity(world));
        let mut words = vec![0u64; 3 * world + 2];
        for (r, (d, c)) in devices.iter().zip(&controls).enumerate() {
            let (stage, s_addr) = Mem::alloc(d, c.as_ref(), staging_bytes, true)?;
            let (flag, f_addr) = Mem::alloc(d, c.as_ref(), flag_bytes, false)?;
            words[r] = s_addr;
            words[world + r] = f_addr;
            stages.push(stage);
            flags.push(flag);
        }
        let table_bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = Vec::with_capacity(world);
        for (((d, control), stage), flag) in devices.iter().zip(controls).zip(stages).zip(flags) {
            out.push(match (stage, flag, control) {
                (Mem::Emu(stage), Mem::Emu(flags), _) => {
                    let emu = d.emu_state().ok_or_else(|| unsupported(d))?.clone();
                    RankMem::Emu {
                        table: emu.upload(&table_bytes, false)?,
                        emu,
                        _stage: stage,
                        _flags: flags,
                    }
                }
                (Mem::Cuda(stage), Mem::Cuda(flags), Some(control)) => {
                    let cuda = d.cuda_state().ok_or_else(|| unsupported(d))?;
                    let table = cuda.upload(&table_bytes)?;
                    let table_addr = table.ptr(&control);
                    RankMem::Cuda(Box::new(CudaRank {
                        device: d.clone(),
                        control,
                        table,
                        table_addr,
                        _stage: stage,
                        _flags: flags,
                    }))
                }
                _ => return Err(unsupported(d)),
            });
        }
        Ok(out)
    }

    /// The device address of the peer table.
    pub(super) fn table_addr(&self) -> u64 {
        match self {
            RankMem::Emu { table, .. } => table.addr(),
            RankMem::Cuda(c) => c.table_addr,
        }
    }

    /// Writes `bytes` at byte `offset` of the table, ordered before the next launch on `target`.
    pub(super) fn write_table(
        &self,
        target: Target<'_>,
        offset: usize,
        bytes: &[u8],
    ) -> Result<()> {
        match (self, target) {
            (RankMem::Emu { table, .. }, _) => memory()
                .write(table.addr() + offset as u64, bytes)
                .map_err(table_error),
            (RankMem::Cuda(c), Target::Cuda(s)) => c.table.write_at(s, offset, bytes),
            (RankMem::Cuda(_), Target::Emu) => Err(target_mismatch()),
        }
    }

    /// Stores `value` into the table's word at byte `offset` now (the abort word: kernels that
    /// spin on a flag see it and return).
    pub(super) fn store_word(&self, offset: usize, value: u64) -> Result<()> {
        match self {
            RankMem::Emu { table, .. } => memory()
                .write(table.addr() + offset as u64, &value.to_le_bytes())
                .map_err(table_error),
            RankMem::Cuda(c) => {
                c.table.write_at(&c.control, offset, &value.to_le_bytes())?;
                c.control
                    .synchronize()
                    .map_err(|e| driver_error("cuStreamSynchronize", e))
            }
        }
    }

    /// Reads the table's word at byte `offset` now.
    pub(super) fn load_word(&self, offset: usize) -> Result<u64> {
        let mut word = [0u8; 8];
        match self {
            RankMem::Emu { table, .. } => memory()
                .read_bytes(table.addr() + offset as u64, &mut word)
                .map_err(table_error)?,
            RankMem::Cuda(c) => c.table.read_at(&c.control, offset, &mut word)?,
        }
        Ok(u64::from_le_bytes(word))
    }

    /// Launches `function` of the embedded image `module` with the by-value parameter struct
    /// `params` on `target`: run to completion on an emulated device, enqueued on a GPU.
    pub(super) fn launch<P: DeviceRepr + Copy>(
        &self,
        target: Target<'_>,
        module: &str,
        function: &str,
        params: &P,
        shape: LaunchShape,
    ) -> Result<()> {
        match (self, target) {
            (RankMem::Emu { emu, .. }, _) => emu
                .launch_with(module, function, &param_bytes(params), shape)
                .map(|_| ()),
            (RankMem::Cuda(c), Target::Cuda(s)) => {
                let cuda = c
                    .device
                    .cuda_state()
                    .ok_or_else(|| unsupported(&c.device))?;
                let f = cuda.function(module, function)?;
                let cfg = LaunchConfig {
                    grid_dim: (shape.grid[0], shape.grid[1], shape.grid[2]),
                    block_dim: (shape.block[0], shape.block[1], shape.block[2]),
                    shared_mem_bytes: shape.dynamic_shared,
                };
                let mut b = s.launch_builder(&f);
                b.arg(params);
                // SAFETY: `params` is the #[repr(C)] struct the peer / overlap kernel takes by
                // value (`ferrotron_params.h`, kept in sync by the kernel_abi test); its
                // pointers address the group's staging, flag and table buffers (freed only after
                // every GPU of the group is synchronized, see `PeerGroup`'s Drop) and the call's
                // operands, which the caller validated and keeps alive past the launch
                // (`CudaMem`'s Drop orders their free after this stream); the dynamic shared
                // memory is at most 48 KiB, which needs no opt-in.
                unsafe { b.launch(cfg) }
                    .map(|_| ())
                    .map_err(|e| driver_error(&format!("cuLaunchKernel({function})"), e))
            }
            (RankMem::Cuda(_), Target::Emu) => Err(target_mismatch()),
        }
    }

    /// Waits until the rank's GPU is idle (before the group's buffers are freed); nothing on
    /// an emulated device, whose launches finish on the stream worker.
    pub(super) fn quiesce(&self) {
        if let RankMem::Cuda(c) = self {
            if let Some(cuda) = c.device.cuda_state() {
                let _ = cuda.synchronize();
            }
        }
    }
}

fn table_error(e: ptx_emu::EmuError) -> Error {
    Error::Emu {
        kernel: "(peer table)".into(),
        error: e,
    }
}

fn target_mismatch() -> Error {
    Error::Unsupported {
        op: "peer launch",
        backend: "a GPU rank's work on a non-CUDA stream".into(),
    }
}
