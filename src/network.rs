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
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{
    AttachmentStatus, AttributeBooleanValue, Filter, IpPermission, IpRange, Ipv6Range,
    PrefixListId, ResourceType, RouteState, RouteTable, SecurityGroup, State, Tag, UserIdGroupPair,
    VpcAttributeName, VpcEndpointType, VpcState,
};
use futures::future::try_join_all;
use futures::try_join;

use crate::aws::{Call, delete_outcome, ec2_stack_filters, ec2_tags, error_code};
use crate::engine::{Deletable, DeleteError, DeleteFuture, Step, wait_for};
use crate::stack::Stack;

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

/// Roles of the subnets, in the order of [`crate::spec::StackSpec::subnet_cidrs`].
const SUBNET_ROLES: [&str; 4] = ["public-a", "public-b", "private-a", "private-b"];
const ALB_SG: &str = "alb-sg";
const INSTANCES_SG: &str = "instances-sg";
const REDIS_SG: &str = "redis-sg";
const REDIS_PORT: i32 = 6379;

/// Finds, creates or fixes the whole network; a second run makes no mutating call.
/// `bucket` is the stack's artifact bucket, the one the S3 endpoint admits besides the
/// package repositories.
pub async fn ensure(stack: &Stack, bucket: &str) -> Result<Network> {
    let (zones, vpc_id) = try_join!(zones(stack), ensure_vpc(stack))?;
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
            ensure_security_group(stack, vpc, INSTANCES_SG, instances_ingress(stack, &alb)).await?;
        let redis = ensure_security_group(stack, vpc, REDIS_SG, redis_ingress(&instances)).await?;
        Ok::<_, anyhow::Error>((alb, instances, redis))
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

/// The first two available zones of the region, by name: stable from one run to the next.
async fn zones(stack: &Stack) -> Result<[String; 2]> {
    let out = stack
        .clients
        .ec2
        .describe_availability_zones()
        .filters(filter("state", "available"))
        .send()
        .await
        .call("DescribeAvailabilityZones")?;
    let mut zones: Vec<String> = out
        .availability_zones()
        .iter()
        // Local and Wavelength zones lack services the stack needs (ElastiCache, ALB).
        .filter(|zone| {
            zone.zone_type()
                .is_none_or(|kind| kind == "availability-zone")
        })
        .filter_map(|zone| zone.zone_name().map(str::to_owned))
        .collect();
    zones.sort();
    zones.dedup();
    match zones.as_slice() {
        [a, b, ..] => Ok([a.clone(), b.clone()]),
        _ => bail!(
            "region {} has fewer than two available availability zones; the stack needs two \
             (pick another region)",
            stack.region
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
        if value.and_then(|value| value.value()) == Some(true) {
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
        if !attached {
            step.set("attaching");
            ec2.attach_internet_gateway()
                .internet_gateway_id(&id)
                .vpc_id(vpc_id)
                .send()
                .await
                .call(format!("AttachInternetGateway {id} {vpc_id}"))?;
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
        ensure_default_route(ec2, &step, &table, &id, internet_gateway).await?;
        ensure_associations(ec2, &step, &table, &id, subnets).await?;
        Ok(id)
    };
    step.run(work, Clone::clone).await
}

const DEFAULT_ROUTE: &str = "0.0.0.0/0";

async fn ensure_default_route(
    ec2: &Client,
    step: &Step,
    table: &RouteTable,
    id: &str,
    internet_gateway: Option<&str>,
) -> Result<()> {
    let current = table
        .routes()
        .iter()
        .find(|route| route.destination_cidr_block() == Some(DEFAULT_ROUTE));
    match (current, internet_gateway) {
        (None, None) => {}
        (Some(route), Some(igw))
            if route.gateway_id() == Some(igw) && route.state() != Some(&RouteState::Blackhole) => {
        }
        (None, Some(igw)) => {
            step.set("adding the default route");
            ec2.create_route()
                .route_table_id(id)
                .destination_cidr_block(DEFAULT_ROUTE)
                .gateway_id(igw)
                .send()
                .await
                .call(format!("CreateRoute {id} {DEFAULT_ROUTE} -> {igw}"))?;
        }
        (Some(_), Some(igw)) => {
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
    ec2: &Client,
    step: &Step,
    table: &RouteTable,
    id: &str,
    subnets: &[String; 2],
) -> Result<()> {
    let associated: HashSet<&str> = table
        .associations()
        .iter()
        .filter_map(|association| association.subnet_id())
        .collect();
    for subnet in subnets {
        if associated.contains(subnet.as_str()) {
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
                ec2.replace_route_table_association()
                    .association_id(association)
                    .route_table_id(id)
                    .send()
                    .await
                    .call(format!("ReplaceRouteTableAssociation {subnet} -> {id}"))?;
            }
            None => {
                ec2.associate_route_table()
                    .route_table_id(id)
                    .subnet_id(subnet)
                    .send()
                    .await
                    .call(format!("AssociateRouteTable {subnet} -> {id}"))?;
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
            if add || !remove.is_empty() || policy_drifted {
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
        step.set("creating");
        let created = ec2
            .create_vpc_endpoint()
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
            .await
            .call(format!("CreateVpcEndpoint {name} {service}"))?;
        Ok(created
            .vpc_endpoint()
            .and_then(|endpoint| endpoint.vpc_endpoint_id())
            .context("CreateVpcEndpoint returned no id")?
            .to_owned())
    };
    step.run(work, |id| format!("{id} {service}")).await
}

/// Where an ingress rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Source {
    Cidr(String),
    Ipv6(String),
    Group(String),
    PrefixList(String),
}

/// One ingress rule, as EC2 identifies it (the description is not part of its identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Ingress {
    protocol: String,
    from: i32,
    to: i32,
    source: Source,
}

impl Ingress {
    fn tcp(port: i32, source: Source) -> Self {
        Self {
            protocol: "tcp".into(),
            from: port,
            to: port,
            source,
        }
    }

    fn permission(&self, description: Option<&str>) -> IpPermission {
        let permission = IpPermission::builder()
            .ip_protocol(&self.protocol)
            .from_port(self.from)
            .to_port(self.to);
        match &self.source {
            Source::Cidr(cidr) => permission.ip_ranges(
                IpRange::builder()
                    .cidr_ip(cidr)
                    .set_description(description.map(str::to_owned))
                    .build(),
            ),
            Source::Ipv6(cidr) => {
                permission.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(cidr).build())
            }
            Source::Group(group) => permission.user_id_group_pairs(
                UserIdGroupPair::builder()
                    .group_id(group)
                    .set_description(description.map(str::to_owned))
                    .build(),
            ),
            Source::PrefixList(list) => {
                permission.prefix_list_ids(PrefixListId::builder().prefix_list_id(list).build())
            }
        }
        .build()
    }
}

/// The ingress rules of a group, one per source.
fn current_ingress(group: &SecurityGroup) -> Vec<Ingress> {
    let mut rules = Vec::new();
    for permission in group.ip_permissions() {
        let protocol = permission.ip_protocol().unwrap_or("-1").to_owned();
        let (from, to) = (
            permission.from_port().unwrap_or(-1),
            permission.to_port().unwrap_or(-1),
        );
        let mut push = |source| {
            rules.push(Ingress {
                protocol: protocol.clone(),
                from,
                to,
                source,
            })
        };
        permission
            .ip_ranges()
            .iter()
            .filter_map(|range| range.cidr_ip())
            .for_each(|cidr| push(Source::Cidr(cidr.to_owned())));
        permission
            .ipv6_ranges()
            .iter()
            .filter_map(|range| range.cidr_ipv6())
            .for_each(|cidr| push(Source::Ipv6(cidr.to_owned())));
        permission
            .user_id_group_pairs()
            .iter()
            .filter_map(|pair| pair.group_id())
            .for_each(|group| push(Source::Group(group.to_owned())));
        permission
            .prefix_list_ids()
            .iter()
            .filter_map(|list| list.prefix_list_id())
            .for_each(|list| push(Source::PrefixList(list.to_owned())));
    }
    rules
}

/// The load balancer: HTTPS, and HTTP only to be redirected, from the allowed ranges.
fn alb_ingress(stack: &Stack) -> Vec<(Ingress, String)> {
    stack
        .spec
        .network
        .allowed_cidrs
        .iter()
        .flat_map(|cidr| {
            [(443, "HTTPS"), (80, "HTTP, redirected to HTTPS")].map(|(port, what)| {
                (
                    Ingress::tcp(port, Source::Cidr(cidr.clone())),
                    format!("{what} from {cidr}"),
                )
            })
        })
        .collect()
}

/// The instances: the app port, from the load balancer only. No SSH.
fn instances_ingress(stack: &Stack, alb_group: &str) -> Vec<(Ingress, String)> {
    vec![(
        Ingress::tcp(
            i32::from(stack.spec.instances.app_port),
            Source::Group(alb_group.to_owned()),
        ),
        "chat server, from the load balancer only".to_owned(),
    )]
}

/// Redis: from the instances only.
fn redis_ingress(instances_group: &str) -> Vec<(Ingress, String)> {
    vec![(
        Ingress::tcp(REDIS_PORT, Source::Group(instances_group.to_owned())),
        "Redis, from the chat server instances only".to_owned(),
    )]
}

/// A security group of `role` in the VPC admitting exactly `wanted`: missing rules are
/// added, any other ingress rule (say, someone opened 22) is revoked.
///
/// Egress stays AWS's default allow-all: the instances need 443 to S3 (through the
/// gateway endpoint, whose addresses are a prefix list) and 6379 to Redis, the ALB needs
/// the app port to the instances; the private route table already confines the
/// instances to the VPC and S3, so narrower egress rules would add upkeep, not safety.
async fn ensure_security_group(
    stack: &Stack,
    vpc_id: &str,
    role: &str,
    wanted: Vec<(Ingress, String)>,
) -> Result<String> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name(role);
    let step = stack.progress.step(format!("security group {name}"));
    let work = async {
        let found = ec2
            .describe_security_groups()
            .set_filters(Some(ec2_stack_filters(&stack.names, Some(role))))
            .filters(filter("vpc-id", vpc_id))
            .send()
            .await
            .call(format!("DescribeSecurityGroups {name}"))?;
        let (id, current) = match single(found.security_groups().to_vec(), "security group")? {
            Some(group) => (
                group
                    .group_id()
                    .context("security group without an id")?
                    .to_owned(),
                current_ingress(&group),
            ),
            None => {
                step.set("creating");
                let created = ec2
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("realtime-stack {}: {role}", stack.names.stack()))
                    .vpc_id(vpc_id)
                    .tag_specifications(ec2_tags(&stack.names, role, ResourceType::SecurityGroup))
                    .send()
                    .await
                    .call(format!("CreateSecurityGroup {name}"))?;
                let id = created
                    .group_id()
                    .context("CreateSecurityGroup returned no id")?
                    .to_owned();
                (id, Vec::new())
            }
        };
        let missing: Vec<IpPermission> = wanted
            .iter()
            .filter(|(rule, _)| !current.contains(rule))
            .map(|(rule, description)| rule.permission(Some(description)))
            .collect();
        let unexpected: Vec<IpPermission> = current
            .iter()
            .filter(|rule| !wanted.iter().any(|(wanted, _)| wanted == *rule))
            .map(|rule| rule.permission(None))
            .collect();
        if !unexpected.is_empty() {
            step.set("revoking unexpected ingress rules");
            ec2.revoke_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(unexpected))
                .send()
                .await
                .call(format!("RevokeSecurityGroupIngress {name}"))?;
        }
        if !missing.is_empty() {
            step.set("adding ingress rules");
            ec2.authorize_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(missing))
                .send()
                .await
                .call(format!("AuthorizeSecurityGroupIngress {name}"))?;
        }
        Ok(id)
    };
    step.run(work, Clone::clone).await
}

/// What kind of network resource a [`NetworkResource`] is, with what deleting it needs.
#[derive(Debug, Clone)]
enum Kind {
    Vpc,
    Subnet,
    /// With the VPCs it is attached to: detached before it is deleted.
    InternetGateway(Vec<String>),
    RouteTable,
    Endpoint,
    SecurityGroup,
}

impl Kind {
    fn key_prefix(&self) -> &'static str {
        match self {
            Kind::Vpc => "ec2-vpc",
            Kind::Subnet => "ec2-subnet",
            Kind::InternetGateway(_) => "ec2-igw",
            Kind::RouteTable => "ec2-rtb",
            Kind::Endpoint => "ec2-vpce",
            Kind::SecurityGroup => "ec2-sg",
        }
    }

    fn noun(&self) -> &'static str {
        match self {
            Kind::Vpc => "vpc",
            Kind::Subnet => "subnet",
            Kind::InternetGateway(_) => "internet gateway",
            Kind::RouteTable => "route table",
            Kind::Endpoint => "s3 endpoint",
            Kind::SecurityGroup => "security group",
        }
    }
}

