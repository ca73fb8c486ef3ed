//! Deploying the chat servers through the Auto Scaling group: from the instances that
//! run now to the group's desired count of instances that each run what `up` would launch
//! now, never serving from fewer healthy instances than that on the way, and with the
//! zones kept balanced.
//!
//! [`plan`] decides, from what runs and how the load balancer sees it, what happens to
//! each instance: kept; replaced, when it runs another binary, image, type, boot
//! configuration or CPU credit option, or points at another Redis; or retired, when it is
//! one of the stack's instances that the group did not launch. No instance is judged by
//! its health: the group replaces the ones the load balancer finds unhealthy, by the load
//! balancer's thresholds and after the group's grace period, so a single health snapshot
//! (after a Redis failover, say, when every target fails at once) decides nothing, and
//! instances that booted while Redis was being created are kept.
//!
//! `up` carries the plan out with [`carry_out`], a batch of `instances.batch_size` at a
//! time. A batch is a surge: the group's desired capacity goes up by the batch, and the
//! group launches the new instances from the launch template's new default version, into
//! the zones with the fewest instances. Once they are healthy in the target group, as many
//! stale instances leave through `TerminateInstanceInAutoScalingGroup`, decrementing the
//! desired capacity; the group deregisters each, waits out the deregistration delay (its
//! server drains meanwhile: the boot service sees the target lifecycle state `Terminated`
//! in the instance metadata and stops it) and terminates it. The stale instances that
//! leave are chosen so that the zones stay balanced; when the group put a new instance in
//! the zone without stale ones, one more is launched (into the other zone, which then has
//! fewer) before anything leaves. A batch that is not healthy in time stops the roll: its
//! instances are terminated, the template's previous version is the default again, and
//! the old instances keep serving, as ECS's deployment circuit breaker or an instance
//! refresh's auto-rollback would. Last, the gate: `up` succeeds only when the group has
//! its desired count of instances in service, every one healthy, and none still draining.
//!
//! Why a surge through the desired capacity and not an instance refresh: the roll stays
//! visible and testable step by step (launch, healthy, retire, drained), every step is
//! the group's own doing (it stays the one owner of capacity), the zone choice is ours to
//! make, and LocalStack's moto has no instance refresh to exercise.
//!
//! This module knows no AWS SDK: it works through [`Fleet`], which the group implements
//! and the tests fake.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::Result;

use crate::engine::{Action, Pace, Progress, Step, wait_for};

/// What an instance runs. Recorded in its tags at launch; an instance whose fingerprint
/// differs from the one `up` would launch now is replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint {
    pub binary_sha256: String,
    pub ami: String,
    pub instance_type: String,
    /// SHA-256 of the rendered user-data: the port, the drain, the Redis scheme...
    pub boot_sha256: String,
    /// `standard` or `unlimited` for burstable types; empty for the others.
    pub cpu_credits: String,
}

impl Fingerprint {
    /// What differs from `wanted`, each as `"binary sha256 0123456789ab… → ba9876543210…"`.
    pub fn differences(&self, wanted: &Fingerprint) -> Vec<String> {
        let fields = [
            (
                "binary sha256",
                &self.binary_sha256,
                &wanted.binary_sha256,
                true,
            ),
            ("image", &self.ami, &wanted.ami, false),
            (
                "instance type",
                &self.instance_type,
                &wanted.instance_type,
                false,
            ),
            (
                "boot configuration",
                &self.boot_sha256,
                &wanted.boot_sha256,
                true,
            ),
            ("cpu credits", &self.cpu_credits, &wanted.cpu_credits, false),
        ];
        fields
            .into_iter()
            .filter(|(_, have, want, _)| have != want)
            .map(|(what, have, want, hash)| {
                let show = |value: &str| match value {
                    "" => "unrecorded".to_owned(),
                    value if hash => short_hash(value),
                    value => value.to_owned(),
                };
                format!("{what} {} → {}", show(have), show(want))
            })
            .collect()
    }
}

/// A SHA-256 as the CLI shows it: its first 12 hex digits.
pub fn short_hash(sha256: &str) -> String {
    match sha256.get(..12) {
        Some(prefix) if sha256.len() > 12 => format!("{prefix}…"),
        _ => sha256.to_owned(),
    }
}

