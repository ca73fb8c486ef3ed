//! The stack's S3 buckets (the artifact's, the load balancer's access logs'): each found
//! by its name, private (every Block Public Access setting on), encrypted by default
//! (SSE-S3), tagged as the stack's, with the policy and the expiry its owner gives it;
//! emptied and deleted with the stack. What goes into a bucket is its owner's:
//! [`crate::artifact`], [`crate::load_balancer`].

use anyhow::{Context, Result};
use aws_sdk_s3::operation::create_bucket::CreateBucketError;
use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration, Delete,
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter, ObjectIdentifier,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tag, Tagging,
};
use serde_json::Value;

use crate::aws::{Call, S3_NEW_BUCKET, delete_outcome, made, once_known};
use crate::engine::{Action, Deletable, DeleteError, DeleteFuture};
use crate::stack::Stack;

/// Creates the bucket when missing and makes it private, encrypted and tagged with
/// `role`. Returns whether it exists: only with `plan` can it not.
pub async fn ensure(stack: &Stack, bucket: &str, role: &str) -> Result<bool> {
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
            // Made already by a create whose answer was lost, S3 answers the SDK's second
            // attempt so outside us-east-1 (there, with a 200): the bucket is the stack's.
            made(
                create.send().await,
                CreateBucketError::is_bucket_already_owned_by_you,
            )
            .call(format!("CreateBucket {bucket}"))?;
            // Configured once S3 knows it, as terraform-provider-aws does (S3_NEW_BUCKET).
            let call = format!("HeadBucket {bucket}");
            once_known(stack.pace, &call, &S3_NEW_BUCKET, || {
                s3.head_bucket().bucket(bucket).send()
            })
            .await?;
        }
        Err(err) => {
            return Err(crate::aws::explain(&format!("HeadBucket {bucket}"), err))
                .context("the bucket name may belong to another account: bucket names are global");
        }
    }
    ensure_private(stack, bucket).await?;
    ensure_encrypted(stack, bucket).await?;
    ensure_tagged(stack, bucket, role).await?;
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
        let put = s3
            .put_public_access_block()
            .bucket(bucket)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build(),
            );
        let call = format!("PutPublicAccessBlock {bucket}");
        once_known(stack.pace, &call, &S3_NEW_BUCKET, || put.clone().send()).await?;
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
        let put = s3
            .put_bucket_encryption()
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
            );
        let call = format!("PutBucketEncryption {bucket}");
        once_known(stack.pace, &call, &S3_NEW_BUCKET, || put.clone().send()).await?;
    }
    Ok(())
}

async fn ensure_tagged(stack: &Stack, bucket: &str, role: &str) -> Result<()> {
    let s3 = &stack.clients.s3;
    let wanted = stack.names.tags(role);
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
    let put = s3.put_bucket_tagging().bucket(bucket).tagging(
        Tagging::builder()
            .set_tag_set(Some(tags))
            .build()
            .context("bucket tagging")?,
    );
    let call = format!("PutBucketTagging {bucket}");
    once_known(stack.pace, &call, &S3_NEW_BUCKET, || put.clone().send()).await?;
    Ok(())
}

/// The statement of every bucket policy of the stack's: nothing reaches the bucket
/// without TLS.
pub fn tls_only(bucket: &str) -> Value {
    serde_json::json!({
        "Sid": "TlsOnly",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}
    })
}

/// Puts `wanted` as the bucket's policy unless it is there already; `about` says what it
/// allows. `exists` is [`ensure`]'s answer: a bucket `plan` would create gets its policy
/// with it.
pub async fn ensure_policy(
    stack: &Stack,
    bucket: &str,
    exists: bool,
    wanted: &Value,
    about: &str,
) -> Result<()> {
    let step = stack.progress.step(format!("bucket policy {bucket}"));
    let work = async {
        let s3 = &stack.clients.s3;
        let resource = format!("bucket policy {bucket}");
        if !exists {
            stack.make(Action::Create, resource, about);
            return Ok(());
        }
        let current = match s3.get_bucket_policy().bucket(bucket).send().await {
            Ok(out) => out
                .policy
                .and_then(|text| serde_json::from_str::<Value>(&text).ok()),
            Err(err) if crate::aws::error_code(&err) == Some("NoSuchBucketPolicy") => None,
            Err(err) => {
                return Err(crate::aws::explain(
                    &format!("GetBucketPolicy {bucket}"),
                    err,
                ));
            }
        };
        let action = match current {
            Some(current) if current == *wanted => return Ok(()),
            Some(_) => Action::Update,
            None => Action::Create,
        };
        if !stack.make(action, resource, about) {
            return Ok(());
        }
        step.set("writing");
        let put = s3
            .put_bucket_policy()
            .bucket(bucket)
            .policy(wanted.to_string());
        let call = format!("PutBucketPolicy {bucket}");
        once_known(stack.pace, &call, &S3_NEW_BUCKET, || put.clone().send()).await?;
        Ok(())
    };
    step.run(work, |()| about.to_owned()).await
}

