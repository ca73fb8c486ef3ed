//! The artifact: the chat-server binary ([`crate::binary`]) where the instances get it.
//! Owns the stack's private, encrypted S3 bucket, the upload (once per content hash), and the
//! bucket policy that lets instances download it with no credentials at all: only
//! through the stack's own S3 gateway endpoint, and only over TLS.

use anyhow::{Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketLocationConstraint, CreateBucketConfiguration, PublicAccessBlockConfiguration,
    ServerSideEncryption, ServerSideEncryptionByDefault, ServerSideEncryptionConfiguration,
    ServerSideEncryptionRule, Tag, Tagging,
};

use crate::aws::{Call, delete_outcome};
use crate::binary::Binary;
use crate::engine::{Action, Deletable, DeleteError, DeleteFuture};
use crate::stack::Stack;

/// The hash that names an artifact, owned by [`crate::binary`], which hashes what it reads.
pub use crate::binary::sha256_hex;

/// Where the binary is, for the instances.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub bucket: String,
    pub key: String,
    pub sha256: String,
    /// Only with `plan`: the bucket does not exist yet.
    pub planned: bool,
}

/// Ensures the stack's bucket exists, private and encrypted, and holds `binary` under a
/// key containing its SHA-256.
pub async fn ensure(stack: &Stack, account: &str, binary: &Binary) -> Result<Artifact> {
    let bucket = stack.names.bucket(account, &stack.region);
    let step = stack.progress.step(format!("bucket {bucket}"));
    let exists = step
        .run(ensure_bucket(stack, &bucket), |_| String::new())
        .await?;
    let key = format!("chat-server/{}", binary.sha256);
    let step = stack
        .progress
        .step(format!("artifact chat-server {}", &binary.sha256[..12]));
    step.run(upload_once(stack, &bucket, exists, &key, binary), |_| {
        format!("s3://{bucket}/{key}")
    })
    .await?;
    Ok(Artifact {
        bucket,
        key,
        sha256: binary.sha256.clone(),
        planned: !exists,
    })
}

