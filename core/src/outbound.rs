//! The origins a function may call (`allowed_outbound_hosts`): parsing an entry and
//! matching a request's scheme, host and port against it. The runtime's outbound policy
//! applies them; they live here, free of wasmtime, so the fuzz targets check them alone.

/// One allowed origin: scheme, host (optionally `*.suffix`), optional port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

/// Why an `allowed_outbound_hosts` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "allowed_outbound_hosts entry `{0}` is not an origin; write it like \"https://api.example.com\" or \"http://*.internal:8080\""
)]
pub struct OriginError(pub String);

impl Origin {
    /// Parses `https://host[:port]` (host may start with `*.`).
    pub fn parse(s: &str) -> Result<Origin, OriginError> {
        let err = || OriginError(s.to_string());
        let (scheme, rest) = s.split_once("://").ok_or_else(err)?;
        if scheme != "http" && scheme != "https" {
            return Err(err());
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| err())?)),
            None => (rest, None),
        };
        let bare = host.strip_prefix("*.").unwrap_or(host);
        if bare.is_empty() || bare.contains(['/', '*', '@', '?', '#']) || !bare.is_ascii() {
            return Err(err());
        }
        Ok(Origin {
            scheme: scheme.to_string(),
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether a request to `scheme://host:port` (host in lower case) is to this origin.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let default_port = if self.scheme == "https" { 443 } else { 80 };
        if scheme != self.scheme || port != self.port.unwrap_or(default_port) {
            return false;
        }
        match self.host.strip_prefix("*.") {
            Some(suffix) => host
                .strip_suffix(suffix)
                .is_some_and(|head| head.ends_with('.') && head.len() > 1),
            None => host == self.host,
        }
    }
}
