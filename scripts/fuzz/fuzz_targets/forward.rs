//! See `voice_fuzz::forward`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voice_fuzz::forward::run(data);
});
