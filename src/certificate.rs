//! ACM: the stack's TLS certificate for its domain, validated through DNS. It owns the
//! certificate (found by domain and stack tag, requested when missing, waited for until
//! issued) and says which validation CNAMEs belong to it; writing and deleting those
//! records is [`crate::dns`]'s.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_acm::operation::request_certificate::RequestCertificateError;
use aws_sdk_acm::types::{
    CertificateDetail, CertificateStatus, Filters, KeyAlgorithm, Tag, ValidationMethod,
};

use crate::aws::{Call, ForbidRetry, delete_outcome, found};
use crate::dns::{self, HostedZone, Record};
use crate::engine::{Action, planned_id};
use crate::engine::{Deletable, DeleteFuture, Step, wait_for};
use crate::names::Names;
use crate::stack::Stack;

/// The stack's issued certificate and the records that validate it (and keep it
/// renewing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate {
    pub arn: String,
    pub validation_records: Vec<Record>,
}

/// Finds or requests the certificate for the stack's domain, writes its validation
/// CNAMEs into `zone` and waits until ACM has issued it.
pub async fn ensure(stack: &Stack, zone: &HostedZone) -> Result<Certificate> {
    let step = stack
        .progress
        .step(format!("certificate {}", stack.spec.domain.name));
    step.run(converge(stack, zone, &step), |certificate| {
        certificate.arn.clone()
    })
    .await
}

async fn converge(stack: &Stack, zone: &HostedZone, step: &Step) -> Result<Certificate> {
    let domain = &stack.spec.domain.name;
    let arn = match find(stack).await? {
        Some(arn) => arn,
        None => {
            if !stack.make(
                Action::Create,
                format!("certificate {domain}"),
                "validated through DNS, its record written into the zone",
            ) {
                return Ok(Certificate {
                    arn: planned_id("certificate"),
                    validation_records: Vec::new(),
                });
            }
            step.set("requesting");
            request(stack).await?
        }
    };
    if stack.planning() {
        // Only what is known now: the records ACM names, and whether they are in place.
        if let Some(records) = describe_usable(stack, &arn)
            .await?
            .as_ref()
            .and_then(records_of)
        {
            dns::upsert_records(stack, zone, &records).await?;
        }
        return Ok(Certificate {
            arn,
            validation_records: Vec::new(),
        });
    }
    // ACM adds the record to a new certificate a few seconds after the request.
    let validation_records = wait_for(
        step,
        stack.pace,
        "ACM to name the validation record",
        stack.pace.limit(Duration::from_secs(600)),
        None,
        || async {
            Ok(describe_usable(stack, &arn)
                .await?
                .as_ref()
                .and_then(records_of))
        },
    )
    .await?;
    // Written even when issued: ACM renews through the same record.
    dns::upsert_records(stack, zone, &validation_records).await?;
    if status(stack, &arn).await? != Some(CertificateStatus::Issued) {
        let hint = delegation_hint(stack, zone).await;
        wait_for(
            step,
            stack.pace,
            "ACM to issue the certificate",
            stack.pace.limit(Duration::from_secs(2 * 3600)),
            Some((stack.pace.limit(Duration::from_secs(300)), &hint)),
            || async {
                Ok((status(stack, &arn).await? == Some(CertificateStatus::Issued)).then_some(()))
            },
        )
        .await?;
    }
    Ok(Certificate {
        arn,
        validation_records,
    })
}

/// Why ACM may not be issuing, with the name servers the domain must be delegated to.
async fn delegation_hint(stack: &Stack, zone: &HostedZone) -> String {
    // Only advice: without the name servers it is still worth giving.
    let servers = dns::name_servers(stack, zone).await.unwrap_or_default();
    let to = if servers.is_empty() {
        format!("the name servers of the Route53 zone {}", zone.name)
    } else {
        servers.join(", ")
    };
    format!(
        "ACM can only see the validation record when the parent domain's NS records point \
         at this zone: make sure {} is delegated to {to}",
        zone.name
    )
}

