//! The Application Load Balancer in front of the instances: the load balancer and its
//! attributes, the target group with its health check and attributes, the HTTP:80
//! listener that redirects to HTTPS, the HTTPS:443 listener with the ACM certificate, and
//! which instances are registered. Load balancer and target group are found by their
//! derived names and owned only when they carry the stack's tag; listeners, which the
//! stack does not tag, are found through the load balancer.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure as check};
use aws_sdk_elasticloadbalancingv2::Client;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, Listener, LoadBalancerSchemeEnum, LoadBalancerStateEnum,
    LoadBalancerTypeEnum, Matcher, ProtocolEnum, RedirectActionConfig,
    RedirectActionStatusCodeEnum, Tag, TargetDescription, TargetGroup, TargetHealthStateEnum,
    TargetTypeEnum,
};
use futures::try_join;

use crate::aws::{Call, delete_outcome, error_code};
use crate::engine::{Deletable, DeleteFuture, Step, wait_for};
use crate::names::STACK_TAG;
use crate::network::Network;
use crate::stack::Stack;

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

/// TLS 1.3 with TLS 1.2 as the floor: every current browser and WebSocket client speaks
/// one of them, and the policy leaves out TLS 1.0/1.1 and the CBC ciphers that the
/// default `ELBSecurityPolicy-2016-08` still allows.
pub const SSL_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-2021-06";
const HEALTH_CHECK_PATH: &str = "/healthz";
const HEALTH_CHECK_INTERVAL: i32 = 10;
const HEALTH_CHECK_TIMEOUT: i32 = 5;
const HEALTHY_THRESHOLD: i32 = 2;
const UNHEALTHY_THRESHOLD: i32 = 2;

fn tags(stack: &Stack, role: &str) -> Vec<Tag> {
    stack
        .names
        .tags(role)
        .into_iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect()
}

/// Whether the resource at `arn` carries this stack's tag.
async fn is_ours(stack: &Stack, arn: &str) -> Result<bool> {
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
        .any(|tag| stack.names.is_stack_tag(tag.key(), tag.value())))
}

/// A resource of the stack's derived name that lacks the stack's tag: `up` stops with
/// this error rather than adopt it, `destroy` leaves it alone.
fn not_ours(what: &str, name: &str, stack: &Stack) -> anyhow::Error {
    anyhow::anyhow!(
        "a {what} named {name} exists but does not carry the tag {STACK_TAG}={}: the name is \
         taken by something that is not this stack's; rename the stack or delete that {what}",
        stack.names.stack()
    )
}

/// The load balancer of the stack's name, and whether it is the stack's.
async fn find_load_balancer(
    stack: &Stack,
) -> Result<Option<(aws_sdk_elasticloadbalancingv2::types::LoadBalancer, bool)>> {
    let name = stack.names.load_balancer();
    let out = stack
        .clients
        .elbv2
        .describe_load_balancers()
        .names(&name)
        .send()
        .await;
    let found = match out {
        Err(err) if error_code(&err) == Some("LoadBalancerNotFound") => return Ok(None),
        out => out.call(format!("DescribeLoadBalancers {name}"))?,
    };
    let Some(lb) = found.load_balancers().first() else {
        return Ok(None);
    };
    let arn = lb
        .load_balancer_arn()
        .context("load balancer without an ARN")?;
    Ok(Some((lb.clone(), is_ours(stack, arn).await?)))
}

/// The target group of the stack's name, and whether it is the stack's.
async fn find_target_group(stack: &Stack) -> Result<Option<(TargetGroup, bool)>> {
    let name = stack.names.target_group();
    let out = stack
        .clients
        .elbv2
        .describe_target_groups()
        .names(&name)
        .send()
        .await;
    let found = match out {
        Err(err) if error_code(&err) == Some("TargetGroupNotFound") => return Ok(None),
        out => out.call(format!("DescribeTargetGroups {name}"))?,
    };
    let Some(group) = found.target_groups().first() else {
        return Ok(None);
    };
    let arn = group
        .target_group_arn()
        .context("target group without an ARN")?;
    Ok(Some((group.clone(), is_ours(stack, arn).await?)))
}

