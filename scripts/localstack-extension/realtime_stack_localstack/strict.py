"""AWS's documented constraints on requests, held before LocalStack answers them.

LocalStack and moto accept much that AWS refuses: a security group rule description
with an apostrophe, a bucket named `sthree-...`, a load balancer named `internal-...`.
A test suite run against them alone would let such a request reach a user's first
`up` on AWS. This module refuses every request that breaks a constraint AWS documents,
with AWS's error code and message, before the request reaches any provider - LocalStack's
own (EC2, S3, ACM, Route 53) or this package's (ELBv2, ElastiCache).

How: an `on_infra_start` hook (an entry point of this package) appends `enforce` to
LocalStack's `serve_custom_service_request_handlers`, a step of its gateway's handler
chain that runs after the request is parsed (so `context.operation` and
`context.service_request` are known) and before the service's provider is called. An
exception raised there is serialized in the service's protocol, as the provider's own
errors are.

The rules are a table, `RULES`: service (LocalStack's name for it) -> operation -> the
checks of that operation's request. Each check takes the parsed request (and the request
context, for the rules that look at what exists) and raises `Refused`. Each cites the
AWS documentation page it rests on. Another service is a few lines: its operations and
their checks, built from the helpers below, added to `RULES`.
"""

import base64
import ipaddress
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable

from localstack.aws.api import CommonServiceException, RequestContext
from localstack.runtime import hooks

from .engines import engine_family

LOG = logging.getLogger(__name__)


class Refused(CommonServiceException):
    """AWS's answer to a request that breaks one of its documented constraints."""

    def __init__(self, code: str, message: str, status_code: int = 400):
        super().__init__(code, message, status_code=status_code, sender_fault=True)


Request = dict
Check = Callable[[Request, RequestContext], None]


# --- Shared helpers -------------------------------------------------------------------


def items(value) -> list:
    """A list member of a request, [] when absent."""
    return value or []


def is_tag_character(character: str) -> bool:
    """`[\\p{L}\\p{Z}\\p{N}_.:/=+\\-@]`: the tag characters of ELBv2, ElastiCache, ACM and
    S3 (letters, separators and numbers of any script, and `_ . : / = + - @`)."""
    return unicodedata.category(character)[0] in "LZN" or character in "_.:/=+-@"


def check_tags(
    tags: Iterable[dict],
    code: str,
    *,
    key_field: str = "Key",
    value_field: str = "Value",
    charset: bool = True,
    limit: int = 50,
    duplicate_code: str | None = None,
) -> None:
    """The tag restrictions every service shares: a key of 1 to 128 characters, a value of
    at most 256, no key starting with `aws:` (reserved for AWS), each key once per
    resource, at most `limit` tags; with `charset`, only `is_tag_character`s. EC2 alone
    takes any character (see `ec2_tag_restrictions`)."""
    tags = list(tags)
    if len(tags) > limit:
        raise Refused(code, f"The number of tags ({len(tags)}) exceeds the limit of {limit}.")
    seen = set()
    for tag in tags:
        key, value = tag.get(key_field) or "", tag.get(value_field) or ""
        # "Use each key only once for each resource. If you attempt to use the same key
        # twice on the same resource, your request will be rejected."
        # https://docs.aws.amazon.com/awsaccountbilling/latest/aboutv2/allocation-tag-restrictions.html
        # (EC2 answers InvalidParameterValue "Duplicate tag key 'Name' specified", S3
        # InvalidTag, ELBv2 its own DuplicateTagKeys: API_CreateLoadBalancer's errors.)
        # Auto Scaling's tags name their group: one key may be on two groups.
        owner = (tag.get("ResourceId"), key)
        if owner in seen:
            raise Refused(duplicate_code or code, f"Duplicate tag key '{key}' specified.")
        seen.add(owner)
        if not 1 <= len(key) <= 128:
            raise Refused(code, f"Tag key '{key}' must be 1 to 128 characters long.")
        if len(value) > 256:
            raise Refused(code, f"Tag value for key '{key}' exceeds the maximum length of 256 characters.")
        if key.lower().startswith("aws:"):
            raise Refused(code, f"Tag keys starting with 'aws:' are reserved for internal use: '{key}'.")
        if charset and not all(map(is_tag_character, key + value)):
            raise Refused(
                code,
                f"Tag '{key}' has characters outside letters, numbers, spaces and _ . : / = + - @.",
            )


def check_range(name: str, value, low: int, high: int, code: str = "ValidationError") -> None:
    if value is not None and not low <= int(value) <= high:
        raise Refused(
            code,
            f"1 validation error detected: Value '{value}' at '{name}' failed to satisfy "
            f"constraint: Member must have value between {low} and {high}",
        )


# --- EC2 ------------------------------------------------------------------------------

# Security group names and descriptions, and rule descriptions (IPv4, IPv6, prefix list
# and group pair): "Up to 255 characters in length. Allowed characters are a-z, A-Z, 0-9,
# spaces, and ._-:/()#,@[]+=&;{}!$*"; names "Cannot start with sg-".
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateSecurityGroup.html
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_IpRange.html
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_Ipv6Range.html
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_PrefixListId.html
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_UserIdGroupPair.html
# The messages are EC2's (hashicorp/terraform-provider-aws#18874 and public logs of it).
EC2_TEXT = re.compile(r"[a-zA-Z0-9 ._\-:/()#,@\[\]+=&;{}!$*]*")
EC2_TEXT_SET = "a-zA-Z0-9. _-:/()#,@[]+=&;{}!$*"


