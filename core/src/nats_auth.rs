//! How a node or scheduler proves who it is to NATS, and how it checks NATS is who it
//! says: a credentials file (JWT + NKey), an NKey seed, or a user and password, over TLS
//! verified against a given CA, with an optional client certificate (mutual TLS).
//!
//! Every secret comes from a file, never from the command line. The files are read at
//! each connection attempt, so a rotated file is taken on the next reconnect.

use std::path::{Path, PathBuf};

/// What a process presents to NATS. Empty means no credentials and the system's roots
/// for TLS (a server that requires neither).
#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    /// A NATS credentials file (JWT and NKey seed), `--nats-creds`.
    pub creds: Option<PathBuf>,
    /// A file holding an NKey seed (`SU...`), `--nats-nkey`.
    pub nkey: Option<PathBuf>,
    /// A file holding `user:password` on its first line, `--nats-user-file`.
    pub user_file: Option<PathBuf>,
    /// The CA (PEM) the server's certificate must chain to, `--nats-tls-ca`. Given, the
    /// connection must be TLS.
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM) for mutual TLS, `--nats-tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// The key (PEM) of `tls_cert`, `--nats-tls-key`.
    pub tls_key: Option<PathBuf>,
}

/// Credentials or TLS settings that cannot be used as given: the process must not start.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}; {fix}")]
pub struct AuthError {
    /// What is wrong.
    pub reason: String,
    /// The flag to fix, and how.
    pub fix: String,
}

impl AuthError {
    fn new(reason: impl Into<String>, fix: impl Into<String>) -> AuthError {
        AuthError {
            reason: reason.into(),
            fix: fix.into(),
        }
    }
}

impl NatsAuth {
    /// Checks what can be checked without a server: at most one kind of credentials, a
    /// client certificate only with its key, and every named file readable.
    pub fn check(&self) -> Result<(), AuthError> {
        let kinds = [&self.creds, &self.nkey, &self.user_file]
            .iter()
            .filter(|k| k.is_some())
            .count();
        if kinds > 1 {
            return Err(AuthError::new(
                "more than one kind of NATS credentials given",
                "pass one of --nats-creds, --nats-nkey or --nats-user-file",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(AuthError::new(
                "a client certificate needs its key and a key its certificate",
                "pass both --nats-tls-cert and --nats-tls-key, or neither",
            ));
        }
        for (path, flag) in self.files() {
            std::fs::metadata(path).map_err(|e| {
                AuthError::new(
                    format!("cannot read {}: {e}", path.display()),
                    format!("point {flag} at a readable file"),
                )
            })?;
        }
        Ok(())
    }

    /// The files named, with the flag that named each.
    fn files(&self) -> Vec<(&Path, &'static str)> {
        [
            (&self.creds, "--nats-creds"),
            (&self.nkey, "--nats-nkey"),
            (&self.user_file, "--nats-user-file"),
            (&self.tls_ca, "--nats-tls-ca"),
            (&self.tls_cert, "--nats-tls-cert"),
            (&self.tls_key, "--nats-tls-key"),
        ]
        .into_iter()
        .filter_map(|(p, flag)| p.as_deref().map(|p| (p, flag)))
        .collect()
    }

    /// `options` with these credentials and TLS settings.
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, AuthError> {
        if let Some(path) = &self.creds {
            options = options.credentials_file(path).await.map_err(|e| {
                AuthError::new(
                    format!("cannot use the credentials file {}: {e}", path.display()),
                    "point --nats-creds at a file made by `nsc generate creds`",
                )
            })?;
        }
        if let Some(path) = &self.nkey {
            let seed = read_secret(path, "--nats-nkey")?;
            let seed = seed.lines().map(str::trim).find(|l| l.starts_with("SU"));
            let Some(seed) = seed else {
                return Err(AuthError::new(
                    format!(
                        "{} holds no NKey user seed (a line starting with SU)",
                        path.display()
                    ),
                    "point --nats-nkey at a seed made by `skiff keygen --nats` or `nsc`",
                ));
            };
            options = options.nkey(seed.to_string());
        }
        if let Some(path) = &self.user_file {
            let text = read_secret(path, "--nats-user-file")?;
            let line = text.lines().next().unwrap_or("").trim();
            let Some((user, pass)) = line
                .split_once(':')
                .filter(|(u, p)| !u.is_empty() && !p.is_empty())
            else {
                return Err(AuthError::new(
                    format!(
                        "{} does not hold `user:password` on its first line",
                        path.display()
                    ),
                    "write `user:password` into the file --nats-user-file names",
                ));
            };
            options = options.user_and_password(user.to_string(), pass.to_string());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.require_tls(true).add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            options = options
                .require_tls(true)
                .add_client_certificate(cert.clone(), key.clone());
        }
        Ok(options)
    }
}

fn read_secret(path: &Path, flag: &str) -> Result<String, AuthError> {
    std::fs::read_to_string(path).map_err(|e| {
        AuthError::new(
            format!("cannot read {}: {e}", path.display()),
            format!("point {flag} at a readable file"),
        )
    })
}

/// A new NKey user: its seed (`SU...`, for `--nats-nkey`) and its public key (`U...`,
/// for the server's `authorization` block).
pub fn new_user_nkey() -> Result<(String, String), AuthError> {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair
        .seed()
        .map_err(|e| AuthError::new(format!("cannot encode a new NKey seed: {e}"), "try again"))?;
    Ok((seed, pair.public_key()))
}

/// Whether a failed connection is one that retrying cannot fix (wrong credentials, a
/// server certificate this process does not trust, a TLS mismatch): answers what is
/// wrong and which flag to fix, or `None` for a failure that may pass (NATS down).
pub fn refusal(error: &async_nats::ConnectError) -> Option<AuthError> {
    use async_nats::ConnectErrorKind as Kind;
    match error.kind() {
        Kind::AuthorizationViolation | Kind::Authentication => Some(AuthError::new(
            format!("NATS refused this process's credentials ({error})"),
            "check --nats-creds, --nats-nkey or --nats-user-file against the server's authorization",
        )),
        Kind::Tls => Some(AuthError::new(
            format!("cannot set up TLS to NATS ({})", chain(error)),
            "check --nats-tls-ca, --nats-tls-cert and --nats-tls-key",
        )),
        Kind::Io => tls_refusal(error),
        _ => None,
    }
}

/// A certificate problem hidden in an I/O error (the TLS handshake's).
fn tls_refusal(error: &async_nats::ConnectError) -> Option<AuthError> {
    use async_nats::rustls::{CertificateError, Error as Tls};
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        let tls = e.downcast_ref::<Tls>().or_else(|| {
            e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<Tls>())
        });
        if let Some(tls) = tls {
            let fix = match tls {
                Tls::InvalidCertificate(CertificateError::UnknownIssuer) => {
                    "the NATS server's certificate is from a CA this process does not trust: pass that CA with --nats-tls-ca"
                }
                Tls::InvalidCertificate(CertificateError::Expired) => {
                    "the NATS server's certificate has expired: renew it on the server"
                }
                Tls::InvalidCertificate(_) => {
                    "the NATS server's certificate does not verify: check --nats-tls-ca and the server's certificate (its names must include the host in --nats)"
                }
                Tls::AlertReceived(_) => {
                    "the NATS server refused this process's TLS: check --nats-tls-cert and --nats-tls-key (a valid client certificate from the server's CA)"
                }
                _ => "check --nats-tls-ca, --nats-tls-cert and --nats-tls-key",
            };
            return Some(AuthError::new(format!("TLS to NATS failed: {tls}"), fix));
        }
        source = e.source();
    }
    None
}

/// An error and its sources, joined.
fn chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}
