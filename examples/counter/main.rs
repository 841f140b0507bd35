//! `counter`: a minimal stateful unit. While ACTIVE for a shard it counts ten times a second and
//! keeps the count in the shard's checkpoint (a `sync` commit per tick, so the STANDBY has
//! every count the ACTIVE has seen acknowledged); it logs the count every second. A new ACTIVE
//! (after a switchover or a failover) reads the count back from its replica and goes on from
//! there: the count survives the switch.
//!
//! Run by tandemd as a unit of a service (see `tandemctl dev up`), never by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use tandem::{Context, HookError, Role, ShardName, Unit};

/// The checkpoint key holding the count.
const COUNT_KEY: &[u8] = b"count";

struct Counter {
    /// Whether the counting task runs (it starts with the first hook, which brings the Context).
    counting: bool,
}

impl Unit for Counter {
    async fn assign(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        role: Role,
        epoch: u64,
    ) -> Result<(), HookError> {
        if !self.counting {
            self.counting = true;
            tokio::spawn(count(ctx.clone()));
        }
        let stored = read_count(ctx, shard).await.unwrap_or(0);
        tracing::info!(unit = ctx.unit(), %shard, %role, epoch, count = stored, "role assigned");
        Ok(())
    }

    async fn quiesce(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        tracing::info!(unit = ctx.unit(), %shard, "quiescing: every count is committed");
        Ok(())
    }

    async fn remove(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        tracing::info!(unit = ctx.unit(), %shard, "shard removed");
        Ok(())
    }
}

/// The count in the local replica of `shard`'s checkpoint.
async fn read_count(ctx: &Context, shard: &ShardName) -> Option<u64> {
    let value = ctx.checkpoint(shard).get(COUNT_KEY).await.ok()??;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

/// Counts for every shard this unit may act ACTIVE for; logs once a second.
async fn count(ctx: Context) {
    // The count per shard and the epoch it was read back at.
    let mut counts: BTreeMap<ShardName, (u64, u64)> = BTreeMap::new();
    let mut ticks: u64 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ticks += 1;
        let active = ctx.active_shards();
        counts.retain(|shard, _| active.contains(shard));
        for shard in active {
            let Some((_, epoch)) = ctx.role(&shard) else {
                continue;
            };
            let current = match counts.get(&shard) {
                Some((count, at)) if *at == epoch => *count,
                _ => {
                    // New to ACTIVE (at this epoch): go on from what the replica holds.
                    let stored = read_count(&ctx, &shard).await.unwrap_or(0);
                    tracing::info!(unit = ctx.unit(), %shard, epoch, count = stored, "resuming from the checkpoint");
                    stored
                }
            };
            let next = current + 1;
            match ctx
                .checkpoint(&shard)
                .put(COUNT_KEY, next.to_string())
                .await
            {
                Ok(_) => {
                    counts.insert(shard.clone(), (next, epoch));
                }
                Err(error) => {
                    // No longer ACTIVE, or the shard moved on: read it back next time.
                    tracing::debug!(unit = ctx.unit(), %shard, %error, "count not committed");
                    counts.remove(&shard);
                }
            }
        }
        if ticks.is_multiple_of(10) {
            for (shard, (count, epoch)) in &counts {
                tracing::info!(unit = ctx.unit(), %shard, epoch, count, "counting");
            }
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_ansi(false).init();
    // `run` returns when tandemd closes the connection; the unit has quiesced by then.
    if let Err(error) = tandem::run(Counter { counting: false }).await {
        eprintln!("counter: {error}");
        std::process::exit(1);
    }
}
