//! The sections of stack.yaml, each read into its part of the spec with its rules: the
//! walk's readers ([`super`]) do the reporting.

use super::*;

impl Checker<'_> {
    pub(in crate::spec) fn stack(&mut self) -> Option<StackSpec> {
        let start = Marker::new(0, 1, 0);
        let documents = match MarkedYaml::load_from_str(self.source) {
            Ok(documents) => documents,
            Err(err) => {
                let at = At::empty(*err.marker());
                self.report(
                    "",
                    at,
                    Invalid::new(format!("invalid YAML: {}", err.info())),
                );
                return None;
            }
        };
        if let Some(extra) = documents.get(1) {
            self.report(
                "",
                At::of(extra),
                Invalid::new("a stack file holds one YAML document, this is a second one")
                    .help("remove the `---` and what follows, or merge it into the first"),
            );
        }
        let root = match documents.first() {
            None => None,
            Some(node) if matches!(node.data, YamlData::Value(Scalar::Null)) => None,
            Some(node) => Some(node),
        };
        let Some(root) = root else {
            self.report(
                "",
                At::empty(start),
                Invalid::new("the stack file is empty")
                    .help("give at least `name`, `domain.name` and `domain.hosted_zone`"),
            );
            return None;
        };
        let root = self.section(root, At::empty(root.span.start), "", ROOT_KEYS)?;

        let name = self.required(&root, "name", |ck, path, field| {
            let name = ck.string(path, field.value)?;
            ck.check(path, At::of(field.value), stack_name(&name))
        });
        let region = self.optional(&root, "region", DEFAULT_REGION.to_string(), |ck, p, n| {
            let region = ck.string(p, n)?;
            ck.check(p, At::of(n), aws_region(&region))
        });
        let domain = self.required(&root, "domain", |ck, path, field| {
            let section = ck.section(field.value, field.key, path, DOMAIN_KEYS)?;
            ck.domain(section)
        });
        let network = self.network(&root);
        let instances = self.instances(&root);
        let load_balancer = self.load_balancer(&root);
        let redis = self.redis(&root);
        let chat = self.chat(&root);
        let scaling = self.scaling(&root, instances.as_ref());
        let tags = self.optional(&root, "tags", BTreeMap::new(), |ck, p, n| ck.tags(p, n));

        Some(StackSpec {
            name: name?,
            region: region?,
            domain: domain?,
            network: network?,
            instances: instances?,
            load_balancer: load_balancer?,
            redis: redis?,
            chat: chat?,
            scaling: scaling?,
            tags: tags?,
        })
    }

    /// `scaling`: `min` and `max` required, `min` ≤ `max`, and a written
    /// `instances.count` between them (it is the size the group starts at).
    fn scaling(
        &mut self,
        root: &Section<'_, '_>,
        instances: Option<&InstancesSpec>,
    ) -> Option<Option<ScalingSpec>> {
        let Some(field) = root.get("scaling") else {
            return Some(None);
        };
        let section = self.section(field.value, field.key, "scaling", SCALING_KEYS)?;
        let why = "a stack runs from 1 to 20 instances";
        let bound = |ck: &mut Self, key: &str| {
            ck.required(&section, key, |ck, path, field| {
                ck.integer::<u32>(path, field.value, (1, MAX_INSTANCES), why)
            })
        };
        let (min, max) = (bound(self, "min"), bound(self, "max"));
        let cpu = self.optional_integer(
            &section,
            "cpu_target_percent",
            DEFAULT_CPU_TARGET,
            (10, 90),
            "the group's average CPU to keep: below 10 % it never scales in, above 90 % a \
             burst has no room",
        );
        let (min, max, cpu) = (min?, max?, cpu?);
        if min > max {
            let at = section.get("min")?.value;
            self.report(
                &section.path("min"),
                At::of(at),
                Invalid::new(format!("is {min}, above scaling.max ({max})"))
                    .help("scaling.min is the fewest instances, scaling.max the most"),
            );
            return None;
        }
        let count = instances.map(|instances| instances.count);
        let written = self.instances_count_field(root);
        if let (Some(count), Some(at)) = (count, written)
            && !(min..=max).contains(&count)
        {
            self.report(
                "instances.count",
                at,
                Invalid::new(format!(
                    "is {count}, outside scaling.min ({min}) to scaling.max ({max})"
                ))
                .help("with scaling, instances.count is the size the group starts at"),
            );
            return None;
        }
        Some(Some(ScalingSpec {
            min,
            max,
            cpu_target_percent: cpu,
        }))
    }

    /// Where `instances.count` is written, if it is.
    fn instances_count_field(&mut self, root: &Section<'_, '_>) -> Option<At> {
        let instances = root.get("instances")?;
        let YamlData::Mapping(mapping) = &instances.value.data else {
            return None;
        };
        mapping.iter().find_map(|(key, value)| {
            matches!(&key.data, YamlData::Value(Scalar::String(name)) if name == "count")
                .then(|| At::of(value))
        })
    }

    fn domain(&mut self, section: Section<'_, '_>) -> Option<DomainSpec> {
        let name = self.required(&section, "name", |ck, path, field| {
            let name = ck.string(path, field.value)?;
            ck.check(path, At::of(field.value), served_name(&name))
        });
        let zone = self.required(&section, "hosted_zone", |ck, path, field| {
            let zone = ck.string(path, field.value)?;
            ck.check(path, At::of(field.value), hosted_zone(&zone))
        });
        let (name, hosted_zone) = (name?, zone?);
        if zone_id(&hosted_zone).is_none()
            && name != hosted_zone
            && !name.ends_with(&format!(".{hosted_zone}"))
        {
            let field = section.get("name")?;
            self.report(
                &section.path("name"),
                At::of(field.value),
                Invalid::new(format!(
                    "`{name}` is not inside the hosted zone `{hosted_zone}`"
                ))
                .help(format!(
                    "use `{hosted_zone}` or a name ending in `.{hosted_zone}`, or the zone that holds `{name}`"
                )),
            );
            return None;
        }
        Some(DomainSpec { name, hosted_zone })
    }

    fn network(&mut self, root: &Section<'_, '_>) -> Option<NetworkSpec> {
        let section = self.subsection(root, "network", NETWORK_KEYS)?;
        let cidr = self.optional(&section, "cidr", DEFAULT_CIDR.to_string(), |ck, p, n| {
            let cidr = ck.string(p, n)?;
            ck.check(p, At::of(n), vpc_cidr(&cidr))
        });
        let default = vec![DEFAULT_ALLOWED_CIDR.to_string()];
        let allowed = self.optional(&section, "allowed_cidrs", default, |ck, path, node| {
            let YamlData::Sequence(items) = &node.data else {
                ck.type_error(path, node, "a list of CIDRs, such as [0.0.0.0/0]");
                return None;
            };
            if items.is_empty() {
                let invalid = Invalid::new("must list at least one CIDR")
                    .help("use [0.0.0.0/0] to let everyone reach the load balancer");
                ck.report(path, At::of(node), invalid);
                return None;
            }
            if items.len() > MAX_ALLOWED_CIDRS {
                let invalid = Invalid::new(format!(
                    "lists {} CIDRs, at most {MAX_ALLOWED_CIDRS} are allowed",
                    items.len()
                ))
                .help(
                    "each range takes two of the 60 inbound rules EC2 allows a security \
                     group (80 and 443): merge neighbouring ranges into wider ones",
                );
                ck.report(path, At::of(node), invalid);
                return None;
            }
            let mut cidrs = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let path = format!("{path}[{i}]");
                let cidr = ck.string(&path, item).and_then(|cidr| {
                    let rule = any_cidr(&cidr).and_then(|cidr| {
                        if cidrs.contains(&cidr) {
                            Err(Invalid::new(format!("`{cidr}` is listed twice"))
                                .help("remove one of them"))
                        } else {
                            Ok(cidr)
                        }
                    });
                    ck.check(&path, At::of(item), rule)
                });
                match cidr {
                    Some(cidr) => cidrs.push(cidr),
                    None => ok = false,
                }
            }
            ok.then_some(cidrs)
        });
        Some(NetworkSpec {
            cidr: cidr?,
            allowed_cidrs: allowed?,
        })
    }

    fn instances(&mut self, root: &Section<'_, '_>) -> Option<InstancesSpec> {
        let section = self.subsection(root, "instances", INSTANCES_KEYS)?;
        let count = self.optional_integer(
            &section,
            "count",
            DEFAULT_COUNT,
            (1, 20),
            "a stack runs from 1 to 20 instances",
        );
        let default_type = DEFAULT_INSTANCE_TYPE.to_string();
        let instance_type = self.optional(&section, "type", default_type, |ck, p, n| {
            let text = ck.string(p, n)?;
            ck.check(p, At::of(n), instance_type(&text))
        });
        let ami = self.optional(&section, "ami", None, |ck, p, n| {
            let text = ck.string(p, n)?;
            ck.check(p, At::of(n), ami(&text)).map(Some)
        });
        let binary = self.optional(&section, "binary", None, |ck, p, n| {
            let text = ck.string(p, n)?;
            let rule = if text.trim().is_empty() {
                Err(Invalid::new("is empty")
                    .help("give the path of a chat-server binary, or remove the key to build one"))
            } else {
                Ok(Some(PathBuf::from(text)))
            };
            ck.check(p, At::of(n), rule)
        });
        let app_port = self.optional(&section, "app_port", DEFAULT_APP_PORT, |ck, p, n| {
            let port: u16 = ck.integer(
                p,
                n,
                (1024, 65535),
                "ports below 1024 need root, and the server runs unprivileged",
            )?;
            let rule = if i64::from(port) == REDIS_PORT {
                Err(Invalid::new("must not be 6379, the Redis port")
                    .help(format!("use another port, such as {DEFAULT_APP_PORT}")))
            } else {
                Ok(port)
            };
            ck.check(p, At::of(n), rule)
        });
        let drain_seconds = self.optional_integer(
            &section,
            "drain_seconds",
            DEFAULT_DRAIN_SECONDS,
            (0, i64::from(MAX_DEREGISTRATION_DELAY - DRAIN_START_SECONDS)),
            "the target group's deregistration delay, the drain and the 5 s it takes to start, \
             is at most 3600 s",
        );
        let batch_size = self.optional_integer(
            &section,
            "batch_size",
            DEFAULT_BATCH_SIZE,
            (1, 20),
            "a rolling deploy replaces from 1 to 20 instances at a time",
        );
        let health_timeout_seconds = self.optional_integer(
            &section,
            "health_timeout_seconds",
            DEFAULT_HEALTH_TIMEOUT,
            (60, 3600),
            "an instance needs at least a minute to boot and pass its health checks",
        );
        let cpu_credits = self.cpu_credits(&section, instance_type.as_deref());
        Some(InstancesSpec {
            cpu_credits: cpu_credits?,
            count: count?,
            instance_type: instance_type?,
            ami: ami?,
            binary: binary?,
            app_port: app_port?,
            drain_seconds: drain_seconds?,
            batch_size: batch_size?,
            health_timeout_seconds: health_timeout_seconds?,
        })
    }

    /// `instances.cpu_credits`: only burstable types have CPU credits; theirs default to
    /// `standard`. `None` inside `Some` when the type has none.
    fn cpu_credits(
        &mut self,
        section: &Section<'_, '_>,
        instance_type: Option<&str>,
    ) -> Option<Option<String>> {
        let burstable = instance_type.is_none_or(is_burstable);
        let default = burstable.then(|| DEFAULT_CPU_CREDITS.to_owned());
        self.optional(section, "cpu_credits", default, |ck, p, n| {
            let text = ck.string(p, n)?;
            let rule = if !CPU_CREDITS.contains(&text.as_str()) {
                Err(Invalid::new(format!("`{text}` is not a CPU credit option"))
                    .help("write standard (throttled to the baseline once credits run out) or unlimited (surplus credits are billed)"))
            } else if !burstable {
                Err(Invalid::new(format!(
                    "{} has no CPU credits: only burstable types (t2, t3, t3a, t4g) do",
                    instance_type.unwrap_or_default()
                ))
                .help("remove instances.cpu_credits, or pick a burstable instances.type"))
            } else {
                Ok(Some(text))
            };
            ck.check(p, At::of(n), rule)
        })
    }

    fn load_balancer(&mut self, root: &Section<'_, '_>) -> Option<LoadBalancerSpec> {
        let section = self.subsection(root, "load_balancer", LOAD_BALANCER_KEYS)?;
        let idle = self.optional_integer(
            &section,
            "idle_timeout_seconds",
            DEFAULT_IDLE_TIMEOUT,
            (60, 4000),
            "the ALB allows at most 4000 s, and less than 60 s drops quiet WebSockets",
        );
        let interval = self.optional_integer(
            &section,
            "health_check_interval_seconds",
            DEFAULT_HEALTH_CHECK_INTERVAL,
            (5, 300),
            "the ALB checks every 5 to 300 s",
        );
        let tls_policy = self.optional(
            &section,
            "tls_policy",
            DEFAULT_TLS_POLICY.to_owned(),
            |ck, p, n| {
                let text = ck.string(p, n)?;
                ck.check(p, At::of(n), tls_policy(&text))
            },
        );
        let access_logs = self.optional(&section, "access_logs", true, |ck, p, n| ck.boolean(p, n));
        let access_logs_days = self.optional_integer(
            &section,
            "access_logs_days",
            DEFAULT_ACCESS_LOGS_DAYS,
            (1, 3650),
            "the logs bucket expires each log object after this many days",
        );
        let access_logs_days = access_logs_days?;
        Some(LoadBalancerSpec {
            idle_timeout_seconds: idle?,
            health_check_interval_seconds: interval?,
            tls_policy: tls_policy?,
            access_logs: access_logs?.then_some(AccessLogs {
                days: access_logs_days,
            }),
        })
    }

    fn redis(&mut self, root: &Section<'_, '_>) -> Option<RedisSpec> {
        let section = self.subsection(root, "redis", REDIS_KEYS)?;
        let default_node_type = DEFAULT_NODE_TYPE.to_string();
        let node_type = self.optional(&section, "node_type", default_node_type, |ck, p, n| {
            let text = ck.string(p, n)?;
            ck.check(p, At::of(n), node_type(&text))
        });
        let replicas = self.optional_integer(
            &section,
            "replicas",
            DEFAULT_REPLICAS,
            (0, 5),
            "a replication group has at most 5 replicas",
        );
        let shards = self.optional_integer(
            &section,
            "shards",
            DEFAULT_SHARDS,
            (1, i64::from(MAX_CLUSTER_NODES)),
            "ElastiCache's cluster mode allows at most 500 nodes, so 500 shards without replicas",
        );
        let engine = self.optional(
            &section,
            "engine",
            DEFAULT_ENGINE.to_string(),
            |ck, p, n| {
                let text = ck.string(p, n)?;
                ck.check(p, At::of(n), engine(&text))
            },
        );
        let version = self.optional(&section, "engine_version", None, |ck, p, n| {
            let text = ck.text(p, n)?;
            ck.check(p, At::of(n), engine_version(&text)).map(Some)
        });
        let snapshot_retention_days = self.optional_integer(
            &section,
            "snapshot_retention_days",
            DEFAULT_SNAPSHOT_RETENTION_DAYS,
            (0, 35),
            "ElastiCache keeps automatic backups for at most 35 days; 0 turns them off",
        );
        let redis = RedisSpec {
            node_type: node_type?,
            replicas: replicas?,
            shards: shards?,
            engine: engine?,
            engine_version: version?,
            snapshot_retention_days: snapshot_retention_days?,
        };
        self.cluster(&section, &redis).then_some(redis)
    }

    /// What the chat servers and more than one shard ask of the other Redis keys; whether
    /// all of it holds.
    fn cluster(&mut self, section: &Section<'_, '_>, redis: &RedisSpec) -> bool {
        let mut ok = true;
        if let Some(field) = section.get("shards") {
            let rule = cluster_nodes(redis.shards, redis.replicas);
            ok &= self
                .check(&section.path("shards"), At::of(field.value), rule)
                .is_some();
        }
        if let (Some(field), Some(version)) = (section.get("engine_version"), &redis.engine_version)
        {
            let rule = chat_engine_version(&redis.engine, version)
                .and_then(|()| sharded_engine_version(&redis.engine, version, redis.shards));
            let path = section.path("engine_version");
            ok &= self.check(&path, At::of(field.value), rule).is_some();
        }
        ok
    }

    fn chat(&mut self, root: &Section<'_, '_>) -> Option<ChatSpec> {
        let section = self.subsection(root, "chat", CHAT_KEYS)?;
        // `None`: a mistake reported; `Some(None)`: no sign-in.
        let auth = match section.get("auth") {
            None => Some(None),
            Some(field) => {
                let path = section.path("auth");
                let auth = self.section(field.value, field.key, &path, AUTH_KEYS);
                auth.and_then(|auth| self.auth(&auth)).map(Some)
            }
        };
        let defaults = ChatSettings::default();
        let history_messages = self.optional_integer(
            &section,
            "history_messages",
            defaults.history_messages,
            (1, 100_000),
            "each room keeps this many messages in Redis, for every room: mind the node's memory",
        );
        let max_rooms_per_connection = self.optional_integer(
            &section,
            "max_rooms_per_connection",
            defaults.max_rooms_per_connection,
            (1, 1000),
            "a connection follows at most this many rooms; a sidebar needs tens",
        );
        let presence_ttl_seconds = self.optional_integer(
            &section,
            "presence_ttl_seconds",
            defaults.presence_ttl_seconds,
            (3, 3600),
            "instances refresh presence every third of it; it is how long a member of a \
             lost instance stays listed",
        );
        let fanout_window_ms = self.optional_integer(
            &section,
            "fanout_window_ms",
            defaults.fanout_window_ms,
            (0, 1000),
            "a busy room's messages wait at most this long to go out together: 20 cuts the \
             CPU per delivery of a room of 250 to a third, for about 10 ms more at the median \
             and 3 ms more at p99 (BENCHMARKS.md); 0 sends each at once",
        );
        Some(ChatSpec {
            auth: auth?,
            settings: ChatSettings {
                history_messages: history_messages?,
                max_rooms_per_connection: max_rooms_per_connection?,
                presence_ttl_seconds: presence_ttl_seconds?,
                fanout_window_ms: fanout_window_ms?,
            },
        })
    }

    fn auth(&mut self, section: &Section<'_, '_>) -> Option<AuthSpec> {
        let file = self.optional(section, "public_key_file", None, |ck, p, n| {
            let text = ck.string(p, n)?;
            ck.public_key_file(p, At::of(n), &text).map(Some)
        });
        let generate = self.optional(section, "generate", false, |ck, p, n| ck.boolean(p, n));
        let mut claim = |key: &str| {
            self.optional(section, key, None, |ck, p, n| {
                let text = ck.string(p, n)?;
                ck.check(p, At::of(n), claim_value(&text)).map(Some)
            })
        };
        let (issuer, audience) = (claim("issuer"), claim("audience"));
        let token_url = self.optional(section, "token_url", None, |ck, p, n| {
            let text = ck.string(p, n)?;
            ck.check(p, At::of(n), token_url(&text)).map(Some)
        });
        let key = match (file?, generate?) {
            (Some(_), true) => {
                let at = section.get("generate")?.key;
                let invalid = Invalid::new("give `public_key_file` or `generate: true`, not both")
                    .help("`generate` is for `up --local` only; remove it to use the key file");
                self.report(&section.path("generate"), at, invalid);
                return None;
            }
            (Some((path, pem)), false) => AuthKey::File { path, pem },
            (None, true) => AuthKey::Generate,
            (None, false) => {
                let invalid = Invalid::new("needs `public_key_file`, or `generate: true`")
                    .help(
                        "name your identity service's public key (PEM, Ed25519 or P-256), or                          let `up --local` make a development key pair; remove `chat.auth` to                          keep the chat open",
                    );
                self.report(&section.path, section.at, invalid);
                return None;
            }
        };
        Some(AuthSpec {
            key,
            issuer: issuer?,
            audience: audience?,
            token_url: token_url?,
        })
    }
}
