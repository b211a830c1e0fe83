//! `rotations analyze --server A --server B …` (or one `dns:///name:port`): the corpus cut into
//! chunks by corpus index, each replica pulling the next (two in flight each), a chunk whose replica
//! failed sent to another, the exact per-layer statistics merged and tested by a replica. The
//! result equals one server's Analyze bit for bit (the Python client's `Cluster` does the same).
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;

use super::connect::AuthChannel;
use super::retry::{is_retryable, RetryPolicy};
use super::{connect_to, status_error};
use crate::analysis::{merge_layers, AngleMatrixSum, PairedStats};
use crate::config::ConnectArgs;
use crate::proto;
use crate::proto::rotation_service_client::RotationServiceClient;
use crate::service::convert::{all_layers, angle_matrix_sums_from_proto, layer_statistics, paired_stats_from_proto};

/// Chunks each replica computes at once.
const IN_FLIGHT: usize = 2;
/// One chunk's deadline; past it the chunk goes to another replica.
const CHUNK_DEADLINE: Duration = Duration::from_secs(600);

type Rpc = RotationServiceClient<AuthChannel>;

/// The replicas' addresses: as given, or every address a `dns:///name:port` resolves to.
pub async fn resolve(servers: &[String]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for server in servers {
        match server.strip_prefix("dns:///") {
            Some(name) => {
                let mut found: Vec<_> =
                    tokio::net::lookup_host(name).await.with_context(|| format!("cannot resolve {server}"))?.collect();
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

/// One chunk's angles (its stream messages) and its exact statistics.
struct ChunkResult {
    parts: Vec<proto::RotationChunk>,
    last: proto::RotationChunk,
}

/// What the replicas share: chunks still to compute, results by chunk number, counts.
struct Work {
    todo: Mutex<VecDeque<usize>>,
    results: Mutex<Vec<Option<ChunkResult>>>,
    served: Mutex<Vec<usize>>,
    failures: Mutex<Vec<usize>>,
}

impl Work {
    fn done(&self) -> bool {
        self.results.lock().expect("not poisoned").iter().all(Option::is_some)
    }
}

/// Connects to every replica that answers (one that does not, e.g. a pod not ready yet, is left
/// out with a warning) and checks that all serve the same model (name, layers, weights).
async fn connect_all(addresses: Vec<String>, how: &ConnectArgs) -> anyhow::Result<(Vec<String>, Vec<Rpc>)> {
    let (mut reached, mut clients) = (Vec::new(), Vec::new());
    let mut first: Option<(String, proto::ModelInfo)> = None;
    for address in addresses {
        let answer = async {
            let mut client = connect_to(&address, how).await?;
            let info = client.get_model_info(proto::GetModelInfoRequest {}).await.map_err(status_error)?;
            anyhow::Ok((client, info.into_inner()))
        };
        let (client, info) = match answer.await {
            Ok(answered) => answered,
            Err(e) => {
                eprintln!("warning: leaving out {address}: {e:#}");
                continue;
            }
        };
        if let Some((at, model)) = &first {
            let same = |m: &proto::ModelInfo| (m.model_name.clone(), m.num_layers, m.weights_sha256.clone());
            anyhow::ensure!(
                same(model) == same(&info),
                "{address} serves {:?} but {at} serves {:?}: every replica must serve the same model",
                same(&info),
                same(model)
            );
        } else {
            first = Some((address.clone(), info));
        }
        reached.push(address);
        clients.push(client);
    }
    anyhow::ensure!(!clients.is_empty(), "no replica answers");
    Ok((reached, clients))
}

/// The whole corpus over the replicas, reassembled into what one `Analyze` returns.
/// `chunk_size` sentences go to a replica at a time.
pub async fn analyze(
    servers: &[String],
    how: &ConnectArgs,
    request: proto::RotationRequest,
    chunk_size: usize,
) -> anyhow::Result<proto::Analysis> {
    let (addresses, clients) = connect_all(resolve(servers).await?, how).await?;
    let total = request.sentences.len();
    let chunks = total.div_ceil(chunk_size);
    let work = Arc::new(Work {
        todo: Mutex::new((0..chunks).collect()),
        results: Mutex::new((0..chunks).map(|_| None).collect()),
        served: Mutex::new(vec![0; addresses.len()]),
        failures: Mutex::new(vec![0; addresses.len()]),
    });
    let bar = super::progress_bar(total as u64)?;
    let request = Arc::new(request);
    let mut tasks = tokio::task::JoinSet::new();
    for (replica, client) in clients.iter().enumerate() {
        for _ in 0..IN_FLIGHT {
            let (client, work, request, bar) = (client.clone(), work.clone(), request.clone(), bar.clone());
            tasks.spawn(pull_chunks(replica, client, work, (request, chunk_size), bar));
        }
    }
    while let Some(ended) = tasks.join_next().await {
        if let Err(e) = ended.context("a replica task panicked")? {
            tasks.abort_all();
            return Err(e);
        }
    }
    bar.finish_and_clear();
    report_replicas(&addresses, &work);
    anyhow::ensure!(work.done(), "every replica failed; chunks were left uncomputed");
    let results: Vec<ChunkResult> =
        std::mem::take(&mut *work.results.lock().expect("not poisoned")).into_iter().flatten().collect();
    finish(&clients, results, &request, total).await
}

/// A replica's worker: takes the next chunk until all are done; a failed chunk goes back for
/// another replica, and a replica that fails `max_attempts` times in a row leaves.
async fn pull_chunks(
    replica: usize,
    mut client: Rpc,
    work: Arc<Work>,
    (request, chunk_size): (Arc<proto::RotationRequest>, usize),
    bar: indicatif::ProgressBar,
) -> anyhow::Result<()> {
    let policy = RetryPolicy::default();
    let mut failures_in_a_row = 0;
    while !work.done() {
        let Some(chunk) = work.todo.lock().expect("not poisoned").pop_front() else {
            // Others hold the last chunks; one may yet fail and come back.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let range = chunk * chunk_size..((chunk + 1) * chunk_size).min(request.sentences.len());
        match compute_chunk(&mut client, &request, range).await {
            Ok(result) => {
                failures_in_a_row = 0;
                // Sentences, not rows (every occurrence is a row of its own).
                bar.inc(result.last.progress.map_or(0, |p| u64::from(p.done)));
                work.results.lock().expect("not poisoned")[chunk] = Some(result);
                work.served.lock().expect("not poisoned")[replica] += 1;
            }
            Err(status) if failover(&status) => {
                work.todo.lock().expect("not poisoned").push_front(chunk);
                let failures: usize = {
                    let mut f = work.failures.lock().expect("not poisoned");
                    f[replica] += 1;
                    f.iter().sum()
                };
                bar.set_message(format!("{failures} failures, chunks re-sent"));
                failures_in_a_row += 1;
                if failures_in_a_row >= policy.max_attempts {
                    return Ok(());
                }
                tokio::time::sleep(policy.backoff(failures_in_a_row - 1)).await;
            }
            Err(status) => return Err(status_error(status)),
        }
    }
    Ok(())
}

/// Worth sending to another replica: the retry policy's codes, a deadline that ran out, or the
/// connection breaking mid-response (a replica killed): tonic reports that as UNKNOWN carrying the
/// transport's error, while a status the server sent carries none.
fn failover(status: &tonic::Status) -> bool {
    let broken_connection = status.code() == tonic::Code::Unknown && std::error::Error::source(status).is_some();
    is_retryable(status.code()) || status.code() == tonic::Code::DeadlineExceeded || broken_connection
}

async fn compute_chunk(
    client: &mut Rpc,
    request: &proto::RotationRequest,
    range: std::ops::Range<usize>,
) -> Result<ChunkResult, tonic::Status> {
    let piece = proto::RotationRequest {
        sentences: request.sentences[range.clone()].to_vec(),
        first_sentence_index: range.start as u64,
        target_spans: request.target_spans.get(range.clone()).unwrap_or_default().to_vec(),
        non_target_spans: request.non_target_spans.get(range.clone()).unwrap_or_default().to_vec(),
        ..request.clone()
    };
    let collect = async {
        let mut stream = client.stream_rotations(piece).await?.into_inner();
        let mut parts = Vec::new();
        while let Some(message) = stream.message().await? {
            if message.last {
                return Ok(ChunkResult { parts, last: message });
            }
            parts.push(message);
        }
        Err(tonic::Status::unavailable("the stream ended without its final chunk"))
    };
    tokio::time::timeout(CHUNK_DEADLINE, collect)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("chunk deadline")))
}

/// The chunks' exact all-layers matrix sums merged (integers: exactly those of one request).
fn merge_all_layers(results: &[ChunkResult]) -> anyhow::Result<Option<proto::AllLayers>> {
    let mut merged = AngleMatrixSum::default();
    for sums in results.iter().filter_map(|r| r.last.all_layers.as_ref()?.sums.as_ref()) {
        let sums = angle_matrix_sums_from_proto(sums).map_err(|e| anyhow::anyhow!("{e}"))?;
        merged.merge(&sums).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(all_layers(&merged, None))
}

fn report_replicas(addresses: &[String], work: &Work) {
    let served = work.served.lock().expect("not poisoned");
    let failures = work.failures.lock().expect("not poisoned");
    for (i, address) in addresses.iter().enumerate() {
        eprintln!("replica {address}: {} chunks, {} failures", served[i], failures[i]);
    }
}

/// Merges the chunks' exact statistics, has a replica test them, and reassembles the angles.
async fn finish(
    clients: &[Rpc],
    results: Vec<ChunkResult>,
    request: &proto::RotationRequest,
    total: usize,
) -> anyhow::Result<proto::Analysis> {
    let mut merged: Vec<PairedStats> = Vec::new();
    for r in &results {
        let stats = paired_stats_from_proto(&r.last.statistics).map_err(|e| anyhow::anyhow!("{e}"))?;
        merge_layers(&mut merged, &stats);
    }
    let ask = proto::SignificanceRequest {
        statistics: layer_statistics(&merged),
        options: request.significance,
        ..Default::default()
    };
    let mut answer = Err(anyhow::anyhow!("no replica answered TestSignificance"));
    for client in clients {
        answer = client.clone().test_significance(ask.clone()).await.map_err(status_error);
        if answer.is_ok() {
            break;
        }
    }
    let significance = answer?.into_inner();
    let mut last = results.last().map(|r| r.last.clone()).context("no chunk computed")?;
    last.all_layers = merge_all_layers(&results)?;
    let parts = results.into_iter().flat_map(|r| r.parts).collect();
    super::assemble_stream(parts, &last, significance, total)
}
