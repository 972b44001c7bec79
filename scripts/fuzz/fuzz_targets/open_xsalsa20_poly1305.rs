//! `open` in `xsalsa20_poly1305` (see `voice_fuzz::crypto`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    voice_fuzz::crypto::run(shared::Mode::XSalsa20Poly1305, data);
});
