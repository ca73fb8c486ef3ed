//! `realtime-stack token`: mints a development sign-in token for the stack's chat, so a
//! demo or a test can sign in without an identity service. It signs with `--key`, or
//! with the development key pair `up --local` made for `chat.auth.generate: true`, and
//! prints the token alone on stdout. It calls nothing: no AWS, no LocalStack.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::identity::{Claims, PublicKey, SigningKey, parse_ttl};
use crate::local;
use crate::spec::{AuthKey, StackSpec};

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// The user's stable id (the token's `sub`)
    #[arg(long)]
    pub sub: String,
    /// The name shown on the user's messages (`name`), 1 to 32 characters
    #[arg(long)]
    pub name: String,
    /// Rooms the token may join: comma-separated patterns, `*` matching any run of
    /// characters (`team-*,lobby`) [default: every room]
    #[arg(long, value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
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
    let Some(auth) = &spec.chat.auth else {
        bail!(
            "{} has no chat.auth: its chat is open and takes no tokens; add \
             `chat: {{auth: {{generate: true}}}}` for a development key pair (`up --local`), \
             or `chat.auth.public_key_file` for your identity service's key",
            file.display()
        );
    };
    let key_file = match (&args.key, &auth.key) {
        (Some(key), _) => key.clone(),
        (None, AuthKey::Generate) => {
            let key = local::dev_private_key(&spec.name);
            if !key.exists() {
                bail!(
                    "no development key yet ({}): `realtime-stack up --local` makes it for \
                     chat.auth.generate",
                    key.display()
                );
            }
            key
        }
        (None, AuthKey::File { path, .. }) => bail!(
            "the stack's tokens come from your identity service (chat.auth.public_key_file \
             {}): pass --key with the matching private key to mint a development token",
            path.display()
        ),
    };
    let signer = std::fs::read_to_string(&key_file)
        .with_context(|| format!("reading {}", key_file.display()))
        .and_then(|pem| SigningKey::from_pem(&pem))
        .with_context(|| format!("the signing key {}", key_file.display()))?;
    if let AuthKey::File { path, pem } = &auth.key
        && PublicKey::from_pem(pem).ok() != Some(signer.public_key())
    {
        bail!(
            "{} is not the private half of chat.auth.public_key_file ({}): the chat \
             server would refuse its tokens",
            key_file.display(),
            path.display()
        );
    }
    let mut claims = Claims::new(&args.sub, &args.name, args.rooms.clone(), args.ttl)?;
    claims.iss = auth.issuer.clone();
    claims.aud = auth.audience.clone();
    println!("{}", signer.sign(&claims)?);
    Ok(())
}
