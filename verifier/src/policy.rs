//! Route policy: which authenticated callers may reach which paths.
//!
//! A TOML (or, for a `.yaml`/`.yml` file, YAML) file of rules, first match wins:
//!
//! ```toml
//! [[rule]]
//! prefix = "/admin"            # path prefix, matched on whole segments
//! methods = ["POST", "DELETE"] # optional; absent = every method
//! any_role = ["admin"]         # caller needs at least one of these roles
//! all_scopes = ["users:write"] # and every one of these scopes
//!
//! [[rule]]
//! prefix = "/public"
//! public = true                # no token needed
//! ```
//!
//! ```yaml
//! rule:
//!   - prefix: /admin
//!     methods: [POST, DELETE]
//!     any_role: [admin]
//!   - prefix: /public
//!     public: true
//! ```
//!
//! A path that matches no rule needs only a valid token. Checking a rule walks the
//! token's `roles` and `scope` in place: it allocates nothing. Paths that are not
//! normalized (`//`, `.` or `..` segments, encoded `/`, `.` or `\`) are refused when a
//! policy is configured, since the upstream may resolve them to a path the rules do not
//! see; have the proxy normalize paths (Envoy `normalize_path`, `merge_slashes`).

use serde::Deserialize;

use crate::core::Identity;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, rename = "rule", alias = "rules")]
    rules: Vec<Rule>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    prefix: String,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    any_role: Vec<String>,
    #[serde(default)]
    all_scopes: Vec<String>,
    #[serde(default)]
    public: bool,
}

/// What the policy asks of a request before the token is looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// No token needed.
    Public,
    /// A valid token needed; then [`Policy::permits`] decides.
    Token,
    /// Refused outright (path not normalized).
    Deny,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid policy file: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("invalid policy file: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("invalid policy rule: {0}")]
    Rule(String),
}

impl Policy {
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        Self::checked(toml::from_str(text)?)
    }

    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        Self::checked(serde_norway::from_str(text)?)
    }

    fn checked(policy: Policy) -> Result<Self, PolicyError> {
        for rule in &policy.rules {
            if !rule.prefix.starts_with('/') {
                return Err(PolicyError::Rule(format!(
                    "prefix {:?} must start with '/'",
                    rule.prefix
                )));
            }
            if rule.public && (!rule.any_role.is_empty() || !rule.all_scopes.is_empty()) {
                return Err(PolicyError::Rule(format!(
                    "public rule {:?} cannot require roles or scopes",
                    rule.prefix
                )));
            }
        }
        Ok(policy)
    }

    /// YAML for a `.yaml` or `.yml` file, TOML otherwise.
    pub fn from_file(path: &std::path::Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Self::from_yaml(&text),
            _ => Self::from_toml(&text),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn rule_for(&self, path: &str, method: &str) -> Option<&Rule> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        self.rules.iter().find(|r| {
            prefix_matches(&r.prefix, path)
                && (r.methods.is_empty()
                    || r.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
        })
    }

    /// The gate for a request, before any token is read.
    pub fn gate(&self, path: &str, method: &str) -> Gate {
        if self.rules.is_empty() {
            return Gate::Token;
        }
        if !is_normalized(path) {
            return Gate::Deny;
        }
        match self.rule_for(path, method) {
            Some(r) if r.public => Gate::Public,
            _ => Gate::Token,
        }
    }

    /// Whether this caller may make this request.
    pub fn permits(&self, path: &str, method: &str, who: &Identity<'_>) -> bool {
        let Some(rule) = self.rule_for(path, method) else {
            return true;
        };
        let role_ok = rule.any_role.is_empty()
            || who
                .roles()
                .any(|have| rule.any_role.iter().any(|want| have == want));
        let scopes_ok = rule
            .all_scopes
            .iter()
            .all(|want| who.scopes().any(|have| have == want));
        role_ok && scopes_ok
    }
}

