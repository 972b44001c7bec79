//! See `voice_fuzz::ring`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voice_fuzz::ring::run(data);
});
