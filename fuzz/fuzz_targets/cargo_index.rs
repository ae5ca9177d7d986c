//! Upstream sparse-index files, crate names, versions and `dl` templates.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxyd_cargo::fuzzing::index_file(data));
