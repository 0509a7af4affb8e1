//! Real `np-agent run` processes for integration tests, and the parties they
//! talk to: a partner with its own TLS certificate and signing key whose JWKS
//! is served over mTLS, exactly as a real partner publishes it.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use np_agent::http::{self, Handler, Request, Response};
use np_agent::jose::{Alg, Jwks, SigningKey};
use np_agent::ops::metrics::Metrics;
use np_agent::pki::throwaway::{Ca, Issued, LeafSpec, UziOtherName, write_files};
use np_agent::pki::{self, MinVersion, TlsFiles, TlsMaterial};

/// The binary the helpers start: this build's `np-agent`, or the one
/// `NP_BENCH_AGENT_BIN` names (`bench/run` sets it to its release build).
pub fn agent_bin() -> PathBuf {
    std::env::var_os("NP_BENCH_AGENT_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_np-agent")),
        PathBuf::from,
    )
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    let [port] = free_ports();
    port
}

/// `N` distinct free TCP ports on 127.0.0.1: all bound before any is
/// released, since the kernel may hand a port just released out again to
/// the next `bind` to port 0 (seen once: an agent's listen and admin ports
/// were the same, and it could not start).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [TcpListener; N] = std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

/// The test PKI: one CA for everybody, plus a foreign CA nobody trusts.
pub struct World {
    pub ca: Ca,
    pub foreign: Ca,
}

impl World {
    pub fn new() -> World {
        World {
            ca: Ca::new("np-agent test ca").unwrap(),
            foreign: Ca::new("foreign ca").unwrap(),
        }
    }

    /// A UZI-style server certificate for `localhost` carrying `ura`.
    pub fn uzi_leaf(&self, name: &str, ura: &str) -> Issued {
        self.ca
            .issue(&LeafSpec {
                uzi: Some(UziOtherName::server(ura, "12345678")),
                ..LeafSpec::localhost(name)
            })
            .unwrap()
    }

    /// Writes `issued` with this world's trust bundle into `dir`.
    pub fn files(&self, dir: &Path, issued: &Issued) -> TlsFiles {
        write_files(dir, issued, &[&self.ca]).unwrap()
    }
}

/// Someone the agent under test talks to: TLS identity and signing key.
pub struct Party {
    pub name: String,
    pub ura: String,
    pub tls: TlsFiles,
    pub material: TlsMaterial,
    pub keys: Vec<SigningKey>,
    pub key_pems: Vec<String>,
    /// The serial number of its certificate (for CRLs).
    pub serial: Vec<u8>,
}

impl Party {
    /// A party with a UZI certificate for `ura` and one signing key per `algs`.
    pub fn new(world: &World, dir: &Path, name: &str, ura: &str, algs: &[Alg]) -> Party {
        let issued = world.uzi_leaf(name, ura);
        let tls = world.files(&dir.join(name), &issued);
        let material = TlsMaterial::load(&tls).unwrap();
        let mut keys = Vec::new();
        let mut key_pems = Vec::new();
        for alg in algs {
            let pem = key_pem_for(*alg);
            keys.push(SigningKey::from_pkcs8_pem(&pem, *alg, None).unwrap());
            key_pems.push(pem);
        }
        Party {
            name: name.to_string(),
            ura: ura.to_string(),
            tls,
            material,
            keys,
            key_pems,
            serial: issued.serial.clone(),
        }
    }

    pub fn key(&self, alg: Alg) -> &SigningKey {
        self.keys.iter().find(|k| k.alg() == alg).unwrap()
    }

    /// The PKCS#8 PEM of this party's key for `alg`.
    pub fn pem(&self, alg: Alg) -> &str {
        let i = self.keys.iter().position(|k| k.alg() == alg).unwrap();
        &self.key_pems[i]
    }

    pub fn jwks_json(&self) -> String {
        Jwks::new(self.keys.iter().map(|k| k.public_jwk()).collect())
            .unwrap()
            .to_json()
    }

    /// An HTTPS client presenting this party's certificate.
    pub fn client(&self) -> ureq::Agent {
        let cfg = pki::client_config(&self.material, MinVersion::Tls13).unwrap();
        http::client::agent(cfg, http::client::ClientTimeouts::default())
    }

