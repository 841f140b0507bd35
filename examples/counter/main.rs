//! `counter`: a minimal stateful unit on tandem's checkpoints and streams.
//!
//! Each message of a shard's stream is `+N` (from the shard's UDP ingress, or from a client
//! through `tandemctl send` / `tandem::client`). The ACTIVE adds N to the shard's count and
//! commits the new count together with the message's stream position, in one `sync` commit:
//! the STANDBY has every count the ACTIVE acknowledged, and a new ACTIVE (after a switchover or
//! a failover) gets exactly the messages after the last one counted, so the count never skips
//! or repeats a message. An ingress sender gets `count=<value>` back from the same address.
//!
//! Run by tandemd as a unit of a service (see `tandemctl dev up`), never by hand.

use tandem::data::{Message, Origin};
use tandem::{Context, HookError, Role, ShardName, Unit};

/// The checkpoint key holding the count.
const COUNT_KEY: &[u8] = b"count";

struct Counter;

impl Unit for Counter {
    async fn assign(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        role: Role,
        epoch: u64,
    ) -> Result<(), HookError> {
        match read_count(ctx, shard).await {
            Ok(count) => {
                tracing::info!(unit = ctx.unit(), %shard, %role, epoch, count, "role assigned")
            }
            Err(error) => {
                tracing::info!(unit = ctx.unit(), %shard, %role, epoch, %error, "role assigned")
            }
        }
        Ok(())
    }

    async fn message(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        message: Message,
    ) -> Result<(), HookError> {
        let text = String::from_utf8_lossy(&message.payload);
        let add: u64 = match text.trim().strip_prefix('+').map(str::parse) {
            Some(Ok(add)) => add,
            _ => {
                // Not ours: consume it without counting, so it is not delivered again.
                tracing::warn!(%shard, seq = message.seq, payload = %text, "not a +N message; skipped");
                ctx.checkpoint(shard)
                    .transaction()
                    .consume(message.seq)
                    .commit_sync()
                    .await
                    .map_err(|error| HookError::new(error.to_string()))?;
                return Ok(());
            }
        };
        let count = read_count(ctx, shard).await? + add;
        ctx.checkpoint(shard)
            .transaction()
            .put(COUNT_KEY, count.to_string())
            .consume(message.seq)
            .commit_sync()
            .await
            .map_err(|error| HookError::new(error.to_string()))?;
        if count.is_multiple_of(100) {
            tracing::info!(unit = ctx.unit(), %shard, count, seq = message.seq, "counting");
        }
        if message.origin == Origin::Udp {
            // A lost reply is the sender's to notice (UDP); the count is committed already.
            let _ = ctx.reply(shard, &message, format!("count={count}")).await;
        }
        Ok(())
    }

    async fn quiesce(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        tracing::info!(unit = ctx.unit(), %shard, "quiescing: every counted message is committed");
        Ok(())
    }

    async fn remove(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        tracing::info!(unit = ctx.unit(), %shard, "shard removed");
        Ok(())
    }
}

/// The count in the local replica of `shard`'s checkpoint (0 when none yet).
async fn read_count(ctx: &Context, shard: &ShardName) -> Result<u64, HookError> {
    let value = ctx
        .checkpoint(shard)
        .get(COUNT_KEY)
        .await
        .map_err(|error| HookError::new(format!("read the count: {error}")))?;
    Ok(value
        .and_then(|value| String::from_utf8(value).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0))
}

fn main() {
    tracing_subscriber::fmt().with_ansi(false).init();
    // `run` returns when tandemd closes the connection; the unit has quiesced by then. The
    // SDK's runtime is one thread with the node's idle polling (`cluster.unit_idle_poll_us`).
    let result = tandem::runtime().and_then(|runtime| runtime.block_on(tandem::run(Counter)));
    if let Err(error) = result {
        eprintln!("counter: {error}");
        std::process::exit(1);
    }
}
