//! `realtime-stack plan`: what `up` would do, resource by resource - create, update in
//! place, replace, delete, each with its reason - without changing anything. It runs
//! `up`'s preflight and converge with a planning stack: every change is recorded instead
//! of made, and its AWS clients refuse, before sending, any call that could change
//! something. Exit code 0 when nothing would change, 2 when something would, as
//! `terraform plan -detailed-exitcode`.
//!
//! After the changes, what the stack as described costs a month at on-demand prices,
//! read from AWS's Price List ([`crate::cost`]). A price list that cannot be read (no
//! permission, throttled, unreachable) leaves the plan as it is, with one line saying why
//! there is no cost and what to do; it never changes the exit code.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use super::converge::converge;
use super::preflight::preflight;
use super::{Observed, OutputFormat};
use crate::aws::AwsArgs;
use crate::cost::{Cost, dollars};
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
    /// What the stack as described costs a month, when the price list could be read.
    pub cost: Option<Cost>,
    /// Why there is no cost, when there is none.
    pub cost_unavailable: Option<String>,
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
    // The price list needs only stack.yaml: read while the stack is looked at.
    let (converged, (cost, cost_unavailable)) =
        tokio::join!(converge(stack, platform, &preflight), price(stack));
    converged?;
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
        cost,
        cost_unavailable,
    })
}

/// The stack's monthly cost, or why there is none: never an error of the plan's.
async fn price(stack: &Stack) -> (Option<Cost>, Option<String>) {
    match crate::cost::monthly(&stack.clients.pricing, &stack.spec, &stack.region).await {
        Ok(cost) => (Some(cost), None),
        Err(err) => (None, Some(format!("{err:#}"))),
    }
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
    } else {
        print_changes(plan);
    }
    print!("{}", cost_text(plan));
}

fn print_changes(plan: &Plan) {
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

/// The cost lines of the plan's text.
fn cost_text(plan: &Plan) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let Some(cost) = &plan.cost else {
        if let Some(why) = &plan.cost_unavailable {
            let _ = writeln!(
                text,
                "cost: not shown: {why} (the cost needs pricing:GetProducts on AWS's Price \
                 List in us-east-1, which `realtime-stack policy` grants)"
            );
        }
        return text;
    };
    let _ = writeln!(
        text,
        "cost: {} a month at on-demand prices in {} ({} hours, AWS Price List):",
        dollars(cost.usd_per_month),
        cost.region,
        cost.hours_per_month
    );
    for line in &cost.lines {
        let count = match line.range {
            Some((min, max)) => format!("{} ({min}..{max})", line.count),
            None => line.count.to_string(),
        };
        let _ = writeln!(
            text,
            "  {:<14} {count} × {} at ${}/h: {}",
            line.resource,
            line.what,
            line.usd_per_hour,
            dollars(line.usd_per_month)
        );
    }
    if let Some((low, high)) = cost.usd_per_month_range {
        let _ = writeln!(
            text,
            "  from {} to {} a month as the group scales",
            dollars(low),
            dollars(high)
        );
    }
    let _ = writeln!(text, "  not included: {}", cost.not_included);
    text
}

#[cfg(test)]
mod tests {
    use aws_sdk_pricing::error::ErrorMetadata;
    use aws_sdk_pricing::operation::get_products::GetProductsError;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::stack::testing;

    /// The plan's cost text when the price list answers every GetProducts with `code`.
    async fn cost_text_when(code: &'static str, message: &'static str) -> String {
        let failing = mock!(aws_sdk_pricing::Client::get_products).then_error(move || {
            GetProductsError::generic(ErrorMetadata::builder().code(code).message(message).build())
        });
        let mut clients = testing::clients();
        clients.pricing = mock_client!(aws_sdk_pricing, RuleMode::MatchAny, [&failing]);
        let stack = testing::stack(clients);

        let (cost, cost_unavailable) = price(&stack).await;

        assert_eq!(cost, None);
        cost_text(&Plan {
            stack: stack.spec.name.clone(),
            region: stack.region.clone(),
            changes: Vec::new(),
            image_update: None,
            mutating_calls: Vec::new(),
            cost,
            cost_unavailable,
        })
    }

