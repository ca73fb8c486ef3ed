//! Converge: what `up` does and `plan` shows - build what is missing, fix what drifted,
//! deploy the instances - in the order AWS needs and with independent branches at the
//! same time. With a planning [`Stack`], every change is recorded instead of made.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Result;
use futures::try_join;
use serde::Serialize;

use super::preflight::Preflight;
use crate::artifact;
use crate::deploy::{self, Fleet, Pacing, Wanted};
use crate::fleet::Ec2Fleet;
use crate::instances::{self, Boot, Launch};
use crate::platform::Platform;
use crate::stack::Stack;
use crate::{cache, certificate, dns, load_balancer, network};

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

/// Builds what is missing, fixes what drifted and deploys the instances. Redis (the
/// slowest on AWS) starts as soon as the network exists and overlaps with the
/// certificate, the load balancer and the first instances, which boot while Redis is
/// still being created. The deploy comes last: replacements roll once everything they
/// need exists, and `up` ends only when every instance is healthy.
pub async fn converge(
    stack: &Stack,
    platform: &impl Platform,
    preflight: &Preflight,
) -> Result<Outputs> {
    let bucket = stack.names.bucket(&preflight.account, &stack.region);
    let (network, artifact) = try_join!(
        network::ensure(stack, &preflight.zones, &bucket),
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
        redis_cluster: stack.spec.redis.shards > 1,
        trusted_proxies: &stack.spec.network.cidr,
        auth: preflight.auth.as_ref(),
        chat: stack.spec.chat.settings,
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
            load_balancer::ensure(stack, &network, &preflight.account),
            certificate::ensure(stack, &preflight.zone),
        )?;
        load_balancer::ensure_https_listener(stack, &load_balancer, &certificate.arn).await?;
        // Users are sent to the load balancer only once it serves HTTPS.
        dns::ensure_alias(
            stack,
            &preflight.zone,
            &load_balancer.dns_name,
            &load_balancer.canonical_hosted_zone_id,
        )
        .await?;
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
    if stack.planning() {
        for (action, resource, reason) in rollout.changes() {
            stack.make(action, resource, reason);
        }
    }
    let pacing = Pacing {
        progress: &stack.progress,
        pace: stack.pace,
        health_timeout: wanted.health_timeout,
        // The deregistration delay is the drain; the load balancer takes a little longer
        // to report the targets gone.
        drain_timeout: Duration::from_secs(u64::from(instances.drain_seconds) + 120),
    };
    let instance_ids = if stack.planning() {
        rollout.keep.clone()
    } else {
        deploy::carry_out(&fleet, &rollout, &wanted, &pacing).await?
    };
    let running: BTreeSet<String> = instances::describe(stack)
        .await?
        .into_iter()
        .map(|instance| instance.fingerprint.binary_sha256)
        .collect();
    artifact::prune(stack, &artifact, &running).await?;
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
    // `plan` shows the launches with the deploy's.
    if stack.planning() {
        return Ok(());
    }
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
