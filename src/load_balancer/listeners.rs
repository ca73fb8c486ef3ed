//! The listeners: HTTP:80 answering a redirect to HTTPS, HTTPS:443 with the certificate
//! and the TLS policy, forwarding to the target group except `/metrics`, which it answers
//! 404 itself. Untaggable: found through the load balancer.

use anyhow::{Context, Result};
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, FixedResponseActionConfig, Listener,
    PathPatternConditionConfig, ProtocolEnum, RedirectActionConfig, RedirectActionStatusCodeEnum,
    Rule, RuleCondition,
};

use super::LoadBalancer;
use crate::aws::{Call, ELB_NEW, ELB_NEW_CERTIFICATE, change_once, once_known};
use crate::engine::{self, Step, is_planned, planned_id};
use crate::stack::Stack;

pub(super) async fn listeners(stack: &Stack, lb_arn: &str) -> Result<Vec<Listener>> {
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
    /// `HTTP:80`, `HTTPS:443`.
    name: &'static str,
    /// What it does, in words, for `plan`.
    about: String,
    port: i32,
    protocol: ProtocolEnum,
    certificate: Option<String>,
    ssl_policy: Option<String>,
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
        let tls_matches = match &self.ssl_policy {
            Some(policy) => {
                listener.ssl_policy() == Some(policy.as_str())
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
    let resource = format!("listener {}", wanted.name);
    if is_planned(lb_arn) {
        stack.make(engine::Action::Create, resource, wanted.about);
        return Ok(planned_id("listener"));
    }
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
            if !wanted.matches(&listener)
                && stack.make(engine::Action::Update, resource, wanted.about)
            {
                step.set("fixing its settings");
                let call = format!("ModifyListener {arn}");
                once_known(stack.pace, &call, &ELB_NEW_CERTIFICATE, || {
                    elbv2
                        .modify_listener()
                        .listener_arn(&arn)
                        .port(port)
                        .protocol(wanted.protocol.clone())
                        .set_certificates(certificates.clone())
                        .set_ssl_policy(wanted.ssl_policy.clone())
                        .default_actions(wanted.action.clone())
                        .send()
                })
                .await?;
            }
            Ok(arn)
        }
        None => {
            if !stack.make(engine::Action::Create, resource, wanted.about) {
                return Ok(planned_id("listener"));
            }
            step.set("creating");
            let call = format!("CreateListener {lb_arn} port {port}");
            let created = once_known(stack.pace, &call, &ELB_NEW_CERTIFICATE, || {
                elbv2
                    .create_listener()
                    .load_balancer_arn(lb_arn)
                    .port(port)
                    .protocol(wanted.protocol.clone())
                    .set_certificates(certificates.clone())
                    .set_ssl_policy(wanted.ssl_policy.clone())
                    .default_actions(wanted.action.clone())
                    .send()
            })
            .await?;
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
pub(super) async fn ensure_http_listener(stack: &Stack, lb_arn: &str) -> Result<String> {
    let step = stack.progress.step("listener HTTP:80");
    let wanted = WantedListener {
        name: "HTTP:80",
        about: "answer 301 to the same URL over HTTPS".to_owned(),
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

/// HTTPS:443 with the certificate and the stack's TLS policy, forwarding to the target group.
pub async fn ensure_https_listener(
    stack: &Stack,
    lb: &LoadBalancer,
    certificate_arn: &str,
) -> Result<String> {
    let step = stack.progress.step("listener HTTPS:443");
    let policy = &stack.spec.load_balancer.tls_policy;
    let wanted = WantedListener {
        name: "HTTPS:443",
        about: format!("{policy} with the certificate, forward to the target group"),
        port: 443,
        protocol: ProtocolEnum::Https,
        certificate: Some(certificate_arn.to_owned()),
        ssl_policy: Some(policy.clone()),
        action: Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(&lb.target_group_arn)
            .build(),
    };
    step.run(
        async {
            let arn = ensure_listener(stack, &lb.arn, wanted, &step).await?;
            ensure_metrics_hidden(stack, &arn).await?;
            Ok(arn)
        },
        |_| format!("{policy}, forwarding to the target group but /metrics"),
    )
    .await
}

/// The paths of the servers' Prometheus metrics.
const METRICS_PATHS: [&str; 2] = ["/metrics", "/metrics/*"];

/// `/metrics` answered 404 by the load balancer itself: metrics say how many are
/// connected and how Redis fares, for the operator's scraper inside the VPC, not for the
/// internet.
pub(super) async fn ensure_metrics_hidden(stack: &Stack, listener_arn: &str) -> Result<()> {
    const RESOURCE: &str = "listener rule HTTPS:443 /metrics";
    let not_found = Action::builder()
        .r#type(ActionTypeEnum::FixedResponse)
        .fixed_response_config(
            FixedResponseActionConfig::builder()
                .status_code("404")
                .content_type("text/plain")
                .message_body("not found")
                .build(),
        )
        .build();
    if is_planned(listener_arn) {
        stack.make(engine::Action::Create, RESOURCE, "answer 404");
        return Ok(());
    }
    let elbv2 = &stack.clients.elbv2;
    match metrics_rule(stack, listener_arn).await? {
        Some(rule) if matches!(rule.actions(), [action] if answers_404(action)) => Ok(()),
        Some(rule) => {
            let arn = rule.rule_arn().context("a rule without an ARN")?;
            if stack.make(engine::Action::Update, RESOURCE, "answer 404 again") {
                elbv2
                    .modify_rule()
                    .rule_arn(arn)
                    .actions(not_found)
                    .send()
                    .await
                    .call(format!("ModifyRule {arn}"))?;
            }
            Ok(())
        }
        None => {
            if !stack.make(engine::Action::Create, RESOURCE, "answer 404") {
                return Ok(());
            }
            let create = || {
                elbv2
                    .create_rule()
                    .listener_arn(listener_arn)
                    .priority(1)
                    .conditions(
                        RuleCondition::builder()
                            .field("path-pattern")
                            .path_pattern_config(
                                PathPatternConditionConfig::builder()
                                    .set_values(Some(METRICS_PATHS.map(str::to_owned).to_vec()))
                                    .build(),
                            )
                            .build(),
                    )
                    .actions(not_found.clone())
                    .send()
            };
            let in_place = async || {
                Ok(metrics_rule(stack, listener_arn)
                    .await?
                    .is_some_and(|rule| matches!(rule.actions(), [action] if answers_404(action))))
            };
            // A second attempt after a lost answer finds the priority taken by the rule
            // the first made: "The specified priority is in use"
            // (<https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateRule.html>).
            let call = format!("CreateRule {listener_arn} /metrics");
            change_once(
                stack.pace,
                &call,
                &ELB_NEW,
                &["PriorityInUse"],
                create,
                in_place,
            )
            .await
        }
    }
}

/// The listener's rule for the metrics' paths, if it has one.
async fn metrics_rule(stack: &Stack, listener_arn: &str) -> Result<Option<Rule>> {
    // The listener may be seconds old.
    let call = format!("DescribeRules {listener_arn}");
    let rules = once_known(stack.pace, &call, &ELB_NEW, || {
        stack
            .clients
            .elbv2
            .describe_rules()
            .listener_arn(listener_arn)
            .send()
    })
    .await?;
    Ok(rules
        .rules()
        .iter()
        .find(|rule| is_metrics_rule(rule))
        .cloned())
}

fn is_metrics_rule(rule: &Rule) -> bool {
    rule.conditions().iter().any(|condition| {
        let values = condition
            .path_pattern_config()
            .map(PathPatternConditionConfig::values)
            .filter(|values| !values.is_empty())
            .unwrap_or(condition.values());
        values == METRICS_PATHS
    })
}

fn answers_404(action: &Action) -> bool {
    action.r#type() == Some(&ActionTypeEnum::FixedResponse)
        && action
            .fixed_response_config()
            .is_some_and(|config| config.status_code() == Some("404"))
}
