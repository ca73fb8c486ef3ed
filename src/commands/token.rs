//! `realtime-stack token`: mints a development token for the stack's chat, so a demo or
//! a test can sign in without an identity service: a user's sign-in token, or with
//! `--api` one for the chat's server API (`"scope": "api"`). It signs with `--key`, or
//! with the development key pair `up --local` made for `chat.auth.generate: true`, and
//! prints the token alone on stdout. It calls nothing: no AWS, no LocalStack.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;

use super::signing;
use crate::identity::{Claims, parse_ttl};
use crate::spec::StackSpec;

/// Who a server API token names when `--sub` does not.
const API_CALLER: &str = "operator";

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The user's stable id (the token's `sub`); with --api, the caller's [default:
    /// operator]
    #[arg(long, required_unless_present = "api")]
    pub sub: Option<String>,
    /// The name shown on the user's messages (`name`), 1 to 32 characters
    #[arg(long, required_unless_present = "api", conflicts_with = "api")]
    pub name: Option<String>,
    /// Rooms the token may join: comma-separated patterns, `*` matching any run of
    /// characters (`team-*,lobby`) [default: every room]
    #[arg(long, value_delimiter = ',', conflicts_with = "api")]
    pub rooms: Option<Vec<String>>,
    /// A token for the chat's server API (`/api/v1`, `"scope": "api"`), for
    /// `realtime-stack chat` or a backend, instead of a user's
    #[arg(long)]
    pub api: bool,
    /// How long the token is valid: 90s, 30m, 1h, 7d
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// PEM private key to sign with, Ed25519 or P-256 [default: the development key
    /// pair `up --local` made for `chat.auth.generate: true`]
    #[arg(long)]
    pub key: Option<PathBuf>,
}

pub fn run(file: &Path, args: &TokenArgs) -> Result<()> {
    let spec = StackSpec::load(file)?;
    let claims = match (&args.name, args.api) {
        (Some(name), false) => Claims::new(
            args.sub.as_deref().unwrap_or_default(),
            name,
            args.rooms.clone(),
            args.ttl,
        )?,
        _ => Claims::api(args.sub.as_deref().unwrap_or(API_CALLER), args.ttl)?,
    };
    println!(
        "{}",
        signing::mint(file, &spec, args.key.as_deref(), claims)?
    );
    Ok(())
}
