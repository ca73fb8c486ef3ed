//! The chat-server binary the instances run. Unless the stack names a prebuilt one, it
//! is built here as a static musl executable for the instance type's architecture
//! (x86_64, or aarch64 for Graviton from any machine), so it runs on every Amazon Linux
//! 2023 whatever glibc this machine has. Either way it is read before anything is
//! created: an ELF for the right architecture, static or needing no newer glibc than
//! Amazon Linux 2023's.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure as check};
use goblin::elf::Elf;
use goblin::elf::header::{EM_AARCH64, EM_X86_64};
use sha2::{Digest, Sha256};

use crate::programs;

/// SHA-256 in lowercase hexadecimal, as `sha256sum` prints it.
pub fn sha256_hex(bytes: impl AsRef<[u8]>) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The glibc of Amazon Linux 2023, the newest a dynamically linked binary may need.
pub const AMAZON_LINUX_GLIBC: GlibcVersion = GlibcVersion(2, 34);

/// A binary on this machine, ready to ship.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    pub sha256: String,
    pub architecture: Architecture,
    pub linkage: Linkage,
}

/// The CPU architectures EC2 instance types have, by their EC2 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    X86_64,
    Arm64,
}

impl Architecture {
    pub fn ec2_name(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The Rust target the chat-server is built for to run on this architecture.
    pub fn musl_target(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64-unknown-linux-musl",
            Architecture::Arm64 => "aarch64-unknown-linux-musl",
        }
    }
}

/// A glibc version, as symbol versions name it (`GLIBC_2.34` is `GlibcVersion(2, 34)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion(pub u32, pub u32);

impl GlibcVersion {
    fn of_symbol_version(name: &str) -> Option<Self> {
        let (major, minor) = name.strip_prefix("GLIBC_")?.split_once('.')?;
        // `GLIBC_2.2.5`: the third number does not matter against 2.34.
        let minor = minor.split('.').next()?;
        Some(GlibcVersion(major.parse().ok()?, minor.parse().ok()?))
    }
}

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

/// How the binary is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// No dynamic loader, no shared library: runs on any Linux.
    Static,
    /// Loaded by `loader`; the newest glibc its symbols need, if any.
    Dynamic {
        loader: Option<String>,
        glibc: Option<GlibcVersion>,
    },
}

/// What an ELF executable's headers say: its architecture and how it is linked.
pub fn inspect(bytes: &[u8]) -> Result<(Architecture, Linkage)> {
    let elf = Elf::parse(bytes).context("not a Linux (ELF) executable")?;
    let architecture = match elf.header.e_machine {
        EM_X86_64 => Architecture::X86_64,
        EM_AARCH64 => Architecture::Arm64,
        other => bail!("an ELF executable for machine type {other:#x}, neither x86_64 nor arm64"),
    };
    if elf.interpreter.is_none() && elf.libraries.is_empty() {
        return Ok((architecture, Linkage::Static));
    }
    let glibc = elf
        .verneed
        .iter()
        .flat_map(|section| section.iter())
        .flat_map(|need| need.iter().collect::<Vec<_>>())
        .filter_map(|aux| elf.dynstrtab.get_at(aux.vna_name))
        .filter_map(GlibcVersion::of_symbol_version)
        .max();
    Ok((
        architecture,
        Linkage::Dynamic {
            loader: elf.interpreter.map(str::to_owned),
            glibc,
        },
    ))
}

