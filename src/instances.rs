//! The EC2 instances that run the chat server: their image, their launch (private
//! subnets, IMDSv2 only, metadata tags on, encrypted root volume, no key pair, no public
//! address), their user-data, the Redis endpoint tag their user-data waits for, and
//! their termination.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure as check};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, Instance,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataTagsState,
    InstanceStateName, InstanceType, ResourceType, Tag, VolumeType,
};

use crate::artifact::{Architecture, Artifact};
use crate::aws::{Call, delete_outcome, ec2_stack_filters, ec2_tags};
use crate::engine::{Deletable, DeleteFuture, wait_for};
use crate::names::{REDIS_ENDPOINT_TAG, ROLE_TAG};
use crate::network::Network;
use crate::stack::Stack;

const USER_DATA_TEMPLATE: &str = include_str!("../scripts/user-data.sh");
const BOOT_PROGRAM_TEMPLATE: &str = include_str!("../scripts/instance-boot.sh");
/// The heredoc delimiter the user-data wraps the boot program in.
const BOOT_PROGRAM_END: &str = "REALTIME_STACK_BOOT_PROGRAM";
/// EC2 refuses user-data over 16 KiB (before base64).
const USER_DATA_LIMIT: usize = 16 * 1024;

/// What an instance's user-data is made of.
pub struct Boot<'a> {
    pub artifact: &'a Artifact,
    pub region: &'a str,
    pub app_port: u16,
    pub drain_seconds: u32,
    pub redis_tls: bool,
}

impl Boot<'_> {
    /// The user-data with this stack's values in place: it installs the boot service,
    /// whose program carries the values. Values go inside single quotes in the program,
    /// so none may contain one. Nothing in it is secret or expires: the binary is fetched
    /// without credentials, through the stack's S3 gateway endpoint.
    pub fn render(&self) -> Result<String> {
        let values = [
            ("@BUCKET@", self.artifact.bucket.clone()),
            ("@KEY@", self.artifact.key.clone()),
            ("@REGION@", self.region.to_owned()),
            ("@BINARY_SHA256@", self.artifact.sha256.clone()),
            ("@APP_PORT@", self.app_port.to_string()),
            ("@DRAIN_SECONDS@", self.drain_seconds.to_string()),
            (
                "@REDIS_SCHEME@",
                if self.redis_tls { "rediss" } else { "redis" }.to_owned(),
            ),
            ("@REDIS_TAG@", REDIS_ENDPOINT_TAG.to_owned()),
        ];
        let mut program = BOOT_PROGRAM_TEMPLATE.to_owned();
        for (placeholder, value) in values {
            if value.contains('\'') {
                bail!("cannot put {value:?} into the user-data: it contains a single quote");
            }
            program = program.replace(placeholder, &value);
        }
        let script = USER_DATA_TEMPLATE.replace("@BOOT_PROGRAM@", program.trim_end());
        check!(
            !program.lines().any(|line| line == BOOT_PROGRAM_END),
            "the boot program contains its own heredoc delimiter {BOOT_PROGRAM_END}"
        );
        check!(
            script.len() <= USER_DATA_LIMIT,
            "the user-data is {} bytes; EC2 accepts at most {USER_DATA_LIMIT}",
            script.len()
        );
        Ok(script)
    }
}

/// The CPU architecture of an instance type (preflight: the binary must match it).
pub async fn architecture(stack: &Stack) -> Result<Architecture> {
    let instance_type = &stack.spec.instances.instance_type;
    let described = stack
        .clients
        .ec2
        .describe_instance_types()
        .instance_types(InstanceType::from(instance_type.as_str()))
        .send()
        .await
        .call(format!("DescribeInstanceTypes {instance_type}"))?;
    let architectures: Vec<String> = described
        .instance_types()
        .first()
        .and_then(|info| info.processor_info())
        .map(|processor| {
            processor
                .supported_architectures()
                .iter()
                .map(|a| a.as_str().to_owned())
                .collect()
        })
        .with_context(|| {
            format!(
                "instance type {instance_type} is not offered in {}: pick another `instances.type`",
                stack.region
            )
        })?;
    if architectures.iter().any(|a| a == "arm64") {
        Ok(Architecture::Arm64)
    } else if architectures.iter().any(|a| a == "x86_64") {
        Ok(Architecture::X86_64)
    } else {
        bail!("instance type {instance_type} runs {architectures:?}, neither x86_64 nor arm64")
    }
}