/// One network resource of the stack, as the destroy loop sees it.
struct NetworkResource {
    ec2: Client,
    kind: Kind,
    id: String,
    name: Option<String>,
    blocked_by: Vec<String>,
}

fn key(kind: &Kind, id: &str) -> String {
    format!("{}:{id}", kind.key_prefix())
}

impl Deletable for NetworkResource {
    fn key(&self) -> String {
        key(&self.kind, &self.id)
    }

    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("{} {name} ({})", self.kind.noun(), self.id),
            None => format!("{} {}", self.kind.noun(), self.id),
        }
    }

    fn blocked_by(&self) -> Vec<String> {
        self.blocked_by.clone()
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let ec2 = &self.ec2;
            let id = self.id.as_str();
            match &self.kind {
                Kind::Vpc => delete_outcome(
                    ec2.delete_vpc().vpc_id(id).send().await,
                    &format!("DeleteVpc {id}"),
                    &["InvalidVpcID.NotFound"],
                ),
                Kind::Subnet => delete_outcome(
                    ec2.delete_subnet().subnet_id(id).send().await,
                    &format!("DeleteSubnet {id}"),
                    &["InvalidSubnetID.NotFound"],
                ),
                Kind::InternetGateway(vpcs) => {
                    for vpc in vpcs {
                        // Refused (DependencyViolation) while the VPC has public
                        // addresses mapped, e.g. a load balancer still going away.
                        delete_outcome(
                            ec2.detach_internet_gateway()
                                .internet_gateway_id(id)
                                .vpc_id(vpc)
                                .send()
                                .await,
                            &format!("DetachInternetGateway {id} {vpc}"),
                            &["Gateway.NotAttached", "InvalidInternetGatewayID.NotFound"],
                        )?;
                    }
                    delete_outcome(
                        ec2.delete_internet_gateway()
                            .internet_gateway_id(id)
                            .send()
                            .await,
                        &format!("DeleteInternetGateway {id}"),
                        &["InvalidInternetGatewayID.NotFound"],
                    )
                }
                Kind::RouteTable => delete_route_table(ec2, id).await,
                Kind::Endpoint => delete_endpoint(ec2, id).await,
                Kind::SecurityGroup => delete_outcome(
                    ec2.delete_security_group().group_id(id).send().await,
                    &format!("DeleteSecurityGroup {id}"),
                    &["InvalidGroup.NotFound"],
                ),
            }
        })
    }
}

