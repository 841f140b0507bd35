//! `tandem-test-unit`: the unit the end-to-end tests and the benchmark run. It records every
//! hook with a CLOCK_MONOTONIC timestamp (shared by every process of the machine) in the file
//! named by `TANDEM_TEST_RECORD`, one line per event:
//!
//! `<monotonic ns> <unit> <generation> <pid> <event> <shard> <role> <epoch>`
//!
//! where event is `start` (a hook begins) or `done` (it returned), and role is the role asked
//! for (`QUIESCED` for quiesce, `NONE` for remove). With `TANDEM_TEST_CHILD=1` it also starts a
//! `sleep` child in its process group, to show that no descendant outlives its unit.
//!
//! With `TANDEM_TEST_WRITES=1` it also writes the checkpoint while ACTIVE: key `n` gets 1, 2, 3,
//! ... (a `sync` commit each, every 2 ms), each acknowledged value recorded as event `acked`
//! with the value in the role field; an ACTIVE hook records event `resume` with the value its
//! replica holds. With `TANDEM_TEST_BULK=<count>` the first ACTIVE also writes `count` sections
//! of 1 KiB (`b0000000`..; `TANDEM_TEST_BULK_VALUE` sets another size), for state-transfer
//! tests. With `TANDEM_TEST_WRITES=queued` it queues the writes instead
//! (`commit_queued`, 20 values every 2 ms, a flush every 50 rounds), recording event `queued`
//! with the last value of each round; its quiesce hook stops the queueing for the shard, so
//! every value recorded `queued` at an epoch was queued before a switchover's quiesce.
//!
//! Stream messages (the benchmark's ingress load) are applied by writing `m/<payload>` and
//! consuming the message in one sync commit, recorded as event `msg` with the payload in the
//! role field; an ingress sender gets `ok <payload>` back. With `TANDEM_TEST_BENCH=<count>` and `TANDEM_TEST_BENCH_OUT=<file>`, the first
//! ACTIVE measures checkpoint commits once its STANDBY is in sync (sync and async, 128 B and
//! 64 KiB values, sequential latency and throughput with 32 and 256 commits in flight) and writes one
//! JSON line per measurement to the file (with `TANDEM_TEST_BENCH_ROWS=queued` as well, only the
//! queued commits of 128 B; with `TANDEM_TEST_BENCH_ROWS=small`, only the sync and async commits
//! of one 128 B write).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tandem::{monotonic_ns, Context, HookError, Role, ShardName, Unit};

struct Recorder {
    /// The record file, opened once for appending (every line is one write).
    file: Arc<RecordFile>,
    /// Write the checkpoint while ACTIVE (and how many bulk sections), once started.
    writes: Option<u64>,
    /// Queue the writes (`commit_queued`) instead of committing each.
    queued: bool,
    /// Shards (at an epoch) whose quiesce hook ran: no more writes are queued for them by the
    /// loop. Held by the loop for a whole round, and by the quiesce hook while it queues its
    /// last values.
    stopped: Arc<tokio::sync::Mutex<Stopped>>,
    writing: bool,
    /// The checkpoint benchmark to run once ACTIVE: commits per measurement, output file.
    bench: Option<(usize, PathBuf)>,
    benched: bool,
}

/// The value of key `n` in the local replica of `shard`.
async fn stored(ctx: &Context, shard: &ShardName) -> Result<u64, HookError> {
    let value = ctx
        .checkpoint(shard)
        .get("n")
        .await
        .map_err(|error| HookError::new(format!("read n: {error}")))?;
    Ok(value
        .and_then(|value| String::from_utf8(value).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0))
}

/// What the queueing loop and the quiesce hook share.
#[derive(Debug, Default)]
struct Stopped {
    shards: std::collections::BTreeSet<(ShardName, u64)>,
    /// The last value queued, per shard.
    last: BTreeMap<ShardName, u64>,
}

