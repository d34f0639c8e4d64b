//! The `fanin` command: parse arguments, load the config, run the library, set the exit code.
//!
//! Exit codes: 0 after a clean shutdown, 2 for a bad command line or config (a certificate,
//! key or token file that cannot be used included), 1 for anything that fails at run time
//! (a port already in use, a server error).

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fanin::{App, Config};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fanin",
    version,
    about = "OTLP metrics aggregation sidecar for pre-fork servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar: OTLP/gRPC, OTLP/HTTP and the query API.
    Serve(ServeArgs),
    /// Print the built-in default configuration (config.yaml) and exit.
    DefaultConfig,
    /// Fork workers through the fork-aware shim and prove fanin saw each as its own
    /// instance with exact totals and no collision; then show a naive pre-fork setup's
    /// collision being caught. Exits 1 when a verification fails.
    Check(CheckArgs),
}

#[derive(Parser)]
struct CheckArgs {
    /// Workers to fork (at least 2).
    #[arg(long, default_value_t = 4, value_name = "N")]
    workers: usize,
    /// A running sidecar's OTLP endpoint (`http://HOST:PORT` or `unix:/PATH`); without it
    /// `check` starts its own on free loopback ports.
    #[arg(long, value_name = "ENDPOINT")]
    target: Option<String>,
    /// The running sidecar's query API, with --target.
    #[arg(
        long,
        value_name = "URL",
        default_value = "http://127.0.0.1:9464",
        requires = "target"
    )]
    query: String,
    /// OTLP protocol the workers export with.
    #[arg(long, value_enum, default_value_t = CheckProtocol::Grpc)]
    protocol: CheckProtocol,
    /// Export over the sidecar's unix socket (the one `check` starts; for a running sidecar
    /// give --target unix:/PATH instead).
    #[arg(long, conflicts_with = "target")]
    unix: bool,
    /// How long to wait for each step (an export to show up, a worker to exit).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CheckProtocol {
    Grpc,
    Http,
}

#[derive(Parser)]
struct ServeArgs {
    /// Configuration file; without it the built-in config.yaml is used.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Override receivers.otlp.grpc.listen (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<SocketAddr>,
    /// Override receivers.otlp.http.listen (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<SocketAddr>,
    /// Override query.listen (port 0 picks a free port).
    #[arg(long, value_name = "ADDR")]
    query_listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DefaultConfig => {
            print!("{}", fanin::config::DEFAULT_YAML);
            ExitCode::SUCCESS
        }
        Command::Check(args) => check(&args),
        Command::Serve(args) => {
            let config = match load_config(&args) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("fanin: {error:#}");
                    return ExitCode::from(2);
                }
            };
            init_tracing();
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    eprintln!("fanin: {error:#}");
                    // A certificate, key or token file the config names that cannot be used
                    // is a config error.
                    match error.downcast_ref::<fanin::AppError>() {
                        Some(
                            fanin::AppError::Security(_)
                            | fanin::AppError::Export(_)
                            | fanin::AppError::Storage(_)
                            | fanin::AppError::Exposed(_),
                        ) => ExitCode::from(2),
                        _ => ExitCode::FAILURE,
                    }
                }
            }
        }
    }
}

/// Runs `fanin check` on this (single) thread: it forks, so no runtime or logger thread
/// may be started before it.
fn check(args: &CheckArgs) -> ExitCode {
    let options = fanin::check::CheckOptions {
        workers: args.workers,
        target: args.target.as_ref().map(|endpoint| fanin::check::Target {
            endpoint: endpoint.clone(),
            query: args.query.clone(),
        }),
        protocol: match args.protocol {
            CheckProtocol::Grpc => fanin::shim::Protocol::Grpc,
            CheckProtocol::Http => fanin::shim::Protocol::HttpProtobuf,
        },
        unix: args.unix,
        timeout: args.timeout,
    };
    let mut out = std::io::stdout();
    match fanin::check::run(&options, &mut out) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error @ fanin::check::CheckError::Usage(_)) => {
            eprintln!("fanin check: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("fanin check: {error}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        None => Config::default_config().context("built-in config")?,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            Config::from_yaml_over_default(&text)
                .with_context(|| format!("config file {}", path.display()))?
        }
    };
    if let Some(address) = args.grpc_listen {
        config.receivers.otlp.grpc.listen = address;
    }
    if let Some(address) = args.http_listen {
        config.receivers.otlp.http.listen = address;
    }
    if let Some(address) = args.query_listen {
        config.query.listen = address;
    }
    config.check_exposure()?;
    Ok(config)
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`); stdout carries only the
/// listener lines, so scripts can read them.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let grace = config.shutdown_grace;
        // Handlers go in before the listener lines are printed: a script that reads them and
        // sends SIGTERM at once must get a graceful shutdown, not the default action.
        let signals = Signals::install()?;
        // Only with allow_insecure: check_exposure refused the others.
        for listener in config.exposed_listeners() {
            tracing::warn!(
                key = format!("{}.listen", listener.key),
                address = %listener.listen,
                "Listening beyond loopback without TLS or a token (allow_insecure: true): \
                 anyone who can reach this address can write any worker's streams and read \
                 every total"
            );
        }
        let app = App::bind(config).await?;
        let addresses = app.addresses();
        let exporters = app.exporters();
        {
            let mut stdout = std::io::stdout().lock();
            writeln!(stdout, "otlp-grpc listening on {}", addresses.grpc)?;
            writeln!(stdout, "otlp-http listening on {}", addresses.http)?;
            writeln!(stdout, "query listening on {}", addresses.query)?;
            if let Some(path) = &addresses.unix {
                writeln!(stdout, "otlp-unix listening on {}", path.display())?;
            }
            for (exporter, target) in &exporters {
                writeln!(stdout, "exporter {exporter} sending to {target}")?;
            }
            stdout.flush()?;
        }
        tracing::info!(grpc = %addresses.grpc, http = %addresses.http, query = %addresses.query, "fanin started");

        let shutdown = CancellationToken::new();
        let mut server = tokio::spawn(app.run(shutdown.clone()));
        tokio::select! {
            signal = signals.received() => {
                tracing::info!(signal, "Shutting down; waiting for requests in flight");
            }
            joined = &mut server => {
                // A server stopped by itself: that is an error, not a shutdown.
                joined.context("server task panicked")??;
                anyhow::bail!("servers stopped without a shutdown signal");
            }
        }
        shutdown.cancel();
        match tokio::time::timeout(grace, server).await {
            Ok(joined) => joined.context("server task panicked")??,
            Err(_) => tracing::warn!(?grace, "Shutdown grace period over; exiting with requests in flight (and, with storage.path set, without the last snapshot: the one before it stays)"),
        }
        tracing::info!("fanin stopped");
        Ok(())
    })
}

/// SIGINT and SIGTERM, caught from the moment they are installed; SIGHUP too, so that it
/// never ends fanin (the app reads its certificate and token files again on it).
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    _hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            _hangup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for either signal and says which arrived.
    async fn received(mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
