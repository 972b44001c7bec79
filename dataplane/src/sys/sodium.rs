//! Safe, allocation-free wrappers over the libsodium primitives the
//! transport modes use: AES-256-GCM (precomputed key schedule),
//! IETF XChaCha20-Poly1305 and XSalsa20-Poly1305 (secretbox), all detached
//! (the 16-byte tag lives where the caller says) and in place or from one
//! buffer into another.

use std::sync::OnceLock;

use libsodium_sys as ffi;

/// Bytes of every tag (AEAD tag or secretbox MAC).
pub const TAG_BYTES: usize = 16;
/// Bytes of a key.
pub const KEY_BYTES: usize = 32;

/// A libsodium call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SodiumError {
    /// `sodium_init` failed: no usable randomness or CPU features.
    #[error("libsodium failed to initialise")]
    Init,
    /// This CPU has no AES-NI/PCLMUL, so libsodium offers no AES-256-GCM.
    #[error("AES-256-GCM is not available on this CPU")]
    AesUnavailable,
    /// The tag did not verify: the packet is forged, corrupt or for another key.
    #[error("authentication failed")]
    Auth,
    /// Source and destination lengths differ.
    #[error("buffer length mismatch")]
    Length,
}

/// Initialises libsodium (idempotent, thread-safe).
pub fn init() -> Result<(), SodiumError> {
    static INIT: OnceLock<bool> = OnceLock::new();
    // SAFETY: sodium_init has no preconditions and may be called repeatedly
    // from any thread; it returns 0 on success, 1 if already initialised.
    let ok = *INIT.get_or_init(|| unsafe { ffi::sodium_init() } >= 0);
    if ok {
        Ok(())
    } else {
        Err(SodiumError::Init)
    }
}

/// Whether libsodium can do AES-256-GCM on this CPU.
pub fn aes256gcm_available() -> bool {
    if init().is_err() {
        return false;
    }
    // SAFETY: no preconditions once libsodium is initialised.
    unsafe { ffi::crypto_aead_aes256gcm_is_available() == 1 }
}

/// Fills `buf` with cryptographically secure random bytes.
pub fn random_bytes(buf: &mut [u8]) {
    // A failed init only happens without randomness at all; libsodium's
    // randombytes still initialises itself lazily, so ignore it here.
    let _ = init();
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    unsafe { ffi::randombytes_buf(buf.as_mut_ptr().cast(), buf.len()) }
}

/// Zeroes memory in a way the optimiser keeps.
fn memzero(buf: &mut [u8]) {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    unsafe { ffi::sodium_memzero(buf.as_mut_ptr().cast(), buf.len()) }
}

/// AES-256-GCM with its key schedule expanded once (`beforenm`), so each
/// packet pays only for the raw primitive. 12-byte nonces.
pub struct Aes256Gcm {
    state: Box<ffi::crypto_aead_aes256gcm_state>,
}

impl std::fmt::Debug for Aes256Gcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aes256Gcm(..)")
    }
}

impl Aes256Gcm {
    /// Expands `key`. Fails if the CPU lacks the instructions libsodium needs.
    pub fn new(key: &[u8; KEY_BYTES]) -> Result<Self, SodiumError> {
        init()?;
        if !aes256gcm_available() {
            return Err(SodiumError::AesUnavailable);
        }
        let mut state = Box::new(ffi::crypto_aead_aes256gcm_state { opaque: [0; 512] });
        // SAFETY: `state` is a properly aligned (repr(align(16)) in the
        // bindings, and Box honours alignment) writable state of the size
        // libsodium expects; `key` is 32 readable bytes.
        let rc = unsafe { ffi::crypto_aead_aes256gcm_beforenm(&mut *state, key.as_ptr()) };
        if rc != 0 {
            return Err(SodiumError::AesUnavailable);
        }
        Ok(Aes256Gcm { state })
    }

    /// Encrypts `src` into `dst` (same length) and writes the tag.
    pub fn seal(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        src: &[u8],
        dst: &mut [u8],
        tag: &mut [u8; TAG_BYTES],
    ) -> Result<(), SodiumError> {
        if src.len() != dst.len() {
            return Err(SodiumError::Length);
        }
        // SAFETY: every pointer is valid for the length passed with it;
        // `dst` and `src` are distinct borrows so they do not overlap; the
        // state was initialised by `beforenm`; maclen_p may be null.
        unsafe {
            ffi::crypto_aead_aes256gcm_encrypt_detached_afternm(
                dst.as_mut_ptr(),
                tag.as_mut_ptr(),
                std::ptr::null_mut(),
                src.as_ptr(),
                src.len() as u64,
                aad.as_ptr(),
                aad.len() as u64,
                std::ptr::null(),
                nonce.as_ptr(),
                &*self.state,
            );
        }
        Ok(())
    }

    /// Decrypts `buf` in place if `tag` verifies; on failure the contents of
    /// `buf` are unspecified (libsodium may wipe them).
    pub fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), SodiumError> {
        let p = buf.as_mut_ptr();
        // SAFETY: libsodium allows m == c (in-place); `buf` is valid for
        // reads and writes of its length; the tag and AAD are separate
        // borrows; libsodium verifies before writing any plaintext.
        let rc = unsafe {
            ffi::crypto_aead_aes256gcm_decrypt_detached_afternm(
                p,
                std::ptr::null_mut(),
                p,
                buf.len() as u64,
                tag.as_ptr(),
                aad.as_ptr(),
                aad.len() as u64,
                nonce.as_ptr(),
                &*self.state,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(SodiumError::Auth)
        }
    }
}

impl Drop for Aes256Gcm {
    fn drop(&mut self) {
        memzero(&mut self.state.opaque);
    }
}