def ec2_text(text: str) -> bool:
    return len(text) <= 255 and EC2_TEXT.fullmatch(text) is not None


def security_group_name(request: Request, _context) -> None:
    name = request.get("GroupName") or ""
    if name.lower().startswith("sg-"):
        raise Refused(
            "InvalidParameterValue",
            f"Value ({name}) for parameter GroupName is invalid. Group names may not be in the format sg-*.",
        )
    if not name or not ec2_text(name):
        raise Refused(
            "InvalidParameterValue",
            f"Value ({name}) for parameter GroupName is invalid. Valid names are strings less "
            f"than 256 characters from the following set:  {EC2_TEXT_SET}",
        )


def security_group_description(request: Request, _context) -> None:
    description = request.get("Description") or ""
    if not description or not ec2_text(description):
        raise Refused(
            "InvalidParameterValue",
            "Invalid security group description. Valid descriptions are strings less than 256 "
            f"characters from the following set:  {EC2_TEXT_SET}",
        )


def permission_peers(permission: dict) -> list[tuple[str, dict]]:
    """Each peer of an IpPermission, with the family its rule counts in."""
    return (
        [("ipv4", peer) for peer in items(permission.get("IpRanges"))]
        + [("ipv6", peer) for peer in items(permission.get("Ipv6Ranges"))]
        + [("both", peer) for peer in items(permission.get("PrefixListIds"))]
        + [("both", peer) for peer in items(permission.get("UserIdGroupPairs"))]
    )


def rule_descriptions(request: Request, _context) -> None:
    permissions = items(request.get("IpPermissions"))
    for permission in permissions:
        for _, peer in permission_peers(permission):
            if not ec2_text(peer.get("Description") or ""):
                raise Refused(
                    "InvalidParameterValue",
                    "Invalid rule description. Valid descriptions are strings less than 256 "
                    f"characters from the following set:  {EC2_TEXT_SET}",
                )


# "Inbound or outbound rules per security group: 60", enforced separately for IPv4 and
# IPv6 rules; a rule that references a security group or a prefix list counts for both.
# https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html#vpc-limits-security-groups
SECURITY_GROUP_RULES = 60


def ec2_backend(context: RequestContext):
    from moto.ec2.models import ec2_backends

    return ec2_backends[context.account_id][context.region]


def rule_identity(protocol, from_port, to_port, peer: dict) -> tuple:
    peer_id = (
        peer.get("CidrIp")
        or peer.get("CidrIpv6")
        or peer.get("PrefixListId")
        or peer.get("GroupId")
        or peer.get("GroupName")
    )
    ports = (None, None) if str(protocol) in ("-1", "all") else (int(from_port), int(to_port))
    return (str(protocol).lower(), *ports, peer_id)


def existing_rules(group, egress: bool) -> dict[tuple, str]:
    """The rules a group has in one direction, by identity, with their family."""
    rules = {}
    for rule in group.egress_rules if egress else group.ingress_rules:
        if rule.ip_range:
            peer, family = rule.ip_range, "ipv6" if "CidrIpv6" in rule.ip_range else "ipv4"
        elif rule.prefix_list_id:
            peer, family = {"PrefixListId": rule.prefix_list_id}, "both"
        else:
            peer, family = rule.source_group, "both"
        rules[rule_identity(rule.ip_protocol, rule.from_port, rule.to_port, peer)] = family
    return rules


def rules_quota(egress: bool) -> Check:
    direction = "outbound" if egress else "inbound"

    def check(request: Request, context: RequestContext) -> None:
        group = ec2_backend(context).get_security_group_from_id(request.get("GroupId") or "")
        if group is None:
            return  # The provider answers InvalidGroup.NotFound.
        rules = existing_rules(group, egress)
        for permission in items(request.get("IpPermissions")):
            for family, peer in permission_peers(permission):
                identity = rule_identity(
                    permission.get("IpProtocol"), permission.get("FromPort"), permission.get("ToPort"), peer
                )
                rules[identity] = family
        for family in ("ipv4", "ipv6"):
            count = sum(1 for f in rules.values() if f in (family, "both"))
            if count > SECURITY_GROUP_RULES:
                LOG.info("refusing %s %s rule %d of group %s", family, direction, count, group.id)
                raise Refused(
                    "RulesPerSecurityGroupLimitExceeded",
                    "The maximum number of rules per security group has been reached.",
                )

    return check


# Tags: "Maximum key length - 128 Unicode characters", "Maximum value length - 256",
# "You can't edit or delete tag keys or values with the aws: prefix" (reserved), "Maximum
# number of tags per resource - 50". EC2 allows any character.
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions
def ec2_tag_restrictions(tags: Iterable[dict]) -> None:
    check_tags(tags, "InvalidParameterValue", charset=False)


def tag_specifications(request: Request, _context) -> None:
    for specification in items(request.get("TagSpecifications")):
        ec2_tag_restrictions(items(specification.get("Tags")))


def create_tags(request: Request, _context) -> None:
    ec2_tag_restrictions(items(request.get("Tags")))


