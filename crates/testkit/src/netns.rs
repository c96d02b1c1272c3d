//! A network namespace joined to the host by a veth pair (`ip netns`, needs CAP_NET_ADMIN):
//! host side `10.213.<x>.1/30`, namespace side `10.213.<x>.2/30`. Programs run inside with
//! `ip netns exec` reach the host only as a non-loopback client. Everything is removed on drop
//! (also when the test panics).

use std::net::Ipv4Addr;
use std::process::Output;

/// The namespace and its veth pair; deleted on drop.
#[derive(Debug)]
pub struct NetnsVeth {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
    created_ns: bool,
    created_link: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = crate::peer::command("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetnsVeth {
    /// Creates namespace `nstest-<tag>` and veth `nsv<tag>h`/`nsv<tag>n` (tag: a few digits,
    /// e.g. the pid, so that parallel runs do not clash) on `10.213.<x>.0/30`.
    pub fn create(tag: &str, x: u8) -> Result<NetnsVeth, String> {
        if tag.is_empty() || tag.len() > 10 || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("netns tag `{tag}` must be 1-10 alphanumerics"));
        }
        let mut ns = NetnsVeth {
            name: format!("nstest-{tag}"),
            host_if: format!("nsv{tag}h"),
            ns_if: format!("nsv{tag}n"),
            host_addr: Ipv4Addr::new(10, 213, x, 1),
            ns_addr: Ipv4Addr::new(10, 213, x, 2),
            created_ns: false,
            created_link: false,
        };
        // The guard exists before the first change, so a failure half-way is cleaned up too.
        ip(&["netns", "add", &ns.name])?;
        ns.created_ns = true;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        ns.created_link = true;
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name])?;
        let host_cidr = format!("{}/30", ns.host_addr);
        let ns_cidr = format!("{}/30", ns.ns_addr);
        ip(&["addr", "add", &host_cidr, "dev", &ns.host_if])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let name = ns.name.clone();
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&["addr", "add", &ns_cidr, "dev", &ns.ns_if])?;
        inside(&["link", "set", &ns.ns_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// [`NetnsVeth::create`] on the first `10.213.<x>.0/30` (from `x = pid % 250 + 1` on) that no
    /// interface of the host uses yet.
    pub fn create_free(tag: &str) -> Result<NetnsVeth, String> {
        // Tests of one process start from the same `x`: pick and create one at a time.
        static PICKING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _picking = PICKING.lock().unwrap_or_else(|e| e.into_inner());
        let out = crate::peer::command("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map_err(|e| format!("cannot run `ip`: {e}"))?;
        let used = String::from_utf8_lossy(&out.stdout).into_owned();
        let start = std::process::id() % 250;
        let x = (0..250)
            .map(|i| ((start + i) % 250 + 1) as u8)
            .find(|x| !used.contains(&format!(" 10.213.{x}.")))
            .ok_or("every 10.213.x.0/30 is in use")?;
        NetnsVeth::create(tag, x)
    }

    /// Routes everything from inside the namespace to the host's end of the veth, so the
    /// namespace reaches every address of the host (no forwarding between namespaces needed).
    pub fn route_via_host(&self) -> Result<(), String> {
        let host = self.host_addr.to_string();
        ip(&[
            "netns", "exec", &self.name, "ip", "route", "add", "default", "via", &host,
        ])
    }

    /// Runs `argv` inside the namespace (`ip netns exec <name> argv...`).
    pub fn exec(&self, argv: &[&str]) -> std::io::Result<Output> {
        crate::peer::command("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
    }

    /// `curl` from inside the namespace: the HTTP status code of `url` (0 if no answer).
    pub fn curl_status(&self, url: &str, basic_auth: Option<(&str, &str)>) -> Result<u16, String> {
        let mut argv = vec![
            crate::peer::require("curl").display().to_string(),
            "-s".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "--max-time".into(),
            "5".into(),
            "--noproxy".into(),
            "*".into(),
        ];
        if let Some((user, password)) = basic_auth {
            argv.push("-u".into());
            argv.push(format!("{user}:{password}"));
        }
        argv.push(url.into());
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let out = self
            .exec(&refs)
            .map_err(|e| format!("ip netns exec curl: {e}"))?;
        let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
        code.parse()
            .map_err(|_| format!("curl printed `{code}` ({})", out.status))
    }
}

impl Drop for NetnsVeth {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; deleting the namespace deletes the end inside it.
        if self.created_link {
            let _ = ip(&["link", "del", &self.host_if]);
        }
        if self.created_ns {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}
