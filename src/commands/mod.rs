//! The CLI's commands, each a `run` function, and what they share: loading the stack,
//! the preflight checks, and asking before acting.

mod converge;
pub mod destroy;
pub mod plan;
mod preflight;
pub mod up;

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::aws::{AwsArgs, Call};
use crate::engine::Progress;
use crate::spec::StackSpec;
use crate::stack::Stack;

/// How a command prints what it found.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Loads and validates `stack.yaml` (every problem at once), then resolves how to reach
/// AWS. Nothing is called yet.
pub async fn open_stack(file: &Path, aws: &AwsArgs) -> Result<Stack> {
    let spec = StackSpec::load(file)?;
    Stack::connect(spec, aws, Progress::new()).await
}

/// The account the credentials belong to; fails early, with advice, when they do not
/// resolve.
pub async fn account(stack: &Stack) -> Result<String> {
    let identity = stack
        .clients
        .sts
        .get_caller_identity()
        .send()
        .await
        .call("GetCallerIdentity (checking the AWS credentials)")
        .context("no usable AWS credentials: configure a profile (`aws configure`, `aws sso login`) or pass --profile")?;
    identity
        .account
        .context("GetCallerIdentity returned no account")
}

/// Asks `question` on the terminal; `--yes` answers it in advance. Without a terminal and
/// without `--yes` it refuses rather than guessing.
pub fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} Not confirmed: there is no terminal to ask on; pass --yes to go ahead");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}
