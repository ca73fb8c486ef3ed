//! How traffic leaves the subnets: the internet gateway and the public route table whose
//! default route goes there (the load balancer's subnets); the private route table with no
//! default route, and the S3 gateway endpoint on it, whose policy admits only the stack's
//! artifact bucket and the Amazon Linux repositories (how the instances fetch the binary
//! with no NAT gateway). A route, subnet association or endpoint policy changed by hand
//! is put back.

use std::collections::HashSet;

use anyhow::{Context, Result};
use aws_sdk_ec2::operation::create_internet_gateway::CreateInternetGatewayError;
use aws_sdk_ec2::types::{
    AttachmentStatus, InternetGateway, ResourceType, Route, RouteState, RouteTable, State,
    VpcEndpointType,
};

use super::unrepeated::{Made, create_unrepeated, only_throttling_retried};
use super::{filter, single};
use crate::aws::{Call, EC2_NEW, change_once, ec2_stack_filters, ec2_tags, once_known};
use crate::engine::{Action, Step, planned_id};
use crate::stack::Stack;

pub(super) async fn ensure_internet_gateway(stack: &Stack, vpc_id: &str) -> Result<String> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name("igw");
    let step = stack.progress.step(format!("internet gateway {name}"));
    let find = || async {
        let found = ec2
            .describe_internet_gateways()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some("igw"))))
            .send()
            .await
            .call(format!("DescribeInternetGateways {name}"))?;
        single(found.internet_gateways().to_vec(), "internet gateway")
    };
    let work = async {
        let (id, attached) = match find().await? {
            Some(igw) => {
                let id = igw
                    .internet_gateway_id()
                    .context("internet gateway without an id")?
                    .to_owned();
                (id, attached_to(&igw, vpc_id))
            }
            None => {
                if !stack.make(Action::Create, format!("internet gateway {name}"), "") {
                    return Ok(planned_id("internet gateway"));
                }
                step.set("creating");
                let create = || {
                    ec2.create_internet_gateway()
                        .tag_specifications(ec2_tags(
                            &stack.names,
                            "igw",
                            ResourceType::InternetGateway,
                        ))
                        .customize()
                        .config_override(only_throttling_retried::<CreateInternetGatewayError>())
                        .send()
                };
                let call = format!("CreateInternetGateway {name}");
                let igw = match create_unrepeated(stack.pace, &call, create, find).await? {
                    Made::Created(created) => created.internet_gateway,
                    // A lost create's gateway, not attached yet.
                    Made::Found(igw) => Some(igw),
                };
                let id = igw
                    .and_then(|igw| igw.internet_gateway_id)
                    .context("CreateInternetGateway returned no id")?;
                (id, false)
            }
        };
        if !attached
            && stack.make(
                Action::Update,
                format!("internet gateway {name}"),
                format!("attach to {vpc_id}"),
            )
        {
            step.set("attaching");
            let call = format!("AttachInternetGateway {id} {vpc_id}");
            let attach = || {
                ec2.attach_internet_gateway()
                    .internet_gateway_id(&id)
                    .vpc_id(vpc_id)
                    .send()
            };
            let in_place = async || Ok(find().await?.is_some_and(|igw| attached_to(&igw, vpc_id)));
            change_once(
                stack.pace,
                &call,
                &EC2_NEW,
                &[ALREADY_ASSOCIATED],
                attach,
                in_place,
            )
            .await?;
        }
        Ok(id)
    };
    step.run(work, Clone::clone).await
}

/// EC2's answer to an attachment or association that exists already: "Resource.AlreadyAssociated"
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).
const ALREADY_ASSOCIATED: &str = "Resource.AlreadyAssociated";

/// Whether `igw` is attached to `vpc_id`: AWS reports an attached gateway as `available`,
/// not `attached`.
fn attached_to(igw: &InternetGateway, vpc_id: &str) -> bool {
    igw.attachments().iter().any(|attachment| {
        attachment.vpc_id() == Some(vpc_id)
            && !matches!(
                attachment.state(),
                Some(AttachmentStatus::Detached | AttachmentStatus::Detaching)
            )
    })
}

