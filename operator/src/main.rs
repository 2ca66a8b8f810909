//! `chat-operator`: `run` (the controller, default), `crd`, `render -f cluster.yaml`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use chat_operator::app::{self, RunConfig};
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
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run,
    /// Print the ChatCluster CRD as YAML.
    Crd,
    /// Print every object the operator would apply for the ChatClusters in a file.
    Render {
        /// A YAML file with one or more ChatCluster documents (`-` for standard input).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Address of /metrics, /healthz and /readyz.
    #[arg(
        long,
        global = true,
        env = "LISTEN_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    listen_addr: SocketAddr,
    /// Namespace the operator runs in (its Lease lives there; the Redis NetworkPolicy admits it).
    #[arg(
        long,
        global = true,
        env = "OPERATOR_NAMESPACE",
        default_value = "chat-operator"
    )]
    operator_namespace: String,
    /// This replica's identity in the Lease (default: the pod name).
    #[arg(long, global = true, env = "POD_NAME")]
    identity: Option<String>,
    /// Name of the leader-election Lease.
    #[arg(
        long,
        global = true,
        env = "LEASE_NAME",
        default_value = "chat-operator"
    )]
    lease_name: String,
    /// Seconds a follower waits from its last observed Lease change before taking over (at
    /// least 5); the renew deadline is 2/3 of it, the retry period 2/15.
    #[arg(
        long,
        global = true,
        env = "LEASE_DURATION_SECONDS",
        default_value_t = 15
    )]
    lease_duration_seconds: u64,
    /// Log format: json or text.
    #[arg(long, global = true, env = "LOG_FORMAT", default_value = "json")]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Crd => print!("{}", chat_operator::crd::ChatCluster::crd_yaml()?),
        Command::Render { file } => {
            let yaml = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let out = chat_operator::render::render(&yaml, &cli.run.operator_namespace)?;
            print!("{out}");
        }
        Command::Run => {
            let args = cli.run;
            app::init_tracing(&args.log_format);
            let config = RunConfig {
                listen_addr: args.listen_addr,
                operator_namespace: args.operator_namespace,
                identity: args.identity.unwrap_or_else(app::default_identity),
                lease_name: args.lease_name,
                lease_duration: Duration::from_secs(args.lease_duration_seconds.max(5)),
            };
            tokio::runtime::Runtime::new()?.block_on(app::run(config))?;
        }
    }
    Ok(())
}
