//! The chat-server binary: configuration from flags and environment, logs, then serve.

use anyhow::Context;
use chat_server::config::{Config, LogFormat, VARS};
use chat_server::{Server, shutdown};
use clap::{Arg, ArgAction, Command};

fn cli() -> Command {
    let mut cmd = Command::new("chat-server")
        .version(env!("CARGO_PKG_VERSION"))
        .about("STOMP-over-WebSocket chat server: in-memory alone, or clustered on Redis")
        .after_help("Every flag is also an environment variable of the same name.");
    for v in VARS {
        let mut arg = Arg::new(v.name)
            .long(v.name)
            .env(v.name)
            .value_name("VALUE")
            .help(v.help)
            .action(ArgAction::Set);
        if let Some(d) = v.default {
            arg = arg.default_value(d);
        }
        cmd = cmd.arg(arg);
    }
    cmd
}

fn main() -> anyhow::Result<()> {
    let matches = cli().get_matches();
    let config = Config::from_lookup(|name| {
        matches
            .try_get_one::<String>(name)
            .ok()
            .flatten()
            .cloned()
            .or_else(|| std::env::var(name).ok())
    })
    .context("invalid configuration")?;
    init_tracing(config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        server.run(shutdown::signal()).await?;
        Ok(())
    })
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logging must never take the server down: with stdout and stderr both gone (a closed pipe),
    // the subscriber's own error report would panic the task that logged. Colours only on a tty.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .log_internal_errors(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