/// The bucket's one lifecycle rule: every object expires `days` after it was written.
pub async fn ensure_expiry(stack: &Stack, bucket: &str, exists: bool, days: u32) -> Result<()> {
    let s3 = &stack.clients.s3;
    let resource = format!("bucket {bucket}");
    let about = format!("objects expire after {days} day(s)");
    if !exists {
        stack.make(Action::Create, format!("lifecycle of {resource}"), about);
        return Ok(());
    }
    let days = i32::try_from(days)?;
    let current = match s3
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => out
            .rules()
            .iter()
            .find(|rule| rule.id() == Some(EXPIRY_RULE))
            .and_then(|rule| {
                (rule.status() == &ExpirationStatus::Enabled)
                    .then(|| rule.expiration().and_then(LifecycleExpiration::days))
            })
            .flatten(),
        Err(err) if crate::aws::error_code(&err) == Some("NoSuchLifecycleConfiguration") => None,
        Err(err) => {
            return Err(crate::aws::explain(
                &format!("GetBucketLifecycleConfiguration {bucket}"),
                err,
            ));
        }
    };
    if current == Some(days) || !stack.make(Action::Update, resource, about) {
        return Ok(());
    }
    let rule = LifecycleRule::builder()
        .id(EXPIRY_RULE)
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("").build())
        .expiration(LifecycleExpiration::builder().days(days).build())
        .build()
        .context("lifecycle rule")?;
    let put = s3
        .put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(rule)
                .build()
                .context("lifecycle configuration")?,
        );
    let call = format!("PutBucketLifecycleConfiguration {bucket}");
    once_known(stack.pace, &call, &S3_NEW_BUCKET, || put.clone().send()).await?;
    Ok(())
}

const EXPIRY_RULE: &str = "realtime-stack-expiry";

/// The bucket, if it exists, with everything in it; `blocked_by` what must go first
/// (whatever still writes into it).
pub async fn deletable(
    stack: &Stack,
    bucket: &str,
    blocked_by: Vec<String>,
) -> Result<Option<Box<dyn Deletable>>> {
    match stack.clients.s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(Some(Box::new(Bucket {
            s3: stack.clients.s3.clone(),
            name: bucket.to_owned(),
            blocked_by,
        }))),
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(None),
        Err(err) => Err(crate::aws::explain(&format!("HeadBucket {bucket}"), err)),
    }
}

struct Bucket {
    s3: aws_sdk_s3::Client,
    name: String,
    blocked_by: Vec<String>,
}

impl Bucket {
    /// Deletes `objects` (a page of ListObjectsV2, at most 1 000: as many as DeleteObjects
    /// takes) in one call. The access-log bucket holds a file per load balancer node every
    /// 5 minutes for 90 days, tens of thousands of objects: one call each kept `destroy`
    /// busy for many minutes.
    async fn delete_objects(
        &self,
        objects: &[aws_sdk_s3::types::Object],
    ) -> Result<(), DeleteError> {
        let failed = |err: aws_sdk_s3::error::BuildError| DeleteError::Failed(err.into());
        let identifiers = objects
            .iter()
            .filter_map(|object| object.key())
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(failed)?;
        if identifiers.is_empty() {
            return Ok(());
        }
        let call = format!(
            "DeleteObjects s3://{} ({} objects)",
            self.name,
            identifiers.len()
        );
        let delete = Delete::builder()
            .set_objects(Some(identifiers))
            .quiet(true)
            .build()
            .map_err(failed)?;
        let deleted = self
            .s3
            .delete_objects()
            .bucket(&self.name)
            .delete(delete)
            .send()
            .await;
        let deleted = match deleted {
            Ok(deleted) => deleted,
            Err(err) => return delete_outcome(Err::<(), _>(err), &call, &["NoSuchBucket"]),
        };
        // Each object's failure is an entry of the answer, not an error of the call.
        match deleted.errors().first() {
            None => Ok(()),
            Some(error) => Err(DeleteError::Failed(anyhow::anyhow!(
                "{call}: {} not deleted: {} ({})",
                error.key().unwrap_or("an object"),
                error.message().unwrap_or("no message"),
                error.code().unwrap_or("no code")
            ))),
        }
    }

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
            self.delete_objects(page.contents()).await?;
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

