//! The thread that owns the backend. ONNX Runtime's `Session::run` takes `&mut self` and blocks for the
//! whole forward pass, so it lives here, fed over a channel, and never blocks the async executor.
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tokio::sync::oneshot;

use super::{Backend, Hidden, ModelError, SentenceHidden, VectorIndex};

type Reply = oneshot::Sender<Result<Vec<Hidden>, ModelError>>;

struct Job {
    batch: Vec<Vec<u32>>,
    /// The vectors the caller reads per sentence; `None`: every hidden state.
    wanted: Option<Vec<Vec<VectorIndex>>>,
    reply: Reply,
    /// The caller's span, so the forward pass shows up inside the request's trace.
    span: tracing::Span,
}

/// Handle to the worker thread; cheap to clone. The thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct ModelWorker {
    tx: mpsc::Sender<Job>,
}

impl ModelWorker {
    /// Starts the thread, builds the backend on it (ONNX Runtime sessions stay on the thread that made them)
    /// and waits until it is ready. Returns the execution provider the backend runs on and whether it gathers.
    pub fn spawn<B, F>(make: F) -> Result<(Self, &'static str, bool), ModelError>
    where
        B: Backend,
        F: FnOnce() -> Result<B, ModelError> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("model-worker".into())
            .spawn(move || {
                let mut backend = match make() {
                    Ok(b) => {
                        let _ = ready_tx.send(Ok((b.provider(), b.gathers())));
                        b
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    let _entered = job.span.enter();
                    if job.reply.is_closed() {
                        continue; // the caller has gone: skip the work
                    }
                    // A panic inside the runtime fails this batch only; the worker keeps serving.
                    let result = catch_unwind(AssertUnwindSafe(|| match &job.wanted {
                        Some(wanted) => backend.forward_wanted(&job.batch, wanted),
                        None => backend.forward(&job.batch).map(|all| all.into_iter().map(Hidden::All).collect()),
                    }))
                    .unwrap_or_else(|_| Err(ModelError::Runtime("forward pass panicked".into())));
                    let _ = job.reply.send(result);
                }
            })
            .map_err(|e| ModelError::Runtime(format!("cannot start the model thread: {e}")))?;
        let (provider, gathers) = ready_rx.recv().map_err(|_| ModelError::WorkerGone)??;
        Ok((Self { tx }, provider, gathers))
    }

    fn submit(
        &self,
        batch: Vec<Vec<u32>>,
        wanted: Option<Vec<Vec<VectorIndex>>>,
    ) -> Result<oneshot::Receiver<Result<Vec<Hidden>, ModelError>>, ModelError> {
        let (reply, rx) = oneshot::channel();
        let job = Job { batch, wanted, reply, span: tracing::Span::current() };
        self.tx.send(job).map_err(|_| ModelError::WorkerGone)?;
        Ok(rx)
    }

    pub async fn forward(&self, batch: Vec<Vec<u32>>) -> Result<Vec<SentenceHidden>, ModelError> {
        all_states(self.forward_wanted(batch, None).await?)
    }

    pub fn forward_blocking(&self, batch: Vec<Vec<u32>>) -> Result<Vec<SentenceHidden>, ModelError> {
        all_states(self.forward_wanted_blocking(batch, None)?)
    }

    pub async fn forward_wanted(
        &self,
        batch: Vec<Vec<u32>>,
        wanted: Option<Vec<Vec<VectorIndex>>>,
    ) -> Result<Vec<Hidden>, ModelError> {
        self.submit(batch, wanted)?.await.map_err(|_| ModelError::WorkerGone)?
    }

    pub fn forward_wanted_blocking(
        &self,
        batch: Vec<Vec<u32>>,
        wanted: Option<Vec<Vec<VectorIndex>>>,
    ) -> Result<Vec<Hidden>, ModelError> {
        self.submit(batch, wanted)?.blocking_recv().map_err(|_| ModelError::WorkerGone)?
    }
}

fn all_states(hidden: Vec<Hidden>) -> Result<Vec<SentenceHidden>, ModelError> {
    hidden.into_iter().map(Hidden::into_all).collect()
}
