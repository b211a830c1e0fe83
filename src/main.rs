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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
        // A reader that closed our stdout (`rotations analyze … | head`) has what it wanted.
        Err(e) if closed_stdout(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether writing to stdout failed because its reader went away (EPIPE), as ripgrep and git treat it.
fn closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
