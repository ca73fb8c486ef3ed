//! `realtime-stack up`: preflight, then build or converge the whole stack, independent
//! branches at the same time, deploy the instances (health-gated, rolling), and print
//! the outputs. `up --local` does the same against LocalStack, with the instances and the
//! load balancer run on this machine ([`crate::local::Environment`]).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use futures::try_join;
use serde::Serialize;

use super::preflight::{Preflight, preflight};
use crate::artifact;
use crate::aws::AwsArgs;
use crate::deploy::{self, Fleet, Pacing, Wanted};
use crate::fleet::Ec2Fleet;
use crate::instances::{self, Boot, Launch};
use crate::local::Environment;
use crate::platform::{Aws, Platform};
use crate::stack::Stack;
use crate::{cache, certificate, dns, load_balancer, network};

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
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// What a user needs to know about a stack once it is up.
#[derive(Debug, Serialize)]
pub struct Outputs {
    pub stack: String,
    pub region: String,
    pub url: String,
    pub load_balancer_dns_name: String,
    pub redis_endpoint: String,
    pub instance_ids: Vec<String>,
    pub certificate_arn: String,
    pub artifact: String,
    /// The AWS calls of this run that changed something; empty when it was up to date.
    pub changes: Vec<String>,
}

pub async fn run(file: &Path, aws: &AwsArgs, args: &UpArgs) -> Result<()> {
    let outputs = if args.local {
        // Nothing here touches an AWS account: no question to ask.
        let environment = Environment::start(file, aws).await?;
        let preflight = preflight(&environment.stack).await?;
        converge(&environment.stack, &environment, &preflight).await?
    } else {
        let stack = super::open_stack(file, aws).await?;
        let preflight = preflight(&stack).await?;
        super::confirm(
            &format!(
                "Create or update stack '{}' in account {} ({}), serving https://{}?",
                stack.spec.name, preflight.account, stack.region, stack.spec.domain.name
            ),
            args.yes,
        )?;
        converge(&stack, &Aws, &preflight).await?
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&outputs)?),
        OutputFormat::Text => print_text(&outputs),
    }
    Ok(())
}

/// Builds what is missing, fixes what drifted and deploys the instances. Redis (the
/// slowest on AWS) starts as soon as the network exists and overlaps with the
/// certificate, the load balancer and the first instances, which boot while Redis is
/// still being created. The deploy comes last: replacements roll once everything they
/// need exists, and `up` ends only when every instance is healthy.
async fn converge(
    stack: &Stack,
    platform: &impl Platform,
    preflight: &Preflight,
) -> Result<Outputs> {
    let bucket = stack.names.bucket(&preflight.account, &stack.region);
    let (network, artifact) = try_join!(
        network::ensure(stack, &bucket),
        artifact::ensure(stack, &preflight.account, &preflight.binary)
    )?;
    artifact::ensure_access(stack, &artifact, &network.s3_endpoint).await?;
    let instances = &stack.spec.instances;
    let boot = Boot {
        artifact: &artifact,
        region: &stack.region,
        app_port: instances.app_port,
        drain_seconds: instances.drain_seconds,
        redis_tls: true,
    };
    let mut launch = Launch::new(
        &preflight.image,
        &network,
        &boot,
        &preflight.binary.sha256,
        &instances.instance_type,
    )?;
    let redis_and_first_instances = async {
        let (redis, ()) = try_join!(
            cache::ensure(
                stack,
                &network.private_subnets,
                &network.redis_security_group
            ),
            launch_missing(stack, &launch),
        )?;
        let endpoint = format!("{}:{}", redis.address, redis.port);
        instances::ensure_redis_tag(stack, &endpoint).await?;
        Ok::<_, anyhow::Error>(endpoint)
    };
    let load_balancer_and_certificate = async {
        let (load_balancer, certificate) = try_join!(
            async {
                let load_balancer = load_balancer::ensure(stack, &network).await?;
                dns::ensure_alias(
                    stack,
                    &preflight.zone,
                    &load_balancer.dns_name,
                    &load_balancer.canonical_hosted_zone_id,
                )
                .await?;
                Ok::<_, anyhow::Error>(load_balancer)
            },
            certificate::ensure(stack, &preflight.zone),
        )?;
        load_balancer::ensure_https_listener(stack, &load_balancer, &certificate.arn).await?;
        Ok::<_, anyhow::Error>((load_balancer, certificate))
    };
    let (redis_endpoint, (load_balancer, certificate)) =
        try_join!(redis_and_first_instances, load_balancer_and_certificate)?;
    instances::ensure_metadata_options(stack).await?;

    launch.redis_endpoint = Some(redis_endpoint.clone());
    let fleet = Ec2Fleet {
        stack,
        platform,
        launch: &launch,
        target_group_arn: &load_balancer.target_group_arn,
    };
    let wanted = Wanted {
        count: instances.count as usize,
        batch: instances.batch_size as usize,
        fingerprint: launch.fingerprint.clone(),
        redis_endpoint: Some(redis_endpoint.clone()),
        health_timeout: Duration::from_secs(instances.health_timeout_seconds.into()),
    };
    let rollout = deploy::plan(&fleet.members().await?, &wanted);
    let pacing = Pacing {
        progress: &stack.progress,
        pace: stack.pace,
        health_timeout: wanted.health_timeout,
        // The deregistration delay is the drain; the load balancer takes a little longer
        // to report the targets gone.
        drain_timeout: Duration::from_secs(u64::from(instances.drain_seconds) + 120),
    };
    let instance_ids = deploy::carry_out(&fleet, &rollout, &wanted, &pacing).await?;
    Ok(Outputs {
        stack: stack.spec.name.clone(),
        region: stack.region.clone(),
        url: platform.url(stack),
        load_balancer_dns_name: load_balancer.dns_name,
        redis_endpoint,
        instance_ids,
        certificate_arn: certificate.arn,
        artifact: format!("s3://{}/{}", artifact.bucket, artifact.key),
        changes: stack.clients.calls.mutating(),
    })
}

/// Launches as many instances as the stack is short of `instances.count`, before Redis
/// exists: they boot while it is created. What they run and how many to replace is the
/// deploy's to decide, once everything else is in place.
async fn launch_missing(stack: &Stack, launch: &Launch<'_>) -> Result<()> {
    let live = instances::describe(stack).await?.len();
    let missing = (stack.spec.instances.count as usize).saturating_sub(live);
    if missing == 0 {
        return Ok(());
    }
    let step = stack.progress.step(format!("{missing} new instance(s)"));
    step.set("launching");
    step.run(instances::launch(stack, launch, missing), |ids| {
        ids.join(" ")
    })
    .await?;
    Ok(())
}

fn print_text(outputs: &Outputs) {
    println!("stack {} is up in {}", outputs.stack, outputs.region);
    println!("  url                 {}", outputs.url);
    println!("  load balancer       {}", outputs.load_balancer_dns_name);
    println!("  redis               {}", outputs.redis_endpoint);
    println!("  instances           {}", outputs.instance_ids.join(" "));
    println!("  certificate         {}", outputs.certificate_arn);
    println!("  artifact            {}", outputs.artifact);
    match outputs.changes.len() {
        0 => println!("  changes             none: everything was already as stack.yaml says"),
        n => println!("  changes             {n} AWS calls changed something"),
    }
}