# With tags in instance metadata on, "instance tag keys can only use letters (a-z, A-Z),
# numbers (0-9), and the following characters: + - = . , _ : @", and not only `.`, `..`
# or `_index`.
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/work-with-tags-in-IMDS.html
METADATA_TAG_KEY = re.compile(r"[a-zA-Z0-9+\-=.,_:@]+")


def metadata_tag_keys(keys: Iterable[str]) -> None:
    for key in keys:
        if not METADATA_TAG_KEY.fullmatch(key) or key in (".", "..", "_index"):
            raise Refused(
                "InvalidParameterValue",
                f"The tag key '{key}' is not valid for an instance that allows tags in its "
                "metadata: use letters, numbers and + - = . , _ : @ only.",
            )


# "User data is limited to 16 KB, in raw form, before it is base64-encoded."
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/user-data.html
USER_DATA_BYTES = 16 * 1024


def launch_parameters(launch: dict) -> None:
    """What RunInstances and a launch template's data share: the user data and, with tags
    in instance metadata, the instance tag keys."""
    user_data = launch.get("UserData") or ""
    try:
        raw = base64.b64decode(user_data, validate=True)
    except ValueError:
        raise Refused("InvalidParameterValue", "Invalid BASE64 encoding of user data.")
    if len(raw) > USER_DATA_BYTES:
        raise Refused("InvalidParameterValue", f"User data is limited to {USER_DATA_BYTES} bytes")
    metadata = launch.get("MetadataOptions") or {}
    if metadata.get("InstanceMetadataTags") == "enabled":
        metadata_tag_keys(
            tag.get("Key") or ""
            for specification in items(launch.get("TagSpecifications"))
            if specification.get("ResourceType") == "instance"
            for tag in items(specification.get("Tags"))
        )


def run_instances(request: Request, _context) -> None:
    launch_parameters(request)


# Launch template names: "Length Constraints: Minimum length of 3. Maximum length of 128.
# Pattern: [a-zA-Z0-9\(\)\.\-/_]+"; version descriptions: "Maximum length of 255";
# the template's data carries the instance's user data, metadata options and tags, held
# to RunInstances's limits above.
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateLaunchTemplate.html
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateLaunchTemplateVersion.html
# https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RequestLaunchTemplateData.html
# The error codes: https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html
LAUNCH_TEMPLATE_NAME = re.compile(r"[a-zA-Z0-9().\-/_]{3,128}")


def launch_template(request: Request, context: RequestContext) -> None:
    name = request.get("LaunchTemplateName")
    if name is not None and not LAUNCH_TEMPLATE_NAME.fullmatch(name):
        raise Refused(
            "InvalidLaunchTemplateName.MalformedException",
            f"The launch template name '{name}' is not valid: use 3 to 128 letters, numbers "
            "and ( ) . - / _ only.",
        )
    description = request.get("VersionDescription") or ""
    if len(description) > 255:
        raise Refused(
            "InvalidParameterValue",
            "The version description exceeds the maximum length of 255 characters.",
        )
    data = request.get("LaunchTemplateData") or {}
    launch_parameters(data)
    tag_specifications(data, context)


# "You can delete up to 200 launch template versions in a single request"
# (API_DeleteLaunchTemplateVersions). The code of the refusal is not documented.
VERSIONS_PER_DELETE = 200


def launch_template_versions_to_delete(request: Request, _context) -> None:
    versions = request.get("Versions") or []
    check_range("Versions", len(versions), 1, VERSIONS_PER_DELETE, "InvalidParameterValue")


def create_tags_on_instances(request: Request, context: RequestContext) -> None:
    backend = ec2_backend(context)
    keys = [tag.get("Key") or "" for tag in items(request.get("Tags"))]
    for resource in items(request.get("Resources")):
        if not resource.startswith("i-"):
            continue
        try:
            instance = backend.get_instance(resource)
        except Exception:  # The provider answers InvalidInstanceID.NotFound.
            continue
        options = getattr(instance, "metadata_options", None)
        if getattr(options, "instance_metadata_tags", None) == "enabled":
            metadata_tag_keys(keys)


# "Characters per VPC endpoint policy: 20,480", including white space.
# https://docs.aws.amazon.com/vpc/latest/privatelink/vpc-endpoints-quotas.html
def vpc_endpoint_policy(request: Request, _context) -> None:
    policy = request.get("PolicyDocument") or ""
    if len(policy) > 20480:
        raise Refused(
            "InvalidParameter",
            f"The policy document has {len(policy)} characters, more than the 20480 a VPC endpoint policy may have.",
        )


# --- Elastic Load Balancing v2 --------------------------------------------------------

# Load balancer names: "a maximum of 32 characters, must contain only alphanumeric
# characters or hyphens, must not begin or end with a hyphen, and must not begin with
# "internal-"". Target group names: the same, without the `internal-` rule.
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateLoadBalancer.html
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateTargetGroup.html
ELB_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,30}[a-zA-Z0-9])?")


def elb_name(what: str) -> Check:
    def check(request: Request, _context) -> None:
        name = request.get("Name") or ""
        if len(name) > 32:
            raise Refused("ValidationError", f"{what} name cannot be longer than '32' characters")
        if not ELB_NAME.fullmatch(name):
            raise Refused(
                "ValidationError",
                f"{what} name '{name}' can contain only alphanumeric characters and hyphens, "
                "and cannot begin or end with a hyphen",
            )
        if what == "Load balancer" and name.lower().startswith("internal-"):
            raise Refused("ValidationError", f"Load balancer name '{name}' cannot begin with 'internal-'")

    return check


