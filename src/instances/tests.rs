use super::*;

fn artifact() -> Artifact {
    Artifact {
        bucket: "chat-artifacts-123456789012-us-east-1".into(),
        key: "chat-server/abc".into(),
        sha256: "ab".repeat(32),
        planned: false,
    }
}

fn boot(artifact: &Artifact) -> Boot<'_> {
    Boot {
        artifact,
        region: "us-east-1",
        app_port: 8080,
        drain_seconds: 30,
        redis_tls: true,
        redis_cluster: false,
        trusted_proxies: "10.0.0.0/16",
        auth: None,
        chat: ChatSettings::default(),
    }
}

fn chat_auth(public_key_pem: &str) -> ChatAuth {
    ChatAuth {
        public_key_pem: public_key_pem.to_owned(),
        issuer: Some("https://id.example".to_owned()),
        audience: Some("chat".to_owned()),
        token_url: Some("https://id.example/chat-token".to_owned()),
    }
}

#[test]
fn the_chat_limits_reach_the_boot_program_and_change_the_configuration() {
    let artifact = artifact();
    let defaults = boot(&artifact);
    let script = defaults.render().unwrap();
    for line in [
        "HISTORY_MESSAGES='1000'",
        "MAX_ROOMS_PER_CONNECTION='100'",
        "PRESENCE_TTL_SECONDS='30'",
        "FANOUT_WINDOW_MS='20'",
        "CHAT_FANOUT_WINDOW_MS=$FANOUT_WINDOW_MS",
        "CHAT_HISTORY_LEN=$HISTORY_MESSAGES",
        "CHAT_MAX_ROOMS_PER_CONNECTION=$MAX_ROOMS_PER_CONNECTION",
        "CHAT_PRESENCE_TTL_SECS=$PRESENCE_TTL_SECONDS",
    ] {
        assert!(script.contains(line), "{line} missing");
    }
    let tuned = Boot {
        chat: ChatSettings {
            max_rooms_per_connection: 20,
            ..ChatSettings::default()
        },
        ..boot(&artifact)
    };
    assert!(
        tuned
            .render()
            .unwrap()
            .contains("MAX_ROOMS_PER_CONNECTION='20'")
    );
    // Another limit: the instances are rolled to get it.
    assert_ne!(
        tuned.configuration_sha256().unwrap(),
        defaults.configuration_sha256().unwrap()
    );
}

#[test]
fn the_sign_in_public_key_reaches_the_boot_program_and_changes_the_configuration() {
    let artifact = artifact();
    let open = boot(&artifact);
    assert!(open.render().unwrap().contains("AUTH_PUBLIC_KEY=''"));
    let pair = crate::identity::generate_ed25519().unwrap();
    let auth = chat_auth(&pair.public_pem);
    let signed_in = Boot {
        auth: Some(&auth),
        ..boot(&artifact)
    };
    let script = signed_in.render().unwrap();
    assert!(script.contains(&format!("AUTH_PUBLIC_KEY='{}'", pair.public_pem.trim_end())));
    assert!(script.contains("AUTH_ISSUER='https://id.example'"));
    assert!(script.contains("AUTH_AUDIENCE='chat'"));
    assert!(script.contains("AUTH_TOKEN_URL='https://id.example/chat-token'"));
    assert!(
        !script.contains("PRIVATE KEY"),
        "a private key in user-data"
    );
    let hash = signed_in.configuration_sha256().unwrap();
    assert_ne!(hash, open.configuration_sha256().unwrap());
    // Another key: the instances are rolled.
    let other = chat_auth(&crate::identity::generate_ed25519().unwrap().public_pem);
    let rekeyed = Boot {
        auth: Some(&other),
        ..boot(&artifact)
    };
    assert_ne!(rekeyed.configuration_sha256().unwrap(), hash);
}

