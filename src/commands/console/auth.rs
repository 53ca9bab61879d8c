//! Console sign-in: operators with argon2id password hashes from configuration, sessions kept
//! in this process behind an `HttpOnly; SameSite=Strict` cookie, and a CSRF token per session
//! that every action must carry.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};

use crate::config::OperatorSettings;

/// The session cookie's name.
pub(super) const COOKIE: &str = "rw_session";

/// A signed-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Session {
    /// The operator's name (recorded in the audit log).
    pub(super) operator: String,
    /// May look, may not act.
    pub(super) read_only: bool,
    /// The token every form of this session carries.
    pub(super) csrf: String,
}

/// The operators and the live sessions.
#[derive(Debug)]
pub(super) struct Auth {
    operators: Vec<OperatorSettings>,
    ttl: Duration,
    sessions: Mutex<HashMap<String, (Session, Instant)>>,
}

/// An argon2id PHC string for `password`.
pub(super) fn hash_password(password: &str) -> Result<String, String> {
    // 16 random bytes from the OS (through a v4 UUID) make the salt.
    let salt =
        SaltString::encode_b64(uuid::Uuid::new_v4().as_bytes()).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Auth {
    /// Sign-in for `operators`; a session lasts `ttl` without use.
    pub(super) fn new(operators: Vec<OperatorSettings>, ttl: Duration) -> Self {
        Self {
            operators,
            ttl,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Session, Instant)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks a name and password; the new session's cookie token and the session. The same
    /// answer (`None`) for an unknown name and a wrong password, and the same work: a hash is
    /// verified either way.
    pub(super) fn sign_in(&self, name: &str, password: &str) -> Option<(String, Session)> {
        let operator = self.operators.iter().find(|o| o.name == name);
        // An unknown name still costs one verification, so timing does not tell names apart.
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let dummy = DUMMY.get_or_init(|| hash_password("no such operator").unwrap_or_default());
        let hash = operator.map_or(dummy.as_str(), |o| o.password_hash.expose());
        let ok = PasswordHash::new(hash).is_ok_and(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        });
        let operator = operator.filter(|_| ok)?;
        let session = Session {
            operator: operator.name.clone(),
            read_only: operator.read_only,
            csrf: random_token(),
        };
        let token = random_token();
        let mut sessions = self.sessions();
        let now = Instant::now();
        sessions.retain(|_, (_, used)| now.duration_since(*used) < self.ttl);
        sessions.insert(token.clone(), (session.clone(), now));
        Some((token, session))
    }

    /// The session of a cookie token, refreshed; `None` when unknown or expired.
    pub(super) fn session(&self, token: &str) -> Option<Session> {
        let mut sessions = self.sessions();
        let now = Instant::now();
        let (session, used) = sessions.get_mut(token)?;
        if now.duration_since(*used) >= self.ttl {
            sessions.remove(token);
            return None;
        }
        *used = now;
        Some(session.clone())
    }

    /// Ends a session.
    pub(super) fn sign_out(&self, token: &str) {
        self.sessions().remove(token);
    }
}

/// The session token in a `Cookie` header.
pub(super) fn cookie_token(header: Option<&str>) -> Option<&str> {
    header?
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn auth() -> Auth {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        Auth::new(
            vec![OperatorSettings {
                name: "ana".into(),
                password_hash: Secret::new(hash),
                read_only: false,
            }],
            Duration::from_secs(60),
        )
    }

    #[test]
    fn only_the_right_password_signs_in_and_the_session_carries_its_csrf_token() {
        let auth = auth();
        assert!(auth.sign_in("ana", "wrong").is_none());
        assert!(auth.sign_in("bob", "correct horse").is_none());
        let (token, session) = auth.sign_in("ana", "correct horse").unwrap();
        assert_eq!(session.operator, "ana");
        assert_eq!(session.csrf.len(), 64);
        assert_eq!(auth.session(&token), Some(session));
        auth.sign_out(&token);
        assert_eq!(auth.session(&token), None);
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        assert_eq!(cookie_token(Some("a=1; rw_session=abc; b=2")), Some("abc"));
        assert_eq!(cookie_token(Some("a=1")), None);
        assert_eq!(cookie_token(None), None);
    }
}
