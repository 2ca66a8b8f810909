//! Authentication: JWT (HS256, RS256, ES256) or, when allowed, anonymous names.
//!
//! The identity a connection acts as comes only from here: the token's `sub` (and `name`), or
//! the `login` header in anonymous mode. Message bodies never choose their sender.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{Config, JwtKey};
use crate::model::{Identity, is_valid_id};

/// Why a credential was refused. Messages are safe to show the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("authentication required: send a bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token subject must be 1-128 characters of [A-Za-z0-9_.-]")]
    BadSubject,
    #[error("login must be 1-128 characters of [A-Za-z0-9_.-]")]
    BadLogin,
    #[error("public key file is neither an RSA nor an EC public key in PEM")]
    BadKey,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

/// The token of an `Authorization` value `Bearer <token>`; `None` for any other scheme.
/// Both the REST API's header and a CONNECT frame's header are read with this.
pub fn bearer_token(value: &str) -> Option<&str> {
    value.strip_prefix("Bearer ")
}

/// Checks tokens and anonymous logins with the configured keys.
pub struct Authenticator {
    key: Option<(DecodingKey, Validation)>,
    allow_anonymous: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("jwt", &self.key.is_some())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl Authenticator {
    pub fn new(config: &Config) -> Result<Authenticator, AuthError> {
        let key = match &config.jwt_key {
            None => None,
            Some(JwtKey::Hs256Secret(secret)) => Some((
                DecodingKey::from_secret(secret.as_bytes()),
                Validation::new(Algorithm::HS256),
            )),
            Some(JwtKey::PublicKeyPem(pem)) => {
                if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                    let mut v = Validation::new(Algorithm::RS256);
                    v.algorithms = vec![Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];
                    Some((k, v))
                } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                    let mut v = Validation::new(Algorithm::ES256);
                    v.algorithms = vec![Algorithm::ES256, Algorithm::ES384];
                    Some((k, v))
                } else {
                    return Err(AuthError::BadKey);
                }
            }
        };
        let key = key.map(|(k, mut v)| {
            v.leeway = 5;
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp", "sub"]);
            match &config.jwt_audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            if let Some(iss) = &config.jwt_issuer {
                v.set_issuer(&[iss]);
            }
            (k, v)
        });
        Ok(Authenticator {
            key,
            allow_anonymous: config.allow_anonymous,
        })
    }

    /// Authenticates a connection or request: a token if one was given, else an anonymous login.
    /// A token that was given is always checked, even when anonymous access is allowed.
    pub fn authenticate(
        &self,
        token: Option<&str>,
        login: Option<&str>,
    ) -> Result<Identity, AuthError> {
        match (token.map(str::trim).filter(|t| !t.is_empty()), &self.key) {
            (Some(token), Some(_)) => self.verify(token),
            (_, _) if self.allow_anonymous => anonymous(login),
            (None, _) => Err(AuthError::Missing),
            (Some(_), None) => Err(AuthError::Invalid("tokens are not accepted here".into())),
        }
    }

    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let Some((key, validation)) = &self.key else {
            return Err(AuthError::Missing);
        };
        use jsonwebtoken::errors::ErrorKind;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("algorithm not accepted".into()),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience".into()),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer".into()),
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::Invalid(format!("missing claim {c}"))
                }
                _ => AuthError::Invalid("malformed token".into()),
            })?;
        let c = data.claims;
        if !is_valid_id(&c.sub) {
            return Err(AuthError::BadSubject);
        }
        let name = c
            .name
            .or(c.preferred_username)
            .unwrap_or_else(|| c.sub.clone());
        Ok(Identity {
            name: clean_name(&name, &c.sub),
            user_id: c.sub,
            rooms: c.rooms,
        })
    }
}

fn anonymous(login: Option<&str>) -> Result<Identity, AuthError> {
    let user_id = match login.map(str::trim).filter(|l| !l.is_empty()) {
        Some(l) if is_valid_id(l) => l.to_owned(),
        Some(_) => return Err(AuthError::BadLogin),
        None => format!("guest-{:06x}", rand::random::<u32>() & 0xff_ffff),
    };
    Ok(Identity {
        name: user_id.clone(),
        user_id,
        rooms: None,
    })
}

