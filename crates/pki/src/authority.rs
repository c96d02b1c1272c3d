//! The console's CA: created once, key kept 0600 beside the console's database; it signs the
//! console's server certificate and each agent's client certificate from that agent's CSR.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{CONSOLE_NAME, PkiError, check_agent_name};

/// A certificate chain and its private key, both PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("key_pem", &"…").finish()
    }
}

/// What an agent sends to enrol: a CSR whose key never leaves the agent.
pub struct AgentRequest {
    pub csr_pem: String,
    /// Stays on the agent.
    pub key_pem: String,
}

impl AgentRequest {
    pub fn new(agent: &str) -> Result<AgentRequest, PkiError> {
        check_agent_name(agent)?;
        let key = KeyPair::generate()?;
        let csr = CertificateParams::new(vec![agent.to_string()])?.serialize_request(&key)?;
        Ok(AgentRequest {
            csr_pem: csr.pem()?,
            key_pem: key.serialize_pem(),
        })
    }
}

/// The CA of one console.
pub struct Authority {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    pub fn create(console: &str) -> Result<Authority, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("nonstop CA for {console}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads `ca.pem` + `ca.key` from `dir`, creating them (key 0600) on first use.
    pub fn open(dir: &Path, console: &str) -> Result<Authority, PkiError> {
        let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
        let file_err = |path: &Path, e: std::io::Error| PkiError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if !key_path.exists() {
            let authority = Authority::create(console)?;
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
            write_private(&key_path, &authority.issuer.key().serialize_pem())
                .map_err(|e| file_err(&key_path, e))?;
            std::fs::write(&cert_path, &authority.cert_pem).map_err(|e| file_err(&cert_path, e))?;
            return Ok(authority);
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(|e| file_err(&cert_path, e))?;
        let key = KeyPair::from_pem(&key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
        Ok(Authority { cert_pem, issuer })
    }

    /// A server certificate for the console (or an agent's listener) under `names`.
    pub fn issue_server(&self, names: &[String]) -> Result<Identity, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs an agent's CSR for the name the console chose. Only the CSR's public key is used:
    /// names, extensions and CA flags asked for in it are ignored.
    pub fn sign_agent(&self, csr_pem: &str, agent: &str) -> Result<String, PkiError> {
        check_agent_name(agent)?;
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
        let mut params = CertificateParams::new(vec![agent.to_string()])?;
        params.distinguished_name.push(DnType::CommonName, agent);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        Ok(params.signed_by(&csr.public_key, &self.issuer)?.pem())
    }
}

impl Authority {
    /// The console's own client identity towards agents (`console.pem` + `console.key` in
    /// `dir`, key 0600), created on first use. Agents accept requests only from this name.
    pub fn console_identity(&self, dir: &Path) -> Result<Identity, PkiError> {
        let (cert_path, key_path) = (dir.join("console.pem"), dir.join("console.key"));
        let file_err = |path: &Path, e: std::io::Error| PkiError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        if key_path.exists() {
            return Ok(Identity {
                cert_pem: std::fs::read_to_string(&cert_path)
                    .map_err(|e| file_err(&cert_path, e))?,
                key_pem: std::fs::read_to_string(&key_path).map_err(|e| file_err(&key_path, e))?,
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![CONSOLE_NAME.to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, CONSOLE_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert_pem = params.signed_by(&key, &self.issuer)?.pem();
        std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        write_private(&key_path, &key.serialize_pem()).map_err(|e| file_err(&key_path, e))?;
        std::fs::write(&cert_path, &cert_pem).map_err(|e| file_err(&cert_path, e))?;
        Ok(Identity {
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}
