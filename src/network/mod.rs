//! The stack's network: the VPC over two availability zones, its public subnets (the
//! load balancer only) and private subnets (instances and Redis), the internet gateway
//! and public route table, the private route table with an S3 gateway endpoint (how
//! instances fetch the binary with no NAT gateway, public IP or IAM role), and the three
//! least-privilege security groups. Every resource is found by its stack and role tags;
//! `ensure` creates what is missing and fixes what drifted, and changes nothing when all
//! matches.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure as check};
use aws_sdk_ec2::types::{
    AttachmentStatus, AttributeBooleanValue, Filter, LocationType, ResourceType, RouteState,
    RouteTable, State, Tag, VpcAttributeName, VpcEndpointType, VpcState,
};
use futures::future::try_join_all;
use futures::try_join;

use crate::aws::{Call, EC2_NEW, ec2_stack_filters, ec2_tags, error_code, once_known};
use crate::engine::{Action, Step, is_planned, planned_id, wait_for};
use crate::stack::Stack;

mod security_groups;
mod teardown;
#[cfg(test)]
mod tests;

use security_groups::{
    alb_egress, alb_ingress, close_default_group, ensure_egress, ensure_security_group,
    instances_egress, instances_ingress, redis_ingress, s3_prefix_list,
};
pub use teardown::deletables;

/// The network as the other modules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub vpc_id: String,
    pub zones: [String; 2],
    pub public_subnets: [String; 2],
    pub private_subnets: [String; 2],
    pub private_route_table: String,
    /// The S3 gateway endpoint the instances fetch the binary through.
    pub s3_endpoint: String,
    pub alb_security_group: String,
    pub instance_security_group: String,
    pub redis_security_group: String,
}