    /// Serves this party's JWKS at `/jwks` (and discovery) over mTLS.
    pub fn serve_jwks(&self) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Arc::new(JwksHandler {
            jwks: self.jwks_json(),
            base: format!("https://localhost:{}", addr.port()),
        });
        let server_cfg = pki::server_config(&self.material, MinVersion::Tls13).unwrap();
        let server = http::Server::start(
            listener,
            Arc::new(http::TlsSlot::new(server_cfg)),
            handler,
            http::Limits::default(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        JwksServer {
            server: Some(server),
            addr,
        }
    }
}

/// A fresh key, except RSA: generating those is slow, so one RSA key per
/// algorithm per test binary is shared (tests that need distinct RSA keys
/// must not rely on this).
pub fn key_pem_for(alg: Alg) -> String {
    use std::sync::Mutex;
    static RSA: Mutex<BTreeMap<&'static str, String>> = Mutex::new(BTreeMap::new());
    if !alg.is_rsa() {
        return np_agent::jose::generate_pkcs8_pem(alg).unwrap();
    }
    let mut map = RSA.lock().unwrap();
    map.entry(alg.name())
        .or_insert_with(|| np_agent::jose::generate_pkcs8_pem(alg).unwrap())
        .clone()
}

struct JwksHandler {
    jwks: String,
    base: String,
}

impl Handler for JwksHandler {
    fn handle(&self, req: &Request) -> Response {
        match req.path.as_str() {
            "/jwks" => Response::new(200)
                .header("Cache-Control", "max-age=3600")
                .body("application/json", self.jwks.clone()),
            "/fhir/.well-known/smart-configuration" => Response::new(200).body(
                "application/json",
                format!(
                    r#"{{"token_endpoint":"{b}/oauth/token","jwks_uri":"{b}/jwks"}}"#,
                    b = self.base
                ),
            ),
            _ => Response::new(404),
        }
    }
    fn endpoint_label(&self, _path: &str) -> &'static str {
        "test"
    }
    fn error_response(&self, _path: Option<&str>, status: u16, reason: &str) -> Response {
        Response::text(status, reason)
    }
}

/// A partner's JWKS endpoint on loopback.
pub struct JwksServer {
    server: Option<http::Server>,
    pub addr: SocketAddr,
}

impl JwksServer {
    pub fn base(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(100));
        }
    }
}

/// An env file for an agent; the `NP_` keys in order of insertion.
#[derive(Clone, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

impl Env {
    pub fn set(&mut self, k: &str, v: impl Into<String>) -> &mut Env {
        self.vars.insert(k.to_string(), v.into());
        self
    }

    pub fn remove(&mut self, k: &str) -> &mut Env {
        self.vars.remove(k);
        self
    }

    pub fn write(&self, path: &Path) {
        let text: String = self
            .vars
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"\n", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        std::fs::write(path, format!("# written by the test harness\n{text}")).unwrap();
    }
}

/// The configuration of an agent under test, with its own directory.
pub struct AgentSetup {
    pub name: String,
    pub ura: String,
    pub dir: PathBuf,
    pub env: Env,
    pub port: u16,
    pub admin_port: u16,
    pub signing_pem: String,
}

