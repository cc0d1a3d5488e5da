//! What a mapped ELF file (an executable or shared library) contains: a SQLite library
//! (defined `sqlite3_libversion`/`sqlite3_version`/`sqlite3_sourceid` symbols, or in a
//! stripped file the SQLite magic string together with a source-id string), its version,
//! and whether walguard is linked in (`sqlite3_walguard_init`, or Rust symbols of the
//! `walguard` crate).
//!
//! Only section headers, symbol tables, their string tables and (for a stripped file)
//! the read-only data sections are read; nothing is executed or mapped.

use crate::sys;
use std::fs::File;
use std::io;

const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_DYNSYM: u32 = 11;
const SHF_ALLOC: u64 = 0x2;
const SHF_EXECINSTR: u64 = 0x4;
const SHN_UNDEF: u16 = 0;
const SHN_LORESERVE: u16 = 0xff00;
/// Bigger sections than this are not read (a corrupt header must not make the doctor
/// allocate gigabytes).
const MAX_SECTION: u64 = 128 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqliteLib {
    /// `sqlite3_version` as the library itself states it, e.g. `3.40.1`.
    pub version: Option<String>,
    /// The SQLITE_SOURCE_ID date and check-in, when found in a stripped file.
    pub source_id: Option<String>,
    /// How it was recognised.
    pub evidence: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ElfFacts {
    pub sqlite: Option<SqliteLib>,
    /// The file defines walguard's symbols.
    pub walguard: bool,
    /// No symbol table at all (only the dynamic one, or none).
    pub stripped: bool,
}

#[derive(Clone, Copy)]
struct Layout {
    is64: bool,
    be: bool,
}

impl Layout {
    fn u16(self, b: &[u8], at: usize) -> Option<u16> {
        let s: [u8; 2] = b.get(at..at + 2)?.try_into().ok()?;
        Some(if self.be {
            u16::from_be_bytes(s)
        } else {
            u16::from_le_bytes(s)
        })
    }
    fn u32(self, b: &[u8], at: usize) -> Option<u32> {
        let s: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if self.be {
            u32::from_be_bytes(s)
        } else {
            u32::from_le_bytes(s)
        })
    }
    fn u64(self, b: &[u8], at: usize) -> Option<u64> {
        let s: [u8; 8] = b.get(at..at + 8)?.try_into().ok()?;
        Some(if self.be {
            u64::from_be_bytes(s)
        } else {
            u64::from_le_bytes(s)
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Section {
    kind: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
}

/// Where the bytes come from: a file, or memory (unit tests).
pub trait Source {
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    fn size(&self) -> io::Result<u64>;
}

impl Source for File {
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        sys::read_at_most(self, offset, len)
    }
    fn size(&self) -> io::Result<u64> {
        self.metadata().map(|m| m.len())
    }
}

impl Source for [u8] {
    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
    fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let start = (offset as usize).min(self.len());
        let end = start.saturating_add(len).min(self.len());
        Ok(self[start..end].to_vec())
    }
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed ELF file")
}

/// Inspects an ELF file. `Ok(None)`: not an ELF file.
pub fn inspect<S: Source + ?Sized>(src: &S) -> io::Result<Option<ElfFacts>> {
    let ident = src.read(0, 64)?;
    if ident.len() < 52 || ident[..4] != *b"\x7fELF" {
        return Ok(None);
    }
    let l = Layout {
        is64: ident[4] == 2,
        be: ident[5] == 2,
    };
    let (shoff, shentsize, mut shnum) = if l.is64 {
        (
            l.u64(&ident, 0x28).ok_or_else(bad)?,
            l.u16(&ident, 0x3A).ok_or_else(bad)?,
            l.u16(&ident, 0x3C).ok_or_else(bad)? as u64,
        )
    } else {
        (
            l.u32(&ident, 0x20).ok_or_else(bad)? as u64,
            l.u16(&ident, 0x2E).ok_or_else(bad)?,
            l.u16(&ident, 0x30).ok_or_else(bad)? as u64,
        )
    };
    let min_ent = if l.is64 { 64 } else { 40 };
    if shoff == 0 || (shentsize as usize) < min_ent {
        return Ok(Some(ElfFacts {
            stripped: true,
            ..ElfFacts::default()
        }));
    }
    let parse_section = |b: &[u8], at: usize| -> Option<Section> {
        if l.is64 {
            Some(Section {
                kind: l.u32(b, at + 4)?,
                flags: l.u64(b, at + 8)?,
                addr: l.u64(b, at + 16)?,
                offset: l.u64(b, at + 24)?,
                size: l.u64(b, at + 32)?,
                link: l.u32(b, at + 40)?,
            })
        } else {
            Some(Section {
                kind: l.u32(b, at + 4)?,
                flags: l.u32(b, at + 8)? as u64,
                addr: l.u32(b, at + 12)? as u64,
                offset: l.u32(b, at + 16)? as u64,
                size: l.u32(b, at + 20)? as u64,
                link: l.u32(b, at + 24)?,
            })
        }
    };
    if shnum == 0 {
        // More sections than fit in e_shnum: the count is section 0's sh_size.
        let s0 = src.read(shoff, shentsize as usize)?;
        shnum = parse_section(&s0, 0).ok_or_else(bad)?.size;
    }
    let file_size = src.size()?;
    // A corrupt header must not make the doctor allocate much: the section table and
    // every section read must lie inside the file.
    if shnum > 65_536
        || shentsize as usize > 256
        || shoff.saturating_add(shnum * shentsize as u64) > file_size
    {
        return Err(bad());
    }
    let table = src.read(shoff, shnum as usize * shentsize as usize)?;
    let sections: Vec<Section> = (0..shnum as usize)
        .filter_map(|i| parse_section(&table, i * shentsize as usize))
        .collect();

    let read_section = |s: &Section| -> io::Result<Vec<u8>> {
        if s.size > MAX_SECTION || s.offset.saturating_add(s.size) > file_size {
            return Err(bad());
        }
        src.read(s.offset, s.size as usize)
    };

    let mut facts = ElfFacts {
        stripped: !sections.iter().any(|s| s.kind == SHT_SYMTAB),
        ..ElfFacts::default()
    };
    let mut version_sym: Option<(u16, u64, u64)> = None;
    let mut has_libversion = false;
    let mut imports_sqlite = false;
    let sym_len = if l.is64 { 24 } else { 16 };
    for s in sections
        .iter()
        .filter(|s| s.kind == SHT_SYMTAB || s.kind == SHT_DYNSYM)
    {
        let Some(strtab) = sections.get(s.link as usize) else {
            continue;
        };
        let syms = read_section(s)?;
        let strs = read_section(strtab)?;
        for e in syms.chunks_exact(sym_len) {
            let (name_off, value, size, shndx) = if l.is64 {
                (l.u32(e, 0), l.u64(e, 8), l.u64(e, 16), l.u16(e, 6))
            } else {
                (
                    l.u32(e, 0),
                    l.u32(e, 4).map(u64::from),
                    l.u32(e, 8).map(u64::from),
                    l.u16(e, 14),
                )
            };
            let (Some(name_off), Some(value), Some(size), Some(shndx)) =
                (name_off, value, size, shndx)
            else {
                continue;
            };
            let Some(name) = cstr_at(&strs, name_off as usize) else {
                continue;
            };
            if shndx == SHN_UNDEF {
                // A reference, not a definition: the SQLite API comes from a library.
                imports_sqlite |= name.starts_with(b"sqlite3_");
                continue;
            }
            match name {
                b"sqlite3_libversion" | b"sqlite3_sourceid" => has_libversion = true,
                b"sqlite3_version" => version_sym = Some((shndx, value, size)),
                b"sqlite3_walguard_init" => facts.walguard = true,
                n if contains(n, b"8walguard") => facts.walguard = true,
                _ => {}
            }
        }
    }
    if has_libversion || version_sym.is_some() {
        let mut lib = SqliteLib {
            evidence: "sqlite3_libversion symbol",
            ..SqliteLib::default()
        };
        if let Some((shndx, value, size)) = version_sym {
            if shndx < SHN_LORESERVE {
                if let Some(sec) = sections.get(shndx as usize) {
                    if value >= sec.addr && value - sec.addr < sec.size {
                        let len = size.clamp(1, 32) as usize;
                        let b = src.read(sec.offset + (value - sec.addr), len)?;
                        lib.version = cstr_at(&b, 0)
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .filter(|v| parse_version(v).is_some())
                            .map(str::to_owned);
                    }
                }
            }
        }
        facts.sqlite = Some(lib);
    }
    let undefined = facts.sqlite.is_none() && !imports_sqlite;
    if undefined || facts.sqlite.as_ref().is_some_and(|l| l.version.is_none()) {
        // Stripped (or a version symbol we could not read): look at the read-only data.
        // A program that imports the SQLite API (the `sqlite3` shell) carries the same
        // strings for its own checks but uses the library's SQLite, not one of its own.
        let mut magic = false;
        let mut source_id = None;
        for s in sections.iter().filter(|s| {
            s.kind == SHT_PROGBITS && s.flags & SHF_ALLOC != 0 && s.flags & SHF_EXECINSTR == 0
        }) {
            let Ok(data) = read_section(s) else {
                continue;
            };
            magic |= contains(&data, b"SQLite format 3\0");
            if source_id.is_none() {
                source_id = find_source_id(&data);
            }
        }
        match facts.sqlite.as_mut() {
            Some(lib) => lib.source_id = source_id,
            None if magic && source_id.is_some() => {
                facts.sqlite = Some(SqliteLib {
                    version: None,
                    source_id,
                    evidence: "SQLite format string and source id (stripped)",
                });
            }
            None => {}
        }
    }
    Ok(Some(facts))
}

fn cstr_at(b: &[u8], at: usize) -> Option<&[u8]> {
    let rest = b.get(at..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    Some(&rest[..end])
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Finds a SQLITE_SOURCE_ID: `YYYY-MM-DD HH:MM:SS ` followed by at least 40 hex digits.
pub fn find_source_id(b: &[u8]) -> Option<String> {
    const PAT: &[u8] = b"dddd-dd-dd dd:dd:dd ";
    let mut i = 0;
    while i + PAT.len() + 40 <= b.len() {
        if b[i] == b'2' && b[i + 1] == b'0' {
            let ok = PAT.iter().enumerate().all(|(k, &p)| {
                let c = b[i + k];
                if p == b'd' {
                    c.is_ascii_digit()
                } else {
                    c == p
                }
            });
            if ok {
                let hex = b[i + PAT.len()..]
                    .iter()
                    .take_while(|c| c.is_ascii_hexdigit())
                    .count();
                if hex >= 40 {
                    let end = i + PAT.len() + hex;
                    return Some(String::from_utf8_lossy(&b[i..end]).into_owned());
                }
            }
        }
        i += 1;
    }
    None
}

/// (major, minor, patch) of a SQLite version string such as `3.40.1`.
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.');
    let a = it.next()?.parse().ok()?;
    let b = it.next()?.parse().ok()?;
    let c = it.next().unwrap_or("0").parse().ok()?;
    Some((a, b, c))
}

/// Whether a SQLite version has the WAL-reset bug: 3.7.0 to 3.51.2 are affected, except
/// the fixed backports 3.44.6+ (within 3.44) and 3.50.7+ (within 3.50).
pub fn wal_reset_bug(v: (u32, u32, u32)) -> bool {
    let (a, b, c) = v;
    if a != 3 || (b, c) < (7, 0) || (b, c) > (51, 2) {
        return false;
    }
    !((b == 44 && c >= 6) || (b == 50 && c >= 7))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wal_reset_bug_range() {
        for (v, bug) in [
            ("3.6.23", false),
            ("3.7.0", true),
            ("3.40.1", true),
            ("3.44.5", true),
            ("3.44.6", false),
            ("3.45.0", true),
            ("3.50.6", true),
            ("3.50.7", false),
            ("3.51.2", true),
            ("3.51.3", false),
            ("3.54.1", false),
        ] {
            let p = parse_version(v).expect("version");
            assert_eq!(wal_reset_bug(p), bug, "{v}");
        }
        assert_eq!(parse_version("3.7"), Some((3, 7, 0)));
        assert_eq!(parse_version("x"), None);
    }

    #[test]
    fn source_ids_are_found() {
        let b = b"junk\x002025-02-18 13:38:58 873d4e274b4988d260ba8354a9718324a1c26187a4ab4c1cc0227c03d0f10e70\x00more";
        assert_eq!(
            find_source_id(b).as_deref(),
            Some("2025-02-18 13:38:58 873d4e274b4988d260ba8354a9718324a1c26187a4ab4c1cc0227c03d0f10e70")
        );
        assert_eq!(find_source_id(b"2025-02-18 13:38:58 abc"), None);
    }

    /// A minimal ELF64 little-endian file with one .dynsym, its .dynstr and a .rodata
    /// holding the version string.
    fn tiny_elf(symbols: &[(&str, u16, u64, u64)], rodata: &[u8]) -> Vec<u8> {
        let mut strtab = vec![0u8];
        let mut syms = vec![0u8; 24]; // the null symbol
        for (name, shndx, value, size) in symbols {
            let off = strtab.len() as u32;
            strtab.extend_from_slice(name.as_bytes());
            strtab.push(0);
            let mut e = Vec::new();
            e.extend_from_slice(&off.to_le_bytes());
            e.push(0x11);
            e.push(0);
            e.extend_from_slice(&shndx.to_le_bytes());
            e.extend_from_slice(&value.to_le_bytes());
            e.extend_from_slice(&size.to_le_bytes());
            syms.extend_from_slice(&e);
        }
        let mut f = vec![0u8; 64];
        let ro_off = f.len() as u64;
        f.extend_from_slice(rodata);
        let sym_off = f.len() as u64;
        f.extend_from_slice(&syms);
        let str_off = f.len() as u64;
        f.extend_from_slice(&strtab);
        let shoff = f.len() as u64;
        let sh = |kind: u32, flags: u64, addr: u64, off: u64, size: u64, link: u32| {
            let mut s = vec![0u8; 64];
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[8..16].copy_from_slice(&flags.to_le_bytes());
            s[16..24].copy_from_slice(&addr.to_le_bytes());
            s[24..32].copy_from_slice(&off.to_le_bytes());
            s[32..40].copy_from_slice(&size.to_le_bytes());
            s[40..44].copy_from_slice(&link.to_le_bytes());
            s
        };
        f.extend_from_slice(&sh(0, 0, 0, 0, 0, 0));
        f.extend_from_slice(&sh(
            SHT_PROGBITS,
            SHF_ALLOC,
            0x1000,
            ro_off,
            rodata.len() as u64,
            0,
        ));
        f.extend_from_slice(&sh(SHT_DYNSYM, SHF_ALLOC, 0, sym_off, syms.len() as u64, 3));
        f.extend_from_slice(&sh(3, 0, 0, str_off, strtab.len() as u64, 0));
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        f[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        f[0x3C..0x3E].copy_from_slice(&4u16.to_le_bytes());
        f
    }

    #[test]
    fn reads_the_version_of_a_sqlite_library() {
        let ro = b"xx3.40.1\0yy";
        let f = tiny_elf(
            &[
                ("sqlite3_libversion", 1, 0x1000, 0),
                ("sqlite3_version", 1, 0x1002, 7),
                ("sqlite3_open", SHN_UNDEF, 0, 0),
            ],
            ro,
        );
        let facts = inspect(f.as_slice()).expect("inspect").expect("ELF");
        let lib = facts.sqlite.expect("sqlite");
        assert_eq!(lib.version.as_deref(), Some("3.40.1"));
        assert!(!facts.walguard);
        assert!(facts.stripped, "only a dynamic symbol table");
    }

    #[test]
    fn references_are_not_definitions_and_walguard_is_seen() {
        // A Python extension module: uses SQLite, does not contain it.
        let f = tiny_elf(&[("sqlite3_libversion", SHN_UNDEF, 0, 0)], b"abc");
        let facts = inspect(f.as_slice()).expect("inspect").expect("ELF");
        assert!(facts.sqlite.is_none());
        let f = tiny_elf(&[("sqlite3_walguard_init", 1, 0x1000, 0)], b"abc");
        assert!(
            inspect(f.as_slice())
                .expect("inspect")
                .expect("ELF")
                .walguard
        );
        let f = tiny_elf(
            &[("_ZN8walguard8register17h0123456789abcdefE", 1, 0x1000, 0)],
            b"a",
        );
        assert!(
            inspect(f.as_slice())
                .expect("inspect")
                .expect("ELF")
                .walguard
        );
        let f = tiny_elf(&[("_ZN12walguard_cli4main17h0123E", 1, 0x1000, 0)], b"a");
        assert!(
            !inspect(f.as_slice())
                .expect("inspect")
                .expect("ELF")
                .walguard
        );
    }

    #[test]
    fn a_corrupt_section_table_is_an_error_not_an_allocation() {
        let mut f = tiny_elf(&[("sqlite3_libversion", 1, 0x1000, 0)], b"abc");
        f[0x3C..0x3E].copy_from_slice(&60_000u16.to_le_bytes());
        assert!(inspect(f.as_slice()).is_err());
        let mut f = tiny_elf(&[("sqlite3_libversion", 1, 0x1000, 0)], b"abc");
        f[0x3A..0x3C].copy_from_slice(&0xFFFFu16.to_le_bytes());
        assert!(inspect(f.as_slice()).is_err());
        // A truncated file.
        let f = tiny_elf(&[("sqlite3_libversion", 1, 0x1000, 0)], b"abc");
        assert!(inspect(&f[..f.len() - 10]).is_err());
    }

    #[test]
    fn a_stripped_bundle_is_recognised_by_its_strings() {
        let ro = b"\0SQLite format 3\0...2026-01-09 12:00:00 0123456789abcdef0123456789abcdef0123456789abcdef\0";
        let f = tiny_elf(&[], ro);
        let lib = inspect(f.as_slice())
            .expect("inspect")
            .expect("ELF")
            .sqlite
            .expect("sqlite");
        assert_eq!(lib.version, None);
        assert!(lib.source_id.is_some_and(|s| s.starts_with("2026-01-09")));
        // A program that imports SQLite's API from a library (the `sqlite3` shell holds
        // the format string and the source id for its own checks) bundles none.
        let f = tiny_elf(&[("sqlite3_open_v2", SHN_UNDEF, 0, 0)], ro);
        assert!(inspect(f.as_slice())
            .expect("inspect")
            .expect("ELF")
            .sqlite
            .is_none());
        // The magic alone (a `file`-like tool) is not SQLite.
        let f = tiny_elf(&[], b"SQLite format 3\0");
        assert!(inspect(f.as_slice())
            .expect("inspect")
            .expect("ELF")
            .sqlite
            .is_none());
        assert!(inspect(b"#!/bin/sh\n".as_slice())
            .expect("inspect")
            .is_none());
    }
}
