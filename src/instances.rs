//! The EC2 instances that run the chat server: their image, their user-data, their
//! launch (private subnets spread over both zones, IMDSv2 only, metadata tags on,
//! encrypted root volume, no key pair, no public address, tags recording what each runs),
//! the Redis endpoint tag their boot service waits for, their console output and their
//! termination. Which instances to launch and retire is [`crate::deploy`]'s to decide.

use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure as check};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, Instance,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceMetadataTagsState,
    InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification, VolumeType,
};

use crate::artifact::{Artifact, sha256_hex};
use crate::aws::{
    Call, EC2_NEW, delete_outcome, ec2_stack_filters, ec2_tags, error_code, once_known,
};
use crate::binary::Architecture;
use crate::deploy::Fingerprint;
use crate::engine::{Action, Deletable, DeleteFuture, Step, wait_for};
use crate::identity::ChatAuth;
use crate::names::{AMI_TAG, BINARY_TAG, BOOT_TAG, INSTANCE_TYPE_TAG, REDIS_ENDPOINT_TAG};
use crate::network::Network;
use crate::spec::ChatSettings;
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
    /// The Redis endpoint is a Redis Cluster's configuration endpoint (`REDIS_CLUSTER`).
    pub redis_cluster: bool,
    /// CIDRs the load balancer connects from (the VPC's): the chat server believes the
    /// client address in X-Forwarded-For only from these.
    pub trusted_proxies: &'a str,
    /// Sign-in: the public key verifying tokens (not a secret), and the claims checked.
    pub auth: Option<&'a ChatAuth>,
    /// The chat server's limits.
    pub chat: ChatSettings,
}

impl Boot<'_> {
    /// SHA-256 of the boot configuration: the user-data but for the binary, which the
    /// fingerprint records apart, so that a new build is told as one reason, not two.
    pub fn configuration_sha256(&self) -> Result<String> {
        let any_binary = Artifact {
            key: "chat-server/BINARY".to_owned(),
            sha256: "BINARY".to_owned(),
            ..self.artifact.clone()
        };
        let without_binary = Boot {
            artifact: &any_binary,
            ..*self
        };
        Ok(sha256_hex(without_binary.render()?))
    }

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
            ("@REDIS_CLUSTER@", self.redis_cluster.to_string()),
            ("@TRUSTED_PROXIES@", self.trusted_proxies.to_owned()),
            (
                "@AUTH_PUBLIC_KEY@",
                self.auth
                    .map(|a| a.public_key_pem.trim_end().to_owned())
                    .unwrap_or_default(),
            ),
            (
                "@AUTH_ISSUER@",
                self.auth.and_then(|a| a.issuer.clone()).unwrap_or_default(),
            ),
            (
                "@AUTH_AUDIENCE@",
                self.auth
                    .and_then(|a| a.audience.clone())
                    .unwrap_or_default(),
            ),
            (
                "@AUTH_TOKEN_URL@",
                self.auth
                    .and_then(|a| a.token_url.clone())
                    .unwrap_or_default(),
            ),
            ("@HISTORY_MESSAGES@", self.chat.history_messages.to_string()),
            (
                "@MAX_ROOMS_PER_CONNECTION@",
                self.chat.max_rooms_per_connection.to_string(),
            ),
            (
                "@PRESENCE_TTL_SECONDS@",
                self.chat.presence_ttl_seconds.to_string(),
            ),
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

fn tag<'a>(instance: &'a Instance, key: &str) -> Option<&'a str> {
    instance
        .tags()
        .iter()
        .find(|tag| tag.key() == Some(key))
        .and_then(|tag| tag.value())
}

