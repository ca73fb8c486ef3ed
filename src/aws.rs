//! How the CLI reaches AWS: the connection flags (`--region`, `--profile`,
//! `--endpoint-url`) on top of the standard AWS configuration chain, one `SdkConfig`
//! built from them, the service clients built from that, and a log of every call they
//! make so `up` can say what it changed.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig};
use aws_runtime::retries::classifiers::THROTTLING_ERRORS;
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, InterceptorContext,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::engine::{Backoff, DeleteError, Lasting, Pace};
use crate::names::{Names, ROLE_TAG, STACK_TAG};

/// Attempts the SDK makes at a call that failed with throttling or a transient error.
pub const SDK_ATTEMPTS: u32 = 8;

/// The SDK's retries of every client: throttling and transient errors are retried with
/// backoff, up to [`SDK_ATTEMPTS`] attempts.
pub fn sdk_retries() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(SDK_ATTEMPTS)
}

/// Where and as whom to reach AWS. Anything left unset comes from the standard chain:
/// `AWS_PROFILE`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_<SERVICE>`, profiles, SSO,
/// instance roles; the region is the stack's, not `AWS_REGION`'s.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AwsArgs {
    /// AWS region [default: the stack's `region`, itself `us-east-1` when unset]
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Named profile from ~/.aws/config
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Send every AWS call to this endpoint, e.g. http://127.0.0.1:4566 for LocalStack
    #[arg(long, global = true)]
    pub endpoint_url: Option<String>,
    /// How patiently to poll: AWS's pace unless a test harness running the CLI against
    /// an emulator says `local` (REALTIME_STACK_PACE). Never guessed from the endpoint,
    /// which may be AWS itself (a FIPS endpoint, a proxy); `--local` is always local.
    #[arg(
        long,
        global = true,
        hide = true,
        env = "REALTIME_STACK_PACE",
        value_enum
    )]
    pub pace: Option<Pace>,
}

impl AwsArgs {
    /// The SDK configuration: these flags first, then `fallback_region`, then the chain.
    pub async fn sdk_config(&self, fallback_region: Option<&str>) -> SdkConfig {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).retry_config(sdk_retries());
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = self.region.as_deref().or(fallback_region) {
            loader = loader.region(Region::new(region.to_owned()));
        }
        if let Some(endpoint) = &self.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        loader.load().await
    }
}

/// One client per AWS service the stack uses, all sharing one configuration and one
/// call log.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub elbv2: aws_sdk_elasticloadbalancingv2::Client,
    pub elasticache: aws_sdk_elasticache::Client,
    pub acm: aws_sdk_acm::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub route53: aws_sdk_route53::Client,
    pub s3: aws_sdk_s3::Client,
    pub sts: aws_sdk_sts::Client,
    /// The Price List, read in the one region that serves it whatever the stack's.
    pub pricing: aws_sdk_pricing::Client,
    pub calls: CallLog,
}

impl Clients {
    pub fn new(config: &SdkConfig) -> Self {
        Self::with_calls(config, CallLog::recording())
    }

    /// Clients that refuse every call that could change something: `plan`'s. A change
    /// that `plan` forgot to hold back fails instead of being made.
    pub fn read_only(config: &SdkConfig) -> Self {
        Self::with_calls(config, CallLog::refusing_changes())
    }

    fn with_calls(config: &SdkConfig, calls: CallLog) -> Self {
        // An endpoint override (LocalStack, MinIO) rarely resolves bucket subdomains.
        let path_style =
            config.endpoint_url().is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        Self {
            ec2: aws_sdk_ec2::Client::from_conf(
                aws_sdk_ec2::config::Builder::from(config)
                    .interceptor(calls.clone())
                    .build(),
            ),
            elbv2: aws_sdk_elasticloadbalancingv2::Client::from_conf(
                aws_sdk_elasticloadbalancingv2::config::Builder::from(config)
                    .interceptor(calls.clone())
                    .build(),
            ),
            elasticache: aws_sdk_elasticache::Client::from_conf(
                aws_sdk_elasticache::config::Builder::from(config)
                    .interceptor(calls.clone())
                    .build(),
            ),
            acm: aws_sdk_acm::Client::from_conf(
                crate::certificate::acm_config(aws_sdk_acm::config::Builder::from(config))
                    .interceptor(calls.clone())
                    .build(),
            ),
            autoscaling: aws_sdk_autoscaling::Client::from_conf(
                aws_sdk_autoscaling::config::Builder::from(config)
                    .interceptor(calls.clone())
                    .build(),
            ),
            route53: aws_sdk_route53::Client::from_conf(
                aws_sdk_route53::config::Builder::from(config)
                    .interceptor(calls.clone())
                    .build(),
            ),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(config)
                    .force_path_style(path_style)
                    .interceptor(calls.clone())
                    .build(),
            ),
            sts: aws_sdk_sts::Client::from_conf(
                aws_sdk_sts::config::Builder::from(config)
                    .interceptor(calls.clone())
                    .build(),
            ),
            // Fewer attempts than the others: an unreachable price list costs `plan` its
            // cost line, not 40 s of backoff.
            pricing: aws_sdk_pricing::Client::from_conf(
                aws_sdk_pricing::config::Builder::from(config)
                    .region(Region::from_static(crate::cost::PRICE_LIST_REGION))
                    .retry_config(RetryConfig::standard().with_max_attempts(3))
                    .interceptor(calls.clone())
                    .build(),
            ),
            calls,
        }
    }
}