# Tags: key 1 to 128, value 0 to 256 characters of `^([\p{L}\p{Z}\p{N}_.:/=+\-@]*)$`;
# "The aws: prefix is reserved"; at most 50 per resource.
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_Tag.html
# https://docs.aws.amazon.com/elasticloadbalancing/latest/application/load-balancer-tags.html
def elb_tags(request: Request, _context) -> None:
    check_tags(items(request.get("Tags")), "ValidationError", duplicate_code="DuplicateTagKeys")


# Health checks of an ALB target group: interval 5 to 300 s, timeout 2 to 120 s and less
# than the interval, healthy and unhealthy thresholds 2 to 10, a path of 1 to 1024
# characters.
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateTargetGroup.html
def health_check(request: Request, _context) -> None:
    interval, timeout = request.get("HealthCheckIntervalSeconds"), request.get("HealthCheckTimeoutSeconds")
    check_range("healthCheckIntervalSeconds", interval, 5, 300)
    check_range("healthCheckTimeoutSeconds", timeout, 2, 120)
    check_range("healthyThresholdCount", request.get("HealthyThresholdCount"), 2, 10)
    check_range("unhealthyThresholdCount", request.get("UnhealthyThresholdCount"), 2, 10)
    if interval is not None and timeout is not None and int(timeout) >= int(interval):
        raise Refused(
            "ValidationError", "Health check timeout must be smaller than the interval"
        )
    path = request.get("HealthCheckPath")
    if path is not None and not 1 <= len(path) <= 1024:
        raise Refused("ValidationError", "Health check path must be 1 to 1024 characters long")


# Attributes: `idle_timeout.timeout_seconds` 1 to 4000; `deregistration_delay.timeout_seconds`
# 0 to 3600; booleans `true` or `false`.
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_LoadBalancerAttribute.html
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_TargetGroupAttribute.html
ATTRIBUTE_RANGES = {
    "idle_timeout.timeout_seconds": (1, 4000),
    "deregistration_delay.timeout_seconds": (0, 3600),
}
# And the attributes that take one of a few words, as the same page lists them.
ATTRIBUTE_CHOICES = {
    "routing.http.desync_mitigation_mode": ("monitor", "defensive", "strictest"),
    "routing.http.xff_header_processing.mode": ("append", "preserve", "remove"),
}


def elb_attributes(request: Request, _context) -> None:
    for attribute in items(request.get("Attributes")):
        key, value = attribute.get("Key") or "", attribute.get("Value") or ""
        if key in ATTRIBUTE_RANGES:
            low, high = ATTRIBUTE_RANGES[key]
            if not value.isdigit() or not low <= int(value) <= high:
                raise Refused(
                    "InvalidConfigurationRequest",
                    f"'{key}' must be a number from {low} to {high}, not '{value}'",
                )
        elif key in ATTRIBUTE_CHOICES and value not in ATTRIBUTE_CHOICES[key]:
            raise Refused(
                "InvalidConfigurationRequest",
                f"'{key}' must be one of {', '.join(ATTRIBUTE_CHOICES[key])}, not '{value}'",
            )
        elif key.endswith(".enabled") and value not in ("true", "false"):
            raise Refused("InvalidConfigurationRequest", f"'{key}' must be 'true' or 'false', not '{value}'")


# "You can't delete a load balancer if deletion protection is enabled"; among the call's
# errors, OperationNotPermitted. moto deletes it anyway.
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_DeleteLoadBalancer.html
def deletion_protection(request: Request, context: RequestContext) -> None:
    from moto.elbv2.models import elbv2_backends

    arn = request.get("LoadBalancerArn") or ""
    balancer = elbv2_backends[context.account_id][context.region].load_balancers.get(arn)
    if balancer is not None and balancer.attrs.get("deletion_protection.enabled") == "true":
        raise Refused(
            "OperationNotPermitted",
            f"Load balancer '{arn}' cannot be deleted because deletion protection is enabled",
        )


# Rule priorities: 1 to 50000; each path pattern at most 128 characters.
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateRule.html
# https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_PathPatternConditionConfig.html
def listener_rule(request: Request, _context) -> None:
    check_range("priority", request.get("Priority"), 1, 50000)
    for condition in items(request.get("Conditions")):
        config = condition.get("PathPatternConfig") or {}
        for pattern in items(config.get("Values")) + items(condition.get("Values")):
            if len(pattern) > 128:
                raise Refused("ValidationError", f"A path pattern can be at most 128 characters long: '{pattern}'")


