//! `realtime-stack logs`: the instances' console output (on AWS, `GetConsoleOutput`;
//! with `--local`, the console of the instances booted here), oldest line first, each
//! line prefixed with its instance when there are several. `--boot` keeps only the boot
//! service's lines; `--follow` keeps polling and prints what is new, including the
//! instances a deploy launches meanwhile.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use super::Observed;
use crate::aws::AwsArgs;
use crate::fleet::BOOT_PREFIX;
use crate::instances;
use crate::platform::Platform;
use crate::stack::Stack;

/// How often `--follow` polls. EC2 refreshes an instance's console output every few
/// seconds at best: faster polling only costs API calls.
const FOLLOW_EVERY: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// Only this instance (as `status` lists them)
    #[arg(long)]
    pub instance: Option<String>,
    /// Keep polling and print new lines as they come, until interrupted
    #[arg(long)]
    pub follow: bool,
    /// Only the boot service's lines (prefixed `realtime-stack boot:`)
    #[arg(long)]
    pub boot: bool,
    /// The stack of `up --local`, in the LocalStack on this machine
    #[arg(long)]
    pub local: bool,
}

pub async fn run(file: &Path, aws: &AwsArgs, args: &LogsArgs) -> Result<()> {
    let observed = Observed::open(file, aws, args.local).await?;
    let stack = observed.stack();
    // What was printed of each instance's console, to print only what is new.
    let mut printed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let ids = instance_ids(stack, args.instance.as_deref()).await?;
        if ids.is_empty() && !args.follow {
            bail!(
                "stack '{}' has no instances in {}: `up` launches them",
                stack.spec.name,
                stack.region
            );
        }
        let prefixed = ids.len() > 1 || args.follow;
        for id in &ids {
            let console = observed.console_output(stack, id).await?;
            let lines: Vec<String> = console
                .lines()
                .filter(|line| !args.boot || line.contains(BOOT_PREFIX))
                .map(str::to_owned)
                .collect();
            let seen = printed.entry(id.clone()).or_default();
            for line in new_lines(seen, &lines) {
                if prefixed {
                    println!("{id} | {line}");
                } else {
                    println!("{line}");
                }
            }
            *seen = lines;
        }
        if !args.follow {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// The stack's live instances, or only `wanted` (an error when it is not one of them).
async fn instance_ids(stack: &Stack, wanted: Option<&str>) -> Result<Vec<String>> {
    let ids: Vec<String> = instances::describe(stack)
        .await?
        .into_iter()
        .map(|instance| instance.id)
        .collect();
    match wanted {
        None => Ok(ids),
        Some(id) if ids.iter().any(|live| live == id) => Ok(vec![id.to_owned()]),
        Some(id) => bail!(
            "{id} is not a live instance of stack '{}' (its instances: {}); `status` lists them",
            stack.spec.name,
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(" ")
            }
        ),
    }
}

/// The lines of `now` that follow what was already printed (`before`). A console is a
/// window on the instance's last output (64 KB on EC2) that moves as it grows: what was
/// printed is found by its last lines, and when they have scrolled out of the window the
/// whole window is new.
fn new_lines<'a>(before: &[String], now: &'a [String]) -> &'a [String] {
    const ANCHOR_LINES: usize = 5;
    if now.starts_with(before) {
        return &now[before.len()..];
    }
    let anchor = &before[before.len().saturating_sub(ANCHOR_LINES)..];
    match now
        .windows(anchor.len().max(1))
        .rposition(|window| window == anchor)
    {
        Some(start) if !anchor.is_empty() => &now[start + anchor.len()..],
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::get_console_output::{
        GetConsoleOutputError, GetConsoleOutputOutput,
    };
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::new_lines;
    use crate::instances;
    use crate::stack::testing;

    fn refused(code: &str, message: &str) -> GetConsoleOutputError {
        GetConsoleOutputError::generic(ErrorMetadata::builder().code(code).message(message).build())
    }

    /// `Latest` is documented for Nitro instances only (GetConsoleOutput API reference,
    /// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetConsoleOutput.html>);
    /// an older type refuses it (virt-s1/avocado-cloud#8 falls back the same way). `logs`
    /// then shows the output of the last boot rather than failing.
    #[tokio::test]
    async fn an_instance_that_refuses_the_latest_output_shows_its_last_boot() {
        let latest = mock!(aws_sdk_ec2::Client::get_console_output)
            .match_requests(|request| request.latest() == Some(true))
            .then_error(|| {
                refused(
                    "UnsupportedOperation",
                    "The latest console output is not supported for this instance type.",
                )
            });
        let last_boot = mock!(aws_sdk_ec2::Client::get_console_output)
            .match_requests(|request| request.latest() == Some(false))
            .then_output(|| {
                GetConsoleOutputOutput::builder()
                    .output(aws_smithy_types::base64::encode(
                        "realtime-stack boot: started\n",
                    ))
                    .build()
            });
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&latest, &last_boot]);
        let stack = testing::stack(clients);

        let output = instances::console_output(&stack, "i-0123").await.unwrap();

        assert_eq!(output, "realtime-stack boot: started\n");
        assert_eq!((latest.num_calls(), last_boot.num_calls()), (1, 1));
    }

    /// An instance that is gone, or a permission that is missing, is not asked twice.
    #[tokio::test]
    async fn an_instance_that_is_gone_is_not_asked_again() {
        let gone = mock!(aws_sdk_ec2::Client::get_console_output).then_error(|| {
            refused(
                "InvalidInstanceID.NotFound",
                "The instance ID 'i-0123' does not exist",
            )
        });
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&gone]);
        let stack = testing::stack(clients);

        let err = instances::console_output(&stack, "i-0123")
            .await
            .unwrap_err()
            .to_string();

        assert!(err.contains("InvalidInstanceID.NotFound"), "{err}");
        assert_eq!(gone.num_calls(), 1);
    }

    fn lines(text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    #[test]
    fn only_what_came_since_the_last_poll_is_new() {
        assert_eq!(new_lines(&[], &lines("a b")), lines("a b"));
        assert_eq!(new_lines(&lines("a b"), &lines("a b c d")), lines("c d"));
        assert!(new_lines(&lines("a b"), &lines("a b")).is_empty());
        // The window moved: the first lines scrolled out, the last printed ones are
        // still there.
        assert_eq!(
            new_lines(&lines("a b c d e f g"), &lines("c d e f g h")),
            lines("h")
        );
        // Everything printed scrolled out: all of it is new.
        assert_eq!(
            new_lines(&lines("a b c d e f g"), &lines("x y")),
            lines("x y")
        );
    }
}
