//! Deploying the chat servers: from the instances that run now to `instances.count`
//! instances that each run what `up` would launch now, without ever serving from fewer
//! healthy instances than that on the way.
//!
//! [`plan`] decides, from what runs and how the load balancer sees it, what happens to
//! each instance: kept, replaced (it runs another binary, image, type or boot
//! configuration, or points at another Redis), removed (beyond the count), or discarded
//! (it serves nobody: stopped, or not healthy long after its launch). `plan` prints that;
//! `up` carries it out with [`carry_out`]: discarded instances go first, missing capacity
//! is launched, extras are drained and removed, then the replacements roll `batch` at a
//! time - launch, wait until healthy, retire the old ones, wait out their drain. A
//! replacement that does not become healthy stops the roll and leaves the old instances
//! serving, like ECS's deployment circuit breaker. Last, the gate: `up` succeeds only when
//! every instance it keeps is healthy.
//!
//! This module knows no AWS SDK: it works through [`Fleet`], which EC2 and the load
//! balancer implement and the tests fake.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use anyhow::{Result, bail};

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
    /// Stopped or stopping: it will not serve until someone starts it.
    pub stopped: bool,
    /// Time since its launch.
    pub age: Duration,
    pub health: Health,
}

/// What `up` wants of the fleet.
#[derive(Clone, Debug)]
pub struct Wanted {
    pub count: usize,
    /// Instances replaced at a time in a roll.
    pub batch: usize,
    pub fingerprint: Fingerprint,
    /// The Redis endpoint the instances must point at, once Redis exists.
    pub redis_endpoint: Option<String>,
    /// How long an instance may take from launch to healthy.
    pub health_timeout: Duration,
}

/// What happens to the fleet: `plan` prints it, `up` carries it out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    /// Instances that stay; some may still be booting, and the gate waits for them.
    pub keep: Vec<String>,
    /// Kept instances not registered with the target group yet (launched before it
    /// existed): registered first.
    pub register: Vec<String>,
    /// New instances launched at once, for missing capacity.
    pub add: usize,
    /// Serving instances that run something else, with what differs: replaced `batch`
    /// at a time, each batch retired only once its replacements are healthy.
    pub replace: Vec<(String, Vec<String>)>,
    /// Serving instances beyond `count`, with why: drained, then terminated.
    pub remove: Vec<(String, String)>,
    /// Instances that serve nobody, with why: terminated at once.
    pub discard: Vec<(String, String)>,
}

impl Rollout {
    /// What the rollout does, resource by resource, as `plan` shows it.
    pub fn changes(&self) -> Vec<(Action, String, String)> {
        let instance = |id: &str| format!("instance {id}");
        let mut changes = Vec::new();
        for (id, why) in &self.discard {
            changes.push((
                Action::Delete,
                instance(id),
                format!("{why}; terminated at once"),
            ));
        }
        if self.add > 0 {
            changes.push((
                Action::Create,
                format!("{} instance(s)", self.add),
                "to reach instances.count".to_owned(),
            ));
        }
        if !self.register.is_empty() {
            changes.push((
                Action::Update,
                "target group".to_owned(),
                format!("register {}", self.register.join(" ")),
            ));
        }
        for (id, why) in &self.remove {
            changes.push((
                Action::Delete,
                instance(id),
                format!("{why}; drained first"),
            ));
        }
        for (id, why) in &self.replace {
            changes.push((Action::Replace, instance(id), why.join(", ")));
        }
        changes
    }

    /// Whether the fleet is already as wanted (the gate may still wait for booting ones).
    pub fn is_empty(&self) -> bool {
        self.add == 0
            && self.register.is_empty()
            && self.replace.is_empty()
            && self.remove.is_empty()
            && self.discard.is_empty()
    }
}

