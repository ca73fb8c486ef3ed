"""Changes to a replication group as ElastiCache makes them, on moto's backend, which has
none of them: ModifyReplicationGroup, IncreaseReplicaCount, DecreaseReplicaCount and
ModifyReplicationGroupShardConfiguration. moto also lists no node of a replication group
in DescribeCacheClusters, where ElastiCache lists each.

A change takes time, as on AWS: the group is `modifying` for `CHANGE_SECONDS`, then has
it and is `available`. A node it adds reads `creating`, and one it removes `deleting`, for
`NODE_LAG_SECONDS` longer: ElastiCache reports the group available while they still are,
and refuses the next change until they are not (`InvalidCacheClusterState`,
hashicorp/terraform-provider-aws#50096). Each answer first settles what is due.

What ElastiCache refuses is refused, with its codes:
- any change to a group that is not available: "Replication group must be in available
  state to modify." (`InvalidReplicationGroupState`, aws-controllers-k8s/community#228),
  and DeleteReplicationGroup of one being changed (API_DeleteReplicationGroup);
- a change while a node of the group is not available (`InvalidCacheClusterState`, #50096);
- ListTagsForResource of a group that is not available: "Cluster not in available state to
  perform tagging operations." (hashicorp/terraform-provider-aws#33859);
- automatic failover on a group without a replica: "Replication group must have at least
  one read replica to enable autofailover." (aws-cloudformation/cloudformation-coverage-roadmap#383),
  off on a cluster: "Turning off automatic failover for replication group with cluster
  mode enabled is not supported." (#1275 there), and Multi-AZ without it (API reference:
  MultiAZEnabled);
- a node type ListAllowedNodeTypeModifications does not offer, an engine version
  ElastiCache does not offer or older than the group's ("you cannot downgrade to an
  earlier engine version", API_ModifyReplicationGroup);
- replicas: up to 5 per shard, and at least 1 while Multi-AZ is on (API_DecreaseReplicaCount,
  NewReplicaCount);
- a shard count below the group's without NodeGroupsToRemove or NodeGroupsToRetain, and
  resharding a group with cluster mode off (API_ModifyReplicationGroupShardConfiguration).

Node type and engine version wait for the maintenance window without ApplyImmediately;
LocalStack has none, so they stay as they are.
"""

import copy
import functools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from localstack.aws.api import CommonServiceException
from localstack.aws.forwarder import create_aws_request_context
from localstack.services.moto import call_moto

from .engines import ENGINE_VERSIONS, engine_family
from .node_types import allowed_modifications

CHANGE_SECONDS = 2.0
NODE_LAG_SECONDS = 1.5
MAX_REPLICAS = 5
SLOTS = 16384


@dataclass
class Change:
    """A group's change under way: what it becomes when `due`, and its nodes' states."""

    due: float
    apply: list[Callable[[], None]] = field(default_factory=list)


# LocalStack answers requests on many threads; every handler holds this while it reads or
# changes the groups and the state below.
LOCK = threading.RLock()
# By the group's ARN (which names its account and region).
CHANGES: dict[str, Change] = {}
# By (group ARN, node id): the state of a node being added or removed, and until when.
NODES: dict[tuple[str, str], tuple[str, float]] = {}


def locked(handler):
    @functools.wraps(handler)
    def run(context, request):
        with LOCK:
            return handler(context, request)

    return run


def refused(code: str, message: str) -> CommonServiceException:
    return CommonServiceException(code, message, status_code=400)


def backend_of(context):
    from moto.elasticache.models import elasticache_backends

    return elasticache_backends[context.account_id][context.region]


def settle(backend) -> None:
    """Ends each change that is due, and forgets the nodes that are done."""
    now = time.time()
    for group in list(backend.replication_groups.values()):
        change = CHANGES.get(group.arn)
        if change is not None and change.due <= now:
            for apply in change.apply:
                apply()
            group.status = "available"
            CHANGES.pop(group.arn, None)
    for key, (_, until) in list(NODES.items()):
        if until <= now:
            NODES.pop(key, None)


def group_of(context, group_id: str):
    backend = backend_of(context)
    settle(backend)
    group = backend.replication_groups.get(group_id or "")
    if group is None:
        raise CommonServiceException(
            "ReplicationGroupNotFoundFault", f"Replication group {group_id} not found.", status_code=404
        )
    return group


