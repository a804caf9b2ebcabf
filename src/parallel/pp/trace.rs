//! Timelines of a pipeline step, planned (the simulator) or measured (the executor), in two
//! formats people can look at: Chrome/Perfetto trace JSON and an SVG timeline.

use std::collections::BTreeSet;
use std::path::Path;

use super::action::{Action, ActionKind};
use crate::error::{Error, Result};

/// The stream (lane) an action ran on. Compute actions run on [`Lane::Compute`]; each transfer
/// direction has its own p2p stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Lane {
    /// The compute stream.
    Compute,
    /// Activation sends (to the next stage).
    SendAct,
    /// Activation receives (from the previous stage).
    RecvAct,
    /// Gradient sends (to the previous stage).
    SendGrad,
    /// Gradient receives (from the next stage).
    RecvGrad,
}

impl Lane {
    /// Every lane, in display order.
    pub const ALL: [Lane; 5] = [
        Lane::Compute,
        Lane::SendAct,
        Lane::RecvAct,
        Lane::SendGrad,
        Lane::RecvGrad,
    ];

    /// The lane an action runs on.
    pub fn of(action: &Action) -> Lane {
        match action {
            Action::SendAct { .. } => Lane::SendAct,
            Action::RecvAct { .. } => Lane::RecvAct,
            Action::SendGrad { .. } => Lane::SendGrad,
            Action::RecvGrad { .. } => Lane::RecvGrad,
            _ => Lane::Compute,
        }
    }

    /// A short name (`compute`, `send act`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Lane::Compute => "compute",
            Lane::SendAct => "send act",
            Lane::RecvAct => "recv act",
            Lane::SendGrad => "send grad",
            Lane::RecvGrad => "recv grad",
        }
    }
}

/// One action's interval on one rank's lane. Times are seconds from the start of the step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceSpan {
    /// The pipeline rank.
    pub rank: usize,
    /// The lane it ran on.
    pub lane: Lane,
    /// What ran.
    pub action: Action,
    /// Start, seconds from the step's start.
    pub start: f64,
    /// End, seconds from the step's start.
    pub end: f64,
}

/// Checks that every span has finite times with `0 <= start <= end`.
fn validate(op: &'static str, spans: &[TraceSpan]) -> Result<()> {
    for (i, s) in spans.iter().enumerate() {
        let bad = |why: String| {
            Err(Error::invalid(
                op,
                format!("spans[{i}] ({} on rank {})", s.action, s.rank),
                why,
            ))
        };
        if !s.start.is_finite() || !s.end.is_finite() {
            return bad(format!(
                "times must be finite (start {}, end {})",
                s.start, s.end
            ));
        }
        if s.start < 0.0 {
            return bad(format!("start {} is negative", s.start));
        }
        if s.end < s.start {
            return bad(format!("end {} is before start {}", s.end, s.start));
        }
    }
    Ok(())
}

/// The display name of an action: kind label and micro-batch (`F3`), plus `.c<chunk>` when the
/// chunk is not 0 (`F3.c1`).
fn span_name(a: &Action) -> String {
    if a.chunk() > 0 {
        format!("{}{}.c{}", a.kind().label(), a.mb(), a.chunk())
    } else {
        format!("{}{}", a.kind().label(), a.mb())
    }
}

fn lane_index(lane: Lane) -> usize {
    Lane::ALL.iter().position(|&l| l == lane).unwrap_or(0)
}

/// Appends `s` as a JSON string literal (with quotes).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Seconds to microseconds, rounded to the nanosecond (a JSON number, never exponent form).
fn micros(seconds: f64) -> String {
    let us = (seconds * 1e9).round() / 1e3;
    format!("{us}")
}

