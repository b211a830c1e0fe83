use clap::{CommandFactory, FromArgMatches};
use rotations::config::{resolve_ort_library, Cli, Command};
use rotations::model::onnx::{runtime_version, COMPILED_PROVIDERS};
use rotations::{client, service, telemetry};
use tracing::Instrument;

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// What `rotations --version` prints after the name: this binary's version, the ONNX Runtime it finds
/// (as `serve` looks it up, ORT_DYLIB_PATH first) and the execution providers compiled in.
fn long_version() -> String {
    let library = resolve_ort_library(std::env::var_os("ORT_DYLIB_PATH").map(Into::into));
    let runtime = match runtime_version(&library) {
        Ok(version) => format!("ONNX Runtime {version} ({})", tidy(&library).display()),
        Err(e) => format!("ONNX Runtime: not loaded: {e}"),
    };
    let providers = COMPILED_PROVIDERS.join(", ");
    format!("{}\n{runtime}\nexecution providers compiled in: {providers}", env!("CARGO_PKG_VERSION"))
}

/// `bin/../lib/x.so` as `lib/x.so`: the folder resolved, the file's own name kept.
fn tidy(path: &std::path::Path) -> std::path::PathBuf {
    let folder = path.parent().and_then(|p| std::fs::canonicalize(p).ok());
    match (folder, path.file_name()) {
        (Some(folder), Some(name)) => folder.join(name),
        _ => path.to_path_buf(),
    }
}

/// Longest the exit waits for the last spans to reach a collector.
const TRACE_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// How long the runtime may wait, once the command is over, for blocking threads still busy (a
/// server that gave up on one at the end of its grace period must not wait for it).
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(200);

fn main() -> std::process::ExitCode {
    let mut command = Cli::command();
    // Only `--version` loads ONNX Runtime to name it: every other command leaves that to `serve`.
    if std::env::args_os().skip(1).any(|a| a == "--version") {
        // clap keeps 'static text; this runs once, just before the process prints it and exits.
        command = command.long_version(&*Box::leak(long_version().into_boxed_str()));
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(traced(cli.command));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A reader that closed our stdout (`rotations analyze … | head`) has what it wanted.
        Err(e) if closed_stdout(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command with logging and span export installed; the last spans flushed (bounded) at its end.
async fn traced(command: Command) -> anyhow::Result<()> {
    // The server logs; the CLI's commands print their own output and only export spans.
    let export = match &command {
        Command::Serve(config) => telemetry::install(Some(config.log_format), config.otlp().as_ref()),
        Command::Analyze(args) => telemetry::install(None, args.client.otlp().as_ref()),
        Command::Compare(args) => telemetry::install(None, args.analysis.client.otlp().as_ref()),
        Command::Info(args) | Command::Health(args) => telemetry::install(None, args.otlp().as_ref()),
        Command::Tokenize(args) => telemetry::install(None, args.client.otlp().as_ref()),
    }?;
    // A client command's span: the root of its trace, which every request joins (a server's
    // calls each start or join their own).
    let span = match &command {
        Command::Serve(_) => tracing::Span::none(),
        command => tracing::info_span!("command", otel.name = format!("rotations {}", name(command))),
    };
    let result = run(command).instrument(span).await;
    if let Some(export) = export {
        let _ = tokio::task::spawn_blocking(move || export.shutdown(TRACE_FLUSH)).await;
    }
    result
}

/// Whether writing to stdout failed because its reader went away (EPIPE), as ripgrep and git treat it.
fn closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn name(command: &Command) -> &'static str {
    match command {
        Command::Serve(_) => "serve",
        Command::Analyze(_) => "analyze",
        Command::Compare(_) => "compare",
        Command::Info(_) => "info",
        Command::Tokenize(_) => "tokenize",
        Command::Health(_) => "health",
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(config) => match tokio::net::TcpListener::bind(config.listen_addr()).await {
            Ok(listener) => service::server::serve(config, listener, shutdown_signal()).await,
            Err(e) => Err(anyhow::anyhow!("cannot listen on {}: {e}", config.listen_addr())),
        },
        Command::Analyze(args) => client::analyze(args).await,
        Command::Compare(args) => client::groups::compare(args).await,
        Command::Info(args) => client::info(args).await,
        Command::Tokenize(args) => client::tokenize(args).await,
        Command::Health(args) => client::health(args).await,
    }
}
