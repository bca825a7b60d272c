//! Drives the real `kubechat-audit` binary: start `serve` on port 0, find its addresses,
//! talk to it over real sockets, stop it with SIGTERM or SIGKILL.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kubechat-audit"))
}

/// Runs a CLI command to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("KUBECHAT_AUDIT_LOG", "warn")
        .output()
        .expect("run kubechat-audit")
}

/// A running `serve`.
pub struct Server {
    pub child: Child,
    pub data_dir: PathBuf,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub metrics: SocketAddr,
    pub chain_id: String,
    pub stderr: PathBuf,
}

impl Server {
    /// Starts `serve` on `data_dir` with extra arguments and environment.
    pub fn start_with(data_dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let stderr = data_dir.with_extension(format!("stderr.{}", next_id()));
        let err_file = std::fs::File::create(&stderr).expect("stderr file");
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--tcp-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--metrics-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("KUBECHAT_AUDIT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if !l.is_empty() => l,
            _ => {
                let _ = child.kill();
                panic!(
                    "serve did not report its addresses; stderr:\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                );
            }
        };
        let v: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("serve's first line {line:?}: {e}"));
        let addr = |k: &str| v[k].as_str().unwrap().parse().unwrap();
        Server {
            tcp: addr("tcp"),
            http: addr("http"),
            metrics: addr("metrics"),
            chain_id: v["chain_id"].as_str().unwrap().to_owned(),
            child,
            data_dir: data_dir.to_owned(),
            stderr,
        }
    }

    pub fn start(data_dir: &Path) -> Server {
        Server::start_with(data_dir, &[], &[])
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait(Duration::from_secs(60))
            .expect("serve did not stop within 60 s of SIGTERM")
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn metrics_text(&self) -> String {
        http_request(self.metrics, "GET", "/metrics", None, &[]).2
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A valid event; `n` makes it distinct. Carries a producer `event_id` derived from `n`
/// and `salt`, so tests can resend it.
pub fn event(salt: u64, n: u64) -> Value {
    let event_type = ["command_execution", "auth_event", "system_event"][(n % 3) as usize];
    json!({
        "event_id": uuid::Uuid::from_u64_pair(salt, n).to_string(),
        "session_id": uuid::Uuid::from_u64_pair(salt, n / 10).to_string(),
        "user_id": format!("user-{}", n % 7),
        "event_type": event_type,
        "action": format!("action-{n}"),
        "kubernetes_command": format!("kubectl get pods -n ns-{n}"),
        "success": n % 5 != 0,
        "timestamp": "2026-12-03T10:00:00.5+01:00",
        "ip_address": "10.0.0.1",
        "user_agent": "tests/1.0",
        "metadata": {"n": n, "tags": ["a", "b"]},
    })
}

/// A blocking TCP producer.
pub struct TcpProducer {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl TcpProducer {
    pub fn connect(addr: SocketAddr) -> TcpProducer {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        TcpProducer {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write");
    }

    pub fn send(&mut self, v: &Value) {
        let mut line = serde_json::to_vec(v).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// Reads one answer line; None at EOF.
    pub fn answer(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => {
                Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}")))
            }
            Err(_) => None,
        }
    }

    pub fn shutdown_write(&self) {
        let _ = self.w.shutdown(std::net::Shutdown::Write);
    }
}

/// A minimal HTTP/1.1 client: returns (status, headers lower-cased, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        // The server may answer early (413) and close; ignore a broken pipe here.
        let _ = s.write_all(b);
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = hs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, hs, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// POSTs to /v1/events and parses the JSON answer.
pub fn post_events(addr: SocketAddr, body: &[u8], content_type: &str) -> (u16, Value) {
    let (status, _, text) = http_request(
        addr,
        "POST",
        "/v1/events",
        Some(body),
        &[("Content-Type", content_type)],
    );
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("HTTP {status} body {text:?}: {e}")),
    )
}

/// Every dead letter of a stopped server's data directory.
pub fn dead_letters(data_dir: &Path) -> Vec<Value> {
    let out = cli(&["dead-letters", "--data-dir", data_dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "dead-letters failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `verify` on a stopped server's data directory: (success, stdout).
pub fn verify(data_dir: &Path) -> (bool, String) {
    let out = cli(&["verify", "--data-dir", data_dir.to_str().unwrap()]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}
