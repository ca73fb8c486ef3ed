//! What every LocalStack integration test needs: an `SdkConfig` aimed at the LocalStack
//! that `scripts/localstack.sh` runs on loopback, with throwaway credentials, after
//! checking that it answers. Tests never reach past loopback.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig};
use aws_sdk_sts::config::Credentials;

const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:4566";
const HOW_TO_START: &str = "start it with `scripts/localstack.sh start` \
     (or run everything with `scripts/test.sh`)";

/// The LocalStack endpoint: `AWS_ENDPOINT_URL` when it is set, else the script's default.
/// Anything but loopback is refused, so a stray environment can never aim a test at AWS.
pub fn endpoint() -> String {
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| DEFAULT_ENDPOINT.into());
    let host = endpoint
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split([':', '/']).next())
        .unwrap_or_default();
    assert!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "AWS_ENDPOINT_URL={endpoint} is not on loopback: the tests run only against a local LocalStack"
    );
    endpoint
}

/// An `SdkConfig` for LocalStack, once it has answered both a core API (STS) and one that
/// only the project's LocalStack extension provides (ELBv2).
pub async fn localstack() -> SdkConfig {
    let endpoint = endpoint();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "localstack-tests",
        ))
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .load()
        .await;
    if let Err(err) = aws_sdk_sts::Client::new(&config)
        .get_caller_identity()
        .send()
        .await
    {
        panic!(
            "LocalStack does not answer on {endpoint} ({}): {HOW_TO_START}",
            aws_sdk_sts::error::DisplayErrorContext(err)
        );
    }
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&config);
    if let Err(err) = elbv2.describe_load_balancers().send().await {
        panic!(
            "LocalStack on {endpoint} answers but not for ELBv2, so it runs without the project's \
             extension ({}): stop it and {HOW_TO_START}",
            aws_sdk_sts::error::DisplayErrorContext(err)
        );
    }
    config
}

/// A suffix that keeps the names of one test run apart from any other's in the same
/// LocalStack.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", std::process::id(), nanos % 0xffff_ffff)
}
