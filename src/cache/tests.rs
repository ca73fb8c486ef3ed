use aws_sdk_elasticache::Client;
use aws_sdk_elasticache::error::ErrorMetadata;
use aws_sdk_elasticache::operation::create_cache_subnet_group::{
    CreateCacheSubnetGroupError, CreateCacheSubnetGroupOutput,
};
use aws_sdk_elasticache::operation::create_replication_group::CreateReplicationGroupOutput;
use aws_sdk_elasticache::operation::delete_cache_subnet_group::{
    DeleteCacheSubnetGroupError, DeleteCacheSubnetGroupOutput,
};
use aws_sdk_elasticache::operation::delete_replication_group::{
    DeleteReplicationGroupError, DeleteReplicationGroupOutput,
};
use aws_sdk_elasticache::operation::describe_cache_clusters::DescribeCacheClustersOutput;
use aws_sdk_elasticache::operation::describe_cache_engine_versions::DescribeCacheEngineVersionsOutput;
use aws_sdk_elasticache::operation::describe_cache_subnet_groups::{
    DescribeCacheSubnetGroupsError, DescribeCacheSubnetGroupsOutput,
};
use aws_sdk_elasticache::operation::describe_events::DescribeEventsOutput;
use aws_sdk_elasticache::operation::describe_replication_groups::{
    DescribeReplicationGroupsError, DescribeReplicationGroupsOutput,
};
use aws_sdk_elasticache::operation::increase_replica_count::IncreaseReplicaCountOutput;
use aws_sdk_elasticache::operation::list_allowed_node_type_modifications::ListAllowedNodeTypeModificationsOutput;
use aws_sdk_elasticache::operation::list_tags_for_resource::{
    ListTagsForResourceError, ListTagsForResourceOutput,
};
use aws_sdk_elasticache::operation::modify_replication_group::ModifyReplicationGroupOutput;
use aws_sdk_elasticache::operation::modify_replication_group_shard_configuration::ModifyReplicationGroupShardConfigurationOutput;
use aws_sdk_elasticache::types::builders::ReplicationGroupBuilder;
use aws_sdk_elasticache::types::error::{
    CacheSubnetGroupInUse, CacheSubnetGroupNotFoundFault, InvalidReplicationGroupStateFault,
    ReplicationGroupNotFoundFault,
};
use aws_sdk_elasticache::types::{
    AutomaticFailoverStatus, CacheCluster, CacheEngineVersion, Event, SourceType,
};
use aws_sdk_elasticache::types::{Endpoint, NodeGroup, Subnet};
use aws_smithy_mocks::{MockResponse, Rule, RuleMode, mock, mock_client};
use std::sync::Mutex;

use super::modify::{Fix, fixes, is_downgrade, version_matches};
use super::*;
use crate::aws::Clients;
use crate::engine::{self, Leftovers, Pace};
use crate::stack::testing;

const PRIMARY: &str = "master.chat-redis.abc.use1.cache.amazonaws.com";

fn subnets() -> Vec<String> {
    vec!["subnet-a".into(), "subnet-b".into()]
}

/// What every group of the stack has: the stack's id, redis, its node type, failover,
/// encryption.
fn base(status: &str) -> ReplicationGroupBuilder {
    ReplicationGroup::builder()
        .replication_group_id("chat-redis")
        .arn("arn:aws:elasticache:us-east-1:1:replicationgroup:chat-redis")
        .status(status)
        .engine("redis")
        .cache_node_type("cache.t4g.micro")
        .automatic_failover(AutomaticFailoverStatus::Enabled)
        .transit_encryption_enabled(true)
        .at_rest_encryption_enabled(true)
        .snapshot_retention_limit(7)
}

/// The group as the example stack.yaml wants it: redis, one replica.
fn group(status: &str) -> ReplicationGroup {
    base(status)
        .member_clusters("chat-redis-001")
        .member_clusters("chat-redis-002")
        .multi_az(MultiAzStatus::Enabled)
        .cluster_enabled(false)
        .node_groups(primary_endpoint())
        .build()
}

/// The node group of a group with cluster mode off, with its primary endpoint.
fn primary_endpoint() -> NodeGroup {
    NodeGroup::builder()
        .primary_endpoint(Endpoint::builder().address(PRIMARY).port(6379).build())
        .build()
}

/// The example group, `status`, on `node_type`.
fn running_on(node_type: &str, status: &str) -> DescribeReplicationGroupsOutput {
    let mut group = group(status);
    group.cache_node_type = Some(node_type.to_owned());
    described(group)
}

fn described(group: ReplicationGroup) -> DescribeReplicationGroupsOutput {
    DescribeReplicationGroupsOutput::builder()
        .replication_groups(group)
        .build()
}

fn subnet_group() -> DescribeCacheSubnetGroupsOutput {
    let mut group = CacheSubnetGroup::builder()
        .cache_subnet_group_name("chat-cache")
        .arn("arn:aws:elasticache:us-east-1:1:subnetgroup:chat-cache");
    for id in subnets() {
        group = group.subnets(Subnet::builder().subnet_identifier(id).build());
    }
    DescribeCacheSubnetGroupsOutput::builder()
        .cache_subnet_groups(group.build())
        .build()
}

fn stack_tagged() -> ListTagsForResourceOutput {
    ListTagsForResourceOutput::builder()
        .tag_list(Tag::builder().key(STACK_TAG).value("chat").build())
        .build()
}

/// DescribeReplicationGroups before the stack's group exists.
fn group_not_found() -> DescribeReplicationGroupsError {
    DescribeReplicationGroupsError::ReplicationGroupNotFoundFault(
        ReplicationGroupNotFoundFault::builder().build(),
    )
}

/// CreateCacheSubnetGroup, answered.
fn new_subnet_group() -> Rule {
    mock!(Client::create_cache_subnet_group)
        .then_output(|| CreateCacheSubnetGroupOutput::builder().build())
}

/// DescribeCacheSubnetGroups before the stack's subnet group exists.
fn no_subnet_group() -> Rule {
    mock!(Client::describe_cache_subnet_groups).then_error(|| {
        DescribeCacheSubnetGroupsError::CacheSubnetGroupNotFoundFault(
            CacheSubnetGroupNotFoundFault::builder().build(),
        )
    })
}

#[tokio::test(start_paused = true)]
async fn a_new_group_is_created_as_specified_and_waited_for_until_available() {
    let no_subnet_group = no_subnet_group();
    let create_subnet_group = mock!(Client::create_cache_subnet_group)
        .match_requests(|req| req.subnet_ids() == subnets().as_slice())
        .then_output(|| CreateCacheSubnetGroupOutput::builder().build());
    let describe = mock!(Client::describe_replication_groups)
        .sequence()
        .error(group_not_found)
        .output(|| described(group("creating")))
        .times(4)
        .output(|| described(group("available")))
        .build();
    let create = mock!(Client::create_replication_group)
        .match_requests(|req| {
            req.num_cache_clusters() == Some(2)
                && req.automatic_failover_enabled() == Some(true)
                && req.multi_az_enabled() == Some(true)
                && req.transit_encryption_enabled() == Some(true)
                && req.at_rest_encryption_enabled() == Some(true)
                && req.snapshot_retention_limit() == Some(7)
                && req.auto_minor_version_upgrade() == Some(true)
                && req.engine() == Some("redis")
                // One shard: the calls of a group with cluster mode off, as ever.
                && req.cluster_mode().is_none()
                && req.num_node_groups().is_none()
                && req.replicas_per_node_group().is_none()
                && req.cache_parameter_group_name().is_none()
                && req.cache_subnet_group_name() == Some("chat-cache")
                && req.security_group_ids() == ["sg-redis"]
                && req.tags().iter().any(|tag| tag.key() == Some(STACK_TAG))
        })
        .then_output(|| CreateReplicationGroupOutput::builder().build());
    let mut stack = testing::stack(mocked(&[
        &no_subnet_group,
        &create_subnet_group,
        &describe,
        &create,
    ]));
    stack.pace = Pace::Aws;

    let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(
        redis,
        Redis {
            address: PRIMARY.into(),
            port: 6379,
            tls: true
        }
    );
    assert_eq!(create.num_calls(), 1);
    assert_eq!(create_subnet_group.num_calls(), 1);
    assert_eq!(describe.num_calls(), 6);
}

