//! What a host capability is: one module that links its interfaces, checks its part of
//! the manifest at deploy (building what every invocation of that version shares), and
//! builds its state for each invocation. `host::capabilities!` lists them; adding one
//! is a new module and one line there.

use super::InstanceState;
use super::logging::CapturedOutput;
use crate::metrics::Metrics;
use crate::state::StateBackend;
use skiff_core::limits::FunctionLimits;
use skiff_core::manifest::Manifest;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use wasmtime::component::Linker;

/// What the node lends its capabilities.
#[derive(Clone)]
pub struct NodeServices {
    /// The node's state store (a function sees only its own namespace).
    pub state: Arc<dyn StateBackend>,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// The node's admin API, which no function may reach.
    pub admin: Option<SocketAddr>,
    /// Bounds on delayed events.
    pub timers: skiff_core::limits::TimerLimits,
}

/// What a capability sees of a deploy.
pub struct DeployContext<'a> {
    /// The function.
    pub function: &'a str,
    /// Its manifest.
    pub manifest: &'a Manifest,
    /// Its resolved limits.
    pub limits: &'a FunctionLimits,
    /// Its secrets, opened.
    pub secrets: &'a BTreeMap<String, String>,
    /// The node.
    pub node: &'a NodeServices,
}

/// What a capability sees of one invocation.
pub struct InstanceContext<'a> {
    /// The id of the event being handled, for an event invocation.
    pub cause: Option<&'a str>,
    /// The invocation's trace context, for what it sends on.
    pub traceparent: &'a str,
    /// Where the guest's stdout and stderr go.
    pub logs: &'a CapturedOutput,
}

/// A manifest part a capability refused; the message names what is wrong and what to do.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CapabilityError(#[from] Box<dyn std::error::Error + Send + Sync>);

/// One host capability.
pub trait Capability {
    /// What it keeps per deployed version.
    type Deployed: Send + Sync + 'static;
    /// Its state in one invocation.
    type Instance: Send + 'static;

    /// Adds its interfaces to the linker every component is pre-linked against.
    fn link(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()>;

    /// Checks its part of the manifest and builds what every invocation shares.
    fn configure(cx: &DeployContext<'_>) -> Result<Self::Deployed, CapabilityError>;

    /// Builds its state for one invocation.
    fn instantiate(deployed: &Self::Deployed, cx: &InstanceContext<'_>) -> Self::Instance;
}

/// Declares the node's capabilities: the per-deployment and per-invocation structs that
/// hold each one's state (fields named as listed), and linking, configuring and
/// instantiating them all.
macro_rules! capabilities {
    ($($field:ident: $cap:ty),* $(,)?) => {
        /// Every capability's per-deployment state.
        pub struct Deployed {
            $(
                #[doc = concat!("`", stringify!($field), "`'s.")]
                pub $field: <$cap as $crate::host::capability::Capability>::Deployed,
            )*
        }

        /// Every capability's state in one invocation.
        pub struct Instances {
            $(
                #[doc = concat!("`", stringify!($field), "`'s.")]
                pub $field: <$cap as $crate::host::capability::Capability>::Instance,
            )*
        }

        /// Links every capability.
        fn link_all(
            linker: &mut wasmtime::component::Linker<InstanceState>,
        ) -> wasmtime::Result<()> {
            $(<$cap as $crate::host::capability::Capability>::link(linker)?;)*
            Ok(())
        }

        impl Deployed {
            /// Every capability's check of the manifest, and what it keeps.
            pub fn configure(
                cx: &$crate::host::capability::DeployContext<'_>,
            ) -> Result<Deployed, $crate::host::capability::CapabilityError> {
                Ok(Deployed {
                    $($field: <$cap as $crate::host::capability::Capability>::configure(cx)?,)*
                })
            }
        }

        impl Instances {
            /// Every capability's state for one invocation.
            fn new(d: &Deployed, cx: &$crate::host::capability::InstanceContext<'_>) -> Self {
                Instances {
                    $($field: <$cap as $crate::host::capability::Capability>::instantiate(
                        &d.$field, cx,
                    ),)*
                }
            }
        }
    };
}

pub(crate) use capabilities;
