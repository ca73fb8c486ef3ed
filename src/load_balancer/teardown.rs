//! Deleting the load balancer, its listeners and the target group, in that order.

use anyhow::{Context, Result};
use aws_sdk_elasticloadbalancingv2::Client;
use aws_sdk_elasticloadbalancingv2::types::LoadBalancerAttribute;
use futures::try_join;

use super::listeners::listeners;
use super::target_group::find_target_group;
use super::{not_ours, owned_load_balancer_tagged, recorded_alias};
use crate::aws::delete_outcome;
use crate::dns::Record;
use crate::engine::{Deletable, DeleteFuture};
use crate::stack::Stack;

#[derive(Debug, Clone, Copy)]
enum Kind {
    Listener,
    LoadBalancer,
    TargetGroup,
}

/// One load-balancing resource of the stack, as the destroy loop sees it.
struct Elbv2Resource {
    elbv2: Client,
    kind: Kind,
    arn: String,
    label: String,
    blocked_by: Vec<String>,
}

fn key(kind: Kind, arn: &str) -> String {
    let prefix = match kind {
        Kind::Listener => "elbv2-listener",
        Kind::LoadBalancer => "elbv2-lb",
        Kind::TargetGroup => "elbv2-tg",
    };
    format!("{prefix}:{arn}")
}

impl Deletable for Elbv2Resource {
    fn key(&self) -> String {
        key(self.kind, &self.arn)
    }

    fn label(&self) -> String {
        self.label.clone()
    }

    fn blocked_by(&self) -> Vec<String> {
        self.blocked_by.clone()
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let arn = self.arn.as_str();
            match self.kind {
                Kind::Listener => delete_outcome(
                    self.elbv2.delete_listener().listener_arn(arn).send().await,
                    &format!("DeleteListener {arn}"),
                    &["ListenerNotFound"],
                ),
                Kind::LoadBalancer => {
                    // `up` turns deletion protection on; AWS refuses the delete until it
                    // is off.
                    delete_outcome(
                        self.elbv2
                            .modify_load_balancer_attributes()
                            .load_balancer_arn(arn)
                            .attributes(
                                LoadBalancerAttribute::builder()
                                    .key("deletion_protection.enabled")
                                    .value("false")
                                    .build(),
                            )
                            .send()
                            .await,
                        &format!("ModifyLoadBalancerAttributes {arn}"),
                        &["LoadBalancerNotFound"],
                    )?;
                    delete_outcome(
                        self.elbv2
                            .delete_load_balancer()
                            .load_balancer_arn(arn)
                            .send()
                            .await,
                        &format!("DeleteLoadBalancer {arn}"),
                        &["LoadBalancerNotFound"],
                    )
                }
                // Refused with ResourceInUse until the load balancer is really gone.
                Kind::TargetGroup => delete_outcome(
                    self.elbv2
                        .delete_target_group()
                        .target_group_arn(arn)
                        .send()
                        .await,
                    &format!("DeleteTargetGroup {arn}"),
                    &["TargetGroupNotFound"],
                ),
            }
        })
    }
}

/// `found` if it is the stack's; otherwise nothing, with a note saying what is left alone.
pub(super) fn ours_only<T>(
    stack: &Stack,
    found: Option<(T, bool)>,
    what: &str,
    name: String,
) -> Option<T> {
    match found? {
        (resource, true) => Some(resource),
        (_, false) => {
            stack
                .progress
                .note(&format!("left alone: {}", not_ours(what, &name, stack)));
            None
        }
    }
}

/// The stack's load balancer with its listeners, its target group, and the bucket of its
/// access logs (emptied once the load balancer no longer writes into it). A load balancer
/// or target group of the stack's names that is not the stack's is left alone.
pub async fn deletables(stack: &Stack, account: &str) -> Result<Vec<Box<dyn Deletable>>> {
    let elbv2 = &stack.clients.elbv2;
    let (lb, group) = try_join!(owned_load_balancer_tagged(stack), find_target_group(stack))?;
    let group = ours_only(stack, group, "target group", stack.names.target_group());
    let mut resources = Vec::new();
    let mut lb_keys = Vec::new();
    if let Some((lb, tags)) = lb {
        let arn = lb
            .load_balancer_arn()
            .context("load balancer without an ARN")?
            .to_owned();
        let mut listener_keys = Vec::new();
        for listener in listeners(stack, &arn).await? {
            let Some(listener_arn) = listener.listener_arn() else {
                continue;
            };
            listener_keys.push(key(Kind::Listener, listener_arn));
            resources.push(Elbv2Resource {
                elbv2: elbv2.clone(),
                kind: Kind::Listener,
                arn: listener_arn.to_owned(),
                label: format!(
                    "listener {}:{}",
                    listener.protocol().map(|p| p.as_str()).unwrap_or("?"),
                    listener.port().unwrap_or_default()
                ),
                blocked_by: vec![],
            });
        }
        lb_keys.extend(listener_keys.iter().cloned());
        lb_keys.push(key(Kind::LoadBalancer, &arn));
        // The aliases to it go first: only the load balancer leads `destroy` to them
        // (record sets carry no tags), so one deleted before them would leave them for good.
        let mut blocked_by = listener_keys;
        let aliases = [
            Some(stack.spec.domain.name.clone()),
            recorded_alias(&tags).map(|alias| alias.name),
        ];
        blocked_by.extend(
            aliases
                .into_iter()
                .flatten()
                .map(|name| Record::alias_a(&name, "", "").key()),
        );
        resources.push(Elbv2Resource {
            elbv2: elbv2.clone(),
            kind: Kind::LoadBalancer,
            label: format!("load balancer {}", stack.names.load_balancer()),
            arn,
            blocked_by,
        });
    }
    let load_balancer_key = lb_keys.last().cloned();
    if let Some(group) = group {
        resources.push(Elbv2Resource {
            elbv2: elbv2.clone(),
            kind: Kind::TargetGroup,
            arn: group
                .target_group_arn()
                .context("target group without an ARN")?
                .to_owned(),
            label: format!("target group {}", stack.names.target_group()),
            blocked_by: lb_keys,
        });
    }
    let logs = super::access_logs::deletables(stack, account, load_balancer_key).await?;
    Ok(resources
        .into_iter()
        .map(|resource| Box::new(resource) as Box<dyn Deletable>)
        .chain(logs)
        .collect())
}