/// The SDK sends a CreateReplicationGroup whose answer was lost (a timeout, a 5xx) again,
/// and ElastiCache answers the second with `ReplicationGroupAlreadyExists`: the group the
/// first one made is taken as found (its tags checked once it is available), not refused.
#[tokio::test(start_paused = true)]
async fn a_group_already_made_by_a_lost_create_is_taken_as_found() {
    use aws_sdk_elasticache::operation::create_replication_group::CreateReplicationGroupError;
    use aws_sdk_elasticache::types::error::ReplicationGroupAlreadyExistsFault;

    let no_subnet_group = no_subnet_group();
    let create_subnet_group = new_subnet_group();
    let describe = mock!(Client::describe_replication_groups)
        .sequence()
        .error(group_not_found)
        .output(|| described(group("creating")))
        .times(3)
        .output(|| described(group("available")))
        .repeatedly()
        .build();
    let create = mock!(Client::create_replication_group).then_error(|| {
        CreateReplicationGroupError::ReplicationGroupAlreadyExistsFault(
            ReplicationGroupAlreadyExistsFault::builder().build(),
        )
    });
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let mut stack = testing::stack(mocked(&[
        &no_subnet_group,
        &create_subnet_group,
        &describe,
        &create,
        &tags,
    ]));
    stack.pace = Pace::Aws;

    let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(redis.address, PRIMARY);
    assert_eq!(create.num_calls(), 1);
    assert!(tags.num_calls() >= 1, "the group's owner is checked");
}

/// The same for the cache subnet group: `CacheSubnetGroupAlreadyExists` to the SDK's
/// second attempt, and the group the first one made is checked as the stack's and kept.
#[tokio::test]
async fn a_subnet_group_already_made_by_a_lost_create_is_taken_as_found() {
    use aws_sdk_elasticache::types::error::CacheSubnetGroupAlreadyExistsFault;

    let describe = mock!(Client::describe_cache_subnet_groups)
        .sequence()
        .error(|| {
            DescribeCacheSubnetGroupsError::CacheSubnetGroupNotFoundFault(
                CacheSubnetGroupNotFoundFault::builder().build(),
            )
        })
        .output(subnet_group)
        .build();
    let create = mock!(Client::create_cache_subnet_group).then_error(|| {
        CreateCacheSubnetGroupError::CacheSubnetGroupAlreadyExistsFault(
            CacheSubnetGroupAlreadyExistsFault::builder().build(),
        )
    });
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let stack = testing::stack(mocked(&[&describe, &create, &tags]));

    ensure_subnet_group(&stack, &subnets()).await.unwrap();

    assert_eq!(create.num_calls(), 1);
    assert_eq!(tags.num_calls(), 1, "the group's owner is checked");
}

/// The replication group created seconds after its cache subnet group: ElastiCache may
/// not know the subnet group yet ("CacheSubnetGroupNotFoundFault ... it takes time to be
/// created", aws-controllers-k8s/community#1228). The create is sent again until it does.
#[tokio::test(start_paused = true)]
async fn the_group_is_created_once_elasticache_knows_its_new_subnet_group() {
    use aws_sdk_elasticache::operation::create_replication_group::CreateReplicationGroupError;

    let no_subnet_group = no_subnet_group();
    let create_subnet_group = new_subnet_group();
    let describe = mock!(Client::describe_replication_groups)
        .sequence()
        .error(group_not_found)
        .output(|| described(group("available")))
        .build();
    let create = mock!(Client::create_replication_group)
        .sequence()
        .error(|| {
            CreateReplicationGroupError::CacheSubnetGroupNotFoundFault(
                CacheSubnetGroupNotFoundFault::builder()
                    .meta(
                        ErrorMetadata::builder()
                            .code("CacheSubnetGroupNotFoundFault")
                            .message("Cache Subnet Group chat-cache does not exist.")
                            .build(),
                    )
                    .build(),
            )
        })
        .times(2)
        .output(|| CreateReplicationGroupOutput::builder().build())
        .build();
    let mut stack = testing::stack(mocked(&[
        &no_subnet_group,
        &create_subnet_group,
        &describe,
        &create,
    ]));
    stack.pace = Pace::Aws;

    let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(redis.address, PRIMARY);
    assert_eq!(create.num_calls(), 3);
}

#[tokio::test]
async fn a_group_that_matches_the_spec_is_left_alone() {
    let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let describe =
        mock!(Client::describe_replication_groups).then_output(|| described(group("available")));
    let create_subnet_group = new_subnet_group();
    let create = mock!(Client::create_replication_group)
        .then_output(|| CreateReplicationGroupOutput::builder().build());
    let modify = mock!(Client::modify_replication_group)
        .then_output(|| ModifyReplicationGroupOutput::builder().build());
    let mut stack = testing::stack(mocked(&[
        &subnet_group,
        &tags,
        &describe,
        &create_subnet_group,
        &create,
        &modify,
    ]));
    stack.pace = Pace::Aws;

    let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(redis.address, PRIMARY);
    assert_eq!(create_subnet_group.num_calls(), 0);
    assert_eq!(create.num_calls(), 0);
    assert_eq!(modify.num_calls(), 0);
}

#[tokio::test]
async fn a_changed_node_type_is_modified_in_place() {
    let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let describe = mock!(Client::describe_replication_groups)
        .sequence()
        .output(|| described(group("available")))
        .times(2)
        .output(|| running_on("cache.r7g.large", "modifying"))
        .output(|| running_on("cache.r7g.large", "available"))
        .build();
    let modify = mock!(Client::modify_replication_group)
        .match_requests(|req| {
            req.cache_node_type() == Some("cache.r7g.large")
                && req.apply_immediately() == Some(true)
        })
        .then_output(|| ModifyReplicationGroupOutput::builder().build());
    let mut stack = testing::stack(mocked(&[&subnet_group, &tags, &describe, &modify]));
    stack.spec.redis.node_type = "cache.r7g.large".into();

    ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(modify.num_calls(), 1);
    assert_eq!(describe.num_calls(), 4);
}

