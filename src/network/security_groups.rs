//! The stack's three security groups and their rules: the load balancer takes 80 and 443
//! from the allowed ranges and talks only to the app port in the private subnets; the
//! instances take the app port from the load balancer only and talk only to Redis (6379,
//! private subnets) and S3 (443, its prefix list); Redis takes 6379 from the instances
//! only and talks to nobody. A rule added by hand is revoked. The VPC's default group,
//! which nothing of the stack uses, keeps no rule at all.

use anyhow::{Context, Result};
use aws_sdk_ec2::operation::create_security_group::CreateSecurityGroupError;
use aws_sdk_ec2::types::{
    IpPermission, IpRange, Ipv6Range, PrefixListId, ResourceType, SecurityGroup, UserIdGroupPair,
};

use super::unrepeated::{Made, create_unrepeated, only_throttling_retried};
use super::{REDIS_PORT, filter, single};
use crate::aws::{Call, EC2_NEW, change_once, ec2_stack_filters, ec2_tags, once_known};
use crate::engine::{Action, Step, planned_id};
use crate::stack::Stack;

/// Where a rule admits traffic from (ingress) or lets it go to (egress).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Peer {
    Cidr(String),
    Ipv6(String),
    Group(String),
    PrefixList(String),
}

/// One rule, as EC2 identifies it (the description is not part of its identity).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct GroupRule {
    protocol: String,
    from: i32,
    to: i32,
    pub(super) peer: Peer,
}

impl GroupRule {
    pub(super) fn tcp(port: i32, peer: Peer) -> Self {
        Self {
            protocol: "tcp".into(),
            from: port,
            to: port,
            peer,
        }
    }

    pub(super) fn permission(&self, description: Option<&str>) -> IpPermission {
        let permission = IpPermission::builder()
            .ip_protocol(&self.protocol)
            .from_port(self.from)
            .to_port(self.to);
        match &self.peer {
            Peer::Cidr(cidr) => permission.ip_ranges(
                IpRange::builder()
                    .cidr_ip(cidr)
                    .set_description(description.map(str::to_owned))
                    .build(),
            ),
            Peer::Ipv6(cidr) => {
                permission.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(cidr).build())
            }
            Peer::Group(group) => permission.user_id_group_pairs(
                UserIdGroupPair::builder()
                    .group_id(group)
                    .set_description(description.map(str::to_owned))
                    .build(),
            ),
            Peer::PrefixList(list) => {
                permission.prefix_list_ids(PrefixListId::builder().prefix_list_id(list).build())
            }
        }
        .build()
    }
}

/// The rules of `permissions` (a group's ingress or egress), one per peer.
pub(super) fn current_rules(permissions: &[IpPermission]) -> Vec<GroupRule> {
    let mut rules = Vec::new();
    for permission in permissions {
        let protocol = permission.ip_protocol().unwrap_or("-1").to_owned();
        let (from, to) = (
            permission.from_port().unwrap_or(-1),
            permission.to_port().unwrap_or(-1),
        );
        let mut push = |peer| {
            rules.push(GroupRule {
                protocol: protocol.clone(),
                from,
                to,
                peer,
            })
        };
        permission
            .ip_ranges()
            .iter()
            .filter_map(|range| range.cidr_ip())
            .for_each(|cidr| push(Peer::Cidr(cidr.to_owned())));
        permission
            .ipv6_ranges()
            .iter()
            .filter_map(|range| range.cidr_ipv6())
            .for_each(|cidr| push(Peer::Ipv6(cidr.to_owned())));
        permission
            .user_id_group_pairs()
            .iter()
            .filter_map(|pair| pair.group_id())
            .for_each(|group| push(Peer::Group(group.to_owned())));
        permission
            .prefix_list_ids()
            .iter()
            .filter_map(|list| list.prefix_list_id())
            .for_each(|list| push(Peer::PrefixList(list.to_owned())));
    }
    rules
}

/// The load balancer: HTTPS, and HTTP only to be redirected, from the allowed ranges.
pub(super) fn alb_ingress(stack: &Stack) -> Vec<(GroupRule, String)> {
    stack
        .spec
        .network
        .allowed_cidrs
        .iter()
        .flat_map(|cidr| {
            [(443, "HTTPS"), (80, "HTTP, redirected to HTTPS")].map(|(port, what)| {
                (
                    GroupRule::tcp(port, Peer::Cidr(cidr.clone())),
                    format!("{what} from {cidr}"),
                )
            })
        })
        .collect()
}

/// The instances: the app port, from the load balancer only. No SSH.
pub(super) fn instances_ingress(stack: &Stack, alb_group: &str) -> Vec<(GroupRule, String)> {
    vec![(
        GroupRule::tcp(
            i32::from(stack.spec.instances.app_port),
            Peer::Group(alb_group.to_owned()),
        ),
        "chat server, from the load balancer only".to_owned(),
    )]
}

