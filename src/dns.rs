//! Route53: finding the user's hosted zone (it exists before the stack and outlives it),
//! and the record sets the stack writes into it: the certificate's validation CNAMEs and
//! the domain's alias to the load balancer. Record sets cannot carry tags, so the stack
//! owns exactly the records its callers name, and deletes one only while it still holds
//! what the stack wrote.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, ChangeStatus, ResourceRecord,
    ResourceRecordSet, RrType,
};

use crate::aws::{Call, delete_outcome};
use crate::engine::Action;
use crate::engine::{Deletable, DeleteError, DeleteFuture, Step, wait_for};
use crate::stack::Stack;

/// TTL of the value records the stack writes; validation CNAMEs never change.
const TTL_SECONDS: i64 = 300;

/// A Route53 hosted zone the stack writes into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostedZone {
    /// Without the `/hostedzone/` prefix.
    pub id: String,
    /// Without the trailing dot.
    pub name: String,
}

/// One record set the stack writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fully qualified, with or without the trailing dot.
    pub name: String,
    pub record_type: RrType,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A single value (a CNAME's target), with a fixed TTL.
    Value(String),
    /// A Route53 alias to an AWS resource such as a load balancer, evaluating its
    /// health.
    Alias {
        dns_name: String,
        hosted_zone_id: String,
    },
}

impl Record {
    pub fn cname(name: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            record_type: RrType::Cname,
            target: Target::Value(value.to_owned()),
        }
    }

    /// An IPv4 alias: the load balancer is IPv4-only, so no AAAA.
    pub fn alias_a(name: &str, dns_name: &str, hosted_zone_id: &str) -> Self {
        Self {
            name: name.to_owned(),
            record_type: RrType::A,
            target: Target::Alias {
                dns_name: dns_name.to_owned(),
                hosted_zone_id: hosted_zone_id.to_owned(),
            },
        }
    }

    /// Whether `set` is this record's name and type and points where this record does.
    /// What counts as the stack's own record when deleting.
    fn points_like(&self, set: &ResourceRecordSet) -> bool {
        if normalize(&set.name) != normalize(&self.name) || set.r#type != self.record_type {
            return false;
        }
        match &self.target {
            Target::Value(value) => {
                set.alias_target.is_none()
                    && matches!(set.resource_records(), [only] if normalize(&only.value) == normalize(value))
            }
            Target::Alias {
                dns_name,
                hosted_zone_id,
            } => set.alias_target.as_ref().is_some_and(|alias| {
                alias_name(&alias.dns_name) == alias_name(dns_name)
                    && alias.hosted_zone_id == *hosted_zone_id
            }),
        }
    }

    /// Whether `set` is exactly what this record writes. A different TTL does not count:
    /// it changes nothing the stack relies on.
    fn is_written_as(&self, set: &ResourceRecordSet) -> bool {
        self.points_like(set)
            && match self.target {
                Target::Value(_) => true,
                Target::Alias { .. } => set
                    .alias_target
                    .as_ref()
                    .is_some_and(|alias| alias.evaluate_target_health),
            }
    }

    fn to_set(&self) -> Result<ResourceRecordSet> {
        let set = ResourceRecordSet::builder()
            .name(&self.name)
            .r#type(self.record_type.clone());
        let set = match &self.target {
            Target::Value(value) => set
                .ttl(TTL_SECONDS)
                .resource_records(ResourceRecord::builder().value(value).build()?),
            Target::Alias {
                dns_name,
                hosted_zone_id,
            } => set.alias_target(
                AliasTarget::builder()
                    .dns_name(dns_name)
                    .hosted_zone_id(hosted_zone_id)
                    .evaluate_target_health(true)
                    .build()?,
            ),
        };
        Ok(set.build()?)
    }

    fn describe(&self) -> String {
        format!("{} {}", normalize(&self.name), self.record_type)
    }

    /// What `destroy` knows the record by: what waits for it names it so.
    pub fn key(&self) -> String {
        format!(
            "route53-record:{}:{}",
            normalize(&self.name),
            self.record_type
        )
    }
}

/// Route53 answers names lowercase with a trailing dot; users and ACM write them either
/// way.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Route53 may store an ELB alias target with the `dualstack.` prefix it recommends.
fn alias_name(dns_name: &str) -> String {
    let name = normalize(dns_name);
    match name.strip_prefix("dualstack.") {
        Some(rest) => rest.to_owned(),
        None => name,
    }
}

