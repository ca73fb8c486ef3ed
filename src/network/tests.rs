//! The network module against mocked EC2: what a converged network leaves alone, what
//! drift it repairs, and how destroy waits for what still uses a security group.

use std::time::Duration;

use aws_sdk_ec2::Client as Ec2;
use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::delete_security_group::{
    DeleteSecurityGroupError, DeleteSecurityGroupOutput,
};
use aws_sdk_ec2::operation::describe_availability_zones::DescribeAvailabilityZonesOutput;
use aws_sdk_ec2::operation::describe_internet_gateways::DescribeInternetGatewaysOutput;
use aws_sdk_ec2::operation::describe_route_tables::DescribeRouteTablesOutput;
use aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput;
use aws_sdk_ec2::operation::describe_subnets::DescribeSubnetsOutput;
use aws_sdk_ec2::operation::describe_vpc_attribute::DescribeVpcAttributeOutput;
use aws_sdk_ec2::operation::describe_vpc_endpoints::DescribeVpcEndpointsOutput;
use aws_sdk_ec2::operation::describe_vpcs::DescribeVpcsOutput;
use aws_sdk_ec2::types::{
    AttachmentStatus, AttributeBooleanValue, AvailabilityZone, InternetGateway,
    InternetGatewayAttachment, IpPermission, Route, RouteTable, RouteTableAssociation,
    SecurityGroup, State, Subnet, Vpc, VpcEndpoint, VpcState,
};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

use super::routing::*;
use super::security_groups::*;
use super::teardown::*;
use super::*;
use crate::engine::{Leftovers, Pace, Progress, destroy};
use crate::names::ROLE_TAG;
use crate::stack::testing;

const BUCKET: &str = "chat-artifacts-1-us-east-1";

/// The role a describe call asks for, from its `tag:<role tag>` filter.
fn role(filters: &[Filter]) -> String {
    filters
        .iter()
        .find(|f| f.name() == Some(format!("tag:{ROLE_TAG}").as_str()))
        .and_then(|f| f.values().first())
        .cloned()
        .unwrap_or_default()
}

fn tcp_from_cidr(port: i32, cidr: &str) -> IpPermission {
    GroupRule::tcp(port, Peer::Cidr(cidr.into())).permission(Some("rule"))
}

fn tcp_from_group(port: i32, group: &str) -> IpPermission {
    GroupRule::tcp(port, Peer::Group(group.into())).permission(Some("rule"))
}

fn the_vpc() -> DescribeVpcsOutput {
    DescribeVpcsOutput::builder()
        .vpcs(
            Vpc::builder()
                .vpc_id("vpc-1")
                .cidr_block("10.0.0.0/16")
                .state(VpcState::Available)
                .build(),
        )
        .build()
}

/// DescribeInstanceTypeOfferings answering that the example stack's instance type is
/// offered in `zones`.
fn offered_in(zones: &'static [&'static str]) -> Rule {
    mock!(Ec2::describe_instance_type_offerings)
        .match_requests(|req| {
            req.filters()[0].values() == [testing::spec().instances.instance_type]
        })
        .then_output(move || {
            let offering = |zone: &str| {
                aws_sdk_ec2::types::InstanceTypeOffering::builder()
                    .location(zone)
                    .build()
            };
            aws_sdk_ec2::operation::describe_instance_type_offerings::DescribeInstanceTypeOfferingsOutput::builder()
                .set_instance_type_offerings(Some(zones.iter().map(|z| offering(z)).collect()))
                .build()
        })
}

/// An instance type offered in only one zone of the region stops `up` before anything is
/// created, naming the zones (AWS: not every type is in every zone,
/// <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-discovery.html>).
#[tokio::test]
async fn a_type_offered_in_one_zone_is_refused_naming_the_zones() {
    let rules = [
        offered_in(&["us-east-1b"]),
        availability_zones(),
        public_subnets_in(None),
    ];
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());
    let error = zones(&stack).await.unwrap_err().to_string();
    assert!(
        error.contains("offered in only us-east-1b of the zones of us-east-1 (us-east-1a, us-east-1b, us-east-1c)"),
        "{error}"
    );
}

/// The zones are the first two, by name, that offer the type.
#[tokio::test]
async fn the_zones_are_the_first_two_that_offer_the_type() {
    let rules = [
        offered_in(&["us-east-1c", "us-east-1b"]),
        availability_zones(),
        public_subnets_in(None),
    ];
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());
    assert_eq!(zones(&stack).await.unwrap(), ["us-east-1b", "us-east-1c"]);
}

/// DescribeSubnets of the stack's subnets: its public ones in `zones`, or none yet.
fn public_subnets_in(zones: Option<[&'static str; 2]>) -> Rule {
    mock!(Ec2::describe_subnets).then_output(move || {
        let subnet = |role: &str, zone: &str| {
            Subnet::builder()
                .subnet_id(format!("subnet-{role}"))
                .availability_zone(zone)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(ROLE_TAG)
                        .value(role)
                        .build(),
                )
                .build()
        };
        DescribeSubnetsOutput::builder()
            .set_subnets(zones.map(|[a, b]| vec![subnet("public-a", a), subnet("public-b", b)]))
            .build()
    })
}

