//! The `stack.yaml` model and its validation.
//!
//! [`StackSpec::parse`] turns the text of a stack file into a [`StackSpec`], or into a
//! [`SpecError`] that lists *every* problem of the file at once, each with the dotted path of
//! the key (`instances.count`), its line and column, a message and, where we can tell, what to
//! do about it. Nothing is created on AWS before the whole spec validates, so the checks here
//! are the ones that AWS would otherwise only make half-way through `up`.
//!
//! The module knows nothing of AWS SDKs: it only knows the limits that derived names and
//! values must respect (name lengths, port ranges, CIDR sizes, tag rules).
//!
//! How it works: the file is parsed by `saphyr` into a tree whose nodes carry their position,
//! then walked by hand rather than through serde, because serde stops at the first error and
//! loses positions. Every lookup goes through a checker that records problems and carries on
//! with the next key. A missing optional key takes its default; a key written with no value
//! (`ami:`) counts as missing.
//!
//! Positions: lines and columns are 1-based and count characters, like a compiler's.
//! [`SpecError`] is a [`miette::Diagnostic`] whose labels point into the file, so the CLI can
//! print all problems with the offending lines underlined.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceCode, SourceSpan};

use checker::Checker;
use rules::{parse_cidr, zone_id};

mod checker;
mod rules;
#[cfg(test)]
mod tests;

const DEFAULT_REGION: &str = "us-east-1";
const DEFAULT_CIDR: &str = "10.0.0.0/16";
const DEFAULT_ALLOWED_CIDR: &str = "0.0.0.0/0";
const DEFAULT_COUNT: u32 = 2;
const DEFAULT_INSTANCE_TYPE: &str = "t3.micro";
const DEFAULT_APP_PORT: u16 = 8080;
/// Matches the chat server's own drain period, so the target group deregisters an instance
/// exactly as long as the server keeps serving its open connections.
const DEFAULT_DRAIN_SECONDS: u32 = 30;
/// How long after the group deregisters an instance its server starts draining: the boot
/// service reads the instance's target lifecycle state every second, then gives the load
/// balancer 3 s to stop sending it new connections; one more for slack. The target
/// group's deregistration delay is the drain and this.
pub const DRAIN_START_SECONDS: u32 = 5;
/// The longest deregistration delay a target group takes.
const MAX_DEREGISTRATION_DELAY: u32 = 3600;
/// Instances replaced at a time in a rolling deploy.
const DEFAULT_BATCH_SIZE: u32 = 1;
/// From launch to healthy: the boot (image, binary download) plus the health checks.
/// Redis creation is not in it: a first `up` waits for Redis before it starts the clock.
const DEFAULT_HEALTH_TIMEOUT: u32 = 600;
/// The ALB's own default; each check answers from memory on the server.
const DEFAULT_HEALTH_CHECK_INTERVAL: u32 = 10;
/// One hour: WebSockets sit idle between messages, and the ALB's own default of 60 s would
/// drop quiet chat connections.
const DEFAULT_IDLE_TIMEOUT: u32 = 3600;
/// TLS 1.3, and TLS 1.2 with forward-secret AEAD ciphers only, with hybrid post-quantum
/// key exchange for the clients that offer it: what AWS recommends for new listeners.
const DEFAULT_TLS_POLICY: &str = "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09";
/// The ALB security policies whose oldest protocol is TLS 1.2 (AWS, "Security policies
/// for your Application Load Balancer"). The others still allow TLS 1.0 or 1.1.
const TLS_POLICIES: &[&str] = &[
    "ELBSecurityPolicy-TLS13-1-2-Res-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-3-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Res-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext0-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-3-FIPS-PQ-2025-09",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Res-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext0-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-FIPS-2023-04",
    "ELBSecurityPolicy-TLS13-1-3-FIPS-2023-04",
    "ELBSecurityPolicy-TLS-1-2-2017-01",
    "ELBSecurityPolicy-TLS-1-2-Ext-2018-06",
    "ELBSecurityPolicy-FS-1-2-2019-08",
    "ELBSecurityPolicy-FS-1-2-Res-2019-08",
    "ELBSecurityPolicy-FS-1-2-Res-2020-10",
];
/// Access logs are on unless turned off, and a log object lives this long: a quarter of
/// requests to look back over, at S3's price for a few megabytes a day.
const DEFAULT_ACCESS_LOGS_DAYS: u32 = 90;
const DEFAULT_NODE_TYPE: &str = "cache.t4g.micro";
/// A week of automatic Redis backups, as the CIS-style scanners ask: the chat's history
/// lives in Redis, and a week of snapshots of a small node costs cents a month.
const DEFAULT_SNAPSHOT_RETENTION_DAYS: u32 = 7;
const DEFAULT_REPLICAS: u32 = 1;
/// One shard: a cluster-mode-disabled replication group.
const DEFAULT_SHARDS: u32 = 1;
/// ElastiCache's limit on the nodes of a cluster-mode group (primaries and replicas, engine
/// 5.0.6 or later): 500 shards without replicas, 83 with five each.
const MAX_CLUSTER_NODES: u32 = 500;
/// The first major version of Redis with sharded pub/sub (SSUBSCRIBE/SPUBLISH), which the
/// chat servers need across shards; Valkey forked from 7.2, so every Valkey has it.
const MIN_SHARDED_MAJOR: u32 = 7;
/// The first Redis version the chat servers run on: their append script trims a room's
/// history by age with `XTRIM ... MINID`, which Redis added in 6.2.0
/// (<https://redis.io/docs/latest/commands/xtrim/>, History); on 6.0 every message fails.
/// Valkey forked from 7.2, so every Valkey has it.
const MIN_REDIS_VERSION: (u32, u32) = (6, 2);
const DEFAULT_ENGINE: &str = "redis";