/// Whether a binary so linked starts on Amazon Linux 2023, and if not, what to do.
fn check_runs_on_amazon_linux(path: &Path, linkage: &Linkage) -> Result<()> {
    const STATIC_BUILD: &str = "Build it static (cargo build --release -p chat-server --target \
         x86_64-unknown-linux-musl, or aarch64-unknown-linux-musl for Graviton), or remove \
         instances.binary from stack.yaml to let `up` build it so";
    match linkage {
        Linkage::Dynamic {
            loader: Some(loader),
            ..
        } if loader.contains("ld-musl") => bail!(
            "{} is linked dynamically against musl: Amazon Linux 2023 has no {loader}. \
             {STATIC_BUILD}",
            path.display()
        ),
        Linkage::Dynamic {
            glibc: Some(needed),
            ..
        } if *needed > AMAZON_LINUX_GLIBC => bail!(
            "{} needs glibc {needed} (its symbols ask for GLIBC_{needed}) but Amazon Linux 2023 \
             has {AMAZON_LINUX_GLIBC}: it would fail at start with `GLIBC_{needed} not found`. \
             {STATIC_BUILD}",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// The binary to ship for `architecture`: the stack's `instances.binary`, or a static
/// release build of the workspace's chat-server, whose output lines (cargo's progress)
/// go to `show`.
pub fn prepare(
    configured: Option<&Path>,
    architecture: Architecture,
    show: &dyn Fn(&str),
) -> Result<Binary> {
    let path = match configured {
        Some(path) => path.to_owned(),
        None => build_chat_server(architecture, show)?,
    };
    let bytes = std::fs::read(&path)
        .with_context(|| format!("cannot read the chat-server binary {}", path.display()))?;
    let (built_for, linkage) =
        inspect(&bytes).with_context(|| format!("{} cannot run on EC2 Linux", path.display()))?;
    if built_for != architecture {
        bail!(
            "the chat-server binary {} is built for {}, but the instance type runs {}: pick an \
             {} instance type, or build chat-server for {} (--target {}) and set \
             instances.binary, or remove instances.binary to let `up` build it",
            path.display(),
            built_for.ec2_name(),
            architecture.ec2_name(),
            built_for.ec2_name(),
            architecture.ec2_name(),
            architecture.musl_target(),
        );
    }
    check_runs_on_amazon_linux(&path, &linkage)?;
    Ok(Binary {
        sha256: sha256_hex(&bytes),
        path,
        architecture,
        linkage,
    })
}

/// A cold release build takes minutes: cargo's own lines are shown as they come, so the
/// user sees it working. Its C (ring's, mimalloc's) is compiled against musl's headers:
/// x86_64 with musl-tools' compiler, aarch64 with clang and Debian's musl-dev:arm64
/// (.cargo/config.toml); cross builds to aarch64 link with rust-lld.
fn build_chat_server(architecture: Architecture, show: &dyn Fn(&str)) -> Result<PathBuf> {
    let target = architecture.musl_target();
    match architecture {
        Architecture::Arm64 => {
            check!(
                programs::on_path("clang")
                    && Path::new("/usr/include/aarch64-linux-musl/stdlib.h").exists(),
                "building chat-server for arm64 (Graviton) on this machine needs clang and \
                 musl's arm64 headers, for the C of its TLS library and allocator: \
                 dpkg --add-architecture arm64 && apt-get update && apt-get install clang \
                 musl-dev:arm64, or set instances.binary"
            );
        }
        Architecture::X86_64 => check!(
            programs::on_path("x86_64-linux-musl-gcc"),
            "building chat-server for x86_64 needs musl's C compiler, for the C of its TLS \
             library and allocator: apt-get install musl-tools, or set instances.binary"
        ),
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let command = format!("cargo build --release -p chat-server --target {target}");
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "chat-server", "--target", target])
        .current_dir(workspace)
        .env("CARGO_TERM_COLOR", "never")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not run cargo to build chat-server: install Rust, or set instances.binary in stack.yaml")?;
    let stderr = cargo.stderr.take().context("cargo's stderr")?;
    let mut target_missing = false;
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        target_missing |= line.contains("target may not be installed");
        show(&format!("cargo: {}", line.trim()));
    }
    let status = cargo.wait().context("waiting for cargo")?;
    if target_missing {
        bail!(
            "`{command}` failed: the {target} target is not installed: rustup target add {target}"
        );
    }
    if !status.success() {
        bail!(
            "`{command}` failed (see above); fix the build or set instances.binary in stack.yaml"
        );
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    Ok(target_dir.join(target).join("release").join("chat-server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbol_versions_name_glibc_versions() {
        assert_eq!(
            GlibcVersion::of_symbol_version("GLIBC_2.34"),
            Some(GlibcVersion(2, 34))
        );
        assert_eq!(
            GlibcVersion::of_symbol_version("GLIBC_2.2.5"),
            Some(GlibcVersion(2, 2))
        );
        assert_eq!(GlibcVersion::of_symbol_version("GCC_3.0"), None);
        assert!(GlibcVersion(2, 39) > AMAZON_LINUX_GLIBC);
        assert!(GlibcVersion(2, 4) < AMAZON_LINUX_GLIBC);
    }

    /// A binary linked against a newer glibc than Amazon Linux 2023's is refused before
    /// anything is created, saying how to build one that runs; one within it, and a
    /// static one, pass.
    #[test]
    fn a_binary_needing_a_newer_glibc_is_refused_with_how_to_build_a_static_one() {
        let path = Path::new("chat-server");
        let glibc_loader = Some("/lib64/ld-linux-x86-64.so.2".to_owned());
        let newer = Linkage::Dynamic {
            loader: glibc_loader.clone(),
            glibc: Some(GlibcVersion(2, 39)),
        };
        let error = check_runs_on_amazon_linux(path, &newer)
            .unwrap_err()
            .to_string();
        assert!(error.contains("GLIBC_2.39 not found"), "{error}");
        assert!(error.contains("x86_64-unknown-linux-musl"), "{error}");
        let musl = Linkage::Dynamic {
            loader: Some("/lib/ld-musl-x86_64.so.1".to_owned()),
            glibc: None,
        };
        let error = check_runs_on_amazon_linux(path, &musl)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no /lib/ld-musl-x86_64.so.1"), "{error}");
        for linkage in [
            Linkage::Static,
            Linkage::Dynamic {
                loader: glibc_loader,
                glibc: Some(GlibcVersion(2, 34)),
            },
        ] {
            check_runs_on_amazon_linux(path, &linkage).unwrap();
        }
    }

    /// This test executable is a real dynamically linked glibc binary: its headers read
    /// as such, with the glibc version its symbols need.
    #[test]
    fn a_real_glibc_executable_reads_as_dynamic_with_its_glibc() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let (architecture, linkage) = inspect(&me).unwrap();
        assert_eq!(
            architecture.ec2_name(),
            if cfg!(target_arch = "aarch64") {
                "arm64"
            } else {
                "x86_64"
            }
        );
        assert!(
            matches!(linkage, Linkage::Dynamic { glibc: Some(version), .. } if version >= GlibcVersion(2, 2)),
            "{linkage:?}"
        );
        assert!(inspect(b"#!/bin/sh\n echo not a binary").is_err());
    }
}