/// The tags that record what an instance runs.
fn fingerprint_tags(fingerprint: &Fingerprint) -> [(&'static str, &str); 4] {
    [
        (BINARY_TAG, &fingerprint.binary_sha256),
        (AMI_TAG, &fingerprint.ami),
        (INSTANCE_TYPE_TAG, &fingerprint.instance_type),
        (BOOT_TAG, &fingerprint.boot_sha256),
    ]
}

/// One of the stack's live instances, as EC2 describes it.
#[derive(Debug, Clone)]
pub struct Described {
    pub id: String,
    pub state: InstanceStateName,
    pub fingerprint: Fingerprint,
    pub redis_endpoint: Option<String>,
    pub launched: Option<SystemTime>,
    pub zone: Option<String>,
    pub subnet: Option<String>,
    pub private_ip: Option<String>,
}

impl Described {
    fn of(instance: &Instance) -> Self {
        let recorded = |key| tag(instance, key).unwrap_or_default().to_owned();
        Described {
            id: instance.instance_id().unwrap_or_default().to_owned(),
            state: instance
                .state()
                .and_then(|state| state.name())
                .cloned()
                .unwrap_or(InstanceStateName::Pending),
            fingerprint: Fingerprint {
                binary_sha256: recorded(BINARY_TAG),
                ami: recorded(AMI_TAG),
                instance_type: recorded(INSTANCE_TYPE_TAG),
                boot_sha256: recorded(BOOT_TAG),
            },
            redis_endpoint: tag(instance, REDIS_ENDPOINT_TAG).map(str::to_owned),
            launched: instance
                .launch_time()
                .and_then(|time| SystemTime::try_from(*time).ok()),
            zone: instance
                .placement()
                .and_then(|placement| placement.availability_zone())
                .map(str::to_owned),
            subnet: instance.subnet_id().map(str::to_owned),
            private_ip: instance.private_ip_address().map(str::to_owned),
        }
    }

    pub fn stopped(&self) -> bool {
        matches!(
            self.state,
            InstanceStateName::Stopped | InstanceStateName::Stopping
        )
    }
}

/// The stack's live instances (pending, running, stopping or stopped).
pub async fn describe(stack: &Stack) -> Result<Vec<Described>> {
    Ok(live_instances(stack)
        .await?
        .iter()
        .map(Described::of)
        .collect())
}

/// What every instance `up` launches is made of.
pub struct Launch<'a> {
    pub image: &'a Image,
    pub network: &'a Network,
    /// Base64 of the rendered user-data.
    pub user_data: String,
    pub fingerprint: Fingerprint,
    /// Written at launch when Redis already exists, so the boot need not wait for it.
    pub redis_endpoint: Option<String>,
}

impl<'a> Launch<'a> {
    pub fn new(
        image: &'a Image,
        network: &'a Network,
        boot: &Boot<'_>,
        binary_sha256: &str,
        instance_type: &str,
    ) -> Result<Self> {
        let user_data = boot.render()?;
        Ok(Launch {
            image,
            network,
            fingerprint: Fingerprint {
                binary_sha256: binary_sha256.to_owned(),
                ami: image.id.clone(),
                instance_type: instance_type.to_owned(),
                boot_sha256: boot.configuration_sha256()?,
            },
            user_data: aws_smithy_types::base64::encode(user_data),
            redis_endpoint: None,
        })
    }
}

/// Launches `count` instances, spread over the private subnets so that each zone ends up
/// with as even a share of the stack's instances as it can; returns their ids.
pub async fn launch(stack: &Stack, launch: &Launch<'_>, count: usize) -> Result<Vec<String>> {
    let existing = describe(stack).await?;
    let subnets = &launch.network.private_subnets;
    let mut per_subnet: Vec<usize> = subnets
        .iter()
        .map(|subnet| {
            existing
                .iter()
                .filter(|instance| instance.subnet.as_deref() == Some(subnet.as_str()))
                .count()
        })
        .collect();
    let mut ids = Vec::new();
    for _ in 0..count {
        let emptiest = (0..subnets.len())
            .min_by_key(|index| per_subnet[*index])
            .unwrap_or_default();
        per_subnet[emptiest] += 1;
        ids.push(launch_one(stack, launch, &subnets[emptiest]).await?);
    }
    Ok(ids)
}

