//! Where the stack's network lies and what is in it: the two availability zones preflight
//! picks, the VPC with DNS support and hostnames on (instances resolve the S3 and Redis
//! endpoints by name), and its four subnets, a public and a private one in each zone. The
//! range of a VPC or subnet cannot change: one that differs from stack.yaml is an error
//! that says what to do.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure as check};
use aws_sdk_ec2::operation::create_vpc::CreateVpcError;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, LocationType, ResourceType, VpcAttributeName, VpcState,
};
use futures::try_join;

use super::unrepeated::{Made, create_unrepeated, only_throttling_retried};
use super::{SUBNET_ROLES, filter, single};
use crate::aws::{Call, ec2_stack_filters, ec2_tags, error_code};
use crate::engine::{Action, Step, is_planned, planned_id, wait_for};
use crate::names::ROLE_TAG;
use crate::stack::Stack;

/// The stack's two availability zones. Those of its subnets once they exist (a subnet
/// cannot move), refused when the instance type is not offered in one of them: the Auto
/// Scaling group would launch no instance there. Before, the first two available zones
/// of the region where the instance type is offered, by name: stable from one run to the
/// next. Preflight asks, so that a type offered in fewer than two zones, or not where the
/// stack is, stops `up` before anything changes.
pub async fn zones(stack: &Stack) -> Result<[String; 2]> {
    let instance_type = &stack.spec.instances.instance_type;
    let ec2 = &stack.clients.ec2;
    let (out, offerings, existing) = try_join!(
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
        },
        existing_zones(stack),
    )?;
    if let Some(existing) = existing {
        let lacking: Vec<&String> = existing
            .iter()
            .filter(|zone| !offerings.contains(*zone))
            .collect();
        check!(
            lacking.is_empty(),
            "instance type {instance_type} is not offered in {}, where the stack's subnets \
             are (DescribeInstanceTypeOfferings): the Auto Scaling group could launch no \
             instance there. Pick an instances.type offered in {}, or `destroy` and `up` \
             again to build the network where {instance_type} is",
            lacking
                .iter()
                .map(|zone| zone.as_str())
                .collect::<Vec<_>>()
                .join(" and "),
            existing.join(" and ")
        );
        return Ok(existing);
    }
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

/// The zones of the stack's public subnets, as [`super::ensure`] takes them, once both
/// exist.
async fn existing_zones(stack: &Stack) -> Result<Option<[String; 2]>> {
    let found = stack
        .clients
        .ec2
        .describe_subnets()
        .set_filters(Some(ec2_stack_filters(&stack.names, None)))
        .send()
        .await
        .call(format!("DescribeSubnets {}", stack.names.stack()))?;
    let zone_of = |role: &str| {
        found
            .subnets()
            .iter()
            .find(|subnet| {
                subnet
                    .tags()
                    .iter()
                    .any(|tag| tag.key() == Some(ROLE_TAG) && tag.value() == Some(role))
            })
            .and_then(|subnet| subnet.availability_zone())
            .map(str::to_owned)
    };
    Ok(zone_of(SUBNET_ROLES[0])
        .zip(zone_of(SUBNET_ROLES[1]))
        .map(|(a, b)| [a, b]))
}

pub(super) async fn ensure_vpc(stack: &Stack) -> Result<String> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name("vpc");
    let cidr = &stack.spec.network.cidr;
    let step = stack.progress.step(format!("vpc {name}"));
    let find = || async {
        let found = ec2
            .describe_vpcs()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some("vpc"))))
            .send()
            .await
            .call(format!("DescribeVpcs {name}"))?;
        single(found.vpcs().to_vec(), "VPC")
    };
    let work = async {
        step.set("looking up");
        let vpc_id = match find().await? {
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
                let create = || {
                    ec2.create_vpc()
                        .cidr_block(cidr)
                        .tag_specifications(ec2_tags(&stack.names, "vpc", ResourceType::Vpc))
                        .customize()
                        .config_override(only_throttling_retried::<CreateVpcError>())
                        .send()
                };
                let vpc =
                    match create_unrepeated(stack.pace, &format!("CreateVpc {name}"), create, find)
                        .await?
                    {
                        Made::Created(created) => created.vpc,
                        Made::Found(vpc) => Some(vpc),
                    };
                let id = vpc
                    .and_then(|vpc| vpc.vpc_id)
                    .context("CreateVpc returned no VPC id")?;
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

pub(super) async fn ensure_subnet(
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
