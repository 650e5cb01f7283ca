//! The layers of `lib.rs` import only the layers above them (table below): a module that reaches down
//! (the domain reading /proc, a rule calling the loader, the renderer driving the watch loop)
//! fails here, so the pipeline stays readable top to bottom.

use std::{fs, path::Path};

/// Each layer (a folder) and what it may import. Diagnosis reaches the machine only through
/// its `Evidence` trait, so it names neither `system` nor `kernel`.
const LAYERS: [(&str, &[&str]); 9] = [
    ("domain", &["domain"]),
    ("system", &["domain", "system"]),
    ("kernel", &["domain", "system", "kernel"]),
    ("diagnosis", &["domain", "diagnosis"]),
    ("render", &["domain", "diagnosis", "render"]),
    ("record", &["domain", "record"]),
    // Reads records back: the contract's JSON is its input, so it needs no engine type.
    ("report", &["domain", "report"]),
    ("sinks", &["domain", "render", "record", "report", "diagnosis", "sinks"]),
    (
        "commands",
        &["domain", "system", "kernel", "diagnosis", "render", "record", "report", "sinks", "commands", "cli"],
    ),
];

/// Top-level modules a layer's files name through `crate::`.
fn crate_paths(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in src.match_indices("crate::") {
        let rest = &src[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::..., b, ...}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                if depth == 0 {
                    item.push(c);
                }
            }
            out.push(item);
        } else {
            out.push(rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect());
        }
    }
    out.iter().map(|p| p.trim().split("::").next().unwrap_or("").trim().to_string()).filter(|p| !p.is_empty()).collect()
}

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("layer folder").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    out
}

#[test]
fn layers_import_only_the_layers_above_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (layer, may_use) in LAYERS {
        for file in files(&src.join(layer)) {
            let text = fs::read_to_string(&file).expect("readable source");
            for used in crate_paths(&text) {
                if !may_use.contains(&used.as_str()) {
                    wrong.push(format!("{} uses crate::{used}", file.strip_prefix(&src).unwrap_or(&file).display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering (see lib.rs):\n{}", wrong.join("\n"));
}

#[test]
fn the_check_reads_grouped_and_plain_paths() {
    let src = "use crate::{domain::model::{self, X}, system::facts};\nlet x = crate::kernel::probe::load();";
    assert_eq!(crate_paths(src), ["domain", "system", "kernel"]);
}
