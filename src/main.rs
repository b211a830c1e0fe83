use clap::{CommandFactory, FromArgMatches};
use rotations::config::{resolve_ort_library, Cli, Command, LogFormat};
use rotations::model::onnx::{runtime_version, COMPILED_PROVIDERS};
use rotations::{client, service};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    // Colours only on a terminal: logs collected from a container or a file stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let mut command = Cli::command();
    // Only `--version` loads ONNX Runtime to name it: every other command leaves that to `serve`.
    if std::env::args_os().skip(1).any(|a| a == "--version") {
        // clap keeps 'static text; this runs once, just before the process prints it and exits.
        command = command.long_version(&*Box::leak(long_version().into_boxed_str()));
    }
    let cli = Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Serve(config) => {
            init_logging(config.log_format);
            match tokio::net::TcpListener::bind(config.listen_addr()).await {
                Ok(listener) => service::server::serve(config, listener, shutdown_signal()).await,
                Err(e) => Err(anyhow::anyhow!("cannot listen on {}: {e}", config.listen_addr())),
            }
        }
        Command::Analyze(args) => client::analyze(args).await,
        Command::Compare(args) => client::groups::compare(args).await,
        Command::Info(args) => client::info(args).await,
        Command::Tokenize(args) => client::tokenize(args).await,
        Command::Health(args) => client::health(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
