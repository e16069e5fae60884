//! TLS on the client listener (`wss://`): the certificate chain and key come from PEM files
//! and are reloaded when the files change, so a rotated certificate (cert-manager writes new
//! files into the mounted secret) is served to new connections while open ones carry on
//! with the session they negotiated.
//!
//! The certificate in use sits behind a resolver that every handshake asks; a reload swaps
//! it whole. The files are read again every [`DEFAULT_RELOAD_INTERVAL`] (the edge's
//! setting) and at once on SIGHUP; only a change of their bytes reloads. A new pair that does
//! not load (a half-written file, a key that does not match the certificate) is logged and
//! counted, and the previous certificate stays in use.
//!
//! ring is the crypto provider, given explicitly: no process-wide default is needed or set.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// How often the certificate and key files are read to notice a rotation. cert-manager
/// renews well before expiry (by default a third of the lifetime ahead), so a minute of
/// delay costs nothing; reading two small files once a minute costs nothing either.
pub const DEFAULT_RELOAD_INTERVAL: Duration = Duration::from_secs(60);

/// Where the listener's certificate chain (leaf first) and private key are, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read {path:?}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path:?}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path:?}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("certificate {cert:?} and key {key:?}: {source}")]
    Mismatch { cert: PathBuf, key: PathBuf, source: rustls::Error },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

/// The listener's TLS: the acceptor every connection's handshake goes through, and the
/// certificate it serves, reloadable.
pub struct ServerTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    /// The files' bytes as last loaded (or last seen failing): a reload happens when they
    /// change, so an unchanged bad file is reported once, not every interval.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("files", &self.files).finish_non_exhaustive()
    }
}

/// Hands every handshake the certificate in use.
#[derive(Debug)]
struct Resolver {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a whole certificate: writers only swap an Arc.
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

impl ServerTls {
    /// Loads the certificate and key; fails when they do not load (the node must not start
    /// without its certificate).
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (cert_pem, key_pem) = read(&files)?;
        let key = certified(&files, &cert_pem, &key_pem, &provider)?;
        let resolver = Arc::new(Resolver { current: RwLock::new(Arc::new(key)) });
        // TLS 1.3 and 1.2 are all rustls speaks; both are named so that it stays so.
        let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // WebSocket over TLS is HTTP/1.1; a client that offers h2 as well gets HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        loaded_now();
        Ok(ServerTls {
            files,
            provider,
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            seen: Mutex::new((cert_pem, key_pem)),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    pub(crate) fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Reads the files and, when their bytes changed, loads them: `Ok(true)` when the new
    /// certificate is now served, `Ok(false)` when nothing changed, an error (the previous
    /// certificate still served) when the new files do not load.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let (cert_pem, key_pem) = read(&self.files)?;
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.0 == cert_pem && seen.1 == key_pem {
                return Ok(false);
            }
            *seen = (cert_pem.clone(), key_pem.clone());
        }
        let key = certified(&self.files, &cert_pem, &key_pem, &self.provider)?;
        *self.resolver.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(key);
        loaded_now();
        Ok(true)
    }

    /// Reloads every `interval` and on SIGHUP until `stop`, logging and counting the outcome
    /// (`edge_tls_reloads_total{result}`). The SIGHUP handler is installed before this
    /// returns, so a SIGHUP sent once the node is up never falls to the default action
    /// (ending the process).
    pub fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) -> impl Future<Output = ()> + Send {
        let mut hangup = crate::hangup::Hangup::new();
        async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                    _ = hangup.recv() => tracing::info!("SIGHUP: reading the TLS certificate again"),
                }
                self.reload_and_report();
            }
        }
    }

    fn reload_and_report(&self) {
        match self.reload() {
            Ok(false) => {}
            Ok(true) => {
                metrics::counter!("edge_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(cert = ?self.files.cert, "TLS certificate reloaded");
            }
            Err(err) => {
                metrics::counter!("edge_tls_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %err, "TLS certificate not reloaded; still serving the previous one");
            }
        }
    }
}

/// Records when the certificate in use was loaded (`edge_tls_certificate_loaded_seconds`).
fn loaded_now() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    metrics::gauge!("edge_tls_certificate_loaded_seconds").set(now);
}

fn read(files: &TlsFiles) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
    Ok((read(&files.cert)?, read(&files.key)?))
}

fn certified(
    files: &TlsFiles,
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let pem =
        |path: &Path, e: rustls::pki_types::pem::Error| TlsError::Pem { path: path.to_owned(), reason: e.to_string() };
    let chain =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>().map_err(|e| pem(&files.cert, e))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: files.cert.clone() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem(&files.key, e))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    })
}

/// A client's byte stream: plain TCP, or TLS over it. The TLS state (buffers, keys) is boxed
/// so that a plain connection does not carry its size.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }
}
