//! Upstream simple pages, HTML and JSON: parsed, rendered both ways, read back.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxyd_pypi::fuzzing::simple_page(data));