#[test]
fn user_data_installs_the_boot_service_with_the_stacks_values_and_no_secret() {
    let artifact = artifact();
    let script = boot(&artifact).render().unwrap();
    assert!(script.starts_with("#!/bin/sh\n"));
    assert!(script.contains("realtime-stack-boot.service"));
    assert!(script.contains(&format!("BUCKET='{}'", artifact.bucket)));
    assert!(script.contains("KEY='chat-server/abc'"));
    assert!(script.contains("REGION='us-east-1'"));
    assert!(script.contains(&format!("BINARY_SHA256='{}'", artifact.sha256)));
    assert!(script.contains("APP_PORT='8080'"));
    assert!(script.contains("REDIS_SCHEME='rediss'"));
    assert!(script.contains(&format!("REDIS_TAG='{REDIS_ENDPOINT_TAG}'")));
    assert!(script.contains("REDIS_CLUSTER='false'"));
    assert!(script.contains("TRUSTED_PROXIES='10.0.0.0/16'"));
    assert!(
        !script.contains("='@") && !script.contains("@BOOT_PROGRAM@"),
        "every placeholder is filled"
    );
    // Nothing that expires or that an attacker reading the user-data could use.
    for secret in ["X-Amz-", "Signature", "Credential", "Security-Token"] {
        assert!(!script.contains(secret), "user-data contains {secret:?}");
    }
    assert!(script.len() <= USER_DATA_LIMIT);
}

#[test]
fn a_new_binary_leaves_the_boot_configuration_as_it_was() {
    let artifact = artifact();
    let rebuilt = Artifact {
        key: "chat-server/def".into(),
        sha256: "cd".repeat(32),
        ..artifact.clone()
    };
    let configuration = boot(&artifact).configuration_sha256().unwrap();
    assert_eq!(
        boot(&rebuilt).configuration_sha256().unwrap(),
        configuration
    );
    let mut other_port = boot(&artifact);
    other_port.app_port = 9000;
    assert_ne!(other_port.configuration_sha256().unwrap(), configuration);
    // Instances told of a cluster are other instances: a rolling deploy replaces them.
    let mut cluster = boot(&artifact);
    cluster.redis_cluster = true;
    assert_ne!(cluster.configuration_sha256().unwrap(), configuration);
    assert!(cluster.render().unwrap().contains("REDIS_CLUSTER='true'"));
}

#[test]
fn the_rendered_user_data_is_the_same_every_time() {
    let artifact = artifact();
    assert_eq!(
        boot(&artifact).render().unwrap(),
        boot(&artifact).render().unwrap()
    );
}

#[test]
fn a_value_with_a_quote_cannot_break_out_of_the_script() {
    let mut artifact = artifact();
    artifact.key.push_str("';reboot;'");
    assert!(boot(&artifact).render().is_err());
}

