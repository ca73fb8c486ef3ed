//! The deploy's [`Fleet`] on EC2 and the load balancer: instances described, launched
//! and terminated through [`crate::instances`], registered and deregistered through
//! [`crate::load_balancer`], and seen - health and console - through the [`Platform`].

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::Result;

use crate::deploy::{Fleet, Health, Member};
use crate::instances::{self, Launch};
use crate::load_balancer;
use crate::platform::Platform;
use crate::stack::Stack;

/// Lines of console output shown for an instance that does not become healthy.
const CONSOLE_TAIL_LINES: usize = 12;
/// What the boot service prefixes its lines with.
pub const BOOT_PREFIX: &str = "realtime-stack boot:";

pub struct Ec2Fleet<'a, P> {
    pub stack: &'a Stack,
    pub platform: &'a P,
    pub launch: &'a Launch<'a>,
    pub target_group_arn: &'a str,
}

impl<P: Platform> Fleet for Ec2Fleet<'_, P> {
    async fn members(&self) -> Result<Vec<Member>> {
        let (described, health) = futures::try_join!(
            instances::describe(self.stack),
            self.platform
                .target_health(self.stack, self.target_group_arn)
        )?;
        let now = SystemTime::now();
        Ok(described
            .into_iter()
            .map(|instance| Member {
                health: health
                    .get(&instance.id)
                    .cloned()
                    .unwrap_or(Health::Unregistered),
                stopped: instance.stopped(),
                age: instance
                    .launched
                    .and_then(|launched| now.duration_since(launched).ok())
                    .unwrap_or_default(),
                id: instance.id,
                fingerprint: instance.fingerprint,
                redis_endpoint: instance.redis_endpoint,
            })
            .collect())
    }

    async fn launch(&self, count: usize) -> Result<Vec<String>> {
        let ids = instances::launch(self.stack, self.launch, count).await?;
        let step = self
            .stack
            .progress
            .step(format!("launched {}", ids.join(" ")));
        step.run(
            async {
                instances::wait_running(self.stack, &step, &ids).await?;
                self.register(&ids).await
            },
            |_| "running, registered".to_owned(),
        )
        .await?;
        Ok(ids)
    }

    async fn register(&self, ids: &[String]) -> Result<()> {
        load_balancer::register(self.stack, self.target_group_arn, ids).await
    }

    async fn health(&self, ids: &[String]) -> Result<BTreeMap<String, Health>> {
        let all = self
            .platform
            .target_health(self.stack, self.target_group_arn)
            .await?;
        Ok(ids
            .iter()
            .map(|id| {
                let health = all.get(id).cloned().unwrap_or(Health::Unregistered);
                (id.clone(), health)
            })
            .collect())
    }

    async fn retire(&self, ids: &[String]) -> Result<()> {
        load_balancer::deregister(self.stack, self.target_group_arn, ids).await?;
        instances::terminate(self.stack, ids).await
    }

    async fn drained(&self, ids: &[String]) -> Result<bool> {
        let all = self
            .platform
            .target_health(self.stack, self.target_group_arn)
            .await?;
        Ok(ids.iter().all(|id| !all.contains_key(id)))
    }

    async fn console_tail(&self, id: &str) -> String {
        match self.platform.console_output(self.stack, id).await {
            Ok(console) => boot_lines(&console, CONSOLE_TAIL_LINES),
            Err(err) => format!("(its console output could not be read: {err:#})"),
        }
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
