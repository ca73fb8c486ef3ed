use std::path::{Path, PathBuf};

use super::*;

/// The required keys only.
const MINIMAL: &str = "\
name: chat
domain:
  name: chat.example.com
  hosted_zone: example.com
";

fn problems(source: &str) -> Vec<Problem> {
    match StackSpec::parse(source, "stack.yaml") {
        Ok(spec) => panic!("expected problems, parsed {spec:?}"),
        Err(err) => err.problems,
    }
}

/// Asserts that the file has exactly one problem, at `path`, whose message contains `needle`,
/// and returns it.
fn one_problem(source: &str, path: &str, needle: &str) -> Problem {
    let found = problems(source);
    assert_eq!(found.len(), 1, "{found:#?}");
    let problem = found.into_iter().next().unwrap();
    assert_eq!(problem.path, path, "{problem:#?}");
    assert!(problem.message.contains(needle), "{problem:#?}");
    problem
}

/// The minimal file plus some lines.
fn with(extra: &str) -> String {
    format!("{MINIMAL}{extra}")
}

fn defaults() -> StackSpec {
    StackSpec {
        name: "chat".into(),
        region: "us-east-1".into(),
        domain: DomainSpec {
            name: "chat.example.com".into(),
            hosted_zone: "example.com".into(),
        },
        network: NetworkSpec {
            cidr: "10.0.0.0/16".into(),
            allowed_cidrs: vec!["0.0.0.0/0".into()],
        },
        instances: InstancesSpec {
            count: 2,
            instance_type: "t3.micro".into(),
            ami: None,
            binary: None,
            app_port: 8080,
            drain_seconds: 30,
            batch_size: 1,
            health_timeout_seconds: 600,
            cpu_credits: Some("standard".into()),
        },
        load_balancer: LoadBalancerSpec {
            idle_timeout_seconds: 3600,
            health_check_interval_seconds: 10,
            tls_policy: "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09".into(),
            access_logs: Some(AccessLogs { days: 90 }),
        },
        redis: RedisSpec {
            node_type: "cache.t4g.micro".into(),
            replicas: 1,
            shards: 1,
            engine: "redis".into(),
            engine_version: None,
            snapshot_retention_days: 7,
        },
        chat: ChatSpec::default(),
        scaling: None,
        tags: BTreeMap::new(),
    }
}

#[test]
fn example_stack_file_parses() {
    let spec = StackSpec::parse(include_str!("../../stack.yaml"), "stack.yaml").unwrap();
    let mut expected = defaults();
    expected.tags.insert("team".into(), "chat".into());
    assert_eq!(spec, expected);
}

#[test]
fn minimal_file_takes_defaults() {
    assert_eq!(StackSpec::parse(MINIMAL, "stack.yaml").unwrap(), defaults());
}

#[test]
fn keys_without_values_and_empty_sections_take_defaults() {
    let spec = StackSpec::parse(
        &with("region:\nnetwork:\ninstances:\n  ami:\n  count:\nredis: {}\n"),
        "stack.yaml",
    )
    .unwrap();
    assert_eq!(spec, defaults());
}

#[test]
fn full_file_is_read() {
    let source = r#"
name: chat-prod
region: eu-west-3
domain:
  name: Chat.Example.COM.
  hosted_zone: /hostedzone/Z0123456789ABCDEF
network:
  cidr: 172.16.0.0/20
  allowed_cidrs:
    - 203.0.113.0/24
    - 198.51.100.7/32
instances:
  count: 3
  type: m7g.large
  ami: ami-0123456789abcdef0
  binary: bin/chat-server
  app_port: 9000
  drain_seconds: 0
  batch_size: 2
  health_timeout_seconds: 900
load_balancer:
  idle_timeout_seconds: 4000
  health_check_interval_seconds: 5
  tls_policy: ELBSecurityPolicy-TLS13-1-3-2021-06
  access_logs: false
  access_logs_days: 30
redis:
  node_type: cache.r7g.large
  replicas: 0
  shards: 4
  engine: valkey
  engine_version: 8.0
  snapshot_retention_days: 7
chat:
  auth:
    generate: true
    issuer: https://id.example
    audience: chat
    token_url: https://id.example/chat-token
  history_messages: 5000
  max_rooms_per_connection: 20
  presence_ttl_seconds: 60
  fanout_window_ms: 20
tags:
  team: chat
  cost-center: 1234
"#;
    let spec = StackSpec::parse(source, "stack.yaml").unwrap();
    let expected = StackSpec {
        name: "chat-prod".into(),
        region: "eu-west-3".into(),
        domain: DomainSpec {
            name: "chat.example.com".into(),
            hosted_zone: "Z0123456789ABCDEF".into(),
        },
        network: NetworkSpec {
            cidr: "172.16.0.0/20".into(),
            allowed_cidrs: vec!["203.0.113.0/24".into(), "198.51.100.7/32".into()],
        },
        instances: InstancesSpec {
            count: 3,
            instance_type: "m7g.large".into(),
            ami: Some("ami-0123456789abcdef0".into()),
            binary: Some(PathBuf::from("bin/chat-server")),
            app_port: 9000,
            drain_seconds: 0,
            batch_size: 2,
            health_timeout_seconds: 900,
            cpu_credits: None,
        },
        load_balancer: LoadBalancerSpec {
            idle_timeout_seconds: 4000,
            health_check_interval_seconds: 5,
            tls_policy: "ELBSecurityPolicy-TLS13-1-3-2021-06".into(),
            access_logs: None,
        },
        redis: RedisSpec {
            node_type: "cache.r7g.large".into(),
            replicas: 0,
            shards: 4,
            engine: "valkey".into(),
            // Written unquoted, it is still taken as written, not as the float 8.
            engine_version: Some("8.0".into()),
            snapshot_retention_days: 7,
        },
        chat: ChatSpec {
            auth: Some(AuthSpec {
                key: AuthKey::Generate,
                issuer: Some("https://id.example".into()),
                audience: Some("chat".into()),
                token_url: Some("https://id.example/chat-token".into()),
            }),
            settings: ChatSettings {
                history_messages: 5000,
                max_rooms_per_connection: 20,
                presence_ttl_seconds: 60,
                fanout_window_ms: 20,
            },
        },
        scaling: None,
        tags: BTreeMap::from([
            ("cost-center".into(), "1234".into()),
            ("team".into(), "chat".into()),
        ]),
    };
    assert_eq!(spec, expected);
    assert_eq!(spec.domain.zone_id(), Some("Z0123456789ABCDEF"));
    assert_eq!(defaults().domain.zone_id(), None);
}

