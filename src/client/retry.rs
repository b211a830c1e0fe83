//! The retry policy: which failures are worth another try, and how long to wait before it.
//! Codes UNAVAILABLE (a replica starting, draining or gone) and RESOURCE_EXHAUSTED (a busy server's
//! admission limit); bounded exponential backoff with full jitter, so clients retrying together
//! spread out. The Python client's `retry.py` is the same.
use std::time::Duration;

/// Whether a call that failed with `code` is worth sending again.
pub fn is_retryable(code: tonic::Code) -> bool {
    matches!(code, tonic::Code::Unavailable | tonic::Code::ResourceExhausted)
}

/// At most `max_attempts` tries in all; waits grow by `multiplier` from `initial_backoff` up to `max_backoff`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
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
    /// The wait before retry number `attempt` (0-based): uniform in `[0, min(max, initial·multiplier^attempt)]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self.initial_backoff.as_secs_f64() * self.multiplier.powi(attempt as i32);
        Duration::from_secs_f64(cap.min(self.max_backoff.as_secs_f64()) * jitter())
    }
}

/// A fraction in `[0, 1)` from the clock's nanoseconds mixed by SplitMix64: jitter needs no
/// statistical quality, only that concurrent clients do not wait in step.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut z = (nanos as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as f64 / 2f64.powi(64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_bounded_backoff() {
        assert!(is_retryable(tonic::Code::Unavailable) && is_retryable(tonic::Code::ResourceExhausted));
        assert!(!is_retryable(tonic::Code::InvalidArgument) && !is_retryable(tonic::Code::DeadlineExceeded));
        let policy = RetryPolicy::default();
        for attempt in 0..20 {
            let cap = (0.1 * 2f64.powi(attempt as i32)).min(5.0);
            assert!(policy.backoff(attempt).as_secs_f64() <= cap);
        }
    }
}
