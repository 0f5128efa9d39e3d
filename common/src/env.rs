//! Where both binaries read their configuration from: a small [`Env`] trait over "get this
//! key", so tests feed a map instead of the process environment, the readings both make of
//! a value (set, required, a number, an address, a list, a flag), and the one error shape
//! a refused setting takes (each `main` prints it on one line and exits with status 64).
//!
//! A variable set to blanks reads as unset everywhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;

/// Where configuration values come from.
pub trait Env {
    fn get(&self, key: &str) -> Option<String>;

    /// The value, trimmed, if it is set and not blank.
    fn set(&self, var: &str) -> Option<String> {
        self.get(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn required(&self, var: &'static str) -> Result<String, ConfigError> {
        self.set(var)
            .ok_or_else(|| ConfigError::new(var, "is required"))
    }

    /// A number, `default` when unset; refused when it does not parse or `valid` says no.
    fn number<T: FromStr>(
        &self,
        var: &'static str,
        default: T,
        valid: impl Fn(&T) -> bool,
    ) -> Result<T, ConfigError> {
        match self.set(var) {
            None => Ok(default),
            Some(v) => {
                v.parse().ok().filter(|n| valid(n)).ok_or_else(|| {
                    ConfigError::new(var, format!("{v:?} is not an accepted number"))
                })
            }
        }
    }

    /// A `host:port` socket address, `default` when unset.
    fn socket_addr(&self, var: &'static str, default: &str) -> Result<SocketAddr, ConfigError> {
        let v = self.set(var).unwrap_or_else(|| default.to_owned());
        v.parse()
            .map_err(|_| ConfigError::new(var, format!("{v:?} is not a host:port socket address")))
    }

    /// A comma-separated list, blanks dropped; empty when unset.
    fn list(&self, var: &str) -> Vec<String> {
        self.get(var)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `true` or `false`, `default` when unset.
    fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.set(var).as_deref() {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(_) => Err(ConfigError::new(var, "must be true or false")),
        }
    }
}

/// `value` if it is an `http://` or `https://` URL.
pub fn http_url(var: &'static str, value: String) -> Result<String, ConfigError> {
    if !(value.starts_with("http://") || value.starts_with("https://")) {
        return Err(ConfigError::new(var, "must be an http:// or https:// URL"));
    }
    Ok(value)
}

/// The process environment.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|v| (*v).to_owned())
    }
}

/// A refused setting: the variable and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(var: &'static str, message: impl Into<String>) -> Self {
        Self {
            var,
            message: message.into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn readings() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("BLANK", "  "),
            ("N", " 42 "),
            ("ADDR", "127.0.0.1:9"),
            ("LIST", " a, ,b ,"),
            ("YES", "true"),
            ("MAYBE", "yes"),
        ]);
        assert_eq!(env.set("BLANK"), None);
        assert_eq!(env.required("BLANK").unwrap_err().var, "BLANK");
        assert_eq!(env.number("N", 1u32, |_| true).unwrap(), 42);
        assert_eq!(env.number("BLANK", 1u32, |_| true).unwrap(), 1);
        assert!(env.number("N", 1u32, |n| *n < 10).is_err());
        assert!(env.number("LIST", 1u32, |_| true).is_err());
        assert_eq!(env.socket_addr("ADDR", "0.0.0.0:1").unwrap().port(), 9);
        assert_eq!(env.socket_addr("UNSET", "0.0.0.0:1").unwrap().port(), 1);
        assert!(env.socket_addr("N", "0.0.0.0:1").is_err());
        assert_eq!(env.list("LIST"), ["a", "b"]);
        assert!(env.list("UNSET").is_empty());
        assert!(env.flag("YES", false).unwrap());
        assert!(!env.flag("UNSET", false).unwrap());
        assert_eq!(env.flag("MAYBE", false).unwrap_err().var, "MAYBE");
        assert!(http_url("U", "ftp://x".into()).is_err());
        assert_eq!(http_url("U", "https://x/".into()).unwrap(), "https://x/");
    }
}
