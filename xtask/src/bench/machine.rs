//! What machine and which tools the figures come from.

use std::process::Command;

/// The machine, the tools and the code a run measured.
#[derive(Clone, Debug, Default)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
    pub os: String,
    /// `(tool, version line)`.
    pub tools: Vec<(String, String)>,
    /// Commit of the workspace (`git rev-parse`), marked when the working
    /// tree had changes.
    pub commit: String,
    /// UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Reads the machine's description.
#[must_use]
pub fn describe() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or_else(
            || "unknown".into(),
            |v| v.trim_start_matches([' ', '\t', ':']).trim().to_string(),
        );
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let memory_gib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    let tools = [
        ("iptables-restore", "--version"),
        ("nft", "--version"),
        ("iperf3", "--version"),
        ("bpftool", "--version"),
    ]
    .iter()
    .map(|(t, a)| ((*t).to_string(), first_line(t, &[a])))
    .collect();
    let root = crate::util::workspace_root();
    let root = root.to_string_lossy();
    let mut commit = first_line("git", &["-C", &root, "rev-parse", "--short=12", "HEAD"]);
    let dirty = Command::new("git")
        .args(["-C", &root, "status", "--porcelain", "--untracked-files=no"])
        .output()
        .is_ok_and(|o| !o.stdout.is_empty());
    if dirty {
        commit.push_str(" (with uncommitted changes)");
    }
    let date = first_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    Machine {
        cpu_model,
        cpus,
        kernel,
        memory_gib,
        os,
        tools,
        commit,
        date,
    }
}

/// The 1-minute load average (`/proc/loadavg`).
#[must_use]
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}