/// Every AWS operation sent, as `service:Operation`, in order. Read-only operations are
/// told apart by name, as AWS names them: Describe*, List*, Get*, Head*. With
/// `REALTIME_STACK_CALL_LOG` set to a file, each operation is also appended there (what
/// the IAM policy test reads). For `plan`, it refuses the others before they are sent.
#[derive(Clone, Debug, Default)]
pub struct CallLog {
    calls: Arc<Mutex<Vec<String>>>,
    refuse_changes: bool,
    file: Option<Arc<std::path::PathBuf>>,
}

/// Names a file that every AWS operation the CLI sends is appended to, one per line.
pub const CALL_LOG_VARIABLE: &str = "REALTIME_STACK_CALL_LOG";

impl CallLog {
    fn recording() -> Self {
        CallLog {
            file: std::env::var_os(CALL_LOG_VARIABLE).map(|path| Arc::new(path.into())),
            ..CallLog::default()
        }
    }

    fn refusing_changes() -> Self {
        CallLog {
            refuse_changes: true,
            ..CallLog::recording()
        }
    }

    /// The calls that may have changed something.
    pub fn mutating(&self) -> Vec<String> {
        self.calls
            .lock()
            .expect("call log lock")
            .iter()
            .filter(|call| !is_read_only(call))
            .cloned()
            .collect()
    }
}

fn is_read_only(call: &str) -> bool {
    let operation = call.rsplit(':').next().unwrap_or(call);
    ["Describe", "List", "Get", "Head"]
        .iter()
        .any(|prefix| operation.starts_with(prefix))
}

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "CallLog"
    }

    // Once per operation, not per attempt: retries are not separate calls. (Earlier
    // hooks run before the operation's metadata is in the bag.)
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(metadata) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        let call = format!("{}:{}", metadata.service(), metadata.name());
        if self.refuse_changes && !is_read_only(&call) {
            return Err(format!("{call} was not sent: plan makes no change").into());
        }
        if let Some(file) = &self.file {
            use std::io::Write;
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file.as_ref())?;
            writeln!(log, "{call}")?;
        }
        self.calls.lock().expect("call log lock").push(call);
        Ok(())
    }
}

/// The AWS error code of a failed call, when AWS sent one.
pub fn error_code<E, R>(err: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(service) => service.err().code(),
        _ => None,
    }
}

/// Error codes meaning "something still uses this resource; try again later".
const BLOCKED_CODES: &[&str] = &[
    "DependencyViolation",
    "ResourceInUse",
    "ResourceInUseException",
    "CacheSubnetGroupInUse",
    "InvalidReplicationGroupState",
    "InvalidCacheClusterState",
    "InvalidStateException",
    "IncorrectState",
    "InvalidGatewayID.NotFound",
    "OperationAborted",
];

/// A retry classifier that forbids the SDK's retries of `E`'s call when `forbid` says so
/// of the error code AWS answered (`None`: no answer, or none that parsed as `E`).
#[derive(Debug)]
pub struct ForbidRetry<E> {
    name: &'static str,
    forbid: fn(Option<&str>) -> bool,
    call: PhantomData<E>,
}

impl<E> ForbidRetry<E> {
    pub const fn new(name: &'static str, forbid: fn(Option<&str>) -> bool) -> Self {
        Self {
            name,
            forbid,
            call: PhantomData,
        }
    }
}

impl<E> ClassifyRetry for ForbidRetry<E>
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(err)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let code = err
            .as_operation_error()
            .and_then(|err| err.downcast_ref::<E>())
            .and_then(ProvideErrorMetadata::code);
        if (self.forbid)(code) {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        self.name
    }
}

/// A create's answer as whether it made the resource: `false` when AWS answers that the
/// resource already exists (`exists` says which error means that), as it answers the SDK's
/// second attempt at a create whose answer was lost (a timeout, a 5xx), the first having
/// made it.
pub fn made<T, E, R>(
    sent: Result<T, SdkError<E, R>>,
    exists: impl Fn(&E) -> bool,
) -> Result<bool, SdkError<E, R>> {
    match sent {
        Err(err) if err.as_service_error().is_some_and(&exists) => Ok(false),
        sent => sent.map(|_| true),
    }
}

