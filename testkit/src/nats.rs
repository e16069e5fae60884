//! A real `nats-server` on free loopback ports.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::wait::try_wait_for;

/// How long a server gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The `nats-server` binary: on `PATH`, or where Debian's package puts it.
pub fn nats_server_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// The NATS user of edges under [`NatsBuilder::cluster_auth`].
pub const EDGE_USER: &str = "edge";
/// The password of [`EDGE_USER`] under [`NatsBuilder::cluster_auth`].
pub const EDGE_PASSWORD: &str = "edge-test-password";
/// The NATS user of routers under [`NatsBuilder::cluster_auth`].
pub const ROUTER_USER: &str = "router";
/// The password of [`ROUTER_USER`] under [`NatsBuilder::cluster_auth`].
pub const ROUTER_PASSWORD: &str = "router-test-password";

/// The NATS server configuration operators deploy (`deploy/nats/nats.conf`, which includes
/// the permissions of each role from `permissions.conf` beside it).
pub fn deployed_nats_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/nats/nats.conf")
}

/// How to start a [`NatsServer`]: `NatsServer::builder().monitor().start()`.
#[derive(Debug, Default, Clone)]
pub struct NatsBuilder {
    monitor: bool,
    tls: Option<(String, String)>,
    client_ca: Option<String>,
    cluster_auth: bool,
    args: Vec<String>,
}

impl NatsBuilder {
    /// Also opens the HTTP monitoring port (for [`NatsServer::varz`] and [`NatsServer::counts`]).
    pub fn monitor(mut self) -> Self {
        self.monitor = true;
        self
    }

    /// Serves TLS only, with this certificate and key (PEM); clients are not verified.
    pub fn tls(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.tls = Some((cert_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// With [`tls`](Self::tls): requires every client to present a certificate that the CA
    /// `ca_pem` signed (`verify: true`); a client without one is refused.
    pub fn verify_clients(mut self, ca_pem: &str) -> Self {
        self.client_ca = Some(ca_pem.to_owned());
        self
    }

    /// Runs with the deployed configuration, [`deployed_nats_conf`]: only the users
    /// [`EDGE_USER`] and [`ROUTER_USER`] (passwords [`EDGE_PASSWORD`], [`ROUTER_PASSWORD`]),
    /// each with its role's permissions; anyone else is refused.
    pub fn cluster_auth(mut self) -> Self {
        self.cluster_auth = true;
        self
    }

    /// One more command-line argument for `nats-server`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the server, or returns `None` when `nats-server` is not installed outside CI
    /// (after saying so on stderr; in CI that panics).
    pub fn start(self) -> Option<NatsServer> {
        let Some(bin) = nats_server_bin() else {
            return crate::skip("nats-server is not installed (apt-get install nats-server)");
        };
        Some(self.start_with(bin))
    }

    /// Starts the server; panics when `nats-server` is not installed, in CI or not.
    pub fn required(self) -> NatsServer {
        let bin = nats_server_bin().expect("nats-server is not installed (apt-get install nats-server)");
        self.start_with(bin)
    }

    fn start_with(self, bin: PathBuf) -> NatsServer {
        let dir = tempfile::Builder::new().prefix("testkit-nats-").tempdir().expect("temporary directory for nats");
        let mut args = Vec::new();
        if let Some((cert, key)) = &self.tls {
            let write = |name: &str, pem: &str| {
                let path = dir.path().join(name);
                std::fs::write(&path, pem).expect("write TLS file");
                path.to_str().expect("utf-8 temporary path").to_owned()
            };
            args.extend(["--tls".into(), "--tlscert".into(), write("server-cert.pem", cert)]);
            args.extend(["--tlskey".into(), write("server-key.pem", key)]);
            if let Some(ca) = &self.client_ca {
                args.extend(["--tlsverify".into(), "--tlscacert".into(), write("client-ca.pem", ca)]);
            }
        }
        let mut env = Vec::new();
        if self.cluster_auth {
            let conf = deployed_nats_conf();
            assert!(conf.is_file(), "{} missing", conf.display());
            args.extend(["-c".into(), conf.to_str().expect("utf-8 repository path").to_owned()]);
            env.push(("MESSENGER_NATS_EDGE_PASSWORD".to_owned(), EDGE_PASSWORD.to_owned()));
            env.push(("MESSENGER_NATS_ROUTER_PASSWORD".to_owned(), ROUTER_PASSWORD.to_owned()));
        }
        args.extend(self.args);
        let name = format!("testkit-{}-{:08x}", std::process::id(), rand::random::<u32>());
        let mut server = NatsServer { bin, name, port: 0, monitor: None, args, env, dir, child: None };
        // Another process may take a port between our probe and the server's bind.
        for _ in 0..5 {
            server.port = free_port();
            server.monitor = self.monitor.then(free_port);
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => eprintln!("testkit: {e}; trying other ports"),
            }
        }
        panic!("nats-server did not start on any of 5 ports");
    }
}

/// A `nats-server` on a free loopback port (and a monitoring port if asked), killed and its
/// temporary directory removed when dropped.
///
/// Ready means answering as itself: the fixture polls the port until the server's `INFO`
/// carries this fixture's unique server name (and `/varz` does on the monitoring port), so a
/// port some other process grabbed first is never mistaken for this server.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    name: String,
    port: u16,
    monitor: Option<u16>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// A plain server: [`NatsBuilder::start`] with the defaults.
    pub fn start() -> Option<NatsServer> {
        NatsServer::builder().start()
    }

    /// A plain server: [`NatsBuilder::required`] with the defaults.
    pub fn required() -> NatsServer {
        NatsServer::builder().required()
    }

    pub fn builder() -> NatsBuilder {
        NatsBuilder::default()
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The monitoring port, if the builder asked for one.
    pub fn monitor_port(&self) -> Option<u16> {
        self.monitor
    }

    /// The server's temporary directory (its log, TLS files): a place for a test's own files
    /// that goes away with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running (it may have been [`kill`](Self::kill)ed).
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server at once (SIGKILL) and reaps it. [`restart`](Self::restart) brings it
    /// back on the same ports.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (if running) and starts it again on the same ports, returning once it
    /// answers.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn() {
            panic!("nats-server did not come back: {e}");
        }
    }

