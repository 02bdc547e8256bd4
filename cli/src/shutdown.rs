//! One [`CancellationToken`] that fires on Ctrl-C or SIGTERM. A second signal, or the deadline
//! after the first, ends the process at once.

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// A token cancelled on the first SIGINT/SIGTERM; the process exits on the second, or `deadline`
/// after the first if the graceful shutdown hangs.
pub(crate) fn on_signal(deadline: Duration) -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        signal().await;
        info!("shutting down (signal again to force)");
        fire.cancel();
        tokio::select! {
            _ = signal() => warn!("second signal: exiting now"),
            _ = tokio::time::sleep(deadline) => warn!("shutdown took too long: exiting now"),
        }
        std::process::exit(130);
    });
    token
}

async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