/// The load balancer with its attributes, the target group with its health check and
/// attributes, and the HTTP listener; the HTTPS one waits for the certificate
/// ([`ensure_https_listener`]).
pub async fn ensure(stack: &Stack, network: &Network) -> Result<LoadBalancer> {
    let ((arn, dns_name, canonical_hosted_zone_id), target_group_arn) = try_join!(
        ensure_load_balancer(stack, network),
        ensure_target_group(stack, network)
    )?;
    let http_listener_arn = ensure_http_listener(stack, &arn).await?;
    Ok(LoadBalancer {
        arn,
        dns_name,
        canonical_hosted_zone_id,
        target_group_arn,
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
                if subnets != sorted(network.public_subnets.clone()) {
                    step.set("moving to the public subnets");
                    elbv2
                        .set_subnets()
                        .load_balancer_arn(arn)
                        .set_subnets(Some(network.public_subnets.to_vec()))
                        .send()
                        .await
                        .call(format!("SetSubnets {name}"))?;
                }
                if sorted(lb.security_groups().to_vec()) != [network.alb_security_group.clone()] {
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
                step.set("creating");
                let created = elbv2
                    .create_load_balancer()
                    .name(&name)
                    .r#type(LoadBalancerTypeEnum::Application)
                    .scheme(LoadBalancerSchemeEnum::InternetFacing)
                    .set_subnets(Some(network.public_subnets.to_vec()))
                    .security_groups(&network.alb_security_group)
                    .set_tags(Some(tags(stack, "alb")))
                    .send()
                    .await
                    .call(format!("CreateLoadBalancer {name}"))?;
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
        ensure_load_balancer_attributes(stack, &step, &arn).await?;
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

/// The `(key, value)` pairs of `wanted` that `current` lacks or holds another value for.
fn drifted(
    current: impl IntoIterator<Item = (Option<String>, Option<String>)>,
    wanted: &[(&str, String)],
) -> Vec<(String, String)> {
    let current: Vec<(Option<String>, Option<String>)> = current.into_iter().collect();
    wanted
        .iter()
        .filter(|(key, value)| {
            !current
                .iter()
                .any(|(k, v)| k.as_deref() == Some(*key) && v.as_deref() == Some(value.as_str()))
        })
        .map(|(key, value)| ((*key).to_owned(), value.clone()))
        .collect()
}

async fn ensure_load_balancer_attributes(stack: &Stack, step: &Step, arn: &str) -> Result<()> {
    let elbv2 = &stack.clients.elbv2;
    let wanted = [
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
    ];
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
    if changes.is_empty() {
        return Ok(());
    }
    step.set("setting attributes");
    elbv2
        .modify_load_balancer_attributes()
        .load_balancer_arn(arn)
        .set_attributes(Some(
            changes
                .into_iter()
                .map(|(key, value)| {
                    aws_sdk_elasticloadbalancingv2::types::LoadBalancerAttribute::builder()
                        .key(key)
                        .value(value)
                        .build()
                })
                .collect(),
        ))
        .send()
        .await
        .call(format!("ModifyLoadBalancerAttributes {arn}"))?;
    Ok(())
}

/// Whether the health check of `group` is the one wanted: `/healthz` on the traffic
/// port, which answers 503 while the server drains or has lost Redis.
fn health_check_matches(group: &TargetGroup) -> bool {
    group.health_check_enabled() != Some(false)
        && group.health_check_protocol() == Some(&ProtocolEnum::Http)
        && group
            .health_check_port()
            .is_none_or(|port| port == "traffic-port")
        && group.health_check_path() == Some(HEALTH_CHECK_PATH)
        && group.health_check_interval_seconds() == Some(HEALTH_CHECK_INTERVAL)
        && group.health_check_timeout_seconds() == Some(HEALTH_CHECK_TIMEOUT)
        && group.healthy_threshold_count() == Some(HEALTHY_THRESHOLD)
        && group.unhealthy_threshold_count() == Some(UNHEALTHY_THRESHOLD)
        && group.matcher().and_then(Matcher::http_code) == Some("200")
}

fn matcher() -> Matcher {
    Matcher::builder().http_code("200").build()
}

async fn ensure_target_group(stack: &Stack, network: &Network) -> Result<String> {
    let elbv2 = &stack.clients.elbv2;
    let name = stack.names.target_group();
    let port = i32::from(stack.spec.instances.app_port);
    let step = stack.progress.step(format!("target group {name}"));
    let work = async {
        step.set("looking up");
        let arn = match find_target_group(stack).await? {
            Some((_, false)) => return Err(not_ours("target group", &name, stack)),
            Some((group, true)) => {
                let arn = group
                    .target_group_arn()
                    .context("target group without an ARN")?
                    .to_owned();
                check!(
                    group.protocol() == Some(&ProtocolEnum::Http)
                        && group.port() == Some(port)
                        && group.vpc_id() == Some(network.vpc_id.as_str())
                        && group.target_type() == Some(&TargetTypeEnum::Instance),
                    "target group {name} does not match the stack (HTTP to port {port} of \
                     instances in {}), and these settings cannot change: run destroy, then up",
                    network.vpc_id
                );
                if !health_check_matches(&group) {
                    step.set("fixing its health check");
                    elbv2
                        .modify_target_group()
                        .target_group_arn(&arn)
                        .health_check_enabled(true)
                        .health_check_protocol(ProtocolEnum::Http)
                        .health_check_port("traffic-port")
                        .health_check_path(HEALTH_CHECK_PATH)
                        .health_check_interval_seconds(HEALTH_CHECK_INTERVAL)
                        .health_check_timeout_seconds(HEALTH_CHECK_TIMEOUT)
                        .healthy_threshold_count(HEALTHY_THRESHOLD)
                        .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
                        .matcher(matcher())
                        .send()
                        .await
                        .call(format!("ModifyTargetGroup {name}"))?;
                }
                arn
            }
            None => {
                step.set("creating");
                let created = elbv2
                    .create_target_group()
                    .name(&name)
                    .protocol(ProtocolEnum::Http)
                    // The chat server speaks HTTP/1.1; WebSockets upgrade from it.
                    .protocol_version("HTTP1")
                    .port(port)
                    .vpc_id(&network.vpc_id)
                    .target_type(TargetTypeEnum::Instance)
                    .health_check_enabled(true)
                    .health_check_protocol(ProtocolEnum::Http)
                    .health_check_port("traffic-port")
                    .health_check_path(HEALTH_CHECK_PATH)
                    .health_check_interval_seconds(HEALTH_CHECK_INTERVAL)
                    .health_check_timeout_seconds(HEALTH_CHECK_TIMEOUT)
                    .healthy_threshold_count(HEALTHY_THRESHOLD)
                    .unhealthy_threshold_count(UNHEALTHY_THRESHOLD)
                    .matcher(matcher())
                    .set_tags(Some(tags(stack, "tg")))
                    .send()
                    .await
                    .call(format!("CreateTargetGroup {name}"))?;
                created
                    .target_groups()
                    .first()
                    .and_then(TargetGroup::target_group_arn)
                    .context("CreateTargetGroup returned no target group")?
                    .to_owned()
            }
        };
        ensure_target_group_attributes(stack, &step, &arn).await?;
        Ok(arn)
    };
    step.run(work, |_| {
        format!("HTTP/1.1 to port {port}, {HEALTH_CHECK_PATH}")
    })
    .await
}

async fn ensure_target_group_attributes(stack: &Stack, step: &Step, arn: &str) -> Result<()> {
    let elbv2 = &stack.clients.elbv2;
    let wanted = [
        // As long as the server keeps serving open connections after SIGTERM.
        (
            "deregistration_delay.timeout_seconds",
            stack.spec.instances.drain_seconds.to_string(),
        ),
        // Any instance serves any room: Redis fans messages out between them.
        ("stickiness.enabled", "false".to_owned()),
    ];
    let current = elbv2
        .describe_target_group_attributes()
        .target_group_arn(arn)
        .send()
        .await
        .call(format!("DescribeTargetGroupAttributes {arn}"))?;
    let changes = drifted(
        current
            .attributes()
            .iter()
            .map(|a| (a.key().map(Into::into), a.value().map(Into::into))),
        &wanted,
    );
    if changes.is_empty() {
        return Ok(());
    }
    step.set("setting attributes");
    elbv2
        .modify_target_group_attributes()
        .target_group_arn(arn)
        .set_attributes(Some(
            changes
                .into_iter()
                .map(|(key, value)| {
                    aws_sdk_elasticloadbalancingv2::types::TargetGroupAttribute::builder()
                        .key(key)
                        .value(value)
                        .build()
                })
                .collect(),
        ))
        .send()
        .await
        .call(format!("ModifyTargetGroupAttributes {arn}"))?;
    Ok(())
}

async fn listeners(stack: &Stack, lb_arn: &str) -> Result<Vec<Listener>> {
    let out = stack
        .clients
        .elbv2
        .describe_listeners()
        .load_balancer_arn(lb_arn)
        .send()
        .await
        .call(format!("DescribeListeners {lb_arn}"))?;
    Ok(out.listeners().to_vec())
}

/// What a listener should be; `ensure_listener` makes it so.
struct WantedListener {
    port: i32,
    protocol: ProtocolEnum,
    certificate: Option<String>,
    ssl_policy: Option<&'static str>,
    action: Action,
}

impl WantedListener {
    fn matches(&self, listener: &Listener) -> bool {
        let certificates: Vec<&str> = listener
            .certificates()
            .iter()
            .filter_map(Certificate::certificate_arn)
            .collect();
        // Certificates and policy only mean something on HTTPS (LocalStack reports a
        // policy on HTTP listeners too).
        let tls_matches = match self.ssl_policy {
            Some(policy) => {
                listener.ssl_policy() == Some(policy)
                    && certificates == self.certificate.as_deref().into_iter().collect::<Vec<_>>()
            }
            None => true,
        };
        listener.protocol() == Some(&self.protocol)
            && tls_matches
            && matches!(listener.default_actions(), [action] if same_action(action, &self.action))
    }
}

/// Whether `current` does what `wanted` does, whichever of the equivalent forms AWS
/// reports it in (a forward by `target_group_arn` or by `forward_config`, redirect
/// fields left at their defaults).
fn same_action(current: &Action, wanted: &Action) -> bool {
    if current.r#type() != wanted.r#type() {
        return false;
    }
    match wanted.r#type() {
        Some(ActionTypeEnum::Forward) => {
            let target = current.target_group_arn().or_else(|| {
                match current
                    .forward_config()
                    .map(|config| config.target_groups())
                {
                    Some([only]) => only.target_group_arn(),
                    _ => None,
                }
            });
            target == wanted.target_group_arn()
        }
        Some(ActionTypeEnum::Redirect) => {
            let (Some(current), Some(wanted)) =
                (current.redirect_config(), wanted.redirect_config())
            else {
                return false;
            };
            current.protocol() == wanted.protocol()
                && current.port() == wanted.port()
                && current.status_code() == wanted.status_code()
                && current.host().is_none_or(|host| host == "#{host}")
                && current.path().is_none_or(|path| path == "/#{path}")
                && current.query().is_none_or(|query| query == "#{query}")
        }
        _ => false,
    }
}

async fn ensure_listener(
    stack: &Stack,
    lb_arn: &str,
    wanted: WantedListener,
    step: &Step,
) -> Result<String> {
    let elbv2 = &stack.clients.elbv2;
    let port = wanted.port;
    let certificates = wanted
        .certificate
        .as_ref()
        .map(|arn| vec![Certificate::builder().certificate_arn(arn).build()]);
    let existing = listeners(stack, lb_arn)
        .await?
        .into_iter()
        .find(|listener| listener.port() == Some(port));
    match existing {
        Some(listener) => {
            let arn = listener
                .listener_arn()
                .context("listener without an ARN")?
                .to_owned();
            if !wanted.matches(&listener) {
                step.set("fixing its settings");
                elbv2
                    .modify_listener()
                    .listener_arn(&arn)
                    .port(port)
                    .protocol(wanted.protocol)
                    .set_certificates(certificates)
                    .set_ssl_policy(wanted.ssl_policy.map(str::to_owned))
                    .default_actions(wanted.action)
                    .send()
                    .await
                    .call(format!("ModifyListener {arn}"))?;
            }
            Ok(arn)
        }
        None => {
            step.set("creating");
            let created = elbv2
                .create_listener()
                .load_balancer_arn(lb_arn)
                .port(port)
                .protocol(wanted.protocol)
                .set_certificates(certificates)
                .set_ssl_policy(wanted.ssl_policy.map(str::to_owned))
                .default_actions(wanted.action)
                .send()
                .await
                .call(format!("CreateListener {lb_arn} port {port}"))?;
            Ok(created
                .listeners()
                .first()
                .and_then(Listener::listener_arn)
                .context("CreateListener returned no listener")?
                .to_owned())
        }
    }
}

/// HTTP:80 only answers a permanent redirect to the same URL over HTTPS.
async fn ensure_http_listener(stack: &Stack, lb_arn: &str) -> Result<String> {
    let step = stack.progress.step("listener HTTP:80");
    let wanted = WantedListener {
        port: 80,
        protocol: ProtocolEnum::Http,
        certificate: None,
        ssl_policy: None,
        action: Action::builder()
            .r#type(ActionTypeEnum::Redirect)
            .redirect_config(
                RedirectActionConfig::builder()
                    .protocol("HTTPS")
                    .port("443")
                    .host("#{host}")
                    .path("/#{path}")
                    .query("#{query}")
                    .status_code(RedirectActionStatusCodeEnum::Http301)
                    .build(),
            )
            .build(),
    };
    step.run(ensure_listener(stack, lb_arn, wanted, &step), |_| {
        "301 to HTTPS".to_owned()
    })
    .await
}

/// HTTPS:443 with the certificate and the TLS 1.3 policy, forwarding to the target group.
pub async fn ensure_https_listener(
    stack: &Stack,
    lb: &LoadBalancer,
    certificate_arn: &str,
) -> Result<String> {
    let step = stack.progress.step("listener HTTPS:443");
    let wanted = WantedListener {
        port: 443,
        protocol: ProtocolEnum::Https,
        certificate: Some(certificate_arn.to_owned()),
        ssl_policy: Some(SSL_POLICY),
        action: Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(&lb.target_group_arn)
            .build(),
    };
    step.run(ensure_listener(stack, &lb.arn, wanted, &step), |_| {
        format!("{SSL_POLICY}, forwarding to the target group")
    })
    .await
}

/// Registers the instances missing from the target group and deregisters the ones not
/// in `instance_ids` (they drain for the deregistration delay first).
pub async fn ensure_targets(
    stack: &Stack,
    lb: &LoadBalancer,
    instance_ids: &[String],
) -> Result<()> {
    let elbv2 = &stack.clients.elbv2;
    let name = stack.names.target_group();
    let port = i32::from(stack.spec.instances.app_port);
    let step = stack.progress.step(format!("targets of {name}"));
    let work = async {
        let health = elbv2
            .describe_target_health()
            .target_group_arn(&lb.target_group_arn)
            .send()
            .await
            .call(format!("DescribeTargetHealth {name}"))?;
        // A draining target is on its way out: re-register it if it is wanted, leave it
        // be otherwise.
        let registered: HashSet<&str> = health
            .target_health_descriptions()
            .iter()
            .filter(|description| {
                description
                    .target_health()
                    .and_then(|health| health.state())
                    != Some(&TargetHealthStateEnum::Draining)
            })
            .filter_map(|description| description.target().and_then(TargetDescription::id))
            .collect();
        let target = |id: &str| TargetDescription::builder().id(id).port(port).build();
        let missing: Vec<TargetDescription> = instance_ids
            .iter()
            .map(String::as_str)
            .filter(|id| !registered.contains(id))
            .map(target)
            .collect();
        let extra: Vec<TargetDescription> = registered
            .iter()
            .filter(|id| !instance_ids.iter().any(|wanted| wanted == **id))
            .map(|id| target(id))
            .collect();
        if !missing.is_empty() {
            step.set("registering");
            elbv2
                .register_targets()
                .target_group_arn(&lb.target_group_arn)
                .set_targets(Some(missing))
                .send()
                .await
                .call(format!("RegisterTargets {name}"))?;
        }
        if !extra.is_empty() {
            step.set("deregistering");
            elbv2
                .deregister_targets()
                .target_group_arn(&lb.target_group_arn)
                .set_targets(Some(extra))
                .send()
                .await
                .call(format!("DeregisterTargets {name}"))?;
        }
        Ok(())
    };
    step.run(work, |_| format!("{} instance(s)", instance_ids.len()))
        .await
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Listener,
    LoadBalancer,
    TargetGroup,
}

/// One load-balancing resource of the stack, as the destroy loop sees it.
struct Elbv2Resource {
    elbv2: Client,
    kind: Kind,
    arn: String,
    label: String,
    blocked_by: Vec<String>,
}

fn key(kind: Kind, arn: &str) -> String {
    let prefix = match kind {
        Kind::Listener => "elbv2-listener",
        Kind::LoadBalancer => "elbv2-lb",
        Kind::TargetGroup => "elbv2-tg",
    };
    format!("{prefix}:{arn}")
}

impl Deletable for Elbv2Resource {
    fn key(&self) -> String {
        key(self.kind, &self.arn)
    }

    fn label(&self) -> String {
        self.label.clone()
    }

    fn blocked_by(&self) -> Vec<String> {
        self.blocked_by.clone()
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let arn = self.arn.as_str();
            match self.kind {
                Kind::Listener => delete_outcome(
                    self.elbv2.delete_listener().listener_arn(arn).send().await,
                    &format!("DeleteListener {arn}"),
                    &["ListenerNotFound"],
                ),
                Kind::LoadBalancer => delete_outcome(
                    self.elbv2
                        .delete_load_balancer()
                        .load_balancer_arn(arn)
                        .send()
                        .await,
                    &format!("DeleteLoadBalancer {arn}"),
                    &["LoadBalancerNotFound"],
                ),
                // Refused with ResourceInUse until the load balancer is really gone.
                Kind::TargetGroup => delete_outcome(
                    self.elbv2
                        .delete_target_group()
                        .target_group_arn(arn)
                        .send()
                        .await,
                    &format!("DeleteTargetGroup {arn}"),
                    &["TargetGroupNotFound"],
                ),
            }
        })
    }
}

