//! The least-privilege IAM policy of a deployer of one stack: every action `up`, `plan`
//! (with its monthly cost, `pricing:GetProducts`), `status`, `logs` and `destroy` need,
//! and no other; scoped to the stack's resources by name where the service's ARNs carry
//! it (load balancer, target group, Redis, buckets, Auto Scaling group), by the stack's
//! tag where they do not (EC2, certificates), to the stack's hosted zone and domain for
//! DNS changes, to the stack's instance type and image for launches. Describe and List
//! calls that IAM cannot scope get `*`.
//!
//! It has to be a document IAM accepts: a managed policy holds at most 6 144 characters
//! without whitespace (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html>).
//! Statements that share a resource and a condition are one statement, and an action
//! pattern (`ec2:*SecurityGroup*`) stands for a family of actions only where the
//! statement's resource or condition already confines it to the stack's own resources,
//! or where every action it names only reads.
//!
//! Also the mapping from the operations the CLI sends (as its call log names them,
//! `EC2:DescribeVpcs`) to IAM actions, which the policy test uses to prove the policy is
//! exactly what the CLI calls.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::names::{Names, STACK_TAG};
use crate::spec::StackSpec;

/// A managed policy's size limit, in characters without whitespace
/// (<https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html>).
pub const MANAGED_POLICY_LIMIT: usize = 6144;

/// What the policy is scoped to.
pub struct Scope<'a> {
    pub spec: &'a StackSpec,
    pub names: &'a Names,
    pub account: &'a str,
    pub region: &'a str,
    /// The id of the hosted zone that holds the domain (without `/hostedzone/`).
    pub hosted_zone_id: &'a str,
    /// The alias the stack wrote for an earlier `domain.name`, as (hosted zone id, name):
    /// `up` deletes it, and `destroy` its certificate's validation records.
    pub retired_alias: Option<(&'a str, &'a str)>,
}

/// The EC2 resource types the stack creates, each tagged at creation. Instances are
/// [`launch`]'s, which also holds them to the stack's instance type.
const EC2_TAGGED_ON_CREATE: [&str; 8] = [
    "vpc",
    "subnet",
    "internet-gateway",
    "route-table",
    "security-group",
    "vpc-endpoint",
    "volume",
    "launch-template",
];

/// The EC2 calls that create a resource with the stack's tags. (RunInstances is the
/// Auto Scaling group's, checked against the deployer when the group is created or
/// updated with the launch template.)
const EC2_CREATE: [&str; 8] = [
    "ec2:CreateVpc",
    "ec2:CreateSubnet",
    "ec2:CreateInternetGateway",
    "ec2:CreateRouteTable",
    "ec2:CreateSecurityGroup",
    "ec2:CreateVpcEndpoint",
    "ec2:RunInstances",
    "ec2:CreateLaunchTemplate",
];

/// The policy as documents IAM accepts as managed policies: one when it fits, which it
/// does for the stacks of `stack.yaml`'s limits but the longest domains, else as few as
/// the statements fit in, each within [`MANAGED_POLICY_LIMIT`]. A deployer's role holds
/// up to 10 managed policies.
pub fn documents(scope: &Scope) -> Vec<Value> {
    split(document(scope), MANAGED_POLICY_LIMIT)
}

/// `whole` as documents of at most `limit` characters, its statements in order.
fn split(whole: Value, limit: usize) -> Vec<Value> {
    if size(&whole) <= limit {
        return vec![whole];
    }
    let mut documents: Vec<Vec<Value>> = vec![Vec::new()];
    for statement in whole["Statement"].as_array().into_iter().flatten() {
        let mut with = documents.last().cloned().unwrap_or_default();
        with.push(statement.clone());
        if size(&wrap(with.clone())) <= limit {
            *documents.last_mut().expect("one document at least") = with;
        } else {
            documents.push(vec![statement.clone()]);
        }
    }
    documents.into_iter().map(wrap).collect()
}

fn wrap(statements: Vec<Value>) -> Value {
    json!({ "Version": "2012-10-17", "Statement": statements })
}