/// How the load balancer sees an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// Registered, health checks not yet passed.
    Initial,
    /// Failing its health checks, with the reason the load balancer gives.
    Unhealthy(String),
    /// Deregistered, its open connections still served for the deregistration delay.
    Draining,
    /// Not registered with the target group.
    Unregistered,
    /// Any other state the load balancer reports (`unused`, `unavailable`), with why.
    Other(String),
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Healthy => write!(f, "healthy"),
            Health::Initial => write!(f, "initial (health checks not passed yet)"),
            Health::Unhealthy(reason) => write!(f, "unhealthy: {reason}"),
            Health::Draining => write!(f, "draining"),
            Health::Unregistered => write!(f, "not registered with the target group"),
            Health::Other(state) => write!(f, "{state}"),
        }
    }
}

/// One of the stack's live instances.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: String,
    pub fingerprint: Fingerprint,
    /// The Redis endpoint its tag names, once `up` wrote it.
    pub redis_endpoint: Option<String>,
    /// Its availability zone.
    pub zone: String,
    /// One of the group's instances, launching or in service; false for an instance of
    /// the stack that the group did not launch.
    pub in_group: bool,
    /// Time since its launch.
    pub age: Duration,
    pub health: Health,
}

impl Member {
    /// Why it is not what `up` launches now; empty when it is.
    fn stale(&self, wanted: &Wanted) -> Vec<String> {
        let mut reasons = self.fingerprint.differences(&wanted.fingerprint);
        if let (Some(have), Some(want)) = (&self.redis_endpoint, &wanted.redis_endpoint)
            && have != want
        {
            reasons.push(format!("redis endpoint {have} → {want}"));
        }
        reasons
    }
}

/// What `up` wants of the instances.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// Instances replaced at a time in a roll.
    pub batch: usize,
    pub fingerprint: Fingerprint,
    /// The Redis endpoint the instances must point at, once Redis exists.
    pub redis_endpoint: Option<String>,
    /// How long an instance may take from launch to healthy.
    pub health_timeout: Duration,
}

/// What happens to the instances: `plan` prints it, `up` carries it out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// The group's instances that stay; some may still be booting, and the gate waits.
    pub keep: Vec<String>,
    /// The group's instances that run something else, with what differs: replaced a batch
    /// at a time, each batch leaving only once its replacements are healthy.
    pub replace: Vec<(String, Vec<String>)>,
    /// The stack's instances outside the group, with why: drained and terminated once the
    /// group's instances are healthy.
    pub retire: Vec<(String, String)>,
}

impl Rollout {
    /// What the rollout does, resource by resource, as `plan` shows it.
    pub fn changes(&self) -> Vec<(Action, String, String)> {
        let instance = |id: &str| format!("instance {id}");
        let mut changes: Vec<(Action, String, String)> = self
            .replace
            .iter()
            .map(|(id, why)| (Action::Replace, instance(id), why.join(", ")))
            .collect();
        changes.extend(self.retire.iter().map(|(id, why)| {
            (
                Action::Delete,
                instance(id),
                format!("{why}; drained once the group's instances are healthy"),
            )
        }));
        changes
    }

    /// Whether the instances are already as wanted (the gate may still wait for some).
    pub fn is_empty(&self) -> bool {
        self.replace.is_empty() && self.retire.is_empty()
    }
}

/// Decides what happens to each of `members` to reach `wanted`.
pub fn plan(members: &[Member], wanted: &Wanted) -> Rollout {
    let mut rollout = Rollout::default();
    let mut stale = Vec::new();
    for member in members {
        if !member.in_group {
            rollout.retire.push((
                member.id.clone(),
                "not one of the Auto Scaling group's (launched before it)".to_owned(),
            ));
            continue;
        }
        let reasons = member.stale(wanted);
        if reasons.is_empty() {
            rollout.keep.push(member.id.clone());
        } else {
            stale.push((member, reasons));
        }
    }
    // The ones serving nobody first (their replacement is all gain), then the oldest.
    stale.sort_by_key(|(member, _)| {
        (
            member.health == Health::Healthy,
            std::cmp::Reverse(member.age),
        )
    });
    rollout.replace = stale
        .into_iter()
        .map(|(member, reasons)| (member.id.clone(), reasons))
        .collect();
    rollout
}

/// The group's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub desired: usize,
    pub max: usize,
}

