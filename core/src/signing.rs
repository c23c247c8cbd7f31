//! Signed deployments: the scheduler signs each function record it writes into the
//! cluster registry with an Ed25519 key (`--signing-key`), and nodes holding the public
//! key (`--trust`) run only records whose signature verifies.
//!
//! The signature covers the function's name, its version, the sha256 of its manifest, the
//! sha256 of its component and the deploy time, so a process that can write the registry
//! but lacks the key can neither forge a record nor point a signed one at other code (a
//! node checks each artifact's bytes against the signed sha256 when it fetches them).
//!
//! Key files hold 64 hex digits: the secret seed, or the public key.

use crate::record::{FunctionRecord, sha256_hex};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use std::path::{Path, PathBuf};

/// Why a key could not be used or a record does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// A key file could not be read, written or parsed.
    #[error("signing key file `{path}`: {detail}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        detail: String,
    },
    /// A `--trust` value is neither a public key nor a file holding one.
    #[error(
        "--trust `{0}` is neither a public key (64 hex digits) nor a readable file holding one; make the pair with `skiff keygen --signing`"
    )]
    BadTrust(String),
    /// The record carries no signature.
    #[error(
        "version {version} of `{name}` is not signed, and only signed records are trusted; deploy through a scheduler started with --signing-key"
    )]
    Unsigned {
        /// The function.
        name: String,
        /// The version.
        version: u64,
    },
    /// The signature does not verify with the trusted key.
    #[error(
        "the signature of version {version} of `{name}` does not verify with the trusted key (--trust): it was not written by this cluster's scheduler, or the keys differ"
    )]
    BadSignature {
        /// The function.
        name: String,
        /// The version.
        version: u64,
    },
}

/// The key a scheduler signs records with.
#[derive(Clone)]
pub struct RecordSigner {
    key: SigningKey,
}

impl std::fmt::Debug for RecordSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSigner")
            .field("public", &hex::encode(self.key.verifying_key().as_bytes()))
            .finish()
    }
}

/// The public key a node verifies records with.
#[derive(Debug, Clone)]
pub struct RecordVerifier {
    key: VerifyingKey,
}

/// The bytes a record's signature covers.
fn message(record: &FunctionRecord) -> Vec<u8> {
    format!(
        "skiff-record-v1\n{}\n{}\n{}\n{}\n{}",
        record.name,
        record.version,
        sha256_hex(record.manifest.as_bytes()),
        record.artifact,
        record.deployed_at_ms
    )
    .into_bytes()
}

fn key_file(path: &Path, detail: impl Into<String>) -> SigningError {
    SigningError::KeyFile {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// 32 bytes from 64 hex digits (surrounding white space ignored).
fn hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

impl RecordSigner {
    /// Reads the secret key from `path` (64 hex digits).
    pub fn load(path: &Path) -> Result<RecordSigner, SigningError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            key_file(
                path,
                format!(
                    "{e}; make one with `skiff keygen --signing` and pass it with --signing-key"
                ),
            )
        })?;
        let seed = hex32(&text).ok_or_else(|| {
            key_file(
                path,
                "not a signing key (64 hex digits); make one with `skiff keygen --signing`",
            )
        })?;
        Ok(RecordSigner {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// A new random key.
    pub fn generate() -> Result<RecordSigner, SigningError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| SigningError::KeyFile {
            path: PathBuf::new(),
            detail: format!("the system gave no randomness: {e}"),
        })?;
        Ok(RecordSigner {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// The secret key as 64 hex digits (for its file).
    pub fn secret_hex(&self) -> String {
        hex::encode(self.key.to_bytes())
    }

    /// The public key as 64 hex digits (for `--trust`).
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The public half, to verify with.
    pub fn verifier(&self) -> RecordVerifier {
        RecordVerifier {
            key: self.key.verifying_key(),
        }
    }

    /// `record` with its signature set.
    pub fn sign(&self, record: &mut FunctionRecord) {
        let signature = self.key.sign(&message(record));
        record.signature = Some(hex::encode(signature.to_bytes()));
    }
}

impl RecordVerifier {
    /// The key `trust` names: 64 hex digits, or a file holding them.
    pub fn parse(trust: &str) -> Result<RecordVerifier, SigningError> {
        let bytes = hex32(trust)
            .or_else(|| std::fs::read_to_string(trust).ok().and_then(|t| hex32(&t)))
            .ok_or_else(|| SigningError::BadTrust(trust.to_string()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SigningError::BadTrust(trust.to_string()))?;
        Ok(RecordVerifier { key })
    }

    /// Whether `record` was signed by this key's pair.
    pub fn verify(&self, record: &FunctionRecord) -> Result<(), SigningError> {
        let Some(signature) = &record.signature else {
            return Err(SigningError::Unsigned {
                name: record.name.clone(),
                version: record.version,
            });
        };
        let bad = || SigningError::BadSignature {
            name: record.name.clone(),
            version: record.version,
        };
        let bytes: [u8; 64] = hex::decode(signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        self.key
            .verify(&message(record), &Signature::from_bytes(&bytes))
            .map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> FunctionRecord {
        FunctionRecord {
            name: "hello".into(),
            version: 3,
            manifest: "name = \"hello\"\n".into(),
            artifact: "ab".repeat(32),
            deployed_at_ms: 1_700_000_000_000,
            signature: None,
        }
    }

    #[test]
    fn a_signed_record_verifies_and_any_change_breaks_it() {
        let signer = RecordSigner::generate().unwrap();
        let verifier = RecordVerifier::parse(&signer.public_hex()).unwrap();
        let mut r = record();
        assert!(matches!(
            verifier.verify(&r),
            Err(SigningError::Unsigned { .. })
        ));
        signer.sign(&mut r);
        verifier.verify(&r).unwrap();
        for change in [
            |r: &mut FunctionRecord| r.version += 1,
            |r: &mut FunctionRecord| r.manifest.push(' '),
            |r: &mut FunctionRecord| r.artifact = "cd".repeat(32),
            |r: &mut FunctionRecord| r.name = "other".into(),
            |r: &mut FunctionRecord| r.deployed_at_ms += 1,
        ] {
            let mut changed = r.clone();
            change(&mut changed);
            assert!(
                matches!(
                    verifier.verify(&changed),
                    Err(SigningError::BadSignature { .. })
                ),
                "{changed:?} verified"
            );
        }
        let other = RecordVerifier::parse(&RecordSigner::generate().unwrap().public_hex()).unwrap();
        assert!(matches!(
            other.verify(&r),
            Err(SigningError::BadSignature { .. })
        ));
    }

    #[test]
    fn keys_round_trip_through_files_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let signer = RecordSigner::generate().unwrap();
        let secret = dir.path().join("signing.key");
        let public = dir.path().join("signing.pub");
        std::fs::write(&secret, signer.secret_hex()).unwrap();
        std::fs::write(&public, format!("{}\n", signer.public_hex())).unwrap();
        let loaded = RecordSigner::load(&secret).unwrap();
        assert_eq!(loaded.public_hex(), signer.public_hex());
        let mut r = record();
        loaded.sign(&mut r);
        RecordVerifier::parse(public.to_str().unwrap())
            .unwrap()
            .verify(&r)
            .unwrap();
        std::fs::write(&secret, "not a key").unwrap();
        let err = RecordSigner::load(&secret).unwrap_err().to_string();
        assert!(err.contains("skiff keygen --signing"), "{err}");
        let err = RecordVerifier::parse("nope").unwrap_err().to_string();
        assert!(err.contains("--trust `nope`"), "{err}");
    }
}
