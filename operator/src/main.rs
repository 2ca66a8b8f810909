//! `chat-operator`: `run` (the controller, default), `crd`, `render -f cluster.yaml`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "chat-operator",
    version,
    about = "Kubernetes operator for chatcluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run(RunArgs),
    /// Print the ChatCluster CRD as YAML.
    Crd,
    /// Print every object the operator would apply for the ChatClusters in a file.
    Render {
        /// A YAML file with one or more ChatCluster documents (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Namespace the operator runs in (the Redis NetworkPolicy admits it).
        #[arg(long, env = "OPERATOR_NAMESPACE", default_value = "chat-operator")]
        operator_namespace: String,
    },
}

#[derive(Args, Default)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "LISTEN_ADDR", default_value = "0.0.0.0:8080")]
    listen_addr: Option<SocketAddr>,
    /// Namespace the operator runs in (its Lease lives there).
    #[arg(long, env = "OPERATOR_NAMESPACE", default_value = "chat-operator")]
    operator_namespace: Option<String>,
    /// This replica's identity in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "chat-operator")]
    lease_name: Option<String>,
    /// Seconds a Lease lives without renewal.
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Log format: json or text.
    #[arg(long, env = "LOG_FORMAT", default_value = "json")]
    log_format: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
        Command::Crd => print!("{}", chat_operator::crd::ChatCluster::crd_yaml()?),
        Command::Render {
            file,
            operator_namespace,
        } => {
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            print!(
                "{}",
                chat_operator::render::render(&yaml, &operator_namespace)?
            );
        }
        Command::Run(args) => {
            // `chat-operator` with no subcommand runs with the defaults and environment.
            let args = if args.listen_addr.is_none() {
                RunArgs::parse_from_env()
            } else {
                args
            };
            chat_operator::app::init_tracing(args.log_format.as_deref().unwrap_or("json"));
            let config = chat_operator::app::RunConfig {
                listen_addr: args
                    .listen_addr
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
                operator_namespace: args
                    .operator_namespace
                    .unwrap_or_else(|| "chat-operator".to_owned()),
                identity: args.identity.unwrap_or_else(default_identity),
                lease_name: args
                    .lease_name
                    .unwrap_or_else(|| "chat-operator".to_owned()),
                lease_duration: Duration::from_secs(args.lease_duration_seconds.max(5)),
            };
            tokio::runtime::Runtime::new()?.block_on(chat_operator::app::run(config))?;
        }
    }
    Ok(())
}

impl RunArgs {
    /// The `run` arguments from the environment and defaults alone.
    fn parse_from_env() -> Self {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            run: RunArgs,
        }
        Only::parse_from(["chat-operator"]).run
    }
}

fn default_identity() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("chat-operator-{}", std::process::id()))
}
