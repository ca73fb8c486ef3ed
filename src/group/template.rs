//! The launch template every instance of the group is launched from: the image, the type,
//! the user-data, IMDSv2 only with metadata tags on, the encrypted root volume, the
//! instances' security group, standard CPU credits for burstable types unless
//! `instances.cpu_credits` says otherwise, and the tags that record what an instance runs
//! (they reach the instances at launch). The group launches its `$Default` version; a
//! change to any of it is a new version, made the default.
//!
//! Each version says what it describes in its description, a hash of the settings, so
//! that `up` compares one string instead of AWS's normalised echo of every field.
//!
//! Once a deploy is done, the versions other than the default are deleted, as the builds
//! no instance runs are: a template holds at most 10 000 versions, and an old version
//! names a build that is gone.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use aws_sdk_ec2::types::{
    CreditSpecificationRequest, InstanceType, LaunchTemplateBlockDeviceMappingRequest,
    LaunchTemplateEbsBlockDeviceRequest, LaunchTemplateHttpTokensState,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceMetadataTagsState, LaunchTemplateTagSpecificationRequest,
    LaunchTemplateVersion, RequestLaunchTemplateData, ResourceType, Tag, VolumeType,
};

use crate::artifact::sha256_hex;
use crate::aws::{Call, delete_outcome, ec2_stack_filters, ec2_tags};
use crate::deploy::{Fingerprint, short_hash};
use crate::engine::{Action, Deletable, DeleteFuture, is_planned, planned_id};
use crate::instances::{Launch, fingerprint_tags};
use crate::stack::Stack;

/// The role tag of the launch template.
pub const ROLE: &str = "launch-template";
/// The role tag of the instances, which the template's tag specifications give them.
pub const INSTANCE_ROLE: &str = "instance";
/// What the description of a version made by `up` starts with.
const DESCRIPTION_PREFIX: &str = "realtime-stack settings ";
/// The most versions DescribeLaunchTemplateVersions answers, and DeleteLaunchTemplateVersions
/// takes, in one call (API reference of each).
const VERSIONS_PER_CALL: usize = 200;

/// The stack's launch template, as the group and a roll need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub id: String,
    /// The default version, which the group launches.
    pub version: i64,
    /// The version that was the default before this `up` made a new one: where a roll that
    /// fails sets the group back to.
    pub previous: Option<i64>,
}