/// Longest stack name. Names of resources derive from it and the tightest AWS limit is the
/// S3 bucket name (63 characters), which must be unique worldwide and so also carries the
/// account and region: `realtime-stack-` (15), the name (20), `-`, the account id (12), `-`
/// and the region (at most 14 today, e.g. `ap-southeast-4`) make 63. It also leaves the ALB
/// and target group names (32 characters, `<name>-alb`, `<name>-tg`) twelve characters of
/// room for suffixes, and the ElastiCache replication group id (40) twenty.
const MAX_NAME_LEN: usize = 20;
/// Longest `domain.name`: ACM refuses a certificate whose first name is longer.
const MAX_SERVED_NAME_LEN: usize = 64;
/// Most `network.allowed_cidrs`: the load balancer's security group admits 80 and 443 from
/// each, and EC2 allows 60 inbound rules a group ("Inbound or outbound rules per security
/// group", <https://docs.aws.amazon.com/vpc/latest/userguide/amazon-vpc-limits.html>).
const MAX_ALLOWED_CIDRS: usize = 30;
/// EC2 allows 50 tags on a resource; the CLI adds its own (stack, logical id, `Name`, the Redis
/// endpoint on instances), so users get 40 and we keep room to grow.
const MAX_USER_TAGS: usize = 40;
/// Tag prefixes that belong to AWS or to the CLI itself (it finds its resources by them).
const RESERVED_TAG_PREFIXES: [&str; 2] = ["aws:", "realtime-stack:"];
/// The tag every resource's name is: the CLI sets it (`<stack>-<role>`), so a user's tag
/// of that key would send it twice, which every service refuses.
pub const NAME_TAG: &str = "Name";
/// Port of Redis: the instances' security group must not be confused with Redis traffic.
const REDIS_PORT: i64 = 6379;

const ROOT_KEYS: &[&str] = &[
    "name",
    "region",
    "domain",
    "network",
    "instances",
    "load_balancer",
    "redis",
    "chat",
    "scaling",
    "tags",
];
const SCALING_KEYS: &[&str] = &["min", "max", "cpu_target_percent"];
/// What a target-tracking policy keeps the group's average CPU at, by default.
const DEFAULT_CPU_TARGET: u32 = 50;
/// The most instances a stack runs (instances.count, scaling.max).
const MAX_INSTANCES: i64 = 20;
const DOMAIN_KEYS: &[&str] = &["name", "hosted_zone"];
const NETWORK_KEYS: &[&str] = &["cidr", "allowed_cidrs"];
const INSTANCES_KEYS: &[&str] = &[
    "count",
    "type",
    "ami",
    "binary",
    "app_port",
    "drain_seconds",
    "batch_size",
    "health_timeout_seconds",
    "cpu_credits",
];
/// `instances.ami`'s value that follows every Amazon Linux 2023 release.
pub const LATEST_AMI: &str = "latest";
/// The CPU credit options of burstable instance types (RunInstances, CreditSpecification).
const CPU_CREDITS: &[&str] = &["standard", "unlimited"];
/// Not AWS's default for T3, T3a and T4g (`unlimited`), which bills surplus credits without
/// telling anyone: a chat that spins at 100 % is slowed to its baseline instead.
const DEFAULT_CPU_CREDITS: &str = "standard";
const LOAD_BALANCER_KEYS: &[&str] = &[
    "idle_timeout_seconds",
    "health_check_interval_seconds",
    "tls_policy",
    "access_logs",
    "access_logs_days",
];
const REDIS_KEYS: &[&str] = &[
    "node_type",
    "replicas",
    "shards",
    "engine",
    "engine_version",
    "snapshot_retention_days",
];
const ENGINES: &[&str] = &["redis", "valkey"];
const CHAT_KEYS: &[&str] = &[
    "auth",
    "history_messages",
    "max_rooms_per_connection",
    "presence_ttl_seconds",
    "fanout_window_ms",
];
const AUTH_KEYS: &[&str] = &[
    "public_key_file",
    "generate",
    "issuer",
    "audience",
    "token_url",
];

