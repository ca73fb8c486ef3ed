//! The reconcile engine, which knows no AWS service: one live progress line per
//! resource, patient polling for AWS's eventual consistency, and the destroy loop that
//! deletes resources in passes until nothing is left or nothing progresses. Services
//! plug in through [`Deletable`] and plain async functions.

use std::collections::HashSet;
use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::stream::{self, StreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often to poll and how long to wait: fast against an emulator on loopback,
/// patient against AWS, where a replication group takes up to an hour. Chosen by what
/// runs the stack (`--local`, or a test harness), never by the endpoint: an
/// `--endpoint-url` may be AWS itself (a FIPS endpoint, a proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Pace {
    #[value(name = "local")]
    Local,
    #[default]
    #[value(name = "aws")]
    Aws,
}

impl Pace {
    /// The first and the longest pause between two polls.
    const fn intervals(self) -> (Duration, Duration) {
        match self {
            Pace::Local => (Duration::from_millis(200), Duration::from_secs(2)),
            Pace::Aws => (Duration::from_secs(5), Duration::from_secs(20)),
        }
    }

    /// How long a wait may last: `aws` on AWS, a fraction of it locally.
    pub fn limit(self, aws: Duration) -> Duration {
        match self {
            Pace::Local => (aws / 20).max(Duration::from_secs(60)),
            Pace::Aws => aws,
        }
    }
}

/// Pauses between two attempts at the pace, each half as long again as the one before,
/// up to the pace's longest. On tokio's clock, so that tests can pause it.
pub struct Backoff {
    pause: Duration,
    longest: Duration,
}

impl Backoff {
    pub const fn new(pace: Pace) -> Self {
        let (first, longest) = pace.intervals();
        Self {
            pause: first,
            longest,
        }
    }

    /// Sleeps the next pause.
    pub async fn pause(&mut self) {
        tokio::time::sleep(self.pause).await;
        self.pause = (self.pause * 3 / 2).min(self.longest);
    }
}

/// Progress of a whole command: a live line per resource on a terminal, plain log lines
/// (readable in CI logs) otherwise. Everything goes to stderr; stdout is for outputs.
#[derive(Clone)]
pub struct Progress {
    live: Option<MultiProgress>,
    /// Whether the resource lines show at all (`plan` shows only its result, and notes).
    steps: bool,
    started: Instant,
}

impl Progress {
    pub fn new() -> Self {
        Self::with_live_lines(std::io::stderr().is_terminal())
    }

    pub fn with_live_lines(live: bool) -> Self {
        Self {
            live: live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            steps: true,
            started: Instant::now(),
        }
    }

    /// No line per resource, only notes (a build's output, what is left alone).
    pub fn notes_only() -> Self {
        Self {
            live: None,
            steps: false,
            started: Instant::now(),
        }
    }

