//! The sockets: the function listener ([`listen`]), the admin API ([`admin`]), and
//! `skiff up`, which runs both in front of one embedded node ([`embedded`]).

pub mod admin;
pub mod embedded;
pub mod listen;

/// Binds the function listener and the admin API, naming the flag to change when an
/// address is taken.
pub async fn bind(
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> anyhow::Result<(tokio::net::TcpListener, tokio::net::TcpListener)> {
    use anyhow::Context;
    let functions = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!(
            "cannot listen on {listen} for functions; is another server using it? pick another with --listen"
        )
    })?;
    let admin = tokio::net::TcpListener::bind(admin)
        .await
        .with_context(|| {
            format!("cannot listen on {admin} for the admin API; pick another with --admin")
        })?;
    Ok((functions, admin))
}

/// Resolves when the process is asked to stop (Ctrl-C or SIGTERM).
pub async fn shutdown_signal() {
    {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                    let _ = ctrl_c.await;
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    }
}
