//! Command line and environment: one clap struct per command, every flag also an environment variable.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::model::{ExecutionProvider, GatherOutputs, GraphOptimization, OrtTuning, PassCost, RuntimeOptions};
use crate::security::Secret;
use crate::service::admission::{DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_QUEUED_TOKENS};
use crate::service::convert::{DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TENSOR_VALUES, DEFAULT_MAX_TEXT_BYTES};
use crate::telemetry::OtlpConfig;

/// Default folder for the bundled model, relative to the working directory (the checkout, or /models in the image).
pub const DEFAULT_MODEL_DIR: &str = "models/gpt2-tiny-random";
pub const DEFAULT_PORT: u16 = 50051;
const ORT_TUNING: &str = "ONNX Runtime tuning (defaults: the measured best, BENCHMARKS.md)";
const SECURITY: &str = "Security (docs/src/security.md)";
const TRACING: &str = "Tracing (OpenTelemetry: docs/src/observability.md)";

#[derive(Debug, Parser)]
#[command(
    name = "rotations",
    version,
    about = "How far a token's hidden-state vector rotates from one transformer layer to the next"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API.
    Serve(ServeConfig),
    /// Run the notebook's analysis on a server; write tables, CSV, JSON and the figures.
    Analyze(AnalyzeArgs),
    /// Compare two labelled groups of sentences (Welch's t-test per layer); write tables, JSON and a figure.
    Compare(CompareArgs),
    /// Print the served model's shape.
    Info(ClientArgs),
    /// Show how texts tokenize (to pick a target).
    Tokenize(TokenizeArgs),
    /// Exit 0 when the server reports SERVING (for container health checks).
    Health(ClientArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Everything the server needs, in one place.
#[derive(Clone, Debug, Args)]
pub struct ServeConfig {
    /// Model directory written by tools/export_model.py (model.onnx, tokenizer.json, model.json); the
    /// default is looked up in the working directory, then where `make install` puts it
    /// (share/rotations/ beside the binary's bin/).
    #[arg(long, env = "ROTATIONS_MODEL_DIR", default_value = DEFAULT_MODEL_DIR)]
    pub model_dir: PathBuf,
    /// Address to listen on: loopback only by default; 0.0.0.0 (all interfaces) opens the port to the
    /// network (the Docker image sets it).
    #[arg(long, env = "ROTATIONS_HOST", default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    /// gRPC port (0 picks a free one).
    #[arg(long, env = "ROTATIONS_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Where the model runs: cpu, cuda, or auto (CUDA if it registers, else CPU).
    #[arg(long, env = "ROTATIONS_EXECUTION_PROVIDER", value_enum, default_value_t = ExecutionProvider::Cpu)]
    pub execution_provider: ExecutionProvider,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, env = "ROTATIONS_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// Path of libonnxruntime.so [default: .ort/lib/ of the working directory, else beside the binary
    /// or in its ../lib (where `make install` puts it)].
    #[arg(long, env = "ORT_DYLIB_PATH")]
    pub ort_library: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "ROTATIONS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Most tokens (padding included) in one forward pass.
    #[arg(long, env = "ROTATIONS_MAX_BATCH_TOKENS", default_value_t = 4096)]
    pub max_batch_tokens: usize,
    /// Most sentences in one forward pass.
    #[arg(long, env = "ROTATIONS_MAX_BATCH_SENTENCES", default_value_t = 64)]
    pub max_batch_sentences: usize,
    /// Most sentences in one unary request.
    #[arg(long, env = "ROTATIONS_MAX_SENTENCES", default_value_t = 4096)]
    pub max_sentences: usize,
    /// Largest gRPC message in bytes, either way (a GPT-2 XL result for 4096 sentences is about 6 MB).
    #[arg(long, env = "ROTATIONS_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Most requests admitted at once (queued or computing); more are refused at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "ROTATIONS_MAX_CONCURRENT_REQUESTS", default_value_t = DEFAULT_MAX_CONCURRENT_REQUESTS)]
    pub max_concurrent_requests: usize,
    /// Most tokens queued for the model across all requests; a request whose tokens do not fit is
    /// refused at once with RESOURCE_EXHAUSTED (a stream waits for room instead).
    #[arg(long, env = "ROTATIONS_MAX_QUEUED_TOKENS", default_value_t = DEFAULT_MAX_QUEUED_TOKENS)]
    pub max_queued_tokens: usize,
    /// Longest text (sentence, or text to tokenize) in UTF-8 bytes.
    #[arg(long, env = "ROTATIONS_MAX_TEXT_BYTES", default_value_t = DEFAULT_MAX_TEXT_BYTES)]
    pub max_text_bytes: usize,
    /// Most values in a TestSignificance angle tensor.
    #[arg(long, env = "ROTATIONS_MAX_TENSOR_VALUES", default_value_t = DEFAULT_MAX_TENSOR_VALUES)]
    pub max_tensor_values: usize,
    /// Most sentences in one StreamRotations request (they arrive in one message: see max-message-bytes).
    #[arg(long, env = "ROTATIONS_MAX_STREAM_SENTENCES", default_value_t = 1_000_000)]
    pub max_stream_sentences: usize,
    /// Port for Prometheus metrics at /metrics (off when unset; plain HTTP without authentication).
    #[arg(long, env = "ROTATIONS_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Address the metrics port listens on (loopback only by default).
    #[arg(long, env = "ROTATIONS_METRICS_HOST", default_value = "127.0.0.1")]
    pub metrics_host: std::net::IpAddr,
    /// Seconds between HTTP/2 keepalive pings to each client; a connection whose client does not
    /// answer within --keepalive-timeout-seconds is closed (half-open connections).
    #[arg(long, env = "ROTATIONS_KEEPALIVE_INTERVAL_SECONDS", default_value_t = 30)]
    pub keepalive_interval_seconds: u64,
    /// Seconds to wait for the answer to a keepalive ping.
    #[arg(long, env = "ROTATIONS_KEEPALIVE_TIMEOUT_SECONDS", default_value_t = 20)]
    pub keepalive_timeout_seconds: u64,
    /// Seconds a new connection has to finish its TLS handshake (with TLS) and start HTTP/2 (send
    /// its connection preface) before it is closed.
    #[arg(long, env = "ROTATIONS_HANDSHAKE_TIMEOUT_SECONDS", default_value_t = 10)]
    pub handshake_timeout_seconds: u64,
    /// Seconds a StreamRotations may wait to send its next message (a client that does not read)
    /// before it is cancelled, its slot freed and its connection closed.
    #[arg(long, env = "ROTATIONS_STREAM_SEND_TIMEOUT_SECONDS", default_value_t = 30)]
    pub stream_send_timeout_seconds: u64,
    /// Most calls open at once on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS; clients
    /// queue the rest), so that one peer cannot take every request slot.
    #[arg(long, env = "ROTATIONS_MAX_STREAMS_PER_CONNECTION", default_value_t = 64)]
    pub max_streams_per_connection: u32,
    /// On SIGTERM or Ctrl-C, seconds to let requests in flight finish before exiting.
    #[arg(long, env = "ROTATIONS_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// ONNX Runtime graph optimization level.
    #[arg(long, env = "ROTATIONS_ORT_GRAPH_OPTIMIZATION", value_enum, default_value_t = OrtTuning::DEFAULT.graph_optimization,
          help_heading = ORT_TUNING)]
    pub graph_optimization: GraphOptimization,
    /// Pack the weight matrices once at load (off: faster start, slower passes).
    #[arg(long, env = "ROTATIONS_ORT_PREPACK", default_value_t = OrtTuning::DEFAULT.prepack_weights, action = ArgAction::Set,
          value_parser = BoolishValueParser::new(), value_name = "BOOL", help_heading = ORT_TUNING)]
    pub prepack_weights: bool,
    /// Read the external weights file sequentially while the session is built (faster cold start).
    #[arg(long, env = "ROTATIONS_ORT_PREFETCH", default_value_t = OrtTuning::DEFAULT.prefetch, action = ArgAction::Set,
          value_parser = BoolishValueParser::new(), value_name = "BOOL", help_heading = ORT_TUNING)]
    pub prefetch_weights: bool,
    /// Let ONNX Runtime's idle intra-op threads spin between operators (off: they sleep, freeing the
    /// cores for other work on a shared machine at some cost per pass).
    #[arg(long, env = "ROTATIONS_ORT_SPINNING", default_value_t = OrtTuning::DEFAULT.spinning, action = ArgAction::Set,
          value_parser = BoolishValueParser::new(), value_name = "BOOL", help_heading = ORT_TUNING)]
    pub ort_spinning: bool,
    /// Tokens one more forward pass is worth: a batch is split into passes of similar length where
    /// that saves more padding; `off` runs each batch in one pass.
    #[arg(long, env = "ROTATIONS_ORT_PASS_COST_TOKENS", default_value_t = OrtTuning::DEFAULT.pass_cost_tokens, value_name = "N|off",
          help_heading = ORT_TUNING)]
    pub pass_cost_tokens: PassCost,
    /// Also write ONNX Runtime's optimized graph to this path (to inspect its fusions).
    #[arg(long, env = "ROTATIONS_ORT_SAVE_OPTIMIZED", help_heading = ORT_TUNING)]
    pub save_optimized_model: Option<PathBuf>,
    /// With a graph exported with --gather-outputs: return only the vectors the analysis reads
    /// (auto: on the CUDA provider only, where copying every hidden state off the GPU dominates).
    #[arg(long, env = "ROTATIONS_GATHER_OUTPUTS", value_enum, default_value_t = OrtTuning::DEFAULT.gather_outputs,
          help_heading = ORT_TUNING)]
    pub gather_outputs: GatherOutputs,
    /// Plaintext port serving only gRPC health checks (off when unset): for probes that cannot use
    /// TLS, such as Kubernetes' grpc probe. Health service "liveness" stays SERVING while draining.
    #[arg(long, env = "ROTATIONS_HEALTH_PORT")]
    pub health_port: Option<u16>,
    /// Serve TLS only, with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "ROTATIONS_TLS_CERT", requires = "tls_key", value_name = "FILE", help_heading = SECURITY)]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "ROTATIONS_TLS_KEY", requires = "tls_cert", value_name = "FILE", help_heading = SECURITY)]
    pub tls_key: Option<PathBuf>,
    /// Mutual TLS: accept only clients whose certificate this CA (PEM) signed.
    #[arg(long, env = "ROTATIONS_TLS_CLIENT_CA", requires = "tls_cert", value_name = "FILE", help_heading = SECURITY)]
    pub tls_client_ca: Option<PathBuf>,
    /// Require `authorization: Bearer KEY` on every RPC except health checks.
    #[arg(long, env = "ROTATIONS_API_KEY", hide_env_values = true, value_name = "KEY", help_heading = SECURITY)]
    pub api_key: Option<Secret>,
    /// Accept the keys in this file (one a line, `#` comments), re-read on SIGHUP so keys rotate
    /// without a restart; together with --api-key, both are accepted.
    #[arg(long, env = "ROTATIONS_API_KEYS_FILE", value_name = "FILE", help_heading = SECURITY)]
    pub api_keys_file: Option<PathBuf>,
    /// Write the bound gRPC port to this file once listening (with --port 0: for scripts and tests).
    #[arg(long, env = "ROTATIONS_PORT_FILE")]
    pub port_file: Option<PathBuf>,
    /// Export OpenTelemetry traces over OTLP/gRPC to this collector (e.g. http://otel-collector:4317);
    /// off when unset. OTEL_RESOURCE_ATTRIBUTES and OTEL_BSP_* are honoured.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL", help_heading = TRACING)]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "rotations", help_heading = TRACING)]
    pub otlp_service_name: String,
}