/// The machine image instances launch from.
#[derive(Debug, Clone)]
pub struct Image {
    pub id: String,
    pub root_device: String,
    /// GiB; the root volume is created this size (the image's own snapshot size).
    pub root_volume_size: i32,
}

/// `instances.ami`, or the newest Amazon Linux 2023 image for `architecture`.
pub async fn image(stack: &Stack, architecture: Architecture) -> Result<Image> {
    let ec2 = &stack.clients.ec2;
    let request = match &stack.spec.instances.ami {
        Some(ami) => ec2.describe_images().image_ids(ami),
        None => ec2
            .describe_images()
            .owners("amazon")
            .filters(
                Filter::builder()
                    .name("name")
                    .values(format!(
                        "al2023-ami-2023.*-kernel-*-{}",
                        architecture.ec2_name()
                    ))
                    .build(),
            )
            .filters(Filter::builder().name("state").values("available").build()),
    };
    let images = request.send().await.call("DescribeImages")?;
    let newest = images
        .images()
        .iter()
        .filter(|image| image.architecture().map(|a| a.as_str()) == Some(architecture.ec2_name()))
        .max_by_key(|image| {
            (
                image.creation_date().unwrap_or_default().to_owned(),
                image.name().unwrap_or_default().to_owned(),
            )
        })
        .with_context(|| match &stack.spec.instances.ami {
            Some(ami) => format!(
                "AMI {ami} is not available for {} in {}: check `instances.ami`",
                architecture.ec2_name(),
                stack.region
            ),
            None => format!(
                "no Amazon Linux 2023 image for {} in {}: set `instances.ami`",
                architecture.ec2_name(),
                stack.region
            ),
        })?;
    Ok(Image {
        id: newest.image_id().unwrap_or_default().to_owned(),
        root_device: newest.root_device_name().unwrap_or("/dev/xvda").to_owned(),
        root_volume_size: newest
            .block_device_mappings()
            .iter()
            .find(|mapping| mapping.device_name() == newest.root_device_name())
            .and_then(|mapping| mapping.ebs()?.volume_size())
            .unwrap_or(8),
    })
}

fn instance_role(index: u32) -> String {
    format!("instance-{index}")
}

/// The stack's instances that are not terminated or on their way there.
async fn live_instances(stack: &Stack) -> Result<Vec<Instance>> {
    let mut filters = ec2_stack_filters(&stack.names, None);
    filters.push(
        Filter::builder()
            .name("instance-state-name")
            .set_values(Some(
                ["pending", "running", "stopping", "stopped"]
                    .map(String::from)
                    .to_vec(),
            ))
            .build(),
    );
    let pages: Vec<_> = stack
        .clients
        .ec2
        .describe_instances()
        .set_filters(Some(filters))
        .into_paginator()
        .items()
        .send()
        .collect::<Vec<_>>()
        .await;
    let mut instances = Vec::new();
    for reservation in pages {
        let reservation = reservation.call("DescribeInstances")?;
        instances.extend(reservation.instances().iter().cloned());
    }
    Ok(instances)
}

fn role_of(instance: &Instance) -> Option<&str> {
    instance
        .tags()
        .iter()
        .find(|tag| tag.key() == Some(ROLE_TAG))
        .and_then(|tag| tag.value())
}

