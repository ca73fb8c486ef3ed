//! `realtime-stack up`: preflight, then build or converge the whole stack, independent
//! branches at the same time, deploy the instances (health-gated, rolling), and print
//! the outputs. `up --local` does the same against LocalStack, with the instances and the
//! load balancer run on this machine ([`crate::local::Environment`]).

use std::path::Path;

use anyhow::{Context, Result};

use super::OutputFormat;
use super::converge::{Outputs, converge};
use super::preflight::preflight;
use crate::aws::AwsArgs;
use crate::canary::Outcome;
use crate::local::Environment;
use crate::platform::{Aws, Platform};
use crate::stack::Stack;

#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Go ahead without asking
    #[arg(long)]
    pub yes: bool,
    /// How to print the stack's outputs
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Run it all on this machine, no AWS account needed: LocalStack for AWS, a local TLS
    /// redis-server for ElastiCache, the instances booted here from their user-data behind
    /// a local load balancer, whose http://127.0.0.1:<port>/ URL it prints
    #[arg(long)]
    pub local: bool,
    /// Launch from the newest Amazon Linux 2023 image, rolling every instance onto it
    /// (without it, the image in use is kept)
    #[arg(long)]
    pub update_image: bool,
    /// Do not end with the canary (a message sent through the stack's URL on one instance,
    /// received on another)
    #[arg(long)]
    pub no_canary: bool,
}

pub async fn run(file: &Path, aws: &AwsArgs, args: &UpArgs) -> Result<()> {
    let outputs = if args.local {
        // Nothing here touches an AWS account: no question to ask.
        let environment = Environment::start(file, aws).await?;
        let preflight = preflight(&environment.stack, args.update_image).await?;
        let outputs = converge(&environment.stack, &environment, &preflight).await?;
        prove(&environment.stack, &environment, outputs, args).await?
    } else {
        let stack = super::open_stack(file, aws).await?;
        let preflight = preflight(&stack, args.update_image).await?;
        let image = match &preflight.image.update {
            Some(newer) => format!(
                " Instances keep image {}; {} is newer (`--update-image` rolls them onto it).",
                preflight.image.image.id, newer.id
            ),
            None => String::new(),
        };
        super::confirm(
            &format!(
                "Create or update stack '{}' in account {} ({}), serving https://{}?{image}",
                stack.spec.name, preflight.account, stack.region, stack.spec.domain.name
            ),
            args.yes,
        )?;
        let outputs = converge(&stack, &Aws, &preflight).await?;
        prove(&stack, &Aws, outputs, args).await?
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&outputs)?),
        OutputFormat::Text => print_text(&outputs),
    }
    Ok(())
}

/// The canary, unless `--no-canary`: `up` fails when it does.
async fn prove(
    stack: &Stack,
    platform: &impl Platform,
    mut outputs: Outputs,
    args: &UpArgs,
) -> Result<Outputs> {
    outputs.canary = Some(if args.no_canary {
        Outcome::Skipped {
            why: "--no-canary".to_owned(),
        }
    } else {
        let instances = outputs.instance_ids.len();
        super::canary(stack, platform, &outputs.load_balancer_dns_name, instances)
            .await
            .context(
                "the stack is up and every instance healthy, but its chat does not work from \
                 the outside",
            )?
    });
    Ok(outputs)
}

fn print_text(outputs: &Outputs) {
    println!("stack {} is up in {}", outputs.stack, outputs.region);
    println!("  url                 {}", outputs.url);
    println!("  load balancer       {}", outputs.load_balancer_dns_name);
    println!("  redis               {}", outputs.redis_endpoint);
    println!("  instances           {}", outputs.instance_ids.join(" "));
    println!("  certificate         {}", outputs.certificate_arn);
    println!("  artifact            {}", outputs.artifact);
    if let Some(canary) = &outputs.canary {
        println!("  canary              {canary}");
    }
    match outputs.changes.len() {
        0 => println!("  changes             none: everything was already as stack.yaml says"),
        n => println!("  changes             {n} AWS calls changed something"),
    }
}