impl ServeConfig {
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }

    /// Where to export traces, if anywhere.
    pub fn otlp(&self) -> Option<OtlpConfig> {
        otlp(self.otlp_endpoint.as_deref(), &self.otlp_service_name)
    }

    /// How the model thread starts ONNX Runtime.
    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            library: self.ort_library(),
            provider: self.execution_provider,
            intra_threads: self.threads,
            tuning: OrtTuning {
                graph_optimization: self.graph_optimization,
                prepack_weights: self.prepack_weights,
                save_optimized: self.save_optimized_model.clone(),
                prefetch: self.prefetch_weights,
                spinning: self.ort_spinning,
                pass_cost_tokens: self.pass_cost_tokens,
                gather_outputs: self.gather_outputs,
            },
        }
    }

    /// The ONNX Runtime library: the flag or ORT_DYLIB_PATH, else the first default that exists.
    pub fn ort_library(&self) -> PathBuf {
        resolve_ort_library(self.ort_library.clone())
    }

    /// The model directory: as given, except that the default, when the working directory has no
    /// `models/gpt2-tiny-random`, is the copy `make install` put under the binary's `../share/rotations`.
    pub fn resolved_model_dir(&self) -> PathBuf {
        if self.model_dir != std::path::Path::new(DEFAULT_MODEL_DIR) || self.model_dir.is_dir() {
            return self.model_dir.clone();
        }
        installed_dir(&self.model_dir).filter(|d| d.is_dir()).unwrap_or_else(|| self.model_dir.clone())
    }
}

