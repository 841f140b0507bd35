//! `counter`: a minimal stateful unit. While ACTIVE for a shard it counts, ten times a second,
//! and logs the count every second; a STANDBY waits. It shows the SDK's hooks and the rule
//! that a unit acts only while `Context::is_active` says so.
//!
//! Its count lives in memory, so a failover starts the new ACTIVE from zero. Keeping state
//! across failovers is what tandem's checkpoints are for (the data-plane capability).
//!
//! Run by tandemd as a unit of a service (see `tandemctl dev up`), never by hand.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem::{Context, HookError, Role, ShardName, Unit};

/// Counts per shard, shared by the hooks and the counting task.
type Counts = Arc<Mutex<BTreeMap<ShardName, u64>>>;

struct Counter {
    counts: Counts,
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
            tokio::spawn(count(ctx.clone(), self.counts.clone()));
        }
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| HookError::new("count lock poisoned"))?;
        tracing::info!(unit = ctx.unit(), %shard, %role, epoch, count = counts.get(shard), "role assigned");
        if role == Role::Active {
            counts.entry(shard.clone()).or_insert(0);
        }
        Ok(())
    }

    async fn quiesce(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        tracing::info!(unit = ctx.unit(), %shard, "quiescing: no work is in flight");
        Ok(())
    }

    async fn remove(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        tracing::info!(unit = ctx.unit(), %shard, "shard removed");
        if let Ok(mut counts) = self.counts.lock() {
            counts.remove(shard);
        }
        Ok(())
    }
}

/// Counts for every shard this unit may act ACTIVE for; logs once a second.
async fn count(ctx: Context, counts: Counts) {
    let mut ticks: u64 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ticks += 1;
        let Ok(mut counts) = counts.lock() else {
            return;
        };
        for shard in ctx.active_shards() {
            *counts.entry(shard).or_insert(0) += 1;
        }
        if ticks.is_multiple_of(10) {
            for (shard, count) in counts.iter().filter(|(shard, _)| ctx.is_active(shard)) {
                tracing::info!(unit = ctx.unit(), %shard, count, "counting");
            }
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_ansi(false).init();
    let unit = Counter {
        counts: Arc::new(Mutex::new(BTreeMap::new())),
        counting: false,
    };
    // `run` returns when tandemd closes the connection; the unit has quiesced by then.
    if let Err(error) = tandem::run(unit).await {
        eprintln!("counter: {error}");
        std::process::exit(1);
    }
}
