//! The least-privilege IAM policy of a deployer of one stack: every action `up`, `plan`,
//! `status`, `logs` and `destroy` need, and no other; scoped to the stack's resources by
//! name where the service's ARNs carry it (load balancer, target group, Redis, bucket,
//! Auto Scaling group), by the stack's tag where they do not (EC2, certificates), and to
//! the stack's domain for DNS changes. Describe and List calls that IAM cannot scope get
//! `*`.
//!
//! Also the mapping from the operations the CLI sends (as its call log names them,
//! `EC2:DescribeVpcs`) to IAM actions, which the policy test uses to prove the policy is
//! exactly what the CLI calls.

use serde_json::{Value, json};

use crate::names::{Names, STACK_TAG};

/// What the policy is scoped to.
pub struct Scope<'a> {
    pub names: &'a Names,
    pub account: &'a str,
    pub region: &'a str,
    pub domain: &'a str,
}

/// The EC2 resource types the stack creates, each tagged at creation.
const EC2_TAGGED_ON_CREATE: [&str; 9] = [
    "vpc",
    "subnet",
    "internet-gateway",
    "route-table",
    "security-group",
    "vpc-endpoint",
    "instance",
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

/// The policy document.
pub fn document(scope: &Scope) -> Value {
    let Scope {
        names,
        account,
        region,
        domain,
    } = *scope;
    let stack = names.stack();
    let request_tag = json!({ "StringEquals": { format!("aws:RequestTag/{STACK_TAG}"): stack } });
    let resource_tag = json!({ "StringEquals": { format!("aws:ResourceTag/{STACK_TAG}"): stack } });
    let ec2 = |resource: &str| format!("arn:aws:ec2:{region}:{account}:{resource}");
    let elb =
        |resource: &str| format!("arn:aws:elasticloadbalancing:{region}:{account}:{resource}");
    let cache = |resource: &str| format!("arn:aws:elasticache:{region}:{account}:{resource}");
    let load_balancer = names.load_balancer();
    let target_group = names.target_group();
    let replication_group = names.replication_group();
    let bucket = names.bucket(account, region);
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let mut ec2_owned: Vec<&str> = EC2_CREATE.to_vec();
    ec2_owned.extend([
        "ec2:AttachInternetGateway",
        "ec2:DetachInternetGateway",
        "ec2:AssociateRouteTable",
        "ec2:DisassociateRouteTable",
        "ec2:ReplaceRouteTableAssociation",
        "ec2:CreateRoute",
        "ec2:ReplaceRoute",
        "ec2:DeleteRoute",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:AuthorizeSecurityGroupEgress",
        "ec2:RevokeSecurityGroupEgress",
        "ec2:ModifyVpcAttribute",
        "ec2:ModifyVpcEndpoint",
        "ec2:DeleteVpcEndpoints",
        "ec2:DeleteVpc",
        "ec2:DeleteSubnet",
        "ec2:DeleteInternetGateway",
        "ec2:DeleteRouteTable",
        "ec2:DeleteSecurityGroup",
        "ec2:TerminateInstances",
        "ec2:GetConsoleOutput",
        "ec2:ModifyInstanceMetadataOptions",
        "ec2:CreateTags",
        "ec2:CreateLaunchTemplateVersion",
        "ec2:ModifyLaunchTemplate",
        "ec2:DeleteLaunchTemplate",
    ]);
    let group = format!(
        "arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:autoScalingGroupName/{}",
        names.auto_scaling_group()
    );
    let statements = vec![
        statement(
            "Ec2Describe",
            &[
                "ec2:DescribeAvailabilityZones",
                "ec2:DescribeImages",
                "ec2:DescribeInstanceTypeOfferings",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeInstances",
                "ec2:DescribeInternetGateways",
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribeLaunchTemplateVersions",
                "ec2:DescribePrefixLists",
                "ec2:DescribeRouteTables",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeSubnets",
                "ec2:DescribeVpcAttribute",
                "ec2:DescribeVpcEndpoints",
                "ec2:DescribeVpcs",
            ],
            json!("*"),
            None,
        ),
        // New resources must carry the stack's tag from their first moment...
        statement(
            "Ec2CreateTagged",
            &EC2_CREATE,
            json!(
                EC2_TAGGED_ON_CREATE
                    .iter()
                    .map(|kind| ec2(&format!("{kind}/*")))
                    .collect::<Vec<_>>()
            ),
            Some(request_tag.clone()),
        ),
        statement(
            "Ec2TagOnCreate",
            &["ec2:CreateTags"],
            json!(ec2("*/*")),
            Some(json!({ "StringEquals": { "ec2:CreateAction": EC2_CREATE
                .iter()
                .map(|action| action.trim_start_matches("ec2:"))
                .collect::<Vec<_>>() } })),
        ),
        // ...and existing ones are touched only when they carry it.
        statement(
            "Ec2Owned",
            &ec2_owned,
            json!(ec2("*/*")),
            Some(resource_tag.clone()),
        ),
        // What a launch or a rule creates untagged: the network interface, the rules.
        statement(
            "Ec2LaunchUntagged",
            &[
                "ec2:RunInstances",
                "ec2:AuthorizeSecurityGroupIngress",
                "ec2:AuthorizeSecurityGroupEgress",
            ],
            json!([ec2("network-interface/*"), ec2("security-group-rule/*")]),
            None,
        ),
        statement(
            "Ec2AmazonImages",
            &["ec2:RunInstances"],
            json!(format!("arn:aws:ec2:{region}::image/*")),
            Some(json!({ "StringEquals": { "ec2:Owner": "amazon" } })),
        ),
        statement(
            "AutoScalingDescribe",
            &[
                "autoscaling:DescribeAutoScalingGroups",
                "autoscaling:DescribePolicies",
                "autoscaling:DescribeScalingActivities",
            ],
            json!("*"),
            None,
        ),
        statement(
            "AutoScalingCreateTagged",
            &[
                "autoscaling:CreateAutoScalingGroup",
                "autoscaling:CreateOrUpdateTags",
            ],
            json!(group),
            Some(request_tag.clone()),
        ),
        statement(
            "AutoScalingOwned",
            &[
                "autoscaling:UpdateAutoScalingGroup",
                "autoscaling:TerminateInstanceInAutoScalingGroup",
                "autoscaling:AttachLoadBalancerTargetGroups",
                "autoscaling:ResumeProcesses",
                "autoscaling:CreateOrUpdateTags",
                "autoscaling:PutScalingPolicy",
                "autoscaling:DeletePolicy",
                "autoscaling:DeleteAutoScalingGroup",
            ],
            json!(group),
            Some(json!({ "StringEquals": {
                format!("autoscaling:ResourceTag/{STACK_TAG}"): stack
            } })),
        ),
        statement(
            "LoadBalancerDescribe",
            &[
                "elasticloadbalancing:DescribeListeners",
                "elasticloadbalancing:DescribeRules",
                "elasticloadbalancing:DescribeLoadBalancerAttributes",
                "elasticloadbalancing:DescribeLoadBalancers",
                "elasticloadbalancing:DescribeTags",
                "elasticloadbalancing:DescribeTargetGroupAttributes",
                "elasticloadbalancing:DescribeTargetGroups",
                "elasticloadbalancing:DescribeTargetHealth",
            ],
            json!("*"),
            None,
        ),
        statement(
            "LoadBalancerCreateTagged",
            &[
                "elasticloadbalancing:CreateLoadBalancer",
                "elasticloadbalancing:CreateTargetGroup",
                "elasticloadbalancing:AddTags",
            ],
            json!([
                elb(&format!("loadbalancer/app/{load_balancer}/*")),
                elb(&format!("targetgroup/{target_group}/*")),
            ]),
            Some(request_tag.clone()),
        ),
        statement(
            "LoadBalancerOwned",
            &[
                "elasticloadbalancing:CreateListener",
                "elasticloadbalancing:ModifyListener",
                "elasticloadbalancing:DeleteListener",
                "elasticloadbalancing:CreateRule",
                "elasticloadbalancing:ModifyRule",
                "elasticloadbalancing:ModifyLoadBalancerAttributes",
                "elasticloadbalancing:SetSecurityGroups",
                "elasticloadbalancing:SetSubnets",
                "elasticloadbalancing:DeleteLoadBalancer",
                "elasticloadbalancing:ModifyTargetGroup",
                "elasticloadbalancing:ModifyTargetGroupAttributes",
                "elasticloadbalancing:DeregisterTargets",
                "elasticloadbalancing:DeleteTargetGroup",
            ],
            json!([
                elb(&format!("loadbalancer/app/{load_balancer}/*")),
                elb(&format!("listener/app/{load_balancer}/*")),
                elb(&format!("listener-rule/app/{load_balancer}/*")),
                elb(&format!("targetgroup/{target_group}/*")),
            ]),
            None,
        ),
        statement(
            "RedisDescribe",
            &[
                "elasticache:DescribeCacheClusters",
                "elasticache:DescribeCacheSubnetGroups",
                "elasticache:DescribeEvents",
                "elasticache:DescribeReplicationGroups",
            ],
            json!("*"),
            None,
        ),
        statement(
            "RedisOwned",
            &[
                "elasticache:CreateCacheSubnetGroup",
                "elasticache:ModifyCacheSubnetGroup",
                "elasticache:DeleteCacheSubnetGroup",
                "elasticache:CreateReplicationGroup",
                "elasticache:ModifyReplicationGroup",
                "elasticache:IncreaseReplicaCount",
                "elasticache:DecreaseReplicaCount",
                "elasticache:ModifyReplicationGroupShardConfiguration",
                "elasticache:TestFailover",
                "elasticache:DeleteReplicationGroup",
                "elasticache:ListTagsForResource",
                "elasticache:AddTagsToResource",
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
        statement(
            "CertificateRequestTagged",
            &["acm:RequestCertificate", "acm:AddTagsToCertificate"],
            json!("*"),
            Some(request_tag),
        ),
        statement(
            "CertificateList",
            &["acm:ListCertificates"],
            json!("*"),
            None,
        ),
        statement(
            "CertificateRead",
            &["acm:DescribeCertificate", "acm:ListTagsForCertificate"],
            json!(format!("arn:aws:acm:{region}:{account}:certificate/*")),
            None,
        ),
        statement(
            "CertificateOwned",
            &["acm:DeleteCertificate"],
            json!(format!("arn:aws:acm:{region}:{account}:certificate/*")),
            Some(resource_tag),
        ),
        statement(
            "DnsFindZone",
            &["route53:ListHostedZonesByName"],
            json!("*"),
            None,
        ),
        statement(
            "DnsWaitForChanges",
            &["route53:GetChange"],
            json!("arn:aws:route53:::change/*"),
            None,
        ),
        statement(
            "DnsReadZone",
            &["route53:GetHostedZone", "route53:ListResourceRecordSets"],
            json!("arn:aws:route53:::hostedzone/*"),
            None,
        ),
        // Only the domain's alias and the certificate's validation records
        // (`_<token>.<domain>`).
        statement(
            "DnsDomainRecords",
            &["route53:ChangeResourceRecordSets"],
            json!("arn:aws:route53:::hostedzone/*"),
            Some(json!({ "ForAllValues:StringLike": {
                "route53:ChangeResourceRecordSetsNormalizedRecordNames":
                    [domain.clone(), format!("_*.{domain}")]
            } })),
        ),
        statement(
            "ArtifactBucket",
            &[
                "s3:CreateBucket",
                "s3:DeleteBucket",
                "s3:ListBucket",
                "s3:PutBucketPolicy",
                "s3:GetBucketPolicy",
                "s3:PutBucketPublicAccessBlock",
                "s3:GetBucketPublicAccessBlock",
                "s3:PutEncryptionConfiguration",
                "s3:GetEncryptionConfiguration",
                "s3:PutBucketTagging",
                "s3:GetBucketTagging",
            ],
            json!(format!("arn:aws:s3:::{bucket}")),
            None,
        ),
        statement(
            "ArtifactObjects",
            &["s3:PutObject", "s3:GetObject", "s3:DeleteObject"],
            json!(format!("arn:aws:s3:::{bucket}/*")),
            None,
        ),
        // The first load balancer, Redis and Auto Scaling group of an account create their
        // service's role.
        statement(
            "ServiceLinkedRoles",
            &["iam:CreateServiceLinkedRole"],
            json!(format!("arn:aws:iam::{account}:role/aws-service-role/*")),
            Some(json!({ "StringEquals": { "iam:AWSServiceName": [
                "elasticloadbalancing.amazonaws.com",
                "elasticache.amazonaws.com",
                "autoscaling.amazonaws.com"
            ] } })),
        ),
    ];
    json!({ "Version": "2012-10-17", "Statement": statements })
}

fn statement(sid: &str, actions: &[&str], resource: Value, condition: Option<Value>) -> Value {
    let mut statement = json!({
        "Sid": sid,
        "Effect": "Allow",
        "Action": actions,
        "Resource": resource,
    });
    if let Some(condition) = condition {
        statement["Condition"] = condition;
    }
    statement
}

/// Every action the policy `document` grants.
pub fn granted(document: &Value) -> std::collections::BTreeSet<String> {
    document["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|statement| statement["Action"].as_array().into_iter().flatten())
        .filter_map(|action| action.as_str().map(str::to_owned))
        .collect()
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
        "S3" => return s3_action(operation).map(|action| format!("s3:{action}")),
        _ => return None,
    };
    Some(format!("{prefix}:{operation}"))
}

/// S3's actions are not named after its operations.
fn s3_action(operation: &str) -> Option<&str> {
    Some(match operation {
        "HeadBucket" | "ListObjectsV2" => "ListBucket",
        "HeadObject" => "GetObject",
        "PutPublicAccessBlock" => "PutBucketPublicAccessBlock",
        "GetPublicAccessBlock" => "GetBucketPublicAccessBlock",
        "PutBucketEncryption" => "PutEncryptionConfiguration",
        "GetBucketEncryption" => "GetEncryptionConfiguration",
        "DeleteObjects" => "DeleteObject",
        "CreateBucket" | "DeleteBucket" | "PutBucketPolicy" | "GetBucketPolicy"
        | "PutBucketTagging" | "GetBucketTagging" | "PutObject" | "GetObject" | "DeleteObject" => {
            operation
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn example() -> Value {
        let names = Names::new("demo", &BTreeMap::new());
        document(&Scope {
            names: &names,
            account: "123456789012",
            region: "eu-west-1",
            domain: "Chat.Example.com.",
        })
    }

    #[test]
    fn changes_are_scoped_to_the_stack() {
        let policy = example();
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
        assert!(text.contains("arn:aws:s3:::demo-artifacts-123456789012-eu-west-1"));
        assert!(text.contains("\"_*.chat.example.com\""), "{text}");
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
        assert_eq!(iam_action("STS:GetCallerIdentity"), None);
    }
}
