//! The controller/worker protocol: one JSON object per line over TCP, so workers on other
//! machines join a run the same way local ones do.
//!
//! ```text
//! worker → joined                      controller → start {index, workers, plan, epoch}
//! worker → prepared                    (worker 0 created the broadcast channel)
//!                                      controller → connect
//! worker → connected {ok, failed}      controller → setup
//! worker → ready                       controller → go {at}
//! worker → progress {tick} every second
//!                                      controller → finish (load over and drained)
//! worker → done {result}
//! ```
//! Either side closing the connection ends the run for the other.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

use crate::check::{RangeSet, StreamReport};
use crate::plan::Plan;
use crate::stats::Tick;

/// Longest line either side accepts (a `done` carries every stream a worker watched).
pub const MAX_LINE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    Start { index: u32, workers: u32, plan: Box<Plan>, epoch_unix_ms: u64 },
    Connect,
    Setup,
    Go { at_unix_ms: u64 },
    Finish,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToController {
    Joined { version: String },
    Prepared,
    Connected { ok: u64, failed: u64 },
    Ready,
    Progress { tick: Tick, pending: u64 },
    Done { result: Box<WorkerResult> },
    Failed { error: String },
}

/// What a worker knows at the end that per-second ticks do not carry.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Acked seqs per chat id, from this worker's senders (a list: JSON map keys are strings).
    pub acked: Vec<(u64, RangeSet)>,
    /// Every (connection, chat) stream this worker watched.
    pub streams: Vec<StreamReport>,
    /// Connections dropped by the storm, and how many of them resumed.
    pub storm_dropped: u64,
    pub storm_resumed: u64,
    /// Milliseconds from the storm to the last of this worker's connections resuming.
    pub storm_all_resumed_ms: Option<u64>,
    /// Sends scheduled in the load phase but never made (the worker fell behind or the
    /// connection was gone).
    pub unsent: u64,
    pub reconnects: u64,
    /// CPU this worker used from the start of the load phase to `finish`.
    pub cpu_seconds: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer closed the connection")]
    Closed,
    #[error("line longer than {MAX_LINE_BYTES} bytes")]
    TooLong,
    #[error("bad message: {0}")]
    Json(#[from] serde_json::Error),
}

pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> Result<(), WireError> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message; the line length is bounded by [`MAX_LINE_BYTES`].
pub async fn read<R: AsyncBufRead + Unpin, T: for<'de> Deserialize<'de>>(r: &mut R) -> Result<T, WireError> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(WireError::Closed);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > MAX_LINE_BYTES {
            return Err(WireError::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(serde_json::from_slice(&line)?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_eof_is_closed() {
        let mut buf = Vec::new();
        write(&mut buf, &ToController::Connected { ok: 3, failed: 1 }).await.unwrap();
        write(&mut buf, &ToWorker::Go { at_unix_ms: 7 }).await.unwrap();
        let mut r = tokio::io::BufReader::new(&buf[..]);
        assert!(matches!(read(&mut r).await.unwrap(), ToController::Connected { ok: 3, failed: 1 }));
        assert!(matches!(read(&mut r).await.unwrap(), ToWorker::Go { at_unix_ms: 7 }));
        assert!(matches!(read::<_, ToWorker>(&mut r).await, Err(WireError::Closed)));
        // A result (inside the internally tagged enum) survives the trip whole.
        let mut buf = Vec::new();
        let mut set = RangeSet::new();
        set.insert(u64::MAX - 1);
        let result =
            WorkerResult { acked: vec![(9_188_857_124_678, set.clone())], unsent: 2, ..WorkerResult::default() };
        write(&mut buf, &ToController::Done { result: Box::new(result) }).await.unwrap();
        match read(&mut tokio::io::BufReader::new(&buf[..])).await.unwrap() {
            ToController::Done { result } => {
                assert_eq!((result.acked, result.unsent), (vec![(9_188_857_124_678, set)], 2))
            }
            other => panic!("{other:?}"),
        }
        let mut r = tokio::io::BufReader::new(&b"{\"type\":\"nope\"}\n"[..]);
        assert!(matches!(read::<_, ToWorker>(&mut r).await, Err(WireError::Json(_))));
    }
}
