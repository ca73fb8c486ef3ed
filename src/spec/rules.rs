//! The rules of single values, as pure functions: each returns the value (canonical when it
//! has a canonical form) or what is wrong with it.

use std::net::Ipv4Addr;

use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};

use super::{
    ENGINES, MAX_CLUSTER_NODES, MAX_NAME_LEN, MAX_SERVED_NAME_LEN, MIN_REDIS_VERSION,
    MIN_SHARDED_MAJOR, NAME_TAG, RESERVED_TAG_PREFIXES, TLS_POLICIES,
};

/// A value that fails a rule: what is wrong and, when we can tell, what to write instead.
pub(super) struct Invalid {
    pub(super) message: String,
    pub(super) help: Option<String>,
}

impl Invalid {
    pub(super) fn new(message: impl Into<String>) -> Invalid {
        Invalid {
            message: message.into(),
            help: None,
        }
    }

    pub(super) fn help(mut self, help: impl Into<String>) -> Invalid {
        self.help = Some(help.into());
        self
    }
}

pub(super) type Rule<T> = Result<T, Invalid>;

/// The known key closest to a mistyped one, if any is close enough to be a plausible typo.
pub(super) fn did_you_mean<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    known
        .iter()
        .map(|candidate| (strsim::jaro_winkler(key, candidate), *candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// Words a stack name must not start with (alone or before a hyphen): the names derived
/// from it would start with a prefix AWS reserves.
const RESERVED_NAME_PREFIXES: [(&str, &str); 4] = [
    // "Cannot start with sg-" (CreateSecurityGroup's GroupName, `<name>-alb`...):
    // https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateSecurityGroup.html
    ("sg", "security group names such as `sg-alb`"),
    // "must not begin with internal-" (CreateLoadBalancer's Name, `<name>-alb`):
    // https://docs.aws.amazon.com/elasticloadbalancing/latest/APIReference/API_CreateLoadBalancer.html
    ("internal", "the load balancer name `internal-alb`"),
    // Bucket names "must not start with the prefix sthree-" or "amzn-s3-demo-"
    // (`<name>-artifacts-<account>-<region>`):
    // https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
    ("sthree", "an artifact bucket name starting with `sthree-`"),
    (
        "amzn-s3-demo",
        "an artifact bucket name starting with `amzn-s3-demo-`",
    ),
];

pub(super) fn stack_name(name: &str) -> Rule<String> {
    let help = "use lowercase letters, digits and single hyphens, starting with a letter, like `chat` or `chat-prod`";
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if name.is_empty() {
        Err(Invalid::new("is empty").help(help))
    } else if !valid_chars || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Err(Invalid::new(format!("`{name}` is not a valid stack name")).help(help))
    } else if name.ends_with('-') || name.contains("--") {
        // ElastiCache ids and ALB names refuse both (and so bucket names never start
        // with S3's reserved `xn--`).
        Err(Invalid::new(format!("`{name}` ends with a hyphen or has two in a row")).help(help))
    } else if let Some((prefix, derived)) = RESERVED_NAME_PREFIXES
        .iter()
        .find(|(prefix, _)| name == *prefix || name.starts_with(&format!("{prefix}-")))
    {
        Err(Invalid::new(format!(
            "`{name}` makes {derived}, which AWS refuses: names starting with `{prefix}-` \
             are reserved"
        ))
        .help("choose a stack name that does not start with this word"))
    } else if name.len() > MAX_NAME_LEN {
        Err(Invalid::new(format!(
            "`{name}` is {} characters long, at most {MAX_NAME_LEN} are allowed",
            name.len()
        ))
        .help("resource names derive from it and AWS limits their length (S3 buckets: 63)"))
    } else {
        Ok(name.to_string())
    }
}

/// `^[a-z]{2}(-[a-z]+)+-\d+$`, like `us-east-1` or `ap-southeast-2`.
pub(super) fn aws_region(region: &str) -> Rule<String> {
    let parts: Vec<&str> = region.split('-').collect();
    let letters = |part: &&str| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase());
    let valid = parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1].iter().all(letters)
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty();
    if !valid {
        return Err(Invalid::new(format!("`{region}` is not an AWS region"))
            .help("write a region code such as us-east-1 or eu-west-3"));
    }
    match super::unsupported_partition(region) {
        Some(why) => Err(Invalid::new(format!("`{region}` {why}"))
            .help("use a region of the standard `aws` partition, such as us-east-1 or eu-west-3")),
        None => Ok(region.to_string()),
    }
}