/// The instances of one stack, as a deploy acts on them: the Auto Scaling group with the
/// load balancer on AWS and with `--local`, fakes in tests.
pub trait Fleet {
    /// The group's instances launching or in service, and the stack's instances outside
    /// it, with how the load balancer sees each.
    fn members(&self) -> impl Future<Output = Result<Vec<Member>>>;
    fn capacity(&self) -> impl Future<Output = Result<Capacity>>;
    /// Sets the group's desired capacity and maximum, those given.
    fn resize(
        &self,
        desired: Option<usize>,
        max: Option<usize>,
    ) -> impl Future<Output = Result<()>>;
    /// Takes `ids` out of the group, decrementing its desired capacity: deregistered,
    /// drained for the deregistration delay, terminated.
    fn retire(&self, ids: &[String]) -> impl Future<Output = Result<()>>;
    /// Deregisters and terminates `ids`, instances outside the group. Terminating starts
    /// each server's drain (the OS shutdown stops it with SIGTERM) while the load balancer
    /// keeps their open connections for the deregistration delay.
    fn retire_outside(&self, ids: &[String]) -> impl Future<Output = Result<()>>;
    /// Whether none of `ids` is in the group or the target group any more: drained.
    fn gone(&self, ids: &[String]) -> impl Future<Output = Result<bool>>;
    /// The group's instances on their way out (a scale in): draining, then terminated.
    fn draining(&self) -> impl Future<Output = Result<Vec<String>>>;
    /// Makes the group launch what it launched before this `up` again.
    fn roll_back(&self) -> impl Future<Output = Result<()>>;
    /// The last lines of an instance's console: what its boot service said.
    fn console_tail(&self, id: &str) -> impl Future<Output = String>;
    /// With `true`, keeps the group's scaling policy, scheduled actions and zone
    /// rebalancing from changing its size while a roll does; `false` lets them go on.
    fn hold_scaling(&self, hold: bool) -> impl Future<Output = Result<()>>;
}

/// How long a carried-out deploy waits, and how it reports.
pub struct Pacing<'a> {
    pub progress: &'a Progress,
    pub pace: Pace,
    pub health_timeout: Duration,
    /// Longest wait for retired instances to leave the group and the target group.
    pub drain_timeout: Duration,
}

/// How many instances a batch launches beyond its size, at most, to keep the zones
/// balanced (one per zone the group spans).
const MAX_BALANCING_LAUNCHES: usize = 2;

/// Carries `rollout` out on `fleet`; returns the ids of the group's instances afterwards,
/// every one of them healthy.
///
/// A roll holds the group's own scaling while it runs, as CloudFormation's rolling
/// updates suspend `AlarmNotification`, `ScheduledActions` and `AZRebalance`: a scale in
/// in the middle of a batch would take instances the roll counts on (or the new ones),
/// and a scale out would launch the template the roll may be rolling back. A roll cut
/// short leaves them held until the next `up`, which resumes them with the group.
pub async fn carry_out(
    fleet: &impl Fleet,
    rollout: &Rollout,
    wanted: &Wanted,
    pacing: &Pacing<'_>,
) -> Result<Vec<String>> {
    if rollout.replace.is_empty() {
        return roll_out(fleet, rollout, wanted, pacing).await;
    }
    fleet.hold_scaling(true).await?;
    let rolled = roll_out(fleet, rollout, wanted, pacing).await;
    let released = fleet.hold_scaling(false).await;
    let ids = rolled?;
    released?;
    Ok(ids)
}

async fn roll_out(
    fleet: &impl Fleet,
    rollout: &Rollout,
    wanted: &Wanted,
    pacing: &Pacing<'_>,
) -> Result<Vec<String>> {
    let progress = pacing.progress;
    let mut roll = Roll {
        fleet,
        wanted,
        pacing,
        max_before: None,
    };
    let mut stale: Vec<String> = rollout.replace.iter().map(|(id, _)| id.clone()).collect();
    for (id, why) in &rollout.replace {
        progress.note(&format!("instance {id} is replaced: {}", why.join(", ")));
    }
    let batch = wanted.batch.max(1);
    let batches = stale.len().div_ceil(batch);
    let mut round = 0;
    while !stale.is_empty() {
        round += 1;
        let size = batch.min(stale.len());
        let step = progress.step(format!("rolling batch {round}/{batches}"));
        let retired = step
            .run(roll.batch(&stale, size, &step), |ids| {
                format!("replaced {}", ids.join(" "))
            })
            .await?;
        // Those that left meanwhile (the group replaced an unhealthy one) need nothing.
        let present: Vec<String> = fleet.members().await?.into_iter().map(|m| m.id).collect();
        stale.retain(|id| !retired.contains(id) && present.contains(id));
    }
    if !rollout.retire.is_empty() {
        let ids: Vec<String> = rollout.retire.iter().map(|(id, _)| id.clone()).collect();
        let step = progress.step(format!("retiring {}", ids.join(" ")));
        step.run(
            async {
                // They serve until the group's instances do.
                roll.gate(&step).await?;
                step.set("deregistering and terminating (the servers drain)");
                fleet.retire_outside(&ids).await?;
                roll.drained(&ids, &step).await
            },
            |_| "drained and terminated".to_owned(),
        )
        .await?;
    }
    roll.restore_max().await?;
    let step = progress.step("instances healthy");
    step.run(roll.gate(&step), |ids| ids.join(" ")).await
}

