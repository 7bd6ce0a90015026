//! Who a session is: JWT verification, anonymous customers and resume tokens.
//!
//! Client tokens are verified with exactly one algorithm, chosen by the
//! operator (`[jwt] algorithm`): HS256 with the shared `jwt_secret`, or
//! RS256 / ES256 with a configured public key. The token's own `alg` header
//! is never trusted to pick the key: a token whose `alg` differs from the
//! configured one (`none`, or HS256 signed with the public key as its
//! secret: "algorithm confusion") is refused.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Longest identity (`sub`) accepted, in bytes.
pub(crate) const MAX_IDENTITY_BYTES: usize = 256;
/// Clock skew tolerated on `exp` and `nbf` unless `[jwt] leeway_secs` says.
const LEEWAY_SECS: u64 = 30;

/// `[jwt]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// `HS256` (with `jwt_secret`), `RS256` or `ES256` (with a public key).
    pub algorithm: String,
    /// PEM public key for RS256 / ES256 (`-----BEGIN PUBLIC KEY-----`).
    pub public_key_file: Option<String>,
    /// The same PEM inline, instead of a file.
    pub public_key: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            algorithm: "HS256".into(),
            public_key_file: None,
            public_key: None,
            leeway_secs: LEEWAY_SECS,
            issuer: None,
            audience: None,
        }
    }
}

impl JwtConfig {
    fn algorithm(&self) -> Result<Algorithm, String> {
        match self.algorithm.as_str() {
            "HS256" => Ok(Algorithm::HS256),
            "RS256" => Ok(Algorithm::RS256),
            "ES256" => Ok(Algorithm::ES256),
            other => Err(format!(
                "algorithm {other:?} is not supported: use HS256, RS256 or ES256"
            )),
        }
    }