/// A DNS name of two labels or more, returned lowercase without a trailing dot.
pub(super) fn dns_name(name: &str) -> Rule<String> {
    let lower = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let labels: Vec<&str> = lower.split('.').collect();
    let help =
        "write a DNS name such as chat.example.com: letters, digits and hyphens, separated by dots";
    let bad = |why: &str| {
        Err(Invalid::new(format!("`{name}` is not a valid DNS name: {why}")).help(help))
    };
    if lower.starts_with("*.") {
        return Err(Invalid::new("wildcard names are not supported")
            .help("give the exact name to serve, such as chat.example.com"));
    }
    if lower.len() > 253 {
        return bad("longer than 253 characters");
    }
    if labels.len() < 2 {
        return bad("it needs at least two labels");
    }
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return bad("each label between dots has 1 to 63 characters");
        }
        if !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return bad(&format!(
                "`{label}` has characters other than letters, digits and inner hyphens"
            ));
        }
    }
    if labels[labels.len() - 1].chars().all(|c| c.is_ascii_digit()) {
        return bad("it looks like an IP address");
    }
    Ok(lower)
}

/// The name served over HTTPS: a DNS name that ACM takes as a certificate's first name,
/// at most 64 octets ("The first domain name you enter cannot exceed 64 octets, including
/// periods", <https://docs.aws.amazon.com/acm/latest/APIReference/API_RequestCertificate.html>).
pub(super) fn served_name(name: &str) -> Rule<String> {
    let name = dns_name(name)?;
    if name.len() > MAX_SERVED_NAME_LEN {
        return Err(Invalid::new(format!(
            "`{name}` is {} characters long; ACM certifies a first name of at most \
             {MAX_SERVED_NAME_LEN}",
            name.len()
        ))
        .help("serve a shorter name, such as chat.<your zone>"));
    }
    Ok(name)
}

/// The bare id (`Z0123456789ABCDEF`) when `zone` is a hosted zone id, with or without its
/// `/hostedzone/` prefix.
pub(super) fn zone_id(zone: &str) -> Option<&str> {
    let id = zone.strip_prefix("/hostedzone/").unwrap_or(zone);
    let valid = id.starts_with('Z')
        && (2..=32).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    valid.then_some(id)
}

pub(super) fn hosted_zone(zone: &str) -> Rule<String> {
    if let Some(id) = zone_id(zone) {
        return Ok(id.to_string());
    }
    dns_name(zone).map_err(|_| {
        Invalid::new(format!("`{zone}` is neither a zone name nor a zone id"))
            .help("give the zone's name, such as example.com, or its id, such as Z0123456789ABCDEF")
    })
}

/// `a.b.c.d/p` as a network address and prefix; `None` if it is not one.
pub(super) fn parse_cidr(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((address, prefix))
}

pub(super) fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// A valid IPv4 CIDR with no host bits set, in canonical form.
pub(super) fn any_cidr(text: &str) -> Rule<String> {
    let Some((address, prefix)) = parse_cidr(text) else {
        let invalid = Invalid::new(format!("`{text}` is not an IPv4 CIDR"));
        return Err(if text.parse::<Ipv4Addr>().is_ok() {
            invalid.help(format!("write {text}/32 for this one address"))
        } else {
            invalid.help("write an address and a prefix length, such as 203.0.113.0/24")
        });
    };
    let network = Ipv4Addr::from(u32::from(address) & mask(prefix));
    if network != address {
        return Err(
            Invalid::new(format!("`{text}` has bits set after its /{prefix} prefix"))
                .help(format!("did you mean {network}/{prefix}?")),
        );
    }
    Ok(format!("{network}/{prefix}"))
}

