use crate::names::STACK_TAG;
use aws_sdk_acm::Client;
use aws_sdk_acm::error::ErrorMetadata;
use aws_sdk_acm::operation::delete_certificate::DeleteCertificateError;
use aws_sdk_acm::operation::describe_certificate::DescribeCertificateOutput;
use aws_sdk_acm::operation::list_certificates::{ListCertificatesError, ListCertificatesOutput};
use aws_sdk_acm::operation::list_tags_for_certificate::ListTagsForCertificateOutput;
use aws_sdk_acm::operation::request_certificate::RequestCertificateOutput;
use aws_sdk_acm::types::error::{LimitExceededException, ResourceInUseException};
use aws_sdk_acm::types::{
    CertificateSummary, DomainValidation, FailureReason, RecordType, ResourceRecord,
};
use aws_sdk_route53::operation::change_resource_record_sets::ChangeResourceRecordSetsOutput;
use aws_sdk_route53::operation::get_hosted_zone::GetHostedZoneOutput;
use aws_sdk_route53::operation::list_resource_record_sets::ListResourceRecordSetsOutput;
use aws_sdk_route53::types::{ChangeInfo, ChangeStatus, ResourceRecordSet, RrType};
use aws_smithy_mocks::{RuleMode, mock, mock_client};

use super::*;
use crate::stack::testing;

const ARN: &str = "arn:aws:acm:us-east-1:123456789012:certificate/1";
const CNAME: &str = "_x.chat.example.com.";
const VALUE: &str = "_y.acm-validations.aws.";

fn zone() -> HostedZone {
    HostedZone {
        id: "Z1".into(),
        name: "example.com".into(),
    }
}

fn described(status: CertificateStatus, with_record: bool) -> DescribeCertificateOutput {
    let mut option = DomainValidation::builder().domain_name("chat.example.com");
    if with_record {
        option = option.resource_record(
            ResourceRecord::builder()
                .name(CNAME)
                .r#type(RecordType::Cname)
                .value(VALUE)
                .build()
                .unwrap(),
        );
    }
    DescribeCertificateOutput::builder()
        .certificate(
            CertificateDetail::builder()
                .certificate_arn(ARN)
                .status(status)
                .failure_reason(FailureReason::CaaError)
                .domain_validation_options(option.build().unwrap())
                .build(),
        )
        .build()
}

fn listed_certificate() -> ListCertificatesOutput {
    ListCertificatesOutput::builder()
        .certificate_summary_list(
            CertificateSummary::builder()
                .certificate_arn(ARN)
                .domain_name("chat.example.com")
                .status(CertificateStatus::Issued)
                .build(),
        )
        .build()
}

fn stack_tagged() -> ListTagsForCertificateOutput {
    ListTagsForCertificateOutput::builder()
        .tags(Tag::builder().key(STACK_TAG).value("chat").build().unwrap())
        .build()
}

fn records(sets: Vec<ResourceRecordSet>) -> ListResourceRecordSetsOutput {
    ListResourceRecordSetsOutput::builder()
        .set_resource_record_sets(Some(sets))
        .is_truncated(false)
        .max_items(1)
        .build()
        .unwrap()
}