/// Turns the result of a delete call into the destroy loop's terms: a resource already
/// gone (its `not_found` codes) is deleted; a refusal because something still uses it is
/// blocked; anything else failed, with the call named.
pub fn delete_outcome<T, E, R>(
    result: Result<T, SdkError<E, R>>,
    call: &str,
    not_found: &[&str],
) -> Result<(), DeleteError>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(_) => Ok(()),
        Err(err) => match error_code(&err) {
            Some(code) if not_found.contains(&code) => Ok(()),
            Some(code) if BLOCKED_CODES.contains(&code) => Err(DeleteError::Blocked(format!(
                "{call}: {code}: {}",
                err.as_service_error()
                    .and_then(|e| e.message())
                    .unwrap_or("still in use")
            ))),
            _ => Err(DeleteError::Failed(explain(call, err))),
        },
    }
}

/// How AWS says "not yet": a part of the service has not heard yet of a resource just
/// created (eventual consistency), or the resource is busy with something that ends on
/// its own. Retried by [`once_known`] on calls that use such a resource, never on
/// deletes, where the not-found codes mean the resource is gone.
pub struct NotYet {
    pub codes: &'static [&'static str],
    /// Answers that mean "not yet" only with a given message: `(code, part of the
    /// message)`, where the code alone also covers lasting mistakes.
    pub with_message: &'static [(&'static str, &'static str)],
    /// How long AWS may keep answering so about a resource that exists.
    pub limit: Duration,
    /// What the user should check once that is over.
    pub advice: &'static str,
}

impl NotYet {
    /// Whether `err` is one of these answers.
    pub fn covers<E: ProvideErrorMetadata, R>(&self, err: &SdkError<E, R>) -> bool {
        let Some(code) = error_code(err) else {
            return false;
        };
        let message = err
            .as_service_error()
            .and_then(|err| err.message())
            .unwrap_or_default();
        self.codes.contains(&code)
            || self
                .with_message
                .iter()
                .any(|(with, part)| *with == code && message.contains(part))
    }
}

/// EC2 resources used right after their creation. EC2 advises retrying with backoff "up
/// to five minutes" (<https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>).
pub const EC2_NEW: NotYet = NotYet {
    codes: &[
        "InvalidInstanceID.NotFound",
        "InvalidGroup.NotFound",
        "InvalidRouteTableID.NotFound",
        "InvalidInternetGatewayID.NotFound",
        // What CreateRoute answers for a gateway it does not know (EC2's error codes:
        // <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).
        "InvalidGatewayID.NotFound",
        "InvalidSubnetID.NotFound",
    ],
    with_message: &[],
    limit: Duration::from_secs(5 * 60),
    advice: "it was deleted meanwhile, or EC2 is having trouble in this region: run `up` \
             again, which finds or re-creates it",
};

/// A certificate ACM has just issued, put on a listener: for a while the load balancer
/// answers `CertificateNotFound` or `UnsupportedCertificate`
/// (hashicorp/terraform-provider-aws#17505, DataBiosphere/azul#8321); terraform retries
/// it for its five-minute create timeout.
pub const ELB_NEW_CERTIFICATE: NotYet = NotYet {
    codes: &["CertificateNotFound", "UnsupportedCertificate"],
    with_message: &[],
    limit: Duration::from_secs(5 * 60),
    advice: "check in ACM that the certificate is ISSUED and in the load balancer's region; \
             run `up` again once it is",
};

/// The subnets and the security group a new load balancer names, seconds old on a first
/// `up`: ELB learns of them from EC2, with EC2's delay
/// (<https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>), and
/// answers `SubnetNotFound` (InvalidSubnetID.NotFound from CloudFormation creating the
/// two in a row, aws/aws-cdk#3676 and mozilla/fxa-dev#449) or `InvalidSecurityGroup`
/// (wrapping EC2's InvalidGroup.NotFound, kubernetes-sigs/aws-load-balancer-controller#2371).
pub const ELB_NEW_NETWORK: NotYet = NotYet {
    codes: &["SubnetNotFound", "InvalidSecurityGroup"],
    with_message: &[],
    limit: Duration::from_secs(5 * 60),
    advice: "the subnet or security group was deleted meanwhile: run `up` again, which \
             re-creates the network",
};

/// The private subnets a new cache subnet group names, seconds old on a first `up`:
/// ElastiCache (as RDS, whose subnet groups answer the same) reads them from EC2 with
/// EC2's delay, and answers `InvalidParameterValue: Some input subnets in :[...] are
/// invalid.` (that answer: hashicorp/terraform#4404; taken as EC2's eventual consistency
/// for the same subnet groups by platform-engineering-labs/formae's error classifier).
/// The code alone also means a lasting mistake, so only this message is retried.
pub const CACHE_NEW_SUBNETS: NotYet = NotYet {
    codes: &[],
    with_message: &[("InvalidParameterValue", "Some input subnets")],
    limit: Duration::from_secs(5 * 60),
    advice: "the subnets were deleted meanwhile: run `up` again, which re-creates them",
};

