//! PostgreSQL: the pool and the embedded schema migrations.
//!
//! Migrations run at start (and by `portcullis-control-plane migrate`) under an advisory
//! lock, so replicas starting together apply each one exactly once.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};

use crate::infra::db_tls::DbTarget;

/// Embedded migrations, applied in order; a migration never changes once shipped.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/0001_init.sql")),
    (2, include_str!("../../migrations/0002_recovery_mfa.sql")),
    (3, include_str!("../../migrations/0003_roles.sql")),
    (4, include_str!("../../migrations/0004_webhooks.sql")),
    (5, include_str!("../../migrations/0005_oauth.sql")),
    (6, include_str!("../../migrations/0006_key_withdrawal.sql")),
    (7, include_str!("../../migrations/0007_passkeys.sql")),
    (8, include_str!("../../migrations/0008_openid_provider.sql")),
    (9, include_str!("../../migrations/0009_signed_jwks.sql")),
    (10, include_str!("../../migrations/0010_dpop.sql")),
];

/// Advisory lock key for migrations ("portcull" in ASCII).
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c6c;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("database URL: {0}")]
    Url(String),
    #[error("database: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// A database call that did not complete: the server is out of reach (an outage: worth a
/// retry, answered 503) or the statement failed (a bug or a broken invariant, answered
/// 500). The cause is for the log, never for a client.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database statement failed: {0}")]
    Failed(String),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A lost connection, a network error or a server shutting down is an outage;
        // anything else (a constraint, a type error, a missing row) is a failure.
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        let outage_class = e
            .as_db_error()
            .is_some_and(|db| matches!(&db.code().code()[..2], "08" | "57" | "53"));
        if e.is_closed() || io || outage_class {
            Self::Unavailable(e.to_string())
        } else {
            Self::Failed(e.to_string())
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// `From` the database's errors for an error enum with a `Db(DbError)` variant, so `?`
/// works on queries in its functions.
#[macro_export]
macro_rules! db_error_from {
    ($($t:ty),+ $(,)?) => {$(
        impl From<tokio_postgres::Error> for $t {
            fn from(e: tokio_postgres::Error) -> Self {
                Self::Db(e.into())
            }
        }
        impl From<deadpool_postgres::PoolError> for $t {
            fn from(e: deadpool_postgres::PoolError) -> Self {
                Self::Db(e.into())
            }
        }
    )+};
}

/// A pool whose connections time out instead of hanging when the server is gone, so routes
/// answer 503 quickly and recover once it returns. TLS follows the URL's `sslmode`.
pub fn pool(url: &str, size: usize) -> Result<Pool, StoreError> {
    let target = DbTarget::parse(url).map_err(StoreError::Url)?;
    let tls = target.connector().map_err(StoreError::Url)?;
    let mut pg = target.config;
    pg.connect_timeout(Duration::from_secs(3));
    if pg.get_application_name().is_none() {
        pg.application_name("portcullis-control-plane");
    }
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(3)))
        .build()?)
}

/// A cluster-wide advisory lock held for as long as this value lives. It owns a connection
/// taken out of the pool, so the lock ends with that connection: also when the holder is
/// aborted or its replica dies, never left behind on a pooled connection.
pub struct Singleton {
    _connection: deadpool_postgres::ClientWrapper,
}

impl std::fmt::Debug for Singleton {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Singleton(..)")
    }
}

/// The lock `key` if no other session holds it, without waiting.
pub async fn try_singleton(pool: &Pool, key: i64) -> Result<Option<Singleton>, StoreError> {
    // Out of the pool first: a cancelled query can then never return a lock-holding
    // connection to it.
    let client = deadpool_postgres::Object::take(pool.get().await?);
    // A holder whose host vanished without a FIN is noticed in seconds, not hours.
    client
        .batch_execute(
            "SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5;
             SET tcp_keepalives_count = 3",
        )
        .await?;
    let held: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await?
        .get(0);
    Ok(held.then_some(Singleton {
        _connection: client,
    }))
}

/// Applies every migration not yet recorded, each in its own transaction.
pub async fn migrate(pool: &Pool) -> Result<Vec<i32>, StoreError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    // Under the lock: two replicas creating the table at once would collide in the catalog.
    let result = match client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
    {
        Ok(()) => apply(&mut client).await,
        Err(e) => Err(e.into()),
    };
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply(client: &mut deadpool_postgres::Client) -> Result<Vec<i32>, StoreError> {
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        let tx = client.transaction().await?;
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await?;
        if done.is_none() {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
            applied.push(*version);
        }
        tx.commit().await?;
    }
    Ok(applied)
}

/// Whether the database answers a trivial statement.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}

/// Whether `e` is a unique-constraint violation (SQLSTATE 23505), optionally on `constraint`.
pub fn is_unique_violation(e: &tokio_postgres::Error, constraint: Option<&str>) -> bool {
    e.as_db_error().is_some_and(|db| {
        db.code() == &tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && constraint.is_none_or(|c| db.constraint() == Some(c))
    })
}

/// Queries through each connection's prepared-statement cache: one round trip per
/// statement instead of a parse round trip and then an execute round trip, and no
/// re-planning. Every query of the control plane goes through these.
pub(crate) trait Prepared: deadpool_postgres::GenericClient {
    async fn q(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query(&statement, params).await
    }

    async fn q_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_opt(&statement, params).await
    }

    async fn q_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.query_one(&statement, params).await
    }

    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, tokio_postgres::Error> {
        let statement = self.prepare_cached(sql).await?;
        self.execute(&statement, params).await
    }
}

impl<T: deadpool_postgres::GenericClient> Prepared for T {}