/// Writes `n` (and the bulk sections once) for every shard the unit acts ACTIVE for.
async fn write_loop(ctx: Context, recorder: Arc<Recorder>, bulk: u64) {
    let mut next: BTreeMap<ShardName, (u64, u64)> = BTreeMap::new();
    let mut round = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        round += 1;
        for shard in ctx.active_shards() {
            let Some((_, epoch)) = ctx.role(&shard) else {
                continue;
            };
            let mut stopped = recorder.stopped.clone().lock_owned().await;
            if recorder.queued && stopped.shards.contains(&(shard.clone(), epoch)) {
                continue;
            }
            let n = match next.get(&shard) {
                Some((at, n)) if *at == epoch => *n,
                _ => {
                    let Ok(held) = stored(&ctx, &shard).await else {
                        continue;
                    };
                    if bulk > 0 && write_bulk(&ctx, &shard, bulk).await.is_err() {
                        continue;
                    }
                    held + 1
                }
            };
            if recorder.queued {
                let checkpoint = ctx.checkpoint(&shard);
                let mut queued = Ok(());
                for value in n..n + 20 {
                    queued = checkpoint
                        .transaction()
                        .put("n", value.to_string())
                        .commit_queued()
                        .await;
                    if queued.is_err() {
                        break;
                    }
                }
                if round.is_multiple_of(50) && queued.is_ok() {
                    queued = checkpoint.flush().await.map(|_| ());
                }
                match queued {
                    Ok(()) => {
                        stopped.last.insert(shard.clone(), n + 19);
                        let _ =
                            recorder.record(&ctx, "queued", &shard, &(n + 19).to_string(), epoch);
                        next.insert(shard, (epoch, n + 20));
                    }
                    Err(error) => {
                        // Reported (and cleared) by the flush; go on from the replica.
                        let _ = checkpoint.flush().await;
                        let _ = recorder.record(
                            &ctx,
                            "queue-error",
                            &shard,
                            &error.to_string().replace(' ', "_"),
                            epoch,
                        );
                        next.remove(&shard);
                    }
                }
                continue;
            }
            match ctx.checkpoint(&shard).put("n", n.to_string()).await {
                Ok(_) => {
                    let _ = recorder.record(&ctx, "acked", &shard, &n.to_string(), epoch);
                    next.insert(shard, (epoch, n + 1));
                }
                Err(_) => {
                    next.remove(&shard);
                }
            }
        }
    }
}

/// The bulk sections, unless a previous ACTIVE wrote them.
async fn write_bulk(ctx: &Context, shard: &ShardName, count: u64) -> Result<(), tandem::DataError> {
    let checkpoint = ctx.checkpoint(shard);
    if checkpoint.get("bulk-done").await?.is_some() {
        return Ok(());
    }
    let size = std::env::var("TANDEM_TEST_BULK_VALUE")
        .ok()
        .and_then(|size| size.parse().ok())
        .unwrap_or(1024usize);
    let value = vec![b'v'; size];
    // About 4 MiB per commit (a commit carries at most 8 MiB).
    let per_commit = (4 * 1024 * 1024 / size.max(1)).clamp(1, 256) as u64;
    let mut first = 0;
    while first < count {
        let mut transaction = checkpoint.transaction();
        for index in first..(first + per_commit).min(count) {
            transaction = transaction.put(format!("b{index:07}"), value.clone());
        }
        transaction.commit_sync().await?;
        first += per_commit;
    }
    checkpoint.put("bulk-done", "1").await?;
    Ok(())
}

/// The record file every unit of a test appends to.
#[derive(Debug)]
struct RecordFile {
    path: PathBuf,
    file: std::fs::File,
}

impl Recorder {
    /// Appends one line with a single write, so lines of several processes never interleave.
    fn record(
        &self,
        ctx: &Context,
        event: &str,
        shard: &ShardName,
        role: &str,
        epoch: u64,
    ) -> Result<(), HookError> {
        let line = format!(
            "{} {} {} {} {event} {shard} {role} {epoch}\n",
            monotonic_ns(),
            ctx.unit(),
            ctx.generation(),
            std::process::id()
        );
        let RecordFile { path, file } = &*self.file;
        (&*file)
            .write_all(line.as_bytes())
            .map_err(|error| HookError::new(format!("write {}: {error}", path.display())))
    }
}

/// A pipelined row of the checkpoint benchmark runs its `count` commits and then goes on until
/// it has run this long: a few thousand commits 256 deep take a few milliseconds, so one msync
/// round or one late wake-up would decide the figure.
const PIPELINED_RUN_MIN: Duration = Duration::from_millis(500);
/// ...but never more than this many times `count` commits.
const PIPELINED_COUNT_FACTOR_MAX: usize = 100;