def node_state(group, node_id: str) -> str:
    state = NODES.get((group.arn, node_id))
    if state is not None:
        return state[0]
    return "modifying" if group.status == "modifying" else group.status


def ready_to_change(group) -> None:
    if group.status != "available":
        raise refused("InvalidReplicationGroupState", "Replication group must be in available state to modify.")
    busy = sorted(node for (arn, node) in NODES if arn == group.arn)
    if busy:
        raise refused(
            "InvalidCacheClusterState",
            f"Cache cluster {busy[0]} is not in a valid state to be modified: {node_state(group, busy[0])}.",
        )


def begin(group, apply: list[Callable[[], None]]) -> None:
    group.status = "modifying"
    CHANGES[group.arn] = Change(due=time.time() + CHANGE_SECONDS, apply=apply)


def node_lag(group, node_id: str, state: str) -> None:
    NODES[(group.arn, node_id)] = (state, time.time() + CHANGE_SECONDS + NODE_LAG_SECONDS)


def answer(context, group) -> dict:
    """The group as DescribeReplicationGroups gives it, from moto."""
    describe = create_aws_request_context(
        "elasticache",
        "DescribeReplicationGroups",
        parameters={"ReplicationGroupId": group.replication_group_id},
        region=context.region,
    )
    # The caller's headers carry its account.
    headers = copy.deepcopy(context.request.headers)
    headers.update(describe.request.headers)
    describe.request.headers = headers
    return {"ReplicationGroup": call_moto(describe)["ReplicationGroups"][0]}


def replicas_per_shard(group) -> int:
    return max(len(node_group["node_group_members"]) - 1 for node_group in group.node_groups)


def full_version(group) -> str:
    """The version the nodes report: in full (`7.1.0` for `7.1`; ElastiCache's default when
    none was asked; the newest 6 for `6.x`)."""
    offered = [version for version, _ in ENGINE_VERSIONS.get(group.engine, [])]
    version = group.engine_version or (offered[-1] if offered else "7.1")
    if version.endswith(".x"):
        major = version.removesuffix(".x")
        version = [listed for listed in offered if listed.split(".")[0] == major][-1]
    return version if version.count(".") >= 2 else f"{version}.0"


def version_numbers(version: str) -> list[int]:
    numbers = []
    for part in version.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return numbers


def node_clusters(context, group) -> list[dict]:
    """The group's nodes as DescribeCacheClusters lists them, those leaving included."""
    members = [
        (member, node_group)
        for node_group in group.node_groups
        for member in node_group["node_group_members"]
    ]
    leaving = [node for (arn, node) in NODES if arn == group.arn]
    listed = [member["cache_cluster_id"] for member, _ in members]
    zones = {member["cache_cluster_id"]: member.get("preferred_availability_zone") for member, _ in members}
    return [
        {
            "CacheClusterId": node,
            "ARN": f"arn:aws:elasticache:{context.region}:{context.account_id}:cluster:{node}",
            "CacheClusterStatus": node_state(group, node),
            "CacheNodeType": group.cache_node_type,
            "Engine": group.engine,
            "EngineVersion": full_version(group),
            "NumCacheNodes": 1,
            "PreferredAvailabilityZone": zones.get(node) or "us-east-1a",
            "CacheClusterCreateTime": group.replication_group_create_time,
            "CacheSubnetGroupName": group.cache_subnet_group_name,
            "SecurityGroups": [
                {"SecurityGroupId": security_group, "Status": "active"}
                for security_group in group.security_group_ids or []
            ],
            "ReplicationGroupId": group.replication_group_id,
            "SnapshotRetentionLimit": group.snapshot_retention_limit,
            "TransitEncryptionEnabled": bool(group.transit_encryption_enabled),
            "AtRestEncryptionEnabled": bool(group.at_rest_encryption_enabled),
        }
        for node in [*listed, *(node for node in leaving if node not in listed)]
    ]


