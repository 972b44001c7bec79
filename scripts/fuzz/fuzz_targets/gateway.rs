//! See `voice_fuzz::gateway`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voice_fuzz::gateway::run(data);
});
