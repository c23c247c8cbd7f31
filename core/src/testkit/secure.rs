//! The TLS files and NATS users every test `nats-server` starts with, made once per test
//! process: a CA and server certificate by `deploy/nats/make-pki.sh`, and one NKey user
//! per role with the permission sets of `deploy/nats/permissions.conf`. Tests so run on
//! the secured setup that deploy/ documents, and check its permissions for real.

use crate::nats_auth::NatsAuth;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A NATS user of the test cluster, by the permission set it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `$SKIFF_SCHEDULER`: everything (tests use it as the operator).
    Scheduler,
    /// `$SKIFF_NODE`: what a runtime node may do.
    Node,
}

/// The files and users of the secured test setup.
#[derive(Debug)]
pub struct Secured {
    /// Where the files are.
    pub dir: PathBuf,
    /// The CA certificate every test server's certificate chains to.
    pub ca: PathBuf,
    users: Vec<(Role, PathBuf, String)>,
}

/// The repository's root (this crate lives in `core/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The secured setup, made on first use. Panics with the reason if it cannot be made
/// (no openssl), since no NATS test can run without it.
pub fn secured() -> &'static Secured {
    static SECURED: OnceLock<Secured> = OnceLock::new();
    SECURED.get_or_init(|| {
        Secured::make().unwrap_or_else(|e| panic!("cannot make the test PKI and NATS users: {e}"))
    })
}

impl Secured {
    fn make() -> Result<Secured, String> {
        let tmp = std::env::temp_dir();
        sweep_dead(&tmp);
        let dir = tmp.join(format!("skiff-test-pki-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        make_cert(&dir, "server", &[])?;
        make_cert(&dir, "client", &[])?;
        let mut users = Vec::new();
        for (role, name) in [(Role::Scheduler, "scheduler"), (Role::Node, "node")] {
            let (seed, public) = crate::nats_auth::new_user_nkey().map_err(|e| e.to_string())?;
            let path = dir.join(format!("{name}.nk"));
            std::fs::write(&path, format!("{seed}\n")).map_err(|e| e.to_string())?;
            users.push((role, path, public));
        }
        Ok(Secured {
            ca: dir.join("ca.pem"),
            dir,
            users,
        })
    }

    fn user(&self, role: Role) -> &(Role, PathBuf, String) {
        // Every role gets a user in `make`.
        match role {
            Role::Scheduler => &self.users[0],
            Role::Node => &self.users[1],
        }
    }

    /// The NKey seed file of `role`.
    pub fn seed(&self, role: Role) -> &Path {
        &self.user(role).1
    }

    /// What a process of `role` presents.
    pub fn auth(&self, role: Role) -> NatsAuth {
        NatsAuth {
            nkey: Some(self.seed(role).to_path_buf()),
            tls_ca: Some(self.ca.clone()),
            ..NatsAuth::default()
        }
    }

    /// The command-line flags of a `skiff` process of `role`.
    pub fn args(&self, role: Role) -> Vec<String> {
        vec![
            "--nats-nkey".into(),
            self.seed(role).display().to_string(),
            "--nats-tls-ca".into(),
            self.ca.display().to_string(),
        ]
    }

    /// A client certificate and key from the test CA (for mutual TLS).
    pub fn client_cert(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client-key.pem"))
    }

    /// The `tls` block for a server reachable at `hosts` besides loopback (a certificate
    /// naming them is made on first use).
    pub fn tls_block(&self, hosts: &[&str]) -> Result<String, String> {
        let name = if hosts.is_empty() {
            "server".to_string()
        } else {
            format!("server-{}", hosts.join("-").replace([':', '.'], "_"))
        };
        if !self.dir.join(format!("{name}.pem")).exists() {
            make_cert(&self.dir, &name, hosts)?;
        }
        Ok(format!(
            "tls {{ cert_file: \"{d}/{name}.pem\", key_file: \"{d}/{name}-key.pem\", ca_file: \"{d}/ca.pem\", timeout: 2 }}\n",
            d = self.dir.display()
        ))
    }

    /// The `tls` block for routes between clustered servers (each verifies the other).
    pub fn route_tls_block(&self, hosts: &[&str]) -> Result<String, String> {
        let block = self.tls_block(hosts)?;
        Ok(block.replace("timeout: 2 }", "timeout: 2, verify: true }"))
    }

    /// The `authorization` block: deploy/nats/permissions.conf and one user per role.
    pub fn authorization_block(&self) -> Result<String, String> {
        let path = repo_root().join("deploy/nats/permissions.conf");
        let sets = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let users: Vec<String> = self
            .users
            .iter()
            .map(|(role, _, public)| {
                let set = match role {
                    Role::Scheduler => "$SKIFF_SCHEDULER",
                    Role::Node => "$SKIFF_NODE",
                };
                format!("    {{ nkey: {public}, permissions: {set} }}")
            })
            .collect();
        Ok(format!(
            "authorization {{\n{sets}\n  users: [\n{}\n  ]\n}}\n",
            users.join("\n")
        ))
    }

    /// The `tls` and `authorization` blocks of a test server's config.
    pub fn server_blocks(&self, hosts: &[&str]) -> Result<String, String> {
        Ok(format!(
            "{}{}",
            self.tls_block(hosts)?,
            self.authorization_block()?
        ))
    }
}

/// Makes `dir/name.pem` and its key with deploy/nats/make-pki.sh.
fn make_cert(dir: &Path, name: &str, hosts: &[&str]) -> Result<(), String> {
    let script = repo_root().join("deploy/nats/make-pki.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(dir)
        .arg(name)
        .args(hosts)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Removes the setups of test processes that have ended.
fn sweep_dead(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("skiff-test-pki-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