/// The settings of every instance, as the template's data.
fn data(stack: &Stack, launch: &Launch<'_>) -> RequestLaunchTemplateData {
    let mut tags = stack.names.tags(INSTANCE_ROLE);
    tags.extend(
        fingerprint_tags(&launch.fingerprint)
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .map(|(key, value)| (key.to_owned(), value.to_owned())),
    );
    let instance_tags = LaunchTemplateTagSpecificationRequest::builder()
        .resource_type(ResourceType::Instance)
        .set_tags(Some(
            tags.iter()
                .map(|(key, value)| Tag::builder().key(key).value(value).build())
                .collect(),
        ))
        .build();
    let volume_tags = LaunchTemplateTagSpecificationRequest::builder()
        .resource_type(ResourceType::Volume)
        .set_tags(Some(
            ec2_tags(&stack.names, INSTANCE_ROLE, ResourceType::Volume)
                .tags()
                .to_vec(),
        ))
        .build();
    let image = launch.image;
    let data = RequestLaunchTemplateData::builder()
        .image_id(&image.id)
        .instance_type(InstanceType::from(
            launch.fingerprint.instance_type.as_str(),
        ))
        .user_data(&launch.user_data)
        .security_group_ids(&launch.network.instance_security_group)
        // IMDSv2 only, tags readable from the metadata service (the Redis endpoint), and a
        // hop limit of 1 so nothing forwarded off the instance reaches the service.
        .metadata_options(
            LaunchTemplateInstanceMetadataOptionsRequest::builder()
                .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
                .http_tokens(LaunchTemplateHttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .instance_metadata_tags(LaunchTemplateInstanceMetadataTagsState::Enabled)
                .build(),
        )
        .block_device_mappings(
            LaunchTemplateBlockDeviceMappingRequest::builder()
                .device_name(&image.root_device)
                .ebs(
                    LaunchTemplateEbsBlockDeviceRequest::builder()
                        .encrypted(true)
                        .volume_size(image.root_volume_size)
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(instance_tags)
        .tag_specifications(volume_tags);
    // T3, T3a and T4g launch `unlimited` unless told otherwise (RunInstances,
    // CreditSpecification); other types refuse the setting.
    match launch.fingerprint.cpu_credits.as_str() {
        "" => data.build(),
        credits => data
            .credit_specification(
                CreditSpecificationRequest::builder()
                    .cpu_credits(credits)
                    .build(),
            )
            .build(),
    }
}

/// What a version made from `data` is told apart by: a hash of its settings (the
/// user-data apart: the SDK does not show it, as a sensitive field).
fn description(data: &RequestLaunchTemplateData, launch: &Launch<'_>) -> String {
    let settings = format!("{data:?}\n{}", launch.user_data);
    format!("{DESCRIPTION_PREFIX}{}", &sha256_hex(settings)[..16])
}

/// The stack's launch template (by its tags), if it exists: its id and default version.
async fn find(stack: &Stack) -> Result<Option<(String, i64)>> {
    // Filtered pages may come back empty before the one holding the template.
    let found: Vec<aws_sdk_ec2::types::LaunchTemplate> = stack
        .clients
        .ec2
        .describe_launch_templates()
        .set_filters(Some(ec2_stack_filters(&stack.names, Some(ROLE))))
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .call("DescribeLaunchTemplates")?;
    Ok(found.first().map(|template| {
        (
            template.launch_template_id().unwrap_or_default().to_owned(),
            template.default_version_number().unwrap_or(1),
        )
    }))
}

/// The default version of the template `id`.
async fn default_version(stack: &Stack, id: &str) -> Result<LaunchTemplateVersion> {
    let described = stack
        .clients
        .ec2
        .describe_launch_template_versions()
        .launch_template_id(id)
        .versions("$Default")
        .send()
        .await
        .call(format!("DescribeLaunchTemplateVersions {id}"))?;
    described
        .launch_template_versions()
        .first()
        .cloned()
        .with_context(|| format!("launch template {id} has no default version"))
}

/// The image the stack's instances are launched from now, if the template exists: what
/// `up` keeps launching until it is asked for a newer one.
pub async fn image_in_use(stack: &Stack) -> Result<Option<String>> {
    let Some((id, _)) = find(stack).await? else {
        return Ok(None);
    };
    let version = default_version(stack, &id).await?;
    Ok(version
        .launch_template_data()
        .and_then(|data| data.image_id())
        .map(str::to_owned))
}

/// Why the version in use differs from `launch`, as `plan` shows it.
fn reasons(
    version: &LaunchTemplateVersion,
    launch: &Launch<'_>,
    wanted: &RequestLaunchTemplateData,
) -> Vec<String> {
    let Some(data) = version.launch_template_data() else {
        return vec!["the version in use has no settings".to_owned()];
    };
    let tag = |key: &str| {
        data.tag_specifications()
            .iter()
            .filter(|spec| spec.resource_type() == Some(&ResourceType::Instance))
            .flat_map(|spec| spec.tags())
            .find(|tag| tag.key() == Some(key))
            .and_then(|tag| tag.value())
            .unwrap_or_default()
            .to_owned()
    };
    let [binary, ami, instance_type, boot, credits] =
        fingerprint_tags(&Fingerprint::default()).map(|(key, _)| tag(key));
    let recorded = Fingerprint {
        binary_sha256: binary,
        ami,
        instance_type,
        boot_sha256: boot,
        cpu_credits: credits,
    };
    let mut reasons = recorded.differences(&launch.fingerprint);
    if data.security_group_ids() != [launch.network.instance_security_group.clone()] {
        reasons.push(format!(
            "security group → {}",
            launch.network.instance_security_group
        ));
    }
    // stack.yaml's `tags`, which the fingerprint leaves out.
    let fingerprint = fingerprint_tags(&Fingerprint::default()).map(|(key, _)| key);
    let instance_tags = |specs: Vec<(Option<&ResourceType>, &[Tag])>| -> BTreeMap<String, String> {
        specs
            .into_iter()
            .filter(|(kind, _)| *kind == Some(&ResourceType::Instance))
            .flat_map(|(_, tags)| tags)
            .filter_map(|tag| Some((tag.key()?.to_owned(), tag.value()?.to_owned())))
            .filter(|(key, _)| !fingerprint.contains(&key.as_str()))
            .collect()
    };
    let have = instance_tags(
        data.tag_specifications()
            .iter()
            .map(|spec| (spec.resource_type(), spec.tags()))
            .collect(),
    );
    let want = instance_tags(
        wanted
            .tag_specifications()
            .iter()
            .map(|spec| (spec.resource_type(), spec.tags()))
            .collect(),
    );
    let mut tag_changes: Vec<String> = want
        .iter()
        .filter(|(key, value)| have.get(*key) != Some(value))
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    tag_changes.extend(
        have.keys()
            .filter(|key| !want.contains_key(*key))
            .map(|key| format!("-{key}")),
    );
    if !tag_changes.is_empty() {
        reasons.push(format!(
            "instance tags {} (the running instances are tagged in place)",
            tag_changes.join(" ")
        ));
    }
    if reasons.is_empty() {
        reasons.push("launch settings changed by hand".to_owned());
    }
    reasons
}

/// Makes the stack's launch template describe `launch`: created, or given a new default
/// version when the one in use says something else.
pub async fn ensure(stack: &Stack, launch: &Launch<'_>) -> Result<Template> {
    let name = stack.names.launch_template();
    let ec2 = &stack.clients.ec2;
    let wanted = data(stack, launch);
    let description = description(&wanted, launch);
    let resource = format!("launch template {name}");
    let Some((id, version)) = find(stack).await? else {
        let reason = format!(
            "{} on {} ({}), binary {}",
            launch.image.id,
            launch.fingerprint.instance_type,
            match launch.fingerprint.cpu_credits.as_str() {
                "" => "no CPU credits".to_owned(),
                credits => format!("{credits} CPU credits"),
            },
            short_hash(&launch.fingerprint.binary_sha256)
        );
        if !stack.make(Action::Create, &resource, reason) {
            return Ok(Template {
                id: planned_id("launch template"),
                version: 1,
                previous: None,
            });
        }
        let created = ec2
            .create_launch_template()
            .launch_template_name(&name)
            .version_description(&description)
            .launch_template_data(wanted)
            .tag_specifications(ec2_tags(&stack.names, ROLE, ResourceType::LaunchTemplate))
            .send()
            .await
            .call(format!("CreateLaunchTemplate {name}"))?;
        let template = created
            .launch_template()
            .context("CreateLaunchTemplate returned no template")?;
        return Ok(Template {
            id: template.launch_template_id().unwrap_or_default().to_owned(),
            version: template.default_version_number().unwrap_or(1),
            previous: None,
        });
    };
    let current = default_version(stack, &id).await?;
    if current.version_description() == Some(description.as_str()) {
        return Ok(Template {
            id,
            version,
            previous: None,
        });
    }
    let reason = format!(
        "new version: {}",
        reasons(&current, launch, &wanted).join(", ")
    );
    if !stack.make(Action::Update, &resource, reason) {
        return Ok(Template {
            id,
            version: version + 1,
            previous: Some(version),
        });
    }
    let made = ec2
        .create_launch_template_version()
        .launch_template_id(&id)
        .version_description(&description)
        .launch_template_data(wanted)
        .send()
        .await
        .call(format!("CreateLaunchTemplateVersion {name}"))?;
    let new = made
        .launch_template_version()
        .and_then(|made| made.version_number())
        .context("CreateLaunchTemplateVersion returned no version number")?;
    set_default(stack, &id, new).await?;
    Ok(Template {
        id,
        version: new,
        previous: Some(version),
    })
}

/// Makes `version` the one the group launches.
pub async fn set_default(stack: &Stack, id: &str, version: i64) -> Result<()> {
    stack
        .clients
        .ec2
        .modify_launch_template()
        .launch_template_id(id)
        .default_version(version.to_string())
        .send()
        .await
        .call(format!(
            "ModifyLaunchTemplate {} default version {version}",
            stack.names.launch_template()
        ))?;
    Ok(())
}

/// Deletes every version of the template but `template.version`, the default the group
/// launches now that the deploy is done. Deleting a version does not touch the instances
/// launched from it (EC2 User Guide, "Delete a launch template version").
pub async fn prune(stack: &Stack, template: &Template) -> Result<()> {
    if is_planned(&template.id) {
        return Ok(());
    }
    let name = stack.names.launch_template();
    let ec2 = &stack.clients.ec2;
    let pages = ec2
        .describe_launch_template_versions()
        .launch_template_id(&template.id)
        .max_results(VERSIONS_PER_CALL as i32)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let mut old = Vec::new();
    for page in pages {
        let page = page.call(format!("DescribeLaunchTemplateVersions {name}"))?;
        old.extend(
            page.launch_template_versions()
                .iter()
                .filter_map(LaunchTemplateVersion::version_number)
                .filter(|number| *number != template.version),
        );
    }
    old.sort_unstable();
    for batch in old.chunks(VERSIONS_PER_CALL) {
        let listed = batch.iter().map(i64::to_string).collect::<Vec<_>>();
        let resource = format!("launch template {name} versions {}", listed.join(", "));
        if !stack.make(
            Action::Delete,
            resource,
            "versions the group no longer launches",
        ) {
            continue;
        }
        let deleted = ec2
            .delete_launch_template_versions()
            .launch_template_id(&template.id)
            .set_versions(Some(listed))
            .send()
            .await
            .call(format!("DeleteLaunchTemplateVersions {name}"))?;
        // A version left is no harm to what was deployed: said, and tried again next `up`.
        for refused in deleted.unsuccessfully_deleted_launch_template_versions() {
            let error = refused.response_error();
            stack.progress.note(&format!(
                "launch template {name}: version {} was not deleted ({}: {}); the next `up` tries again",
                refused.version_number().unwrap_or_default(),
                error
                    .and_then(|e| e.code())
                    .map_or("no code", |code| code.as_str()),
                error.and_then(|e| e.message()).unwrap_or("no message"),
            ));
        }
    }
    Ok(())
}

/// The stack's launch template, to delete once the group is gone.
pub async fn deletables(stack: &Stack) -> Result<Vec<Box<dyn Deletable>>> {
    Ok(find(stack)
        .await?
        .into_iter()
        .map(|(id, _)| {
            Box::new(LaunchTemplate {
                ec2: stack.clients.ec2.clone(),
                name: stack.names.launch_template(),
                group: super::deletable_key(stack),
                id,
            }) as Box<dyn Deletable>
        })
        .collect())
}

struct LaunchTemplate {
    ec2: aws_sdk_ec2::Client,
    id: String,
    name: String,
    group: String,
}

impl Deletable for LaunchTemplate {
    fn key(&self) -> String {
        format!("launch-template:{}", self.id)
    }

    fn label(&self) -> String {
        format!("launch template {} ({})", self.name, self.id)
    }

    fn blocked_by(&self) -> Vec<String> {
        vec![self.group.clone()]
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let result = self
                .ec2
                .delete_launch_template()
                .launch_template_id(&self.id)
                .send()
                .await;
            delete_outcome(
                result,
                &format!("DeleteLaunchTemplate {}", self.name),
                &[
                    "InvalidLaunchTemplateId.NotFound",
                    "InvalidLaunchTemplateName.NotFoundException",
                ],
            )
        })
    }
}