# Listener security policies: AWS refuses a name it does not offer (`SSLPolicyNotFound`,
# API_CreateListener and API_ModifyListener errors). moto's table holds the policies up
# to 2021-06 (`moto_ssl_policies`); the FIPS policies of 2023-04 and the post-quantum ones
# of 2025-09 are AWS's since ("Security policies for your Application Load Balancer",
# https://docs.aws.amazon.com/elasticloadbalancing/latest/application/describe-ssl-policies.html).
NEWER_SSL_POLICIES = frozenset(
    f"ELBSecurityPolicy-TLS13-{variant}"
    for variant in (
        "1-0-FIPS-2023-04",
        "1-1-FIPS-2023-04",
        "1-2-FIPS-2023-04",
        "1-2-Res-FIPS-2023-04",
        "1-2-Ext0-FIPS-2023-04",
        "1-2-Ext1-FIPS-2023-04",
        "1-2-Ext2-FIPS-2023-04",
        "1-3-FIPS-2023-04",
        "1-2-PQ-2025-09",
        "1-2-Res-PQ-2025-09",
        "1-2-Ext1-PQ-2025-09",
        "1-2-Ext2-PQ-2025-09",
        "1-3-PQ-2025-09",
        "1-2-FIPS-PQ-2025-09",
        "1-2-Res-FIPS-PQ-2025-09",
        "1-2-Ext0-FIPS-PQ-2025-09",
        "1-2-Ext1-FIPS-PQ-2025-09",
        "1-2-Ext2-FIPS-PQ-2025-09",
        "1-3-FIPS-PQ-2025-09",
    )
)


def moto_ssl_policies() -> frozenset:
    from moto.elbv2.responses import SSL_POLICIES

    return frozenset(policy["name"] for policy in SSL_POLICIES)


def ssl_policy(request: Request, _context) -> None:
    policy = request.get("SslPolicy")
    if policy is not None and policy not in NEWER_SSL_POLICIES | moto_ssl_policies():
        raise Refused("SSLPolicyNotFound", f"Policy {policy} not found")


# --- ElastiCache ----------------------------------------------------------------------

# Replication group ids: "A name must contain from 1 to 40 alphanumeric characters or
# hyphens. The first character must be a letter. A name cannot end with a hyphen or
# contain two consecutive hyphens."
# https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_CreateReplicationGroup.html
CACHE_ID = re.compile(r"[a-zA-Z](?:[a-zA-Z0-9]|-(?!-))*")


def replication_group_id(request: Request, _context) -> None:
    group_id = request.get("ReplicationGroupId") or ""
    if not 1 <= len(group_id) <= 40 or not CACHE_ID.fullmatch(group_id) or group_id.endswith("-"):
        raise Refused(
            "InvalidParameterValue",
            f"The parameter ReplicationGroupId is not a valid identifier ('{group_id}'). "
            "Identifiers must begin with a letter; must contain only ASCII letters, digits, "
            "and hyphens; and must not end with a hyphen or contain two consecutive hyphens.",
        )


# A new account's quota of shards, and of nodes, in one cluster (raised on request).
CLUSTER_QUOTA = 90


# Shapes: NumCacheClusters 1 to 6 (a primary and up to 5 replicas), ReplicasPerNodeGroup 0
# to 5, NumNodeGroups 1 to 500, SnapshotRetentionLimit 0 to 35 days.
# https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_CreateReplicationGroup.html
# https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/quota-limits.html
def replication_group_shape(request: Request, _context) -> None:
    check_range("numCacheClusters", request.get("NumCacheClusters"), 1, 6, "InvalidParameterValue")
    check_range("replicasPerNodeGroup", request.get("ReplicasPerNodeGroup"), 0, 5, "InvalidParameterValue")
    check_range("numNodeGroups", request.get("NumNodeGroups"), 1, 500, "InvalidParameterValue")
    check_range("snapshotRetentionLimit", request.get("SnapshotRetentionLimit"), 0, 35, "InvalidParameterValue")
    # "A Valkey or Redis OSS cluster-mode enabled cluster is comprised of from 1 to 90
    # shards ... The node or shard limit can be increased to a maximum of 500 per
    # cluster" (API_CreateReplicationGroup): a new account's quota is 90 of each.
    shards = int(request.get("NumNodeGroups") or 1)
    if shards > CLUSTER_QUOTA:
        raise Refused(
            "NodeGroupsPerReplicationGroupQuotaExceeded",
            "The request cannot be processed because it would exceed the maximum allowed "
            f"number of node groups (shards) in a single replication group. The default maximum is {CLUSTER_QUOTA}",
        )
    nodes = shards * (1 + int(request.get("ReplicasPerNodeGroup") or 0))
    if nodes > CLUSTER_QUOTA:
        raise Refused(
            "NodeQuotaForClusterExceeded",
            "The request cannot be processed because it would exceed the allowed number of "
            f"cache nodes in a single cluster ({nodes} asked, {CLUSTER_QUOTA} allowed).",
        )
    # "This parameter must be set to true when using r6gd nodes" (DataTieringEnabled).
    # The error code is not documented for this case; InvalidParameterCombination is
    # ElastiCache's for "two or more incompatible parameters".
    if ".r6gd." in (request.get("CacheNodeType") or "") and not request.get("DataTieringEnabled"):
        raise Refused(
            "InvalidParameterCombination",
            "DataTieringEnabled must be true for r6gd node types.",
        )
    if not (request.get("ReplicationGroupDescription") or "").strip():
        raise Refused(
            "InvalidParameterValue",
            "The parameter ReplicationGroupDescription must be provided and must not be blank.",
        )