    /// A line for one resource, starting as `waiting`.
    pub fn step(&self, label: impl Into<String>) -> Step {
        let label = label.into();
        let bar = self.live.as_ref().map(|live| {
            let bar = live.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<40} {elapsed:>4} {msg}")
                    .expect("progress template"),
            );
            bar.set_prefix(label.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        let step = Step {
            label,
            bar,
            progress: self.clone(),
            started: Instant::now(),
        };
        step.set("waiting");
        step
    }

    /// A line that is not about one resource.
    pub fn note(&self, message: &str) {
        match &self.live {
            Some(live) => live.println(message).unwrap_or_default(),
            None => eprintln!("[{:>6.1}s] {message}", self.started.elapsed().as_secs_f64()),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// The progress line of one resource.
pub struct Step {
    label: String,
    bar: Option<ProgressBar>,
    progress: Progress,
    started: Instant,
}

impl Step {
    pub fn set(&self, state: &str) {
        match &self.bar {
            Some(bar) => bar.set_message(state.to_owned()),
            None if self.progress.steps => self.progress.note(&format!("{}: {state}", self.label)),
            None => {}
        }
    }

    pub fn ready(&self, detail: &str) {
        let took = self.started.elapsed().as_secs_f64();
        let state = if detail.is_empty() {
            format!("ready ({took:.1}s)")
        } else {
            format!("ready ({took:.1}s) {detail}")
        };
        match &self.bar {
            Some(bar) => bar.finish_with_message(state),
            None if self.progress.steps => self.progress.note(&format!("{}: {state}", self.label)),
            None => {}
        }
    }

    pub fn fail(&self, reason: &str) {
        match &self.bar {
            Some(bar) => bar.abandon_with_message(format!("FAILED\n    {reason}")),
            None if self.progress.steps => self
                .progress
                .note(&format!("{}: FAILED: {reason}", self.label)),
            None => {}
        }
    }

    /// Runs `work` under this line: ready with the detail it returns, or failed with the
    /// error's reason underneath.
    pub async fn run<T>(
        &self,
        work: impl Future<Output = Result<T>>,
        detail: impl FnOnce(&T) -> String,
    ) -> Result<T> {
        match work.await {
            Ok(value) => {
                self.ready(&detail(&value));
                Ok(value)
            }
            Err(err) => {
                self.fail(&format!("{err:#}"));
                Err(err)
            }
        }
    }
}

/// Polls `check` until it yields a value, pausing longer and longer between polls (within
/// the pace's bounds), and gives up after `limit` with an error that names `what`. After
/// `hint.0` of waiting, `hint.1` is shown on the step once: why it may be taking long.
pub async fn wait_for<T, Fut>(
    step: &Step,
    pace: Pace,
    what: &str,
    limit: Duration,
    hint: Option<(Duration, &str)>,
    mut check: impl FnMut() -> Fut,
) -> Result<T>
where
    Fut: Future<Output = Result<Option<T>>>,
{
    // Tokio's clock, so that tests can pause it.
    let started = tokio::time::Instant::now();
    let mut backoff = Backoff::new(pace);
    let mut hinted = false;
    step.set(&format!("waiting for {what}"));
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        let waited = started.elapsed();
        if waited >= limit {
            bail!(
                "gave up waiting for {what} after {}s{}",
                waited.as_secs(),
                hint.map(|(_, text)| format!(": {text}"))
                    .unwrap_or_default()
            );
        }
        if let Some((after, text)) = hint
            && !hinted
            && waited >= after
        {
            step.set(&format!("waiting for {what}: {text}"));
            hinted = true;
        }
        backoff.pause().await;
    }
}

/// What `up` does to a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Replace,
    Delete,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
        })
    }
}

/// One change to one resource, with why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub action: Action,
    pub resource: String,
    pub reason: String,
}

/// The changes of one run: made as they are recorded (`up`), or only recorded (`plan`,
/// where the services skip the call and go on with a [`planned_id`]).
#[derive(Debug, Default)]
pub struct Changes {
    planning: bool,
    recorded: std::sync::Mutex<Vec<Change>>,
}

impl Changes {
    pub fn planning() -> Self {
        Changes {
            planning: true,
            ..Changes::default()
        }
    }

    pub fn is_planning(&self) -> bool {
        self.planning
    }

    /// Records a change; true when it is to be made now, false when it is only planned.
    pub fn make(
        &self,
        action: Action,
        resource: impl Into<String>,
        reason: impl Into<String>,
    ) -> bool {
        self.recorded.lock().expect("changes lock").push(Change {
            action,
            resource: resource.into(),
            reason: reason.into(),
        });
        !self.planning
    }

    /// Deletes `resource` now, as `up` retires what the stack no longer needs (only
    /// recorded under `plan`): `Some(why)` when AWS holds on to it for now (still in use,
    /// or on its way), for a later run to try again.
    pub async fn delete_now(
        &self,
        resource: &dyn Deletable,
        reason: &str,
    ) -> anyhow::Result<Option<String>> {
        if !self.make(Action::Delete, resource.label(), reason) {
            return Ok(None);
        }
        match resource.delete().await {
            Ok(()) => Ok(None),
            Err(DeleteError::Blocked(why) | DeleteError::Busy(why)) => Ok(Some(why)),
            Err(DeleteError::Failed(err)) => Err(err),
        }
    }

    pub fn recorded(&self) -> Vec<Change> {
        self.recorded.lock().expect("changes lock").clone()
    }
}

/// The stand-in id of a resource that `plan` would create: never sent to AWS.
pub fn planned_id(kind: &str) -> String {
    format!("(new {kind})")
}