/// A cache subnet group seconds old, named by the replication group created next:
/// ElastiCache may not know it yet ("CacheSubnetGroupNotFoundFault: Cache Subnet Group
/// ... does not exist ... it takes time to be created. When I re-apply ... all works
/// fine", aws-controllers-k8s/community#1228).
pub const CACHE_NEW_SUBNET_GROUP: NotYet = NotYet {
    codes: &["CacheSubnetGroupNotFoundFault"],
    with_message: &[],
    limit: Duration::from_secs(5 * 60),
    advice: "the cache subnet group was deleted meanwhile: run `up` again, which re-creates it",
};

/// A listener or target group just created, used by the next call: ELB's API is
/// eventually consistent, and answers `ListenerNotFound` ("a listener created may still
/// be ListenerNotFound", kubernetes-sigs/aws-load-balancer-controller#1472, which retries
/// for 20 s) or `TargetGroupNotFound` (a CreateTargetGroup, then "within the same second"
/// a call on it failing so, hashicorp/terraform-provider-aws#16860; #19920).
pub const ELB_NEW: NotYet = NotYet {
    codes: &["ListenerNotFound", "TargetGroupNotFound"],
    with_message: &[],
    limit: Duration::from_secs(2 * 60),
    advice: "it was deleted meanwhile: run `up` again, which re-creates it",
};

/// Access logs turned on seconds after their bucket and its policy were written: the
/// load balancer checks that it can write there, and until S3's policy has propagated
/// answers "InvalidConfigurationRequest: Access Denied for bucket ... Please check
/// S3bucket permission" ("30s unfortunately didn't suffice ... with 60s sorted it",
/// hashicorp/terraform-provider-aws#12010). The code alone also means other mistakes, so
/// only this message is retried.
pub const ELB_NEW_LOG_BUCKET: NotYet = NotYet {
    codes: &[],
    with_message: &[("InvalidConfigurationRequest", "Access Denied for bucket")],
    limit: Duration::from_secs(5 * 60),
    advice: "the bucket's policy must let the region's Elastic Load Balancing write into it: \
             check it (`realtime-stack status` names the bucket), and run `up` again",
};

/// A bucket just created: S3 may not know it yet (HeadBucket's `NotFound`; terraform-
/// provider-aws waits for HeadBucket after CreateBucket), and may answer `NoSuchBucket`
/// to the calls that configure it, or `OperationAborted` while one is still applied
/// (terraform-provider-aws retries its bucket configuration calls on both for two
/// minutes, `s3BucketPropagationTimeout`; "S3 eventual consistency is a pain",
/// hashicorp/terraform-provider-aws#6607).
pub const S3_NEW_BUCKET: NotYet = NotYet {
    codes: &["NotFound", "NoSuchBucket", "OperationAborted"],
    with_message: &[],
    limit: Duration::from_secs(2 * 60),
    advice: "the bucket was deleted meanwhile: run `up` again, which re-creates it",
};

/// An Auto Scaling group just created, named by the next call: Auto Scaling may answer
/// "ValidationError: AutoScalingGroup name not found" for a while (a scheduled action
/// made right after its group, hashicorp/terraform#17238). The code alone also means a
/// lasting mistake, so only this message is retried.
pub const GROUP_NEW: NotYet = NotYet {
    codes: &[],
    with_message: &[("ValidationError", "name not found")],
    limit: Duration::from_secs(2 * 60),
    advice: "the Auto Scaling group was deleted meanwhile: run `up` again, which re-creates it",
};

/// An Auto Scaling group busy with a scaling activity. An instance it terminates is
/// drained first, for the target group's deregistration delay (up to an hour), and
/// meanwhile TerminateInstanceInAutoScalingGroup and UpdateAutoScalingGroup may be refused
/// with `ScalingActivityInProgress` ("if the ASG is configured to deregister a
/// targetgroup ... the terminate request may fail with ScalingActivityInProgress",
/// keikoproj/upgrade-manager#77; kubernetes/kops#6900; for UpdateAutoScalingGroup,
/// TwiN/aws-eks-asg-rolling-update-handler#16), or with `ResourceContention` ("You
/// already have a pending update to an Amazon EC2 Auto Scaling resource", both calls'
/// API references; retried alike by alchemy-run/alchemy#227). The SDK retries neither.
pub const GROUP_BUSY: NotYet = NotYet {
    codes: &["ScalingActivityInProgress", "ResourceContention"],
    with_message: &[],
    limit: Duration::from_secs(65 * 60),
    advice: "a scaling activity of the Auto Scaling group has run longer than the longest \
             deregistration delay: see its activities (`realtime-stack status`), and run `up` \
             again once it has ended",
};