@locked
def describe_cache_clusters(context, request):
    """moto's clusters, with each replication group's nodes, as ElastiCache lists them
    unless ShowCacheClustersNotInReplicationGroups."""
    backend = backend_of(context)
    settle(backend)
    nodes = [node for group in backend.replication_groups.values() for node in node_clusters(context, group)]
    wanted = request.get("CacheClusterId")
    if wanted is not None:
        found = [node for node in nodes if node["CacheClusterId"] == wanted]
        return {"CacheClusters": found} if found else call_moto(context)
    response = call_moto(context)
    if not request.get("ShowCacheClustersNotInReplicationGroups") and not response.get("Marker"):
        response["CacheClusters"] = [*response.get("CacheClusters", []), *nodes]
    return response


@locked
def describe_replication_groups(context, _request):
    settle(backend_of(context))
    return call_moto(context)


@locked
def list_tags_for_resource(context, request):
    backend = backend_of(context)
    settle(backend)
    arn = request.get("ResourceName") or ""
    for group in backend.replication_groups.values():
        if group.arn == arn and group.status != "available":
            raise refused("InvalidReplicationGroupState", "Cluster not in available state to perform tagging operations.")
    return call_moto(context)


@locked
def modify_replication_group(context, request):
    group = group_of(context, request.get("ReplicationGroupId"))
    ready_to_change(group)
    now_immediately = bool(request.get("ApplyImmediately"))
    apply: list[Callable[[], None]] = []
    changed = False

    node_type = request.get("CacheNodeType")
    if node_type and node_type != group.cache_node_type:
        up, down = allowed_modifications(group.cache_node_type)
        if node_type not in up + down:
            raise refused(
                "InvalidParameterCombination",
                f"Cannot modify the node type of {group.replication_group_id} from "
                f"{group.cache_node_type} to {node_type}: see ListAllowedNodeTypeModifications.",
            )
        changed = True
        if now_immediately:
            apply.append(lambda: setattr(group, "cache_node_type", node_type))

    version = request.get("EngineVersion")
    if version:
        if engine_family(group.engine, version) is None:
            raise refused(
                "InvalidParameterValue",
                f"Cannot find version {version} for {group.engine}: see DescribeCacheEngineVersions.",
            )
        have = version_numbers(full_version(group))
        want = version_numbers(version)
        if want < have[: len(want)]:
            raise refused(
                "InvalidParameterValue",
                f"Cannot downgrade {group.engine} from {full_version(group)} to {version}.",
            )
        changed = changed or want != have[: len(want)]
        if now_immediately:
            parameter_group = request.get("CacheParameterGroupName")
            apply.append(lambda: setattr(group, "engine_version", version))
            if parameter_group:
                apply.append(lambda: setattr(group, "cache_parameter_group_name", parameter_group))

    failover = request.get("AutomaticFailoverEnabled")
    multi_az = request.get("MultiAZEnabled")
    failover_after = failover if failover is not None else group.automatic_failover == "enabled"
    # A cluster keeps failover on, replicas or not (API reference: AutomaticFailoverEnabled).
    if failover is True and replicas_per_shard(group) == 0 and group.cluster_mode != "enabled":
        raise refused(
            "InvalidParameterCombination",
            "Replication group must have at least one read replica to enable autofailover.",
        )
    if failover is False and group.cluster_mode == "enabled":
        raise refused(
            "InvalidParameterCombination",
            "Turning off automatic failover for replication group with cluster mode enabled is not supported.",
        )
    if multi_az is True and not failover_after:
        raise refused("InvalidParameterCombination", "Multi-AZ requires automatic failover to be enabled.")
    if failover is not None and failover != (group.automatic_failover == "enabled"):
        changed = True
        group.automatic_failover = "enabling" if failover else "disabling"
        apply.append(lambda: setattr(group, "automatic_failover", "enabled" if failover else "disabled"))
    if multi_az is not None and multi_az != (group.multi_az == "enabled"):
        changed = True
        apply.append(lambda: setattr(group, "multi_az", "enabled" if multi_az else "disabled"))

    retention = request.get("SnapshotRetentionLimit")
    if retention is not None and not 0 <= retention <= 35:
        raise refused("InvalidParameterValue", "SnapshotRetentionLimit must be between 0 and 35 days.")
    if retention is not None and retention != group.snapshot_retention_limit:
        changed = True
        apply.append(lambda: setattr(group, "snapshot_retention_limit", retention))

    upgrades = request.get("AutoMinorVersionUpgrade")
    if upgrades is not None and upgrades != group.auto_minor_version_upgrade:
        changed = True
        apply.append(lambda: setattr(group, "auto_minor_version_upgrade", upgrades))

    # terraform-provider-aws handles this answer to a request that changes nothing.
    if not changed:
        raise refused("InvalidParameterCombination", "No modifications were requested.")
    begin(group, apply)
    return answer(context, group)