#[test]
fn unknown_key_suggests_the_closest_with_its_position() {
    let problem = one_problem(
        &with("instances:\n  cuont: 3\n"),
        "instances.cuont",
        "unknown key",
    );
    assert_eq!((problem.line, problem.column), (6, 3));
    assert_eq!(problem.message, "unknown key `cuont` in `instances`");
    assert_eq!(problem.help.as_deref(), Some("did you mean `count`?"));

    let problem = one_problem(&with("regoin: eu-west-1\n"), "regoin", "unknown key");
    assert_eq!((problem.line, problem.column), (5, 1));
    assert_eq!(problem.help.as_deref(), Some("did you mean `region`?"));
}

#[test]
fn unknown_key_without_a_close_match_lists_the_keys() {
    let problem = one_problem(
        &with("load_balancer:\n  zzz: 1\n"),
        "load_balancer.zzz",
        "unknown",
    );
    assert_eq!(
        problem.help.as_deref(),
        Some(
            "the keys here are idle_timeout_seconds, health_check_interval_seconds, tls_policy, access_logs, access_logs_days"
        )
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let source = "\
name: Chat
region: moon-1
domain:
  name: chat.example.com
  hosted_zone: example.com
instances:
  count: 0
  colour: blue
redis:
  engine: valky
";
    let found: Vec<(String, usize, usize)> = problems(source)
        .into_iter()
        .map(|p| (p.path, p.line, p.column))
        .collect();
    assert_eq!(
        found,
        [
            ("name".to_string(), 1, 7),
            ("region".to_string(), 2, 9),
            ("instances.count".to_string(), 7, 10),
            ("instances.colour".to_string(), 8, 3),
            ("redis.engine".to_string(), 10, 11),
        ]
    );
    let engine = problems(source).pop().unwrap();
    assert_eq!(
        engine.help.as_deref(),
        Some("did you mean `valkey`? (redis or valkey)")
    );
}

#[test]
fn type_errors_have_positions() {
    let problem = one_problem(&with("instances:\n  count: \"3\"\n"), "instances.count", "");
    assert_eq!(problem.message, "expected a whole number, found a string");
    assert_eq!(problem.help.as_deref(), Some("remove the quotes: 3"));
    assert_eq!((problem.line, problem.column), (6, 10));

    let problem = one_problem(&with("network: [10.0.0.0/16]\n"), "network", "found a list");
    assert_eq!((problem.line, problem.column), (5, 10));

    let problem = one_problem(
        &with("network:\n  allowed_cidrs: 0.0.0.0/0\n"),
        "network.allowed_cidrs",
        "expected a list",
    );
    assert_eq!((problem.line, problem.column), (6, 18));

    let problem = one_problem(&with("region:\n  a: b\n"), "region", "found a mapping");
    assert_eq!((problem.line, problem.column), (6, 3));

    one_problem(
        &with("instances:\n  drain_seconds: 1.5\n"),
        "instances.drain_seconds",
        "found a number with a fraction",
    );
    one_problem(&with("tags: [a]\n"), "tags", "expected a mapping");
    one_problem(
        &with("redis:\n  engine: !foo redis\n"),
        "redis.engine",
        "found a tagged value",
    );
}

#[test]
fn empty_or_not_a_mapping_is_an_error() {
    for source in ["", "# only a comment\n", "~\n"] {
        let problem = one_problem(source, "", "empty");
        assert_eq!((problem.line, problem.column), (1, 1));
    }
    let problem = one_problem("- a\n- b\n", "", "expected a mapping");
    assert_eq!((problem.line, problem.column), (1, 1));
    one_problem("just text\n", "", "found a string");
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let problem = one_problem(&with("tags: [a\n"), "", "invalid YAML");
    assert_eq!(problem.line, 6);
    let problem = one_problem(&with("name: again\n"), "", "duplicated key");
    assert_eq!((problem.line, problem.column), (5, 1));
    one_problem(&with("---\nname: x\n"), "", "second one");
}

#[test]
fn required_keys_are_reported() {
    let found = problems("region: us-east-1\n");
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, ["name", "domain"]);
    assert!(
        found
            .iter()
            .all(|p| p.message == "is required" && p.line == 1)
    );

    // A missing key is reported at the key of its section, a key without value at itself.
    let problem = one_problem(
        "name: chat\ndomain:\n  name: chat.example.com\n",
        "domain.hosted_zone",
        "is required",
    );
    assert_eq!((problem.line, problem.column), (2, 1));
    let problem = one_problem(
        "domain:\n  name: a.example.com\n  hosted_zone: example.com\nname:\n",
        "name",
        "is required",
    );
    assert_eq!((problem.line, problem.column), (4, 1));
}

fn name_problem(name: &str) -> Problem {
    let source = MINIMAL.replace("name: chat\n", &format!("name: {name}\n"));
    one_problem(&source, "name", "")
}

