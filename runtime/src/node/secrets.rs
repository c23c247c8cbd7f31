//! A node's side of secrets: sealing and storing what the admin API sets (embedded mode),
//! storing what the cluster registry carries (already sealed with the cluster's shared
//! key), and handing the opened values to the function's deployment, whose running
//! invocations keep what they started with while new ones see the change.

use super::Node;
use skiff_core::control::{ControlError, SealedSecret};
use skiff_core::manifest::FunctionName;
use skiff_core::secrets::{SecretError, SecretKey, check_key, check_value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a secret could not be set, removed or listed.
#[derive(Debug, thiserror::Error)]
pub enum SecretOpError {
    /// The function name is invalid.
    #[error(transparent)]
    Name(#[from] skiff_core::manifest::NameError),
    /// The key or value is invalid, or the key is missing.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The control store failed.
    #[error(transparent)]
    Store(#[from] ControlError),
}

impl SecretOpError {
    /// Whether the caller's input is at fault.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            SecretOpError::Name(_)
                | SecretOpError::Secret(SecretError::BadKey(_) | SecretError::BadValue(_))
        )
    }
}

impl Node {
    fn key(&self) -> Result<&Arc<SecretKey>, SecretError> {
        self.secrets_key.as_ref().ok_or(SecretError::NoKey)
    }

    /// Seals `value` for `function`'s secret `key` with this node's key (embedded mode).
    pub fn seal_secret(
        &self,
        function: &str,
        key: &str,
        value: &[u8],
    ) -> Result<Vec<u8>, SecretOpError> {
        FunctionName::new(function)?;
        check_key(key)?;
        let value = check_value(value)?;
        Ok(self.key()?.seal(function, key, value.as_bytes())?)
    }

    /// Stores a sealed secret and gives it to new invocations of `function`. The sealed
    /// value must open with this node's key (so a wrong key shows up here, not later).
    pub async fn put_secret(
        &self,
        function: &str,
        key: &str,
        sealed: &[u8],
    ) -> Result<(), SecretOpError> {
        FunctionName::new(function)?;
        check_key(key)?;
        self.key()?.open(function, key, sealed)?;
        self.control.put_secret(function, key, sealed).await?;
        self.refresh_config(function).await;
        Ok(())
    }

    /// Removes a secret; returns whether it existed.
    pub async fn remove_secret(&self, function: &str, key: &str) -> Result<bool, SecretOpError> {
        FunctionName::new(function)?;
        check_key(key)?;
        let existed = self.control.remove_secret(function, key).await?;
        self.refresh_config(function).await;
        Ok(existed)
    }

    /// The keys of `function`'s secrets (never their values).
    pub async fn secret_keys(&self, function: &str) -> Result<Vec<String>, SecretOpError> {
        FunctionName::new(function)?;
        Ok(self
            .control
            .secrets(Some(function))
            .await?
            .into_iter()
            .map(|(_, key, _)| key)
            .collect())
    }

    /// Every stored secret as (function, key, sealed): what cluster sync reconciles.
    pub async fn sealed_secrets(&self) -> Result<Vec<SealedSecret>, ControlError> {
        self.control.secrets(None).await
    }

    /// `function`'s secrets, opened. One that does not open is logged and left out: the
    /// function runs without it rather than not at all.
    pub(crate) async fn function_secrets(&self, function: &str) -> BTreeMap<String, String> {
        let sealed = match self.control.secrets(Some(function)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(function, error = %e, "cannot read the function's secrets");
                return BTreeMap::new();
            }
        };
        let mut out = BTreeMap::new();
        for (_, key, sealed) in sealed {
            match self.key().and_then(|k| k.open(function, &key, &sealed)) {
                Ok(value) => {
                    out.insert(key, value);
                }
                Err(e) => tracing::error!(function, key, error = %e, "secret left out"),
            }
        }
        out
    }

    /// Hands `function`'s current secrets to its deployment, if it is deployed.
    async fn refresh_config(&self, function: &str) {
        if let Some(d) = self.snapshot().get(function) {
            d.spec
                .caps
                .config
                .set_secrets(&self.function_secrets(function).await);
        }
    }
}
