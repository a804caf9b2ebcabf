//! Emulated launches of the layer kernels (see `crate::backend::cuda::layers`, which builds the
//! launch shapes and parameter structs both backends share).

use super::LaunchShape;
use crate::backend::cuda::layers::{bad_target, Launch};
use crate::error::Result;
use crate::stream::Stream;
use crate::tensor::{Buffer, Tensor};
use std::sync::Arc;

/// Enqueues `launches` (in order, with their parameter bytes) on the emu stream; `keep` holds
/// every operand's buffer alive until they have run.
pub(crate) fn launch(
    stream: &Stream,
    op: &'static str,
    launches: Vec<(Launch, Vec<u8>)>,
    keep: Vec<Arc<Buffer>>,
) {
    let dev = stream
        .device()
        .emu_state()
        .expect("emu stream on an emu device")
        .clone();
    stream.push_host(op, move || {
        let _keep = keep;
        for (l, params) in &launches {
            let shape = LaunchShape {
                grid: [l.grid, 1, 1],
                block: [l.block, 1, 1],
                dynamic_shared: l.shared,
            };
            dev.launch_with(l.module, &l.function, params, shape)?;
        }
        Ok(())
    });
}

/// Enqueues a cross-entropy launch with its out-of-range-target flag: allocates the flag
/// (0xFFFFFFFF) now, lets `build` turn its address into the parameter bytes, and after the
/// launch reads the flag back: a recorded row fails the op with
/// [`crate::Error::IndexOutOfRange`] (reported at the stream's next synchronize, like the CPU
/// backend's check).
pub(crate) fn launch_flagged(
    stream: &Stream,
    op: &'static str,
    launch: Launch,
    build: impl FnOnce(u64) -> Vec<u8>,
    keep: Vec<Arc<Buffer>>,
    targets: &Tensor,
    classes: usize,
) -> Result<()> {
    let tbytes = targets.numel() * 4;
    let targets = targets.buffer().clone();
    let dev = stream
        .device()
        .emu_state()
        .expect("emu stream on an emu device")
        .clone();
    let flag = dev.upload(&[0xff; 4], false)?;
    let params = build(flag.addr());
    stream.push_host(op, move || {
        let _keep = keep;
        let shape = LaunchShape {
            grid: [launch.grid, 1, 1],
            block: [launch.block, 1, 1],
            dynamic_shared: launch.shared,
        };
        dev.launch_with(launch.module, &launch.function, &params, shape)?;
        let mut bytes = [0u8; 4];
        flag.download(&mut bytes)?;
        let position = u32::from_le_bytes(bytes);
        if position == u32::MAX {
            return Ok(());
        }
        let mut tb = vec![0u8; tbytes];
        targets.emu().download(&mut tb)?;
        Err(bad_target(op, &tb, position as usize, classes))
    });
    Ok(())
}