async fn launch_one(stack: &Stack, launch: &Launch<'_>, subnet: &str) -> Result<String> {
    let role = "instance";
    let mut tags = stack.names.tags(role);
    tags.extend(
        fingerprint_tags(&launch.fingerprint)
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_owned())),
    );
    if let Some(endpoint) = &launch.redis_endpoint {
        tags.push((REDIS_ENDPOINT_TAG.to_owned(), endpoint.clone()));
    }
    let tag_specification = |resource_type| {
        TagSpecification::builder()
            .resource_type(resource_type)
            .set_tags(Some(
                tags.iter()
                    .map(|(key, value)| Tag::builder().key(key).value(value).build())
                    .collect(),
            ))
            .build()
    };
    let image = launch.image;
    // The subnets and the security group may be new: a launch refused for not knowing
    // them launched nothing, and is tried again.
    let call = format!("RunInstances {}", stack.names.name(role));
    let launched = once_known(stack.pace, &call, &EC2_NEW, || {
        stack
            .clients
            .ec2
            .run_instances()
            .image_id(&image.id)
            .instance_type(InstanceType::from(
                launch.fingerprint.instance_type.as_str(),
            ))
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .security_group_ids(&launch.network.instance_security_group)
            .user_data(&launch.user_data)
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
            .tag_specifications(tag_specification(ResourceType::Instance))
            .tag_specifications(ec2_tags(&stack.names, role, ResourceType::Volume))
            .send()
    })
    .await?;
    launched
        .instances()
        .first()
        .and_then(|instance| instance.instance_id())
        .map(str::to_owned)
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

/// Sets the metadata options of the stack's instances back to [`metadata_options`] where
/// someone changed them.
pub async fn ensure_metadata_options(stack: &Stack) -> Result<()> {
    for instance in live_instances(stack).await? {
        let as_wanted = instance.metadata_options().is_some_and(|options| {
            options.http_tokens() == Some(&HttpTokensState::Required)
                && options.instance_metadata_tags() == Some(&InstanceMetadataTagsState::Enabled)
                && options.http_endpoint() == Some(&InstanceMetadataEndpointState::Enabled)
                && options.http_put_response_hop_limit() == Some(1)
        });
        let id = instance.instance_id().unwrap_or_default();
        if as_wanted
            || !stack.make(
                Action::Update,
                format!("instance {id}"),
                "IMDSv2 only, metadata tags on, hop limit 1",
            )
        {
            continue;
        }
        let call = format!("ModifyInstanceMetadataOptions {id}");
        once_known(stack.pace, &call, &EC2_NEW, || {
            stack
                .clients
                .ec2
                .modify_instance_metadata_options()
                .instance_id(id)
                .http_endpoint(InstanceMetadataEndpointState::Enabled)
                .http_tokens(HttpTokensState::Required)
                .http_put_response_hop_limit(1)
                .instance_metadata_tags(InstanceMetadataTagsState::Enabled)
                .send()
        })
        .await?;
    }
    Ok(())
}

/// Waits until every one of `ids` runs.
pub async fn wait_running(stack: &Stack, step: &Step, ids: &[String]) -> Result<()> {
    wait_for(
        step,
        stack.pace,
        "the instances to run",
        stack.pace.limit(Duration::from_secs(900)),
        None,
        || async {
            let described = stack
                .clients
                .ec2
                .describe_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await;
            let described = match described {
                // Just launched: EC2 may not know of them yet.
                Err(err) if EC2_NEW.covers(&err) => return Ok(None),
                described => described.call(format!("DescribeInstances {}", ids.join(" ")))?,
            };
            let states: Vec<(String, InstanceStateName)> = described
                .reservations()
                .iter()
                .flat_map(|reservation| reservation.instances())
                .map(Described::of)
                .map(|instance| (instance.id, instance.state))
                .collect();
            if states.len() < ids.len() {
                return Ok(None);
            }
            for (id, state) in &states {
                match state {
                    InstanceStateName::Running | InstanceStateName::Pending => {}
                    other => bail!(
                        "instance {id} is {other} instead of starting: its console output \
                         (`realtime-stack logs --instance {id}`) may say why"
                    ),
                }
            }
            Ok(states
                .iter()
                .all(|(_, state)| *state == InstanceStateName::Running)
                .then_some(()))
        },
    )
    .await
}

