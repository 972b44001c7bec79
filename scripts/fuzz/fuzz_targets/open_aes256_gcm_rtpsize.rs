//! `open` in `aes256_gcm_rtpsize` (see `voice_fuzz::crypto`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voice_fuzz::crypto::run(shared::Mode::Aes256GcmRtpSize, data);
});
