//! stack.yaml's `tags` on the stack's resources made before they changed: its EC2
//! resources (the VPC, subnets, gateway, route tables, endpoint, security groups, launch
//! template, running instances and their volumes) with CreateTags, its load balancer and
//! target group with ELB's AddTags, its Redis and cache subnet group with
//! AddTagsToResource, and its certificate with AddTagsToCertificate, which the deployer
//! policy allows on what is the stack's. Each gets the keys it lacks and the values that
//! changed. A key taken out of stack.yaml is left where it is: the tags a resource
//! carries do not say which came from stack.yaml and which from someone else.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use aws_sdk_ec2::types::{Filter, Tag};

use crate::aws::Call;
use crate::engine::{Action, is_planned};
use crate::names::STACK_TAG;
use crate::stack::Stack;

/// The stack's EC2 resources, by id, with the tags each carries.
async fn stack_resources(stack: &Stack) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let ec2 = &stack.clients.ec2;
    let mut resources: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut ids = Vec::new();
    let mut pages = ec2
        .describe_tags()
        .filters(Filter::builder().name("key").values(STACK_TAG).build())
        .filters(
            Filter::builder()
                .name("value")
                .values(stack.names.stack())
                .build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.call(format!("DescribeTags {STACK_TAG}={}", stack.names.stack()))?;
        ids.extend(
            page.tags()
                .iter()
                .filter_map(|tag| tag.resource_id().map(str::to_owned)),
        );
    }
    // DescribeTags takes at most 200 values in a filter.
    for chunk in ids.chunks(200) {
        let mut pages = ec2
            .describe_tags()
            .filters(filter("resource-id", chunk))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.call("DescribeTags of the stack's resources")?;
            for tag in page.tags() {
                if let (Some(id), Some(key)) = (tag.resource_id(), tag.key()) {
                    resources
                        .entry(id.to_owned())
                        .or_default()
                        .insert(key.to_owned(), tag.value().unwrap_or_default().to_owned());
                }
            }
        }
    }
    Ok(resources)
}

/// stack.yaml's tags that `have` lacks or carries with another value.
fn missing(stack: &Stack, have: &BTreeMap<String, String>) -> Vec<(String, String)> {
    stack
        .spec
        .tags
        .iter()
        .filter(|(key, value)| have.get(*key) != Some(value))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// stack.yaml's tags the resource `arn`, carrying `have` (key, value), is to be given:
/// none when it has them all, or when `plan` only records the change.
fn to_add<'a>(
    stack: &Stack,
    arn: &str,
    have: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> Option<Vec<(String, String)>> {
    let have: BTreeMap<String, String> = have
        .into_iter()
        .filter_map(|(key, value)| Some((key?.to_owned(), value.unwrap_or_default().to_owned())))
        .collect();
    let missing = missing(stack, &have);
    (!missing.is_empty() && stack.make(Action::Update, format!("tags of {arn}"), shown(&missing)))
        .then_some(missing)
}

/// What a change of tags says in `plan`.
fn shown(tags: &[(String, String)]) -> String {
    tags.iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Gives the stack's EC2 resources, the load-balancing resources `elb_arns` (the load
/// balancer and target group), its Redis and cache subnet group, and its certificate
/// `certificate_arn` stack.yaml's tags they lack or carry with another value.
pub async fn ensure(stack: &Stack, elb_arns: &[&str], certificate_arn: &str) -> Result<()> {
    if stack.spec.tags.is_empty() {
        return Ok(());
    }
    ensure_ec2(stack).await?;
    ensure_elb(stack, elb_arns).await?;
    ensure_cache(stack, &crate::cache::arns(stack).await?).await?;
    ensure_certificate(stack, certificate_arn).await
}

async fn ensure_ec2(stack: &Stack) -> Result<()> {
    let lacking: BTreeMap<String, Vec<(String, String)>> = stack_resources(stack)
        .await?
        .into_iter()
        .map(|(id, have)| (id, missing(stack, &have)))
        .filter(|(_, missing)| !missing.is_empty())
        .collect();
    let gone = gone(stack, lacking.keys()).await?;
    // Resources that lack the same tags are tagged in one call.
    let mut by_change: BTreeMap<Vec<(String, String)>, Vec<String>> = BTreeMap::new();
    for (id, missing) in lacking {
        if !gone.contains(&id) {
            by_change.entry(missing).or_default().push(id);
        }
    }
    for (tags, ids) in by_change {
        if !stack.make(
            Action::Update,
            format!("tags of {}", ids.join(" ")),
            shown(&tags),
        ) {
            continue;
        }
        // CreateTags takes up to 1000 resources a call.
        for chunk in ids.chunks(1000) {
            stack
                .clients
                .ec2
                .create_tags()
                .set_resources(Some(chunk.to_vec()))
                .set_tags(Some(
                    tags.iter()
                        .map(|(key, value)| Tag::builder().key(key).value(value).build())
                        .collect(),
                ))
                .send()
                .await
                .call(format!("CreateTags {}", chunk.join(" ")))?;
        }
    }
    Ok(())
}

/// Which of the instances and volumes among `ids` are terminated or deleted. DescribeTags
/// goes on listing them a while after (a terminated instance stays visible for about an
/// hour, <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/terminating-instances.html>;
/// LocalStack, for good), yet CreateTags naming one fails whole (`InvalidVolume.NotFound`):
/// a rolling deploy's replaced instances and their volumes are left out. The stack's
/// other EC2 resources are deleted by `destroy` alone.
async fn gone<'a>(
    stack: &Stack,
    ids: impl Iterator<Item = &'a String>,
) -> Result<BTreeSet<String>> {
    let ec2 = &stack.clients.ec2;
    let (instances, volumes): (Vec<String>, Vec<String>) = ids
        .filter(|id| id.starts_with("i-") || id.starts_with("vol-"))
        .cloned()
        .partition(|id| id.starts_with("i-"));
    let mut gone: BTreeSet<String> = instances.iter().chain(&volumes).cloned().collect();
    // Filters, not ids: DescribeInstances and DescribeVolumes refuse an id they do not
    // know. A filter takes at most 200 values.
    for chunk in instances.chunks(200) {
        let mut pages = ec2
            .describe_instances()
            .filters(filter("instance-id", chunk))
            .filters(filter(
                "instance-state-name",
                &["pending", "running", "stopping", "stopped"].map(str::to_owned),
            ))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.call("DescribeInstances of instances to tag")?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                if let Some(id) = instance.instance_id() {
                    gone.remove(id);
                }
            }
        }
    }
    for chunk in volumes.chunks(200) {
        let mut pages = ec2
            .describe_volumes()
            .filters(filter("volume-id", chunk))
            .filters(filter(
                "status",
                &["creating", "available", "in-use"].map(str::to_owned),
            ))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.call("DescribeVolumes of volumes to tag")?;
            for volume in page.volumes() {
                if let Some(id) = volume.volume_id() {
                    gone.remove(id);
                }
            }
        }
    }
    Ok(gone)
}

