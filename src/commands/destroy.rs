//! `realtime-stack destroy`: finds everything the stack owns (by its tag, and the
//! untaggable pieces through their parents), asks, and deletes it in dependency order,
//! retrying what AWS refuses until nothing progresses; then names what is left.
//! `destroy --local` first stops what `up --local` runs on this machine, then destroys
//! the stack in LocalStack ([`crate::local::Environment`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::aws::AwsArgs;
use crate::engine::{self, Changes, Deletable, Pace, Progress};
use crate::local::Environment;
use crate::stack::Stack;
use crate::{artifact, cache, certificate, dns, instances, load_balancer, network};

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
    let resources = discover(stack, &account).await?;
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

/// Every resource the stack owns, from every service at once.
async fn discover(stack: &Stack, account: &str) -> Result<Vec<Box<dyn Deletable>>> {
    // Record sets are untaggable: the stack owns the domain's alias while it points at
    // the stack's load balancer, and its certificates' validation CNAMEs.
    let records = async {
        let zone = match dns::find_zone(stack).await {
            Ok(zone) => zone,
            Err(err) => {
                stack
                    .progress
                    .note(&format!("record sets left alone: {err:#}"));
                return Ok(Vec::new());
            }
        };
        let (alias_target, mut owned) = futures::try_join!(
            load_balancer::alias_target(stack),
            certificate::validation_records(stack)
        )?;
        if let Some((dns_name, zone_id)) = alias_target {
            owned.push(dns::domain_alias(stack, &dns_name, &zone_id));
        }
        Ok::<_, anyhow::Error>(dns::deletables(stack, &zone, &owned).await)
    };
    let found = futures::try_join!(
        instances::deletables(stack),
        load_balancer::deletables(stack),
        cache::deletables(stack),
        certificate::deletables(stack),
        records,
        artifact::deletables(stack, account),
        network::deletables(stack),
    )?;
    let (a, b, c, d, e, f, g) = found;
    Ok([a, b, c, d, e, f, g].into_iter().flatten().collect())
}