/// Ensures `instances.count` instances run, one per role `instance-<n>`, alternating
/// between the private subnets; terminates the stack's instances beyond that count.
/// Returns their ids, once all are running.
pub async fn ensure(
    stack: &Stack,
    network: &Network,
    image: &Image,
    boot: &Boot<'_>,
) -> Result<Vec<String>> {
    let existing = live_instances(stack).await?;
    let count = stack.spec.instances.count;
    let user_data = aws_smithy_types::base64::encode(boot.render()?);
    let launches = (0..count).map(|index| {
        let role = instance_role(index);
        let found = existing
            .iter()
            .find(|instance| role_of(instance) == Some(role.as_str()))
            .cloned();
        let subnet = network.private_subnets[index as usize % 2].clone();
        let user_data = &user_data;
        async move {
            let step = stack
                .progress
                .step(format!("instance {}", stack.names.name(&role)));
            step.run(
                async {
                    let instance = match found {
                        Some(instance) => {
                            ensure_metadata_options(stack, &instance).await?;
                            instance
                        }
                        None => {
                            step.set("launching");
                            launch(
                                stack,
                                &role,
                                &subnet,
                                &network.instance_security_group,
                                image,
                                user_data,
                            )
                            .await?
                        }
                    };
                    let id = instance.instance_id().unwrap_or_default().to_owned();
                    wait_until_running(stack, &step, &id).await?;
                    Ok(id)
                },
                |id| id.clone(),
            )
            .await
        }
    });
    let ids = futures::future::try_join_all(launches).await?;
    let extras: Vec<String> = existing
        .iter()
        .filter(|instance| {
            role_of(instance)
                .and_then(|role| role.strip_prefix("instance-"))
                .and_then(|n| n.parse::<u32>().ok())
                .is_none_or(|n| n >= count)
        })
        .filter_map(|instance| instance.instance_id().map(str::to_owned))
        .collect();
    if !extras.is_empty() {
        let step = stack.progress.step(format!(
            "{} instance(s) beyond instances.count",
            extras.len()
        ));
        step.set("terminating");
        stack
            .clients
            .ec2
            .terminate_instances()
            .set_instance_ids(Some(extras.clone()))
            .send()
            .await
            .call(format!("TerminateInstances {}", extras.join(" ")))?;
        step.ready(&extras.join(" "));
    }
    Ok(ids)
}

