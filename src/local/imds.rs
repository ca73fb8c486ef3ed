//! An IMDSv2 emulator for one instance booted here: the token call, the instance's id,
//! its tags read live from LocalStack (the Redis endpoint tag mapped to the local Redis),
//! and its Auto Scaling target lifecycle state.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};

use crate::artifact::sha256_hex;
use crate::aws::Call;
use crate::names::REDIS_ENDPOINT_TAG;

/// An IMDSv2 emulator for one instance on a loopback port; stops when dropped.
pub struct Imds {
    pub url: String,
    server: tokio::task::JoinHandle<()>,
}

struct ImdsState {
    ec2: aws_sdk_ec2::Client,
    autoscaling: aws_sdk_autoscaling::Client,
    instance_id: String,
    redis_address: String,
    tokens: Mutex<HashSet<String>>,
}

impl Imds {
    /// Serves `instance_id`'s metadata, its tags read from `ec2` at each request (so a
    /// tag written or removed later shows, as on EC2), the Redis endpoint tag's value
    /// replaced by `redis_address` (`127.0.0.1:<port>`).
    pub async fn start(
        ec2: aws_sdk_ec2::Client,
        autoscaling: aws_sdk_autoscaling::Client,
        instance_id: &str,
        redis_address: &str,
    ) -> Result<Imds> {
        let state = Arc::new(ImdsState {
            ec2,
            autoscaling,
            instance_id: instance_id.to_owned(),
            redis_address: redis_address.to_owned(),
            tokens: Mutex::new(HashSet::new()),
        });
        let app = Router::new()
            .route("/latest/api/token", put(issue_token))
            .route("/latest/meta-data/{*path}", get(metadata))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind a loopback port for the metadata service")?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            // Ends only when the task is aborted (on drop); accept errors are retried by axum.
            let _ = axum::serve(listener, app).await;
        });
        Ok(Imds { url, server })
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.server.abort();
    }
}

const TOKEN_TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

/// `PUT /latest/api/token`: like IMDS, a TTL header is required.
async fn issue_token(
    State(state): State<Arc<ImdsState>>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    if !headers.contains_key(TOKEN_TTL_HEADER) {
        return (
            StatusCode::BAD_REQUEST,
            format!("missing {TOKEN_TTL_HEADER}"),
        );
    }
    let mut tokens = state.tokens.lock().expect("token set lock");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let token = sha256_hex(format!("{}:{nanos}:{}", state.instance_id, tokens.len()));
    tokens.insert(token.clone());
    (StatusCode::OK, token)
}

/// `GET /latest/meta-data/...`: 401 without a token this service issued, as IMDSv2
/// answers when tokens are required; `instance-id` and `tags/instance/<key>` are served.
async fn metadata(
    State(state): State<Arc<ImdsState>>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    let token_ok = headers
        .get(TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|token| state.tokens.lock().expect("token set lock").contains(token));
    if !token_ok {
        return (StatusCode::UNAUTHORIZED, "IMDSv2 token required".into());
    }
    if path == "instance-id" {
        return (StatusCode::OK, state.instance_id.clone());
    }
    if path == "autoscaling/target-lifecycle-state" {
        return match target_lifecycle_state(&state).await {
            Ok(Some(target)) => (StatusCode::OK, target.to_owned()),
            Ok(None) => (StatusCode::NOT_FOUND, "not found".into()),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
        };
    }
    let Some(key) = path.strip_prefix("tags/instance/") else {
        return (StatusCode::NOT_FOUND, "not found".into());
    };
    match instance_tag(&state, key).await {
        Ok(Some(_)) if key == REDIS_ENDPOINT_TAG => (StatusCode::OK, state.redis_address.clone()),
        Ok(Some(value)) => (StatusCode::OK, value),
        Ok(None) => (StatusCode::NOT_FOUND, "not found".into()),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")),
    }
}

/// The state Auto Scaling is taking the instance to, as IMDS tells it
/// (<https://docs.aws.amazon.com/autoscaling/ec2/userguide/retrieving-target-lifecycle-state-through-imds.html>):
/// `Terminated` from the moment it starts terminating; None outside a group.
async fn target_lifecycle_state(state: &ImdsState) -> Result<Option<&'static str>> {
    let described = state
        .autoscaling
        .describe_auto_scaling_instances()
        .instance_ids(&state.instance_id)
        .send()
        .await
        .call(format!(
            "DescribeAutoScalingInstances {}",
            state.instance_id
        ))?;
    Ok(described.auto_scaling_instances().first().map(|instance| {
        match instance.lifecycle_state().unwrap_or_default() {
            current if current.starts_with("Terminat") => "Terminated",
            current if current.starts_with("Detach") => "Detached",
            current if current.contains("Standby") => "Standby",
            _ => "InService",
        }
    }))
}

