//! Validation of uploaded ELF images with `goblin`: only the header, the program headers and
//! the interpreter string are read (never the whole image), and every offset is checked
//! against the real size, so a truncated or lying file is refused rather than trusted.

use goblin::container::{Container, Ctx, Endian};
use goblin::elf::header::{self, Header};
use goblin::elf::program_header::{self, ProgramHeader};
use serde::Serialize;

/// Most program headers we accept (real programs have a dozen).
const MAX_PHNUM: usize = 512;
/// Longest interpreter path.
const MAX_INTERP: u64 = 4096;

/// What we report about a valid image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ElfInfo {
    /// `ELF32` or `ELF64`.
    pub class: &'static str,
    /// e.g. `x86_64`.
    pub machine: &'static str,
    /// `EXEC` or `DYN`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `PT_INTERP`, if any.
    pub interpreter: Option<String>,
    /// No interpreter: statically linked.
    #[serde(rename = "static")]
    pub is_static: bool,
}

impl From<ElfInfo> for proto::reply::Elf {
    fn from(e: ElfInfo) -> Self {
        proto::reply::Elf {
            class: e.class.into(),
            machine: e.machine.into(),
            kind: e.kind.into(),
            interpreter: e.interpreter,
            is_static: e.is_static,
        }
    }
}

/// Reads `len` bytes at `offset` of the image; errors if they are not all there.
pub trait ReadAt {
    /// The image's size.
    fn size(&self) -> u64;
    /// Reads exactly `len` bytes at `offset`.
    fn read_exact_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
}

impl ReadAt for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let start = usize::try_from(offset).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
        let end = start.checked_add(len).ok_or(std::io::ErrorKind::UnexpectedEof)?;
        self.get(start..end).map(<[u8]>::to_vec).ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_exact_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        FileExt::read_exact_at(self, &mut buf, offset)?;
        Ok(buf)
    }
}

/// The machine this rig runs programs for.
fn native_machine() -> (u16, &'static str) {
    #[cfg(target_arch = "x86_64")]
    return (header::EM_X86_64, "x86_64");
    #[cfg(target_arch = "aarch64")]
    return (header::EM_AARCH64, "aarch64");
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    return (0, "unknown");
}

fn machine_name(m: u16) -> String {
    match m {
        header::EM_386 => "i386".into(),
        header::EM_X86_64 => "x86_64".into(),
        header::EM_ARM => "arm".into(),
        header::EM_AARCH64 => "aarch64".into(),
        header::EM_RISCV => "riscv".into(),
        header::EM_MIPS => "mips".into(),
        header::EM_PPC64 => "ppc64".into(),
        header::EM_S390 => "s390".into(),
        other => format!("machine {other}"),
    }
}

/// Validates an image: an ELF executable (or PIE) for this machine, whole, with an
/// absolute interpreter path if it has one.
/// Why an image is not a program this rig runs.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// Not an acceptable program: the reason, for the user.
    #[error("{0}")]
    Refused(String),
    /// A part of the image could not be read.
    #[error("reading {what}")]
    Read {
        /// Which part.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A part of the image does not parse.
    #[error("malformed {what}")]
    Parse {
        /// Which part.
        what: &'static str,
        /// What goblin said.
        #[source]
        source: goblin::error::Error,
    },
}

fn refused(why: impl Into<String>) -> ElfError {
    ElfError::Refused(why.into())
}