/// A scale down to a node the data does not fit: ElastiCache accepts the
/// ModifyReplicationGroup, takes the group to `modifying`, and brings it back `available`
/// on its old node type, saying why only in an event ("Failed to scale down to cache node
/// type ... because the node has insufficient memory", AWS re:Post,
/// knowledge-center/elasticache-redis-change-node-errors). The LocalStack extension makes
/// every change it accepts, so this is mocked. `up` must not report the change as made.
#[tokio::test]
async fn a_scale_down_elasticache_did_not_make_is_an_error_with_its_reason() {
    let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let describe = mock!(Client::describe_replication_groups)
        .sequence()
        .output(|| running_on("cache.r7g.large", "available"))
        .times(2)
        .output(|| running_on("cache.r7g.large", "modifying"))
        .output(|| running_on("cache.r7g.large", "available"))
        .build();
    let modify = mock!(Client::modify_replication_group)
        .match_requests(|req| req.cache_node_type() == Some("cache.t4g.micro"))
        .then_output(|| ModifyReplicationGroupOutput::builder().build());
    let events = mock!(Client::describe_events).then_output(|| {
        DescribeEventsOutput::builder()
            .events(
                Event::builder()
                    .date(aws_smithy_types::DateTime::from_secs(100))
                    .message(
                        "Failed to scale down to cache node type cache.t4g.micro Replication \
                         Group chat-redis because the node has insufficient memory.",
                    )
                    .build(),
            )
            .build()
    });
    let stack = testing::stack(mocked(&[&subnet_group, &tags, &describe, &modify, &events]));

    let err = ensure(&stack, &subnets(), "sg-redis")
        .await
        .unwrap_err()
        .to_string();

    assert_eq!(modify.num_calls(), 1);
    assert!(
        err.contains(
            "ElastiCache did not move the replication group chat-redis to cache.t4g.micro: it \
             runs on cache.r7g.large still (Failed to scale down to cache node type \
             cache.t4g.micro"
        ),
        "{err}"
    );
    assert!(
        err.contains("set redis.node_type to cache.r7g.large or a larger type"),
        "{err}"
    );
}

/// Right after a ModifyReplicationGroup, ElastiCache's describe may still show the group
/// `available` on its old node type (terraform-provider-aws waits 30 s before it polls
/// after each change: `waitReplicationGroupAvailable`'s delay). That is not a scale
/// ElastiCache refused: `up` waits until the change shows, then for the group.
#[tokio::test(start_paused = true)]
async fn a_change_the_describe_does_not_show_yet_is_waited_for_not_refused() {
    let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let describe = mock!(Client::describe_replication_groups)
        .sequence()
        .output(|| running_on("cache.r7g.large", "available"))
        // Before the change, then twice as if it had not been asked for.
        .times(4)
        .output(|| running_on("cache.r7g.large", "modifying"))
        .output(|| running_on("cache.t4g.micro", "available"))
        .repeatedly()
        .build();
    let modify = mock!(Client::modify_replication_group)
        .match_requests(|req| req.cache_node_type() == Some("cache.t4g.micro"))
        .then_output(|| ModifyReplicationGroupOutput::builder().build());
    let stack = testing::stack(mocked(&[&subnet_group, &tags, &describe, &modify]));

    let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(redis.address, PRIMARY);
    assert_eq!(modify.num_calls(), 1);
}

/// Preflight holds `redis.node_type` to what ListAllowedNodeTypeModifications offers from
/// the running node type, saying which way it scales.
#[tokio::test]
async fn the_node_type_is_checked_against_what_elasticache_offers() {
    let describe = mock!(Client::describe_replication_groups)
        .then_output(|| running_on("cache.r7g.large", "available"));
    let allowed = mock!(Client::list_allowed_node_type_modifications)
        .match_requests(|req| req.replication_group_id() == Some("chat-redis"))
        .then_output(|| {
            ListAllowedNodeTypeModificationsOutput::builder()
                .scale_up_modifications("cache.r7g.xlarge")
                .scale_down_modifications("cache.t4g.micro")
                .build()
        });
    let mut stack = testing::stack(mocked(&[&describe, &allowed]));
    let mut check = async |node_type: &str| {
        stack.spec.redis.node_type = node_type.to_owned();
        check_changes(&stack).await.map_err(|err| err.to_string())
    };

    assert_eq!(
        check("cache.r7g.large").await.unwrap(),
        "cache.r7g.large, as running"
    );
    assert_eq!(
        check("cache.r7g.xlarge").await.unwrap(),
        "cache.r7g.large to cache.r7g.xlarge, a scale up"
    );
    assert_eq!(
        check("cache.t4g.micro").await.unwrap(),
        "cache.r7g.large to cache.t4g.micro, a scale down, which ElastiCache makes only if the \
         data fits"
    );
    let refused = check("cache.m5.large").await.unwrap_err();
    assert!(
        refused.contains(
            "from cache.r7g.large it offers cache.r7g.xlarge, cache.t4g.micro \
             (ListAllowedNodeTypeModifications)"
        ),
        "{refused}"
    );
    assert_eq!(
        allowed.num_calls(),
        3,
        "not asked when the node type is unchanged"
    );
}

#[tokio::test]
async fn another_engine_is_an_error_saying_to_re_create() {
    let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let describe =
        mock!(Client::describe_replication_groups).then_output(|| described(group("available")));
    let mut stack = testing::stack(mocked(&[&subnet_group, &tags, &describe]));
    stack.spec.redis.engine = "valkey".into();

    let err = check_changes(&stack).await.unwrap_err().to_string();

    assert!(
        err.contains("engine is redis, stack.yaml says valkey"),
        "{err}"
    );
    assert!(err.contains("destroy"), "{err}");
}

#[tokio::test]
async fn replicas_change_around_failover_in_an_order_elasticache_accepts() {
    let mut clients = testing::clients();
    clients.elasticache = mock_client!(aws_sdk_elasticache, []);
    let mut stack = testing::stack(clients);
    let single = ReplicationGroup::builder()
        .cache_node_type("cache.t4g.micro")
        .member_clusters("chat-redis-001")
        .automatic_failover(AutomaticFailoverStatus::Disabled)
        .multi_az(MultiAzStatus::Disabled)
        .snapshot_retention_limit(7)
        .build();

    stack.spec.redis.replicas = 2;
    assert_eq!(
        fixes(&stack, &single).await.unwrap(),
        [
            Fix::AddReplicas(2),
            Fix::Failover {
                failover: true,
                multi_az: true
            }
        ]
    );
    stack.spec.redis.replicas = 0;
    assert_eq!(
        fixes(&stack, &group("available")).await.unwrap(),
        [
            Fix::Failover {
                failover: false,
                multi_az: false
            },
            Fix::RemoveReplicas(0)
        ]
    );
}

/// A node of the group, `status`.
fn node(id: &str, status: &str) -> CacheCluster {
    CacheCluster::builder()
        .cache_cluster_id(id)
        .replication_group_id("chat-redis")
        .cache_cluster_status(status)
        .build()
}