/// The policy document, whatever its size.
pub fn document(scope: &Scope) -> Value {
    let Scope {
        spec,
        names,
        account,
        region,
        hosted_zone_id,
        retired_alias,
    } = *scope;
    let stack = names.stack();
    let request_tag = json!({ format!("aws:RequestTag/{STACK_TAG}"): stack });
    let resource_tag = json!({ "StringEquals": { format!("aws:ResourceTag/{STACK_TAG}"): stack } });
    let ec2 = |resource: &str| format!("arn:aws:ec2:{region}:{account}:{resource}");
    let elb =
        |resource: &str| format!("arn:aws:elasticloadbalancing:{region}:{account}:{resource}");
    let cache = |resource: &str| format!("arn:aws:elasticache:{region}:{account}:{resource}");
    let load_balancer = names.load_balancer();
    let target_group = names.target_group();
    let replication_group = names.replication_group();
    let bucket = names.bucket(account, region);
    let logs_bucket = names.logs_bucket(account, region);
    let domain = spec.domain.name.trim_end_matches('.').to_ascii_lowercase();
    let image = match &spec.instances.ami {
        // The user's own image, or a Marketplace one: that image and no other.
        Some(ami) => statement(
            &["ec2:RunInstances"],
            json!(format!("arn:aws:ec2:{region}::image/{ami}")),
            None,
        ),
        None => statement(
            &["ec2:RunInstances"],
            json!(format!("arn:aws:ec2:{region}::image/*")),
            Some(json!({ "StringEquals": { "ec2:Owner": "amazon" } })),
        ),
    };
    let group = format!(
        "arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{}",
        names.auto_scaling_group()
    );
    let statements = vec![
        // Reads IAM cannot scope, or that show nothing secret.
        statement(
            &[
                "ec2:Describe*",
                "elasticloadbalancing:Describe*",
                "elasticache:Describe*",
                "autoscaling:Describe*",
                "acm:Describe*",
                "acm:List*",
                "route53:Get*",
                "route53:List*",
                // `plan`'s monthly cost: prices are public, and IAM scopes them to no
                // resource (<https://docs.aws.amazon.com/service-authorization/latest/reference/list_awspricelist.html>).
                "pricing:GetProducts",
            ],
            json!("*"),
            None,
        ),
        // New resources carry the stack's tag from their first moment...
        statement(
            &EC2_CREATE,
            json!(
                EC2_TAGGED_ON_CREATE
                    .iter()
                    .map(|kind| ec2(&format!("{kind}/*")))
                    .collect::<Vec<_>>()
            ),
            Some(json!({ "StringEquals": request_tag })),
        ),
        // ...instances of the stack's type only...
        statement(
            &["ec2:RunInstances"],
            json!(ec2("instance/*")),
            Some(json!({ "StringEquals": {
                format!("aws:RequestTag/{STACK_TAG}"): stack,
                "ec2:InstanceType": spec.instances.instance_type,
            } })),
        ),
        // ...tagged by the call that creates them, never afterwards...
        statement(
            &["ec2:CreateTags"],
            json!(ec2("*/*")),
            Some(json!({ "StringEquals": { "ec2:CreateAction": EC2_CREATE
                .iter()
                .map(|action| action.trim_start_matches("ec2:"))
                .collect::<Vec<_>>() } })),
        ),
        // ...and existing ones are touched only when they carry the tag: each pattern
        // names a family of calls on the stack's own gateways, route tables, groups,
        // endpoints and launch template.
        statement(
            &[
                "ec2:*InternetGateway",
                "ec2:*RouteTable*",
                "ec2:*Route",
                "ec2:*SecurityGroup*",
                "ec2:*VpcEndpoint*",
                "ec2:*LaunchTemplate*",
                "ec2:CreateSubnet",
                "ec2:DeleteSubnet",
                "ec2:ModifyVpcAttribute",
                "ec2:DeleteVpc",
                "ec2:RunInstances",
                "ec2:TerminateInstances",
                "ec2:GetConsoleOutput",
                "ec2:ModifyInstanceMetadataOptions",
                "ec2:CreateTags",
            ],
            json!(ec2("*/*")),
            Some(resource_tag.clone()),
        ),
        // The VPC's default group comes with allow-all rules that `up` takes away (CIS AWS
        // Foundations 5.4). AWS makes it untagged, and IAM cannot name it before the VPC
        // exists: revoking is all this allows, which closes and never opens.
        statement(
            &[
                "ec2:RevokeSecurityGroupIngress",
                "ec2:RevokeSecurityGroupEgress",
            ],
            json!(ec2("security-group/*")),
            Some(json!({ "Null": { format!("aws:ResourceTag/{STACK_TAG}"): "true" } })),
        ),
        // What a launch or a rule creates untagged: the network interface, the rules.
        statement(
            &[
                "ec2:RunInstances",
                "ec2:AuthorizeSecurityGroupIngress",
                "ec2:AuthorizeSecurityGroupEgress",
            ],
            json!([ec2("network-interface/*"), ec2("security-group-rule/*")]),
            None,
        ),
        image,
        // The group is the stack's by name: Auto Scaling group names are unique per
        // account and region, so its ARN is scope enough (a tag condition would cost each
        // call's statement its own copy of the ARN, and the policy its size limit). `up`
        // still touches a group of that name only when it carries the stack's tag.
        statement(
            &[
                "autoscaling:*AutoScalingGroup",
                "autoscaling:AttachLoadBalancerTargetGroups",
                "autoscaling:*Processes",
                "autoscaling:CreateOrUpdateTags",
                "autoscaling:PutScalingPolicy",
                "autoscaling:DeletePolicy",
            ],
            json!(group),
            None,
        ),
        // The load balancer and its target group are the stack's by name: everything
        // under them (listeners and their rules) is too.
        statement(
            &[
                "elasticloadbalancing:Create*",
                "elasticloadbalancing:AddTags",
                "elasticloadbalancing:*Listener",
                "elasticloadbalancing:*Rule",
                "elasticloadbalancing:Modify*",
                "elasticloadbalancing:Set*",
                "elasticloadbalancing:Delete*",
                "elasticloadbalancing:*Targets",
            ],
            json!([
                elb(&format!("*/app/{load_balancer}/*")),
                elb(&format!("targetgroup/{target_group}/*")),
            ]),
            None,
        ),
        statement(
            &[
                "elasticache:*CacheSubnetGroup",
                "elasticache:*ReplicationGroup*",
                "elasticache:*ReplicaCount",
                "elasticache:*TagsToResource",
                "elasticache:TestFailover",
                "elasticache:ListTagsForResource",
                "elasticache:ListAllowedNodeTypeModifications",
            ],
            json!([
                cache(&format!("replicationgroup:{replication_group}")),
                // The group's member clusters are named after it.
                cache(&format!("cluster:{replication_group}-*")),
                cache(&format!("subnetgroup:{}", names.cache_subnet_group())),
                cache("parametergroup:default.*"),
            ]),
            None,
        ),
        // Only a DNS-validated certificate for the domain, tagged as the stack's by the
        // request itself: the stack's tag is never added to a certificate that already
        // exists, so no certificate can be made the stack's and then deleted.
        statement(
            &["acm:RequestCertificate"],
            json!("*"),
            Some(json!({
                "StringEquals": { format!("aws:RequestTag/{STACK_TAG}"): stack, "acm:ValidationMethod": "DNS" },
                "ForAllValues:StringEquals": { "acm:DomainNames": [domain.clone()] },
            })),
        ),
        // The stack's own certificates, and stack.yaml's tags on them: only a certificate
        // that is the stack's already can be tagged.
        statement(
            &["acm:DeleteCertificate", "acm:AddTagsToCertificate"],
            json!(format!("arn:aws:acm:{region}:{account}:certificate/*")),
            Some(resource_tag),
        ),
        // In the stack's zone, only the domain's alias and the certificate's validation
        // records (`_<token>.<domain>`).
        record_changes(hosted_zone_id, &domain, None),
        // The artifact bucket and the access logs' bucket.
        statement(
            &[
                "s3:CreateBucket",
                "s3:DeleteBucket",
                "s3:ListBucket*",
                "s3:*BucketPolicy",
                "s3:*BucketPublicAccessBlock",
                "s3:*EncryptionConfiguration",
                "s3:*BucketTagging",
                "s3:*LifecycleConfiguration",
            ],
            json!([
                format!("arn:aws:s3:::{bucket}"),
                format!("arn:aws:s3:::{logs_bucket}")
            ]),
            None,
        ),
        statement(
            &["s3:PutObject", "s3:GetObject", "s3:DeleteObject*"],
            json!(format!("arn:aws:s3:::{bucket}/*")),
            None,
        ),
        // Logs are the load balancer's to write: the deployer only empties the bucket.
        statement(
            &["s3:DeleteObject*"],
            json!(format!("arn:aws:s3:::{logs_bucket}/*")),
            None,
        ),
        // The first load balancer, Redis and Auto Scaling group of an account create their
        // service's role.
        statement(
            &["iam:CreateServiceLinkedRole"],
            json!(format!("arn:aws:iam::{account}:role/aws-service-role/*")),
            Some(json!({ "StringEquals": { "iam:AWSServiceName": [
                "elasticloadbalancing.amazonaws.com",
                "elasticache.amazonaws.com",
                "autoscaling.amazonaws.com"
            ] } })),
        ),
    ];
    // The alias of an earlier domain.name, and its certificate's records: deleted only.
    let retired = retired_alias.map(|(zone_id, name)| {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        record_changes(zone_id, &name, Some("DELETE"))
    });
    let statements: Vec<Value> = statements.into_iter().chain(retired).collect();
    wrap(statements)
}

