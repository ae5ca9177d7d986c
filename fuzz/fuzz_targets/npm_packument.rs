//! Upstream packuments: rewritten for proxyd, and searched for a tarball.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxyd_npm::fuzzing::packument(data));