/// Where `make install` puts a data folder: `<prefix>/share/rotations/<relative>` for a binary in `<prefix>/bin`.
fn installed_dir(relative: &std::path::Path) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("share/rotations").join(relative))
}

/// Finds libonnxruntime.so: an explicit path wins; else `.ort/lib/` under the working directory (where
/// `scripts/fetch-ort` puts it), then beside the binary, then `../lib` of the binary (the container's
/// and `make install`'s layout).
pub fn resolve_ort_library(explicit: Option<PathBuf>) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    let mut candidates = vec![PathBuf::from(".ort/lib/libonnxruntime.so")];
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)) {
        candidates.push(dir.join("libonnxruntime.so"));
        candidates.push(dir.join("../lib/libonnxruntime.so"));
    }
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| candidates[0].clone())
}

#[derive(Clone, Debug, Args)]
pub struct ClientArgs {
    /// Server address: host:port or http://host:port (plaintext), https://host:port (TLS).
    /// `analyze` takes several (--server A --server B, or one dns:///name:port naming every
    /// replica) and shards the corpus over them.
    #[arg(long, env = "ROTATIONS_SERVER", default_value = "http://127.0.0.1:50051", value_delimiter = ',')]
    pub server: Vec<String>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Export this command's OpenTelemetry spans over OTLP/gRPC to this collector; every request
    /// then carries its trace context (`traceparent`), so the servers' spans join the trace.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL", help_heading = TRACING)]
    pub otlp_endpoint: Option<String>,
}

