use clap::Parser;
use rotations::config::{Cli, Command};
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

/// Longest the exit waits for the last spans to reach a collector.
const TRACE_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The server logs; the CLI's commands print their own output and only export spans.
    let installed = match &cli.command {
        Command::Serve(config) => telemetry::install(Some(config.log_format), config.otlp().as_ref()),
        Command::Analyze(args) => telemetry::install(None, args.client.otlp().as_ref()),
        Command::Compare(args) => telemetry::install(None, args.analysis.client.otlp().as_ref()),
        Command::Info(args) | Command::Health(args) => telemetry::install(None, args.otlp().as_ref()),
        Command::Tokenize(args) => telemetry::install(None, args.client.otlp().as_ref()),
    };
    let result = match installed {
        Ok(export) => {
            // A client command's span: the root of its trace, which every request joins (a server's
            // calls each start or join their own).
            let span = match &cli.command {
                Command::Serve(_) => tracing::Span::none(),
                command => tracing::info_span!("command", otel.name = format!("rotations {}", name(command))),
            };
            let result = run(cli.command).instrument(span).await;
            if let Some(export) = export {
                let _ = tokio::task::spawn_blocking(move || export.shutdown(TRACE_FLUSH)).await;
            }
            result
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
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
