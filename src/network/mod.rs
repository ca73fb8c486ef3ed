//! The stack's network: the VPC over two availability zones, its public subnets (the
//! load balancer only) and private subnets (instances and Redis), the internet gateway
//! and public route table, the private route table with an S3 gateway endpoint (how
//! instances fetch the binary with no NAT gateway, public IP or IAM role), and the three
//! least-privilege security groups. Every resource is found by its stack and role tags;
//! `ensure` creates what is missing and fixes what drifted, and changes nothing when all
//! matches.
//!
//! This file holds the network as the other modules see it ([`Network`], [`ensure`]) and
//! the lookups its parts share; the parts are `vpc` (zones, the VPC, its subnets),
//! `routing` (the internet gateway, route tables, the S3 endpoint), `security_groups`,
//! `teardown`, and `unrepeated` (creating what AWS would make twice).

use anyhow::{Result, ensure as check};
use aws_sdk_ec2::types::{Filter, Tag};
use futures::future::try_join_all;
use futures::try_join;

use crate::stack::Stack;

mod routing;
mod security_groups;
mod teardown;
#[cfg(test)]
mod tests;
mod unrepeated;
mod vpc;

use routing::{ensure_internet_gateway, ensure_route_table, ensure_s3_endpoint};
use security_groups::{
    alb_egress, alb_ingress, close_default_group, ensure_egress, ensure_security_group,
    instances_egress, instances_ingress, redis_ingress, s3_prefix_list,
};
pub use teardown::deletables;
pub use vpc::zones;
use vpc::{ensure_subnet, ensure_vpc};

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
