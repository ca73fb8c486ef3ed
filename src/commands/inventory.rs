//! What the stack owns, found the way `destroy` finds it: by the stack's tag, and the
//! untaggable pieces (record sets) through their parents. `destroy` deletes it, `status`
//! lists it.

use anyhow::Result;

use crate::engine::Deletable;
use crate::stack::Stack;
use crate::{artifact, cache, certificate, dns, instances, load_balancer, network};

/// Every resource the stack owns, from every service at once.
pub async fn discover(stack: &Stack, account: &str) -> Result<Vec<Box<dyn Deletable>>> {
    // Record sets are untaggable: the stack owns the domain's alias while it points at
    // the stack's load balancer, and its certificates' validation CNAMEs.
    let records = async {
        let zone = match dns::find_zone(stack).await {
            Ok(zone) => zone,
            Err(err) => {
                stack
                    .progress
                    .note(&format!("record sets left alone: {err:#}"));
                return Ok(Vec::new());
            }
        };
        let (alias_target, mut owned) = futures::try_join!(
            load_balancer::alias_target(stack),
            certificate::validation_records(stack)
        )?;
        if let Some((dns_name, zone_id)) = alias_target {
            owned.push(dns::domain_alias(stack, &dns_name, &zone_id));
        }
        Ok::<_, anyhow::Error>(dns::deletables(stack, &zone, &owned).await)
    };
    let found = futures::try_join!(
        instances::deletables(stack),
        load_balancer::deletables(stack),
        cache::deletables(stack),
        certificate::deletables(stack),
        records,
        artifact::deletables(stack, account),
        network::deletables(stack),
    )?;
    let (a, b, c, d, e, f, g) = found;
    Ok([a, b, c, d, e, f, g].into_iter().flatten().collect())
}