# The engine version must be one ElastiCache offers, and a parameter group must be of
# that version's family (or of the default version's, when none is pinned):
# "InvalidParameterCombination: Expected a parameter group of family redis7 but found one
# of family redis6.x" (hashicorp/terraform-provider-aws#27748, #27709). Only the default
# groups (`default.<family>...`) are checked: their names carry their family.
def replication_group_engine(request: Request, _context) -> None:
    engine = (request.get("Engine") or "redis").lower()
    version = request.get("EngineVersion")
    family = engine_family(engine, version)
    if family is None:
        raise Refused(
            "InvalidParameterValue",
            f"Cannot find version {version} for {engine}: see DescribeCacheEngineVersions.",
        )
    group = request.get("CacheParameterGroupName") or ""
    match = re.fullmatch(r"default\.((?:redis|valkey)[0-9.x]+?)(?:\.cluster\.on)?", group)
    if match and match.group(1) != family:
        raise Refused(
            "InvalidParameterCombination",
            f"Expected a parameter group of family {family} but found one of family {match.group(1)}",
        )


# Cache subnet group names: "Must contain no more than 255 alphanumeric characters or
# hyphens."
# https://docs.aws.amazon.com/AmazonElastiCache/latest/APIReference/API_CreateCacheSubnetGroup.html
def cache_subnet_group_name(request: Request, _context) -> None:
    name = request.get("CacheSubnetGroupName") or ""
    if not re.fullmatch(r"[a-zA-Z0-9-]{1,255}", name):
        raise Refused(
            "InvalidParameterValue",
            f"The parameter CacheSubnetGroupName is not a valid identifier ('{name}'): it must "
            "contain no more than 255 alphanumeric characters or hyphens.",
        )
    if not (request.get("CacheSubnetGroupDescription") or "").strip():
        raise Refused(
            "InvalidParameterValue",
            "The parameter CacheSubnetGroupDescription must be provided and must not be blank.",
        )


# Tags: keys up to 128, values up to 256 Unicode characters of letters, numbers, spaces and
# `_ . : / = + - @`; the `aws:` prefix is reserved; 50 tags per resource.
# https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/Tagging-Resources.html
def cache_tags(request: Request, _context) -> None:
    check_tags(items(request.get("Tags")), "InvalidParameterValue")


# --- S3 -------------------------------------------------------------------------------

# Bucket names: 3 to 63 characters; lowercase letters, numbers, periods and hyphens;
# beginning and ending with a letter or number; no two adjacent periods; not formatted as
# an IP address; not beginning with `xn--`, `sthree-` or `amzn-s3-demo-`; not ending with
# `-s3alias`, `--ol-s3`, `.mrap`, `--x-s3` or `--table-s3`.
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def bucket_name(request: Request, _context) -> None:
    name = request.get("Bucket") or ""
    valid = (
        3 <= len(name) <= 63
        and re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", name) is not None
        and ".." not in name
        and not is_ip_address(name)
        and not name.startswith(BUCKET_PREFIXES)
        and not name.endswith(BUCKET_SUFFIXES)
    )
    if not valid:
        raise Refused("InvalidBucketName", "The specified bucket is not valid.")


# Object keys: "The name for a key is a sequence of Unicode characters whose UTF-8 encoding
# is at most 1,024 bytes long."
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-keys.html
def object_key(request: Request, _context) -> None:
    if len((request.get("Key") or "").encode()) > 1024:
        raise Refused("KeyTooLongError", "Your key is too long")


# Bucket tags: keys up to 128 and values up to 256 Unicode characters; "User-defined tag
# keys can't start with aws:"; 50 tags per bucket.
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/CostAllocTagging.html
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutBucketTagging.html
def bucket_tags(request: Request, _context) -> None:
    tags = items((request.get("Tagging") or {}).get("TagSet"))
    if any((tag.get("Key") or "").lower().startswith("aws:") for tag in tags):
        raise Refused("InvalidTag", "System tags cannot be added/updated by requester")
    check_tags(tags, "InvalidTag")


# "Bucket policies are limited to 20 KB in size."
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucket-policies.html
def bucket_policy(request: Request, _context) -> None:
    policy = request.get("Policy") or ""
    if len(policy.encode()) > 20 * 1024:
        raise Refused("MalformedPolicy", "Policies must be no more than 20480 bytes in size")


# --- ACM ------------------------------------------------------------------------------

# DomainName: 1 to 253 characters of
# `^(\*\.)?(((?!-)[A-Za-z0-9-]{0,62}[A-Za-z0-9])\.)+((?!-)[A-Za-z0-9-]{1,62}[A-Za-z0-9])$`,
# and "The first domain name you enter cannot exceed 64 octets, including periods."
# IdempotencyToken: 1 to 32 characters of `\w+`.
# Tags: key 1 to 128, value 0 to 256 characters of `[\p{L}\p{Z}\p{N}_.:\/=+\-@]*`; the
# `aws:` prefix is reserved ("InvalidTagException").
# https://docs.aws.amazon.com/acm/latest/APIReference/API_RequestCertificate.html
# https://docs.aws.amazon.com/acm/latest/APIReference/API_Tag.html
ACM_DOMAIN = re.compile(
    r"(\*\.)?(((?!-)[A-Za-z0-9-]{0,62}[A-Za-z0-9])\.)+((?!-)[A-Za-z0-9-]{1,62}[A-Za-z0-9])"
)