/// ElastiCache reports the group `available` again while the replica IncreaseReplicaCount
/// added is still `creating`, and refuses a ModifyReplicationGroup until it is not
/// (`InvalidCacheClusterState`, hashicorp/terraform-provider-aws#50096). The LocalStack
/// extension does the same (tests/up_destroy.rs changes a running Redis); here the calls'
/// order is pinned down.
#[tokio::test(start_paused = true)]
async fn failover_is_turned_on_only_once_the_added_replica_is_available() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let alone = || {
        base("available")
            .member_clusters("chat-redis-001")
            .node_groups(primary_endpoint())
            .automatic_failover(AutomaticFailoverStatus::Disabled)
            .multi_az(MultiAzStatus::Disabled)
            .build()
    };
    let paired = |on: bool| {
        let (failover, multi_az) = if on {
            (AutomaticFailoverStatus::Enabled, MultiAzStatus::Enabled)
        } else {
            (AutomaticFailoverStatus::Disabled, MultiAzStatus::Disabled)
        };
        base("available")
            .member_clusters("chat-redis-001")
            .member_clusters("chat-redis-002")
            .node_groups(primary_endpoint())
            .automatic_failover(failover)
            .multi_az(multi_az)
            .build()
    };
    let describe = mock!(Client::describe_replication_groups)
        .sequence()
        .output(move || described(alone()))
        .times(2)
        .output(move || described(paired(false)))
        .times(2)
        .output(move || described(paired(true)))
        .repeatedly()
        .build();
    let replica_available = Arc::new(AtomicBool::new(false));
    let seen = replica_available.clone();
    let nodes = mock!(Client::describe_cache_clusters)
        .sequence()
        .output(|| {
            DescribeCacheClustersOutput::builder()
                .cache_clusters(node("chat-redis-001", "available"))
                .build()
        })
        .output(|| {
            DescribeCacheClustersOutput::builder()
                .cache_clusters(node("chat-redis-001", "available"))
                .cache_clusters(node("chat-redis-002", "creating"))
                .build()
        })
        .output(move || {
            seen.store(true, Ordering::SeqCst);
            DescribeCacheClustersOutput::builder()
                .cache_clusters(node("chat-redis-001", "available"))
                .cache_clusters(node("chat-redis-002", "available"))
                .build()
        })
        .times(2)
        .build();
    let increase = mock!(Client::increase_replica_count)
        .match_requests(|req| req.new_replica_count() == Some(1))
        .then_output(|| IncreaseReplicaCountOutput::builder().build());
    let ready = replica_available.clone();
    let modify = mock!(Client::modify_replication_group)
        .match_requests(move |req| {
            ready.load(Ordering::SeqCst)
                && req.automatic_failover_enabled() == Some(true)
                && req.multi_az_enabled() == Some(true)
        })
        .then_output(|| ModifyReplicationGroupOutput::builder().build());
    let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let mut stack = testing::stack(mocked(&[
        &subnet_group,
        &tags,
        &describe,
        &nodes,
        &increase,
        &modify,
    ]));
    stack.pace = Pace::Aws;
    stack.spec.redis.replicas = 1;
    stack.spec.redis.snapshot_retention_days = 7;

    ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(increase.num_calls(), 1);
    assert_eq!(modify.num_calls(), 1);
    assert_eq!(nodes.num_calls(), 4);
}

#[tokio::test]
async fn automatic_backups_follow_stack_yaml() {
    let mut clients = testing::clients();
    clients.elasticache = mock_client!(aws_sdk_elasticache, []);
    let mut stack = testing::stack(clients);
    // A group made before backups were on, or turned off by hand (the scanner's check).
    let without = base("available")
        .snapshot_retention_limit(0)
        .member_clusters("chat-redis-001")
        .member_clusters("chat-redis-002")
        .multi_az(MultiAzStatus::Enabled)
        .build();
    assert_eq!(
        fixes(&stack, &without).await.unwrap(),
        [Fix::SnapshotRetention(7)]
    );
    assert_eq!(
        Fix::SnapshotRetention(7).to_string(),
        "keeping automatic backups for 7 day(s)"
    );
    stack.spec.redis.snapshot_retention_days = 0;
    assert_eq!(fixes(&stack, &without).await.unwrap(), []);
    assert_eq!(
        fixes(&stack, &group("available")).await.unwrap(),
        [Fix::SnapshotRetention(0)]
    );
}

#[tokio::test]
async fn minor_version_upgrades_are_on_unless_a_minor_version_is_pinned() {
    let mut clients = testing::clients();
    clients.elasticache = mock_client!(aws_sdk_elasticache, []);
    let stack = testing::stack(clients);
    let upgrading = |on: bool| {
        base("available")
            .auto_minor_version_upgrade(on)
            .member_clusters("chat-redis-001")
            .member_clusters("chat-redis-002")
            .multi_az(MultiAzStatus::Enabled)
            .build()
    };
    // Turned off by hand, or made before `up` said: security fixes come with minors.
    assert_eq!(
        fixes(&stack, &upgrading(false)).await.unwrap(),
        [Fix::AutoMinorVersionUpgrade(true)]
    );
    assert_eq!(fixes(&stack, &upgrading(true)).await.unwrap(), []);
    assert_eq!(
        fixes(&stack, &group("available")).await.unwrap(),
        [],
        "a group that does not say is left alone"
    );
    let pinned_at = |want: &str, reported: &'static str| {
        let nodes = nodes_reporting(reported);
        let mut clients = testing::clients();
        clients.elasticache = mock_client!(aws_sdk_elasticache, [&nodes]);
        let mut stack = testing::stack(clients);
        stack.spec.redis.engine_version = Some(want.into());
        stack
    };
    let stack = pinned_at("6.x", "6.2.6");
    assert_eq!(fixes(&stack, &upgrading(true)).await.unwrap(), []);
    // 7.0 pinned: an upgrade to 7.1 would leave stack.yaml behind.
    let stack = pinned_at("7.0", "7.0.7");
    let pinned = fixes(&stack, &upgrading(true)).await.unwrap();
    assert_eq!(pinned, [Fix::AutoMinorVersionUpgrade(false)]);
    assert_eq!(
        pinned[0].to_string(),
        "turning automatic minor version upgrades off (the version is pinned)"
    );
}

#[tokio::test]
async fn the_subnet_group_is_deleted_after_the_replication_group() {
    let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
    let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
    let describe =
        mock!(Client::describe_replication_groups).then_output(|| described(group("available")));
    let stack = testing::stack(mocked(&[&subnet_group, &tags, &describe]));

    let found = deletables(&stack).await.unwrap();

    let keys: Vec<String> = found.iter().map(|d| d.key()).collect();
    assert_eq!(
        keys,
        [
            "elasticache-rg:chat-redis",
            "elasticache-subnet-group:chat-cache"
        ]
    );
    assert_eq!(found[1].blocked_by(), ["elasticache-rg:chat-redis"]);
}

/// What a stack whose Redis exists answers: its subnet group, its tags, and the
/// replication group in `status`; plus `more`.
fn existing(status: &'static str, more: &[&Rule]) -> Clients {
    existing_group(move || group(status), more)
}

/// Like [`existing`], with the replication group `group` makes.
fn existing_group(
    group: impl Fn() -> ReplicationGroup + Send + Sync + 'static,
    more: &[&Rule],
) -> Clients {
    let mut rules = vec![
        mock!(Client::describe_cache_subnet_groups).then_output(subnet_group),
        mock!(Client::list_tags_for_resource).then_output(stack_tagged),
        mock!(Client::describe_replication_groups).then_output(move || described(group())),
    ];
    rules.extend(more.iter().map(|rule| (*rule).clone()));
    mocked(&rules.iter().collect::<Vec<_>>())
}

/// Clients whose ElastiCache answers by `rules`, whichever matches first; the group's nodes
/// are all available unless a rule says otherwise.
fn mocked(rules: &[&Rule]) -> Clients {
    let nodes_available = mock!(Client::describe_cache_clusters)
        .then_output(|| DescribeCacheClustersOutput::builder().build());
    let mut rules = rules.to_vec();
    rules.push(&nodes_available);
    let mut clients = testing::clients();
    clients.elasticache = mock_client!(aws_sdk_elasticache, RuleMode::MatchAny, &rules);
    clients
}

/// The group's first node, reporting its engine `version` (only nodes report it).
fn nodes_reporting(version: &'static str) -> Rule {
    mock!(Client::describe_cache_clusters).then_output(move || {
        DescribeCacheClustersOutput::builder()
            .cache_clusters(
                CacheCluster::builder()
                    .cache_cluster_id("chat-redis-001")
                    .engine_version(version)
                    .build(),
            )
            .build()
    })
}

#[tokio::test]
async fn a_minor_version_left_out_in_stack_yaml_is_not_an_upgrade_every_time() {
    for (want, reported) in [("7.1", "7.1.0"), ("6.x", "6.2.6")] {
        // Only the nodes report the version, and in full.
        let nodes = nodes_reporting(reported);
        let modify = mock!(Client::modify_replication_group)
            .then_output(|| ModifyReplicationGroupOutput::builder().build());
        let mut stack = testing::stack(existing("available", &[&nodes, &modify]));
        stack.spec.redis.engine_version = Some(want.into());

        ensure(&stack, &subnets(), "sg-redis").await.unwrap();

        // Once for the nodes' state, once for the version.
        assert_eq!(nodes.num_calls(), 2, "{want}");
        assert_eq!(modify.num_calls(), 0, "{want} is {reported}");
    }
    assert!(!version_matches("7.10.0", "7.1"));
    assert!(!version_matches("7.0.7", "6.x"));
}