/// Disassociates the table from its subnets (read afresh: they may have changed since
/// the resources were listed), then deletes it.
async fn delete_route_table(ec2: &Client, id: &str) -> Result<(), DeleteError> {
    const NOT_FOUND: &[&str] = &["InvalidRouteTableID.NotFound"];
    let found = ec2.describe_route_tables().route_table_ids(id).send().await;
    let found = match found {
        Err(err) if error_code(&err).is_some_and(|code| NOT_FOUND.contains(&code)) => {
            return Ok(());
        }
        found => found
            .call(format!("DescribeRouteTables {id}"))
            .map_err(DeleteError::Failed)?,
    };
    let associations = found
        .route_tables()
        .iter()
        .flat_map(|table| table.associations())
        .filter(|association| association.main() != Some(true))
        .filter_map(|association| association.route_table_association_id());
    for association in associations {
        delete_outcome(
            ec2.disassociate_route_table()
                .association_id(association)
                .send()
                .await,
            &format!("DisassociateRouteTable {association}"),
            &["InvalidAssociationID.NotFound"],
        )?;
    }
    delete_outcome(
        ec2.delete_route_table().route_table_id(id).send().await,
        &format!("DeleteRouteTable {id}"),
        NOT_FOUND,
    )
}

/// DeleteVpcEndpoints reports per-endpoint failures in its output, not as an error.
async fn delete_endpoint(ec2: &Client, id: &str) -> Result<(), DeleteError> {
    let call = format!("DeleteVpcEndpoints {id}");
    let out = ec2
        .delete_vpc_endpoints()
        .vpc_endpoint_ids(id)
        .send()
        .await
        .call(&call)
        .map_err(DeleteError::Failed)?;
    match out.unsuccessful().first().and_then(|item| item.error()) {
        None => Ok(()),
        Some(error) if error.code().is_some_and(|code| code.contains("NotFound")) => Ok(()),
        Some(error) => Err(DeleteError::Failed(anyhow::anyhow!(
            "{call} failed: {}: {}",
            error.code().unwrap_or("unknown error"),
            error.message().unwrap_or("no message")
        ))),
    }
}

