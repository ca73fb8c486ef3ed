//! The EC2 instances that run the chat server: their image (Amazon Linux 2023 kept until
//! the user asks for a newer one), their user-data, what each runs (the tags its launch
//! template gives it), the Redis endpoint tag their boot service waits for, their metadata
//! options, their console output, and the termination of the stack's instances that are
//! not the group's. The group launches and terminates the others ([`crate::group`]);
//! which ones to replace is [`crate::deploy`]'s to decide.

use std::time::SystemTime;

use anyhow::{Context, Result, bail, ensure as check};
use aws_sdk_ec2::types::{
    Filter, HttpTokensState, Image as Ec2Image, Instance, InstanceMetadataEndpointState,
    InstanceMetadataTagsState, InstanceStateName, InstanceType, Tag,
};

use crate::artifact::{Artifact, sha256_hex};
use crate::aws::{Call, EC2_NEW, delete_outcome, ec2_stack_filters, error_code, once_known};
use crate::binary::Architecture;
use crate::deploy::Fingerprint;
use crate::engine::{Action, Deletable, DeleteFuture};
use crate::identity::ChatAuth;
use crate::names::{
    AMI_TAG, BINARY_TAG, BOOT_TAG, CPU_CREDITS_TAG, INSTANCE_TYPE_TAG, REDIS_ENDPOINT_TAG,
};
use crate::network::Network;
use crate::spec::{ChatSettings, LATEST_AMI};
use crate::stack::Stack;

const USER_DATA_TEMPLATE: &str = include_str!("../../scripts/user-data.sh");
const BOOT_PROGRAM_TEMPLATE: &str = include_str!("../../scripts/instance-boot.sh");
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
            ("@FANOUT_WINDOW_MS@", self.chat.fanout_window_ms.to_string()),
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    /// Its name, e.g. `al2023-ami-2023.6.20250107.0-kernel-6.1-x86_64`.
    pub name: String,
    pub root_device: String,
    /// GiB; the root volume is created this size (the image's own snapshot size).
    pub root_volume_size: i32,
}

impl Image {
    fn of(image: &Ec2Image) -> Image {
        Image {
            id: image.image_id().unwrap_or_default().to_owned(),
            name: image.name().unwrap_or_default().to_owned(),
            root_device: image.root_device_name().unwrap_or("/dev/xvda").to_owned(),
            root_volume_size: image
                .block_device_mappings()
                .iter()
                .find(|mapping| mapping.device_name() == image.root_device_name())
                .and_then(|mapping| mapping.ebs()?.volume_size())
                .unwrap_or(8),
        }
    }
}

/// The image `up` launches from, and a newer Amazon Linux 2023 it does not take yet.
#[derive(Debug, Clone)]
pub struct ImageChoice {
    pub image: Image,
    /// A newer Amazon Linux 2023 than the one kept: `up --update-image` takes it.
    pub update: Option<Image>,
}

/// `instances.ami`; else Amazon Linux 2023: the newest with `instances.ami: latest` or
/// `update`, otherwise the one the instances are launched from now (`in_use`, when it is
/// an image for `architecture`), so that a new Amazon Linux release rolls nothing until
/// the user asks.
pub async fn image(
    stack: &Stack,
    architecture: Architecture,
    in_use: Option<&str>,
    update: bool,
) -> Result<ImageChoice> {
    let fits = |image: &&Ec2Image| {
        image.architecture().map(|a| a.as_str()) == Some(architecture.ec2_name())
    };
    let configured = stack.spec.instances.ami.as_deref();
    if let Some(ami) = configured.filter(|ami| *ami != LATEST_AMI) {
        let image = image_by_id(stack, ami, &fits).await?.with_context(|| {
            format!(
                "AMI {ami} is not available for {} in {}: check `instances.ami`",
                architecture.ec2_name(),
                stack.region
            )
        })?;
        return Ok(ImageChoice {
            image,
            update: None,
        });
    }
    let newest = newest_amazon_linux(stack, architecture).await?;
    let latest = update || configured == Some(LATEST_AMI);
    let kept = match in_use.filter(|id| !latest && *id != newest.id) {
        Some(id) => image_by_id(stack, id, &fits).await?,
        None => None,
    };
    Ok(match kept {
        Some(image) => ImageChoice {
            image,
            update: Some(newest),
        },
        None => ImageChoice {
            image: newest,
            update: None,
        },
    })
}