/// A Chrome / Perfetto trace (JSON object format) of the spans, for `chrome://tracing` or
/// <https://ui.perfetto.dev>.
///
/// Layout: `{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {"title": ...}}`.
/// Each rank is a process (`pid` = rank, named `rank N`), each lane a thread (`tid` = the lane's
/// index in [`Lane::ALL`], named by [`Lane::name`]); metadata events name only the ranks and
/// lanes that occur. Each span is one complete event (`"ph":"X"`) with `ts`/`dur` in
/// microseconds (rounded to the nanosecond), `name` like `F3` or `F3.c1` (kind label,
/// micro-batch, and the chunk when it is not 0), `cat` the kind label, and `args` holding `mb`,
/// `chunk` and, for transfers, `peer`. Events keep the order of `spans`; the output is
/// deterministic.
///
/// # Errors
/// [`Error::InvalidArgument`] when a span's times are not finite, its start is negative, or it
/// ends before it starts (spans are rejected, never clamped).
pub fn chrome_trace_json(spans: &[TraceSpan], title: &str) -> Result<String> {
    validate("chrome_trace_json", spans)?;
    let mut events: Vec<String> = Vec::new();
    let ranks: BTreeSet<usize> = spans.iter().map(|s| s.rank).collect();
    let lanes: BTreeSet<(usize, usize)> =
        spans.iter().map(|s| (s.rank, lane_index(s.lane))).collect();
    for &r in &ranks {
        let mut e = format!(
            "{{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":{r},\"tid\":0,\"args\":{{\"name\":"
        );
        push_json_str(&mut e, &format!("rank {r}"));
        e.push_str("}}");
        events.push(e);
        events.push(format!(
            "{{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":{r},\"tid\":0,\"args\":{{\"sort_index\":{r}}}}}"
        ));
    }
    for &(r, l) in &lanes {
        let mut e = format!(
            "{{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":{r},\"tid\":{l},\"args\":{{\"name\":"
        );
        push_json_str(&mut e, Lane::ALL[l].name());
        e.push_str("}}");
        events.push(e);
        events.push(format!(
            "{{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":{r},\"tid\":{l},\"args\":{{\"sort_index\":{l}}}}}"
        ));
    }
    for s in spans {
        let a = &s.action;
        let mut e = String::from("{\"name\":");
        push_json_str(&mut e, &span_name(a));
        e.push_str(",\"cat\":");
        push_json_str(&mut e, a.kind().label());
        e.push_str(&format!(
            ",\"ph\":\"X\",\"ts\":{},\"dur\":{},\"pid\":{},\"tid\":{},\"args\":{{\"mb\":{},\"chunk\":{}",
            micros(s.start),
            micros(s.end - s.start),
            s.rank,
            lane_index(s.lane),
            a.mb(),
            a.chunk()
        ));
        if let Some(p) = a.peer() {
            e.push_str(&format!(",\"peer\":{p}"));
        }
        e.push_str("}}");
        events.push(e);
    }
    let mut out = String::from("{\"traceEvents\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("\n  ");
        out.push_str(e);
    }
    out.push_str("\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"title\":");
    push_json_str(&mut out, title);
    out.push_str("}}\n");
    Ok(out)
}

/// Escapes text for XML content and attribute values.
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters other than tab/newline are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' && c != '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Fill colour and text colour of a kind's boxes.
fn kind_colours(kind: ActionKind) -> (&'static str, &'static str) {
    match kind {
        ActionKind::Forward => ("#4e79a7", "#ffffff"),
        ActionKind::Recompute => ("#b07aa1", "#ffffff"),
        ActionKind::Backward => ("#e15759", "#ffffff"),
        ActionKind::BackwardInput => ("#f28e2b", "#000000"),
        ActionKind::BackwardWeight => ("#59a14f", "#ffffff"),
        ActionKind::SendAct => ("#8c8c8c", "#000000"),
        ActionKind::RecvAct => ("#bdbdbd", "#000000"),
        ActionKind::SendGrad => ("#6e6e6e", "#ffffff"),
        ActionKind::RecvGrad => ("#a6a6a6", "#000000"),
    }
}