impl ClientArgs {
    /// The server of single-server commands: the first given.
    pub fn primary(&self) -> &str {
        self.server.first().map_or("http://127.0.0.1:50051", String::as_str)
    }

    /// Where to export the command's spans, if anywhere (`service.name`: OTEL_SERVICE_NAME, else
    /// rotations-cli).
    pub fn otlp(&self) -> Option<OtlpConfig> {
        let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "rotations-cli".into());
        otlp(self.otlp_endpoint.as_deref(), &name)
    }
}

/// An empty endpoint (a variable set to "") turns tracing off like an absent one.
fn otlp(endpoint: Option<&str>, service_name: &str) -> Option<OtlpConfig> {
    let endpoint = endpoint.filter(|e| !e.trim().is_empty())?;
    Some(OtlpConfig { endpoint: endpoint.to_string(), service_name: service_name.to_string() })
}

/// How a client authenticates: API key and TLS material (every client command takes these).
#[derive(Clone, Debug, Default, Args)]
pub struct ConnectArgs {
    /// API key, sent as `authorization: Bearer KEY`.
    #[arg(long, env = "ROTATIONS_API_KEY", hide_env_values = true, value_name = "KEY", help_heading = SECURITY)]
    pub api_key: Option<Secret>,
    /// CA certificate(s) (PEM) to trust for an https:// server [default: the system's roots].
    #[arg(long, env = "ROTATIONS_CA_CERT", value_name = "FILE", help_heading = SECURITY)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires mutual TLS; needs --client-key.
    #[arg(long, env = "ROTATIONS_CLIENT_CERT", requires = "client_key", value_name = "FILE", help_heading = SECURITY)]
    pub client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(long, env = "ROTATIONS_CLIENT_KEY", requires = "client_cert", value_name = "FILE", help_heading = SECURITY)]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry, instead of the host in the address (a
    /// dns:/// name's replicas are reached by IP, while their certificate names the Service).
    #[arg(long, env = "ROTATIONS_TLS_SERVER_NAME", value_name = "NAME", help_heading = SECURITY)]
    pub tls_server_name: Option<String>,
}

#[derive(Clone, Debug, Args)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Texts to tokenize.
    #[arg(required = true)]
    pub texts: Vec<String>,
}