fn filter(name: &str, values: &[String]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}

async fn ensure_elb(stack: &Stack, arns: &[&str]) -> Result<()> {
    let arns: Vec<String> = arns
        .iter()
        .filter(|arn| !is_planned(arn))
        .map(|arn| (*arn).to_owned())
        .collect();
    if arns.is_empty() {
        return Ok(());
    }
    let elbv2 = &stack.clients.elbv2;
    let described = elbv2
        .describe_tags()
        .set_resource_arns(Some(arns))
        .send()
        .await
        .call("DescribeTags of the load balancer and target group")?;
    for description in described.tag_descriptions() {
        let Some(arn) = description.resource_arn() else {
            continue;
        };
        let have = description
            .tags()
            .iter()
            .map(|tag| (tag.key(), tag.value()));
        let Some(missing) = to_add(stack, arn, have) else {
            continue;
        };
        elbv2
            .add_tags()
            .resource_arns(arn)
            .set_tags(Some(
                missing
                    .iter()
                    .map(|(key, value)| {
                        aws_sdk_elasticloadbalancingv2::types::Tag::builder()
                            .key(key)
                            .value(value)
                            .build()
                    })
                    .collect(),
            ))
            .send()
            .await
            .call(format!("AddTags {arn}"))?;
    }
    Ok(())
}

async fn ensure_cache(stack: &Stack, arns: &[String]) -> Result<()> {
    let elasticache = &stack.clients.elasticache;
    for arn in arns {
        let listed = elasticache
            .list_tags_for_resource()
            .resource_name(arn)
            .send()
            .await
            .call(format!("ListTagsForResource {arn}"))?;
        let have = listed.tag_list().iter().map(|tag| (tag.key(), tag.value()));
        let Some(missing) = to_add(stack, arn, have) else {
            continue;
        };
        elasticache
            .add_tags_to_resource()
            .resource_name(arn)
            .set_tags(Some(
                missing
                    .iter()
                    .map(|(key, value)| {
                        aws_sdk_elasticache::types::Tag::builder()
                            .key(key)
                            .value(value)
                            .build()
                    })
                    .collect(),
            ))
            .send()
            .await
            .call(format!("AddTagsToResource {arn}"))?;
    }
    Ok(())
}

async fn ensure_certificate(stack: &Stack, arn: &str) -> Result<()> {
    if is_planned(arn) {
        return Ok(());
    }
    let acm = &stack.clients.acm;
    let listed = acm
        .list_tags_for_certificate()
        .certificate_arn(arn)
        .send()
        .await
        .call(format!("ListTagsForCertificate {arn}"))?;
    let have = listed
        .tags()
        .iter()
        .map(|tag| (Some(tag.key()), tag.value()));
    let Some(missing) = to_add(stack, arn, have) else {
        return Ok(());
    };
    acm.add_tags_to_certificate()
        .certificate_arn(arn)
        .set_tags(Some(
            missing
                .iter()
                .map(|(key, value)| {
                    aws_sdk_acm::types::Tag::builder()
                        .key(key)
                        .value(value)
                        .build()
                })
                .collect::<Result<_, _>>()?,
        ))
        .send()
        .await
        .call(format!("AddTagsToCertificate {arn}"))?;
    Ok(())
}
