//! SSH algorithm policy shared by client and server: modern algorithms only.

use std::borrow::Cow;

use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
use russh::{Preferred, cipher, compression, kex, mac};

/// Subsystem name the tunnel channel requests.
pub const SUBSYSTEM: &str = "sshvpn";

/// Whether the CPU has AES instructions (then AES-GCM beats ChaCha20-Poly1305).
fn has_aes_instructions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// curve25519 (and the ML-KEM hybrid) key exchange; AEAD ciphers only (AES-GCM first where the
/// CPU accelerates it); ed25519, ECDSA and RSA with SHA-2 keys; ETM SHA-2 MACs; no compression.
pub fn preferred() -> Preferred {
    let aead: &'static [cipher::Name] = if has_aes_instructions() {
        &[cipher::AES_256_GCM, cipher::AES_128_GCM, cipher::CHACHA20_POLY1305]
    } else {
        &[cipher::CHACHA20_POLY1305, cipher::AES_256_GCM, cipher::AES_128_GCM]
    };
    Preferred {
        kex: Cow::Borrowed(&[
            kex::MLKEM768X25519_SHA256,
            kex::CURVE25519,
            kex::CURVE25519_PRE_RFC_8731,
            kex::EXTENSION_SUPPORT_AS_CLIENT,
            kex::EXTENSION_SUPPORT_AS_SERVER,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
            kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
        ]),
        key: Cow::Borrowed(&[
            Algorithm::Ed25519,
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP384,
            },
            Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP521,
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha512),
            },
            Algorithm::Rsa {
                hash: Some(HashAlg::Sha256),
            },
        ]),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Borrowed(aead),
        mac: Cow::Borrowed(&[mac::HMAC_SHA512_ETM, mac::HMAC_SHA256_ETM]),
        compression: Cow::Borrowed(&[compression::NONE]),
    }
}

/// Channel window and packet sizes for bulk tunnel traffic.
pub const WINDOW_SIZE: u32 = 16 * 1024 * 1024;
pub const MAX_PACKET_SIZE: u32 = 65535;

/// The built-in client's SSH settings: the algorithm policy above, a large channel window,
/// no Nagle delay; dead peers are found by the tunnel's own keepalives.
pub fn client_config() -> russh::client::Config {
    // Host certificates are asked for first: accepted through known_hosts `@cert-authority`
    // lines, otherwise their plain key is checked like any host key.
    let mut preferred = preferred();
    preferred.host_key_certificates = preferred.key.clone();
    russh::client::Config {
        preferred,
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_PACKET_SIZE,
        channel_buffer_size: 256,
        nodelay: true,
        inactivity_timeout: None,
        ..Default::default()
    }
}
