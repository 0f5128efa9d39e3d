//! Debian's nginx in front of a verifier, in the shape the README documents: every request
//! first goes to the verifier's `/ext_authz` through `auth_request` (original URI, method,
//! host and scheme in `X-Original-*` / `X-Forwarded-*`), and an allowed one gets a static
//! page, with the `x-auth-user-id` and `x-auth-roles` answers copied onto the response as
//! `X-User` and `X-Roles`. The verifier's and the control plane's tests both use it.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::{ENSURE_DEPS_HINT, TempDir, find_binary, free_port};

/// A running nginx; stopped (and its directory removed) on drop, so a failing check
/// leaves nothing behind.
#[derive(Debug)]
pub struct Nginx {
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// Starts nginx on a free loopback port in front of the verifier at `verifier`,
    /// serving `page` to the requests the verifier allows; returns once it accepts
    /// connections.
    ///
    /// # Errors
    ///
    /// When nginx is not installed, or does not start listening within 10 s (the error
    /// carries its log).
    pub fn in_front_of(verifier: SocketAddr, page: &str) -> Result<Self> {
        let nginx = find_binary("nginx").ok_or_else(|| {
            anyhow!("nginx not found: install it with 'apt-get install nginx' {ENSURE_DEPS_HINT}")
        })?;
        let dir = TempDir::new("nginx")?;
        let www = dir.path.join("www");
        fs::create_dir_all(&www).with_context(|| format!("creating {}", www.display()))?;
        fs::write(www.join("index.html"), page)?;
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let conf = dir.path.join("nginx.conf");
        fs::write(&conf, config(&dir.path, addr, verifier))?;
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let nginx = Self { addr, child, dir };
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                bail!(
                    "nginx did not listen on {addr} within 10 s: {}",
                    nginx.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// Its error log so far (tests check that no token reaches it).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration: the README's `auth_request` location, verbatim in its headers.
fn config(dir: &Path, listen: SocketAddr, verifier: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen {listen};
    location = /_portcullis {{
      internal;
      proxy_pass http://{verifier}/ext_authz;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
    location / {{
      auth_request /_portcullis;
      auth_request_set $auth_user $upstream_http_x_auth_user_id;
      auth_request_set $auth_roles $upstream_http_x_auth_roles;
      add_header X-User $auth_user always;
      add_header X-Roles $auth_roles always;
      root {d}/www;
      try_files /index.html =404;
    }}
  }}
}}
"#
    )
}
