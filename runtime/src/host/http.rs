//! `wasi:http`: the incoming handler is the function's entry point; outgoing requests go
//! only to origins the manifest allows (`allowed_outbound_hosts`), nowhere by default,
//! never to the node's own admin API, with connect and read timeouts and a bound on the
//! response body. A denied request fails inside the guest with `HTTP-request-denied`; it
//! is counted (`skiff_outbound_requests_total`) and logged, never a crash.

use super::InstanceState;
use super::capability::{Capability, CapabilityError, DeployContext, InstanceContext};
use crate::metrics::Metrics;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpHooks};

pub use skiff_core::outbound::{Origin, OriginError};

/// How long an outgoing connection may take to open (unless the guest asks for less).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first byte of an outgoing response may take (unless the guest asks for less).
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an outgoing response may pause between chunks (unless the guest asks for less).
pub const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest outgoing response body a guest may receive.
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// `wasi:http` (types and outgoing-handler): outgoing requests under the manifest's `allowed_outbound_hosts`.
pub struct OutboundHttp;

/// What a deployed version's outgoing requests are checked against.
pub struct HttpDeployed {
    policy: Arc<OutboundPolicy>,
    metrics: Arc<Metrics>,
}

/// One invocation's `wasi:http` state.
pub struct HttpInstance {
    /// wasmtime-wasi-http's context.
    pub ctx: WasiHttpCtx,
    /// The outbound policy's hooks.
    pub hooks: OutboundHooks,
}

impl Capability for OutboundHttp {
    type Deployed = HttpDeployed;
    type Instance = HttpInstance;

    fn link(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
        // wasi:http@0.3 (on the engine with the async ABI): the same hooks (and so the
        // same outbound policy) serve both.
        match linker.engine().get_concurrency_support() {
            true => wasmtime_wasi_http::p3::add_to_linker(linker),
            false => Ok(()),
        }
    }

    fn configure(cx: &DeployContext<'_>) -> Result<HttpDeployed, CapabilityError> {
        let policy = OutboundPolicy::new(
            cx.function,
            &cx.manifest.allowed_outbound_hosts,
            cx.node.admin,
        )
        .map_err(|e| CapabilityError::from(Box::new(e) as Box<_>))?;
        Ok(HttpDeployed {
            policy: Arc::new(policy),
            metrics: cx.node.metrics.clone(),
        })
    }

    fn instantiate(d: &HttpDeployed, _: &InstanceContext<'_>) -> HttpInstance {
        let mut ctx = WasiHttpCtx::new();
        ctx.set_field_size_limit(super::HostLimits::FIELDS_BYTES);
        HttpInstance {
            ctx,
            hooks: OutboundHooks::new(d.policy.clone(), d.metrics.clone()),
        }
    }
}

/// The origins one deployed function may call, and the address it may never reach.
#[derive(Debug, Default)]
pub struct OutboundPolicy {
    /// The function (for the log and the metric).
    function: String,
    allowed: Vec<Origin>,
    /// The node's admin API: denied whatever the manifest says.
    admin: Option<SocketAddr>,
}

/// Why an outgoing request was denied (for the log; the guest sees `HTTP-request-denied`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The origin is not in `allowed_outbound_hosts`.
    #[error("origin not in allowed_outbound_hosts; add it to skiff.toml to allow it")]
    NotAllowed,
    /// The destination is the node's own admin API.
    #[error("destination {0} is this node's admin API, which functions may never call")]
    AdminApi(SocketAddr),
    /// The host name did not resolve.
    #[error("cannot resolve the destination: {0}")]
    Unresolved(String),
}

impl OutboundPolicy {
    /// Parses `function`'s list; `admin` is the node's admin API address.
    pub fn new(
        function: &str,
        entries: &[String],
        admin: Option<SocketAddr>,
    ) -> Result<Self, OriginError> {
        Ok(OutboundPolicy {
            function: function.to_string(),
            allowed: entries
                .iter()
                .map(|e| Origin::parse(e))
                .collect::<Result<_, _>>()?,
            admin,
        })
    }

    /// Whether the manifest allows a request to `uri` (before name resolution).
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

    /// Whether `addr` is the node's admin API: its port on a loopback, unspecified or
    /// local address (the admin API may listen on all of them).
    pub fn is_admin(&self, addr: SocketAddr) -> bool {
        let Some(admin) = self.admin else {
            return false;
        };
        if addr.port() != admin.port() {
            return false;
        }
        let ip = addr.ip();
        ip == admin.ip() || ip.is_loopback() || ip.is_unspecified() || is_local(ip)
    }

