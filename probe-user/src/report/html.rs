//! The report as one self-contained HTML file: inline CSS and SVG, no script, nothing fetched
//! (it is opened from a ticket or a laptop, often offline). Every text from the records is
//! escaped: comm names, summaries and destinations are whatever the recorded host said.

use std::fmt::Write as _;

use super::{
    charts::charts,
    svg::esc,
    text::{at_text, compact, duration, failed_with, families_text, fds_text, headline, value_text, what, when},
    Report,
};
use crate::domain::time::{rfc3339, thousands};

/// Rows of the per-process and per-destination tables; the JSON report has them all.
const TABLE_ROWS: usize = 200;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;padding:0 16px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.headline{font-size:16px;font-weight:600}.meta{color:#555}
figure{margin:16px 0}figcaption{font-weight:600;margin-bottom:4px}svg{width:100%;height:auto;background:#fff}
svg text{font-size:11px;fill:#444}svg .axis{font-size:12px}svg .empty{font-size:14px;fill:#999}
.legend{list-style:none;padding:0;margin:4px 0 0 70px;display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12px}
.swatch{display:inline-block;width:22px;border-top-width:3px;vertical-align:middle;margin-right:5px}
.shade{display:inline-block;width:14px;height:12px;opacity:.3;vertical-align:middle;margin-right:5px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.warning{color:#a35a00}.plateau{color:#b00}ul.fix{margin:4px 0 0 0;padding-left:18px}.note{color:#666;font-size:13px}
code{font-size:12px}
";

/// One self-contained HTML5 document.
pub fn to_html(r: &Report) -> String {
    let mut s = String::new();
    let host = r.sessions.iter().rev().find_map(|s| s.hostname.clone());
    let title = match (&host, &r.span) {
        (Some(h), Some(span)) => format!("conntrace report: {h}, {}", rfc3339(span.start.0)),
        (None, Some(span)) => format!("conntrace report: {}", rfc3339(span.start.0)),
        _ => "conntrace report".to_string(),
    };
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    // The text's headline introduces the list below it; here the timeline is further down.
    let _ = writeln!(s, "<p class=\"headline\">{}</p>", esc(headline(r).trim_end_matches(':')));
    let mut meta = Vec::new();
    if let Some(span) = &r.span {
        meta.push(format!("{} to {} ({})", rfc3339(span.start.0), rfc3339(span.end.0), duration(span.seconds)));
    }
    meta.push(format!("{} samples, {} events", thousands(r.samples), thousands(r.events)));
    if r.failures.total() > 0 {
        meta.push(format!("failures by cause: {}", families_text(r)));
    }
    if r.skipped > 0 {
        meta.push(format!("{} records skipped (no ts or pid)", thousands(r.skipped)));
    }
    let _ = writeln!(s, "<p class=\"meta\">{}</p>", esc(&meta.join("; ")));
    s.push_str(&charts(r));
    timeline(&mut s, r);
    processes(&mut s, r);
    destinations(&mut s, r);
    limits(&mut s, r);
    sessions(&mut s, r);
    s.push_str("</body>\n</html>\n");
    s
}

fn timeline(s: &mut String, r: &Report) {
    s.push_str("<h2>Verdict timeline</h2>\n");
    if r.timeline.is_empty() {
        s.push_str("<p class=\"note\">No verdict.</p>\n");
        return;
    }
    s.push_str("<table><tr><th>when</th><th>what</th><th>summary and fix</th></tr>\n");
    for e in &r.timeline {
        let class = if e.warning { "warning" } else { "plateau" };
        let _ = write!(
            s,
            "<tr><td class=\"n\">{}</td><td class=\"{class}\">{}{}</td><td>{}",
            esc(&when(e)),
            if e.warning { "warning: " } else { "" },
            esc(&what(e)),
            esc(&e.summary)
        );
        if !e.fix.is_empty() {
            s.push_str("<ul class=\"fix\">");
            for f in &e.fix {
                let _ = write!(s, "<li>fix: {}</li>", esc(f));
            }
            s.push_str("</ul>");
        }
        s.push_str("</td></tr>\n");
    }
    s.push_str("</table>\n");
}

fn processes(s: &mut String, r: &Report) {
    if r.processes.is_empty() {
        return;
    }
    s.push_str(
        "<h2>Per process</h2>\n<table><tr><th>pid</th><th>comm</th><th>failures</th><th>connects</th>\
         <th>ok</th><th>TIME_WAIT</th><th>fds max/limit</th><th>failed with</th></tr>\n",
    );
    for p in r.processes.iter().take(TABLE_ROWS) {
        let c = |k: &str| thousands(p.counters.get(k).copied().unwrap_or(0));
        let _ = writeln!(
            s,
            "<tr><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            p.pid,
            esc(&p.comm),
            thousands(p.failures),
            c("connect_attempts"),
            c("connect_ok"),
            c("time_wait_created"),
            fds_text(p),
            esc(&failed_with(p))
        );
    }
    s.push_str("</table>\n");
    more(s, r.processes.len(), "processes");
}

fn more(s: &mut String, n: usize, what: &str) {
    if n > TABLE_ROWS {
        let _ = writeln!(
            s,
            "<p class=\"note\">… and {} more {what} (in the JSON report)</p>",
            thousands((n - TABLE_ROWS) as u64)
        );
    }
}

fn destinations(s: &mut String, r: &Report) {
    if r.destinations.is_empty() {
        return;
    }
    s.push_str(
        "<h2>Per destination</h2>\n<p class=\"note\">Failure events toward each destination, each with the \
         ones suppressed after it.</p>\n<table><tr><th>destination</th><th>failures</th><th>events</th>\
         <th>ports peak</th><th>by kind</th><th>verdicts</th><th>pids</th></tr>\n",
    );
    for d in r.destinations.iter().take(TABLE_ROWS) {
        let kinds: Vec<String> = d.by_kind.iter().map(|(k, n)| format!("{k} {}", thousands(*n))).collect();
        let peak = d.peak_port_use.map(|p| format!("{}/{}", thousands(p.in_use), thousands(p.usable)));
        let pids: Vec<String> = d.pids.iter().map(u32::to_string).collect();
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.destination),
            thousands(d.failures),
            thousands(d.events),
            peak.unwrap_or_else(|| "-".to_string()),
            esc(&kinds.join(", ")),
            esc(&d.verdicts.join(", ")),
            pids.join(", ")
        );
    }
    s.push_str("</table>\n");
    more(s, r.destinations.len(), "destinations");
}

fn limits(s: &mut String, r: &Report) {
    let l = &r.limits;
    s.push_str("<h2>Limits</h2>\n");
    if l.values.is_empty() {
        s.push_str("<p class=\"note\">None recorded (no header record with limits).</p>\n");
        return;
    }
    let _ = writeln!(s, "<p class=\"note\">From the header of {}.</p>", esc(&at_text(l.from)));
    s.push_str("<table><tr><th>limit</th><th>value</th></tr>\n");
    for (name, v) in &l.values {
        let _ = writeln!(s, "<tr><td><code>{}</code></td><td>{}</td></tr>", esc(name), esc(&value_text(v)));
    }
    s.push_str("</table>\n");
    if !l.changes.is_empty() {
        s.push_str("<ul>");
        for c in &l.changes {
            let _ = write!(
                s,
                "<li>changed at {}: <code>{}</code> {} → {}</li>",
                esc(&at_text(c.at)),
                esc(&c.name),
                esc(&value_text(&c.from)),
                esc(&value_text(&c.to))
            );
        }
        s.push_str("</ul>\n");
    }
}

fn sessions(s: &mut String, r: &Report) {
    if r.sessions.is_empty() {
        return;
    }
    s.push_str(
        "<h2>Sessions</h2>\n<table><tr><th>start</th><th>host</th><th>kernel</th><th>conntrace</th>\
         <th>attach</th><th>boot id</th><th>hooks (signal mode)</th></tr>\n",
    );
    for x in &r.sessions {
        let opt = |v: &Option<String>| esc(v.as_deref().unwrap_or("-"));
        let hooks: Vec<String> = x.signals.iter().map(|(sig, m)| format!("{sig} {}", m.join("→"))).collect();
        let start = x.start.map(|t| rfc3339(t.0)).unwrap_or_else(|| "?".to_string());
        let start = if x.header { start } else { format!("{start} (no header record)") };
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&start),
            opt(&x.hostname),
            opt(&x.kernel),
            opt(&x.version),
            esc(&x.attach.as_ref().map(compact).unwrap_or_else(|| "-".to_string())),
            opt(&x.boot_id),
            esc(&hooks.join(", "))
        );
    }
    s.push_str("</table>\n");
}
