//! `open` in `xchacha20_poly1305_rtpsize` (see `voice_fuzz::crypto`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voice_fuzz::crypto::run(shared::Mode::XChaCha20Poly1305RtpSize, data);
});
