//! The command-line client: calls the gRPC API and writes what a reader of the notebook expects
//! (a per-layer table, CSV, JSON and the notebook's two figures).
pub mod angles_file;
pub mod cluster;
pub mod connect;
mod group_plot;
pub mod groups;
pub mod heatmap;
pub mod inside;
mod inside_merge;
pub mod marks;
pub mod output;
pub mod plots;
pub mod report;
pub mod retry;
pub mod sentences;
pub mod skipped;
pub mod validate;
pub mod vectors_file;

use std::io::Write as _;

use anyhow::Context;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::{
    AnalyzeArgs, ClientArgs, ConnectArgs, CorrectionArg, OccurrenceArg, SelectArgs, SubTokenArg, TokenizeArgs, UnitArg,
};
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
    if let Some(invalid) = sentences::InvalidSentences::from_status(&s) {
        return invalid.into();
    }
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
    let bos = match info.bos_token_id {
        Some(bos) if info.adds_bos => format!("{bos}, before every sentence (positions count it)"),
        Some(bos) => format!("{bos}, not added"),
        None => "none".to_string(),
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "model              {}", info.model_name)?;
    writeln!(stdout, "source             {}", info.source)?;
    writeln!(stdout, "layers             {} ({} hidden states)", info.num_layers, info.num_hidden_states)?;
    writeln!(stdout, "hidden size        {}", info.hidden_size)?;
    writeln!(stdout, "vocabulary         {}", info.vocab_size)?;
    writeln!(stdout, "max positions      {}", info.max_positions)?;
    writeln!(stdout, "execution provider {}", info.execution_provider)?;
    writeln!(stdout, "dtype              {}", info.dtype)?;
    writeln!(stdout, "precision          {}", precision_line(&info))?;
    writeln!(stdout, "family             {}", info.family)?;
    writeln!(stdout, "BOS token          {bos}")?;
    writeln!(stdout, "pad token          {}", info.pad_token_id)?;
    // model.json's `hidden_states`: {"first": …, "last": …}, what the end states are.
    let states: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&info.hidden_states).unwrap_or_default();
    for (end, what) in states.iter().filter_map(|(k, v)| Some((k, v.as_str()?))) {
        writeln!(stdout, "{:<18} {what}", format!("{end} state"))?;
    }
    Ok(())
}

/// The precision, and for a reduced one its angle error against float32 PyTorch as measured at export.
fn precision_line(info: &proto::ModelInfo) -> String {
    let check: serde_json::Value = serde_json::from_str(&info.precision_check).unwrap_or_default();
    let deg = |key: &str| check.get(key).and_then(serde_json::Value::as_f64);
    match (info.precision.as_str(), deg("angle_error_mean_deg"), deg("angle_error_max_deg")) {
        ("", _, _) => info.dtype.clone(),
        (p, Some(mean), Some(max)) => {
            format!("{p} (angle error against float32 PyTorch at export: mean {mean:.3}°, max {max:.3}°)")
        }
        (p, _, _) => p.to_string(),
    }
}

pub async fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let client = connect(&args.client).await?;
    let request = proto::TokenizeRequest { texts: args.texts.clone() };
    let res = with_retry(&client, request, |mut c, r| async move { c.tokenize(r).await }).await?;
    write!(std::io::stdout().lock(), "{}", tokens_table(&args.texts, &res.texts))?;
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
            writeln!(std::io::stdout().lock(), "SERVING")?;
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
        _ if args.select.marked => None,
        (Some(t), None) => Some(proto::rotation_request::Target::TargetText(t.clone())),
        (None, Some(id)) => Some(proto::rotation_request::Target::TargetTokenId(id)),
        _ => anyhow::bail!("give --target TEXT, --target-id ID, or --marked sentences"),
    };
    let request = proto::RotationRequest {
        sentences,
        target,
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
        skip_invalid: args.skip_invalid,
        ..Default::default()
    };
    select_request(&args.select, request)
}

/// The request with the selection flags: occurrence, sub-token, all layers, and `--marked`
/// sentences unmarked into character spans.
fn select_request(select: &SelectArgs, mut request: proto::RotationRequest) -> anyhow::Result<proto::RotationRequest> {
    let (occurrence, number) = match select.occurrence {
        OccurrenceArg::First => (proto::Occurrence::First, 0),
        OccurrenceArg::Last => (proto::Occurrence::Last, 0),
        OccurrenceArg::All => (proto::Occurrence::All, 0),
        OccurrenceArg::Nth(n) => (proto::Occurrence::Nth, n),
    };
    (request.occurrence, request.occurrence_number) = (occurrence as i32, number);
    request.sub_token = match select.sub_token {
        SubTokenArg::Last => proto::SubToken::Last,
        SubTokenArg::First => proto::SubToken::First,
        SubTokenArg::Mean => proto::SubToken::Mean,
    } as i32;
    request.all_layers = select.all_layers;
    request.row_matrices = select.row_matrices;
    request.steps = match select.steps {
        crate::config::StepsArg::Layers => proto::Steps::Layers,
        crate::config::StepsArg::Sublayers => proto::Steps::Sublayers,
    } as i32;
    request.norms = select.norms;
    if select.marked {
        let marked = marks::unmark(&request.sentences, 0)?;
        apply_marks(&mut request, marked);
    }
    Ok(request)
}

