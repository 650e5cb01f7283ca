//! A small reader for the kernel's BTF (/sys/kernel/btf/vmlinux): enough to find struct
//! member offsets at load time, so no offset from the build machine's kernel is ever baked in.
//!
//! Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst. Anonymous struct/union
//! members are searched recursively, as `skc_num` and friends live inside anonymous unions of
//! `struct sock_common`.

use anyhow::{bail, Context as _, Result};

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Size for INT/STRUCT/UNION/ENUM/FLOAT, referenced type for PTR/TYPEDEF/modifiers/FUNC.
    size_or_type: u32,
    /// ARRAY: (element type, number of elements).
    array: Option<(u32, u32)>,
    /// FUNC_PROTO: number of parameters.
    params: usize,
    members: Vec<Member>,
    /// ENUM/ENUM64: (name offset, value).
    /// (name, value): i128 holds every signed and unsigned 32- and 64-bit value.
    enumerators: Vec<(u32, i128)>,
}

/// Where a member sits and how big it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
    pub bitfield: bool,
}

pub struct Btf {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    strings: Vec<u8>,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    let s = b.get(off..off + 2).context("BTF truncated")?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    let s = b.get(off..off + 4).context("BTF truncated")?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Btf {
    pub const VMLINUX: &'static str = "/sys/kernel/btf/vmlinux";

    pub fn from_sys_fs() -> Result<Self> {
        let bytes = std::fs::read(Self::VMLINUX)
            .with_context(|| format!("reading {} (kernel built without CONFIG_DEBUG_INFO_BTF?)", Self::VMLINUX))?;
        Self::parse(&bytes)
    }

    /// Parses little-endian BTF (the only byte order conntrace's targets have).
    pub fn parse(b: &[u8]) -> Result<Self> {
        if u16_at(b, 0)? != MAGIC {
            bail!("not little-endian BTF (bad magic)");
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let type_off = u32_at(b, 8)? as usize;
        let type_len = u32_at(b, 12)? as usize;
        let str_off = u32_at(b, 16)? as usize;
        let str_len = u32_at(b, 20)? as usize;
        let types_start = hdr_len + type_off;
        let tb = b.get(types_start..types_start + type_len).context("BTF type section out of bounds")?;
        let strings =
            b.get(hdr_len + str_off..hdr_len + str_off + str_len).context("BTF string section out of bounds")?.to_vec();

        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            size_or_type: 0,
            array: None,
            params: 0,
            members: Vec::new(),
            enumerators: Vec::new(),
        }];
        let mut p = 0usize;
        while p < tb.len() {
            let (t, next) = Self::parse_type(tb, p)?;
            types.push(t);
            p = next;
        }
        Ok(Btf { types, strings })
    }