#[test]
fn stack_name_rules() {
    assert!(
        name_problem("Chat")
            .message
            .contains("not a valid stack name")
    );
    assert!(
        name_problem("1chat")
            .message
            .contains("not a valid stack name")
    );
    assert!(
        name_problem("chat_1")
            .message
            .contains("not a valid stack name")
    );
    assert!(name_problem("chat-").message.contains("hyphen"));
    assert!(name_problem("chat--1").message.contains("hyphen"));
    assert!(name_problem("\"\"").message.contains("is empty"));
    let long = "a".repeat(MAX_NAME_LEN + 1);
    assert!(name_problem(&long).message.contains("at most 20"));
    let longest = "a".repeat(MAX_NAME_LEN);
    let source = MINIMAL.replace("name: chat\n", &format!("name: {longest}\n"));
    assert_eq!(StackSpec::parse(&source, "s").unwrap().name, longest);
}

/// Names that pass every rule of their own but make a derived name AWS refuses: a
/// security group `sg-...`, a load balancer `internal-...`, a bucket `sthree-...` or
/// `amzn-s3-demo-...` (`xn--...` has two hyphens in a row). Reported where the name is.
#[test]
fn stack_names_that_make_names_aws_refuses_are_refused() {
    for (name, derived) in [
        ("sg", "security group"),
        ("sg-chat", "security group"),
        ("internal", "internal-alb"),
        ("internal-chat", "internal-alb"),
        ("sthree", "sthree-"),
        ("sthree-chat", "sthree-"),
        ("amzn-s3-demo", "amzn-s3-demo-"),
        ("amzn-s3-demo-chat", "amzn-s3-demo-"),
    ] {
        let problem = name_problem(name);
        assert!(
            problem.message.contains(derived) && problem.message.contains("AWS refuses"),
            "{name}: {problem:#?}"
        );
        assert_eq!((problem.line, problem.column), (1, 7), "{name}");
    }
    assert!(name_problem("xn--chat").message.contains("two in a row"));
    for name in ["sgx", "chat-sg", "internals", "sthreechat", "amzn-s3"] {
        let source = MINIMAL.replace("name: chat\n", &format!("name: {name}\n"));
        assert_eq!(StackSpec::parse(&source, "s").unwrap().name, name);
    }
}

#[test]
fn region_rules() {
    for region in ["ap-southeast-2", "ca-west-1", "eu-central-1"] {
        let spec = StackSpec::parse(&with(&format!("region: {region}\n")), "s").unwrap();
        assert_eq!(spec.region, region);
    }
    for region in [
        "US-EAST-1",
        "us-east",
        "useast1",
        "u-east-1",
        "us--1",
        "us-east-1a",
    ] {
        one_problem(
            &with(&format!("region: {region}\n")),
            "region",
            "not an AWS region",
        );
    }
}

/// Regions of other partitions are refused where they are written, with the reason.
#[test]
fn regions_outside_the_aws_partition_are_refused() {
    for (region, why) in [
        ("us-gov-west-1", "public hosted zones"),
        ("us-gov-east-1", "GovCloud"),
        ("cn-north-1", "aws-cn"),
        ("cn-northwest-1", "ICP"),
        ("us-iso-east-1", "isolated"),
        ("us-isob-east-1", "isolated"),
    ] {
        let problem = one_problem(&with(&format!("region: {region}\n")), "region", why);
        assert_eq!((problem.line, problem.column), (5, 9), "{region}");
        assert!(problem.help.unwrap().contains("us-east-1"));
    }
}

fn domain(name: &str, zone: &str) -> Result<StackSpec, SpecError> {
    let source = format!("name: chat\ndomain:\n  name: {name}\n  hosted_zone: {zone}\n");
    StackSpec::parse(&source, "stack.yaml")
}