/// Whether `id` stands for a resource that does not exist yet.
pub fn is_planned(id: &str) -> bool {
    id.starts_with("(new ")
}

/// Why a delete did not happen.
#[derive(Debug)]
pub enum DeleteError {
    /// Something still depends on the resource (AWS said so): try again next pass.
    Blocked(String),
    /// The resource is busy with something that ends on its own, however long it takes
    /// (a Redis still being created, or being deleted): try again next pass. Waiting for
    /// it is progress, so the loop's patience does not run out meanwhile.
    Busy(String),
    /// Anything else. It is retried too, since AWS errors are often transient, but it
    /// counts as no progress; unless it is [`Lasting`], which no wait mends.
    Failed(anyhow::Error),
}

/// A failure no retry mends, such as credentials that lack a permission: `destroy` stops
/// trying the resource and names it, rather than retrying until its patience runs out.
#[derive(Debug)]
pub struct Lasting(pub String);

impl std::fmt::Display for Lasting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Lasting {}

/// Whether `err`, or what it wraps, is [`Lasting`].
pub fn is_lasting(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.is::<Lasting>())
}

pub type DeleteFuture<'a> = Pin<Box<dyn Future<Output = Result<(), DeleteError>> + Send + 'a>>;

/// A resource that `destroy` can delete.
pub trait Deletable: Send + Sync {
    /// Unique among the resources of one destroy: kind and AWS id.
    fn key(&self) -> String;
    /// What the user reads: kind and name.
    fn label(&self) -> String;
    /// Keys of the resources that must be gone before this one can go (the ones that
    /// use it). Keys that are not being deleted are ignored.
    fn blocked_by(&self) -> Vec<String> {
        Vec::new()
    }
    /// Deletes it. A resource already gone counts as deleted.
    fn delete(&self) -> DeleteFuture<'_>;
}

/// What was left when the destroy loop stopped, with the last reason of each.
#[derive(Debug)]
pub struct Leftovers(pub Vec<(String, String)>);

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{} resource(s) could not be deleted:", self.0.len())?;
        for (label, reason) in &self.0 {
            writeln!(f, "  - {label}: {reason}")?;
        }
        write!(
            f,
            "Run destroy again once the reasons above are resolved; \
             nothing else of the stack remains."
        )
    }
}

impl std::error::Error for Leftovers {}

/// How many times the patience a resource busy on its way ([`DeleteError::Busy`]) may
/// keep `destroy` going with nothing deleted: a Redis takes minutes to delete, instances
/// their drain, but an instance protected from scale in by hand never leaves its group.
const BUSY_PATIENCE_TIMES: u32 = 4;

