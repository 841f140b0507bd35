//! `tandem-bench --report A.json B.json ...`: the headline figures of saved runs side by side,
//! as a Markdown table (one column per run), without running anything. It regenerates the
//! tables of `docs/performance.md` and compares runs (before and after a change).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use serde_json::Value;

/// One row's figure in one run, formatted.
type Figures = BTreeMap<String, String>;

/// Rows in first-seen order, each with its figure per run.
#[derive(Default)]
struct Table {
    rows: Vec<String>,
    cells: BTreeMap<String, Figures>,
}

impl Table {
    fn put(&mut self, row: String, run: &str, figure: String) {
        if !self.cells.contains_key(&row) {
            self.rows.push(row.clone());
        }
        self.cells
            .entry(row)
            .or_default()
            .insert(run.to_owned(), figure);
    }
}

fn number(value: &Value, key: &str) -> Option<f64> {
    value.get(key)?.as_f64()
}

/// A figure with a precision that suits its size.
fn show(value: f64) -> String {
    if value >= 10_000.0 {
        format!("{:.0}k", value / 1000.0)
    } else if value >= 100.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Adds the headline figures of one report to `table`, under `run`.
fn add_run(table: &mut Table, run: &str, report: &Value) {
    for summary in report["failover"].as_array().into_iter().flatten() {
        let (Some(scenario), Some(unit)) = (summary["scenario"].as_str(), summary["unit"].as_str())
        else {
            continue;
        };
        if let (Some(median), Some(p99)) = (number(summary, "median"), number(summary, "p99")) {
            table.put(
                format!("{scenario}: p50 / p99 ({unit})"),
                run,
                format!("{} / {}", show(median), show(p99)),
            );
        }
    }
    let data = &report["data"];
    for commits in data["checkpoint"].as_array().into_iter().flatten() {
        let (Some(mode), Some(size), Some(writes)) = (
            commits["mode"].as_str(),
            commits["size"].as_u64(),
            commits["writes_per_commit"].as_u64(),
        ) else {
            continue;
        };
        let name = format!("{mode} {size} B x{writes}");
        if let (Some(p50), Some(p99)) = (number(commits, "p50_us"), number(commits, "p99_us")) {
            table.put(
                format!("{name}: p50 / p99 (µs)"),
                run,
                format!("{} / {}", show(p50), show(p99)),
            );
        }
        if let (Some(one), Some(deep32), Some(deep256)) = (
            number(commits, "sequential_per_s"),
            number(commits, "pipelined_per_s"),
            number(commits, "deep_per_s"),
        ) {
            table.put(
                format!("{name}: commits/s, 1 / 32 / 256 in flight"),
                run,
                format!("{} / {} / {}", show(one), show(deep32), show(deep256)),
            );
        }
    }
    for queued in data["queued"].as_array().into_iter().flatten() {
        if let (Some(size), Some(per_s)) = (queued["size"].as_u64(), number(queued, "writes_per_s"))
        {
            table.put(format!("queued {size} B: writes/s"), run, show(per_s));
        }
    }
    if let Some(mib_per_s) = number(&data["transfer"], "mib_per_s") {
        table.put("state transfer: MiB/s".into(), run, show(mib_per_s));
    }
    let stream = &data["stream_switchover"];
    if let (Some(lost), Some(duplicated)) = (stream["lost"].as_u64(), stream["duplicated"].as_u64())
    {
        table.put(
            "switchover under stream load: lost / duplicated".into(),
            run,
            format!("{lost} / {duplicated}"),
        );
    }
    add_scale(table, run, &report["scale"]);
}

/// The `--only scale` figures, named by the cluster's size.
fn add_scale(table: &mut Table, run: &str, scale: &Value) {
    let (Some(nodes), Some(shards)) = (scale["nodes"].as_u64(), scale["shards"].as_u64()) else {
        return;
    };
    let name = format!("scale {nodes} nodes, {shards} shards");
    if let Some(settle) = number(scale, "settle_s") {
        table.put(
            format!("{name}: start until every shard healthy (s)"),
            run,
            show(settle),
        );
    }
    let idle = &scale["idle"];
    if let Some(entries) = number(idle, "raft_entries_per_s") {
        table.put(format!("{name}: idle Raft entries/s"), run, show(entries));
    }
    if let (Some(max), Some(median)) = (number(idle, "cpu_pct_max"), number(idle, "cpu_pct_median"))
    {
        table.put(
            format!("{name}: idle daemon CPU, max / median (% of one CPU)"),
            run,
            format!("{} / {}", show(max), show(median)),
        );
    }
    if let (Some(max), Some(median)) = (number(idle, "rss_mib_max"), number(idle, "rss_mib_median"))
    {
        table.put(
            format!("{name}: daemon RSS, max / median (MiB)"),
            run,
            format!("{} / {}", show(max), show(median)),
        );
    }
    let quiet = &scale["quiet"];
    let spurious: Option<u64> = [
        "role_changes",
        "liveness_verdicts",
        "faults",
        "other_events",
        "leader_changes",
        "lease_lapses",
    ]
    .iter()
    .map(|key| quiet[*key].as_u64())
    .sum();
    if let Some(spurious) = spurious {
        table.put(
            format!("{name}: spurious events when quiet"),
            run,
            spurious.to_string(),
        );
    }
    for failover in scale["failovers"].as_array().into_iter().flatten() {
        let Some(kind) = failover["kind"].as_str() else {
            continue;
        };
        if let (Some(p50), Some(p99)) = (
            number(failover, "confirmed_p50_ms"),
            number(failover, "confirmed_p99_ms"),
        ) {
            table.put(
                format!("{name}: {kind} until confirmed, p50 / p99 (ms)"),
                run,
                format!("{} / {}", show(p50), show(p99)),
            );
        }
    }
}

/// The Markdown table of the reports at `paths`, one column per file (named by its stem).
pub fn markdown(paths: &[PathBuf]) -> anyhow::Result<String> {
    let mut table = Table::default();
    let mut runs = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let report: Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a tandem-bench JSON report (--json FILE writes one)",
                path.display()
            )
        })?;
        let run = path.file_stem().map_or_else(
            || path.display().to_string(),
            |stem| stem.to_string_lossy().into_owned(),
        );
        add_run(&mut table, &run, &report);
        runs.push(run);
    }
    let mut out = format!("| figure | {} |\n|---|", runs.join(" | "));
    out.push_str(&"---|".repeat(runs.len()));
    out.push('\n');
    for row in &table.rows {
        let cells: Vec<&str> = runs
            .iter()
            .map(|run| table.cells[row].get(run).map_or("", String::as_str))
            .collect();
        out.push_str(&format!("| {row} | {} |\n", cells.join(" | ")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_become_columns_and_missing_figures_stay_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let before = dir.path().join("before.json");
        let after = dir.path().join("after.json");
        std::fs::write(
            &before,
            r#"{"failover": [{"scenario": "switchover", "unit": "ms", "median": 2.0, "p99": 3.5}],
                "data": {"checkpoint": [{"mode": "sync", "size": 128, "writes_per_commit": 1,
                  "p50_us": 55.0, "p99_us": 120.0, "sequential_per_s": 15000.0,
                  "pipelined_per_s": 90000.0, "deep_per_s": 280000.0}],
                  "transfer": {"mib_per_s": 1200.0}}}"#,
        )
        .unwrap();
        std::fs::write(
            &after,
            r#"{"failover": [{"scenario": "switchover", "unit": "ms", "median": 2.2, "p99": 3.1}],
                "data": {"checkpoint": [], "stream_switchover": {"lost": 0, "duplicated": 0}}}"#,
        )
        .unwrap();
        let table = markdown(&[before, after]).expect("a table");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "| figure | before | after |");
        assert_eq!(lines[1], "|---|---|---|");
        assert!(lines.contains(&"| switchover: p50 / p99 (ms) | 2.0 / 3.5 | 2.2 / 3.1 |"));
        assert!(lines.contains(&"| sync 128 B x1: p50 / p99 (µs) | 55.0 / 120 |  |"));
        assert!(lines.contains(
            &"| sync 128 B x1: commits/s, 1 / 32 / 256 in flight | 15k / 90k / 280k |  |"
        ));
        assert!(lines.contains(&"| state transfer: MiB/s | 1200 |  |"));
        assert!(lines.contains(&"| switchover under stream load: lost / duplicated |  | 0 / 0 |"));
    }

    #[test]
    fn scale_figures_are_named_by_the_cluster_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("scale.json");
        std::fs::write(
            &path,
            r#"{"failover": [], "data": {}, "scale": {"nodes": 4, "shards": 200,
                "settle_s": 3.25, "idle": {"raft_entries_per_s": 0.0, "cpu_pct_max": 2.5,
                "cpu_pct_median": 1.0, "rss_mib_max": 31.0, "rss_mib_median": 30.0},
                "quiet": {"role_changes": 0, "liveness_verdicts": 0, "faults": 0,
                "other_events": 0, "leader_changes": 0, "lease_lapses": 1},
                "failovers": [{"kind": "kill-follower", "confirmed_p50_ms": 510.0,
                "confirmed_p99_ms": 760.0}]}}"#,
        )
        .unwrap();
        let table = markdown(&[path]).expect("a table");
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines
            .contains(&"| scale 4 nodes, 200 shards: start until every shard healthy (s) | 3.2 |"));
        assert!(lines.contains(&"| scale 4 nodes, 200 shards: spurious events when quiet | 1 |"));
        assert!(lines.contains(
            &"| scale 4 nodes, 200 shards: kill-follower until confirmed, p50 / p99 (ms) | 510 / 760 |"
        ));
    }

    #[test]
    fn a_file_that_is_not_a_report_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notes.json");
        std::fs::write(&path, "not json").unwrap();
        let error = markdown(&[path]).unwrap_err();
        assert!(format!("{error:#}").contains("notes.json is not a tandem-bench JSON report"));
    }
}