/// A route table of `role` associated with `subnets`; with `internet_gateway`, its
/// default route goes there, without, it has no default route at all (the private
/// subnets reach nothing outside the VPC but S3, through the endpoint).
pub(super) async fn ensure_route_table(
    stack: &Stack,
    vpc_id: &str,
    role: &str,
    subnets: &[String; 2],
    internet_gateway: Option<&str>,
) -> Result<String> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name(role);
    let step = stack.progress.step(format!("route table {name}"));
    let work = async {
        let found = ec2
            .describe_route_tables()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some(role))))
            .filters(filter("vpc-id", vpc_id))
            .send()
            .await
            .call(format!("DescribeRouteTables {name}"))?;
        let table = match single(found.route_tables().to_vec(), "route table")? {
            Some(table) => table,
            None => {
                let routes = match internet_gateway {
                    Some(_) => "default route to the internet gateway",
                    None => "no default route",
                };
                let reason = format!("{routes}, for {}", subnets.join(" "));
                if !stack.make(Action::Create, format!("route table {name}"), reason) {
                    return Ok(planned_id("route table"));
                }
                step.set("creating");
                let created = ec2
                    .create_route_table()
                    .vpc_id(vpc_id)
                    .tag_specifications(ec2_tags(&stack.names, role, ResourceType::RouteTable))
                    .send()
                    .await
                    .call(format!("CreateRouteTable {name}"))?;
                created
                    .route_table()
                    .cloned()
                    .context("CreateRouteTable returned no route table")?
            }
        };
        let id = table
            .route_table_id()
            .context("route table without an id")?
            .to_owned();
        ensure_default_route(stack, &step, &table, &id, internet_gateway).await?;
        ensure_associations(stack, &step, &table, &id, subnets).await?;
        Ok(id)
    };
    step.run(work, Clone::clone).await
}

pub(super) const DEFAULT_ROUTE: &str = "0.0.0.0/0";

async fn ensure_default_route(
    stack: &Stack,
    step: &Step,
    table: &RouteTable,
    id: &str,
    internet_gateway: Option<&str>,
) -> Result<()> {
    let ec2 = &stack.clients.ec2;
    let current = table
        .routes()
        .iter()
        .find(|route| route.destination_cidr_block() == Some(DEFAULT_ROUTE));
    let route_change = |what: String| stack.make(Action::Update, format!("route table {id}"), what);
    match (current, internet_gateway) {
        (None, None) => {}
        (Some(route), Some(igw)) if goes_to(route, igw) => {}
        (None, Some(igw)) => {
            if !route_change(format!("add the default route to {igw}")) {
                return Ok(());
            }
            step.set("adding the default route");
            let call = format!("CreateRoute {id} {DEFAULT_ROUTE} -> {igw}");
            let create = || {
                ec2.create_route()
                    .route_table_id(id)
                    .destination_cidr_block(DEFAULT_ROUTE)
                    .gateway_id(igw)
                    .send()
            };
            let in_place = async || {
                let table = route_table(stack, id).await?;
                Ok(table.routes().iter().any(|route| {
                    route.destination_cidr_block() == Some(DEFAULT_ROUTE) && goes_to(route, igw)
                }))
            };
            // "A route for the specified CIDR block already exists in this route table"
            // (errors-overview).
            change_once(
                stack.pace,
                &call,
                &EC2_NEW,
                &["RouteAlreadyExists"],
                create,
                in_place,
            )
            .await?;
        }
        (Some(_), Some(igw)) => {
            if !route_change(format!("point the default route at {igw}")) {
                return Ok(());
            }
            step.set("fixing the default route");
            ec2.replace_route()
                .route_table_id(id)
                .destination_cidr_block(DEFAULT_ROUTE)
                .gateway_id(igw)
                .send()
                .await
                .call(format!("ReplaceRoute {id} {DEFAULT_ROUTE} -> {igw}"))?;
        }
        (Some(_), None) => {
            if !route_change("remove a default route added by hand".to_owned()) {
                return Ok(());
            }
            step.set("removing a default route");
            ec2.delete_route()
                .route_table_id(id)
                .destination_cidr_block(DEFAULT_ROUTE)
                .send()
                .await
                .call(format!("DeleteRoute {id} {DEFAULT_ROUTE}"))?;
        }
    }
    Ok(())
}

