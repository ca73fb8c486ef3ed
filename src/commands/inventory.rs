//! What the stack owns, found the way `destroy` finds it: by the stack's tag, and the
//! untaggable pieces (record sets) through their parents. `destroy` deletes it, `status`
//! lists it.

use anyhow::Result;

use crate::engine::Deletable;
use crate::load_balancer::WrittenAlias;
use crate::stack::Stack;
use crate::{artifact, cache, certificate, dns, group, instances, load_balancer, network};

/// Every resource the stack owns, from every service at once.
pub async fn discover(stack: &Stack, account: &str) -> Result<Vec<Box<dyn Deletable>>> {
    // Record sets are untaggable: the stack owns the domain's alias while it points at
    // the stack's load balancer (and the alias it last wrote there, which the load
    // balancer's tag names, for a domain.name changed since), and its certificates'
    // validation CNAMEs.
    let certificates_and_records = async {
        let (zone, certificates, target) = futures::join!(
            dns::find_zone(stack),
            certificate::owned(stack),
            load_balancer::alias_target(stack)
        );
        let certificate::Owned {
            mut certificates,
            validation_records: mut owned,
        } = certificates?;
        let target = target?;
        let zone_id = zone.as_ref().ok().map(|zone| zone.id.clone());
        if let Some(target) = &target {
            let current = WrittenAlias::new(
                zone_id.as_deref().unwrap_or_default(),
                &stack.spec.domain.name,
            );
            if let Some(written) = target
                .written
                .as_ref()
                .filter(|written| **written != current)
            {
                let alias =
                    dns::Record::alias_a(&written.name, &target.dns_name, &target.hosted_zone_id);
                certificates.extend(dns::deletables(stack, &written.zone_id, &[alias]).await);
            }
        }
        match zone {
            Ok(zone) => {
                if let Some(target) = &target {
                    owned.push(dns::domain_alias(
                        stack,
                        &target.dns_name,
                        &target.hosted_zone_id,
                    ));
                }
                certificates.extend(dns::deletables(stack, &zone.id, &owned).await);
            }
            Err(err) => stack
                .progress
                .note(&format!("record sets left alone: {err:#}")),
        }
        Ok::<_, anyhow::Error>(certificates)
    };
    let found = futures::try_join!(
        group::deletables(stack),
        instances::deletables(stack),
        load_balancer::deletables(stack, account),
        cache::deletables(stack),
        certificates_and_records,
        artifact::deletables(stack, account),
        network::deletables(stack),
    )?;
    let (a, b, c, d, e, f, g) = found;
    Ok([a, b, c, d, e, f, g].into_iter().flatten().collect())
}