    /// Checks `request` and pins it to the address it was checked against, so that a
    /// second name lookup cannot lead somewhere else (DNS rebinding). `https` keeps its
    /// host name, which certificate checks need; the admin API does not speak TLS.
    pub async fn check(
        &self,
        mut request: http::Request<WasiBody>,
    ) -> Result<http::Request<WasiBody>, (Denied, http::Request<WasiBody>)> {
        if !self.allows(request.uri()) {
            return Err((Denied::NotAllowed, request));
        }
        let uri = request.uri().clone();
        let https = uri.scheme_str() == Some("https");
        let (Some(host), Some(authority)) = (uri.host(), uri.authority().map(|a| a.to_string()))
        else {
            return Err((Denied::NotAllowed, request));
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let addrs: Vec<SocketAddr> = match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.collect(),
            Err(e) => return Err((Denied::Unresolved(format!("{authority}: {e}")), request)),
        };
        if let Some(admin) = addrs.iter().copied().find(|a| self.is_admin(*a)) {
            return Err((Denied::AdminApi(admin), request));
        }
        let Some(first) = addrs.first() else {
            return Err((Denied::Unresolved(authority), request));
        };
        if !https {
            let mut parts = uri.into_parts();
            match first.to_string().parse() {
                Ok(pinned) => parts.authority = Some(pinned),
                Err(_) => return Err((Denied::Unresolved(authority), request)),
            }
            match http::Uri::from_parts(parts) {
                Ok(pinned) => *request.uri_mut() = pinned,
                Err(_) => return Err((Denied::Unresolved(authority), request)),
            }
        }
        Ok(request)
    }
}

/// Whether `ip` belongs to this host: binding a socket to it succeeds only then.
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The guest's timeouts, each capped by the node's.
fn bounded(options: Option<RequestOptions>) -> RequestOptions {
    let o = options.unwrap_or_default();
    let cap = |asked: Option<Duration>, max: Duration| Some(asked.map_or(max, |a| a.min(max)));
    RequestOptions {
        connect_timeout: cap(o.connect_timeout, CONNECT_TIMEOUT),
        first_byte_timeout: cap(o.first_byte_timeout, FIRST_BYTE_TIMEOUT),
        between_bytes_timeout: cap(o.between_bytes_timeout, BETWEEN_BYTES_TIMEOUT),
    }
}

/// An outgoing response body that fails with `HTTP-response-body-size` past `left` bytes.
struct BoundedBody<B> {
    inner: B,
    left: u64,
}

impl<B> hyper::body::Body for BoundedBody<B>
where
    B: hyper::body::Body<Data = Bytes, Error = Error> + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Error>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame
            && let Some(data) = f.data_ref()
        {
            let n = data.len() as u64;
            if n > self.left {
                return Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(
                    MAX_RESPONSE_BYTES,
                )))));
            }
            self.left -= n;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// The `wasi:http` hooks of one invocation: the default client, behind the policy.
pub struct OutboundHooks {
    policy: Arc<OutboundPolicy>,
    metrics: Arc<Metrics>,
}

impl OutboundHooks {
    /// Hooks enforcing `policy`, counting into `metrics`.
    pub fn new(policy: Arc<OutboundPolicy>, metrics: Arc<Metrics>) -> Self {
        OutboundHooks { policy, metrics }
    }
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        _ = fut;
        let policy = self.policy.clone();
        let metrics = self.metrics.clone();
        Box::new(async move {
            let function = policy.function.as_str();
            let uri = request.uri().to_string();
            let request = match policy.check(request).await {
                Ok(r) => r,
                Err((reason, _)) => {
                    metrics.outbound(function, "denied");
                    tracing::warn!(function = %function, %uri, %reason, "outgoing request denied");
                    return Err(Error::HttpRequestDenied);
                }
            };
            let sent =
                wasmtime_wasi_http::default_send_request(request, Some(bounded(options))).await;
            let (res, io) = match sent {
                Ok(r) => r,
                Err(e) => {
                    metrics.outbound(function, "failed");
                    tracing::debug!(function = %function, %uri, error = %e, "outgoing request failed");
                    return Err(e);
                }
            };
            metrics.outbound(function, "sent");
            let res = res.map(|b| {
                BoundedBody {
                    inner: b.boxed_unsync(),
                    left: MAX_RESPONSE_BYTES,
                }
                .boxed_unsync()
            });
            Ok((res, Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> OutboundPolicy {
        OutboundPolicy::new(
            "f",
            &entries.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            Some("127.0.0.1:7071".parse().unwrap()),
        )
        .unwrap()
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
    fn the_admin_port_is_recognised_on_every_local_address() {
        let p = policy(&[]);
        assert!(p.is_admin("127.0.0.1:7071".parse().unwrap()));
        assert!(p.is_admin("127.0.0.2:7071".parse().unwrap()));
        assert!(p.is_admin("0.0.0.0:7071".parse().unwrap()));
        assert!(p.is_admin("[::1]:7071".parse().unwrap()));
        assert!(!p.is_admin("127.0.0.1:7070".parse().unwrap()));
        // 192.0.2.0/24 is reserved for documentation: never an address of this host.
        assert!(!p.is_admin("192.0.2.1:7071".parse().unwrap()));
    }

    #[test]
    fn guest_timeouts_are_capped_by_the_node() {
        let o = bounded(None);
        assert_eq!(o.connect_timeout, Some(CONNECT_TIMEOUT));
        let o = bounded(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(3600)),
            between_bytes_timeout: None,
        }));
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(o.first_byte_timeout, Some(FIRST_BYTE_TIMEOUT));
        assert_eq!(o.between_bytes_timeout, Some(BETWEEN_BYTES_TIMEOUT));
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