/// The stack's certificate for its domain, the most usable first.
async fn find(stack: &Stack) -> Result<Option<String>> {
    let domain = &stack.spec.domain.name;
    let mut found: Vec<(String, Option<CertificateStatus>)> = stack_certificates(stack)
        .await?
        .into_iter()
        .filter(|owned| owned.domain.eq_ignore_ascii_case(domain))
        .map(|owned| (owned.arn, owned.status))
        .collect();
    found.sort_by_key(|(_, status)| match status {
        Some(CertificateStatus::Issued) => 0,
        Some(CertificateStatus::PendingValidation) => 1,
        _ => 2,
    });
    Ok(found.into_iter().next().map(|(arn, _)| arn))
}

/// Requests the certificate, tagged in the same call so that an `up` interrupted right
/// after finds it. The idempotency token is new for each request and the same for the
/// SDK's retries of it: a request whose answer was lost (a timeout, a 5xx) and is sent
/// again gets the certificate the first one made, not a second one ("if you call
/// RequestCertificate multiple times with the same idempotency token within one hour,
/// ACM recognizes that you are requesting only one certificate",
/// <https://docs.aws.amazon.com/acm/latest/APIReference/API_RequestCertificate.html>).
/// It is not derived from the stack: such a token outlives a `destroy` by an hour, during
/// which ACM would answer with the deleted certificate.
async fn request(stack: &Stack) -> Result<String> {
    let domain = &stack.spec.domain.name;
    let tags = stack
        .names
        .tags("certificate")
        .into_iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect::<Result<Vec<_>, _>>()?;
    stack
        .clients
        .acm
        .request_certificate()
        .domain_name(domain)
        .validation_method(ValidationMethod::Dns)
        .idempotency_token(idempotency_token()?)
        .set_tags(Some(tags))
        .send()
        .await
        .call(format!("RequestCertificate {domain}"))?
        .certificate_arn
        .context("RequestCertificate returned no certificate ARN")
}