#[test]
fn domain_rules() {
    assert!(domain("example.com", "example.com").is_ok());
    assert!(domain("a.b.example.com", "example.com.").is_ok());
    assert!(domain("chat.example.com", "Z0123456789ABCDEF").is_ok());
    let outside = domain("chat.example.org", "example.com")
        .unwrap_err()
        .problems;
    assert_eq!(outside.len(), 1);
    assert_eq!(outside[0].path, "domain.name");
    assert!(outside[0].message.contains("not inside the hosted zone"));
    // A suffix that is not a whole label is not inside the zone.
    assert!(domain("chatexample.com", "example.com").is_err());

    for bad in [
        "localhost",
        "chat..example.com",
        "-chat.example.com",
        "chat_1.example.com",
        "10.0.0.1",
        "'*.example.com'",
    ] {
        let problems = domain(bad, "example.com").unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{bad}: {problems:#?}");
        assert_eq!(problems[0].path, "domain.name", "{bad}");
    }
    let long_label = format!("{}.example.com", "a".repeat(64));
    assert!(domain(&long_label, "example.com").is_err());
    // ACM certifies a first name of at most 64 octets: 65 is refused where it is written.
    let longest = format!("{}.example.com", "a".repeat(52));
    assert_eq!(longest.len(), 64);
    assert!(domain(&longest, "example.com").is_ok());
    let too_long = domain(&format!("a{longest}"), "example.com")
        .unwrap_err()
        .problems;
    assert_eq!(too_long.len(), 1, "{too_long:#?}");
    assert_eq!(too_long[0].path, "domain.name");
    assert_eq!((too_long[0].line, too_long[0].column), (3, 9));
    assert!(too_long[0].message.contains("at most 64"), "{too_long:#?}");

    for bad in ["z123", "example", "/hostedzone/", "ex ample.com"] {
        let problems = domain("chat.example.com", bad).unwrap_err().problems;
        assert_eq!(problems.len(), 1, "{bad}");
        assert_eq!(problems[0].path, "domain.hosted_zone", "{bad}");
        assert!(
            problems[0]
                .message
                .contains("neither a zone name nor a zone id")
        );
    }
}

#[test]
fn vpc_cidr_rules() {
    let spec = |cidr: &str| StackSpec::parse(&with(&format!("network:\n  cidr: {cidr}\n")), "s");
    assert_eq!(
        spec("192.168.0.0/24").unwrap().network.cidr,
        "192.168.0.0/24"
    );
    let cases = [
        ("10.0.0.0/8", "/8 is not allowed"),
        ("10.0.0.0/25", "/25 is not allowed"),
        ("100.64.0.0/16", "not a private range"),
        ("172.32.0.0/16", "not a private range"),
        ("10.0.1.0/16", "bits set after"),
        ("10.0.0.0", "not an IPv4 CIDR"),
        ("10.0.0.0/33", "not an IPv4 CIDR"),
        ("010.0.0.0/16", "not an IPv4 CIDR"),
    ];
    for (cidr, needle) in cases {
        one_problem(
            &with(&format!("network:\n  cidr: {cidr}\n")),
            "network.cidr",
            needle,
        );
    }
    let problem = one_problem(&with("network:\n  cidr: 10.0.1.0/16\n"), "network.cidr", "");
    assert_eq!(problem.help.as_deref(), Some("did you mean 10.0.0.0/16?"));
}

#[test]
fn allowed_cidrs_rules() {
    let problem = one_problem(
        &with("network:\n  allowed_cidrs: []\n"),
        "network.allowed_cidrs",
        "at least one",
    );
    assert!(problem.help.unwrap().contains("0.0.0.0/0"));

    let source =
        with("network:\n  allowed_cidrs: [1.2.3.4, 10.0.0.0/8, 5.6.7.8/33, 10.0.0.0/8, 7]\n");
    let found = problems(&source);
    let paths: Vec<&str> = found.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "network.allowed_cidrs[0]",
            "network.allowed_cidrs[2]",
            "network.allowed_cidrs[3]",
            "network.allowed_cidrs[4]",
        ]
    );
    assert_eq!(
        found[0].help.as_deref(),
        Some("write 1.2.3.4/32 for this one address")
    );
    assert_eq!(found[0].column, 19);
    assert!(found[2].message.contains("listed twice"));

    // Two inbound rules each, and EC2 allows a group 60: 30 ranges fit, 31 do not.
    let ranges = |n: u8| {
        let list: Vec<String> = (0..n).map(|i| format!("203.0.{i}.0/24")).collect();
        with(&format!(
            "network:\n  allowed_cidrs: [{}]\n",
            list.join(", ")
        ))
    };
    assert_eq!(
        StackSpec::parse(&ranges(30), "s")
            .unwrap()
            .network
            .allowed_cidrs
            .len(),
        30
    );
    let problem = one_problem(&ranges(31), "network.allowed_cidrs", "at most 30");
    assert_eq!((problem.line, problem.column), (6, 18));
    assert!(problem.help.unwrap().contains("60 inbound rules"));
    assert!(found[3].message.contains("expected a string"));
}

#[test]
fn instances_rules() {
    let cases = [
        ("count: 0", "instances.count", "from 1 to 20, not 0"),
        ("count: 21", "instances.count", "from 1 to 20, not 21"),
        ("count: -1", "instances.count", "from 1 to 20"),
        ("type: t3", "instances.type", "not an EC2 instance type"),
        (
            "type: T3.micro",
            "instances.type",
            "not an EC2 instance type",
        ),
        (
            "type: t3.micro.x",
            "instances.type",
            "not an EC2 instance type",
        ),
        ("ami: ami-123", "instances.ami", "not an AMI id"),
        (
            "ami: ami-0123456789ABCDEF0",
            "instances.ami",
            "not an AMI id",
        ),
        ("ami: 0123456789abcdef0", "instances.ami", "not an AMI id"),
        ("binary: ''", "instances.binary", "is empty"),
        ("ami: newest", "instances.ami", "not an AMI id"),
        (
            "cpu_credits: boosted",
            "instances.cpu_credits",
            "not a CPU credit option",
        ),
        (
            "type: m7g.large\n  cpu_credits: unlimited",
            "instances.cpu_credits",
            "m7g.large has no CPU credits",
        ),
        ("app_port: 80", "instances.app_port", "from 1024 to 65535"),
        (
            "app_port: 70000",
            "instances.app_port",
            "from 1024 to 65535",
        ),
        ("app_port: 6379", "instances.app_port", "Redis port"),
        (
            "drain_seconds: 3596",
            "instances.drain_seconds",
            "from 0 to 3595",
        ),
    ];
    for (line, path, needle) in cases {
        one_problem(&with(&format!("instances:\n  {line}\n")), path, needle);
    }
    let spec = StackSpec::parse(
        &with("instances:\n  ami: ami-0123abcd\n  type: m7i.metal-24xl\n  count: 20\n"),
        "s",
    )
    .unwrap();
    assert_eq!(spec.instances.ami.as_deref(), Some("ami-0123abcd"));
    assert_eq!(spec.instances.instance_type, "m7i.metal-24xl");
    assert_eq!(spec.instances.count, 20);
    assert_eq!(
        spec.instances.cpu_credits, None,
        "a metal type has no credits"
    );
    let burstable = |yaml: &str| {
        StackSpec::parse(&with(yaml), "s")
            .unwrap()
            .instances
            .cpu_credits
    };
    assert_eq!(
        burstable("instances:\n  type: t4g.small\n").as_deref(),
        Some("standard"),
        "burstable types are not billed for surplus credits unless asked"
    );
    assert_eq!(
        burstable("instances:\n  type: t3a.large\n  cpu_credits: unlimited\n").as_deref(),
        Some("unlimited")
    );
    let latest = StackSpec::parse(&with("instances:\n  ami: latest\n"), "s").unwrap();
    assert_eq!(latest.instances.ami.as_deref(), Some(LATEST_AMI));
}

