//! Hosts as network namespaces for the fleet tests: an enrolled agent identity per host, the
//! agent started inside its namespace, a service placed on hosts, and a deploy through agents.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nonstop_agent::Credentials;
use nonstop_testkit::netns::NetnsVeth;

use super::{Proc, hello_bin, nonstop_bin, wait_until};

pub const AGENT_PORT: u16 = 7443;

/// The console side's fleet credentials and one enrolled identity per host, as
/// `nonstop agent join` leaves them (the join itself over HTTPS is tested with the console).
pub fn enrol(console_state: &Path, agent_state: &Path, name: &str) {
    nonstop_drivers::Fleet::open(console_state).unwrap();
    let pki = console_state.join("pki");
    let authority = nonstop_pki::Authority::open(&pki, "nonstop console").unwrap();
    let request = nonstop_pki::AgentRequest::new(name).unwrap();
    Credentials {
        name: name.to_string(),
        identity: nonstop_pki::Identity {
            cert_pem: authority.sign_agent(&request.csr_pem, name).unwrap(),
            key_pem: request.key_pem,
        },
        ca_pem: authority.cert_pem.clone(),
    }
    .save(agent_state)
    .unwrap();
}

pub struct Host {
    pub ns: NetnsVeth,
    pub state: PathBuf,
    pub agent: Option<Proc>,
}

/// One enrolled host per name, each a fresh network namespace (`{tag}{i}`, `tag` unique to the
/// test), its agent's state under `dir/agent-NAME`, the console's under `console_state`.
pub fn hosts(tag: &str, names: &[&str], dir: &Path, console_state: &Path) -> Vec<Host> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let ns = NetnsVeth::create_free(&format!("{tag}{i}"))
                .unwrap_or_else(|e| panic!("this test needs root and iproute2: {e}"));
            let state = dir.join(format!("agent-{name}"));
            enrol(console_state, &state, name);
            Host {
                ns,
                state,
                agent: None,
            }
        })
        .collect()
}

impl Host {
    pub fn agent_addr(&self) -> String {
        format!("{}:{AGENT_PORT}", self.ns.ns_addr)
    }

    pub async fn start_agent(&mut self, config: &Path) {
        let child = nonstop_testkit::peer::command("ip")
            .args(["netns", "exec", &self.ns.name])
            .arg(nonstop_bin())
            .args(["agent", "run", "--config"])
            .arg(config)
            .arg("--state")
            .arg(&self.state)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.agent = Some(Proc { child });
        let addr = self.agent_addr();
        wait_until(&format!("agent on {addr}"), Duration::from_secs(15), || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_ok() }
        })
        .await;
    }
}

pub fn service_toml(
    name: &str,
    balancer: &str,
    base: &Path,
    nodes: &[(&str, &str, u16)],
) -> String {
    service_toml_with(name, balancer, base, nodes, "", "")
}

/// [`service_toml`] with more keys in the runtime table (`runtime_extra`, e.g. `, env = {..}`)
/// and more lines in the service's table (`extra`, e.g. `hooks = {..}`).
pub fn service_toml_with(
    name: &str,
    balancer: &str,
    base: &Path,
    nodes: &[(&str, &str, u16)],
    runtime_extra: &str,
    extra: &str,
) -> String {
    let mut text = format!(
        r#"
[services.{name}]
strategy = "rolling"
{balancer}
runtime = {{ kind = "process", start = ["{hello}", "--listen", "0.0.0.0:{{port}}", "--version", "{{version}}", "--node", "{{node}}"], stop_grace = "5s"{runtime_extra} }}
releases = {{ dir = "{base}" }}
health = {{ path = "/health", expect_body = "UP", interval = "50ms", deadline = "10s", successes = 2 }}
drain = {{ timeout = "5s" }}
verify = "200ms"
{extra}
"#,
        hello = hello_bin().display(),
        base = base.display()
    );
    for (node, host, port) in nodes {
        text.push_str(&format!(
            "\n[[services.{name}.nodes]]\nname = \"{node}\"\nhost = \"{host}\"\nport = {port}\n"
        ));
    }
    text
}

pub async fn deploy(
    config: &Path,
    fleet: &Path,
    service: &str,
    version: &str,
    artifact: &Path,
) -> std::process::Output {
    deploy_with(config, fleet, service, version, artifact, &[]).await
}

/// [`deploy`] with more arguments (`--env K=V`, `--json`).
pub async fn deploy_with(
    config: &Path,
    fleet: &Path,
    service: &str,
    version: &str,
    artifact: &Path,
    extra: &[&str],
) -> std::process::Output {
    tokio::process::Command::new(nonstop_bin())
        .args(["deploy", service])
        .arg(artifact)
        .args(["--version", version, "--config"])
        .arg(config)
        .arg("--fleet")
        .arg(fleet)
        .args(extra)
        .output()
        .await
        .unwrap()
}
