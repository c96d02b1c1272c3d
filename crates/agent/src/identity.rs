//! The agent's credentials in its state dir: its key (0600), its certificate, the console's CA
//! and its name, written once by `nonstop agent join` and read at every start.

use std::path::{Path, PathBuf};

use nonstop_pki::Identity;

/// What `join` leaves in `<state>/identity/`.
pub struct Credentials {
    pub name: String,
    pub identity: Identity,
    pub ca_pem: String,
}

fn dir(state: &Path) -> PathBuf {
    state.join("identity")
}

impl Credentials {
    pub fn load(state: &Path) -> Result<Credentials, String> {
        let dir = dir(state);
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file)).map_err(|e| {
                format!(
                    "{}: {e}; enrol this agent first with `nonstop agent join URL --token T --ca-sha256 FP --name NAME --state {}`",
                    dir.join(file).display(),
                    state.display()
                )
            })
        };
        Ok(Credentials {
            name: read("name")?.trim().to_string(),
            identity: Identity {
                cert_pem: read("agent.pem")?,
                key_pem: read("agent.key")?,
            },
            ca_pem: read("ca.pem")?,
        })
    }

    pub fn save(&self, state: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        private_dir(state)?;
        let dir = dir(state);
        private_dir(&dir)?;
        let key = dir.join("agent.key");
        let _ = std::fs::remove_file(&key);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key)?;
        file.write_all(self.identity.key_pem.as_bytes())?;
        file.sync_all()?;
        std::fs::write(dir.join("agent.pem"), &self.identity.cert_pem)?;
        std::fs::write(dir.join("ca.pem"), &self.ca_pem)?;
        std::fs::write(dir.join("name"), format!("{}\n", self.name))
    }
}

/// Makes `dir` (and its parents) and narrows it to mode 0700: it holds the agent's key, its
/// releases and its logs.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
