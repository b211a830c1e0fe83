//! The command-line client: calls the gRPC API and writes what a reader of the notebook expects
//! (a per-layer table, CSV, JSON and the notebook's two figures).
pub mod cluster;
pub mod connect;
pub mod output;
pub mod plots;
pub mod report;
pub mod retry;
pub mod sentences;

use anyhow::Context;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::{AnalyzeArgs, ClientArgs, ConnectArgs, CorrectionArg, TokenizeArgs, UnitArg};
use crate::proto;
use crate::proto::rotation_service_client::RotationServiceClient;
use connect::AuthChannel;
use retry::RetryPolicy;

/// Largest response the client accepts (matches the server's default limit).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

async fn connect(args: &ClientArgs) -> anyhow::Result<RotationServiceClient<AuthChannel>> {
    connect_to(args.primary(), &args.connect).await
}

/// The client of one server, as every command makes it (a cluster makes one per replica).
pub async fn connect_to(address: &str, how: &ConnectArgs) -> anyhow::Result<RotationServiceClient<AuthChannel>> {
    let channel = connect::connect(address, how).await?;
    Ok(RotationServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    if connect::is_transport_failure(&s) {
        return anyhow::anyhow!("the connection failed: {}", connect::root_cause(&s));
    }
    if s.code() == tonic::Code::Unauthenticated {
        return anyhow::anyhow!(
            "server answered Unauthenticated: {} — give the key with --api-key or ROTATIONS_API_KEY",
            s.message()
        );
    }
    anyhow::anyhow!("server answered {:?}: {}", s.code(), s.message())
}

/// Calls `rpc` under the retry policy, with its own copy of the client and the request each time.
async fn with_retry<R: Clone, T, Fut>(
    client: &RotationServiceClient<AuthChannel>,
    request: R,
    rpc: impl Fn(RotationServiceClient<AuthChannel>, R) -> Fut,
) -> anyhow::Result<T>
where
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let response = RetryPolicy::default().run(|| rpc(client.clone(), request.clone())).await;
    Ok(response.map_err(status_error)?.into_inner())
}

pub async fn info(args: ClientArgs) -> anyhow::Result<()> {
    let client = connect(&args).await?;
    let info =
        with_retry(&client, proto::GetModelInfoRequest {}, |mut c, r| async move { c.get_model_info(r).await }).await?;
    println!("model              {}", info.model_name);
    println!("source             {}", info.source);
    println!("layers             {} ({} hidden states)", info.num_layers, info.num_hidden_states);
    println!("hidden size        {}", info.hidden_size);
    println!("vocabulary         {}", info.vocab_size);
    println!("max positions      {}", info.max_positions);
    println!("execution provider {}", info.execution_provider);
    println!("dtype              {}", info.dtype);
    println!("family             {}", info.family);
    match info.bos_token_id {
        Some(bos) if info.adds_bos => println!("BOS token          {bos}, before every sentence (positions count it)"),
        Some(bos) => println!("BOS token          {bos}, not added"),
        None => println!("BOS token          none"),
    }
    println!("pad token          {}", info.pad_token_id);
    Ok(())
}

pub async fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let request = proto::TokenizeRequest { texts: args.texts.clone() };
    let res = with_retry(&client, request, |mut c, r| async move { c.tokenize(r).await }).await?;
    print!("{}", tokens_table(&args.texts, &res.texts));
    Ok(())
}