/// The validation CNAME `name`, as Route53 holds it.
fn validation_cname(name: &str) -> ResourceRecordSet {
    ResourceRecordSet::builder()
        .name(name)
        .r#type(RrType::Cname)
        .ttl(60)
        .resource_records(
            aws_sdk_route53::types::ResourceRecord::builder()
                .value(VALUE)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn insync() -> ChangeInfo {
    ChangeInfo::builder()
        .id("C1")
        .status(ChangeStatus::Insync)
        .submitted_at(aws_smithy_types::DateTime::from_secs(0))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_new_certificate_gets_its_cname_once_acm_names_it_and_ends_issued() {
    let list =
        mock!(Client::list_certificates).then_output(|| ListCertificatesOutput::builder().build());
    let request = mock!(Client::request_certificate)
        .match_requests(|req| {
            req.validation_method() == Some(&ValidationMethod::Dns)
                && req.domain_name() == Some("chat.example.com")
                && req.tags().iter().any(|tag| tag.key == STACK_TAG)
        })
        .then_output(|| {
            RequestCertificateOutput::builder()
                .certificate_arn(ARN)
                .build()
        });
    // No record on the first two describes; then pending, then issued.
    let describe = mock!(Client::describe_certificate)
        .sequence()
        .output(|| described(CertificateStatus::PendingValidation, false))
        .times(2)
        .output(|| described(CertificateStatus::PendingValidation, true))
        .times(2)
        .output(|| described(CertificateStatus::Issued, true))
        .repeatedly()
        .build();
    let mut clients = testing::clients();
    clients.acm = mock_client!(
        aws_sdk_acm,
        RuleMode::MatchAny,
        [&list, &request, &describe]
    );
    let no_record =
        mock!(aws_sdk_route53::Client::list_resource_record_sets).then_output(|| records(vec![]));
    let write = mock!(aws_sdk_route53::Client::change_resource_record_sets)
        .match_requests(|req| {
            let set = req.change_batch().unwrap().changes()[0]
                .resource_record_set()
                .unwrap();
            set.name == CNAME && set.resource_records()[0].value == VALUE
        })
        .then_output(|| {
            ChangeResourceRecordSetsOutput::builder()
                .change_info(insync())
                .build()
        });
    let name_servers = mock!(aws_sdk_route53::Client::get_hosted_zone)
        .then_output(|| GetHostedZoneOutput::builder().build());
    clients.route53 = mock_client!(
        aws_sdk_route53,
        RuleMode::MatchAny,
        [&no_record, &write, &name_servers]
    );
    let stack = testing::stack(clients);

    let certificate = ensure(&stack, &zone()).await.unwrap();

    assert_eq!(certificate.arn, ARN);
    assert_eq!(
        certificate.validation_records,
        [Record::cname(CNAME, VALUE)]
    );
    assert_eq!(request.num_calls(), 1);
    assert_eq!(write.num_calls(), 1);
    assert_eq!(describe.num_calls(), 5);
}

#[tokio::test]
async fn an_issued_certificate_with_its_record_in_place_changes_nothing() {
    let list = mock!(Client::list_certificates).then_output(listed_certificate);
    let tags = mock!(Client::list_tags_for_certificate).then_output(stack_tagged);
    let describe = mock!(Client::describe_certificate)
        .then_output(|| described(CertificateStatus::Issued, true));
    let request = mock!(Client::request_certificate)
        .then_output(|| RequestCertificateOutput::builder().build());
    let mut clients = testing::clients();
    clients.acm = mock_client!(
        aws_sdk_acm,
        RuleMode::MatchAny,
        [&list, &tags, &describe, &request]
    );
    let existing = mock!(aws_sdk_route53::Client::list_resource_record_sets)
        .then_output(|| records(vec![validation_cname(CNAME)]));
    let write = mock!(aws_sdk_route53::Client::change_resource_record_sets)
        .then_output(|| ChangeResourceRecordSetsOutput::builder().build());
    clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&existing, &write]);
    let stack = testing::stack(clients);

    let certificate = ensure(&stack, &zone()).await.unwrap();

    assert_eq!(certificate.arn, ARN);
    assert_eq!(request.num_calls(), 0);
    assert_eq!(write.num_calls(), 0);
}

#[tokio::test]
async fn a_failed_certificate_is_an_error_saying_why_and_to_start_over() {
    let list = mock!(Client::list_certificates).then_output(listed_certificate);
    let tags = mock!(Client::list_tags_for_certificate).then_output(stack_tagged);
    let describe = mock!(Client::describe_certificate)
        .then_output(|| described(CertificateStatus::Failed, true));
    let mut clients = testing::clients();
    clients.acm = mock_client!(aws_sdk_acm, RuleMode::MatchAny, [&list, &tags, &describe]);
    let stack = testing::stack(clients);

    let err = ensure(&stack, &zone()).await.unwrap_err().to_string();

    assert!(err.contains("CAA_ERROR"), "{err}");
    assert!(err.contains("destroy"), "{err}");
}

/// A quota reached ends `up` at ACM's first answer, with the quota's advice, while the SDK
/// would take the same code for throttling and retry it (the control, on a client
/// without `acm_config`): see [`acm_config`].
#[tokio::test(start_paused = true)]
async fn an_acm_quota_reached_is_said_at_the_first_answer_not_retried() {
    fn quota_reached() -> RequestCertificateError {
        let message = "An ACM quota has been exceeded.";
        RequestCertificateError::LimitExceededException(
            LimitExceededException::builder()
                .message(message)
                .meta(
                    ErrorMetadata::builder()
                        .code("LimitExceededException")
                        .message(message)
                        .build(),
                )
                .build(),
        )
    }
    let list =
        mock!(Client::list_certificates).then_output(|| ListCertificatesOutput::builder().build());
    let refusing = || {
        mock!(Client::request_certificate)
            .sequence()
            .error(quota_reached)
            .repeatedly()
            .build()
    };
    let refused = refusing();
    let mut clients = testing::clients();
    clients.acm = mock_client!(
        aws_sdk_acm,
        RuleMode::MatchAny,
        [&list, &refused],
        |config| acm_config(config.retry_config(testing::sdk_retries()))
    );
    let stack = testing::stack(clients);

    let err = ensure(&stack, &zone()).await.unwrap_err().to_string();

    assert_eq!(refused.num_calls(), 1);
    assert!(err.contains("LimitExceededException"), "{err}");
    assert!(err.contains("an account quota is reached"), "{err}");

    let retried = refusing();
    let acm = mock_client!(aws_sdk_acm, RuleMode::MatchAny, [&retried], |config| {
        config.retry_config(testing::sdk_retries())
    });
    acm.request_certificate()
        .domain_name("chat.example.com")
        .send()
        .await
        .unwrap_err();
    assert_eq!(retried.num_calls(), crate::aws::SDK_ATTEMPTS as usize);
}

/// The idempotency token of every attempt the SDK transmits, read from the request
/// body as ACM receives it.
#[derive(Debug, Default, Clone)]
struct SentTokens(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl aws_smithy_runtime_api::client::interceptors::Intercept for SentTokens {
    fn name(&self) -> &'static str {
        "SentTokens"
    }

    fn read_before_transmit(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        _cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let body: serde_json::Value =
            serde_json::from_slice(context.request().body().bytes().unwrap_or_default())?;
        let token = body["IdempotencyToken"].as_str().unwrap_or_default();
        self.0.lock().unwrap().push(token.to_owned());
        Ok(())
    }
}

/// A RequestCertificate whose answer is lost (here a 500) is sent again by the SDK with
/// the same idempotency token, so ACM answers with the certificate the first attempt made
/// instead of making a second one (see [`request`]); the next request, as after a
/// `destroy`, carries a new token so that ACM does not answer with the deleted one.
#[tokio::test(start_paused = true)]
async fn a_request_sent_again_after_a_lost_answer_carries_the_same_token() {
    let requests = mock!(Client::request_certificate)
        .sequence()
        .http_status(500, None)
        .output(|| {
            RequestCertificateOutput::builder()
                .certificate_arn(ARN)
                .build()
        })
        .repeatedly()
        .build();
    let sent = SentTokens::default();
    let interceptor = sent.clone();
    let mut clients = testing::clients();
    clients.acm = mock_client!(aws_sdk_acm, RuleMode::MatchAny, [&requests], |config| {
        acm_config(config.retry_config(testing::sdk_retries())).interceptor(interceptor.clone())
    });
    let stack = testing::stack(clients);

    assert_eq!(request(&stack).await.unwrap(), ARN);
    assert_eq!(request(&stack).await.unwrap(), ARN);

    let tokens = sent.0.lock().unwrap().clone();
    assert_eq!(tokens.len(), 3, "{tokens:?}");
    assert_eq!(
        tokens[0], tokens[1],
        "the SDK's second attempt repeats the token"
    );
    assert_ne!(tokens[1], tokens[2], "a new request needs a new token");
    for token in &tokens {
        assert!(
            (1..=32).contains(&token.len())
                && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "ACM takes 1 to 32 word characters: {token:?}"
        );
    }
}

/// EC2 answering DescribeRegions with `names`, the account's enabled regions.
fn regions(names: &'static [&'static str]) -> aws_sdk_ec2::Client {
    let regions = mock!(aws_sdk_ec2::Client::describe_regions).then_output(move || {
        aws_sdk_ec2::operation::describe_regions::DescribeRegionsOutput::builder()
            .set_regions(Some(
                names
                    .iter()
                    .map(|name| {
                        aws_sdk_ec2::types::Region::builder()
                            .region_name(*name)
                            .build()
                    })
                    .collect(),
            ))
            .build()
    });
    mock_client!(aws_sdk_ec2, [&regions])
}

