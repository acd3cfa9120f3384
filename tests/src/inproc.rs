//! A daemon served from the test process: `run(listener, state, shutdown)` on a port of its
//! own, on a thread with a one-thread runtime (as `daemon::launch` would), its log lines
//! captured. For tests of a daemon's answers alone; what needs a process (signals, a crash,
//! the start-up line) spawns the real binary ([`crate::process::DaemonProcess`]).

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The served daemon; stopped (and drained) when dropped.
#[derive(Debug)]
pub struct InProcess {
    log: Arc<Mutex<Vec<u8>>>,
    trigger: Option<daemon::Trigger>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The TCP port it listens on, on 127.0.0.1.
    pub port: u16,
}

impl InProcess {
    /// Opens the daemon's state with `open` inside the runtime, as `daemon::launch` does
    /// before it binds, then serves it with `run`; logs at `level` (`info`, `debug`).
    pub fn start<S, O, OFut, R, Fut>(level: &str, open: O, run: R) -> InProcess
    where
        O: FnOnce() -> OFut + Send + 'static,
        OFut: Future<Output = S>,
        R: FnOnce(daemon::Listener, Arc<S>, daemon::Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = std::io::Result<()>>,
    {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let level = level.to_owned();
        let thread = std::thread::spawn({
            let log = Arc::clone(&log);
            move || {
                let subscriber = tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new(level))
                    .with_writer(move || Capture(Arc::clone(&log)))
                    .with_ansi(false)
                    .without_time()
                    .finish();
                let _default = tracing::subscriber::set_default(subscriber);
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let state = Arc::new(open().await);
                    let listen = "inet:127.0.0.1:0".parse().unwrap();
                    let listener =
                        daemon::Listener::bind(&listen, &daemon::UnixOptions::default()).unwrap();
                    let Ok(daemon::ListenAddr::Inet(addr)) = listener.local_addr() else {
                        panic!("a TCP listener");
                    };
                    let (trigger, shutdown) = daemon::Shutdown::new();
                    ready_tx.send((addr.port(), trigger)).unwrap();
                    run(listener, state, shutdown).await.unwrap();
                });
            }
        });
        let (port, trigger) = ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the daemon started in process");
        InProcess {
            log,
            trigger: Some(trigger),
            thread: Some(thread),
            port,
        }
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.lock().unwrap()).into_owned()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(t) = self.trigger.take() {
            t.fire();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if std::thread::panicking() {
            eprintln!("in-process daemon's log:\n{}", self.log());
        }
    }
}

/// A log writer into a shared buffer.
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
