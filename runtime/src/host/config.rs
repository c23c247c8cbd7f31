//! `wasi:config/store` (wasmtime-wasi-config): a function reads its `[config]` values and
//! the secrets an operator set for it (`skiff secret set`), by key. A secret overrides a
//! `[config]` value of the same key.
//!
//! The merged values are built once per deployment and again only when a secret changes,
//! then shared by every invocation (an `Arc`), so reading config costs no copy per request.

use super::InstanceState;
use super::capability::{Capability, CapabilityError, DeployContext, InstanceContext};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use wasmtime::component::Linker;
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};

/// `wasi:config/store`.
pub struct Config;

impl Capability for Config {
    type Deployed = ConfigCell;
    /// The values as they were when the invocation started.
    type Instance = Arc<WasiConfigVariables>;

    fn link(linker: &mut Linker<InstanceState>) -> wasmtime::Result<()> {
        wasmtime_wasi_config::add_to_linker(linker, |s: &mut InstanceState| {
            WasiConfig::from(&*s.caps.config)
        })
    }

    fn configure(cx: &DeployContext<'_>) -> Result<ConfigCell, CapabilityError> {
        Ok(ConfigCell::new(cx.manifest.config.clone(), cx.secrets))
    }

    fn instantiate(cell: &ConfigCell, _: &InstanceContext<'_>) -> Self::Instance {
        cell.current()
    }
}

/// A deployment's current config values; replaced whole when a secret changes.
#[derive(Default)]
pub struct ConfigCell {
    config: BTreeMap<String, String>,
    current: RwLock<Arc<WasiConfigVariables>>,
}

impl std::fmt::Debug for ConfigCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print values: secrets are among them.
        f.debug_struct("ConfigCell")
            .field("config_keys", &self.config.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ConfigCell {
    /// The manifest's `[config]` overlaid with `secrets`.
    pub fn new(config: BTreeMap<String, String>, secrets: &BTreeMap<String, String>) -> Self {
        let current = RwLock::new(merge(&config, secrets));
        ConfigCell { config, current }
    }

    /// The values an invocation starting now sees.
    pub fn current(&self) -> Arc<WasiConfigVariables> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds the values after the function's secrets changed.
    pub fn set_secrets(&self, secrets: &BTreeMap<String, String>) {
        let merged = merge(&self.config, secrets);
        match self.current.write() {
            Ok(mut c) => *c = merged,
            Err(poisoned) => *poisoned.into_inner() = merged,
        }
    }
}

fn merge(
    config: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
) -> Arc<WasiConfigVariables> {
    let mut vars = WasiConfigVariables::new();
    for (k, v) in config.iter().chain(secrets) {
        vars.insert(k, v);
    }
    Arc::new(vars)
}
