"""The engine versions ElastiCache offers, shared by its provider and the strict layer."""

# The versions of self-designed clusters ElastiCache offers, with their parameter group
# families, as its documentation lists them on 2026-12-03:
# https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/supported-engine-versions.html
# https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/engine-versions.html
# https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/ParameterGroups.Engine.html
# The last of each engine is answered as its default: AWS documents no default, and its
# default has moved to each new major (redis7 in November 2022:
# hashicorp/terraform-provider-aws#27748), which is what a stack must survive.
ENGINE_VERSIONS = {
    "redis": [
        ("4.0.10", "redis4.0"),
        ("5.0.6", "redis5.0"),
        ("6.0", "redis6.x"),
        ("6.2", "redis6.x"),
        ("7.0", "redis7"),
        ("7.1", "redis7"),
    ],
    "valkey": [
        ("7.2", "valkey7"),
        ("8.0", "valkey8"),
        ("8.1", "valkey8"),
        ("8.2", "valkey8"),
        ("9.0", "valkey9"),
        ("9.1", "valkey9"),
    ],
}


def engine_family(engine: str, version: str | None) -> str | None:
    """The parameter group family of `engine` at `version` (its default when None, the
    newest 6 for `6.x`), or None when ElastiCache does not offer that version."""
    offered = ENGINE_VERSIONS.get(engine, [])
    if version is None:
        return offered[-1][1] if offered else None
    if version.endswith(".x"):
        # `6.x`: the newest version of that major; "y.x version style is only applicable
        # for 6.x" (hashicorp/terraform-provider-aws#34897).
        major = version.removesuffix(".x")
        if major != "6":
            return None
        offered = [entry for entry in offered if entry[0].split(".")[0] == major]
        return offered[-1][1] if offered else None
    return next((family for listed, family in offered if listed == version), None)