/// Once the subnets exist the zones are theirs, not the first two that offer the type:
/// a subnet cannot move.
#[tokio::test]
async fn the_zones_of_a_built_network_are_its_subnets() {
    let rules = [
        offered_in(&["us-east-1a", "us-east-1b", "us-east-1c"]),
        availability_zones(),
        public_subnets_in(Some(["us-east-1b", "us-east-1c"])),
    ];
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());
    assert_eq!(zones(&stack).await.unwrap(), ["us-east-1b", "us-east-1c"]);
}

/// An instance type changed to one not offered where the stack's subnets are is refused
/// before anything changes: the Auto Scaling group would launch no instance in that zone
/// ("not every instance type is available in every Availability Zone",
/// <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-discovery.html>).
#[tokio::test]
async fn a_type_not_offered_where_the_subnets_are_is_refused() {
    let rules = [
        offered_in(&["us-east-1b", "us-east-1c"]),
        availability_zones(),
        public_subnets_in(Some(["us-east-1a", "us-east-1b"])),
    ];
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());
    let error = zones(&stack).await.unwrap_err().to_string();
    assert!(
        error.contains("is not offered in us-east-1a, where the stack's subnets are"),
        "{error}"
    );
    assert!(
        error.contains("offered in us-east-1a and us-east-1b"),
        "{error}"
    );
}

/// The region's three zones, listed out of order.
fn availability_zones() -> Rule {
    mock!(Ec2::describe_availability_zones).then_output(|| {
        let zone = |name: &str| {
            AvailabilityZone::builder()
                .zone_name(name)
                .zone_type("availability-zone")
                .build()
        };
        DescribeAvailabilityZonesOutput::builder()
            .availability_zones(zone("us-east-1c"))
            .availability_zones(zone("us-east-1b"))
            .availability_zones(zone("us-east-1a"))
            .build()
    })
}

fn region() -> Vec<Rule> {
    vec![
        mock!(Ec2::describe_prefix_lists)
            .match_requests(|req| {
                req.filters()[0].values() == ["com.amazonaws.us-east-1.s3".to_owned()]
            })
            .then_output(|| {
                aws_sdk_ec2::operation::describe_prefix_lists::DescribePrefixListsOutput::builder()
                    .prefix_lists(
                        aws_sdk_ec2::types::PrefixList::builder()
                            .prefix_list_id("pl-s3")
                            .prefix_list_name("com.amazonaws.us-east-1.s3")
                            .build(),
                    )
                    .build()
            }),
        mock!(Ec2::describe_vpc_attribute).then_output(|| {
            let on = || AttributeBooleanValue::builder().value(true).build();
            DescribeVpcAttributeOutput::builder()
                .enable_dns_support(on())
                .enable_dns_hostnames(on())
                .build()
        }),
    ]
}

/// Describe rules answering with the network of the example stack exactly as
/// `ensure` builds it, plus `extra_ingress` on the instances' group.
fn converged(extra_ingress: Option<IpPermission>) -> Vec<Rule> {
    let cidrs = testing::spec().subnet_cidrs();
    let (private_a, private_b) = (cidrs[2].clone(), cidrs[3].clone());
    let mut rules = region();
    rules.extend([
        mock!(Ec2::describe_vpcs).then_output(the_vpc),
        mock!(Ec2::describe_subnets).then_compute_output(move |req| {
            let role = role(req.filters());
            let index = SUBNET_ROLES.iter().position(|r| *r == role).unwrap();
            DescribeSubnetsOutput::builder()
                .subnets(
                    Subnet::builder()
                        .subnet_id(format!("subnet-{role}"))
                        .cidr_block(&cidrs[index])
                        .availability_zone(["us-east-1a", "us-east-1b"][index % 2])
                        .vpc_id("vpc-1")
                        .build(),
                )
                .build()
        }),
        mock!(Ec2::describe_internet_gateways).then_output(|| {
            DescribeInternetGatewaysOutput::builder()
                .internet_gateways(
                    InternetGateway::builder()
                        .internet_gateway_id("igw-1")
                        .attachments(
                            InternetGatewayAttachment::builder()
                                .vpc_id("vpc-1")
                                .state(AttachmentStatus::from("available"))
                                .build(),
                        )
                        .build(),
                )
                .build()
        }),
        mock!(Ec2::describe_route_tables).then_compute_output(|req| {
            let role = role(req.filters());
            let prefix = role.trim_end_matches("-rt");
            let mut table = RouteTable::builder()
                .route_table_id(format!("rtb-{role}"))
                .routes(
                    Route::builder()
                        .destination_cidr_block("10.0.0.0/16")
                        .build(),
                );
            for zone in ["a", "b"] {
                table = table.associations(
                    RouteTableAssociation::builder()
                        .subnet_id(format!("subnet-{prefix}-{zone}"))
                        .build(),
                );
            }
            if role == "public-rt" {
                table = table.routes(
                    Route::builder()
                        .destination_cidr_block(DEFAULT_ROUTE)
                        .gateway_id("igw-1")
                        .build(),
                );
            }
            DescribeRouteTablesOutput::builder()
                .route_tables(table.build())
                .build()
        }),
        mock!(Ec2::describe_vpc_endpoints).then_output(|| {
            DescribeVpcEndpointsOutput::builder()
                .vpc_endpoints(
                    VpcEndpoint::builder()
                        .vpc_endpoint_id("vpce-1")
                        .state(State::Available)
                        .route_table_ids("rtb-private-rt")
                        .policy_document(endpoint_policy(BUCKET, "us-east-1").to_string())
                        .build(),
                )
                .build()
        }),
        mock!(Ec2::describe_security_groups).then_compute_output(move |req| {
            let role = role(req.filters());
            let group = SecurityGroup::builder().group_id(format!("sg-{role}"));
            let default = req
                .filters()
                .iter()
                .any(|f| f.name() == Some("group-name") && f.values() == ["default"]);
            let to_private = |port| [&private_a, &private_b].map(|cidr| tcp_from_cidr(port, cidr));
            let group = match role.as_str() {
                // The VPC's default group, its rules revoked by an earlier `up`.
                _ if default => group,
                ALB_SG => group
                    .ip_permissions(tcp_from_cidr(443, "0.0.0.0/0"))
                    .ip_permissions(tcp_from_cidr(80, "0.0.0.0/0"))
                    .set_ip_permissions_egress(Some(to_private(8080).to_vec())),
                INSTANCES_SG => group
                    .set_ip_permissions(Some(
                        [
                            Some(tcp_from_group(8080, "sg-alb-sg")),
                            extra_ingress.clone(),
                        ]
                        .into_iter()
                        .flatten()
                        .collect(),
                    ))
                    .set_ip_permissions_egress(Some(to_private(6379).to_vec()))
                    .ip_permissions_egress(
                        GroupRule::tcp(443, Peer::PrefixList("pl-s3".into())).permission(None),
                    ),
                _ => group.ip_permissions(tcp_from_group(6379, "sg-instances-sg")),
            };
            DescribeSecurityGroupsOutput::builder()
                .security_groups(group.build())
                .build()
        }),
    ]);
    rules
}