/// The unmarked sentences and their spans into `request` (the spans decide the token).
fn apply_marks(request: &mut proto::RotationRequest, marked: marks::Marked) {
    let spans = |s: Vec<(u32, u32)>| s.into_iter().map(|(start, end)| proto::CharSpan { start, end }).collect();
    request.sentences = marked.sentences;
    request.target_spans = spans(marked.targets);
    request.non_target_spans = marked.non_targets.map_or_else(Vec::new, spans);
    request.occurrence = proto::Occurrence::Unspecified as i32;
}

pub async fn analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    if sharded(&args) {
        return analyze_sharded(args).await;
    }
    let path = args.sentences.as_ref().context("give --sentences FILE (one sentence per line)")?;
    let file = sentences::SentenceFile::read(path)?;
    let request = rotation_request(&args, file.sentences.clone()).map_err(|e| file.locate(e))?;
    let sentences = request.sentences.clone(); // without --marked marks
    let created = output::prepare(&args.out, args.overwrite)?;
    let analysis = match compute(&args, request, sentences.len()).await {
        Ok(analysis) => analysis,
        Err(e) => {
            forget_output(created, &args.out);
            return Err(file.locate(e));
        }
    };
    let reports = analysis.rotations.as_ref().map_or(&[][..], |r| &r.skipped[..]);
    let skipped = skipped::place(reports, |i| file.lines.get(i).copied(), |i| file.sentences.get(i).cloned());
    let skipped = args.skip_invalid.then_some((sentences.len(), skipped));
    let report = report::Report { target: target_label(&args), ..report::Report::new(&analysis, &sentences)? };
    present(&report, &args.out, skipped)
}

/// The target as the user named it (`" her"`), for figure titles.
fn target_label(args: &AnalyzeArgs) -> Option<String> {
    match (&args.target, args.target_id) {
        _ if args.select.marked => Some("the [[marked]] targets".to_string()),
        (Some(text), _) => Some(format!("{text:?}")),
        (None, Some(id)) => Some(format!("token {id}")),
        _ => None,
    }
}

/// Several servers, a `dns:///` name, `--angles-out` or `--vectors-out`: the file read lazily, in
/// chunks over the replicas (one server is a cluster of one).
fn sharded(args: &AnalyzeArgs) -> bool {
    over_replicas(&args.client) || args.angles_out.is_some() || args.vectors.vectors_out.is_some()
}

/// `--vectors-out`'s request option (`None` without it), and its files' one-row-per-sentence rule.
fn vector_options(args: &AnalyzeArgs) -> anyhow::Result<Option<proto::VectorOptions>> {
    let v = &args.vectors;
    let Some(path) = &v.vectors_out else { return Ok(None) };
    anyhow::ensure!(
        !matches!(args.select.occurrence, OccurrenceArg::All) && !args.skip_invalid,
        "--vectors-out {} holds one row per sentence of the file, as --angles-out: --occurrence all (several \
         rows a sentence) and --skip-invalid (sentences without rows) cannot go with it",
        path.display()
    );
    let dtype = match v.vectors_dtype {
        crate::config::VectorsDtypeArg::F32 => proto::VectorDtype::Float32,
        crate::config::VectorsDtypeArg::F16 => proto::VectorDtype::Float16,
    };
    let conditions = v.vectors_conditions.iter().map(|c| *c as u32).collect();
    Ok(Some(proto::VectorOptions { dtype: dtype as i32, states: v.vectors_states.clone(), conditions }))
}

/// `--chunk-size` and `--chunk-timeout`.
fn chunking(args: &AnalyzeArgs) -> cluster::Chunking {
    let deadline = args.chunk_timeout.map(std::time::Duration::from_secs_f64);
    cluster::Chunking { size: args.chunk_size as usize, deadline }
}

/// Several servers, or a `dns:///` name whose every address is a replica.
fn over_replicas(client: &ClientArgs) -> bool {
    client.server.len() > 1 || client.primary().starts_with("dns:///")
}