/// Which token(s) `analyze` looks at (issue 16): occurrence, marked spans, sub-token, all layers.
#[derive(Args, Clone, Debug, Default)]
pub struct SelectArgs {
    /// Which occurrence of the target in each sentence: first, last, all (each one a row) or a
    /// number counted from 1.
    #[arg(long, default_value = "first", value_parser = parse_occurrence)]
    pub occurrence: OccurrenceArg,
    /// The sentences mark their target as `[[word]]` (and optionally the non-target as `{{word}}`);
    /// the marks are removed and become character spans, instead of --target.
    #[arg(long, conflicts_with_all = ["target", "target_id", "occurrence"])]
    pub marked: bool,
    /// Which sub-token stands for a word of several tokens (last: in a causal model only the last
    /// has seen the whole word).
    #[arg(long, value_enum, default_value_t = SubTokenArg::Last)]
    pub sub_token: SubTokenArg,
    /// Also the angle between every pair of hidden states of the target (all_layers.csv and the
    /// heatmap all_layers.svg).
    #[arg(long)]
    pub all_layers: bool,
    /// With --all-layers: also every row's matrix (in analysis.json).
    #[arg(long, requires = "all_layers")]
    pub row_matrices: bool,
    /// sublayers: also each layer's attention step and MLP step (a model exported with
    /// --sublayers): steps.csv and the figure steps.svg.
    #[arg(long, value_enum, default_value_t = StepsArg::Layers)]
    pub steps: StepsArg,
    /// Also the norm of the target's and non-target's vector at every state, and each layer's
    /// growth ratio (norms.csv).
    #[arg(long)]
    pub norms: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum StepsArg {
    /// Whole layers (hidden state l-1 -> l).
    #[default]
    Layers,
    /// Whole layers, and the attention and MLP steps inside each.
    Sublayers,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OccurrenceArg {
    #[default]
    First,
    Last,
    All,
    Nth(u32),
}

fn parse_occurrence(s: &str) -> Result<OccurrenceArg, String> {
    match s {
        "first" => Ok(OccurrenceArg::First),
        "last" => Ok(OccurrenceArg::Last),
        "all" => Ok(OccurrenceArg::All),
        n => match n.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(OccurrenceArg::Nth(n)),
            _ => Err(format!("{s:?}: give first, last, all or a number from 1")),
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum SubTokenArg {
    #[default]
    Last,
    First,
    Mean,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum UnitArg {
    #[default]
    Degrees,
    Radians,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum CorrectionArg {
    #[default]
    Bonferroni,
    Holm,
    BenjaminiHochberg,
    None,
}

#[derive(Clone, Debug, Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// Text file, one sentence per line (blank lines skipped). Required by `analyze`; `compare`
    /// takes --group LABEL=FILE twice instead.
    #[arg(long)]
    pub sentences: Option<PathBuf>,
    /// Target as text: a word of one or several tokens (note the leading space: " her";
    /// SentencePiece models: " her" and "her" both name `▁her`).
    #[arg(long, allow_hyphen_values = true, conflicts_with = "target_id")]
    pub target: Option<String>,
    /// Target as a token id.
    #[arg(long)]
    pub target_id: Option<u32>,
    /// Angle unit.
    #[arg(long, value_enum, default_value_t = UnitArg::Degrees)]
    pub unit: UnitArg,
    /// Seed of the shuffled control [default: the server's, 20250901].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Non-target position relative to the target [default: -1, the token before].
    #[arg(long, allow_hyphen_values = true)]
    pub offset: Option<i32>,
    /// Multiple-comparison correction.
    #[arg(long, value_enum, default_value_t = CorrectionArg::Bonferroni)]
    pub correction: CorrectionArg,
    /// Significance level.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Bonferroni divisor [default: number of layers].
    #[arg(long)]
    pub num_tests: Option<u32>,
    /// Output folder (checked before the work: created, writable, no earlier analysis unless --overwrite).
    #[arg(long, default_value = "analysis-output")]
    pub out: PathBuf,
    /// Replace an earlier analysis in --out.
    #[arg(long)]
    pub overwrite: bool,
    /// Above this many sentences, use StreamRotations (with a progress bar) instead of Analyze.
    #[arg(long, env = "ROTATIONS_STREAM_ABOVE", default_value_t = 2000)]
    pub stream_above: usize,
    /// With several servers: sentences per chunk sent to a replica.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_size: u32,
    /// With several servers: seconds a replica has for one chunk before the chunk goes to another
    /// (default: 60 and 2 per sentence of the chunk; a frozen replica is found sooner by keepalive pings).
    #[arg(long, env = "ROTATIONS_CHUNK_TIMEOUT", value_name = "SECONDS", value_parser = positive_seconds)]
    pub chunk_timeout: Option<f64>,
    /// With a dns:///name:port server: seconds between lookups of the name during a run, so that
    /// new replicas join and vanished ones stop taking chunks.
    #[arg(long, env = "ROTATIONS_RESOLVE_INTERVAL", default_value_t = 30.0, value_name = "SECONDS",
          value_parser = positive_seconds)]
    pub resolve_interval: f64,
    /// Write the angles to this .npy file as they arrive instead of holding them ([sentences,
    /// layers, 3] float32; the draws to FILE.draws.npy), as the Python Cluster's angles_out.
    /// angles.csv and the per-sentence parts of analysis.json are then left out (docs/src/deployment.md).
    #[arg(long, value_name = "FILE.npy")]
    pub angles_out: Option<PathBuf>,
    #[command(flatten)]
    pub vectors: VectorsArgs,
    /// With a tokenizer that puts a BOS token before every sentence (Llama): a target that is a
    /// sentence's first word is compared with the BOS token (refused by default).
    #[arg(long)]
    pub allow_bos_non_target: bool,
    /// Analyse the valid sentences and list the invalid ones in skipped.csv (corpus index, line,
    /// reason) instead of failing; their draws do not change. Without it, every invalid sentence
    /// is named at once and nothing is computed.
    #[arg(long)]
    pub skip_invalid: bool,
}

/// `analyze --vectors-out`: the vectors themselves on disk (issue 26).
#[derive(Args, Clone, Debug, Default)]
pub struct VectorsArgs {
    /// Write each sentence's target and non-target vectors at every state (or --vectors-states) to
    /// .npy files as they arrive: [sentences, states, hidden] each, the target's in FILE.npy, the
    /// non-target's in FILE.non_target.npy, rows in the order of the sentences (as --angles-out's).
    #[arg(long, value_name = "FILE.npy")]
    pub vectors_out: Option<PathBuf>,
    /// With --vectors-out: f32 (the vectors the angles are computed from, exactly) or f16 (each value
    /// rounded to the nearest float16).
    #[arg(long, value_enum, default_value = "f32", requires = "vectors_out")]
    pub vectors_dtype: VectorsDtypeArg,
    /// With --vectors-out: the states to write, comma-separated indices as in norms.csv (hidden states
    /// 0..=L, then a model's sub-layer states); default every state the model returns.
    #[arg(long, value_delimiter = ',', value_name = "STATE,...", requires = "vectors_out")]
    pub vectors_states: Vec<u32>,
    /// With --vectors-out: whose vectors, comma-separated (default target,non-target).
    #[arg(long, value_enum, value_delimiter = ',', requires = "vectors_out")]
    pub vectors_conditions: Vec<VectorConditionArg>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum VectorsDtypeArg {
    #[default]
    F32,
    F16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum VectorConditionArg {
    Target,
    NonTarget,
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() => Ok(s),
        _ => Err(format!("{text:?} is not a positive number of seconds")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum ConditionArg {
    #[default]
    Target,
    NonTarget,
    Shuffled,
}

/// `rotations compare`: the options of `analyze` apply to each group; the output files differ.
#[derive(Clone, Debug, Args)]
pub struct CompareArgs {
    /// A labelled group of sentences, LABEL=FILE (one sentence per line); give exactly two, the
    /// first is A: --group possessive=her_possessive.txt --group object=her_object.txt.
    #[arg(long = "group", value_name = "LABEL=FILE", required = true, value_parser = parse_group)]
    pub groups: Vec<(String, PathBuf)>,
    /// The condition whose angles are compared between the groups.
    #[arg(long, value_enum, default_value_t = ConditionArg::Target)]
    pub condition: ConditionArg,
    #[command(flatten)]
    pub analysis: AnalyzeArgs,
}

fn parse_group(value: &str) -> Result<(String, PathBuf), String> {
    match value.split_once('=') {
        Some((label, file)) if !label.trim().is_empty() && !file.is_empty() => {
            Ok((label.to_string(), PathBuf::from(file)))
        }
        _ => Err(format!("{value:?} is not LABEL=FILE (e.g. possessive=her_possessive.txt)")),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command, ServeConfig};
    use crate::model::{GraphOptimization, PassCost};

    fn serve(args: &[&str]) -> Result<ServeConfig, clap::Error> {
        let cli = Cli::try_parse_from(["rotations", "serve"].iter().chain(args))?;
        match cli.command {
            Command::Serve(config) => Ok(config),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn ort_tuning_defaults_are_the_measured_best() {
        let tuning = serve(&[]).unwrap().runtime_options().tuning;
        assert_eq!(tuning.graph_optimization, GraphOptimization::All);
        assert!(tuning.prepack_weights && tuning.prefetch && tuning.spinning);
        assert_eq!(tuning.pass_cost_tokens, PassCost(Some(16)));
        assert_eq!(tuning.save_optimized, None);
    }

    #[test]
    fn the_bare_binary_listens_on_loopback_and_never_shows_its_key() {
        let config = serve(&[]).unwrap();
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!((config.host, config.metrics_host), (loopback, loopback));
        assert!(config.tls_cert.is_none() && config.api_key.is_none());
        let config = serve(&["--api-key", "hunter2-secret"]).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
        let err = serve(&["--tls-cert", "cert.pem"]).unwrap_err().to_string();
        assert!(err.contains("--tls-key"), "{err}");
    }

    #[test]
    fn ort_tuning_flags_parse_and_bad_values_name_the_flag() {
        let config = serve(&[
            "--graph-optimization=basic",
            "--prepack-weights=false",
            "--prefetch-weights=0",
            "--ort-spinning=false",
            "--pass-cost-tokens=off",
            "--save-optimized-model=/tmp/opt.onnx",
        ])
        .unwrap();
        let tuning = config.runtime_options().tuning;
        assert_eq!(tuning.graph_optimization, GraphOptimization::Basic);
        assert!(!tuning.prepack_weights && !tuning.prefetch && !tuning.spinning);
        assert_eq!(tuning.pass_cost_tokens, PassCost(None));
        assert_eq!(tuning.save_optimized.as_deref(), Some(std::path::Path::new("/tmp/opt.onnx")));
        assert_eq!(serve(&["--pass-cost-tokens", "48"]).unwrap().pass_cost_tokens, PassCost(Some(48)));

        let err = serve(&["--pass-cost-tokens", "many"]).unwrap_err().to_string();
        assert!(err.contains("--pass-cost-tokens") && err.contains("neither a token count nor `off`"), "{err}");
        let err = serve(&["--graph-optimization", "max"]).unwrap_err().to_string();
        assert!(err.contains("--graph-optimization"), "{err}");
        use crate::model::GatherOutputs;
        assert_eq!(serve(&[]).unwrap().runtime_options().tuning.gather_outputs, GatherOutputs::Auto);
        assert_eq!(serve(&["--gather-outputs", "on"]).unwrap().gather_outputs, GatherOutputs::On);
        assert!(serve(&["--gather-outputs", "maybe"]).unwrap_err().to_string().contains("--gather-outputs"));
    }

    #[test]
    fn sharding_flags_parse_and_a_bad_interval_names_the_flag() {
        let analyze = |extra: &[&str]| -> Result<super::AnalyzeArgs, clap::Error> {
            let base = ["rotations", "analyze", "--sentences", "s.txt", "--target", " her"];
            match Cli::try_parse_from(base.iter().chain(extra))?.command {
                Command::Analyze(args) => Ok(args),
                other => panic!("parsed as {other:?}"),
            }
        };
        let args = analyze(&[]).unwrap();
        assert_eq!((args.resolve_interval, args.angles_out.is_none()), (30.0, true));
        assert!(args.client.connect.tls_server_name.is_none());
        let args =
            analyze(&["--resolve-interval", "0.5", "--angles-out", "a.npy", "--tls-server-name", "svc"]).unwrap();
        assert_eq!((args.resolve_interval, args.client.connect.tls_server_name.as_deref()), (0.5, Some("svc")));
        let err = analyze(&["--resolve-interval", "0"]).unwrap_err().to_string();
        assert!(err.contains("--resolve-interval") && err.contains("not a positive number of seconds"), "{err}");
        assert_eq!(args.chunk_timeout, None, "the default deadline is derived from each chunk's size");
        assert_eq!(analyze(&["--chunk-timeout", "90"]).unwrap().chunk_timeout, Some(90.0));
        let err = analyze(&["--chunk-timeout", "0"]).unwrap_err().to_string();
        assert!(err.contains("--chunk-timeout") && err.contains("not a positive number of seconds"), "{err}");
    }
}
