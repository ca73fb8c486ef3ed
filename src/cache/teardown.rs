//! Deleting the stack's ElastiCache resources: the replication group once ElastiCache
//! takes it (never while still creating or changing), then its subnet group.

use anyhow::Result;

use super::{Owner, describe_group, describe_subnet_group, owner};
use crate::aws::delete_outcome;
use crate::engine::{Deletable, DeleteError, DeleteFuture};
use crate::names::{Names, STACK_TAG};
use crate::stack::Stack;

/// The stack's replication group and subnet group, the subnet group after the group.
pub async fn deletables(stack: &Stack) -> Result<Vec<Box<dyn Deletable>>> {
    let elasticache = &stack.clients.elasticache;
    let mut found: Vec<Box<dyn Deletable>> = Vec::new();
    let id = stack.names.replication_group();
    let group_owner = match describe_group(elasticache, &id).await? {
        Some(group) => owner(elasticache, &stack.names, group.arn()).await?,
        None => Owner::Other,
    };
    if group_owner != Owner::Other {
        found.push(Box::new(GroupDeletable {
            elasticache: elasticache.clone(),
            id: id.clone(),
            owner_to_confirm: (group_owner == Owner::NotYetReadable).then(|| stack.names.clone()),
        }));
    }
    let name = stack.names.cache_subnet_group();
    if let Some(group) = describe_subnet_group(stack, &name).await?
        && owner(elasticache, &stack.names, group.arn()).await? == Owner::Stack
    {
        found.push(Box::new(SubnetGroupDeletable {
            elasticache: elasticache.clone(),
            name,
            replication_group: id,
        }));
    }
    Ok(found)
}

struct GroupDeletable {
    elasticache: aws_sdk_elasticache::Client,
    id: String,
    /// Set when the group's tags could not be read yet (see [`Owner::NotYetReadable`]):
    /// they are read before it is deleted.
    owner_to_confirm: Option<Names>,
}

impl Deletable for GroupDeletable {
    fn key(&self) -> String {
        format!("elasticache-rg:{}", self.id)
    }

    fn label(&self) -> String {
        format!("redis {}", self.id)
    }

    /// Deleted only once it is gone, so that the subnet group waits for it. ElastiCache
    /// refuses to delete a group still being created or changed
    /// (`InvalidReplicationGroupState`,
    /// <https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DeleteReplicationGroup.html>),
    /// and creating one with Multi-AZ takes 15 to 25 minutes, deleting it minutes more:
    /// all of that is waited out as busy, however long, since it ends on its own.
    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let group = describe_group(&self.elasticache, &self.id)
                .await
                .map_err(DeleteError::Failed)?;
            let Some(group) = group else {
                return Ok(());
            };
            let status = group.status().unwrap_or_default();
            match status {
                "deleting" => return Err(DeleteError::Busy("deleting".to_owned())),
                "creating" | "modifying" | "snapshotting" => {
                    return Err(DeleteError::Busy(format!(
                        "{status}: ElastiCache takes it only once done, waiting"
                    )));
                }
                _ => {}
            }
            if let Some(names) = &self.owner_to_confirm {
                match owner(&self.elasticache, names, group.arn())
                    .await
                    .map_err(DeleteError::Failed)?
                {
                    Owner::Stack => {}
                    Owner::NotYetReadable => {
                        return Err(DeleteError::Busy(format!(
                            "{status}: its tags are not readable yet, waiting"
                        )));
                    }
                    Owner::Other => {
                        return Err(DeleteError::Failed(anyhow::anyhow!(
                            "the replication group {} does not carry the tag {STACK_TAG}={}: \
                             not this stack's, left in place. Delete it by hand if it should go",
                            self.id,
                            names.stack()
                        )));
                    }
                }
            }
            let result = self
                .elasticache
                .delete_replication_group()
                .replication_group_id(&self.id)
                .send()
                .await;
            if result.is_ok() {
                return Err(DeleteError::Busy("deleting".to_owned()));
            }
            delete_outcome(
                result,
                &format!("DeleteReplicationGroup {}", self.id),
                &["ReplicationGroupNotFoundFault"],
            )
        })
    }
}

struct SubnetGroupDeletable {
    elasticache: aws_sdk_elasticache::Client,
    name: String,
    replication_group: String,
}

impl Deletable for SubnetGroupDeletable {
    fn key(&self) -> String {
        format!("elasticache-subnet-group:{}", self.name)
    }

    fn label(&self) -> String {
        format!("cache subnet group {}", self.name)
    }

    fn blocked_by(&self) -> Vec<String> {
        vec![format!("elasticache-rg:{}", self.replication_group)]
    }

    fn delete(&self) -> DeleteFuture<'_> {
        Box::pin(async move {
            let result = self
                .elasticache
                .delete_cache_subnet_group()
                .cache_subnet_group_name(&self.name)
                .send()
                .await;
            delete_outcome(
                result,
                &format!("DeleteCacheSubnetGroup {}", self.name),
                &["CacheSubnetGroupNotFoundFault"],
            )
        })
    }
}