#[test]
fn load_balancer_and_redis_rules() {
    let cases = [
        (
            "load_balancer:\n  idle_timeout_seconds: 59",
            "load_balancer.idle_timeout_seconds",
            "from 60 to 4000",
        ),
        (
            "load_balancer:\n  idle_timeout_seconds: 4001",
            "load_balancer.idle_timeout_seconds",
            "from 60 to 4000",
        ),
        (
            "load_balancer:\n  health_check_interval_seconds: 4",
            "load_balancer.health_check_interval_seconds",
            "from 5 to 300",
        ),
        (
            "load_balancer:\n  tls_policy: ELBSecurityPolicy-2016-08",
            "load_balancer.tls_policy",
            "keeps to TLS 1.2 and later",
        ),
        (
            "load_balancer:\n  tls_policy: TLS13-1-2",
            "load_balancer.tls_policy",
            "not an ALB security policy",
        ),
        (
            "instances:\n  batch_size: 0",
            "instances.batch_size",
            "from 1 to 20",
        ),
        (
            "instances:\n  health_timeout_seconds: 30",
            "instances.health_timeout_seconds",
            "from 60 to 3600",
        ),
        (
            "redis:\n  node_type: t4g.micro",
            "redis.node_type",
            "not an ElastiCache node type",
        ),
        (
            "redis:\n  node_type: cache.",
            "redis.node_type",
            "not an ElastiCache node type",
        ),
        (
            "redis:\n  node_type: cache.r6gd.xlarge",
            "redis.node_type",
            "data tiering node type",
        ),
        ("redis:\n  replicas: 6", "redis.replicas", "from 0 to 5"),
        (
            "redis:\n  engine: memcached",
            "redis.engine",
            "not a supported engine",
        ),
        (
            "redis:\n  engine_version: latest",
            "redis.engine_version",
            "not an engine version",
        ),
        (
            "redis:\n  engine_version: 7.",
            "redis.engine_version",
            "not an engine version",
        ),
        (
            "redis:\n  engine_version: 7.x",
            "redis.engine_version",
            "`<major>.x` for version 6 only",
        ),
        (
            "redis:\n  engine_version: 7.1.0",
            "redis.engine_version",
            "a major and a minor version only",
        ),
        (
            "redis:\n  engine: valkey\n  engine_version: 8",
            "redis.engine_version",
            "takes a major and a minor version",
        ),
    ];
    for (lines, path, needle) in cases {
        one_problem(&with(&format!("{lines}\n")), path, needle);
    }
    let problem = one_problem(
        &with("redis:\n  node_type: t4g.micro\n"),
        "redis.node_type",
        "",
    );
    assert_eq!(
        problem.help.as_deref(),
        Some("did you mean cache.t4g.micro?")
    );
    let spec = StackSpec::parse(&with("redis:\n  engine_version: \"6.x\"\n"), "s").unwrap();
    assert_eq!(spec.redis.engine_version.as_deref(), Some("6.x"));
    let problem = one_problem(
        &with("redis:\n  engine_version: 6.2.6\n"),
        "redis.engine_version",
        "",
    );
    assert_eq!(
        problem.help.as_deref(),
        Some("write \"6.2\" (ElastiCache applies its patches itself)")
    );
}

/// The chat servers' append script trims history by age with `XTRIM ... MINID`, which
/// Redis has from 6.2 (<https://redis.io/docs/latest/commands/xtrim/>): an older pinned
/// Redis would take the stack up and then fail every message, so it is refused here,
/// before anything is made.
#[test]
fn a_pinned_redis_older_than_6_2_is_refused_before_anything_is_made() {
    for version in ["6.0", "5.0.6", "4.0.10", "5"] {
        let problem = one_problem(
            &with(&format!("redis:\n  engine_version: \"{version}\"\n")),
            "redis.engine_version",
            &format!("redis {version} has no XTRIM MINID"),
        );
        assert!(
            problem.help.as_deref().unwrap().contains("6.2"),
            "{problem:#?}"
        );
    }
    for (engine, version) in [
        ("redis", "6.2"),
        ("redis", "6.x"),
        ("redis", "7.1"),
        ("valkey", "7.2"),
        ("valkey", "8.0"),
    ] {
        let yaml = format!("redis:\n  engine: {engine}\n  engine_version: \"{version}\"\n");
        let spec = StackSpec::parse(&with(&yaml), "s")
            .unwrap_or_else(|err| panic!("{engine} {version}: {err:?}"));
        assert_eq!(spec.redis.engine_version.as_deref(), Some(version));
    }
}

#[test]
fn more_than_one_shard_needs_sharded_pub_sub_and_fits_in_500_nodes() {
    let cases = [
        ("redis:\n  shards: 0", "redis.shards", "from 1 to 500"),
        ("redis:\n  shards: 501", "redis.shards", "from 1 to 500"),
        (
            "redis:\n  shards: 100\n  replicas: 5",
            "redis.shards",
            "make 600 nodes",
        ),
        (
            "redis:\n  shards: 3\n  engine_version: \"6.x\"",
            "redis.engine_version",
            "redis 6.x has no sharded pub/sub",
        ),
        (
            "redis:\n  engine_version: 6.2\n  shards: 2",
            "redis.engine_version",
            "2 shards need version 7 or later",
        ),
    ];
    for (lines, path, needle) in cases {
        one_problem(&with(&format!("{lines}\n")), path, needle);
    }
    // Where it is, and what to do.
    let problem = one_problem(
        &with("redis:\n  shards: 3\n  engine_version: 6.2\n"),
        "redis.engine_version",
        "",
    );
    assert_eq!((problem.line, problem.column), (7, 19));
    assert!(
        problem
            .help
            .as_deref()
            .unwrap()
            .contains("engine_version: \"7.1\""),
        "{problem:#?}"
    );
    let problem = one_problem(
        &with("redis:\n  shards: 100\n  replicas: 5\n"),
        "redis.shards",
        "",
    );
    assert_eq!((problem.line, problem.column), (6, 11));
    assert_eq!(
        problem.help.as_deref(),
        Some("use at most 83 shards with 5 replica(s) each, or fewer replicas")
    );

    // One shard is today's group, whatever the version; the engine's default and Redis 7
    // or Valkey shard.
    for lines in [
        "redis:\n  shards: 1\n  engine_version: \"6.x\"",
        "redis:\n  shards: 3",
        "redis:\n  shards: 3\n  engine_version: \"7.1\"",
        "redis:\n  shards: 500\n  replicas: 0\n  engine: valkey\n  engine_version: \"8.0\"",
    ] {
        let spec = StackSpec::parse(&with(&format!("{lines}\n")), "s")
            .unwrap_or_else(|err| panic!("{lines}: {:#?}", err.problems));
        assert!(spec.redis.shards >= 1);
    }
    assert_eq!(StackSpec::parse(MINIMAL, "s").unwrap().redis.shards, 1);
}

