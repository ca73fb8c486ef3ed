//! Development tokens for the stack's chat, as `token` prints them and `chat --local`
//! sends them: signed with `--key`, or with the development key pair `up --local` made
//! for `chat.auth.generate: true`, and carrying `iss` and `aud` from `chat.auth`. Calls
//! nothing.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::identity::{Claims, PublicKey, SigningKey};
use crate::local;
use crate::spec::{AuthKey, StackSpec};

/// A token of `claims` for the chat of `spec` (read from `file`).
pub fn mint(
    file: &Path,
    spec: &StackSpec,
    key: Option<&Path>,
    mut claims: Claims,
) -> Result<String> {
    let Some(auth) = &spec.chat.auth else {
        bail!(
            "{} has no chat.auth: its chat is open and takes no tokens (and has no server \
             API); add `chat: {{auth: {{generate: true}}}}` for a development key pair \
             (`up --local`), or `chat.auth.public_key_file` for your identity service's key",
            file.display()
        );
    };
    let key_file = match (key, &auth.key) {
        (Some(key), _) => key.to_owned(),
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
    claims.iss = auth.issuer.clone();
    claims.aud = auth.audience.clone();
    signer.sign(&claims)
}