#[tokio::test]
async fn only_certificates_with_the_stack_tag_are_deleted() {
    let list = mock!(Client::list_certificates).then_output(|| {
        ListCertificatesOutput::builder()
            .certificate_summary_list(
                CertificateSummary::builder()
                    .certificate_arn(ARN)
                    .domain_name("chat.example.com")
                    .build(),
            )
            .certificate_summary_list(
                CertificateSummary::builder()
                    .certificate_arn("arn:other")
                    .domain_name("chat.example.com")
                    .build(),
            )
            .build()
    });
    let ours = mock!(Client::list_tags_for_certificate)
        .match_requests(|req| req.certificate_arn() == Some(ARN))
        .then_output(stack_tagged);
    let theirs = mock!(Client::list_tags_for_certificate)
        .then_output(|| ListTagsForCertificateOutput::builder().build());
    let describe = mock!(Client::describe_certificate)
        .then_output(|| described(CertificateStatus::Issued, true));
    let mut clients = testing::clients();
    clients.ec2 = regions(&["us-east-1"]);
    clients.acm = mock_client!(
        aws_sdk_acm,
        RuleMode::MatchAny,
        [&list, &ours, &theirs, &describe]
    );
    let stack = testing::stack(clients);

    let found = owned(&stack).await.unwrap();

    let keys: Vec<String> = found.certificates.iter().map(|d| d.key()).collect();
    assert_eq!(keys, [format!("acm-certificate:{ARN}")]);
    // One listing serves both the certificates and their validation CNAMEs; the one
    // CNAME here also validates arn:other (same domain), so it stays.
    assert_eq!(list.num_calls(), 1);
    assert!(found.validation_records.is_empty());
}
/// ListCertificates returns only RSA 1024 and 2048 certificates unless `Includes` asks
/// for other key algorithms (ACM API reference, ListCertificates, `Filters.keyTypes`);
/// LocalStack lists every certificate whatever is asked, so the filter is mocked: an
/// ECDSA certificate of another team, sharing the stack's validation CNAME (ACM shares it
/// per domain; tests/up_destroy.rs shows that on LocalStack), is seen and its CNAME kept.
#[tokio::test]
async fn a_shared_cname_of_an_ecdsa_certificate_is_kept_and_unshared_ones_go() {
    let ecdsa = CertificateSummary::builder()
        .certificate_arn(OTHER)
        .domain_name("CHAT.example.com")
        .key_algorithm(KeyAlgorithm::EcPrime256v1)
        .build();
    assert_eq!(
        validation_records_beside(ecdsa).await,
        [Record::cname("_www.chat.example.com.", VALUE)],
        "the shared CNAME must stay for the other certificate's renewals"
    );
}