#[test]
fn tags_rules() {
    let cases = [
        ("aws:team: x", "tags.aws:team", "reserved"),
        ("AWS:team: x", "tags.AWS:team", "reserved"),
        (
            "realtime-stack:stack: x",
            "tags.realtime-stack:stack",
            "reserved",
        ),
        ("team:", "tags.team", "has no value"),
        ("team: [a]", "tags.team", "expected a string"),
        ("\"te#am\": x", "tags.te#am", "instance metadata allows"),
        ("\"my team\": x", "tags.my team", "instance metadata allows"),
        (
            "cost/center: x",
            "tags.cost/center",
            "instance metadata allows",
        ),
        ("équipe: x", "tags.équipe", "instance metadata allows"),
        ("_index: x", "tags._index", "instance metadata allows"),
        ("team: a;b", "tags.team", "characters AWS refuses"),
        // U+093F and U+0902 are combining marks: letters to `char::is_alphanumeric`, not
        // to AWS's `\p{L}`.
        ("team: हिंदी", "tags.team", "characters AWS refuses"),
        ("Name: chat", "tags.Name", "names each resource by"),
    ];
    for (line, path, needle) in cases {
        one_problem(&with(&format!("tags:\n  {line}\n")), path, needle);
    }
    let long_key = "k".repeat(129);
    one_problem(
        &with(&format!("tags:\n  {long_key}: x\n")),
        &format!("tags.{long_key}"),
        "1 to 128",
    );
    let long_value = "v".repeat(257);
    one_problem(
        &with(&format!("tags:\n  team: {long_value}\n")),
        "tags.team",
        "at most 256",
    );

    let many: String = (0..=MAX_USER_TAGS)
        .map(|i| format!("  t{i}: v\n"))
        .collect();
    one_problem(&with(&format!("tags:\n{many}")), "tags", "at most 40");
    let spec = StackSpec::parse(
        &with("tags:\n  empty: \"\"\n  on: true\n  cost.center:team-a@corp: a b/c\n  name: x\n  team: équipe 東京 ٣\n"),
        "s",
    )
    .unwrap();
    assert_eq!(spec.tags["cost.center:team-a@corp"], "a b/c");
    assert_eq!(spec.tags["empty"], "");
    assert_eq!(spec.tags["on"], "true");
    assert_eq!(spec.tags["name"], "x");
    assert_eq!(spec.tags["team"], "équipe 東京 ٣");
}