/// Sends a call that uses a resource just created, again while AWS answers one of
/// `not_yet`'s codes, pausing longer each time at `pace`. After `not_yet.limit` (a
/// fraction of it locally) it fails with AWS's answer and what to check.
pub async fn once_known<T, E, R, Fut>(
    pace: Pace,
    call: &str,
    not_yet: &NotYet,
    mut send: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    // Tokio's clock, so that tests can pause it.
    let started = tokio::time::Instant::now();
    let limit = pace.limit(not_yet.limit);
    let mut backoff = Backoff::new(pace);
    loop {
        let err = match send().await {
            Ok(output) => return Ok(output),
            Err(err) => err,
        };
        if !not_yet.covers(&err) {
            return Err(explain(call, err));
        }
        let waited = started.elapsed();
        if waited >= limit {
            return Err(anyhow::anyhow!(
                "{:#}, still after {} s of retrying, longer than AWS takes to know of a \
                 resource just created: {}",
                explain(call, err),
                waited.as_secs(),
                not_yet.advice
            ));
        }
        backoff.pause().await;
    }
}

/// Sends a change with [`once_known`]. When AWS answers that it is already made
/// (`already`'s codes), as it answers the SDK's second attempt at a change whose first
/// answer was lost (a timeout, a 5xx: the SDK retries those for every call), `in_place`
/// reads whether the change is there as asked: the first attempt made it, and the change
/// is done. If it is not (someone else's change stands in the way), the answer is the
/// error.
pub async fn change_once<T, E, R, Fut>(
    pace: Pace,
    call: &str,
    not_yet: &NotYet,
    already: &[&str],
    mut send: impl FnMut() -> Fut,
    in_place: impl AsyncFnOnce() -> anyhow::Result<bool>,
) -> anyhow::Result<()>
where
    Fut: Future<Output = Result<T, SdkError<E, R>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let answer = once_known(pace, call, not_yet, || {
        let sent = send();
        async move {
            match sent.await {
                Err(err) if error_code(&err).is_some_and(|code| already.contains(&code)) => {
                    Ok(Some(format!("{:#}", explain(call, err))))
                }
                sent => sent.map(|_| None),
            }
        }
    })
    .await?;
    match answer {
        None => Ok(()),
        // Boxed: the read is rare, and the callers' futures nest deep.
        Some(_) if Box::pin(in_place()).await? => Ok(()),
        Some(answer) => anyhow::bail!(
            "{answer} - and it is not in place as asked: another change stands in its way; \
             `plan` shows what differs"
        ),
    }
}

/// The EC2 tags of a resource of `role`, to apply at creation.
pub fn ec2_tags(names: &Names, role: &str, resource_type: ResourceType) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource_type)
        .set_tags(Some(
            names
                .tags(role)
                .into_iter()
                .map(|(key, value)| Tag::builder().key(key).value(value).build())
                .collect(),
        ))
        .build()
}

/// An EC2 filter that finds the stack's resources; with `role`, only that one.
pub fn ec2_stack_filters(names: &Names, role: Option<&str>) -> Vec<Filter> {
    let mut filters = vec![
        Filter::builder()
            .name(format!("tag:{STACK_TAG}"))
            .values(names.stack())
            .build(),
    ];
    if let Some(role) = role {
        filters.push(
            Filter::builder()
                .name(format!("tag:{ROLE_TAG}"))
                .values(role)
                .build(),
        );
    }
    filters
}

/// Whether an error code says an account quota is reached. Each service names its own:
/// EC2 `VpcLimitExceeded`, ACM and IAM `LimitExceeded(Exception)`, Route53
/// `LimitsExceeded` and `TooManyHostedZones`, ElastiCache `NodeQuotaForCustomerExceeded`,
/// ELBv2 `TooManyLoadBalancers`, S3 `TooManyBuckets`. (Throttling's `TooManyRequests`
/// is told apart before.)
fn is_quota(code: &str) -> bool {
    ["LimitExceeded", "LimitsExceeded", "Quota"]
        .iter()
        .any(|part| code.contains(part))
        || code.starts_with("TooMany")
}