/// Each text's tokens under a header, with the text each covers; a note on GPT-2's `Ġ` where one shows.
pub fn tokens_table(texts: &[String], tokenized: &[proto::TokenizedText]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (text, t) in texts.iter().zip(tokenized) {
        let _ = writeln!(out, "{text:?}\n  {:>4}  {:>6}  {:<16}  {:<16}  bytes", "pos", "id", "token", "text");
        for (i, (id, token)) in t.ids.iter().zip(&t.tokens).enumerate() {
            let (start, end) = (t.offset_starts[i] as usize, t.offset_ends[i] as usize);
            let covered = format!("{:?}", text.get(start..end).unwrap_or(""));
            let _ = writeln!(out, "  {i:>4}  {id:>6}  {:<16}  {covered:<16}  {start}..{end}", format!("{token:?}"));
        }
    }
    if tokenized.iter().flat_map(|t| &t.tokens).any(|t| t.contains('Ġ')) {
        out.push_str(
            "\nĠ is GPT-2's mark for a leading space: token \"Ġher\" is the text \" her\" (pass --target \" her\").\n",
        );
    }
    if tokenized.iter().flat_map(|t| &t.tokens).any(|t| t.starts_with('\u{2581}')) {
        out.push_str(
            "\n▁ is SentencePiece's mark for a word's start: token \"▁her\" is the word \"her\", at a sentence's start or \
             after a space (pass --target \" her\" or --target her).\n",
        );
    }
    out
}

pub async fn health(args: ClientArgs) -> anyhow::Result<()> {
    let channel = connect::connect(args.primary(), &args.connect).await?;
    let res = HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .map_err(status_error)?
        .into_inner();
    match ServingStatus::try_from(res.status) {
        Ok(ServingStatus::Serving) => {
            println!("SERVING");
            Ok(())
        }
        other => anyhow::bail!("not serving: {other:?}"),
    }
}

/// Reads one sentence per line, skipping blank lines.
pub fn read_sentences(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    Ok(sentences::SentenceFile::read(path)?.sentences)
}

pub fn rotation_request(args: &AnalyzeArgs, sentences: Vec<String>) -> anyhow::Result<proto::RotationRequest> {
    let target = match (&args.target, args.target_id) {
        (Some(t), None) => proto::rotation_request::Target::TargetText(t.clone()),
        (None, Some(id)) => proto::rotation_request::Target::TargetTokenId(id),
        _ => anyhow::bail!("give --target TEXT or --target-id ID"),
    };
    Ok(proto::RotationRequest {
        sentences,
        target: Some(target),
        unit: match args.unit {
            UnitArg::Degrees => proto::AngleUnit::Degrees,
            UnitArg::Radians => proto::AngleUnit::Radians,
        } as i32,
        non_target_offset: args.offset,
        shuffle_seed: args.seed,
        significance: Some(proto::SignificanceOptions {
            condition_a: None,
            condition_b: None,
            alpha: Some(args.alpha),
            correction: match args.correction {
                CorrectionArg::Bonferroni => proto::Correction::Bonferroni,
                CorrectionArg::Holm => proto::Correction::Holm,
                CorrectionArg::BenjaminiHochberg => proto::Correction::BenjaminiHochberg,
                CorrectionArg::None => proto::Correction::None,
            } as i32,
            num_tests: args.num_tests,
        }),
        first_sentence_index: 0,
        allow_bos_non_target: args.allow_bos_non_target,
    })
}

pub async fn analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    let file = sentences::SentenceFile::read(&args.sentences)?;
    let sentences = file.sentences.clone();
    let request = rotation_request(&args, sentences.clone())?;
    let created = output::prepare(&args.out, args.overwrite)?;
    let analysis = match compute(&args, request, sentences.len()).await {
        Ok(analysis) => analysis,
        Err(e) => {
            if created {
                let _ = std::fs::remove_dir(&args.out); // only if still empty
            }
            return Err(file.locate(e));
        }
    };
    let report = report::Report::new(&analysis, &sentences)?;
    print!("{}", report.table());
    report.write_all(&args.out)?;
    println!("\nwrote {}/{{{}}}", args.out.display(), output::FILES.join(", "));
    Ok(())
}

/// The analysis from the server: `Analyze`, or `StreamRotations` above `--stream-above` sentences.
async fn compute(
    args: &AnalyzeArgs,
    request: proto::RotationRequest,
    num_sentences: usize,
) -> anyhow::Result<proto::Analysis> {
    let servers = &args.client.server;
    if servers.len() > 1 || args.client.primary().starts_with("dns:///") {
        return cluster::analyze(servers, &args.client.connect, request, args.chunk_size as usize).await;
    }
    let mut client = connect(&args.client).await?;
    if num_sentences > args.stream_above {
        stream_analysis(&mut client, request).await
    } else {
        with_retry(&client, request, |mut c, r| async move { c.analyze(r).await }).await
    }
}