/// A rule answering `$op` with success, named as AWS names the call.
macro_rules! change {
    ($name:literal, $op:ident, $output:ident) => {
        (
            $name,
            mock!(Ec2::$op).then_output(|| aws_sdk_ec2::operation::$op::$output::builder().build()),
        )
    };
}

/// Every call of `ensure` that could change something, answering success.
fn changes() -> Vec<(&'static str, Rule)> {
    vec![
        change!("CreateVpc", create_vpc, CreateVpcOutput),
        change!("ModifyVpcAttribute", modify_vpc_attribute, ModifyVpcAttributeOutput),
        change!("CreateSubnet", create_subnet, CreateSubnetOutput),
        change!("CreateInternetGateway", create_internet_gateway, CreateInternetGatewayOutput),
        change!("AttachInternetGateway", attach_internet_gateway, AttachInternetGatewayOutput),
        change!("CreateRouteTable", create_route_table, CreateRouteTableOutput),
        change!("CreateRoute", create_route, CreateRouteOutput),
        change!("ReplaceRoute", replace_route, ReplaceRouteOutput),
        change!("DeleteRoute", delete_route, DeleteRouteOutput),
        change!("AssociateRouteTable", associate_route_table, AssociateRouteTableOutput),
        change!(
            "ReplaceRouteTableAssociation",
            replace_route_table_association,
            ReplaceRouteTableAssociationOutput
        ),
        change!("CreateVpcEndpoint", create_vpc_endpoint, CreateVpcEndpointOutput),
        change!("ModifyVpcEndpoint", modify_vpc_endpoint, ModifyVpcEndpointOutput),
        change!("CreateSecurityGroup", create_security_group, CreateSecurityGroupOutput),
        change!(
            "AuthorizeSecurityGroupIngress",
            authorize_security_group_ingress,
            AuthorizeSecurityGroupIngressOutput
        ),
        change!(
            "AuthorizeSecurityGroupEgress",
            authorize_security_group_egress,
            AuthorizeSecurityGroupEgressOutput
        ),
        change!(
            "RevokeSecurityGroupEgress",
            revoke_security_group_egress,
            RevokeSecurityGroupEgressOutput
        ),
        (
            "RevokeSecurityGroupIngress",
            mock!(Ec2::revoke_security_group_ingress)
                .match_requests(|req| {
                    // Only the rule someone added by hand may go.
                    req.group_id() == Some("sg-instances-sg")
                        && req.ip_permissions().len() == 1
                        && req.ip_permissions()[0].from_port() == Some(22)
                })
                .then_output(|| {
                    aws_sdk_ec2::operation::revoke_security_group_ingress::RevokeSecurityGroupIngressOutput::builder().build()
                }),
        ),
    ]
}

/// The SDK's standard retry, as `aws.rs` configures it, with short pauses.
fn retrying(config: aws_sdk_ec2::config::Builder) -> aws_sdk_ec2::config::Builder {
    config.retry_config(testing::sdk_retries())
}

fn stack_with(rules: &[&Rule]) -> Stack {
    let mut clients = testing::clients();
    clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, rules, retrying);
    testing::stack(clients)
}

