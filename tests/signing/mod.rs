//! Slack request signing for tests and benches: what Slack itself sends.

use reqwest_free_hmac::{Hmac, Mac};
use sha2::Sha256;

/// Slack's request signature: `v0=` + hex HMAC-SHA256 of `v0:{ts}:{body}`.
pub fn sign(secret: &str, ts: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"v0:");
    mac.update(ts.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}