/// `call` failed: the AWS error with its code and, where one applies, what the user can
/// do about it.
pub fn explain<E, R>(call: &str, err: SdkError<E, R>) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let advice = match error_code(&err) {
        Some("UnauthorizedOperation" | "AccessDenied" | "AccessDeniedException") => {
            " - the credentials in use lack this permission: grant it, or pick other \
             credentials with --profile"
        }
        Some("ExpiredToken" | "ExpiredTokenException" | "RequestExpired") => {
            " - the credentials have expired: refresh them (e.g. `aws sso login`) and run again"
        }
        // The SDK has retried these with backoff already (`sdk_config`'s attempts).
        // `LimitExceededException` is on its list, yet ACM (and others) answer it for a
        // quota reached ("An ACM quota has been exceeded", which the ACM client does not
        // retry: `certificate::acm_config`): a quota's advice.
        Some(code) if THROTTLING_ERRORS.contains(&code) && code != "LimitExceededException" => {
            " - AWS throttled the account's API calls, still after the SDK's retries with \
             backoff: wait a minute and run again (`up` and `destroy` go on from what \
             exists), or lower the account's other API traffic in the region"
        }
        Some(code) if is_quota(code) => {
            " - an account quota is reached: free some of it, or ask AWS to raise it \
             (Service Quotas console)"
        }
        Some(code) if code.starts_with("Insufficient") && code.contains("Capacity") => {
            " - AWS has none of this instance or node type free in this Availability Zone \
             now: run again later (`up` goes on from what exists), or pick another type"
        }
        Some("OptInRequired") => " - the account is not subscribed to this service in this region",
        Some(
            "AuthFailure"
            | "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "SignatureDoesNotMatch",
        ) => {
            " - AWS does not accept the credentials in use: check --profile, and that the \
             keys are current and the machine's clock is right"
        }
        _ if matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        ) =>
        {
            " - AWS could not be reached: check the network, the region and --endpoint-url"
        }
        _ => "",
    };
    let reason = match err.as_service_error() {
        Some(service) if service.code().is_some() => format!(
            "{}: {}",
            service.code().unwrap_or_default(),
            service.message().unwrap_or("no message")
        ),
        _ => DisplayErrorContext(&err).to_string(),
    };
    let message = format!("{call} failed: {reason}{advice}");
    if error_code(&err).is_some_and(|code| LASTING_CODES.contains(&code)) {
        anyhow::Error::new(Lasting(message))
    } else {
        anyhow::anyhow!(message)
    }
}

/// Errors no retry mends: the credentials lack the permission, have expired, are not
/// accepted, or the account has not opted in. Only the user can change that.
const LASTING_CODES: &[&str] = &[
    "UnauthorizedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
    "AuthFailure",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "SignatureDoesNotMatch",
    "OptInRequired",
];

/// Adds the failed call's name (and what to do) to an AWS SDK result.
pub trait Call<T> {
    fn call(self, call: impl AsRef<str>) -> anyhow::Result<T>;
}

impl<T, E, R> Call<T> for Result<T, SdkError<E, R>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    fn call(self, call: impl AsRef<str>) -> anyhow::Result<T> {
        self.map_err(|err| explain(call.as_ref(), err))
    }
}