async fn analyze_sharded(args: AnalyzeArgs) -> anyhow::Result<()> {
    let path = args.sentences.as_ref().context("give --sentences FILE (one sentence per line)")?;
    anyhow::ensure!(
        args.angles_out.is_none() || !matches!(args.select.occurrence, OccurrenceArg::All),
        "--angles-out holds one row per sentence, and --occurrence all gives a sentence several rows: \
         leave out one of them"
    );
    anyhow::ensure!(
        args.angles_out.is_none() || !args.skip_invalid,
        "--angles-out keeps one row per sentence of the file and --skip-invalid leaves sentences out: \
         leave out one of them"
    );
    let request = proto::RotationRequest { vectors: vector_options(&args)?, ..rotation_request(&args, Vec::new())? };
    let created = output::prepare(&args.out, args.overwrite)?;
    let interval = std::time::Duration::from_secs_f64(args.resolve_interval);
    let replicas = cluster::Replicas::from_servers(&args.client.server, interval);
    let (how, chunking) = (&args.client.connect, chunking(&args));
    let outcome = {
        let corpus = cluster::CorpusFile { path, marked: args.select.marked };
        let files =
            cluster::OnDisk { angles: args.angles_out.as_deref(), vectors: args.vectors.vectors_out.as_deref() };
        cluster::analyze_to_disk(replicas, how, request, corpus, chunking, files).await
    };
    let outcome = outcome.inspect_err(|_| forget_output(created, &args.out))?;
    let skipped = args.skip_invalid.then(|| (outcome.total, outcome.skipped.clone()));
    let mut report = match outcome.angles_file {
        Some(file) => report::Report::on_disk(&outcome.analysis, file)?,
        None => report::Report::new(&outcome.analysis, &outcome.sentences)?,
    };
    report.target = target_label(&args);
    present(&report, &args.out, skipped)?;
    if let Some(file) = &outcome.vectors_file {
        let paths: Vec<String> = file.paths().iter().map(|p| p.display().to_string()).collect();
        writeln!(std::io::stdout().lock(), "wrote {}", paths.join(" and "))?;
    }
    Ok(())
}

/// Takes away the output folder a failed analysis created (only if still empty).
fn forget_output(created: bool, out: &std::path::Path) {
    if created {
        let _ = std::fs::remove_dir(out);
    }
}

/// The files in `out` (first: a reader of the table that closes stdout, `| head`, still gets
/// them), then the table on stdout; with `--skip-invalid`, skipped.csv and how many of how many
/// sentences were analysed.
fn present(
    report: &report::Report,
    out: &std::path::Path,
    skipped: Option<(usize, Vec<skipped::Skipped>)>,
) -> anyhow::Result<()> {
    report.write_all(out)?;
    let mut files = report.files();
    if let Some((_, list)) = &skipped {
        skipped::write(out, list)?;
        files.push("skipped.csv");
    }
    let mut stdout = std::io::stdout().lock();
    write!(stdout, "{}", report.table())?;
    if let Some((total, list)) = &skipped {
        writeln!(stdout, "\n{}", skipped::summary(*total, list.len()))?;
    }
    writeln!(stdout, "\nwrote {}/{{{}}}", out.display(), files.join(", "))?;
    if let Some(file) = &report.angles_file {
        writeln!(stdout, "wrote {} and {}", file.path.display(), file.draws_path.display())?;
    }
    Ok(())
}

