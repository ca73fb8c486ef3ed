//! `realtime-stack drill instance|redis`: resilience proven on a live stack. While two
//! chat clients ([`crate::drill`]) keep sending and receiving through the stack's URL:
//!
//! - `drill instance` terminates the instance the listener is on through the Auto Scaling
//!   group (which drains it and launches a replacement);
//! - `drill redis` fails Redis over: ElastiCache's TestFailover on the primary's node
//!   group on AWS; with `--local`, the local replica promoted, the emulator's primary
//!   endpoint following it, as ElastiCache's does;
//!
//! and each reports how long the recovery took, the gap in delivery and the acknowledged
//! messages lost (none, or it fails). Both refuse to run without `--yes`, except on the
//! stack of `up --local`.

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
use crate::{cache, group, load_balancer};

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
    /// Fail Redis over to a replica (ElastiCache TestFailover)
    Redis,
}

/// What a drill reports.
#[derive(Debug, Serialize)]
pub struct Report {
    pub drill: String,
    /// What it broke: the instance terminated, or Redis's primary.
    pub broke: String,
    /// What took its place: the replacement instance, or the new primary.
    pub recovered: String,
    /// From the break to the recovery.
    pub took_ms: u64,
    #[serde(flatten)]
    pub figures: Figures,
}

pub async fn run(file: &Path, aws: &AwsArgs, args: &DrillArgs) -> Result<()> {
    if !args.yes && !args.local {
        bail!(
            "drill {} breaks part of the live stack on purpose (its users may notice): pass \
             --yes to go ahead",
            name(args.what)
        );
    }
    let report = if args.local {
        let environment = Environment::attach(file, aws, Changes::default())
            .await?
            .context("LocalStack is not running, so there is no local stack: `up --local` first")?;
        let stack = &environment.stack;
        match args.what {
            Drill::Instance => instance(stack, &environment).await?,
            Drill::Redis => {
                redis(stack, &environment, || async {
                    environment.fail_over_redis().await
                })
                .await?
            }
        }
    } else {
        let stack = super::open_stack(file, aws).await?;
        match args.what {
            Drill::Instance => instance(&stack, &Aws).await?,
            Drill::Redis => {
                let step = stack.progress.step("Redis failover (TestFailover)");
                redis(&stack, &Aws, || cache::test_failover(&stack, &step)).await?
            }
        }
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            println!(
                "drill {}: broke {}; {} in its place after {:.1} s",
                report.drill,
                report.broke,
                report.recovered,
                report.took_ms as f64 / 1000.0
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

fn name(drill: Drill) -> &'static str {
    match drill {
        Drill::Instance => "instance",
        Drill::Redis => "redis",
    }
}

/// The clients, once they are under way, on the stack behind its load balancer.
async fn clients(stack: &Stack, platform: &impl Platform) -> Result<(Clients, String)> {
    let load_balancer = load_balancer::summary(stack)
        .await?
        .context("the stack has no load balancer: run `up` first")?;
    let target_group = load_balancer
        .target_group_arn
        .clone()
        .context("the stack has no target group: run `up` first")?;
    let endpoint = platform.chat_endpoint(stack, &load_balancer.dns_name)?;
    let clients = Clients::start(&endpoint).await?;
    // Messages already cross instances (`start` waits for that); the clients chat a while
    // before the break, so that the figures have a "before" to set the gap against.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((clients, target_group))
}

fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// `drill instance`.
async fn instance(stack: &Stack, platform: &impl Platform) -> Result<Report> {
    let before: Vec<String> = group::describe(stack)
        .await?
        .context("the stack has no Auto Scaling group: run `up` first")?
        .members
        .into_iter()
        .map(|member| member.id)
        .collect();
    let (clients, target_group) = clients(stack, platform).await?;
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
    let took = started.elapsed();
    // The clients chat a while with the replacement serving, before they are counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let figures = clients.finish(Duration::from_secs(15)).await?;
    Ok(Report {
        drill: "instance".to_owned(),
        broke: victim,
        recovered: replacement,
        took_ms: millis(took),
        figures,
    })
}

/// `drill redis`: `fail_over` makes the failover and returns the new primary.
async fn redis<F, Fut>(stack: &Stack, platform: &impl Platform, fail_over: F) -> Result<Report>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let (clients, _) = clients(stack, platform).await?;
    stack
        .progress
        .note("failing Redis over to a replica while the clients chat");
    let started = Instant::now();
    let primary = fail_over().await?;
    let took = started.elapsed();
    // The servers notice the switch and catch up; the clients' messages carry on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let figures = clients.finish(Duration::from_secs(30)).await?;
    Ok(Report {
        drill: "redis".to_owned(),
        broke: format!("the primary of {}", stack.names.replication_group()),
        recovered: primary,
        took_ms: millis(took),
        figures,
    })
}
