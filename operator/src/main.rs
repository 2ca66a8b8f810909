//! `chat-operator`: `run` (the controller, default), `crd`, `render -f cluster.yaml`.

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Crd => print!("{}", chat_operator::crd::ChatCluster::crd_yaml()?),
        Command::Run => anyhow::bail!("not yet"),
    }
    Ok(())
}
