//! One stack being worked on: its spec, names, AWS clients, progress display and pace.
//! Every service module takes a `&Stack`.

use anyhow::{Context, Result};

use crate::aws::{AwsArgs, Clients};
use crate::engine::{Changes, Pace, Progress};
use crate::names::Names;
use crate::spec::StackSpec;

pub struct Stack {
    pub spec: StackSpec,
    pub names: Names,
    pub clients: Clients,
    pub progress: Progress,
    pub pace: Pace,
    pub region: String,
    /// What this run changes, or with `plan` would change.
    pub changes: Changes,
}

impl Stack {
    /// Resolves the AWS configuration for `spec` (flags, then the spec's region, then the
    /// standard chain). Makes no AWS call.
    pub async fn connect(spec: StackSpec, aws: &AwsArgs, progress: Progress) -> Result<Self> {
        Self::connect_as(spec, aws, progress, Changes::default()).await
    }

    /// As [`Stack::connect`], for `plan`: clients that refuse changes, and changes only
    /// recorded.
    pub async fn connect_to_plan(
        spec: StackSpec,
        aws: &AwsArgs,
        progress: Progress,
    ) -> Result<Self> {
        Self::connect_as(spec, aws, progress, Changes::planning()).await
    }

    async fn connect_as(
        spec: StackSpec,
        aws: &AwsArgs,
        progress: Progress,
        changes: Changes,
    ) -> Result<Self> {
        let config = aws.sdk_config(Some(&spec.region)).await;
        let region = config.region().map(|region| region.to_string()).context(
            "no AWS region: set `region` in stack.yaml, pass --region or set AWS_REGION",
        )?;
        // stack.yaml's region is checked when the file is read; --region here.
        if let Some(why) = crate::spec::unsupported_partition(&region) {
            anyhow::bail!(
                "region {region} {why}; use a region of the standard `aws` partition, such \
                 as us-east-1"
            );
        }
        Ok(Self {
            names: Names::new(&spec.name, &spec.tags),
            clients: if changes.is_planning() {
                Clients::read_only(&config)
            } else {
                Clients::new(&config)
            },
            spec,
            progress,
            pace: aws.pace.unwrap_or_default(),
            region,
            changes,
        })
    }
}

impl Stack {
    /// Records a change to `resource`; true when it is to be made now, false when `plan`
    /// only records it (the caller skips the call).
    pub fn make(
        &self,
        action: crate::engine::Action,
        resource: impl Into<String>,
        reason: impl Into<String>,
    ) -> bool {
        self.changes.make(action, resource, reason)
    }

    pub fn planning(&self) -> bool {
        self.changes.is_planning()
    }
}

/// A stack whose AWS clients are aws-smithy-mocks clients, for the behaviour LocalStack
/// cannot show (throttling, dependency errors, slow resources).
#[cfg(test)]
pub mod testing {
    use aws_config::retry::RetryConfig;
    use aws_smithy_mocks::mock_client;

    use super::*;

    /// The example `stack.yaml` of the repository.
    pub fn spec() -> StackSpec {
        StackSpec::parse(include_str!("../stack.yaml"), "stack.yaml").expect("example stack")
    }

    /// Clients that answer nothing; replace the fields a test needs with mock clients
    /// holding its rules.
    pub fn clients() -> Clients {
        Clients {
            ec2: mock_client!(aws_sdk_ec2, []),
            elbv2: mock_client!(aws_sdk_elasticloadbalancingv2, []),
            elasticache: mock_client!(aws_sdk_elasticache, []),
            acm: mock_client!(aws_sdk_acm, []),
            autoscaling: mock_client!(aws_sdk_autoscaling, []),
            route53: mock_client!(aws_sdk_route53, []),
            s3: mock_client!(aws_sdk_s3, []),
            sts: mock_client!(aws_sdk_sts, []),
            pricing: mock_client!(aws_sdk_pricing, []),
            calls: Default::default(),
        }
    }

    /// The SDK's retries as every client has them, with a short first pause.
    pub fn sdk_retries() -> RetryConfig {
        crate::aws::sdk_retries().with_initial_backoff(std::time::Duration::from_millis(1))
    }

    /// EC2's answer to a call over the account's request rate: HTTP 400 with the code
    /// `RequestLimitExceeded` (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/throttling.html>).
    pub const EC2_THROTTLED: &str = "<Response><Errors><Error><Code>RequestLimitExceeded</Code>\
         <Message>Request limit exceeded.</Message></Error></Errors>\
         <RequestID>1</RequestID></Response>";

    pub fn stack(clients: Clients) -> Stack {
        let spec = spec();
        Stack {
            names: Names::new(&spec.name, &spec.tags),
            region: spec.region.clone(),
            spec,
            clients,
            progress: Progress::with_live_lines(false),
            pace: Pace::Local,
            changes: Changes::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// An endpoint override may be AWS itself (a FIPS endpoint, a proxy): the stack is
    /// then polled at AWS's pace - Redis gets its hour, not three minutes - unless what
    /// runs the CLI (a test harness against LocalStack) says `local`.
    #[tokio::test]
    async fn the_pace_comes_from_the_harness_never_from_the_endpoint() {
        let fips = AwsArgs {
            endpoint_url: Some("https://elasticache-fips.us-east-1.amazonaws.com".into()),
            ..AwsArgs::default()
        };
        let progress = || Progress::with_live_lines(false);
        let stack = Stack::connect(testing::spec(), &fips, progress())
            .await
            .unwrap();
        assert_eq!(stack.pace, Pace::Aws);
        let hour = Duration::from_secs(3600);
        assert_eq!(stack.pace.limit(hour), hour);

        let harness = AwsArgs {
            pace: Some(Pace::Local),
            ..fips
        };
        let stack = Stack::connect(testing::spec(), &harness, progress())
            .await
            .unwrap();
        assert_eq!(stack.pace, Pace::Local);
    }

    /// `--region` in another partition is refused before any call, as stack.yaml's.
    #[tokio::test]
    async fn a_region_of_another_partition_is_refused_before_any_call() {
        for region in ["us-gov-west-1", "cn-north-1"] {
            let aws = AwsArgs {
                region: Some(region.into()),
                ..AwsArgs::default()
            };
            let err = Stack::connect(testing::spec(), &aws, Progress::with_live_lines(false))
                .await
                .err()
                .expect("refused");
            assert!(err.to_string().contains("partition"), "{err}");
        }
    }
}