/// A network as [`ensure`] returns it, for the tests of the modules that use one.
#[cfg(test)]
pub fn example() -> Network {
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

/// Roles of the subnets, in the order of [`crate::spec::StackSpec::subnet_cidrs`].
const SUBNET_ROLES: [&str; 4] = ["public-a", "public-b", "private-a", "private-b"];
const ALB_SG: &str = "alb-sg";
const INSTANCES_SG: &str = "instances-sg";
const REDIS_SG: &str = "redis-sg";
const REDIS_PORT: i32 = 6379;

/// Finds, creates or fixes the whole network; a second run makes no mutating call.
/// `zones` are preflight's ([`zones`]), where new subnets go; `bucket` is the stack's
/// artifact bucket, the one the S3 endpoint admits besides the package repositories.
pub async fn ensure(stack: &Stack, zones: &[String; 2], bucket: &str) -> Result<Network> {
    let vpc_id = ensure_vpc(stack).await?;
    let vpc = vpc_id.as_str();

    let routing = async {
        let cidrs = stack.spec.subnet_cidrs();
        let subnets =
            try_join_all(SUBNET_ROLES.iter().zip(&cidrs).enumerate().map(
                |(index, (role, cidr))| ensure_subnet(stack, vpc, role, cidr, &zones[index % 2]),
            ));
        let (subnets, igw) = try_join!(subnets, ensure_internet_gateway(stack, vpc))?;
        // The zones are the public subnets': an existing subnet stays where it is.
        let zones = [subnets[0].1.clone(), subnets[1].1.clone()];
        let public = [subnets[0].0.clone(), subnets[1].0.clone()];
        let private = [subnets[2].0.clone(), subnets[3].0.clone()];
        let private_routing = async {
            let table = ensure_route_table(stack, vpc, "private-rt", &private, None).await?;
            let endpoint = ensure_s3_endpoint(stack, vpc, &table, bucket).await?;
            Ok::<_, anyhow::Error>((table, endpoint))
        };
        let (_, (private_table, s3_endpoint)) = try_join!(
            ensure_route_table(stack, vpc, "public-rt", &public, Some(&igw)),
            private_routing
        )?;
        Ok::<_, anyhow::Error>((zones, public, private, private_table, s3_endpoint))
    };
    let groups = async {
        // Each group's rules reference the one before it, hence the chain.
        let alb = ensure_security_group(stack, vpc, ALB_SG, alb_ingress(stack)).await?;
        let instances =
            ensure_security_group(stack, vpc, INSTANCES_SG, instances_ingress(stack, &alb.id))
                .await?;
        let redis =
            ensure_security_group(stack, vpc, REDIS_SG, redis_ingress(&instances.id)).await?;
        // Egress names no group, so no two groups name each other (and can be deleted).
        let s3 = s3_prefix_list(stack).await?;
        try_join!(
            ensure_egress(stack, ALB_SG, &alb, alb_egress(stack)),
            ensure_egress(
                stack,
                INSTANCES_SG,
                &instances,
                instances_egress(stack, &s3)
            ),
            ensure_egress(stack, REDIS_SG, &redis, Vec::new()),
            close_default_group(stack, vpc),
        )?;
        Ok::<_, anyhow::Error>((alb.id, instances.id, redis.id))
    };
    let (
        (zones, public_subnets, private_subnets, private_route_table, s3_endpoint),
        (alb, instances, redis),
    ) = try_join!(routing, groups)?;

    Ok(Network {
        vpc_id,
        zones,
        public_subnets,
        private_subnets,
        private_route_table,
        s3_endpoint,
        alb_security_group: alb,
        instance_security_group: instances,
        redis_security_group: redis,
    })
}

/// The first two available zones of the region where the instance type is offered, by
/// name: stable from one run to the next. Preflight asks, so that a type offered in fewer
/// than two zones stops `up` before anything is created.
pub async fn zones(stack: &Stack) -> Result<[String; 2]> {
    let instance_type = &stack.spec.instances.instance_type;
    let ec2 = &stack.clients.ec2;
    let (out, offerings) = try_join!(
        async {
            ec2.describe_availability_zones()
                .filters(filter("state", "available"))
                .send()
                .await
                .call("DescribeAvailabilityZones")
        },
        async {
            let pages = ec2
                .describe_instance_type_offerings()
                .location_type(LocationType::AvailabilityZone)
                .filters(filter("instance-type", instance_type))
                .into_paginator()
                .items()
                .send()
                .collect::<Vec<_>>()
                .await;
            let mut zones = HashSet::new();
            for offering in pages {
                let offering =
                    offering.call(format!("DescribeInstanceTypeOfferings {instance_type}"))?;
                zones.extend(offering.location().map(str::to_owned));
            }
            Ok::<_, anyhow::Error>(zones)
        }
    )?;
    let mut available: Vec<String> = out
        .availability_zones()
        .iter()
        // Local and Wavelength zones lack services the stack needs (ElastiCache, ALB).
        .filter(|zone| {
            zone.zone_type()
                .is_none_or(|kind| kind == "availability-zone")
        })
        .filter_map(|zone| zone.zone_name().map(str::to_owned))
        .collect();
    available.sort();
    available.dedup();
    let offered: Vec<&String> = available
        .iter()
        .filter(|zone| offerings.contains(*zone))
        .collect();
    match offered.as_slice() {
        [a, b, ..] => Ok([(*a).clone(), (*b).clone()]),
        _ if available.len() < 2 => bail!(
            "region {} has fewer than two available availability zones; the stack needs two \
             (pick another region)",
            stack.region
        ),
        _ => bail!(
            "instance type {instance_type} is offered in {} of the zones of {} ({}); the \
             stack spreads its instances over two: pick another instances.type, or another \
             region",
            match offered.as_slice() {
                [] => "none".to_owned(),
                zones => format!(
                    "only {}",
                    zones
                        .iter()
                        .map(|z| z.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            stack.region,
            available.join(", ")
        ),
    }
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn name_tag(tags: &[Tag]) -> Option<&str> {
    tags.iter()
        .find(|tag| tag.key() == Some("Name"))
        .and_then(Tag::value)
}

/// Only one resource of each role may exist: two mean someone copied a tag by hand.
fn single<T>(mut found: Vec<T>, what: &str) -> Result<Option<T>> {
    check!(
        found.len() <= 1,
        "found {} {what}s carrying this stack's tags where there should be one: \
         delete the extra ones (or their realtime-stack tags) and run again",
        found.len()
    );
    Ok(found.pop())
}

async fn ensure_vpc(stack: &Stack) -> Result<String> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name("vpc");
    let cidr = &stack.spec.network.cidr;
    let step = stack.progress.step(format!("vpc {name}"));
    let work = async {
        step.set("looking up");
        let found = ec2
            .describe_vpcs()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some("vpc"))))
            .send()
            .await
            .call(format!("DescribeVpcs {name}"))?;
        let vpc_id = match single(found.vpcs().to_vec(), "VPC")? {
            Some(vpc) => {
                let id = vpc.vpc_id().context("VPC without an id")?.to_owned();
                check!(
                    vpc.cidr_block() == Some(cidr.as_str()),
                    "VPC {name} ({id}) has the range {}, but stack.yaml asks for {cidr}: a VPC's \
                     range cannot change; destroy the stack first, or set network.cidr back",
                    vpc.cidr_block().unwrap_or("unknown")
                );
                id
            }
            None => {
                if !stack.make(Action::Create, format!("vpc {name}"), cidr.as_str()) {
                    return Ok(planned_id("vpc"));
                }
                step.set("creating");
                let created = ec2
                    .create_vpc()
                    .cidr_block(cidr)
                    .tag_specifications(ec2_tags(&stack.names, "vpc", ResourceType::Vpc))
                    .send()
                    .await
                    .call(format!("CreateVpc {name}"))?;
                let id = created
                    .vpc()
                    .and_then(|vpc| vpc.vpc_id())
                    .context("CreateVpc returned no VPC id")?
                    .to_owned();
                wait_for_vpc(stack, &step, &id).await?;
                id
            }
        };
        ensure_dns_attributes(stack, &step, &vpc_id).await?;
        Ok(vpc_id)
    };
    step.run(work, Clone::clone).await
}

async fn wait_for_vpc(stack: &Stack, step: &Step, id: &str) -> Result<()> {
    wait_for(
        step,
        stack.pace,
        "the VPC to be available",
        stack.pace.limit(Duration::from_secs(300)),
        None,
        || async {
            let out = stack.clients.ec2.describe_vpcs().vpc_ids(id).send().await;
            match out {
                // Just created: EC2 may not list it yet.
                Err(err) if error_code(&err) == Some("InvalidVpcID.NotFound") => Ok(None),
                out => {
                    let out = out.call(format!("DescribeVpcs {id}"))?;
                    let available = out
                        .vpcs()
                        .iter()
                        .any(|vpc| vpc.state() == Some(&VpcState::Available));
                    Ok(available.then_some(()))
                }
            }
        },
    )
    .await
}

/// DNS support and hostnames: instances resolve the S3 endpoint and the Redis endpoint.
async fn ensure_dns_attributes(stack: &Stack, step: &Step, vpc_id: &str) -> Result<()> {
    let ec2 = &stack.clients.ec2;
    if is_planned(vpc_id) {
        return Ok(());
    }
    for attribute in [
        VpcAttributeName::EnableDnsSupport,
        VpcAttributeName::EnableDnsHostnames,
    ] {
        let out = ec2
            .describe_vpc_attribute()
            .vpc_id(vpc_id)
            .attribute(attribute.clone())
            .send()
            .await
            .call(format!("DescribeVpcAttribute {vpc_id} {attribute}"))?;
        let value = match attribute {
            VpcAttributeName::EnableDnsSupport => out.enable_dns_support(),
            _ => out.enable_dns_hostnames(),
        };
        if value.and_then(|value| value.value()) == Some(true)
            || !stack.make(
                Action::Update,
                format!("vpc {vpc_id}"),
                format!("turn {attribute} on"),
            )
        {
            continue;
        }
        step.set(&format!("turning {attribute} on"));
        let on = AttributeBooleanValue::builder().value(true).build();
        // One attribute per call: EC2 refuses both at once.
        let modify = ec2.modify_vpc_attribute().vpc_id(vpc_id);
        let modify = match attribute {
            VpcAttributeName::EnableDnsSupport => modify.enable_dns_support(on),
            _ => modify.enable_dns_hostnames(on),
        };
        modify
            .send()
            .await
            .call(format!("ModifyVpcAttribute {vpc_id} {attribute}"))?;
    }
    Ok(())
}

async fn ensure_subnet(
    stack: &Stack,
    vpc_id: &str,
    role: &str,
    cidr: &str,
    zone: &str,
) -> Result<(String, String)> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name(role);
    let step = stack.progress.step(format!("subnet {name}"));
    let work = async {
        let found = ec2
            .describe_subnets()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some(role))))
            .filters(filter("vpc-id", vpc_id))
            .send()
            .await
            .call(format!("DescribeSubnets {name}"))?;
        if let Some(subnet) = single(found.subnets().to_vec(), "subnet")? {
            let id = subnet
                .subnet_id()
                .context("subnet without an id")?
                .to_owned();
            // A subnet's range cannot change; one of another range means network.cidr
            // changed, which the VPC check already explains.
            check!(
                subnet.cidr_block() == Some(cidr),
                "subnet {name} ({id}) has the range {}, but stack.yaml implies {cidr}: \
                 destroy the stack first, or set network.cidr back",
                subnet.cidr_block().unwrap_or("unknown")
            );
            let zone = subnet.availability_zone().unwrap_or(zone).to_owned();
            return Ok((id, zone));
        }
        if !stack.make(
            Action::Create,
            format!("subnet {name}"),
            format!("{cidr} in {zone}"),
        ) {
            return Ok((planned_id("subnet"), zone.to_owned()));
        }
        step.set("creating");
        let created = ec2
            .create_subnet()
            .vpc_id(vpc_id)
            .cidr_block(cidr)
            .availability_zone(zone)
            .tag_specifications(ec2_tags(&stack.names, role, ResourceType::Subnet))
            .send()
            .await
            .call(format!("CreateSubnet {name}"))?;
        let id = created
            .subnet()
            .and_then(|subnet| subnet.subnet_id())
            .context("CreateSubnet returned no subnet id")?;
        Ok((id.to_owned(), zone.to_owned()))
    };
    step.run(work, |(id, zone)| format!("{id} {cidr} {zone}"))
        .await
}