    /// One type record at offset `p` of the type section: the type and the offset of the
    /// next record.
    fn parse_type(tb: &[u8], mut p: usize) -> Result<(Type, usize)> {
        let name_off = u32_at(tb, p)?;
        let info = u32_at(tb, p + 4)?;
        let size_or_type = u32_at(tb, p + 8)?;
        p += 12;
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 == 1;
        let params = if kind == KIND_FUNC_PROTO { vlen } else { 0 };
        let mut t =
            Type { name_off, kind, size_or_type, array: None, params, members: Vec::new(), enumerators: Vec::new() };
        match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => p += 4,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC
            | KIND_FLOAT | KIND_TYPE_TAG => {}
            KIND_ARRAY => {
                t.array = Some((u32_at(tb, p)?, u32_at(tb, p + 8)?));
                p += 12;
            }
            KIND_STRUCT | KIND_UNION => {
                for i in 0..vlen {
                    let m = p + i * 12;
                    let raw = u32_at(tb, m + 8)?;
                    let (bit_offset, bitfield_size) = if kind_flag { (raw & 0x00ff_ffff, raw >> 24) } else { (raw, 0) };
                    t.members.push(Member {
                        name_off: u32_at(tb, m)?,
                        type_id: u32_at(tb, m + 4)?,
                        bit_offset,
                        bitfield_size,
                    });
                }
                p += vlen * 12;
            }
            KIND_ENUM => {
                for i in 0..vlen {
                    let e = p + i * 8;
                    // kind_flag marks a signed enum (BTF since Linux 6.0); without it the
                    // values are unsigned, so 2^31 and above stay positive.
                    let raw = u32_at(tb, e + 4)?;
                    let v = if kind_flag { raw as i32 as i128 } else { raw as i128 };
                    t.enumerators.push((u32_at(tb, e)?, v));
                }
                p += vlen * 8;
            }
            KIND_ENUM64 => {
                for i in 0..vlen {
                    let e = p + i * 12;
                    let raw = u32_at(tb, e + 4)? as u64 | (u32_at(tb, e + 8)? as u64) << 32;
                    let v = if kind_flag { raw as i64 as i128 } else { raw as i128 };
                    t.enumerators.push((u32_at(tb, e)?, v));
                }
                p += vlen * 12;
            }
            KIND_FUNC_PROTO => p += vlen * 8,
            KIND_DATASEC => p += vlen * 12,
            other => bail!("unknown BTF kind {other} (newer kernel than this reader knows)"),
        }
        Ok((t, p))
    }

    fn name(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = t.size_or_type,
                _ => return Some(t),
            }
        }
        None
    }

    /// Size in bytes; None when it does not fit in u32 or the type nests arrays deeper than
    /// any kernel does (a corrupt or cyclic type).
    fn size_of(&self, id: u32) -> Option<u32> {
        self.size_of_at(id, 0)
    }

    fn size_of_at(&self, id: u32, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        let t = self.resolve(id)?;
        match t.kind {
            KIND_PTR => Some(8),
            KIND_ARRAY => {
                let (elem, n) = t.array?;
                self.size_of_at(elem, depth + 1)?.checked_mul(n)
            }
            _ => Some(t.size_or_type),
        }
    }

    fn struct_by_name(&self, name: &str) -> Option<&Type> {
        // A struct may also appear as a forward declaration; take the definition.
        self.types.iter().find(|t| (t.kind == KIND_STRUCT || t.kind == KIND_UNION) && self.name(t.name_off) == name)
    }

    /// Finds `member` in `t`, descending into anonymous struct/union members.
    fn find_member(&self, t: &Type, member: &str, depth: u32) -> Option<Field> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let name = self.name(m.name_off);
            if name == member {
                return Some(Field {
                    offset: m.bit_offset / 8,
                    // 0: a bitfield, or a size that cannot be known (corrupt type).
                    size: if m.bitfield_size > 0 { 0 } else { self.size_of(m.type_id).unwrap_or(0) },
                    bitfield: m.bitfield_size > 0 || m.bit_offset % 8 != 0,
                });
            }
            if name.is_empty() {
                if let Some(inner) = self.resolve(m.type_id) {
                    if inner.kind == KIND_STRUCT || inner.kind == KIND_UNION {
                        if let Some(f) = self.find_member(inner, member, depth + 1) {
                            return Some(Field { offset: f.offset.checked_add(m.bit_offset / 8)?, ..f });
                        }
                    }
                }
            }
        }
        None
    }

    /// Offset of a dotted member path such as `skc_net.net` inside `struct name`.
    pub fn field(&self, struct_name: &str, path: &str) -> Result<Field> {
        let mut t = self.struct_by_name(struct_name).with_context(|| format!("struct {struct_name} not in BTF"))?;
        let mut total = 0;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let f = self.find_member(t, part, 0).with_context(|| format!("{struct_name}.{path}: no member {part}"))?;
            total = f.offset.checked_add(total).with_context(|| format!("{struct_name}.{path}: offset overflows"))?;
            if i + 1 == parts.len() {
                return Ok(Field { offset: total, ..f });
            }
            // Descend: find the member's type again to continue the path.
            let id = self
                .member_type(t, part, 0)
                .with_context(|| format!("{struct_name}.{path}: cannot descend into {part}"))?;
            t = self
                .resolve(id)
                .filter(|t| t.kind == KIND_STRUCT || t.kind == KIND_UNION)
                .with_context(|| format!("{struct_name}.{path}: {part} is not a struct"))?;
        }
        bail!("empty member path")
    }

    fn member_type(&self, t: &Type, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &t.members {
            let name = self.name(m.name_off);
            if name == member {
                return Some(m.type_id);
            }
            if name.is_empty() {
                if let Some(inner) = self.resolve(m.type_id) {
                    if let Some(id) = self.member_type(inner, member, depth + 1) {
                        return Some(id);
                    }
                }
            }
        }
        None
    }

    /// Value of enumerator `name` (e.g. `SKB_DROP_REASON_NETFILTER_DROP`, whose number
    /// changes between kernels as reasons are added). None also for a value outside i64.
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.types
            .iter()
            .filter(|t| t.kind == KIND_ENUM || t.kind == KIND_ENUM64)
            .find_map(|t| t.enumerators.iter().find(|(n, _)| self.name(*n) == name).map(|(_, v)| *v))
            .and_then(|v| i64::try_from(v).ok())
    }

    /// Number of parameters of kernel function `name` (FUNC → FUNC_PROTO).
    pub fn function_arity(&self, name: &str) -> Option<usize> {
        let f = self.types.iter().find(|t| t.kind == KIND_FUNC && self.name(t.name_off) == name)?;
        let proto = self.types.get(f.size_or_type as usize)?;
        (proto.kind == KIND_FUNC_PROTO).then_some(proto.params)
    }
}

#[cfg(test)]
mod tests;
