//! Every knob of the edge, with its default, in one place.

use std::time::Duration;

use protocol::limits::MAX_CLIENT_FRAME_BYTES;
use protocol::ratelimit::FloodLimits;

use crate::admission::AdmissionConfig;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Edge settings. `Default` gives the documented defaults (see `docs/operations.md`).
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Bytes tungstenite allocates up front to read each connection's frames. Small on purpose:
    /// it is held for the life of every idle connection. Frames larger than it still arrive
    /// (the buffer grows for them) up to [`EdgeConfig::max_frame_bytes`].
    pub read_buffer_bytes: usize,
    /// Bytes of outgoing frames tungstenite gathers before writing to the socket; a flush writes
    /// whatever is gathered, so a burst of events leaves in one write.
    pub write_buffer_bytes: usize,
    /// Largest client message (and frame); larger ones close with 1009.
    pub max_frame_bytes: usize,
    /// Bytes of outgoing frames queued per connection before it is closed as a slow consumer
    /// (4009). Typing and presence are dropped first, once the queue is half full.
    pub outbound_queue_bytes: usize,
    /// Time from TCP accept to a valid token (upgrade header/query, or `auth` frame): the TLS
    /// handshake, when the listener has TLS, and the upgrade run within it.
    pub auth_timeout: Duration,
    /// Close (4010) when nothing arrives from the client for this long.
    pub idle_timeout: Duration,
    /// Longest time one write to a client's socket may wait (the client not reading, its
    /// receive window and our send buffer full). Past it the connection is closed as a slow
    /// consumer (4009): a peer that stops reading is gone within this plus the close grace
    /// (10 s), whatever the kernel buffers hold, and never pins its task and buffers.
    pub write_timeout: Duration,
    /// Flood limits per connection.
    pub flood: FloodLimits,
    /// Requests from one connection awaiting the router at once; reading pauses beyond it.
    pub max_inflight_requests: usize,
    /// How long a request to the router may take before the client gets `unavailable`.
    pub request_timeout: Duration,
    /// Capacity of the edge's bus inbox (events from routers).
    pub bus_inbox_capacity: usize,
    /// Drain: connections told to go away per batch, and the pause between batches.
    pub drain_batch: usize,
    pub drain_interval: Duration,
    /// The delay clients are told to wait before reconnecting after a `goaway`.
    pub reconnect_after: Duration,
    /// Connection caps and connect rates.
    pub admission: AdmissionConfig,
    /// How long before its token expires a connection is sent `token_expiring`.
    pub token_warning: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            read_buffer_bytes: 1024,
            write_buffer_bytes: 8 * 1024,
            max_frame_bytes: MAX_CLIENT_FRAME_BYTES,
            outbound_queue_bytes: 1024 * 1024,
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(90),
            write_timeout: Duration::from_secs(10),
            flood: FloodLimits {
                requests_per_second: 50,
                request_burst: 200,
                ephemeral_per_second: 5,
                ephemeral_burst: 10,
                max_strikes: 20,
            },
            max_inflight_requests: 64,
            request_timeout: Duration::from_secs(10),
            bus_inbox_capacity: 65_536,
            drain_batch: 1000,
            drain_interval: Duration::from_millis(100),
            reconnect_after: Duration::from_millis(500),
            admission: AdmissionConfig::default(),
            token_warning: Duration::from_secs(60),
        }
    }
}

impl EdgeConfig {
    /// The tungstenite configuration derived from this one. Every field is set on purpose:
    /// tungstenite's defaults (128 KiB buffers, 64 MiB messages) cost ~130 KiB per idle
    /// connection and accept frames no chat needs.
    pub fn websocket(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(self.read_buffer_bytes)
            .write_buffer_size(self.write_buffer_bytes)
            // Writes fail (and the connection closes) rather than buffer without bound; our own
            // outbound queue is the real bound, this one only guards tungstenite's buffer.
            .max_write_buffer_size(self.write_buffer_bytes + self.max_frame_bytes.max(self.outbound_queue_bytes))
            .max_message_size(Some(self.max_frame_bytes))
            .max_frame_size(Some(self.max_frame_bytes))
            .accept_unmasked_frames(false)
    }
}