fn statement(actions: &[&str], resource: Value, condition: Option<Value>) -> Value {
    let mut statement = json!({
        "Effect": "Allow",
        "Action": actions,
        "Resource": resource,
    });
    if let Some(condition) = condition {
        statement["Condition"] = condition;
    }
    statement
}

/// The size IAM holds a policy document to: its characters, whitespace left out.
pub fn size(document: &Value) -> usize {
    document
        .to_string()
        .chars()
        .filter(|c| !c.is_whitespace())
        .count()
}

/// Every action, or action pattern, the policy `document` grants.
pub fn granted(document: &Value) -> BTreeSet<String> {
    document["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|statement| statement["Action"].as_array().into_iter().flatten())
        .filter_map(|action| action.as_str().map(str::to_owned))
        .collect()
}

/// Whether the action `pattern` (IAM's: `*` stands for any run of characters, and case
/// does not matter) names `action`.
pub fn matches(pattern: &str, action: &str) -> bool {
    fn glob(pattern: &[u8], text: &[u8]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some((b'*', rest)) => (0..=text.len()).any(|skip| glob(rest, &text[skip..])),
            Some((first, rest)) => text
                .split_first()
                .is_some_and(|(head, tail)| head.eq_ignore_ascii_case(first) && glob(rest, tail)),
        }
    }
    glob(pattern.as_bytes(), action.as_bytes())
}

