//! `leaderboard`: every known worker with its points (one per submission that matched a
//! finalized consensus) and its submission count, highest points first.

use super::parsed;
use crate::error::CoreError;
use protocol::messages::{LeaderboardEntry, LeaderboardReply};
use rusqlite::Connection;

/// # Errors
/// Store errors only.
pub fn run(conn: &Connection) -> Result<LeaderboardReply, CoreError> {
    let entries = conn
        .prepare_cached(
            "SELECT w.id, COALESCE(ws.points, 0) AS points,
                    (SELECT COUNT(*) FROM submission s WHERE s.worker_id = w.id)
             FROM worker w LEFT JOIN worker_score ws ON ws.worker_id = w.id
             ORDER BY points DESC, w.id",
        )?
        .query_map([], |r| {
            Ok(LeaderboardEntry {
                worker_id: parsed(r, 0)?,
                points: r.get(1)?,
                submissions: r.get(2)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(LeaderboardReply { entries })
}