/// 32 random hexadecimal digits: ACM takes 1 to 32 word characters (`\w+`).
fn idempotency_token() -> Result<String> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random)
        .map_err(|err| anyhow::anyhow!("reading the system's random source: {err}"))?;
    Ok(random.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// The ACM client's configuration on top of the shared one: an ACM quota reached is said
/// at once. ACM answers `RequestCertificate` with `LimitExceededException` when "an ACM
/// quota has been exceeded"
/// (<https://docs.aws.amazon.com/acm/latest/APIReference/API_RequestCertificate.html>),
/// such as the certificates an account may request a year. The SDK retries that code as
/// throttling, since other services answer it for a rate: without this, `up` would wait
/// out every attempt's backoff (half a minute) before saying a quota is reached.
pub fn acm_config(config: aws_sdk_acm::config::Builder) -> aws_sdk_acm::config::Builder {
    config.retry_classifier(ForbidRetry::<RequestCertificateError>::new(
        "an ACM quota is not throttling",
        |code| code == Some("LimitExceededException"),
    ))
}

/// The certificate's details; `None` while ACM does not know it yet (just requested).
async fn describe(stack: &Stack, arn: &str) -> Result<Option<CertificateDetail>> {
    describe_in(&stack.clients.acm, arn).await
}

/// [`describe`] through `acm`, whatever its region.
async fn describe_in(acm: &aws_sdk_acm::Client, arn: &str) -> Result<Option<CertificateDetail>> {
    let described = acm.describe_certificate().certificate_arn(arn).send().await;
    Ok(
        found(described, format!("DescribeCertificate {arn}"), |err| {
            err.is_resource_not_found_exception()
        })?
        .and_then(|out| out.certificate),
    )
}

/// Like [`describe`], but a certificate ACM gave up on is an error.
async fn describe_usable(stack: &Stack, arn: &str) -> Result<Option<CertificateDetail>> {
    let detail = describe(stack, arn).await?;
    if let Some(detail) = &detail {
        refuse_failed(arn, detail)?;
    }
    Ok(detail)
}

async fn status(stack: &Stack, arn: &str) -> Result<Option<CertificateStatus>> {
    Ok(describe_usable(stack, arn)
        .await?
        .and_then(|detail| detail.status))
}

/// A certificate ACM gave up on never becomes usable: say why and how to start over.
fn refuse_failed(arn: &str, detail: &CertificateDetail) -> Result<()> {
    let advice = match detail.status() {
        Some(CertificateStatus::Failed) => match detail.failure_reason() {
            Some(reason) => format!(
                "ACM refused to issue it ({reason}{})",
                if reason.as_str() == "CAA_ERROR" {
                    ": the domain's CAA records must allow amazon.com"
                } else {
                    ""
                }
            ),
            None => "ACM refused to issue it".to_owned(),
        },
        Some(CertificateStatus::ValidationTimedOut) => "ACM did not see the validation record \
             within 72 hours: check that the domain is delegated to the hosted zone"
            .to_owned(),
        Some(status @ (CertificateStatus::Revoked | CertificateStatus::Expired)) => {
            format!("it is {status}")
        }
        _ => return Ok(()),
    };
    bail!(
        "the certificate {arn} cannot be used: {advice}. Run `realtime-stack destroy`, then \
         `realtime-stack up` to request a new one"
    )
}

/// The validation CNAMEs, once ACM has named all of them.
fn records_of(detail: &CertificateDetail) -> Option<Vec<Record>> {
    let options = detail.domain_validation_options();
    if options.is_empty() {
        return None;
    }
    let mut records = Vec::new();
    for option in options {
        let wanted = option.resource_record()?;
        let record = Record::cname(&wanted.name, &wanted.value);
        // Names under one domain can share a record.
        if !records.contains(&record) {
            records.push(record);
        }
    }
    Some(records)
}

/// A certificate of the account, as ListCertificates summarises it.
struct Listed {
    arn: String,
    domain: String,
    /// The domain and every subject alternative name listed, lowercase, without a
    /// wildcard's `*.`: ACM validates `*.example.com` with `example.com`'s record
    /// (<https://docs.aws.amazon.com/acm/latest/userguide/dns-validation.html>).
    names: Vec<String>,
    /// Whether the certificate has names ListCertificates left out: it lists "only the
    /// first 100 subject alternative names" (CertificateSummary, ACM API reference).
    more_names: bool,
    status: Option<CertificateStatus>,
    ours: bool,
}

/// Every certificate of the account in the stack's region, each saying whether it
/// carries the stack's tag.
async fn account_certificates(stack: &Stack) -> Result<Vec<Listed>> {
    certificates_in(&stack.clients.acm, Some(&stack.names)).await
}

/// Every certificate of the account in `acm`'s region, of every key algorithm
/// (ListCertificates returns only RSA 1024 and 2048 ones unless asked). With `names`,
/// each says whether it carries that stack's tag (a call per certificate); without, none
/// is the stack's.
async fn certificates_in(acm: &aws_sdk_acm::Client, names: Option<&Names>) -> Result<Vec<Listed>> {
    let every_key_type = Filters::builder()
        .set_key_types(Some(
            KeyAlgorithm::values()
                .iter()
                .map(|value| KeyAlgorithm::from(*value))
                .collect(),
        ))
        .build();
    let mut listed = Vec::new();
    let mut next_token = None;
    loop {
        let page = acm
            .list_certificates()
            .includes(every_key_type.clone())
            .set_next_token(next_token)
            .send()
            .await
            .call("ListCertificates")?;
        for summary in page.certificate_summary_list() {
            let Some(arn) = summary.certificate_arn() else {
                continue;
            };
            let ours = match names {
                Some(names) => {
                    let tags = acm
                        .list_tags_for_certificate()
                        .certificate_arn(arn)
                        .send()
                        .await;
                    let tags = found(tags, format!("ListTagsForCertificate {arn}"), |err| {
                        err.is_resource_not_found_exception()
                    })?;
                    // Deleted since it was listed.
                    let Some(tags) = tags else {
                        continue;
                    };
                    tags.tags()
                        .iter()
                        .any(|tag| names.is_stack_tag(Some(tag.key()), tag.value()))
                }
                None => false,
            };
            let domain = summary.domain_name().unwrap_or_default().to_owned();
            let names = std::iter::once(domain.as_str())
                .chain(
                    summary
                        .subject_alternative_name_summaries()
                        .iter()
                        .map(String::as_str),
                )
                .map(|name| name.trim_start_matches("*.").to_ascii_lowercase())
                .collect();
            listed.push(Listed {
                arn: arn.to_owned(),
                domain,
                names,
                more_names: summary.has_additional_subject_alternative_names() == Some(true),
                status: summary.status().cloned(),
                ours,
            });
        }
        next_token = page.next_token;
        if next_token.is_none() {
            return Ok(listed);
        }
    }
}

/// Every certificate carrying the stack's tag, whatever its domain.
async fn stack_certificates(stack: &Stack) -> Result<Vec<Listed>> {
    let mut listed = account_certificates(stack).await?;
    listed.retain(|certificate| certificate.ours);
    Ok(listed)
}

/// What `destroy` removes of ACM, from one listing of the account's certificates (each
/// with a tag call: done once, not per use).
pub struct Owned {
    /// The stack's certificates. A listener still using one makes ACM refuse
    /// (`ResourceInUseException`): blocked until the load balancer is gone.
    pub certificates: Vec<Box<dyn Deletable>>,
    /// Their validation CNAMEs, to pass to [`dns::deletables`].
    pub validation_records: Vec<Record>,
}

pub async fn owned(stack: &Stack) -> Result<Owned> {
    owned_for(stack, |_| true).await
}

/// The stack's certificates for another domain than `domain.name`, with their validation
/// CNAMEs: what `up` retires once the domain's alias has moved to the new name.
pub async fn for_other_domains(stack: &Stack) -> Result<Owned> {
    let domain = &stack.spec.domain.name;
    owned_for(stack, |other| !other.eq_ignore_ascii_case(domain)).await
}

/// Deletes the stack's certificates for other domains and their validation CNAMEs (in
/// the old domain's zone `zone_id`); whether all are gone. ACM refuses a certificate a
/// listener used a moment ago (`ResourceInUseException`) until the load balancer lets it
/// go: that one is left for the next `up` (or `destroy`), saying so.
pub async fn retire_other_domains(stack: &Stack, zone_id: &str) -> Result<bool> {
    let old = for_other_domains(stack).await?;
    dns::retire(stack, zone_id, &old.validation_records).await?;
    let mut all_gone = true;
    for certificate in old.certificates {
        let held = stack
            .changes
            .delete_now(certificate.as_ref(), "a domain the stack no longer serves")
            .await?;
        if let Some(why) = held {
            stack.progress.note(&format!(
                "{} is not deleted yet ({why}): the next `up` deletes it",
                certificate.label()
            ));
            all_gone = false;
        }
    }
    Ok(all_gone)
}

/// The stack's certificates whose domain is `wanted`. The stack's others count as
/// certificates outside it: a validation record they use is kept.
async fn owned_for(stack: &Stack, wanted: impl Fn(&str) -> bool) -> Result<Owned> {
    let (ours, others): (Vec<Listed>, Vec<Listed>) = account_certificates(stack)
        .await?
        .into_iter()
        .partition(|certificate| certificate.ours && wanted(&certificate.domain));
    let validation_records = validation_records(stack, &ours, &others).await?;
    // The CNAMEs go first: only a certificate leads `destroy` to them.
    let records: Vec<String> = validation_records.iter().map(Record::key).collect();
    let certificates = ours
        .into_iter()
        .map(|owned| {
            Box::new(AcmCertificate {
                acm: stack.clients.acm.clone(),
                arn: owned.arn,
                domain: owned.domain,
                blocked_by: records.clone(),
            }) as Box<dyn Deletable>
        })
        .collect();
    Ok(Owned {
        certificates,
        validation_records,
    })
}

/// The account's certificates in its other enabled regions, each with an ACM client of
/// its region; and the regions whose certificates could not be listed (an organization
/// may deny a region, say).
async fn other_regions_certificates(
    stack: &Stack,
) -> Result<(Vec<(aws_sdk_acm::Client, Listed)>, Vec<String>)> {
    let regions = stack
        .clients
        .ec2
        .describe_regions()
        .send()
        .await
        .call("DescribeRegions")?;
    let others = regions
        .regions()
        .iter()
        .filter_map(|region| region.region_name())
        // The stack's partition, `aws`, alone: AWS lists no other, and another's
        // certificates are another account's (LocalStack lists every partition's regions,
        // and answers a `cn-` or `us-gov-` one with us-east-1's certificates).
        .filter(|name| *name != stack.region && crate::spec::unsupported_partition(name).is_none())
        .map(|name| {
            let acm = aws_sdk_acm::Client::from_conf(
                stack
                    .clients
                    .acm
                    .config()
                    .to_builder()
                    .region(aws_sdk_acm::config::Region::new(name.to_owned()))
                    .build(),
            );
            async move {
                let listed = certificates_in(&acm, None).await;
                (name, acm, listed)
            }
        });
    let mut certificates = Vec::new();
    let mut unread = Vec::new();
    for (name, acm, listed) in futures::future::join_all(others).await {
        match listed {
            Ok(listed) => certificates.extend(listed.into_iter().map(|c| (acm.clone(), c))),
            Err(err) => unread.push(format!("{name} ({err:#})")),
        }
    }
    Ok((certificates, unread))
}

/// The validation CNAMEs of the stack's certificates (`ours`), failed ones included. A
/// record that a certificate outside the stack also uses is left out: ACM gives every
/// certificate for a domain in the account the same CNAME, in every region
/// (terraform-provider-aws#13653: the record "already exists" for a certificate of
/// another region), and deleting it would stop that certificate from renewing. Those
/// are `others`, in the stack's region, and the account's certificates in its other
/// regions; when a region cannot be read, every record is left in place.
async fn validation_records(
    stack: &Stack,
    ours: &[Listed],
    others: &[Listed],
) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    for certificate in ours {
        let found = describe(stack, &certificate.arn).await?;
        for record in found.as_ref().and_then(records_of).unwrap_or_default() {
            if !records.contains(&record) {
                records.push(record);
            }
        }
    }
    // A certificate whose names were not all listed may share one: it is described.
    let shares_a_name = |other: &Listed| {
        other.more_names
            || ours.iter().any(|certificate| {
                certificate
                    .names
                    .iter()
                    .any(|name| other.names.contains(name))
            })
    };
    if records.is_empty() {
        return Ok(records);
    }
    let (elsewhere, unread) = other_regions_certificates(stack).await?;
    if !unread.is_empty() {
        stack.progress.note(&format!(
            "dns CNAMEs {} left in place: a certificate of another region may renew with \
             them, and the certificates of {} could not be listed",
            records
                .iter()
                .map(|record| record.name.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            unread.join(", ")
        ));
        return Ok(Vec::new());
    }
    let in_region = others.iter().map(|other| (&stack.clients.acm, other));
    let other_regions = elsewhere.iter().map(|(acm, other)| (acm, other));
    for (acm, other) in in_region
        .chain(other_regions)
        .filter(|(_, other)| shares_a_name(other))
    {
        let found = describe_in(acm, &other.arn).await?;
        let shared = found.as_ref().and_then(records_of).unwrap_or_default();
        records.retain(|record| {
            let keep = !shared.contains(record);
            if !keep {
                stack.progress.note(&format!(
                    "dns CNAME {} also validates certificate {}, which is not the stack's: \
                     left in place",
                    record.name, other.arn
                ));
            }
            keep
        });
    }
    Ok(records)
}

struct AcmCertificate {
    acm: aws_sdk_acm::Client,
    arn: String,
    domain: String,
    blocked_by: Vec<String>,
}

impl Deletable for AcmCertificate {
    fn key(&self) -> String {
        format!("acm-certificate:{}", self.arn)
    }

    fn label(&self) -> String {
        format!("certificate {}", self.domain)
    }

    fn blocked_by(&self) -> Vec<String> {
        self.blocked_by.clone()
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let result = self
                .acm
                .delete_certificate()
                .certificate_arn(&self.arn)
                .send()
                .await;
            delete_outcome(
                result,
                &format!("DeleteCertificate {}", self.arn),
                &["ResourceNotFoundException"],
            )
        })
    }
}

#[cfg(test)]
mod tests;
