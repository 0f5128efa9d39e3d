//! Ed25519 signing keys: generated here, private parts sealed with the key-encryption key,
//! and moved through `next -> active -> retired -> removed` by the database under an
//! advisory lock, so every replica agrees on the active key.
//!
//! A key is published (as `next`) one rotation before it signs anything; a retired key stays
//! published until every token it could have signed has expired. An emergency rotation
//! ([`KeyRing::withdraw`]) skips both waits: the active key goes straight to `withdrawn`
//! (unpublished, so its tokens are refused) and the next key signs at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use deadpool_postgres::{GenericClient, Pool};
use ed25519_dalek::SigningKey;
use portcullis_common::jwk::{Jwk, Jwks};
use portcullis_verifier::core::{KeySet, Trust};
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::infra::crypto::Secrets;
use crate::infra::store::{DbError, Prepared as _};

/// Advisory lock key serializing key changes across replicas ("keyrotat").
const KEY_LOCK: i64 = 0x6b65_7972_6f74_6174;
/// How long a replica trusts its cached view of the keys before asking the database again.
/// Rotation promotes a key that has been published for a whole rotation period, so a
/// replica signing with the previous key for this long is harmless.
const CACHE_FOR: Duration = Duration::from_secs(2);
/// A retired key stays published this long: the longest access-token lifetime an
/// application may set, plus clock leeway.
pub const RETIRED_PUBLISHED_SECS: i64 = crate::domain::MAX_ACCESS_TTL + 300;

/// Why the keys could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A stored private key does not open: `PORTCULLIS_KEY_ENCRYPTION_KEY` is not the one
    /// the keys were sealed with.
    #[error("key {0} does not open with PORTCULLIS_KEY_ENCRYPTION_KEY")]
    Sealed(String),
    /// A rotation asked for while the next key has been published for too short a time.
    #[error("the next key was published too recently to sign; retry in {0} s")]
    TooSoon(u64),
    /// The stored keys break an invariant (a bug, or a hand-edited table).
    #[error("signing keys: {0}")]
    Broken(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

crate::db_error_from!(KeyError);

/// The signing key and the published key set, as one replica sees them.
#[derive(Debug)]
pub struct Keys {
    pub kid: String,
    pub signer: SigningKey,
    /// The published JWKS JSON (`next`, `active`, `retired`).
    pub jwks_json: String,
    /// The same keys, ready for the verify core.
    pub key_set: Arc<KeySet>,
    /// Every published kid.
    pub kids: Vec<String>,
    fetched: Instant,
}

/// One row of `GET /v1/admin/keys`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyInfo {
    pub kid: String,
    pub state: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub activated_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub retired_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub remove_after: Option<OffsetDateTime>,
}

/// Reads and changes the keys; caches the current view for [`CACHE_FOR`].
#[derive(Debug)]
pub struct KeyRing {
    pool: Pool,
    secrets: Secrets,
    /// How long a `next` key is published before it may sign.
    publish_lead: Duration,
    current: ArcSwapOption<Keys>,
}

/// What one rotation attempt did.
#[derive(Debug)]
enum Rotation {
    Done(String),
    NotDue,
    /// The next key needs this many more seconds of publication.
    TooSoon(u64),
}

impl KeyRing {
    pub fn new(pool: Pool, secrets: Secrets, publish_lead: Duration) -> Self {
        Self {
            pool,
            secrets,
            publish_lead,
            current: ArcSwapOption::empty(),
        }
    }

    /// The current keys: cached, or read from the database.
    pub async fn current(&self) -> Result<Arc<Keys>, KeyError> {
        if let Some(keys) = self.current.load_full()
            && keys.fetched.elapsed() < CACHE_FOR
        {
            return Ok(keys);
        }
        self.refresh().await
    }

    /// Re-reads the keys from the database, creating the first ones if there are none.
    pub async fn refresh(&self) -> Result<Arc<Keys>, KeyError> {
        let mut client = self.pool.get().await?;
        let mut keys = self.load(&client).await?;
        if keys.is_none() {
            self.ensure(&mut client).await?;
            keys = self.load(&client).await?;
        }
        let keys = Arc::new(keys.ok_or_else(|| KeyError::Broken("no active signing key".into()))?);
        self.current.store(Some(keys.clone()));
        Ok(keys)
    }

