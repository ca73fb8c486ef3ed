//! The development key pair of `chat.auth.generate: true`, for the demo's sign-in: made
//! by `up --local` in the stack's state directory (`auth/private.pem`, readable by this
//! user only, and `auth/public.pem`), kept from run to run and removed with the rest by
//! `destroy --local`. Its public half takes the place of `generate` in the spec, so the
//! instances get it as they would any public key; `realtime-stack token` signs with the
//! private half. Nothing on AWS ever uses it.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::state::{StateDir, repository};
use crate::identity;
use crate::spec::{AuthKey, StackSpec};

/// The private key `up --local` makes for the stack named `stack`.
pub fn private_key_path(stack: &str) -> PathBuf {
    auth_dir(&StateDir::of(repository(), stack)).join("private.pem")
}

fn auth_dir(state_dir: &StateDir) -> PathBuf {
    state_dir.path().join("auth")
}

/// Puts the development public key in place of `generate` in the spec: the pair in the
/// state directory, made first when `create` (`up --local`) and there is none. Returns
/// the private key's path when it made one. Without `create` and without a pair the
/// spec keeps `generate`, which preflight refuses, saying why.
pub(super) fn resolve(
    spec: &mut StackSpec,
    state_dir: &StateDir,
    create: bool,
) -> Result<Option<PathBuf>> {
    let Some(auth) = spec.chat.auth.as_mut() else {
        return Ok(None);
    };
    if auth.key != AuthKey::Generate {
        return Ok(None);
    }
    let dir = auth_dir(state_dir);
    let public = dir.join("public.pem");
    let private = dir.join("private.pem");
    let mut made = None;
    if !(public.exists() && private.exists()) {
        if !create {
            return Ok(None);
        }
        let pair = identity::generate_ed25519()?;
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        write(&private, &pair.private_pem, 0o600)?;
        write(&public, &pair.public_pem, 0o644)?;
        made = Some(private);
    }
    let pem = std::fs::read_to_string(&public)
        .with_context(|| format!("reading {}", public.display()))?;
    auth.key = AuthKey::File { path: public, pem };
    Ok(made)
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::AuthSpec;

    fn spec(key: AuthKey) -> StackSpec {
        let mut spec = crate::stack::testing::spec();
        spec.chat.auth = Some(AuthSpec {
            key,
            issuer: None,
            audience: None,
            token_url: None,
        });
        spec
    }

    #[test]
    fn up_local_makes_one_pair_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = StateDir::at(dir.path().to_owned());
        let mut planned = spec(AuthKey::Generate);
        assert_eq!(resolve(&mut planned, &state_dir, false).unwrap(), None);
        assert_eq!(planned.chat.auth.as_ref().unwrap().key, AuthKey::Generate);

        let mut first = spec(AuthKey::Generate);
        let private = resolve(&mut first, &state_dir, true).unwrap().unwrap();
        let mode = std::fs::metadata(&private).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let AuthKey::File { pem, .. } = &first.chat.auth.as_ref().unwrap().key else {
            panic!("generate was not replaced");
        };
        let signer =
            identity::SigningKey::from_pem(&std::fs::read_to_string(&private).unwrap()).unwrap();
        assert_eq!(
            signer.public_key(),
            identity::PublicKey::from_pem(pem).unwrap()
        );

        let mut again = spec(AuthKey::Generate);
        assert_eq!(resolve(&mut again, &state_dir, true).unwrap(), None);
        assert_eq!(again, first, "a second up --local keeps the pair");
    }
}