async fn ensure_internet_gateway(stack: &Stack, vpc_id: &str) -> Result<String> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name("igw");
    let step = stack.progress.step(format!("internet gateway {name}"));
    let work = async {
        let found = ec2
            .describe_internet_gateways()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some("igw"))))
            .send()
            .await
            .call(format!("DescribeInternetGateways {name}"))?;
        let (id, attached) = match single(found.internet_gateways().to_vec(), "internet gateway")? {
            Some(igw) => {
                let id = igw
                    .internet_gateway_id()
                    .context("internet gateway without an id")?
                    .to_owned();
                // AWS reports an attached gateway as `available`, not `attached`.
                let attached = igw.attachments().iter().any(|attachment| {
                    attachment.vpc_id() == Some(vpc_id)
                        && !matches!(
                            attachment.state(),
                            Some(AttachmentStatus::Detached | AttachmentStatus::Detaching)
                        )
                });
                (id, attached)
            }
            None => {
                if !stack.make(Action::Create, format!("internet gateway {name}"), "") {
                    return Ok(planned_id("internet gateway"));
                }
                step.set("creating");
                let created = ec2
                    .create_internet_gateway()
                    .tag_specifications(ec2_tags(
                        &stack.names,
                        "igw",
                        ResourceType::InternetGateway,
                    ))
                    .send()
                    .await
                    .call(format!("CreateInternetGateway {name}"))?;
                let id = created
                    .internet_gateway()
                    .and_then(|igw| igw.internet_gateway_id())
                    .context("CreateInternetGateway returned no id")?
                    .to_owned();
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
            once_known(stack.pace, &call, &EC2_NEW, || {
                ec2.attach_internet_gateway()
                    .internet_gateway_id(&id)
                    .vpc_id(vpc_id)
                    .send()
            })
            .await?;
        }
        Ok(id)
    };
    step.run(work, Clone::clone).await
}

