//! The ELF validator on arbitrary images: never panics, never reads out of bounds, and an
//! accepted image always names an interpreter that is an absolute path or none.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = frontend::elf::validate(data) {
        assert!(info.interpreter.as_deref().is_none_or(|p| p.starts_with('/')));
        assert_eq!(info.is_static, info.interpreter.is_none());
    }
});