async fn launch(
    stack: &Stack,
    role: &str,
    subnet: &str,
    security_group: &str,
    image: &Image,
    user_data: &str,
) -> Result<Instance> {
    let launched = stack
        .clients
        .ec2
        .run_instances()
        .image_id(&image.id)
        .instance_type(InstanceType::from(
            stack.spec.instances.instance_type.as_str(),
        ))
        .min_count(1)
        .max_count(1)
        .subnet_id(subnet)
        .security_group_ids(security_group)
        .user_data(user_data)
        .metadata_options(metadata_options())
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(&image.root_device)
                .ebs(
                    EbsBlockDevice::builder()
                        .encrypted(true)
                        .volume_size(image.root_volume_size)
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(ec2_tags(&stack.names, role, ResourceType::Instance))
        .tag_specifications(ec2_tags(&stack.names, role, ResourceType::Volume))
        .send()
        .await
        .call(format!("RunInstances {}", stack.names.name(role)))?;
    launched
        .instances()
        .first()
        .cloned()
        .context("RunInstances returned no instance")
}

/// IMDSv2 only (no token-less requests), tags readable from the metadata service, and a
/// hop limit of 1 so nothing forwarded off the instance can reach the metadata service.
fn metadata_options() -> InstanceMetadataOptionsRequest {
    InstanceMetadataOptionsRequest::builder()
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .http_tokens(HttpTokensState::Required)
        .http_put_response_hop_limit(1)
        .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
        .build()
}

async fn ensure_metadata_options(stack: &Stack, instance: &Instance) -> Result<()> {
    let current = instance.metadata_options();
    let as_wanted = current.is_some_and(|options| {
        options.http_tokens() == Some(&HttpTokensState::Required)
            && options.instance_metadata_tags() == Some(&InstanceMetadataTagsState::Enabled)
            && options.http_endpoint() == Some(&InstanceMetadataEndpointState::Enabled)
    });
    if as_wanted {
        return Ok(());
    }
    let id = instance.instance_id().unwrap_or_default();
    stack
        .clients
        .ec2
        .modify_instance_metadata_options()
        .instance_id(id)
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .http_tokens(HttpTokensState::Required)
        .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
        .send()
        .await
        .call(format!("ModifyInstanceMetadataOptions {id}"))?;
    Ok(())
}

async fn wait_until_running(stack: &Stack, step: &crate::engine::Step, id: &str) -> Result<()> {
    wait_for(step, stack.pace, "the instance to run", stack.pace.limit(Duration::from_secs(900)), None, || async {
        let described = stack
            .clients
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .call(format!("DescribeInstances {id}"))?;
        let state = described
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find_map(|instance| instance.state().and_then(|s| s.name()).cloned());
        match state {
            Some(InstanceStateName::Running) => Ok(Some(())),
            Some(InstanceStateName::Pending) | None => Ok(None),
            Some(InstanceStateName::Stopped) | Some(InstanceStateName::Stopping) => {
                bail!("instance {id} is stopped: start it (aws ec2 start-instances) or terminate it and run up again")
            }
            Some(other) => bail!("instance {id} is {other}; run up again to replace it"),
        }
    })
    .await
}

/// Writes the Redis endpoint (`host:port`) onto the instances that do not carry it yet;
/// their user-data is waiting for it.
pub async fn ensure_redis_tag(stack: &Stack, ids: &[String], endpoint: &str) -> Result<()> {
    let instances = live_instances(stack).await?;
    let untagged: Vec<String> = instances
        .iter()
        .filter(|instance| {
            instance
                .instance_id()
                .is_some_and(|id| ids.iter().any(|wanted| wanted == id))
        })
        .filter(|instance| {
            !instance
                .tags()
                .iter()
                .any(|tag| tag.key() == Some(REDIS_ENDPOINT_TAG) && tag.value() == Some(endpoint))
        })
        .filter_map(|instance| instance.instance_id().map(str::to_owned))
        .collect();
    if untagged.is_empty() {
        return Ok(());
    }
    stack
        .clients
        .ec2
        .create_tags()
        .set_resources(Some(untagged.clone()))
        .tags(
            Tag::builder()
                .key(REDIS_ENDPOINT_TAG)
                .value(endpoint)
                .build(),
        )
        .send()
        .await
        .call(format!(
            "CreateTags {REDIS_ENDPOINT_TAG} on {}",
            untagged.join(" ")
        ))?;
    Ok(())
}

/// The stack's instances, to terminate.
pub async fn deletables(stack: &Stack) -> Result<Vec<Box<dyn Deletable>>> {
    Ok(live_instances(stack)
        .await?
        .into_iter()
        .filter_map(|instance| instance.instance_id().map(str::to_owned))
        .map(|id| {
            Box::new(Ec2Instance {
                ec2: stack.clients.ec2.clone(),
                id,
            }) as Box<dyn Deletable>
        })
        .collect())
}

struct Ec2Instance {
    ec2: aws_sdk_ec2::Client,
    id: String,
}

impl Deletable for Ec2Instance {
    fn key(&self) -> String {
        format!("ec2-instance:{}", self.id)
    }

    fn label(&self) -> String {
        format!("instance {}", self.id)
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let result = self
                .ec2
                .terminate_instances()
                .instance_ids(&self.id)
                .send()
                .await;
            delete_outcome(
                result,
                &format!("TerminateInstances {}", self.id),
                &["InvalidInstanceID.NotFound"],
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> Artifact {
        Artifact {
            bucket: "chat-artifacts-123456789012-us-east-1".into(),
            key: "chat-server/abc".into(),
            sha256: "ab".repeat(32),
        }
    }

    fn boot(artifact: &Artifact) -> Boot<'_> {
        Boot {
            artifact,
            region: "us-east-1",
            app_port: 8080,
            drain_seconds: 30,
            redis_tls: true,
        }
    }

    #[test]
    fn user_data_installs_the_boot_service_with_the_stacks_values_and_no_secret() {
        let artifact = artifact();
        let script = boot(&artifact).render().unwrap();
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.contains("realtime-stack-boot.service"));
        assert!(script.contains(&format!("BUCKET='{}'", artifact.bucket)));
        assert!(script.contains("KEY='chat-server/abc'"));
        assert!(script.contains("REGION='us-east-1'"));
        assert!(script.contains(&format!("BINARY_SHA256='{}'", artifact.sha256)));
        assert!(script.contains("APP_PORT='8080'"));
        assert!(script.contains("REDIS_SCHEME='rediss'"));
        assert!(script.contains(&format!("REDIS_TAG='{REDIS_ENDPOINT_TAG}'")));
        assert!(
            !script.contains("='@") && !script.contains("@BOOT_PROGRAM@"),
            "every placeholder is filled"
        );
        // Nothing that expires or that an attacker reading the user-data could use.
        for secret in ["X-Amz-", "Signature", "Credential", "Security-Token"] {
            assert!(!script.contains(secret), "user-data contains {secret:?}");
        }
        assert!(script.len() <= USER_DATA_LIMIT);
    }

    #[test]
    fn the_rendered_user_data_is_the_same_every_time() {
        let artifact = artifact();
        assert_eq!(
            boot(&artifact).render().unwrap(),
            boot(&artifact).render().unwrap()
        );
    }

    #[test]
    fn a_value_with_a_quote_cannot_break_out_of_the_script() {
        let mut artifact = artifact();
        artifact.key.push_str("';reboot;'");
        assert!(boot(&artifact).render().is_err());
    }
}