/// A route table of `role` associated with `subnets`; with `internet_gateway`, its
/// default route goes there, without, it has no default route at all (the private
/// subnets reach nothing outside the VPC but S3, through the endpoint).
async fn ensure_route_table(
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

const DEFAULT_ROUTE: &str = "0.0.0.0/0";

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
        (Some(route), Some(igw))
            if route.gateway_id() == Some(igw) && route.state() != Some(&RouteState::Blackhole) => {
        }
        (None, Some(igw)) => {
            if !route_change(format!("add the default route to {igw}")) {
                return Ok(());
            }
            step.set("adding the default route");
            let call = format!("CreateRoute {id} {DEFAULT_ROUTE} -> {igw}");
            once_known(stack.pace, &call, &EC2_NEW, || {
                ec2.create_route()
                    .route_table_id(id)
                    .destination_cidr_block(DEFAULT_ROUTE)
                    .gateway_id(igw)
                    .send()
            })
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
                once_known(stack.pace, &call, &EC2_NEW, || {
                    ec2.associate_route_table()
                        .route_table_id(id)
                        .subnet_id(subnet)
                        .send()
                })
                .await?;
            }
        }
    }
    Ok(())
}

/// States of an endpoint that is gone or going. EC2 sends them in lower case
/// (`deleted`), unlike the SDK's enum (`Deleted`), so they are compared by name.
fn endpoint_gone(state: Option<&State>) -> bool {
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
pub fn endpoint_policy(bucket: &str, region: &str) -> serde_json::Value {
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
async fn ensure_s3_endpoint(
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
        let found = ec2
            .describe_vpc_endpoints()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some("s3-endpoint"))))
            .filters(filter("vpc-id", vpc_id))
            .send()
            .await
            .call(format!("DescribeVpcEndpoints {name}"))?;
        let live: Vec<_> = found
            .vpc_endpoints()
            .iter()
            .filter(|endpoint| !endpoint_gone(endpoint.state()))
            .cloned()
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
