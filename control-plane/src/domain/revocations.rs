//! The `revocations` table as a whole: what the verifiers must refuse, as the reconcile
//! pass republishes it. (Rows are written by `sessions`, in the transaction of each
//! revocation.)

use std::collections::HashMap;

use deadpool_postgres::GenericClient;

use crate::infra::store::{DbError, Prepared as _};

/// Every unexpired revocation: sessions (id -> until) and per-user cutoffs (id -> before).
#[derive(Debug, Default)]
pub struct Live {
    pub sessions: HashMap<String, i64>,
    pub users: HashMap<String, i64>,
}

/// Deletes the revocations whose tokens have all expired by `now`, then reads the rest.
pub async fn prune_and_read(client: &impl GenericClient, now: i64) -> Result<Live, DbError> {
    client
        .exec("DELETE FROM revocations WHERE until < $1", &[&now])
        .await?;
    let rows = client
        .q("SELECT kind, subject, before, until FROM revocations", &[])
        .await?;
    let mut live = Live::default();
    for row in rows {
        let kind: &str = row.get(0);
        let subject: String = row.get(1);
        if kind == "session" {
            live.sessions.insert(subject, row.get::<_, i64>(3));
        } else {
            live.users.insert(subject, row.get::<_, i64>(2));
        }
    }
    Ok(live)
}

/// Whether PostgreSQL holds a revocation covering a token of session `sid` of user `sub`
/// issued at `iat` (fresher than any Redis copy).
pub async fn covers(
    client: &impl GenericClient,
    sid: &str,
    sub: &str,
    iat: i64,
) -> Result<bool, DbError> {
    Ok(client
        .q_opt(
            "SELECT 1 FROM revocations
             WHERE (kind = 'session' AND subject = $1) OR (kind = 'user' AND subject = $2 AND before >= $3)
             LIMIT 1",
            &[&sid, &sub, &iat],
        )
        .await?
        .is_some())
}