    fn blocked_by(&self) -> Vec<String> {
        self.blocked_by.clone()
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(self.empty_and_delete())
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::Client;
    use aws_sdk_s3::error::ErrorMetadata;
    use aws_sdk_s3::operation::create_bucket::{CreateBucketError, CreateBucketOutput};
    use aws_sdk_s3::operation::get_bucket_encryption::GetBucketEncryptionError;
    use aws_sdk_s3::operation::get_bucket_tagging::GetBucketTaggingError;
    use aws_sdk_s3::operation::get_public_access_block::GetPublicAccessBlockError;
    use aws_sdk_s3::operation::head_bucket::{HeadBucketError, HeadBucketOutput};
    use aws_sdk_s3::operation::put_bucket_encryption::PutBucketEncryptionOutput;
    use aws_sdk_s3::operation::put_bucket_tagging::PutBucketTaggingOutput;
    use aws_sdk_s3::operation::put_public_access_block::{
        PutPublicAccessBlockError, PutPublicAccessBlockOutput,
    };
    use aws_sdk_s3::types::error::{BucketAlreadyOwnedByYou, NotFound};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::engine::Pace;
    use crate::stack::testing;

    fn code(code: &str) -> ErrorMetadata {
        ErrorMetadata::builder().code(code).build()
    }

    /// A bucket seconds old: S3 may not know it yet, to HeadBucket (`NotFound`) or to the
    /// calls that configure it (`NoSuchBucket`); terraform-provider-aws waits for
    /// HeadBucket after CreateBucket and retries its configuration calls for two minutes
    /// (hashicorp/terraform-provider-aws#6607). `ensure` waits the same way, and the
    /// bucket comes out private, encrypted and tagged.
    #[tokio::test(start_paused = true)]
    async fn a_new_bucket_is_configured_once_s3_knows_it() {
        let create =
            mock!(Client::create_bucket).then_output(|| CreateBucketOutput::builder().build());
        new_bucket_configured_after(create).await;
    }

    /// The SDK sends a CreateBucket whose answer was lost (a timeout, a 5xx) again, and S3
    /// answers the second with `BucketAlreadyOwnedByYou` outside us-east-1 (API_CreateBucket):
    /// the bucket the first one made is the stack's, configured as if the answer had come.
    #[tokio::test(start_paused = true)]
    async fn a_bucket_already_made_by_a_lost_create_is_configured() {
        let create = mock!(Client::create_bucket).then_error(|| {
            CreateBucketError::BucketAlreadyOwnedByYou(
                BucketAlreadyOwnedByYou::builder()
                    .meta(code("BucketAlreadyOwnedByYou"))
                    .build(),
            )
        });
        new_bucket_configured_after(create).await;
    }

    /// A missing bucket's `ensure`, with `create` answering CreateBucket.
    async fn new_bucket_configured_after(create: aws_smithy_mocks::Rule) {
        let head = mock!(Client::head_bucket)
            .sequence()
            // As the SDK reads S3's bodiless 404 to a HEAD.
            .error(|| HeadBucketError::NotFound(NotFound::builder().meta(code("NotFound")).build()))
            .times(3)
            .output(|| HeadBucketOutput::builder().build())
            .build();
        let no_block = mock!(Client::get_public_access_block).then_error(|| {
            GetPublicAccessBlockError::generic(code("NoSuchPublicAccessBlockConfiguration"))
        });
        let block = mock!(Client::put_public_access_block)
            .sequence()
            .error(|| PutPublicAccessBlockError::generic(code("NoSuchBucket")))
            .output(|| PutPublicAccessBlockOutput::builder().build())
            .build();
        let no_encryption = mock!(Client::get_bucket_encryption).then_error(|| {
            GetBucketEncryptionError::generic(code(
                "ServerSideEncryptionConfigurationNotFoundError",
            ))
        });
        let encrypt = mock!(Client::put_bucket_encryption)
            .then_output(|| PutBucketEncryptionOutput::builder().build());
        let no_tags = mock!(Client::get_bucket_tagging)
            .then_error(|| GetBucketTaggingError::generic(code("NoSuchTagSet")));
        let tag = mock!(Client::put_bucket_tagging)
            .then_output(|| PutBucketTaggingOutput::builder().build());
        let mut clients = testing::clients();
        clients.s3 = mock_client!(
            aws_sdk_s3,
            RuleMode::MatchAny,
            [
                &head,
                &create,
                &no_block,
                &block,
                &no_encryption,
                &encrypt,
                &no_tags,
                &tag
            ]
        );
        let mut stack = testing::stack(clients);
        stack.pace = Pace::Aws;

        let exists = ensure(&stack, "chat-artifacts-1-us-east-1", "artifacts")
            .await
            .expect("the bucket is made and configured");

        assert!(exists);
        assert_eq!(create.num_calls(), 1);
        // Once to find it missing, twice not known yet after its creation, then known.
        assert_eq!(head.num_calls(), 4);
        assert_eq!(block.num_calls(), 2);
        assert_eq!(encrypt.num_calls(), 1);
        assert_eq!(tag.num_calls(), 1);
    }
}
