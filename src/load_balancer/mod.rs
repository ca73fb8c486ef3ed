//! The Application Load Balancer in front of the instances: the load balancer and its
//! attributes (its access logs are [`access_logs`]'), the target group with its health check and attributes, the HTTP:80
//! listener that redirects to HTTPS, the HTTPS:443 listener with the ACM certificate, and
//! which instances are registered. Load balancer and target group are found by their
//! derived names and owned only when they carry the stack's tag; listeners, which the
//! stack does not tag, are found through the load balancer.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure as check};
use aws_sdk_elasticloadbalancingv2::types::{
    LoadBalancerSchemeEnum, LoadBalancerStateEnum, LoadBalancerTypeEnum, Tag,
};
use aws_smithy_types::error::metadata::ProvideErrorMetadata as _;
use futures::try_join;

use crate::aws::{Call, ELB_NEW_LOG_BUCKET, ELB_NEW_NETWORK, found, once_known};
use crate::engine::{Action, Step, is_planned, planned_id, wait_for};
use crate::names::STACK_TAG;
use crate::network::Network;
use crate::stack::Stack;

mod access_logs;
mod listeners;
mod target_group;
mod teardown;
#[cfg(test)]
mod tests;

use listeners::ensure_http_listener;
pub use listeners::ensure_https_listener;
pub use target_group::{
    check_app_port, deregister, deregistration_delay, ensure_target_group, owned_target_group,
    target_health,
};
pub use teardown::deletables;
use teardown::ours_only;

/// The load balancer as the other modules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub arn: String,
    pub dns_name: String,
    /// For the Route53 alias record.
    pub canonical_hosted_zone_id: String,
    pub target_group_arn: String,
    pub http_listener_arn: String,
}

pub(super) const HEALTH_CHECK_PATH: &str = "/healthz";
pub(super) const HEALTHY_THRESHOLD: i32 = 2;
pub(super) const UNHEALTHY_THRESHOLD: i32 = 2;

pub(super) fn tags(stack: &Stack, role: &str) -> Vec<Tag> {
    stack
        .names
        .tags(role)
        .into_iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect()
}

/// The tags of the resource at `arn`.
async fn resource_tags(stack: &Stack, arn: &str) -> Result<Vec<Tag>> {
    let out = stack
        .clients
        .elbv2
        .describe_tags()
        .resource_arns(arn)
        .send()
        .await
        .call(format!("DescribeTags {arn}"))?;
    Ok(out
        .tag_descriptions()
        .iter()
        .flat_map(|description| description.tags())
        .cloned()
        .collect())
}

/// Whether `tags` hold this stack's tag.
fn carries_stack_tag(stack: &Stack, tags: &[Tag]) -> bool {
    tags.iter()
        .any(|tag| stack.names.is_stack_tag(tag.key(), tag.value()))
}

/// Whether the resource at `arn` carries this stack's tag.
pub(super) async fn is_ours(stack: &Stack, arn: &str) -> Result<bool> {
    Ok(carries_stack_tag(stack, &resource_tags(stack, arn).await?))
}

/// A resource of the stack's derived name that lacks the stack's tag: `up` stops with
/// this error rather than adopt it, `destroy` leaves it alone.
pub(super) fn not_ours(what: &str, name: &str, stack: &Stack) -> anyhow::Error {
    anyhow::anyhow!(
        "a {what} named {name} exists but does not carry the tag {STACK_TAG}={}: the name is \
         taken by something that is not this stack's; rename the stack or delete that {what}",
        stack.names.stack()
    )
}

/// A load balancer with its tags.
type TaggedLoadBalancer = (
    aws_sdk_elasticloadbalancingv2::types::LoadBalancer,
    Vec<Tag>,
);

/// The load balancer of the stack's name, and whether it is the stack's.
pub(super) async fn find_load_balancer(
    stack: &Stack,
) -> Result<Option<(aws_sdk_elasticloadbalancingv2::types::LoadBalancer, bool)>> {
    Ok(find_load_balancer_tagged(stack)
        .await?
        .map(|(lb, tags)| (lb, carries_stack_tag(stack, &tags))))
}

