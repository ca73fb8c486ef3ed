//! Names and tags: how each resource of a stack is named and marked as the stack's own.
//! AWS is the state: the stack tag is how `up` finds what exists and `destroy` finds
//! what to delete, and the role tag tells the stack's resources of one kind apart.

use std::collections::BTreeMap;

use crate::spec::NAME_TAG;

/// Carried by every taggable resource of a stack; its value is the stack's name.
pub const STACK_TAG: &str = "realtime-stack:stack";
/// The resource's part in the stack (`vpc`, `public-a`, `alb`, `instance-0`, ...).
pub const ROLE_TAG: &str = "realtime-stack:role";
/// On instances, what each runs (see [`crate::deploy::Fingerprint`]): the SHA-256 of the
/// chat-server binary, the image, the instance type, and the SHA-256 of the user-data.
pub const BINARY_TAG: &str = "realtime-stack:binary-sha256";
pub const AMI_TAG: &str = "realtime-stack:ami";
pub const INSTANCE_TYPE_TAG: &str = "realtime-stack:instance-type";
pub const BOOT_TAG: &str = "realtime-stack:boot-sha256";
/// On burstable instances: their CPU credit option, `standard` or `unlimited`.
pub const CPU_CREDITS_TAG: &str = "realtime-stack:cpu-credits";
/// On instances: the Redis primary endpoint (`host:port`), read by their user-data from
/// instance metadata. Written once the replication group is available.
pub const REDIS_ENDPOINT_TAG: &str = "realtime-stack:redis-endpoint";

/// The names and tags of one stack's resources.
#[derive(Debug, Clone)]
pub struct Names {
    stack: String,
    extra_tags: BTreeMap<String, String>,
}

impl Names {
    pub fn new(stack: &str, extra_tags: &BTreeMap<String, String>) -> Self {
        Self {
            stack: stack.to_owned(),
            extra_tags: extra_tags.clone(),
        }
    }

    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// `<stack>-<role>`: the `Name` tag, and the name of resources that have one.
    pub fn name(&self, role: &str) -> String {
        format!("{}-{role}", self.stack)
    }

    pub fn load_balancer(&self) -> String {
        self.name("alb")
    }

    pub fn target_group(&self) -> String {
        self.name("tg")
    }

    pub fn replication_group(&self) -> String {
        self.name("redis")
    }

    pub fn cache_subnet_group(&self) -> String {
        self.name("cache")
    }

    /// What each instance is launched from. (EC2: 3 to 128 of `a-zA-Z0-9().-/_`.)
    pub fn launch_template(&self) -> String {
        self.name("instance")
    }

    /// The Auto Scaling group that keeps the instances. (1 to 255 characters.)
    pub fn auto_scaling_group(&self) -> String {
        self.name("instances")
    }

    /// The group's target-tracking scaling policy. (1 to 255 characters.)
    pub fn scaling_policy(&self) -> String {
        self.name("cpu-target")
    }

    /// Bucket names are global: the account and region keep two stacks of the same name
    /// apart.
    pub fn bucket(&self, account: &str, region: &str) -> String {
        format!("{}-artifacts-{account}-{region}", self.stack)
    }

    /// The load balancer's access logs, named as [`Names::bucket`] is.
    pub fn logs_bucket(&self, account: &str, region: &str) -> String {
        format!("{}-alb-logs-{account}-{region}", self.stack)
    }

    /// Whether a tag is the one that marks a resource as this stack's.
    pub fn is_stack_tag(&self, key: Option<&str>, value: Option<&str>) -> bool {
        key == Some(STACK_TAG) && value == Some(self.stack.as_str())
    }

    /// Every tag a resource of `role` carries: `Name`, the stack and role tags, and the
    /// stack's own extra tags.
    pub fn tags(&self, role: &str) -> Vec<(String, String)> {
        let mut tags = vec![
            (NAME_TAG.to_owned(), self.name(role)),
            (STACK_TAG.to_owned(), self.stack.clone()),
            (ROLE_TAG.to_owned(), role.to_owned()),
        ];
        tags.extend(
            self.extra_tags
                .iter()
                .map(|(key, value)| (key.clone(), value.clone())),
        );
        tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_the_stack_name() {
        let names = Names::new("chat", &BTreeMap::new());
        assert_eq!(names.load_balancer(), "chat-alb");
        assert_eq!(names.target_group(), "chat-tg");
        assert_eq!(names.replication_group(), "chat-redis");
        assert_eq!(names.launch_template(), "chat-instance");
        assert_eq!(names.auto_scaling_group(), "chat-instances");
        assert_eq!(
            names.bucket("123456789012", "eu-west-1"),
            "chat-artifacts-123456789012-eu-west-1"
        );
    }

    #[test]
    fn tags_mark_the_stack_the_role_and_carry_the_extra_tags() {
        let extra = BTreeMap::from([("team".to_owned(), "chat".to_owned())]);
        let tags = Names::new("chat", &extra).tags("vpc");
        assert!(tags.contains(&("Name".into(), "chat-vpc".into())));
        assert!(tags.contains(&(STACK_TAG.into(), "chat".into())));
        assert!(tags.contains(&(ROLE_TAG.into(), "vpc".into())));
        assert!(tags.contains(&("team".into(), "chat".into())));
    }

    #[test]
    fn only_this_stacks_tag_marks_a_resource_as_its_own() {
        let names = Names::new("chat", &BTreeMap::new());
        assert!(names.is_stack_tag(Some(STACK_TAG), Some("chat")));
        assert!(!names.is_stack_tag(Some(STACK_TAG), Some("other")));
        assert!(!names.is_stack_tag(Some(ROLE_TAG), Some("chat")));
        assert!(!names.is_stack_tag(None, None));
    }
}
