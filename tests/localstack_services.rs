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
