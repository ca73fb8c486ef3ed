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
/// `role`. Returns whether it exists: only with `plan` can it not. A bucket of that name
/// is the stack's only in `account` (`ExpectedBucketOwner`: another account's, however
/// open its policy, answers 403), so nothing is written into another account's bucket.
pub async fn ensure(stack: &Stack, account: &str, bucket: &str, role: &str) -> Result<bool> {
    let s3 = &stack.clients.s3;
    match s3
        .head_bucket()
        .bucket(bucket)
        .expected_bucket_owner(account)
        .send()
        .await
    {
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

/// The bucket of `account`, if it exists, with everything in it; `blocked_by` what must
/// go first (whatever still writes into it). Every call names the expected owner
/// (`ExpectedBucketOwner`: S3 answers 403 when another account owns the bucket), so a
/// bucket of the same name in another account is never emptied or deleted. A 403 here
/// is left for the delete to report, with the other resources deleted meanwhile.
pub async fn deletable(
    stack: &Stack,
    account: &str,
    bucket: &str,
    blocked_by: Vec<String>,
) -> Result<Option<Box<dyn Deletable>>> {
    let head = stack
        .clients
        .s3
        .head_bucket()
        .bucket(bucket)
        .expected_bucket_owner(account)
        .send()
        .await;
    let unreadable = match head {
        Ok(_) => None,
        Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => return Ok(None),
        Err(err)
            if err
                .raw_response()
                .is_some_and(|r| r.status().as_u16() == 403) =>
        {
            Some(format!(
                "HeadBucket {bucket} answered 403: another account owns a bucket of this name \
                 (then it is not the stack's, and is left alone), or these credentials may not \
                 list it (s3:ListBucket, `policy`)"
            ))
        }
        Err(err) => return Err(crate::aws::explain(&format!("HeadBucket {bucket}"), err)),
    };
    Ok(Some(Box::new(Bucket {
        s3: stack.clients.s3.clone(),
        name: bucket.to_owned(),
        owner: account.to_owned(),
        unreadable,
        blocked_by,
    })))
}

struct Bucket {
    s3: aws_sdk_s3::Client,
    name: String,
    /// The account the bucket must belong to.
    owner: String,
    /// Why the bucket could not be read, if it could not.
    unreadable: Option<String>,
    blocked_by: Vec<String>,
}

impl Bucket {
    /// Deletes `objects` (a page of ListObjectVersions, at most 1 000 versions and delete
    /// markers: as many as DeleteObjects takes) in one call. The access-log bucket holds
    /// a file per load balancer node every 5 minutes for 90 days, tens of thousands of
    /// objects: one call each kept `destroy` busy for many minutes.
    async fn delete_versions(&self, objects: Vec<ObjectIdentifier>) -> Result<(), DeleteError> {
        if objects.is_empty() {
            return Ok(());
        }
        let call = format!(
            "DeleteObjects s3://{} ({} versions)",
            self.name,
            objects.len()
        );
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|err| DeleteError::Failed(err.into()))?;
        let deleted = self
            .s3
            .delete_objects()
            .bucket(&self.name)
            .expected_bucket_owner(&self.owner)
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

    /// Deletes every version and delete marker, then the bucket. S3 deletes a bucket only
    /// once "all objects (including all object versions and delete markers)" are gone
    /// (API_DeleteBucket), and a plain delete in a versioned bucket adds a marker instead:
    /// the stack never turns versioning on, but a console, an organization's baseline or
    /// a Config remediation may have. Without versioning each object is listed once, as
    /// version `null`.
    async fn empty_and_delete(&self) -> Result<(), DeleteError> {
        if let Some(why) = &self.unreadable {
            return Err(DeleteError::Failed(anyhow::anyhow!("{why}")));
        }
        // ListObjectVersions has no paginator: its pages follow two markers.
        let (mut key_marker, mut version_id_marker) = (None, None);
        loop {
            let listed = self
                .s3
                .list_object_versions()
                .bucket(&self.name)
                .expected_bucket_owner(&self.owner)
                .set_key_marker(key_marker)
                .set_version_id_marker(version_id_marker)
                .send()
                .await;
            let page = match listed {
                Ok(page) => page,
                Err(err) => {
                    let call = format!("ListObjectVersions {}", self.name);
                    return delete_outcome(Err::<(), _>(err), &call, &["NoSuchBucket"]);
                }
            };
            let versions = page
                .versions()
                .iter()
                .map(|version| (version.key(), version.version_id()));
            let markers = page
                .delete_markers()
                .iter()
                .map(|marker| (marker.key(), marker.version_id()));
            let identifiers = versions
                .chain(markers)
                .filter_map(|(key, version)| {
                    Some(
                        ObjectIdentifier::builder()
                            .key(key?)
                            .set_version_id(version.map(str::to_owned))
                            .build(),
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|err| DeleteError::Failed(err.into()))?;
            self.delete_versions(identifiers).await?;
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker;
            version_id_marker = page.next_version_id_marker;
        }
        let result = self
            .s3
            .delete_bucket()
            .bucket(&self.name)
            .expected_bucket_owner(&self.owner)
            .send()
            .await;
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

        let exists = ensure(&stack, "1", "chat-artifacts-1-us-east-1", "artifacts")
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

    /// A bucket of the stack's name that another account owns answers the stack's
    /// HeadBucket, which names the expected owner, with 403 (API_HeadBucket,
    /// `ExpectedBucketOwner`). It is never emptied or deleted: its delete fails saying so,
    /// and `destroy` deletes all else meanwhile (a 403 ended it before anything went).
    #[tokio::test]
    async fn a_bucket_another_account_owns_is_never_emptied() {
        let head = mock!(Client::head_bucket)
            .match_requests(|req| req.expected_bucket_owner() == Some("123456789012"))
            .then_http_response(|| {
                aws_smithy_runtime_api::http::Response::new(
                    aws_smithy_runtime_api::http::StatusCode::try_from(403).unwrap(),
                    aws_smithy_types::body::SdkBody::empty(),
                )
            });
        let list = mock!(Client::list_object_versions)
            .then_error(|| panic!("another account's bucket was listed"));
        let mut clients = testing::clients();
        clients.s3 = mock_client!(aws_sdk_s3, RuleMode::MatchAny, [&head, &list]);
        let stack = testing::stack(clients);

        let bucket = deletable(
            &stack,
            "123456789012",
            "chat-artifacts-123456789012-us-east-1",
            Vec::new(),
        )
        .await
        .expect("the rest of destroy goes on")
        .expect("the bucket is named");
        let err = match bucket.delete().await {
            Err(DeleteError::Failed(err)) => err.to_string(),
            other => panic!("{:?}", other.err().map(|e| format!("{e:?}"))),
        };
        assert!(
            err.contains("another account owns a bucket of this name"),
            "{err}"
        );
        assert_eq!(list.num_calls(), 0);
    }
}