    /// The key client tokens are verified with; `None` for HS256.
    fn public_key(&self, algorithm: Algorithm) -> Result<Option<DecodingKey>, String> {
        let pem = match (&self.public_key, &self.public_key_file) {
            (Some(_), Some(_)) => return Err("set public_key or public_key_file, not both".into()),
            (Some(pem), None) => pem.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read public_key_file {path}: {e}"))?,
            (None, None) if algorithm == Algorithm::HS256 => return Ok(None),
            (None, None) => {
                return Err(format!(
                    "{} needs public_key_file (or public_key)",
                    self.algorithm
                ))
            }
        };
        let key = match algorithm {
            Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()),
            Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()),
            _ => return Err("HS256 uses jwt_secret, not a public key".into()),
        };
        key.map(Some)
            .map_err(|e| format!("public key is not a {} PEM key: {e}", self.algorithm))
    }
}

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
    /// The client is told only "invalid token": the parser's own words
    /// (`detail`) help an attacker probe, so they go to the log.
    #[error("invalid token")]
    InvalidToken { detail: String },
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    /// Safe to show: it is about the claims the client itself chose.
    #[error("invalid token: {0}")]
    BadClaims(String),
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
    /// `None` when client tokens are asymmetric: the broker holds no private
    /// key, so it cannot mint them (no demo tokens then).
    client_signer: Option<EncodingKey>,
    /// Client-token validation (the configured algorithm only).
    resume_key: DecodingKey,
    resume_signer: EncodingKey,
    validation: Validation,
    /// Resume tokens: always HS256 with the derived key.
    resume_validation: Validation,
    leeway: u64,
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
        Self::with_jwt(
            secret,
            resume_secret,
            &JwtConfig::default(),
            anonymous_customers,
            resume_ttl,
        )
        .expect("the default [jwt] needs no key")
    }

    /// The authenticator a configuration describes.
    pub fn from_config(
        config: &crate::config::Config,
        resume_secret: Option<&[u8]>,
    ) -> Result<Self, String> {
        Self::with_jwt(
            config.jwt_secret.as_deref(),
            resume_secret,
            &config.jwt,
            config.anonymous_customers,
            Duration::from_secs(config.identities.resume_ttl_secs),
        )
    }

    pub fn with_jwt(
        secret: Option<&str>,
        resume_secret: Option<&[u8]>,
        jwt: &JwtConfig,
        anonymous_customers: bool,
        resume_ttl: Duration,
    ) -> Result<Self, String> {
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
        let algorithm = jwt.algorithm()?;
        let (client_key, client_signer) = match jwt.public_key(algorithm)? {
            Some(public) => (public, None),
            None => (
                DecodingKey::from_secret(&secret),
                Some(EncodingKey::from_secret(&secret)),
            ),
        };
        // `Validation::new` accepts exactly the one algorithm: a token whose
        // header names another (or `none`) fails before any key is used.
        let mut validation = Validation::new(algorithm);
        validation.leeway = jwt.leeway_secs;
        validation.validate_nbf = true;
        validation.validate_aud = jwt.audience.is_some();
        if let Some(aud) = &jwt.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &jwt.issuer {
            validation.set_issuer(&[iss]);
        }
        validation.set_required_spec_claims(&["exp", "sub"]);
        let mut resume_validation = Validation::new(Algorithm::HS256);
        resume_validation.leeway = jwt.leeway_secs;
        resume_validation.validate_aud = false;
        resume_validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Authenticator {
            client_key,
            client_signer,
            resume_key: DecodingKey::from_secret(&resume_secret),
            resume_signer: EncodingKey::from_secret(&resume_secret),
            validation,
            resume_validation,
            leeway: jwt.leeway_secs,
            anonymous_customers,
            resume_ttl,
        })
    }

    /// Whether the broker can mint client tokens itself (HS256 only).
    pub fn can_mint_client_tokens(&self) -> bool {
        self.client_signer.is_some()
    }

    /// Resolves a `Connect`'s `token` / `resumeToken`.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        resume_token: Option<&str>,
    ) -> Result<Principal, AuthError> {
        self.authenticate_until(token, resume_token)
            .map(|(principal, _)| principal)
    }

    /// As [`Self::authenticate`], with the moment (Unix seconds) the session
    /// must end because its client token no longer verifies: `exp` plus the
    /// leeway. `None` for anonymous customers, who have no client token.
    pub fn authenticate_until(
        &self,
        token: Option<&str>,
        resume_token: Option<&str>,
    ) -> Result<(Principal, Option<u64>), AuthError> {
        if let Some(token) = token {
            let claims = jsonwebtoken::decode::<Claims>(token, &self.client_key, &self.validation)
                .map_err(|e| match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                    _ => AuthError::InvalidToken {
                        detail: e.to_string(),
                    },
                })?
                .claims;
            check_identity(&claims.sub)?;
            let role = claims
                .role
                .parse()
                .map_err(|_| AuthError::UnknownRole(claims.role.clone()))?;
            let principal = Principal {
                identity: claims.sub,
                role,
                anonymous: false,
            };
            return Ok((principal, Some(claims.exp.saturating_add(self.leeway))));
        }
        if !self.anonymous_customers {
            return Err(AuthError::TokenRequired);
        }
        if let Some(resume) = resume_token {
            let claims =
                jsonwebtoken::decode::<Claims>(resume, &self.resume_key, &self.resume_validation)
                    .map_err(|_| AuthError::InvalidResumeToken)?
                    .claims;
            return Ok((
                Principal {
                    identity: claims.sub,
                    role: Role::Customer,
                    anonymous: true,
                },
                None,
            ));
        }
        Ok((
            Principal {
                identity: format!("anon-{}", crate::ids::new_id()),
                role: Role::Customer,
                anonymous: true,
            },
            None,
        ))
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
    /// Panics when client tokens are asymmetric (see
    /// [`Self::can_mint_client_tokens`]).
    pub fn client_token(&self, identity: &str, role: Role, ttl: Duration) -> String {
        let signer = self
            .client_signer
            .as_ref()
            .expect("client tokens are minted only with HS256");
        self.sign(signer, identity, role, ttl)
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
        return Err(AuthError::BadClaims(format!(
            "`sub` must be 1 to {MAX_IDENTITY_BYTES} bytes with no control characters"
        )));
    }
    Ok(())
}