fn calls(changes: &[(&'static str, Rule)]) -> Vec<&'static str> {
    changes
        .iter()
        .filter(|(_, rule)| rule.num_calls() > 0)
        .map(|(name, _)| *name)
        .collect()
}

#[tokio::test]
async fn a_converged_network_is_left_alone_even_when_ec2_throttles() {
    // EC2's throttling answer, twice; the SDK's retries take the next answers of the
    // same rule.
    let throttled = mock!(Ec2::describe_vpcs)
        .sequence()
        .http_status(400, Some(testing::EC2_THROTTLED.into()))
        .times(2)
        .output(the_vpc)
        .build();
    let converged = converged(None);
    let changes = changes();
    let rules: Vec<&Rule> = std::iter::once(&throttled)
        .chain(&converged)
        .chain(changes.iter().map(|(_, rule)| rule))
        .collect();
    let stack = stack_with(&rules);

    let network = ensure(&stack, &example().zones, BUCKET)
        .await
        .expect("ensure succeeds after retries");

    assert_eq!(throttled.num_calls(), 3);
    assert_eq!(calls(&changes), Vec::<&str>::new());
    assert_eq!(
        network,
        Network {
            vpc_id: "vpc-1".into(),
            zones: ["us-east-1a".into(), "us-east-1b".into()],
            public_subnets: ["subnet-public-a".into(), "subnet-public-b".into()],
            private_subnets: ["subnet-private-a".into(), "subnet-private-b".into()],
            private_route_table: "rtb-private-rt".into(),
            s3_endpoint: "vpce-1".into(),
            alb_security_group: "sg-alb-sg".into(),
            instance_security_group: "sg-instances-sg".into(),
            redis_security_group: "sg-redis-sg".into(),
        }
    );
}

#[tokio::test]
async fn a_port_opened_by_hand_is_closed_again() {
    let converged = converged(Some(tcp_from_cidr(22, "0.0.0.0/0")));
    let changes = changes();
    let rules: Vec<&Rule> = converged
        .iter()
        .chain(changes.iter().map(|(_, rule)| rule))
        .collect();

    ensure(&stack_with(&rules), &example().zones, BUCKET)
        .await
        .expect("ensure");

    assert_eq!(calls(&changes), ["RevokeSecurityGroupIngress"]);
}

/// The stack's network as `destroy` finds it: only the Redis group is left.
fn redis_group_only() -> Vec<Rule> {
    let group = || {
        DescribeSecurityGroupsOutput::builder()
            .security_groups(
                SecurityGroup::builder()
                    .group_id("sg-redis")
                    .tags(Tag::builder().key("Name").value("chat-redis-sg").build())
                    .build(),
            )
            .build()
    };
    vec![
        mock!(Ec2::describe_vpcs).then_output(|| DescribeVpcsOutput::builder().build()),
        mock!(Ec2::describe_subnets).then_output(|| DescribeSubnetsOutput::builder().build()),
        mock!(Ec2::describe_internet_gateways)
            .then_output(|| DescribeInternetGatewaysOutput::builder().build()),
        mock!(Ec2::describe_route_tables)
            .then_output(|| DescribeRouteTablesOutput::builder().build()),
        mock!(Ec2::describe_vpc_endpoints)
            .then_output(|| DescribeVpcEndpointsOutput::builder().build()),
        mock!(Ec2::describe_security_groups).then_output(group),
    ]
}

fn still_in_use() -> DeleteSecurityGroupError {
    DeleteSecurityGroupError::generic(
        ErrorMetadata::builder()
            .code("DependencyViolation")
            .message("resource sg-redis has a dependent object")
            .build(),
    )
}

#[tokio::test]
async fn destroy_waits_for_a_security_group_still_in_use() {
    let delete = mock!(Ec2::delete_security_group)
        .sequence()
        .error(still_in_use)
        .times(3)
        .output(|| DeleteSecurityGroupOutput::builder().build())
        .build();
    let mut rules = redis_group_only();
    rules.push(delete.clone());
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());

    let resources = deletables(&stack).await.expect("deletables");
    let outcome = destroy(
        resources,
        &Progress::with_live_lines(false),
        Pace::Local,
        Duration::from_secs(30),
    )
    .await;

    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(delete.num_calls(), 4);
}

#[tokio::test]
async fn destroy_names_a_security_group_refused_for_good() {
    let delete = mock!(Ec2::delete_security_group).then_error(still_in_use);
    let mut rules = redis_group_only();
    rules.push(delete);
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());

    let resources = deletables(&stack).await.expect("deletables");
    let Err(Leftovers(left)) = destroy(
        resources,
        &Progress::with_live_lines(false),
        Pace::Local,
        Duration::from_millis(500),
    )
    .await
    else {
        panic!("a group AWS keeps refusing cannot be deleted");
    };

    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, "security group chat-redis-sg (sg-redis)");
    assert!(left[0].1.contains("DependencyViolation"), "{}", left[0].1);
}

/// EC2's answer about a resource it does not know (yet).
fn unknown(code: &str) -> ErrorMetadata {
    ErrorMetadata::builder()
        .code(code)
        .message("The ID does not exist")
        .build()
}

/// A rule answering `$op` with EC2's `$code` for an id it does not know yet, `$times`
/// times, then success.
macro_rules! unknown_at_first {
    ($op:ident, $error:ident, $output:ident, $code:literal, $times:literal) => {
        mock!(Ec2::$op)
            .sequence()
            .error(|| aws_sdk_ec2::operation::$op::$error::generic(unknown($code)))
            .times($times)
            .output(|| aws_sdk_ec2::operation::$op::$output::builder().build())
            .repeatedly()
            .build()
    };
}

/// The value of the role tag a create call puts on its resource.
fn created_role(specifications: &[aws_sdk_ec2::types::TagSpecification]) -> String {
    specifications
        .iter()
        .flat_map(|specification| specification.tags())
        .find(|tag| tag.key() == Some(ROLE_TAG))
        .and_then(|tag| tag.value())
        .unwrap_or_default()
        .to_owned()
}

