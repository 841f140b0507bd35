//! What the benchmark ran on, as far as it changes the figures: CPUs, the kernel, and how an
//! idle CPU waits for work. Latencies of a few tens of microseconds are mostly wakeups of one
//! process by another; in a virtual machine whose idle vCPUs halt at once (no halt polling),
//! each wakeup of a process on another vCPU costs an exit to the hypervisor, tens of
//! microseconds, and the figures measure that as much as tandem. A report says so, so that
//! its numbers can be read and compared.

use serde::Serialize;

/// Facts about the host, each `None` where the host does not tell.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// CPUs this process may run on.
    pub cpus: usize,
    /// `uname -r`.
    pub kernel: Option<String>,
    /// The cpuidle driver (`haltpoll` in a KVM guest that has it).
    pub cpuidle_driver: Option<String>,
    /// The cpuidle governor.
    pub cpuidle_governor: Option<String>,
    /// How long an idle vCPU polls before it halts, ns (the haltpoll driver's
    /// `guest_halt_poll_ns`; 0: it halts at once).
    pub guest_halt_poll_ns: Option<u64>,
    /// Transparent huge pages: the selected mode.
    pub transparent_hugepages: Option<String>,
}

/// A sysfs or procfs file's content, trimmed; `None` when it cannot be read.
fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

/// The selected entry of a sysfs choice list such as `always [madvise] never`.
fn selected(choices: &str) -> Option<String> {
    let start = choices.find('[')?;
    let end = choices[start..].find(']')? + start;
    Some(choices[start + 1..end].to_string())
}

impl Host {
    /// Reads the facts off this machine.
    pub fn read() -> Self {
        Self {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpuidle_driver: read("/sys/devices/system/cpu/cpuidle/current_driver"),
            cpuidle_governor: read("/sys/devices/system/cpu/cpuidle/current_governor"),
            guest_halt_poll_ns: read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
                .and_then(|text| text.parse().ok()),
            transparent_hugepages: read("/sys/kernel/mm/transparent_hugepage/enabled")
                .and_then(|text| selected(&text)),
        }
    }

    /// One line for the report's head.
    pub fn line(&self) -> String {
        let or_unknown = |value: &Option<String>| value.clone().unwrap_or_else(|| "?".into());
        let mut line = format!(
            "host: {} CPUs, kernel {}, cpuidle {} / {}, THP {}",
            self.cpus,
            or_unknown(&self.kernel),
            or_unknown(&self.cpuidle_driver),
            or_unknown(&self.cpuidle_governor),
            or_unknown(&self.transparent_hugepages),
        );
        if let Some(ns) = self.guest_halt_poll_ns {
            line.push_str(&format!(", guest_halt_poll_ns {ns}"));
        }
        line
    }

    /// A warning when the figures are known to be bounded by the host rather than by tandem.
    pub fn caveat(&self) -> Option<String> {
        (self.guest_halt_poll_ns == Some(0)).then(|| {
            "note: this VM's idle vCPUs halt without polling (guest_halt_poll_ns 0): every \
             wakeup of a process on another vCPU exits to the hypervisor, which bounds the \
             microsecond latencies below; the kernel's default is 200000 (see \
             docs/performance.md on wake-ups)"
                .to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_choice_is_the_bracketed_one() {
        assert_eq!(
            selected("always [madvise] never").as_deref(),
            Some("madvise")
        );
        assert_eq!(
            selected("[always] madvise never").as_deref(),
            Some("always")
        );
        assert_eq!(selected("always madvise never"), None);
    }

    #[test]
    fn only_a_halt_without_polling_gets_a_caveat() {
        let mut host = Host {
            cpus: 2,
            kernel: None,
            cpuidle_driver: Some("haltpoll".into()),
            cpuidle_governor: Some("haltpoll".into()),
            guest_halt_poll_ns: Some(0),
            transparent_hugepages: None,
        };
        assert!(host.caveat().is_some());
        assert!(host.line().contains("guest_halt_poll_ns 0"));
        assert!(host.line().contains("kernel ?"));
        host.guest_halt_poll_ns = Some(200_000);
        assert!(host.caveat().is_none());
        host.guest_halt_poll_ns = None;
        assert!(host.caveat().is_none());
        assert!(!host.line().contains("guest_halt_poll_ns"));
    }
}
