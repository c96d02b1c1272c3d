//! `nonstop import modjk FILE`: turns an existing mod_jk `workers.properties` into a service
//! config (nodes, routes, the lb worker) so day one starts from what Apache already runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use nonstop_balancer_modjk::{Activation, ImportError, ImportedLb, import_workers_properties};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print a [services.*] section for the lb worker of a mod_jk workers.properties.
    Modjk(ModjkArgs),
}

#[derive(clap::Args)]
struct ModjkArgs {
    /// The `JkWorkersFile`, e.g. /etc/libapache2-mod-jk/workers.properties.
    file: PathBuf,
    /// The `type=lb` worker to import, when the file defines several.
    #[arg(long)]
    lb: Option<String>,
    /// Name of the service to generate.
    #[arg(long, default_value = "app")]
    service: String,
    /// Drive mod_jk through this status worker URL (loopback) instead of the JkMountFile.
    #[arg(long, value_name = "URL")]
    jkstatus: Option<String>,
    /// The `JkMountFile` nonstop rewrites (the default mode).
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/apache2/uriworkermap.properties"
    )]
    uriworkermap: PathBuf,
    /// The web app's context (its WAR name without `.war`).
    #[arg(long, default_value = "app")]
    context: String,
    /// A member's Tomcat HTTP port, for the health gate: NAME=PORT (repeatable).
    #[arg(long = "http-port", value_name = "NAME=PORT")]
    http_ports: Vec<String>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Modjk(args) => {
            let text = std::fs::read_to_string(&args.file)
                .with_context(|| format!("cannot read {}", args.file.display()))?;
            let lb = import(&text, &args.file, args.lb.as_deref())?;
            let ports = parse_ports(&args.http_ports, &lb)?;
            for warning in warnings(&lb, &ports) {
                eprintln!("warning: {warning}");
            }
            print!("{}", render(&args, &lb, &ports));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The lb worker of `text` (read from `file`); with several and no `lb`, the error names `--lb`.
fn import(text: &str, file: &std::path::Path, lb: Option<&str>) -> anyhow::Result<ImportedLb> {
    let file = file.display();
    import_workers_properties(text, lb).map_err(|e| match e {
        ImportError::AmbiguousLb(names) => anyhow::anyhow!(
            "{file}: several load-balancer workers are defined ({names}); pass --lb NAME to import one"
        ),
        e => anyhow::anyhow!("{file}: {e}"),
    })
}

/// `NAME=PORT` pairs, each NAME a member of `lb`.
fn parse_ports(pairs: &[String], lb: &ImportedLb) -> anyhow::Result<BTreeMap<String, u16>> {
    pairs
        .iter()
        .map(|pair| {
            let (name, port) = pair
                .split_once('=')
                .with_context(|| format!("--http-port `{pair}`: write it as NAME=PORT"))?;
            let port = port
                .parse()
                .with_context(|| format!("--http-port `{pair}`: `{port}` is not a port"))?;
            if !lb.members.iter().any(|m| m.name == name) {
                let names: Vec<&str> = lb.members.iter().map(|m| m.name.as_str()).collect();
                anyhow::bail!(
                    "--http-port `{pair}`: `{name}` is not a member of lb worker `{}` (its members: {})",
                    lb.name,
                    names.join(", ")
                );
            }
            Ok((name.to_string(), port))
        })
        .collect()
}

/// The URL path the context serves under: Tomcat's `ROOT` context serves `/`.
fn context_path(context: &str) -> String {
    match context.trim_matches('/') {
        "ROOT" | "" => "/".into(),
        name => format!("/{name}/"),
    }
}

fn warnings(lb: &ImportedLb, ports: &BTreeMap<String, u16>) -> Vec<String> {
    let mut out = Vec::new();
    if !lb.sticky_session {
        out.push(format!(
            "lb worker `{}` has sticky_session off: sessions move between nodes",
            lb.name
        ));
    }
    for m in &lb.members {
        if !m.has_secret {
            out.push(format!(
                "member `{}` has no AJP `secret`: Tomcat 10 refuses such AJP connections; set one on both sides",
                m.name
            ));
        }
        for shared in &m.also_in {
            out.push(format!(
                "member `{}` is also in lb worker `{}` (line {}{}): nonstop drives `{}` only and refuses to take `{}` out while another lb worker routes to it; give `{}` members of its own",
                m.name,
                shared.lb,
                shared.line,
                if shared.members == 1 { ", its only member" } else { "" },
                lb.name,
                m.name,
                shared.lb
            ));
        }
        if !ports.contains_key(&m.name) {
            out.push(format!(
                "member `{}`: its Tomcat HTTP port is unknown; pass --http-port {}=PORT or edit `port = 0`",
                m.name, m.name
            ));
        }
    }
    out
}

fn render(args: &ModjkArgs, lb: &ImportedLb, ports: &BTreeMap<String, u16>) -> String {
    let s = &args.service;
    let mut out = format!(
        "# Imported by `nonstop import modjk` from {}: lb worker `{}`, {} member(s).\n",
        args.file.display(),
        lb.name,
        lb.members.len()
    );
    let mode = match &args.jkstatus {
        Some(url) => format!(
            "{{ kind = \"jkstatus\", url = {}, user = \"nonstop\", password_file = \"/etc/nonstop/jkstatus.password\" }}",
            quote(url)
        ),
        None => format!(
            "{{ kind = \"uriworkermap\", file = {}, workers_file = {}, reload_secs = 60 }}",
            quote(&args.uriworkermap.display().to_string()),
            quote(&args.file.display().to_string())
        ),
    };
    let _ = writeln!(out, "\n[services.{s}]\nstrategy = \"rolling\"");
    let _ = writeln!(
        out,
        "balancer = {{ kind = \"modjk\", lb_worker = {}, mode = {mode}, probe_url = \"http://127.0.0.1{}\" }}",
        quote(&lb.name),
        context_path(&args.context)
    );
    let bases: Vec<String> = lb
        .members
        .iter()
        .map(|m| format!("{} = \"/srv/tomcat/{}\"", m.name, m.name))
        .collect();
    let _ = writeln!(
        out,
        "runtime = {{ kind = \"tomcat\", context = {}, bases = {{ {} }} }}",
        quote(&args.context),
        bases.join(", ")
    );
    let _ = writeln!(out, "releases = {{ dir = \"/var/lib/nonstop/{s}\" }}");
    let _ = writeln!(
        out,
        "health = {{ path = {} }}",
        quote(&context_path(&args.context))
    );
    let _ = writeln!(
        out,
        "# Sticky sessions stay on a draining node until they end or this passes. Give `runtime`\n\
         # manager_user and manager_password_file (the manager webapp in each base) and a drain\n\
         # ends when Tomcat counts 0 sessions; with session replication (<Cluster> in server.xml)\n\
         # sessions = false ends it at in-flight = 0 (docs/runtimes/tomcat.md)."
    );
    let _ = writeln!(out, "drain = {{ timeout = \"60s\", sessions = true }}");
    for m in &lb.members {
        let activation = match m.activation {
            Activation::Active => "active",
            Activation::Disabled => "disabled",
            Activation::Stopped => "stopped",
        };
        let _ = writeln!(
            out,
            "\n# route {}, AJP {}:{}, lbfactor {}, activation {activation}",
            m.route, m.host, m.port, m.lbfactor
        );
        let _ = writeln!(out, "[[services.{s}.nodes]]\nname = {}", quote(&m.name));
        match ports.get(&m.name) {
            Some(port) => {
                let _ = writeln!(out, "port = {port}");
            }
            None => {
                let _ = writeln!(out, "port = 0 # this Tomcat's HTTP connector port");
            }
        }
    }
    out
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const WORKERS: &str = "worker.list=balancer,jkstatus\n\
        worker.template.type=ajp13\nworker.template.host=127.0.0.1\nworker.template.secret=s\n\
        worker.tomcat1.reference=worker.template\nworker.tomcat1.port=8009\nworker.tomcat1.route=tomcat1\n\
        worker.tomcat2.reference=worker.template\nworker.tomcat2.port=8010\nworker.tomcat2.route=tomcat2\nworker.tomcat2.lbfactor=2\n\
        worker.balancer.type=lb\nworker.balancer.balance_workers=tomcat1,tomcat2\nworker.balancer.sticky_session=true\n\
        worker.jkstatus.type=status\n";

    fn args(dir: &std::path::Path) -> ModjkArgs {
        ModjkArgs {
            file: dir.join("workers.properties"),
            lb: None,
            service: "shop".into(),
            jkstatus: None,
            uriworkermap: dir.join("uriworkermap.properties"),
            context: "app".into(),
            http_ports: vec![],
        }
    }

    #[test]
    fn the_generated_service_loads_and_names_every_member() {
        let dir = tempfile::tempdir().unwrap();
        let lb = import_workers_properties(WORKERS, None).unwrap();
        let ports = parse_ports(&["tomcat1=8080".into(), "tomcat2=8081".into()], &lb).unwrap();
        assert!(
            warnings(&lb, &ports).is_empty(),
            "{:?}",
            warnings(&lb, &ports)
        );
        let text = render(&args(dir.path()), &lb, &ports);
        let source = nonstop_config::Source {
            path: "imported.toml".into(),
            text: text.clone(),
        };
        let config =
            nonstop_config::Config::parse(&source).unwrap_or_else(|e| panic!("{e}\n{text}"));
        nonstop_drivers::check(&config, &source).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let shop = &config.services["shop"];
        let names: Vec<&str> = shop
            .nodes
            .iter()
            .map(|n| n.name.get_ref().as_str())
            .collect();
        assert_eq!(names, ["tomcat1", "tomcat2"]);
        assert!(text.contains("lbfactor 2"), "{text}");
    }

    #[test]
    fn unknown_ports_are_left_for_the_operator_and_refused_until_set() {
        let dir = tempfile::tempdir().unwrap();
        let lb = import_workers_properties(WORKERS, None).unwrap();
        let ports = BTreeMap::new();
        assert_eq!(warnings(&lb, &ports).len(), 2);
        let text = render(&args(dir.path()), &lb, &ports);
        let source = nonstop_config::Source {
            path: "imported.toml".into(),
            text,
        };
        let err = nonstop_config::Config::parse(&source).unwrap_err();
        assert!(err.message.contains("port 0"), "{err}");
    }

    #[test]
    fn unknown_member_ports_are_refused_and_root_serves_slash() {
        let lb = import_workers_properties(WORKERS, None).unwrap();
        let err = parse_ports(&["tomcat3=8080".into()], &lb)
            .unwrap_err()
            .to_string();
        assert!(err.contains("`tomcat3` is not a member"), "{err}");
        assert!(err.contains("tomcat1, tomcat2"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let mut root = args(dir.path());
        root.context = "ROOT".into();
        let text = render(&root, &lb, &BTreeMap::new());
        assert!(text.contains("probe_url = \"http://127.0.0.1/\""), "{text}");
        assert!(text.contains("health = { path = \"/\" }"), "{text}");
        assert!(!text.contains("/ROOT/"), "{text}");
        assert_eq!(context_path("app"), "/app/");
    }

    #[test]
    fn members_shared_with_other_lb_workers_are_warned_about() {
        let shared = format!("{WORKERS}worker.pin1.type=lb\nworker.pin1.balance_workers=tomcat1\n");
        let lb = import(
            &shared,
            std::path::Path::new("w.properties"),
            Some("balancer"),
        )
        .unwrap();
        let ports = parse_ports(&["tomcat1=8080".into(), "tomcat2=8081".into()], &lb).unwrap();
        let warnings = warnings(&lb, &ports);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0]
                .contains("`tomcat1` is also in lb worker `pin1` (line 17, its only member)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn several_lb_workers_name_the_lb_flag() {
        let two = format!("{WORKERS}worker.other.type=lb\nworker.other.balance_workers=tomcat1\n");
        let file = std::path::Path::new("/etc/workers.properties");
        let err = import(&two, file, None).unwrap_err().to_string();
        assert!(err.contains("pass --lb NAME"), "{err}");
        assert!(err.contains("/etc/workers.properties"), "{err}");
        assert_eq!(import(&two, file, Some("other")).unwrap().name, "other");
    }
}