/// Redis: from the instances only.
pub(super) fn redis_ingress(instances_group: &str) -> Vec<(GroupRule, String)> {
    vec![(
        GroupRule::tcp(REDIS_PORT, Peer::Group(instances_group.to_owned())),
        "Redis, from the chat server instances only".to_owned(),
    )]
}

/// The load balancer's egress: the app port, to the private subnets where the instances
/// are (health checks go there too). Subnet ranges rather than the instances' group: the
/// instances' group admits the load balancer's, and two groups naming each other could
/// never be deleted one before the other.
///
/// Rule and group descriptions keep to EC2's characters (`a-zA-Z0-9`, spaces and
/// `._-:/()#,@[]+=&;{}!$*`, at most 255): EC2 refuses any other with
/// `InvalidParameterValue`, an apostrophe included (hashicorp/terraform-provider-aws#18874).
pub(super) fn alb_egress(stack: &Stack) -> Vec<(GroupRule, String)> {
    let port = i32::from(stack.spec.instances.app_port);
    private_ranges(stack)
        .map(|cidr| {
            (
                GroupRule::tcp(port, Peer::Cidr(cidr.clone())),
                format!("chat server, in the private subnet {cidr}"),
            )
        })
        .collect()
}

/// The instances' egress: Redis in the private subnets, and S3 over HTTPS (the binary,
/// and Amazon Linux's package repositories, through the gateway endpoint). DNS, the
/// instance metadata and the time service are link-local: security groups do not filter
/// them.
pub(super) fn instances_egress(stack: &Stack, s3_prefix_list: &str) -> Vec<(GroupRule, String)> {
    private_ranges(stack)
        .map(|cidr| {
            (
                GroupRule::tcp(REDIS_PORT, Peer::Cidr(cidr.clone())),
                format!("Redis, in the private subnet {cidr}"),
            )
        })
        .chain([(
            GroupRule::tcp(443, Peer::PrefixList(s3_prefix_list.to_owned())),
            "S3 over HTTPS, through the gateway endpoint".to_owned(),
        )])
        .collect()
}

fn private_ranges(stack: &Stack) -> impl Iterator<Item = String> {
    // In the order of SUBNET_ROLES: public-a, public-b, private-a, private-b.
    stack.spec.subnet_cidrs().into_iter().skip(2)
}

/// The id of the prefix list of S3's addresses in the region, which egress rules to S3
/// name.
pub(super) async fn s3_prefix_list(stack: &Stack) -> Result<String> {
    let name = format!("com.amazonaws.{}.s3", stack.region);
    let lists = stack
        .clients
        .ec2
        .describe_prefix_lists()
        .filters(filter("prefix-list-name", &name))
        .send()
        .await
        .call(format!("DescribePrefixLists {name}"))?;
    lists
        .prefix_lists()
        .first()
        .and_then(|list| list.prefix_list_id())
        .map(str::to_owned)
        .with_context(|| format!("EC2 knows no prefix list {name} in {}", stack.region))
}

/// Which way a group's rules go.
#[derive(Clone, Copy)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    /// As the EC2 operations name it: `AuthorizeSecurityGroupIngress`...
    fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }
}

