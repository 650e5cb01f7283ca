//! Parser for tracefs `format` files: the record layout of a classic tracepoint. The kernel
//! programs read classic tracepoint records at fixed offsets; before attaching, user space
//! checks those offsets against the running kernel's format file.

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldLayout {
    pub offset: usize,
    pub size: usize,
}

/// Field name → layout, from lines like
/// `field:const void * skaddr;<TAB>offset:8;<TAB>size:8;<TAB>signed:0;`.
pub fn parse(format: &str) -> HashMap<String, FieldLayout> {
    let mut out = HashMap::new();
    for line in format.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let Some(decl) = parts.next() else {
            continue;
        };
        // The name is the last word of the declaration, without any array suffix.
        let name = decl.rsplit([' ', '*']).next().unwrap_or("");
        let name = name.split('[').next().unwrap_or("").to_string();
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        if let (Some(offset), Some(size)) = (offset, size) {
            if !name.is_empty() {
                out.insert(name, FieldLayout { offset, size });
            }
        }
    }
    out
}

/// Checks that every `(name, offset, size)` matches; returns the first mismatch.
pub fn check(format: &str, expected: &[(&str, usize, usize)]) -> Result<(), String> {
    let fields = parse(format);
    for (name, offset, size) in expected {
        match fields.get(*name) {
            Some(f) if f.offset == *offset && f.size == *size => {}
            Some(f) => {
                return Err(format!("field {name} is at offset {} size {}, expected {offset}/{size}", f.offset, f.size))
            }
            None => return Err(format!("field {name} missing")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_STATE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
";

    #[test]
    fn parses_fields() {
        let f = parse(SET_STATE);
        assert_eq!(f["skaddr"], FieldLayout { offset: 8, size: 8 });
        assert_eq!(f["newstate"], FieldLayout { offset: 20, size: 4 });
        assert_eq!(f["saddr_v6"], FieldLayout { offset: 40, size: 16 });
        assert_eq!(f["common_pid"], FieldLayout { offset: 4, size: 4 });
    }

    #[test]
    fn check_reports_mismatch() {
        assert!(check(SET_STATE, &[("skaddr", 8, 8), ("oldstate", 16, 4)]).is_ok());
        assert!(check(SET_STATE, &[("oldstate", 12, 4)]).unwrap_err().contains("offset 16"));
        assert!(check(SET_STATE, &[("sport", 24, 2)]).unwrap_err().contains("missing"));
    }
}
