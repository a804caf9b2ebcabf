//! The GPT trained on dp x pp x tp meshes of CPU thread ranks computes the same training run as
//! one rank: the loss after every step, for the layouts of the issue plus an interleaved one,
//! against the (1, 1, 1) run on the same global batch. Bad layouts are typed errors.

mod common;

use common::watchdog;
use ferrotron::model::gpt::GptConfig;
use ferrotron::model::train::{train, TrainConfig};
use ferrotron::parallel::pp::ScheduleKind;
use ferrotron::Error;

/// Sequences per step (divisible by every dp below).
const GLOBAL: usize = 6;
const STEPS: usize = 3;

fn cfg(dp: usize, pp: usize, tp: usize) -> TrainConfig {
    TrainConfig {
        model: GptConfig::tiny(),
        dp,
        pp,
        tp,
        chunks: 1,
        microbatches: GLOBAL / dp,
        schedule: ScheduleKind::OneFOneB,
        steps: STEPS,
        lr: 3e-3,
        data_seed: 7,
    }
}

#[test]
fn every_layout_trains_like_one_rank() {
    watchdog(300, "every_layout_trains_like_one_rank", || {
        let want = train(&cfg(1, 1, 1), &|_, _, _| {})
            .expect("single rank")
            .losses;
        assert_eq!(want.len(), STEPS);
        assert!(want.iter().all(|l| l.is_finite()), "{want:?}");
        // The loss starts near ln(vocab) and falls.
        assert!((want[0] - (64f64).ln()).abs() < 0.5, "{want:?}");
        let mut layouts: Vec<(TrainConfig, String)> = [
            (2, 1, 1),
            (1, 2, 1),
            (1, 1, 2),
            (2, 2, 2),
            (1, 2, 4),
            (3, 1, 2),
        ]
        .iter()
        .map(|&(dp, pp, tp)| (cfg(dp, pp, tp), format!("dp {dp} pp {pp} tp {tp}")))
        .collect();
        // Interleaved: 2 chunks per rank over 4 blocks, 6 micro-batches (divisible by pp).
        let mut inter = cfg(1, 2, 1);
        inter.schedule = ScheduleKind::Interleaved;
        inter.chunks = 2;
        layouts.push((inter, "dp 1 pp 2 tp 1 interleaved v 2".into()));
        let mut zb = cfg(1, 2, 2);
        zb.schedule = ScheduleKind::ZbH1;
        layouts.push((zb, "dp 1 pp 2 tp 2 zb-h1".into()));
        for (c, what) in layouts {
            let got = train(&c, &|_, _, _| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(got.losses.len(), STEPS, "{what}");
            for (s, (g, w)) in got.losses.iter().zip(&want).enumerate() {
                // f32 training: the layouts differ only in summation order (partial sums per
                // tp rank, per micro-batch, per dp rank), which AdamW's normalisation mostly
                // divides out; 1e-4 relative is ~1000 f32 ulps.
                let rel = (g - w).abs() / w.abs();
                assert!(
                    rel < 1e-4,
                    "{what} step {s}: loss {g} vs one rank {w} (rel {rel:.2e})"
                );
            }
            // The tied embedding/head copies are bitwise equal wherever they live: for every
            // (dp, tp) position, the first stage's embedding copy and the last stage's head copy.
            let mut by_pos: std::collections::BTreeMap<(usize, usize), Vec<u64>> =
                Default::default();
            for r in &got.ranks {
                by_pos
                    .entry((r.coords.0, r.coords.2))
                    .or_default()
                    .extend(&r.tied_hashes);
            }
            for (pos, h) in &by_pos {
                assert_eq!(h.len(), 2, "{what} {pos:?}: two copies of the tied matrix");
                assert_eq!(h[0], h[1], "{what} {pos:?}: tied copies diverged");
            }
            // Every rank did the same number of steps and reported its memory.
            assert!(got.ranks.iter().all(|r| r.step_seconds.len() == STEPS));
            assert!(got.ranks.iter().all(|r| r.memory.total() > 0));
        }
    });
}

/// Without the tied-gradient reduction the copies would drift apart; with untied weights the
/// model trains too (a different model: its own loss curve, still layout-independent).
#[test]
fn untied_layout_trains_like_one_rank() {
    watchdog(120, "untied_layout_trains_like_one_rank", || {
        let untied = |dp, pp, tp| {
            let mut c = cfg(dp, pp, tp);
            c.model.tie_embeddings = false;
            c
        };
        let want = train(&untied(1, 1, 1), &|_, _, _| {})
            .expect("one rank")
            .losses;
        let got = train(&untied(2, 2, 2), &|_, _, _| {})
            .expect("2x2x2")
            .losses;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() / w.abs() < 1e-4, "{g} vs {w}");
        }
        let tied = train(&cfg(1, 1, 1), &|_, _, _| {}).expect("tied").losses;
        assert_ne!(tied, want, "tying changes the model");
    });
}

#[test]
fn bad_layouts_are_typed_errors() {
    // Layers (4) not divisible by pp * chunks (3).
    let e = train(&cfg(1, 3, 1), &|_, _, _| {}).expect_err("4 layers over 3 stages");
    assert!(matches!(e, Error::NotDivisible { .. }), "{e}");
    // Heads (4) not divisible by tp (3).
    let e = train(&cfg(2, 1, 3), &|_, _, _| {}).expect_err("4 heads over tp 3");
    assert!(matches!(e, Error::NotDivisible { .. }), "{e}");
    // Interleaving with micro-batches not divisible by pp.
    let mut c = cfg(1, 2, 1);
    c.schedule = ScheduleKind::Interleaved;
    c.chunks = 2;
    c.microbatches = 3;
    assert!(train(&c, &|_, _, _| {}).is_err());
    // Zero steps.
    let mut c = cfg(1, 1, 1);
    c.steps = 0;
    assert!(matches!(
        train(&c, &|_, _, _| {}),
        Err(Error::InvalidArgument { .. })
    ));
}