/// The instances the group just launched, tagged and configured at once:
/// DescribeInstances may not list them with their state yet, and CreateTags and
/// ModifyInstanceMetadataOptions may not know them (`InvalidInstanceID.NotFound`, "This
/// does not mean the instance does not exist",
/// <https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>).
#[tokio::test(start_paused = true)]
async fn new_instances_are_waited_for_until_ec2_knows_them() {
    use aws_sdk_ec2::Client;
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::create_tags::{CreateTagsError, CreateTagsOutput};
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::operation::modify_instance_metadata_options::{
        ModifyInstanceMetadataOptionsError, ModifyInstanceMetadataOptionsOutput,
    };
    use aws_sdk_ec2::types::{InstanceState, Reservation};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use crate::stack::testing;

    let unknown = |code: &str| {
        ErrorMetadata::builder()
            .code(code)
            .message("The ID does not exist")
            .build()
    };
    // Listing the stack's instances by tag: the new one, neither tagged nor
    // configured yet.
    let by_tag = mock!(Client::describe_instances).then_output(|| {
        DescribeInstancesOutput::builder()
            .reservations(
                Reservation::builder()
                    .instances(
                        Instance::builder()
                            .instance_id("i-new1")
                            .state(
                                InstanceState::builder()
                                    .name(InstanceStateName::Pending)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .build()
    });
    let tag = mock!(Client::create_tags)
        .sequence()
        .error(move || CreateTagsError::generic(unknown("InvalidInstanceID.NotFound")))
        .times(2)
        .output(|| CreateTagsOutput::builder().build())
        .build();
    let configure = mock!(Client::modify_instance_metadata_options)
        .sequence()
        .error(move || {
            ModifyInstanceMetadataOptionsError::generic(unknown("InvalidInstanceID.NotFound"))
        })
        .output(|| ModifyInstanceMetadataOptionsOutput::builder().build())
        .build();
    let mut clients = testing::clients();
    clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&by_tag, &tag, &configure]);
    let stack = testing::stack(clients);

    ensure_redis_tag(&stack, "redis.example:6379")
        .await
        .expect("tagged");
    ensure_metadata_options(&stack).await.expect("configured");

    assert_eq!(tag.num_calls(), 3);
    assert_eq!(configure.num_calls(), 2);
}

/// Issue 18: every `up` took the newest Amazon Linux 2023, so a new release rolled
/// every instance without a word. The image in use is kept, the newer one reported;
/// `--update-image` or `instances.ami: latest` take it.
#[tokio::test]
async fn the_image_in_use_is_kept_until_asked_for_the_newer_one() {
    use aws_sdk_ec2::Client;
    use aws_sdk_ec2::operation::describe_images::DescribeImagesOutput;
    use aws_sdk_ec2::types::ArchitectureValues;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use crate::stack::testing;

    let described = |id: &str, date: &str| {
        Ec2Image::builder()
            .image_id(id)
            .name(format!("al2023-ami-2023.{date}-kernel-6.1-x86_64"))
            .creation_date(date)
            .architecture(ArchitectureValues::X8664)
            .root_device_name("/dev/xvda")
            .build()
    };
    let by_id = mock!(Client::describe_images)
        .match_requests(|request| request.image_ids() == ["ami-old"])
        .then_output(move || {
            DescribeImagesOutput::builder()
                .images(described("ami-old", "2025-01-07"))
                .build()
        });
    let newest = mock!(Client::describe_images)
        .match_requests(|request| request.image_ids().is_empty())
        .then_output(move || {
            DescribeImagesOutput::builder()
                .images(described("ami-old", "2025-01-07"))
                .images(described("ami-new", "2025-06-30"))
                .build()
        });
    let choose = |ami: Option<&str>, in_use: Option<&'static str>, update: bool| {
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&by_id, &newest]);
        let mut stack = testing::stack(clients);
        stack.spec.instances.ami = ami.map(str::to_owned);
        async move {
            image(&stack, Architecture::X86_64, in_use, update)
                .await
                .unwrap()
        }
    };

    let kept = choose(None, Some("ami-old"), false).await;
    assert_eq!(kept.image.id, "ami-old");
    assert_eq!(
        kept.update.map(|newer| newer.id).as_deref(),
        Some("ami-new")
    );
    let updated = choose(None, Some("ami-old"), true).await;
    assert_eq!(
        (updated.image.id.as_str(), updated.update),
        ("ami-new", None)
    );
    let latest = choose(Some(LATEST_AMI), Some("ami-old"), false).await;
    assert_eq!(latest.image.id, "ami-new");
    let first = choose(None, None, false).await;
    assert_eq!((first.image.id.as_str(), first.update), ("ami-new", None));
}

/// On the way out the same answer means the opposite: an instance EC2 does not know
/// is gone, at once, not "not yet".
#[tokio::test(start_paused = true)]
async fn an_instance_ec2_does_not_know_counts_as_terminated_at_once() {
    use aws_sdk_ec2::Client;
    use aws_sdk_ec2::error::ErrorMetadata;
    use aws_sdk_ec2::operation::terminate_instances::TerminateInstancesError;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    let terminate = mock!(Client::terminate_instances).then_error(|| {
        TerminateInstancesError::generic(
            ErrorMetadata::builder()
                .code("InvalidInstanceID.NotFound")
                .build(),
        )
    });
    let instance = Ec2Instance {
        ec2: mock_client!(aws_sdk_ec2, RuleMode::MatchAny, [&terminate]),
        id: "i-gone".into(),
        group: "auto-scaling-group:chat-instances".into(),
    };

    assert!(instance.delete().await.is_ok());
    assert_eq!(terminate.num_calls(), 1);
}