impl AgentSetup {
    /// An agent named `name` with URA `ura` and a UZI certificate, listening
    /// on a free port, signing with ES256, logging at debug.
    pub fn new(world: &World, root: &Path, name: &str, ura: &str) -> AgentSetup {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let issued = world.uzi_leaf(name, ura);
        let tls = world.files(&dir.join("tls"), &issued);
        let signing_pem = key_pem_for(Alg::Es256);
        let signing = dir.join("signing.pem");
        np_agent::util::durable::write_atomic(&signing, signing_pem.as_bytes()).unwrap();
        let [port, admin_port] = free_ports();
        let mut env = Env::default();
        env.set("NP_LISTEN", format!("127.0.0.1:{port}"))
            .set("NP_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .set("NP_PUBLIC_URL", format!("https://localhost:{port}"))
            .set("NP_TLS_CERT", tls.cert.display().to_string())
            .set("NP_TLS_KEY", tls.key.display().to_string())
            .set("NP_TLS_TRUST", tls.trust.display().to_string())
            .set("NP_SIGNING_KEY", signing.display().to_string())
            .set("NP_SIGNING_ALG", "ES256")
            .set("NP_ORG_URA", ura)
            .set("NP_ORG_NAME", name)
            .set("NP_STATE_DIR", dir.join("state").display().to_string())
            .set("NP_OUTBOX", dir.join("outbox").display().to_string())
            .set("NP_INBOX", dir.join("inbox").display().to_string())
            .set("NP_LOG", "debug");
        AgentSetup {
            name: name.to_string(),
            ura: ura.to_string(),
            dir,
            env,
            port,
            admin_port,
            signing_pem,
        }
    }

    /// Adds `name` to `NP_PARTNERS`.
    fn list_partner(&mut self, name: &str) {
        let mut names: Vec<String> = self
            .env
            .vars
            .get("NP_PARTNERS")
            .map(|s| s.split(',').map(String::from).collect())
            .unwrap_or_default();
        names.push(name.to_string());
        self.env.set("NP_PARTNERS", names.join(","));
    }

    /// Adds a zorgviewer partner whose JWKS is served by `jwks`: its
    /// certificate (`ura:` of the party), client id `<name>-client` (the
    /// `iss` and `sub` of its client assertions) and JWKS URL. Consent and
    /// the other zorgviewer keys keep their defaults.
    pub fn add_zorgviewer(&mut self, party: &Party, jwks: &JwksServer) {
        self.add_zorgviewer_at(party, &format!("{}/jwks", jwks.base()));
    }

    /// [`Self::add_zorgviewer`] with the JWKS at any URL.
    pub fn add_zorgviewer_at(&mut self, party: &Party, jwks_url: &str) {
        self.list_partner(&party.name);
        let k = |f: &str| format!("NP_PARTNER_{}_{f}", party.name.to_ascii_uppercase());
        self.env
            .set(&k("KIND"), "zorgviewer")
            .set(&k("CERT"), format!("ura:{}", party.ura))
            .set(&k("CLIENT_ID"), format!("{}-client", party.name))
            .set(&k("JWKS_URL"), jwks_url)
            // Hospitals, as the closed question names them (needed once a
            // Mitz partner has a URL; harmless otherwise).
            .set(&k("REQUESTER_CATEGORY"), "V4");
    }

    /// Adds a mitz partner (a notification broker): its certificate only.
    pub fn add_mitz(&mut self, party: &Party) {
        self.list_partner(&party.name);
        let k = |f: &str| format!("NP_PARTNER_{}_{f}", party.name.to_ascii_uppercase());
        self.env
            .set(&k("KIND"), "mitz")
            .set(&k("CERT"), format!("ura:{}", party.ura));
    }

    /// Adds a twiin partner whose JWKS is served by `jwks`.
    pub fn add_partner(&mut self, party: &Party, jwks: &JwksServer) {
        let upper = party.name.to_ascii_uppercase();
        self.list_partner(&party.name);
        let k = |f: &str| format!("NP_PARTNER_{upper}_{f}");
        self.env
            .set(&k("FHIR_BASE"), format!("{}/fhir", jwks.base()))
            .set(&k("JWKS_URL"), format!("{}/jwks", jwks.base()))
            .set(&k("ISSUER"), jwks.base())
            .set(&k("CLIENT_ID"), format!("{}-client", party.name))
            .set(&k("ORG"), format!("ura:{}", party.ura))
            .set(&k("CERT"), format!("ura:{}", party.ura));
    }

    /// Hospital A (`hospa`, URA 12345678) and hospital B (`hospb`, URA
    /// 87654321) under `dir`, each the other's twiin partner, polling every
    /// second and logging at `log`.
    pub fn pair(world: &World, dir: &Path, log: &str) -> (AgentSetup, AgentSetup) {
        let mut a = AgentSetup::new(world, dir, "hospa", "12345678");
        let mut b = AgentSetup::new(world, dir, "hospb", "87654321");
        a.add_agent(&b);
        b.add_agent(&a);
        for s in [&mut a, &mut b] {
            s.env.set("NP_POLL_INTERVAL", "1s").set("NP_LOG", log);
        }
        (a, b)
    }

    /// Adds another agent under test as a twiin partner: its FHIR base,
    /// organisation and certificate; issuer, client id, token endpoint and
    /// JWKS come from defaults and discovery, as between two np-agents.
    pub fn add_agent(&mut self, other: &AgentSetup) {
        let upper = other.name.to_ascii_uppercase();
        self.list_partner(&other.name);
        self.env
            .set(&format!("NP_PARTNER_{upper}_FHIR_BASE"), other.url("/fhir"))
            .set(
                &format!("NP_PARTNER_{upper}_ORG"),
                format!("ura:{}", other.ura),
            )
            .set(
                &format!("NP_PARTNER_{upper}_CERT"),
                format!("ura:{}", other.ura),
            );
    }

    pub fn outbox(&self, partner: &str) -> PathBuf {
        self.dir.join("outbox").join(partner)
    }

    pub fn inbox(&self, partner: &str) -> PathBuf {
        self.dir.join("inbox").join(partner)
    }

    pub fn env_file(&self) -> PathBuf {
        self.dir.join("np-agent.env")
    }

    pub fn token_endpoint(&self) -> String {
        format!("https://localhost:{}/oauth/token", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    /// Writes the env file and starts `np-agent run --env-file`, waiting for READY=1.
    pub fn start(&self) -> AgentProcess {
        self.env.write(&self.env_file());
        AgentProcess::spawn(&self.dir, &self.env_file())
    }

    /// Starts the agent without waiting for READY=1 (to kill it while it
    /// recovers its state).
    pub fn start_unwaited(&self) -> AgentProcess {
        self.env.write(&self.env_file());
        AgentProcess::spawn_unwaited(&self.dir, &self.env_file())
    }
}

/// An agent's outgoing side built from its own env and key files, for a
/// test that acts as that agent towards another: its configuration, its
/// token client, an HTTP agent over its TLS client configuration, and the
/// SHA-256 of the certificate it presents.
pub struct AsAgent {
    pub cfg: np_agent::config::Config,
    pub client: np_agent::oauth::client::TokenClient,
    pub http: ureq::Agent,
    pub cert_sha256: [u8; 32],
}

impl AgentSetup {
    /// This agent's outgoing side over its own certificate.
    pub fn as_client(&self) -> AsAgent {
        let cfg = np_agent::config::load(&np_agent::config::Source::File(self.env_file())).unwrap();
        let files = TlsFiles {
            cert: cfg.tls_cert.clone(),
            key: cfg.tls_key.clone(),
            trust: cfg.tls_trust.clone(),
            crl_dir: None,
        };
        self.as_client_over(&files)
    }

    /// This agent's outgoing side presenting the certificate in `tls`.
    pub fn as_client_over(&self, tls: &TlsFiles) -> AsAgent {
        use np_agent::http::client::ClientTimeouts;
        let cfg = np_agent::config::load(&np_agent::config::Source::File(self.env_file())).unwrap();
        let material = TlsMaterial::load(tls).unwrap();
        let cert_sha256 = pki::certificate_sha256(material.chain[0].as_ref());
        let tls = pki::client_config(&material, MinVersion::Tls13).unwrap();
        let key = SigningKey::from_pkcs8_pem(
            &std::fs::read_to_string(&cfg.signing_key).unwrap(),
            Alg::Es256,
            None,
        )
        .unwrap();
        let client = np_agent::oauth::client::TokenClient::new(
            Arc::new(cfg.clone()),
            Arc::new(key),
            Arc::new(np_agent::http::partners::Partners::new(
                tls.clone(),
                ClientTimeouts::default(),
            )),
        );
        AsAgent {
            cfg,
            client,
            http: np_agent::http::client::agent(tls, ClientTimeouts::default()),
            cert_sha256,
        }
    }
}

/// A running `np-agent run` child process.
pub struct AgentProcess {
    child: Option<Child>,
    pub log_path: PathBuf,
    pub pid: u32,
}

impl AgentProcess {
    /// Starts the binary and waits (up to 60 s) for READY=1 on a notify socket.
    pub fn spawn(dir: &Path, env_file: &Path) -> AgentProcess {
        let n = np_agent::util::b64::hex(&np_agent::util::random::bytes::<4>().unwrap());
        let sock_path = dir.join(format!("notify-{n}.sock"));
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let log_path = dir.join(format!("agent-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(agent_bin())
            .arg("run")
            .arg("--env-file")
            .arg(env_file)
            .env("NOTIFY_SOCKET", &sock_path)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        let mut p = AgentProcess {
            child: Some(child),
            log_path,
            pid,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 256];
        loop {
            if let Ok(n) = sock.recv(&mut buf) {
                if buf[..n].windows(7).any(|w| w == b"READY=1") {
                    break;
                }
            }
            if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("np-agent exited before READY=1 ({status}):\n{}", p.log());
            }
            assert!(
                Instant::now() < deadline,
                "no READY=1 within 60 s:\n{}",
                p.log()
            );
        }
        let _ = std::fs::remove_file(&sock_path);
        p
    }

    /// Starts the binary and returns at once (no notify socket).
    pub fn spawn_unwaited(dir: &Path, env_file: &Path) -> AgentProcess {
        let n = np_agent::util::b64::hex(&np_agent::util::random::bytes::<4>().unwrap());
        let log_path = dir.join(format!("agent-{n}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(agent_bin())
            .arg("run")
            .arg("--env-file")
            .arg(env_file)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        AgentProcess {
            child: Some(child),
            log_path,
            pid,
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends a signal with the `kill` command (no unsafe code in tests either).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.pid);
    }

    /// SIGTERM and wait (up to 20 s) for the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait(Duration::from_secs(20))
    }

    /// SIGKILL, like a power cut for the process.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Resident memory in KiB from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn wait(&mut self, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("np-agent did not stop within {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
