//! The CLI's commands, each a `run` function, and what they share: loading the stack,
//! the preflight checks, and asking before acting.

pub mod chat;
mod converge;
pub mod destroy;
pub mod drill;
mod inventory;
pub mod logs;
pub mod plan;
pub mod policy;
mod preflight;
mod signing;
pub mod status;
pub mod token;
pub mod up;

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

use std::collections::BTreeMap;

use crate::aws::{AwsArgs, Call};
use crate::canary::{Endpoint, Outcome};
use crate::deploy::Health;
use crate::engine::{Changes, Progress};
use crate::local::Environment;
use crate::platform::{Aws, Platform};
use crate::spec::StackSpec;
use crate::stack::Stack;

/// How a command prints what it found.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Loads and validates `stack.yaml` (every problem at once), then resolves how to reach
/// AWS. Nothing is called yet.
pub async fn open_stack(file: &Path, aws: &AwsArgs) -> Result<Stack> {
    let spec = StackSpec::load(file)?;
    Stack::connect(spec, aws, Progress::new()).await
}

/// A stack opened to look at it, never to change it: its clients refuse, before sending,
/// any call that could change something. On AWS, or with `--local` the one in the
/// LocalStack on this machine, with what runs here as its [`Platform`].
pub enum Observed {
    Aws(Stack),
    Local(Environment),
}

impl Observed {
    pub async fn open(file: &Path, aws: &AwsArgs, local: bool) -> Result<Observed> {
        if !local {
            let spec = StackSpec::load(file)?;
            let stack = Stack::connect_to_plan(spec, aws, Progress::notes_only()).await?;
            return Ok(Observed::Aws(stack));
        }
        match Environment::attach(file, aws, Changes::planning()).await? {
            Some(environment) => Ok(Observed::Local(environment)),
            None => bail!(
                "LocalStack is not running, so there is no local stack: `up --local` creates it"
            ),
        }
    }

    pub fn stack(&self) -> &Stack {
        match self {
            Observed::Aws(stack) => stack,
            Observed::Local(environment) => &environment.stack,
        }
    }
}

impl Platform for Observed {
    async fn target_health(
        &self,
        stack: &Stack,
        target_group_arn: &str,
    ) -> Result<BTreeMap<String, Health>> {
        match self {
            Observed::Aws(_) => Aws.target_health(stack, target_group_arn).await,
            Observed::Local(environment) => {
                environment.target_health(stack, target_group_arn).await
            }
        }
    }

    async fn console_output(&self, stack: &Stack, instance_id: &str) -> Result<String> {
        match self {
            Observed::Aws(_) => Aws.console_output(stack, instance_id).await,
            Observed::Local(environment) => environment.console_output(stack, instance_id).await,
        }
    }

    fn url(&self, stack: &Stack) -> String {
        match self {
            Observed::Aws(_) => Aws.url(stack),
            Observed::Local(environment) => environment.url(stack),
        }
    }

    fn chat_endpoint(&self, stack: &Stack, load_balancer_dns: &str) -> Result<Endpoint> {
        match self {
            Observed::Aws(_) => Aws.chat_endpoint(stack, load_balancer_dns),
            Observed::Local(environment) => environment.chat_endpoint(stack, load_balancer_dns),
        }
    }
}

/// The canary ([`crate::canary`]) on the stack behind `load_balancer_dns`, serving
/// `instances` instances, under a progress line. A stack with sign-in is skipped: the
/// canary has no token to present.
pub async fn canary(
    stack: &Stack,
    platform: &impl Platform,
    load_balancer_dns: &str,
    instances: usize,
) -> Result<Outcome> {
    if stack.spec.chat.auth.is_some() {
        return Ok(Outcome::Skipped {
            why: "chat.auth: the chat wants a signed token, which the canary does not have"
                .to_owned(),
        });
    }
    let endpoint = platform.chat_endpoint(stack, load_balancer_dns)?;
    stack
        .progress
        .step("canary: a message across instances")
        .run(crate::canary::run(&endpoint, instances), |outcome| {
            outcome.to_string()
        })
        .await
}

/// The account the credentials belong to; fails early, with advice, when they do not
/// resolve.
pub async fn account(stack: &Stack) -> Result<String> {
    let identity = stack
        .clients
        .sts
        .get_caller_identity()
        .send()
        .await
        .call("GetCallerIdentity (checking the AWS credentials)")
        .context("no usable AWS credentials: configure a profile (`aws configure`, `aws sso login`) or pass --profile")?;
    identity
        .account
        .context("GetCallerIdentity returned no account")
}

/// Asks `question` on the terminal; `--yes` answers it in advance. Without a terminal and
/// without `--yes` it refuses rather than guessing.
pub fn confirm(question: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} Not confirmed: there is no terminal to ask on; pass --yes to go ahead");
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush().ok();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        bail!("not confirmed; nothing was changed")
    }
}
