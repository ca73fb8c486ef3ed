//! Programs this machine must have for what the CLI runs here: clang for a Graviton
//! cross build, and what `--local` starts (redis-server, openssl...).

use std::os::unix::fs::PermissionsExt;

/// Whether an executable `program` is in a directory of `PATH`.
pub fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(program))
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}
