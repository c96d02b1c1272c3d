//! Parsing `show servers state` (admin state, weight, address) and `show stat` (CSV counters:
//! `scur`, `status`, totals) into members; columns are found by their header names.

use nonstop_ports::{LbState, Member, NodeName, Traffic};

/// One line of `show servers state BACKEND`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub op_state: u32,
    /// `srv_admin_state` bitmask.
    pub admin_state: u32,
    /// `srv_uweight`: the weight set by the config or `set weight`.
    pub weight: u32,
}

/// Forced, inherited, resolution and hostname maintenance (0x01, 0x02, 0x20, 0x40); 0x04 only
/// records that the config said `disabled`.
const ADMIN_MAINT: u32 = 0x01 | 0x02 | 0x20 | 0x40;
/// Forced and inherited drain.
const ADMIN_DRAIN: u32 = 0x08 | 0x10;

impl ServerState {
    pub fn lb_state(&self) -> LbState {
        if self.admin_state & ADMIN_MAINT != 0 {
            LbState::Disabled
        } else if self.admin_state & ADMIN_DRAIN != 0 {
            LbState::Draining
        } else {
            LbState::Active
        }
    }
}

/// One server row of `show stat`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerStat {
    pub server: String,
    pub scur: i64,
    pub status: String,
    pub stot: u64,
    pub errors: u64,
    pub ttime_ms: f64,
}

/// Columns of a header line (`# a b c` or `# a,b,c`), by name.
fn columns(header: &str, separator: char) -> Vec<String> {
    header
        .trim_start_matches('#')
        .split(separator)
        .map(|s| s.trim().to_string())
        .collect()
}

fn position(columns: &[String], name: &str, answer: &str) -> Result<usize, String> {
    columns
        .iter()
        .position(|c| c == name)
        .ok_or_else(|| format!("no `{name}` column in: {}", first_line(answer)))
}

fn first_line(answer: &str) -> &str {
    answer.lines().next().unwrap_or("").trim()
}

/// `Err` carries HAProxy's answer when it is not the table (e.g. "Can't find backend.").
pub fn parse_servers_state(answer: &str) -> Result<Vec<ServerState>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let (Some(_version), Some(header)) = (lines.next(), lines.next()) else {
        return Err(answer.trim().to_string());
    };
    if !header.starts_with('#') {
        return Err(answer.trim().to_string());
    }
    let cols = columns(header, ' ');
    let cols: Vec<String> = cols.into_iter().filter(|c| !c.is_empty()).collect();
    let idx = |name| position(&cols, name, answer);
    let (name, addr, port) = (idx("srv_name")?, idx("srv_addr")?, idx("srv_port")?);
    let (op, admin, weight) = (
        idx("srv_op_state")?,
        idx("srv_admin_state")?,
        idx("srv_uweight")?,
    );
    lines
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("");
            Ok(ServerState {
                name: get(name).to_string(),
                addr: get(addr).to_string(),
                port: get(port).parse().unwrap_or(0),
                op_state: get(op).parse().unwrap_or(0),
                admin_state: get(admin).parse().unwrap_or(0),
                weight: get(weight).parse().unwrap_or(0),
            })
        })
        .collect()
}

/// The server rows of `backend` in `show stat`.
pub fn parse_stat(answer: &str, backend: &str) -> Result<Vec<ServerStat>, String> {
    let mut lines = answer.lines().filter(|l| !l.trim().is_empty());
    let header = lines.next().filter(|h| h.starts_with('#'));
    let Some(header) = header else {
        return Err(answer.trim().to_string());
    };
    let cols = columns(header, ',');
    let idx = |name| position(&cols, name, answer);
    let (px, sv, scur, status) = (idx("pxname")?, idx("svname")?, idx("scur")?, idx("status")?);
    let (stot, econ, eresp, h5xx, ttime) = (
        idx("stot")?,
        idx("econ")?,
        idx("eresp")?,
        idx("hrsp_5xx")?,
        idx("ttime")?,
    );
    Ok(lines
        .map(|line| line.split(',').collect::<Vec<&str>>())
        .filter(|f| {
            f.get(px) == Some(&backend) && !matches!(f.get(sv), Some(&"FRONTEND" | &"BACKEND"))
        })
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            ServerStat {
                server: f.get(sv).unwrap_or(&"").to_string(),
                scur: n(scur) as i64,
                status: f.get(status).unwrap_or(&"").to_string(),
                stot: n(stot),
                errors: n(econ) + n(eresp) + n(h5xx),
                ttime_ms: n(ttime) as f64,
            }
        })
        .collect())
}

pub fn member(state: &ServerState, stat: Option<&ServerStat>) -> Member {
    let stat = stat.cloned().unwrap_or_default();
    Member {
        node: NodeName(state.name.clone()),
        addr: format!("{}:{}", state.addr, state.port),
        state: state.lb_state(),
        weight: state.weight,
        in_flight: stat.scur,
        healthy: state.op_state == 2,
        traffic: Traffic {
            requests: stat.stot,
            errors: stat.errors,
            // HAProxy keeps only the mean of the last 1024 sessions (`ttime`): an estimate.
            latency_ms_sum: stat.ttime_ms * stat.stot as f64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 app 1 s1 127.0.0.1 2 0 1 1 1 1 0 2 0 0 0 0 - 8081 - 0 0 - - 0\n\
3 app 2 s2 127.0.0.1 2 12 3 1 0 1 0 0 8 0 0 0 - 8082 - 0 0 - - 0\n\
3 app 3 s3 127.0.0.1 0 5 1 1 1 1 0 0 8 0 0 0 - 1 - 0 0 - - 0\n\n";

    #[test]
    fn reads_admin_states_weights_and_addresses() {
        let states = parse_servers_state(STATE).unwrap();
        let view: Vec<(&str, LbState, u32, String)> = states
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.lb_state(),
                    s.weight,
                    format!("{}:{}", s.addr, s.port),
                )
            })
            .collect();
        assert_eq!(
            view,
            [
                ("s1", LbState::Active, 1, "127.0.0.1:8081".into()),
                ("s2", LbState::Draining, 3, "127.0.0.1:8082".into()),
                ("s3", LbState::Disabled, 1, "127.0.0.1:1".into()),
            ]
        );
        assert!(parse_servers_state("Can't find backend.\n\n").is_err());
    }

    #[test]
    fn reads_current_sessions_of_one_backend() {
        let csv = "# pxname,svname,scur,stot,econ,eresp,status,hrsp_5xx,ttime,\n\
fe,FRONTEND,4,10,,,OPEN,,,\n\
app,s1,3,100,1,2,DRAIN,4,12,\n\
app,BACKEND,3,100,1,2,UP,4,12,\n\
other,s1,9,9,0,0,UP,0,0,\n";
        let stat = parse_stat(csv, "app").unwrap();
        assert_eq!(stat.len(), 1);
        assert_eq!((stat[0].scur, stat[0].errors, stat[0].stot), (3, 7, 100));
        assert_eq!(stat[0].status, "DRAIN");
        assert!(parse_stat("Unknown command.\n", "app").is_err());
    }
}