/// A pin to a version older than the one running is refused before any change, saying
/// how to get there: ElastiCache "cannot downgrade to an earlier engine version"
/// (ModifyReplicationGroup's EngineVersion).
#[tokio::test]
async fn a_pin_to_an_earlier_version_is_refused_saying_to_start_over() {
    for want in ["7.0", "6.2", "6.x"] {
        let nodes = nodes_reporting("7.1.0");
        let modify = mock!(Client::modify_replication_group)
            .then_output(|| ModifyReplicationGroupOutput::builder().build());
        let mut stack = testing::stack(existing("available", &[&nodes, &modify]));
        stack.spec.redis.engine_version = Some(want.into());

        let error = ensure(&stack, &subnets(), "sg-redis").await.unwrap_err();

        let error = format!("{error:#}");
        assert!(
            error.contains(&format!("runs redis 7.1.0 and stack.yaml pins {want}"))
                && error.contains("cannot downgrade")
                && error.contains("`destroy` and `up`"),
            "{error}"
        );
        assert_eq!(modify.num_calls(), 0, "{want}");
    }
    assert!(!is_downgrade("7.1.0", "7.2"));
    assert!(!is_downgrade("6.2.6", "7.1"));
    assert!(!is_downgrade("7.1.0", "7.x"));
}

/// A group whose creation failed says why only in its events
/// (<https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DescribeEvents.html>;
/// terraform-provider-aws's maintainers point users there for `create-failed`,
/// hashicorp/terraform-provider-aws#8561).
#[tokio::test]
async fn a_failed_creation_is_reported_with_elasticaches_reason() {
    let events = mock!(Client::describe_events)
        .match_requests(|req| {
            req.source_type() == Some(&SourceType::ReplicationGroup)
                && req.source_identifier() == Some("chat-redis")
        })
        .then_output(|| {
            let event = |secs: i64, message: &str| {
                Event::builder()
                    .source_identifier("chat-redis")
                    .source_type(SourceType::ReplicationGroup)
                    .date(aws_smithy_types::DateTime::from_secs(secs))
                    .message(message)
                    .build()
            };
            // Newest first, as ElastiCache lists them.
            DescribeEventsOutput::builder()
                .events(event(
                    200,
                    "Failed to create replication group chat-redis: insufficient \
                     capacity for cache.t4g.micro in us-east-1a",
                ))
                .events(event(100, "Replication group chat-redis created"))
                .build()
        });
    let stack = testing::stack(existing("create-failed", &[&events]));

    let err = ensure(&stack, &subnets(), "sg-redis")
        .await
        .unwrap_err()
        .to_string();

    assert_eq!(events.num_calls(), 1);
    assert!(
        err.contains(
            "could not create the replication group chat-redis: Replication group \
             chat-redis created; Failed to create replication group chat-redis: \
             insufficient capacity"
        ),
        "{err}"
    );
    assert!(err.contains("realtime-stack destroy"), "{err}");
}

/// A replication group on tokio's clock: `creating` for `creating_for`, then
/// `available`; from the DeleteReplicationGroup ElastiCache accepts, `deleting` for
/// `deleting_for`, then gone. Its tags (the stack's unless `foreign`) can be read only
/// while it is available (see [`Owner::NotYetReadable`]). The subnet group stays in use
/// a moment longer.
struct Lifetime {
    started: tokio::time::Instant,
    creating_for: Duration,
    deleting_for: Duration,
    deleted_at: Mutex<Option<tokio::time::Instant>>,
    subnet_group_refusals: Mutex<u32>,
    foreign: std::sync::atomic::AtomicBool,
}

impl Lifetime {
    fn new(creating_for: Duration, deleting_for: Duration) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            started: tokio::time::Instant::now(),
            creating_for,
            deleting_for,
            deleted_at: Mutex::new(None),
            subnet_group_refusals: Mutex::new(0),
            foreign: false.into(),
        })
    }

    fn status(&self) -> Option<&'static str> {
        match *self.deleted_at.lock().unwrap() {
            Some(at) if at.elapsed() >= self.deleting_for => None,
            Some(_) => Some("deleting"),
            None if self.started.elapsed() < self.creating_for => Some("creating"),
            None => Some("available"),
        }
    }

    /// The stack's subnet group and replication group as `up` and `destroy` see them.
    fn rules(self: &std::sync::Arc<Self>) -> Vec<Rule> {
        let (describe, delete, delete_subnets) = (self.clone(), self.clone(), self.clone());
        let tags = self.clone();
        let not_found = || {
            ReplicationGroupNotFoundFault::builder()
                .meta(
                    ErrorMetadata::builder()
                        .code("ReplicationGroupNotFoundFault")
                        .build(),
                )
                .build()
        };
        vec![
            mock!(Client::describe_cache_subnet_groups).then_output(subnet_group),
            mock!(Client::list_tags_for_resource)
                .match_requests(|req| {
                    req.resource_name()
                        .is_some_and(|arn| arn.contains(":subnetgroup:"))
                })
                .then_output(stack_tagged),
            mock!(Client::list_tags_for_resource).then_compute_response(move |_| {
                match tags.status() {
                    Some("available" | "modifying")
                        if tags.foreign.load(std::sync::atomic::Ordering::Relaxed) =>
                    {
                        MockResponse::Output(ListTagsForResourceOutput::builder().build())
                    }
                    Some("available" | "modifying") => MockResponse::Output(stack_tagged()),
                    _ => MockResponse::Error(
                        ListTagsForResourceError::InvalidReplicationGroupStateFault(invalid_state(
                            "Cluster not in available state to perform tagging operations.",
                        )),
                    ),
                }
            }),
            mock!(Client::describe_replication_groups).then_compute_response(
                move |_| match describe.status() {
                    Some(status) => MockResponse::Output(described(group(status))),
                    None => MockResponse::Error(
                        DescribeReplicationGroupsError::ReplicationGroupNotFoundFault(not_found()),
                    ),
                },
            ),
            mock!(Client::delete_replication_group).then_compute_response(move |_| {
                match delete.status() {
                    Some("available") => {
                        *delete.deleted_at.lock().unwrap() = Some(tokio::time::Instant::now());
                        MockResponse::Output(DeleteReplicationGroupOutput::builder().build())
                    }
                    Some(status) => MockResponse::Error(
                        DeleteReplicationGroupError::InvalidReplicationGroupStateFault(
                            invalid_state(&format!(
                                "Replication group chat-redis has status {status} which is \
                                 not valid for deletion."
                            )),
                        ),
                    ),
                    None => MockResponse::Error(
                        DeleteReplicationGroupError::ReplicationGroupNotFoundFault(not_found()),
                    ),
                }
            }),
            mock!(Client::delete_cache_subnet_group).then_compute_response(move |_| {
                let mut refusals = delete_subnets.subnet_group_refusals.lock().unwrap();
                if delete_subnets.status().is_some() || *refusals == 0 {
                    *refusals += 1;
                    let message = "Cache subnet group chat-cache is currently in use by a \
                                   cache cluster.";
                    return MockResponse::Error(
                        DeleteCacheSubnetGroupError::CacheSubnetGroupInUse(
                            CacheSubnetGroupInUse::builder()
                                .message(message)
                                .meta(
                                    ErrorMetadata::builder()
                                        .code("CacheSubnetGroupInUse")
                                        .message(message)
                                        .build(),
                                )
                                .build(),
                        ),
                    );
                }
                MockResponse::Output(DeleteCacheSubnetGroupOutput::builder().build())
            }),
        ]
    }
}

