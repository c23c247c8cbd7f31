//! Host bindings generated from `sdk/wit` (world `skiff:function/guest`): the imports
//! Skiff provides beyond WASI and wasi:http, and the event-handler export it may call;
//! and the host types that stand for WIT resources and errors in them.

use crate::state::{Namespace, StateError};
use wasmtime::component::ResourceTableError;

wasmtime::component::bindgen!({
    path: "../sdk/wit",
    world: "skiff:function/guest",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi:keyvalue/store.bucket": Bucket,
    },
    trappable_error_type: {
        "wasi:keyvalue/store.error" => KvError,
    },
});

/// An open bucket (the `bucket` resource).
pub struct Bucket {
    pub(crate) ns: Namespace,
}

/// A key-value failure as the guest sees it.
#[derive(Debug)]
pub enum KvError {
    /// The bucket name is unusable.
    NoSuchStore,
    /// Anything else, with a message.
    Other(String),
}

impl From<ResourceTableError> for KvError {
    fn from(e: ResourceTableError) -> Self {
        KvError::Other(e.to_string())
    }
}

impl From<StateError> for KvError {
    fn from(e: StateError) -> Self {
        KvError::Other(e.to_string())
    }
}