/// IETF XChaCha20-Poly1305 (24-byte nonces).
pub struct XChaCha20Poly1305 {
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for XChaCha20Poly1305 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XChaCha20Poly1305(..)")
    }
}

impl XChaCha20Poly1305 {
    /// Keeps `key`.
    pub fn new(key: &[u8; KEY_BYTES]) -> Result<Self, SodiumError> {
        init()?;
        Ok(XChaCha20Poly1305 { key: *key })
    }

    /// Encrypts `src` into `dst` (same length) and writes the tag.
    pub fn seal(
        &self,
        nonce: &[u8; 24],
        aad: &[u8],
        src: &[u8],
        dst: &mut [u8],
        tag: &mut [u8; TAG_BYTES],
    ) -> Result<(), SodiumError> {
        if src.len() != dst.len() {
            return Err(SodiumError::Length);
        }
        // SAFETY: pointers valid for their lengths, `src`/`dst` disjoint
        // borrows, maclen_p and nsec may be null.
        unsafe {
            ffi::crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
                dst.as_mut_ptr(),
                tag.as_mut_ptr(),
                std::ptr::null_mut(),
                src.as_ptr(),
                src.len() as u64,
                aad.as_ptr(),
                aad.len() as u64,
                std::ptr::null(),
                nonce.as_ptr(),
                self.key.as_ptr(),
            );
        }
        Ok(())
    }

    /// Decrypts `buf` in place if `tag` verifies.
    pub fn open_in_place(
        &self,
        nonce: &[u8; 24],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_BYTES],
    ) -> Result<(), SodiumError> {
        let p = buf.as_mut_ptr();
        // SAFETY: in-place decryption (m == c) is supported by libsodium;
        // pointers are valid for their lengths; nsec may be null.
        let rc = unsafe {
            ffi::crypto_aead_xchacha20poly1305_ietf_decrypt_detached(
                p,
                std::ptr::null_mut(),
                p,
                buf.len() as u64,
                tag.as_ptr(),
                aad.as_ptr(),
                aad.len() as u64,
                nonce.as_ptr(),
                self.key.as_ptr(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(SodiumError::Auth)
        }
    }
}

impl Drop for XChaCha20Poly1305 {
    fn drop(&mut self) {
        memzero(&mut self.key);
    }
}

/// XSalsa20-Poly1305 as NaCl's `crypto_secretbox` (24-byte nonces, no AAD).
pub struct SecretBox {
    key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(..)")
    }
}

impl SecretBox {
    /// Keeps `key`.
    pub fn new(key: &[u8; KEY_BYTES]) -> Result<Self, SodiumError> {
        init()?;
        Ok(SecretBox { key: *key })
    }

    /// Encrypts `src` into `dst` (same length) and writes the MAC.
    pub fn seal(
        &self,
        nonce: &[u8; 24],
        src: &[u8],
        dst: &mut [u8],
        mac: &mut [u8; TAG_BYTES],
    ) -> Result<(), SodiumError> {
        if src.len() != dst.len() {
            return Err(SodiumError::Length);
        }
        // SAFETY: pointers valid for their lengths, `src`/`dst` disjoint.
        unsafe {
            ffi::crypto_secretbox_detached(
                dst.as_mut_ptr(),
                mac.as_mut_ptr(),
                src.as_ptr(),
                src.len() as u64,
                nonce.as_ptr(),
                self.key.as_ptr(),
            );
        }
        Ok(())
    }

    /// Decrypts `buf` in place if `mac` verifies.
    pub fn open_in_place(
        &self,
        nonce: &[u8; 24],
        buf: &mut [u8],
        mac: &[u8; TAG_BYTES],
    ) -> Result<(), SodiumError> {
        let p = buf.as_mut_ptr();
        // SAFETY: libsodium documents that m and c may overlap (in place);
        // pointers are valid for their lengths.
        let rc = unsafe {
            ffi::crypto_secretbox_open_detached(
                p,
                p,
                mac.as_ptr(),
                buf.len() as u64,
                nonce.as_ptr(),
                self.key.as_ptr(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(SodiumError::Auth)
        }
    }
}

impl Drop for SecretBox {
    fn drop(&mut self) {
        memzero(&mut self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrips_and_rejects() {
        init().unwrap();
        let key = [7u8; 32];
        let msg = *b"hello opus frame";
        let mut ct = [0u8; 16];
        let mut tag = [0u8; 16];

        let aes = Aes256Gcm::new(&key).unwrap();
        aes.seal(&[1; 12], b"hdr", &msg, &mut ct, &mut tag).unwrap();
        let mut buf = ct;
        assert_eq!(
            aes.open_in_place(&[1; 12], b"hdx", &mut buf, &tag),
            Err(SodiumError::Auth)
        );
        // libsodium may wipe the buffer on failure; start again from `ct`.
        buf = ct;
        aes.open_in_place(&[1; 12], b"hdr", &mut buf, &tag).unwrap();
        assert_eq!(buf, msg);

        let x = XChaCha20Poly1305::new(&key).unwrap();
        x.seal(&[2; 24], b"a", &msg, &mut ct, &mut tag).unwrap();
        let mut buf = ct;
        x.open_in_place(&[2; 24], b"a", &mut buf, &tag).unwrap();
        assert_eq!(buf, msg);

        let s = SecretBox::new(&key).unwrap();
        s.seal(&[3; 24], &msg, &mut ct, &mut tag).unwrap();
        let mut buf = ct;
        tag[0] ^= 1;
        assert_eq!(
            s.open_in_place(&[3; 24], &mut buf, &tag),
            Err(SodiumError::Auth)
        );
        tag[0] ^= 1;
        s.open_in_place(&[3; 24], &mut buf, &tag).unwrap();
        assert_eq!(buf, msg);
    }
}
