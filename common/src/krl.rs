//! OpenSSH key revocation lists (KRL, `ssh-keygen -k`), read as PROTOCOL.krl describes them:
//! revoked plain keys (explicit, or by SHA1 / SHA256 fingerprint of their blob) and revoked
//! certificates (by serial list, range or bitmap, or by key ID, for one CA or any CA). The
//! signature section is skipped (sshd does not check it either). Pure and bounded: every length
//! is checked against what is left, and a malformed list is an error, never a partial list.

use russh::keys::PublicKey;
use russh::keys::ssh_key::Certificate;
use russh::keys::ssh_key::public::KeyData;
use sha1::Digest;

/// First bytes of every KRL.
pub const MAGIC: &[u8] = b"SSHKRL\n\0";
const FORMAT_VERSION: u32 = 1;

const SECTION_CERTIFICATES: u8 = 1;
const SECTION_EXPLICIT_KEY: u8 = 2;
const SECTION_FINGERPRINT_SHA1: u8 = 3;
const SECTION_SIGNATURE: u8 = 4;
const SECTION_FINGERPRINT_SHA256: u8 = 5;
const SECTION_EXTENSION: u8 = 255;

const CERT_SERIAL_LIST: u8 = 0x20;
const CERT_SERIAL_RANGE: u8 = 0x21;
const CERT_SERIAL_BITMAP: u8 = 0x22;
const CERT_KEY_ID: u8 = 0x23;
const CERT_EXTENSION: u8 = 0x24;

/// Revoked certificates of one CA (`ca: None`: of any CA).
#[derive(Debug, Clone, Default)]
struct CertRevocations {
    ca: Option<Vec<u8>>,
    ranges: Vec<(u64, u64)>,
    bitmaps: Vec<(u64, Vec<u8>)>,
    key_ids: Vec<String>,
}

/// A parsed KRL.
#[derive(Debug, Clone, Default)]
pub struct Krl {
    pub version: u64,
    pub comment: String,
    keys: Vec<Vec<u8>>,
    sha1: Vec<Vec<u8>>,
    sha256: Vec<Vec<u8>>,
    certs: Vec<CertRevocations>,
}

/// Why a KRL file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrlError {
    #[error("truncated")]
    Truncated,
    #[error("not an OpenSSH KRL (bad magic)")]
    BadMagic,
    #[error("KRL format version {0} is not supported")]
    Version(u32),
    #[error("unknown KRL section type {0}")]
    Section(u8),
    #[error("bad certificate serial range")]
    SerialRange,
    #[error("unknown KRL certificate section type {0:#x}")]
    CertSection(u8),
    #[error("unsupported critical KRL extension {0:?}")]
    CriticalExtension(String),
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KrlError> {
        if n > self.0.len() {
            return Err(KrlError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, KrlError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, KrlError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, KrlError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<&'a [u8], KrlError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn blob(key: &KeyData) -> Option<Vec<u8>> {
    PublicKey::new(key.clone(), "").to_bytes().ok()
}

impl Krl {
    /// Parses a whole KRL file.
    pub fn parse(bytes: &[u8]) -> Result<Krl, KrlError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len()).ok() != Some(MAGIC) {
            return Err(KrlError::BadMagic);
        }
        let format = r.u32()?;
        if format != FORMAT_VERSION {
            return Err(KrlError::Version(format));
        }
        let mut krl = Krl {
            version: r.u64()?,
            ..Krl::default()
        };
        let _generated = r.u64()?;
        let _flags = r.u64()?;
        let _reserved = r.string()?;
        krl.comment = String::from_utf8_lossy(r.string()?).into_owned();
        while !r.is_empty() {
            let kind = r.u8()?;
            let data = r.string()?;
            let mut s = Reader(data);
            match kind {
                SECTION_CERTIFICATES => krl.certs.push(parse_cert_section(&mut s)?),
                SECTION_EXPLICIT_KEY | SECTION_FINGERPRINT_SHA1 | SECTION_FINGERPRINT_SHA256 => {
                    let list = match kind {
                        SECTION_EXPLICIT_KEY => &mut krl.keys,
                        SECTION_FINGERPRINT_SHA1 => &mut krl.sha1,
                        _ => &mut krl.sha256,
                    };
                    while !s.is_empty() {
                        list.push(s.string()?.to_vec());
                    }
                }
                // A signature section is the signing key (the section) then the signature (one
                // more string); as in krl.c, it is skipped and parsing goes on.
                SECTION_SIGNATURE => {
                    r.string()?;
                }
                SECTION_EXTENSION => skip_extension(&mut s)?,
                other => return Err(KrlError::Section(other)),
            }
        }
        Ok(krl)
    }

    /// Whether a plain key (or a certificate's key) is revoked.
    pub fn is_key_revoked(&self, key: &KeyData) -> bool {
        let Some(b) = blob(key) else { return false };
        self.keys.contains(&b)
            || self.sha1.iter().any(|h| h[..] == sha1::Sha1::digest(&b)[..])
            || self.sha256.iter().any(|h| h[..] == sha2::Sha256::digest(&b)[..])
    }

    /// Whether a certificate is revoked by serial or key ID (its key and CA are checked with
    /// [`Krl::is_key_revoked`]).
    pub fn is_cert_revoked(&self, cert: &Certificate) -> bool {
        let ca = blob(cert.signature_key());
        let serial = cert.serial();
        self.certs.iter().any(|c| {
            if c.ca.is_some() && c.ca != ca {
                return false;
            }
            c.ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&serial))
                || c.bitmaps.iter().any(|(offset, bits)| bit_set(*offset, bits, serial))
                || c.key_ids.iter().any(|id| id == cert.key_id())
        })
    }
}

