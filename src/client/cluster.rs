//! `rotations analyze --server A --server B …` (or one `dns:///name:port`): the corpus cut into
//! chunks by corpus index as the replicas pull them (the file read lazily, so only the chunks in
//! flight are held), a chunk whose replica failed sent to another, the name resolved again every
//! `--resolve-interval` so new replicas join (same model checked) and vanished ones stop taking
//! chunks, the exact per-layer statistics merged and tested by a replica. The result equals one
//! server's Analyze bit for bit (the Python client's `Cluster` does the same).
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context;
use tracing::field::Empty;
use tracing::Instrument;

use super::angles_file::AnglesFile;
use super::connect::AuthChannel;
use super::inside_merge::{step_options, InsideSums};
use super::retry::{should_retry, RetryPolicy};
use super::sentences::InvalidSentences;
use super::sentences::{locate, SentenceLines};
use super::skipped::Skipped;
use super::validate::{validate_chunk, validate_significance, Expected};
use super::vectors_file::{VectorLayout, VectorsFile};
use super::{connect_to, status_error};
use crate::analysis::{merge_conditions, merge_layers, AngleMatrixSum, ExactMoments, PairedStats};
use crate::config::ConnectArgs;
use crate::engine::{quote, InvalidSentence};
use crate::proto;
use crate::proto::rotation_service_client::RotationServiceClient;
use crate::service::convert::{
    all_layers, angle_matrix_sums_from_proto, condition_moments_from_proto, condition_statistics, layer_statistics,
    paired_stats_from_proto,
};

/// Chunks each replica computes at once.
const IN_FLIGHT: usize = 2;
/// A chunk's deadline is this plus [`CHUNK_DEADLINE_PER_SENTENCE`] for each of its sentences; past
/// it the chunk goes to another replica. Generous: a frozen replica is found sooner by the
/// connection's keepalive pings (connect.rs); this bounds one that answers pings but not the call.
const CHUNK_DEADLINE_BASE: Duration = Duration::from_secs(60);
const CHUNK_DEADLINE_PER_SENTENCE: Duration = Duration::from_secs(2);
/// How long a worker waits when others hold the last chunks (one may yet fail and come back).
const IDLE_POLL: Duration = Duration::from_millis(20);

type Rpc = RotationServiceClient<AuthChannel>;

/// Lists the replicas' addresses; called at the start and again every interval (so a test can
/// feed a growing list, and a headless Service's new pods are found).
pub type Resolve = Arc<dyn Fn() -> anyhow::Result<Vec<String>> + Send + Sync>;

/// Where the replicas are, and how often to look again during a run.
#[derive(Clone)]
pub struct Replicas {
    pub resolve: Resolve,
    pub interval: Duration,
}

impl Replicas {
    /// The `--server` values: addresses as given, `dns:///name:port` looked up each time.
    pub fn from_servers(servers: &[String], interval: Duration) -> Self {
        let servers = servers.to_vec();
        Self { resolve: Arc::new(move || resolve(&servers)), interval }
    }
}

/// The replicas' addresses: as given, or every address a `dns:///name:port` resolves to.
pub fn resolve(servers: &[String]) -> anyhow::Result<Vec<String>> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for server in servers {
        match server.strip_prefix("dns:///") {
            Some(name) => {
                let mut found: Vec<_> =
                    name.to_socket_addrs().with_context(|| format!("cannot resolve {server}"))?.collect();
                found.sort();
                found.dedup();
                // host:port: plaintext, or TLS when TLS material is given (as for any address).
                out.extend(found.into_iter().map(|a| a.to_string()));
            }
            None => out.push(server.clone()),
        }
    }
    anyhow::ensure!(!out.is_empty(), "no replica found in {servers:?}");
    Ok(out)
}

/// What a sharded run returns: the analysis (without per-sentence angles when they went to a
/// file), the sentences in corpus order (empty then too), and what each replica did.
pub struct Outcome {
    pub analysis: proto::Analysis,
    pub sentences: Vec<String>,
    pub angles_file: Option<AnglesFile>,
    /// With `--vectors-out`: the vectors' files, written.
    pub vectors_file: Option<VectorsFile>,
    /// (address, chunks served, failures), in the order the replicas joined.
    pub replicas: Vec<(String, usize, usize)>,
    /// Sentences in the file.
    pub total: usize,
    /// With `skip_invalid`: the sentences left out, in corpus order, at their lines.
    pub skipped: Vec<Skipped>,
}

