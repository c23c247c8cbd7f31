//! `wasi:http`: the incoming handler is the function's entry point; outgoing requests go
//! only to origins the manifest allows (`allowed_outbound_hosts`), nowhere by default.

use super::InstanceState;
use std::future::Future;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Links `wasi:http/types` and `wasi:http/outgoing-handler`.
pub fn add_to_linker(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

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

    fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
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

/// The origins one deployed function may call.
#[derive(Debug, Default)]
pub struct OutboundPolicy {
    allowed: Vec<Origin>,
}

impl OutboundPolicy {
    /// Parses the manifest's list.
    pub fn new(entries: &[String]) -> Result<Self, OriginError> {
        Ok(OutboundPolicy {
            allowed: entries
                .iter()
                .map(|e| Origin::parse(e))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Whether a request to `uri` may go out.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let scheme = uri.scheme_str().unwrap_or("https");
        let Some(host) = uri.host() else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        self.allowed.iter().any(|o| o.allows(scheme, &host, port))
    }
}

/// The `wasi:http` hooks of one invocation: the default client, behind the policy.
pub struct OutboundHooks {
    policy: std::sync::Arc<OutboundPolicy>,
}

impl OutboundHooks {
    /// Hooks enforcing `policy`.
    pub fn new(policy: std::sync::Arc<OutboundPolicy>) -> Self {
        OutboundHooks { policy }
    }
}

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<WasiBody>,
                        Box<dyn Future<Output = Result<(), Error>> + Send>,
                    ),
                    Error,
                >,
            > + Send,
    > {
        if !self.policy.allows(request.uri()) {
            tracing::warn!(uri = %request.uri(), "outgoing request denied: origin not in allowed_outbound_hosts");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn nothing_is_allowed_by_default() {
        assert!(!policy(&[]).allows(&"https://example.com/".parse().unwrap()));
    }

    #[test]
    fn exact_origins_match_scheme_host_and_port() {
        let p = policy(&["https://api.example.com", "http://127.0.0.1:8080"]);
        assert!(p.allows(&"https://api.example.com/x".parse().unwrap()));
        assert!(p.allows(&"https://API.example.com:443/".parse().unwrap()));
        assert!(!p.allows(&"http://api.example.com/".parse().unwrap()));
        assert!(!p.allows(&"https://api.example.com:8443/".parse().unwrap()));
        assert!(!p.allows(&"https://evil.com/?api.example.com".parse().unwrap()));
        assert!(p.allows(&"http://127.0.0.1:8080/".parse().unwrap()));
        assert!(!p.allows(&"http://127.0.0.1:7071/".parse().unwrap()));
    }

    #[test]
    fn wildcards_match_subdomains_only() {
        let p = policy(&["https://*.example.com"]);
        assert!(p.allows(&"https://a.example.com/".parse().unwrap()));
        assert!(p.allows(&"https://a.b.example.com/".parse().unwrap()));
        assert!(!p.allows(&"https://example.com/".parse().unwrap()));
        assert!(!p.allows(&"https://aexample.com/".parse().unwrap()));
    }

    #[test]
    fn bad_entries_are_refused() {
        for bad in [
            "example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://a:port",
        ] {
            assert!(Origin::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