/// Every network resource carrying the stack's tag, each blocked by the ones of this
/// module that use it. What other modules put in the network (instances, the load
/// balancer, Redis) blocks it too; AWS says so with DependencyViolation, which the
/// destroy loop retries.
pub async fn deletables(stack: &Stack) -> Result<Vec<Box<dyn Deletable>>> {
    let ec2 = &stack.clients.ec2;
    let tagged = || Some(ec2_stack_filters(&stack.names, None));
    let (vpcs, subnets, gateways, tables, endpoints, groups) = try_join!(
        async {
            ec2.describe_vpcs()
                .set_filters(tagged())
                .send()
                .await
                .call("DescribeVpcs")
        },
        async {
            ec2.describe_subnets()
                .set_filters(tagged())
                .send()
                .await
                .call("DescribeSubnets")
        },
        async {
            ec2.describe_internet_gateways()
                .set_filters(tagged())
                .send()
                .await
                .call("DescribeInternetGateways")
        },
        async {
            ec2.describe_route_tables()
                .set_filters(tagged())
                .send()
                .await
                .call("DescribeRouteTables")
        },
        async {
            ec2.describe_vpc_endpoints()
                .set_filters(tagged())
                .send()
                .await
                .call("DescribeVpcEndpoints")
        },
        async {
            ec2.describe_security_groups()
                .set_filters(tagged())
                .send()
                .await
                .call("DescribeSecurityGroups")
        },
    )?;

    let resource = |kind: Kind, id: Option<&str>, tags: &[Tag], blocked_by: Vec<String>| {
        id.map(|id| NetworkResource {
            ec2: ec2.clone(),
            kind,
            id: id.to_owned(),
            name: name_tag(tags).map(str::to_owned),
            blocked_by,
        })
    };
    let mut resources: Vec<NetworkResource> = Vec::new();
    resources.extend(
        subnets
            .subnets()
            .iter()
            .filter_map(|s| resource(Kind::Subnet, s.subnet_id(), s.tags(), vec![])),
    );
    resources.extend(gateways.internet_gateways().iter().filter_map(|igw| {
        let vpcs = igw
            .attachments()
            .iter()
            .filter_map(|attachment| attachment.vpc_id().map(str::to_owned))
            .collect();
        resource(
            Kind::InternetGateway(vpcs),
            igw.internet_gateway_id(),
            igw.tags(),
            vec![],
        )
    }));
    resources.extend(
        tables
            .route_tables()
            .iter()
            // The main table goes with the VPC (ours never is: it is created untagged).
            .filter(|t| !t.associations().iter().any(|a| a.main() == Some(true)))
            .filter_map(|t| resource(Kind::RouteTable, t.route_table_id(), t.tags(), vec![])),
    );
    // The endpoint's routes live in the route table: the table goes after it.
    let endpoint_keys: Vec<String> = endpoints
        .vpc_endpoints()
        .iter()
        .filter(|e| !endpoint_gone(e.state()))
        .filter_map(|e| e.vpc_endpoint_id())
        .map(|id| key(&Kind::Endpoint, id))
        .collect();
    for table in &mut resources {
        if matches!(table.kind, Kind::RouteTable) {
            table.blocked_by.extend(endpoint_keys.iter().cloned());
        }
    }
    resources.extend(
        endpoints
            .vpc_endpoints()
            .iter()
            .filter(|e| !endpoint_gone(e.state()))
            .filter_map(|e| resource(Kind::Endpoint, e.vpc_endpoint_id(), e.tags(), vec![])),
    );
    // A group another group's rule refers to can only go once the referring one has.
    resources.extend(groups.security_groups().iter().filter_map(|group| {
        let id = group.group_id()?;
        let referrers = groups
            .security_groups()
            .iter()
            .filter(|other| other.group_id() != Some(id))
            .filter(|other| {
                current_ingress(other)
                    .iter()
                    .any(|rule| rule.source == Source::Group(id.to_owned()))
            })
            .filter_map(|other| other.group_id())
            .map(|other| key(&Kind::SecurityGroup, other))
            .collect();
        resource(Kind::SecurityGroup, Some(id), group.tags(), referrers)
    }));
    // The VPC goes last.
    let everything_else: Vec<String> = resources.iter().map(|r| r.key()).collect();
    resources.extend(
        vpcs.vpcs()
            .iter()
            .filter_map(|v| resource(Kind::Vpc, v.vpc_id(), v.tags(), everything_else.clone())),
    );
    Ok(resources
        .into_iter()
        .map(|resource| Box::new(resource) as Box<dyn Deletable>)
        .collect())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use aws_sdk_ec2::Client as Ec2;
    use aws_sdk_ec2::config::retry::RetryConfig;
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
        AttributeBooleanValue, AvailabilityZone, InternetGateway, InternetGatewayAttachment, Route,
        RouteTableAssociation, Subnet, Vpc, VpcEndpoint,
    };
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

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
        Ingress::tcp(port, Source::Cidr(cidr.into())).permission(Some("rule"))
    }

    fn tcp_from_group(port: i32, group: &str) -> IpPermission {
        Ingress::tcp(port, Source::Group(group.into())).permission(Some("rule"))
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

    /// Describe rules answering with the network of the example stack exactly as
    /// `ensure` builds it, plus `extra_ingress` on the instances' group.
    fn converged(extra_ingress: Option<IpPermission>) -> Vec<Rule> {
        let cidrs = testing::spec().subnet_cidrs();
        vec![
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
            }),
            mock!(Ec2::describe_vpcs).then_output(the_vpc),
            mock!(Ec2::describe_vpc_attribute).then_output(|| {
                let on = || AttributeBooleanValue::builder().value(true).build();
                DescribeVpcAttributeOutput::builder()
                    .enable_dns_support(on())
                    .enable_dns_hostnames(on())
                    .build()
            }),
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
                let group = match role.as_str() {
                    ALB_SG => group
                        .ip_permissions(tcp_from_cidr(443, "0.0.0.0/0"))
                        .ip_permissions(tcp_from_cidr(80, "0.0.0.0/0")),
                    INSTANCES_SG => group.set_ip_permissions(Some(
                        [
                            Some(tcp_from_group(8080, "sg-alb-sg")),
                            extra_ingress.clone(),
                        ]
                        .into_iter()
                        .flatten()
                        .collect(),
                    )),
                    _ => group.ip_permissions(tcp_from_group(6379, "sg-instances-sg")),
                };
                DescribeSecurityGroupsOutput::builder()
                    .security_groups(group.build())
                    .build()
            }),
        ]
    }

    /// A rule answering `$op` with success, named as AWS names the call.
    macro_rules! change {
        ($name:literal, $op:ident, $output:ident) => {
            (
                $name,
                mock!(Ec2::$op)
                    .then_output(|| aws_sdk_ec2::operation::$op::$output::builder().build()),
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
        config.retry_config(
            RetryConfig::standard()
                .with_max_attempts(8)
                .with_initial_backoff(Duration::from_millis(1)),
        )
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
        // EC2's throttling answer (HTTP 400, code RequestLimitExceeded), twice; the SDK's
        // retries take the next answers of the same rule.
        let throttled = mock!(Ec2::describe_vpcs)
            .sequence()
            .http_status(
                400,
                Some(
                    "<Response><Errors><Error><Code>RequestLimitExceeded</Code>\
                     <Message>Request limit exceeded.</Message></Error></Errors>\
                     <RequestID>1</RequestID></Response>"
                        .into(),
                ),
            )
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

        let network = ensure(&stack, BUCKET)
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

        ensure(&stack_with(&rules), BUCKET).await.expect("ensure");

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
}
