//! Several emulated devices in one address space: peer access is required to touch another
//! device's memory, and kernels on two devices running at the same time (on two host threads)
//! synchronise through a release/acquire flag, the way peer collectives do.

use ptx_emu::{EmuError, LaunchConfig, Memory, Module};
use std::sync::mpsc;
use std::time::Duration;

const PTX: &str = r#"
.version 9.0
.target sm_80
.address_size 64

// Every thread writes data[tid] = tid + 100 (data may live on a peer), then thread 0 raises
// the flag with release semantics after a CTA barrier.
.visible .entry producer(.param .u64 data, .param .u64 flag)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .b64 %rd<6>;
    ld.param.u64 %rd1, [data];
    ld.param.u64 %rd2, [flag];
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd3, %r1, 4;
    add.s64 %rd4, %rd1, %rd3;
    add.u32 %r2, %r1, 100;
    st.global.u32 [%rd4], %r2;
    bar.sync 0;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra DONE;
    mov.u32 %r3, 1;
    fence.acq_rel.sys;
    st.release.sys.global.u32 [%rd2], %r3;
DONE:
    ret;
}

// Thread 0 spins on the flag with acquire loads; then every thread reads data[tid] and writes
// out[tid] = 2 * data[tid].
.visible .entry consumer(.param .u64 data, .param .u64 flag, .param .u64 out)
{
    .reg .pred %p<3>;
    .reg .b32 %r<6>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [data];
    ld.param.u64 %rd2, [flag];
    ld.param.u64 %rd3, [out];
    mov.u32 %r1, %tid.x;
    setp.ne.u32 %p1, %r1, 0;
    @%p1 bra WAIT;
SPIN:
    ld.acquire.sys.global.u32 %r2, [%rd2];
    setp.eq.u32 %p2, %r2, 0;
    @%p2 bra SPIN;
WAIT:
    bar.sync 0;
    mul.wide.u32 %rd4, %r1, 4;
    add.s64 %rd5, %rd1, %rd4;
    ld.global.u32 %r3, [%rd5];
    shl.b32 %r4, %r3, 1;
    add.s64 %rd6, %rd3, %rd4;
    st.global.u32 [%rd6], %r4;
    ret;
}
"#;

fn params(vals: &[u64]) -> Vec<u8> {
    vals.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn peer_access_is_required_across_devices() {
    let m = Module::parse(PTX).unwrap();
    let mem = Memory::new();
    let dev0 = m.load(&mem, 0).unwrap();
    let data1 = mem.alloc(1, 64 * 4).unwrap();
    let flag1 = mem.alloc(1, 4).unwrap();
    mem.memset(flag1, 0, 4).unwrap();
    let cfg = LaunchConfig::linear(1, 64);
    let e = dev0
        .launch("producer", &params(&[data1, flag1]), &cfg)
        .unwrap_err();
    match &e {
        EmuError::OutOfBounds { nearest, site, .. } => {
            assert!(nearest.contains("peer access"), "{e}");
            assert_eq!(site.kernel, "producer");
        }
        other => panic!("expected a peer-access error, got {other}"),
    }
    mem.enable_peer_access(0, 1);
    dev0.launch("producer", &params(&[data1, flag1]), &cfg)
        .unwrap();
    let mut out = [0u8; 8];
    mem.read_bytes(data1 + 4 * 5, &mut out[..4]).unwrap();
    assert_eq!(u32::from_le_bytes(out[..4].try_into().unwrap()), 105);
}

#[test]
fn two_devices_synchronise_through_a_release_acquire_flag() {
    let m = Module::parse(PTX).unwrap();
    for seed in 0..3u64 {
        let mem = Memory::new();
        mem.enable_peer_access(0, 1);
        let dev0 = m.load(&mem, 0).unwrap();
        let dev1 = m.load(&mem, 1).unwrap();
        let data = mem.alloc(1, 64 * 4).unwrap();
        let flag = mem.alloc(1, 4).unwrap();
        let out = mem.alloc(1, 64 * 4).unwrap();
        mem.memset(flag, 0, 4).unwrap();
        mem.poison(out, 64 * 4).unwrap();
        let cfg = LaunchConfig {
            seed,
            max_instructions: 1 << 30,
            ..LaunchConfig::linear(1, 64)
        };
        let (tx, rx) = mpsc::channel();
        let c_cfg = cfg.clone();
        let consumer = std::thread::spawn(move || {
            let r = dev1.launch("consumer", &params(&[data, flag, out]), &c_cfg);
            let _ = tx.send(());
            r
        });
        // Let the consumer start spinning first.
        std::thread::sleep(Duration::from_millis(20));
        dev0.launch("producer", &params(&[data, flag]), &cfg)
            .unwrap();
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the consumer never saw the flag");
        consumer.join().unwrap().unwrap();
        let mut bytes = vec![0u8; 64 * 4];
        mem.read_bytes(out, &mut bytes).unwrap();
        for t in 0..64u32 {
            let v = u32::from_le_bytes(
                bytes[4 * t as usize..4 * t as usize + 4]
                    .try_into()
                    .unwrap(),
            );
            assert_eq!(v, 2 * (t + 100), "thread {t}, seed {seed}");
        }
    }
}

#[test]
fn a_flag_that_never_rises_hits_the_instruction_limit() {
    let m = Module::parse(PTX).unwrap();
    let mem = Memory::new();
    let dev1 = m.load(&mem, 1).unwrap();
    let data = mem.alloc(1, 64 * 4).unwrap();
    let flag = mem.alloc(1, 4).unwrap();
    let out = mem.alloc(1, 64 * 4).unwrap();
    mem.memset(flag, 0, 4).unwrap();
    let cfg = LaunchConfig {
        max_instructions: 100_000,
        ..LaunchConfig::linear(1, 64)
    };
    let e = dev1
        .launch("consumer", &params(&[data, flag, out]), &cfg)
        .unwrap_err();
    assert!(
        matches!(e, EmuError::InstructionLimit { limit: 100_000, .. }),
        "{e}"
    );
}