/// A piece of the corpus: `sentences` from corpus index `first`, with their lines in the file.
struct Chunk {
    number: usize,
    /// Replicas that failed it so far.
    failures: usize,
    first: usize,
    sentences: Vec<String>,
    lines: Vec<usize>,
}

/// One chunk's angles (its stream messages) and its exact statistics.
struct ChunkResult {
    parts: Vec<proto::RotationChunk>,
    last: proto::RotationChunk,
}

#[derive(Default)]
struct Replica {
    served: usize,
    failures: usize,
    workers: usize,
    /// In the latest lookup; one that is not takes no more chunks.
    listed: bool,
    /// Failed `max_attempts` times in a row, or sent an invalid answer: not used again in this run.
    dropped: bool,
    client: Option<Rpc>,
}

/// The corpus as it is cut and computed, shared by the workers.
struct State {
    source: SentenceLines,
    exhausted: bool,
    read: usize,
    cut: usize,
    computed: usize,
    resend: VecDeque<Chunk>,
    replicas: BTreeMap<String, Replica>,
    joined: Vec<String>,
    /// The latest failure, for the error when no replica is left.
    last_failure: Option<String>,
}

/// What has come back: the merged statistics, and the angles kept in memory or written to the file.
struct Collected {
    merged: Vec<PairedStats>,
    /// Each condition's angle statistics (for a later two-group test).
    conditions: Vec<Vec<ExactMoments>>,
    /// With `all_layers`: the exact sums of the layer-angle matrices.
    matrices: AngleMatrixSum,
    /// With steps or norms: their exact sums.
    inside: InsideSums,
    /// Rows (sentences, or occurrences) and sentences received.
    rows: u64,
    sentences: usize,
    last: Option<proto::RotationChunk>,
    kept: BTreeMap<usize, (Vec<proto::RotationChunk>, Vec<String>)>,
    /// Sentences left out (skip_invalid), placed at their lines as their chunks come back.
    skipped: Vec<Skipped>,
    file: Option<AnglesFile>,
    vectors: Option<VectorsFile>,
}

struct Run {
    state: Mutex<State>,
    collected: Mutex<Collected>,
    request: proto::RotationRequest,
    /// What every answer must agree with.
    expected: Expected,
    path: PathBuf,
    /// `--marked` sentences: unmarked per chunk.
    marked: bool,
    chunking: Chunking,
    bar: indicatif::ProgressBar,
    /// Once a chunk has failed with invalid sentences: every invalid sentence found (by corpus
    /// index, with its line), and the chunks left are only checked (`validate_only`, no forward pass).
    invalid: Mutex<Option<BTreeMap<usize, (usize, InvalidSentence)>>>,
}

/// How a corpus is cut: sentences per chunk, and each chunk's deadline (`None`: [`chunk_deadline`]
/// of its size).
#[derive(Clone, Copy, Debug)]
pub struct Chunking {
    pub size: usize,
    pub deadline: Option<Duration>,
}

impl Chunking {
    /// Chunks of `size` sentences with the default deadline.
    pub fn of(size: usize) -> Self {
        Self { size, deadline: None }
    }
}

/// The sentences file of a sharded run, and whether its sentences carry `--marked` marks.
pub struct CorpusFile<'a> {
    pub path: &'a Path,
    pub marked: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("not poisoned")
}

enum Next {
    Compute(Chunk),
    Wait,
    Stop,
}

impl Run {
    fn done(&self) -> bool {
        let s = lock(&self.state);
        s.exhausted && s.resend.is_empty() && s.computed == s.cut
    }

    /// The next chunk for `address`: a failed one first, else the next lines of the file.
    fn next_chunk(&self, address: &str) -> anyhow::Result<Next> {
        let mut s = lock(&self.state);
        if !s.replicas.get(address).is_some_and(|r| r.listed && !r.dropped) {
            return Ok(Next::Stop);
        }
        if let Some(chunk) = s.resend.pop_front() {
            return Ok(Next::Compute(chunk));
        }
        if !s.exhausted {
            let numbered: Vec<(usize, String)> =
                s.source.by_ref().take(self.chunking.size).collect::<anyhow::Result<_>>()?;
            s.exhausted = numbered.len() < self.chunking.size;
            if !numbered.is_empty() {
                let (lines, sentences): (Vec<_>, Vec<_>) = numbered.into_iter().unzip();
                let chunk = Chunk { number: s.cut, failures: 0, first: s.read, sentences, lines };
                s.cut += 1;
                s.read += chunk.sentences.len();
                return Ok(Next::Compute(chunk));
            }
        }
        Ok(if s.computed == s.cut { Next::Stop } else { Next::Wait })
    }

