//! Admission by queued work: a request takes one of `max_concurrent_requests` slots, and the tokens
//! it sends to the model take room in a budget of `max_queued_tokens`. Ordinary load queues (the
//! batcher serves it in order); only past either limit is a request refused, at once, with
//! RESOURCE_EXHAUSTED naming the limit, so a client can back off and retry.
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// Default of `--max-concurrent-requests` (text-embeddings-inference's default).
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 512;
/// Default of `--max-queued-tokens`: generous (a few hundred thousand sentences of notebook size).
pub const DEFAULT_MAX_QUEUED_TOKENS: usize = 1 << 22;

#[derive(Clone)]
pub struct Admission {
    requests: Arc<Semaphore>,
    max_requests: usize,
    tokens: Arc<Semaphore>,
    max_tokens: usize,
}

/// A request's slot; held until its work has stopped.
pub type Slot = OwnedSemaphorePermit;
/// Room in the queued-token budget; held while the tokens are queued or computed.
pub type QueuedTokens = OwnedSemaphorePermit;

impl Admission {
    pub fn new(max_requests: usize, max_tokens: usize) -> Self {
        let max_requests = max_requests.clamp(1, Semaphore::MAX_PERMITS);
        let max_tokens = max_tokens.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Self {
            requests: Arc::new(Semaphore::new(max_requests)),
            max_requests,
            tokens: Arc::new(Semaphore::new(max_tokens)),
            max_tokens,
        }
    }

    /// The same request limit with another token budget.
    pub fn with_max_tokens(&self, max_tokens: usize) -> Self {
        Self::new(self.max_requests, max_tokens)
    }

    /// A slot among the concurrent requests, refused at once when all are taken.
    pub fn request(&self) -> Result<Slot, Error> {
        self.requests.clone().try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "server busy: max_concurrent_requests ({}) reached; retry later",
                self.max_requests
            ))
        })
    }

    /// Room for `tokens` queued tokens, refused at once when the budget cannot hold them now
    /// (RESOURCE_EXHAUSTED), or ever (INVALID_ARGUMENT: retrying cannot help).
    pub fn tokens(&self, tokens: usize) -> Result<QueuedTokens, Error> {
        self.tokens_of("sentences", tokens)
    }

    /// [`Admission::tokens`] for the request field `field` (named when the tokens can never fit).
    pub fn tokens_of(&self, field: &str, tokens: usize) -> Result<QueuedTokens, Error> {
        let n = self.fits(field, tokens)?;
        self.tokens.clone().try_acquire_many_owned(n).map_err(|_| {
            Error::Overloaded(format!(
                "server busy: {tokens} more tokens do not fit in max_queued_tokens ({}), of which {} are queued; \
                 retry later",
                self.max_tokens,
                self.max_tokens - self.tokens.available_permits()
            ))
        })
    }

    /// Room for `tokens` queued tokens (at most the whole budget), waiting for it: an admitted
    /// stream's next chunk.
    pub async fn tokens_waiting(&self, tokens: usize) -> QueuedTokens {
        let n = tokens.clamp(1, self.max_tokens) as u32;
        self.tokens.clone().acquire_many_owned(n).await.expect("the token budget is never closed")
    }

    fn fits(&self, field: &str, tokens: usize) -> Result<u32, Error> {
        if tokens > self.max_tokens {
            return Err(Error::invalid(
                field,
                format!(
                    "{tokens} tokens exceed max_queued_tokens ({}) on their own; split the input or use StreamRotations",
                    self.max_tokens
                ),
            ));
        }
        Ok(tokens.max(1) as u32)
    }

    /// Requests currently holding a slot.
    pub fn in_flight(&self) -> usize {
        self.max_requests - self.requests.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn limits_are_named_and_refusals_immediate() {
        let a = Admission::new(1, 100);
        let slot = a.request().unwrap();
        let status: tonic::Status = a.request().unwrap_err().into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("max_concurrent_requests (1)"), "{}", status.message());
        assert_eq!(a.in_flight(), 1);
        drop(slot);
        assert_eq!(a.in_flight(), 0);

        let held = a.tokens(60).unwrap();
        let status: tonic::Status = a.tokens(50).unwrap_err().into();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("max_queued_tokens (100)") && status.message().contains("60 are queued"));
        let status: tonic::Status = a.tokens(101).unwrap_err().into();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("101 tokens exceed max_queued_tokens (100)"), "{}", status.message());
        drop(held);
        let _held = a.tokens(100).unwrap();
    }
}
