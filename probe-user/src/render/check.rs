//! `conntrace check`'s checklist as one JSON document or as text.

use serde_json::{json, Value};

use crate::diagnosis::check::Item;

pub fn to_json(items: &[Item]) -> Value {
    json!({"items": items.iter().map(|i| json!({
        "id": i.id, "status": i.status.as_str(), "value": i.value, "usage": i.usage, "message": i.message, "fix": i.fix,
    })).collect::<Vec<_>>()})
}

pub fn to_text(items: &[Item]) -> String {
    let mut out = String::new();
    for i in items {
        out.push_str(&format!(
            "{:<4} {:<22} {:<16} {}\n",
            i.status.as_str().to_uppercase(),
            i.id,
            i.usage.as_deref().unwrap_or("-"),
            i.message
        ));
        if let Some(f) = &i.fix {
            out.push_str(&format!("     fix: {f}\n"));
        }
    }
    out
}
