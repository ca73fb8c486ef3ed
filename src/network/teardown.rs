//! Deleting the network: every resource carrying the stack's tag, each blocked by the
//! ones that use it, as the destroy loop needs them.

use anyhow::Result;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::Tag;
use futures::try_join;

use super::name_tag;
use super::routing::endpoint_gone;
use super::security_groups::{Peer, current_rules};
use crate::aws::{Call, delete_outcome, ec2_stack_filters, error_code};
use crate::engine::{Deletable, DeleteError, DeleteFuture};
use crate::stack::Stack;

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
            // Its page size is not documented: every page is read.
            ec2.describe_vpc_endpoints()
                .set_filters(tagged())
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
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
                current_rules(other.ip_permissions())
                    .iter()
                    .any(|rule| rule.peer == Peer::Group(id.to_owned()))
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
