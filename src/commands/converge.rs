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
use crate::fleet::GroupFleet;
use crate::group::{self, template};
use crate::instances::{self, Boot, Launch};
use crate::load_balancer::WrittenAlias;
use crate::platform::Platform;
use crate::stack::Stack;
use crate::{cache, certificate, dns, load_balancer, network, retag};

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
    /// The service proven from the outside, when `up` ran the canary.
    pub canary: Option<crate::canary::Outcome>,
}

/// Builds what is missing, fixes what drifted and deploys the instances. Redis (the
/// slowest on AWS) starts as soon as the network exists and overlaps with the
/// certificate, the load balancer and the group's first instances, which boot while
/// Redis is still being created: the group is tagged with Redis's endpoint once it
/// exists (propagated to what it launches later) and so are the instances it already
/// launched, whose boot service waits for that tag. The deploy comes last: replacements
/// roll once everything they need exists, and `up` ends only when every instance is
/// healthy.
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
    let (target_group_arn, ()) = try_join!(
        load_balancer::ensure_target_group(stack, &network),
        artifact::ensure_access(stack, &artifact, &network.s3_endpoint),
    )?;
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
    let launch = Launch::new(
        &preflight.image.image,
        &network,
        &boot,
        &preflight.binary.sha256,
        &instances.instance_type,
        instances.cpu_credits.as_deref().unwrap_or_default(),
    )?;
    let template = template::ensure(stack, &launch).await?;
    let redis_and_instances = async {
        let existing = cache::summary(stack)
            .await?
            .filter(|redis| redis.status == "available")
            .and_then(|redis| redis.endpoint);
        let wanted = group::Wanted {
            template: &template,
            subnets: &network.private_subnets,
            target_group_arn: &target_group_arn,
            redis_endpoint: existing.as_deref(),
        };
        let (redis, ()) = try_join!(
            cache::ensure(
                stack,
                &network.private_subnets,
                &network.redis_security_group
            ),
            async {
                group::ensure(stack, &wanted).await?;
                group::scaling::ensure(stack).await
            },
        )?;
        let endpoint = format!("{}:{}", redis.address, redis.port);
        // The group first: what it launches from now on carries the tag.
        group::ensure_redis_tag(stack, &endpoint).await?;
        instances::ensure_redis_tag(stack, &endpoint).await?;
        Ok::<_, anyhow::Error>(endpoint)
    };
    let load_balancer_and_certificate = async {
        let (load_balancer, certificate) = try_join!(
            load_balancer::ensure(stack, &network, &target_group_arn, &preflight.account),
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
        retire_old_alias(stack, &preflight.zone, &load_balancer).await?;
        Ok::<_, anyhow::Error>((load_balancer, certificate))
    };
    let (redis_endpoint, (load_balancer, certificate)) =
        try_join!(redis_and_instances, load_balancer_and_certificate)?;
    instances::ensure_metadata_options(stack).await?;

    let fleet = GroupFleet {
        stack,
        platform,
        target_group_arn: &target_group_arn,
        template: &template,
    };
    let wanted = Wanted {
        batch: instances.batch_size as usize,
        fingerprint: launch.fingerprint.clone(),
        redis_endpoint: Some(redis_endpoint.clone()),
        health_timeout: Duration::from_secs(instances.health_timeout_seconds.into()),
    };
    let instance_ids = if stack.planning() {
        // A group that does not exist yet has nothing to roll: its creation is shown.
        let members = match group::describe(stack).await? {
            Some(_) => fleet.members().await?,
            None => Vec::new(),
        };
        let rollout = deploy::plan(&members, &wanted);
        for (action, resource, reason) in rollout.changes() {
            stack.make(action, resource, reason);
        }
        rollout.keep
    } else {
        let rollout = deploy::plan(&fleet.members().await?, &wanted);
        let pacing = Pacing {
            progress: &stack.progress,
            pace: stack.pace,
            health_timeout: wanted.health_timeout,
            // The deregistration delay is the drain; the group and the load balancer take
            // a little longer to let the instances go.
            drain_timeout: Duration::from_secs(u64::from(instances.drain_seconds) + 120),
        };
        deploy::carry_out(&fleet, &rollout, &wanted, &pacing).await?
    };
    group::settle_grace(stack).await?;
    retag::ensure(
        stack,
        &[&load_balancer.arn, &load_balancer.target_group_arn],
        &certificate.arn,
    )
    .await?;
    // The builds no instance runs go, and the template versions that name them: what the
    // group launches from is the one deployed.
    let running: BTreeSet<String> = instances::describe(stack)
        .await?
        .into_iter()
        .map(|instance| instance.fingerprint.binary_sha256)
        .collect();
    artifact::prune(stack, &artifact, &running).await?;
    template::prune(stack, &template).await?;
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
        canary: None,
    })
}

/// Once the domain's alias points at the load balancer, the alias the stack wrote before
/// for another name (`domain.name` or `domain.hosted_zone` changed) goes, and the load
/// balancer records the new one: users of the old name would otherwise reach a load
/// balancer whose certificate no longer names it, and nothing would ever delete it.
async fn retire_old_alias(
    stack: &Stack,
    zone: &dns::HostedZone,
    load_balancer: &load_balancer::LoadBalancer,
) -> Result<()> {
    let current = WrittenAlias::new(&zone.id, &stack.spec.domain.name);
    let written = load_balancer::written_alias(stack, &load_balancer.arn).await?;
    if written.as_ref() == Some(&current) {
        return Ok(());
    }
    if let Some(old) = written {
        let alias = dns::Record::alias_a(
            &old.name,
            &load_balancer.dns_name,
            &load_balancer.canonical_hosted_zone_id,
        );
        dns::retire(stack, &old.zone_id, &[alias]).await?;
        // The tag keeps naming the old alias until its certificate is gone too: `policy`
        // lets the deployer delete that name's records only while it does.
        if !certificate::retire_other_domains(stack, &old.zone_id).await? {
            return Ok(());
        }
    }
    load_balancer::record_alias(stack, &load_balancer.arn, &current).await
}