/// The alias record for the stack's domain to a load balancer.
pub fn domain_alias(stack: &Stack, target_dns: &str, target_zone_id: &str) -> Record {
    Record::alias_a(&stack.spec.domain.name, target_dns, target_zone_id)
}

/// Preflight: the hosted zone named in `stack.yaml`, by id or by name. It must exist, be
/// public (ACM validates, and users resolve, through public DNS) and hold the domain.
pub async fn find_zone(stack: &Stack) -> Result<HostedZone> {
    let domain = &stack.spec.domain;
    let zone = match domain.zone_id() {
        Some(id) => zone_by_id(stack, id).await?,
        None => zone_by_name(stack, &domain.hosted_zone).await?,
    };
    let name = normalize(&domain.name);
    if name != zone.name && !name.ends_with(&format!(".{}", zone.name)) {
        bail!(
            "the domain {name} is not inside the hosted zone {} ({}): set domain.hosted_zone \
             in stack.yaml to the zone that holds {name}, or pick a domain.name ending in .{}",
            zone.name,
            zone.id,
            zone.name
        );
    }
    Ok(zone)
}

async fn zone_by_id(stack: &Stack, id: &str) -> Result<HostedZone> {
    let found = stack.clients.route53.get_hosted_zone().id(id).send().await;
    let Some(found) = crate::aws::found(found, format!("GetHostedZone {id}"), |err| {
        err.is_no_such_hosted_zone()
    })?
    else {
        bail!(
            "there is no Route53 hosted zone with the id {id} (domain.hosted_zone in \
             stack.yaml) in this AWS account: give the id or the name of an existing \
             public hosted zone that holds {}",
            stack.spec.domain.name
        )
    };
    let zone = found
        .hosted_zone
        .with_context(|| format!("GetHostedZone {id} returned no zone"))?;
    if zone
        .config
        .as_ref()
        .is_some_and(|config| config.private_zone)
    {
        bail!(
            "the hosted zone {id} ({}) is private: ACM validates certificates and users \
             resolve the domain through public DNS; set domain.hosted_zone to a public zone",
            normalize(&zone.name)
        );
    }
    Ok(hosted_zone(zone))
}

