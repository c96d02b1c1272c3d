//! The `X-Nonstop-Signature` header: `t=<unix seconds>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`,
//! Stripe's scheme, so a receiver can refuse both forged and replayed deliveries.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header's name.
pub const HEADER: &str = "X-Nonstop-Signature";

fn mac(key: &[u8], t: u64, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The header value for `body` sent at `t` (unix seconds).
pub fn signature(key: &[u8], t: u64, body: &[u8]) -> String {
    format!("t={t},v1={}", hex(&mac(key, t, body)))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the header is not `t=<seconds>,v1=<hex>`")]
    Malformed,
    #[error("the timestamp is {0} s away from now (replayed or clock skew)")]
    Stale(u64),
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks `header` against `body` as a receiver would: a `v1` that matches and a `t` within
/// `tolerance_secs` of `now` (unix seconds).
pub fn verify(
    key: &[u8],
    header: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), VerifyError> {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1.push(value.to_string()),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if v1.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if now.abs_diff(t) > tolerance_secs {
        return Err(VerifyError::Stale(now.abs_diff(t)));
    }
    let expected = hex(&mac(key, t, body));
    if v1
        .iter()
        .any(|sig| bool::from(sig.as_bytes().ct_eq(expected.as_bytes())))
    {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac_sha256() {
        // From `printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac key`.
        assert_eq!(
            signature(b"key", 1_700_000_000, br#"{"a":1}"#),
            format!("t=1700000000,v1={}", OPENSSL)
        );
    }
    const OPENSSL: &str = "a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03";

    #[test]
    fn verify_refuses_forged_stale_and_malformed() {
        let body = br#"{"event":"started"}"#;
        let header = signature(b"k", 1000, body);
        assert_eq!(verify(b"k", &header, body, 1010, 300), Ok(()));
        assert_eq!(
            verify(b"other", &header, body, 1010, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"k", &header, b"{}", 1010, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(b"k", &header, body, 2000, 300),
            Err(VerifyError::Stale(1000))
        );
        assert_eq!(
            verify(b"k", "v1=00", body, 1000, 300),
            Err(VerifyError::Malformed)
        );
    }
}
