//! Preflight: everything that can fail before a resource is created - the credentials,
//! the hosted zone, the instance type, the chat-server binary (built here unless given)
//! and its match with the instance type, the machine image. `up` and `plan` start with it.

use anyhow::{Result, bail};

use crate::artifact::{self, Binary};
use crate::dns::{self, HostedZone};
use crate::instances::{self, Image};
use crate::stack::Stack;

/// What preflight established before anything is created.
pub struct Preflight {
    pub account: String,
    pub zone: HostedZone,
    pub binary: Binary,
    pub image: Image,
}

/// Everything that can fail before a resource is created: credentials, the hosted zone,
/// the binary (built here unless given) and its match with the instance type.
pub async fn preflight(stack: &Stack) -> Result<Preflight> {
    let progress = &stack.progress;
    let account = progress
        .step("credentials")
        .run(super::account(stack), |a| format!("account {a}"))
        .await?;
    let zone = progress
        .step(format!("hosted zone {}", stack.spec.domain.hosted_zone))
        .run(dns::find_zone(stack), |zone| zone.id.clone())
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
    let binary_step = progress.step("chat-server binary");
    binary_step.set(match &stack.spec.instances.binary {
        Some(_) => "reading",
        None => "building (cargo build --release -p chat-server)",
    });
    let configured = stack.spec.instances.binary.clone();
    let shown = progress.clone();
    let binary = binary_step
        .run(
            async {
                tokio::task::spawn_blocking(move || {
                    artifact::prepare_binary(configured.as_deref(), &|line| shown.note(line))
                })
                .await?
            },
            |binary| {
                format!(
                    "{} {}",
                    binary.architecture.ec2_name(),
                    &binary.sha256[..12]
                )
            },
        )
        .await?;
    if binary.architecture != architecture {
        bail!(
            "the chat-server binary {} is built for {}, but instance type {} runs {}: pick an {} \
             instance type, or build chat-server for {} and set instances.binary",
            binary.path.display(),
            binary.architecture.ec2_name(),
            stack.spec.instances.instance_type,
            architecture.ec2_name(),
            binary.architecture.ec2_name(),
            architecture.ec2_name(),
        );
    }
    let image = progress
        .step("machine image")
        .run(instances::image(stack, architecture), |image| {
            image.id.clone()
        })
        .await?;
    Ok(Preflight {
        account,
        zone,
        binary,
        image,
    })
}
