//! A [`ControlStore`] that exists before its backend can be reached: a scheduler started
//! while NATS is unreachable serves with what it knows, and its registry answers
//! [`ControlError::Unavailable`] until the real one is [`Deferred::set`].

use crate::control::{Change, ControlError, ControlStore, SealedSecret};
use crate::hosting::{Hosting, HostingTable};
use crate::record::FunctionRecord;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use std::sync::{Arc, OnceLock};

/// A control store filled in once its backend answers.
pub struct Deferred {
    inner: OnceLock<Arc<dyn ControlStore>>,
    /// Why it is not there yet, and what to do.
    why: String,
}

impl Deferred {
    /// An empty store; until [`Deferred::set`], every call fails with `why`.
    pub fn new(why: impl Into<String>) -> Self {
        Deferred {
            inner: OnceLock::new(),
            why: why.into(),
        }
    }

    /// The store every call goes to from now on (the first one set stays).
    pub fn set(&self, store: Arc<dyn ControlStore>) {
        let _ = self.inner.set(store);
    }

    fn get(&self) -> Result<&Arc<dyn ControlStore>, ControlError> {
        self.inner
            .get()
            .ok_or_else(|| ControlError::Unavailable(self.why.clone()))
    }
}

/// Calls `$method` on the store, or fails at once.
macro_rules! forward {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self.get() {
            Ok(store) => store.$method($($arg),*),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    };
}

impl ControlStore for Deferred {
    fn put_artifact<'a>(&'a self, bytes: &'a [u8]) -> BoxFuture<'a, Result<String, ControlError>> {
        forward!(self.put_artifact(bytes))
    }

    fn has_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<bool, ControlError>> {
        forward!(self.has_artifact(sha))
    }

    fn artifacts(&self) -> BoxFuture<'_, Result<Vec<String>, ControlError>> {
        forward!(self.artifacts())
    }

    fn remove_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<u64, ControlError>> {
        forward!(self.remove_artifact(sha))
    }

    fn fetch_artifact<'a>(&'a self, sha: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ControlError>> {
        forward!(self.fetch_artifact(sha))
    }

    fn record<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<FunctionRecord>, ControlError>> {
        forward!(self.record(name))
    }

    fn records(&self) -> BoxFuture<'_, Result<Vec<FunctionRecord>, ControlError>> {
        forward!(self.records())
    }

    fn deploy<'a>(
        &'a self,
        name: &'a str,
        manifest: &'a str,
        artifact: &'a str,
    ) -> BoxFuture<'a, Result<FunctionRecord, ControlError>> {
        forward!(self.deploy(name, manifest, artifact))
    }

    fn put<'a>(&'a self, record: &'a FunctionRecord) -> BoxFuture<'a, Result<(), ControlError>> {
        forward!(self.put(record))
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<bool, ControlError>> {
        forward!(self.remove(name))
    }

    fn put_secret<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
        sealed: &'a [u8],
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        forward!(self.put_secret(function, key, sealed))
    }

    fn remove_secret<'a>(
        &'a self,
        function: &'a str,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, ControlError>> {
        forward!(self.remove_secret(function, key))
    }

    fn secrets<'a>(
        &'a self,
        function: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Vec<SealedSecret>, ControlError>> {
        forward!(self.secrets(function))
    }

    fn watch(
        &self,
    ) -> BoxFuture<'_, Result<BoxStream<'static, Result<Change, ControlError>>, ControlError>> {
        forward!(self.watch())
    }

    fn hosting(&self) -> BoxFuture<'_, Result<HostingTable, ControlError>> {
        forward!(self.hosting())
    }

    fn put_hosting<'a>(
        &'a self,
        function: &'a str,
        hosting: &'a Hosting,
        revision: u64,
    ) -> BoxFuture<'a, Result<u64, ControlError>> {
        forward!(self.put_hosting(function, hosting, revision))
    }

    fn remove_hosting<'a>(&'a self, function: &'a str) -> BoxFuture<'a, Result<(), ControlError>> {
        forward!(self.remove_hosting(function))
    }

    fn set_drained<'a>(
        &'a self,
        node: &'a str,
        drained: bool,
    ) -> BoxFuture<'a, Result<(), ControlError>> {
        forward!(self.set_drained(node, drained))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_fail_with_the_reason_until_set() {
        let d = Deferred::new("NATS has not answered yet");
        match d.records().await {
            Err(ControlError::Unavailable(why)) => assert!(why.contains("NATS"), "{why}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
}