fn invalid_state(message: &str) -> InvalidReplicationGroupStateFault {
    InvalidReplicationGroupStateFault::builder()
        .message(message)
        .meta(
            ErrorMetadata::builder()
                .code("InvalidReplicationGroupState")
                .message(message)
                .build(),
        )
        .build()
}

/// Runs `destroy` over the stack's ElastiCache resources at AWS's pace and patience.
async fn destroy_redis(rules: &[Rule]) -> Result<(), Leftovers> {
    let mut clients = testing::clients();
    clients.elasticache = mock_client!(aws_sdk_elasticache, RuleMode::MatchAny, rules);
    let stack = testing::stack(clients);
    let resources = deletables(&stack).await.unwrap();
    engine::destroy(
        resources,
        &stack.progress,
        Pace::Aws,
        Duration::from_secs(20 * 60),
    )
    .await
}

/// `destroy` right after `up` was stopped: the group is still `creating`, which
/// takes 15 to 25 minutes with Multi-AZ on AWS and cannot be deleted until it ends
/// (DeleteReplicationGroup: `InvalidReplicationGroupState`,
/// <https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DeleteReplicationGroup.html>;
/// the same answer, "has status ... which is not valid for deletion", is quoted in
/// crossplane-contrib/provider-aws#46). Waiting for it is not a lack of progress,
/// however long it lasts past the 20 minutes of patience.
#[tokio::test(start_paused = true)]
async fn destroy_waits_for_a_group_still_creating_then_deletes_it() {
    let lifetime = Lifetime::new(Duration::from_secs(40 * 60), Duration::from_secs(8 * 60));
    let rules = lifetime.rules();

    destroy_redis(&rules).await.unwrap();

    let [_, _, _, _, delete_group, delete_subnet_group] = &rules[..] else {
        unreachable!()
    };
    assert_eq!(delete_group.num_calls(), 1, "deleted once available");
    assert_eq!(delete_subnet_group.num_calls(), 2);
    assert!(lifetime.started.elapsed() >= Duration::from_secs(48 * 60));
    assert_eq!(lifetime.status(), None);
}

/// A group an earlier `destroy` left `deleting` (ElastiCache refuses a second
/// delete: "has status deleting which is not valid for deletion", boto/boto3#1277)
/// is waited for until gone, then the subnet group, which ElastiCache still says is
/// in use for a moment (`CacheSubnetGroupInUse`,
/// <https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_DeleteCacheSubnetGroup.html>),
/// is deleted on a later pass.
#[tokio::test(start_paused = true)]
async fn destroy_waits_for_a_group_being_deleted_then_deletes_its_subnet_group() {
    let lifetime = Lifetime::new(Duration::ZERO, Duration::from_secs(30 * 60));
    *lifetime.deleted_at.lock().unwrap() = Some(tokio::time::Instant::now());
    let rules = lifetime.rules();

    destroy_redis(&rules).await.unwrap();

    let [_, _, _, _, delete_group, delete_subnet_group] = &rules[..] else {
        unreachable!()
    };
    assert_eq!(delete_group.num_calls(), 0);
    assert_eq!(delete_subnet_group.num_calls(), 2);
    assert!(lifetime.started.elapsed() >= Duration::from_secs(30 * 60));
}

/// `up` after an `up` stopped while ElastiCache was creating the group: the group's
/// tags cannot be read yet, so it waits for the group, then checks it is the stack's.
#[tokio::test(start_paused = true)]
async fn up_waits_for_a_group_still_creating_before_reading_whose_it_is() {
    let lifetime = Lifetime::new(Duration::from_secs(25 * 60), Duration::ZERO);
    let mut stack = testing::stack(mocked(&lifetime.rules().iter().collect::<Vec<_>>()));
    stack.pace = Pace::Aws;

    let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(redis.address, PRIMARY);
    assert!(lifetime.started.elapsed() >= Duration::from_secs(25 * 60));

    lifetime
        .foreign
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let err = ensure(&stack, &subnets(), "sg-redis").await.unwrap_err();
    assert!(format!("{err:#}").contains("not this stack's"), "{err:#}");
}

/// `destroy` of a group still creating whose tags, once readable, are not the stack's:
/// never deleted, and named in what is left.
#[tokio::test(start_paused = true)]
async fn destroy_does_not_delete_a_group_that_turns_out_not_to_be_the_stack_s() {
    let lifetime = Lifetime::new(Duration::from_secs(10 * 60), Duration::ZERO);
    lifetime
        .foreign
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let rules = lifetime.rules();

    let left = destroy_redis(&rules).await.unwrap_err();

    let [_, _, _, _, delete_group, _] = &rules[..] else {
        unreachable!()
    };
    assert_eq!(delete_group.num_calls(), 0);
    assert!(format!("{left}").contains("not this stack's"), "{left}");
}

const CONFIGURATION: &str = "clustercfg.chat-redis.abc.use1.cache.amazonaws.com";

/// A Redis Cluster as ElastiCache describes it: `shards` node groups (`0001`...) of a
/// primary and `replicas` replicas, no primary endpoint, a configuration endpoint.
fn cluster(status: &str, shards: usize, replicas: usize) -> ReplicationGroup {
    let mut group = base(status)
        .cluster_enabled(true)
        .cluster_mode(ClusterMode::Enabled)
        .configuration_endpoint(
            Endpoint::builder()
                .address(CONFIGURATION)
                .port(6379)
                .build(),
        )
        .multi_az(if replicas > 0 {
            MultiAzStatus::Enabled
        } else {
            MultiAzStatus::Disabled
        });
    for shard in 1..=shards {
        let node_group = format!("{shard:04}");
        group = group.node_groups(NodeGroup::builder().node_group_id(&node_group).build());
        for node in 1..=1 + replicas {
            group = group.member_clusters(format!("chat-redis-{node_group}-{node:03}"));
        }
    }
    group.build()
}

/// What ElastiCache offers, as DescribeCacheEngineVersions answers it: each engine's
/// versions, oldest first, the last its default (a Valkey default of 9 here, past the 8
/// a stack could once assume).
const OFFERED: &[(&str, &str, &str)] = &[
    ("redis", "6.2", "redis6.x"),
    ("redis", "7.0", "redis7"),
    ("redis", "7.1", "redis7"),
    ("valkey", "7.2", "valkey7"),
    ("valkey", "8.0", "valkey8"),
    ("valkey", "9.0", "valkey9"),
];

fn offered_versions() -> Rule {
    mock!(Client::describe_cache_engine_versions).then_compute_output(|req| {
        let of_engine: Vec<_> = OFFERED
            .iter()
            .filter(|(engine, ..)| req.engine() == Some(engine))
            .collect();
        let answered = if req.default_only() == Some(true) {
            &of_engine[of_engine.len().saturating_sub(1)..]
        } else {
            &of_engine[..]
        };
        DescribeCacheEngineVersionsOutput::builder()
            .set_cache_engine_versions(Some(
                answered
                    .iter()
                    .map(|(engine, version, family)| {
                        CacheEngineVersion::builder()
                            .engine(*engine)
                            .engine_version(*version)
                            .cache_parameter_group_family(*family)
                            .build()
                    })
                    .collect(),
            ))
            .build()
    })
}