/// Two more ways another certificate shares the stack's validation CNAME without
/// ListCertificates showing the stack's name: a wildcard, which ACM validates with the
/// base name's record (ACM user guide, DNS validation), and a certificate of more than
/// 100 names, of which ListCertificates lists "only the first 100 subject alternative
/// names" (CertificateSummary, `HasAdditionalSubjectAlternativeNames`). Both are described,
/// and the shared CNAME stays.
#[tokio::test]
async fn a_cname_shared_by_a_wildcard_or_an_unlisted_name_is_kept() {
    let wildcard = CertificateSummary::builder()
        .certificate_arn(OTHER)
        .domain_name("*.chat.example.com")
        .build();
    let many_names = CertificateSummary::builder()
        .certificate_arn(OTHER)
        .domain_name("a.example.org")
        .subject_alternative_name_summaries("b.example.org")
        .has_additional_subject_alternative_names(true)
        .build();
    for other in [wildcard, many_names] {
        assert_eq!(
            validation_records_beside(other.clone()).await,
            [Record::cname("_www.chat.example.com.", VALUE)],
            "{other:?}"
        );
    }
}

const OTHER: &str = "arn:aws:acm:us-east-1:123456789012:certificate/other";

/// The validation records `owned` finds for the stack's certificate (of
/// `chat.example.com` and `www.chat.example.com`) beside `other`, a certificate of another
/// team validated by the stack's `chat.example.com` CNAME, and one for an unrelated name,
/// which must not be described.
async fn validation_records_beside(other: CertificateSummary) -> Vec<Record> {
    const UNRELATED: &str = "arn:aws:acm:us-east-1:123456789012:certificate/unrelated";
    let summary = |arn: &str, domain: &str| {
        CertificateSummary::builder()
            .certificate_arn(arn)
            .domain_name(domain)
            .build()
    };
    let list = mock!(Client::list_certificates)
        .match_requests(|req| {
            // Certificates of every key algorithm, not only the RSA ones listed by default.
            req.includes()
                .is_some_and(|filters| filters.key_types().len() == KeyAlgorithm::values().len())
        })
        .then_output(move || {
            ListCertificatesOutput::builder()
                .certificate_summary_list(summary(ARN, "chat.example.com"))
                .certificate_summary_list(other.clone())
                .certificate_summary_list(summary(UNRELATED, "www.example.com"))
                .build()
        });
    let tags = mock!(Client::list_tags_for_certificate)
        .then_output(|| ListTagsForCertificateOutput::builder().build());
    let ours = mock!(Client::list_tags_for_certificate)
        .match_requests(|req| req.certificate_arn() == Some(ARN))
        .then_output(stack_tagged);
    let validation = |domain: &str, name: &str| {
        DomainValidation::builder()
            .domain_name(domain)
            .resource_record(
                ResourceRecord::builder()
                    .name(name)
                    .r#type(RecordType::Cname)
                    .value(VALUE)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    let describe_ours = mock!(Client::describe_certificate)
        .match_requests(|req| req.certificate_arn() == Some(ARN))
        .then_output(move || {
            DescribeCertificateOutput::builder()
                .certificate(
                    CertificateDetail::builder()
                        .certificate_arn(ARN)
                        .domain_validation_options(validation("chat.example.com", CNAME))
                        .domain_validation_options(validation(
                            "www.chat.example.com",
                            "_www.chat.example.com.",
                        ))
                        .build(),
                )
                .build()
        });
    let describe_other = mock!(Client::describe_certificate)
        .match_requests(|req| req.certificate_arn() == Some(OTHER))
        .then_output(move || {
            DescribeCertificateOutput::builder()
                .certificate(
                    CertificateDetail::builder()
                        .certificate_arn(OTHER)
                        .domain_validation_options(validation("chat.example.com", CNAME))
                        .build(),
                )
                .build()
        });
    // A certificate for another name is never described.
    let describe_unrelated = mock!(Client::describe_certificate)
        .match_requests(|req| req.certificate_arn() == Some(UNRELATED))
        .then_error(|| panic!("a certificate sharing no name with the stack's was described"));
    let mut clients = testing::clients();
    clients.ec2 = regions(&["us-east-1"]);
    clients.acm = mock_client!(
        aws_sdk_acm,
        RuleMode::MatchAny,
        [
            &list,
            &ours,
            &tags,
            &describe_ours,
            &describe_other,
            &describe_unrelated
        ]
    );
    let stack = testing::stack(clients);
    owned(&stack).await.unwrap().validation_records
}

/// After `domain.name` changed, the old name's certificate was on the HTTPS listener a
/// moment ago, and ACM refuses to delete it while it still counts it in use
/// (`ResourceInUseException`; terraform-provider-aws retries it for minutes,
/// hashicorp/terraform-provider-aws#3866). LocalStack does not hold a certificate in use,
/// so this is mocked: the old name's validation CNAME goes, the certificate is left for
/// the next `up`, and the answer says not everything is gone (so the load balancer's tag
/// keeps naming the old alias, and `policy` keeps granting its deletes).
#[tokio::test]
async fn a_certificate_still_in_use_is_left_for_the_next_up() {
    const OLD_ARN: &str = "arn:aws:acm:us-east-1:123456789012:certificate/old";
    const OLD_CNAME: &str = "_x.old.example.com.";
    let list = mock!(Client::list_certificates).then_output(|| {
        ListCertificatesOutput::builder()
            .certificate_summary_list(
                CertificateSummary::builder()
                    .certificate_arn(OLD_ARN)
                    .domain_name("old.example.com")
                    .build(),
            )
            .build()
    });
    let tags = mock!(Client::list_tags_for_certificate).then_output(stack_tagged);
    let describe = mock!(Client::describe_certificate).then_output(|| {
        let option = DomainValidation::builder()
            .domain_name("old.example.com")
            .resource_record(
                ResourceRecord::builder()
                    .name(OLD_CNAME)
                    .r#type(RecordType::Cname)
                    .value(VALUE)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        DescribeCertificateOutput::builder()
            .certificate(
                CertificateDetail::builder()
                    .certificate_arn(OLD_ARN)
                    .domain_validation_options(option)
                    .build(),
            )
            .build()
    });
    let delete = mock!(Client::delete_certificate).then_error(|| {
        let message =
            "Certificate is in use by arn:aws:elasticloadbalancing:…:listener/app/chat-alb/1/2";
        DeleteCertificateError::ResourceInUseException(
            ResourceInUseException::builder()
                .message(message)
                .meta(
                    ErrorMetadata::builder()
                        .code("ResourceInUseException")
                        .message(message)
                        .build(),
                )
                .build(),
        )
    });
    let cname = mock!(aws_sdk_route53::Client::list_resource_record_sets)
        .then_output(|| records(vec![validation_cname(OLD_CNAME)]));
    let change = mock!(aws_sdk_route53::Client::change_resource_record_sets)
        .match_requests(|req| {
            req.hosted_zone_id() == Some("ZOLD")
                && req.change_batch().is_some_and(|batch| {
                    batch.changes().iter().all(|change| {
                        change.action() == &aws_sdk_route53::types::ChangeAction::Delete
                            && change.resource_record_set().map(|set| set.name()) == Some(OLD_CNAME)
                    })
                })
        })
        .then_output(|| {
            ChangeResourceRecordSetsOutput::builder()
                .change_info(insync())
                .build()
        });
    let mut clients = testing::clients();
    clients.ec2 = regions(&["us-east-1"]);
    clients.acm = mock_client!(
        aws_sdk_acm,
        RuleMode::MatchAny,
        [&list, &tags, &describe, &delete]
    );
    clients.route53 = mock_client!(aws_sdk_route53, RuleMode::MatchAny, [&cname, &change]);
    let stack = testing::stack(clients);

    let all_gone = retire_other_domains(&stack, "ZOLD").await.unwrap();

    assert!(!all_gone, "the certificate in use is not gone");
    assert_eq!(change.num_calls(), 1, "the old name's CNAME is deleted");
    assert_eq!(delete.num_calls(), 1);
}

/// What `destroy` finds of the stack's certificate when the account's second region lists
/// `elsewhere`, or (`None`) refuses to list its certificates.
async fn validation_records_with_another_region(
    elsewhere: Option<ListCertificatesOutput>,
) -> Owned {
    let ours = ListCertificatesOutput::builder()
        .certificate_summary_list(
            CertificateSummary::builder()
                .certificate_arn(ARN)
                .domain_name("chat.example.com")
                .build(),
        )
        .build();
    let listed = mock!(Client::list_certificates)
        .sequence()
        .output(move || ours.clone());
    let list = match elsewhere {
        Some(elsewhere) => listed.output(move || elsewhere.clone()),
        None => listed.error(|| {
            ListCertificatesError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("explicit deny in a service control policy")
                    .build(),
            )
        }),
    }
    .build();
    let tags = mock!(Client::list_tags_for_certificate).then_output(stack_tagged);
    let describe = mock!(Client::describe_certificate)
        .then_output(|| described(CertificateStatus::Issued, true));
    let mut clients = testing::clients();
    clients.ec2 = regions(&["us-east-1", "us-west-2"]);
    clients.acm = mock_client!(aws_sdk_acm, RuleMode::MatchAny, [&list, &tags, &describe]);
    owned(&testing::stack(clients)).await.unwrap()
}

/// ACM gives a domain's certificates the same validation CNAME in every region
/// (hashicorp/terraform-provider-aws#13653: a certificate for a name already certified in
/// another region finds its record "already exists"), and renews each with it: a
/// certificate for the stack's domain in another region of the account (a CloudFront
/// one in us-east-1, say) keeps the record when the stack goes.
#[tokio::test]
async fn a_cname_a_certificate_of_another_region_renews_with_is_kept() {
    const ELSEWHERE: &str = "arn:aws:acm:us-west-2:123456789012:certificate/cdn";
    let found = validation_records_with_another_region(Some(
        ListCertificatesOutput::builder()
            .certificate_summary_list(
                CertificateSummary::builder()
                    .certificate_arn(ELSEWHERE)
                    .domain_name("*.chat.example.com")
                    .build(),
            )
            .build(),
    ))
    .await;
    let keys: Vec<String> = found.certificates.iter().map(|d| d.key()).collect();
    assert_eq!(keys, [format!("acm-certificate:{ARN}")]);
    assert!(
        found.validation_records.is_empty(),
        "the shared CNAME stays"
    );
}

/// A region whose certificates cannot be listed (an organization's policy denying it,
/// say) may hold one that renews with the record: every record stays.
#[tokio::test]
async fn the_cnames_stay_when_a_region_cannot_be_read() {
    let found = validation_records_with_another_region(None).await;
    assert!(found.validation_records.is_empty());

    let unshared =
        validation_records_with_another_region(Some(ListCertificatesOutput::builder().build()))
            .await;
    assert_eq!(
        unshared.validation_records,
        [Record::cname(CNAME, VALUE)],
        "with every region read and none sharing it, the record goes"
    );
}