/// A long name of a kind, for the legend.
fn kind_name(kind: ActionKind) -> &'static str {
    match kind {
        ActionKind::Forward => "forward",
        ActionKind::Recompute => "recompute",
        ActionKind::Backward => "backward",
        ActionKind::BackwardInput => "backward (input)",
        ActionKind::BackwardWeight => "backward (weight)",
        ActionKind::SendAct => "send act",
        ActionKind::RecvAct => "recv act",
        ActionKind::SendGrad => "send grad",
        ActionKind::RecvGrad => "recv grad",
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about `target` ticks over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = span / target;
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

// SVG geometry (pixels).
const SVG_WIDTH: f64 = 1200.0;
const SVG_LEFT: f64 = 70.0;
const SVG_RIGHT: f64 = 20.0;
const SVG_TOP: f64 = 64.0;
const COMPUTE_H: f64 = 26.0;
const SUB_H: f64 = 5.0;
const SUB_GAP: f64 = 1.0;
const ROW_GAP: f64 = 10.0;
const AXIS_H: f64 = 40.0;

/// Number of `<rect` elements [`svg_timeline`] draws besides one per span: the background and
/// one row band per rank (`0..=max rank`) and one legend swatch per kind that occurs.
#[cfg(test)]
fn svg_extra_rects(spans: &[TraceSpan]) -> usize {
    let ranks = spans.iter().map(|s| s.rank + 1).max().unwrap_or(0);
    let kinds: BTreeSet<ActionKind> = spans.iter().map(|s| s.action.kind()).collect();
    1 + ranks + kinds.len()
}

/// A self-contained SVG timeline of the spans.
///
/// One row per rank `0..=max rank` (top to bottom): the compute lane as the main row and the
/// four transfer lanes ([`Lane::ALL`] order) as thin sub-rows under it. A box per span, coloured
/// by its [`ActionKind`] (forward blue, recompute purple, backward red, backward-input orange,
/// backward-weight green, transfers grey), with a tooltip (`<title>`) naming the action and its
/// interval; compute boxes show their micro-batch number when it fits. A time axis with ticks
/// (unit s, ms or µs by the step's length), a legend of the kinds that occur, and the title
/// (XML-escaped). The output is deterministic.
///
/// # Errors
/// [`Error::InvalidArgument`] when a span's times are not finite, its start is negative, or it
/// ends before it starts.
pub fn svg_timeline(spans: &[TraceSpan], title: &str) -> Result<String> {
    validate("svg_timeline", spans)?;
    let ranks = spans.iter().map(|s| s.rank + 1).max().unwrap_or(0);
    let makespan = spans.iter().map(|s| s.end).fold(0.0f64, f64::max);
    let t_max = if makespan > 0.0 { makespan } else { 1.0 };
    let row_h = COMPUTE_H + 4.0 * (SUB_GAP + SUB_H) + ROW_GAP;
    let plot_w = SVG_WIDTH - SVG_LEFT - SVG_RIGHT;
    let height = SVG_TOP + ranks as f64 * row_h + AXIS_H;
    let x_of = |t: f64| SVG_LEFT + t / t_max * plot_w;
    let lane_y = |rank: usize, lane: Lane| -> (f64, f64) {
        let top = SVG_TOP + rank as f64 * row_h;
        match lane_index(lane) {
            0 => (top, COMPUTE_H),
            i => (
                top + COMPUTE_H + (i - 1) as f64 * (SUB_GAP + SUB_H) + SUB_GAP,
                SUB_H,
            ),
        }
    };
    let (unit, scale) = if t_max >= 1.0 {
        ("s", 1.0)
    } else if t_max >= 1e-3 {
        ("ms", 1e3)
    } else {
        ("µs", 1e6)
    };

    let mut o = String::new();
    o.push_str(&format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_WIDTH:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {SVG_WIDTH:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    ));
    o.push_str(&format!("<title>{}</title>\n", xml_escape(title)));
    o.push_str(&format!(
        "<rect class=\"bg\" x=\"0\" y=\"0\" width=\"{SVG_WIDTH:.0}\" height=\"{height:.0}\" fill=\"#ffffff\"/>\n"
    ));
    o.push_str(&format!(
        "<text x=\"{SVG_LEFT:.0}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{}</text>\n",
        xml_escape(title)
    ));

    // Legend: the kinds that occur, in ActionKind::ALL order.
    let kinds: BTreeSet<ActionKind> = spans.iter().map(|s| s.action.kind()).collect();
    let mut lx = SVG_LEFT;
    for kind in ActionKind::ALL
        .iter()
        .copied()
        .filter(|k| kinds.contains(k))
    {
        let (fill, _) = kind_colours(kind);
        let label = format!("{} {}", kind.label(), kind_name(kind));
        o.push_str(&format!(
            "<rect class=\"legend\" x=\"{lx:.2}\" y=\"34\" width=\"12\" height=\"12\" fill=\"{fill}\" stroke=\"#333333\" stroke-width=\"0.5\"/>\
             <text x=\"{:.2}\" y=\"44\">{}</text>\n",
            lx + 16.0,
            xml_escape(&label)
        ));
        lx += 16.0 + label.chars().count() as f64 * 6.5 + 14.0;
    }
    if spans.is_empty() {
        o.push_str(&format!(
            "<text x=\"{SVG_LEFT:.0}\" y=\"44\" fill=\"#666666\">(no spans)</text>\n"
        ));
    }

    // Row bands and rank labels.
    for r in 0..ranks {
        let top = SVG_TOP + r as f64 * row_h;
        let band = row_h - ROW_GAP;
        let fill = if r % 2 == 0 { "#f4f4f4" } else { "#fafafa" };
        o.push_str(&format!(
            "<rect class=\"row\" x=\"{SVG_LEFT:.0}\" y=\"{top:.2}\" width=\"{plot_w:.2}\" height=\"{band:.2}\" fill=\"{fill}\"/>\
             <text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"end\">rank {r}</text>\n",
            SVG_LEFT - 8.0,
            top + COMPUTE_H / 2.0 + 4.0
        ));
    }

    // Time axis.
    let axis_y = SVG_TOP + ranks as f64 * row_h;
    o.push_str(&format!(
        "<line x1=\"{SVG_LEFT:.0}\" y1=\"{axis_y:.2}\" x2=\"{:.2}\" y2=\"{axis_y:.2}\" stroke=\"#333333\"/>\n",
        SVG_LEFT + plot_w
    ));
    let step = nice_step(t_max, 10.0);
    let decimals = (-(step * scale).log10().floor()).max(0.0) as usize;
    let mut k = 0u32;
    loop {
        let t = f64::from(k) * step;
        if t > t_max * (1.0 + 1e-9) {
            break;
        }
        let x = x_of(t);
        o.push_str(&format!(
            "<line x1=\"{x:.2}\" y1=\"{axis_y:.2}\" x2=\"{x:.2}\" y2=\"{:.2}\" stroke=\"#333333\"/>\
             <line x1=\"{x:.2}\" y1=\"{SVG_TOP:.0}\" x2=\"{x:.2}\" y2=\"{axis_y:.2}\" stroke=\"#dddddd\" stroke-width=\"0.5\"/>\
             <text x=\"{x:.2}\" y=\"{:.2}\" text-anchor=\"middle\">{:.*}</text>\n",
            axis_y + 5.0,
            axis_y + 17.0,
            decimals,
            t * scale
        ));
        k += 1;
    }
    o.push_str(&format!(
        "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\">time ({unit})</text>\n",
        SVG_LEFT + plot_w / 2.0,
        axis_y + 33.0
    ));

    // Spans.
    for s in spans {
        let a = &s.action;
        let kind = a.kind();
        let (fill, text_fill) = kind_colours(kind);
        let (y, h) = lane_y(s.rank, s.lane);
        let x = x_of(s.start);
        let w = (x_of(s.end) - x).max(0.5);
        // Later model chunks (interleaving) are drawn paler, as in Megatron's figures.
        let opacity = 1.0 / (1.0 + 0.6 * a.chunk() as f64);
        let tip = format!(
            "rank {} {}: {} ({:.3}–{:.3} {unit})",
            s.rank,
            s.lane.name(),
            a,
            s.start * scale,
            s.end * scale
        );
        o.push_str(&format!(
            "<rect class=\"span\" x=\"{x:.2}\" y=\"{y:.2}\" width=\"{w:.2}\" height=\"{h:.2}\" fill=\"{fill}\" \
             fill-opacity=\"{opacity:.2}\" stroke=\"#222222\" stroke-width=\"0.4\"><title>{}</title></rect>\n",
            xml_escape(&tip)
        ));
        if s.lane == Lane::Compute {
            let label = a.mb().to_string();
            if w >= label.len() as f64 * 6.5 + 4.0 {
                o.push_str(&format!(
                    "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\" fill=\"{}\">{label}</text>\n",
                    x + w / 2.0,
                    y + h / 2.0 + 4.0,
                    if a.chunk() > 0 { "#222222" } else { text_fill }
                ));
            }
        }
    }
    o.push_str("</svg>\n");
    Ok(o)
}

/// Writes [`chrome_trace_json`] of the spans to `path`.
///
/// # Errors
/// The errors of [`chrome_trace_json`], and [`Error::Io`] naming the path and the I/O error
/// when the file cannot be written.
pub fn write_chrome_trace(path: &Path, spans: &[TraceSpan], title: &str) -> Result<()> {
    let json = chrome_trace_json(spans, title)?;
    write_file("write_chrome_trace", path, &json)
}

/// Writes [`svg_timeline`] of the spans to `path`.
///
/// # Errors
/// The errors of [`svg_timeline`], and [`Error::Io`] naming the path and the I/O error when the
/// file cannot be written.
pub fn write_svg(path: &Path, spans: &[TraceSpan], title: &str) -> Result<()> {
    let svg = svg_timeline(spans, title)?;
    write_file("write_svg", path, &svg)
}

fn write_file(op: &'static str, path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::Io {
        op,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(rank: usize, action: Action, start: f64, end: f64) -> TraceSpan {
        TraceSpan {
            rank,
            lane: Lane::of(&action),
            action,
            start,
            end,
        }
    }

    fn sample() -> Vec<TraceSpan> {
        vec![
            span(0, Action::Forward { mb: 0, chunk: 0 }, 0.0, 0.001),
            span(
                0,
                Action::SendAct {
                    mb: 0,
                    chunk: 0,
                    peer: 1,
                },
                0.001,
                0.0012,
            ),
            span(
                1,
                Action::RecvAct {
                    mb: 0,
                    chunk: 0,
                    peer: 0,
                },
                0.001,
                0.0012,
            ),
            span(1, Action::Forward { mb: 0, chunk: 1 }, 0.0012, 0.0022),
            span(0, Action::Forward { mb: 3, chunk: 0 }, 0.0025, 0.0035),
            span(1, Action::Backward { mb: 0, chunk: 1 }, 0.0022, 0.0042),
            span(
                1,
                Action::SendGrad {
                    mb: 0,
                    chunk: 1,
                    peer: 0,
                },
                0.0042,
                0.0044,
            ),
            span(
                0,
                Action::RecvGrad {
                    mb: 0,
                    chunk: 0,
                    peer: 1,
                },
                0.0042,
                0.0044,
            ),
            span(0, Action::Recompute { mb: 0, chunk: 0 }, 0.0035, 0.0045),
            span(0, Action::BackwardInput { mb: 0, chunk: 0 }, 0.0045, 0.0055),
            span(
                0,
                Action::BackwardWeight { mb: 0, chunk: 0 },
                0.0055,
                0.0065,
            ),
        ]
    }

    /// Structural JSON check: strings terminate, escapes are valid, braces and brackets balance
    /// (outside strings) and nest properly.
    fn check_json_structure(s: &str) {
        let mut stack = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => loop {
                    match chars.next().expect("unterminated string") {
                        '"' => break,
                        '\\' => {
                            let e = chars.next().expect("dangling escape");
                            match e {
                                '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => {}
                                'u' => {
                                    for _ in 0..4 {
                                        assert!(chars.next().unwrap().is_ascii_hexdigit());
                                    }
                                }
                                _ => panic!("bad escape \\{e}"),
                            }
                        }
                        c => assert!(c as u32 >= 0x20, "raw control char in string"),
                    }
                },
                '{' | '[' => stack.push(c),
                '}' => assert_eq!(stack.pop(), Some('{'), "unbalanced }}"),
                ']' => assert_eq!(stack.pop(), Some('['), "unbalanced ]"),
                _ => {}
            }
        }
        assert!(stack.is_empty(), "unclosed {stack:?}");
    }

    fn event_line<'a>(json: &'a str, name: &str) -> &'a str {
        let needle = format!("{{\"name\":\"{name}\"");
        json.lines()
            .find(|l| l.trim_start().starts_with(&needle))
            .unwrap_or_else(|| panic!("no event {name} in {json}"))
    }

    #[test]
    fn chrome_trace_structure_and_values() {
        let spans = sample();
        let json = chrome_trace_json(&spans, "1F1B pp=2").unwrap();
        check_json_structure(&json);
        assert!(json.starts_with("{\"traceEvents\":["));
        assert!(json.contains("\"displayTimeUnit\":\"ms\""));
        assert!(json.contains("\"otherData\":{\"title\":\"1F1B pp=2\"}"));
        assert_eq!(json.matches("\"ph\":\"X\"").count(), spans.len());
        assert_eq!(json.matches("\"process_name\"").count(), 2);
        assert!(json.contains("\"args\":{\"name\":\"rank 1\"}"));
        assert!(json.contains("\"args\":{\"name\":\"send act\"}"));
        assert!(json.contains("\"args\":{\"name\":\"compute\"}"));
        // Known span: F3 on rank 0, 2.5 ms .. 3.5 ms.
        let f3 = event_line(&json, "F3");
        assert!(f3.contains("\"cat\":\"F\""), "{f3}");
        assert!(
            f3.contains("\"ts\":2500,\"dur\":1000,\"pid\":0,\"tid\":0"),
            "{f3}"
        );
        assert!(f3.contains("\"args\":{\"mb\":3,\"chunk\":0}"), "{f3}");
        // Chunk suffix, and the transfer's lane and peer.
        let f0c1 = event_line(&json, "F0.c1");
        assert!(
            f0c1.contains("\"ts\":1200,\"dur\":1000,\"pid\":1,\"tid\":0"),
            "{f0c1}"
        );
        let sg = event_line(&json, "sG0.c1");
        assert!(sg.contains("\"pid\":1,\"tid\":3"), "{sg}");
        assert!(sg.contains("\"peer\":0}"), "{sg}");
    }

    #[test]
    fn chrome_trace_escapes_title() {
        let title = "a \"quoted\" <b> & back\\slash\nnew\u{1}";
        let json = chrome_trace_json(&sample(), title).unwrap();
        check_json_structure(&json);
        assert!(json.contains(r#""title":"a \"quoted\" <b> & back\\slash\nnew\u0001""#));
    }

    #[test]
    fn chrome_trace_empty() {
        let json = chrome_trace_json(&[], "").unwrap();
        check_json_structure(&json);
        assert_eq!(json.matches("\"ph\"").count(), 0);
        assert!(json.contains("\"traceEvents\":["));
    }

    #[test]
    fn bad_times_are_rejected() {
        let f = Action::Forward { mb: 0, chunk: 0 };
        for (start, end) in [
            (f64::NAN, 1.0),
            (0.0, f64::INFINITY),
            (-1.0, 1.0),
            (2.0, 1.0),
        ] {
            let spans = [span(0, f, start, end)];
            assert!(matches!(
                chrome_trace_json(&spans, "t"),
                Err(Error::InvalidArgument { .. })
            ));
            assert!(matches!(
                svg_timeline(&spans, "t"),
                Err(Error::InvalidArgument { .. })
            ));
        }
        // Zero-length spans are fine.
        assert!(chrome_trace_json(&[span(0, f, 1.0, 1.0)], "t").is_ok());
    }

    #[test]
    fn svg_rects_labels_and_legend() {
        let spans = sample();
        let svg = svg_timeline(&spans, "1F1B <pp=2> & \"x\"").unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect class=\"span\"").count(), spans.len());
        // Background + 2 rank rows + 9 kinds in the legend.
        assert_eq!(svg_extra_rects(&spans), 1 + 2 + 9);
        assert_eq!(
            svg.matches("<rect").count(),
            spans.len() + svg_extra_rects(&spans)
        );
        assert_eq!(svg.matches("<rect class=\"legend\"").count(), 9);
        // Title escaped, never raw.
        assert!(svg.contains("1F1B &lt;pp=2&gt; &amp; &quot;x&quot;"));
        assert!(!svg.contains("<pp=2>"));
        // Micro-batch labels in compute boxes (1 ms of a 6.5 ms step is ~170 px wide).
        assert!(svg.contains(">3</text>"));
        assert!(svg.contains(">0</text>"));
        assert!(svg.contains("rank 1</text>"));
        assert!(svg.contains("time (ms)"));
        // Distinct colours for the compute kinds.
        let fills: BTreeSet<&str> = ActionKind::ALL
            .iter()
            .filter(|k| k.is_compute())
            .map(|&k| kind_colours(k).0)
            .collect();
        assert_eq!(fills.len(), 5);
        // Deterministic.
        assert_eq!(svg, svg_timeline(&spans, "1F1B <pp=2> & \"x\"").unwrap());
        // Tags balance (every element is closed or self-closing).
        let opens = svg.matches("<rect").count() + svg.matches("<text").count();
        let closes = svg.matches("</rect>").count()
            + svg.matches("</text>").count()
            + svg.matches("/>").count();
        assert_eq!(opens + svg.matches("<line").count(), closes);
    }

    #[test]
    fn svg_omits_labels_that_do_not_fit() {
        let mut spans = vec![span(0, Action::Forward { mb: 7, chunk: 0 }, 0.0, 1.0)];
        // A 1 µs box in a 1 s step is far below a pixel.
        spans.push(span(
            0,
            Action::Backward { mb: 42, chunk: 0 },
            1.0,
            1.000001,
        ));
        let svg = svg_timeline(&spans, "t").unwrap();
        assert!(svg.contains(">7</text>"));
        assert!(!svg.contains(">42</text>"));
        assert!(svg.contains("time (s)"));
    }

    #[test]
    fn svg_empty() {
        let svg = svg_timeline(&[], "empty").unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), svg_extra_rects(&[]));
        assert_eq!(svg.matches("<rect").count(), 1);
        assert!(svg.contains("(no spans)"));
    }

    #[test]
    fn writers_write_files_and_report_bad_paths() {
        let dir = std::env::temp_dir().join(format!("ferrotron-trace-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let spans = sample();
        let json_path = dir.join("t.json");
        let svg_path = dir.join("t.svg");
        write_chrome_trace(&json_path, &spans, "t").unwrap();
        write_svg(&svg_path, &spans, "t").unwrap();
        assert_eq!(
            std::fs::read_to_string(&json_path).unwrap(),
            chrome_trace_json(&spans, "t").unwrap()
        );
        assert_eq!(
            std::fs::read_to_string(&svg_path).unwrap(),
            svg_timeline(&spans, "t").unwrap()
        );
        let bad = dir.join("no-such-dir").join("t.json");
        match write_chrome_trace(&bad, &spans, "t") {
            Err(Error::Io { path, .. }) => assert!(path.contains("no-such-dir")),
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(matches!(
            write_svg(&bad, &spans, "t"),
            Err(Error::Io { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn nice_steps() {
        assert!((nice_step(10.0, 10.0) - 1.0).abs() < 1e-12);
        assert!((nice_step(6.5e-3, 10.0) - 1e-3).abs() < 1e-15);
        assert!((nice_step(0.13, 10.0) - 0.02).abs() < 1e-12);
        assert!((nice_step(40.0, 10.0) - 5.0).abs() < 1e-12);
    }
}
