//! Compute/communication overlap on CPU ranks: each rank computes a layer's output on a
//! `compute` stream while the previous gradient bucket is all-reduced on a `comm` stream; an
//! event orders the two wherever a result crosses streams.
//!
//! `cargo run --release --example overlap`

use ferrotron::comm::{launch, Communicator, ReduceOp};
use ferrotron::ops::{self, Gemm};
use ferrotron::{BackendKind, DType, Tensor};

fn main() -> ferrotron::Result<()> {
    let ranks = 4;
    let out = launch(ranks, BackendKind::Cpu, |ctx| {
        let compute = ctx.device.new_named_stream("compute")?;
        let comm = ctx.device.new_named_stream("comm")?;
        let n = 256;
        let x = Tensor::from_slice(
            &ctx.device,
            &vec![0.01f32 * (ctx.rank + 1) as f32; n * n],
            [n, n],
        )?;
        let w = Tensor::from_slice(&ctx.device, &vec![0.5f32; n * n], [n, n])?;
        let mut grad = Tensor::from_slice(&ctx.device, &vec![ctx.rank as f32; 1 << 20], [1 << 20])?;
        // The all-reduce runs on `comm` while the GEMM runs on `compute`.
        let work = ctx.comm.all_reduce(&comm, &mut grad, ReduceOp::Avg)?;
        let mut y = Tensor::poisoned(&ctx.device, [n, n], DType::F32)?;
        ops::gemm(&compute, &x, &w, &mut y, &Gemm::default())?;
        // Anything on `compute` that reads `grad` must wait for the collective's event first.
        compute.wait(work.event())?;
        let g0 = grad.to_vec::<f32>(&compute)?[0];
        let y0 = y.to_vec::<f32>(&compute)?[0];
        Ok((g0, y0))
    })?;
    for (rank, (g, y)) in out.iter().enumerate() {
        println!("rank {rank}: averaged grad[0] = {g}, y[0] = {y}");
    }
    Ok(())
}
