//! Finding a Tomcat that nonstop did not start: a JVM whose command line names the node's
//! CATALINA_BASE (`-Dcatalina.base=…`, which catalina.sh always passes), read from /proc.

use std::path::Path;

/// The pid of a running JVM started with `-Dcatalina.base=BASE`, if there is one.
pub(crate) fn tomcat_of_base(base: &Path) -> Option<i32> {
    let wanted = format!("-Dcatalina.base={}", base.display());
    let canonical = base
        .canonicalize()
        .ok()
        .map(|b| format!("-Dcatalina.base={}", b.display()));
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|&b| b == 0)
                .filter_map(|arg| std::str::from_utf8(arg).ok())
                .any(|arg| arg == wanted || Some(arg) == canonical.as_deref())
                .then_some(pid)
        })
}

/// The shutdown port of `base/conf/server.xml`'s `<Server port="…">`, unless it is disabled (-1).
pub(crate) fn shutdown_port(base: &Path) -> Option<u16> {
    let xml = std::fs::read_to_string(base.join("conf/server.xml")).ok()?;
    let server = xml.split("<Server").nth(1)?;
    let tag = &server[..server.find('>')?];
    tag.split("port=\"").nth(1)?.split('"').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_is_found_by_the_base_on_its_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("tomcat1");
        std::fs::create_dir_all(&base).unwrap();
        assert_eq!(tomcat_of_base(&base), None);
        // Any process whose argv carries the flag counts: a shell stands in for the JVM.
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30; :", "sh"])
            .arg(format!("-Dcatalina.base={}", base.display()))
            .spawn()
            .unwrap();
        let found = (0..100).find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tomcat_of_base(&base)
        });
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.is_some(), "not found");
    }

    #[test]
    fn the_shutdown_port_is_read_unless_it_is_disabled() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        let xml = |port: &str| {
            format!(
                "<?xml version=\"1.0\"?>\n<!-- x -->\n<Server port=\"{port}\" shutdown=\"SHUTDOWN\">\n</Server>\n"
            )
        };
        std::fs::write(dir.path().join("conf/server.xml"), xml("8005")).unwrap();
        assert_eq!(shutdown_port(dir.path()), Some(8005));
        std::fs::write(dir.path().join("conf/server.xml"), xml("-1")).unwrap();
        assert_eq!(shutdown_port(dir.path()), None);
    }
}