/// The VPC CIDR: private (RFC 1918) and from /16 to /24, so that it splits into four subnets
/// of /18 to /26.
pub(super) fn vpc_cidr(text: &str) -> Rule<String> {
    let cidr = any_cidr(text)?;
    let (address, prefix) = parse_cidr(&cidr).ok_or_else(|| Invalid::new("is not a CIDR"))?;
    if !(16..=24).contains(&prefix) {
        return Err(
            Invalid::new(format!("/{prefix} is not allowed for the VPC")).help(
                "use a prefix from /16 to /24: the VPC is split into four subnets, /18 to /26",
            ),
        );
    }
    let private = [("10.0.0.0", 8), ("172.16.0.0", 12), ("192.168.0.0", 16)]
        .iter()
        .any(|(range, bits)| {
            let range: Ipv4Addr = range.parse().unwrap_or(Ipv4Addr::UNSPECIFIED);
            u32::from(address) & mask(*bits) == u32::from(range)
        });
    if !private {
        return Err(Invalid::new(format!("`{cidr}` is not a private range"))
            .help("use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16 (RFC 1918), such as 10.0.0.0/16"));
    }
    Ok(cidr)
}

/// `family.size`, like `t3.micro`, `m7g.2xlarge` or `m7i.metal-24xl`.
pub(super) fn is_type_name(text: &str) -> bool {
    let Some((family, size)) = text.split_once('.') else {
        return false;
    };
    let word = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    family.starts_with(|c: char| c.is_ascii_lowercase()) && word(family) && word(size)
}

pub(super) fn instance_type(text: &str) -> Rule<String> {
    if is_type_name(text) {
        Ok(text.to_string())
    } else {
        Err(
            Invalid::new(format!("`{text}` is not an EC2 instance type"))
                .help("write family.size, such as t3.micro or m7g.large"),
        )
    }
}

pub(super) fn ami(text: &str) -> Rule<String> {
    if text == super::LATEST_AMI {
        return Ok(text.to_owned());
    }
    let hex = text.strip_prefix("ami-").unwrap_or_default();
    if matches!(hex.len(), 8 | 17) && hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        Ok(text.to_string())
    } else {
        Err(Invalid::new(format!("`{text}` is not an AMI id"))
            .help("write ami- and 17 hexadecimal digits; `latest` for the newest Amazon Linux 2023 at every up; or remove the key to keep the Amazon Linux 2023 image in use until `up --update-image`"))
    }
}

pub(super) fn node_type(text: &str) -> Rule<String> {
    match text.strip_prefix("cache.") {
        // Data tiering's nodes: "This parameter must be set to true when using r6gd nodes"
        // (DataTieringEnabled, API_CreateReplicationGroup), and the chat's Redis keeps
        // its data in memory, so realtime-stack does not ask for it.
        Some(rest) if is_type_name(rest) && rest.starts_with("r6gd.") => Err(Invalid::new(
            format!("`{text}` is a data tiering node type, which realtime-stack does not enable"),
        )
        .help(format!(
            "choose a node type kept in memory, such as cache.r7g.{}",
            &rest["r6gd.".len()..]
        ))),
        Some(rest) if is_type_name(rest) => Ok(text.to_string()),
        _ => {
            let invalid = Invalid::new(format!("`{text}` is not an ElastiCache node type"));
            Err(if is_type_name(text) {
                invalid.help(format!("did you mean cache.{text}?"))
            } else {
                invalid.help("write cache.family.size, such as cache.t4g.micro")
            })
        }
    }
}

pub(super) fn engine(text: &str) -> Rule<String> {
    if ENGINES.contains(&text) {
        return Ok(text.to_string());
    }
    let invalid = Invalid::new(format!("`{text}` is not a supported engine"));
    Err(match did_you_mean(text, ENGINES) {
        Some(guess) => invalid.help(format!("did you mean `{guess}`? (redis or valkey)")),
        None => invalid.help("use redis or valkey"),
    })
}

/// One of the ALB security policies with TLS 1.2 as the oldest protocol.
pub(super) fn tls_policy(text: &str) -> Rule<String> {
    if TLS_POLICIES.contains(&text) {
        return Ok(text.to_string());
    }
    let invalid = if text.starts_with("ELBSecurityPolicy-") {
        Invalid::new(format!(
            "`{text}` is not an ALB security policy that keeps to TLS 1.2 and later"
        ))
    } else {
        Invalid::new(format!("`{text}` is not an ALB security policy"))
    };
    Err(match did_you_mean(text, TLS_POLICIES) {
        Some(guess) => invalid.help(format!(
            "did you mean `{guess}`? Policies that still allow TLS 1.0 or 1.1 are refused"
        )),
        None => invalid.help(format!(
            "use one of the TLS 1.2+ policies, such as {}",
            TLS_POLICIES[0]
        )),
    })
}