def certificate_request(request: Request, _context) -> None:
    domain = request.get("DomainName") or ""
    if not 1 <= len(domain) <= 253 or not ACM_DOMAIN.fullmatch(domain):
        raise Refused(
            "ValidationException",
            f"1 validation error detected: Value '{domain}' at 'domainName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: "
            + ACM_DOMAIN.pattern,
        )
    if len(domain.encode()) > 64:
        raise Refused(
            "ValidationException",
            f"The first domain name can't exceed 64 octets, including periods: '{domain}' has {len(domain.encode())}.",
        )
    token = request.get("IdempotencyToken")
    if token is not None and not re.fullmatch(r"\w{1,32}", token, re.ASCII):
        raise Refused(
            "ValidationException",
            f"1 validation error detected: Value '{token}' at 'idempotencyToken' failed to satisfy "
            "constraint: Member must have length less than or equal to 32 and match pattern \\w+",
        )
    for name in items(request.get("SubjectAlternativeNames")):
        if not 1 <= len(name) <= 253 or not ACM_DOMAIN.fullmatch(name):
            raise Refused("ValidationException", f"'{name}' is not a valid subject alternative name")
    certificate_tags(request, _context)


def certificate_tags(request: Request, _context) -> None:
    check_tags(items(request.get("Tags")), "InvalidTagException")


# --- Route 53 -------------------------------------------------------------------------

# Names: each label 1 to 63 octets, the whole name at most 255 octets; a record's name
# inside its hosted zone ("RRSet with DNS name ... is not permitted in zone ..."); TTL 0
# to 2147483647; a change batch's comment at most 256 characters; a value at most 4000.
# https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/DomainNameFormat.html
# https://docs.aws.amazon.com/Route53/latest/APIReference/API_ResourceRecordSet.html
# https://docs.aws.amazon.com/Route53/latest/APIReference/API_ChangeResourceRecordSets.html
def dns_name_problem(name: str) -> str | None:
    bare = name.rstrip(".")
    if len(bare.encode()) + 1 > 255:
        return f"FATAL problem: DomainNameTooLong (Domain name is too long) encountered with '{name}'"
    for label in bare.split("."):
        if not label:
            return f"FATAL problem: DomainLabelEmpty (Domain label is empty) encountered with '{name}'"
        if len(label.encode()) > 63:
            return f"FATAL problem: DomainLabelTooLong (Domain label is too long) encountered with '{label}'"
    return None


def route53_zone_name(context: RequestContext, zone_id: str) -> str | None:
    from moto.route53.models import route53_backends

    backend = route53_backends[context.account_id][context.partition]
    zone = backend.zones.get(zone_id.split("/")[-1])
    return zone.name if zone is not None else None


def record_changes(request: Request, context: RequestContext) -> None:
    batch = request.get("ChangeBatch") or {}
    if len(batch.get("Comment") or "") > 256:
        raise Refused("InvalidInput", "A change batch comment can be at most 256 characters long")
    zone = route53_zone_name(context, request.get("HostedZoneId") or "")
    problems = []
    for change in items(batch.get("Changes")):
        record = change.get("ResourceRecordSet") or {}
        name = record.get("Name") or ""
        problem = dns_name_problem(name)
        if problem:
            problems.append(problem)
            continue
        fqdn, apex = name.rstrip(".").lower(), (zone or "").rstrip(".").lower()
        if zone is not None and fqdn != apex and not fqdn.endswith("." + apex):
            problems.append(f"RRSet with DNS name {fqdn}. is not permitted in zone {apex}.")
        ttl = record.get("TTL")
        if ttl is not None and not 0 <= int(ttl) <= 2147483647:
            problems.append(f"TTL {ttl} of {fqdn} is not from 0 to 2147483647")
        for value in items(record.get("ResourceRecords")):
            if len(value.get("Value") or "") > 4000:
                problems.append(f"A value of {fqdn} is longer than 4000 characters")
    if problems:
        raise Refused("InvalidChangeBatch", "[" + ", ".join(problems) + "]")


# --- EC2 Auto Scaling -----------------------------------------------------------------

# Group names: "The name can contain any ASCII character 33 to 126 including most
# punctuation characters, digits, and upper and lowercased letters. You cannot use a colon
# (:) in the name", at most 255 characters; policy names 1 to 255 characters.
# https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CreateAutoScalingGroup.html
# https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_PutScalingPolicy.html
# Sizes: "The desired capacity must be greater than or equal to the minimum size of the group
# and less than or equal to the maximum size of the group"; MaxInstanceLifetime "0, or a
# number from 86400 to 31536000 seconds" (same page).
# Tags: keys of 1 to 128 characters, values of at most 256, no `aws:` prefix, "Maximum
# number of tags per Auto Scaling group: 50".
# https://docs.aws.amazon.com/autoscaling/ec2/userguide/ec2-auto-scaling-tagging.html#tag-restrictions
GROUP_NAME = re.compile(r"[!-9;-~]{1,255}")


def validation_error(message: str) -> Refused:
    return Refused("ValidationError", message)


def group_name(request: Request, _context) -> None:
    name = request.get("AutoScalingGroupName")
    if name is not None and not GROUP_NAME.fullmatch(name):
        raise validation_error(
            f"The Auto Scaling group name '{name}' is not valid: 1 to 255 ASCII characters "
            "33 to 126, no colon."
        )


