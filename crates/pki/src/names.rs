//! Which names an agent may have: a host name, never one a client could mistake for something
//! else: the console's own name, `localhost` and its kin, or an IP address written as a name.

use crate::{CONSOLE_NAME, PkiError, check_name};

/// Names that mean "this machine" to a resolver.
const LOOPBACK_NAMES: &[&str] = &[
    "localhost",
    "localhost.localdomain",
    "ip6-localhost",
    "ip6-loopback",
    "broadcasthost",
];

/// [`check_name`], and not reserved: an agent's certificate is for that name, so a name that
/// is also the console's, the local machine's or an address would let it stand in for them.
pub fn check_agent_name(name: &str) -> Result<(), PkiError> {
    check_name(name)?;
    let lower = name.to_ascii_lowercase();
    let lower = lower.trim_end_matches('.');
    let reserved = lower == CONSOLE_NAME
        || LOOPBACK_NAMES.contains(&lower)
        || lower.ends_with(".localhost")
        // `10.1`, `127.0.0.1`, `3232235777`: resolvers read digits and dots as an address.
        || lower.chars().all(|c| c.is_ascii_digit() || c == '.')
        || lower.parse::<std::net::IpAddr>().is_ok();
    if reserved {
        Err(PkiError::Reserved(name.to_string()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_pass_and_reserved_names_do_not() {
        for good in [
            "web1",
            "db-2.example.com",
            "localhost1",
            "my-localhost-box",
            "10-0-0-1",
        ] {
            assert!(check_agent_name(good).is_ok(), "{good}");
        }
        for reserved in [
            "nonstop-console",
            "NONSTOP-CONSOLE",
            "localhost",
            "LocalHost",
            "localhost.",
            "a.localhost",
            "localhost.localdomain",
            "ip6-localhost",
            "127.0.0.1",
            "10.1",
            "3232235777",
        ] {
            assert!(
                matches!(check_agent_name(reserved), Err(PkiError::Reserved(_))),
                "{reserved}"
            );
        }
        assert!(matches!(check_agent_name("a b"), Err(PkiError::BadName(_))));
    }
}