    async fn load(&self, client: &impl GenericClient) -> Result<Option<Keys>, KeyError> {
        let rows = client
            .q(
                "SELECT kid, state, public_key, private_key_enc FROM signing_keys
                 WHERE state IN ('next', 'active', 'retired') ORDER BY created_at, kid",
                &[],
            )
            .await?;
        let mut jwks = Jwks::default();
        let mut kids = Vec::new();
        let mut active = None;
        for row in &rows {
            let kid: String = row.get(0);
            let state: &str = row.get(1);
            let public: &[u8] = row.get(2);
            let public: [u8; 32] = public
                .try_into()
                .map_err(|_| KeyError::Broken(format!("key {kid}: bad public key")))?;
            jwks.keys.push(Jwk::ed25519(&public));
            kids.push(kid.clone());
            if state == "active" {
                let sealed: &[u8] = row.get(3);
                let secret = self
                    .secrets
                    .open(sealed, kid.as_bytes())
                    .and_then(|s| <[u8; 32]>::try_from(s).ok())
                    .ok_or_else(|| KeyError::Sealed(kid.clone()))?;
                active = Some((kid, SigningKey::from_bytes(&secret)));
            }
        }
        let Some((kid, signer)) = active else {
            return Ok(None);
        };
        let jwks_json =
            serde_json::to_string(&jwks).map_err(|e| KeyError::Broken(e.to_string()))?;
        let key_set = KeySet::from_jwks(jwks_json.as_bytes(), Trust::Portcullis)
            .map_err(|e| KeyError::Broken(format!("own JWKS refused: {e:?}")))?;
        Ok(Some(Keys {
            kid,
            signer,
            jwks_json,
            key_set: Arc::new(key_set),
            kids,
            fetched: Instant::now(),
        }))
    }

    fn new_key(&self) -> (String, Vec<u8>, Vec<u8>) {
        let signer = SigningKey::from_bytes(&rand::random());
        let public = signer.verifying_key().to_bytes();
        let kid = Jwk::ed25519(&public).kid.unwrap_or_default();
        let sealed = self.secrets.seal(signer.as_bytes(), kid.as_bytes());
        (kid, public.to_vec(), sealed)
    }