/// The load balancer of the stack's name, if the stack's, with its tags (read once for
/// both the ownership and the alias it records).
pub(super) async fn owned_load_balancer_tagged(
    stack: &Stack,
) -> Result<Option<TaggedLoadBalancer>> {
    let found = find_load_balancer_tagged(stack).await?.map(|(lb, tags)| {
        let ours = carries_stack_tag(stack, &tags);
        ((lb, tags), ours)
    });
    Ok(ours_only(
        stack,
        found,
        "load balancer",
        stack.names.load_balancer(),
    ))
}

/// The load balancer of the stack's name, with its tags.
async fn find_load_balancer_tagged(stack: &Stack) -> Result<Option<TaggedLoadBalancer>> {
    let name = stack.names.load_balancer();
    let out = stack
        .clients
        .elbv2
        .describe_load_balancers()
        .names(&name)
        .send()
        .await;
    let Some(found) = found(out, format!("DescribeLoadBalancers {name}"), |err| {
        err.code() == Some("LoadBalancerNotFound")
    })?
    else {
        return Ok(None);
    };
    let Some(lb) = found.load_balancers().first() else {
        return Ok(None);
    };
    let arn = lb
        .load_balancer_arn()
        .context("load balancer without an ARN")?;
    Ok(Some((lb.clone(), resource_tags(stack, arn).await?)))
}

/// The load balancer with its attributes (and the bucket of its access logs) and the
/// HTTP listener, in front of the target group made first ([`ensure_target_group`]: the
/// Auto Scaling group is attached to it while the load balancer is still being created);
/// the HTTPS listener waits for the certificate ([`ensure_https_listener`]).
pub async fn ensure(
    stack: &Stack,
    network: &Network,
    target_group_arn: &str,
    account: &str,
) -> Result<LoadBalancer> {
    let ((arn, dns_name, canonical_hosted_zone_id), logs) = try_join!(
        ensure_load_balancer(stack, network),
        access_logs::ensure(stack, account),
    )?;
    // ELB refuses access logs into a bucket it cannot write yet: attributes come last.
    if !is_planned(&arn) {
        ensure_load_balancer_attributes(stack, &arn, logs.as_deref()).await?;
    }
    let http_listener_arn = ensure_http_listener(stack, &arn).await?;
    Ok(LoadBalancer {
        arn,
        dns_name,
        canonical_hosted_zone_id,
        target_group_arn: target_group_arn.to_owned(),
        http_listener_arn,
    })
}

fn sorted(items: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    let mut items: Vec<String> = items.into_iter().map(Into::into).collect();
    items.sort();
    items
}