    fn computed(&self, address: &str, chunk: Chunk, result: ChunkResult, rows: u64) -> anyhow::Result<()> {
        self.bar.inc(chunk.sentences.len() as u64);
        lock(&self.collected).add(chunk, result, rows)?;
        let mut s = lock(&self.state);
        s.computed += 1;
        s.replicas.get_mut(address).expect("known").served += 1;
        Ok(())
    }

    /// `chunk` goes back for another replica; `drop` takes `address` out of the run at once.
    fn failed(&self, address: &str, mut chunk: Chunk, why: String, drop: bool) {
        chunk.failures += 1;
        let mut s = lock(&self.state);
        let end = chunk.first + chunk.sentences.len();
        s.last_failure = Some(format!("{address}, sentences {}..{end}: {why}", chunk.first));
        s.resend.push_front(chunk);
        let replica = s.replicas.get_mut(address).expect("known");
        replica.failures += 1;
        replica.dropped |= drop;
        let failures: usize = s.replicas.values().map(|r| r.failures).sum();
        self.bar.set_message(format!("{failures} failures, chunks re-sent"));
    }

    /// What the request's own chunks cannot check: the target's token ids, the same in every chunk.
    fn agrees(&self, last: &proto::RotationChunk) -> anyhow::Result<()> {
        let collected = lock(&self.collected);
        let Some(before) = &collected.last else { return Ok(()) };
        let ids = |c: &proto::RotationChunk| (c.target_token_id, c.target_token_ids.clone());
        anyhow::ensure!(ids(before) == ids(last), "target token ids {:?}, other chunks {:?}", ids(last), ids(before));
        Ok(())
    }

    fn left(&self, address: &str, dropped: bool) {
        let mut s = lock(&self.state);
        let replica = s.replicas.get_mut(address).expect("known");
        replica.workers -= 1;
        replica.dropped |= dropped;
    }
}

