//! The label sets of a node's metrics, and the trigger names.

use prometheus_client::encoding::EncodeLabelSet;

/// What triggered an invocation.
pub const HTTP: &str = "http";
/// What triggered an invocation.
pub const EVENT: &str = "event";

/// `function`, `trigger`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// The function.
    pub function: String,
    /// `http` or `event`.
    pub trigger: String,
    /// `ok`, `error` (5xx answer or handler error), `trap`, `timeout`, `memory`.
    pub outcome: String,
}

/// `function`, `trigger`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FnTrigger {
    /// The function.
    pub function: String,
    /// `http` or `event`.
    pub trigger: String,
}

/// `function`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Function {
    /// The function.
    pub function: String,
}

/// `function`, `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rejection {
    /// The function (empty when none was found).
    pub function: String,
    /// `body`, `headers`, `concurrency`, `capacity`.
    pub kind: String,
}

/// `function`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outbound {
    /// The function.
    pub function: String,
    /// `sent`, `denied` (by policy) or `failed` (connection or protocol error).
    pub outcome: String,
}

/// `function`, `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Retired {
    /// The function.
    pub function: String,
    /// `reuse` (served its quota), `idle`, `trap`, `timeout`, `memory`, `error`.
    pub reason: String,
}

/// `function`, `op`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvOp {
    /// The function.
    pub function: String,
    /// `get`, `set`, `delete`, `exists`, `list`, `increment`, `cas`, `get_many`, ...
    pub op: String,
}

/// `function`, `consumer`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Consumer {
    /// The function.
    pub function: String,
    /// The durable consumer.
    pub consumer: String,
}