/// Returns the ARN, DNS name and canonical hosted zone id.
async fn ensure_load_balancer(
    stack: &Stack,
    network: &Network,
) -> Result<(String, String, String)> {
    let elbv2 = &stack.clients.elbv2;
    let name = stack.names.load_balancer();
    let step = stack.progress.step(format!("load balancer {name}"));
    let work = async {
        step.set("looking up");
        let lb = match find_load_balancer(stack).await? {
            Some((_, false)) => return Err(not_ours("load balancer", &name, stack)),
            Some((lb, true)) => {
                let arn = lb.load_balancer_arn().unwrap_or_default();
                check!(
                    lb.scheme() == Some(&LoadBalancerSchemeEnum::InternetFacing)
                        && lb.vpc_id() == Some(network.vpc_id.as_str()),
                    "load balancer {name} is internal or in another VPC than the stack's \
                     ({}): neither can change; run destroy, then up",
                    network.vpc_id
                );
                let subnets = sorted(
                    lb.availability_zones()
                        .iter()
                        .filter_map(|zone| zone.subnet_id()),
                );
                let resource = format!("load balancer {name}");
                if subnets != sorted(network.public_subnets.clone())
                    && stack.make(
                        Action::Update,
                        &resource,
                        format!("move to {}", network.public_subnets.join(" ")),
                    )
                {
                    step.set("moving to the public subnets");
                    elbv2
                        .set_subnets()
                        .load_balancer_arn(arn)
                        .set_subnets(Some(network.public_subnets.to_vec()))
                        .send()
                        .await
                        .call(format!("SetSubnets {name}"))?;
                }
                if sorted(lb.security_groups().to_vec()) != [network.alb_security_group.clone()]
                    && stack.make(
                        Action::Update,
                        &resource,
                        format!("use only {}", network.alb_security_group),
                    )
                {
                    step.set("fixing its security group");
                    elbv2
                        .set_security_groups()
                        .load_balancer_arn(arn)
                        .security_groups(&network.alb_security_group)
                        .send()
                        .await
                        .call(format!("SetSecurityGroups {name}"))?;
                }
                lb
            }
            None => {
                let reason = format!(
                    "internet-facing in {}, idle timeout {} s",
                    network.public_subnets.join(" "),
                    stack.spec.load_balancer.idle_timeout_seconds
                );
                if !stack.make(Action::Create, format!("load balancer {name}"), reason) {
                    let planned = planned_id("load balancer");
                    return Ok((planned.clone(), planned, String::new()));
                }
                step.set("creating");
                // The subnets and the group may be seconds old; a second create of the
                // same load balancer answers it.
                let call = format!("CreateLoadBalancer {name}");
                let created = once_known(stack.pace, &call, &ELB_NEW_NETWORK, || {
                    elbv2
                        .create_load_balancer()
                        .name(&name)
                        .r#type(LoadBalancerTypeEnum::Application)
                        .scheme(LoadBalancerSchemeEnum::InternetFacing)
                        .set_subnets(Some(network.public_subnets.to_vec()))
                        .security_groups(&network.alb_security_group)
                        .set_tags(Some(tags(stack, "alb")))
                        .send()
                })
                .await?;
                created
                    .load_balancers()
                    .first()
                    .cloned()
                    .context("CreateLoadBalancer returned no load balancer")?
            }
        };
        let arn = lb
            .load_balancer_arn()
            .context("load balancer without an ARN")?
            .to_owned();
        if lb.state().and_then(|state| state.code()) != Some(&LoadBalancerStateEnum::Active) {
            wait_until_active(stack, &step, &arn).await?;
        }
        Ok((
            arn,
            lb.dns_name().unwrap_or_default().to_owned(),
            lb.canonical_hosted_zone_id().unwrap_or_default().to_owned(),
        ))
    };
    step.run(work, |(_, dns, _)| dns.clone()).await
}

async fn wait_until_active(stack: &Stack, step: &Step, arn: &str) -> Result<()> {
    wait_for(
        step,
        stack.pace,
        "the load balancer to be active",
        stack.pace.limit(Duration::from_secs(600)),
        Some((
            Duration::from_secs(120),
            "AWS takes a few minutes to provision a load balancer",
        )),
        || async {
            let out = stack
                .clients
                .elbv2
                .describe_load_balancers()
                .load_balancer_arns(arn)
                .send()
                .await
                .call(format!("DescribeLoadBalancers {arn}"))?;
            let state = out.load_balancers().first().and_then(|lb| lb.state());
            match state.and_then(|state| state.code()) {
                Some(LoadBalancerStateEnum::Active) => Ok(Some(())),
                Some(LoadBalancerStateEnum::Failed) => bail!(
                    "load balancer {arn} failed to provision: {}",
                    state
                        .and_then(|state| state.reason())
                        .unwrap_or("no reason given")
                ),
                _ => Ok(None),
            }
        },
    )
    .await
}

/// An attribute that does not hold the value the stack wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Drift {
    pub key: String,
    pub have: Option<String>,
    pub want: String,
}

