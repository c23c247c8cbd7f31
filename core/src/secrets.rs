//! Secrets: values an operator sets for a function (`skiff secret set NAME KEY`), which the
//! function reads through `wasi:config/store` like its `[config]`.
//!
//! A secret is sealed (XChaCha20-Poly1305) with the key in `--secrets-key` (by default
//! `<data-dir>/secrets.key`, made on first start, mode 0600) before it is stored
//! anywhere: in the node's control store, and in cluster mode in the registry bucket that
//! carries it to every node. The function's name and the secret's key are the sealed
//! message's associated data, so a sealed value cannot be moved to another function or
//! key. Plain values exist only in memory, for the function's invocations; the admin API
//! lists keys, never values, and nothing logs them.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use std::path::{Path, PathBuf};

/// The default key file's name under the data dir.
pub const KEY_FILE: &str = "secrets.key";
/// The largest secret value.
pub const MAX_SECRET_BYTES: usize = 64 << 10;
/// The longest secret key.
pub const MAX_KEY_LEN: usize = 128;
/// The format of a sealed value: version byte, then nonce, then ciphertext and tag.
const SEALED_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// Why a secret operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A secret key (its name) is malformed.
    #[error(
        "invalid config or secret key `{0}`: use 1 to {MAX_KEY_LEN} letters, digits, `_`, `-` and `.` (for example `api_token`)"
    )]
    BadKey(String),
    /// The value is too large or not UTF-8.
    #[error("secret value {0}")]
    BadValue(String),
    /// The key file could not be read or written.
    #[error("secrets key file `{path}`: {detail}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A sealed value did not open with this key.
    #[error(
        "secret `{key}` of function `{function}` cannot be decrypted with this process's key; start every node and the scheduler with the same --secrets-key file, then set the secret again"
    )]
    Undecryptable {
        /// The function.
        function: String,
        /// The secret's key.
        key: String,
    },
    /// No key is configured (a scheduler started without --secrets-key).
    #[error(
        "this server has no secrets key; start it with --secrets-key FILE (the same file on every node and the scheduler)"
    )]
    NoKey,
}

/// Checks a secret's key: `[A-Za-z0-9_.-]{1,128}`.
pub fn check_key(key: &str) -> Result<(), SecretError> {
    let ok = !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(SecretError::BadKey(key.to_string()))
    }
}

/// Checks a secret's value: UTF-8 (wasi:config values are strings), at most 64 KiB.
pub fn check_value(value: &[u8]) -> Result<&str, SecretError> {
    if value.len() > MAX_SECRET_BYTES {
        return Err(SecretError::BadValue(format!(
            "is {} bytes; the limit is {MAX_SECRET_BYTES}",
            value.len()
        )));
    }
    std::str::from_utf8(value).map_err(|_| {
        SecretError::BadValue("is not UTF-8 text; wasi:config values are strings".into())
    })
}

/// The key secrets are sealed with.
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A key from 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretKey {
        SecretKey {
            cipher: XChaCha20Poly1305::new(bytes.into()),
        }
    }

    /// Reads the key file (64 hex digits).
    pub fn load(path: &Path) -> Result<SecretKey, SecretError> {
        let err = |detail: String| SecretError::KeyFile {
            path: path.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
            err("does not hold a key: expected 64 hex digits (make one with `skiff secret keygen FILE`)".into())
        })?;
        Ok(SecretKey::from_bytes(&bytes))
    }

    /// Reads the key file, or makes a new random key there (mode 0600) if it is absent.
    pub fn load_or_create(path: &Path) -> Result<SecretKey, SecretError> {
        if !path.exists() {
            write_new_key(path)?;
        }
        SecretKey::load(path)
    }

    /// Seals `value` for `function`'s secret `key`.
    pub fn seal(&self, function: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, SecretError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let aad = associated(function, key);
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::BadValue("cannot be encrypted".into()))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a value sealed by [`SecretKey::seal`] for the same function and key.
    pub fn open(&self, function: &str, key: &str, sealed: &[u8]) -> Result<String, SecretError> {
        let undecryptable = || SecretError::Undecryptable {
            function: function.to_string(),
            key: key.to_string(),
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEALED_V1 {
            return Err(undecryptable());
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let aad = associated(function, key);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| undecryptable())?;
        String::from_utf8(plain).map_err(|_| undecryptable())
    }
}

/// Writes a fresh random key to `path` (mode 0600), failing if the file exists.
pub fn write_new_key(path: &Path) -> Result<(), SecretError> {
    use std::io::Write;
    let err = |detail: String| SecretError::KeyFile {
        path: path.to_path_buf(),
        detail,
    };
    let mut bytes = [0u8; 32];
    fill_random(&mut bytes)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| err(e.to_string()))?;
    file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| err(e.to_string()))
}

fn associated(function: &str, key: &str) -> Vec<u8> {
    format!("skiff-secret\0{function}\0{key}").into_bytes()
}

fn fill_random(buf: &mut [u8]) -> Result<(), SecretError> {
    getrandom::fill(buf).map_err(|e| {
        SecretError::BadValue(format!(
            "cannot be sealed: the operating system gave no random bytes ({e})"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_function_and_key() {
        let k = SecretKey::from_bytes(&[7; 32]);
        let sealed = k.seal("f", "token", b"s3cret").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(k.open("f", "token", &sealed).unwrap(), "s3cret");
        assert!(k.open("g", "token", &sealed).is_err());
        assert!(k.open("f", "other", &sealed).is_err());
        let other = SecretKey::from_bytes(&[8; 32]);
        assert!(other.open("f", "token", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(k.open("f", "token", &tampered).is_err());
        assert!(k.open("f", "token", &[]).is_err());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, k.seal("f", "token", b"s3cret").unwrap());
    }

    #[test]
    fn key_files_are_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let a = SecretKey::load_or_create(&path).unwrap();
        let b = SecretKey::load_or_create(&path).unwrap();
        let sealed = a.seal("f", "k", b"v").unwrap();
        assert_eq!(b.open("f", "k", &sealed).unwrap(), "v");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "not a key").unwrap();
        let err = SecretKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }

    #[test]
    fn keys_and_values_are_checked() {
        for good in ["a", "API_TOKEN", "db.password", "x-1"] {
            assert!(check_key(good).is_ok(), "{good}");
        }
        for bad in ["", "a/b", "a b", "ключ", &"k".repeat(129)] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert!(check_value(b"fine").is_ok());
        assert!(check_value(&[0xff]).is_err());
        assert!(check_value(&vec![b'a'; MAX_SECRET_BYTES + 1]).is_err());
    }
}
