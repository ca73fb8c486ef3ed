//! ElastiCache on this machine: a TLS-only redis-server on a loopback port, detached so
//! that it outlives `up --local`, with a CA and a certificate generated for it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{free_port, process_is, signal_and_wait};

/// A TLS-only redis-server on a loopback port, detached (it outlives `up --local`), with
/// its certificates, log and pid file in one directory. It stands for ElastiCache with
/// transit encryption.
#[derive(Debug, Clone)]
pub struct LocalRedis {
    pub port: u16,
    pub pid: u32,
    pub dir: PathBuf,
}

impl LocalRedis {
    /// Starts redis-server on a free loopback port, with a CA and a certificate for
    /// 127.0.0.1 generated into `dir` unless they are already there. Blocks until it
    /// accepts connections.
    pub fn start(dir: &Path) -> Result<LocalRedis> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        if !dir.join("ca.crt").exists() || !dir.join("redis.crt").exists() {
            generate_certificates(dir)?;
        }
        // A free port can be taken between probing and binding: try another.
        let mut last_error = None;
        for _ in 0..5 {
            match Self::launch(dir, free_port()?) {
                Ok(redis) => return Ok(redis),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("at least one attempt"))
    }

    /// The redis-server recorded in `dir`, if it still runs there on `port`.
    pub fn running(dir: &Path, port: u16) -> Option<LocalRedis> {
        let pid = std::fs::read_to_string(dir.join("redis.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        process_is(pid, "redis-server").then(|| LocalRedis {
            port,
            pid,
            dir: dir.to_owned(),
        })
    }

    fn launch(dir: &Path, port: u16) -> Result<LocalRedis> {
        let log = dir.join("redis.log");
        let pid_file = dir.join("redis.pid");
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&pid_file);
        let path = |name: &str| dir.join(name).display().to_string();
        // daemonize: the server is re-parented away from us, so it outlives `up --local`
        // and nobody is left to reap in a test process.
        let status = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &path("redis.crt")])
            .args(["--tls-key-file", &path("redis.key")])
            .args(["--tls-ca-cert-file", &path("ca.crt")])
            .args(["--tls-auth-clients", "no"])
            .args(["--dir", &path("")])
            .args(["--logfile", &path("redis.log")])
            .args(["--pidfile", &path("redis.pid")])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("redis-server not found: apt-get install redis-server")?;
        if !status.success() {
            bail!(
                "redis-server failed to start ({status}); see {}",
                log.display()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(redis) = Self::running(dir, port)
                && logged.contains("Ready to accept connections")
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                return Ok(redis);
            }
            if logged.contains("# Failed listening") || logged.contains("Address already in use") {
                bail!("redis-server could not listen on port {port}:\n{logged}");
            }
            if Instant::now() >= deadline {
                bail!(
                    "redis-server did not accept connections on 127.0.0.1:{port} within 30s; its log ({}):\n{logged}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`: what the Redis endpoint tag stands for locally.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate (`REDIS_CA_FILE`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Stops it (SIGTERM, then SIGKILL) if it still runs.
    pub fn stop(&self) -> Result<()> {
        if !process_is(self.pid, "redis-server") {
            return Ok(());
        }
        if !signal_and_wait(self.pid, "redis-server", "-TERM", Duration::from_secs(10))
            && !signal_and_wait(self.pid, "redis-server", "-KILL", Duration::from_secs(5))
        {
            bail!(
                "redis-server (pid {}) is still running: stop it with `kill -9 {}`",
                self.pid,
                self.pid
            );
        }
        Ok(())
    }
}

/// A CA, and a certificate for 127.0.0.1 signed by it, made with `openssl`.
fn generate_certificates(dir: &Path) -> Result<()> {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )?;
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "30",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=realtime-stack-local-ca",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            "redis.crt",
            "-extfile",
            "ext.cnf",
        ],
    ];
    for args in steps {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("openssl not found: apt-get install openssl")?;
        if !output.status.success() {
            bail!(
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(())
}