impl Collected {
    /// Merges a validated chunk of `rows` rows.
    fn add(&mut self, chunk: Chunk, result: ChunkResult, rows: u64) -> anyhow::Result<()> {
        self.rows += rows;
        self.sentences += chunk.sentences.len();
        let in_chunk = |i: usize| i.checked_sub(chunk.first);
        for part in &result.parts {
            self.skipped.extend(super::skipped::place(
                &part.skipped,
                |i| in_chunk(i).and_then(|k| chunk.lines.get(k).copied()),
                |i| in_chunk(i).and_then(|k| chunk.sentences.get(k).cloned()),
            ));
        }
        let stats = paired_stats_from_proto(&result.last.statistics).map_err(|e| anyhow::anyhow!("{e}"))?;
        // Integer sums: the order in which chunks arrive does not matter.
        merge_layers(&mut self.merged, &stats);
        let conditions =
            condition_moments_from_proto(&result.last.condition_statistics).map_err(|e| anyhow::anyhow!("{e}"))?;
        merge_conditions(&mut self.conditions, &conditions);
        if let Some(sums) = result.last.all_layers.as_ref().and_then(|a| a.sums.as_ref()) {
            let sums = angle_matrix_sums_from_proto(sums).map_err(|e| anyhow::anyhow!("{e}"))?;
            self.matrices.merge(&sums).map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        self.inside.add(&result.last)?;
        if let Some(vectors) = &mut self.vectors {
            result.parts.iter().try_for_each(|part| vectors.write(part))?;
        }
        match &mut self.file {
            Some(file) => result.parts.iter().try_for_each(|part| file.write(part))?,
            None => {
                self.kept.insert(chunk.number, (result.parts, chunk.sentences));
            }
        }
        self.last = Some(result.last);
        Ok(())
    }
}

/// A replica's worker: takes the next chunk until none is left; a failed chunk goes back for
/// another replica, and a replica that fails `max_attempts` times in a row leaves.
async fn pull_chunks(address: String, mut client: Rpc, run: Arc<Run>) -> anyhow::Result<()> {
    let policy = RetryPolicy::default();
    let mut failures_in_a_row = 0;
    let dropped = loop {
        let chunk = match run.next_chunk(&address)? {
            Next::Compute(chunk) => chunk,
            Next::Wait => {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            Next::Stop => break false,
        };
        let deadline = run.chunking.deadline.unwrap_or_else(|| chunk_deadline(chunk.sentences.len()));
        let span = chunk_span(&address, &chunk);
        let only_check = lock(&run.invalid).is_some();
        let answer = compute_chunk(&mut client, &run.request, &chunk, run.marked, deadline, only_check)
            .instrument(span.clone())
            .await;
        let checked = answer.map(|result| {
            let valid = if only_check {
                Ok(0)
            } else {
                validate_chunk(&run.expected, chunk.first, chunk.sentences.len(), &result.parts, &result.last)
                    .and_then(|rows| run.agrees(&result.last).map(|()| rows))
            };
            (result, valid)
        });
        match checked {
            Ok((result, Ok(_))) if only_check => {
                failures_in_a_row = 0;
                run.checked(&address, chunk, &result.last)?;
            }
            Ok((result, Ok(rows))) => {
                failures_in_a_row = 0;
                run.computed(&address, chunk, result, rows)?;
            }
            Ok((_, Err(invalid))) => {
                // Not a passing fault: nothing this replica sends can be trusted any more.
                eprintln!("warning: leaving out {address}: its answer is invalid: {invalid:#}");
                run.failed(&address, chunk, format!("an invalid answer: {invalid:#}"), true);
                break true;
            }
            Err(status) if failover(&status) => {
                failed_span(&span, &status, true);
                run.failed(&address, chunk, status_error(status).to_string(), false);
                failures_in_a_row += 1;
                if failures_in_a_row >= policy.max_attempts {
                    break true;
                }
                tokio::time::sleep(policy.backoff(failures_in_a_row - 1)).await;
            }
            Err(status) if run.check_the_rest(&status) => {
                failed_span(&span, &status, false);
                run.check_only(chunk);
            }
            Err(status) => {
                failed_span(&span, &status, false);
                let line_of = |i: usize| i.checked_sub(chunk.first).and_then(|k| chunk.lines.get(k).copied());
                return Err(locate(&run.path, line_of, status_error(status)));
            }
        }
    };
    run.left(&address, dropped);
    Ok(())
}

/// A chunk's call to a replica: the server's spans for it are its children; a chunk sent again
/// after a failure is a new span with `chunk.failures` > 0.
fn chunk_span(address: &str, chunk: &Chunk) -> tracing::Span {
    tracing::info_span!(
        "chunk",
        otel.name = format!("chunk {}", chunk.number),
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_message = Empty,
        rpc.grpc.status_code = Empty,
        server.address = address,
        chunk.number = chunk.number as i64,
        chunk.failures = chunk.failures as i64,
        first_sentence = chunk.first as i64,
        sentences = chunk.sentences.len() as i64,
        failover = Empty
    )
}

/// Marks a chunk's span failed, and whether the chunk goes to another replica.
fn failed_span(span: &tracing::Span, status: &tonic::Status, failover: bool) {
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_message", status.message());
    span.record("rpc.grpc.status_code", status.code() as i32);
    span.record("failover", failover);
}

/// Worth sending to another replica: the retry policy's codes (unless the server's pushback forbids
/// a retry: an answer too large), and every code that says this replica failed (a deadline that ran
/// out, an internal error, the connection breaking mid-response, which tonic reports as UNKNOWN).
/// The codes that say the request itself is wrong (INVALID_ARGUMENT, FAILED_PRECONDITION,
/// OUT_OF_RANGE, UNAUTHENTICATED, ...) end the run: every replica would answer them alike.
fn failover(status: &tonic::Status) -> bool {
    use tonic::Code::*;
    should_retry(status)
        || matches!(status.code(), DeadlineExceeded | Internal | Unknown | Aborted | DataLoss | Cancelled)
}

/// A chunk's deadline: [`CHUNK_DEADLINE_BASE`] and [`CHUNK_DEADLINE_PER_SENTENCE`] per sentence.
pub fn chunk_deadline(sentences: usize) -> Duration {
    CHUNK_DEADLINE_BASE + CHUNK_DEADLINE_PER_SENTENCE * u32::try_from(sentences).unwrap_or(u32::MAX)
}

/// `--marked` sentences: their marks become the piece's character spans (errors name the sentence
/// by its corpus index, as the server's do).
fn unmark_piece(mut piece: proto::RotationRequest) -> Result<proto::RotationRequest, tonic::Status> {
    let first = piece.first_sentence_index as usize;
    let marked =
        super::marks::unmark(&piece.sentences, first).map_err(|e| tonic::Status::invalid_argument(format!("{e:#}")))?;
    super::apply_marks(&mut piece, marked);
    Ok(piece)
}

async fn compute_chunk(
    client: &mut Rpc,
    request: &proto::RotationRequest,
    chunk: &Chunk,
    marked: bool,
    deadline: Duration,
    validate_only: bool,
) -> Result<ChunkResult, tonic::Status> {
    let piece = proto::RotationRequest {
        sentences: chunk.sentences.clone(),
        first_sentence_index: chunk.first as u64,
        validate_only,
        ..request.clone()
    };
    let piece = if marked { unmark_piece(piece)? } else { piece };
    let collect = async {
        let mut stream = client.stream_rotations(piece).await?.into_inner();
        let mut parts = Vec::new();
        while let Some(message) = stream.message().await? {
            if message.last {
                // Read the call to its end (the status): dropped earlier, the server would see the
                // call cancelled (in its metrics and its span) instead of ended OK.
                while stream.message().await?.is_some() {}
                return Ok(ChunkResult { parts, last: message });
            }
            parts.push(message);
        }
        Err(tonic::Status::unavailable("the stream ended without its final chunk"))
    };
    tokio::time::timeout(deadline, collect)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded(format!("no answer within the chunk's {deadline:?}"))))
}