/// The IAM action that authorizes an operation as the call log names it
/// (`EC2:DescribeVpcs` → `ec2:DescribeVpcs`); None for one that needs no permission
/// (`sts:GetCallerIdentity`) or of a service the CLI does not use.
pub fn iam_action(call: &str) -> Option<String> {
    let (service, operation) = call.split_once(':')?;
    let prefix = match service {
        "EC2" => "ec2",
        "Elastic Load Balancing v2" => "elasticloadbalancing",
        "ElastiCache" => "elasticache",
        "ACM" => "acm",
        "Auto Scaling" => "autoscaling",
        "Route 53" => "route53",
        "Pricing" => "pricing",
        "S3" => return s3_action(operation).map(|action| format!("s3:{action}")),
        _ => return None,
    };
    Some(format!("{prefix}:{operation}"))
}

/// S3's actions are not named after its operations.
fn s3_action(operation: &str) -> Option<&str> {
    Some(match operation {
        "HeadBucket" | "ListObjectsV2" => "ListBucket",
        "ListObjectVersions" => "ListBucketVersions",
        "HeadObject" => "GetObject",
        "PutPublicAccessBlock" => "PutBucketPublicAccessBlock",
        "GetPublicAccessBlock" => "GetBucketPublicAccessBlock",
        "PutBucketEncryption" => "PutEncryptionConfiguration",
        "GetBucketEncryption" => "GetEncryptionConfiguration",
        // `destroy` deletes objects by version (`bucket::Bucket`): s3:DeleteObjectVersion.
        "DeleteObjects" => "DeleteObjectVersion",
        "PutBucketLifecycleConfiguration" => "PutLifecycleConfiguration",
        "GetBucketLifecycleConfiguration" => "GetLifecycleConfiguration",
        "CreateBucket" | "DeleteBucket" | "PutBucketPolicy" | "GetBucketPolicy"
        | "PutBucketTagging" | "GetBucketTagging" | "PutObject" | "GetObject" | "DeleteObject" => {
            operation
        }
        _ => return None,
    })
}

