//! See `voice_fuzz::lvsp`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voice_fuzz::lvsp::run(data);
});