/// The image `id`, when it exists and `fits`.
async fn image_by_id(
    stack: &Stack,
    id: &str,
    fits: &impl Fn(&&Ec2Image) -> bool,
) -> Result<Option<Image>> {
    let images = stack
        .clients
        .ec2
        .describe_images()
        .image_ids(id)
        .send()
        .await
        .call(format!("DescribeImages {id}"))?;
    Ok(images.images().iter().find(fits).map(Image::of))
}

/// The newest Amazon Linux 2023 image for `architecture`.
async fn newest_amazon_linux(stack: &Stack, architecture: Architecture) -> Result<Image> {
    let images = stack
        .clients
        .ec2
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
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await
        .call("DescribeImages")?;
    images
        .images()
        .iter()
        .filter(|image| image.architecture().map(|a| a.as_str()) == Some(architecture.ec2_name()))
        .max_by_key(|image| {
            (
                image.creation_date().unwrap_or_default().to_owned(),
                image.name().unwrap_or_default().to_owned(),
            )
        })
        .map(Image::of)
        .with_context(|| {
            format!(
                "no Amazon Linux 2023 image for {} in {}: set `instances.ami`",
                architecture.ec2_name(),
                stack.region
            )
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
pub fn fingerprint_tags(fingerprint: &Fingerprint) -> [(&'static str, &str); 5] {
    [
        (BINARY_TAG, &fingerprint.binary_sha256),
        (AMI_TAG, &fingerprint.ami),
        (INSTANCE_TYPE_TAG, &fingerprint.instance_type),
        (BOOT_TAG, &fingerprint.boot_sha256),
        (CPU_CREDITS_TAG, &fingerprint.cpu_credits),
    ]
}

/// The tag AWS puts on the instances an Auto Scaling group launches: the group's name.
const GROUP_TAG: &str = "aws:autoscaling:groupName";

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
    /// The Auto Scaling group that launched it, if one did.
    pub group: Option<String>,
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
                cpu_credits: recorded(CPU_CREDITS_TAG),
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
            group: tag(instance, GROUP_TAG).map(str::to_owned),
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

/// What every instance of the stack is launched with: the launch template's content.
pub struct Launch<'a> {
    pub image: &'a Image,
    pub network: &'a Network,
    /// Base64 of the rendered user-data.
    pub user_data: String,
    pub fingerprint: Fingerprint,
}

impl<'a> Launch<'a> {
    /// `cpu_credits`: `standard` or `unlimited` for burstable types, empty for the others.
    pub fn new(
        image: &'a Image,
        network: &'a Network,
        boot: &Boot<'_>,
        binary_sha256: &str,
        instance_type: &str,
        cpu_credits: &str,
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
                cpu_credits: cpu_credits.to_owned(),
            },
            user_data: aws_smithy_types::base64::encode(user_data),
        })
    }
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

/// Terminates `ids`, instances of the stack that are not the group's; one already gone
/// counts as terminated.
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

/// The stack's instances, to terminate once the group has drained its own.
pub async fn deletables(stack: &Stack) -> Result<Vec<Box<dyn Deletable>>> {
    Ok(live_instances(stack)
        .await?
        .into_iter()
        .filter_map(|instance| instance.instance_id().map(str::to_owned))
        .map(|id| {
            Box::new(Ec2Instance {
                ec2: stack.clients.ec2.clone(),
                id,
                group: crate::group::deletable_key(stack),
            }) as Box<dyn Deletable>
        })
        .collect())
}

struct Ec2Instance {
    ec2: aws_sdk_ec2::Client,
    id: String,
    /// The group's key: its instances leave through it, drained.
    group: String,
}

impl Deletable for Ec2Instance {
    fn key(&self) -> String {
        format!("ec2-instance:{}", self.id)
    }

    fn label(&self) -> String {
        format!("instance {}", self.id)
    }

    fn blocked_by(&self) -> Vec<String> {
        vec![self.group.clone()]
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
mod tests;