/// Whether `route` sends its traffic to the gateway `igw`.
fn goes_to(route: &Route, igw: &str) -> bool {
    route.gateway_id() == Some(igw) && route.state() != Some(&RouteState::Blackhole)
}

/// The route table `id`, as EC2 holds it now.
async fn route_table(stack: &Stack, id: &str) -> Result<RouteTable> {
    let call = format!("DescribeRouteTables {id}");
    let described = once_known(stack.pace, &call, &EC2_NEW, || {
        stack
            .clients
            .ec2
            .describe_route_tables()
            .route_table_ids(id)
            .send()
    })
    .await?;
    described
        .route_tables()
        .first()
        .cloned()
        .with_context(|| format!("{call} returned no route table"))
}

async fn ensure_associations(
    stack: &Stack,
    step: &Step,
    table: &RouteTable,
    id: &str,
    subnets: &[String; 2],
) -> Result<()> {
    let ec2 = &stack.clients.ec2;
    let associated: HashSet<&str> = table
        .associations()
        .iter()
        .filter_map(|association| association.subnet_id())
        .collect();
    for subnet in subnets {
        if associated.contains(subnet.as_str())
            || !stack.make(
                Action::Update,
                format!("route table {id}"),
                format!("associate {subnet}"),
            )
        {
            continue;
        }
        step.set(&format!("associating {subnet}"));
        // A subnet associated elsewhere (drift) is moved, not associated twice.
        let elsewhere = ec2
            .describe_route_tables()
            .filters(filter("association.subnet-id", subnet))
            .send()
            .await
            .call(format!(
                "DescribeRouteTables association.subnet-id={subnet}"
            ))?;
        let association = elsewhere
            .route_tables()
            .iter()
            .flat_map(|table| table.associations())
            .find(|association| association.subnet_id() == Some(subnet.as_str()))
            .and_then(|association| association.route_table_association_id());
        match association {
            Some(association) => {
                let call = format!("ReplaceRouteTableAssociation {subnet} -> {id}");
                once_known(stack.pace, &call, &EC2_NEW, || {
                    ec2.replace_route_table_association()
                        .association_id(association)
                        .route_table_id(id)
                        .send()
                })
                .await?;
            }
            None => {
                let call = format!("AssociateRouteTable {subnet} -> {id}");
                let associate = || {
                    ec2.associate_route_table()
                        .route_table_id(id)
                        .subnet_id(subnet)
                        .send()
                };
                let in_place = async || {
                    let table = route_table(stack, id).await?;
                    Ok(table
                        .associations()
                        .iter()
                        .any(|association| association.subnet_id() == Some(subnet.as_str())))
                };
                change_once(
                    stack.pace,
                    &call,
                    &EC2_NEW,
                    &[ALREADY_ASSOCIATED],
                    associate,
                    in_place,
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// States of an endpoint that is gone or going. EC2 sends them in lower case
/// (`deleted`), unlike the SDK's enum (`Deleted`), so they are compared by name.
pub(super) fn endpoint_gone(state: Option<&State>) -> bool {
    state.is_some_and(|state| {
        ["deleted", "deleting", "failed", "rejected", "expired"]
            .iter()
            .any(|gone| state.as_str().eq_ignore_ascii_case(gone))
    })
}

/// What the instances may read through the S3 gateway endpoint: the stack's artifact
/// bucket, and the Amazon Linux 2023 package repositories so that `dnf` keeps working
/// (<https://docs.aws.amazon.com/linux/al2023/ug/managing-repos-os-updates.html>).
/// Nothing else in S3 is reachable from the private subnets.
pub(super) fn endpoint_policy(bucket: &str, region: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "StackArtifacts",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{bucket}/*")
            },
            {
                "Sid": "AmazonLinuxRepositories",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::al2023-repos-{region}-de612dc2/*")
            }
        ]
    })
}

/// The S3 gateway endpoint on the private route table only, with [`endpoint_policy`].
pub(super) async fn ensure_s3_endpoint(
    stack: &Stack,
    vpc_id: &str,
    route_table: &str,
    bucket: &str,
) -> Result<String> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name("s3-endpoint");
    let service = format!("com.amazonaws.{}.s3", stack.region);
    let policy = endpoint_policy(bucket, &stack.region);
    let step = stack.progress.step(format!("s3 endpoint {name}"));
    let work = async {
        // Its page size is not documented: every page is read.
        let found: Vec<_> = ec2
            .describe_vpc_endpoints()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some("s3-endpoint"))))
            .filters(filter("vpc-id", vpc_id))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .call(format!("DescribeVpcEndpoints {name}"))?;
        let live: Vec<_> = found
            .into_iter()
            .filter(|endpoint| !endpoint_gone(endpoint.state()))
            .collect();
        if let Some(endpoint) = single(live, "S3 endpoint")? {
            let id = endpoint
                .vpc_endpoint_id()
                .context("VPC endpoint without an id")?
                .to_owned();
            let tables = endpoint.route_table_ids();
            let add = !tables.iter().any(|table| table == route_table);
            let remove: Vec<String> = tables
                .iter()
                .filter(|table| *table != route_table)
                .cloned()
                .collect();
            // Compared by statements: EC2 hands the document back re-serialized (LocalStack
            // even drops `Version`), and only the statements grant anything.
            let policy_drifted = endpoint
                .policy_document()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                .is_none_or(|current| current["Statement"] != policy["Statement"]);
            let mut fixes = Vec::new();
            if add || !remove.is_empty() {
                fixes.push("route tables");
            }
            if policy_drifted {
                fixes.push("policy");
            }
            if !fixes.is_empty()
                && stack.make(
                    Action::Update,
                    format!("s3 endpoint {name}"),
                    format!("set its {}", fixes.join(" and ")),
                )
            {
                step.set("fixing its route tables and policy");
                ec2.modify_vpc_endpoint()
                    .vpc_endpoint_id(&id)
                    .set_add_route_table_ids(add.then(|| vec![route_table.to_owned()]))
                    .set_remove_route_table_ids((!remove.is_empty()).then_some(remove))
                    .set_policy_document(policy_drifted.then(|| policy.to_string()))
                    .send()
                    .await
                    .call(format!("ModifyVpcEndpoint {id}"))?;
            }
            return Ok(id);
        }
        let reason = format!("{service} on {route_table}, admitting {bucket}");
        if !stack.make(Action::Create, format!("s3 endpoint {name}"), reason) {
            return Ok(planned_id("s3 endpoint"));
        }
        step.set("creating");
        let call = format!("CreateVpcEndpoint {name} {service}");
        let created = once_known(stack.pace, &call, &EC2_NEW, || {
            ec2.create_vpc_endpoint()
                .vpc_id(vpc_id)
                .vpc_endpoint_type(VpcEndpointType::Gateway)
                .service_name(&service)
                .route_table_ids(route_table)
                .policy_document(policy.to_string())
                .tag_specifications(ec2_tags(
                    &stack.names,
                    "s3-endpoint",
                    ResourceType::VpcEndpoint,
                ))
                .send()
        })
        .await?;
        Ok(created
            .vpc_endpoint()
            .and_then(|endpoint| endpoint.vpc_endpoint_id())
            .context("CreateVpcEndpoint returned no id")?
            .to_owned())
    };
    step.run(work, |id| format!("{id} {service}")).await
}