/// A roll under way: what it needs to undo.
struct Roll<'a, F> {
    fleet: &'a F,
    wanted: &'a Wanted,
    pacing: &'a Pacing<'a>,
    /// The group's maximum before the roll raised it to make room for a batch.
    max_before: Option<usize>,
}

impl<F: Fleet> Roll<'_, F> {
    /// One batch: `size` new instances launched and healthy, then as many stale ones (of
    /// `stale`, in order) leave, chosen to keep the zones balanced. Returns those.
    async fn batch(&mut self, stale: &[String], size: usize, step: &Step) -> Result<Vec<String>> {
        let fleet = self.fleet;
        let before: Vec<String> = fleet.members().await?.into_iter().map(|m| m.id).collect();
        let desired = fleet.capacity().await?.desired;
        step.set("launching the replacement(s)");
        self.surge(desired + size).await?;
        if let Err(err) = self.launched(&before, size, step).await {
            return Err(self.undo(&before, err).await);
        }
        let mut extra = 0;
        let leaving = loop {
            let members = fleet.members().await?;
            let serving = members.iter().filter(|m| m.in_group).count();
            let need = serving.saturating_sub(desired);
            if let Some(ids) = retirements(&members, stale, need) {
                break ids;
            }
            if extra == MAX_BALANCING_LAUNCHES {
                self.pacing.progress.note(
                    "the group keeps launching into the zone that has no instance to replace: \
                     the zones are left unbalanced, for the group's AZ rebalancing to even out",
                );
                break stale
                    .iter()
                    .filter(|id| members.iter().any(|m| m.in_group && m.id == **id))
                    .take(need)
                    .cloned()
                    .collect();
            }
            // The new instances went to the zone without stale ones: the group launches
            // the next one into the zone that then has fewer.
            extra += 1;
            step.set("launching one more, into the other zone");
            let now: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
            let desired_now = fleet.capacity().await?.desired;
            self.surge(desired_now + 1).await?;
            if let Err(err) = self.launched(&now, 1, step).await {
                return Err(self.undo(&before, err).await);
            }
        };
        step.set("deregistering, draining and terminating the replaced instance(s)");
        fleet.retire(&leaving).await?;
        self.drained(&leaving, step).await?;
        Ok(leaving
            .into_iter()
            .filter(|id| stale.contains(id))
            .collect())
    }

    /// Raises the desired capacity to `desired`, and the maximum with it when it is lower.
    async fn surge(&mut self, desired: usize) -> Result<()> {
        let max = self.fleet.capacity().await?.max;
        if desired > max {
            self.max_before.get_or_insert(max);
            self.fleet.resize(Some(desired), Some(desired)).await
        } else {
            self.fleet.resize(Some(desired), None).await
        }
    }

    /// Sets the maximum back to what it was before the roll.
    async fn restore_max(&mut self) -> Result<()> {
        match self.max_before.take() {
            Some(max) => self.fleet.resize(None, Some(max)).await,
            None => Ok(()),
        }
    }

    /// Waits until `count` instances not in `before`, running what `up` launches now, are
    /// healthy; fails naming those that are not, with the end of their consoles.
    async fn launched(&self, before: &[String], count: usize, step: &Step) -> Result<()> {
        let wanted = self.wanted;
        let fresh = |members: Vec<Member>| -> Vec<Member> {
            members
                .into_iter()
                .filter(|m| m.in_group && !before.contains(&m.id) && m.stale(wanted).is_empty())
                .collect()
        };
        let last = std::sync::Mutex::new(Vec::new());
        let waited = wait_for(
            step,
            self.pacing.pace,
            "the new instance(s) to be healthy in the target group",
            self.pacing.health_timeout,
            None,
            || async {
                let new = fresh(self.fleet.members().await?);
                let healthy = new.iter().filter(|m| m.health == Health::Healthy).count();
                *last.lock().expect("last health") = new;
                Ok((healthy >= count).then_some(()))
            },
        )
        .await;
        match waited {
            Ok(()) => Ok(()),
            Err(err) => {
                let last = last.into_inner().expect("last health");
                Err(self.explain(err, &last).await)
            }
        }
    }

    /// The roll stopped: the batch's instances go, the group launches what it did before,
    /// and the maximum is set back.
    async fn undo(&mut self, before: &[String], why: anyhow::Error) -> anyhow::Error {
        let fleet = self.fleet;
        let undone = async {
            let new: Vec<String> = fleet
                .members()
                .await?
                .into_iter()
                .filter(|m| m.in_group && !before.contains(&m.id))
                .map(|m| m.id)
                .collect();
            if !new.is_empty() {
                fleet.retire(&new).await?;
            }
            fleet.roll_back().await?;
            self.restore_max().await
        };
        let cleanup = match undone.await {
            Ok(()) => String::new(),
            Err(err) => format!("\n(and undoing the batch failed: {err:#})"),
        };
        anyhow::anyhow!(
            "the roll stopped: {why:#}\nThe instances it was to replace are still serving and \
             the group launches what it launched before; fix the cause and run `up` again{cleanup}"
        )
    }

    /// Waits until `ids` have left the group and the target group.
    async fn drained(&self, ids: &[String], step: &Step) -> Result<()> {
        wait_for(
            step,
            self.pacing.pace,
            "the retired instances to drain",
            self.pacing.drain_timeout,
            None,
            || async { Ok(self.fleet.gone(ids).await?.then_some(())) },
        )
        .await
    }

    /// Waits until the group has its desired count of instances in service, every one
    /// healthy and running what `up` launches now, and none draining; returns their ids.
    async fn gate(&self, step: &Step) -> Result<Vec<String>> {
        let last = std::sync::Mutex::new(Vec::new());
        let waited = wait_for(
            step,
            self.pacing.pace,
            "every instance to be healthy in the target group",
            self.pacing.health_timeout,
            None,
            || async {
                let desired = self.fleet.capacity().await?.desired;
                let members: Vec<Member> = self
                    .fleet
                    .members()
                    .await?
                    .into_iter()
                    .filter(|m| m.in_group)
                    .collect();
                let draining = self.fleet.draining().await?;
                let ready = members.len() == desired
                    && members.iter().all(|m| m.health == Health::Healthy)
                    && draining.is_empty();
                let mut ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
                ids.sort();
                *last.lock().expect("last health") = members;
                Ok(ready.then_some(ids))
            },
        )
        .await;
        match waited {
            Ok(ids) => Ok(ids),
            Err(err) => {
                let last = last.into_inner().expect("last health");
                Err(self.explain(err, &last).await)
            }
        }
    }

    /// `err`, with how each unhealthy one of `members` was last seen and its console.
    async fn explain(&self, err: anyhow::Error, members: &[Member]) -> anyhow::Error {
        let mut report = format!("{err:#}");
        for member in members.iter().filter(|m| m.health != Health::Healthy) {
            report.push_str(&format!(
                "\ninstance {} is {}; the end of its console:\n{}",
                member.id,
                member.health,
                indent(&self.fleet.console_tail(&member.id).await)
            ));
        }
        anyhow::anyhow!(report)
    }
}