/// ChangeResourceRecordSets in the zone `zone_id` on `domain`'s alias (A) and its
/// certificate's validation records (CNAME `_<token>.<domain>`), and no other name or
/// type; with `only_action`, that action only
/// (<https://docs.aws.amazon.com/Route53/latest/DeveloperGuide/specifying-rrset-conditions.html>).
fn record_changes(zone_id: &str, domain: &str, only_action: Option<&str>) -> Value {
    let mut equals = json!({ "route53:ChangeResourceRecordSetsRecordTypes": ["A", "CNAME"] });
    if let Some(action) = only_action {
        equals["route53:ChangeResourceRecordSetsActions"] = json!([action]);
    }
    statement(
        &["route53:ChangeResourceRecordSets"],
        json!(format!("arn:aws:route53:::hostedzone/{zone_id}")),
        Some(json!({
            "ForAllValues:StringLike": {
                "route53:ChangeResourceRecordSetsNormalizedRecordNames":
                    [domain, format!("_*.{domain}")]
            },
            "ForAllValues:StringEquals": equals,
        })),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document_for(yaml: &str) -> Value {
        let spec = StackSpec::parse(yaml, "stack.yaml").unwrap();
        let names = Names::new(&spec.name, &spec.tags);
        document(&Scope {
            spec: &spec,
            names: &names,
            account: "123456789012",
            region: "ap-southeast-2",
            hosted_zone_id: "Z0123456789ABCDEFGHIJ",
            retired_alias: None,
        })
    }

    const EXAMPLE: &str =
        "name: demo\ndomain:\n  name: Chat.Example.com\n  hosted_zone: example.com\n";

    /// The statements granting ChangeResourceRecordSets.
    fn record_statements(policy: &Value) -> Vec<Value> {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|statement| statement["Action"] == json!(["route53:ChangeResourceRecordSets"]))
            .cloned()
            .collect()
    }

    /// Record changes: in the zone, the domain's alias (A) and its validation CNAMEs only,
    /// not the zone apex's NS, SOA, MX or TXT; and the alias of an earlier domain.name
    /// (from the load balancer's tag), in its own zone, to delete only.
    #[test]
    fn record_changes_are_the_domains_alias_and_validation_records_only() {
        let [current] = record_statements(&document_for(EXAMPLE))
            .try_into()
            .unwrap();
        assert_eq!(
            current["Resource"],
            "arn:aws:route53:::hostedzone/Z0123456789ABCDEFGHIJ"
        );
        assert_eq!(
            current["Condition"],
            json!({
                "ForAllValues:StringLike": {
                    "route53:ChangeResourceRecordSetsNormalizedRecordNames":
                        ["chat.example.com", "_*.chat.example.com"]
                },
                "ForAllValues:StringEquals": {
                    "route53:ChangeResourceRecordSetsRecordTypes": ["A", "CNAME"]
                },
            })
        );

        let spec = StackSpec::parse(EXAMPLE, "stack.yaml").unwrap();
        let names = Names::new(&spec.name, &spec.tags);
        let policy = document(&Scope {
            spec: &spec,
            names: &names,
            account: "123456789012",
            region: "ap-southeast-2",
            hosted_zone_id: "Z0123456789ABCDEFGHIJ",
            retired_alias: Some(("ZOLDZONE", "Old.Example.org.")),
        });
        let [_, retired] = record_statements(&policy).try_into().unwrap();
        assert_eq!(retired["Resource"], "arn:aws:route53:::hostedzone/ZOLDZONE");
        assert_eq!(
            retired["Condition"],
            json!({
                "ForAllValues:StringLike": {
                    "route53:ChangeResourceRecordSetsNormalizedRecordNames":
                        ["old.example.org", "_*.old.example.org"]
                },
                "ForAllValues:StringEquals": {
                    "route53:ChangeResourceRecordSetsRecordTypes": ["A", "CNAME"],
                    "route53:ChangeResourceRecordSetsActions": ["DELETE"]
                },
            })
        );
    }

    #[test]
    fn changes_are_scoped_to_the_stack() {
        let policy = document_for(EXAMPLE);
        for statement in policy["Statement"].as_array().unwrap() {
            let changes = statement["Action"]
                .as_array()
                .unwrap()
                .iter()
                .any(|action| {
                    let action = action.as_str().unwrap();
                    let name = action.split(':').nth(1).unwrap();
                    !["Describe", "List", "Get"]
                        .iter()
                        .any(|read| name.starts_with(read))
                });
            if changes {
                assert_ne!(
                    (&statement["Resource"], &statement["Condition"]),
                    (&json!("*"), &Value::Null),
                    "a change allowed on everything: {statement}"
                );
            }
        }
        let text = policy.to_string();
        assert!(text.contains("arn:aws:s3:::demo-artifacts-123456789012-ap-southeast-2"));
        assert!(text.contains("\"_*.chat.example.com\""), "{text}");
        assert!(text.contains("hostedzone/Z0123456789ABCDEFGHIJ"), "{text}");
    }

    #[test]
    fn the_policy_fits_a_managed_policy_for_a_long_stack_name() {
        // 20 characters, a long region and domain: the largest document a usual stack makes.
        let yaml = "name: realtime-chat-prod01\ndomain:\n  name: chat.realtime.example-company.com\n  hosted_zone: example-company.com\ninstances:\n  ami: ami-0123456789abcdef0\n";
        let policy = document_for(yaml);
        let size = size(&policy);
        println!("policy size for a 20-character stack name: {size} of {MANAGED_POLICY_LIMIT}");
        assert!(size <= MANAGED_POLICY_LIMIT, "{size} characters: {policy}");
    }

    #[test]
    fn the_longest_domain_still_fits_and_a_larger_policy_is_split_into_documents_that_fit() {
        // The longest domain stack.yaml takes: 64 characters, ACM's limit.
        let domain = format!("{}.example.com", "a".repeat(52));
        assert_eq!(domain.len(), 64);
        let whole = document_for(&format!(
            "name: realtime-chat-prod01\ndomain:\n  name: {domain}\n  hosted_zone: example.com\n"
        ));
        println!("{} characters with a 64-character domain", size(&whole));
        assert!(size(&whole) <= MANAGED_POLICY_LIMIT);

        let limit = size(&whole) / 3;
        let documents = split(whole.clone(), limit);
        let sizes: Vec<usize> = documents.iter().map(size).collect();
        assert!(sizes.len() > 3, "{sizes:?}");
        assert!(sizes.iter().all(|size| *size <= limit), "{sizes:?}");
        let statements: Vec<&Value> = documents
            .iter()
            .flat_map(|document| document["Statement"].as_array().unwrap())
            .collect();
        assert_eq!(
            statements,
            whole["Statement"]
                .as_array()
                .unwrap()
                .iter()
                .collect::<Vec<_>>(),
            "the documents hold every statement, once, in order"
        );
    }

    /// AddTagsToCertificate is granted once, on certificates that are the stack's already:
    /// no certificate can be made the stack's by a tag, and then deleted.
    #[test]
    fn no_certificate_can_be_made_the_stacks_by_a_tag() {
        let document = document_for(EXAMPLE);
        let tagging: Vec<&Value> = document["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|statement| {
                statement["Action"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .any(|pattern| matches(pattern, "acm:AddTagsToCertificate"))
            })
            .collect();
        assert_eq!(tagging.len(), 1, "{tagging:?}");
        assert_eq!(
            tagging[0]["Condition"],
            json!({ "StringEquals": { format!("aws:ResourceTag/{STACK_TAG}"): "demo" } }),
        );
    }

    #[test]
    fn launches_follow_the_stack_s_image_and_instance_type() {
        let amazon = document_for(EXAMPLE).to_string();
        assert!(amazon.contains(r#""ec2:Owner":"amazon""#), "{amazon}");
        assert!(
            amazon.contains(r#""ec2:InstanceType":"t3.micro""#),
            "{amazon}"
        );
        let own = document_for(&format!(
            "{EXAMPLE}instances:\n  ami: ami-0123456789abcdef0\n  type: c7g.large\n"
        ))
        .to_string();
        assert!(
            own.contains("arn:aws:ec2:ap-southeast-2::image/ami-0123456789abcdef0"),
            "{own}"
        );
        assert!(!own.contains("ec2:Owner"), "{own}");
        assert!(own.contains(r#""ec2:InstanceType":"c7g.large""#), "{own}");
    }

    #[test]
    fn patterns_match_as_iam_matches_them() {
        assert!(matches(
            "ec2:*SecurityGroup*",
            "ec2:AuthorizeSecurityGroupEgress"
        ));
        assert!(matches("ec2:*Route", "ec2:ReplaceRoute"));
        assert!(!matches("ec2:*Route", "ec2:ReplaceRouteTableAssociation"));
        assert!(matches("ec2:describe*", "ec2:DescribeVpcs"));
        assert!(!matches("ec2:Describe*", "elasticache:DescribeEvents"));
    }

    #[test]
    fn operations_map_to_their_actions() {
        assert_eq!(
            iam_action("EC2:RunInstances").as_deref(),
            Some("ec2:RunInstances")
        );
        assert_eq!(
            iam_action("Elastic Load Balancing v2:RegisterTargets").as_deref(),
            Some("elasticloadbalancing:RegisterTargets")
        );
        assert_eq!(iam_action("S3:HeadObject").as_deref(), Some("s3:GetObject"));
        assert_eq!(
            iam_action("Pricing:GetProducts").as_deref(),
            Some("pricing:GetProducts")
        );
        assert_eq!(iam_action("STS:GetCallerIdentity"), None);
    }
}