/// (name, layers, weights): what every replica must serve alike.
fn model_key(m: &proto::ModelInfo) -> (String, u32, String) {
    (m.model_name.clone(), m.num_layers, m.weights_sha256.clone())
}

/// A replica's client and its model, or why not (e.g. a pod not ready yet).
async fn reach(address: &str, how: &ConnectArgs) -> anyhow::Result<(Rpc, proto::ModelInfo)> {
    let mut client = connect_to(address, how).await?;
    let info = client.get_model_info(proto::GetModelInfoRequest {}).await.map_err(status_error)?;
    Ok((client, info.into_inner()))
}

/// The replicas at the start: every address that answers (one that does not is left out with a
/// warning). The model most of them serve is the run's (the first listed among equals); one that
/// serves another is left out with a warning. Returns that model.
async fn connect_first(
    addresses: Vec<String>,
    how: &ConnectArgs,
) -> anyhow::Result<(BTreeMap<String, Replica>, Vec<String>, proto::ModelInfo)> {
    let mut answered = Vec::new();
    for address in addresses {
        match reach(&address, how).await {
            Ok((client, info)) => answered.push((address, client, info)),
            Err(e) => eprintln!("warning: leaving out {address}: {e:#}"),
        }
    }
    let serving = |key: &(String, u32, String)| answered.iter().filter(|(_, _, i)| model_key(i) == *key).count();
    let model = answered
        .iter()
        .map(|(_, _, info)| info)
        .rev() // max_by_key keeps the last of equals: the first listed, reversed
        .max_by_key(|info| serving(&model_key(info)))
        .cloned()
        .context("no replica answers")?;
    let (mut replicas, mut joined) = (BTreeMap::new(), Vec::new());
    for (address, client, info) in answered {
        if replicas.contains_key(&address) {
            continue; // listed twice
        }
        if model_key(&info) != model_key(&model) {
            eprintln!(
                "warning: leaving out {address}: it serves {:?}, the other replicas {:?}",
                model_key(&info),
                model_key(&model)
            );
            // Known, so that the next lookups do not ask it again.
            replicas.insert(address, Replica { listed: true, dropped: true, ..Default::default() });
            continue;
        }
        replicas.insert(address.clone(), Replica { listed: true, client: Some(client), ..Default::default() });
        joined.push(address);
    }
    Ok((replicas, joined, model))
}

/// Looks the replicas up again: new ones that serve `model` join (workers spawned), ones no
/// longer listed finish their chunks and take no more. Returns how many workers started.
async fn refresh(
    replicas: &Replicas,
    how: &ConnectArgs,
    model: &proto::ModelInfo,
    run: &Arc<Run>,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
) -> usize {
    let resolve = replicas.resolve.clone();
    let listed = match tokio::task::spawn_blocking(move || resolve()).await {
        Ok(Ok(listed)) => listed,
        Ok(Err(e)) => {
            eprintln!("warning: {e:#}; keeping the replicas found before");
            return 0;
        }
        Err(e) => {
            eprintln!("warning: looking up the replicas failed: {e}");
            return 0;
        }
    };
    let unknown: Vec<String> = {
        let mut s = lock(&run.state);
        for (address, replica) in s.replicas.iter_mut() {
            replica.listed = listed.contains(address);
        }
        listed.iter().filter(|a| !s.replicas.contains_key(*a)).cloned().collect()
    };
    for address in unknown {
        match reach(&address, how).await {
            Ok((_, info)) if model_key(&info) != model_key(model) => {
                eprintln!(
                    "warning: not using {address}: it serves {:?}, the other replicas {:?}",
                    model_key(&info),
                    model_key(model)
                );
                let left_out = Replica { listed: true, dropped: true, ..Default::default() };
                lock(&run.state).replicas.insert(address, left_out);
            }
            Ok((client, _)) => {
                let replica = Replica { listed: true, client: Some(client), ..Default::default() };
                let mut s = lock(&run.state);
                s.replicas.insert(address.clone(), replica);
                s.joined.push(address);
            }
            Err(e) => eprintln!("warning: leaving out {address} for now: {e:#}"),
        }
    }
    start_workers(run, tasks)
}

