//! The one retry policy of our clients (the Python client mirrors it in `retry.py`): a call
//! refused with RESOURCE_EXHAUSTED (the server's queue is full) or UNAVAILABLE (starting, shutting
//! down, unreachable) is retried, unless the server's retry pushback says not to (an answer too
//! large to send), with bounded exponential backoff and full jitter, as gRPC's
//! service-config retry policy does: before retry `k` (1-based) wait a uniform random time in
//! `[0, min(max_backoff, initial_backoff · multiplier^(k−1))]`; at most `max_attempts` calls.
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tonic::{Code, Status};

/// Codes worth retrying: the request was not processed, and may be once the server has room.
pub const RETRYABLE_CODES: [Code; 2] = [Code::Unavailable, Code::ResourceExhausted];

pub fn is_retryable(code: Code) -> bool {
    RETRYABLE_CODES.contains(&code)
}

/// Whether the server asked not to retry: gRPC's retry pushback (gRFC A6), a negative
/// `grpc-retry-pushback-ms` (sent with RESOURCE_EXHAUSTED for an answer too large to send).
pub fn pushback_forbids(status: &Status) -> bool {
    let pushback = status.metadata().get("grpc-retry-pushback-ms").and_then(|v| v.to_str().ok());
    pushback.is_some_and(|ms| ms.trim().parse::<i64>().map_or(true, |ms| ms < 0))
}

/// A retryable code, and no pushback that forbids it.
pub fn should_retry(status: &Status) -> bool {
    is_retryable(status.code()) && !pushback_forbids(status)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Calls in all, the first included (1: no retry).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// The longest wait before retry `attempt` (1-based):
    /// `min(max_backoff, initial_backoff · multiplier^(attempt−1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::from_secs_f64(seconds.min(self.max_backoff.as_secs_f64()))
    }

    /// The wait before retry `attempt` (1-based): uniform in `[0, ceiling(attempt)]` (full jitter,
    /// so that clients refused together do not come back together).
    pub fn backoff(&self, attempt: u32) -> Duration {
        self.ceiling(attempt).mul_f64(unit_random())
    }

    /// Calls `call` until it succeeds, fails with a code that is not retryable, or `max_attempts`
    /// calls have been made; returns the last outcome.
    pub async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(status) if should_retry(&status) && attempt < self.max_attempts => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

/// A uniform number in `[0, 1)`: std's randomly keyed hasher is random enough for jitter and
/// needs no RNG dependency.
fn unit_random() -> f64 {
    let bits = std::collections::hash_map::RandomState::new().build_hasher().finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn backoff_grows_is_bounded_and_jittered() {
        let policy = RetryPolicy::default();
        let ceilings: Vec<f64> = (1..=8).map(|k| policy.ceiling(k).as_secs_f64()).collect();
        for (got, want) in ceilings.iter().zip([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]) {
            assert!((got - want).abs() < 1e-9, "{ceilings:?}");
        }
        assert_eq!(policy.ceiling(u32::MAX), policy.max_backoff);
        let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(3)).collect();
        assert!(waits.iter().all(|w| *w <= policy.ceiling(3)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 150, "no jitter: {} distinct waits of 200", distinct.len());
    }

    #[tokio::test]
    async fn retries_only_retryable_codes_and_stops_after_max_attempts() {
        let policy = RetryPolicy { initial_backoff: Duration::from_millis(1), ..Default::default() };
        let calls = AtomicU32::new(0);
        let flaky = || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0 => Err(Status::resource_exhausted("busy")),
                1 => Err(Status::unavailable("starting")),
                _ => Ok(7),
            }
        };
        assert_eq!(policy.run(flaky).await.unwrap(), 7);
        assert_eq!(calls.swap(0, Ordering::SeqCst), 3);

        let invalid = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Status::invalid_argument("bad"))
        };
        assert_eq!(policy.run(invalid).await.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(calls.swap(0, Ordering::SeqCst), 1);

        let busy = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Status::resource_exhausted("busy"))
        };
        assert_eq!(policy.run(busy).await.unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(calls.swap(0, Ordering::SeqCst), policy.max_attempts);

        // An answer too large to send: RESOURCE_EXHAUSTED with a negative pushback, not retried.
        let too_large = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            let mut status = Status::resource_exhausted("result too large: ...");
            status.metadata_mut().insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
            Err::<(), _>(status)
        };
        assert_eq!(policy.run(too_large).await.unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