    /// Credentials without `pricing:GetProducts` get AccessDeniedException, one of
    /// GetProducts' documented errors
    /// (<https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html>),
    /// which LocalStack's test price list does not answer with: mocked. The plan is still
    /// made, with one line saying why there is no cost and what grants it.
    #[tokio::test]
    async fn a_price_list_denied_leaves_the_plan_and_says_why_in_one_line() {
        let text = cost_text_when(
            "AccessDeniedException",
            "User is not authorized to perform: pricing:GetProducts",
        )
        .await;

        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("cost: not shown"), "{text}");
        assert!(text.contains("AccessDeniedException"), "{text}");
        assert!(text.contains("lack this permission"), "{text}");
        assert!(text.contains("pricing:GetProducts"), "{text}");
    }

    /// ThrottlingException, another of GetProducts' documented errors (same page), still
    /// there after the pricing client's retries: the line says it was throttled and to
    /// run again, as any throttled call does ([`crate::aws::explain`]), not that a
    /// permission or a quota is missing.
    #[tokio::test(start_paused = true)]
    async fn a_throttled_price_list_says_to_run_again() {
        let text = cost_text_when("ThrottlingException", "Rate exceeded").await;

        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("cost: not shown"), "{text}");
        assert!(text.contains("ThrottlingException"), "{text}");
        assert!(text.contains("AWS throttled"), "{text}");
        assert!(text.contains("wait a minute and run again"), "{text}");
        assert!(!text.contains("lack this permission"), "{text}");
        assert!(!text.contains("quota"), "{text}");
    }

    /// With a scaling policy the instances' line says desired (min..max), and the total
    /// comes with what it is at min and at max.
    #[test]
    fn a_scaling_group_s_cost_says_its_range() {
        let cost = crate::cost::Cost {
            region: "eu-west-1".into(),
            hours_per_month: 730.0,
            lines: vec![crate::cost::Line {
                resource: "instances",
                what: "t3.micro".into(),
                count: 2,
                range: Some((1, 6)),
                usd_per_hour: 0.01,
                usd_per_month: 14.6,
            }],
            usd_per_month: 14.6,
            usd_per_month_range: Some((7.3, 43.8)),
            not_included: crate::cost::NOT_INCLUDED,
        };
        let plan = Plan {
            stack: "chat".into(),
            region: "eu-west-1".into(),
            changes: Vec::new(),
            image_update: None,
            mutating_calls: Vec::new(),
            cost: Some(cost),
            cost_unavailable: None,
        };
        let text = cost_text(&plan);
        assert!(
            text.starts_with("cost: $14.60 a month at on-demand prices in eu-west-1"),
            "{text}"
        );
        assert!(
            text.contains("instances      2 (1..6) × t3.micro at $0.01/h: $14.60"),
            "{text}"
        );
        assert!(
            text.contains("from $7.30 to $43.80 a month as the group scales"),
            "{text}"
        );
    }

    /// No network to the Price List: the SDK's dispatch failure, after the pricing
    /// client's few attempts, is the one line, with what to check.
    #[tokio::test]
    async fn an_unreachable_price_list_leaves_the_plan_and_says_why() {
        // Nothing listens on the discard port of loopback.
        let config = aws_config::SdkConfig::builder()
            .endpoint_url("http://127.0.0.1:9")
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_pricing::config::SharedCredentialsProvider::new(
                aws_sdk_pricing::config::Credentials::for_tests(),
            ))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let stack = testing::stack(crate::aws::Clients::read_only(&config));

        let (cost, cost_unavailable) = price(&stack).await;

        assert_eq!(cost, None);
        let why = cost_unavailable.expect("a reason");
        assert!(why.contains("pricing:GetProducts for"), "{why}");
        assert!(why.contains("AWS could not be reached"), "{why}");
    }
}