/// Workers for every listed replica that has none (newly joined, or listed again).
fn start_workers(run: &Arc<Run>, tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>) -> usize {
    let mut s = lock(&run.state);
    let mut started = 0;
    for (address, replica) in s.replicas.iter_mut() {
        if replica.listed && !replica.dropped && replica.workers == 0 {
            let client = replica.client.clone().expect("a joined replica has a client");
            for _ in 0..IN_FLIGHT {
                tasks.spawn(pull_chunks(address.clone(), client.clone(), run.clone()).in_current_span());
            }
            replica.workers = IN_FLIGHT;
            started += IN_FLIGHT;
        }
    }
    started
}

/// The corpus in `sentences` (read lazily) over the replicas, reassembled into what one `Analyze`
/// returns; `request` gives everything but the sentences. `chunking.size` sentences go to a replica
/// at a time. With `angles_out`, angles and draws go to that `.npy` file instead of memory.
pub async fn analyze(
    replicas: Replicas,
    how: &ConnectArgs,
    request: proto::RotationRequest,
    corpus: CorpusFile<'_>,
    chunking: Chunking,
    angles_out: Option<&Path>,
) -> anyhow::Result<Outcome> {
    let files = OnDisk { angles: angles_out, vectors: None };
    analyze_to_disk(replicas, how, request, corpus, chunking, files).await
}

/// The files a sharded run writes as chunks arrive, instead of holding what they hold.
#[derive(Clone, Copy, Default)]
pub struct OnDisk<'a> {
    /// `--angles-out`: angles and draws.
    pub angles: Option<&'a Path>,
    /// `--vectors-out`: the vectors `request.vectors` asks for, one row per sentence.
    pub vectors: Option<&'a Path>,
}

/// [`analyze`], writing the angles and the vectors to the files `files` names.
pub async fn analyze_to_disk(
    replicas: Replicas,
    how: &ConnectArgs,
    request: proto::RotationRequest,
    corpus: CorpusFile<'_>,
    chunking: Chunking,
    files: OnDisk<'_>,
) -> anyhow::Result<Outcome> {
    let (angles_out, sentences) = (files.angles, corpus.path);
    let total = SentenceLines::count(sentences)?;
    anyhow::ensure!(total > 0, "{} holds no sentences", sentences.display());
    let resolve = replicas.resolve.clone();
    let listed = tokio::task::spawn_blocking(move || resolve()).await??;
    let (known, joined, model) = connect_first(listed, how).await?;
    let file = angles_out.map(|path| AnglesFile::create(path, total, model.num_layers as usize)).transpose()?;
    let vectors = match (files.vectors, VectorLayout::of(&request, &model)) {
        (Some(path), Some(layout)) => Some(VectorsFile::create(path, total, layout)?),
        (None, None) => None,
        _ => anyhow::bail!("a vectors file needs RotationRequest.vectors, and vectors a file"),
    };
    let expected = Expected::new(&model, &request);
    let state = State {
        source: SentenceLines::open(sentences)?,
        exhausted: false,
        read: 0,
        cut: 0,
        computed: 0,
        resend: VecDeque::new(),
        replicas: known,
        joined,
        last_failure: None,
    };
    let run = Arc::new(Run {
        state: Mutex::new(state),
        collected: Mutex::new(Collected {
            merged: Vec::new(),
            conditions: Vec::new(),
            matrices: AngleMatrixSum::default(),
            inside: InsideSums::default(),
            rows: 0,
            sentences: 0,
            last: None,
            kept: BTreeMap::new(),
            skipped: Vec::new(),
            file,
            vectors,
        }),
        request,
        expected,
        path: sentences.to_path_buf(),
        marked: corpus.marked,
        chunking,
        bar: super::progress_bar(total as u64)?,
        invalid: Mutex::new(None),
    });
    let outcome = drive(&replicas, how, &model, &run).await;
    run.bar.finish_and_clear();
    report_replicas(&run);
    outcome?;
    if let Some(every_invalid) = run.every_invalid(total) {
        return Err(every_invalid);
    }
    finish(run, total).await
}

