//! How the harness talks to the group's processes (plain or TLS, with passwords) and what it asks them.

use super::*;

/// How the harness reaches one kind of process of the group: the data nodes or the
/// Sentinels. [`Default`] is plain TCP without a password.
#[derive(Clone, Debug, Default)]
pub(super) struct Access {
    /// What to `AUTH` with.
    pub(super) password: Option<String>,
    /// TLS only: commands then go through `redis-cli --tls`.
    pub(super) tls: Option<CliTls>,
}

#[derive(Clone, Debug)]
pub(super) struct CliTls {
    pub(super) cli: PathBuf,
    /// The CA to trust.
    pub(super) ca_file: PathBuf,
}

impl Access {
    /// Runs `cmd` on the process at 127.0.0.1:`port` over a new connection, each step
    /// bounded by [`REDIS_COMMAND_TIMEOUT`].
    pub(super) fn query<T: redis::FromRedisValue>(&self, port: u16, cmd: &redis::Cmd) -> Result<T> {
        match (&self.tls, &self.password) {
            (Some(tls), password) => {
                let value = tls.query(port, password.as_deref(), cmd)?;
                redis::from_redis_value(value)
                    .with_context(|| format!("127.0.0.1:{port}: {}", command_name(cmd)))
            }
            (None, None) => redis_query(port, cmd),
            (None, Some(password)) => {
                let shown = format!("redis://127.0.0.1:{port}");
                let url = format!("redis://:{}@127.0.0.1:{port}", percent_encode(password));
                let client = redis::Client::open(url.as_str())
                    .with_context(|| format!("parsing the URL of {shown}"))?;
                let mut conn = client
                    .get_connection_with_timeout(REDIS_COMMAND_TIMEOUT)
                    .with_context(|| format!("connecting to {shown} with the password"))?;
                conn.set_read_timeout(Some(REDIS_COMMAND_TIMEOUT))?;
                conn.set_write_timeout(Some(REDIS_COMMAND_TIMEOUT))?;
                cmd.query(&mut conn)
                    .with_context(|| format!("{shown}: {}", command_name(cmd)))
            }
        }
    }
}

impl CliTls {
    /// `cmd` through `redis-cli --tls` (RESP2, `--json` output), as a [`redis::Value`].
    pub(super) fn query(
        &self,
        port: u16,
        password: Option<&str>,
        cmd: &redis::Cmd,
    ) -> Result<redis::Value> {
        let words = command_name(cmd);
        let mut command = Command::new(&self.cli);
        if let Some(password) = password {
            // Not `-a`: no warning, and the password stays off command lines.
            command.env("REDISCLI_AUTH", password);
        }
        command
            .arg("--tls")
            .arg("--cacert")
            .arg(&self.ca_file)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-2",
                "--json",
                "-e",
            ]);
        let mut is_info = None;
        for arg in cmd.args_iter() {
            let redis::Arg::Simple(bytes) = arg else {
                bail!("{words}: cursor arguments are not supported through redis-cli");
            };
            is_info.get_or_insert(bytes.eq_ignore_ascii_case(b"INFO"));
            command.arg(OsStr::from_bytes(bytes));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", self.cli.display()))?;
        // redis-cli has no timeout of its own: a process that accepts and never answers
        // must not hang the caller.
        let pid = child.id();
        let (sender, receiver) = mpsc::channel();
        thread::spawn(move || sender.send(child.wait_with_output()));
        let output = match receiver.recv_timeout(REDIS_COMMAND_TIMEOUT) {
            Ok(output) => output,
            Err(_) => {
                send_signal(pid, "KILL");
                bail!(
                    "127.0.0.1:{port} (TLS): {words}: no answer within {REDIS_COMMAND_TIMEOUT:?}"
                );
            }
        }
        .with_context(|| format!("running {}", self.cli.display()))?;
        if !output.status.success() {
            bail!(
                "127.0.0.1:{port} (TLS): {words}: {}{}",
                String::from_utf8_lossy(&output.stderr).trim(),
                String::from_utf8_lossy(&output.stdout).trim()
            );
        }
        if is_info == Some(true) {
            // redis-cli prints INFO's text as it is, even with --json.
            return Ok(redis::Value::BulkString(output.stdout));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!(
                    "127.0.0.1:{port} (TLS): {words}: not JSON: {}",
                    String::from_utf8_lossy(&output.stdout).trim()
                )
            })?;
        json_to_value(json).with_context(|| format!("127.0.0.1:{port} (TLS): {words}"))
    }
}

