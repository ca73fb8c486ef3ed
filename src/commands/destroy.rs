//! `realtime-stack destroy`: finds everything the stack owns (by its tag, and the
//! untaggable pieces through their parents), asks, and deletes it in dependency order,
//! retrying what AWS refuses until nothing progresses; then names what is left.
//! `destroy --local` first stops what `up --local` runs on this machine, then destroys
//! the stack in LocalStack ([`crate::local::Environment`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::aws::AwsArgs;
use crate::engine::{self, Changes, Pace, Progress};
use crate::local::Environment;
use crate::stack::Stack;

#[derive(clap::Args, Debug, Clone)]
pub struct DestroyArgs {
    /// Go ahead without asking
    #[arg(long)]
    pub yes: bool,
    /// Undo `up --local`: stop the local emulator (and the instances it booted) and the
    /// local redis-server, then destroy the stack in LocalStack
    #[arg(long)]
    pub local: bool,
}

pub async fn run(file: &Path, aws: &AwsArgs, args: &DestroyArgs) -> Result<()> {
    if !args.local {
        let stack = super::open_stack(file, aws).await?;
        return delete_all(&stack, args.yes).await;
    }
    // What runs here goes first: once the instances are terminated in LocalStack, the
    // emulator would give each server its whole drain.
    Environment::stop(file, &Progress::new())?;
    match Environment::attach(file, aws, Changes::default()).await? {
        // Nothing here touches an AWS account: no question to ask.
        Some(environment) => delete_all(&environment.stack, true).await,
        None => {
            Progress::new().note("LocalStack is not running: the stack went with it");
            Ok(())
        }
    }
}

/// Lists what `stack` owns, asks (unless `yes`), and deletes it.
async fn delete_all(stack: &Stack, yes: bool) -> Result<()> {
    let account = super::account(stack).await?;
    let resources = super::inventory::discover(stack, &account).await?;
    if resources.is_empty() {
        stack.progress.note(&format!(
            "stack '{}' has no resources in {}: nothing to delete",
            stack.spec.name, stack.region
        ));
        return Ok(());
    }
    let listing: Vec<String> = resources
        .iter()
        .map(|r| format!("  - {}", r.label()))
        .collect();
    eprintln!(
        "Stack '{}' in account {account} ({}) owns:\n{}",
        stack.spec.name,
        stack.region,
        listing.join("\n")
    );
    super::confirm(&format!("Delete these {} resources?", resources.len()), yes)?;
    // ElastiCache takes minutes to delete a replication group and load balancers leave
    // network interfaces behind for a while: patience is measured from the last progress.
    let patience = match stack.pace {
        Pace::Local => Duration::from_secs(60),
        Pace::Aws => Duration::from_secs(20 * 60),
    };
    engine::destroy(resources, &stack.progress, stack.pace, patience).await?;
    stack
        .progress
        .note(&format!("stack '{}' is gone", stack.spec.name));
    Ok(())
}
