//! SIGHUP as "read your files again", for the reloaders (the TLS certificate, the token key
//! set).
//!
//! Each reloader holds its own [`Hangup`]; tokio delivers a signal to every registered
//! listener. Create it before the node reports ready: once one handler is registered, a
//! SIGHUP no longer takes its default action (ending the process).

/// One listener for SIGHUP. Where none can be registered (not Unix, or registration failed)
/// it never fires, and the reloaders fall back to their periodic checks.
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Registers the listener; needs a running tokio runtime.
    pub fn new() -> Self {
        #[cfg(unix)]
        {
            let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(err) => {
                    tracing::warn!(error = %err, "no SIGHUP handler: files are reread on their interval only");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    /// Resolves at the next SIGHUP; never, without a listener.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.signal.as_mut()
            && signal.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await
    }
}

impl Default for Hangup {
    fn default() -> Self {
        Hangup::new()
    }
}

impl std::fmt::Debug for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hangup")
    }
}
