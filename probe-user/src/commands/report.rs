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
    // Streamed into the builder: a recording directory of 100 MB holds gigabytes of lines.
    let mut b = ReportBuilder::new(Filter { since: args.since, until: args.until, pid: args.pid });
    let read = record::each_line(&args.paths, &mut |_, v| b.add(&v));
    for w in &read.warnings {
        eprintln!("conntrace: {w}");
    }
    if read.lines_read == 0 {
        let names: Vec<String> = args.paths.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "conntrace: nothing could be read from {}: give a directory written by `watch --record` or its \
             conntrace-*.ndjson.gz files",
            names.join(", ")
        );
        return Ok(1);
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