/// A security group of `role` in the VPC admitting exactly `wanted`: missing rules are
/// added, any other ingress rule (say, someone opened 22) is revoked. Its egress is
/// [`ensure_egress`]'s, once every group it may name exists.
pub(super) async fn ensure_security_group(
    stack: &Stack,
    vpc_id: &str,
    role: &str,
    wanted: Vec<(GroupRule, String)>,
) -> Result<Group> {
    let ec2 = &stack.clients.ec2;
    let name = stack.names.name(role);
    let step = stack.progress.step(format!("security group {name}"));
    let work = async {
        let existing = |group: SecurityGroup| -> Result<_> {
            Ok((
                group
                    .group_id()
                    .context("security group without an id")?
                    .to_owned(),
                current_rules(group.ip_permissions()),
                current_rules(group.ip_permissions_egress()),
            ))
        };
        let (id, current, egress) = match find_group(stack, vpc_id, role).await? {
            Some(group) => existing(group)?,
            None => {
                let rules: Vec<&str> = wanted.iter().map(|(_, about)| about.as_str()).collect();
                let reason = format!("admitting {}", rules.join("; "));
                if !stack.make(Action::Create, format!("security group {name}"), reason) {
                    return Ok(Group {
                        id: planned_id("security group"),
                        egress: Vec::new(),
                    });
                }
                step.set("creating");
                let create = || {
                    ec2.create_security_group()
                        .group_name(&name)
                        .description(format!("realtime-stack {}: {role}", stack.names.stack()))
                        .vpc_id(vpc_id)
                        .tag_specifications(ec2_tags(
                            &stack.names,
                            role,
                            ResourceType::SecurityGroup,
                        ))
                        .customize()
                        .config_override(only_throttling_retried::<CreateSecurityGroupError>())
                        .send()
                };
                let call = format!("CreateSecurityGroup {name}");
                let find = || find_group(stack, vpc_id, role);
                match create_unrepeated(stack.pace, &call, create, find).await? {
                    Made::Created(created) => {
                        let id = created
                            .group_id
                            .context("CreateSecurityGroup returned no id")?;
                        // What EC2 gives every new group, known without asking: a describe
                        // this soon may not find the group yet.
                        let allow_all = GroupRule {
                            protocol: "-1".into(),
                            from: -1,
                            to: -1,
                            peer: Peer::Cidr("0.0.0.0/0".into()),
                        };
                        (id, Vec::new(), vec![allow_all])
                    }
                    // Sent again, the create would be refused (InvalidGroup.Duplicate): a
                    // name is the VPC's once.
                    Made::Found(group) => existing(group)?,
                }
            }
        };
        converge_rules(
            stack,
            &step,
            &name,
            &id,
            Direction::Ingress,
            &current,
            &wanted,
        )
        .await?;
        Ok(Group { id, egress })
    };
    step.run(work, |group| group.id.clone()).await
}

/// A security group of the stack, with the egress rules it had when it was found.
pub(super) struct Group {
    pub(super) id: String,
    egress: Vec<GroupRule>,
}

/// The group of `role` lets out exactly `wanted`: AWS's default allow-all egress of a
/// new group, and anything added by hand, is revoked.
pub(super) async fn ensure_egress(
    stack: &Stack,
    role: &str,
    group: &Group,
    wanted: Vec<(GroupRule, String)>,
) -> Result<()> {
    let name = stack.names.name(role);
    let step = stack.progress.step(format!("security group {name} egress"));
    let work = converge_rules(
        stack,
        &step,
        &name,
        &group.id,
        Direction::Egress,
        &group.egress,
        &wanted,
    );
    step.run(work, |()| match wanted.len() {
        0 => "none".to_owned(),
        n => format!("{n} rule(s)"),
    })
    .await
}

/// The VPC's default security group, which AWS makes with every VPC and cannot delete,
/// lets its members reach each other and anything outside. Nothing of the stack uses it;
/// its rules are revoked so that nothing put into it later is open either (CIS AWS
/// Foundations Benchmark 5.4, "the default security group of every VPC restricts all
/// traffic").
pub(super) async fn close_default_group(stack: &Stack, vpc_id: &str) -> Result<()> {
    let name = format!("default (of {})", stack.names.name("vpc"));
    let step = stack.progress.step(format!("security group {name}"));
    let work = async {
        let found = stack
            .clients
            .ec2
            .describe_security_groups()
            .filters(filter("vpc-id", vpc_id))
            .filters(filter("group-name", "default"))
            .send()
            .await
            .call(format!("DescribeSecurityGroups default of {vpc_id}"))?;
        // A VPC still to be made (plan) has none yet; `up` finds AWS's.
        let Some(group) = found.security_groups().first() else {
            return Ok(());
        };
        let id = group.group_id().context("security group without an id")?;
        for (direction, permissions) in [
            (Direction::Ingress, group.ip_permissions()),
            (Direction::Egress, group.ip_permissions_egress()),
        ] {
            let current = current_rules(permissions);
            converge_rules(stack, &step, &name, id, direction, &current, &[]).await?;
        }
        Ok(())
    };
    step.run(work, |()| "no rules".to_owned()).await
}

async fn find_group(stack: &Stack, vpc_id: &str, role: &str) -> Result<Option<SecurityGroup>> {
    let found = stack
        .clients
        .ec2
        .describe_security_groups()
        .set_filters(Some(ec2_stack_filters(&stack.names, Some(role))))
        .filters(filter("vpc-id", vpc_id))
        .send()
        .await
        .call(format!("DescribeSecurityGroups {}", stack.names.name(role)))?;
    single(found.security_groups().to_vec(), "security group")
}