/// Runs the workers until every chunk is computed, looking the replicas up every interval.
async fn drive(replicas: &Replicas, how: &ConnectArgs, model: &proto::ModelInfo, run: &Arc<Run>) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    start_workers(run, &mut tasks);
    let mut next_lookup = tokio::time::Instant::now() + replicas.interval;
    while !run.done() {
        if tasks.is_empty() && refresh(replicas, how, model, run, &mut tasks).await == 0 {
            let s = lock(&run.state);
            let last = s.last_failure.as_deref().map_or(String::new(), |f| format!("; the last failure: {f}"));
            anyhow::bail!("every replica failed or left; {} of {} chunks were computed{last}", s.computed, s.cut);
        }
        tokio::select! {
            ended = tasks.join_next() => {
                if let Some(ended) = ended {
                    if let Err(e) = ended.context("a replica task panicked")? {
                        tasks.abort_all();
                        return Err(e);
                    }
                }
            }
            _ = tokio::time::sleep_until(next_lookup) => {
                refresh(replicas, how, model, run, &mut tasks).await;
                next_lookup = tokio::time::Instant::now() + replicas.interval;
            }
        }
    }
    // Idle workers end on their own; shutting down waits for them to let go of the run.
    tasks.shutdown().await;
    Ok(())
}

impl Collected {
    /// The merge covers the corpus: every sentence once, and every layer's and condition's `n`
    /// the rows received.
    fn validate(&self, total: usize, expected: &Expected) -> anyhow::Result<()> {
        anyhow::ensure!(self.sentences == total, "{} sentences computed of {total}", self.sentences);
        let ns = self.merged.iter().chain(self.conditions.iter().flatten()).map(ExactMoments::n);
        anyhow::ensure!(
            ns.clone().all(|n| n == self.rows),
            "merged n {:?} for {} rows",
            ns.collect::<Vec<_>>(),
            self.rows
        );
        let layers = expected.num_layers;
        anyhow::ensure!(self.merged.len() == layers, "{} layers merged, the model has {layers}", self.merged.len());
        anyhow::ensure!(
            !expected.all_layers || self.matrices.n() == self.rows,
            "matrix sums of {} rows",
            self.matrices.n()
        );
        let steps = expected.steps.then_some(2 * layers);
        self.inside.check(self.rows, steps, expected.norms.then_some((expected.num_states, layers)))
    }
}

/// The t-tests of the merged statistics, from the first replica whose answer is valid.
async fn ask_significance(
    state: &State,
    merged: &[PairedStats],
    options: Option<proto::SignificanceOptions>,
) -> anyhow::Result<proto::SignificanceResult> {
    let ask = proto::SignificanceRequest { statistics: layer_statistics(merged), options, ..Default::default() };
    let usable = state.joined.iter().filter(|a| !state.replicas[*a].dropped);
    let mut failure = anyhow::anyhow!("no replica left to ask for the t-tests");
    for address in usable {
        let Some(mut client) = state.replicas[address].client.clone() else { continue };
        let answer = match client.test_significance(ask.clone()).await {
            Ok(answer) => answer.into_inner(),
            Err(status) if failover(&status) => {
                failure = status_error(status);
                continue;
            }
            Err(status) => return Err(status_error(status)),
        };
        match validate_significance(merged, &answer) {
            Ok(()) => return Ok(answer),
            Err(invalid) => {
                eprintln!("warning: leaving out {address}: its t-tests are invalid: {invalid:#}");
                failure = invalid.context(format!("{address} answered TestSignificance"));
            }
        }
    }
    Err(failure)
}

fn report_replicas(run: &Run) {
    let s = lock(&run.state);
    for address in &s.joined {
        let r = &s.replicas[address];
        eprintln!("replica {address}: {} chunks, {} failures", r.served, r.failures);
    }
}