    /// The monitoring endpoint's `/varz`. Panics without a monitoring port.
    pub fn varz(&self) -> serde_json::Value {
        let port = self.monitor.expect("NatsServer::varz needs NatsServer::builder().monitor()");
        varz(port).unwrap_or_else(|e| panic!("GET /varz on port {port}: {e}"))
    }

    /// (in_msgs, out_msgs) from `/varz`: messages into and out of the server so far.
    pub fn counts(&self) -> (u64, u64) {
        let varz = self.varz();
        let field = |name: &str| varz[name].as_u64().unwrap_or_else(|| panic!("/varz has no {name}: {varz}"));
        (field("in_msgs"), field("out_msgs"))
    }

    /// The server's log so far (stderr), for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats.log"))
            .map_err(|e| format!("nats log file: {e}"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "--name", &self.name]);
        if let Some(monitor) = self.monitor {
            cmd.args(["-m", &monitor.to_string()]);
        }
        let mut child = cmd
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", self.bin.display()))?;
        // `Some(Err)` ends the wait early: the child exited (its port was taken, say).
        let outcome = try_wait_for(START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(format!("exited with {status}")));
            }
            let named = |name: Option<String>| name.as_deref() == Some(self.name.as_str());
            let monitor_ready = |m: u16| named(varz(m).ok().and_then(|v| v["server_name"].as_str().map(str::to_owned)));
            (named(info_name(self.port)) && self.monitor.is_none_or(monitor_ready)).then_some(Ok(()))
        })
        .unwrap_or_else(|_| Err("not answering as itself".to_owned()));
        match outcome {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(why) => {
                let _ = child.kill();
                let status = child.wait();
                Err(format!(
                    "nats-server on port {} not ready within {START_TIMEOUT:?} ({why}; exit: {status:?}); log:\n{}",
                    self.port,
                    self.log()
                ))
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The `server_name` in the `INFO` a NATS server sends first on every connection (in plain
/// text, with TLS too).
fn info_name(port: u16) -> Option<String> {
    let stream = TcpStream::connect_timeout(&loopback(port), Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let info: serde_json::Value = serde_json::from_str(line.strip_prefix("INFO ")?.trim()).ok()?;
    info["server_name"].as_str().map(str::to_owned)
}

fn varz(port: u16) -> Result<serde_json::Value, String> {
    let mut stream = TcpStream::connect_timeout(&loopback(port), Duration::from_secs(1)).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    stream.write_all(b"GET /varz HTTP/1.0\r\nhost: 127.0.0.1\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| e.to_string())?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).ok_or("no HTTP body")?;
    serde_json::from_str(body).map_err(|e| format!("{e}: {body:.200}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_restarts_and_cleans_up() {
        let Some(mut server) = NatsServer::builder().monitor().start() else { return };
        assert_eq!(info_name(server.port()).as_deref(), Some(server.name.as_str()));
        let (in_msgs, _) = server.counts();
        assert_eq!(in_msgs, 0);
        let port = server.port();
        server.restart();
        assert_eq!(server.port(), port);
        assert!(server.is_running());
        let dir = server.dir().to_owned();
        drop(server);
        assert!(!dir.exists(), "temporary directory left behind");
        assert!(TcpStream::connect(loopback(port)).is_err(), "server still running");
    }
}