/// Decides what happens to each of `members` to reach `wanted`.
pub fn plan(members: &[Member], wanted: &Wanted) -> Rollout {
    let mut rollout = Rollout::default();
    let mut current = Vec::new();
    let mut stale = Vec::new();
    for member in members {
        let mut reasons = member.fingerprint.differences(&wanted.fingerprint);
        if let (Some(have), Some(want)) = (&member.redis_endpoint, &wanted.redis_endpoint)
            && have != want
        {
            reasons.push(format!("redis endpoint {have} → {want}"));
        }
        let serving = member.health == Health::Healthy;
        let booting = !member.stopped && member.age < wanted.health_timeout;
        if member.stopped {
            rollout
                .discard
                .push((member.id.clone(), "stopped".to_owned()));
        } else if !reasons.is_empty() && serving {
            stale.push((member, reasons));
        } else if !reasons.is_empty() {
            reasons.push(format!("not serving ({})", member.health));
            rollout
                .discard
                .push((member.id.clone(), reasons.join(", ")));
        } else if serving || booting {
            current.push(member);
        } else {
            rollout.discard.push((
                member.id.clone(),
                format!(
                    "not healthy {} s after its launch ({})",
                    member.age.as_secs(),
                    member.health
                ),
            ));
        }
    }
    // Serving instances first, the oldest first: they keep their clients.
    current.sort_by_key(|member| {
        (
            member.health != Health::Healthy,
            std::cmp::Reverse(member.age),
        )
    });
    let beyond = |count: usize| format!("beyond instances.count ({count})");
    for member in current.iter().skip(wanted.count) {
        rollout
            .remove
            .push((member.id.clone(), beyond(wanted.count)));
    }
    for member in current.iter().take(wanted.count) {
        rollout.keep.push(member.id.clone());
        if member.health == Health::Unregistered {
            rollout.register.push(member.id.clone());
        }
    }
    let room = wanted.count - rollout.keep.len();
    stale.sort_by_key(|(member, _)| std::cmp::Reverse(member.age));
    for (index, (member, reasons)) in stale.into_iter().enumerate() {
        if index < room {
            rollout.replace.push((member.id.clone(), reasons));
        } else {
            rollout
                .remove
                .push((member.id.clone(), beyond(wanted.count)));
        }
    }
    rollout.add = room - rollout.replace.len();
    rollout
}

/// The instances of one stack, as a deploy acts on them: EC2 and the load balancer on
/// AWS and with `--local`, fakes in tests.
pub trait Fleet {
    /// The stack's live instances, with how the load balancer sees each.
    fn members(&self) -> impl Future<Output = Result<Vec<Member>>>;
    /// Launches `count` instances running what `up` wants, waits until they run and
    /// registers them with the target group; returns their ids.
    fn launch(&self, count: usize) -> impl Future<Output = Result<Vec<String>>>;
    /// Registers `ids` with the target group.
    fn register(&self, ids: &[String]) -> impl Future<Output = Result<()>>;
    /// How the load balancer sees `ids`.
    fn health(&self, ids: &[String]) -> impl Future<Output = Result<BTreeMap<String, Health>>>;
    /// Deregisters `ids` and terminates them. Terminating starts each server's drain (the
    /// OS shutdown stops the service with SIGTERM), while the load balancer keeps their
    /// open connections for the deregistration delay, which the drain fits inside.
    fn retire(&self, ids: &[String]) -> impl Future<Output = Result<()>>;
    /// Whether none of `ids` is in the target group any more: their drain is over.
    fn drained(&self, ids: &[String]) -> impl Future<Output = Result<bool>>;
    /// The last lines of an instance's console: what its boot service said.
    fn console_tail(&self, id: &str) -> impl Future<Output = String>;
}

/// How long a carried-out deploy waits, and how it reports.
pub struct Pacing<'a> {
    pub progress: &'a Progress,
    pub pace: Pace,
    pub health_timeout: Duration,
    /// Longest wait for retired instances to leave the target group.
    pub drain_timeout: Duration,
}