#[test]
fn subnets_split_the_vpc_in_four() {
    let mut spec = defaults();
    assert_eq!(
        spec.subnet_cidrs(),
        [
            "10.0.0.0/18",
            "10.0.64.0/18",
            "10.0.128.0/18",
            "10.0.192.0/18"
        ]
    );
    spec.network.cidr = "192.168.4.0/22".into();
    assert_eq!(
        spec.subnet_cidrs(),
        [
            "192.168.4.0/24",
            "192.168.5.0/24",
            "192.168.6.0/24",
            "192.168.7.0/24"
        ]
    );
    spec.network.cidr = "172.16.0.0/24".into();
    assert_eq!(
        spec.subnet_cidrs(),
        [
            "172.16.0.0/26",
            "172.16.0.64/26",
            "172.16.0.128/26",
            "172.16.0.192/26"
        ]
    );
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("spec-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn load_resolves_binary_against_the_file_directory() {
    let dir = TempDir::new("load");
    let path = dir.0.join("stack.yaml");
    std::fs::write(&path, with("instances:\n  binary: bin/chat-server\n")).unwrap();
    let spec = StackSpec::load(&path).unwrap();
    assert_eq!(spec.instances.binary, Some(dir.0.join("bin/chat-server")));

    std::fs::write(&path, with("instances:\n  binary: /opt/chat-server\n")).unwrap();
    let spec = StackSpec::load(&path).unwrap();
    assert_eq!(
        spec.instances.binary.as_deref(),
        Some(Path::new("/opt/chat-server"))
    );
}

#[test]
fn load_names_the_file_it_cannot_read() {
    let missing = Path::new("/nonexistent/dir/stack.yaml");
    let err = StackSpec::load(missing).unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert!(
        err.problems[0]
            .message
            .contains("/nonexistent/dir/stack.yaml")
    );
    assert!(
        err.to_string()
            .contains("cannot read the stack file /nonexistent/dir/stack.yaml")
    );
    assert!(err.labels().is_none());
}

#[test]
fn diagnostics_render_every_problem_with_its_source_line() {
    let err = StackSpec::parse(
        &with("instances:\n  cuont: 3\n  app_port: 6379\n"),
        "stack.yaml",
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "stack.yaml has 2 problems");
    assert_eq!(err.related().unwrap().count(), 2);
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .render_report(&mut out, &err)
        .unwrap();
    assert!(
        out.contains("instances.cuont: unknown key `cuont` in `instances`"),
        "{out}"
    );
    assert!(out.contains("[stack.yaml:6:3]"), "{out}");
    assert!(out.contains("did you mean `count`?"), "{out}");
    assert!(out.contains("[stack.yaml:7:13]"), "{out}");
    assert!(out.contains("6 │   cuont: 3"), "{out}");

    // A single problem is the diagnostic itself.
    let err = StackSpec::parse(&with("region: mars\n"), "stack.yaml").unwrap_err();
    assert_eq!(err.to_string(), "region: `mars` is not an AWS region");
    assert!(err.related().is_none());
    assert_eq!(err.labels().unwrap().count(), 1);
    assert!(err.help().is_some());
}

#[test]
fn positions_count_characters_and_labels_use_bytes() {
    // A multi-byte character before the problem must not shift the label.
    let source = "name: chat\ndomain:\n  name: chat.example.com # é\n  hosted_zone: example.com\ntags:\n  team: é;b\n";
    let problem = one_problem(source, "tags.team", "characters AWS refuses");
    assert_eq!((problem.line, problem.column), (6, 9));
    let span = problem.span.unwrap();
    assert_eq!(&source[span.offset()..span.offset() + span.len()], "é;b");
}

// ---------------------------------------------------------------- chat.auth

const P384_PUBLIC_KEY: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAErpRj8AFYDnUhPuoaa6wbho73sOzbrpVA
ayun2XKs3BrxT7DT4EXv8wt0CJp+FIHIgek+d/NRXvpvWVNHqikX2Eaho4POvJ99
3HGBmMGKh4zawbTn7v5+6xoi6B9gbYWr
-----END PUBLIC KEY-----
";

/// The problems of the minimal file plus `extra`, read in `dir`.
fn problems_in(dir: &Path, extra: &str) -> Vec<Problem> {
    match StackSpec::parse_in(&with(extra), "stack.yaml", dir) {
        Ok(spec) => panic!("expected problems, parsed {spec:?}"),
        Err(err) => err.problems,
    }
}

#[test]
fn chat_auth_names_a_public_key_file_relative_to_the_stack_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    let pair = crate::identity::generate_ed25519().unwrap();
    std::fs::write(dir.path().join("keys/id.pem"), &pair.public_pem).unwrap();
    let extra = "chat:\n  auth:\n    public_key_file: keys/id.pem\n    issuer: https://id.example\n    audience: chat\n";
    std::fs::write(dir.path().join("stack.yaml"), with(extra)).unwrap();
    // Loaded from elsewhere: the key is found beside the stack file.
    let spec = StackSpec::load(&dir.path().join("stack.yaml")).unwrap();
    assert_eq!(
        spec.chat.auth,
        Some(AuthSpec {
            key: AuthKey::File {
                path: dir.path().join("keys/id.pem"),
                pem: pair.public_pem.clone(),
            },
            issuer: Some("https://id.example".into()),
            audience: Some("chat".into()),
            token_url: None,
        })
    );
    // A P-256 key too.
    let p256 = p256::SecretKey::from_slice(&[7u8; 32])
        .unwrap()
        .public_key();
    let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(&p256, Default::default()).unwrap();
    std::fs::write(dir.path().join("p256.pem"), pem).unwrap();
    let generated = StackSpec::parse_in(
        &with("chat:\n  auth: {public_key_file: p256.pem}\n"),
        "stack.yaml",
        dir.path(),
    )
    .unwrap();
    assert!(matches!(
        generated.chat.auth.unwrap().key,
        AuthKey::File { .. }
    ));
    let generated =
        StackSpec::parse(&with("chat:\n  auth:\n    generate: true\n"), "stack.yaml").unwrap();
    assert_eq!(generated.chat.auth.unwrap().key, AuthKey::Generate);
    assert_eq!(
        StackSpec::parse(&with("chat:\n"), "stack.yaml").unwrap(),
        defaults()
    );
}

#[test]
fn chat_auth_key_files_are_checked_at_load_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let pair = crate::identity::generate_ed25519().unwrap();
    std::fs::write(dir.path().join("private.pem"), &pair.private_pem).unwrap();
    std::fs::write(dir.path().join("p384.pem"), P384_PUBLIC_KEY).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
    let at = |problems: Vec<Problem>| {
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let p = &problems[0];
        (p.path.clone(), p.line, p.column, p.message.clone())
    };
    let (path, line, column, message) = at(problems_in(
        dir.path(),
        "chat:\n  auth:\n    public_key_file: missing.pem\n",
    ));
    assert_eq!(
        (path.as_str(), line, column),
        ("chat.auth.public_key_file", 7, 22)
    );
    assert!(message.contains("cannot read `missing.pem`"), "{message}");
    for (file, needle) in [
        ("private.pem", "holds a private key"),
        ("p384.pem", "is not an Ed25519 or ECDSA P-256 public key"),
        ("notes.txt", "is not an Ed25519 or ECDSA P-256 public key"),
    ] {
        let (_, line, column, message) = at(problems_in(
            dir.path(),
            &format!("chat:\n  auth: {{public_key_file: {file}}}\n"),
        ));
        assert_eq!((line, column), (6, 27), "{file}");
        assert!(message.contains(needle), "{file}: {message}");
        assert!(!message.contains("PRIVATE"), "a key's text in a message");
    }
}

