//! Where the stack's instances run, as the commands see it. On AWS, EC2 boots the
//! instances and the load balancer health-checks them; with `--local`, the local
//! emulator does both ([`crate::local`]). The commands ask a [`Platform`] for the few
//! things that differ - how the load balancer sees each instance, what an instance's
//! console says, and the URL to give the user - and do everything else the same way.

use std::collections::BTreeMap;
use std::future::Future;

use anyhow::Result;

use crate::canary::Endpoint;
use crate::deploy::Health;
use crate::stack::Stack;
use crate::{instances, load_balancer};

pub trait Platform {
    /// How the load balancer sees each target of the target group `target_group_arn`, by
    /// instance id.
    fn target_health(
        &self,
        stack: &Stack,
        target_group_arn: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, Health>>>;
    /// What the instance's console shows, oldest line first.
    fn console_output(
        &self,
        stack: &Stack,
        instance_id: &str,
    ) -> impl Future<Output = Result<String>>;
    /// Where users reach the service.
    fn url(&self, stack: &Stack) -> String;
    /// Where the canary reaches the chat from this machine, behind the load balancer
    /// `load_balancer_dns`; an error when there is none to reach.
    fn chat_endpoint(&self, stack: &Stack, load_balancer_dns: &str) -> Result<Endpoint>;
}

/// The stack on AWS (or on what stands for it at the configured endpoint).
pub struct Aws;

impl Platform for Aws {
    async fn target_health(
        &self,
        stack: &Stack,
        target_group_arn: &str,
    ) -> Result<BTreeMap<String, Health>> {
        load_balancer::target_health(stack, target_group_arn).await
    }

    async fn console_output(&self, stack: &Stack, instance_id: &str) -> Result<String> {
        instances::console_output(stack, instance_id).await
    }

    fn url(&self, stack: &Stack) -> String {
        format!("https://{}/", stack.spec.domain.name)
    }

    /// The load balancer's own name with the domain as the TLS server name: a resolver's
    /// negative cache of the new alias record does not matter.
    fn chat_endpoint(&self, stack: &Stack, load_balancer_dns: &str) -> Result<Endpoint> {
        let allowed = &stack.spec.network.allowed_cidrs;
        Ok(Endpoint {
            url: format!("wss://{}/ws", stack.spec.domain.name),
            connect: Some((load_balancer_dns.to_owned(), 443)),
            allowed: (!allowed.iter().any(|cidr| cidr == "0.0.0.0/0")).then(|| allowed.clone()),
        })
    }
}
