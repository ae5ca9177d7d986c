//! `Range` headers against bodies of every size.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (size, value) = data.split_at(8);
    let size = u64::from_le_bytes(size.try_into().unwrap_or([0; 8])) % (1 << 40);
    proxyd_http_front::fuzzing::range(&String::from_utf8_lossy(value), size);
});
