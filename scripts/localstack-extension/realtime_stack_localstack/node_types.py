"""The node types ElastiCache scales a replication group between, for its provider's
ListAllowedNodeTypeModifications, which moto does not implement.

ElastiCache answers, for the group's node type, the types it can scale up to and down to
(https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_ListAllowedNodeTypeModifications.html),
across families: its own example lists cache.r5 types from a cache.r4 group (AWS
re:Post, knowledge-center/elasticache-cluster-fix-scale-down). Whether a scale down then
succeeds depends on the data, which the list does not consider. Here a type with more
memory than the group's is a scale up and one with less a scale down, by the memory
ElastiCache's pricing page lists for each node type (https://aws.amazon.com/elasticache/pricing/,
"On-Demand Nodes"; written from it, not re-read on a machine with no network: only the
order of the figures matters here), for the current families the documentation of
realtime-stack names. A group of a type missing from the table is offered nothing.
"""

# GiB of memory per node type.
NODE_MEMORY_GIB = {
    **{f"cache.{family}.micro": 0.5 for family in ("t3", "t4g")},
    **{f"cache.{family}.small": 1.37 for family in ("t3", "t4g")},
    **{f"cache.{family}.medium": 3.09 for family in ("t3", "t4g")},
    **{
        f"cache.{family}.{size}": memory
        for family in ("m6g", "m7g")
        for size, memory in (
            ("large", 6.38),
            ("xlarge", 12.93),
            ("2xlarge", 26.04),
            ("4xlarge", 52.26),
            ("8xlarge", 103.68),
            ("12xlarge", 157.12),
            ("16xlarge", 209.55),
        )
    },
    **{
        f"cache.{family}.{size}": memory
        for family in ("r6g", "r7g")
        for size, memory in (
            ("large", 13.07),
            ("xlarge", 26.32),
            ("2xlarge", 52.82),
            ("4xlarge", 105.81),
            ("8xlarge", 209.55),
            ("12xlarge", 317.77),
            ("16xlarge", 419.09),
        )
    },
}


def allowed_modifications(node_type: str) -> tuple[list[str], list[str]]:
    """The node types a group of `node_type` scales up to, and down to."""
    memory = NODE_MEMORY_GIB.get(node_type)
    if memory is None:
        return [], []
    up = sorted(other for other, size in NODE_MEMORY_GIB.items() if size > memory)
    down = sorted(other for other, size in NODE_MEMORY_GIB.items() if size < memory)
    return up, down
