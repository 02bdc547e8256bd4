//! Worker tokens: issued once, stored only as a SHA-256 hash, checked on every worker message when
//! authentication is on.

use super::Ctx;
use crate::error::CoreError;
use crate::store::tx::Tx;
use protocol::auth::TOKEN_PREFIX;
use protocol::WorkerId;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Issues a new token for `worker`, replacing any earlier one. Returns the secret.
///
/// # Errors
/// Store errors, or [`CoreError::NoRandomness`] if the system has no randomness to draw from.
pub(crate) fn create(tx: &dyn Tx, ctx: &mut Ctx, worker: &WorkerId) -> Result<String, CoreError> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(CoreError::NoRandomness)?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(secret));
    tx.store_token(worker, &hash(&token), ctx.now)?;
    tracing::info!(worker_id = %worker, "worker token issued");
    Ok(token)
}

/// Revokes `worker`'s token; returns whether it had one.
///
/// # Errors
/// Store errors only.
pub(crate) fn revoke(tx: &dyn Tx, worker: &WorkerId) -> Result<bool, CoreError> {
    let revoked = tx.delete_token(worker)?;
    tracing::info!(worker_id = %worker, revoked, "worker token revoked");
    Ok(revoked)
}

/// Whether `token` is `worker`'s current token.
///
/// # Errors
/// Store errors only.
pub(crate) fn verify(tx: &dyn Tx, worker: &WorkerId, token: &str) -> Result<bool, CoreError> {
    let stored = tx.token_hash(worker)?;
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
        let stored = conn
            .tx()
            .token_hash(&wid("alice"))
            .expect("read")
            .expect("stored");
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
