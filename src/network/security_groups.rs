//! The stack's three security groups and their rules: the load balancer takes 80 and 443
//! from the allowed ranges, the instances take the app port from the load balancer only,
//! Redis takes 6379 from the instances only. A rule added by hand is revoked.

use anyhow::{Context, Result};
use aws_sdk_ec2::types::{
    IpPermission, IpRange, Ipv6Range, PrefixListId, ResourceType, SecurityGroup, UserIdGroupPair,
};

use super::{REDIS_PORT, filter, single};
use crate::aws::{Call, EC2_NEW, ec2_stack_filters, ec2_tags, once_known};
use crate::engine::{Action, planned_id};
use crate::stack::Stack;

/// Where an ingress rule admits traffic from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Source {
    Cidr(String),
    Ipv6(String),
    Group(String),
    PrefixList(String),
}

/// One ingress rule, as EC2 identifies it (the description is not part of its identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Ingress {
    protocol: String,
    from: i32,
    to: i32,
    pub(super) source: Source,
}

impl Ingress {
    pub(super) fn tcp(port: i32, source: Source) -> Self {
        Self {
            protocol: "tcp".into(),
            from: port,
            to: port,
            source,
        }
    }

    pub(super) fn permission(&self, description: Option<&str>) -> IpPermission {
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
pub(super) fn current_ingress(group: &SecurityGroup) -> Vec<Ingress> {
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
pub(super) fn alb_ingress(stack: &Stack) -> Vec<(Ingress, String)> {
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
pub(super) fn instances_ingress(stack: &Stack, alb_group: &str) -> Vec<(Ingress, String)> {
    vec![(
        Ingress::tcp(
            i32::from(stack.spec.instances.app_port),
            Source::Group(alb_group.to_owned()),
        ),
        "chat server, from the load balancer only".to_owned(),
    )]
}

/// Redis: from the instances only.
pub(super) fn redis_ingress(instances_group: &str) -> Vec<(Ingress, String)> {
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
pub(super) async fn ensure_security_group(
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
                let rules: Vec<&str> = wanted.iter().map(|(_, about)| about.as_str()).collect();
                let reason = format!("admitting {}", rules.join("; "));
                if !stack.make(Action::Create, format!("security group {name}"), reason) {
                    return Ok(planned_id("security group"));
                }
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
        let resource = format!("security group {name}");
        if !unexpected.is_empty()
            && stack.make(
                Action::Update,
                &resource,
                format!("revoke {} ingress rule(s) added by hand", unexpected.len()),
            )
        {
            step.set("revoking unexpected ingress rules");
            ec2.revoke_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(unexpected))
                .send()
                .await
                .call(format!("RevokeSecurityGroupIngress {name}"))?;
        }
        let missing_about: Vec<&str> = wanted
            .iter()
            .filter(|(rule, _)| !current.contains(rule))
            .map(|(_, about)| about.as_str())
            .collect();
        if !missing.is_empty()
            && stack.make(
                Action::Update,
                &resource,
                format!("allow {}", missing_about.join("; ")),
            )
        {
            step.set("adding ingress rules");
            // Both this group and the one a rule admits from may be new.
            let call = format!("AuthorizeSecurityGroupIngress {name}");
            once_known(stack.pace, &call, &EC2_NEW, || {
                ec2.authorize_security_group_ingress()
                    .group_id(&id)
                    .set_ip_permissions(Some(missing.clone()))
                    .send()
            })
            .await?;
        }
        Ok(id)
    };
    step.run(work, Clone::clone).await
}