/// Has a replica test the merged exact statistics, and reassembles the angles (or reads the
/// layer means back from the file).
async fn finish(run: Arc<Run>, total: usize) -> anyhow::Result<Outcome> {
    let run = Arc::into_inner(run).context("workers still hold the run")?;
    let state = run.state.into_inner().expect("not poisoned");
    let collected = run.collected.into_inner().expect("not poisoned");
    collected.validate(total, &run.expected).context("merging the replicas' answers")?;
    super::skipped::ensure_enough(total, &collected.skipped)?;
    let significance = ask_significance(&state, &collected.merged, run.request.significance).await?;
    let mut skipped = collected.skipped;
    skipped.sort_by_key(|s| s.index);
    let mut last = collected.last.context("no chunk computed")?;
    last.condition_statistics = condition_statistics(&collected.conditions);
    last.all_layers = all_layers(&collected.matrices, None);
    let expected = &run.expected;
    collected.inside.summarize(&mut last, expected.steps, expected.norms);
    if expected.steps {
        let options = Some(step_options(run.request.significance));
        last.step_significance = Some(ask_significance(&state, &collected.inside.steps, options).await?);
        last.step_significance_error = String::new();
    }
    let replicas = state.joined.iter().map(|a| (a.clone(), state.replicas[a].served, state.replicas[a].failures));
    let replicas = replicas.collect();
    let vectors_file = collected.vectors;
    if let Some(vectors) = &vectors_file {
        anyhow::ensure!(
            collected.rows == vectors.num_rows as u64,
            "{} rows for {} in the vectors' files",
            collected.rows,
            vectors.num_rows
        );
        vectors.flush()?;
    }
    if let Some(file) = collected.file {
        file.flush()?;
        let analysis = super::on_disk_analysis(&file, &last, significance);
        let angles_file = Some(file);
        return Ok(Outcome { analysis, sentences: Vec::new(), angles_file, vectors_file, replicas, total, skipped });
    }
    let (mut parts, mut sentences) = (Vec::new(), Vec::with_capacity(total));
    for (chunk_parts, chunk_sentences) in collected.kept.into_values() {
        parts.extend(chunk_parts);
        sentences.extend(chunk_sentences);
    }
    let analysis = super::assemble_stream(parts, &last, significance, total)?;
    Ok(Outcome { analysis, sentences, angles_file: None, vectors_file, replicas, total, skipped })
}

/// Every invalid sentence in one run: once a chunk fails with invalid sentences, it and every chunk
/// after it are only checked (`validate_only`: tokenized and located, no forward pass), and the run
/// ends with the error one server gives for the whole corpus.
impl Run {
    /// Whether `status` fails a chunk for its invalid sentences (without --skip-invalid): then the
    /// rest of the corpus is checked.
    fn check_the_rest(&self, status: &tonic::Status) -> bool {
        !self.request.skip_invalid && InvalidSentences::from_status(status).is_some_and(|i| !i.sentences.is_empty())
    }

    /// `chunk` failed with invalid sentences: from now on chunks are only checked, it first.
    fn check_only(&self, chunk: Chunk) {
        lock(&self.invalid).get_or_insert_with(BTreeMap::new);
        lock(&self.state).resend.push_front(chunk);
        self.bar.set_message("invalid sentences: checking the rest of the corpus");
    }

    /// A checked chunk's invalid sentences (`answer.skipped`), placed at their lines.
    fn checked(&self, address: &str, chunk: Chunk, answer: &proto::RotationChunk) -> anyhow::Result<()> {
        {
            let mut invalid = lock(&self.invalid);
            let found = invalid.get_or_insert_with(BTreeMap::new);
            for s in &answer.skipped {
                let k = (s.index as usize)
                    .checked_sub(chunk.first)
                    .filter(|k| *k < chunk.sentences.len())
                    .with_context(|| format!("{address} checked sentence {} outside its chunk", s.index))?;
                let sentence = InvalidSentence {
                    index: s.index as usize,
                    quote: quote(&chunk.sentences[k]),
                    code: s.reason.clone(),
                    reason: s.message.clone(),
                };
                found.insert(sentence.index, (chunk.lines[k], sentence));
            }
        }
        self.bar.inc(chunk.sentences.len() as u64);
        let mut s = lock(&self.state);
        s.computed += 1;
        s.replicas.get_mut(address).expect("known").served += 1;
        Ok(())
    }

    /// The error one server gives for the whole corpus (the same text, lines and details), when
    /// invalid sentences were found.
    fn every_invalid(&self, total: usize) -> Option<anyhow::Error> {
        let found = lock(&self.invalid).take().filter(|found| !found.is_empty())?;
        let lines: BTreeMap<usize, usize> = found.iter().map(|(i, (line, _))| (*i, *line)).collect();
        let invalid = found.into_values().map(|(_, sentence)| sentence).collect();
        let error = crate::error::Error::Sentences { invalid, total, first_index: 0, skipping: false };
        let status = tonic::Status::from(error);
        Some(locate(&self.path, |i| lines.get(&i).copied(), status_error(status)))
    }
}
