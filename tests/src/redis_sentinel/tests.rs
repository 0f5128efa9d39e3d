//! A Sentinel group started, failed over and secured.
#![allow(clippy::unwrap_used)]

use super::*;

#[test]
fn failover_after_the_master_is_killed() {
    let started = Instant::now();
    let mut group = RedisSentinelGroup::start().unwrap();
    eprintln!("sentinel group up in {:?}", started.elapsed());
    let ports = group.node_ports();
    let sentinel_ports = group.sentinel_ports();
    assert_eq!(group.master_name(), "portcullis");
    assert_eq!(
        group.sentinels(),
        format!(
            "127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}",
            sentinel_ports[0], sentinel_ports[1], sentinel_ports[2]
        )
    );
    assert_eq!(group.master_port().unwrap(), ports[0]);
    assert_eq!(role(&group.node_access, ports[0]).unwrap(), "master");
    assert_eq!(role(&group.node_access, ports[1]).unwrap(), "slave");
    assert_eq!(
        role(&group.sentinel_access, sentinel_ports[0]).unwrap(),
        "sentinel"
    );
    assert!(group.wait_for_failover(Duration::from_secs(1)).is_err());

    // Written on the master, replicated before the failover.
    let () = redis_query(ports[0], redis::cmd("SET").arg("before").arg("1")).unwrap();
    let _: u64 = redis_query(ports[0], redis::cmd("WAIT").arg(1).arg(2000)).unwrap();

    let started = Instant::now();
    assert_eq!(group.kill_master().unwrap(), ports[0]);
    let new_master = group.wait_for_failover(Duration::from_secs(15)).unwrap();
    eprintln!("failover in {:?}", started.elapsed());
    assert_eq!(new_master, ports[1]);
    assert_eq!(group.master_port().unwrap(), ports[1]);

    let () = redis_query(new_master, redis::cmd("SET").arg("after").arg("2")).unwrap();
    let before: Option<String> = redis_query(new_master, redis::cmd("GET").arg("before")).unwrap();
    assert_eq!(before.as_deref(), Some("1"));

    group.restart_old_master().unwrap();
    assert!(
        role(&group.node_access, ports[0]).is_ok(),
        "the old master is back"
    );
    assert!(
        group.restart_old_master().is_err(),
        "nothing killed any more"
    );
}

/// Writes on the master, kills it, waits for the failover to the replica, reads the
/// write there, and restarts the old master: every step through `group`'s access.
fn fail_over_keeping_data(group: &mut RedisSentinelGroup) {
    let ports = group.node_ports();
    let nodes = group.node_access.clone();
    assert_eq!(group.master_port().unwrap(), ports[0]);
    assert_eq!(role(&nodes, ports[0]).unwrap(), "master");
    assert_eq!(role(&nodes, ports[1]).unwrap(), "slave");
    assert!(group.wait_for_failover(Duration::from_secs(1)).is_err());

    let () = nodes
        .query(ports[0], redis::cmd("SET").arg("before").arg("1"))
        .unwrap();
    let replicated: u64 = nodes
        .query(ports[0], redis::cmd("WAIT").arg(1).arg(2000))
        .unwrap();
    assert_eq!(replicated, 1);

    let started = Instant::now();
    assert_eq!(group.kill_master().unwrap(), ports[0]);
    let new_master = group.wait_for_failover(Duration::from_secs(15)).unwrap();
    eprintln!("failover in {:?}", started.elapsed());
    assert_eq!(new_master, ports[1]);
    assert_eq!(group.master_port().unwrap(), ports[1]);
    let () = nodes
        .query(new_master, redis::cmd("SET").arg("after").arg("2"))
        .unwrap();
    let before: Option<String> = nodes
        .query(new_master, redis::cmd("GET").arg("before"))
        .unwrap();
    assert_eq!(before.as_deref(), Some("1"));

    group.restart_old_master().unwrap();
    assert!(role(&nodes, ports[0]).is_ok(), "the old master is back");
}