/// Carries `rollout` out on `fleet`; returns the ids of the instances the stack runs
/// afterwards, every one of them healthy.
pub async fn carry_out(
    fleet: &impl Fleet,
    rollout: &Rollout,
    wanted: &Wanted,
    pacing: &Pacing<'_>,
) -> Result<Vec<String>> {
    let progress = pacing.progress;
    if !rollout.discard.is_empty() {
        let ids: Vec<String> = rollout.discard.iter().map(|(id, _)| id.clone()).collect();
        let step = progress.step(format!("discarding {}", ids.join(" ")));
        for (id, why) in &rollout.discard {
            progress.note(&format!("instance {id} is discarded: {why}"));
        }
        step.set("terminating");
        step.run(fleet.retire(&ids), |_| "terminated".to_owned())
            .await?;
    }
    if !rollout.register.is_empty() {
        let step = progress.step(format!("registering {}", rollout.register.join(" ")));
        step.run(fleet.register(&rollout.register), |_| {
            "registered".to_owned()
        })
        .await?;
    }
    let mut running = rollout.keep.clone();
    if rollout.add > 0 {
        let step = progress.step(format!("{} new instance(s)", rollout.add));
        step.set("launching");
        let added = step
            .run(fleet.launch(rollout.add), |ids| ids.join(" "))
            .await?;
        running.extend(added);
    }
    if !rollout.remove.is_empty() {
        let ids: Vec<String> = rollout.remove.iter().map(|(id, _)| id.clone()).collect();
        let step = progress.step(format!("removing {}", ids.join(" ")));
        step.run(retire_and_drain(fleet, &ids, &step, pacing), |_| {
            "drained and terminated".to_owned()
        })
        .await?;
    }
    let batch = wanted.batch.max(1);
    for (round, old) in rollout.replace.chunks(batch).enumerate() {
        let old_ids: Vec<String> = old.iter().map(|(id, _)| id.clone()).collect();
        let step = progress.step(format!(
            "rolling batch {}/{}: {}",
            round + 1,
            rollout.replace.len().div_ceil(batch),
            old_ids.join(" ")
        ));
        for (id, why) in old {
            progress.note(&format!("instance {id} is replaced: {}", why.join(", ")));
        }
        let work = async {
            step.set("launching the replacement(s)");
            let new = fleet.launch(old.len()).await?;
            if let Err(err) = gate(fleet, &new, &step, pacing).await {
                bail!(
                    "the roll stopped: {err:#}\nThe instances it was to replace ({}) are still \
                     serving; fix the cause and run `up` again (it replaces the unhealthy ones)",
                    old_ids.join(" ")
                );
            }
            retire_and_drain(fleet, &old_ids, &step, pacing).await?;
            Ok(new)
        };
        let new = step
            .run(work, |new| format!("replaced by {}", new.join(" ")))
            .await?;
        running.extend(new);
    }
    let step = progress.step(format!("{} instance(s) healthy", wanted.count));
    step.run(gate(fleet, &running, &step, pacing), |_| running.join(" "))
        .await?;
    Ok(running)
}

/// Retires `ids` and waits until the load balancer has let them go.
async fn retire_and_drain(
    fleet: &impl Fleet,
    ids: &[String],
    step: &Step,
    pacing: &Pacing<'_>,
) -> Result<()> {
    step.set("deregistering and terminating (the servers drain)");
    fleet.retire(ids).await?;
    wait_for(
        step,
        pacing.pace,
        "the retired instances to drain",
        pacing.drain_timeout,
        None,
        || async { Ok(fleet.drained(ids).await?.then_some(())) },
    )
    .await
}

