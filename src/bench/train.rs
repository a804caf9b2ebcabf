//! `ferrotron train`'s report: the summary table and the loss-curve plot (SVG).

use std::fmt::Write as _;

use crate::model::train::{TrainConfig, TrainReport};

/// A line plot of one or more loss curves (step on x, loss on y), self-contained SVG.
pub fn loss_svg(curves: &[(&str, &[f64])], title: &str) -> String {
    const W: f64 = 720.0;
    const H: f64 = 360.0;
    const L: f64 = 60.0;
    const R: f64 = 20.0;
    const T: f64 = 40.0;
    const B: f64 = 40.0;
    let pts: Vec<f64> = curves
        .iter()
        .flat_map(|(_, c)| c.iter().copied())
        .filter(|v| v.is_finite())
        .collect();
    let n = curves
        .iter()
        .map(|(_, c)| c.len())
        .max()
        .unwrap_or(0)
        .max(2);
    let (lo, hi) = pts
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let x = |i: usize| L + (W - L - R) * i as f64 / (n - 1) as f64;
    let y = |v: f64| T + (H - T - B) * (hi - v) / (hi - lo);
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(o, "<rect width=\"{W}\" height=\"{H}\" fill=\"#ffffff\"/>");
    let _ = writeln!(
        o,
        "<text x=\"{L}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>",
        esc(title)
    );
    // Axes with 5 ticks each.
    let _ = writeln!(
        o,
        "<line x1=\"{L}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{}\" stroke=\"#333\"/>",
        H - B,
        W - R,
        H - B,
        H - B
    );
    for k in 0..=4 {
        let v = lo + (hi - lo) * k as f64 / 4.0;
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.3}</text>",
            L - 6.0,
            y(v) + 4.0
        );
        let i = (n - 1) * k / 4;
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{i}</text>",
            x(i),
            H - B + 16.0
        );
    }
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">step</text>",
        (L + W - R) / 2.0,
        H - 6.0
    );
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    for (k, (name, c)) in curves.iter().enumerate() {
        let col = colours[k % colours.len()];
        let path: Vec<String> = c
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, &v)| format!("{:.1},{:.1}", x(i), y(v)))
            .collect();
        let dash = if k > 0 {
            " stroke-dasharray=\"6 4\""
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "<polyline fill=\"none\" stroke=\"{col}\" stroke-width=\"1.5\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        let _ = writeln!(
            o,
            "<text x=\"{}\" y=\"{}\" fill=\"{col}\" text-anchor=\"end\">{}</text>",
            W - R,
            T + 14.0 * (k as f64 + 1.0),
            esc(name)
        );
    }
    o.push_str("</svg>\n");
    o
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// The end-of-run summary: loss, time per step and tokens/s, the schedule's bubble, bytes per
/// group, memory per rank, and (with `verify`, the same run on one rank) the largest
/// difference between the two loss curves.
pub fn summary(cfg: &TrainConfig, r: &TrainReport, verify: Option<&TrainReport>) -> String {
    let mut s = String::new();
    let tokens = (cfg.dp * cfg.microbatches * cfg.model.seq) as f64;
    let step = r.mean_step_seconds();
    let first = r.losses.first().copied().unwrap_or(f64::NAN);
    let last = r.losses.last().copied().unwrap_or(f64::NAN);
    let _ = writeln!(
        s,
        "# ferrotron train: GPT {} params (vocab {}, hidden {}, {} blocks, {} heads, seq {}), dp {} x pp {} x tp {} = {} CPU thread ranks, {} (chunks {}), {} micro-batches per dp rank, {} steps",
        cfg.model.parameters(),
        cfg.model.vocab,
        cfg.model.hidden,
        cfg.model.layers,
        cfg.model.heads,
        cfg.model.seq,
        cfg.dp,
        cfg.pp,
        cfg.tp,
        cfg.dp * cfg.pp * cfg.tp,
        cfg.schedule,
        cfg.chunks,
        cfg.microbatches,
        cfg.steps
    );
    let _ = writeln!(s, "loss                 {first:.4} -> {last:.4}");
    let _ = writeln!(
        s,
        "time per step        {:.2} ms ({:.0} tokens/s)",
        step * 1e3,
        tokens / step
    );
    let _ = writeln!(
        s,
        "pipeline bubble      {:.3} (simulated, {} with forward 1 / backward 2)",
        r.bubble, cfg.schedule
    );
    let max = |f: &dyn Fn(&crate::model::train::RankReport) -> u64| {
        r.ranks.iter().map(f).max().unwrap_or(0)
    };
    let _ = writeln!(
        s,
        "bytes per rank (max) tp {:.2} MiB, dp {:.2} MiB, pp {:.2} MiB, embedding {:.2} MiB over the run",
        mib(max(&|x| x.bytes.tp)),
        mib(max(&|x| x.bytes.dp)),
        mib(max(&|x| x.bytes.pp)),
        mib(max(&|x| x.bytes.embedding))
    );
    let _ = writeln!(
        s,
        "peak memory per rank {} MiB (device counter: every live tensor incl. activations), by rank",
        r.ranks
            .iter()
            .map(|x| format!("{:.3}", mib(x.peak_bytes)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let peak = r.ranks.iter().map(|x| x.memory).max_by_key(|m| m.total());
    if let Some(m) = peak {
        let _ = writeln!(
            s,
            "training state (max) {:.3} MiB: params {:.3}, grads {:.3}, optimizer {:.3} (ZeRO-1 accounting)",
            mib(m.total() as u64),
            mib(m.params as u64),
            mib(m.grads as u64),
            mib(m.optimizer as u64)
        );
    }
    if let Some(v) = verify {
        let worst = r
            .losses
            .iter()
            .zip(&v.losses)
            .map(|(a, b)| (a - b).abs() / b.abs())
            .fold(0.0, f64::max);
        let _ = writeln!(
            s,
            "verify               max relative loss difference to one rank {worst:.2e} over {} steps ({:.2} ms per step on one rank)",
            v.losses.len(),
            v.mean_step_seconds() * 1e3
        );
    }
    s
}