async fn zone_by_name(stack: &Stack, name: &str) -> Result<HostedZone> {
    let zones = zones_named(stack, name).await?;
    let (public, private): (Vec<_>, Vec<_>) = zones
        .into_iter()
        .partition(|zone| !zone.config.as_ref().is_some_and(|c| c.private_zone));
    match public.as_slice() {
        [zone] => Ok(hosted_zone(zone.clone())),
        [] if !private.is_empty() => bail!(
            "the hosted zone {name} (domain.hosted_zone in stack.yaml) is private: ACM \
             validates certificates and users resolve the domain through public DNS; create \
             a public hosted zone {name} and delegate the domain to it"
        ),
        [] => bail!(
            "there is no Route53 hosted zone named {name} (domain.hosted_zone in stack.yaml) \
             in this AWS account: create a public hosted zone for it and point the domain's \
             NS records at its name servers, or name an existing zone"
        ),
        // Route53 lets an account hold several public zones of one name; only the one the
        // parent domain delegates to is seen by ACM and by users.
        several => bail!(
            "this AWS account has {} public hosted zones named {name} ({}): set \
             domain.hosted_zone in stack.yaml to the id of the one the domain is delegated \
             to (its name servers, from `aws route53 get-hosted-zone --id <id>`, are the \
             domain's NS records), or delete the others",
            several.len(),
            several
                .iter()
                .map(|zone| hosted_zone(zone.clone()).id)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Every hosted zone named exactly `name`. The listing starts at `name` and goes on in
/// the zones' order, a page of up to 100 at a time; zones of one name are listed
/// together, so paging stops at the first page whose next zone has another name.
async fn zones_named(stack: &Stack, name: &str) -> Result<Vec<aws_sdk_route53::types::HostedZone>> {
    let mut zones = Vec::new();
    let mut next_zone_id = None;
    loop {
        let page = stack
            .clients
            .route53
            .list_hosted_zones_by_name()
            .dns_name(name)
            .set_hosted_zone_id(next_zone_id)
            .send()
            .await
            .call(format!("ListHostedZonesByName {name}"))?;
        zones.extend(
            page.hosted_zones
                .into_iter()
                .filter(|zone| normalize(&zone.name) == normalize(name)),
        );
        match (
            page.is_truncated,
            page.next_dns_name,
            page.next_hosted_zone_id,
        ) {
            (true, Some(next_name), Some(next_id)) if normalize(&next_name) == normalize(name) => {
                next_zone_id = Some(next_id);
            }
            _ => return Ok(zones),
        }
    }
}

fn hosted_zone(zone: aws_sdk_route53::types::HostedZone) -> HostedZone {
    HostedZone {
        id: zone.id.trim_start_matches("/hostedzone/").to_owned(),
        name: normalize(&zone.name),
    }
}

/// The name servers Route53 serves `zone` from, for advice about delegation.
pub async fn name_servers(stack: &Stack, zone: &HostedZone) -> Result<Vec<String>> {
    Ok(stack
        .clients
        .route53
        .get_hosted_zone()
        .id(&zone.id)
        .send()
        .await
        .call(format!("GetHostedZone {}", zone.id))?
        .delegation_set
        .map(|set| set.name_servers)
        .unwrap_or_default())
}

/// Writes the `records` that are missing or differ, in one change, and waits until
/// Route53 has applied it. Makes no change when all are as written.
pub async fn upsert_records(stack: &Stack, zone: &HostedZone, records: &[Record]) -> Result<()> {
    let label = records
        .iter()
        .map(Record::describe)
        .collect::<Vec<_>>()
        .join(", ");
    let step = stack.progress.step(format!("dns {label}"));
    step.run(upsert(stack, zone, records, &step), |changed| {
        if *changed { "written" } else { "unchanged" }.to_owned()
    })
    .await
    .map(|_| ())
}

async fn upsert(stack: &Stack, zone: &HostedZone, records: &[Record], step: &Step) -> Result<bool> {
    let route53 = &stack.clients.route53;
    let mut changes = Vec::new();
    for record in records {
        let current = current_set(route53, &zone.id, record).await?;
        let action = match &current {
            Some(set) if record.is_written_as(set) => continue,
            Some(_) => Action::Update,
            None => Action::Create,
        };
        if stack.make(
            action,
            format!("dns {}", record.describe()),
            format!("in {}", zone.name),
        ) {
            changes.push(
                Change::builder()
                    .action(ChangeAction::Upsert)
                    .resource_record_set(record.to_set()?)
                    .build()?,
            );
        }
    }
    if changes.is_empty() {
        return Ok(false);
    }
    step.set("writing");
    let change = route53
        .change_resource_record_sets()
        .hosted_zone_id(&zone.id)
        .change_batch(
            ChangeBatch::builder()
                .comment(format!("realtime-stack {}", stack.names.stack()))
                .set_changes(Some(changes))
                .build()?,
        )
        .send()
        .await
        .call(format!("ChangeResourceRecordSets in {}", zone.name))?
        .change_info
        .context("ChangeResourceRecordSets returned no change")?;
    if change.status == ChangeStatus::Insync {
        return Ok(true);
    }
    let call = format!("GetChange {}", change.id);
    wait_for(
        step,
        stack.pace,
        "Route53 to apply the change",
        stack.pace.limit(Duration::from_secs(600)),
        None,
        || async {
            let status = route53
                .get_change()
                .id(&change.id)
                .send()
                .await
                .call(&call)?
                .change_info
                .map(|info| info.status);
            Ok((status == Some(ChangeStatus::Insync)).then_some(()))
        },
    )
    .await?;
    Ok(true)
}

/// The record set of `record`'s name and type in the zone, if any.
async fn current_set(
    route53: &aws_sdk_route53::Client,
    zone_id: &str,
    record: &Record,
) -> Result<Option<ResourceRecordSet>> {
    // Record sets are listed in order from the start name and type: the first one is the
    // record, or another one when it does not exist.
    let sets = route53
        .list_resource_record_sets()
        .hosted_zone_id(zone_id)
        .start_record_name(&record.name)
        .start_record_type(record.record_type.clone())
        .max_items(1)
        .send()
        .await
        .call(format!("ListResourceRecordSets {}", record.describe()))?
        .resource_record_sets;
    Ok(sets.into_iter().find(|set| {
        normalize(&set.name) == normalize(&record.name) && set.r#type == record.record_type
    }))
}

/// Preflight: nobody else's record holds the domain. `up` upserts the domain's alias, so
/// an A record pointing elsewhere (a site already served there) would be silently
/// replaced, and a CNAME there makes the alias impossible. The stack's own alias - to
/// `load_balancer` (DNS name, canonical zone), when the stack has one - is fine.
pub async fn check_domain_is_free(
    stack: &Stack,
    zone: &HostedZone,
    load_balancer: Option<(&str, &str)>,
) -> Result<()> {
    let name = &stack.spec.domain.name;
    let route53 = &stack.clients.route53;
    let ours = |set: &ResourceRecordSet| {
        load_balancer.is_some_and(|(dns_name, zone_id)| {
            Record::alias_a(name, dns_name, zone_id).points_like(set)
        })
    };
    for probe in [Record::alias_a(name, "", ""), Record::cname(name, "")] {
        let Some(set) = current_set(route53, &zone.id, &probe).await? else {
            continue;
        };
        if normalize(&set.name) != normalize(name) || set.r#type != probe.record_type || ours(&set)
        {
            continue;
        }
        let points_to = match &set.alias_target {
            Some(alias) => format!("an alias to {}", normalize(&alias.dns_name)),
            None => set
                .resource_records()
                .iter()
                .map(|record| record.value.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let moved = set
            .alias_target
            .as_ref()
            .and_then(|alias| stack_behind(&alias.dns_name))
            .map(|(other, region)| {
                format!(
                    ". It points at {other}'s load balancer in {region}, as realtime-stack \
                     names one: if that is this stack under another `name` or `region`, \
                     which cannot change in place, run `destroy` with its stack.yaml first"
                )
            })
            .unwrap_or_default();
        bail!(
            "the hosted zone {} already has a record for {} ({} {points_to}) that is not this \
             stack's: `up` would replace it. Delete it if it is no longer used, or set \
             domain.name in stack.yaml to a free name{moved}",
            zone.name,
            normalize(name),
            set.r#type.as_str()
        );
    }
    Ok(())
}

/// The stack and region behind a load balancer's DNS name, when its name is as
/// realtime-stack names a stack's (`<stack>-alb`): ELB names it
/// `[dualstack.]<name>-<number>.<region>.elb.amazonaws.com`.
fn stack_behind(dns_name: &str) -> Option<(String, String)> {
    let dns_name = normalize(dns_name);
    let mut labels = dns_name
        .strip_prefix("dualstack.")
        .unwrap_or(&dns_name)
        .split('.');
    let (balancer, region) = (labels.next()?, labels.next()?);
    if labels.collect::<Vec<_>>() != ["elb", "amazonaws", "com"] {
        return None;
    }
    let (name, number) = balancer.rsplit_once('-')?;
    let stack = name.strip_suffix("-alb")?;
    (number.bytes().all(|b| b.is_ascii_digit()) && !stack.is_empty())
        .then(|| (stack.to_owned(), region.to_owned()))
}

/// Points the stack's domain at the load balancer.
pub async fn ensure_alias(
    stack: &Stack,
    zone: &HostedZone,
    target_dns: &str,
    target_zone_id: &str,
) -> Result<()> {
    upsert_records(
        stack,
        zone,
        &[domain_alias(stack, target_dns, target_zone_id)],
    )
    .await
}

/// Deletes `records`, which the stack wrote for a domain it no longer serves, in the zone
/// `zone_id`, each while it still holds what the stack wrote.
pub async fn retire(stack: &Stack, zone_id: &str, records: &[Record]) -> Result<()> {
    for record in deletables(stack, zone_id, records).await {
        let held = stack
            .changes
            .delete_now(record.as_ref(), "a domain the stack no longer serves")
            .await?;
        if let Some(why) = held {
            bail!(why);
        }
    }
    Ok(())
}

/// The `owned` records that exist and still hold what the stack wrote, to delete: the
/// domain's alias (see [`domain_alias`]) only while it points at the stack's load
/// balancer, and the certificate's validation CNAMEs. A record that now points elsewhere
/// was changed by someone else and is left alone.
pub async fn deletables(stack: &Stack, zone_id: &str, owned: &[Record]) -> Vec<Box<dyn Deletable>> {
    let mut found: Vec<Box<dyn Deletable>> = Vec::new();
    for record in owned {
        match current_set(&stack.clients.route53, zone_id, record).await {
            Ok(None) => {}
            Ok(Some(set)) if !record.points_like(&set) => stack.progress.note(&format!(
                "dns {} no longer points where the stack wrote it: left in place",
                record.describe()
            )),
            // A record that could not be looked up is looked up again when deleted.
            Ok(Some(_)) | Err(_) => found.push(Box::new(RecordSet {
                route53: stack.clients.route53.clone(),
                zone_id: zone_id.to_owned(),
                record: record.clone(),
            })),
        }
    }
    found
}

struct RecordSet {
    route53: aws_sdk_route53::Client,
    zone_id: String,
    record: Record,
}

impl Deletable for RecordSet {
    fn key(&self) -> String {
        self.record.key()
    }

    fn label(&self) -> String {
        format!("dns {}", self.record.describe())
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            // A DELETE must repeat the record set exactly as it is now.
            let current = current_set(&self.route53, &self.zone_id, &self.record)
                .await
                .map_err(DeleteError::Failed)?;
            let Some(set) = current.filter(|set| self.record.points_like(set)) else {
                return Ok(());
            };
            let batch = Change::builder()
                .action(ChangeAction::Delete)
                .resource_record_set(set)
                .build()
                .and_then(|change| ChangeBatch::builder().changes(change).build())
                .map_err(|err| DeleteError::Failed(err.into()))?;
            let result = self
                .route53
                .change_resource_record_sets()
                .hosted_zone_id(&self.zone_id)
                .change_batch(batch)
                .send()
                .await;
            delete_outcome(
                result,
                &format!("ChangeResourceRecordSets DELETE {}", self.record.describe()),
                &[],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_route53::Client;
    use aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsOutput;
    use aws_sdk_route53::operation::get_change::GetChangeOutput;
    use aws_sdk_route53::operation::get_hosted_zone::GetHostedZoneError;
    use aws_sdk_route53::operation::list_hosted_zones_by_name::ListHostedZonesByNameOutput;
    use aws_sdk_route53::operation::list_resource_record_sets::ListResourceRecordSetsOutput;
    use aws_sdk_route53::types::error::NoSuchHostedZone;
    use aws_sdk_route53::types::{ChangeInfo, HostedZoneConfig};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::stack::testing;

    fn zone() -> HostedZone {
        HostedZone {
            id: "Z1".into(),
            name: "example.com".into(),
        }
    }

    fn listed(sets: Vec<ResourceRecordSet>) -> ListResourceRecordSetsOutput {
        ListResourceRecordSetsOutput::builder()
            .set_resource_record_sets(Some(sets))
            .is_truncated(false)
            .max_items(1)
            .build()
            .unwrap()
    }

    fn change(status: ChangeStatus) -> ChangeInfo {
        ChangeInfo::builder()
            .id("/change/C1")
            .status(status)
            .submitted_at(aws_smithy_types::DateTime::from_secs(0))
            .build()
            .unwrap()
    }

    fn listed_zone(name: &str, private: bool) -> aws_sdk_route53::types::HostedZone {
        aws_sdk_route53::types::HostedZone::builder()
            .id(format!("/hostedzone/Z-{name}-{private}"))
            .name(format!("{name}."))
            .caller_reference("x")
            .config(HostedZoneConfig::builder().private_zone(private).build())
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn a_zone_that_does_not_hold_the_domain_is_refused_with_what_to_do() {
        let zones = mock!(Client::list_hosted_zones_by_name).then_output(|| {
            ListHostedZonesByNameOutput::builder()
                .hosted_zones(listed_zone("example.com", false))
                .is_truncated(false)
                .max_items(100)
                .build()
                .unwrap()
        });
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&zones]);
        let mut stack = testing::stack(clients);
        stack.spec.domain.name = "chat.example.org".into();

        let err = find_zone(&stack).await.unwrap_err().to_string();

        assert!(err.contains("chat.example.org"), "{err}");
        assert!(err.contains("example.com"), "{err}");
        assert!(err.contains("set domain.hosted_zone"), "{err}");
    }

    #[tokio::test]
    async fn an_unknown_zone_id_is_refused_with_what_to_do() {
        let missing = mock!(Client::get_hosted_zone).then_error(|| {
            GetHostedZoneError::NoSuchHostedZone(NoSuchHostedZone::builder().build())
        });
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&missing]);
        let mut stack = testing::stack(clients);
        stack.spec.domain.hosted_zone = "Z0123456789ABCDEFGHIJ".into();
        assert!(stack.spec.domain.zone_id().is_some());

        let err = find_zone(&stack).await.unwrap_err().to_string();

        assert!(err.contains("Z0123456789ABCDEFGHIJ"), "{err}");
        assert!(err.contains("existing"), "{err}");
    }

    #[tokio::test]
    async fn the_public_zone_of_the_exact_name_is_chosen() {
        let zones = mock!(Client::list_hosted_zones_by_name).then_output(|| {
            ListHostedZonesByNameOutput::builder()
                .hosted_zones(listed_zone("example.com", true))
                .hosted_zones(listed_zone("example.com", false))
                .hosted_zones(listed_zone("example.comm", false))
                .is_truncated(false)
                .max_items(100)
                .build()
                .unwrap()
        });
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&zones]);
        let stack = testing::stack(clients);

        let zone = find_zone(&stack).await.unwrap();

        assert_eq!(zone.id, "Z-example.com-false");
        assert_eq!(zone.name, "example.com");
    }

    fn zones_page(
        zones: Vec<aws_sdk_route53::types::HostedZone>,
        next: Option<(&str, &str)>,
    ) -> ListHostedZonesByNameOutput {
        ListHostedZonesByNameOutput::builder()
            .set_hosted_zones(Some(zones))
            .is_truncated(next.is_some())
            .set_next_dns_name(next.map(|(name, _)| name.to_owned()))
            .set_next_hosted_zone_id(next.map(|(_, id)| id.to_owned()))
            .max_items(1)
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn zones_of_the_name_are_read_past_the_first_page() {
        let first = mock!(Client::list_hosted_zones_by_name)
            .match_requests(|req| req.hosted_zone_id().is_none())
            .then_output(|| {
                zones_page(
                    vec![listed_zone("example.com", true)],
                    Some(("example.com.", "Z-next")),
                )
            });
        let second = mock!(Client::list_hosted_zones_by_name)
            .match_requests(|req| {
                req.hosted_zone_id() == Some("Z-next") && req.dns_name() == Some("example.com")
            })
            .then_output(|| {
                zones_page(
                    vec![listed_zone("example.com", false)],
                    Some(("example.net.", "Z-other")),
                )
            });
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&first, &second]);
        let stack = testing::stack(clients);

        let zone = find_zone(&stack).await.unwrap();

        assert_eq!(zone.id, "Z-example.com-false");
        assert_eq!((first.num_calls(), second.num_calls()), (1, 1));
    }

    #[tokio::test]
    async fn two_public_zones_of_the_name_are_refused_with_their_ids() {
        let zones = mock!(Client::list_hosted_zones_by_name).then_output(|| {
            let mut twin = listed_zone("example.com", false);
            twin.id = "/hostedzone/Z-twin".into();
            zones_page(vec![listed_zone("example.com", false), twin], None)
        });
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&zones]);
        let stack = testing::stack(clients);

        let err = find_zone(&stack).await.unwrap_err().to_string();

        assert!(
            err.contains("2 public hosted zones named example.com"),
            "{err}"
        );
        assert!(err.contains("Z-example.com-false, Z-twin"), "{err}");
        assert!(
            err.contains("to the id of the one the domain is delegated"),
            "{err}"
        );
    }

    #[test]
    fn a_stack_s_load_balancer_is_known_by_its_dns_name() {
        assert_eq!(
            stack_behind("dualstack.chat-alb-1234567890.eu-west-3.elb.amazonaws.com."),
            Some(("chat".to_owned(), "eu-west-3".to_owned()))
        );
        assert_eq!(
            stack_behind("chat-prod-alb-42.us-east-1.elb.amazonaws.com"),
            Some(("chat-prod".to_owned(), "us-east-1".to_owned()))
        );
        for other in [
            "shop-lb-42.us-east-1.elb.amazonaws.com",
            "chat-alb-abc.us-east-1.elb.amazonaws.com",
            "d111111abcdef8.cloudfront.net",
            "-alb-42.us-east-1.elb.amazonaws.com",
        ] {
            assert_eq!(stack_behind(other), None, "{other}");
        }
    }

    #[tokio::test]
    async fn records_as_written_are_left_unchanged() {
        let alias = Record::alias_a(
            "chat.example.com",
            "chat-alb-1.us-east-1.elb.amazonaws.com",
            "ZALB",
        );
        // As Route53 answers: lowercase, trailing dot, ELB's dualstack prefix.
        let list = mock!(Client::list_resource_record_sets).then_output(|| {
            listed(vec![
                ResourceRecordSet::builder()
                    .name("chat.example.com.")
                    .r#type(RrType::A)
                    .alias_target(
                        AliasTarget::builder()
                            .dns_name("dualstack.chat-alb-1.us-east-1.elb.amazonaws.com.")
                            .hosted_zone_id("ZALB")
                            .evaluate_target_health(true)
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            ])
        });
        let write = mock!(Client::change_resource_record_sets)
            .then_output(|| ChangeResourceRecordSetsOutput::builder().build());
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&list, &write]);
        let stack = testing::stack(clients);

        upsert_records(&stack, &zone(), &[alias]).await.unwrap();

        assert_eq!(write.num_calls(), 0);
    }

    #[tokio::test]
    async fn a_missing_record_is_written_and_waited_for() {
        let list = mock!(Client::list_resource_record_sets).then_output(|| listed(vec![]));
        let write = mock!(Client::change_resource_record_sets)
            .match_requests(|req| {
                let changes = req.change_batch().unwrap().changes();
                changes.len() == 1
                    && changes[0].action == ChangeAction::Upsert
                    && changes[0].resource_record_set().unwrap().r#type == RrType::Cname
            })
            .then_output(|| {
                ChangeResourceRecordSetsOutput::builder()
                    .change_info(change(ChangeStatus::Pending))
                    .build()
            });
        let sync = mock!(Client::get_change)
            .sequence()
            .output(|| {
                GetChangeOutput::builder()
                    .change_info(change(ChangeStatus::Pending))
                    .build()
            })
            .output(|| {
                GetChangeOutput::builder()
                    .change_info(change(ChangeStatus::Insync))
                    .build()
            })
            .build();
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&list, &write, &sync]);
        let stack = testing::stack(clients);

        let record = Record::cname("_a.chat.example.com.", "_b.acm-validations.aws.");
        upsert_records(&stack, &zone(), &[record]).await.unwrap();

        assert_eq!(write.num_calls(), 1);
        assert_eq!(sync.num_calls(), 2);
    }

    #[tokio::test]
    async fn an_alias_repointed_by_someone_else_is_not_deleted() {
        let list = mock!(Client::list_resource_record_sets).then_output(|| {
            listed(vec![
                Record::alias_a("chat.example.com", "other.elb.amazonaws.com", "ZALB")
                    .to_set()
                    .unwrap(),
            ])
        });
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&list]);
        let stack = testing::stack(clients);
        let ours = domain_alias(&stack, "chat-alb-1.us-east-1.elb.amazonaws.com", "ZALB");

        assert!(deletables(&stack, &zone().id, &[ours]).await.is_empty());
    }

    #[tokio::test]
    async fn the_stack_s_alias_is_deleted_as_it_is() {
        let ours = Record::alias_a("chat.example.com", "chat-alb-1.elb.amazonaws.com", "ZALB");
        let existing = ours.to_set().unwrap();
        let list = mock!(Client::list_resource_record_sets).then_output({
            let existing = existing.clone();
            move || listed(vec![existing.clone()])
        });
        let delete = mock!(Client::change_resource_record_sets)
            .match_requests(move |req| {
                let change = &req.change_batch().unwrap().changes()[0];
                change.action == ChangeAction::Delete
                    && change.resource_record_set() == Some(&existing)
            })
            .then_output(|| ChangeResourceRecordSetsOutput::builder().build());
        let mut clients = testing::clients();
        clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&list, &delete]);
        let stack = testing::stack(clients);

        let found = deletables(&stack, &zone().id, &[ours]).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].key(), "route53-record:chat.example.com:A");
        found[0].delete().await.unwrap();

        assert_eq!(delete.num_calls(), 1);
    }
}