/// Bit `serial - offset` of a big-endian bitmap (bit 0 is the lowest bit of the last byte).
fn bit_set(offset: u64, bits: &[u8], serial: u64) -> bool {
    let Some(i) = serial.checked_sub(offset) else {
        return false;
    };
    let byte = (i / 8) as usize;
    if byte >= bits.len() {
        return false;
    }
    bits[bits.len() - 1 - byte] & (1 << (i % 8)) != 0
}

fn parse_cert_section(s: &mut Reader<'_>) -> Result<CertRevocations, KrlError> {
    let ca = s.string()?;
    let _reserved = s.string()?;
    let mut c = CertRevocations {
        ca: (!ca.is_empty()).then(|| ca.to_vec()),
        ..Default::default()
    };
    while !s.is_empty() {
        let kind = s.u8()?;
        let data = s.string()?;
        let mut d = Reader(data);
        match kind {
            CERT_SERIAL_LIST => {
                while !d.is_empty() {
                    let n = d.u64()?;
                    c.ranges.push((n, n));
                }
            }
            CERT_SERIAL_RANGE => {
                let (lo, hi) = (d.u64()?, d.u64()?);
                if lo > hi || !d.is_empty() {
                    return Err(KrlError::SerialRange);
                }
                c.ranges.push((lo, hi));
            }
            CERT_SERIAL_BITMAP => {
                let offset = d.u64()?;
                let bits = d.string()?.to_vec();
                c.bitmaps.push((offset, bits));
            }
            CERT_KEY_ID => {
                while !d.is_empty() {
                    c.key_ids.push(String::from_utf8_lossy(d.string()?).into_owned());
                }
            }
            CERT_EXTENSION => skip_extension(&mut d)?,
            other => return Err(KrlError::CertSection(other)),
        }
    }
    Ok(c)
}

