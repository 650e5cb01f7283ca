//! The report's charts from its series: failures per cause, open fds against RLIMIT_NOFILE,
//! TIME_WAIT creation rate, listen drops, and ports in use per destination when verdict
//! evidence had them. Every chart spans the whole report and shades the verdict periods.

use super::{
    families::FAMILIES,
    svg::{line_chart, Line, Shade, PALETTE, SMALL, TALL},
    Period, Report,
};

/// The charts' HTML, in the order of the page.
pub fn charts(r: &Report) -> String {
    let Some(span) = &r.span else { return String::new() };
    let x = (span.start.secs(), span.end.secs());
    let shade = |p: &Period| Shade {
        start: p.start.secs(),
        end: p.end.secs(),
        warning: p.warning,
        label: format!("{} pid {}", p.cause, p.pid),
    };
    let shades: Vec<Shade> = r.series.periods.iter().map(shade).collect();
    // Spacing of the interval points: a gap longer than two of them had no sample, so
    // nothing failed there and the count lines drop to zero instead of bridging it.
    let step = r.interval_s.unwrap_or(1.0) * r.series.bucket.max(1) as f64;
    let per_interval = |get: &dyn Fn(&super::IntervalPoint) -> f64| -> Vec<(f64, f64)> {
        zero_gaps(r.series.intervals.iter().map(|p| (p.ts.secs(), get(p))).collect(), step)
    };
    let mut out = String::new();

    let mut lines: Vec<Line> = FAMILIES
        .iter()
        .enumerate()
        .filter(|(_, (_, get))| get(&r.failures) > 0)
        .map(|(i, (name, get))| Line {
            label: (*name).to_string(),
            color: PALETTE[i % PALETTE.len()],
            dashed: false,
            points: per_interval(&|p| get(&p.failures) as f64),
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line {
            label: "all causes".to_string(),
            color: PALETTE[0],
            dashed: false,
            points: per_interval(&|p| p.failures.total() as f64),
        });
    }
    let unit = if r.series.bucket > 1 { "failures per point" } else { "failures per interval" };
    out += &line_chart("failures", "Failures per interval, by cause", unit, x, &lines, &shades, TALL);

    // One chart per process: limits differ by orders of magnitude (512 and 65,536 on one axis
    // would flatten the process that hit its limit).
    for (i, f) in r.series.fds.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let who = format!("{}[{}]", f.comm, f.pid);
        let reading = |get: fn(&super::FdPoint) -> Option<u64>| -> Vec<(f64, f64)> {
            f.points.iter().filter_map(|p| Some((p.ts.secs(), get(p)? as f64))).collect()
        };
        let mut lines =
            vec![Line { label: format!("{who} open fds"), color, dashed: false, points: reading(|p| p.open_fds) }];
        let limit = reading(|p| p.nofile_limit);
        if !limit.is_empty() {
            lines.push(Line { label: format!("{who} RLIMIT_NOFILE"), color, dashed: true, points: limit });
        }
        let title = format!("{who}: open file descriptors against RLIMIT_NOFILE (dashed)");
        // Shaded: this process's verdicts only.
        let own: Vec<Shade> = r.series.periods.iter().filter(|p| p.pid == f.pid).map(shade).collect();
        out += &line_chart("fds", &title, "fds", x, &lines, &own, SMALL);
    }
    if r.series.fds.is_empty() {
        out += &line_chart("fds", "Open file descriptors against RLIMIT_NOFILE", "fds", x, &[], &shades, SMALL);
    }

    let tw = Line {
        label: "TIME_WAIT created per second".to_string(),
        color: PALETTE[2],
        dashed: false,
        points: per_interval(&|p| p.time_wait_per_s),
    };
    out += &line_chart("time_wait", "TIME_WAIT sockets created per second", "per second", x, &[tw], &shades, TALL);

    let drops = Line {
        label: "listen drops".to_string(),
        color: PALETTE[3],
        dashed: false,
        points: per_interval(&|p| p.failures.listen_drops as f64),
    };
    out += &line_chart("listen_drops", "Listen drops (accept and SYN queues full)", unit, x, &[drops], &shades, TALL);

    if !r.series.ports.is_empty() {
        let mut lines = Vec::new();
        for (i, s) in r.series.ports.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let pts =
                |get: fn(&super::PortPoint) -> u64| s.points.iter().map(|p| (p.ts.secs(), get(p) as f64)).collect();
            lines.push(Line {
                label: format!("{} in use", s.destination),
                color,
                dashed: false,
                points: pts(|p| p.in_use),
            });
            lines.push(Line {
                label: format!("{} usable", s.destination),
                color,
                dashed: true,
                points: pts(|p| p.usable),
            });
        }
        let title = "Ephemeral ports in use per destination (from verdict evidence; usable dashed)";
        out += &line_chart("port_use", title, "ports", x, &lines, &shades, TALL);
    }
    out
}

/// Points with zeros added at the edges of every gap longer than two steps.
fn zero_gaps(points: Vec<(f64, f64)>, step: f64) -> Vec<(f64, f64)> {
    if !(step.is_finite() && step > 0.0) {
        return points;
    }
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(points.len());
    for (t, v) in points {
        if let Some(&(pt, pv)) = out.last() {
            if t - pt > 2.0 * step {
                if pv != 0.0 {
                    out.push((pt + step, 0.0));
                }
                if v != 0.0 {
                    out.push((t - step, 0.0));
                }
            }
        }
        out.push((t, v));
    }
    out
}
