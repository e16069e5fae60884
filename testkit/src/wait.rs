//! Polling to a deadline, instead of sleeping until something is probably ready.

use std::time::{Duration, Instant};

/// What a polled check returns: `true`, `Some(v)` or `Ok(v)` when ready. The last "not yet"
/// (a `false`, a `None`, an error) is shown when the deadline passes.
pub trait Ready {
    type Value;
    fn ready(self) -> Result<Self::Value, String>;
}

impl Ready for bool {
    type Value = ();
    fn ready(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("false".into()) }
    }
}

impl<T> Ready for Option<T> {
    type Value = T;
    fn ready(self) -> Result<T, String> {
        self.ok_or_else(|| "None".into())
    }
}

impl<T, E: std::fmt::Debug> Ready for Result<T, E> {
    type Value = T;
    fn ready(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// The pause after each failed check: short at first, so a quick condition costs little,
/// growing to 50 ms so a slow one does not spin.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((5u64 << attempt.min(4)).min(50))
}

/// Calls `check` until it is ready and returns its value; panics naming `what` (and the last
/// answer) if it is not ready within `within`. Blocks the thread: for code outside a runtime.
pub fn wait_for<R: Ready>(what: &str, within: Duration, check: impl FnMut() -> R) -> R::Value {
    try_wait_for(within, check).unwrap_or_else(|last| panic!("{what}: not within {within:?} (last: {last})"))
}

/// [`wait_for`] that returns the last answer instead of panicking.
pub fn try_wait_for<R: Ready>(within: Duration, mut check: impl FnMut() -> R) -> Result<R::Value, String> {
    let deadline = Instant::now() + within;
    let mut attempt = 0;
    loop {
        let last = match check().ready() {
            Ok(v) => return Ok(v),
            Err(last) => last,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(backoff(attempt));
        attempt += 1;
    }
}

/// Awaits `check` until it is ready and returns its value; panics naming `what` (and the last
/// answer) if it is not ready within `within`. A check that hangs is cut off at the deadline.
///
/// ```ignore
/// let port = poll_until("the admin port answers", Duration::from_secs(10), async || {
///     tokio::net::TcpStream::connect(&admin).await
/// })
/// .await;
/// ```
pub async fn poll_until<R: Ready>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> R) -> R::Value {
    let deadline = tokio::time::Instant::now() + within;
    let mut attempt = 0;
    loop {
        let last = match tokio::time::timeout_at(deadline, check()).await {
            Ok(answer) => match answer.ready() {
                Ok(v) => return v,
                Err(last) => last,
            },
            Err(_) => "still checking at the deadline".to_owned(),
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?} (last: {last})");
        }
        tokio::time::sleep(backoff(attempt)).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_the_value_once_ready() {
        let mut n = 0;
        let got = wait_for("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        });
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "never: not within")]
    fn wait_for_panics_at_the_deadline() {
        wait_for("never", Duration::from_millis(30), || false);
    }

    #[tokio::test]
    async fn poll_until_borrows_state_mutably() {
        let mut seen = Vec::new();
        let got: Result<usize, String> = Ok(poll_until("three rounds", Duration::from_secs(5), async || {
            seen.push(());
            if seen.len() >= 3 { Ok(seen.len()) } else { Err("not yet") }
        })
        .await);
        assert_eq!(got, Ok(3));
    }

    #[tokio::test]
    #[should_panic(expected = "hangs: not within")]
    async fn poll_until_cuts_off_a_hanging_check() {
        poll_until("hangs", Duration::from_millis(50), async || {
            std::future::pending::<()>().await;
            true
        })
        .await;
    }
}
