//! `realtime-stack drill instance|redis`: resilience proven on a live stack. While two
//! chat clients ([`crate::drill`]) keep sending and receiving through the stack's URL,
//! `drill instance` terminates the instance the listener is on through the Auto Scaling
//! group (which drains it and launches a replacement) and reports the gap in delivery,
//! the acknowledged messages lost (none, or it fails) and how long the replacement took.
//! It refuses to run without `--yes`, except on the stack of `up --local`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::OutputFormat;
use crate::aws::AwsArgs;
use crate::deploy::Health;
use crate::drill::{Clients, Figures};
use crate::engine::{Changes, wait_for};
use crate::local::Environment;
use crate::platform::{Aws, Platform};
use crate::stack::Stack;
use crate::{group, load_balancer};

#[derive(clap::Args, Debug, Clone)]
pub struct DrillArgs {
    /// What to break
    #[arg(value_enum)]
    pub what: Drill,
    /// Go ahead: the drill breaks part of a live stack
    #[arg(long)]
    pub yes: bool,
    /// The stack of `up --local`
    #[arg(long)]
    pub local: bool,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drill {
    /// Terminate an instance through the Auto Scaling group
    Instance,
}

/// What a drill reports.
#[derive(Debug, Serialize)]
pub struct Report {
    pub drill: String,
    /// The instance terminated.
    pub terminated: String,
    /// Its replacement, healthy in the target group.
    pub replacement: String,
    pub replaced_in_ms: u64,
    #[serde(flatten)]
    pub figures: Figures,
}

pub async fn run(file: &Path, aws: &AwsArgs, args: &DrillArgs) -> Result<()> {
    if !args.yes && !args.local {
        bail!(
            "drill {:?} breaks part of the live stack on purpose (its users may notice): pass \
             --yes to go ahead",
            args.what
        );
    }
    let report = if args.local {
        let environment = Environment::attach(file, aws, Changes::default())
            .await?
            .context("LocalStack is not running, so there is no local stack: `up --local` first")?;
        instance(&environment.stack, &environment).await?
    } else {
        let stack = super::open_stack(file, aws).await?;
        instance(&stack, &Aws).await?
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            println!(
                "drill {}: terminated {}; {} healthy in its place after {:.1} s",
                report.drill,
                report.terminated,
                report.replacement,
                report.replaced_in_ms as f64 / 1000.0
            );
            println!(
                "  {} messages acknowledged, {} lost; longest gap in delivery {} ms; {} reconnect(s)",
                report.figures.acknowledged,
                report.figures.lost.len(),
                report.figures.longest_gap_ms,
                report.figures.reconnects
            );
        }
    }
    if !report.figures.lost.is_empty() {
        bail!(
            "acknowledged messages were lost: {}",
            report.figures.lost.join(" ")
        );
    }
    Ok(())
}

/// `drill instance`.
async fn instance(stack: &Stack, platform: &impl Platform) -> Result<Report> {
    let load_balancer = load_balancer::summary(stack)
        .await?
        .context("the stack has no load balancer: run `up` first")?;
    let target_group = load_balancer
        .target_group_arn
        .clone()
        .context("the stack has no target group: run `up` first")?;
    let before: Vec<String> = group::describe(stack)
        .await?
        .context("the stack has no Auto Scaling group: run `up` first")?
        .members
        .into_iter()
        .map(|member| member.id)
        .collect();
    let endpoint = platform.chat_endpoint(stack, &load_balancer.dns_name);
    let clients = Clients::start(&endpoint).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let victim = clients.listener_on();
    stack.progress.note(&format!(
        "terminating {victim} (the listener's instance) through the group"
    ));
    let started = Instant::now();
    group::terminate(stack, &victim, false).await?;
    let step = stack.progress.step("a replacement healthy");
    let limit = Duration::from_secs(u64::from(stack.spec.instances.health_timeout_seconds))
        + Duration::from_secs(u64::from(stack.spec.instances.drain_seconds) + 120);
    let replacement = step
        .run(
            wait_for(
                &step,
                stack.pace,
                "the group to replace it",
                limit,
                None,
                || async {
                    let group = group::describe(stack).await?.context("the group is gone")?;
                    let health = platform.target_health(stack, &target_group).await?;
                    let serving: Vec<&group::Member> =
                        group.members.iter().filter(|m| m.serving()).collect();
                    let new = serving.iter().find(|m| !before.contains(&m.id));
                    let settled = serving.len() == group.desired
                        && !group.members.iter().any(|m| m.id == victim)
                        && serving
                            .iter()
                            .all(|m| health.get(&m.id) == Some(&Health::Healthy));
                    Ok(new.filter(|_| settled).map(|m| m.id.clone()))
                },
            ),
            |id| id.clone(),
        )
        .await?;
    let replaced_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let figures = clients.finish(Duration::from_secs(15)).await?;
    Ok(Report {
        drill: "instance".to_owned(),
        terminated: victim,
        replacement,
        replaced_in_ms: u64::try_from(replaced_in.as_millis()).unwrap_or(u64::MAX),
        figures,
    })
}
