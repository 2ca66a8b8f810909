//! `chat-operator`: `run` (the controller, default), `crd`, `render -f cluster.yaml`.
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

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
    Run,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
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
        Command::Run => anyhow::bail!("not yet"),
    }
    Ok(())
}
