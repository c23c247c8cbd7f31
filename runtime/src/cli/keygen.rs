//! `skiff keygen`: the key files a secured cluster needs, each written with mode 0600 and
//! never over an existing file (a key that is overwritten by mistake cannot be had back).
//! The secrets key has its own command, `skiff secret keygen`.

use anyhow::Context;
use clap::Args;
use skiff_core::cluster_token::ClusterToken;
use skiff_core::signing::RecordSigner;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Which key to make; exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KeygenArgs {
    /// The scheduler's Ed25519 signing key: FILE for `skiff scheduler --signing-key`,
    /// and FILE.pub, the public key for every node's `--trust`.
    #[arg(long, value_name = "FILE")]
    signing: Option<PathBuf>,
    /// An NKey user for NATS: FILE holds the seed (for `--nats-nkey`), FILE.pub the public
    /// key for the server's `authorization` block.
    #[arg(long, value_name = "FILE")]
    nats: Option<PathBuf>,
    /// The token the scheduler presents to its nodes (`--cluster-token-file`).
    #[arg(long, value_name = "FILE")]
    cluster_token: Option<PathBuf>,
}

/// Makes the key `args` names and says where it went.
pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    if let Some(path) = args.signing {
        let signer = RecordSigner::generate()?;
        write_new(&path, &signer.secret_hex(), 0o600)?;
        let public = public_path(&path);
        write_new(&public, &signer.public_hex(), 0o644)?;
        println!(
            "signing key: {} (pass to `skiff scheduler --signing-key`)\npublic key:  {} (pass to every `skiff node --trust`)\n{}",
            path.display(),
            public.display(),
            signer.public_hex()
        );
    } else if let Some(path) = args.nats {
        let (seed, public) = skiff_core::nats_auth::new_user_nkey()?;
        write_new(&path, &seed, 0o600)?;
        write_new(&public_path(&path), &public, 0o644)?;
        println!(
            "NKey seed: {} (pass to `--nats-nkey`)\npublic key for the server's authorization block: {public}",
            path.display()
        );
    } else if let Some(path) = args.cluster_token {
        write_new(&path, &ClusterToken::generate()?, 0o600)?;
        println!(
            "cluster token: {} (pass to the scheduler and every node as --cluster-token-file)",
            path.display()
        );
    }
    Ok(())
}

/// FILE.pub beside FILE.
fn public_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// Writes `text` and a newline to a new file with `mode`; refuses an existing file.
fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).with_context(|| {
        format!(
            "cannot create `{}` (an existing key is never overwritten; move it away first)",
            path.display()
        )
    })?;
    file.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write `{}`", path.display()))
}
