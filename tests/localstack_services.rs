//! Proof that every AWS API the CLI uses answers on the local LocalStack, through the
//! same Rust SDK the CLI uses: EC2, ELBv2, ElastiCache, ACM, Route53 and S3 each create
//! and delete a resource of the kind the stack is made of.

mod support;

use aws_sdk_acm::types::ValidationMethod;
use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
use aws_sdk_s3::primitives::ByteStream;

#[tokio::test]
async fn every_aws_service_the_cli_uses_answers_on_localstack() {
    let aws = support::localstack().await;
    let suffix = support::unique_suffix();
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&aws);
    let elasticache = aws_sdk_elasticache::Client::new(&aws);
    let acm = aws_sdk_acm::Client::new(&aws);
    let route53 = aws_sdk_route53::Client::new(&aws);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&aws)
            .force_path_style(true)
            .build(),
    );

    // EC2: a tagged VPC with a subnet in each of two zones (a load balancer needs two).
    let vpc_id = ec2
        .create_vpc()
        .cidr_block("10.77.0.0/16")
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Vpc)
                .tags(
                    Tag::builder()
                        .key("realtime-stack:stack")
                        .value(&suffix)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("CreateVpc")
        .vpc
        .and_then(|vpc| vpc.vpc_id)
        .expect("CreateVpc returns the VPC id");
    let mut subnet_ids = Vec::new();
    for (cidr, zone) in [
        ("10.77.1.0/24", "us-east-1a"),
        ("10.77.2.0/24", "us-east-1b"),
    ] {
        let subnet = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(cidr)
            .availability_zone(zone)
            .send()
            .await
            .expect("CreateSubnet")
            .subnet
            .expect("CreateSubnet returns the subnet");
        assert_eq!(subnet.vpc_id(), Some(vpc_id.as_str()));
        subnet_ids.push(subnet.subnet_id.expect("subnet id"));
    }
    let tagged = ec2
        .describe_vpcs()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:realtime-stack:stack")
                .values(&suffix)
                .build(),
        )
        .send()
        .await
        .expect("DescribeVpcs by tag");
    assert_eq!(tagged.vpcs().len(), 1, "the VPC is found by its tag");

    // ELBv2 (served by the project's LocalStack extension): a load balancer in those
    // subnets, and the modelled not-found error that resource discovery relies on.
    let load_balancer = elbv2
        .create_load_balancer()
        .name(format!("lb-{suffix}"))
        .set_subnets(Some(subnet_ids.clone()))
        .send()
        .await
        .expect("CreateLoadBalancer")
        .load_balancers()
        .first()
        .cloned()
        .expect("CreateLoadBalancer returns the load balancer");
    assert!(
        load_balancer
            .dns_name()
            .is_some_and(|name| !name.is_empty())
    );
    assert_eq!(load_balancer.vpc_id(), Some(vpc_id.as_str()));
    let missing = elbv2
        .describe_load_balancers()
        .names(format!("missing-{suffix}"))
        .send()
        .await
        .expect_err("an unknown load balancer is an error");
    assert!(
        missing
            .as_service_error()
            .is_some_and(|err| err.is_load_balancer_not_found_exception()),
        "unknown load balancer: {missing:?}"
    );

    // ElastiCache (served by the extension too): a cache subnet group that sees the VPC
    // created through LocalStack's EC2.
    let subnet_group_name = format!("cache-{suffix}");
    let subnet_group = elasticache
        .create_cache_subnet_group()
        .cache_subnet_group_name(&subnet_group_name)
        .cache_subnet_group_description("localstack services test")
        .set_subnet_ids(Some(subnet_ids.clone()))
        .send()
        .await
        .expect("CreateCacheSubnetGroup")
        .cache_subnet_group
        .expect("CreateCacheSubnetGroup returns the group");
    assert_eq!(subnet_group.vpc_id(), Some(vpc_id.as_str()));

    // ACM: a certificate requested with DNS validation offers its validation record.
    let domain = format!("chat-{suffix}.example.test");
    let certificate_arn = acm
        .request_certificate()
        .domain_name(&domain)
        .validation_method(ValidationMethod::Dns)
        .send()
        .await
        .expect("RequestCertificate")
        .certificate_arn
        .expect("RequestCertificate returns the ARN");
    let certificate = acm
        .describe_certificate()
        .certificate_arn(&certificate_arn)
        .send()
        .await
        .expect("DescribeCertificate")
        .certificate
        .expect("DescribeCertificate returns the certificate");
    assert_eq!(certificate.domain_name(), Some(domain.as_str()));

    // Route53: a hosted zone.
    let zone_id = route53
        .create_hosted_zone()
        .name(format!("zone-{suffix}.example.test"))
        .caller_reference(&suffix)
        .send()
        .await
        .expect("CreateHostedZone")
        .hosted_zone
        .expect("CreateHostedZone returns the zone")
        .id;

    // S3: a bucket holding an object.
    let bucket = format!("artifacts-{suffix}");
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("CreateBucket");
    s3.put_object()
        .bucket(&bucket)
        .key("chat-server")
        .body(ByteStream::from_static(b"binary"))
        .send()
        .await
        .expect("PutObject");
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key("chat-server")
        .send()
        .await
        .expect("GetObject");
    let body = object
        .body
        .collect()
        .await
        .expect("object body")
        .into_bytes();
    assert_eq!(&body[..], b"binary");

    // And every one of them deletes.
    s3.delete_object()
        .bucket(&bucket)
        .key("chat-server")
        .send()
        .await
        .expect("DeleteObject");
    s3.delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("DeleteBucket");
    route53
        .delete_hosted_zone()
        .id(&zone_id)
        .send()
        .await
        .expect("DeleteHostedZone");
    acm.delete_certificate()
        .certificate_arn(&certificate_arn)
        .send()
        .await
        .expect("DeleteCertificate");
    elasticache
        .delete_cache_subnet_group()
        .cache_subnet_group_name(&subnet_group_name)
        .send()
        .await
        .expect("DeleteCacheSubnetGroup");
    elbv2
        .delete_load_balancer()
        .load_balancer_arn(
            load_balancer
                .load_balancer_arn()
                .expect("load balancer ARN"),
        )
        .send()
        .await
        .expect("DeleteLoadBalancer");
    for subnet_id in &subnet_ids {
        ec2.delete_subnet()
            .subnet_id(subnet_id)
            .send()
            .await
            .expect("DeleteSubnet");
    }
    ec2.delete_vpc()
        .vpc_id(&vpc_id)
        .send()
        .await
        .expect("DeleteVpc");

    let remaining = ec2
        .describe_vpcs()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:realtime-stack:stack")
                .values(&suffix)
                .build(),
        )
        .send()
        .await
        .expect("DescribeVpcs by tag after delete");
    assert!(remaining.vpcs().is_empty(), "the VPC is gone");
    assert!(
        s3.head_bucket().bucket(&bucket).send().await.is_err(),
        "the bucket is gone"
    );
}

