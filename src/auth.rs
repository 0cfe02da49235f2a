//! Tokens: HS256 JWT signing and checking, and what is revoked: token ids,
//! and users whose tokens issued up to a second are all refused.
//!
//! Pure functions plus a [`Revocations`] handle shared by reactors (read on
//! upgrade and by the revocation sweep). Knows nothing of sockets.

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

/// The claims chinwag reads and writes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the epoch (required).
    pub exp: u64,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// May call the admin HTTP endpoints.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// Token id, for revocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Issued at, seconds since the epoch (a token without it counts as
    /// issued before any revocation of its user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// One revocation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Revocation {
    /// The token with this id.
    Token(String),
    /// Every token of `user` issued at or before second `before`.
    User { user: String, before: u64 },
}

/// Signs and checks tokens with one shared secret.
#[derive(Clone)]
pub struct Keys {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Keys for `secret`.
    pub fn new(secret: &[u8]) -> Keys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 0;
        validation.validate_nbf = true;
        Keys {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// A signed token for `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        encode(&Header::new(Algorithm::HS256), claims, &self.enc).map_err(|e| e.to_string())
    }

    /// The claims of a valid, unexpired token with a valid user id.
    pub fn verify(&self, token: &str) -> Result<Claims, String> {
        use jsonwebtoken::errors::ErrorKind as K;
        // A sentence for the caller; never the library's internals.
        let data = decode::<Claims>(token, &self.dec, &self.validation).map_err(|e| {
            match e.kind() {
                K::ExpiredSignature => "token expired",
                K::ImmatureSignature => "token not valid yet",
                K::MissingRequiredClaim(_) => "token lacks `sub` or `exp`",
                _ => "invalid token",
            }
            .to_string()
        })?;
        // jsonwebtoken accepts `exp == now`; the reactors close a connection
        // at `exp <= now`, so refuse the same second here too.
        if data.claims.exp <= crate::wire::now_ms() / 1000 {
            return Err("token expired".into());
        }
        if !crate::wire::valid_user(&data.claims.sub) {
            return Err("`sub` is not a valid user id".into());
        }
        if let Some(name) = &data.claims.name {
            let n = name.chars().count();
            if n == 0 || n > 64 || name.chars().any(char::is_control) {
                return Err("`name` must be 1 to 64 characters, none of them control".into());
            }
        }
        Ok(data.claims)
    }
}

#[derive(Debug, Default)]
struct Revoked {
    tokens: HashSet<String>,
    /// User → tokens issued at or before this second are refused.
    users: HashMap<String, u64>,
}

/// What is revoked, with a generation counter so reactors notice changes
/// without locking on every turn.
#[derive(Debug, Default)]
pub struct Revocations {
    set: RwLock<Revoked>,
    generation: AtomicU64,
}

impl Revocations {
    /// A set holding `all`.
    pub fn new(all: impl IntoIterator<Item = Revocation>) -> Arc<Revocations> {
        let r = Revocations::default();
        for v in all {
            r.add(&v);
        }
        Arc::new(r)
    }

    /// Whether a token (`jti`, of `user`, issued at `iat`) is refused.
    pub fn refuses(&self, jti: Option<&str>, user: &str, iat: Option<u64>) -> bool {
        let set = self.set.read();
        jti.is_some_and(|j| set.tokens.contains(j))
            || set.users.get(user).is_some_and(|&before| iat.unwrap_or(0) <= before)
    }

    /// Whether these claims are refused.
    pub fn refuses_claims(&self, c: &Claims) -> bool {
        self.refuses(c.jti.as_deref(), &c.sub, c.iat)
    }

    /// Adds a revocation; bumps the generation if it changes anything.
    pub fn add(&self, r: &Revocation) -> bool {
        let mut set = self.set.write();
        let new = match r {
            Revocation::Token(jti) => set.tokens.insert(jti.clone()),
            Revocation::User { user, before } => {
                if set.users.get(user).is_some_and(|at| at >= before) {
                    false
                } else {
                    set.users.insert(user.clone(), *before);
                    true
                }
            }
        };
        if new {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        new
    }

    /// Changes whenever the set grows.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Parses a TTL such as `90s`, `15m`, `12h` or `30d` into seconds.
pub fn parse_ttl(s: &str) -> Option<u64> {
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let mult = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|&t| t > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims { sub: sub.into(), exp, name: None, admin: false, jti: Some("j1".into()), iat: None }
    }

    #[test]
    fn sign_verify_roundtrip_and_rejections() {
        let k = Keys::new(b"s3cret");
        let exp = crate::wire::now_ms() / 1000 + 60;
        let t = k.sign(&claims("alice", exp)).unwrap();
        assert_eq!(k.verify(&t).unwrap(), claims("alice", exp));
        assert!(Keys::new(b"other").verify(&t).is_err());
        assert!(k.verify(&k.sign(&claims("alice", 1000)).unwrap()).is_err());
        assert!(k.verify(&k.sign(&claims("bad user", exp)).unwrap()).is_err());
        assert!(k.verify("garbage").is_err());
    }

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("90s"), Some(90));
        assert_eq!(parse_ttl("15m"), Some(900));
        assert_eq!(parse_ttl("12h"), Some(43200));
        assert_eq!(parse_ttl("30d"), Some(2_592_000));
        assert_eq!(parse_ttl("0s"), None);
        assert_eq!(parse_ttl("5"), None);
        assert_eq!(parse_ttl(""), None);
        assert_eq!(parse_ttl("xd"), None);
        assert_eq!(parse_ttl("5é"), None);
    }

    #[test]
    fn revocations_bump_generation_once() {
        let r = Revocations::new(vec![Revocation::Token("a".into())]);
        assert!(r.refuses(Some("a"), "u", None));
        let g = r.generation();
        assert!(r.add(&Revocation::Token("b".into())));
        assert!(!r.add(&Revocation::Token("b".into())));
        assert_eq!(r.generation(), g + 1);
    }

    #[test]
    fn a_user_revocation_covers_tokens_issued_up_to_its_second() {
        let r = Revocations::new(vec![]);
        assert!(r.add(&Revocation::User { user: "u".into(), before: 100 }));
        assert!(r.refuses(None, "u", Some(100)));
        assert!(r.refuses(None, "u", None), "a token without iat counts as older");
        assert!(!r.refuses(None, "u", Some(101)));
        assert!(!r.refuses(None, "v", Some(1)));
        assert!(
            !r.add(&Revocation::User { user: "u".into(), before: 50 }),
            "older changes nothing"
        );
    }
}
