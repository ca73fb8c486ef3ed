//! Creates that AWS does not make idempotent. CreateVpc, CreateInternetGateway and
//! CreateSecurityGroup take no client token (EC2's idempotency page lists the calls that
//! do: <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>), so a
//! request whose answer is lost (a timeout, a cut connection, a 5xx) may have made the
//! resource all the same. Sent again, as the SDK's standard retries would, it makes a
//! second one (the next `up` would stop at two VPCs carrying the stack's tags) or is
//! refused (a group's name is its VPC's once). Here the SDK retries only throttling,
//! which AWS answers before doing anything; after a failure that is not AWS's refusal,
//! the stack's tags are looked up until EC2 lists what the lost request made, and only
//! when nothing appears is the create sent again.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use aws_runtime::retries::classifiers::THROTTLING_ERRORS;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

use crate::aws::{ForbidRetry, explain};
use crate::engine::{Backoff, Pace};

/// How often a create whose answer was lost is sent again, when nothing it could have made
/// shows up.
const ATTEMPTS: usize = 3;

/// How long EC2's describe calls may take to list a resource just made, by its tags:
/// "typically within seconds", retried "up to five minutes" at worst
/// (<https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>).
const LISTED_WITHIN: Duration = Duration::from_secs(120);

/// The EC2 client configuration that sends the call of error `E` with the SDK retrying
/// only throttling; anything else is [`create_unrepeated`]'s to judge.
pub(super) fn only_throttling_retried<E>() -> aws_sdk_ec2::config::Builder
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    aws_sdk_ec2::config::Builder::default().retry_classifier(ForbidRetry::<E>::new(
        "a create without a client token is retried only when throttled",
        |code| !code.is_some_and(|code| THROTTLING_ERRORS.contains(&code)),
    ))
}

/// What [`create_unrepeated`] ends with: the create's answer, or what a lost create made.
pub(super) enum Made<O, F> {
    Created(O),
    Found(F),
}

/// Sends `create` (built with [`only_throttling_retried`]); when its answer is lost,
/// polls `find` (the stack's resource of that role, by its tags) before sending it again.
pub(super) async fn create_unrepeated<O, F, E, CreateFut, FindFut>(
    pace: Pace,
    call: &str,
    mut create: impl FnMut() -> CreateFut,
    mut find: impl FnMut() -> FindFut,
) -> Result<Made<O, F>>
where
    CreateFut: Future<Output = Result<O, SdkError<E, HttpResponse>>>,
    FindFut: Future<Output = Result<Option<F>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut attempt = 1;
    loop {
        let err = match create().await {
            Ok(output) => return Ok(Made::Created(output)),
            Err(err) => err,
        };
        if !answer_lost(&err) || attempt == ATTEMPTS {
            return Err(explain(call, err));
        }
        attempt += 1;
        // Tokio's clock, so that tests can pause it.
        let started = tokio::time::Instant::now();
        let mut backoff = Backoff::new(pace);
        while started.elapsed() < pace.limit(LISTED_WITHIN) {
            if let Some(found) = find().await? {
                return Ok(Made::Found(found));
            }
            backoff.pause().await;
        }
    }
}

/// Whether AWS may have made what a failed request asked for: it did not answer, or
/// answered with a server error. A refusal (4xx) made nothing.
fn answer_lost<E>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => service.raw().status().is_server_error(),
        _ => false,
    }
}