/// An extension (section or certificate subsection): name, critical flag, contents. A critical
/// one is not understood, so the KRL is refused (PROTOCOL.krl); others are skipped.
fn skip_extension(r: &mut Reader<'_>) -> Result<(), KrlError> {
    let name = String::from_utf8_lossy(r.string()?).into_owned();
    let critical = r.u8()? != 0;
    r.string()?;
    if critical {
        return Err(KrlError::CriticalExtension(name));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::certificate::{Builder, CertType};
    use russh::keys::{Algorithm, PrivateKey};

    fn put_string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn section(out: &mut Vec<u8>, kind: u8, data: &[u8]) {
        out.push(kind);
        put_string(out, data);
    }

    fn header() -> Vec<u8> {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&1u32.to_be_bytes());
        v.extend_from_slice(&7u64.to_be_bytes());
        v.extend_from_slice(&0u64.to_be_bytes());
        v.extend_from_slice(&0u64.to_be_bytes());
        put_string(&mut v, b"");
        put_string(&mut v, b"test krl");
        v
    }

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).unwrap()
    }

    fn cert(ca: &PrivateKey, serial: u64, id: &str) -> Certificate {
        let user = key();
        let mut b = Builder::new(vec![9u8; 32], user.public_key().key_data().clone(), 0, u64::MAX).unwrap();
        b.cert_type(CertType::User).unwrap();
        b.serial(serial).unwrap();
        b.key_id(id).unwrap();
        b.valid_principal("carol").unwrap();
        b.sign(ca).unwrap()
    }

    #[test]
    fn keys_by_blob_and_fingerprint_and_certificates_by_serial_and_id() {
        let (a, b, c, ca, other_ca) = (key(), key(), key(), key(), key());
        let blob_of = |k: &PrivateKey| k.public_key().to_bytes().unwrap();
        let mut v = header();
        let mut keys = Vec::new();
        put_string(&mut keys, &blob_of(&a));
        section(&mut v, SECTION_EXPLICIT_KEY, &keys);
        let mut fps = Vec::new();
        put_string(&mut fps, &sha2::Sha256::digest(blob_of(&b)));
        section(&mut v, SECTION_FINGERPRINT_SHA256, &fps);
        let mut certs = Vec::new();
        put_string(&mut certs, &blob_of(&ca));
        put_string(&mut certs, b"");
        let mut list = Vec::new();
        list.extend_from_slice(&5u64.to_be_bytes());
        section(&mut certs, CERT_SERIAL_LIST, &list);
        let mut range = Vec::new();
        range.extend_from_slice(&10u64.to_be_bytes());
        range.extend_from_slice(&20u64.to_be_bytes());
        section(&mut certs, CERT_SERIAL_RANGE, &range);
        let mut bitmap = 100u64.to_be_bytes().to_vec();
        put_string(&mut bitmap, &[0b0000_0100, 0b0000_0001]); // serials 100 and 110
        section(&mut certs, CERT_SERIAL_BITMAP, &bitmap);
        let mut ids = Vec::new();
        put_string(&mut ids, b"lost-laptop");
        section(&mut certs, CERT_KEY_ID, &ids);
        section(&mut v, SECTION_CERTIFICATES, &certs);
        // Two signature sections (key, then one more string each), and a non-critical
        // extension: skipped, not rejected (PROTOCOL.krl).
        let mut ext = Vec::new();
        put_string(&mut ext, b"future@example.org");
        ext.push(0);
        put_string(&mut ext, b"data");
        section(&mut v, SECTION_EXTENSION, &ext);
        for _ in 0..2 {
            section(&mut v, SECTION_SIGNATURE, b"whatever");
            put_string(&mut v, b"signature");
        }
        let mut critical = v.clone();
        let mut ext = Vec::new();
        put_string(&mut ext, b"must-understand@example.org");
        ext.push(1);
        put_string(&mut ext, b"");
        section(&mut critical, SECTION_EXTENSION, &ext);
        assert_eq!(
            Krl::parse(&critical).unwrap_err(),
            KrlError::CriticalExtension("must-understand@example.org".into())
        );

        let krl = Krl::parse(&v).unwrap();
        assert_eq!((krl.version, krl.comment.as_str()), (7, "test krl"));
        assert!(krl.is_key_revoked(a.public_key().key_data()));
        assert!(krl.is_key_revoked(b.public_key().key_data()));
        assert!(!krl.is_key_revoked(c.public_key().key_data()));
        for (serial, revoked) in [
            (5, true),
            (6, false),
            (10, true),
            (20, true),
            (21, false),
            (100, true),
            (101, false),
            (110, true),
            (99, false),
        ] {
            assert_eq!(krl.is_cert_revoked(&cert(&ca, serial, "x")), revoked, "serial {serial}");
        }
        assert!(krl.is_cert_revoked(&cert(&ca, 1, "lost-laptop")));
        assert!(
            !krl.is_cert_revoked(&cert(&other_ca, 5, "lost-laptop")),
            "another CA's serials"
        );
    }

    #[test]
    fn malformed_lists_are_errors() {
        assert!(Krl::parse(b"SSHKRL\n\0").is_err());
        assert!(Krl::parse(b"not a krl").is_err());
        let mut v = header();
        v.push(SECTION_EXPLICIT_KEY);
        v.extend_from_slice(&1000u32.to_be_bytes());
        assert!(Krl::parse(&v).is_err(), "section longer than the file");
        let mut v = header();
        section(&mut v, 99, b"");
        assert!(Krl::parse(&v).is_err(), "unknown section");
        assert!(Krl::parse(&header()).is_ok(), "an empty KRL");
    }
}
