//! npm packages for the tests' Node.js scripts (`tests/oidc`, `tests/browser`,
//! `tests/rp`, `tests/dpop`), installed into a cache directory on first use: the one way
//! this crate installs them.
//!
//! Each script directory holds a `package.json` with exact versions and a committed
//! `package-lock.json`; [`installed`] returns a `node_modules` made by `npm ci` from that
//! lock file. The caller links it beside its script (ES modules resolve packages next to
//! the importing file; `NODE_PATH` is ignored for `import`), so editing a script never
//! needs a reinstall, and changing the lock file gets a fresh install of its own.
//!
//! Not a package manager: nothing is upgraded or pruned, and old trees stay in the cache
//! until someone deletes it.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{self, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{ENSURE_DEPS_HINT, cache_dir, find_binary, fnv1a, log_tail, open_log, wait_timeout};

/// How long `npm ci` may take (a cold npm cache downloads ~100 small packages).
const NPM_INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// What `npm ci` installs from; their contents name the cache directory.
const MANIFEST_FILES: [&str; 2] = ["package.json", "package-lock.json"];

/// The `node_modules` of `source_dir`'s lock file, installed on first use under
/// `${XDG_CACHE_HOME:-$HOME/.cache}/<cache_name>/<hash of package.json and the lock>/`.
///
/// An install runs `npm ci` in a private temporary directory and renames it into place
/// when complete: a directory under its final name is always whole, so processes racing
/// to install (nextest, parallel `cargo test` runs) cost at most a duplicate download,
/// never a half-installed tree. Within this process a mutex makes the tests wait for one
/// install, and later calls answer from memory.
///
/// # Errors
///
/// Fails when `npm` is missing (naming the Debian packages), when the manifest cannot be
/// read, and when `npm ci` fails or takes over 5 minutes (quoting its log).
pub(crate) fn installed(source_dir: &Path, cache_name: &str) -> Result<PathBuf> {
    // One lock for every script directory: installs are rare and short once npm's own
    // cache is warm, and one at a time is kinder to a 2-core machine.
    static INSTALLED: Mutex<BTreeMap<PathBuf, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut installed = INSTALLED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(modules) = installed.get(source_dir) {
        return Ok(modules.clone());
    }
    let modules = install(source_dir, &cache_dir(cache_name))?;
    installed.insert(source_dir.to_path_buf(), modules.clone());
    Ok(modules)
}

/// The error for a missing `node` or `npm`, naming the Debian packages.
pub(crate) fn missing_node() -> anyhow::Error {
    anyhow!(
        "node or npm not found on PATH: install them with 'apt-get install nodejs npm' \
         {ENSURE_DEPS_HINT}"
    )
}

/// Installs the packages of `source`'s lock file under `cache` unless there already;
/// returns the `node_modules` directory.
fn install(source: &Path, cache: &Path) -> Result<PathBuf> {
    let mut manifest = Vec::new();
    for file in MANIFEST_FILES {
        let path = source.join(file);
        manifest.extend(fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        manifest.push(0);
    }
    let dependencies = dependencies(&source.join("package.json"))?;
    let done = cache.join(format!("{:016x}", fnv1a(&manifest)));
    let modules = done.join("node_modules");
    if complete(&modules, &dependencies) {
        return Ok(modules);
    }

    let npm = find_binary("npm").ok_or_else(missing_node)?;
    fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let tmp = cache.join(format!(
        ".install-{}-{}",
        process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let result = npm_ci(&npm, source, &tmp).and_then(|()| {
        match fs::rename(&tmp, &done) {
            Ok(()) => Ok(()),
            // Another process finished first: its tree is as good as ours.
            Err(_) if complete(&modules, &dependencies) => Ok(()),
            Err(err) => Err(anyhow!(
                "renaming {} to {}: {err}",
                tmp.display(),
                done.display()
            )),
        }
    });
    let _ = fs::remove_dir_all(&tmp);
    result.map(|()| modules)
}

/// The names of `package.json`'s `dependencies`, sorted.
fn dependencies(package_json: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(package_json)
        .with_context(|| format!("reading {}", package_json.display()))?;
    let manifest: Value = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", package_json.display()))?;
    let mut names: Vec<String> = manifest["dependencies"]
        .as_object()
        .map(|dependencies| dependencies.keys().cloned().collect())
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

/// Whether `modules` holds every dependency: the rename makes a tree whole or absent,
/// this also turns away a directory someone emptied by hand.
fn complete(modules: &Path, dependencies: &[String]) -> bool {
    modules.is_dir()
        && dependencies
            .iter()
            .all(|name| modules.join(name).join("package.json").is_file())
}

/// `npm ci` of `source`'s manifest copied into `dir`, bounded by [`NPM_INSTALL_TIMEOUT`].
fn npm_ci(npm: &Path, source: &Path, dir: &Path) -> Result<()> {
    for file in MANIFEST_FILES {
        fs::copy(source.join(file), dir.join(file))
            .with_context(|| format!("copying {file} to {}", dir.display()))?;
    }
    let log = dir.join("npm.log");
    let (stdout, stderr) = open_log(&log, "npm ci")?;
    let mut child = Command::new(npm)
        // --ignore-scripts: none of these packages needs an install script; none runs.
        .args([
            "ci",
            "--ignore-scripts",
            "--no-audit",
            "--no-fund",
            "--prefer-offline",
        ])
        .current_dir(dir)
        .env("npm_config_update_notifier", "false")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawning {} ci", npm.display()))?;
    match wait_timeout(&mut child, NPM_INSTALL_TIMEOUT) {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!(
            "npm ci of {} failed ({status}); {}",
            source.display(),
            log_tail(&log)
        ),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "npm ci of {} took over {NPM_INSTALL_TIMEOUT:?}; {}",
                source.display(),
                log_tail(&log)
            )
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::TempDir;

    #[test]
    fn completeness_is_every_dependency() {
        let dir = TempDir::new("npm-test").unwrap();
        let package_json = dir.path.join("package.json");
        fs::write(
            &package_json,
            r#"{"dependencies": {"a": "1.0.0", "@scope/b": "2.0.0"}}"#,
        )
        .unwrap();
        let dependencies = dependencies(&package_json).unwrap();
        assert_eq!(dependencies, ["@scope/b", "a"]);

        let modules = dir.path.join("node_modules");
        assert!(!complete(&modules, &dependencies));
        fs::create_dir_all(modules.join("a")).unwrap();
        fs::write(modules.join("a/package.json"), "{}").unwrap();
        assert!(!complete(&modules, &dependencies));
        fs::create_dir_all(modules.join("@scope/b")).unwrap();
        fs::write(modules.join("@scope/b/package.json"), "{}").unwrap();
        assert!(complete(&modules, &dependencies));
    }

    #[test]
    fn missing_node_names_the_packages() {
        assert_eq!(
            missing_node().to_string(),
            "node or npm not found on PATH: install them with 'apt-get install nodejs npm' \
             (or run scripts/ensure-deps)"
        );
    }
}
