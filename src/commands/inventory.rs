//! What the stack owns, found the way `destroy` finds it: by the stack's tag, and the
//! untaggable pieces (record sets) through their parents. `destroy` deletes it, `status`
//! lists it.

use anyhow::Result;

use crate::engine::Deletable;
use crate::stack::Stack;
use crate::{artifact, cache, certificate, dns, group, instances, load_balancer, network};

/// Every resource the stack owns, from every service at once.
pub async fn discover(stack: &Stack, account: &str) -> Result<Vec<Box<dyn Deletable>>> {
    // Record sets are untaggable: the stack owns the domain's alias while it points at
    // the stack's load balancer, and its certificates' validation CNAMEs.
    let certificates_and_records = async {
        let (zone, certificates) = futures::join!(dns::find_zone(stack), certificate::owned(stack));
        let certificate::Owned {
            mut certificates,
            validation_records: mut owned,
        } = certificates?;
        match zone {
            Ok(zone) => {
                if let Some((dns_name, zone_id)) = load_balancer::alias_target(stack).await? {
                    owned.push(dns::domain_alias(stack, &dns_name, &zone_id));
                }
                certificates.extend(dns::deletables(stack, &zone, &owned).await);
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
