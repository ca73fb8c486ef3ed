//! `realtime-stack policy`: the least-privilege IAM policy ([`crate::policy`]) a deployer
//! needs for `up`, `plan`, `status`, `logs` and `destroy` of this stack, as JSON to attach
//! to a role or user. It changes nothing; it asks AWS only who the account is, unless
//! `--account` says so.

use std::path::Path;

use anyhow::Result;

use crate::aws::AwsArgs;
use crate::engine::Progress;
use crate::policy::{self, Scope};
use crate::spec::StackSpec;
use crate::stack::Stack;

#[derive(clap::Args, Debug, Clone)]
pub struct PolicyArgs {
    /// The AWS account the stack lives in (default: the account of the credentials)
    #[arg(long, value_parser = account_id)]
    pub account: Option<String>,
}

fn account_id(value: &str) -> Result<String, String> {
    if value.len() == 12 && value.bytes().all(|b| b.is_ascii_digit()) {
        Ok(value.to_owned())
    } else {
        Err("an AWS account id is 12 digits".to_owned())
    }
}

pub async fn run(file: &Path, aws: &AwsArgs, args: &PolicyArgs) -> Result<()> {
    let spec = StackSpec::load(file)?;
    let stack = Stack::connect_to_plan(spec, aws, Progress::notes_only()).await?;
    let account = match &args.account {
        Some(account) => account.clone(),
        None => super::account(&stack).await?,
    };
    let document = policy::document(&Scope {
        names: &stack.names,
        account: &account,
        region: &stack.region,
        domain: &stack.spec.domain.name,
    });
    println!("{}", serde_json::to_string_pretty(&document)?);
    Ok(())
}
