//! The load balancer's access logs (`load_balancer.access_logs`): a bucket of the stack's
//! ([`crate::bucket`]) into which only Elastic Load Balancing's log delivery may write,
//! under `AWSLogs/<account>/`, whose objects expire after `load_balancer.access_logs_days`;
//! and the load balancer attributes that send the logs there, or stop sending them.
//!
//! How the bucket policy names the writer depends on the region
//! (<https://docs.aws.amazon.com/elasticloadbalancing/latest/application/enable-access-logging.html>):
//! regions opened before August 2022 deliver from an Elastic Load Balancing account of
//! their own, the newer ones through the log delivery service principal. Access logs
//! support SSE-S3 only, which is what the stack's buckets use.

use anyhow::Result;
use serde_json::{Value, json};

use crate::bucket;
use crate::engine::Deletable;
use crate::stack::Stack;

/// The Elastic Load Balancing account that delivers a region's access logs, for the
/// commercial regions opened before August 2022 (the page above, "Bucket permissions").
const DELIVERY_ACCOUNTS: [(&str, &str); 22] = [
    ("us-east-1", "127311923021"),
    ("us-east-2", "033677994240"),
    ("us-west-1", "027434742980"),
    ("us-west-2", "797873946194"),
    ("af-south-1", "098369216593"),
    ("ap-east-1", "754344448648"),
    ("ap-southeast-3", "589379963580"),
    ("ap-south-1", "718504428378"),
    ("ap-northeast-3", "383597477331"),
    ("ap-northeast-2", "600734575887"),
    ("ap-southeast-1", "114774131450"),
    ("ap-southeast-2", "783225319266"),
    ("ap-northeast-1", "582318560864"),
    ("ca-central-1", "985666609251"),
    ("eu-central-1", "054676820928"),
    ("eu-west-1", "156460612806"),
    ("eu-west-2", "652711504416"),
    ("eu-south-1", "635631232127"),
    ("eu-west-3", "009996457667"),
    ("eu-north-1", "897822967062"),
    ("me-south-1", "076674570225"),
    ("sa-east-1", "507241528517"),
];

/// The writer of a region's access logs, as a bucket policy's `Principal`.
fn delivery_principal(region: &str) -> Value {
    match DELIVERY_ACCOUNTS.iter().find(|(name, _)| *name == region) {
        Some((_, account)) => json!({ "AWS": format!("arn:aws:iam::{account}:root") }),
        None => json!({ "Service": "logdelivery.elasticloadbalancing.amazonaws.com" }),
    }
}

/// Only log delivery writes, only the account's own logs, only over TLS.
pub fn bucket_policy(bucket: &str, account: &str, region: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "LoadBalancerLogDelivery",
                "Effect": "Allow",
                "Principal": delivery_principal(region),
                "Action": "s3:PutObject",
                "Resource": format!("arn:aws:s3:::{bucket}/AWSLogs/{account}/*"),
            },
            bucket::tls_only(bucket)
        ]
    })
}

/// The logs bucket, ready for the load balancer to write to: `None` when access logs are
/// off (a bucket an earlier `up` made keeps its logs until `destroy`).
pub async fn ensure(stack: &Stack, account: &str) -> Result<Option<String>> {
    let Some(logs) = stack.spec.load_balancer.access_logs else {
        return Ok(None);
    };
    let bucket = stack.names.logs_bucket(account, &stack.region);
    let step = stack.progress.step(format!("bucket {bucket}"));
    let exists = step
        .run(bucket::ensure(stack, account, &bucket, "alb-logs"), |_| {
            "access logs".to_owned()
        })
        .await?;
    bucket::ensure_expiry(stack, &bucket, exists, logs.days).await?;
    let policy = bucket_policy(&bucket, account, &stack.region);
    bucket::ensure_policy(
        stack,
        &bucket,
        exists,
        &policy,
        "log delivery only, TLS only",
    )
    .await?;
    Ok(Some(bucket))
}

/// The load balancer attributes that send its access logs to `bucket`, or turn them off.
pub fn attributes(bucket: Option<&str>) -> Vec<(&'static str, String)> {
    match bucket {
        Some(bucket) => vec![
            ("access_logs.s3.enabled", "true".to_owned()),
            ("access_logs.s3.bucket", bucket.to_owned()),
        ],
        None => vec![("access_logs.s3.enabled", "false".to_owned())],
    }
}

/// The logs bucket, once the load balancer (`load_balancer_key`), which writes into it,
/// is gone.
pub async fn deletables(
    stack: &Stack,
    account: &str,
    load_balancer_key: Option<String>,
) -> Result<Vec<Box<dyn Deletable>>> {
    let bucket = stack.names.logs_bucket(account, &stack.region);
    let blocked_by = load_balancer_key.into_iter().collect();
    Ok(bucket::deletable(stack, account, &bucket, blocked_by)
        .await?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_regions_deliver_from_their_account_newer_ones_through_the_service() {
        let old = bucket_policy("b", "123456789012", "eu-west-1");
        assert_eq!(
            old["Statement"][0]["Principal"],
            json!({"AWS": "arn:aws:iam::156460612806:root"})
        );
        assert_eq!(
            old["Statement"][0]["Resource"],
            "arn:aws:s3:::b/AWSLogs/123456789012/*"
        );
        let new = bucket_policy("b", "123456789012", "ap-southeast-5");
        assert_eq!(
            new["Statement"][0]["Principal"],
            json!({"Service": "logdelivery.elasticloadbalancing.amazonaws.com"})
        );
    }
}