/// Which `need` of the group's `members` leave after a surge so that the zones stay
/// balanced: each time, one in the zone that has the most, a stale one (of `stale`, in
/// order) while any is left, else one of the newest surplus. None when the zone that has
/// the most holds no stale instance while another does: the group must launch into
/// that one first.
pub fn retirements(members: &[Member], stale: &[String], need: usize) -> Option<Vec<String>> {
    let mut zones: BTreeMap<&str, Vec<&Member>> = BTreeMap::new();
    for member in members.iter().filter(|m| m.in_group) {
        zones.entry(member.zone.as_str()).or_default().push(member);
    }
    let mut stale_left: Vec<&String> = stale
        .iter()
        .filter(|id| members.iter().any(|m| m.in_group && m.id == **id))
        .collect();
    let mut chosen = Vec::new();
    for _ in 0..need {
        let most = zones.values().map(Vec::len).max().unwrap_or(0);
        if most == 0 {
            break;
        }
        let fullest: Vec<&str> = zones
            .iter()
            .filter(|(_, members)| members.len() == most)
            .map(|(zone, _)| *zone)
            .collect();
        let pick = match stale_left.iter().position(|id| {
            fullest
                .iter()
                .any(|zone| zones[zone].iter().any(|m| m.id == **id))
        }) {
            Some(index) => stale_left.remove(index).clone(),
            None if !stale_left.is_empty() => return None,
            None => {
                // A surplus instance that runs what is wanted: the youngest of a fullest zone.
                let zone = fullest[0];
                zones[zone]
                    .iter()
                    .min_by_key(|m| m.age)
                    .map(|m| m.id.clone())?
            }
        };
        for members in zones.values_mut() {
            members.retain(|m| m.id != pick);
        }
        chosen.push(pick);
    }
    Some(chosen)
}

fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (nothing yet)".to_owned();
    }
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests;
