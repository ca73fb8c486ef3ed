//! The load balancer module against mocked ELBv2.

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
    TagDescription, TargetGroupAttribute, TargetGroupTuple, TargetHealth, TargetHealthDescription,
    TargetHealthReasonEnum,
};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

use aws_sdk_elasticloadbalancingv2::Client;
use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, Certificate, Listener, ProtocolEnum, RedirectActionConfig,
    RedirectActionStatusCodeEnum, TargetDescription, TargetGroup, TargetHealthStateEnum,
    TargetTypeEnum,
};

use super::target_group::matcher;
use super::*;
use crate::deploy::Health;
use crate::stack::testing;

const LB: &str = "arn:aws:elasticloadbalancing:us-east-1:1:loadbalancer/app/chat-alb/1";
const TG: &str = "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/chat-tg/1";
const CERT: &str = "arn:aws:acm:us-east-1:1:certificate/1";

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
                .attributes(attribute("deletion_protection.enabled", "true"))
                .attributes(attribute("idle_timeout.timeout_seconds", "3600"))
                .attributes(attribute(
                    "routing.http.desync_mitigation_mode",
                    "defensive",
                ))
                .attributes(attribute(
                    "routing.http.xff_header_processing.mode",
                    "append",
                ))
                .attributes(attribute(
                    "routing.http.drop_invalid_header_fields.enabled",
                    "true",
                ))
                .attributes(attribute("routing.http2.enabled", "true"))
                .attributes(attribute("access_logs.s3.enabled", "false"))
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
                .attributes(attribute("deregistration_delay.timeout_seconds", "35"))
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
                        .ssl_policy(testing::spec().load_balancer.tls_policy)
                        .certificates(Certificate::builder().certificate_arn(CERT).build())
                        .default_actions(forward)
                        .build(),
                )
                .build()
        }),
        mock!(Client::describe_rules).then_output(|| {
            aws_sdk_elasticloadbalancingv2::operation::describe_rules::DescribeRulesOutput::builder(
            )
            .rules(metrics_hidden())
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

/// Every call that could change something, answering success.
fn changes() -> Vec<(&'static str, Rule)> {
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
        change!("CreateRule", create_rule, CreateRuleOutput),
        change!("ModifyRule", modify_rule, ModifyRuleOutput),
    ]
}

fn calls(changes: &[(&'static str, Rule)]) -> Vec<&'static str> {
    changes
        .iter()
        .filter(|(_, rule)| rule.num_calls() > 0)
        .map(|(name, _)| *name)
        .collect()
}

/// The listener rule that answers `/metrics` with 404.
fn metrics_hidden() -> aws_sdk_elasticloadbalancingv2::types::Rule {
    aws_sdk_elasticloadbalancingv2::types::Rule::builder()
        .rule_arn(format!("{LB}/https/metrics"))
        .priority("1")
        .conditions(
            aws_sdk_elasticloadbalancingv2::types::RuleCondition::builder()
                .field("path-pattern")
                .values("/metrics")
                .values("/metrics/*")
                .build(),
        )
        .actions(
            Action::builder()
                .r#type(ActionTypeEnum::FixedResponse)
                .fixed_response_config(
                    aws_sdk_elasticloadbalancingv2::types::FixedResponseActionConfig::builder()
                        .status_code("404")
                        .build(),
                )
                .build(),
        )
        .build()
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
    // These tests are of the load balancer: its access logs are off, and no bucket of
    // them is left from before.
    let no_bucket = mock!(aws_sdk_s3::Client::head_bucket).then_error(|| {
        aws_sdk_s3::operation::head_bucket::HeadBucketError::NotFound(
            aws_sdk_s3::types::error::NotFound::builder().build(),
        )
    });
    clients.s3 = mock_client!(aws_sdk_s3, [&no_bucket]);
    let mut stack = testing::stack(clients);
    stack.spec.load_balancer.access_logs = None;
    stack
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
    let changes = changes();
    let rules: Vec<&Rule> = std::iter::once(&throttled)
        .chain(&converged)
        .chain(changes.iter().map(|(_, rule)| rule))
        .collect();
    let stack = stack_with(&rules);

    let network = crate::network::example();
    let target_group = ensure_target_group(&stack, &network)
        .await
        .expect("target group");
    let lb = ensure(&stack, &network, &target_group, "1")
        .await
        .expect("ensure");
    let https = ensure_https_listener(&stack, &lb, CERT)
        .await
        .expect("HTTPS listener");

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
async fn target_health_comes_with_the_reason_the_load_balancer_gives() {
    let described = mock!(Client::describe_target_health).then_output(|| {
        let target = |id: &str, state, reason: Option<TargetHealthReasonEnum>| {
            TargetHealthDescription::builder()
                .target(TargetDescription::builder().id(id).port(8080).build())
                .target_health(
                    TargetHealth::builder()
                        .state(state)
                        .set_reason(reason)
                        .description("Health checks failed with these codes: [503]")
                        .build(),
                )
                .build()
        };
        DescribeTargetHealthOutput::builder()
            .target_health_descriptions(target("i-1", TargetHealthStateEnum::Healthy, None))
            .target_health_descriptions(target(
                "i-2",
                TargetHealthStateEnum::Unhealthy,
                Some(TargetHealthReasonEnum::ResponseCodeMismatch),
            ))
            .target_health_descriptions(target("i-3", TargetHealthStateEnum::Draining, None))
            .build()
    });
    let stack = stack_with(&[&described]);
    let health = target_health(&stack, TG).await.expect("target health");
    assert_eq!(health["i-1"], Health::Healthy);
    assert_eq!(
        health["i-2"],
        Health::Unhealthy(
            "Target.ResponseCodeMismatch: Health checks failed with these codes: [503]".into()
        )
    );
    assert_eq!(health["i-3"], Health::Draining);
}

#[tokio::test]
async fn a_load_balancer_of_another_owner_is_neither_adopted_nor_deleted() {
    let converged = converged("someone-else");
    let changes = changes();
    let rules: Vec<&Rule> = converged
        .iter()
        .chain(changes.iter().map(|(_, rule)| rule))
        .collect();
    let stack = stack_with(&rules);

    let error = ensure(&stack, &crate::network::example(), TG, "1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("chat-alb exists but does not carry the tag realtime-stack:stack=chat"),
        "{error}"
    );
    assert!(
        deletables(&stack, "1")
            .await
            .expect("deletables")
            .is_empty()
    );
    assert_eq!(calls(&changes), Vec::<&str>::new());
}

/// The HTTPS listener right after ACM issued its certificate: for up to a minute ELB
/// answers `CertificateNotFound`, or `UnsupportedCertificate` as for a certificate not
/// yet issued (hashicorp/terraform-provider-aws#17505, DataBiosphere/azul#8321;
/// terraform-provider-aws retries CreateListener on CertificateNotFound for its
/// five-minute create timeout).
#[tokio::test(start_paused = true)]
async fn the_https_listener_waits_until_elb_knows_the_new_certificate() {
    use aws_sdk_elasticloadbalancingv2::error::ErrorMetadata;
    use aws_sdk_elasticloadbalancingv2::operation::create_listener::{
        CreateListenerError, CreateListenerOutput,
    };
    use aws_sdk_elasticloadbalancingv2::types::error::CertificateNotFoundException;

    let only_http = mock!(Client::describe_listeners).then_output(|| {
        DescribeListenersOutput::builder()
            .listeners(
                Listener::builder()
                    .listener_arn(format!("{LB}/http"))
                    .port(80)
                    .build(),
            )
            .build()
    });
    let not_found = format!("Certificate '{CERT}' not found");
    let unsupported = "The certificate must have a fully-qualified domain name, a supported \
                       signature, and a supported key size.";
    let create = mock!(Client::create_listener)
        .match_requests(|req| req.port() == Some(443))
        .sequence()
        .error(move || {
            CreateListenerError::CertificateNotFoundException(
                CertificateNotFoundException::builder()
                    .message(&not_found)
                    .meta(
                        ErrorMetadata::builder()
                            .code("CertificateNotFound")
                            .message(&not_found)
                            .build(),
                    )
                    .build(),
            )
        })
        .times(2)
        .error(move || {
            CreateListenerError::generic(
                ErrorMetadata::builder()
                    .code("UnsupportedCertificate")
                    .message(unsupported)
                    .build(),
            )
        })
        .output(|| {
            CreateListenerOutput::builder()
                .listeners(
                    Listener::builder()
                        .listener_arn(format!("{LB}/https"))
                        .build(),
                )
                .build()
        })
        .build();
    // The new listener then gets its /metrics rule.
    let no_rules = mock!(Client::describe_rules).then_output(|| {
        aws_sdk_elasticloadbalancingv2::operation::describe_rules::DescribeRulesOutput::builder()
            .build()
    });
    let metrics_rule = mock!(Client::create_rule)
        .match_requests(|req| req.priority() == Some(1))
        .then_output(|| {
            aws_sdk_elasticloadbalancingv2::operation::create_rule::CreateRuleOutput::builder()
                .build()
        });
    let stack = stack_with(&[&only_http, &create, &no_rules, &metrics_rule]);
    let lb = LoadBalancer {
        arn: LB.into(),
        dns_name: "chat-alb-1.us-east-1.elb.amazonaws.com".into(),
        canonical_hosted_zone_id: "Z35SXDOTRQ7X7K".into(),
        target_group_arn: TG.into(),
        http_listener_arn: format!("{LB}/http"),
    };

    let https = ensure_https_listener(&stack, &lb, CERT)
        .await
        .expect("HTTPS listener");

    assert_eq!(https, format!("{LB}/https"));
    assert_eq!(create.num_calls(), 4);
    assert_eq!(metrics_rule.num_calls(), 1);
}

/// A first `up` creates the load balancer seconds after its subnets and security group:
/// ELB learns of them from EC2 with EC2's delay and answers `SubnetNotFound` or
/// `InvalidSecurityGroup` meanwhile (aws/aws-cdk#3676, mozilla/fxa-dev#449,
/// kubernetes-sigs/aws-load-balancer-controller#2371). The load balancer is created once
/// ELB knows them.
#[tokio::test(start_paused = true)]
async fn the_load_balancer_is_created_once_elb_knows_its_new_subnets_and_group() {
    use aws_sdk_elasticloadbalancingv2::error::ErrorMetadata;
    use aws_sdk_elasticloadbalancingv2::operation::create_load_balancer::{
        CreateLoadBalancerError, CreateLoadBalancerOutput,
    };
    use aws_sdk_elasticloadbalancingv2::operation::describe_load_balancers::DescribeLoadBalancersError;
    use aws_sdk_elasticloadbalancingv2::types::error::{
        InvalidSecurityGroupException, LoadBalancerNotFoundException, SubnetNotFoundException,
    };

    let none = mock!(Client::describe_load_balancers).then_error(|| {
        DescribeLoadBalancersError::LoadBalancerNotFoundException(
            LoadBalancerNotFoundException::builder()
                .meta(
                    ErrorMetadata::builder()
                        .code("LoadBalancerNotFound")
                        .build(),
                )
                .build(),
        )
    });
    let create = mock!(Client::create_load_balancer)
        .sequence()
        .error(|| {
            CreateLoadBalancerError::SubnetNotFoundException(
                SubnetNotFoundException::builder()
                    .meta(
                        ErrorMetadata::builder()
                            .code("SubnetNotFound")
                            .message("The subnet ID 'subnet-pa' does not exist")
                            .build(),
                    )
                    .build(),
            )
        })
        .times(2)
        .error(|| {
            CreateLoadBalancerError::InvalidSecurityGroupException(
                InvalidSecurityGroupException::builder()
                    .meta(
                        ErrorMetadata::builder()
                            .code("InvalidSecurityGroup")
                            .message("The security group 'sg-alb' does not exist")
                            .build(),
                    )
                    .build(),
            )
        })
        .output(|| {
            CreateLoadBalancerOutput::builder()
                .set_load_balancers(Some(the_load_balancer().load_balancers().to_vec()))
                .build()
        })
        .build();
    let converged = converged("chat");
    let rules: Vec<&Rule> = [&none, &create].into_iter().chain(&converged).collect();
    let mut stack = stack_with(&rules);
    stack.pace = crate::engine::Pace::Aws;

    let (arn, _, _) = ensure_load_balancer(&stack, &crate::network::example())
        .await
        .expect("created");

    assert_eq!(arn, LB);
    assert_eq!(create.num_calls(), 4);
}

/// A listener and a target group seconds old: ELB's API is eventually consistent and may
/// answer `ListenerNotFound` ("a listener created may still be ListenerNotFound",
/// kubernetes-sigs/aws-load-balancer-controller#1472) or `TargetGroupNotFound` (within
/// the same second of CreateTargetGroup, hashicorp/terraform-provider-aws#16860) to the
/// next call on it. Each is sent again until ELB knows them.
#[tokio::test(start_paused = true)]
async fn a_listener_and_a_target_group_just_made_are_used_once_elb_knows_them() {
    use aws_sdk_elasticloadbalancingv2::error::ErrorMetadata;
    use aws_sdk_elasticloadbalancingv2::operation::create_rule::CreateRuleOutput;
    use aws_sdk_elasticloadbalancingv2::operation::describe_rules::{
        DescribeRulesError, DescribeRulesOutput,
    };
    use aws_sdk_elasticloadbalancingv2::operation::describe_target_group_attributes::DescribeTargetGroupAttributesError;
    use aws_sdk_elasticloadbalancingv2::types::error::{
        ListenerNotFoundException, TargetGroupNotFoundException,
    };

    let listener = "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/chat-alb/1/443";
    let rules = mock!(Client::describe_rules)
        .sequence()
        .error(|| {
            DescribeRulesError::ListenerNotFoundException(
                ListenerNotFoundException::builder()
                    .meta(ErrorMetadata::builder().code("ListenerNotFound").build())
                    .build(),
            )
        })
        .times(2)
        .output(|| DescribeRulesOutput::builder().build())
        .build();
    let create_rule =
        mock!(Client::create_rule).then_output(|| CreateRuleOutput::builder().build());
    let attributes = mock!(Client::describe_target_group_attributes)
        .sequence()
        .error(|| {
            DescribeTargetGroupAttributesError::TargetGroupNotFoundException(
                TargetGroupNotFoundException::builder()
                    .meta(ErrorMetadata::builder().code("TargetGroupNotFound").build())
                    .build(),
            )
        })
        .output(|| {
            DescribeTargetGroupAttributesOutput::builder()
                .attributes(
                    TargetGroupAttribute::builder()
                        .key("deregistration_delay.timeout_seconds")
                        .value("35")
                        .build(),
                )
                .attributes(
                    TargetGroupAttribute::builder()
                        .key("stickiness.enabled")
                        .value("false")
                        .build(),
                )
                .build()
        })
        .build();
    let mut stack = stack_with(&[&rules, &create_rule, &attributes]);
    stack.pace = crate::engine::Pace::Aws;

    listeners::ensure_metrics_hidden(&stack, listener)
        .await
        .expect("the rule made once the listener is known");
    let step = stack.progress.step("target group chat-tg");
    target_group::ensure_target_group_attributes(&stack, &step, TG)
        .await
        .expect("the attributes read once the target group is known");

    assert_eq!(rules.num_calls(), 3);
    assert_eq!(create_rule.num_calls(), 1);
    assert_eq!(attributes.num_calls(), 2);
}

/// CreateRule whose answer is lost (a 502) is sent again by the SDK and answered
/// `PriorityInUse`, the rule the first attempt made holding priority 1: the rules are read
/// back, the metrics rule is there, and `up` goes on.
#[tokio::test(start_paused = true)]
async fn a_rule_whose_create_answer_was_lost_is_read_back_not_refused() {
    use aws_sdk_elasticloadbalancingv2::operation::describe_rules::DescribeRulesOutput;

    let listener = "arn:aws:elasticloadbalancing:us-east-1:1:listener/app/chat-alb/1/443";
    let rules = mock!(Client::describe_rules)
        .sequence()
        .output(|| DescribeRulesOutput::builder().build())
        .output(|| {
            DescribeRulesOutput::builder()
                .rules(metrics_hidden())
                .build()
        })
        .build();
    let create_rule = mock!(Client::create_rule)
        .sequence()
        .http_status(502, None)
        .http_status(
            400,
            Some(
                "<ErrorResponse><Error><Type>Sender</Type><Code>PriorityInUse</Code>\
                 <Message>Priority '1' is currently in use</Message></Error>\
                 <RequestId>1</RequestId></ErrorResponse>"
                    .into(),
            ),
        )
        .build();
    let stack = stack_with(&[&rules, &create_rule]);

    listeners::ensure_metrics_hidden(&stack, listener)
        .await
        .expect("the rule the first attempt made");

    assert_eq!(create_rule.num_calls(), 2);
    assert_eq!(rules.num_calls(), 2);
}
