//! Preflight: everything that can fail before a resource is created - the credentials,
//! the hosted zone and the domain in it (free, or the stack's), the instance type and
//! two zones that offer it, an existing target group's port (which cannot change in
//! place), the Redis engine version (ElastiCache's default, or the one
//! pinned, which ElastiCache must offer), the chat-server binary (built here for the
//! instance type's architecture unless given, and checked to run on Amazon Linux 2023),
//! the machine image (the one in use, unless asked for a newer one). `up` and `plan`
//! start with it.

use anyhow::Result;

use crate::binary::{self, Binary, Linkage};
use crate::dns::{self, HostedZone};
use crate::group::template;
use crate::identity::{self, ChatAuth};
use crate::instances::{self, ImageChoice};
use crate::stack::Stack;
use crate::{cache, load_balancer, network};

/// What preflight established before anything is created.
pub struct Preflight {
    pub account: String,
    /// The two zones the network spans, both offering the instance type.
    pub zones: [String; 2],
    pub zone: HostedZone,
    pub binary: Binary,
    pub image: ImageChoice,
    /// Sign-in, when `chat.auth` asks for it: what the instances verify tokens with.
    pub auth: Option<ChatAuth>,
}

/// Everything that can fail before a resource is created: credentials, the hosted zone,
/// the binary (built here unless given) and its match with the instance type.
/// `update_image`: take the newest Amazon Linux 2023 rather than the one in use.
pub async fn preflight(stack: &Stack, update_image: bool) -> Result<Preflight> {
    // A key still to be generated can only be `up --local`'s: refused before anything.
    let auth = identity::chat_auth(&stack.spec)?;
    let progress = &stack.progress;
    let account = progress
        .step("credentials")
        .run(super::account(stack), |a| format!("account {a}"))
        .await?;
    let zone = progress
        .step(format!("hosted zone {}", stack.spec.domain.hosted_zone))
        .run(dns::find_zone(stack), |zone| zone.id.clone())
        .await?;
    progress
        .step(format!("domain {}", stack.spec.domain.name))
        .run(
            async {
                let load_balancer = load_balancer::alias_target(stack).await?;
                let target = load_balancer
                    .as_ref()
                    .map(|lb| (lb.dns_name.as_str(), lb.hosted_zone_id.as_str()));
                dns::check_domain_is_free(stack, &zone, target).await
            },
            |()| "free, or the stack's".to_owned(),
        )
        .await?;
    let architecture = progress
        .step(format!(
            "instance type {}",
            stack.spec.instances.instance_type
        ))
        .run(instances::architecture(stack), |arch| {
            arch.ec2_name().to_owned()
        })
        .await?;
    let zones = progress
        .step("availability zones")
        .run(network::zones(stack), |zones| {
            format!(
                "{} offer {}",
                zones.join(" and "),
                stack.spec.instances.instance_type
            )
        })
        .await?;
    progress
        .step("target group port")
        .run(load_balancer::check_app_port(stack), |port| {
            format!("{port}, as instances.app_port")
        })
        .await?;
    let redis = &stack.spec.redis;
    progress
        .step(format!("Redis engine {}", redis.engine))
        .run(
            cache::engine_version(stack, redis.engine_version.as_deref()),
            |found| {
                format!(
                    "{} (parameter group family {})",
                    found.version, found.family
                )
            },
        )
        .await?;
    progress
        .step("Redis, what changes in place")
        .run(cache::check_changes(stack), Clone::clone)
        .await?;
    let binary_step = progress.step("chat-server binary");
    binary_step.set(&match &stack.spec.instances.binary {
        Some(_) => "reading".to_owned(),
        None => format!(
            "building (cargo build --release -p chat-server --target {})",
            architecture.musl_target()
        ),
    });
    let configured = stack.spec.instances.binary.clone();
    let shown = progress.clone();
    let binary = binary_step
        .run(
            async {
                tokio::task::spawn_blocking(move || {
                    binary::prepare(configured.as_deref(), architecture, &|line| {
                        shown.note(line)
                    })
                })
                .await?
            },
            |binary| {
                let linkage = match &binary.linkage {
                    Linkage::Static => "static".to_owned(),
                    Linkage::Dynamic {
                        glibc: Some(glibc), ..
                    } => format!("glibc {glibc}"),
                    Linkage::Dynamic { glibc: None, .. } => "dynamic".to_owned(),
                };
                format!(
                    "{} {linkage} {}",
                    binary.architecture.ec2_name(),
                    &binary.sha256[..12]
                )
            },
        )
        .await?;
    let image = progress
        .step("machine image")
        .run(
            async {
                let in_use = template::image_in_use(stack).await?;
                instances::image(stack, architecture, in_use.as_deref(), update_image).await
            },
            |choice| format!("{} ({})", choice.image.id, choice.image.name),
        )
        .await?;
    if let Some(newer) = &image.update {
        progress.note(&format!(
            "a newer Amazon Linux 2023 image is available: {} ({}); the instances keep              {} until `up --update-image` rolls them onto it",
            newer.id, newer.name, image.image.id
        ));
    }
    Ok(Preflight {
        account,
        zones,
        zone,
        binary,
        image,
        auth,
    })
}