def node_id(group, node_group: dict, number: int) -> str:
    if group.cluster_mode == "enabled":
        return f"{group.replication_group_id}-{node_group['node_group_id']}-{number:03}"
    return f"{group.replication_group_id}-{number:03}"


def add_replicas(group, node_group: dict, count: int) -> None:
    """`count` replicas more in `node_group`, `creating` until the change is done."""
    numbers = [int(member["cache_cluster_id"].rsplit("-", 1)[1]) for member in node_group["node_group_members"]]
    for number in range(max(numbers, default=0) + 1, max(numbers, default=0) + 1 + count):
        node = node_id(group, node_group, number)
        member = {
            "cache_cluster_id": node,
            "cache_node_id": "0001",
            "preferred_availability_zone": "us-east-1b",
        }
        # CurrentRole "is only applicable for ... (cluster mode disabled) replication
        # groups" (API reference, NodeGroupMember).
        if group.cluster_mode != "enabled":
            member["current_role"] = "replica"
        node_group["node_group_members"].append(member)
        group.member_clusters.append(node)
        node_lag(group, node, "creating")


def remove_nodes(group, node_group: dict, nodes: list[str]) -> Callable[[], None]:
    """Marks `nodes` `deleting`; what removes them from the group once the change is done."""
    for node in nodes:
        node_lag(group, node, "deleting")

    def remove() -> None:
        node_group["node_group_members"] = [
            member for member in node_group["node_group_members"] if member["cache_cluster_id"] not in nodes
        ]
        group.member_clusters[:] = [member for member in group.member_clusters if member not in nodes]

    return remove


def replica_count_change(context, request) -> tuple:
    """The group and the replica counts a change asks for, after what both calls refuse:
    ApplyImmediately other than true ("ApplyImmediately=False is not currently
    supported", API reference), and the count the group has already (`NoOperationFault`,
    aws-controllers-k8s/community#377)."""
    group = group_of(context, request.get("ReplicationGroupId"))
    if not request.get("ApplyImmediately"):
        raise refused("InvalidParameterValue", "ApplyImmediately=False is not currently supported.")
    ready_to_change(group)
    want = int(request.get("NewReplicaCount") or 0)
    have = replicas_per_shard(group)
    if want == have:
        raise refused("NoOperationFault", "Requested new replica count already matches current number of replicas.")
    return group, want, have


def check_quota(shards: int, replicas: int) -> None:
    """The shards and nodes a new account may have in one cluster (strict.py's create rule)."""
    from .strict import CLUSTER_QUOTA

    if shards > CLUSTER_QUOTA:
        raise refused(
            "NodeGroupsPerReplicationGroupQuotaExceeded",
            f"The request would exceed the maximum of {CLUSTER_QUOTA} node groups in a replication group.",
        )
    if shards * (1 + replicas) > CLUSTER_QUOTA:
        raise refused(
            "NodeQuotaForClusterExceeded",
            f"The request would exceed the allowed number of cache nodes in a single cluster ({CLUSTER_QUOTA}).",
        )


@locked
def increase_replica_count(context, request):
    group, want, have = replica_count_change(context, request)
    if want > MAX_REPLICAS:
        raise refused("InvalidParameterValue", f"NewReplicaCount must be at most {MAX_REPLICAS}.")
    if want < have:
        raise refused(
            "InvalidParameterValue",
            f"NewReplicaCount {want} must be more than the {have} replica(s) each shard has.",
        )
    check_quota(len(group.node_groups), want)
    for node_group in group.node_groups:
        add_replicas(group, node_group, want - (len(node_group["node_group_members"]) - 1))
    begin(group, [])
    return answer(context, group)