pub fn validate(img: &(impl ReadAt + ?Sized)) -> Result<ElfInfo, ElfError> {
    let size = img.size();
    if size < header::header64::SIZEOF_EHDR as u64 {
        return Err(refused(if size == 0 {
            "empty upload: not an ELF file".into()
        } else {
            format!("{size} bytes is too short for an ELF header: truncated or not an ELF file")
        }));
    }
    let hdr_bytes = img
        .read_exact_at(0, header::header64::SIZEOF_EHDR)
        .map_err(|source| ElfError::Read { what: "the ELF header", source })?;
    if &hdr_bytes[..4] != b"\x7fELF" {
        return Err(refused(
            "not an ELF file (no \\x7fELF magic); upload a compiled program, or a .tar.gz bundle with an exec path",
        ));
    }
    let h: Header =
        goblin::elf::Elf::parse_header(&hdr_bytes).map_err(|source| ElfError::Parse { what: "ELF header", source })?;
    let (want_machine, machine) = native_machine();
    if h.e_machine != want_machine {
        return Err(refused(format!("ELF for {}, but this rig runs {machine} programs", machine_name(h.e_machine))));
    }
    let container = match h.e_ident[header::EI_CLASS] {
        header::ELFCLASS64 => Container::Big,
        header::ELFCLASS32 => return Err(refused(format!("32-bit ELF, but this rig runs 64-bit {machine} programs"))),
        c => return Err(refused(format!("unknown ELF class {c}"))),
    };
    let endian = match h.e_ident[header::EI_DATA] {
        header::ELFDATA2LSB => Endian::Little,
        _ => return Err(refused("big-endian ELF, but this rig is little-endian")),
    };
    let kind = match h.e_type {
        header::ET_EXEC => "EXEC",
        header::ET_DYN if h.e_entry != 0 => "DYN",
        header::ET_DYN => return Err(refused("shared library without an entry point: not a program")),
        header::ET_REL => return Err(refused("relocatable object (.o), not a linked program")),
        header::ET_CORE => return Err(refused("core dump, not a program")),
        t => return Err(refused(format!("ELF type {t} is not an executable"))),
    };
    let phnum = usize::from(h.e_phnum);
    if phnum == 0 {
        return Err(refused("no program headers: nothing to load"));
    }
    if phnum > MAX_PHNUM {
        return Err(refused(format!("{phnum} program headers (at most {MAX_PHNUM})")));
    }
    if usize::from(h.e_phentsize) != program_header::program_header64::SIZEOF_PHDR {
        return Err(refused(format!(
            "program header size {} (want {})",
            h.e_phentsize,
            program_header::program_header64::SIZEOF_PHDR
        )));
    }
    let ph_len = phnum * program_header::program_header64::SIZEOF_PHDR;
    if h.e_phoff.checked_add(ph_len as u64).is_none_or(|end| end > size) {
        return Err(refused(format!("truncated ELF: program headers end past the file's {size} bytes")));
    }
    let ph_bytes =
        img.read_exact_at(h.e_phoff, ph_len).map_err(|source| ElfError::Read { what: "program headers", source })?;
    let phdrs = ProgramHeader::parse(&ph_bytes, 0, phnum, Ctx::new(container, endian))
        .map_err(|source| ElfError::Parse { what: "program headers", source })?;
    let mut loads = 0;
    let mut interpreter = None;
    for ph in &phdrs {
        let in_file = ph.p_offset.checked_add(ph.p_filesz).is_some_and(|end| end <= size);
        match ph.p_type {
            program_header::PT_LOAD => {
                loads += 1;
                if !in_file {
                    return Err(refused(format!(
                        "truncated ELF: a loadable segment ends past the file's {size} bytes"
                    )));
                }
            }
            program_header::PT_INTERP => {
                if !in_file || ph.p_filesz == 0 || ph.p_filesz > MAX_INTERP {
                    return Err(refused("malformed interpreter (PT_INTERP) segment"));
                }
                let raw = img
                    .read_exact_at(ph.p_offset, ph.p_filesz as usize)
                    .map_err(|source| ElfError::Read { what: "PT_INTERP", source })?;
                let raw = raw.strip_suffix(b"\0").unwrap_or(&raw);
                let path = std::str::from_utf8(raw).map_err(|_| refused("interpreter path is not UTF-8"))?;
                if !path.starts_with('/') || path.bytes().any(|b| b < 0x20) {
                    return Err(refused(format!("interpreter path {path:?} is not an absolute path")));
                }
                interpreter = Some(path.to_string());
            }
            _ => {}
        }
    }
    if loads == 0 {
        return Err(refused("no loadable segments"));
    }
    Ok(ElfInfo { class: "ELF64", machine, kind, is_static: interpreter.is_none(), interpreter })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Vec<u8> {
        std::fs::read("/proc/self/exe").unwrap()
    }

    #[test]
    fn accepts_a_real_program() {
        let info = validate(me().as_slice()).unwrap();
        assert_eq!(info.class, "ELF64");
        assert!(matches!(info.kind, "EXEC" | "DYN"));
    }

    #[test]
    fn refuses_non_elf_and_truncated() {
        assert!(validate(&b"#!/bin/sh\necho hi\n"[..]).unwrap_err().to_string().contains("not an ELF"));
        assert!(validate(&b""[..]).unwrap_err().to_string().contains("empty"));
        let img = me();
        // Cut inside the first loadable segment.
        let err = validate(&img[..4096]).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(validate(&img[..40]).unwrap_err().to_string().contains("too short"));
    }

    #[test]
    fn refuses_other_machines_and_classes() {
        let mut img = me();
        img[18] = 0xb7; // e_machine = EM_AARCH64 (little-endian u16 at offset 18)
        img[19] = 0;
        #[cfg(target_arch = "x86_64")]
        assert!(validate(img.as_slice()).unwrap_err().to_string().contains("aarch64"));
        let mut img = me();
        img[4] = header::ELFCLASS32;
        assert!(validate(img.as_slice()).is_err());
        let mut img = me();
        img[16] = header::ET_REL as u8;
        assert!(validate(img.as_slice()).unwrap_err().to_string().contains("relocatable"));
    }

    #[test]
    fn hostile_headers_do_not_panic() {
        let img = me();
        for i in 0..64 {
            for v in [0u8, 0xff, 0x7f, 0x80] {
                let mut m = img[..8192.min(img.len())].to_vec();
                m[i] = v;
                let _ = validate(m.as_slice());
            }
        }
    }
}