/// A first `up` in an empty account: every resource is created, and each call that
/// uses one just created is first answered as EC2 answers while its id has not
/// propagated (<https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>;
/// InvalidGroup.NotFound from AuthorizeSecurityGroupIngress right after
/// CreateSecurityGroup: aws/aws-sdk-js#318; InvalidRouteTableID.NotFound:
/// hashicorp/terraform#7104, retried since hashicorp/terraform#7156;
/// InvalidInternetGatewayID.NotFound on attach: hashicorp/terraform#6105).
#[tokio::test(start_paused = true)]
async fn a_new_network_is_built_while_ec2_does_not_know_its_new_parts_yet() {
    use aws_sdk_ec2::operation::create_internet_gateway::CreateInternetGatewayOutput;
    use aws_sdk_ec2::operation::create_route_table::CreateRouteTableOutput;
    use aws_sdk_ec2::operation::create_security_group::CreateSecurityGroupOutput;
    use aws_sdk_ec2::operation::create_subnet::CreateSubnetOutput;
    use aws_sdk_ec2::operation::create_vpc::CreateVpcOutput;
    use aws_sdk_ec2::operation::create_vpc_endpoint::CreateVpcEndpointOutput;

    let mut rules = region();
    rules.extend([
        mock!(Ec2::describe_vpcs).then_compute_output(|req| {
            // Only the VPC just created, asked for by id, exists.
            if req.vpc_ids().is_empty() {
                DescribeVpcsOutput::builder().build()
            } else {
                the_vpc()
            }
        }),
        mock!(Ec2::describe_subnets).then_output(|| DescribeSubnetsOutput::builder().build()),
        mock!(Ec2::describe_internet_gateways)
            .then_output(|| DescribeInternetGatewaysOutput::builder().build()),
        mock!(Ec2::describe_route_tables)
            .then_output(|| DescribeRouteTablesOutput::builder().build()),
        mock!(Ec2::describe_vpc_endpoints)
            .then_output(|| DescribeVpcEndpointsOutput::builder().build()),
        mock!(Ec2::describe_security_groups)
            .then_output(|| DescribeSecurityGroupsOutput::builder().build()),
        mock!(Ec2::create_vpc).then_output(|| {
            CreateVpcOutput::builder()
                .vpc(Vpc::builder().vpc_id("vpc-1").build())
                .build()
        }),
        mock!(Ec2::create_subnet).then_compute_output(|req| {
            let id = format!("subnet-{}", created_role(req.tag_specifications()));
            CreateSubnetOutput::builder()
                .subnet(Subnet::builder().subnet_id(id).build())
                .build()
        }),
        mock!(Ec2::create_internet_gateway).then_output(|| {
            CreateInternetGatewayOutput::builder()
                .internet_gateway(
                    InternetGateway::builder()
                        .internet_gateway_id("igw-1")
                        .build(),
                )
                .build()
        }),
        mock!(Ec2::create_route_table).then_compute_output(|req| {
            let id = format!("rtb-{}", created_role(req.tag_specifications()));
            CreateRouteTableOutput::builder()
                .route_table(RouteTable::builder().route_table_id(id).build())
                .build()
        }),
        mock!(Ec2::create_vpc_endpoint).then_output(|| {
            CreateVpcEndpointOutput::builder()
                .vpc_endpoint(VpcEndpoint::builder().vpc_endpoint_id("vpce-1").build())
                .build()
        }),
        mock!(Ec2::create_security_group).then_compute_output(|req| {
            CreateSecurityGroupOutput::builder()
                .group_id(format!("sg-{}", req.group_name().unwrap_or_default()))
                .build()
        }),
    ]);
    let attach = unknown_at_first!(
        attach_internet_gateway,
        AttachInternetGatewayError,
        AttachInternetGatewayOutput,
        "InvalidInternetGatewayID.NotFound",
        2
    );
    // The new table, then the gateway attached a moment ago, not known yet.
    let route = mock!(Ec2::create_route)
        .sequence()
        .error(|| {
            aws_sdk_ec2::operation::create_route::CreateRouteError::generic(unknown(
                "InvalidRouteTableID.NotFound",
            ))
        })
        .error(|| {
            aws_sdk_ec2::operation::create_route::CreateRouteError::generic(unknown(
                "InvalidGatewayID.NotFound",
            ))
        })
        .output(|| aws_sdk_ec2::operation::create_route::CreateRouteOutput::builder().build())
        .repeatedly()
        .build();
    let associate = unknown_at_first!(
        associate_route_table,
        AssociateRouteTableError,
        AssociateRouteTableOutput,
        "InvalidRouteTableID.NotFound",
        2
    );
    // The group itself, then the group a rule admits from, not known yet.
    let authorize = unknown_at_first!(
        authorize_security_group_ingress,
        AuthorizeSecurityGroupIngressError,
        AuthorizeSecurityGroupIngressOutput,
        "InvalidGroup.NotFound",
        3
    );
    // Each new group's default allow-all egress goes, the first revoke answered as for a
    // group EC2 does not know yet; the load balancer and the instances get theirs.
    let revoke_egress = mock!(Ec2::revoke_security_group_egress)
        .match_requests(|req| {
            matches!(req.ip_permissions(), [all] if all.ip_protocol() == Some("-1"))
        })
        .sequence()
        .error(|| {
            aws_sdk_ec2::operation::revoke_security_group_egress::RevokeSecurityGroupEgressError::generic(
                unknown("InvalidGroup.NotFound"),
            )
        })
        .output(|| {
            aws_sdk_ec2::operation::revoke_security_group_egress::RevokeSecurityGroupEgressOutput::builder().build()
        })
        .repeatedly()
        .build();
    let authorize_egress = mock!(Ec2::authorize_security_group_egress).then_output(|| {
        aws_sdk_ec2::operation::authorize_security_group_egress::AuthorizeSecurityGroupEgressOutput::builder().build()
    });
    rules.extend([
        attach.clone(),
        route.clone(),
        associate.clone(),
        authorize.clone(),
        revoke_egress.clone(),
        authorize_egress.clone(),
    ]);
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());

    let network = ensure(&stack, &example().zones, BUCKET)
        .await
        .expect("the network is built");

    assert_eq!(network.alb_security_group, "sg-chat-alb-sg");
    assert_eq!(network.private_route_table, "rtb-private-rt");
    assert_eq!(attach.num_calls(), 3);
    assert_eq!(route.num_calls(), 3);
    assert_eq!(associate.num_calls(), 2 + 4, "four subnets associated");
    assert_eq!(
        authorize.num_calls(),
        3 + 3,
        "three groups given their rules"
    );
    assert_eq!(revoke_egress.num_calls(), 1 + 3);
    assert_eq!(authorize_egress.num_calls(), 2, "Redis lets nothing out");
}