def group_sizes(request: Request, context: RequestContext) -> None:
    minimum, maximum, desired = (
        request.get(field) for field in ("MinSize", "MaxSize", "DesiredCapacity")
    )
    if (minimum is None or maximum is None) and (minimum, maximum, desired) != (None, None, None):
        # An update naming some of the sizes is held to the group's others.
        from realtime_stack_localstack.autoscaling import backend_of

        group = backend_of(context).autoscaling_groups.get(request.get("AutoScalingGroupName"))
        if group is not None:
            minimum = group.min_size if minimum is None else minimum
            maximum = group.max_size if maximum is None else maximum
    if minimum is not None and maximum is not None and int(minimum) > int(maximum):
        raise validation_error(
            f"Max bound, {maximum}, must be greater than or equal to min bound, {minimum}"
        )
    below = desired is not None and minimum is not None and int(desired) < int(minimum)
    above = desired is not None and maximum is not None and int(desired) > int(maximum)
    if below or above:
        raise validation_error(
            f"Desired capacity:{desired} must be between the specified min size:{minimum} "
            f"and max size:{maximum}"
        )
    lifetime = request.get("MaxInstanceLifetime")
    if lifetime not in (None, 0) and not 86400 <= int(lifetime) <= 31536000:
        raise validation_error("The maximum instance lifetime must be 0, or between 86400 and 31536000 seconds.")


def group_tags(request: Request, _context) -> None:
    check_tags(items(request.get("Tags")), "ValidationError", charset=False)


def scaling_policy(request: Request, _context) -> None:
    name = request.get("PolicyName") or ""
    if not 1 <= len(name) <= 255:
        raise validation_error(f"The policy name '{name}' must be 1 to 255 characters long.")


# --- The table --------------------------------------------------------------------------

# Every operation that creates something with tags at creation.
EC2_TAGGED_CREATES = (
    "CreateVpc",
    "CreateSubnet",
    "CreateInternetGateway",
    "CreateRouteTable",
    "CreateVpcEndpoint",
)

RULES: dict[str, dict[str, tuple[Check, ...]]] = {
    "ec2": {
        **{operation: (tag_specifications,) for operation in EC2_TAGGED_CREATES},
        "CreateVpcEndpoint": (tag_specifications, vpc_endpoint_policy),
        "ModifyVpcEndpoint": (vpc_endpoint_policy,),
        "CreateSecurityGroup": (security_group_name, security_group_description, tag_specifications),
        "AuthorizeSecurityGroupIngress": (rule_descriptions, rules_quota(egress=False)),
        "AuthorizeSecurityGroupEgress": (rule_descriptions, rules_quota(egress=True)),
        "UpdateSecurityGroupRuleDescriptionsIngress": (rule_descriptions,),
        "UpdateSecurityGroupRuleDescriptionsEgress": (rule_descriptions,),
        "RunInstances": (tag_specifications, run_instances),
        "CreateLaunchTemplate": (tag_specifications, launch_template),
        "CreateLaunchTemplateVersion": (launch_template,),
        "DeleteLaunchTemplateVersions": (launch_template_versions_to_delete,),
        "CreateTags": (create_tags, create_tags_on_instances),
    },
    "elbv2": {
        "CreateLoadBalancer": (elb_name("Load balancer"), elb_tags),
        "CreateTargetGroup": (elb_name("Target group"), elb_tags, health_check),
        "ModifyTargetGroup": (health_check,),
        "AddTags": (elb_tags,),
        "ModifyLoadBalancerAttributes": (elb_attributes,),
        "DeleteLoadBalancer": (deletion_protection,),
        "ModifyTargetGroupAttributes": (elb_attributes,),
        "CreateListener": (ssl_policy, elb_tags),
        "ModifyListener": (ssl_policy,),
        "CreateRule": (listener_rule, elb_tags),
        "ModifyRule": (listener_rule,),
    },
    "elasticache": {
        "CreateReplicationGroup": (
            replication_group_id,
            replication_group_shape,
            replication_group_engine,
            cache_tags,
        ),
        "CreateCacheSubnetGroup": (cache_subnet_group_name, cache_tags),
        "AddTagsToResource": (cache_tags,),
    },
    "s3": {
        "CreateBucket": (bucket_name,),
        "PutObject": (object_key,),
        "PutBucketTagging": (bucket_tags,),
        "PutBucketPolicy": (bucket_policy,),
    },
    "acm": {
        "RequestCertificate": (certificate_request,),
        "AddTagsToCertificate": (certificate_tags,),
    },
    "autoscaling": {
        "CreateAutoScalingGroup": (group_name, group_sizes, group_tags),
        "UpdateAutoScalingGroup": (group_name, group_sizes),
        "CreateOrUpdateTags": (group_tags,),
        "PutScalingPolicy": (group_name, scaling_policy),
    },
    "route53": {
        "ChangeResourceRecordSets": (record_changes,),
    },
}


def enforce(_chain, context: RequestContext, _response) -> None:
    """The handler chain's step: refuses the request when one of its operation's checks
    does."""
    if context.service is None or context.operation is None or context.service_request is None:
        return
    checks = RULES.get(context.service.service_name, {}).get(context.operation.name, ())
    for check in checks:
        try:
            check(context.service_request, context)
        except Refused as refused:
            LOG.info(
                "strict: refused %s.%s: %s: %s",
                context.service.service_name,
                context.operation.name,
                refused.code,
                refused.message,
            )
            raise


@hooks.on_infra_start()
def install_strict_rules():
    from localstack.aws import handlers

    handlers.serve_custom_service_request_handlers.append(enforce)
