//! The deploy's [`Fleet`] on AWS: the Auto Scaling group ([`crate::group`]) for capacity
//! and retirements, EC2 ([`crate::instances`]) for what each instance runs and for the
//! stack's instances outside the group, the load balancer for deregistering those, and the
//! [`Platform`] for health and consoles.

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::deploy::{Capacity, Fleet, Health, Member};
use crate::group::{self, template};
use crate::instances;
use crate::load_balancer;
use crate::platform::Platform;
use crate::stack::Stack;

/// Lines of console output shown for an instance that does not become healthy.
const CONSOLE_TAIL_LINES: usize = 12;
/// What the boot service prefixes its lines with.
pub const BOOT_PREFIX: &str = "realtime-stack boot:";

pub struct GroupFleet<'a, P> {
    pub stack: &'a Stack,
    pub platform: &'a P,
    pub target_group_arn: &'a str,
    /// The launch template, and the version a failed roll goes back to.
    pub template: &'a template::Template,
}

impl<P: Platform> GroupFleet<'_, P> {
    async fn group(&self) -> Result<group::Group> {
        group::describe(self.stack).await?.with_context(|| {
            format!(
                "the Auto Scaling group {} is gone: run `up` again to create it",
                self.stack.names.auto_scaling_group()
            )
        })
    }
}

impl<P: Platform> Fleet for GroupFleet<'_, P> {
    async fn members(&self) -> Result<Vec<Member>> {
        let (group, described, health) = futures::try_join!(
            self.group(),
            instances::describe(self.stack),
            self.platform
                .target_health(self.stack, self.target_group_arn)
        )?;
        let now = SystemTime::now();
        let serving: BTreeMap<&str, &group::Member> = group
            .members
            .iter()
            .filter(|member| member.serving())
            .map(|member| (member.id.as_str(), member))
            .collect();
        Ok(described
            .into_iter()
            .filter_map(|instance| {
                let in_group = serving.get(instance.id.as_str());
                // The group's instances on their way out are members no more; nor are
                // those the group launched and does not list yet.
                if in_group.is_none() && instance.group.is_some() {
                    return None;
                }
                Some(Member {
                    health: health
                        .get(&instance.id)
                        .cloned()
                        .unwrap_or(Health::Unregistered),
                    zone: in_group
                        .map(|member| member.zone.clone())
                        .or(instance.zone.clone())
                        .unwrap_or_default(),
                    in_group: in_group.is_some(),
                    age: instance
                        .launched
                        .and_then(|launched| now.duration_since(launched).ok())
                        .unwrap_or_default(),
                    id: instance.id,
                    fingerprint: instance.fingerprint,
                    redis_endpoint: instance.redis_endpoint,
                })
            })
            .collect())
    }

    async fn capacity(&self) -> Result<Capacity> {
        let group = self.group().await?;
        Ok(Capacity {
            desired: group.desired,
            max: group.max,
        })
    }

    async fn resize(&self, desired: Option<usize>, max: Option<usize>) -> Result<()> {
        group::resize(self.stack, desired, max).await
    }

    async fn retire(&self, ids: &[String]) -> Result<()> {
        for id in ids {
            group::terminate(self.stack, id, true).await?;
        }
        Ok(())
    }

    async fn retire_outside(&self, ids: &[String]) -> Result<()> {
        load_balancer::deregister(self.stack, self.target_group_arn, ids).await?;
        instances::terminate(self.stack, ids).await
    }

    async fn gone(&self, ids: &[String]) -> Result<bool> {
        let (group, health) = futures::try_join!(
            self.group(),
            self.platform
                .target_health(self.stack, self.target_group_arn)
        )?;
        Ok(ids.iter().all(|id| {
            !health.contains_key(id) && !group.members.iter().any(|member| member.id == *id)
        }))
    }

    async fn draining(&self) -> Result<Vec<String>> {
        Ok(self
            .group()
            .await?
            .members
            .into_iter()
            .filter(group::Member::leaving)
            .map(|member| member.id)
            .collect())
    }

    async fn roll_back(&self) -> Result<()> {
        match self.template.previous {
            Some(version) => template::set_default(self.stack, &self.template.id, version).await,
            None => Ok(()),
        }
    }

    async fn console_tail(&self, id: &str) -> String {
        match self.platform.console_output(self.stack, id).await {
            Ok(console) => boot_lines(&console, CONSOLE_TAIL_LINES),
            Err(err) => format!("(its console output could not be read: {err:#})"),
        }
    }

    async fn hold_scaling(&self, hold: bool) -> Result<()> {
        group::hold_scaling(self.stack, hold).await
    }
}

/// The last `count` lines of the boot service in `console`, or of the whole console when
/// the boot service has said nothing yet (it may not have started).
pub fn boot_lines(console: &str, count: usize) -> String {
    let boot: Vec<&str> = console
        .lines()
        .filter(|line| line.contains(BOOT_PREFIX))
        .collect();
    let lines: Vec<&str> = if boot.is_empty() {
        console.lines().collect()
    } else {
        boot
    };
    lines[lines.len().saturating_sub(count)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_service_lines_are_picked_out_of_the_console() {
        let console = "[  1.0] kernel: booting\n\
                       realtime-stack boot: attempt 1 failed: no tag yet\n\
                       [  2.0] systemd: started\n\
                       realtime-stack boot: attempt 2 failed: no tag yet\n";
        assert_eq!(
            boot_lines(console, 1),
            "realtime-stack boot: attempt 2 failed: no tag yet"
        );
        assert_eq!(
            boot_lines("[  1.0] kernel: booting\n", 5),
            "[  1.0] kernel: booting"
        );
    }
}
