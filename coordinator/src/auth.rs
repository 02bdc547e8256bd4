//! Who may do what. With no API key configured everything is open (fit for loopback only: see
//! [`protect`]); with keys, state-changing client operations need a key and every worker message
//! needs that worker's token.

use crate::error::CoreError;
use subtle::ConstantTimeEq;

/// The configured client API keys. Empty: authentication is off.
#[derive(Clone, Default)]
pub struct Auth {
    api_keys: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        f.debug_struct("Auth")
            .field("api_keys", &self.api_keys.len())
            .finish()
    }
}

impl Auth {
    /// Authentication with these API keys (empty strings are ignored).
    pub fn new(api_keys: impl IntoIterator<Item = String>) -> Self {
        Self {
            api_keys: api_keys
                .into_iter()
                .filter(|k| !k.trim().is_empty())
                .collect(),
        }
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        !self.api_keys.is_empty()
    }

    /// Checks a client's key for a state-changing operation.
    ///
    /// # Errors
    /// [`CoreError::Unauthorized`] when authentication is on and the key is missing or wrong.
    pub fn check_key(&self, key: Option<&str>) -> Result<(), CoreError> {
        if !self.enabled() {
            return Ok(());
        }
        let Some(key) = key else {
            return Err(CoreError::Unauthorized(
                "this operation needs an API key (AIMARKET_API_KEY)".into(),
            ));
        };
        let known = self.api_keys.iter().fold(false, |hit, k| {
            hit | bool::from(k.as_bytes().ct_eq(key.as_bytes()))
        });
        if known {
            Ok(())
        } else {
            Err(CoreError::Unauthorized("unknown API key".into()))
        }
    }
}

/// Why the coordinator refuses to start without keys.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to start without authentication: {exposed} is not a loopback address. \
     Set AIMARKET_API_KEY on the coordinator (and give workers tokens with \
     `aimarket worker token create ID`), or bind NATS and HTTP to 127.0.0.1"
)]
pub struct Unprotected {
    /// What is exposed.
    pub exposed: String,
}

/// Redis-style protected mode: with no API key, serve only when NATS and HTTP are on loopback.
///
/// # Errors
/// [`Unprotected`] naming the first non-loopback endpoint.
pub(crate) fn protect(
    auth: &Auth,
    nats_url: &str,
    http: Option<std::net::SocketAddr>,
) -> Result<(), Unprotected> {
    if auth.enabled() {
        return Ok(());
    }
    for url in nats_url.split(',') {
        if !is_loopback_url(url) {
            return Err(Unprotected {
                exposed: format!("the NATS URL {}", redact(url)),
            });
        }
    }
    if let Some(addr) = http {
        if !addr.ip().is_loopback() {
            return Err(Unprotected {
                exposed: format!("the HTTP address {addr}"),
            });
        }
    }
    Ok(())
}

/// The host of a NATS URL (`nats://user:pass@host:port`), judged loopback or not.
pub(crate) fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim();
    let rest = rest.split_once("://").map_or(rest, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        rest.split([':', '/']).next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        for url in [
            "nats://127.0.0.1:4222",
            "localhost:4222",
            "nats://u:p@127.0.0.1:4222",
            "nats://[::1]:4222",
            "tls://127.0.0.2",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "nats://0.0.0.0:4222",
            "nats://10.0.0.5:4222",
            "nats://nats.example.com",
            "nats://u:p@192.168.1.2:4222",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn protected_mode() {
        let open = Auth::default();
        let local: std::net::SocketAddr = "127.0.0.1:8000".parse().expect("addr");
        let public: std::net::SocketAddr = "0.0.0.0:8000".parse().expect("addr");
        assert!(protect(&open, "nats://127.0.0.1:4222", Some(local)).is_ok());
        let err = protect(&open, "nats://127.0.0.1:4222", Some(public)).expect_err("public http");
        assert!(err.to_string().contains("AIMARKET_API_KEY"), "{err}");
        let err = protect(&open, "nats://u:secret@10.1.1.1:4222", None).expect_err("public nats");
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(protect(
            &Auth::new(["k".to_owned()]),
            "nats://10.1.1.1:4222",
            Some(public)
        )
        .is_ok());
    }

    #[test]
    fn keys() {
        let auth = Auth::new(["k1".to_owned(), "".to_owned(), "k2".to_owned()]);
        assert!(auth.check_key(Some("k2")).is_ok());
        assert!(auth.check_key(Some("k3")).is_err());
        assert!(auth.check_key(None).is_err());
        assert!(
            Auth::new([String::new()]).check_key(None).is_ok(),
            "empty keys are ignored"
        );
        assert!(!format!("{auth:?}").contains("k1"));
    }
}