async fn instance_tag(state: &ImdsState, key: &str) -> Result<Option<String>> {
    let described = state
        .ec2
        .describe_instances()
        .instance_ids(&state.instance_id)
        .send()
        .await
        .call(format!("DescribeInstances {}", state.instance_id))?;
    Ok(described
        .reservations()
        .iter()
        .flat_map(|reservation| reservation.instances())
        .flat_map(|instance| instance.tags())
        .find(|tag| tag.key() == Some(key))
        .and_then(|tag| tag.value().map(str::to_owned)))
}

#[cfg(test)]
mod tests {
    use aws_sdk_autoscaling::operation::describe_auto_scaling_instances::DescribeAutoScalingInstancesOutput;
    use aws_sdk_autoscaling::types::AutoScalingInstanceDetails;
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::types::{Instance, Reservation, Tag};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// One HTTP/1.0 exchange with the emulator: status and body.
    async fn request(
        imds: &Imds,
        method: &str,
        path: &str,
        header: Option<(&str, &str)>,
    ) -> (u16, String) {
        let addr = imds.url.strip_prefix("http://").unwrap();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
        if let Some((name, value)) = header {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn the_metadata_service_wants_a_token_and_maps_the_redis_tag_to_the_local_redis() {
        let described = mock!(aws_sdk_ec2::Client::describe_instances).then_output(|| {
            let tag = |key: &str, value: &str| Tag::builder().key(key).value(value).build();
            DescribeInstancesOutput::builder()
                .reservations(
                    Reservation::builder()
                        .instances(
                            Instance::builder()
                                .instance_id("i-1")
                                .tags(tag(
                                    REDIS_ENDPOINT_TAG,
                                    "master.chat-redis.use1.cache.amazonaws.com:6379",
                                ))
                                .tags(tag("Name", "chat-instance-0"))
                                .build(),
                        )
                        .build(),
                )
                .build()
        });
        let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&described]);
        let terminating = mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_instances)
            .then_output(|| {
                DescribeAutoScalingInstancesOutput::builder()
                    .auto_scaling_instances(
                        AutoScalingInstanceDetails::builder()
                            .instance_id("i-1")
                            .lifecycle_state("Terminating:Wait")
                            .build(),
                    )
                    .build()
            });
        let autoscaling = mock_client!(aws_sdk_autoscaling, RuleMode::MatchAny, [&terminating]);
        let imds = Imds::start(ec2, autoscaling, "i-1", "127.0.0.1:7000")
            .await
            .unwrap();

        assert_eq!(
            request(&imds, "GET", "/latest/meta-data/instance-id", None)
                .await
                .0,
            401
        );
        assert_eq!(
            request(&imds, "PUT", "/latest/api/token", None).await.0,
            400,
            "a TTL is required"
        );
        let (status, token) = request(
            &imds,
            "PUT",
            "/latest/api/token",
            Some((TOKEN_TTL_HEADER, "300")),
        )
        .await;
        assert_eq!(status, 200);
        let with_token = Some((TOKEN_HEADER, token.as_str()));
        assert_eq!(
            request(&imds, "GET", "/latest/meta-data/instance-id", with_token).await,
            (200, "i-1".to_owned())
        );
        let redis_tag = format!("/latest/meta-data/tags/instance/{REDIS_ENDPOINT_TAG}");
        assert_eq!(
            request(&imds, "GET", &redis_tag, with_token).await,
            (200, "127.0.0.1:7000".to_owned())
        );
        assert_eq!(
            request(
                &imds,
                "GET",
                "/latest/meta-data/tags/instance/Name",
                with_token
            )
            .await,
            (200, "chat-instance-0".to_owned())
        );
        assert_eq!(
            request(
                &imds,
                "GET",
                "/latest/meta-data/tags/instance/absent",
                with_token
            )
            .await
            .0,
            404
        );
        // The group is terminating it: what its boot service drains the server on.
        assert_eq!(
            request(
                &imds,
                "GET",
                "/latest/meta-data/autoscaling/target-lifecycle-state",
                with_token
            )
            .await,
            (200, "Terminated".to_owned())
        );
        assert_eq!(
            request(
                &imds,
                "GET",
                "/latest/meta-data/instance-id",
                Some((TOKEN_HEADER, "forged"))
            )
            .await
            .0,
            401
        );
    }
}
