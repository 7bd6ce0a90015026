//! Minting HS256 JWTs for agent and service identities.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Sign an already-serialized claims JSON object.
pub fn sign_raw(claims_json: &str, secret: &[u8]) -> String {
    let mut out = String::with_capacity(64 + claims_json.len() * 2);
    out.push_str(&URL_SAFE_NO_PAD.encode(HEADER));
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(claims_json));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(out.as_bytes());
    let sig = mac.finalize().into_bytes();
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(sig));
    out
}

/// A token for identity `sub` with `role`, valid for `ttl_secs` from now.
pub fn mint(secret: &str, sub: &str, role: &str, ttl_secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = serde_json::json!({"sub": sub, "role": role, "exp": now + ttl_secs});
    sign_raw(&claims.to_string(), secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_vector() {
        // The well-known HS256 example token.
        let t = sign_raw(
            r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#,
            b"your-256-bit-secret",
        );
        assert_eq!(
            t,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
    }

    #[test]
    fn mint_has_claims() {
        let t = mint("s", "agent-1", "agent", 60);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "agent-1");
        assert_eq!(claims["role"], "agent");
        assert!(claims["exp"].as_u64().unwrap() > 1_600_000_000);
    }
}