/// The bucket policy: anyone may `GetObject` the artifacts, but only through the stack's
/// S3 gateway endpoint (`aws:SourceVpce`), so only the stack's instances can, with no
/// credentials; and nothing at all reaches the bucket without TLS. A policy pinned to a
/// VPC endpoint does not count as public, so Block Public Access stays on
/// (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/access-control-block-public-access.html#access-control-block-public-access-policy-status>).
pub fn bucket_policy(bucket: &str, endpoint_id: &str) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "InstancesReadArtifactsThroughTheStackEndpoint",
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": format!("arn:aws:s3:::{bucket}/chat-server/*"),
                "Condition": {"StringEquals": {"aws:SourceVpce": endpoint_id}}
            },
            {
                "Sid": "TlsOnly",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}}
            }
        ]
    })
}

/// Puts [`bucket_policy`] on the artifact's bucket unless it is there already.
pub async fn ensure_access(stack: &Stack, artifact: &Artifact, endpoint_id: &str) -> Result<()> {
    let bucket = &artifact.bucket;
    let step = stack.progress.step(format!("bucket policy {bucket}"));
    let work = async {
        let s3 = &stack.clients.s3;
        let wanted = bucket_policy(bucket, endpoint_id);
        let resource = format!("bucket policy {bucket}");
        let reason = format!("GetObject only through {endpoint_id}, TLS only");
        if artifact.planned {
            stack.make(Action::Create, resource, reason);
            return Ok(());
        }
        let current = match s3.get_bucket_policy().bucket(bucket).send().await {
            Ok(out) => out
                .policy
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok()),
            Err(err) if crate::aws::error_code(&err) == Some("NoSuchBucketPolicy") => None,
            Err(err) => {
                return Err(crate::aws::explain(
                    &format!("GetBucketPolicy {bucket}"),
                    err,
                ));
            }
        };
        let action = match current {
            Some(current) if current == wanted => return Ok(()),
            Some(_) => Action::Update,
            None => Action::Create,
        };
        if !stack.make(action, resource, reason) {
            return Ok(());
        }
        step.set("writing");
        s3.put_bucket_policy()
            .bucket(bucket)
            .policy(wanted.to_string())
            .send()
            .await
            .call(format!("PutBucketPolicy {bucket}"))?;
        Ok(())
    };
    step.run(work, |_| {
        format!("GetObject only through {endpoint_id}, TLS only")
    })
    .await
}

/// Returns whether the bucket exists: only with `plan` can it not.
async fn ensure_bucket(stack: &Stack, bucket: &str) -> Result<bool> {
    let s3 = &stack.clients.s3;
    match s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => {}
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {
            let reason = "private, encrypted (SSE-S3), tagged";
            if !stack.make(Action::Create, format!("bucket {bucket}"), reason) {
                return Ok(false);
            }
            let mut create = s3.create_bucket().bucket(bucket);
            // us-east-1 is the one region that must not be named as a location constraint.
            if stack.region != "us-east-1" {
                create = create.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(stack.region.as_str()))
                        .build(),
                );
            }
            create.send().await.call(format!("CreateBucket {bucket}"))?;
        }
        Err(err) => {
            return Err(crate::aws::explain(&format!("HeadBucket {bucket}"), err))
                .context("the bucket name may belong to another account: bucket names are global");
        }
    }
    ensure_private(stack, bucket).await?;
    ensure_encrypted(stack, bucket).await?;
    ensure_tagged(stack, bucket).await?;
    Ok(true)
}

async fn ensure_private(stack: &Stack, bucket: &str) -> Result<()> {
    let s3 = &stack.clients.s3;
    let blocked = s3
        .get_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .ok()
        .and_then(|out| out.public_access_block_configuration)
        .is_some_and(|config| {
            [
                config.block_public_acls,
                config.ignore_public_acls,
                config.block_public_policy,
                config.restrict_public_buckets,
            ]
            .iter()
            .all(|flag| *flag == Some(true))
        });
    let change = || {
        stack.make(
            Action::Update,
            format!("bucket {bucket}"),
            "block every form of public access",
        )
    };
    if !blocked && change() {
        s3.put_public_access_block()
            .bucket(bucket)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build(),
            )
            .send()
            .await
            .call(format!("PutPublicAccessBlock {bucket}"))?;
    }
    Ok(())
}

async fn ensure_encrypted(stack: &Stack, bucket: &str) -> Result<()> {
    let s3 = &stack.clients.s3;
    let encrypted = s3
        .get_bucket_encryption()
        .bucket(bucket)
        .send()
        .await
        .ok()
        .and_then(|out| out.server_side_encryption_configuration)
        .is_some_and(|config| {
            config
                .rules()
                .iter()
                .any(|rule| rule.apply_server_side_encryption_by_default().is_some())
        });
    let change = || {
        stack.make(
            Action::Update,
            format!("bucket {bucket}"),
            "encrypt by default (SSE-S3)",
        )
    };
    if !encrypted && change() {
        s3.put_bucket_encryption()
            .bucket(bucket)
            .server_side_encryption_configuration(
                ServerSideEncryptionConfiguration::builder()
                    .rules(
                        ServerSideEncryptionRule::builder()
                            .apply_server_side_encryption_by_default(
                                ServerSideEncryptionByDefault::builder()
                                    .sse_algorithm(ServerSideEncryption::Aes256)
                                    .build()
                                    .context("encryption rule")?,
                            )
                            .build(),
                    )
                    .build()
                    .context("encryption configuration")?,
            )
            .send()
            .await
            .call(format!("PutBucketEncryption {bucket}"))?;
    }
    Ok(())
}

async fn ensure_tagged(stack: &Stack, bucket: &str) -> Result<()> {
    let s3 = &stack.clients.s3;
    let wanted = stack.names.tags("artifacts");
    let current: Vec<(String, String)> = s3
        .get_bucket_tagging()
        .bucket(bucket)
        .send()
        .await
        .map(|out| {
            out.tag_set()
                .iter()
                .map(|tag| (tag.key().to_owned(), tag.value().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    if wanted.iter().all(|tag| current.contains(tag))
        || !stack.make(
            Action::Update,
            format!("bucket {bucket}"),
            "tag it as the stack's",
        )
    {
        return Ok(());
    }
    let tags = wanted
        .into_iter()
        .map(|(key, value)| Tag::builder().key(key).value(value).build())
        .collect::<Result<Vec<_>, _>>()
        .context("bucket tags")?;
    s3.put_bucket_tagging()
        .bucket(bucket)
        .tagging(
            Tagging::builder()
                .set_tag_set(Some(tags))
                .build()
                .context("bucket tagging")?,
        )
        .send()
        .await
        .call(format!("PutBucketTagging {bucket}"))?;
    Ok(())
}

async fn upload_once(
    stack: &Stack,
    bucket: &str,
    bucket_exists: bool,
    key: &str,
    binary: &Binary,
) -> Result<()> {
    let s3 = &stack.clients.s3;
    let exists = bucket_exists
        && s3
            .head_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .is_ok();
    let reason = format!("upload {}", binary.path.display());
    if exists
        || !stack.make(
            Action::Create,
            format!("object s3://{bucket}/{key}"),
            reason,
        )
    {
        return Ok(());
    }
    let body = ByteStream::from_path(&binary.path)
        .await
        .with_context(|| format!("cannot read {}", binary.path.display()))?;
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body)
        .server_side_encryption(ServerSideEncryption::Aes256)
        .send()
        .await
        .call(format!("PutObject s3://{bucket}/{key}"))?;
    Ok(())
}

/// The stack's bucket, if it exists, with everything in it.
pub async fn deletables(stack: &Stack, account: &str) -> Result<Vec<Box<dyn Deletable>>> {
    let bucket = stack.names.bucket(account, &stack.region);
    match stack.clients.s3.head_bucket().bucket(&bucket).send().await {
        Ok(_) => Ok(vec![Box::new(Bucket {
            s3: stack.clients.s3.clone(),
            name: bucket,
        })]),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(vec![]),
        Err(err) => Err(crate::aws::explain(&format!("HeadBucket {bucket}"), err)),
    }
}

struct Bucket {
    s3: aws_sdk_s3::Client,
    name: String,
}

impl Bucket {
    async fn empty_and_delete(&self) -> Result<(), DeleteError> {
        let pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.name)
            .into_paginator()
            .send()
            .collect::<Vec<_>>()
            .await;
        for page in pages {
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    let call = format!("ListObjectsV2 {}", self.name);
                    return delete_outcome(Err::<(), _>(err), &call, &["NoSuchBucket"]);
                }
            };
            for key in page.contents().iter().filter_map(|object| object.key()) {
                let result = self
                    .s3
                    .delete_object()
                    .bucket(&self.name)
                    .key(key)
                    .send()
                    .await;
                let call = format!("DeleteObject s3://{}/{key}", self.name);
                delete_outcome(result, &call, &["NoSuchKey"])?;
            }
        }
        let result = self.s3.delete_bucket().bucket(&self.name).send().await;
        delete_outcome(
            result,
            &format!("DeleteBucket {}", self.name),
            &["NoSuchBucket"],
        )
    }
}

impl Deletable for Bucket {
    fn key(&self) -> String {
        format!("s3-bucket:{}", self.name)
    }

    fn label(&self) -> String {
        format!("bucket {}", self.name)
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(self.empty_and_delete())
    }
}