/// The characters EC2 allows in security group and rule descriptions, at most 255 of them
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_IpRange.html>); anything
/// else is `InvalidParameterValue`, which on a first `up` left the load balancer with no
/// egress at all (its default revoked, its own refused).
#[test]
fn every_rule_description_keeps_to_the_characters_ec2_allows() {
    let stack = testing::stack(testing::clients());
    let rules = [
        alb_ingress(&stack),
        alb_egress(&stack),
        instances_ingress(&stack, "sg-1"),
        instances_egress(&stack, "pl-1"),
        redis_ingress("sg-2"),
    ];
    for (_, description) in rules.iter().flatten() {
        assert!(
            description.len() <= 255
                && description
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c)),
            "EC2 refuses the rule description {description:?}"
        );
    }
}

/// Whether EC2's describe lists what a lost create made, at each lookup: not at the first
/// `unlisted`, then always (its tags reach the describe calls' filters late).
fn listed_after(unlisted: usize) -> impl Fn() -> bool {
    let lookups = std::sync::atomic::AtomicUsize::new(0);
    move || lookups.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= unlisted
}

/// DescribeVpcs as EC2 answers while a VPC made by a create whose answer was lost becomes
/// listed by its tags: not at the first `unlisted` lookups, then as `vpc-1`; by id, always.
fn vpc_listed_after(unlisted: usize) -> Rule {
    let listed = listed_after(unlisted);
    mock!(Ec2::describe_vpcs).then_compute_output(move |req| {
        if !req.vpc_ids().is_empty() || listed() {
            the_vpc()
        } else {
            DescribeVpcsOutput::builder().build()
        }
    })
}

/// EC2's CreateVpc takes no client token: a create that met a 503 may have made the VPC,
/// and the SDK's retry would make a second, which stops every later `up` (two VPCs
/// carrying the stack's tags). The lost create's VPC is looked up by its tags until EC2
/// lists it, and used.
#[tokio::test(start_paused = true)]
async fn a_vpc_whose_create_met_a_server_error_is_looked_up_not_made_twice() {
    let create = mock!(Ec2::create_vpc)
        .sequence()
        .http_status(503, None)
        .output(|| {
            aws_sdk_ec2::operation::create_vpc::CreateVpcOutput::builder()
                .vpc(Vpc::builder().vpc_id("vpc-2").build())
                .build()
        })
        .repeatedly()
        .build();
    // Not listed at the lookup before the create, nor at the first one after it.
    let describe = vpc_listed_after(2);
    let mut rules = region();
    rules.extend([create, describe]);
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());

    let vpc = ensure_vpc(&stack).await.unwrap();

    assert_eq!(vpc, "vpc-1");
    assert_eq!(rules[rules.len() - 2].num_calls(), 1, "CreateVpc sent once");
}

/// Throttling is answered before EC2 does anything: the SDK sends the create again. A
/// refusal made nothing either: it is said at once, with no lookup.
#[tokio::test(start_paused = true)]
async fn a_throttled_vpc_create_is_sent_again_and_a_refused_one_is_said() {
    let throttled_then_made = mock!(Ec2::create_vpc)
        .sequence()
        .error(|| {
            aws_sdk_ec2::operation::create_vpc::CreateVpcError::generic(
                ErrorMetadata::builder()
                    .code("RequestLimitExceeded")
                    .message("Request limit exceeded.")
                    .build(),
            )
        })
        .output(|| {
            aws_sdk_ec2::operation::create_vpc::CreateVpcOutput::builder()
                .vpc(Vpc::builder().vpc_id("vpc-1").build())
                .build()
        })
        .build();
    let mut rules = region();
    rules.extend([throttled_then_made, vpc_listed_after(1)]);
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());
    assert_eq!(ensure_vpc(&stack).await.unwrap(), "vpc-1");
    assert_eq!(rules[rules.len() - 2].num_calls(), 2);

    let refused = mock!(Ec2::create_vpc).then_error(|| {
        aws_sdk_ec2::operation::create_vpc::CreateVpcError::generic(
            ErrorMetadata::builder()
                .code("VpcLimitExceeded")
                .message("The maximum number of VPCs has been reached.")
                .build(),
        )
    });
    let unlisted = vpc_listed_after(usize::MAX);
    let mut rules = region();
    rules.extend([refused, unlisted]);
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());
    let err = format!("{:#}", ensure_vpc(&stack).await.unwrap_err());
    assert!(err.contains("VpcLimitExceeded"), "{err}");
    assert_eq!(rules[rules.len() - 2].num_calls(), 1);
    assert_eq!(
        rules[rules.len() - 1].num_calls(),
        1,
        "no lookup after a refusal"
    );
}