#[test]
fn passwords_guard_the_nodes_and_the_sentinels() {
    // A space and a quote: the configuration file and the URL must carry them.
    let password = "node \"secret\" 1";
    let started = Instant::now();
    let mut group = RedisSentinelGroup::start_secured(Secured {
        password: Some(password),
        sentinel_password: Some("sentinel-secret"),
        tls: None,
    })
    .unwrap();
    eprintln!("password sentinel group up in {:?}", started.elapsed());
    assert_eq!(group.ca_file(), None);
    let ports = group.node_ports();
    let sentinel_ports = group.sentinel_ports();

    // No password: refused by the nodes and by the Sentinels.
    for port in [ports[0], ports[1], sentinel_ports[0], sentinel_ports[2]] {
        let err = redis_query::<String>(port, &redis::cmd("PING")).unwrap_err();
        assert!(format!("{err:#}").contains("NOAUTH"), "{port}: {err:#}");
    }
    // Each kind of process has its own password (the server answers WRONGPASS,
    // which the redis crate reports as AuthenticationFailed).
    let err = group
        .node_access
        .query::<String>(sentinel_ports[0], &redis::cmd("PING"))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("AuthenticationFailed"),
        "{err:#}"
    );
    let err = group
        .sentinel_access
        .query::<String>(ports[0], &redis::cmd("PING"))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("AuthenticationFailed"),
        "{err:#}"
    );
    assert!(
        !format!("{err:#}").contains("sentinel-secret"),
        "errors never show a password: {err:#}"
    );
    // With it: answers.
    assert_eq!(role(&group.node_access, ports[0]).unwrap(), "master");
    assert_eq!(
        role(&group.sentinel_access, sentinel_ports[0]).unwrap(),
        "sentinel"
    );

    fail_over_keeping_data(&mut group);
    assert!(
        redis_query::<String>(ports[0], &redis::cmd("PING")).is_err(),
        "the restarted node still wants the password"
    );
}

#[test]
fn tls_and_a_password_on_every_process() {
    let ca = TestCa::new().unwrap();
    let started = Instant::now();
    let mut group = RedisSentinelGroup::start_secured(Secured {
        password: Some("tls-secret"),
        sentinel_password: None,
        tls: Some(&ca),
    })
    .unwrap();
    eprintln!("TLS sentinel group up in {:?}", started.elapsed());
    let ca_file = group.ca_file().unwrap();
    assert_eq!(fs::read_to_string(&ca_file).unwrap(), ca.ca_pem());
    let ports = group.node_ports();
    let sentinel_ports = group.sentinel_ports();

    // Plain TCP: nothing answers RESP, nodes or Sentinels.
    for &port in ports.iter().chain(&sentinel_ports) {
        assert!(
            crate::redis_ping(port).is_none(),
            "{port} answers plain TCP"
        );
        assert!(redis_query::<String>(port, &redis::cmd("PING")).is_err());
    }
    // TLS trusting the CA: the Sentinels (no password of their own here) answer
    // and name the master by IP address and TLS port; the nodes want the password.
    assert_eq!(
        role(&group.sentinel_access, sentinel_ports[1]).unwrap(),
        "sentinel"
    );
    assert_eq!(
        master_addr(&group.sentinel_access, sentinel_ports[1]).unwrap(),
        ports[0]
    );
    let no_password = Access {
        password: None,
        tls: group.node_access.tls.clone(),
    };
    let err = no_password
        .query::<String>(ports[0], &redis::cmd("PING"))
        .unwrap_err();
    assert!(format!("{err:#}").contains("NOAUTH"), "{err:#}");
    let pong: String = group
        .node_access
        .query(ports[1], &redis::cmd("PING"))
        .unwrap();
    assert_eq!(pong, "PONG");
    // TLS trusting another CA: the handshake fails.
    let other_file = group.nodes[0].dir().join("other-ca.crt");
    TestCa::new().unwrap().write_ca(&other_file).unwrap();
    let mut other = group.sentinel_access.clone();
    if let Some(tls) = &mut other.tls {
        tls.ca_file = other_file;
    }
    let err = other
        .query::<String>(sentinel_ports[0], &redis::cmd("PING"))
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("certificate verify failed"),
        "{err:#}"
    );

    fail_over_keeping_data(&mut group);
}