/// Why realtime-stack refuses `region`, when it lies outside the standard `aws` partition.
///
/// Refused rather than derived: in AWS GovCloud (US) Route 53 has no public hosted zones
/// and alias records point only within their zone
/// (<https://docs.aws.amazon.com/govcloud-us/latest/UserGuide/govcloud-r53.html>), so the
/// stack's DNS-validated certificate and its alias record cannot exist there at all. The
/// China regions differ in every name the CLI writes (ARNs `arn:aws-cn:`, endpoints
/// `amazonaws.com.cn`, the S3 gateway endpoint's service `cn.com.amazonaws.<region>.s3`)
/// and serve a public website only with an ICP recordal
/// (<https://docs.amazonaws.cn/en_us/aws/latest/userguide/general-info.html>); the
/// isolated partitions are closed networks. None of them can be tested here, so a
/// derived partition would be an untried path that fails half-way through a first `up`;
/// refused when the file is read, nothing is created.
pub fn unsupported_partition(region: &str) -> Option<&'static str> {
    const PARTITIONS: [(&str, &str); 6] = [
        (
            "us-gov-",
            "is in AWS GovCloud (US) (partition aws-us-gov), where Route 53 has no public \
             hosted zones: the stack's certificate validation and alias record cannot be made",
        ),
        (
            "cn-",
            "is an AWS China region (partition aws-cn), whose ARNs, endpoints and S3 endpoint \
             service differ from the ones realtime-stack writes, and where a public website \
             needs an ICP recordal: realtime-stack does not support it",
        ),
        ("us-isob-", ISOLATED),
        ("us-isof-", ISOLATED),
        ("us-iso-", ISOLATED),
        ("eu-isoe-", ISOLATED),
    ];
    const ISOLATED: &str = "is in an isolated AWS partition (no public DNS or internet-facing \
                            load balancers for a public chat): realtime-stack does not support it";
    PARTITIONS
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map(|(_, why)| *why)
}

/// A validated `stack.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackSpec {
    /// Stack name: resource names and the ownership tag derive from it.
    pub name: String,
    /// AWS region. Defaults to `us-east-1` when the file has none; the CLI's `--region`, when
    /// given, replaces it. It is deliberately not taken from `AWS_REGION`: a stack lives in one
    /// region, and an environment variable silently pointing `destroy` elsewhere would miss it.
    pub region: String,
    pub domain: DomainSpec,
    pub network: NetworkSpec,
    pub instances: InstancesSpec,
    pub load_balancer: LoadBalancerSpec,
    pub redis: RedisSpec,
    /// The chat server's own settings.
    pub chat: ChatSpec,
    /// Capacity that follows load: `None` keeps `instances.count` instances.
    pub scaling: Option<ScalingSpec>,
    /// Extra tags for every resource.
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSpec {
    /// The name served over HTTPS, lowercase, without a trailing dot.
    pub name: String,
    /// The Route53 hosted zone: a zone name (lowercase, no trailing dot) or a zone id without
    /// its `/hostedzone/` prefix; see [`DomainSpec::zone_id`].
    pub hosted_zone: String,
}

