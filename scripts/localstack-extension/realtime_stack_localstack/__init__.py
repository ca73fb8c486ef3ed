"""LocalStack service providers for ELBv2 and ElastiCache.

The LocalStack community edition refuses these two APIs ("not included in your
current license plan"), although the moto backends it bundles implement them.
These providers route every operation of each API to moto. moto's backends are
process-wide, so the load balancers and cache subnet groups created here see the
VPCs, subnets and security groups created through LocalStack's own EC2 provider.

Where moto lacks an operation the CLI calls, it is implemented here, on moto's
backend, with AWS's error codes; changes to a replication group, which take time, are
in `replication_groups`.
"""

from localstack.aws.api import CommonServiceException
from localstack.aws.skeleton import Skeleton
from localstack.aws.spec import load_service
from localstack.services.moto import call_moto, call_moto_with_request
from localstack.services.plugins import Service, aws_provider

from . import replication_groups
from .engines import ENGINE_VERSIONS
from .node_types import allowed_modifications


def forward_to_moto(context, _request):
    return call_moto(context)


def moto_service(api: str, overrides: dict) -> Service:
    """A LocalStack service whose operations are answered by moto, except `overrides`."""
    model = load_service(api)
    dispatch_table = {operation: forward_to_moto for operation in model.operation_names}
    dispatch_table.update(overrides)
    return Service(name=api, skeleton=Skeleton(model, dispatch_table))


def create_replication_group(context, request):
    """moto sizes a cluster-mode-disabled group by ReplicasPerNodeGroup and ignores
    NumCacheClusters, so a primary with replicas would come out as a lone primary."""
    clusters = request.get("NumCacheClusters")
    if clusters and "ReplicasPerNodeGroup" not in request:
        request = {**request, "ReplicasPerNodeGroup": clusters - 1}
    response = call_moto_with_request(context, request)
    # moto's slot ranges fit three shards only (a fourth would start at 16384): spread
    # them over the shards there are, as ElastiCache does by default.
    group = replication_groups.backend_of(context).replication_groups.get(request["ReplicationGroupId"])
    if group is not None and group.cluster_mode == "enabled":
        replication_groups.spread_slots(group.node_groups)
        response["ReplicationGroup"]["NodeGroups"] = [
            {**answered, "Slots": node_group["slots"]}
            for answered, node_group in zip(response["ReplicationGroup"].get("NodeGroups", []), group.node_groups)
        ]
    return response


@replication_groups.locked
def delete_replication_group(context, request):
    """moto leaves a deleted group `deleting` for ever; AWS removes it once deleted.
    Answer as AWS does (the group, `deleting`), then let it be gone."""
    replication_groups.delete_ready(context, request)
    response = call_moto(context)
    backend = replication_groups.backend_of(context)
    group = backend.replication_groups.pop(request["ReplicationGroupId"], None)
    if group is not None:
        backend.tagging_service.delete_all_tags_for_resource(group.arn)
        replication_groups.forget(group)
    return response


def delete_cache_subnet_group(context, request):
    backend = replication_groups.backend_of(context)
    name = request["CacheSubnetGroupName"]
    group = backend.cache_subnet_groups.get(name)
    if group is None:
        raise CommonServiceException(
            "CacheSubnetGroupNotFoundFault", f"CacheSubnetGroup {name} not found.", status_code=404
        )
    users = [
        resource
        for resource in (*backend.replication_groups.values(), *backend.cache_clusters.values())
        if getattr(resource, "cache_subnet_group_name", None) == name
    ]
    if users:
        raise CommonServiceException(
            "CacheSubnetGroupInUse", f"Cache subnet group {name} is currently in use.", status_code=400
        )
    del backend.cache_subnet_groups[name]
    backend.tagging_service.delete_all_tags_for_resource(group.arn)
    return {}


def describe_cache_engine_versions(_context, request):
    """moto does not implement DescribeCacheEngineVersions; answered from
    `engines.ENGINE_VERSIONS`, with its filters (one page: the table is short)."""
    versions = []
    for engine, offered in ENGINE_VERSIONS.items():
        if request.get("Engine") not in (None, engine):
            continue
        if request.get("DefaultOnly"):
            offered = offered[-1:]
        for version, family in offered:
            if request.get("EngineVersion") not in (None, version):
                continue
            if request.get("CacheParameterGroupFamily") not in (None, family):
                continue
            versions.append(
                {
                    "Engine": engine,
                    "EngineVersion": version,
                    "CacheParameterGroupFamily": family,
                    "CacheEngineDescription": engine,
                    "CacheEngineVersionDescription": f"{engine} {version}",
                }
            )
    return {"CacheEngineVersions": versions}


def modify_listener(context, request):
    """moto refuses a ModifyListener whose `SslPolicy` its own table lacks, and the table
    stops at the policies of 2021-06, while its CreateListener takes any name: a listener
    created with a post-quantum policy could not be given another certificate. The strict
    layer has held the name to AWS's list by now; moto is asked without a policy it lacks,
    and the listener gets it after."""
    from moto.elbv2.models import elbv2_backends

    from .strict import moto_ssl_policies

    policy = request.get("SslPolicy")
    if policy is None or policy in moto_ssl_policies():
        return call_moto(context)
    without = {key: value for key, value in request.items() if key != "SslPolicy"}
    response = call_moto_with_request(context, without)
    backend = elbv2_backends[context.account_id][context.region]
    for load_balancer in backend.load_balancers.values():
        listener = load_balancer.listeners.get(request["ListenerArn"])
        if listener is not None:
            listener.ssl_policy = policy
    for listener in response.get("Listeners", []):
        listener["SslPolicy"] = policy
    return response


def list_allowed_node_type_modifications(context, request):
    """moto does not implement ListAllowedNodeTypeModifications; answered from
    `node_types.NODE_MEMORY_GIB` for the group's node type."""
    backend = replication_groups.backend_of(context)
    group_id = request.get("ReplicationGroupId") or ""
    group = backend.replication_groups.get(group_id)
    if group is None:
        raise CommonServiceException(
            "ReplicationGroupNotFoundFault",
            f"Replication group {group_id} not found.",
            status_code=404,
        )
    up, down = allowed_modifications(group.cache_node_type)
    return {"ScaleUpModifications": up, "ScaleDownModifications": down}


@aws_provider()
def elbv2() -> Service:
    return moto_service("elbv2", {"ModifyListener": modify_listener})


@aws_provider()
def elasticache() -> Service:
    return moto_service(
        "elasticache",
        {
            "CreateReplicationGroup": create_replication_group,
            "DeleteReplicationGroup": delete_replication_group,
            "DeleteCacheSubnetGroup": delete_cache_subnet_group,
            "DescribeCacheEngineVersions": describe_cache_engine_versions,
            "ListAllowedNodeTypeModifications": list_allowed_node_type_modifications,
            "DescribeCacheClusters": replication_groups.describe_cache_clusters,
            "DescribeReplicationGroups": replication_groups.describe_replication_groups,
            "ListTagsForResource": replication_groups.list_tags_for_resource,
            "ModifyReplicationGroup": replication_groups.modify_replication_group,
            "IncreaseReplicaCount": replication_groups.increase_replica_count,
            "DecreaseReplicaCount": replication_groups.decrease_replica_count,
            "ModifyReplicationGroupShardConfiguration": replication_groups.modify_shard_configuration,
        },
    )
