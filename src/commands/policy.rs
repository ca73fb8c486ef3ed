//! `realtime-stack policy`: the least-privilege IAM policy ([`crate::policy`]) a deployer
//! needs for `up`, `plan`, `status`, `logs` and `destroy` of this stack, as JSON to attach
//! to a role or user. It changes nothing; it asks AWS only who the account is, which
//! hosted zone holds the domain and which alias the stack wrote for an earlier
//! `domain.name` (which `up` deletes, so the policy lets it), unless `--account` and an id
//! in `domain.hosted_zone` (or `--hosted-zone-id`) say so. Every document it prints is
//! within IAM's size limit.

use std::path::Path;

use anyhow::Result;

use crate::aws::AwsArgs;
use crate::engine::Progress;
use crate::load_balancer::{self, WrittenAlias};
use crate::policy::{self, Scope};
use crate::spec::StackSpec;
use crate::stack::Stack;

#[derive(clap::Args, Debug, Clone)]
pub struct PolicyArgs {
    /// The AWS account the stack lives in (default: the account of the credentials)
    #[arg(long, value_parser = account_id)]
    pub account: Option<String>,
    /// The Route53 hosted zone holding the domain (default: `domain.hosted_zone` when it
    /// is an id, else the zone of that name in the account)
    #[arg(long)]
    pub hosted_zone_id: Option<String>,
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
    let hosted_zone_id = match (&args.hosted_zone_id, stack.spec.domain.zone_id()) {
        (Some(id), _) => id.trim_start_matches("/hostedzone/").to_owned(),
        (None, Some(id)) => id.to_owned(),
        (None, None) => crate::dns::find_zone(&stack).await?.id,
    };
    let asks_aws = args.account.is_none()
        || (args.hosted_zone_id.is_none() && stack.spec.domain.zone_id().is_none());
    let written = if asks_aws {
        load_balancer::alias_target(&stack)
            .await?
            .and_then(|target| target.written)
    } else {
        None
    };
    let current = WrittenAlias::new(&hosted_zone_id, &stack.spec.domain.name);
    let retired = written.filter(|written| *written != current);
    let documents = policy::documents(&Scope {
        spec: &stack.spec,
        names: &stack.names,
        account: &account,
        region: &stack.region,
        hosted_zone_id: &hosted_zone_id,
        retired_alias: retired
            .as_ref()
            .map(|alias| (alias.zone_id.as_str(), alias.name.as_str())),
    });
    match documents.as_slice() {
        [document] => println!("{}", serde_json::to_string_pretty(document)?),
        _ => {
            stack.progress.note(&format!(
                "the policy is larger than the {} characters IAM takes in one managed \
                 policy: printing {} documents (a JSON array), to attach as {} managed \
                 policies of the deployer's role",
                policy::MANAGED_POLICY_LIMIT,
                documents.len(),
                documents.len()
            ));
            println!("{}", serde_json::to_string_pretty(&documents)?);
        }
    }
    Ok(())
}