impl DomainSpec {
    /// The hosted zone id when `hosted_zone` was given as an id, `None` when it is a name.
    pub fn zone_id(&self) -> Option<&str> {
        zone_id(&self.hosted_zone)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The VPC's IPv4 CIDR in canonical form (`10.0.0.0/16`).
    pub cidr: String,
    /// Who may reach the load balancer on ports 80 and 443.
    pub allowed_cidrs: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstancesSpec {
    pub count: u32,
    pub instance_type: String,
    /// `None`: Amazon Linux 2023, the image the instances run kept until `up
    /// --update-image`; [`LATEST_AMI`]: the newest Amazon Linux 2023 at every `up`; else
    /// an AMI id.
    pub ami: Option<String>,
    /// A prebuilt chat-server binary; `None`: build it with `cargo build --release -p
    /// chat-server`. Resolved against the stack file's directory by [`StackSpec::load`];
    /// its existence is checked later, by preflight.
    pub binary: Option<PathBuf>,
    pub app_port: u16,
    pub drain_seconds: u32,
    /// Instances replaced at a time in a rolling deploy.
    pub batch_size: u32,
    /// How long an instance may take from launch to healthy before `up` gives up on it.
    pub health_timeout_seconds: u32,
    /// `standard` or `unlimited` for burstable types (t2, t3, t3a, t4g); `None` for the
    /// others, which have no CPU credits.
    pub cpu_credits: Option<String>,
}

/// Whether instances of `instance_type` earn and spend CPU credits (T2, T3, T3a, T4g).
pub fn is_burstable(instance_type: &str) -> bool {
    let family = instance_type.split('.').next().unwrap_or_default();
    family.len() > 1 && family.starts_with('t') && family[1..2].bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancerSpec {
    pub idle_timeout_seconds: u32,
    /// Between two health checks of a target; two in a row decide its state.
    pub health_check_interval_seconds: u32,
    /// The HTTPS listener's security policy.
    pub tls_policy: String,
    /// Access logs to a bucket of the stack's, which expires them after `days`; `None`
    /// when turned off.
    pub access_logs: Option<AccessLogs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessLogs {
    pub days: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSpec {
    pub node_type: String,
    /// Replicas of each shard's primary. 0: a single node per shard; 1 or more: automatic
    /// failover and Multi-AZ.
    pub replicas: u32,
    /// Node groups. 1: one primary, cluster mode off; more: a Redis Cluster (cluster mode
    /// on) whose clients start from its configuration endpoint.
    pub shards: u32,
    /// `redis` or `valkey`.
    pub engine: String,
    pub engine_version: Option<String>,
    /// Days of automatic backups ElastiCache keeps; 0 turns them off.
    pub snapshot_retention_days: u32,
}

/// The Auto Scaling group's own scaling: a target-tracking policy on the group's average
/// CPU (`ASGAverageCPUUtilization`, which needs no agent on the instances), between `min`
/// and `max` instances. `instances.count` is then the size the group starts at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScalingSpec {
    pub min: u32,
    pub max: u32,
    pub cpu_target_percent: u32,
}

/// The chat server's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatSpec {
    /// Sign-in: `None` keeps the chat open (anyone may post under any name).
    pub auth: Option<AuthSpec>,
    pub settings: ChatSettings,
}

/// The chat server's limits, as the instances' chat servers are started with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatSettings {
    /// Messages kept per room (`--history-len`).
    pub history_messages: u32,
    /// Rooms one connection may be in at once (`--max-rooms-per-connection`).
    pub max_rooms_per_connection: u16,
    /// A presence entry's lifetime without a heartbeat (`--presence-ttl-secs`).
    pub presence_ttl_seconds: u32,
    /// How long a busy room gathers messages before its clients write them
    /// (`--fanout-window-ms`); 0 sends each on its own.
    pub fanout_window_ms: u16,
}

/// chat-server's own defaults (a test in tests/instance_boot.rs holds them equal).
impl Default for ChatSettings {
    fn default() -> Self {
        ChatSettings {
            history_messages: 1000,
            max_rooms_per_connection: 100,
            presence_ttl_seconds: 30,
            fanout_window_ms: 20,
        }
    }
}

/// Sign-in: tokens verified with a public key (see app/README.md, Sign-in).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSpec {
    pub key: AuthKey,
    /// The `iss` tokens must carry, when set.
    pub issuer: Option<String>,
    /// The `aud` tokens must name, when set.
    pub audience: Option<String>,
    /// Where the chat page fetches tokens by itself (with the browser's credentials),
    /// when the identity service has such an endpoint.
    pub token_url: Option<String>,
}

/// Where the public key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKey {
    /// The identity service's public key: the file, resolved against the stack file's
    /// directory, and its PEM text (checked to be an Ed25519 or P-256 public key).
    File { path: PathBuf, pem: String },
    /// A development key pair that `up --local` makes in its state directory.
    Generate,
}