/// The analysis from the server: `Analyze`, or `StreamRotations` above `--stream-above` sentences.
async fn compute(
    args: &AnalyzeArgs,
    request: proto::RotationRequest,
    num_sentences: usize,
) -> anyhow::Result<proto::Analysis> {
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
/// reassembled into the shape `Analyze` returns: their rows in order (one per sentence, or per
/// occurrence), and with all layers the final chunk's merged mean with the chunks' row matrices.
fn assemble_stream(
    chunks: Vec<proto::RotationChunk>,
    last: &proto::RotationChunk,
    significance: proto::SignificanceResult,
    total: usize,
) -> anyhow::Result<proto::Analysis> {
    let layers = chunks.iter().filter_map(|c| c.angles.as_ref()).map(|t| t.shape[0] as usize).max().unwrap_or(0);
    let rows: usize = chunks.iter().map(|c| c.sentences.len()).sum();
    let sublayers = inside_merge::assemble_steps(&chunks, rows, last)?;
    let norms = inside_merge::assemble_norms(&chunks, rows, last)?;
    let skipped: Vec<proto::SkippedSentence> = chunks.iter().flat_map(|c| c.skipped.iter().cloned()).collect();
    let mut angles = vec![0f32; layers * rows * 3];
    let mut draws = vec![proto::ShuffleDraw::default(); layers * rows];
    let mut reports = Vec::with_capacity(rows);
    let mut row_matrices: Option<proto::Tensor> = None;
    for chunk in chunks {
        let t = chunk.angles.context("a chunk without angles")?;
        let (first, k) = (reports.len(), t.shape[1] as usize);
        anyhow::ensure!(
            t.shape[0] as usize == layers && k == chunk.sentences.len() && t.values.len() == layers * k * 3,
            "chunk shape {:?} at sentence {} does not fit",
            t.shape,
            chunk.first_sentence
        );
        for l in 0..layers {
            for s in 0..k {
                let (from, to) = (l * k + s, l * rows + first + s);
                angles[to * 3..to * 3 + 3].copy_from_slice(&t.values[from * 3..from * 3 + 3]);
                draws[to] = chunk.shuffle_draws[from];
            }
        }
        reports.extend(chunk.sentences);
        if let Some(m) = chunk.all_layers.and_then(|a| a.row_matrices) {
            let all = row_matrices
                .get_or_insert_with(|| proto::Tensor { shape: vec![0, m.shape[1], m.shape[2]], values: Vec::new() });
            all.shape[0] += m.shape[0];
            all.values.extend(m.values);
        }
    }
    let delivered = reports.iter().map(|r| r.index).collect::<std::collections::BTreeSet<_>>().len();
    anyhow::ensure!(
        delivered + skipped.len() == total,
        "the stream delivered {delivered} of {total} sentences and skipped {}",
        skipped.len()
    );
    let means = layer_means(layers, rows, |l, s, c| angles[(l * rows + s) * 3 + c]);
    let all_layers = last.all_layers.clone().map(|a| proto::AllLayers { row_matrices, ..a });
    let rotations = proto::RotationResult {
        angles: Some(proto::Tensor { shape: vec![layers as u32, rows as u32, 3], values: angles }),
        sentences: reports,
        shuffle_draws: draws,
        all_layers,
        sublayers,
        norms,
        skipped,
        ..rotation_result(last, layers, means)
    };
    Ok(proto::Analysis {
        rotations: Some(rotations),
        significance: Some(significance),
        significance_error: String::new(),
        condition_statistics: last.condition_statistics.clone(),
        step_significance: last.step_significance.clone(),
        step_significance_error: last.step_significance_error.clone(),
        step_statistics: last.step_statistics.clone(),
    })
}

/// Per layer and condition, the mean over sentences of the float32 angles: summed in f64 in corpus
/// order, the one way for angles in memory and in a file, so both give the same bits.
fn layer_means(layers: usize, total: usize, angle: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
    let mut sums = vec![0f64; layers * 3];
    // Sentence-major: a sequential read of a file laid out [sentences, layers, 3].
    for s in 0..total {
        for (i, sum) in sums.iter_mut().enumerate() {
            *sum += f64::from(angle(i / 3, s, i % 3));
        }
    }
    sums.iter().map(|sum| (sum / total as f64) as f32).collect()
}

/// What `Analyze` returns, for angles that went to `file`: layer means read back from it, no
/// per-sentence angles, reports or draws.
fn on_disk_analysis(
    file: &angles_file::AnglesFile,
    last: &proto::RotationChunk,
    significance: proto::SignificanceResult,
) -> proto::Analysis {
    let (layers, total) = (file.num_layers, file.num_sentences);
    let means = layer_means(layers, total, |l, s, c| file.angle(l, s, c));
    let rotations = rotation_result(last, layers, means);
    proto::Analysis {
        rotations: Some(rotations),
        significance: Some(significance),
        significance_error: String::new(),
        condition_statistics: last.condition_statistics.clone(),
        step_significance: last.step_significance.clone(),
        step_significance_error: last.step_significance_error.clone(),
        step_statistics: last.step_statistics.clone(),
    }
}

/// What every streamed chunk tells of the run, with the layer means: a `RotationResult` without
/// per-sentence angles, reports or draws.
fn rotation_result(last: &proto::RotationChunk, layers: usize, means: Vec<f32>) -> proto::RotationResult {
    proto::RotationResult {
        angles: None,
        conditions: crate::analysis::CONDITIONS.iter().map(|c| c.to_string()).collect(),
        unit: last.unit,
        layer_means: Some(proto::Tensor { shape: vec![layers as u32, 3], values: means }),
        sentences: Vec::new(),
        shuffle_draws: Vec::new(),
        shuffle_seed: last.shuffle_seed,
        model_name: last.model_name.clone(),
        target_token_id: last.target_token_id,
        all_layers: last.all_layers.clone(),
        target_token_ids: last.target_token_ids.clone(),
        // The merged means and sums; assemble_stream adds the rows' values (a file of angles holds
        // none of them).
        sublayers: last.sublayers.clone(),
        norms: last.norms.clone(),
        // Vectors go to a file as they arrive (--vectors-out), never into the report.
        vectors: None,
        skipped: Vec::new(),
    }
}
