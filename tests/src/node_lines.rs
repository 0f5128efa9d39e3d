//! One long-lived Node.js script spoken to in JSON lines: the process handling shared by
//! [`crate::rp`] (openid-client) and [`crate::dpop`] (the `dpop` package).
//!
//! [`NodeLines::start`] installs the script's npm packages (cached, see [`crate::npm`]),
//! copies `tests/<name>/<file>` into a fresh directory beside a link to the cached
//! `node_modules` (ES modules resolve packages next to the importing file), and runs it
//! under `node` with its stderr in a log file of that directory.
//!
//! The wire format, as both scripts document it at their top: every command is one line
//! `{"id": N, "cmd": NAME, ...arguments}` on the script's stdin, every answer one line
//! `{"id": N, "result": VALUE}` or `{"id": N, "harness_error": "why"}` on its stdout.
//! [`NodeLines::command`] numbers the commands, skips stdout lines that are not JSON or
//! answer another id (a command that timed out), bounds each exchange by the script's
//! timeout, and turns a timeout, a dead script or a `harness_error` into an `Err`
//! quoting the log's last lines.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::npm::{self, missing_node};
use crate::{TempDir, find_binary, log_tail, open_log};

/// Which script to run, and how errors name it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Script {
    /// The directory `tests/<name>` with the script, package.json and package-lock.json;
    /// also names the temporary directory and the npm cache (`portcullis-<name>`).
    pub(crate) name: &'static str,
    /// The script's file name in that directory, e.g. `rp.mjs`.
    pub(crate) file: &'static str,
    /// The process in error messages, e.g. `"the relying party"`.
    pub(crate) who: &'static str,
    /// The script's stderr, in its directory.
    pub(crate) log_file: &'static str,
    /// Bound on one command.
    pub(crate) timeout: Duration,
}

/// A running [`Script`] and its pipes: one exchange at a time. Dropping it kills the
/// process and removes its directory.
#[derive(Debug)]
pub(crate) struct NodeLines {
    script: Script,
    /// `kill_on_drop`: a test that panics or gives up leaves no Node behind.
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    /// Numbers the commands, so that a late answer to one that timed out is skipped.
    next_id: u64,
    /// Holds the script, the `node_modules` link and the log file. Last: removed once the
    /// process is gone.
    dir: TempDir,
}

impl NodeLines {
    /// Installs the npm packages if this lock file's are not in the cache yet
    /// (`${XDG_CACHE_HOME:-$HOME/.cache}/portcullis-<name>/<hash>/`) and starts the
    /// script; `banner` heads this run's part of the log.
    ///
    /// # Errors
    ///
    /// Fails when `node` or `npm` is missing (naming the Debian packages), when the npm
    /// install fails, and when the directory cannot be prepared or `node` spawned.
    pub(crate) async fn start(script: Script, banner: &str) -> Result<Self> {
        let node = find_binary("node").ok_or_else(missing_node)?;
        let source = crate::crate_dir().join(script.name);
        let modules = {
            let source = source.clone();
            // npm ci and the install mutex block: off the test's runtime.
            tokio::task::spawn_blocking(move || {
                npm::installed(&source, &format!("portcullis-{}", script.name))
            })
            .await
            .context("the npm install task panicked")??
        };
        let dir = TempDir::new(script.name)?;
        let file = dir.path.join(script.file);
        fs::copy(source.join(script.file), &file)
            .with_context(|| format!("copying tests/{}/{}", script.name, script.file))?;
        std::os::unix::fs::symlink(&modules, dir.path.join("node_modules"))
            .with_context(|| format!("linking node_modules into {}'s directory", script.who))?;
        let (_, stderr) = open_log(&dir.path.join(script.log_file), banner)?;
        let mut child = Command::new(&node)
            .arg(&file)
            .current_dir(&dir.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {} {}", node.display(), script.file))?;
        let stdin = child
            .stdin
            .take()
            .with_context(|| format!("{}'s stdin", script.who))?;
        let stdout = child
            .stdout
            .take()
            .with_context(|| format!("{}'s stdout", script.who))?;
        Ok(Self {
            script,
            child,
            stdin,
            stdout: BufReader::new(stdout).lines(),
            next_id: 0,
            dir,
        })
    }

    /// The script's directory (script, `node_modules` link, log file).
    #[cfg(test)]
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir.path
    }

    /// The process id, while it runs.
    #[cfg(test)]
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `cmd` with `args` (a JSON object) and returns the answer's result.
    ///
    /// # Errors
    ///
    /// Fails when `args` is not an object, when the script does not answer in time, dies
    /// or closes its stdout, when it answers with a `harness_error`, and when its answer
    /// has no `result`; all but the first and last quote the log's last lines.
    pub(crate) async fn command(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let Script { who, timeout, .. } = self.script;
        self.next_id += 1;
        let id = self.next_id;
        let mut line = match args {
            Value::Object(fields) => fields,
            other => bail!("the arguments of {cmd} must be a JSON object, got {other}"),
        };
        line.insert("id".to_owned(), id.into());
        line.insert("cmd".to_owned(), cmd.into());
        let mut line = Value::Object(line).to_string();
        line.push('\n');
        let log = self.dir.path.join(self.script.log_file);
        let exchange = async {
            self.stdin.write_all(line.as_bytes()).await?;
            self.stdin.flush().await?;
            loop {
                let Some(text) = self.stdout.next_line().await? else {
                    return Ok(None);
                };
                let Ok(answer) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                // Anything older answers a command that timed out: already given up on.
                if answer["id"] == id {
                    return Ok::<_, std::io::Error>(Some(answer));
                }
            }
        };
        let answer = match tokio::time::timeout(timeout, exchange).await {
            Err(_) => bail!(
                "{who} did not answer {cmd} within {timeout:?}; {}",
                log_tail(&log)
            ),
            Ok(Err(err)) => bail!("talking to {who} ({cmd}): {err}; {}", log_tail(&log)),
            Ok(Ok(None)) => {
                // Its stdout closed: it is exiting, if not reaped yet.
                let status = tokio::time::timeout(Duration::from_secs(2), self.child.wait())
                    .await
                    .map_or_else(
                        |_| "still running".to_owned(),
                        |status| status.map_or_else(|err| err.to_string(), |s| s.to_string()),
                    );
                bail!(
                    "{who} exited ({status}) without answering {cmd}; {}",
                    log_tail(&log)
                )
            }
            Ok(Ok(Some(answer))) => answer,
        };
        if let Some(why) = answer.get("harness_error") {
            bail!("{who} refused {cmd}: {why}; {}", log_tail(&log));
        }
        answer
            .get("result")
            .cloned()
            .ok_or_else(|| anyhow!("{who} answered {cmd} without a result: {answer}"))
    }
}