    async fn insert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        state: &str,
    ) -> Result<String, KeyError> {
        let (kid, public, sealed) = self.new_key();
        tx.exec(
            "INSERT INTO signing_keys (kid, state, public_key, private_key_enc, activated_at)
             VALUES ($1, $2, $3, $4, CASE WHEN $2 = 'active' THEN now() END)",
            &[&kid, &state, &public, &sealed],
        )
        .await?;
        Ok(kid)
    }

    /// Creates the active and next keys where missing. Returns whether anything changed.
    pub async fn ensure(&self, client: &mut deadpool_postgres::Client) -> Result<bool, KeyError> {
        let tx = client.transaction().await?;
        tx.exec("SELECT pg_advisory_xact_lock($1)", &[&KEY_LOCK])
            .await?;
        let states: Vec<String> = tx
            .q(
                "SELECT state FROM signing_keys WHERE state IN ('active', 'next')",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut changed = false;
        for state in ["active", "next"] {
            if !states.iter().any(|s| s == state) {
                self.insert(&tx, state).await?;
                changed = true;
            }
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// The operator's rotation: `active -> retired`, `next -> active`, and a fresh `next`.
    /// Returns the new active kid. Refused with `429` (and `Retry-After`) while the next key
    /// has been published for less than the publish lead, so verifiers that poll a JWKS URL
    /// have it before it signs.
    pub async fn rotate(&self) -> Result<String, KeyError> {
        match self.rotate_when(None).await? {
            Rotation::Done(kid) => Ok(kid),
            Rotation::NotDue => Err(KeyError::Broken(
                "a rotation without a schedule was not due".into(),
            )),
            Rotation::TooSoon(wait) => Err(KeyError::TooSoon(wait)),
        }
    }

    /// One rotation under the advisory lock, so replicas ticking together (or an operator
    /// calling twice) rotate once. With `due_after`, only when the active key is that old.
    async fn rotate_when(&self, due_after: Option<Duration>) -> Result<Rotation, KeyError> {
        let mut client = self.pool.get().await?;
        self.ensure(&mut client).await?;
        let tx = client.transaction().await?;
        tx.exec("SELECT pg_advisory_xact_lock($1)", &[&KEY_LOCK])
            .await?;
        let ages = tx
            .q_one(
                "SELECT
                     (SELECT EXTRACT(EPOCH FROM now() - activated_at)::bigint
                        FROM signing_keys WHERE state = 'active'),
                     (SELECT EXTRACT(EPOCH FROM now() - published_at)::bigint
                        FROM signing_keys WHERE state = 'next')",
                &[],
            )
            .await?;
        let (active_age, next_age): (Option<i64>, Option<i64>) = (ages.get(0), ages.get(1));
        if let Some(due) = due_after
            && active_age.unwrap_or(0) < due.as_secs() as i64
        {
            return Ok(Rotation::NotDue);
        }
        // Counted from the first successful publication: a key never published (Redis
        // down since it was made) waits, however old it is.
        let lead = self.publish_lead.as_secs() as i64;
        match next_age {
            Some(age) if age < lead => return Ok(Rotation::TooSoon((lead - age) as u64)),
            None if lead > 0 => return Ok(Rotation::TooSoon(lead as u64)),
            _ => {}
        }
        tx.exec(
            "UPDATE signing_keys SET state = 'retired', retired_at = now(),
                 remove_after = now() + make_interval(secs => $1)
             WHERE state = 'active'",
            &[&(RETIRED_PUBLISHED_SECS as f64)],
        )
        .await?;
        let row = tx
            .q_one(
                "UPDATE signing_keys SET state = 'active', activated_at = now()
                 WHERE state = 'next' RETURNING kid",
                &[],
            )
            .await?;
        let kid: String = row.get(0);
        self.insert(&tx, "next").await?;
        tx.commit().await?;
        self.current.store(None);
        Ok(Rotation::Done(kid))
    }

    /// The emergency rotation, for a key that may have leaked: `active -> withdrawn` (out of
    /// the published set now, not when its tokens expire), `next -> active` at once
    /// (however briefly it has been published), and a fresh `next`. Returns the withdrawn
    /// kid and the new active one.
    ///
    /// The trade-off: a verifier polling a JWKS URL may not have the promoted key yet, and
    /// refuses its tokens (`unknown_key`) until it refetches, which an unknown kid makes it
    /// do. Other replicas of the control plane see the change within [`CACHE_FOR`].
    pub async fn withdraw(&self) -> Result<(String, String), KeyError> {
        let mut client = self.pool.get().await?;
        self.ensure(&mut client).await?;
        let tx = client.transaction().await?;
        tx.exec("SELECT pg_advisory_xact_lock($1)", &[&KEY_LOCK])
            .await?;
        let withdrawn: String = tx
            .q_one(
                "UPDATE signing_keys SET state = 'withdrawn', retired_at = now(),
                     remove_after = now()
                 WHERE state = 'active' RETURNING kid",
                &[],
            )
            .await?
            .get(0);
        let active: String = tx
            .q_one(
                "UPDATE signing_keys SET state = 'active', activated_at = now()
                 WHERE state = 'next' RETURNING kid",
                &[],
            )
            .await?
            .get(0);
        self.insert(&tx, "next").await?;
        tx.commit().await?;
        self.current.store(None);
        Ok((withdrawn, active))
    }

    /// The schedule: rotates when the active key is older than `interval`, and removes
    /// retired keys whose tokens have all expired. Returns whether the published set changed.
    pub async fn maintain(&self, interval: Duration) -> Result<bool, KeyError> {
        let rotated = match self.rotate_when(Some(interval)).await? {
            Rotation::Done(kid) => {
                tracing::info!(%kid, "signing key rotated on schedule");
                true
            }
            Rotation::NotDue | Rotation::TooSoon(_) => false,
        };
        let client = self.pool.get().await?;
        let removed = client
            .exec(
                "UPDATE signing_keys SET state = 'removed'
                 WHERE state = 'retired' AND remove_after < now()",
                &[],
            )
            .await?;
        drop(client);
        if removed > 0 {
            self.current.store(None);
        }
        Ok(rotated || removed > 0)
    }

    /// Records that a JWKS holding `keys` reached Redis (first time only).
    pub async fn mark_published(&self, keys: &Keys) -> Result<(), DbError> {
        let client = self.pool.get().await?;
        client
            .exec(
                "UPDATE signing_keys SET published_at = now()
                 WHERE published_at IS NULL AND kid = ANY($1)",
                &[&keys.kids],
            )
            .await?;
        Ok(())
    }

    pub async fn list(&self) -> Result<Vec<KeyInfo>, DbError> {
        let client = self.pool.get().await?;
        let rows = client
            .q(
                "SELECT kid, state, created_at, activated_at, retired_at, remove_after
                 FROM signing_keys ORDER BY created_at DESC, kid",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| KeyInfo {
                kid: r.get(0),
                state: r.get(1),
                created_at: r.get(2),
                activated_at: r.get(3),
                retired_at: r.get(4),
                remove_after: r.get(5),
            })
            .collect())
    }
}

/// The next sequence number of the signed key set (it only grows).
pub async fn next_signed_seq(client: &impl GenericClient) -> Result<u64, DbError> {
    use crate::infra::store::Prepared as _;
    let seq: i64 = client
        .q_one("SELECT nextval('signed_jwks_seq')", &[])
        .await?
        .get(0);
    Ok(seq.unsigned_abs())
}