/// `found` if it is the stack's; otherwise nothing, with a note saying what is left alone.
fn ours_only<T>(stack: &Stack, found: Option<(T, bool)>, what: &str, name: String) -> Option<T> {
    match found? {
        (resource, true) => Some(resource),
        (_, false) => {
            stack
                .progress
                .note(&format!("left alone: {}", not_ours(what, &name, stack)));
            None
        }
    }
}

/// The stack's load balancer with its listeners, and its target group. A load balancer
/// or target group of the stack's names that is not the stack's is left alone.
pub async fn deletables(stack: &Stack) -> Result<Vec<Box<dyn Deletable>>> {
    let elbv2 = &stack.clients.elbv2;
    let (lb, group) = try_join!(find_load_balancer(stack), find_target_group(stack))?;
    let lb = ours_only(stack, lb, "load balancer", stack.names.load_balancer());
    let group = ours_only(stack, group, "target group", stack.names.target_group());
    let mut resources = Vec::new();
    let mut lb_keys = Vec::new();
    if let Some(lb) = lb {
        let arn = lb
            .load_balancer_arn()
            .context("load balancer without an ARN")?
            .to_owned();
        let mut listener_keys = Vec::new();
        for listener in listeners(stack, &arn).await? {
            let Some(listener_arn) = listener.listener_arn() else {
                continue;
            };
            listener_keys.push(key(Kind::Listener, listener_arn));
            resources.push(Elbv2Resource {
                elbv2: elbv2.clone(),
                kind: Kind::Listener,
                arn: listener_arn.to_owned(),
                label: format!(
                    "listener {}:{}",
                    listener.protocol().map(|p| p.as_str()).unwrap_or("?"),
                    listener.port().unwrap_or_default()
                ),
                blocked_by: vec![],
            });
        }
        lb_keys.extend(listener_keys.iter().cloned());
        lb_keys.push(key(Kind::LoadBalancer, &arn));
        resources.push(Elbv2Resource {
            elbv2: elbv2.clone(),
            kind: Kind::LoadBalancer,
            label: format!("load balancer {}", stack.names.load_balancer()),
            arn,
            blocked_by: listener_keys,
        });
    }
    if let Some(group) = group {
        resources.push(Elbv2Resource {
            elbv2: elbv2.clone(),
            kind: Kind::TargetGroup,
            arn: group
                .target_group_arn()
                .context("target group without an ARN")?
                .to_owned(),
            label: format!("target group {}", stack.names.target_group()),
            blocked_by: lb_keys,
        });
    }
    Ok(resources
        .into_iter()
        .map(|resource| Box::new(resource) as Box<dyn Deletable>)
        .collect())
}