/// The same for the internet gateway, which takes no client token either: a create whose
/// connection was cut is looked up, and the gateway it made is attached.
#[tokio::test(start_paused = true)]
async fn an_internet_gateway_whose_create_was_cut_off_is_looked_up_and_attached() {
    let create = mock!(Ec2::create_internet_gateway)
        .sequence()
        .http_status(502, None)
        .output(|| {
            aws_sdk_ec2::operation::create_internet_gateway::CreateInternetGatewayOutput::builder()
                .internet_gateway(
                    InternetGateway::builder()
                        .internet_gateway_id("igw-2")
                        .build(),
                )
                .build()
        })
        .repeatedly()
        .build();
    let listed = listed_after(1);
    let describe = mock!(Ec2::describe_internet_gateways).then_compute_output(move |_| {
        DescribeInternetGatewaysOutput::builder()
            .set_internet_gateways(listed().then(|| {
                vec![
                    InternetGateway::builder()
                        .internet_gateway_id("igw-1")
                        .build(),
                ]
            }))
            .build()
    });
    let attach = mock!(Ec2::attach_internet_gateway)
        .match_requests(|req| req.internet_gateway_id() == Some("igw-1"))
        .then_output(|| {
            aws_sdk_ec2::operation::attach_internet_gateway::AttachInternetGatewayOutput::builder()
                .build()
        });
    let rules = [create, describe, attach];
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());

    assert_eq!(
        ensure_internet_gateway(&stack, "vpc-1").await.unwrap(),
        "igw-1"
    );
    assert_eq!(rules[0].num_calls(), 1, "CreateInternetGateway sent once");
    assert_eq!(rules[2].num_calls(), 1);
}

/// CreateSecurityGroup takes no client token either, and sent again after a lost answer
/// it is refused (`InvalidGroup.Duplicate`: the name is the VPC's once): the group the
/// first one made is looked up by its tags and used, its rules read from EC2.
#[tokio::test(start_paused = true)]
async fn a_security_group_whose_create_timed_out_is_looked_up_not_refused() {
    let create = mock!(Ec2::create_security_group)
        .sequence()
        .http_status(500, None)
        .output(|| {
            aws_sdk_ec2::operation::create_security_group::CreateSecurityGroupOutput::builder()
                .group_id("sg-2")
                .build()
        })
        .repeatedly()
        .build();
    let listed = listed_after(2);
    let describe = mock!(Ec2::describe_security_groups).then_compute_output(move |_| {
        DescribeSecurityGroupsOutput::builder()
            .set_security_groups(listed().then(|| {
                vec![
                    SecurityGroup::builder()
                        .group_id("sg-1")
                        .ip_permissions(tcp_from_group(6379, "sg-instances-sg"))
                        .build(),
                ]
            }))
            .build()
    });
    let rules = [create, describe];

    assert_eq!(redis_group_with(&rules).await, "sg-1");
    assert_eq!(rules[0].num_calls(), 1, "CreateSecurityGroup sent once");
}

/// The Redis security group `up` ends with, EC2 answering by `rules`.
async fn redis_group_with(rules: &[Rule]) -> String {
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());
    ensure_security_group(
        &stack,
        "vpc-1",
        "redis-sg",
        redis_ingress("sg-instances-sg"),
    )
    .await
    .unwrap()
    .id
}

/// EC2's error answer with `code`, as its query protocol sends it (HTTP 400).
fn ec2_refusal(code: &str, message: &str) -> String {
    format!(
        "<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>\
         </Errors><RequestID>1</RequestID></Response>"
    )
}

/// An unattached stack gateway `igw-1`, then (after the first lookup) attached to
/// `attached_to`.
fn gateway_attached_after_first_lookup(attached_to: &'static str) -> Rule {
    let listed = listed_after(1);
    mock!(Ec2::describe_internet_gateways).then_compute_output(move |_| {
        let mut igw = InternetGateway::builder().internet_gateway_id("igw-1");
        if listed() {
            igw = igw.attachments(
                InternetGatewayAttachment::builder()
                    .vpc_id(attached_to)
                    .state(AttachmentStatus::from("available"))
                    .build(),
            );
        }
        DescribeInternetGatewaysOutput::builder()
            .internet_gateways(igw.build())
            .build()
    })
}

/// AttachInternetGateway whose first answer is lost (a 503): the SDK's second attempt is
/// answered `Resource.AlreadyAssociated` (errors-overview), which AWS also answers when
/// the gateway is attached to another VPC.
fn attach_answered_already() -> Rule {
    mock!(Ec2::attach_internet_gateway)
        .sequence()
        .http_status(503, None)
        .http_status(
            400,
            Some(ec2_refusal(
                "Resource.AlreadyAssociated",
                "resource igw-1 is already attached to network vpc-1",
            )),
        )
        .build()
}

