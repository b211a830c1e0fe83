//! The command-line client: calls the gRPC API and writes what a reader of the notebook expects
//! (a per-layer table, CSV, JSON and the notebook's two figures).
pub mod plots;
pub mod report;

use anyhow::Context;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::config::{AnalyzeArgs, ClientArgs, CorrectionArg, TokenizeArgs, UnitArg};
use crate::proto;
use crate::proto::rotation_service_client::RotationServiceClient;

/// Largest response the client accepts (matches the server's default limit).
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

async fn connect(args: &ClientArgs) -> anyhow::Result<RotationServiceClient<Channel>> {
    let channel = Channel::from_shared(args.server.clone())
        .with_context(|| format!("bad server address {}", args.server))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.server))?;
    Ok(RotationServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("server answered {:?}: {}", s.code(), s.message())
}

pub async fn info(args: ClientArgs) -> anyhow::Result<()> {
    let mut client = connect(&args).await?;
    let info = client.get_model_info(proto::GetModelInfoRequest {}).await.map_err(status_error)?.into_inner();
    println!("model              {}", info.model_name);
    println!("source             {}", info.source);
    println!("layers             {} ({} hidden states)", info.num_layers, info.num_hidden_states);
    println!("hidden size        {}", info.hidden_size);
    println!("vocabulary         {}", info.vocab_size);
    println!("max positions      {}", info.max_positions);
    println!("execution provider {}", info.execution_provider);
    println!("dtype              {}", info.dtype);
    Ok(())
}

pub async fn tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let mut client = connect(&args.client).await?;
    let res =
        client.tokenize(proto::TokenizeRequest { texts: args.texts.clone() }).await.map_err(status_error)?.into_inner();
    for (text, t) in args.texts.iter().zip(res.texts) {
        println!("{text:?}");
        for (i, (id, tok)) in t.ids.iter().zip(&t.tokens).enumerate() {
            println!("  {i:>4}  {id:>6}  {tok:?}  bytes {}..{}", t.offset_starts[i], t.offset_ends[i]);
        }
    }
    Ok(())
}

pub async fn health(args: ClientArgs) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.server.clone())?.connect().await?;
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
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).map(String::from).collect())
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
    })
}

pub async fn analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    let sentences = read_sentences(&args.sentences)?;
    let request = rotation_request(&args, sentences.clone())?;
    let mut client = connect(&args.client).await?;
    let analysis = client.analyze(request).await.map_err(status_error)?.into_inner();
    let report = report::Report::new(&analysis, &sentences)?;
    print!("{}", report.table());
    report.write_all(&args.out)?;
    println!(
        "\nwrote {}/{{angles.csv, significance.csv, analysis.json, angles.svg, significance.svg}}",
        args.out.display()
    );
    Ok(())
}
