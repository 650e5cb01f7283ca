//! `conntrace report DIR|FILE...`: a recording (the `record` source) read back into the same
//! report `watch` prints at its end, as text, one JSON document, or an HTML file.

use anyhow::{Context as _, Result};

use crate::{
    cli::ReportArgs,
    record,
    report::{self, Filter, ReportBuilder},
};

/// Returns the exit code: 0 when something was read (files that could not be are named on
/// stderr), 1 when nothing could be.
pub fn report(args: ReportArgs) -> Result<u8> {
    let read = record::read_paths(&args.paths);
    for w in &read.warnings {
        eprintln!("conntrace: {w}");
    }
    if read.lines.is_empty() {
        let names: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "conntrace: nothing could be read from {}: give a directory written by `watch --record` or its \
             conntrace-*.ndjson.gz files",
            names.join(", ")
        );
        return Ok(1);
    }
    let mut b = ReportBuilder::new(Filter { since: args.since, until: args.until, pid: args.pid });
    for l in &read.lines {
        b.add(&l.value);
    }
    let r = b.finish();
    if let Some(out) = &args.html {
        std::fs::write(out, report::to_html(&r)).with_context(|| {
            format!("cannot write the HTML report to {}: choose another --html path", out.display())
        })?;
    }
    if args.json {
        println!("{}", report::to_json(&r));
    } else {
        print!("{}", report::to_text(&r));
    }
    Ok(0)
}