pub(crate) fn now_secs() -> u64 {
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

    fn signed(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
    }

    fn asymmetric(alg: &str, public_pem: &str) -> Authenticator {
        let jwt = JwtConfig {
            algorithm: alg.into(),
            public_key: Some(public_pem.into()),
            ..JwtConfig::default()
        };
        Authenticator::with_jwt(Some("s3cret"), None, &jwt, true, DAY).unwrap()
    }

    const RS_PRIVATE: &str = include_str!("../tests/fixtures/jwt-rs256.key.pem");
    const RS_PUBLIC: &str = include_str!("../tests/fixtures/jwt-rs256.pub.pem");
    const ES_PRIVATE: &str = include_str!("../tests/fixtures/jwt-es256.key.pem");
    const ES_PUBLIC: &str = include_str!("../tests/fixtures/jwt-es256.pub.pem");

    #[test]
    fn rs256_and_es256_verify_with_the_public_key_only() {
        let exp = now_secs() + 60;
        let claims = serde_json::json!({"sub": "ada", "role": "agent", "exp": exp});
        let rs = asymmetric("RS256", RS_PUBLIC);
        let key = EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap();
        let (p, until) = rs
            .authenticate_until(Some(&signed(Algorithm::RS256, &key, claims.clone())), None)
            .unwrap();
        assert_eq!((p.identity.as_str(), p.role), ("ada", Role::Agent));
        // Against the token's own exp: signing with RSA in a debug build can
        // take long enough to cross a second boundary.
        assert_eq!(until, Some(exp + LEEWAY_SECS));
        assert!(!rs.can_mint_client_tokens());

        let es = asymmetric("ES256", ES_PUBLIC);
        let key = EncodingKey::from_ec_pem(ES_PRIVATE.as_bytes()).unwrap();
        let token = signed(Algorithm::ES256, &key, claims.clone());
        assert!(es.authenticate(Some(&token), None).is_ok());
        // An ES256 token is not an RS256 one.
        assert!(rs.authenticate(Some(&token), None).is_err());
        // Resume tokens still work (HS256 with the derived key).
        let anon = es.authenticate(None, None).unwrap();
        let resume = es.resume_token(&anon.identity);
        assert!(es.authenticate(None, Some(&resume)).is_ok());
    }

    #[test]
    fn alg_none_and_algorithm_confusion_are_refused() {
        let claims = serde_json::json!({"sub": "ada", "role": "agent", "exp": now_secs() + 60});
        let b64 = |v: &serde_json::Value| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let none = format!(
            "{}.{}.",
            b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        );
        let hs = auth();
        assert!(hs.authenticate(Some(&none), None).is_err());
        let rs = asymmetric("RS256", RS_PUBLIC);
        assert!(rs.authenticate(Some(&none), None).is_err());
        // HS256 signed with the RSA public key as the HMAC secret.
        let confused = signed(
            Algorithm::HS256,
            &EncodingKey::from_secret(RS_PUBLIC.as_bytes()),
            claims.clone(),
        );
        assert!(rs.authenticate(Some(&confused), None).is_err());
        // And an HS256 broker refuses an RS256 token outright.
        let key = EncodingKey::from_rsa_pem(RS_PRIVATE.as_bytes()).unwrap();
        let rs_token = signed(Algorithm::RS256, &key, claims);
        assert!(hs.authenticate(Some(&rs_token), None).is_err());
    }

    #[test]
    fn nbf_is_honoured_with_the_leeway() {
        let a = auth();
        let key = EncodingKey::from_secret(b"s3cret");
        let soon = signed(
            Algorithm::HS256,
            &key,
            serde_json::json!({"sub": "a", "role": "agent", "exp": now_secs() + 3600, "nbf": now_secs() + 10}),
        );
        assert!(a.authenticate(Some(&soon), None).is_ok(), "within leeway");
        let later = signed(
            Algorithm::HS256,
            &key,
            serde_json::json!({"sub": "a", "role": "agent", "exp": now_secs() + 3600, "nbf": now_secs() + 600}),
        );
        assert!(a.authenticate(Some(&later), None).is_err());
        let no_exp = signed(
            Algorithm::HS256,
            &key,
            serde_json::json!({"sub": "a", "role": "agent"}),
        );
        assert!(a.authenticate(Some(&no_exp), None).is_err());
    }

    #[test]
    fn bad_jwt_configs_are_refused() {
        let jwt = |alg: &str, key: Option<&str>| JwtConfig {
            algorithm: alg.into(),
            public_key: key.map(Into::into),
            ..JwtConfig::default()
        };
        let make = |j: JwtConfig| Authenticator::with_jwt(None, None, &j, true, DAY).err();
        assert!(make(jwt("none", None)).unwrap().contains("not supported"));
        assert!(make(jwt("RS256", None))
            .unwrap()
            .contains("public_key_file"));
        assert!(make(jwt("RS256", Some("garbage"))).is_some());
        assert!(make(jwt("ES256", Some(RS_PUBLIC))).is_some());
    }

    #[test]
    fn anonymous_can_be_disabled() {
        let a = Authenticator::new(Some("s"), None, false, DAY);
        assert_eq!(a.authenticate(None, None), Err(AuthError::TokenRequired));
    }
}