/// The numbers of the template's versions, every page of DescribeLaunchTemplateVersions
/// read, `page` versions a call.
async fn version_numbers(ec2: &aws_sdk_ec2::Client, template: &str, page: i32) -> Vec<i64> {
    let mut numbers = Vec::new();
    let mut token = None;
    loop {
        let described = ec2
            .describe_launch_template_versions()
            .launch_template_id(template)
            .max_results(page)
            .set_next_token(token)
            .send()
            .await
            .expect("DescribeLaunchTemplateVersions");
        let versions = described.launch_template_versions();
        assert!(
            versions.len() <= page as usize,
            "a page holds at most MaxResults"
        );
        numbers.extend(versions.iter().filter_map(|v| v.version_number()));
        token = described.next_token;
        if token.is_none() {
            return numbers;
        }
    }
}

/// Launch template versions are deleted and paged as EC2 documents, which moto alone
/// does not do (the extension's `launch_templates.py`): DeleteLaunchTemplateVersions
/// deletes what it can and says why it left the rest, the default version among them
/// ("You can't delete the default version of a launch template", API reference); a deleted
/// version is gone from DescribeLaunchTemplateVersions, cannot be described by number or
/// made the default, and the numbers go on from the highest made; the versions come a
/// page of `MaxResults` at a time with a `NextToken`; and a request names at most 200.
#[tokio::test]
async fn launch_template_versions_are_deleted_and_paged_as_ec2_does() {
    use aws_sdk_ec2::error::ProvideErrorMetadata;
    use aws_sdk_ec2::types::RequestLaunchTemplateData;

    let aws = support::localstack().await;
    let ec2 = aws_sdk_ec2::Client::new(&aws);
    let data = |image: &str| RequestLaunchTemplateData::builder().image_id(image).build();
    let template = ec2
        .create_launch_template()
        .launch_template_name(format!("versions-{}", support::unique_suffix()))
        .launch_template_data(data("ami-00000001"))
        .send()
        .await
        .expect("CreateLaunchTemplate")
        .launch_template
        .and_then(|template| template.launch_template_id)
        .expect("the template's id");
    for image in 2..=5 {
        ec2.create_launch_template_version()
            .launch_template_id(&template)
            .launch_template_data(data(&format!("ami-{image:08}")))
            .send()
            .await
            .expect("CreateLaunchTemplateVersion");
    }
    assert_eq!(version_numbers(&ec2, &template, 2).await, [1, 2, 3, 4, 5]);

    let deleted = ec2
        .delete_launch_template_versions()
        .launch_template_id(&template)
        .versions("1")
        .versions("2")
        .versions("4")
        .versions("9")
        .send()
        .await
        .expect("DeleteLaunchTemplateVersions answers for each version");
    let done: Vec<i64> = deleted
        .successfully_deleted_launch_template_versions()
        .iter()
        .filter_map(|item| item.version_number())
        .collect();
    assert_eq!(done, [2, 4]);
    let refused: Vec<(i64, String)> = deleted
        .unsuccessfully_deleted_launch_template_versions()
        .iter()
        .map(|item| {
            let code = item.response_error().and_then(|error| error.code());
            (
                item.version_number().unwrap_or_default(),
                code.map(|code| code.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (1, "unexpectedError".to_owned()),
            (9, "launchTemplateVersionDoesNotExist".to_owned())
        ],
        "the default version and one that never was are not deleted"
    );
    assert_eq!(version_numbers(&ec2, &template, 200).await, [1, 3, 5]);
    assert_eq!(version_numbers(&ec2, &template, 1).await, [1, 3, 5]);

    let described = ec2
        .describe_launch_template_versions()
        .launch_template_id(&template)
        .versions("2")
        .send()
        .await
        .expect_err("a deleted version cannot be described");
    assert_eq!(
        described.code(),
        Some("InvalidLaunchTemplateId.VersionNotFound")
    );
    let made_default = ec2
        .modify_launch_template()
        .launch_template_id(&template)
        .default_version("4")
        .send()
        .await
        .expect_err("a deleted version cannot be the default");
    assert_eq!(
        made_default.code(),
        Some("InvalidLaunchTemplateId.VersionNotFound")
    );

    let next = ec2
        .create_launch_template_version()
        .launch_template_id(&template)
        .launch_template_data(data("ami-00000006"))
        .send()
        .await
        .expect("CreateLaunchTemplateVersion")
        .launch_template_version
        .and_then(|version| version.version_number);
    assert_eq!(next, Some(6), "numbers go on from the highest made");

    let too_many = ec2
        .delete_launch_template_versions()
        .launch_template_id(&template)
        .set_versions(Some((1..=201).map(|n| n.to_string()).collect()))
        .send()
        .await
        .expect_err("201 versions in one request");
    assert_eq!(too_many.code(), Some("InvalidParameterValue"));

    ec2.delete_launch_template()
        .launch_template_id(&template)
        .send()
        .await
        .expect("DeleteLaunchTemplate");
}