/// A reply as `redis-cli -2 --json` printed it, back as a [`redis::Value`]: strings
/// (simple or bulk) as bulk strings, integers, nil, arrays.
pub(super) fn json_to_value(json: serde_json::Value) -> Result<redis::Value> {
    Ok(match json {
        serde_json::Value::Null => redis::Value::Nil,
        serde_json::Value::Bool(flag) => redis::Value::Int(i64::from(flag)),
        serde_json::Value::Number(number) => match number.as_i64() {
            Some(int) => redis::Value::Int(int),
            None => redis::Value::Double(
                number
                    .as_f64()
                    .ok_or_else(|| anyhow!("number {number} out of range"))?,
            ),
        },
        serde_json::Value::String(text) => redis::Value::BulkString(text.into_bytes()),
        serde_json::Value::Array(items) => redis::Value::Array(
            items
                .into_iter()
                .map(json_to_value)
                .collect::<Result<_>>()?,
        ),
        serde_json::Value::Object(map) => redis::Value::Map(
            map.into_iter()
                .map(|(key, value)| {
                    Ok((
                        redis::Value::BulkString(key.into_bytes()),
                        json_to_value(value)?,
                    ))
                })
                .collect::<Result<_>>()?,
        ),
    })
}

/// `Ok` when the Sentinel on `port` knows the master, one healthy replica and the two
/// other Sentinels, and could authorize a failover; else what is missing.
pub(super) fn sentinel_not_ready(access: &Access, port: u16) -> Result<()> {
    let master: HashMap<String, String> =
        access.query(port, redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME))?;
    let field = |name: &str| master.get(name).map_or("?", String::as_str);
    if field("flags") != "master"
        || field("num-slaves") != "1"
        || field("num-other-sentinels") != (SENTINELS - 1).to_string()
    {
        bail!(
            "Sentinel 127.0.0.1:{port}: master flags {}, {} replicas, {} other Sentinels",
            field("flags"),
            field("num-slaves"),
            field("num-other-sentinels")
        );
    }
    let replicas: Vec<HashMap<String, String>> = access.query(
        port,
        redis::cmd("SENTINEL").arg("REPLICAS").arg(MASTER_NAME),
    )?;
    for replica in &replicas {
        let field = |name: &str| replica.get(name).map_or("?", String::as_str);
        if field("flags") != "slave" || field("master-link-status") != "ok" {
            bail!(
                "Sentinel 127.0.0.1:{port}: replica {}:{} flags {}, link {}",
                field("ip"),
                field("port"),
                field("flags"),
                field("master-link-status")
            );
        }
    }
    let _: String = access.query(
        port,
        redis::cmd("SENTINEL").arg("CKQUORUM").arg(MASTER_NAME),
    )?;
    Ok(())
}

/// The master's port as the Sentinel on `port` names it.
pub(super) fn master_addr(access: &Access, port: u16) -> Result<u16> {
    let addr: Option<(String, u16)> = access.query(
        port,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER_NAME),
    )?;
    let Some((ip, master)) = addr else {
        bail!("Sentinel 127.0.0.1:{port} does not know {MASTER_NAME}");
    };
    if ip != "127.0.0.1" {
        bail!("Sentinel 127.0.0.1:{port} names {ip}:{master}, not a loopback node");
    }
    Ok(master)
}

/// The first element of `ROLE` on the node at `port`: `master`, `slave` or `sentinel`.
pub(super) fn role(access: &Access, port: u16) -> Result<String> {
    let reply: redis::Value = access.query(port, &redis::cmd("ROLE"))?;
    let first = match reply {
        redis::Value::Array(items) => items.into_iter().next(),
        _ => None,
    };
    match first {
        Some(value) => Ok(redis::from_redis_value(value)?),
        None => bail!("127.0.0.1:{port} answered ROLE with no role"),
    }
}

pub(super) fn info_replication(access: &Access, port: u16) -> Result<String> {
    access.query(port, redis::cmd("INFO").arg("replication"))
}
