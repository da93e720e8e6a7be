//! The agent's one tokio runtime.
//!
//! Everything asynchronous in the agent runs here: the Kubernetes API
//! watchers (`source::kube`), the HTTP servers (`/healthz`, `/livez`,
//! `/metrics`, every healthCheckNodePort; `http`) and the signal handler.
//! The run loop itself stays synchronous on the main thread (it makes BPF
//! map syscalls and sleeps between ticks) and hands work to the runtime
//! through its [`Handle`].
//!
//! A current-thread runtime driven by one background thread: the async
//! work is I/O-bound (three watch streams, a few HTTP servers whose
//! handlers read shared state in microseconds), so one thread serves it
//! all and leaves the second core of a small node to the run loop and the
//! datapath; a multi-thread scheduler would only add threads and work
//! stealing for nothing. Handlers that read the datapath's maps at scrape
//! time (a walk of `rev_nat` may take milliseconds) run on the runtime's
//! blocking pool, capped at [`BLOCKING_THREADS`] threads, so they never
//! stall the watchers or the health endpoints.

use std::thread::JoinHandle;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::debug;

/// Threads of the blocking pool: scrape-time map reads and the DNS lookups
/// of the Kubernetes client.
pub const BLOCKING_THREADS: usize = 4;
/// How long stopping the runtime waits for blocking work to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// The runtime could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the async runtime")]
pub struct RuntimeError {
    #[source]
    source: std::io::Error,
}

/// The running runtime; dropping it stops it (every task is cancelled,
/// every server it runs closes).
#[derive(Debug)]
pub struct Runtime {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Builds the runtime and starts the thread that drives it.
    pub fn start() -> Result<Self, RuntimeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("nodeport-blocking")
            .build()
            .map_err(|source| RuntimeError { source })?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("nodeport-rt".into())
            .spawn(move || {
                // Until the sender goes (sent or dropped).
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
                debug!("async runtime stopped");
            })
            .map_err(|source| RuntimeError { source })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the rest of the agent spawns its tasks.
    #[must_use]
    pub fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_tasks_timers_and_blocking_work_then_stops() {
        let rt = Runtime::start().expect("runtime");
        let h = rt.handle().clone();
        let slept = h.block_on(async {
            let start = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(20)).await;
            start.elapsed()
        });
        assert!(slept >= Duration::from_millis(20));
        let on = h
            .block_on(h.spawn_blocking(|| std::thread::current().name().map(str::to_owned)))
            .unwrap();
        assert_eq!(on.as_deref(), Some("nodeport-blocking"));
        let task = h.spawn(std::future::pending::<()>());
        drop(rt);
        assert!(task.is_finished(), "tasks are cancelled with the runtime");
    }
}
