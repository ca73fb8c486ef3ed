//! The artifact: the chat-server binary ([`crate::binary`]) where the instances get it.
//! Owns what is in the stack's artifact bucket ([`crate::bucket`]): the upload (once per
//! content hash), the pruning of builds nothing runs any more, and the bucket policy that
//! lets instances download it with no credentials at all: only through the stack's own
//! S3 gateway endpoint, and only over TLS.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ServerSideEncryption;

use crate::aws::Call;
use crate::binary::Binary;
use crate::bucket;
use crate::engine::{Action, Deletable};
use crate::stack::Stack;

/// The hash that names an artifact, owned by [`crate::binary`], which hashes what it reads.
pub use crate::binary::sha256_hex;

/// Where the binaries are in the bucket, each under its SHA-256.
const BINARIES: &str = "chat-server/";

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
        .run(bucket::ensure(stack, account, &bucket, "artifacts"), |_| {
            String::new()
        })
        .await?;
    let key = format!("{BINARIES}{}", binary.sha256);
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
                "Resource": format!("arn:aws:s3:::{bucket}/{BINARIES}*"),
                "Condition": {"StringEquals": {"aws:SourceVpce": endpoint_id}}
            },
            bucket::tls_only(bucket)
        ]
    })
}

/// Puts [`bucket_policy`] on the artifact's bucket unless it is there already.
pub async fn ensure_access(stack: &Stack, artifact: &Artifact, endpoint_id: &str) -> Result<()> {
    bucket::ensure_policy(
        stack,
        &artifact.bucket,
        !artifact.planned,
        &bucket_policy(&artifact.bucket, endpoint_id),
        &format!("GetObject only through {endpoint_id}, TLS only"),
    )
    .await
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

/// The binaries in the bucket that no one needs any more: every build uploads one, and
/// without this the bucket grows for ever. `keep` are the SHA-256s still wanted: the one
/// `up` deploys and those the instances still run (an instance that boots again fetches
/// its binary anew).
pub async fn prune(stack: &Stack, artifact: &Artifact, keep: &BTreeSet<String>) -> Result<()> {
    if artifact.planned {
        return Ok(());
    }
    let s3 = &stack.clients.s3;
    let bucket = &artifact.bucket;
    let pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(BINARIES)
        .into_paginator()
        .send()
        .collect::<Vec<_>>()
        .await;
    let mut unused = Vec::new();
    for page in pages {
        let page = page.call(format!("ListObjectsV2 {bucket}"))?;
        unused.extend(
            page.contents()
                .iter()
                .filter_map(|object| object.key())
                .filter(|key| {
                    key.strip_prefix(BINARIES)
                        .is_some_and(|sha| sha != artifact.sha256 && !keep.contains(sha))
                })
                .map(str::to_owned),
        );
    }
    for key in unused {
        let resource = format!("object s3://{bucket}/{key}");
        if stack.make(Action::Delete, resource, "a build no instance runs") {
            s3.delete_object()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .call(format!("DeleteObject s3://{bucket}/{key}"))?;
        }
    }
    Ok(())
}

/// The stack's bucket, if it exists, with everything in it.
pub async fn deletables(stack: &Stack, account: &str) -> Result<Vec<Box<dyn Deletable>>> {
    let bucket = stack.names.bucket(account, &stack.region);
    Ok(bucket::deletable(stack, account, &bucket, Vec::new())
        .await?
        .into_iter()
        .collect())
}