/// `/admin` matches `/admin` and `/admin/x`, not `/administrator`. A prefix ending in `/`
/// matches anything below it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn is_normalized(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if !path.starts_with('/') || path.contains("//") || path.contains('\\') {
        return false;
    }
    let lower_has = |needle: &str| {
        path.as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
    };
    if lower_has("%2f") || lower_has("%2e") || lower_has("%5c") {
        return false;
    }
    !path.split('/').any(|seg| seg == "." || seg == "..")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::core::jose::parse_claims;

    fn with_identity(claims: &str, f: impl FnOnce(&Identity<'_>)) {
        let claims = parse_claims(claims.as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        f(&Identity::from_claims(&claims, &mut buf).unwrap());
    }

    const POLICY: &str = r#"
        [[rule]]
        prefix = "/health"
        public = true

        [[rule]]
        prefix = "/admin"
        methods = ["POST"]
        any_role = ["admin"]

        [[rule]]
        prefix = "/users/"
        all_scopes = ["users:read", "users:write"]
    "#;

    #[test]
    fn yaml_reads_as_toml_does() {
        let yaml = Policy::from_yaml(
            "rule:\n  - prefix: /health\n    public: true\n  - prefix: /admin\n    methods: [POST]\n    any_role: [admin]\n  - prefix: /users/\n    all_scopes: [users:read, users:write]\n",
        )
        .unwrap();
        let toml = Policy::from_toml(POLICY).unwrap();
        assert_eq!(format!("{yaml:?}"), format!("{toml:?}"));
        assert!(
            Policy::from_yaml("rule:\n  - prefix: admin\n").is_err(),
            "prefix without /"
        );
        assert!(Policy::from_yaml("rule:\n  - prefix: /a\n    surprise: 1\n").is_err());
        let dir = std::env::temp_dir().join(format!("portcullis-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.yaml");
        std::fs::write(&file, "rules:\n  - prefix: /x\n    public: true\n").unwrap();
        assert_eq!(
            Policy::from_file(&file).unwrap().gate("/x", "GET"),
            Gate::Public
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn rules_match_first_and_on_segments() {
        let p = Policy::from_toml(POLICY).unwrap();
        assert_eq!(p.gate("/health", "GET"), Gate::Public);
        assert_eq!(p.gate("/healthcheck", "GET"), Gate::Token);
        with_identity(
            r#"{"roles":["ops","admin"],"scope":"users:read"}"#,
            |admin| {
                assert!(p.permits("/admin/x", "POST", admin));
                assert!(!p.permits("/users/1", "GET", admin), "needs both scopes");
            },
        );
        with_identity(
            r#"{"roles":["ops"],"scope":"users:read users:write"}"#,
            |ops| {
                assert!(!p.permits("/admin/x", "post", ops));
                assert!(
                    p.permits("/admin/x", "GET", ops),
                    "method not covered by the rule"
                );
                assert!(
                    p.permits("/administrator", "POST", ops),
                    "not a segment match"
                );
                assert!(p.permits("/users/1?x=1", "GET", ops));
            },
        );
        // Escaped role names are compared decoded; a role with a comma is no role at all.
        with_identity(r#"{"roles":["\u0061dmin"]}"#, |admin| {
            assert!(p.permits("/admin/x", "POST", admin));
        });
        with_identity(r#"{"roles":["x,admin"]}"#, |comma| {
            assert!(!p.permits("/admin/x", "POST", comma));
        });
    }

    #[test]
    fn unnormalized_paths_are_denied() {
        let p = Policy::from_toml(POLICY).unwrap();
        for path in [
            "/health/../admin",
            "//admin",
            "/admin/./x",
            "/health%2F..%2Fadmin",
            "/a\\b",
            "admin",
        ] {
            assert_eq!(p.gate(path, "POST"), Gate::Deny, "{path}");
        }
        assert_eq!(
            Policy::default().gate("//anything", "GET"),
            Gate::Token,
            "no policy, no gate"
        );
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(Policy::from_toml("[[rule]]\nprefix = \"admin\"").is_err());
        assert!(Policy::from_toml("[[rule]]\nprefix = \"/a\"\nroles = [\"x\"]").is_err());
        assert!(
            Policy::from_toml("[[rule]]\nprefix = \"/a\"\npublic = true\nany_role = [\"x\"]")
                .is_err()
        );
    }
}