/// Display names: at most 64 characters, no control characters; the user id if nothing is left.
fn clean_name(name: &str, fallback: &str) -> String {
    let cleaned: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
    if cleaned.trim().is_empty() {
        fallback.to_owned()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "a-test-secret-of-enough-length";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs_auth(anonymous: bool) -> Authenticator {
        let mut c = Config::for_tests();
        c.jwt_key = Some(JwtKey::Hs256Secret(SECRET.into()));
        c.allow_anonymous = anonymous;
        Authenticator::new(&c).unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn a_bearer_value_gives_its_token_and_other_schemes_none() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("bearer abc"), None);
        assert_eq!(bearer_token("abc"), None);
    }

    #[test]
    fn a_valid_token_gives_its_subject_name_and_rooms() {
        let t = token(
            json!({"sub": "u1", "name": "Ann", "rooms": ["a"], "exp": now() + 60}),
            SECRET,
        );
        let id = hs_auth(false)
            .authenticate(Some(&t), Some("ignored"))
            .unwrap();
        assert_eq!(
            id,
            Identity {
                user_id: "u1".into(),
                name: "Ann".into(),
                rooms: Some(vec!["a".into()])
            }
        );
    }

    #[test]
    fn expired_future_and_badly_signed_tokens_are_refused() {
        let a = hs_auth(false);
        let expired = token(json!({"sub": "u1", "exp": now() - 120}), SECRET);
        assert_eq!(
            a.authenticate(Some(&expired), None),
            Err(AuthError::Expired)
        );
        let early = token(
            json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300}),
            SECRET,
        );
        assert_eq!(
            a.authenticate(Some(&early), None),
            Err(AuthError::NotYetValid)
        );
        let forged = token(
            json!({"sub": "u1", "exp": now() + 60}),
            "another-secret-entirely",
        );
        assert!(matches!(
            a.authenticate(Some(&forged), None),
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(a.authenticate(None, Some("bob")), Err(AuthError::Missing));
        assert!(matches!(
            a.authenticate(Some("not.a.jwt"), None),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = b64(format!(r#"{{"sub":"u1","exp":{}}}"#, now() + 60).as_bytes());
        let t = format!("{header}.{payload}.");
        assert!(matches!(
            hs_auth(false).authenticate(Some(&t), None),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn anonymous_mode_takes_the_login_but_still_checks_a_given_token() {
        let a = hs_auth(true);
        assert_eq!(a.authenticate(None, Some("bob")).unwrap().user_id, "bob");
        assert!(
            a.authenticate(None, None)
                .unwrap()
                .user_id
                .starts_with("guest-")
        );
        assert_eq!(
            a.authenticate(None, Some("bad name!")),
            Err(AuthError::BadLogin)
        );
        let forged = token(
            json!({"sub": "u1", "exp": now() + 60}),
            "another-secret-entirely",
        );
        assert!(a.authenticate(Some(&forged), Some("bob")).is_err());
    }

    #[test]
    fn audience_and_issuer_are_enforced_when_configured() {
        let mut c = Config::for_tests();
        c.jwt_key = Some(JwtKey::Hs256Secret(SECRET.into()));
        c.jwt_audience = Some("chat".into());
        c.jwt_issuer = Some("https://idp".into());
        let a = Authenticator::new(&c).unwrap();
        let good = token(
            json!({"sub": "u", "exp": now() + 60, "aud": "chat", "iss": "https://idp"}),
            SECRET,
        );
        assert!(a.authenticate(Some(&good), None).is_ok());
        let aud = token(
            json!({"sub": "u", "exp": now() + 60, "aud": "other", "iss": "https://idp"}),
            SECRET,
        );
        assert_eq!(
            a.authenticate(Some(&aud), None),
            Err(AuthError::Invalid("wrong audience".into()))
        );
        let iss = token(
            json!({"sub": "u", "exp": now() + 60, "aud": "chat", "iss": "https://evil"}),
            SECRET,
        );
        assert_eq!(
            a.authenticate(Some(&iss), None),
            Err(AuthError::Invalid("wrong issuer".into()))
        );
    }
}