/// `7.1`, `8.0` or `6.x`: numbers separated by dots, `x` allowed after the major version.
/// From 6 on ElastiCache takes a major and a minor only ("Specific version selection is
/// not allowed for '6.2.6', please use '6.2'", crossplane-contrib/provider-aws#1617), and
/// `<major>.x` only for 6 ("y.x version style is only applicable for 6.x",
/// hashicorp/terraform-provider-aws#34897).
pub(super) fn engine_version(text: &str) -> Rule<String> {
    let parts: Vec<&str> = text.split('.').collect();
    let number = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    let valid = number(parts[0]) && parts[1..].iter().all(|part| *part == "x" || number(part));
    if !valid {
        return Err(Invalid::new(format!("`{text}` is not an engine version"))
            .help("write a version such as \"7.1\", or remove the key for the engine's default"));
    }
    let major = major_minor(text).0.unwrap_or(u32::MAX);
    let major_minor = parts[..parts.len().min(2)].join(".");
    let refused = match parts.as_slice() {
        _ if major < 6 => None,
        [_, "x"] if major == 6 => None,
        [_, minor] if *minor != "x" => None,
        [_] => Some("ElastiCache takes a major and a minor version"),
        [_, "x"] => Some("ElastiCache takes `<major>.x` for version 6 only"),
        _ => Some("from version 6 on, ElastiCache takes a major and a minor version only"),
    };
    match refused {
        None => Ok(text.to_string()),
        Some(why) => Err(Invalid::new(format!("`{text}`: {why}")).help(if parts.len() > 2 {
            format!("write \"{major_minor}\" (ElastiCache applies its patches itself)")
        } else {
            format!("write \"{major}.<minor>\", such as \"7.1\", or remove the key for the engine's default")
        })),
    }
}

/// A cluster-mode group's nodes, primaries and replicas, within ElastiCache's limit.
pub(super) fn cluster_nodes(shards: u32, replicas: u32) -> Rule<()> {
    let nodes = shards * (1 + replicas);
    if shards == 1 || nodes <= MAX_CLUSTER_NODES {
        return Ok(());
    }
    Err(Invalid::new(format!(
        "{shards} shards of 1 primary and {replicas} replica(s) make {nodes} nodes; \
         ElastiCache allows at most {MAX_CLUSTER_NODES} in a cluster"
    ))
    .help(format!(
        "use at most {} shards with {replicas} replica(s) each, or fewer replicas",
        MAX_CLUSTER_NODES / (1 + replicas)
    )))
}

/// An engine version's major and minor numbers, each where it is one (`6.x` has no
/// minor).
fn major_minor(version: &str) -> (Option<u32>, Option<u32>) {
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    (parts.next().flatten(), parts.next().flatten())
}

/// With more than one shard the chat servers fan out through sharded pub/sub
/// (SSUBSCRIBE/SPUBLISH), which Redis has from 7 on (and every Valkey).
pub(super) fn sharded_engine_version(engine: &str, version: &str, shards: u32) -> Rule<()> {
    let (major, _) = major_minor(version);
    if shards == 1 || major.is_none_or(|major| major >= MIN_SHARDED_MAJOR) {
        return Ok(());
    }
    Err(Invalid::new(format!(
        "{engine} {version} has no sharded pub/sub (SSUBSCRIBE/SPUBLISH), which the chat \
         servers use across shards: {shards} shards need version {MIN_SHARDED_MAJOR} or later"
    ))
    .help(format!(
        "write engine_version: \"7.1\" (or remove it for the engine's default), use engine: \
         valkey, or set shards: 1 to keep {engine} {version}"
    )))
}

/// A Redis version the chat servers run on: 6.2 or later (`6.x`, ElastiCache's newest 6,
/// is 6.2). Valkey's are all later than that.
pub(super) fn chat_engine_version(engine: &str, version: &str) -> Rule<()> {
    let (least_major, least_minor) = MIN_REDIS_VERSION;
    let too_old = match major_minor(version) {
        (Some(major), Some(minor)) => (major, minor) < MIN_REDIS_VERSION,
        (Some(major), None) => major < least_major,
        (None, _) => false,
    };
    if engine != "redis" || !too_old {
        return Ok(());
    }
    Err(Invalid::new(format!(
        "redis {version} has no XTRIM MINID, which the chat servers use to keep a room's \
         history within its age: they need redis {least_major}.{least_minor} or later"
    ))
    .help(format!(
        "write engine_version: \"7.1\" (or \"{least_major}.{least_minor}\"), remove it for \
         the engine's default, or use engine: valkey"
    )))
}

