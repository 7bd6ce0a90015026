//! Who a session is: JWT verification, anonymous customers and resume tokens.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest identity (`sub`) accepted, in bytes.
const MAX_IDENTITY_BYTES: usize = 256;
/// Clock skew tolerated on `exp`.
const LEEWAY_SECS: u64 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Agent,
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::Service => "service",
        }
    }

    /// The role with its article, for messages: "a customer", "an agent".
    pub fn with_article(self) -> &'static str {
        match self {
            Role::Customer => "a customer",
            Role::Agent => "an agent",
            Role::Service => "a service",
        }
    }

    /// Agents and services staff channels; customers only own engagements.
    pub fn is_staff(self) -> bool {
        matches!(self, Role::Agent | Role::Service)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "customer" => Ok(Role::Customer),
            "agent" => Ok(Role::Agent),
            "service" => Ok(Role::Service),
            _ => Err(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid token: {0}")]
    InvalidToken(String),
    #[error("invalid resume token")]
    InvalidResumeToken,
    #[error("a token is required (anonymous customers are disabled)")]
    TokenRequired,
    #[error("unknown role {0:?}")]
    UnknownRole(String),
}

/// The authenticated party behind a `Connect`.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub identity: String,
    pub role: Role,
    /// Anonymous customers get (and may come back with) a resume token.
    pub anonymous: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
}

pub struct Authenticator {
    client_key: DecodingKey,
    client_signer: EncodingKey,
    resume_key: DecodingKey,
    resume_signer: EncodingKey,
    validation: Validation,
    anonymous_customers: bool,
    resume_ttl: Duration,
}

impl Authenticator {
    /// With no configured secret a random one is made: no outside token can
    /// then verify, but demo tokens and resume tokens still work for the
    /// life of the process.
    ///
    /// `resume_secret` (kept by the store) signs resume tokens so that they
    /// outlive a restart; without one a key derived from the secret is used.
    pub fn new(
        secret: Option<&str>,
        resume_secret: Option<&[u8]>,
        anonymous_customers: bool,
        resume_ttl: Duration,
    ) -> Self {
        let secret: Vec<u8> = match secret {
            Some(s) => s.as_bytes().to_vec(),
            None => rand::random::<[u8; 32]>().to_vec(),
        };
        // Resume tokens are signed with a different key so that one can never
        // pass as a client JWT (or the other way round).
        let resume_secret = match resume_secret {
            Some(stored) => [stored, b"\0switchboard-resume"].concat(),
            None => [secret.as_slice(), b"\0switchboard-resume"].concat(),
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            client_key: DecodingKey::from_secret(&secret),
            client_signer: EncodingKey::from_secret(&secret),
            resume_key: DecodingKey::from_secret(&resume_secret),
            resume_signer: EncodingKey::from_secret(&resume_secret),
            validation,
            anonymous_customers,
            resume_ttl,
        }
    }

    /// Resolves a `Connect`'s `token` / `resumeToken`.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        resume_token: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if let Some(token) = token {
            let claims = jsonwebtoken::decode::<Claims>(token, &self.client_key, &self.validation)
                .map_err(|e| AuthError::InvalidToken(e.to_string()))?
                .claims;
            check_identity(&claims.sub)?;
            let role = claims
                .role
                .parse()
                .map_err(|_| AuthError::UnknownRole(claims.role.clone()))?;
            return Ok(Principal {
                identity: claims.sub,
                role,
                anonymous: false,
            });
        }
        if !self.anonymous_customers {
            return Err(AuthError::TokenRequired);
        }
        if let Some(resume) = resume_token {
            let claims = jsonwebtoken::decode::<Claims>(resume, &self.resume_key, &self.validation)
                .map_err(|_| AuthError::InvalidResumeToken)?
                .claims;
            return Ok(Principal {
                identity: claims.sub,
                role: Role::Customer,
                anonymous: true,
            });
        }
        Ok(Principal {
            identity: format!("anon-{:032x}", rand::random::<u128>()),
            role: Role::Customer,
            anonymous: true,
        })
    }

    /// A token that reconnects an anonymous customer as the same identity.
    pub fn resume_token(&self, identity: &str) -> String {
        self.sign(
            &self.resume_signer,
            identity,
            Role::Customer,
            self.resume_ttl,
        )
    }

    /// A client token signed with the broker's own secret (demo console).
    pub fn client_token(&self, identity: &str, role: Role, ttl: Duration) -> String {
        self.sign(&self.client_signer, identity, role, ttl)
    }

    fn sign(&self, key: &EncodingKey, identity: &str, role: Role, ttl: Duration) -> String {
        let claims = Claims {
            sub: identity.to_owned(),
            role: role.as_str().to_owned(),
            exp: now_secs() + ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            .expect("HS256 signing cannot fail")
    }
}

fn check_identity(sub: &str) -> Result<(), AuthError> {
    if sub.is_empty() || sub.len() > MAX_IDENTITY_BYTES || sub.chars().any(char::is_control) {
        return Err(AuthError::InvalidToken(format!(
            "`sub` must be 1 to {MAX_IDENTITY_BYTES} bytes with no control characters"
        )));
    }
    Ok(())
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    fn auth() -> Authenticator {
        Authenticator::new(Some("s3cret"), None, true, DAY)
    }

    #[test]
    fn valid_tokens_name_identity_and_role() {
        let a = auth();
        let token = a.client_token("alice", Role::Agent, DAY);
        let p = a.authenticate(Some(&token), None).unwrap();
        assert_eq!(p.identity, "alice");
        assert_eq!(p.role, Role::Agent);
        assert!(!p.anonymous);
    }

    #[test]
    fn forged_expired_and_garbage_tokens_are_refused() {
        let a = auth();
        let other = Authenticator::new(Some("other"), None, true, DAY);
        let forged = other.client_token("alice", Role::Agent, DAY);
        assert!(a.authenticate(Some(&forged), None).is_err());
        assert!(a.authenticate(Some("garbage"), None).is_err());
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                role: "agent".into(),
                exp: now_secs() - 3600,
            },
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert!(a.authenticate(Some(&expired), None).is_err());
        let unknown_role = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &Claims {
                sub: "alice".into(),
                role: "admin".into(),
                exp: now_secs() + 3600,
            },
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(
            a.authenticate(Some(&unknown_role), None),
            Err(AuthError::UnknownRole("admin".into()))
        );
    }

    #[test]
    fn resume_tokens_come_back_as_the_same_customer_and_are_not_client_tokens() {
        let a = auth();
        let first = a.authenticate(None, None).unwrap();
        assert!(first.anonymous && first.identity.starts_with("anon-"));
        let resume = a.resume_token(&first.identity);
        let again = a.authenticate(None, Some(&resume)).unwrap();
        assert_eq!(again.identity, first.identity);
        assert!(a.authenticate(Some(&resume), None).is_err());
        assert!(a.authenticate(None, Some("nope")).is_err());
    }

    #[test]
    fn anonymous_can_be_disabled() {
        let a = Authenticator::new(Some("s"), None, false, DAY);
        assert_eq!(a.authenticate(None, None), Err(AuthError::TokenRequired));
    }
}