/// `shards: 3` on a fresh account: one CreateReplicationGroup with three node groups,
/// cluster mode and its parameter group, failover (which cluster mode requires), and
/// the instances get the configuration endpoint.
#[tokio::test(start_paused = true)]
async fn a_cluster_is_created_with_its_node_groups_and_gives_its_configuration_endpoint() {
    for (engine, version, replicas, parameter_group) in [
        ("redis", None, 1, "default.redis7.cluster.on"),
        ("valkey", None, 1, "default.valkey9.cluster.on"),
        ("valkey", Some("8.0"), 0, "default.valkey8.cluster.on"),
        ("redis", Some("7.1"), 2, "default.redis7.cluster.on"),
    ] {
        let subnet_group = mock!(Client::describe_cache_subnet_groups).then_output(subnet_group);
        let tags = mock!(Client::list_tags_for_resource).then_output(stack_tagged);
        let describe = mock!(Client::describe_replication_groups)
            .sequence()
            .error(|| {
                DescribeReplicationGroupsError::ReplicationGroupNotFoundFault(
                    ReplicationGroupNotFoundFault::builder().build(),
                )
            })
            .output(move || described(cluster("creating", 3, replicas)))
            .output(move || described(cluster("available", 3, replicas)))
            .build();
        let create = mock!(Client::create_replication_group)
            .match_requests(move |req| {
                req.cluster_mode() == Some(&ClusterMode::Enabled)
                    && req.num_node_groups() == Some(3)
                    && req.replicas_per_node_group() == Some(i32::try_from(replicas).unwrap())
                    && req.num_cache_clusters().is_none()
                    && req.cache_parameter_group_name() == Some(parameter_group)
                    && req.engine() == Some(engine)
                    && req.engine_version() == version
                    && req.automatic_failover_enabled() == Some(true)
                    && req.multi_az_enabled() == Some(replicas > 0)
                    && req.transit_encryption_enabled() == Some(true)
                    && req.at_rest_encryption_enabled() == Some(true)
                    && req.cache_subnet_group_name() == Some("chat-cache")
                    && req.security_group_ids() == ["sg-redis"]
            })
            .then_output(|| CreateReplicationGroupOutput::builder().build());
        let offered = offered_versions();
        let mut stack = testing::stack(mocked(&[
            &subnet_group,
            &tags,
            &describe,
            &create,
            &offered,
        ]));
        stack.spec.redis.shards = 3;
        stack.spec.redis.replicas = u32::try_from(replicas).unwrap();
        stack.spec.redis.engine = engine.into();
        stack.spec.redis.engine_version = version.map(str::to_owned);

        let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

        assert_eq!(create.num_calls(), 1, "{engine} {version:?} {replicas}");
        assert_eq!(
            redis,
            Redis {
                address: CONFIGURATION.into(),
                port: 6379,
                tls: true
            }
        );
    }
}

/// A second `up` of a cluster as stack.yaml wants it calls nothing that changes it, and
/// `status` shows its shards and configuration endpoint.
#[tokio::test]
async fn a_cluster_that_matches_the_spec_is_left_alone() {
    let create = mock!(Client::create_replication_group)
        .then_output(|| CreateReplicationGroupOutput::builder().build());
    let modify = mock!(Client::modify_replication_group)
        .then_output(|| ModifyReplicationGroupOutput::builder().build());
    let reshard = mock!(Client::modify_replication_group_shard_configuration)
        .then_output(|| ModifyReplicationGroupShardConfigurationOutput::builder().build());
    let more = mock!(Client::increase_replica_count)
        .then_output(|| IncreaseReplicaCountOutput::builder().build());
    let mut stack = testing::stack(existing_group(
        || cluster("available", 3, 1),
        &[&create, &modify, &reshard, &more],
    ));
    stack.spec.redis.shards = 3;

    let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();
    let summary = summary(&stack).await.unwrap().unwrap();

    assert_eq!(redis.address, CONFIGURATION);
    for rule in [&create, &modify, &reshard, &more] {
        assert_eq!(rule.num_calls(), 0);
    }
    assert_eq!(
        (summary.shards, summary.cluster_mode, summary.nodes),
        (3, true, 6)
    );
    assert_eq!(
        summary.endpoint.as_deref(),
        Some(&*format!("{CONFIGURATION}:6379"))
    );
}

/// ElastiCache cannot turn cluster mode on or off in place with the data kept: `up`'s
/// preflight refuses either way and says what to do, before changing anything.
#[tokio::test]
async fn going_between_one_shard_and_a_cluster_is_refused_with_what_to_do() {
    let modify = mock!(Client::modify_replication_group)
        .then_output(|| ModifyReplicationGroupOutput::builder().build());
    let cases = [
        (
            existing("available", &[&modify]),
            3,
            "cluster mode off (one shard), stack.yaml says 3 shards",
        ),
        (
            existing_group(|| cluster("available", 3, 1), &[&modify]),
            1,
            "cluster mode with 3 shard(s), stack.yaml says 1 shard",
        ),
    ];
    for (clients, shards, why) in cases {
        let mut stack = testing::stack(clients);
        stack.spec.redis.shards = shards;
        let err = check_changes(&stack).await.unwrap_err().to_string();
        for what in [why, "realtime-stack destroy", "another name", "chat-redis"] {
            assert!(err.contains(what), "{what}: {err}");
        }
    }
    assert_eq!(modify.num_calls(), 0);
}

/// More shards: ModifyReplicationGroupShardConfiguration, online, after the replicas
/// (so the new shards get the final count); fewer: the highest node groups are named
/// for removal, before anything else.
#[tokio::test]
async fn a_cluster_reshards_online_to_the_shards_stack_yaml_asks_for() {
    let mut clients = testing::clients();
    clients.elasticache = mock_client!(aws_sdk_elasticache, []);
    let mut stack = testing::stack(clients);
    stack.spec.redis.shards = 5;
    stack.spec.redis.replicas = 2;
    assert_eq!(
        fixes(&stack, &cluster("available", 3, 1)).await.unwrap(),
        [
            Fix::AddReplicas(2),
            Fix::Reshard {
                count: 5,
                remove: vec![]
            }
        ]
    );
    stack.spec.redis.shards = 2;
    stack.spec.redis.replicas = 0;
    assert_eq!(
        fixes(&stack, &cluster("available", 4, 1)).await.unwrap(),
        [
            Fix::Reshard {
                count: 2,
                remove: vec!["0003".into(), "0004".into()]
            },
            // Cluster mode keeps failover on without replicas; Multi-AZ goes first.
            Fix::Failover {
                failover: true,
                multi_az: false
            },
            Fix::RemoveReplicas(0),
        ]
    );

    let reshard = mock!(Client::modify_replication_group_shard_configuration)
        .match_requests(|req| {
            req.replication_group_id() == Some("chat-redis")
                && req.node_group_count() == Some(2)
                && req.node_groups_to_remove() == ["0003", "0004"]
                && req.apply_immediately() == Some(true)
        })
        .then_output(|| ModifyReplicationGroupShardConfigurationOutput::builder().build());
    let describe = mock!(Client::describe_replication_groups)
        .sequence()
        .output(|| described(cluster("available", 4, 1)))
        .times(2)
        .output(|| described(cluster("modifying", 3, 1)))
        .output(|| described(cluster("available", 2, 1)))
        .build();
    let mut stack = testing::stack(mocked(&[
        &mock!(Client::describe_cache_subnet_groups).then_output(subnet_group),
        &mock!(Client::list_tags_for_resource).then_output(stack_tagged),
        &describe,
        &reshard,
    ]));
    stack.spec.redis.shards = 2;

    let redis = ensure(&stack, &subnets(), "sg-redis").await.unwrap();

    assert_eq!(reshard.num_calls(), 1);
    assert_eq!(redis.address, CONFIGURATION);
}

