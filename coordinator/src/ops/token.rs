//! Worker tokens: issued once, stored only as a SHA-256 hash, checked on every worker message when
//! authentication is on.

use super::Ctx;
use crate::error::CoreError;
use crate::store::sql::{params, OptionalExtension};
use crate::store::tx::Tx;
use protocol::auth::TOKEN_PREFIX;
use protocol::WorkerId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Issues a new token for `worker`, replacing any earlier one. Returns the secret.
///
/// # Errors
/// Store errors, or [`CoreError::Unauthorized`] if the system has no randomness to draw from.
pub(crate) fn create(tx: &dyn Tx, ctx: &mut Ctx, worker: &WorkerId) -> Result<String, CoreError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)
        .map_err(|e| CoreError::Unauthorized(format!("no randomness for a token: {e}")))?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    tx.sql().prepare_cached(
        "INSERT INTO worker_token (worker_id, hash, created_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (worker_id) DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at",
    )?
    .execute(params![worker.as_str(), hash(&token), ctx.now])?;
    tracing::info!(worker_id = %worker, "worker token issued");
    Ok(token)
}

/// Revokes `worker`'s token; returns whether it had one.
///
/// # Errors
/// Store errors only.
pub(crate) fn revoke(tx: &dyn Tx, worker: &WorkerId) -> Result<bool, CoreError> {
    let n = tx
        .sql()
        .prepare_cached("DELETE FROM worker_token WHERE worker_id = ?1")?
        .execute([worker.as_str()])?;
    tracing::info!(worker_id = %worker, revoked = n > 0, "worker token revoked");
    Ok(n > 0)
}

/// Whether `token` is `worker`'s current token.
///
/// # Errors
/// Store errors only.
pub(crate) fn verify(tx: &dyn Tx, worker: &WorkerId, token: &str) -> Result<bool, CoreError> {
    let stored: Option<String> = tx
        .sql()
        .prepare_cached("SELECT hash FROM worker_token WHERE worker_id = ?1")?
        .query_row([worker.as_str()], |r| r.get(0))
        .optional()?;
    Ok(stored.is_some_and(|h| bool::from(h.as_bytes().ct_eq(hash(token).as_bytes()))))
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;

    fn tokens_verify_only_for_their_worker_and_only_until_revoked(conn: TestStore) {
        let alice = create(&*conn.tx(), &mut ctx(0), &wid("alice")).expect("create");
        let bob = create(&*conn.tx(), &mut ctx(0), &wid("bob")).expect("create");
        assert!(alice.starts_with(TOKEN_PREFIX) && alice != bob);
        assert!(verify(&*conn.tx(), &wid("alice"), &alice).expect("verify"));
        assert!(
            !verify(&*conn.tx(), &wid("alice"), &bob).expect("verify"),
            "bob's token works for alice"
        );
        assert!(!verify(&*conn.tx(), &wid("carole"), &alice).expect("verify"));
        let stored: String = (&conn as &dyn Sql)
            .query_row(
                "SELECT hash FROM worker_token WHERE worker_id = 'alice'",
                (),
                |r| r.get(0),
            )
            .expect("row");
        assert!(
            !stored.contains(&alice[TOKEN_PREFIX.len()..]),
            "the secret is stored"
        );
        let again = create(&*conn.tx(), &mut ctx(1), &wid("alice")).expect("replace");
        assert!(
            !verify(&*conn.tx(), &wid("alice"), &alice).expect("verify"),
            "the old token survives"
        );
        assert!(verify(&*conn.tx(), &wid("alice"), &again).expect("verify"));
        assert!(revoke(&*conn.tx(), &wid("alice")).expect("revoke"));
        assert!(!verify(&*conn.tx(), &wid("alice"), &again).expect("verify"));
        assert!(!revoke(&*conn.tx(), &wid("alice")).expect("revoke twice"));
    }

    on_both_engines!(tokens_verify_only_for_their_worker_and_only_until_revoked);
}
