//! `wake`: what one cross-CPU wake-up costs on this host, and what idle polling buys.
//!
//! Two threads pinned to CPUs 0 and 1, each running a current-thread tokio runtime built by
//! `tandem_io::idle_poll::runtime` (as the daemon builds its own), bounce 8 bytes over a Unix
//! socket pair; between messages each runtime parks, so every round trip wakes each side
//! once on its own CPU unless idle polling kept it running. Run plain, then with the window.
//! A sync commit crosses between processes like this several times; the difference between
//! the rows is what `cluster.idle_poll_us` can save per hop on this host, placement aside.

use std::time::{Duration, Instant};

use serde::Serialize;
use tandem_io::idle_poll::Polling;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One row: round trips with a given idle polling window.
#[derive(Debug, Clone, Serialize)]
pub struct Wake {
    /// The window, µs (0: none).
    pub idle_poll_us: u64,
    pub round_trips: usize,
    pub p50_us: f64,
    pub p99_us: f64,
}

fn pin(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it, and
    // sched_setaffinity(0, ..) changes only the calling thread.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if result != 0 {
        anyhow::bail!(
            "pin a thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Pins the calling thread and builds its runtime.
fn setup(cpu: usize, window_us: u64) -> anyhow::Result<tokio::runtime::Runtime> {
    pin(cpu)?;
    let (runtime, polling) = tandem_io::idle_poll::runtime(Duration::from_micros(window_us))?;
    let expected = if window_us > 0 {
        Polling::On
    } else {
        Polling::Off
    };
    anyhow::ensure!(
        polling == expected,
        "idle polling on CPU {cpu}: {polling:?}"
    );
    Ok(runtime)
}

fn run(window_us: u64, round_trips: usize) -> anyhow::Result<Wake> {
    let (near, far) = std::os::unix::net::UnixStream::pair()?;
    near.set_nonblocking(true)?;
    far.set_nonblocking(true)?;
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = setup(1, window_us)?;
        runtime.block_on(async move {
            let mut far = tokio::net::UnixStream::from_std(far)?;
            let mut buffer = [0u8; 8];
            for _ in 0..round_trips {
                far.read_exact(&mut buffer).await?;
                far.write_all(&buffer).await?;
            }
            Ok(())
        })
    });
    // The measuring side runs on a thread of its own too: pinning the caller would pin every
    // process the benchmark starts after this (daemons and units inherit the affinity).
    let near = std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
        let runtime = setup(0, window_us)?;
        measure(&runtime, near, round_trips)
    });
    let samples = near.join();
    echo.join()
        .map_err(|_| anyhow::anyhow!("the echo thread panicked"))??;
    let mut samples = samples.map_err(|_| anyhow::anyhow!("the measuring thread panicked"))??;
    samples.sort_by(f64::total_cmp);
    Ok(Wake {
        idle_poll_us: window_us,
        round_trips,
        p50_us: crate::quantile(&samples, 0.5),
        p99_us: crate::quantile(&samples, 0.99),
    })
}

/// `round_trips` timed round trips of 8 bytes through the echo at the far end of `near`.
fn measure(
    runtime: &tokio::runtime::Runtime,
    near: std::os::unix::net::UnixStream,
    round_trips: usize,
) -> anyhow::Result<Vec<f64>> {
    runtime.block_on(async move {
        let mut near = tokio::net::UnixStream::from_std(near)?;
        let mut samples = Vec::with_capacity(round_trips);
        let mut buffer = [0u8; 8];
        for round in 0..round_trips as u64 {
            let start = Instant::now();
            near.write_all(&round.to_le_bytes()).await?;
            near.read_exact(&mut buffer).await?;
            samples.push(start.elapsed().as_secs_f64() * 1e6);
            anyhow::ensure!(
                u64::from_le_bytes(buffer) == round,
                "the echo came back out of order"
            );
        }
        anyhow::Ok(samples)
    })
}

/// Plain, then with idle polling of `window_us`, `round_trips` each; None on a single CPU.
pub fn wake(window_us: u64, round_trips: usize) -> anyhow::Result<Option<Vec<Wake>>> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return Ok(None);
    }
    Ok(Some(vec![
        run(0, round_trips)?,
        run(window_us, round_trips)?,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPUs the calling thread may run on.
    fn affinity() -> Vec<usize> {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(unsafe { libc::sched_getaffinity(0, size, &mut set) }, 0);
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    }

    #[test]
    fn measuring_leaves_the_callers_cpus_alone() {
        // The processes the benchmark starts after `wake` inherit its main thread's affinity:
        // pinned to one CPU, every later scenario would measure a one-CPU host.
        let before = affinity();
        let rows = wake(200, 100).expect("wake");
        assert_eq!(affinity(), before);
        if let Some(rows) = rows {
            assert_eq!(rows.len(), 2);
            assert!(rows
                .iter()
                .all(|row| row.round_trips == 100 && row.p50_us > 0.0));
        }
    }
}
