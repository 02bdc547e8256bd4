//! `aimarket ops ...`.

use super::Ctx;
use crate::output;
use protocol::messages::{ApiOp, Empty, RequeueReply, ResetRequest};

/// Operations on the coordinator's state.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum OpsCommand {
    /// Free expired leases and those of stale workers now, instead of at the next sweep.
    RequeueStale,
    /// Delete every task, submission, worker and score.
    Reset {
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

/// Runs an ops command.
pub(crate) async fn run(ctx: &Ctx, cmd: OpsCommand) -> anyhow::Result<()> {
    match cmd {
        OpsCommand::RequeueStale => {
            let r: RequeueReply = ctx
                .client()
                .await?
                .call(ApiOp::OpsRequeue, &Empty {})
                .await?;
            if ctx.json {
                return output::json(&r);
            }
            println!(
                "requeued {} lease(s); {} task(s) failed; {} worker(s) now stale",
                r.requeued, r.failed, r.stale_workers
            );
        }
        OpsCommand::Reset { yes } => {
            anyhow::ensure!(yes, "ops reset deletes everything; pass --yes to confirm");
            let _: Empty = ctx
                .client()
                .await?
                .call(ApiOp::OpsReset, &ResetRequest { confirm: true })
                .await?;
            if ctx.json {
                return output::json(&serde_json::json!({"reset": true}));
            }
            println!("reset: every task, submission, worker and score deleted");
        }
    }
    Ok(())
}
