//! See `voice_fuzz::forward`.
#![no_main]

libfuzzer_sys::fuzz_target!(|steps: Vec<voice_fuzz::forward::Step>| {
    voice_fuzz::forward::run(steps);
});
