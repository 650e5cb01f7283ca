//! Line charts drawn as inline SVG: the HTML report must open anywhere, offline, without
//! JavaScript, so no charting library and nothing fetched. Axes with ticks and labels, one
//! path per series, translucent rectangles for verdict periods, a legend in HTML beside it.

use std::{
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use crate::domain::time::{clock, thousands};

const W: f64 = 900.0;
/// Height of a full chart; the per-process fd charts are shorter (`SMALL`).
pub const TALL: f64 = 260.0;
pub const SMALL: f64 = 180.0;
const LEFT: f64 = 70.0;
/// Room for the last time label, centered on its tick.
const RIGHT: f64 = 34.0;
const TOP: f64 = 14.0;
const BOTTOM: f64 = 34.0;

/// One series: (seconds since the epoch, value) in time order.
pub struct Line {
    pub label: String,
    pub color: &'static str,
    pub dashed: bool,
    pub points: Vec<(f64, f64)>,
}

/// A verdict period to shade, seconds since the epoch.
pub struct Shade {
    pub start: f64,
    pub end: f64,
    pub warning: bool,
    pub label: String,
}

pub const PLATEAU_FILL: &str = "#d62728";
pub const WARNING_FILL: &str = "#ff9f1c";

/// Colors of the series, told apart in print too (the dashed limit lines reuse their
/// process's color).
pub const PALETTE: [&str; 8] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"];

/// HTML text or attribute value with every character that could end it escaped: record text
/// (comm names, summaries, destinations) is untrusted.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A chart: `<figure>` with the `<svg data-chart="name">` and its legend. `x` is the time range
/// shown (the report's span), so every chart of a report lines up.
pub fn line_chart(
    name: &str,
    title: &str,
    y_label: &str,
    x: (f64, f64),
    lines: &[Line],
    shades: &[Shade],
    height: f64,
) -> String {
    let (x0, mut x1) = x;
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y_max = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).filter(|v| v.is_finite()).fold(0.0, f64::max);
    let (step, top) = y_scale(y_max);
    let pw = W - LEFT - RIGHT;
    let ph = height - TOP - BOTTOM;
    let sx = |t: f64| LEFT + (t - x0) / (x1 - x0) * pw;
    let sy = |v: f64| TOP + ph - (v / top) * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<figure><figcaption>{}</figcaption><svg data-chart="{}" viewBox="0 0 {W} {height}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        esc(title),
        esc(name),
        esc(title)
    );
    for sh in shades {
        let a = sx(sh.start).clamp(LEFT, LEFT + pw);
        let b = sx(sh.end).clamp(LEFT, LEFT + pw);
        // A period shorter than a pixel is still shown.
        let width = (b - a).max(2.0);
        let fill = if sh.warning { WARNING_FILL } else { PLATEAU_FILL };
        let _ = write!(
            s,
            r#"<rect class="period" x="{a:.1}" y="{TOP}" width="{width:.1}" height="{ph}" fill="{fill}" fill-opacity="0.13"><title>{}</title></rect>"#,
            esc(&sh.label)
        );
    }
    // Horizontal grid and y labels.
    // Counted, not stepped until the top: float steps could overshoot or never get there.
    let rows = ((top / step).round() as usize).min(10);
    for i in 0..=rows {
        let v = step * i as f64;
        let y = sy(v);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            tick_label(v, step)
        );
    }
    // Time axis.
    let xs = time_step(x1 - x0);
    let first = (x0 / xs).ceil() * xs;
    for i in 0..=8 {
        let t = first + xs * i as f64;
        if t > x1 {
            break;
        }
        let x = sx(t);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"##,
            TOP + ph,
            TOP + ph + 4.0,
            TOP + ph + 17.0,
            time_label(t)
        );
    }
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{:.1}" stroke="#444"/><line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#444"/>"##,
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph
    );
    let _ = write!(
        s,
        r#"<text class="axis" transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle">{}</text><text class="axis" x="{:.1}" y="{:.1}" text-anchor="middle">time (UTC)</text>"#,
        TOP + ph / 2.0,
        esc(y_label),
        LEFT + pw / 2.0,
        height - 2.0
    );
    let mut drawn = 0;
    for l in lines {
        let mut d = String::new();
        for (i, (t, v)) in l.points.iter().filter(|(t, v)| t.is_finite() && v.is_finite()).enumerate() {
            let _ = write!(d, "{}{:.1} {:.1} ", if i == 0 { "M" } else { "L" }, sx(*t), sy(*v));
        }
        if d.is_empty() {
            continue;
        }
        if l.points.len() == 1 {
            // One reading: a dot (a zero-length segment with round caps).
            d.push_str("l 0 0");
        }
        let dash = if l.dashed { r#" stroke-dasharray="6 4""# } else { "" };
        let _ = write!(
            s,
            r#"<path class="series" d="{}" fill="none" stroke="{}" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round"{dash}><title>{}</title></path>"#,
            d.trim_end(),
            l.color,
            esc(&l.label)
        );
        drawn += 1;
    }
    if drawn == 0 {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="empty">no data</text>"#,
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    s.push_str("</svg>");
    s.push_str(&legend(lines, shades));
    s.push_str("</figure>\n");
    s
}

fn legend(lines: &[Line], shades: &[Shade]) -> String {
    let mut s = String::from(r#"<ul class="legend">"#);
    for l in lines {
        let style = if l.dashed { "border-top-style:dashed" } else { "border-top-style:solid" };
        let _ = write!(
            s,
            r#"<li><span class="swatch" style="border-top-color:{};{style}"></span>{}</li>"#,
            l.color,
            esc(&l.label)
        );
    }
    for (warning, label) in [(false, "verdict (plateau)"), (true, "warning")] {
        if shades.iter().any(|s| s.warning == warning) {
            let fill = if warning { WARNING_FILL } else { PLATEAU_FILL };
            let _ = write!(s, r#"<li><span class="shade" style="background:{fill}"></span>{label}</li>"#);
        }
    }
    s.push_str("</ul>");
    s
}

/// The y axis: a round step (1, 2, 2.5 or 5 × 10^k) giving about 4 gridlines, and the top.
fn y_scale(max: f64) -> (f64, f64) {
    // Below a millionth (or not a number) the scale is 0..1: no series is that small but
    // zero, and a step that rounds to 0 would never reach the top.
    let max = if max.is_finite() && max > 1e-6 { max } else { 1.0 };
    let raw = max / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let top = (max / step).ceil() * step;
    if !(step.is_finite() && step > 0.0 && top.is_finite()) {
        return (max, max);
    }
    (step, top)
}

fn tick_label(v: f64, step: f64) -> String {
    if step >= 1.0 && v.fract() == 0.0 {
        thousands(v as u64)
    } else if step >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Seconds between time ticks: a round step giving at most 7 labels.
fn time_step(range: f64) -> f64 {
    const STEPS: [f64; 16] =
        [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0];
    STEPS.iter().copied().find(|s| range / s <= 7.0).unwrap_or_else(|| (range / 7.0 / 86400.0).ceil() * 86400.0)
}

fn time_label(secs: f64) -> String {
    match Duration::try_from_secs_f64(secs).ok().and_then(|d| SystemTime::UNIX_EPOCH.checked_add(d)) {
        Some(t) => clock(t),
        None => "?".to_string(),
    }
}