impl StackSpec {
    /// Parses and validates the text of a stack file. `origin` names the file in messages;
    /// files it names are read relative to the working directory.
    pub fn parse(source: &str, origin: &str) -> Result<StackSpec, SpecError> {
        Self::parse_in(source, origin, Path::new(""))
    }

    /// As [`StackSpec::parse`], reading the files the stack names (the sign-in public
    /// key) relative to `dir`, the stack file's directory.
    pub fn parse_in(source: &str, origin: &str, dir: &Path) -> Result<StackSpec, SpecError> {
        let mut checker = Checker {
            source,
            dir,
            problems: Vec::new(),
        };
        let spec = checker.stack();
        match spec {
            Some(spec) if checker.problems.is_empty() => Ok(spec),
            _ => {
                let mut problems = checker.problems;
                problems.sort_by_key(|p| (p.line, p.column));
                Err(SpecError {
                    problems,
                    source_code: Some(NamedSource::new(origin, source.to_string())),
                })
            }
        }
    }

    /// Reads and parses a stack file; a relative `instances.binary` or
    /// `chat.auth.public_key_file` is resolved against the file's directory, so the stack
    /// behaves the same from any working directory.
    pub fn load(path: &Path) -> Result<StackSpec, SpecError> {
        let origin = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|err| SpecError {
            problems: vec![Problem {
                path: String::new(),
                line: 0,
                column: 0,
                message: format!("cannot read the stack file {origin}: {err}"),
                help: Some("pass the stack file with -f, or create stack.yaml".to_string()),
                span: None,
            }],
            source_code: None,
        })?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut spec = StackSpec::parse_in(&source, &origin, dir)?;
        if let Some(binary) = &spec.instances.binary {
            spec.instances.binary = Some(dir.join(binary));
        }
        Ok(spec)
    }

    /// The VPC CIDR split into four equal subnets: public a, public b, private a, private b.
    ///
    /// # Panics
    /// If `network.cidr` is not a CIDR, which [`StackSpec::parse`] never lets through.
    pub fn subnet_cidrs(&self) -> [String; 4] {
        let (network, prefix) =
            parse_cidr(&self.network.cidr).expect("network.cidr is validated by StackSpec::parse");
        let size = 1u32 << (32 - u32::from(prefix) - 2);
        std::array::from_fn(|i| {
            let start = Ipv4Addr::from(u32::from(network) + size * i as u32);
            format!("{start}/{}", prefix + 2)
        })
    }
}

/// One problem of a stack file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key (`instances.count`, `network.allowed_cidrs[1]`, `tags.team`);
    /// empty for problems of the whole file.
    pub path: String,
    /// 1-based; 0 when the file could not be read.
    pub line: usize,
    /// 1-based, in characters; 0 when the file could not be read.
    pub column: usize,
    pub message: String,
    /// What to do about it, when we can tell.
    pub help: Option<String>,
    /// Byte range in the file, for the label of the diagnostic.
    span: Option<SourceSpan>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            None, span,
        ))))
    }
}

/// Everything wrong with a stack file. Rendered with miette, a single problem is shown
/// directly and several are shown as related diagnostics, each pointing into the file.
#[derive(Debug, Clone)]
pub struct SpecError {
    /// Sorted by position in the file.
    pub problems: Vec<Problem>,
    /// `None` when the file could not be read.
    source_code: Option<NamedSource<String>>,
}

impl SpecError {
    /// A single problem is the diagnostic itself; several hang under a summary.
    fn single(&self) -> Option<&Problem> {
        match self.problems.as_slice() {
            [problem] => Some(problem),
            _ => None,
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.single(), &self.source_code) {
            (Some(problem), _) => problem.fmt(f),
            (None, Some(source)) => {
                write!(f, "{} has {} problems", source.name(), self.problems.len())
            }
            (None, None) => write!(f, "{} problems", self.problems.len()),
        }
    }
}

impl std::error::Error for SpecError {}

impl Diagnostic for SpecError {
    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.source_code
            .as_ref()
            .map(|source| source as &dyn SourceCode)
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.single()?.help()
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.single()?.labels()
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.single().is_some() {
            return None;
        }
        Some(Box::new(self.problems.iter().map(|p| p as &dyn Diagnostic)))
    }
}