/// `engine_version` asks ElastiCache: its default (the last answered with DefaultOnly),
/// a pinned version it offers, the newest of a major for `6.x`; and refuses one it does
/// not offer, listing those it does.
#[tokio::test]
async fn the_engine_version_and_its_family_are_elasticaches() {
    let offered = offered_versions();
    let mut stack = testing::stack(mocked(&[&offered]));
    for (engine, pinned, version, family) in [
        ("redis", None, "7.1", "redis7"),
        ("valkey", None, "9.0", "valkey9"),
        ("valkey", Some("7.2"), "7.2", "valkey7"),
        ("redis", Some("6.2"), "6.2", "redis6.x"),
        ("redis", Some("6.x"), "6.2", "redis6.x"),
    ] {
        stack.spec.redis.engine = engine.into();
        let found = engine_version(&stack, pinned).await.unwrap();
        assert_eq!(
            found,
            EngineVersion {
                version: version.into(),
                family: family.into()
            },
            "{engine} {pinned:?}"
        );
    }
    stack.spec.redis.engine = "valkey".into();
    assert_eq!(
        cluster_parameter_group(&stack, None).await.unwrap(),
        "default.valkey9.cluster.on"
    );
    let error = engine_version(&stack, Some("8.5")).await.unwrap_err();
    assert!(
        format!("{error:#}")
            .contains("offers no valkey version 8.5 in us-east-1 (it offers 7.2, 8.0, 9.0)"),
        "{error:#}"
    );
}

fn subnets_invalid(message: &str) -> CreateCacheSubnetGroupError {
    CreateCacheSubnetGroupError::generic(
        ErrorMetadata::builder()
            .code("InvalidParameterValue")
            .message(message)
            .build(),
    )
}

/// The private subnets a first `up` made seconds earlier: ElastiCache reads them from EC2
/// with EC2's delay and answers `Some input subnets in :[...] are invalid.`
/// (hashicorp/terraform#4404; platform-engineering-labs/formae retries the same answer of
/// RDS subnet groups as eventual consistency). The subnet group is created once EC2's
/// answer reaches ElastiCache.
#[tokio::test(start_paused = true)]
async fn a_subnet_group_of_subnets_elasticache_does_not_know_yet_is_created_once_it_does() {
    let no_subnet_group = no_subnet_group();
    let create_subnet_group = mock!(Client::create_cache_subnet_group)
        .sequence()
        .error(|| subnets_invalid("Some input subnets in :[subnet-a, subnet-b] are invalid."))
        .times(3)
        .output(|| CreateCacheSubnetGroupOutput::builder().build())
        .build();
    let mut stack = testing::stack(mocked(&[&no_subnet_group, &create_subnet_group]));
    stack.pace = Pace::Aws;

    ensure_subnet_group(&stack, &subnets()).await.unwrap();

    assert_eq!(create_subnet_group.num_calls(), 4);
}

/// The same code with another message is a lasting mistake: it fails at once.
#[tokio::test(start_paused = true)]
async fn a_subnet_group_refused_for_another_reason_is_not_retried() {
    let no_subnet_group = no_subnet_group();
    let refused = mock!(Client::create_cache_subnet_group).then_error(|| {
        subnets_invalid("The parameter CacheSubnetGroupName is not a valid identifier.")
    });
    let stack = testing::stack(mocked(&[&no_subnet_group, &refused]));

    let err = ensure_subnet_group(&stack, &subnets())
        .await
        .unwrap_err()
        .to_string();

    assert!(err.contains("not a valid identifier"), "{err}");
    assert_eq!(refused.num_calls(), 1);
}

/// `drill redis` on AWS: TestFailover on the primary's node group, then the group is
/// `modifying` for minutes before it is `available` with another primary (AWS, "Testing
/// automatic failover": <https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/AutoFailover.html>).
/// The drill waits for both, and names the new primary.
#[tokio::test(start_paused = true)]
async fn a_test_failover_is_waited_for_until_another_node_is_the_primary() {
    use aws_sdk_elasticache::operation::test_failover::TestFailoverOutput;
    use aws_sdk_elasticache::types::NodeGroupMember;

    let with_primary = |status: &'static str, primary: &'static str| {
        move || {
            let member = |id: &str, role: &str| {
                NodeGroupMember::builder()
                    .cache_cluster_id(id)
                    .current_role(role)
                    .build()
            };
            let replica = if primary == "chat-redis-001" {
                "chat-redis-002"
            } else {
                "chat-redis-001"
            };
            described(
                base(status)
                    .node_groups(
                        NodeGroup::builder()
                            .node_group_id("0001")
                            .node_group_members(member(primary, "primary"))
                            .node_group_members(member(replica, "replica"))
                            .build(),
                    )
                    .build(),
            )
        }
    };
    let described_rule = mock!(Client::describe_replication_groups)
        .sequence()
        .output(with_primary("available", "chat-redis-001"))
        .output(with_primary("modifying", "chat-redis-001"))
        .times(3)
        .output(with_primary("modifying", "chat-redis-002"))
        .output(with_primary("available", "chat-redis-002"))
        .build();
    let failover = mock!(Client::test_failover)
        .match_requests(|request| {
            request.replication_group_id() == Some("chat-redis")
                && request.node_group_id() == Some("0001")
        })
        .then_output(|| TestFailoverOutput::builder().build());
    let stack = testing::stack(mocked(&[&described_rule, &failover]));
    let step = stack.progress.step("failover");

    let primary = test_failover(&stack, &step).await.expect("failed over");

    assert_eq!(primary, "chat-redis-002");
    assert_eq!(failover.num_calls(), 1);
    assert_eq!(described_rule.num_calls(), 6);
}

/// `drill redis` on a cluster: ElastiCache reports no node's role with cluster mode on
/// (NodeGroupMember's CurrentRole "is only applicable for ... (cluster mode disabled)
/// replication groups"), so the new primary is the one the failover's event names:
/// "Failover from primary node <primary-node-id> to replica node <node-id> completed"
/// (API_TestFailover). The drill waits for the group and that event, and names it.
#[tokio::test(start_paused = true)]
async fn a_clusters_test_failover_names_the_node_its_event_says_was_promoted() {
    use aws_sdk_elasticache::operation::test_failover::TestFailoverOutput;

    let clustered = |status: &'static str| move || described(cluster(status, 2, 1));
    let described_rule = mock!(Client::describe_replication_groups)
        .sequence()
        .output(clustered("available"))
        .output(clustered("modifying"))
        .times(2)
        .output(clustered("available"))
        .repeatedly()
        .build();
    let event = |message: &str| Event::builder().message(message).build();
    let events = mock!(Client::describe_events)
        .match_requests(|request| {
            request.source_identifier() == Some("chat-redis") && request.start_time().is_some()
        })
        .sequence()
        .output(move || {
            DescribeEventsOutput::builder()
                .events(event("Test Failover API called for node group 0001"))
                .build()
        })
        .output(move || {
            DescribeEventsOutput::builder()
                .events(event("Test Failover API called for node group 0001"))
                .events(event(
                    "Failover from primary node chat-redis-0001-001 to replica node \
                     chat-redis-0001-002 completed",
                ))
                .build()
        })
        .build();
    let failover = mock!(Client::test_failover)
        .match_requests(|request| request.node_group_id() == Some("0001"))
        .then_output(|| TestFailoverOutput::builder().build());
    let stack = testing::stack(mocked(&[&described_rule, &events, &failover]));
    let step = stack.progress.step("failover");

    let primary = test_failover(&stack, &step).await.expect("failed over");

    assert_eq!(primary, "chat-redis-0001-002");
    assert_eq!(failover.num_calls(), 1);
    assert_eq!(events.num_calls(), 2);
}
