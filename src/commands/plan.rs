//! `realtime-stack plan`: what `up` would do, resource by resource - create, update in
//! place, replace, delete, each with its reason - without changing anything. It runs
//! `up`'s preflight and converge with a planning stack: every change is recorded instead
//! of made, and its AWS clients refuse, before sending, any call that could change
//! something. Exit code 0 when nothing would change, 2 when something would, as
//! `terraform plan -detailed-exitcode`.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::converge::converge;
use super::preflight::preflight;
use super::{Observed, OutputFormat};
use crate::aws::AwsArgs;
use crate::engine::{Action, Change};
use crate::stack::Stack;

#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// How to print the plan
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Plan `up --local`: the stack in the LocalStack on this machine
    #[arg(long)]
    pub local: bool,
    /// Plan `up --update-image`: the newest Amazon Linux 2023 image
    #[arg(long)]
    pub update_image: bool,
}

/// What `plan` prints.
#[derive(Debug, Serialize)]
pub struct Plan {
    pub stack: String,
    pub region: String,
    pub changes: Vec<Change>,
    /// A newer Amazon Linux 2023 image than the one kept, which `--update-image` takes.
    pub image_update: Option<String>,
    /// AWS calls of this run that could have changed something: always empty, since they
    /// are refused before they are sent; shown to prove it.
    pub mutating_calls: Vec<String>,
}

/// Prints the plan; returns whether `up` would change anything.
pub async fn run(file: &Path, aws: &AwsArgs, args: &PlanArgs) -> Result<bool> {
    let observed = Observed::open(file, aws, args.local).await?;
    let plan = plan_stack(observed.stack(), &observed, args.update_image).await?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&plan)?),
        OutputFormat::Text => print_text(&plan),
    }
    Ok(!plan.changes.is_empty())
}

async fn plan_stack(
    stack: &Stack,
    platform: &impl crate::platform::Platform,
    update_image: bool,
) -> Result<Plan> {
    let preflight = preflight(stack, update_image).await?;
    converge(stack, platform, &preflight).await?;
    let mut changes = stack.changes.recorded();
    // Independent branches record in no set order: show them in the order `up` builds.
    changes.sort_by_key(|change| (build_order(&change.resource), change.resource.clone()));
    Ok(Plan {
        stack: stack.spec.name.clone(),
        region: stack.region.clone(),
        changes,
        image_update: preflight
            .image
            .update
            .map(|newer| format!("{} ({})", newer.id, newer.name)),
        mutating_calls: stack.clients.calls.mutating(),
    })
}

/// Where a resource comes in the order `up` builds the stack, by the kind its label
/// starts with.
fn build_order(resource: &str) -> usize {
    const ORDER: [&str; 20] = [
        "vpc",
        "subnet",
        "internet gateway",
        "route table",
        "s3 endpoint",
        "security group",
        "bucket ",
        "object",
        "bucket policy",
        "cache subnet group",
        "redis",
        "target group",
        "load balancer",
        "listener",
        "certificate",
        "dns",
        "launch template",
        "auto scaling group",
        "scaling policy",
        "instance",
    ];
    ORDER
        .iter()
        .rposition(|kind| resource.starts_with(kind))
        .unwrap_or(ORDER.len())
        + usize::from(resource.ends_with("instance(s)"))
}

fn print_text(plan: &Plan) {
    if let Some(newer) = &plan.image_update {
        println!(
            "note: a newer Amazon Linux 2023 image is available, {newer}: `up --update-image` \
             would replace every instance to run it"
        );
    }
    if plan.changes.is_empty() {
        println!(
            "stack {} in {}: up would change nothing",
            plan.stack, plan.region
        );
        return;
    }
    println!("stack {} in {}: up would", plan.stack, plan.region);
    for change in &plan.changes {
        let sign = match change.action {
            Action::Create => '+',
            Action::Update => '~',
            Action::Replace => '±',
            Action::Delete => '-',
        };
        let reason = if change.reason.is_empty() {
            String::new()
        } else {
            format!(": {}", change.reason)
        };
        println!("  {sign} {:<7} {}{reason}", change.action, change.resource);
    }
    let count = |action| {
        plan.changes
            .iter()
            .filter(|change| change.action == action)
            .count()
    };
    println!(
        "{} to create, {} to update, {} to replace, {} to delete",
        count(Action::Create),
        count(Action::Update),
        count(Action::Replace),
        count(Action::Delete)
    );
}