/// Large corpora: StreamRotations with a progress bar, reassembled into the shape `Analyze` returns.
/// The significance comes from the server's merged per-layer statistics.
pub async fn stream_analysis(
    client: &mut RotationServiceClient<AuthChannel>,
    request: proto::RotationRequest,
) -> anyhow::Result<proto::Analysis> {
    let total = request.sentences.len();
    // A refusal comes before the first chunk and is retried; a stream that fails later is not
    // (its chunks have been delivered: the caller decides).
    let mut stream = with_retry(client, request, |mut c, r| async move { c.stream_rotations(r).await }).await?;
    let bar = progress_bar(total as u64)?;
    let mut chunks = Vec::new();
    let mut last = None;
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        if chunk.last {
            last = Some(chunk);
            break;
        }
        if let Some(p) = &chunk.progress {
            bar.set_position(u64::from(p.done));
        }
        chunks.push(chunk);
    }
    bar.finish_and_clear();
    let last = last.context("the stream ended without its final chunk")?;
    let significance = match last.significance.clone() {
        Some(s) => s,
        None => anyhow::bail!("no significance test: {}", last.significance_error),
    };
    assemble_stream(chunks, &last, significance, total)
}

/// The progress bar of long runs.
fn progress_bar(total: u64) -> anyhow::Result<indicatif::ProgressBar> {
    Ok(indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} sentences ({per_sec}, eta {eta}) {msg}",
        )?
        .progress_chars("=> "),
    ))
}

/// Streamed chunks (in corpus order, corpus indices from 0) and the final chunk's metadata,
/// reassembled into the shape `Analyze` returns.
fn assemble_stream(
    chunks: Vec<proto::RotationChunk>,
    last: &proto::RotationChunk,
    significance: proto::SignificanceResult,
    total: usize,
) -> anyhow::Result<proto::Analysis> {
    let layers = chunks.first().and_then(|c| c.angles.as_ref()).map_or(0, |t| t.shape[0] as usize);
    let mut angles = vec![0f32; layers * total * 3];
    let mut draws = vec![proto::ShuffleDraw::default(); layers * total];
    let mut reports = Vec::with_capacity(total);
    for chunk in chunks {
        let t = chunk.angles.context("a chunk without angles")?;
        let (first, k) = (chunk.first_sentence as usize, t.shape[1] as usize);
        anyhow::ensure!(
            t.shape[0] as usize == layers && first + k <= total,
            "chunk shape {:?} at {first} does not fit",
            t.shape
        );
        for l in 0..layers {
            for s in 0..k {
                let (from, to) = (l * k + s, l * total + first + s);
                angles[to * 3..to * 3 + 3].copy_from_slice(&t.values[from * 3..from * 3 + 3]);
                draws[to] = chunk.shuffle_draws[from];
            }
        }
        reports.extend(chunk.sentences);
    }
    anyhow::ensure!(reports.len() == total, "the stream delivered {} of {total} sentences", reports.len());
    let means: Vec<f32> = (0..layers * 3)
        .map(|i| {
            let (l, c) = (i / 3, i % 3);
            ((0..total).map(|s| f64::from(angles[(l * total + s) * 3 + c])).sum::<f64>() / total as f64) as f32
        })
        .collect();
    let rotations = proto::RotationResult {
        angles: Some(proto::Tensor { shape: vec![layers as u32, total as u32, 3], values: angles }),
        conditions: crate::analysis::CONDITIONS.iter().map(|c| c.to_string()).collect(),
        unit: last.unit,
        layer_means: Some(proto::Tensor { shape: vec![layers as u32, 3], values: means }),
        sentences: reports,
        shuffle_draws: draws,
        shuffle_seed: last.shuffle_seed,
        model_name: last.model_name.clone(),
        target_token_id: last.target_token_id,
    };
    Ok(proto::Analysis {
        rotations: Some(rotations),
        significance: Some(significance),
        significance_error: String::new(),
    })
}
