use clap::Parser;
use rotations::config::{Cli, Command, LogFormat};
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

/// How long the runtime may wait, once the command is over, for blocking threads still busy (a
/// server that gave up on one at the end of its grace period must not wait for it).
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_millis(200);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
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
    }
}