/// Revokes the rules of `direction` that are not `wanted` and adds the missing ones.
async fn converge_rules(
    stack: &Stack,
    step: &Step,
    name: &str,
    id: &str,
    direction: Direction,
    current: &[GroupRule],
    wanted: &[(GroupRule, String)],
) -> Result<()> {
    let name_in_calls = direction.name();
    let word = name_in_calls.to_lowercase();
    let resource = format!("security group {name}");
    let unexpected: Vec<IpPermission> = current
        .iter()
        .filter(|rule| !wanted.iter().any(|(wanted, _)| wanted == *rule))
        .map(|rule| rule.permission(None))
        .collect();
    if !unexpected.is_empty()
        && stack.make(
            Action::Update,
            &resource,
            format!(
                "revoke {} {word} rule(s) it should not have",
                unexpected.len()
            ),
        )
    {
        step.set(&format!("revoking unexpected {word} rules"));
        // A new group's allow-all egress rule is revoked seconds after its creation.
        change_rules(stack, id, name, direction, Change::Revoke, &unexpected).await?;
    }
    let missing: Vec<&(GroupRule, String)> = wanted
        .iter()
        .filter(|(rule, _)| !current.contains(rule))
        .collect();
    let about: Vec<&str> = missing.iter().map(|(_, about)| about.as_str()).collect();
    if missing.is_empty()
        || !stack.make(
            Action::Update,
            &resource,
            format!("allow {word} {}", about.join("; ")),
        )
    {
        return Ok(());
    }
    step.set(&format!("adding {word} rules"));
    let permissions: Vec<IpPermission> = missing
        .iter()
        .map(|(rule, description)| rule.permission(Some(description)))
        .collect();
    // Both this group and a group a rule names may be new.
    change_rules(stack, id, name, direction, Change::Authorize, &permissions).await?;
    Ok(())
}

/// What [`change_rules`] does to a group's rules.
#[derive(Debug, Clone, Copy)]
enum Change {
    Authorize,
    Revoke,
}

impl Change {
    /// As the EC2 operations name it: `AuthorizeSecurityGroupIngress`...
    fn name(self) -> &'static str {
        match self {
            Change::Authorize => "Authorize",
            Change::Revoke => "Revoke",
        }
    }

    /// EC2's answer when the change is already made, as a second attempt after a lost
    /// answer finds it: "The specified rule ... already exists in that group" and "The
    /// specified rule does not exist in this security group"
    /// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).
    fn already(self) -> &'static str {
        match self {
            Change::Authorize => "InvalidPermission.Duplicate",
            Change::Revoke => "InvalidPermission.NotFound",
        }
    }
}

/// Authorizes or revokes `permissions` of `direction` on the group `id`, again while EC2
/// does not know the group, or one a rule names, yet ([`EC2_NEW`]). A change EC2 answers
/// as already made is read back ([`change_once`]).
async fn change_rules(
    stack: &Stack,
    id: &str,
    name: &str,
    direction: Direction,
    change: Change,
    permissions: &[IpPermission],
) -> Result<()> {
    let ec2 = &stack.clients.ec2;
    let asked = current_rules(permissions);
    let permissions = Some(permissions.to_vec());
    let call = format!("{}SecurityGroup{} {name}", change.name(), direction.name());
    let in_place = async || {
        let read = format!("DescribeSecurityGroups {id}");
        let described = once_known(stack.pace, &read, &EC2_NEW, || {
            ec2.describe_security_groups().group_ids(id).send()
        })
        .await?;
        let group = described
            .security_groups()
            .first()
            .with_context(|| format!("security group {id} is gone"))?;
        let now = current_rules(match direction {
            Direction::Ingress => group.ip_permissions(),
            Direction::Egress => group.ip_permissions_egress(),
        });
        let wanted_present = matches!(change, Change::Authorize);
        Ok(asked
            .iter()
            .all(|rule| now.contains(rule) == wanted_present))
    };
    let (pace, not_yet, already) = (stack.pace, &EC2_NEW, &[change.already()]);
    match (change, direction) {
        (Change::Authorize, Direction::Ingress) => {
            let send = || {
                ec2.authorize_security_group_ingress()
                    .group_id(id)
                    .set_ip_permissions(permissions.clone())
                    .send()
            };
            change_once(pace, &call, not_yet, already, send, in_place).await
        }
        (Change::Authorize, Direction::Egress) => {
            let send = || {
                ec2.authorize_security_group_egress()
                    .group_id(id)
                    .set_ip_permissions(permissions.clone())
                    .send()
            };
            change_once(pace, &call, not_yet, already, send, in_place).await
        }
        (Change::Revoke, Direction::Ingress) => {
            let send = || {
                ec2.revoke_security_group_ingress()
                    .group_id(id)
                    .set_ip_permissions(permissions.clone())
                    .send()
            };
            change_once(pace, &call, not_yet, already, send, in_place).await
        }
        (Change::Revoke, Direction::Egress) => {
            let send = || {
                ec2.revoke_security_group_egress()
                    .group_id(id)
                    .set_ip_permissions(permissions.clone())
                    .send()
            };
            change_once(pace, &call, not_yet, already, send, in_place).await
        }
    }
}
