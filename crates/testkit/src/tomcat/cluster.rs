//! Tomcat session replication for test bases: a `<Cluster>` (DeltaManager, NIO receiver on
//! loopback, static membership, no multicast) that makes a [`TomcatBase`] a cluster member.

use std::io;

use super::TomcatBase;

/// One member: its Engine `jvmRoute`, the address of its Tribes receiver and its 16-byte id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    pub route: String,
    pub host: String,
    pub port: u16,
    pub unique_id: [u8; 16],
}

/// A statically configured group: every member lists all the others.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub members: Vec<ClusterMember>,
}

impl Cluster {
    /// Members on 127.0.0.1, one per route, each receiver on a [`crate::free_port`].
    pub fn on_loopback(routes: &[&str]) -> io::Result<Cluster> {
        let mut members = Vec::new();
        for (i, route) in routes.iter().enumerate() {
            super::check_token("jvmRoute", route)?;
            let mut unique_id = [0u8; 16];
            unique_id[15] = u8::try_from(i + 1).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "at most 255 cluster members")
            })?;
            members.push(ClusterMember {
                route: route.to_string(),
                host: "127.0.0.1".into(),
                port: crate::free_port(),
                unique_id,
            });
        }
        Ok(Cluster { members })
    }

    /// The `<Cluster>` element for the Engine of member `route`.
    pub fn server_xml(&self, route: &str) -> io::Result<String> {
        let local = self
            .members
            .iter()
            .find(|m| m.route == route)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("`{route}` is not a member of this cluster"),
                )
            })?;
        let others: String = self
            .members
            .iter()
            .filter(|m| m.route != route)
            .map(|m| {
                format!(
                    "            <Member className=\"org.apache.catalina.tribes.membership.StaticMember\"\n                    host=\"{}\" port=\"{}\" uniqueId=\"{}\" />\n",
                    m.host,
                    m.port,
                    unique_id(&m.unique_id)
                )
            })
            .collect();
        // autoBind="1": exactly the listed port (Tribes would otherwise move up to 100 ports
        // on, where no other member looks).
        Ok(format!(
            r#"      <Cluster className="org.apache.catalina.ha.tcp.SimpleTcpCluster">
        <Manager className="org.apache.catalina.ha.session.DeltaManager"
                 expireSessionsOnShutdown="false" notifyListenersOnReplication="true" />
        <Channel className="org.apache.catalina.tribes.group.GroupChannel">
          <Membership className="org.apache.catalina.tribes.membership.StaticMembershipService">
            <LocalMember className="org.apache.catalina.tribes.membership.StaticMember"
                         uniqueId="{local_id}" />
{others}          </Membership>
          <Receiver className="org.apache.catalina.tribes.transport.nio.NioReceiver"
                    address="{host}" port="{port}" autoBind="1" />
          <Sender className="org.apache.catalina.tribes.transport.ReplicationTransmitter">
            <Transport className="org.apache.catalina.tribes.transport.nio.PooledParallelSender" />
          </Sender>
          <Interceptor className="org.apache.catalina.tribes.group.interceptors.TcpFailureDetector" />
          <Interceptor className="org.apache.catalina.tribes.group.interceptors.MessageDispatchInterceptor" />
        </Channel>
        <Valve className="org.apache.catalina.ha.tcp.ReplicationValve" filter="" />
        <Valve className="org.apache.catalina.ha.session.JvmRouteBinderValve" />
        <ClusterListener className="org.apache.catalina.ha.session.ClusterSessionListener" />
      </Cluster>
"#,
            local_id = unique_id(&local.unique_id),
            host = local.host,
            port = local.port,
        ))
    }
}

/// Tribes' `{b0,b1,...,b15}` form.
fn unique_id(bytes: &[u8; 16]) -> String {
    let parts: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("{{{}}}", parts.join(","))
}

impl TomcatBase {
    /// Makes this base the member of `cluster` named by its `jvmRoute`: the `<Cluster>` goes into
    /// its `<Engine>`, and `conf/context.xml` loses its `<Manager>` (a context's own manager
    /// would replace the cluster's DeltaManager). The app must be `<distributable/>`.
    pub fn join_cluster(&self, cluster: &Cluster) -> io::Result<()> {
        let element = cluster.server_xml(&self.jvm_route)?;
        let path = self.dir.join("conf/server.xml");
        let xml = std::fs::read_to_string(&path)?;
        let host = "      <Host name=\"localhost\"";
        if xml.contains("<Cluster") || !xml.contains(host) {
            return Err(io::Error::other(format!(
                "{} is not a testkit server.xml without a <Cluster>",
                path.display()
            )));
        }
        std::fs::write(&path, xml.replacen(host, &format!("{element}{host}"), 1))?;
        std::fs::write(
            self.dir.join("conf/context.xml"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- clustered: sessions live in the Cluster's DeltaManager -->\n<Context />\n",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(route: &str, port: u16, last: u8) -> ClusterMember {
        let mut unique_id = [0u8; 16];
        unique_id[15] = last;
        ClusterMember {
            route: route.into(),
            host: "127.0.0.1".into(),
            port,
            unique_id,
        }
    }

    #[test]
    fn each_member_lists_the_others_and_itself_as_local() {
        let cluster = Cluster {
            members: vec![member("t1", 4001, 1), member("t2", 4002, 2)],
        };
        let xml = cluster.server_xml("t1").unwrap();
        assert!(
            xml.contains(r#"uniqueId="{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,1}" />"#),
            "{xml}"
        );
        assert!(
            xml.contains(
                r#"host="127.0.0.1" port="4002" uniqueId="{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,2}""#
            ),
            "{xml}"
        );
        assert!(xml.contains(r#"address="127.0.0.1" port="4001""#), "{xml}");
        assert!(
            !xml.contains("port=\"4001\" uniqueId"),
            "not its own Member: {xml}"
        );
        assert!(!xml.contains("McastService"), "{xml}");
        assert!(cluster.server_xml("t3").is_err());
    }
}
