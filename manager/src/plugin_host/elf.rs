//! A file about to be `dlopen`ed is first proven whole: a complete, well-formed ELF shared
//! object for this platform's architecture, every segment and the section table inside the
//! file. The dynamic loader maps segments as they are declared; a truncated file has segments
//! that reach past its end, and touching them kills the process with SIGBUS before any other
//! check could run.

use object::Endianness;
use object::elf::{self, FileHeader64};
use object::read::elf::{FileHeader, ProgramHeader};

/// The ELF machine of the platform's own build: a plugin must match it.
#[cfg(target_arch = "x86_64")]
const MACHINE: (u16, &str) = (elf::EM_X86_64, "x86-64");
#[cfg(target_arch = "aarch64")]
const MACHINE: (u16, &str) = (elf::EM_AARCH64, "aarch64");

/// Checks `data`, a whole file's bytes; `Err` says what is wrong, for a person.
pub fn check_shared_object(data: &[u8]) -> Result<(), String> {
    if data.is_empty() {
        return Err("the file is empty".into());
    }
    if data.len() < 4 || &data[..4] != b"\x7fELF" {
        return Err("it is not an ELF file (no ELF magic at its start)".into());
    }
    let header = FileHeader64::<Endianness>::parse(data)
        .map_err(|e| format!("it is not a complete 64-bit ELF file ({e}; truncated?)"))?;
    let endian = header
        .endian()
        .map_err(|e| format!("its ELF header is malformed ({e})"))?;
    if endian != Endianness::default() {
        return Err("it is an ELF file of the other byte order".into());
    }
    let machine = header.e_machine(endian);
    if machine != MACHINE.0 {
        return Err(format!(
            "it is built for another architecture (ELF machine {machine}, this platform is {})",
            MACHINE.1
        ));
    }
    if header.e_type(endian) != elf::ET_DYN {
        return Err(format!(
            "it is not a shared library (ELF type {}; build the crate as a cdylib)",
            header.e_type(endian)
        ));
    }
    let segments = header
        .program_headers(endian, data)
        .map_err(|e| format!("its program headers lie outside the file ({e}; truncated?)"))?;
    if segments.is_empty() {
        return Err("it has no program headers".into());
    }
    let size = data.len() as u64;
    let mut dynamic = false;
    for (index, segment) in segments.iter().enumerate() {
        let (offset, length) = (segment.p_offset(endian), segment.p_filesz(endian));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(format!(
                "segment {index} spans bytes {offset}..{} but the file has {size}: it is truncated",
                offset.saturating_add(length)
            ));
        }
        if segment.p_type(endian) == elf::PT_LOAD && length > segment.p_memsz(endian) {
            return Err(format!("segment {index} is larger in the file than in memory"));
        }
        dynamic |= segment.p_type(endian) == elf::PT_DYNAMIC;
    }
    if !dynamic {
        return Err("it has no dynamic section: not a shared library".into());
    }
    header
        .section_headers(endian, data)
        .map_err(|e| format!("its section headers lie outside the file ({e}; truncated?)"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test binary: a position-independent executable, which is an ELF shared object to
    /// this check (`dlopen` refuses it with a reason of its own).
    fn own_binary() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn files_that_are_not_whole_shared_objects_are_refused_with_a_reason() {
        assert_eq!(check_shared_object(b"").unwrap_err(), "the file is empty");
        assert!(check_shared_object(&[0; 4096]).unwrap_err().contains("not an ELF file"));
        assert!(
            check_shared_object(b"\x7fELF\x02\x01")
                .unwrap_err()
                .contains("not a complete")
        );
        let binary = own_binary();
        assert_eq!(check_shared_object(&binary), Ok(()));
        for keep in [binary.len() / 2, binary.len() - 1, 100] {
            let error = check_shared_object(&binary[..keep]).unwrap_err();
            assert!(error.contains("truncated"), "{keep}: {error}");
        }
    }
}
