//! A connection's first moments: the TLS handshake (when the listener has TLS), the
//! WebSocket upgrade (subprotocol, token in the request) and authentication (from the
//! upgrade, or the first frame), all within one deadline and in the connection's own task,
//! so a slow client holds only itself up, never the accept loop.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use protocol::codec::decode_client;
use protocol::{ClientFrame, CloseCode, Encoding, ErrorCode, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};

use crate::Services;
use crate::admission::{client_ip, origin_allowed};
use crate::auth::Verified;
use crate::connection::encode;
use crate::tls::ClientStream;
use audit::Event;

pub(crate) type Ws = WebSocketStream<ClientStream>;

/// What the upgrade request carried.
#[derive(Default)]
pub(crate) struct Upgrade {
    pub encoding: Option<Encoding>,
    pub token: Option<String>,
    /// The connection's place in the node's and its address's caps, given back on drop.
    pub admitted: Option<IpTicket>,
}

impl Upgrade {
    /// The client's address as admission saw it (the forwarded one behind a trusted proxy).
    pub fn client(&self, peer: SocketAddr) -> IpAddr {
        self.admitted.as_ref().map(|t| t.ip).unwrap_or(peer.ip())
    }
}

/// One admitted connection of a client address; released when dropped.
pub(crate) struct IpTicket {
    services: Arc<Services>,
    pub ip: IpAddr,
}

impl Drop for IpTicket {
    fn drop(&mut self) {
        self.services.admission().release(self.ip);
    }
}

/// One of a user's connections (devices) on this node; released when dropped.
pub(crate) struct UserTicket {
    services: Arc<Services>,
    user: Arc<str>,
}

impl UserTicket {
    /// Takes a place among `user`'s connections, or refuses with 4011.
    pub(crate) fn take(services: &Arc<Services>, user: &Arc<str>) -> Result<UserTicket, CloseCode> {
        match services.admission().admit_user(user) {
            Ok(()) => Ok(UserTicket { services: services.clone(), user: user.clone() }),
            Err(refusal) => {
                metrics::counter!("edge_admission_refusals_total", "reason" => refusal.label()).increment(1);
                Err(CloseCode::TooManyConnections)
            }
        }
    }
}

impl Drop for UserTicket {
    fn drop(&mut self) {
        self.services.admission().release_user(&self.user);
    }
}