/// An attach whose answer was lost and whose second attempt is answered "already
/// attached" is read back: attached to the stack's VPC, it is done, and `up` goes on.
#[tokio::test(start_paused = true)]
async fn an_attach_whose_answer_was_lost_is_read_back_not_refused() {
    let rules = [
        gateway_attached_after_first_lookup("vpc-1"),
        attach_answered_already(),
    ];
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());

    assert_eq!(
        ensure_internet_gateway(&stack, "vpc-1").await.unwrap(),
        "igw-1"
    );
    assert_eq!(rules[1].num_calls(), 2, "the SDK sent the attach again");
}

/// The same answer while the gateway is attached to another VPC is the error it is.
#[tokio::test(start_paused = true)]
async fn an_attach_answered_already_while_attached_elsewhere_is_an_error() {
    let rules = [
        gateway_attached_after_first_lookup("vpc-other"),
        attach_answered_already(),
    ];
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());

    let err = format!(
        "{:#}",
        ensure_internet_gateway(&stack, "vpc-1").await.unwrap_err()
    );
    assert!(err.contains("Resource.AlreadyAssociated"), "{err}");
    assert!(err.contains("not in place"), "{err}");
}

/// The public route table's default route and subnet association, each sent once and its
/// answer lost (a 500), the SDK's second attempt answered as already made
/// (`RouteAlreadyExists`; `Resource.AlreadyAssociated`, which terraform-provider-aws#38960
/// shows AWS answering an association it made): both are read back from the table and
/// `up` goes on.
#[tokio::test(start_paused = true)]
async fn a_route_and_an_association_whose_answers_were_lost_are_read_back() {
    let by_stack_tags = RouteTable::builder().route_table_id("rtb-1").build();
    let by_id = RouteTable::builder()
        .route_table_id("rtb-1")
        .routes(
            Route::builder()
                .destination_cidr_block("0.0.0.0/0")
                .gateway_id("igw-1")
                .state(aws_sdk_ec2::types::RouteState::Active)
                .build(),
        )
        .associations(
            RouteTableAssociation::builder()
                .subnet_id("subnet-a")
                .build(),
        )
        .associations(
            RouteTableAssociation::builder()
                .subnet_id("subnet-b")
                .build(),
        )
        .build();
    let describe = mock!(Ec2::describe_route_tables).then_compute_output(move |req| {
        let table = match (req.route_table_ids().is_empty(), req.filters().len()) {
            (false, _) => Some(by_id.clone()),
            // Where each subnet is associated now: nowhere.
            (true, 1) => None,
            (true, _) => Some(by_stack_tags.clone()),
        };
        DescribeRouteTablesOutput::builder()
            .set_route_tables(table.map(|table| vec![table]))
            .build()
    });
    let create_route = mock!(Ec2::create_route)
        .sequence()
        .http_status(500, None)
        .http_status(
            400,
            Some(ec2_refusal(
                "RouteAlreadyExists",
                "The route identified by 0.0.0.0/0 already exists.",
            )),
        )
        .build();
    let associated = ec2_refusal(
        "Resource.AlreadyAssociated",
        "the specified association for route table rtb-1 conflicts with an existing association",
    );
    let associate = mock!(Ec2::associate_route_table)
        .sequence()
        .http_status(500, None)
        .http_status(400, Some(associated.clone()))
        .http_status(500, None)
        .http_status(400, Some(associated))
        .build();
    let rules = [describe, create_route, associate];
    let stack = stack_with(&rules.iter().collect::<Vec<_>>());

    let id = ensure_route_table(
        &stack,
        "vpc-1",
        "public-rt",
        &["subnet-a".to_owned(), "subnet-b".to_owned()],
        Some("igw-1"),
    )
    .await
    .unwrap();

    assert_eq!(id, "rtb-1");
    assert_eq!(rules[1].num_calls(), 2);
    assert_eq!(rules[2].num_calls(), 4, "two subnets, each sent twice");
}

/// A rule authorized with its answer lost is answered `InvalidPermission.Duplicate` at
/// the SDK's second attempt: the group is read back, the rule is there, `up` goes on.
#[tokio::test(start_paused = true)]
async fn a_rule_whose_authorize_answer_was_lost_is_read_back() {
    let read_back = listed_after(1);
    let describe = mock!(Ec2::describe_security_groups).then_compute_output(move |_| {
        let group = SecurityGroup::builder().group_id("sg-1");
        let group = if read_back() {
            group.ip_permissions(tcp_from_group(6379, "sg-instances-sg"))
        } else {
            group
        };
        DescribeSecurityGroupsOutput::builder()
            .security_groups(group.build())
            .build()
    });
    let authorize = mock!(Ec2::authorize_security_group_ingress)
        .sequence()
        .http_status(500, None)
        .http_status(
            400,
            Some(ec2_refusal(
                "InvalidPermission.Duplicate",
                "the specified rule \"peer: sg-instances-sg, TCP, from port: 6379, to port: \
                 6379, ALLOW\" already exists",
            )),
        )
        .build();
    let rules = [describe, authorize];

    assert_eq!(redis_group_with(&rules).await, "sg-1");
    assert_eq!(rules[1].num_calls(), 2);
}