#[test]
fn chat_limits_are_checked_with_line_column_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let only = |extra: &str| {
        let found = problems_in(dir.path(), extra);
        assert_eq!(found.len(), 1, "{found:#?}");
        let p = found.into_iter().next().unwrap();
        (p.path, p.line, p.column, p.message)
    };
    let (path, line, column, message) = only("chat:\n  history_messages: 0\n");
    assert_eq!(
        (path.as_str(), line, column),
        ("chat.history_messages", 6, 21)
    );
    assert!(
        message.contains("must be from 1 to 100000, not 0"),
        "{message}"
    );
    let (path, _, _, message) = only("chat:\n  max_rooms_per_connection: 5000\n");
    assert_eq!(path, "chat.max_rooms_per_connection");
    assert!(message.contains("must be from 1 to 1000"), "{message}");
    let (path, _, _, message) = only("chat:\n  presence_ttl_seconds: 1\n");
    assert_eq!(path, "chat.presence_ttl_seconds");
    assert!(message.contains("must be from 3 to 3600"), "{message}");
    let (path, _, _, message) = only("chat:\n  presence_ttl_seconds: soon\n");
    assert_eq!(path, "chat.presence_ttl_seconds");
    assert!(message.contains("a whole number"), "{message}");
    let (path, _, _, message) = only("chat:\n  fanout_window_ms: 5000\n");
    assert_eq!(path, "chat.fanout_window_ms");
    assert!(message.contains("must be from 0 to 1000"), "{message}");
    // Absent, the chat server's own defaults.
    assert_eq!(
        StackSpec::parse(&with("chat:\n"), "stack.yaml")
            .unwrap()
            .chat
            .settings,
        ChatSettings::default()
    );
}

#[test]
fn chat_auth_needs_exactly_one_key_and_usable_claims() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("id.pem"),
        crate::identity::generate_ed25519().unwrap().public_pem,
    )
    .unwrap();
    let only = |extra: &str| {
        let found = problems_in(dir.path(), extra);
        assert_eq!(found.len(), 1, "{found:#?}");
        let p = found.into_iter().next().unwrap();
        (p.path, p.line, p.column, p.message)
    };
    let (path, line, column, message) = only("chat:\n  auth:\n    issuer: https://id.example\n");
    assert_eq!((path.as_str(), line, column), ("chat.auth", 6, 3));
    assert!(message.contains("needs `public_key_file`"));
    let (path, line, _, message) =
        only("chat:\n  auth:\n    public_key_file: id.pem\n    generate: true\n");
    assert_eq!((path.as_str(), line), ("chat.auth.generate", 8));
    assert!(message.contains("not both"));
    let (path, _, _, message) = only("chat:\n  auth: {generate: yes please}\n");
    assert_eq!(path, "chat.auth.generate");
    assert!(message.contains("expected true or false"));
    let (path, line, column, _) =
        only("chat:\n  auth:\n    generate: true\n    audience: \"it's\"\n");
    assert_eq!((path.as_str(), line, column), ("chat.auth.audience", 8, 15));
    let (path, _, _, message) =
        only("chat:\n  auth:\n    generate: true\n    token_url: http://id.example/t\n");
    assert_eq!(path, "chat.auth.token_url");
    assert!(message.contains("not an https:// URL"), "{message}");
    let (path, _, _, message) = only("chat:\n  auth:\n    generate: true\n    isuer: x\n");
    assert_eq!(path, "chat.auth.isuer");
    assert!(message.contains("unknown key"));
}

#[test]
fn scaling_is_a_cpu_target_between_min_and_max_refused_when_it_cannot_hold() {
    let spec = StackSpec::parse(
        &with("instances:\n  count: 3\nscaling:\n  min: 2\n  max: 6\n  cpu_target_percent: 60\n"),
        "s",
    )
    .unwrap();
    assert_eq!(
        spec.scaling,
        Some(ScalingSpec {
            min: 2,
            max: 6,
            cpu_target_percent: 60
        })
    );
    let defaulted = StackSpec::parse(&with("scaling:\n  min: 1\n  max: 4\n"), "s").unwrap();
    assert_eq!(defaulted.scaling.unwrap().cpu_target_percent, 50);

    let problem = one_problem(
        &with("scaling:\n  min: 5\n  max: 3\n"),
        "scaling.min",
        "above scaling.max (3)",
    );
    assert_eq!((problem.line, problem.column), (6, 8));
    let problem = one_problem(
        &with("instances:\n  count: 8\nscaling:\n  min: 2\n  max: 6\n"),
        "instances.count",
        "outside scaling.min (2) to scaling.max (6)",
    );
    assert_eq!(problem.line, 6);
    one_problem(&with("scaling:\n  min: 2\n"), "scaling.max", "is required");
    one_problem(
        &with("scaling:\n  min: 1\n  max: 21\n"),
        "scaling.max",
        "from 1 to 20",
    );
    one_problem(
        &with("scaling:\n  min: 1\n  max: 2\n  cpu_target_percent: 95\n"),
        "scaling.cpu_target_percent",
        "from 10 to 90",
    );
    one_problem(
        &with("scaling:\n  min: 1\n  max: 2\n  target: 50\n"),
        "scaling.target",
        "unknown key",
    );
}

/// Every key the parser takes is in docs/stack-yaml.md's table and in the example
/// stack.yaml, which say they list them all: a key added to one place only fails here.
#[test]
fn every_key_is_documented_and_shown_in_the_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let docs = std::fs::read_to_string(root.join("docs/stack-yaml.md")).unwrap();
    let example = std::fs::read_to_string(root.join("stack.yaml")).unwrap();
    let sections: [(&str, &[&str]); 9] = [
        ("", ROOT_KEYS),
        ("domain.", DOMAIN_KEYS),
        ("network.", NETWORK_KEYS),
        ("instances.", INSTANCES_KEYS),
        ("load_balancer.", LOAD_BALANCER_KEYS),
        ("redis.", REDIS_KEYS),
        ("chat.", CHAT_KEYS),
        ("chat.auth.", AUTH_KEYS),
        ("scaling.", SCALING_KEYS),
    ];
    for (section, keys) in sections {
        for key in keys {
            // A section is documented by its keys' rows.
            assert!(
                docs.contains(&format!("| `{section}{key}` |"))
                    || docs.contains(&format!("| `{section}{key}.")),
                "docs/stack-yaml.md has no row for {section}{key}"
            );
            // As a key, in a comment or not (`type:`, not `node_type:`).
            let shown = example.match_indices(&format!("{key}:")).any(|(at, _)| {
                !example[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            });
            assert!(shown, "stack.yaml does not show {section}{key}");
        }
    }
}
