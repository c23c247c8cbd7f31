//! Why a deploy (or a restore at start) failed, and whose fault it is.

use crate::component::Toolchain;
use crate::engine::CompileError;
use crate::host::capability::CapabilityError;
use skiff_core::RouteError;
use skiff_core::control::ControlError;
use skiff_core::deploy::CheckError;
use skiff_core::instances::InstancesError;
use skiff_core::limits::LimitError;
use skiff_core::manifest::NameError;

/// Why a deploy (or a restore at start) failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The manifest, the name or the route is wrong (the check the scheduler runs too).
    #[error(transparent)]
    Check(#[from] CheckError),
    /// The name in the URL is not a valid function name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// A limit exceeds the node's maximum.
    #[error(transparent)]
    Limits(#[from] LimitError),
    /// A `[[schedule]]` is invalid or fires faster than the node allows.
    #[error("{0}")]
    Schedule(skiff_core::schedule::ScheduleError),
    /// A capability refused its part of the manifest.
    #[error(transparent)]
    Capability(#[from] CapabilityError),
    /// The route is malformed or taken.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The artifact is not a usable component.
    #[error("cannot deploy `{name}`: {source}")]
    Compile {
        /// The function.
        name: String,
        /// What is wrong with the artifact.
        source: CompileError,
    },
    /// The component imports something this node does not provide.
    #[error(
        "cannot deploy `{name}`: the component imports `{import}`, which Skiff does not provide ({detail}); Skiff provides WASI 0.2 and 0.3 (wasi:http@0.2 and @0.3.0), wasi:keyvalue, wasi:config and skiff:function — build against the wasi:http/proxy (0.2) or wasi:http/service (0.3) world, or drop the dependency that imports it"
    )]
    Imports {
        /// The function.
        name: String,
        /// The import that is missing (or its function, when the interface is there but
        /// a function of it is not).
        import: String,
        /// wasmtime's description of the missing import.
        detail: String,
    },
    /// The cluster offered an older version than this node already served.
    #[error(
        "cannot deploy `{name}` v{offered}: this node already served v{serving} and never goes back to an older version; if the cluster registry was reset, remove the function (`skiff rm {name}`) and deploy it again"
    )]
    Older {
        /// The function.
        name: String,
        /// The version this node serves.
        serving: u64,
        /// The version offered.
        offered: u64,
    },
    /// The manifest has triggers but the component cannot handle events.
    #[error(
        "cannot deploy `{name}`: skiff.toml has [[events]] triggers but the component does not export skiff:function/event-handler ({detail}); export one ({}) or remove the triggers", toolchain.events_hint()
    )]
    NoEventHandler {
        /// The function.
        name: String,
        /// What it exports, or wasmtime's description.
        detail: String,
        /// What built it, for the hint.
        toolchain: Toolchain,
    },
    /// `[instances]` asks for what the node or the component's world does not allow.
    #[error("cannot deploy `{name}`: {source}")]
    Instances {
        /// The function.
        name: String,
        /// What is wrong.
        source: InstancesError,
    },
    /// The component has no HTTP handler.
    #[error(
        "cannot deploy `{name}`: the component exports neither wasi:http/incoming-handler@0.2 nor wasi:http/handler@0.3 ({detail}); an HTTP function exports one of them: {}", toolchain.http_hint()
    )]
    NoHandler {
        /// The function.
        name: String,
        /// What it exports, or wasmtime's description.
        detail: String,
        /// What built it, for the hint.
        toolchain: Toolchain,
    },
    /// The control store failed.
    #[error(transparent)]
    Store(#[from] ControlError),
    /// The version serves HTTP, but the event bus refused its consumers; its triggers
    /// start once the bus answers.
    #[error(
        "`{name}` v{version} is deployed and serves HTTP, but its event triggers could not start ({source}); they start on their own once the event bus answers"
    )]
    Bus {
        /// The function.
        name: String,
        /// The version deployed.
        version: u64,
        /// What the bus said.
        source: crate::events::BusError,
    },
    /// The function's state copy could not catch up with its shard, so this node does
    /// not serve it yet.
    #[error("`{name}` cannot serve here yet: {source}")]
    State {
        /// The function.
        name: String,
        /// Why its state copy is not caught up.
        source: crate::state::StateError,
    },
    /// A background task died.
    #[error("internal error while deploying `{name}`: {detail}")]
    Internal {
        /// The function.
        name: String,
        /// What happened.
        detail: String,
    },
}

impl DeployError {
    /// Whether the caller's input is at fault (as opposed to the node).
    pub fn is_client_error(&self) -> bool {
        match self {
            DeployError::Store(e) => e.is_client_error(),
            DeployError::Bus { .. } | DeployError::Internal { .. } | DeployError::State { .. } => {
                false
            }
            DeployError::Compile { source, .. } => {
                !matches!(source, CompileError::Artifact(_) | CompileError::Cache(_))
            }
            _ => true,
        }
    }

    /// Whether the failure is a conflict with what is already deployed.
    pub fn is_conflict(&self) -> bool {
        match self {
            DeployError::Route(RouteError::Taken { .. }) => true,
            DeployError::Check(e) => e.is_conflict(),
            _ => false,
        }
    }
}
