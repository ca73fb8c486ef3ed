//! `realtime-stack status`: the stack as it is now, without changing anything - the
//! URL, the load balancer, Redis, the Auto Scaling group (its size and its recent scaling
//! activities with their causes), every instance with how the load balancer sees it (and
//! the reason AWS gives) and what it runs, and every resource the stack owns.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result};
use aws_smithy_types::DateTime;
use aws_smithy_types::date_time::Format;
use serde::Serialize;

use super::{Observed, OutputFormat};
use crate::aws::AwsArgs;
use crate::canary::Outcome;
use crate::deploy::{Health, short_hash};
use crate::instances::{self, Described};
use crate::platform::Platform;
use crate::stack::Stack;
use crate::{cache, group, load_balancer};

#[derive(clap::Args, Debug, Clone)]
pub struct StatusArgs {
    /// How to print the status
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// The stack of `up --local`, in the LocalStack on this machine
    #[arg(long)]
    pub local: bool,
    /// Then run the canary: a message sent through the stack's URL on one instance must
    /// arrive on another (exit code 1 when it does not)
    #[arg(long)]
    pub check: bool,
}

/// What `status` prints.
#[derive(Debug, Serialize)]
pub struct Status {
    pub stack: String,
    pub region: String,
    pub url: String,
    pub load_balancer: Option<load_balancer::Summary>,
    pub redis: Option<cache::Summary>,
    /// The Auto Scaling group: its size and what it did lately, and why.
    pub group: Option<group::Summary>,
    /// How many instances stack.yaml asks for.
    pub wanted_instances: u32,
    pub instances: Vec<InstanceStatus>,
    /// Every resource the stack owns, as `destroy` would list it.
    pub resources: Vec<String>,
    /// The canary's outcome, with `--check`.
    pub canary: Option<Outcome>,
}

/// One instance of the stack.
#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub state: String,
    pub healthy: bool,
    /// How the load balancer sees it, with AWS's reason when it is not healthy.
    pub health: String,
    pub binary_sha256: String,
    pub ami: String,
    pub instance_type: String,
    pub zone: Option<String>,
    pub private_ip: Option<String>,
    /// RFC 3339.
    pub launch_time: Option<String>,
}

pub async fn run(file: &Path, aws: &AwsArgs, args: &StatusArgs) -> Result<()> {
    let observed = Observed::open(file, aws, args.local).await?;
    let mut status = status(observed.stack(), &observed).await?;
    if args.check {
        let dns_name = status
            .load_balancer
            .as_ref()
            .map(|lb| lb.dns_name.clone())
            .context("the stack has no load balancer: run `up` first")?;
        let healthy = status.instances.iter().filter(|i| i.healthy).count();
        let outcome = super::canary(observed.stack(), &observed, &dns_name, healthy).await;
        status.canary = Some(match outcome {
            Ok(outcome) => outcome,
            Err(err) => {
                print(&status, args.output)?;
                return Err(err);
            }
        });
    }
    print(&status, args.output)
}

fn print(status: &Status, output: OutputFormat) -> Result<()> {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(status)?),
        OutputFormat::Text => print_text(status),
    }
    Ok(())
}

async fn status(stack: &Stack, platform: &impl Platform) -> Result<Status> {
    let account = super::account(stack).await?;
    let (load_balancer, redis, group, described, resources) = futures::try_join!(
        load_balancer::summary(stack),
        cache::summary(stack),
        group::summary(stack),
        instances::describe(stack),
        super::inventory::discover(stack, &account),
    )?;
    let health = match load_balancer
        .as_ref()
        .and_then(|lb| lb.target_group_arn.as_deref())
    {
        Some(arn) => platform.target_health(stack, arn).await?,
        None => Default::default(),
    };
    let mut instances: Vec<InstanceStatus> = described
        .into_iter()
        .map(|instance| {
            let health = health
                .get(&instance.id)
                .cloned()
                .unwrap_or(Health::Unregistered);
            instance_status(instance, &health)
        })
        .collect();
    instances.sort_by(|a, b| (&a.launch_time, &a.id).cmp(&(&b.launch_time, &b.id)));
    Ok(Status {
        stack: stack.spec.name.clone(),
        region: stack.region.clone(),
        url: platform.url(stack),
        load_balancer,
        redis,
        group,
        wanted_instances: stack.spec.instances.count,
        instances,
        resources: resources.iter().map(|resource| resource.label()).collect(),
        canary: None,
    })
}

fn instance_status(instance: Described, health: &Health) -> InstanceStatus {
    InstanceStatus {
        state: instance.state.as_str().to_owned(),
        healthy: *health == Health::Healthy,
        health: health.to_string(),
        binary_sha256: instance.fingerprint.binary_sha256,
        ami: instance.fingerprint.ami,
        instance_type: instance.fingerprint.instance_type,
        zone: instance.zone,
        private_ip: instance.private_ip,
        launch_time: instance.launched.and_then(rfc3339),
        id: instance.id,
    }
}

fn rfc3339(time: SystemTime) -> Option<String> {
    DateTime::from(time).fmt(Format::DateTime).ok()
}

fn print_text(status: &Status) {
    println!(
        "stack {} in {}: {}",
        status.stack, status.region, status.url
    );
    match &status.load_balancer {
        Some(lb) => println!(
            "  load balancer  {} {} ({})",
            lb.name, lb.state, lb.dns_name
        ),
        None => println!("  load balancer  none"),
    }
    match &status.redis {
        Some(redis) => println!(
            "  redis          {} {} {} ({}, {} shard(s){}, {} node(s){})",
            redis.id,
            redis.status,
            redis.endpoint.as_deref().unwrap_or("(no endpoint yet)"),
            redis.node_type,
            redis.shards,
            if redis.cluster_mode {
                " in cluster mode"
            } else {
                ""
            },
            redis.nodes,
            if redis.multi_az { ", Multi-AZ" } else { "" }
        ),
        None => println!("  redis          none"),
    }
    match &status.group {
        Some(group) => {
            println!(
                "  group          {} desired {} (min {}, max {}), {} in service, grace period {} s",
                group.name,
                group.desired,
                group.min,
                group.max,
                group.in_service,
                group.grace_seconds
            );
            if let Some(policy) = &group.policy {
                println!("    scaling policy: {policy}");
            }
            for activity in &group.activities {
                println!(
                    "    {} {}: {}",
                    activity.started, activity.status, activity.description
                );
                println!("      {}", activity.cause);
            }
        }
        None => println!("  group          none"),
    }
    let healthy = status.instances.iter().filter(|i| i.healthy).count();
    println!(
        "  instances      {healthy} healthy of {} ({} wanted)",
        status.instances.len(),
        status.wanted_instances
    );
    for instance in &status.instances {
        println!(
            "    {} {} in {}, launched {}: {}",
            instance.id,
            instance.state,
            instance.zone.as_deref().unwrap_or("?"),
            instance.launch_time.as_deref().unwrap_or("?"),
            instance.health
        );
        println!(
            "      runs binary {} on {} ({})",
            match instance.binary_sha256.as_str() {
                "" => "(not recorded)".to_owned(),
                sha256 => short_hash(sha256),
            },
            instance.ami,
            instance.instance_type
        );
    }
    if let Some(canary) = &status.canary {
        println!("  canary         {canary}");
    }
    println!("  resources      {}", status.resources.len());
    for resource in &status.resources {
        println!("    {resource}");
    }
}
