//! Small helpers shared by the harness modules.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `2 * bytes` lowercase hex digits from `/dev/urandom`.
#[must_use]
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .unwrap_or_else(|e| panic!("cannot read /dev/urandom: {e}"));
    buf.iter()
        .fold(String::with_capacity(bytes * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Polls `f` every 50 ms until it returns `Some`, or gives up after `timeout`.
///
/// `f` runs at least once, and once more at the deadline.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50).min(deadline - now));
    }
}

/// `<target>/<profile>/<name>` derived from the running test executable
/// (`<target>/<profile>/deps/<test>-<hash>`).
pub(crate) fn sibling_of_deps(name: &str) -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|e| panic!("cannot find the current executable: {e}"));
    let dir = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent directory", exe.display()));
    let profile_dir = if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    profile_dir.join(name)
}

/// Runs a command to completion and returns its stdout; panics with the
/// command line, exit status and stderr when it fails.
pub(crate) fn run_checked(cmd: &mut Command) -> String {
    let out = run_output(cmd);
    assert!(
        out.status.success(),
        "command failed ({}): {}\nstdout: {}\nstderr: {}",
        out.status,
        describe(cmd),
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end(),
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command to completion; panics only if it cannot be started.
pub(crate) fn run_output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)))
}

/// The command line of `cmd`, for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> &str {
    let body = text.trim_end_matches('\n');
    match body.rmatch_indices('\n').nth(lines.saturating_sub(1)) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

/// Reads a file as text (lossily), or an empty string if it does not exist.
pub(crate) fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

/// A directory removed (recursively) on drop.
#[derive(Debug)]
pub(crate) struct DirGuard {
    path: PathBuf,
    keep: bool,
}

impl DirGuard {
    /// Creates `path` (which must not exist yet) and its missing parents.
    pub(crate) fn create(path: PathBuf, keep: bool) -> Self {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        DirGuard { path, keep }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("nodeport-tests: keeping {}", self.path.display());
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!("nodeport-tests: cannot remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn random_hex_has_requested_length() {
        let h = random_hex(3);
        assert_eq!(h.len(), 6);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