/// An AWS call's output, or `None` when the service's error says the thing asked about
/// is not there (`missing`); any other error is [`explain`]ed with `call`'s name.
pub fn found<T, E, R>(
    result: Result<T, SdkError<E, R>>,
    call: impl AsRef<str>,
    missing: impl FnOnce(&E) -> bool,
) -> anyhow::Result<Option<T>>
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Err(err) if err.as_service_error().is_some_and(missing) => Ok(None),
        result => result.call(call).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::create_tags::{CreateTagsError, CreateTagsOutput};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::stack::testing;

    fn ec2_error(code: &str) -> CreateTagsError {
        CreateTagsError::generic(
            ErrorMetadata::builder()
                .code(code)
                .message("The instance ID 'i-1' does not exist")
                .build(),
        )
    }

    /// An instance EC2 keeps not knowing for longer than its documented five minutes of
    /// eventual consistency ("increasing gradually up to five minutes of wait time",
    /// <https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>) is an
    /// error naming the call, AWS's code and what to check; any other error ends at once.
    #[tokio::test(start_paused = true)]
    async fn not_yet_is_retried_up_to_its_bound_and_other_errors_not_at_all() {
        let unknown = mock!(aws_sdk_ec2::Client::create_tags)
            .then_error(|| ec2_error("InvalidInstanceID.NotFound"));
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&unknown]);
        let started = tokio::time::Instant::now();

        let err = once_known(Pace::Aws, "CreateTags on i-1", &EC2_NEW, || {
            ec2.create_tags().resources("i-1").send()
        })
        .await
        .unwrap_err()
        .to_string();

        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(300) && waited < Duration::from_secs(330),
            "{waited:?}"
        );
        assert!(unknown.num_calls() > 10, "{}", unknown.num_calls());
        assert!(
            err.starts_with("CreateTags on i-1 failed: InvalidInstanceID.NotFound"),
            "{err}"
        );
        assert!(err.contains("still after 300 s of retrying"), "{err}");
        assert!(err.contains("run `up` again"), "{err}");

        let refused = mock!(aws_sdk_ec2::Client::create_tags)
            .then_error(|| ec2_error("UnauthorizedOperation"));
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&refused]);
        let err = once_known(Pace::Aws, "CreateTags on i-1", &EC2_NEW, || {
            ec2.create_tags().resources("i-1").send()
        })
        .await
        .unwrap_err()
        .to_string();
        assert_eq!(refused.num_calls(), 1);
        assert!(err.contains("lack this permission"), "{err}");
    }

    /// A security group `key`, deleted through [`delete_outcome`], after those it waits for.
    struct Refused {
        ec2: aws_sdk_ec2::Client,
        key: &'static str,
        blocked_by: &'static [&'static str],
    }

    impl crate::engine::Deletable for Refused {
        fn key(&self) -> String {
            self.key.to_owned()
        }

        fn label(&self) -> String {
            self.key.to_owned()
        }

        fn blocked_by(&self) -> Vec<String> {
            self.blocked_by
                .iter()
                .map(|key| (*key).to_owned())
                .collect()
        }

        fn delete(&self) -> crate::engine::DeleteFuture<'_> {
            Box::pin(async move {
                let result = self
                    .ec2
                    .delete_security_group()
                    .group_id(self.key)
                    .send()
                    .await;
                delete_outcome(
                    result,
                    &format!("DeleteSecurityGroup {}", self.key),
                    &["InvalidGroup.NotFound"],
                )
            })
        }
    }

    /// Credentials that lack a permission (EC2's `UnauthorizedOperation`) or have expired
    /// will not get it by waiting: `destroy` deletes all else it can, names the refused
    /// resource and what waits for it at once, and does not retry for its patience.
    #[tokio::test(start_paused = true)]
    async fn destroy_stops_at_once_on_what_the_credentials_may_not_delete() {
        use aws_sdk_ec2::operation::delete_security_group::{
            DeleteSecurityGroupError, DeleteSecurityGroupOutput,
        };
        for code in ["UnauthorizedOperation", "ExpiredToken"] {
            let denied = mock!(aws_sdk_ec2::Client::delete_security_group)
                .match_requests(|req| req.group_id() == Some("sg-denied"))
                .then_error(move || {
                    DeleteSecurityGroupError::generic(
                        ErrorMetadata::builder()
                            .code(code)
                            .message("You are not authorized to perform this operation.")
                            .build(),
                    )
                });
            let allowed = mock!(aws_sdk_ec2::Client::delete_security_group)
                .then_output(|| DeleteSecurityGroupOutput::builder().build());
            let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&denied, &allowed]);
            let resource = |key, blocked_by| -> Box<dyn crate::engine::Deletable> {
                Box::new(Refused {
                    ec2: ec2.clone(),
                    key,
                    blocked_by,
                })
            };
            let started = tokio::time::Instant::now();

            let left = crate::engine::destroy(
                vec![
                    resource("sg-denied", &[]),
                    resource("sg-after", &["sg-denied"]),
                    resource("sg-free", &[]),
                ],
                &crate::engine::Progress::with_live_lines(false),
                Pace::Aws,
                Duration::from_secs(20 * 60),
            )
            .await
            .unwrap_err();

            assert!(started.elapsed() < Duration::from_secs(60), "{code}");
            assert_eq!(denied.num_calls(), 1, "{code}: not retried");
            assert_eq!(allowed.num_calls(), 1, "{code}: sg-free deleted");
            let left: Vec<(&str, &str)> = left
                .0
                .iter()
                .map(|(label, reason)| (label.as_str(), reason.as_str()))
                .collect();
            assert_eq!(left.len(), 2, "{left:?}");
            assert_eq!(left[0].0, "sg-denied");
            assert!(
                left[0]
                    .1
                    .starts_with(&format!("DeleteSecurityGroup sg-denied failed: {code}")),
                "{left:?}"
            );
            assert_eq!(left[1], ("sg-after", "waiting for sg-denied"));
        }
    }

    /// Where AWS answers "not yet" and a lasting mistake with the same code, only the
    /// message tells them apart: only "not yet" is retried.
    #[test]
    fn a_code_shared_with_lasting_mistakes_is_retried_only_with_its_message() {
        use aws_sdk_autoscaling::operation::put_scaling_policy::PutScalingPolicyError;
        let answer = |code: &str, message: &str| -> SdkError<PutScalingPolicyError, ()> {
            SdkError::service_error(
                PutScalingPolicyError::generic(
                    aws_sdk_autoscaling::error::ErrorMetadata::builder()
                        .code(code)
                        .message(message)
                        .build(),
                ),
                (),
            )
        };
        for (not_yet, code, retried, not_retried) in [
            (
                &GROUP_NEW,
                "ValidationError",
                "AutoScalingGroup name not found - null",
                "TargetValue must be between 1 and 100",
            ),
            (
                &ELB_NEW_LOG_BUCKET,
                "InvalidConfigurationRequest",
                "Access Denied for bucket: chat-logs. Please check S3bucket permission",
                "A load balancer cannot be attached to multiple subnets in the same zone",
            ),
            (
                &CACHE_NEW_SUBNETS,
                "InvalidParameterValue",
                "Some input subnets in :[subnet-1] are invalid.",
                "The parameter CacheSubnetGroupDescription must be provided",
            ),
        ] {
            assert!(not_yet.covers(&answer(code, retried)), "{retried}");
            assert!(!not_yet.covers(&answer(code, not_retried)), "{not_retried}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn not_yet_ends_as_soon_as_aws_knows_the_resource() {
        let settling = mock!(aws_sdk_ec2::Client::create_tags)
            .sequence()
            .error(|| ec2_error("InvalidInstanceID.NotFound"))
            .times(3)
            .output(|| CreateTagsOutput::builder().build())
            .build();
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&settling]);

        once_known(Pace::Aws, "CreateTags on i-1", &EC2_NEW, || {
            ec2.create_tags().resources("i-1").send()
        })
        .await
        .unwrap();

        assert_eq!(settling.num_calls(), 4);
    }

    /// EC2 answers `RequestLimitExceeded` when the account's API calls in the region go
    /// faster than its request rate (HTTP 400,
    /// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/throttling.html>): a rate,
    /// not a quota. Once it has outlived the SDK's retries, the advice is to wait and run
    /// again, not to ask for a quota.
    #[tokio::test]
    async fn ec2_request_limit_exceeded_is_throttling_not_a_quota() {
        let throttled = mock!(aws_sdk_ec2::Client::create_tags)
            .sequence()
            .http_status(400, Some(crate::stack::testing::EC2_THROTTLED.into()))
            .repeatedly()
            .build();
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&throttled], |config| {
            config.retry_config(testing::sdk_retries())
        });

        let err = ec2
            .create_tags()
            .resources("i-1")
            .send()
            .await
            .call("CreateTags on i-1")
            .unwrap_err()
            .to_string();

        assert_eq!(throttled.num_calls(), SDK_ATTEMPTS as usize);
        assert!(
            err.starts_with("CreateTags on i-1 failed: RequestLimitExceeded"),
            "{err}"
        );
        assert!(err.contains("AWS throttled"), "{err}");
        assert!(err.contains("wait a minute and run again"), "{err}");
        assert!(!err.contains("quota"), "{err}");
    }

    /// What the user reads when CreateTags fails with `code`, the SDK's retries done.
    /// The advice goes by the code alone, whichever service answers it.
    async fn explained(code: &'static str, message: &'static str) -> String {
        let failing = mock!(aws_sdk_ec2::Client::create_tags).then_error(move || {
            CreateTagsError::generic(ErrorMetadata::builder().code(code).message(message).build())
        });
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&failing], |config| {
            config.retry_config(testing::sdk_retries())
        });
        ec2.create_tags()
            .resources("i-1")
            .send()
            .await
            .call("CreateTags on i-1")
            .unwrap_err()
            .to_string()
    }

    /// A quota reached gets the quota's advice, by whatever name its service gives it:
    /// EC2's `VpcLimitExceeded` (five VPCs a region by default), ElastiCache's, ELBv2's
    /// and Route53's own, and `LimitExceededException`, which the SDK retries as
    /// throttling but ACM answers when "an ACM quota has been exceeded"
    /// (<https://docs.aws.amazon.com/acm/latest/APIReference/API_RequestCertificate.html>).
    #[tokio::test]
    async fn quota_codes_keep_the_quota_advice() {
        for (code, message) in [
            (
                "VpcLimitExceeded",
                "The maximum number of VPCs has been reached.",
            ),
            ("LimitExceededException", "An ACM quota has been exceeded."),
            // https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_CreateReplicationGroup.html
            (
                "NodeQuotaForCustomerExceeded",
                "Cluster node quota exceeded.",
            ),
            // https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateLoadBalancer.html
            ("TooManyLoadBalancers", "Too many load balancers."),
            // https://docs.aws.amazon.com/Route53/latest/APIReference/API_CreateHostedZone.html
            ("TooManyHostedZones", "Too many hosted zones."),
            ("LimitsExceeded", "The account has reached the limit."),
        ] {
            let err = explained(code, message).await;
            assert!(err.contains("an account quota is reached"), "{err}");
            assert!(!err.contains("throttled"), "{err}");
        }
    }

    /// EC2 answers `InsufficientInstanceCapacity` when it has no instances of the type
    /// free in the zone, and ElastiCache `InsufficientCacheClusterCapacity` for nodes
    /// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>,
    /// <https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_CreateReplicationGroup.html>):
    /// no quota to raise, but a later run or another type.
    #[tokio::test]
    async fn no_capacity_is_told_to_run_later_or_pick_another_type() {
        for code in [
            "InsufficientInstanceCapacity",
            "InsufficientCacheClusterCapacity",
        ] {
            let err = explained(code, "There is not enough capacity.").await;
            assert!(err.contains("run again later"), "{err}");
            assert!(err.contains("pick another type"), "{err}");
            assert!(!err.contains("quota"), "{err}");
        }
    }

    #[test]
    fn reads_are_told_from_writes_by_operation_name() {
        assert!(is_read_only("ec2:DescribeVpcs"));
        assert!(is_read_only("s3:HeadObject"));
        assert!(is_read_only("elasticache:ListTagsForResource"));
        assert!(!is_read_only("ec2:CreateVpc"));
        assert!(!is_read_only("ec2:ModifyVpcAttribute"));
        assert!(!is_read_only("route53:ChangeResourceRecordSets"));
    }
}