/// Characters that every tagged service accepts (ELB, ElastiCache, ACM and S3 take
/// `[\p{L}\p{Z}\p{N}_.:/=+\-@]`: letters, numbers, spaces but not tabs or newlines, which
/// are control characters). By general category, not `char::is_alphanumeric`, which also
/// takes the combining marks of many scripts (a Devanagari vowel sign) that AWS refuses.
pub(super) fn is_tag_text(text: &str) -> bool {
    text.chars().all(|c| {
        matches!(
            c.general_category_group(),
            GeneralCategoryGroup::Letter
                | GeneralCategoryGroup::Number
                | GeneralCategoryGroup::Separator
        ) || matches!(c, '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@')
    })
}

pub(super) fn tag_key(key: &str) -> Rule<()> {
    let lower = key.to_lowercase();
    if let Some(prefix) = RESERVED_TAG_PREFIXES.iter().find(|p| lower.starts_with(*p)) {
        return Err(
            Invalid::new(format!("tag keys starting with `{prefix}` are reserved"))
                .help("choose another key"),
        );
    }
    // Tag keys are case-sensitive: `name` is another key, and allowed.
    if key == NAME_TAG {
        return Err(Invalid::new(format!(
            "`{NAME_TAG}` is the tag realtime-stack names each resource by (`<stack>-<role>`, \
             e.g. `chat-vpc`); AWS refuses a key given twice"
        ))
        .help("choose another key, e.g. `Project`"));
    }
    if key.is_empty() || key.chars().count() > 128 {
        return Err(Invalid::new("a tag key has 1 to 128 characters").help("shorten the key"));
    }
    // The instances expose their tags in instance metadata, where EC2 allows fewer
    // characters in keys than the other services do: RunInstances would refuse the key
    // halfway through `up`.
    let metadata_safe = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '=' | '+' | '-' | '@'));
    if !metadata_safe || matches!(key, "." | ".." | "_index") {
        return Err(
            Invalid::new(format!(
                "`{key}` is not a tag key that instance metadata allows (the instances read \
                 their tags there)"
            ))
            .help("use ASCII letters, digits and _ . : = + - @, no spaces or /; not `.`, `..` or `_index`"),
        );
    }
    Ok(())
}

pub(super) fn tag_value(value: &str) -> Rule<String> {
    if value.chars().count() > 256 {
        return Err(
            Invalid::new("a tag value has at most 256 characters").help("shorten the value")
        );
    }
    if !is_tag_text(value) {
        return Err(
            Invalid::new(format!("`{value}` has characters AWS refuses in tags"))
                .help("use letters, digits, spaces and _ . : / = + - @"),
        );
    }
    Ok(value.to_string())
}

/// An `iss` or `aud` a token must carry: it reaches the instances inside a quoted shell
/// value and an environment file, so it is 1 to 256 visible ASCII characters without
/// quotes, backslashes, `$` or backticks (URLs and plain names pass).
/// `chat.auth.token_url`: an `https://` URL the page fetches tokens from (`http://` only
/// on loopback, for a local identity service), safe inside the boot program's quotes.
pub(super) fn token_url(text: &str) -> Rule<String> {
    let help = "give the https:// address of your identity service's token endpoint, such as \
                https://id.example.com/chat-token";
    let usable = claim_value(text)
        .map_err(|_| Invalid::new(format!("`{text}` is not a usable URL")).help(help))?;
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
    let host = text
        .strip_prefix("https://")
        .or_else(|| {
            loopback
                .iter()
                .any(|l| text.starts_with(l))
                .then_some("loopback")
        })
        .unwrap_or_default();
    if host.is_empty() || host.starts_with('/') {
        return Err(Invalid::new(format!("`{text}` is not an https:// URL")).help(help));
    }
    Ok(usable)
}

pub(super) fn claim_value(text: &str) -> Rule<String> {
    let valid = !text.is_empty()
        && text.len() <= 256
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'\'' | b'"' | b'\\' | b'$' | b'`'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(Invalid::new(format!("`{text}` is not a usable claim value"))
            .help("use 1 to 256 visible ASCII characters without quotes, backslashes, `$` or backticks, such as https://id.example.com"))
    }
}