/// Waits until every one of `ids` is healthy; fails naming the ones that are not, with
/// the end of their consoles.
async fn gate(fleet: &impl Fleet, ids: &[String], step: &Step, pacing: &Pacing<'_>) -> Result<()> {
    let last = RefCell::new(BTreeMap::new());
    let waited = wait_for(
        step,
        pacing.pace,
        "every instance to be healthy in the target group",
        pacing.health_timeout,
        None,
        || async {
            let health = fleet.health(ids).await?;
            let all = ids
                .iter()
                .all(|id| health.get(id) == Some(&Health::Healthy));
            last.replace(health);
            Ok(all.then_some(()))
        },
    )
    .await;
    if let Err(err) = waited {
        let mut report = format!("{err:#}");
        let last = last.into_inner();
        for id in ids {
            let health = last.get(id).cloned().unwrap_or(Health::Unregistered);
            if health == Health::Healthy {
                continue;
            }
            report.push_str(&format!(
                "\ninstance {id} is {health}; the end of its console:\n{}",
                indent(&fleet.console_tail(id).await)
            ));
        }
        bail!(report);
    }
    Ok(())
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
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn fingerprint(binary: &str) -> Fingerprint {
        Fingerprint {
            binary_sha256: binary.repeat(64 / binary.len()),
            ami: "ami-1".into(),
            instance_type: "t3.micro".into(),
            boot_sha256: "b".repeat(64),
        }
    }

    fn wanted(count: usize) -> Wanted {
        Wanted {
            count,
            batch: 1,
            fingerprint: fingerprint("new"),
            redis_endpoint: Some("redis:6379".into()),
            health_timeout: 10 * MINUTE,
        }
    }

    fn member(id: &str, binary: &str, health: Health, age: Duration) -> Member {
        Member {
            id: id.into(),
            fingerprint: fingerprint(binary),
            redis_endpoint: Some("redis:6379".into()),
            stopped: false,
            age,
            health,
        }
    }

    #[test]
    fn a_fleet_as_wanted_is_left_alone() {
        let members = [
            member("i-1", "new", Health::Healthy, 60 * MINUTE),
            member("i-2", "new", Health::Healthy, 60 * MINUTE),
        ];
        let rollout = plan(&members, &wanted(2));
        assert!(rollout.is_empty(), "{rollout:?}");
        assert_eq!(rollout.keep, ["i-1", "i-2"]);
    }

    #[test]
    fn a_new_binary_replaces_every_serving_instance_with_the_reason() {
        let members = [
            member("i-1", "old", Health::Healthy, 60 * MINUTE),
            member("i-2", "old", Health::Healthy, 30 * MINUTE),
        ];
        let rollout = plan(&members, &wanted(2));
        assert_eq!(rollout.add, 0);
        let replaced: Vec<&str> = rollout.replace.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(replaced, ["i-1", "i-2"]);
        assert_eq!(
            rollout.replace[0].1,
            ["binary sha256 oldoldoldold… → newnewnewnew…"]
        );
    }

    #[test]
    fn a_booting_instance_is_waited_for_and_one_never_healthy_is_discarded() {
        let members = [
            member(
                "i-young",
                "new",
                Health::Unhealthy("503".into()),
                2 * MINUTE,
            ),
            member("i-old", "new", Health::Unhealthy("503".into()), 20 * MINUTE),
            member(
                "i-stopped",
                "new",
                Health::Other("unused".into()),
                60 * MINUTE,
            ),
        ];
        let mut stopped = members.clone();
        stopped[2].stopped = true;
        let rollout = plan(&stopped, &wanted(2));
        assert_eq!(rollout.keep, ["i-young"]);
        assert_eq!(rollout.add, 1);
        let discarded: Vec<&str> = rollout.discard.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(discarded, ["i-old", "i-stopped"]);
        assert!(
            rollout.discard[0]
                .1
                .contains("not healthy 1200 s after its launch")
        );
    }

    #[test]
    fn instances_launched_before_the_target_group_existed_are_registered() {
        let members = [member("i-1", "new", Health::Unregistered, 2 * MINUTE)];
        let rollout = plan(&members, &wanted(1));
        assert_eq!(rollout.keep, ["i-1"]);
        assert_eq!(rollout.register, ["i-1"]);
        assert_eq!(rollout.add, 0);
    }

    #[test]
    fn scaling_down_removes_the_newest_and_keeps_the_oldest() {
        let members = [
            member("i-1", "new", Health::Healthy, 60 * MINUTE),
            member("i-2", "new", Health::Healthy, 50 * MINUTE),
            member("i-3", "new", Health::Healthy, 40 * MINUTE),
        ];
        let rollout = plan(&members, &wanted(2));
        assert_eq!(rollout.keep, ["i-1", "i-2"]);
        assert_eq!(
            rollout.remove,
            [("i-3".to_owned(), "beyond instances.count (2)".to_owned())]
        );
        assert!(rollout.replace.is_empty());
    }

    #[test]
    fn a_stale_fleet_scaled_down_removes_rather_than_replaces_the_extras() {
        let members = [
            member("i-1", "old", Health::Healthy, 60 * MINUTE),
            member("i-2", "old", Health::Healthy, 50 * MINUTE),
            member("i-3", "old", Health::Healthy, 40 * MINUTE),
        ];
        let rollout = plan(&members, &wanted(2));
        assert_eq!(rollout.replace.len(), 2);
        assert_eq!(rollout.remove.len(), 1);
        assert_eq!(rollout.remove[0].0, "i-3");
    }

    #[test]
    fn another_redis_endpoint_is_a_reason_to_replace() {
        let mut members = [member("i-1", "new", Health::Healthy, 60 * MINUTE)];
        members[0].redis_endpoint = Some("old-redis:6379".into());
        let rollout = plan(&members, &wanted(1));
        assert_eq!(
            rollout.replace[0].1,
            ["redis endpoint old-redis:6379 → redis:6379"]
        );
    }

    /// A fleet in memory: launched instances pass their health checks after `polls`
    /// health reads (or never), retired ones leave the target group after one read.
    struct FakeFleet {
        instances: RefCell<BTreeMap<String, FakeInstance>>,
        healthy_after: Option<u32>,
        events: RefCell<Vec<String>>,
        launched: RefCell<u32>,
    }

    struct FakeInstance {
        polls: u32,
        retired: bool,
        binary: &'static str,
    }

    impl FakeFleet {
        fn new(existing: &[&str], healthy_after: Option<u32>) -> Self {
            let instances = existing
                .iter()
                .map(|id| {
                    let instance = FakeInstance {
                        polls: 0,
                        retired: false,
                        binary: "old",
                    };
                    ((*id).to_owned(), instance)
                })
                .collect();
            FakeFleet {
                instances: RefCell::new(instances),
                healthy_after,
                events: RefCell::default(),
                launched: RefCell::new(0),
            }
        }

        fn serving(&self) -> usize {
            self.instances
                .borrow()
                .values()
                .filter(|instance| !instance.retired && self.is_healthy(instance))
                .count()
        }

        fn is_healthy(&self, instance: &FakeInstance) -> bool {
            instance.binary == "old" || self.healthy_after.is_some_and(|n| instance.polls >= n)
        }
    }

    impl Fleet for FakeFleet {
        async fn members(&self) -> Result<Vec<Member>> {
            Ok(self
                .instances
                .borrow()
                .iter()
                .filter(|(_, instance)| !instance.retired)
                .map(|(id, instance)| {
                    let health = if self.is_healthy(instance) {
                        Health::Healthy
                    } else {
                        Health::Initial
                    };
                    member(id, instance.binary, health, 60 * MINUTE)
                })
                .collect())
        }

        async fn launch(&self, count: usize) -> Result<Vec<String>> {
            let mut ids = Vec::new();
            for _ in 0..count {
                *self.launched.borrow_mut() += 1;
                let id = format!("i-new{}", self.launched.borrow());
                self.events.borrow_mut().push(format!("launch {id}"));
                self.instances.borrow_mut().insert(
                    id.clone(),
                    FakeInstance {
                        polls: 0,
                        retired: false,
                        binary: "new",
                    },
                );
                ids.push(id);
            }
            Ok(ids)
        }

        async fn register(&self, ids: &[String]) -> Result<()> {
            self.events
                .borrow_mut()
                .push(format!("register {}", ids.join(" ")));
            Ok(())
        }

        async fn health(&self, ids: &[String]) -> Result<BTreeMap<String, Health>> {
            let mut out = BTreeMap::new();
            for id in ids {
                let mut instances = self.instances.borrow_mut();
                let instance = instances.get_mut(id).expect("known instance");
                instance.polls += 1;
                let healthy = instance.binary == "old"
                    || self.healthy_after.is_some_and(|n| instance.polls >= n);
                out.insert(
                    id.clone(),
                    if healthy {
                        Health::Healthy
                    } else {
                        Health::Unhealthy("Target.ResponseCodeMismatch".into())
                    },
                );
            }
            Ok(out)
        }

        async fn retire(&self, ids: &[String]) -> Result<()> {
            // Never fewer serving instances than wanted while a roll is under way.
            let serving_after = self.serving()
                - ids
                    .iter()
                    .filter(|id| {
                        let instances = self.instances.borrow();
                        self.is_healthy(&instances[id.as_str()])
                    })
                    .count();
            self.events.borrow_mut().push(format!(
                "retire {} (serving after: {serving_after})",
                ids.join(" ")
            ));
            for id in ids {
                self.instances.borrow_mut().get_mut(id).unwrap().retired = true;
            }
            Ok(())
        }

        async fn drained(&self, ids: &[String]) -> Result<bool> {
            self.events
                .borrow_mut()
                .push(format!("drained {}", ids.join(" ")));
            Ok(true)
        }

        async fn console_tail(&self, id: &str) -> String {
            format!("realtime-stack boot: attempt 3 failed on {id}")
        }
    }

    fn pacing(progress: &Progress) -> Pacing<'_> {
        Pacing {
            progress,
            pace: Pace::Local,
            health_timeout: 10 * MINUTE,
            drain_timeout: MINUTE,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_roll_launches_waits_healthy_then_retires_one_at_a_time() {
        let fleet = FakeFleet::new(&["i-1", "i-2"], Some(3));
        let wanted = wanted(2);
        let rollout = plan(&fleet.members().await.unwrap(), &wanted);
        let progress = Progress::with_live_lines(false);
        let running = carry_out(&fleet, &rollout, &wanted, &pacing(&progress))
            .await
            .unwrap();
        assert_eq!(running, ["i-new1", "i-new2"]);
        assert_eq!(
            *fleet.events.borrow(),
            [
                "launch i-new1",
                "retire i-1 (serving after: 2)",
                "drained i-1",
                "launch i-new2",
                "retire i-2 (serving after: 2)",
                "drained i-2",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replacement_that_never_gets_healthy_stops_the_roll_and_the_old_keep_serving() {
        let fleet = FakeFleet::new(&["i-1", "i-2"], None);
        let wanted = wanted(2);
        let rollout = plan(&fleet.members().await.unwrap(), &wanted);
        let progress = Progress::with_live_lines(false);
        let err = carry_out(&fleet, &rollout, &wanted, &pacing(&progress))
            .await
            .unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("the roll stopped"), "{message}");
        assert!(
            message.contains("instance i-new1 is unhealthy: Target.ResponseCodeMismatch"),
            "{message}"
        );
        assert!(
            message.contains("attempt 3 failed on i-new1"),
            "the console is shown: {message}"
        );
        assert!(message.contains("(i-1) are still serving"), "{message}");
        assert_eq!(*fleet.events.borrow(), ["launch i-new1"], "nothing retired");
        assert_eq!(fleet.serving(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scale_down_drains_before_it_is_done() {
        let fleet = FakeFleet::new(&["i-1", "i-2", "i-3"], Some(1));
        let mut wanted = wanted(2);
        wanted.fingerprint = fingerprint("old");
        let rollout = plan(&fleet.members().await.unwrap(), &wanted);
        let progress = Progress::with_live_lines(false);
        let running = carry_out(&fleet, &rollout, &wanted, &pacing(&progress))
            .await
            .unwrap();
        assert_eq!(running.len(), 2);
        assert_eq!(
            *fleet.events.borrow(),
            ["retire i-3 (serving after: 2)", "drained i-3"]
        );
    }
}