/// Deletes `resources` in passes. Each pass deletes, concurrently, every resource that
/// nothing left blocks; a resource AWS still refuses stays for the next pass. Progress
/// (a resource deleted, or one [`DeleteError::Busy`] on its way) resets the patience;
/// after `patience` without any, or [`BUSY_PATIENCE_TIMES`] the patience with nothing
/// deleted, it stops and returns what is left. A resource that failed for good
/// ([`Lasting`]) is not tried again, and what waits for it is left with it as soon as
/// nothing else is left to try.
pub async fn destroy(
    resources: Vec<Box<dyn Deletable>>,
    progress: &Progress,
    pace: Pace,
    patience: Duration,
) -> Result<(), Leftovers> {
    let mut pending: Vec<(Box<dyn Deletable>, Step, String)> = resources
        .into_iter()
        .map(|resource| {
            let step = progress.step(resource.label());
            (resource, step, String::from("not tried"))
        })
        .collect();
    let mut backoff = Backoff::new(pace);
    // Tokio's clock, so that tests can pause it.
    let mut last_progress = tokio::time::Instant::now();
    let mut last_deleted = last_progress;
    let mut failed_for_good: Vec<(Box<dyn Deletable>, Step, String)> = Vec::new();
    while !pending.is_empty() {
        let keys: HashSet<String> = pending
            .iter()
            .chain(&failed_for_good)
            .map(|(r, _, _)| r.key())
            .collect();
        let mut unblocked = Vec::new();
        for (index, (resource, step, reason)) in pending.iter_mut().enumerate() {
            let blockers: Vec<String> = resource
                .blocked_by()
                .into_iter()
                .filter(|key| keys.contains(key))
                .collect();
            if blockers.is_empty() {
                step.set("deleting");
                unblocked.push(index);
            } else {
                *reason = format!("waiting for {}", blockers.join(", "));
                step.set(reason);
            }
        }
        if unblocked.is_empty() && !failed_for_good.is_empty() {
            // All that is left waits, at some remove, for what failed for good.
            break;
        }
        let attempts = unblocked.into_iter().map(|index| {
            let resource = &pending[index].0;
            async move { (index, resource.delete().await) }
        });
        let outcomes: Vec<(usize, Result<(), DeleteError>)> =
            stream::iter(attempts).buffer_unordered(8).collect().await;
        let mut deleted = HashSet::new();
        let mut lasting = HashSet::new();
        let mut busy = false;
        for (index, outcome) in outcomes {
            let (_, step, reason) = &mut pending[index];
            match outcome {
                Ok(()) => {
                    step.ready("deleted");
                    deleted.insert(index);
                }
                Err(DeleteError::Blocked(why)) => {
                    step.set(&format!("retrying: {why}"));
                    *reason = why;
                }
                Err(DeleteError::Busy(why)) => {
                    step.set(&why);
                    *reason = why;
                    busy = true;
                }
                Err(DeleteError::Failed(err)) if is_lasting(&err) => {
                    *reason = format!("{err:#}");
                    step.fail(reason);
                    lasting.insert(index);
                }
                Err(DeleteError::Failed(err)) => {
                    step.set(&format!("retrying: {err:#}"));
                    *reason = format!("{err:#}");
                }
            }
        }
        if busy || !deleted.is_empty() {
            last_progress = tokio::time::Instant::now();
        }
        if !deleted.is_empty() {
            last_deleted = last_progress;
            backoff = Backoff::new(pace);
        }
        if !deleted.is_empty() || !lasting.is_empty() {
            let mut kept = Vec::new();
            for (index, entry) in pending.into_iter().enumerate() {
                if lasting.contains(&index) {
                    failed_for_good.push(entry);
                } else if !deleted.contains(&index) {
                    kept.push(entry);
                }
            }
            pending = kept;
            continue;
        }
        if last_progress.elapsed() >= patience
            || last_deleted.elapsed() >= patience * BUSY_PATIENCE_TIMES
        {
            break;
        }
        backoff.pause().await;
    }
    if pending.is_empty() && failed_for_good.is_empty() {
        return Ok(());
    }
    for (_, step, reason) in &pending {
        step.fail(reason);
    }
    Err(Leftovers(
        failed_for_good
            .into_iter()
            .chain(pending)
            .map(|(resource, _, reason)| (resource.label(), reason))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A resource that refuses `refusals` deletes with a dependency error, then goes, and
    /// records the order in which resources went.
    struct Fake {
        key: &'static str,
        blocked_by: Vec<String>,
        refusals: Mutex<u32>,
        gone: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Fake {
        fn boxed(
            key: &'static str,
            blocked_by: &[&str],
            refusals: u32,
            gone: &Arc<Mutex<Vec<&'static str>>>,
        ) -> Box<dyn Deletable> {
            Box::new(Self {
                key,
                blocked_by: blocked_by.iter().map(|key| key.to_string()).collect(),
                refusals: Mutex::new(refusals),
                gone: gone.clone(),
            })
        }
    }

    impl Deletable for Fake {
        fn key(&self) -> String {
            self.key.to_owned()
        }

        fn label(&self) -> String {
            format!("fake {}", self.key)
        }

        fn blocked_by(&self) -> Vec<String> {
            self.blocked_by.clone()
        }

        fn delete(&self) -> DeleteFuture<'_> {
            Box::pin(async move {
                let mut refusals = self.refusals.lock().unwrap();
                if *refusals > 0 {
                    *refusals -= 1;
                    return Err(DeleteError::Blocked(
                        "DependencyViolation: still in use".into(),
                    ));
                }
                self.gone.lock().unwrap().push(self.key);
                Ok(())
            })
        }
    }

    fn quiet() -> Progress {
        Progress::with_live_lines(false)
    }

    #[tokio::test]
    async fn dependency_errors_are_retried_until_the_delete_is_accepted() {
        let gone = Arc::default();
        let resources = vec![Fake::boxed("sg", &[], 3, &gone)];
        destroy(resources, &quiet(), Pace::Local, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(*gone.lock().unwrap(), ["sg"]);
    }

    #[tokio::test]
    async fn a_resource_goes_only_after_those_that_block_it() {
        let gone = Arc::default();
        let resources = vec![
            Fake::boxed("vpc", &["subnet", "sg"], 0, &gone),
            Fake::boxed("sg", &["instance"], 0, &gone),
            Fake::boxed("subnet", &["instance", "not-being-deleted"], 0, &gone),
            Fake::boxed("instance", &[], 0, &gone),
        ];
        destroy(resources, &quiet(), Pace::Local, Duration::from_secs(30))
            .await
            .unwrap();
        let order = gone.lock().unwrap().clone();
        assert_eq!(order.first(), Some(&"instance"));
        assert_eq!(order.last(), Some(&"vpc"));
        assert_eq!(order.len(), 4);
    }

    #[tokio::test]
    async fn what_never_goes_is_named_once_nothing_progresses() {
        let gone = Arc::default();
        let resources = vec![
            Fake::boxed("stuck", &[], u32::MAX, &gone),
            Fake::boxed("vpc", &["stuck"], 0, &gone),
            Fake::boxed("bucket", &[], 0, &gone),
        ];
        let left = destroy(resources, &quiet(), Pace::Local, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert_eq!(*gone.lock().unwrap(), ["bucket"]);
        let labels: Vec<&str> = left.0.iter().map(|(label, _)| label.as_str()).collect();
        assert_eq!(labels, ["fake stuck", "fake vpc"]);
        assert!(left.0[0].1.contains("DependencyViolation"));
        assert_eq!(left.0[1].1, "waiting for stuck");
        assert!(
            left.to_string()
                .contains("2 resource(s) could not be deleted")
        );
    }

    /// A resource for ever on its way: an Auto Scaling group whose instance is protected
    /// from scale in by hand never empties (ScalingActivityInProgress / instances left,
    /// API_DeleteAutoScalingGroup), and is reported busy at every pass.
    struct ForeverBusy;

    impl Deletable for ForeverBusy {
        fn key(&self) -> String {
            "group".to_owned()
        }

        fn label(&self) -> String {
            "fake group".to_owned()
        }

        fn delete(&self) -> DeleteFuture<'_> {
            Box::pin(async { Err(DeleteError::Busy("1 instance still in the group".into())) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_resource_busy_for_ever_is_named_after_four_times_the_patience() {
        let gone = Arc::default();
        let resources = vec![
            Box::new(ForeverBusy) as Box<dyn Deletable>,
            Fake::boxed("subnet", &["group"], 0, &gone),
        ];
        let started = tokio::time::Instant::now();
        let left = destroy(resources, &quiet(), Pace::Local, Duration::from_secs(60))
            .await
            .unwrap_err();
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(240)..Duration::from_secs(260)).contains(&waited),
            "{waited:?}"
        );
        assert_eq!(
            left.0[0],
            (
                "fake group".to_owned(),
                "1 instance still in the group".to_owned()
            )
        );
        assert_eq!(left.0[1].1, "waiting for group");
    }

    #[tokio::test]
    async fn waits_poll_until_the_condition_holds_and_give_up_with_the_reason() {
        let progress = quiet();
        let step = progress.step("thing");
        let mut polls = 0;
        let value = wait_for(
            &step,
            Pace::Local,
            "the thing",
            Duration::from_secs(30),
            None,
            || {
                polls += 1;
                let ready = polls >= 3;
                async move { Ok(ready.then_some(42)) }
            },
        )
        .await
        .unwrap();
        assert_eq!((value, polls), (42, 3));

        let err = wait_for::<(), _>(
            &step,
            Pace::Local,
            "the certificate",
            Duration::from_millis(300),
            Some((Duration::ZERO, "the zone is not delegated")),
            || async { Ok(None) },
        )
        .await
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("gave up waiting for the certificate"),
            "{message}"
        );
        assert!(message.contains("the zone is not delegated"), "{message}");
    }
}