/// One commit of the checkpoint benchmark: `writes` puts of `value` to keys that cycle over
/// 64 per write position.
async fn one_commit(
    checkpoint: &tandem::Checkpoint,
    value: &[u8],
    writes: usize,
    index: usize,
    sync: bool,
) -> Result<u64, tandem::DataError> {
    let transaction = (0..writes).fold(checkpoint.transaction(), |transaction, write| {
        transaction.put(format!("bench/{}/{write}", index % 64), value.to_vec())
    });
    if sync {
        transaction.commit_sync().await
    } else {
        transaction.commit_async().await
    }
}

/// One measurement of the checkpoint benchmark.
async fn measure(
    ctx: &Context,
    shard: &ShardName,
    sync: bool,
    size: usize,
    writes: usize,
    count: usize,
) -> Result<String, tandem::DataError> {
    let checkpoint = ctx.checkpoint(shard);
    let value = vec![b'x'; size];
    let commit = |index: usize| one_commit(&checkpoint, &value, writes, index, sync);
    // Warm up first, as the benchmark does for its Redis peer: a tenth as many commits (at
    // least 100) of the same kind, not measured. The first commits after a cluster starts
    // meet cold caches, a STANDBY still settling and lazily mapped files.
    for index in 0..(count / 10).max(100) {
        commit(index).await?;
    }
    let mut latencies = Vec::with_capacity(count);
    let started = std::time::Instant::now();
    for index in 0..count {
        let at = std::time::Instant::now();
        commit(index).await?;
        latencies.push(at.elapsed().as_secs_f64() * 1e6);
    }
    let sequential = count as f64 / started.elapsed().as_secs_f64();
    // Throughput with 32 and with 256 commits in flight, over at least `PIPELINED_RUN_MIN`:
    // that many tasks, each committing in turn (as the Redis peer's `SET` + `WAIT` rows use
    // that many connections), so that no commit pays for a task of its own.
    let mut pipelined = [(0.0, 0); 2];
    for (depth, (rate, issued)) in [32, 256].into_iter().zip(&mut pipelined) {
        let started = std::time::Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let limit = count.saturating_mul(PIPELINED_COUNT_FACTOR_MAX);
        let mut committers = tokio::task::JoinSet::new();
        for _ in 0..depth {
            let (next, checkpoint, value) = (next.clone(), checkpoint.clone(), value.clone());
            committers.spawn(async move {
                let mut made = 0usize;
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= limit || (index >= count && started.elapsed() >= PIPELINED_RUN_MIN)
                    {
                        return Ok::<_, tandem::DataError>(made);
                    }
                    one_commit(&checkpoint, &value, writes, index, sync).await?;
                    made += 1;
                }
            });
        }
        let mut made = 0;
        while let Some(done) = committers.join_next().await {
            made += done.expect("the committing task ran")?;
        }
        *rate = made as f64 / started.elapsed().as_secs_f64();
        *issued = made;
    }
    let [(pipelined, pipelined_count), (deep, deep_count)] = pipelined;
    latencies.sort_by(f64::total_cmp);
    let at = |quantile: f64| {
        latencies
            [((latencies.len() as f64 * quantile).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    Ok(format!(
        "{{\"mode\":\"{}\",\"size\":{size},\"writes_per_commit\":{writes},\"count\":{count},\"p50_us\":{:.1},\"p99_us\":{:.1},\"sequential_per_s\":{sequential:.0},\"pipelined_per_s\":{pipelined:.0},\"pipelined_mib_per_s\":{:.1},\"deep_per_s\":{deep:.0},\"pipelined_count\":{pipelined_count},\"deep_count\":{deep_count}}}",
        if sync { "sync" } else { "async" },
        at(0.5),
        at(0.99),
        pipelined * (size * writes) as f64 / (1024.0 * 1024.0)
    ))
}

/// The queued (write-behind) benchmark: `count` single-write commits with
/// `commit_queued`, then a flush (which waits for the STANDBY); the rate counts the flush.
async fn measure_queued(
    ctx: &Context,
    shard: &ShardName,
    size: usize,
    count: usize,
) -> Result<String, tandem::DataError> {
    let checkpoint = ctx.checkpoint(shard);
    let value = bytes_of(size);
    let mut calls = Vec::with_capacity(count);
    let started = std::time::Instant::now();
    for index in 0..count {
        let at = std::time::Instant::now();
        checkpoint
            .transaction()
            .put(format!("queued/{}", index % 4096), value.clone())
            .commit_queued()
            .await?;
        calls.push(at.elapsed().as_secs_f64() * 1e6);
    }
    let queued = started.elapsed();
    checkpoint.flush().await?;
    let total = started.elapsed();
    calls.sort_by(f64::total_cmp);
    let at = |quantile: f64| {
        calls[((calls.len() as f64 * quantile).ceil() as usize).clamp(1, calls.len()) - 1]
    };
    let per_s = count as f64 / total.as_secs_f64();
    Ok(format!(
        "{{\"mode\":\"queued\",\"size\":{size},\"count\":{count},\"call_p50_us\":{:.2},\"call_p99_us\":{:.2},\"call_max_us\":{:.0},\"writes_per_s\":{per_s:.0},\"mib_per_s\":{:.1},\"flush_ms\":{:.1}}}",
        at(0.5),
        at(0.99),
        at(1.0),
        per_s * size as f64 / (1024.0 * 1024.0),
        (total - queued).as_secs_f64() * 1000.0
    ))
}

fn bytes_of(size: usize) -> Vec<u8> {
    vec![b'x'; size]
}

/// The checkpoint benchmark: waits for an in-sync STANDBY, then measures and writes the
/// results to `out`, one JSON line each.
async fn bench(ctx: Context, shard: ShardName, count: usize, out: PathBuf) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ctx
        .checkpoint(&shard)
        .position()
        .await
        .map_or(true, |position| position.in_sync == 0)
    {
        if std::time::Instant::now() > deadline {
            let _ = std::fs::write(&out, "{\"error\":\"no STANDBY in sync within 30 s\"}\n");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut lines = String::new();
    // `TANDEM_TEST_BENCH_ROWS`: `queued` for only the queued commits of 128 B, `small` for
    // only the sync and async commits of one 128 B write; unset for every row.
    let rows = std::env::var("TANDEM_TEST_BENCH_ROWS").unwrap_or_default();
    let queued_only = rows == "queued";
    let small_only = rows == "small";
    // (sync, value size, writes per commit, commits)
    for (sync, size, writes, count) in [
        (true, 128, 1, count),
        (false, 128, 1, count),
        (true, 65536, 1, count / 4),
        (false, 65536, 1, count / 4),
        (true, 128, 16, count / 4),
        (false, 128, 16, count / 4),
    ] {
        if queued_only || (small_only && (size, writes) != (128, 1)) {
            continue;
        }
        match measure(&ctx, &shard, sync, size, writes, count.max(1)).await {
            Ok(line) => lines.push_str(&line),
            Err(error) => lines.push_str(&format!("{{\"error\":\"{error}\"}}")),
        }
        lines.push('\n');
    }
    // Queued commits: many more small ones (they are that much cheaper, and a rate needs a
    // run long enough to be sustained), and 64 KiB.
    for (size, count) in [
        (128, count * tandem_e2e::QUEUED_SMALL_PER_COUNT),
        (65536, count / 4),
    ] {
        if small_only || (queued_only && size > 128) {
            continue;
        }
        match measure_queued(&ctx, &shard, size, count.max(1)).await {
            Ok(line) => lines.push_str(&line),
            Err(error) => lines.push_str(&format!("{{\"error\":\"{error}\"}}")),
        }
        lines.push('\n');
    }
    let _ = std::fs::write(&out, lines);
}

impl Unit for Recorder {
    async fn message(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        message: tandem::Message,
    ) -> Result<(), HookError> {
        let id = String::from_utf8_lossy(&message.payload).trim().to_owned();
        if id.is_empty() || id.contains(' ') {
            return Err(HookError::new("a benchmark message is one word"));
        }
        ctx.checkpoint(shard)
            .transaction()
            .put(format!("m/{id}"), "1")
            .consume(message.seq)
            .commit_sync()
            .await
            .map_err(|error| HookError::new(error.to_string()))?;
        let epoch = ctx.role(shard).map_or(0, |(_, epoch)| epoch);
        self.record(ctx, "msg", shard, &id, epoch)?;
        if message.origin != tandem::data::Origin::Client {
            // An ingress sender hears back (a TCP sender on its connection).
            let _ = ctx.reply(shard, &message, format!("ok {id}")).await;
        }
        Ok(())
    }

    async fn assign(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        role: Role,
        epoch: u64,
    ) -> Result<(), HookError> {
        self.record(ctx, "start", shard, role.name(), epoch)?;
        if let Some(bulk) = self.writes {
            if !self.writing {
                self.writing = true;
                let recorder = Arc::new(Recorder {
                    file: self.file.clone(),
                    writes: None,
                    queued: self.queued,
                    stopped: self.stopped.clone(),
                    writing: false,
                    bench: None,
                    benched: false,
                });
                tokio::spawn(write_loop(ctx.clone(), recorder, bulk));
            }
            if role == Role::Active {
                let held = stored(ctx, shard).await?;
                self.record(ctx, "resume", shard, &held.to_string(), epoch)?;
            }
        }
        if role == Role::Active && !self.benched {
            if let Some((count, out)) = self.bench.clone() {
                self.benched = true;
                tokio::spawn(bench(ctx.clone(), shard.clone(), count, out));
            }
        }
        self.record(ctx, "done", shard, role.name(), epoch)
    }

    async fn quiesce(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        let epoch = ctx.role(shard).map_or(0, |(_, epoch)| epoch);
        self.record(ctx, "start", shard, "QUIESCED", epoch)?;
        if self.queued {
            // Finishing its work: the last 2000 values, queued right before the hook returns
            // (the switch must wait for them).
            let mut stopped = self.stopped.lock().await;
            stopped.shards.insert((shard.clone(), epoch));
            if let Some(last) = stopped.last.get(shard).copied() {
                let checkpoint = ctx.checkpoint(shard);
                for value in last + 1..=last + 2000 {
                    checkpoint
                        .transaction()
                        .put("n", value.to_string())
                        .commit_queued()
                        .await
                        .map_err(|error| HookError::new(error.to_string()))?;
                }
                stopped.last.insert(shard.clone(), last + 2000);
                self.record(ctx, "queued", shard, &(last + 2000).to_string(), epoch)?;
            }
        }
        self.record(ctx, "done", shard, "QUIESCED", epoch)
    }

    async fn remove(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        let epoch = ctx.role(shard).map_or(0, |(_, epoch)| epoch);
        self.record(ctx, "start", shard, "NONE", epoch)?;
        self.record(ctx, "done", shard, "NONE", epoch)
    }
}

fn main() {
    // The SDK's warnings (a fence and why, refused queued commits) go to the unit's log.
    tracing_subscriber::fmt().with_ansi(false).init();
    let Some(path) = std::env::var_os("TANDEM_TEST_RECORD") else {
        eprintln!("tandem-test-unit: TANDEM_TEST_RECORD is not set");
        std::process::exit(2);
    };
    if std::env::var("TANDEM_TEST_CHILD").is_ok_and(|value| value == "1") {
        // A descendant in the unit's process group; tandem must never leave it behind.
        let child = std::process::Command::new("sleep").arg("3600").spawn();
        if let Ok(child) = child {
            eprintln!("tandem-test-unit: child pid {}", child.id());
        }
    }
    let queued = std::env::var("TANDEM_TEST_WRITES").is_ok_and(|value| value == "queued");
    let writes = std::env::var("TANDEM_TEST_WRITES")
        .is_ok_and(|value| value == "1" || value == "queued")
        .then(|| {
            std::env::var("TANDEM_TEST_BULK")
                .ok()
                .and_then(|count| count.parse().ok())
                .unwrap_or(0)
        });
    let bench = std::env::var("TANDEM_TEST_BENCH")
        .ok()
        .and_then(|count| count.parse().ok())
        .zip(std::env::var_os("TANDEM_TEST_BENCH_OUT").map(PathBuf::from));
    let path = PathBuf::from(path);
    let file = match OpenOptions::new().create(true).append(true).open(&path) {
        Ok(file) => file,
        Err(error) => {
            eprintln!("tandem-test-unit: open {}: {error}", path.display());
            std::process::exit(1);
        }
    };
    let recorder = Recorder {
        file: Arc::new(RecordFile { path, file }),
        writes,
        queued,
        stopped: Default::default(),
        writing: false,
        bench,
        benched: false,
    };
    // The SDK's runtime: one thread, with the node's idle polling (`cluster.unit_idle_poll_us`).
    let result = tandem::runtime().and_then(|runtime| runtime.block_on(tandem::run(recorder)));
    if let Err(error) = result {
        eprintln!("tandem-test-unit: {error}");
        std::process::exit(1);
    }
}