@locked
def decrease_replica_count(context, request):
    group, want, have = replica_count_change(context, request)
    if want > have:
        raise refused(
            "InvalidParameterValue",
            f"NewReplicaCount {want} must be fewer than the {have} replica(s) each shard has.",
        )
    # hashicorp/terraform-provider-aws#24244.
    if want < 1 and group.cluster_mode != "enabled" and group.automatic_failover in ("enabled", "enabling"):
        raise refused(
            "InvalidParameterValue",
            "Must have at least 1 replica when cluster mode is disabled with auto failover enabled.",
        )
    apply = []
    for node_group in group.node_groups:
        # The primary is each node group's first member.
        replicas = [member["cache_cluster_id"] for member in node_group["node_group_members"][1:]]
        apply.append(remove_nodes(group, node_group, replicas[want:]))
    begin(group, apply)
    return answer(context, group)


def spread_slots(node_groups: list[dict]) -> None:
    """The 16 384 hash slots in even ranges over `node_groups`, as ElastiCache balances
    them by default."""
    start = 0
    for index, node_group in enumerate(node_groups):
        end = (SLOTS * (index + 1)) // len(node_groups) - 1
        node_group["slots"] = f"{start}-{end}"
        start = end + 1


@locked
def modify_shard_configuration(context, request):
    group = group_of(context, request.get("ReplicationGroupId"))
    if group.cluster_mode != "enabled":
        raise refused(
            "InvalidParameterValue",
            f"Replication group {group.replication_group_id} has cluster mode disabled: it has no shards to reconfigure.",
        )
    if not request.get("ApplyImmediately"):
        raise refused("InvalidParameterValue", "ApplyImmediately must be true: it is the only value permitted.")
    ready_to_change(group)
    want = int(request.get("NodeGroupCount") or 0)
    have = len(group.node_groups)
    ids = [node_group["node_group_id"] for node_group in group.node_groups]
    if want < 1:
        raise refused("InvalidParameterValue", "NodeGroupCount must be at least 1.")
    if request.get("NodeGroupsToRemove") and request.get("NodeGroupsToRetain"):
        raise refused(
            "InvalidParameterCombination", "Only one of NodeGroupsToRemove and NodeGroupsToRetain may be given."
        )
    check_quota(want, replicas_per_shard(group))
    if want == have:
        raise refused("InvalidParameterValue", f"The replication group already has {have} node groups.")
    apply: list[Callable[[], None]] = []
    if want < have:
        remove = list(request.get("NodeGroupsToRemove") or [])
        retain = list(request.get("NodeGroupsToRetain") or [])
        if retain:
            remove = [node_group for node_group in ids if node_group not in retain]
        if not remove:
            raise refused(
                "InvalidParameterValue",
                "NodeGroupsToRemove or NodeGroupsToRetain is required when NodeGroupCount is below the current count.",
            )
        if len(remove) != have - want or any(node_group not in ids for node_group in remove):
            raise refused(
                "InvalidParameterValue",
                f"The node groups to remove ({', '.join(remove)}) must be {have - want} of the group's ({', '.join(ids)}).",
            )
        for node_group in group.node_groups:
            if node_group["node_group_id"] in remove:
                apply.append(
                    remove_nodes(group, node_group, [m["cache_cluster_id"] for m in node_group["node_group_members"]])
                )

        def drop() -> None:
            group.node_groups[:] = [ng for ng in group.node_groups if ng["node_group_id"] not in remove]
            spread_slots(group.node_groups)

        apply.append(drop)
    else:
        replicas = replicas_per_shard(group)
        number = max(int(node_group) for node_group in ids)
        for index in range(want - have):
            node_group = {
                "node_group_id": f"{number + index + 1:0>4}",
                "status": "available",
                "node_group_members": [],
            }
            group.node_groups.append(node_group)
            add_replicas(group, node_group, 1 + replicas)
        apply.append(lambda: spread_slots(group.node_groups))
    begin(group, apply)
    return answer(context, group)


def forget(group) -> None:
    """Drops what is kept of a deleted group's changes."""
    CHANGES.pop(group.arn, None)
    for key in [key for key in NODES if key[0] == group.arn]:
        del NODES[key]


def delete_ready(context, request) -> None:
    """DeleteReplicationGroup is refused while the group is being changed."""
    backend = backend_of(context)
    settle(backend)
    group = backend.replication_groups.get(request.get("ReplicationGroupId") or "")
    busy = group is not None and any(arn == group.arn for (arn, _) in NODES)
    if group is not None and (group.status == "modifying" or busy):
        raise refused(
            "InvalidReplicationGroupState",
            f"Replication group {group.replication_group_id} is not in available state: modifying.",
        )