/// What `drifts` would change, as `key old → new, ...`.
pub(super) fn describe(drifts: &[Drift]) -> String {
    drifts
        .iter()
        .map(|drift| {
            format!(
                "{} {} → {}",
                drift.key,
                drift.have.as_deref().unwrap_or("unset"),
                drift.want
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The attributes of `wanted` that `current` lacks or holds another value for.
pub(super) fn drifted(
    current: impl IntoIterator<Item = (Option<String>, Option<String>)>,
    wanted: &[(&str, String)],
) -> Vec<Drift> {
    let current: Vec<(Option<String>, Option<String>)> = current.into_iter().collect();
    wanted
        .iter()
        .filter_map(|(key, want)| {
            let have = current
                .iter()
                .find(|(k, _)| k.as_deref() == Some(*key))
                .and_then(|(_, value)| value.clone());
            (have.as_deref() != Some(want.as_str())).then(|| Drift {
                key: (*key).to_owned(),
                have,
                want: want.clone(),
            })
        })
        .collect()
}

async fn ensure_load_balancer_attributes(
    stack: &Stack,
    arn: &str,
    logs_bucket: Option<&str>,
) -> Result<()> {
    let elbv2 = &stack.clients.elbv2;
    let mut wanted = vec![
        // WebSockets sit quiet between messages; the default 60 s would cut them.
        (
            "idle_timeout.timeout_seconds",
            stack.spec.load_balancer.idle_timeout_seconds.to_string(),
        ),
        // Requests with malformed headers never reach the chat server.
        (
            "routing.http.drop_invalid_header_fields.enabled",
            "true".to_owned(),
        ),
        ("routing.http2.enabled", "true".to_owned()),
        // Deleted only by `destroy`, which turns this off first; not by a click in the
        // console or another tool's cleanup (Security Hub ELB.6).
        ("deletion_protection.enabled", "true".to_owned()),
        // AWS's defaults, held so that a change by hand is put back: requests that risk
        // HTTP desync are refused (ELB.12), and the client's address is appended to
        // X-Forwarded-For, the rightmost entry the chat server believes.
        (
            "routing.http.desync_mitigation_mode",
            "defensive".to_owned(),
        ),
        (
            "routing.http.xff_header_processing.mode",
            "append".to_owned(),
        ),
    ];
    wanted.extend(access_logs::attributes(logs_bucket));
    let current = elbv2
        .describe_load_balancer_attributes()
        .load_balancer_arn(arn)
        .send()
        .await
        .call(format!("DescribeLoadBalancerAttributes {arn}"))?;
    let changes = drifted(
        current
            .attributes()
            .iter()
            .map(|a| (a.key().map(Into::into), a.value().map(Into::into))),
        &wanted,
    );
    if changes.is_empty()
        || !stack.make(
            Action::Update,
            format!("load balancer {}", stack.names.load_balancer()),
            describe(&changes),
        )
    {
        return Ok(());
    }
    let modify = elbv2
        .modify_load_balancer_attributes()
        .load_balancer_arn(arn)
        .set_attributes(Some(
            changes
                .into_iter()
                .map(|drift| {
                    aws_sdk_elasticloadbalancingv2::types::LoadBalancerAttribute::builder()
                        .key(drift.key)
                        .value(drift.want)
                        .build()
                })
                .collect(),
        ));
    // The access-log bucket and its policy may be seconds old.
    let call = format!("ModifyLoadBalancerAttributes {arn}");
    once_known(stack.pace, &call, &ELB_NEW_LOG_BUCKET, || {
        modify.clone().send()
    })
    .await?;
    Ok(())
}

/// The stack's load balancer as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub name: String,
    pub dns_name: String,
    /// `active`, `provisioning`, `active_impaired` or `failed`, with AWS's reason.
    pub state: String,
    pub target_group_arn: Option<String>,
}

/// The stack's load balancer and target group, when they exist and are the stack's.
pub async fn summary(stack: &Stack) -> Result<Option<Summary>> {
    let (found, target_group) = try_join!(find_load_balancer(stack), owned_target_group(stack))?;
    let name = stack.names.load_balancer();
    let Some(lb) = ours_only(stack, found, "load balancer", name.clone()) else {
        return Ok(None);
    };
    let state = lb.state();
    let code = state
        .and_then(|state| state.code())
        .map_or("unknown", |code| code.as_str());
    Ok(Some(Summary {
        name,
        dns_name: lb.dns_name().unwrap_or_default().to_owned(),
        state: match state.and_then(|state| state.reason()) {
            Some(reason) => format!("{code}: {reason}"),
            None => code.to_owned(),
        },
        target_group_arn: target_group
            .and_then(|group| group.target_group_arn().map(str::to_owned)),
    }))
}

/// The tag on the load balancer that says which alias record the stack last pointed at
/// it, as `<hosted zone id> <domain>`. Record sets carry no tags: this is how `up` and
/// `destroy` still find the alias of a domain the stack served before `domain.name` (or
/// `domain.hosted_zone`) changed.
const ALIAS_TAG: &str = "realtime-stack:alias";

/// An alias record the stack wrote to its load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenAlias {
    pub zone_id: String,
    /// Lowercase, without the trailing dot.
    pub name: String,
}

impl WrittenAlias {
    pub fn new(zone_id: &str, name: &str) -> Self {
        Self {
            zone_id: zone_id.to_owned(),
            name: name.trim_end_matches('.').to_ascii_lowercase(),
        }
    }
}

/// Where the domain's alias record points while the stack's load balancer exists, so
/// that destroy deletes only an alias the stack wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasTarget {
    pub dns_name: String,
    pub hosted_zone_id: String,
    /// The alias the stack last wrote to it, when recorded.
    pub written: Option<WrittenAlias>,
}

/// The stack's load balancer as an alias target, if it exists.
pub async fn alias_target(stack: &Stack) -> Result<Option<AliasTarget>> {
    let Some((lb, tags)) = owned_load_balancer_tagged(stack).await? else {
        return Ok(None);
    };
    let (Some(dns_name), Some(hosted_zone_id)) = (lb.dns_name(), lb.canonical_hosted_zone_id())
    else {
        return Ok(None);
    };
    Ok(Some(AliasTarget {
        dns_name: dns_name.to_owned(),
        hosted_zone_id: hosted_zone_id.to_owned(),
        written: recorded_alias(&tags),
    }))
}

/// The alias the stack last pointed at the load balancer `arn`, as its tag records it.
pub async fn written_alias(stack: &Stack, arn: &str) -> Result<Option<WrittenAlias>> {
    if is_planned(arn) {
        return Ok(None);
    }
    Ok(recorded_alias(&resource_tags(stack, arn).await?))
}

/// The alias a load balancer's `tags` record.
pub(super) fn recorded_alias(tags: &[Tag]) -> Option<WrittenAlias> {
    tags.iter()
        .filter(|tag| tag.key() == Some(ALIAS_TAG))
        .find_map(|tag| tag.value()?.split_once(' '))
        .map(|(zone_id, name)| WrittenAlias::new(zone_id, name))
}

/// Records on the load balancer `arn` that `alias` now points at it.
pub async fn record_alias(stack: &Stack, arn: &str, alias: &WrittenAlias) -> Result<()> {
    let name = stack.names.load_balancer();
    let reason = format!("records that the alias {} points at it", alias.name);
    if is_planned(arn) || !stack.make(Action::Update, format!("load balancer {name}"), reason) {
        return Ok(());
    }
    stack
        .clients
        .elbv2
        .add_tags()
        .resource_arns(arn)
        .tags(
            Tag::builder()
                .key(ALIAS_TAG)
                .value(format!("{} {}", alias.zone_id, alias.name))
                .build(),
        )
        .send()
        .await
        .call(format!("AddTags {name} {ALIAS_TAG}"))?;
    Ok(())
}