/// Upgrades the socket before `deadline`; `None` when the handshake failed or the
/// connection was refused (both counted).
pub(crate) async fn upgrade(
    stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Services>,
    deadline: tokio::time::Instant,
) -> Option<(Ws, Upgrade)> {
    let stream = match &shared.tls {
        None => ClientStream::Plain(stream),
        Some(tls) => match tokio::time::timeout_at(deadline, tls.acceptor().accept(stream)).await {
            Ok(Ok(tls)) => ClientStream::Tls(Box::new(tls)),
            Ok(Err(err)) => {
                // A plain-text client on the TLS port, an unknown CA, a protocol version too old.
                metrics::counter!("edge_tls_handshake_failures_total").increment(1);
                metrics::counter!("edge_handshake_failures_total").increment(1);
                tracing::debug!(error = %err, %peer, "TLS handshake failed");
                return None;
            }
            Err(_) => {
                metrics::counter!("edge_tls_handshake_failures_total").increment(1);
                metrics::counter!("edge_handshake_failures_total").increment(1);
                return None;
            }
        },
    };
    let mut upgrade = Upgrade::default();
    // The error type is tungstenite's; its size is not ours to choose.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        // Admission first: a refused client costs no subprotocol or token work.
        let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
        let client = client_ip(peer.ip(), forwarded, &shared.config.admission.trusted_proxies);
        let refused = |reason: &str| {
            metrics::counter!("edge_admission_refusals_total", "reason" => reason.to_owned()).increment(1);
            shared.audit.note(&Event::Refused { peer: peer.ip(), client, reason });
        };
        let origin = req.headers().get("origin").map(|v| v.to_str().unwrap_or("\u{fffd}"));
        if !origin_allowed(origin, &shared.config.admission.allowed_origins) {
            refused("origin");
            let mut err = ErrorResponse::new(Some("origin not allowed".into()));
            *err.status_mut() = StatusCode::FORBIDDEN;
            return Err(err);
        }
        // The lock is held for the decision only, not while the refusal is recorded.
        let admitted = shared.admission().admit(client, Instant::now());
        if let Err(refusal) = admitted {
            refused(refusal.label());
            let mut err = ErrorResponse::new(Some(format!("connection refused: {}", refusal.label())));
            *err.status_mut() = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            err.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            return Err(err);
        }
        upgrade.admitted = Some(IpTicket { services: shared.clone(), ip: client });
        let offered: Vec<&str> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        let Some(encoding) = Encoding::negotiate(offered.iter().copied()) else {
            let mut err =
                ErrorResponse::new(Some("unsupported subprotocol; offer msg.v1.json or msg.v1.bincode".into()));
            *err.status_mut() = StatusCode::BAD_REQUEST;
            return Err(err);
        };
        if !offered.is_empty() {
            resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(encoding.subprotocol()));
        }
        upgrade.encoding = Some(encoding);
        let header = req.headers().get("authorization").and_then(|v| v.to_str().ok());
        upgrade.token = header.and_then(bearer_token).map(str::to_owned).or_else(|| {
            req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(str::to_owned))
        });
        Ok(resp)
    };
    let accept = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.config.websocket()));
    match tokio::time::timeout_at(deadline, accept).await {
        Ok(Ok(ws)) => Some((ws, upgrade)),
        Ok(Err(err)) => {
            metrics::counter!("edge_handshake_failures_total").increment(1);
            tracing::debug!(error = %err, "handshake failed");
            None
        }
        Err(_) => {
            metrics::counter!("edge_handshake_failures_total").increment(1);
            None
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme is case-insensitive
/// (RFC 7235), so `bearer` and `BEARER` work too.
pub(crate) fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Why authentication failed: the close code, and the result for metrics and the audit
/// trail.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AuthFailure {
    pub code: CloseCode,
    pub result: &'static str,
}

fn failed(code: CloseCode, result: &'static str) -> AuthFailure {
    AuthFailure { code, result }
}

/// Waits for a valid token: from the upgrade, or the first frame. `now_secs` is the wall
/// clock in seconds, for the token's expiry.
pub(crate) async fn authenticate(
    ws: &mut Ws,
    shared: &Services,
    encoding: Encoding,
    token: Option<String>,
    deadline: tokio::time::Instant,
    now_secs: impl FnOnce() -> u64,
) -> Result<Verified, AuthFailure> {
    let token = match token {
        Some(t) => t,
        None => loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(failed(CloseCode::AuthTimeout, "timeout")),
                Ok(None | Some(Err(_))) => return Err(failed(CloseCode::Normal, "left")),
                Ok(Some(Ok(m))) => m,
            };
            let bytes = match (&msg, encoding) {
                (Message::Text(t), Encoding::Json) => t.as_bytes(),
                (Message::Binary(b), Encoding::Bincode) => &b[..],
                (Message::Ping(_) | Message::Pong(_), _) => continue,
                (Message::Close(_), _) => return Err(failed(CloseCode::Normal, "left")),
                _ => return Err(failed(CloseCode::ProtocolError, "protocol_error")),
            };
            match decode_client(encoding, bytes) {
                Ok(ClientFrame::Auth { token }) => break token,
                _ => {
                    let frame =
                        ServerFrame::error(None, ErrorCode::Unauthenticated, "authenticate first: send an auth frame");
                    let _ = ws.send(encode(encoding, &frame)).await;
                    return Err(failed(CloseCode::Unauthorized, "no_auth_frame"));
                }
            }
        },
    };
    match shared.auth.verify(&token, now_secs()) {
        Ok(v) if crate::revocation::revoked(shared, &v.user, v.jti.as_deref(), v.iat, v.exp) => {
            metrics::counter!("edge_auth_total", "result" => "revoked").increment(1);
            Err(failed(CloseCode::TokenRevoked, "revoked"))
        }
        Ok(verified) => {
            metrics::counter!("edge_auth_total", "result" => "ok").increment(1);
            Ok(verified)
        }
        Err(err) => {
            metrics::counter!("edge_auth_total", "result" => err.label()).increment(1);
            tracing::debug!(error = %err, "authentication failed");
            Err(failed(CloseCode::Unauthorized, err.label()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer abc", "bearer abc", "BEARER abc", "bEaReR  abc "] {
            assert_eq!(bearer_token(header), Some("abc"), "{header:?}");
        }
        for header in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", ""] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }
}