/// Terminates `ids`; one already gone counts as terminated.
pub async fn terminate(stack: &Stack, ids: &[String]) -> Result<()> {
    let result = stack
        .clients
        .ec2
        .terminate_instances()
        .set_instance_ids(Some(ids.to_vec()))
        .send()
        .await;
    match result {
        Err(err) if error_code(&err) == Some("InvalidInstanceID.NotFound") => Ok(()),
        result => result
            .map(|_| ())
            .call(format!("TerminateInstances {}", ids.join(" "))),
    }
}

/// The instance's console output (what its boot service logged), oldest line first.
///
/// Asked with `Latest` (the newest output, not the buffer of the last boot), which the
/// GetConsoleOutput API reference documents for instances built on the Nitro System only
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_GetConsoleOutput.html>):
/// an older type (Xen: t2, m4, c4...) refuses it, and is asked again without it, as
/// virt-s1/avocado-cloud#8 does. An instance that is gone or a permission that is missing
/// is not retried.
pub async fn console_output(stack: &Stack, id: &str) -> Result<String> {
    let ask = |latest: bool| {
        stack
            .clients
            .ec2
            .get_console_output()
            .instance_id(id)
            .latest(latest)
            .send()
    };
    let output = match ask(true).await {
        Err(err)
            if err.as_service_error().is_some()
                && !error_code(&err).is_some_and(|code| {
                    code.starts_with("InvalidInstanceID") || code == "UnauthorizedOperation"
                }) =>
        {
            ask(false).await
        }
        result => result,
    }
    .call(format!("GetConsoleOutput {id}"))?;
    let Some(encoded) = output.output() else {
        return Ok(String::new());
    };
    let bytes = aws_smithy_types::base64::decode(encoded)
        .with_context(|| format!("the console output of {id} is not base64"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Writes the Redis endpoint (`host:port`) onto the stack's instances that do not carry
/// one yet; their boot service is waiting for it. (One that names another endpoint is
/// replaced by the deploy, not re-tagged: its server already runs against the other.)
pub async fn ensure_redis_tag(stack: &Stack, endpoint: &str) -> Result<()> {
    let instances = live_instances(stack).await?;
    let untagged: Vec<String> = instances
        .iter()
        .filter(|instance| tag(instance, REDIS_ENDPOINT_TAG).is_none())
        .filter_map(|instance| instance.instance_id().map(str::to_owned))
        .collect();
    let reason = format!("tag {REDIS_ENDPOINT_TAG} = {endpoint}");
    if untagged.is_empty()
        || !stack.make(
            Action::Update,
            format!("instance(s) {}", untagged.join(" ")),
            reason,
        )
    {
        return Ok(());
    }
    let call = format!("CreateTags {REDIS_ENDPOINT_TAG} on {}", untagged.join(" "));
    once_known(stack.pace, &call, &EC2_NEW, || {
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
    })
    .await?;
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
            planned: false,
        }
    }

    fn boot(artifact: &Artifact) -> Boot<'_> {
        Boot {
            artifact,
            region: "us-east-1",
            app_port: 8080,
            drain_seconds: 30,
            redis_tls: true,
            redis_cluster: false,
            trusted_proxies: "10.0.0.0/16",
            auth: None,
            chat: ChatSettings::default(),
        }
    }

    fn chat_auth(public_key_pem: &str) -> ChatAuth {
        ChatAuth {
            public_key_pem: public_key_pem.to_owned(),
            issuer: Some("https://id.example".to_owned()),
            audience: Some("chat".to_owned()),
            token_url: Some("https://id.example/chat-token".to_owned()),
        }
    }

    #[test]
    fn the_chat_limits_reach_the_boot_program_and_change_the_configuration() {
        let artifact = artifact();
        let defaults = boot(&artifact);
        let script = defaults.render().unwrap();
        for line in [
            "HISTORY_MESSAGES='1000'",
            "MAX_ROOMS_PER_CONNECTION='100'",
            "PRESENCE_TTL_SECONDS='30'",
            "CHAT_HISTORY_LEN=$HISTORY_MESSAGES",
            "CHAT_MAX_ROOMS_PER_CONNECTION=$MAX_ROOMS_PER_CONNECTION",
            "CHAT_PRESENCE_TTL_SECS=$PRESENCE_TTL_SECONDS",
        ] {
            assert!(script.contains(line), "{line} missing");
        }
        let tuned = Boot {
            chat: ChatSettings {
                max_rooms_per_connection: 20,
                ..ChatSettings::default()
            },
            ..boot(&artifact)
        };
        assert!(
            tuned
                .render()
                .unwrap()
                .contains("MAX_ROOMS_PER_CONNECTION='20'")
        );
        // Another limit: the instances are rolled to get it.
        assert_ne!(
            tuned.configuration_sha256().unwrap(),
            defaults.configuration_sha256().unwrap()
        );
    }

    #[test]
    fn the_sign_in_public_key_reaches_the_boot_program_and_changes_the_configuration() {
        let artifact = artifact();
        let open = boot(&artifact);
        assert!(open.render().unwrap().contains("AUTH_PUBLIC_KEY=''"));
        let pair = crate::identity::generate_ed25519().unwrap();
        let auth = chat_auth(&pair.public_pem);
        let signed_in = Boot {
            auth: Some(&auth),
            ..boot(&artifact)
        };
        let script = signed_in.render().unwrap();
        assert!(script.contains(&format!("AUTH_PUBLIC_KEY='{}'", pair.public_pem.trim_end())));
        assert!(script.contains("AUTH_ISSUER='https://id.example'"));
        assert!(script.contains("AUTH_AUDIENCE='chat'"));
        assert!(script.contains("AUTH_TOKEN_URL='https://id.example/chat-token'"));
        assert!(
            !script.contains("PRIVATE KEY"),
            "a private key in user-data"
        );
        let hash = signed_in.configuration_sha256().unwrap();
        assert_ne!(hash, open.configuration_sha256().unwrap());
        // Another key: the instances are rolled.
        let other = chat_auth(&crate::identity::generate_ed25519().unwrap().public_pem);
        let rekeyed = Boot {
            auth: Some(&other),
            ..boot(&artifact)
        };
        assert_ne!(rekeyed.configuration_sha256().unwrap(), hash);
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
        assert!(script.contains("REDIS_CLUSTER='false'"));
        assert!(script.contains("TRUSTED_PROXIES='10.0.0.0/16'"));
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
    fn a_new_binary_leaves_the_boot_configuration_as_it_was() {
        let artifact = artifact();
        let rebuilt = Artifact {
            key: "chat-server/def".into(),
            sha256: "cd".repeat(32),
            ..artifact.clone()
        };
        let configuration = boot(&artifact).configuration_sha256().unwrap();
        assert_eq!(
            boot(&rebuilt).configuration_sha256().unwrap(),
            configuration
        );
        let mut other_port = boot(&artifact);
        other_port.app_port = 9000;
        assert_ne!(other_port.configuration_sha256().unwrap(), configuration);
        // Instances told of a cluster are other instances: a rolling deploy replaces them.
        let mut cluster = boot(&artifact);
        cluster.redis_cluster = true;
        assert_ne!(cluster.configuration_sha256().unwrap(), configuration);
        assert!(cluster.render().unwrap().contains("REDIS_CLUSTER='true'"));
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

    /// The instances `up` just launched, used at once: RunInstances may not know the
    /// security group just created yet (`InvalidGroup.NotFound`), and DescribeInstances,
    /// CreateTags and ModifyInstanceMetadataOptions may not know the new instance
    /// (`InvalidInstanceID.NotFound`, "This does not mean the instance does not exist",
    /// <https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>).
    #[tokio::test(start_paused = true)]
    async fn new_instances_are_waited_for_until_ec2_knows_them() {
        use aws_sdk_ec2::Client;
        use aws_sdk_ec2::error::ErrorMetadata;
        use aws_sdk_ec2::operation::create_tags::{CreateTagsError, CreateTagsOutput};
        use aws_sdk_ec2::operation::describe_instances::{
            DescribeInstancesError, DescribeInstancesOutput,
        };
        use aws_sdk_ec2::operation::modify_instance_metadata_options::{
            ModifyInstanceMetadataOptionsError, ModifyInstanceMetadataOptionsOutput,
        };
        use aws_sdk_ec2::operation::run_instances::{RunInstancesError, RunInstancesOutput};
        use aws_sdk_ec2::types::{InstanceState, Reservation};
        use aws_smithy_mocks::{RuleMode, mock, mock_client};

        use crate::stack::testing;

        let unknown = |code: &str| {
            ErrorMetadata::builder()
                .code(code)
                .message("The ID does not exist")
                .build()
        };
        let instance = |state: InstanceStateName| {
            DescribeInstancesOutput::builder()
                .reservations(
                    Reservation::builder()
                        .instances(
                            Instance::builder()
                                .instance_id("i-new1")
                                .state(InstanceState::builder().name(state).build())
                                .build(),
                        )
                        .build(),
                )
                .build()
        };
        let run = mock!(Client::run_instances)
            .sequence()
            .error(move || RunInstancesError::generic(unknown("InvalidGroup.NotFound")))
            .output(|| {
                RunInstancesOutput::builder()
                    .instances(Instance::builder().instance_id("i-new1").build())
                    .build()
            })
            .build();
        let by_id = mock!(Client::describe_instances)
            .match_requests(|req| !req.instance_ids().is_empty())
            .sequence()
            .error(move || DescribeInstancesError::generic(unknown("InvalidInstanceID.NotFound")))
            .times(2)
            .output(move || instance(InstanceStateName::Running))
            .build();
        // Listing the stack's instances by tag: the new one, neither tagged nor
        // configured yet.
        let by_tag = mock!(Client::describe_instances)
            .then_output(move || instance(InstanceStateName::Pending));
        let tag = mock!(Client::create_tags)
            .sequence()
            .error(move || CreateTagsError::generic(unknown("InvalidInstanceID.NotFound")))
            .times(2)
            .output(|| CreateTagsOutput::builder().build())
            .build();
        let configure = mock!(Client::modify_instance_metadata_options)
            .sequence()
            .error(move || {
                ModifyInstanceMetadataOptionsError::generic(unknown("InvalidInstanceID.NotFound"))
            })
            .output(|| ModifyInstanceMetadataOptionsOutput::builder().build())
            .build();
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [&run, &by_id, &by_tag, &tag, &configure]
        );
        let stack = testing::stack(clients);
        let image = Image {
            id: "ami-1".into(),
            root_device: "/dev/xvda".into(),
            root_volume_size: 8,
        };
        let network = crate::network::example();
        let launch = Launch {
            image: &image,
            network: &network,
            user_data: String::new(),
            fingerprint: Fingerprint {
                binary_sha256: "ab".repeat(32),
                ami: "ami-1".into(),
                instance_type: "t3.micro".into(),
                boot_sha256: "cd".repeat(32),
            },
            redis_endpoint: None,
        };

        let ids = self::launch(&stack, &launch, 1).await.expect("launched");
        let step = stack.progress.step("launched");
        wait_running(&stack, &step, &ids).await.expect("running");
        ensure_redis_tag(&stack, "redis.example:6379")
            .await
            .expect("tagged");
        ensure_metadata_options(&stack).await.expect("configured");

        assert_eq!(ids, ["i-new1"]);
        assert_eq!(run.num_calls(), 2);
        assert_eq!(by_id.num_calls(), 3);
        assert_eq!(tag.num_calls(), 3);
        assert_eq!(configure.num_calls(), 2);
    }

    /// On the way out the same answer means the opposite: an instance EC2 does not know
    /// is gone, at once, not "not yet".
    #[tokio::test(start_paused = true)]
    async fn an_instance_ec2_does_not_know_counts_as_terminated_at_once() {
        use aws_sdk_ec2::Client;
        use aws_sdk_ec2::error::ErrorMetadata;
        use aws_sdk_ec2::operation::terminate_instances::TerminateInstancesError;
        use aws_smithy_mocks::{RuleMode, mock, mock_client};

        let terminate = mock!(Client::terminate_instances).then_error(|| {
            TerminateInstancesError::generic(
                ErrorMetadata::builder()
                    .code("InvalidInstanceID.NotFound")
                    .build(),
            )
        });
        let instance = Ec2Instance {
            ec2: mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&terminate]),
            id: "i-gone".into(),
        };

        assert!(instance.delete().await.is_ok());
        assert_eq!(terminate.num_calls(), 1);
    }
}