/// Where the domain's alias record points while the stack's load balancer exists: its
/// DNS name and canonical hosted zone, so destroy deletes only an alias the stack wrote.
pub async fn alias_target(stack: &Stack) -> Result<Option<(String, String)>> {
    let found = find_load_balancer(stack).await?;
    let lb = ours_only(stack, found, "load balancer", stack.names.load_balancer());
    Ok(lb.and_then(|lb| {
        Some((
            lb.dns_name()?.to_owned(),
            lb.canonical_hosted_zone_id()?.to_owned(),
        ))
    }))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_elasticloadbalancingv2::config::retry::RetryConfig;
    use aws_sdk_elasticloadbalancingv2::operation::describe_listeners::DescribeListenersOutput;
    use aws_sdk_elasticloadbalancingv2::operation::describe_load_balancer_attributes::DescribeLoadBalancerAttributesOutput;
    use aws_sdk_elasticloadbalancingv2::operation::describe_load_balancers::DescribeLoadBalancersOutput;
    use aws_sdk_elasticloadbalancingv2::operation::describe_tags::DescribeTagsOutput;
    use aws_sdk_elasticloadbalancingv2::operation::describe_target_group_attributes::DescribeTargetGroupAttributesOutput;
    use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::DescribeTargetGroupsOutput;
    use aws_sdk_elasticloadbalancingv2::operation::describe_target_health::DescribeTargetHealthOutput;
    use aws_sdk_elasticloadbalancingv2::types::{
        AvailabilityZone, ForwardActionConfig, LoadBalancerAttribute, LoadBalancerState,
        TagDescription, TargetGroupAttribute, TargetGroupTuple, TargetHealth,
        TargetHealthDescription,
    };
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

    use super::*;
    use crate::stack::testing;

    const LB: &str = "arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/chat-alb/1";
    const TG: &str = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/chat-tg/1";
    const CERT: &str = "arn:aws:acm:us-east-1:1:certificate/1";

    fn network() -> Network {
        Network {
            vpc_id: "vpc-1".into(),
            zones: ["us-east-1a".into(), "us-east-1b".into()],
            public_subnets: ["subnet-pa".into(), "subnet-pb".into()],
            private_subnets: ["subnet-qa".into(), "subnet-qb".into()],
            private_route_table: "rtb-1".into(),
            s3_endpoint: "vpce-1".into(),
            alb_security_group: "sg-alb".into(),
            instance_security_group: "sg-instances".into(),
            redis_security_group: "sg-redis".into(),
        }
    }

    fn the_load_balancer() -> DescribeLoadBalancersOutput {
        let zone = |subnet: &str| AvailabilityZone::builder().subnet_id(subnet).build();
        DescribeLoadBalancersOutput::builder()
            .load_balancers(
                aws_sdk_elasticloadbalancingv2::types::LoadBalancer::builder()
                    .load_balancer_arn(LB)
                    .dns_name("chat-alb-1.us-east-1.elb.amazonaws.com")
                    .canonical_hosted_zone_id("Z35SXDOTRQ7X7K")
                    .scheme(LoadBalancerSchemeEnum::InternetFacing)
                    .vpc_id("vpc-1")
                    .state(
                        LoadBalancerState::builder()
                            .code(LoadBalancerStateEnum::Active)
                            .build(),
                    )
                    .availability_zones(zone("subnet-pb"))
                    .availability_zones(zone("subnet-pa"))
                    .security_groups("sg-alb")
                    .build(),
            )
            .build()
    }

    /// Describe rules answering with the example stack's load balancer exactly as
    /// `ensure` builds it; DescribeTags answers with `stack_tag` as the stack tag's value.
    fn converged(stack_tag: &'static str) -> Vec<Rule> {
        vec![
            mock!(Client::describe_load_balancers).then_output(the_load_balancer),
            mock!(Client::describe_tags).then_compute_output(move |req| {
                DescribeTagsOutput::builder()
                    .tag_descriptions(
                        TagDescription::builder()
                            .resource_arn(req.resource_arns()[0].clone())
                            .tags(Tag::builder().key(STACK_TAG).value(stack_tag).build())
                            .build(),
                    )
                    .build()
            }),
            mock!(Client::describe_load_balancer_attributes).then_output(|| {
                let attribute = |key: &str, value: &str| {
                    LoadBalancerAttribute::builder()
                        .key(key)
                        .value(value)
                        .build()
                };
                DescribeLoadBalancerAttributesOutput::builder()
                    .attributes(attribute("deletion_protection.enabled", "false"))
                    .attributes(attribute("idle_timeout.timeout_seconds", "3600"))
                    .attributes(attribute(
                        "routing.http.drop_invalid_header_fields.enabled",
                        "true",
                    ))
                    .attributes(attribute("routing.http2.enabled", "true"))
                    .build()
            }),
            mock!(Client::describe_target_groups).then_output(|| {
                DescribeTargetGroupsOutput::builder()
                    .target_groups(
                        TargetGroup::builder()
                            .target_group_arn(TG)
                            .protocol(ProtocolEnum::Http)
                            .protocol_version("HTTP1")
                            .port(8080)
                            .vpc_id("vpc-1")
                            .target_type(TargetTypeEnum::Instance)
                            .health_check_enabled(true)
                            .health_check_protocol(ProtocolEnum::Http)
                            .health_check_port("traffic-port")
                            .health_check_path("/healthz")
                            .health_check_interval_seconds(10)
                            .health_check_timeout_seconds(5)
                            .healthy_threshold_count(2)
                            .unhealthy_threshold_count(2)
                            .matcher(matcher())
                            .build(),
                    )
                    .build()
            }),
            mock!(Client::describe_target_group_attributes).then_output(|| {
                let attribute = |key: &str, value: &str| {
                    TargetGroupAttribute::builder()
                        .key(key)
                        .value(value)
                        .build()
                };
                DescribeTargetGroupAttributesOutput::builder()
                    .attributes(attribute("deregistration_delay.timeout_seconds", "30"))
                    .attributes(attribute("stickiness.enabled", "false"))
                    .attributes(attribute("stickiness.type", "lb_cookie"))
                    .build()
            }),
            mock!(Client::describe_listeners).then_output(|| {
                let redirect = Action::builder()
                    .r#type(ActionTypeEnum::Redirect)
                    .redirect_config(
                        RedirectActionConfig::builder()
                            .protocol("HTTPS")
                            .port("443")
                            .host("#{host}")
                            .path("/#{path}")
                            .query("#{query}")
                            .status_code(RedirectActionStatusCodeEnum::Http301)
                            .build(),
                    )
                    .build();
                // AWS reports a forward in its long form too.
                let forward = Action::builder()
                    .r#type(ActionTypeEnum::Forward)
                    .forward_config(
                        ForwardActionConfig::builder()
                            .target_groups(
                                TargetGroupTuple::builder()
                                    .target_group_arn(TG)
                                    .weight(1)
                                    .build(),
                            )
                            .build(),
                    )
                    .build();
                DescribeListenersOutput::builder()
                    .listeners(
                        Listener::builder()
                            .listener_arn(format!("{LB}/http"))
                            .port(80)
                            .protocol(ProtocolEnum::Http)
                            .default_actions(redirect)
                            .build(),
                    )
                    .listeners(
                        Listener::builder()
                            .listener_arn(format!("{LB}/https"))
                            .port(443)
                            .protocol(ProtocolEnum::Https)
                            .ssl_policy(SSL_POLICY)
                            .certificates(Certificate::builder().certificate_arn(CERT).build())
                            .default_actions(forward)
                            .build(),
                    )
                    .build()
            }),
            mock!(Client::describe_target_health).then_output(|| {
                let target = |id: &str| {
                    TargetHealthDescription::builder()
                        .target(TargetDescription::builder().id(id).port(8080).build())
                        .target_health(
                            TargetHealth::builder()
                                .state(TargetHealthStateEnum::Healthy)
                                .build(),
                        )
                        .build()
                };
                DescribeTargetHealthOutput::builder()
                    .target_health_descriptions(target("i-1"))
                    .target_health_descriptions(target("i-2"))
                    .build()
            }),
        ]
    }

    /// A rule answering `$op` with success, named as AWS names the call.
    macro_rules! change {
        ($name:literal, $op:ident, $output:ident) => {
            change!($name, $op, $output, |_| true)
        };
        ($name:literal, $op:ident, $output:ident, $matches:expr) => {
            (
                $name,
                mock!(Client::$op).match_requests($matches).then_output(|| {
                    aws_sdk_elasticloadbalancingv2::operation::$op::$output::builder().build()
                }),
            )
        };
    }

    /// Every call that could change something, answering success; RegisterTargets and
    /// DeregisterTargets only for the instances `ensure_targets` should add and remove.
    fn changes(register: &'static str, deregister: &'static str) -> Vec<(&'static str, Rule)> {
        vec![
            change!(
                "CreateLoadBalancer",
                create_load_balancer,
                CreateLoadBalancerOutput
            ),
            change!("SetSubnets", set_subnets, SetSubnetsOutput),
            change!(
                "SetSecurityGroups",
                set_security_groups,
                SetSecurityGroupsOutput
            ),
            change!(
                "ModifyLoadBalancerAttributes",
                modify_load_balancer_attributes,
                ModifyLoadBalancerAttributesOutput
            ),
            change!(
                "CreateTargetGroup",
                create_target_group,
                CreateTargetGroupOutput
            ),
            change!(
                "ModifyTargetGroup",
                modify_target_group,
                ModifyTargetGroupOutput
            ),
            change!(
                "ModifyTargetGroupAttributes",
                modify_target_group_attributes,
                ModifyTargetGroupAttributesOutput
            ),
            change!("CreateListener", create_listener, CreateListenerOutput),
            change!("ModifyListener", modify_listener, ModifyListenerOutput),
            change!(
                "RegisterTargets",
                register_targets,
                RegisterTargetsOutput,
                move |req| {
                    let ids: Vec<_> = req.targets().iter().filter_map(|t| t.id()).collect();
                    ids == [register] && req.targets()[0].port() == Some(8080)
                }
            ),
            change!(
                "DeregisterTargets",
                deregister_targets,
                DeregisterTargetsOutput,
                move |req| {
                    let ids: Vec<_> = req.targets().iter().filter_map(|t| t.id()).collect();
                    ids == [deregister]
                }
            ),
        ]
    }

    fn calls(changes: &[(&'static str, Rule)]) -> Vec<&'static str> {
        changes
            .iter()
            .filter(|(_, rule)| rule.num_calls() > 0)
            .map(|(name, _)| *name)
            .collect()
    }

    fn stack_with(rules: &[&Rule]) -> Stack {
        let mut clients = testing::clients();
        clients.elbv2 = mock_client!(
            aws_sdk_elasticloadbalancingv2,
            RuleMode::MatchAny,
            rules,
            // The SDK's standard retry, as `aws.rs` configures it, with short pauses.
            |config| config.retry_config(
                RetryConfig::standard()
                    .with_max_attempts(8)
                    .with_initial_backoff(Duration::from_millis(1))
            )
        );
        testing::stack(clients)
    }

    #[tokio::test]
    async fn a_converged_load_balancer_is_left_alone_even_when_throttled() {
        // HTTP 400 with a throttling code, twice; the retries take the next answers of
        // the same rule.
        let throttled = mock!(Client::describe_load_balancers)
            .sequence()
            .http_status(
                400,
                Some(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>ThrottlingException</Code>\
                     <Message>Rate exceeded</Message></Error><RequestId>1</RequestId>\
                     </ErrorResponse>"
                        .into(),
                ),
            )
            .times(2)
            .output(the_load_balancer)
            .build();
        let converged = converged("chat");
        let changes = changes("none", "none");
        let rules: Vec<&Rule> = std::iter::once(&throttled)
            .chain(&converged)
            .chain(changes.iter().map(|(_, rule)| rule))
            .collect();
        let stack = stack_with(&rules);

        let lb = ensure(&stack, &network()).await.expect("ensure");
        let https = ensure_https_listener(&stack, &lb, CERT)
            .await
            .expect("HTTPS listener");
        ensure_targets(&stack, &lb, &["i-2".into(), "i-1".into()])
            .await
            .expect("targets");

        assert_eq!(throttled.num_calls(), 3);
        assert_eq!(calls(&changes), Vec::<&str>::new());
        assert_eq!(
            lb,
            LoadBalancer {
                arn: LB.into(),
                dns_name: "chat-alb-1.us-east-1.elb.amazonaws.com".into(),
                canonical_hosted_zone_id: "Z35SXDOTRQ7X7K".into(),
                target_group_arn: TG.into(),
                http_listener_arn: format!("{LB}/http"),
            }
        );
        assert_eq!(https, format!("{LB}/https"));
    }

    #[tokio::test]
    async fn targets_follow_the_instances() {
        let converged = converged("chat");
        let changes = changes("i-3", "i-1");
        let rules: Vec<&Rule> = converged
            .iter()
            .chain(changes.iter().map(|(_, rule)| rule))
            .collect();
        let stack = stack_with(&rules);
        let lb = ensure(&stack, &network()).await.expect("ensure");

        ensure_targets(&stack, &lb, &["i-2".into(), "i-3".into()])
            .await
            .expect("targets");

        assert_eq!(calls(&changes), ["RegisterTargets", "DeregisterTargets"]);
    }

    #[tokio::test]
    async fn a_load_balancer_of_another_owner_is_neither_adopted_nor_deleted() {
        let converged = converged("someone-else");
        let changes = changes("none", "none");
        let rules: Vec<&Rule> = converged
            .iter()
            .chain(changes.iter().map(|(_, rule)| rule))
            .collect();
        let stack = stack_with(&rules);

        let error = ensure(&stack, &network()).await.unwrap_err().to_string();
        assert!(
            error.contains("chat-alb exists but does not carry the tag realtime-stack:stack=chat"),
            "{error}"
        );
        assert!(deletables(&stack).await.expect("deletables").is_empty());
        assert_eq!(calls(&changes), Vec::<&str>::new());
    }
}
