//! A real PostgreSQL for integration tests, started from the local server binaries.
//!
//! The project's rule is that tests never mock PostgreSQL. This module finds `initdb`, `pg_ctl`,
//! `postgres` and `psql`, builds a throwaway cluster in a temporary directory with `initdb`, and
//! runs it with `pg_ctl` on a free TCP port of 127.0.0.1 with trust authentication and settings
//! that trade durability for speed (`fsync=off`).
//!
//! Two kinds of server are offered:
//!
//! - [`shared`]: one server per test process, created on first use and shared by every test in
//!   that process. Tests isolate themselves with [`PgServer::fresh_database`].
//! - [`PgServer::start_dedicated`]: a server owned by one test, which may [`PgServer::stop`] and
//!   [`PgServer::start`] it to simulate an outage. Dropping it stops it and removes its files.
//!
//! # Layout on disk
//!
//! ```text
//! $TMPDIR/kubechat-audit-pg/            one root for every test process (mode 1777, like /tmp)
//!   <pid>/                              one directory per test process, named by its pid
//!     shared/                           the shared server of that process
//!       data/                           the cluster (PGDATA)
//!       sock/                           the unix socket directory
//!       pg.log                          server log and the output of every child process
//!     dedicated-<n>/                    a dedicated server, same layout
//! ```
//!
//! # Cleanup
//!
//! A `static` is never dropped, so the shared server needs cleanup outside `Drop`. Three layers
//! make sure clusters neither keep running nor pile up:
//!
//! 1. `libc::atexit`: when the test binary exits normally (libtest returns from `main` on success
//!    and calls `std::process::exit` on failure; both run atexit handlers), every cluster under
//!    `<pid>/` is stopped with `pg_ctl stop -m immediate` and the directory is removed.
//! 2. A watchdog: a small `sh` loop in its own process group (so a terminal's Ctrl-C does not
//!    reach it) that polls the test process every second and, once it is gone, does the same
//!    cleanup. This covers exits that skip atexit handlers: signals, `abort`, a panic that
//!    aborts. The atexit handler kills the watchdog, so a normal exit leaves nothing behind.
//! 3. A sweep: the first use in a process removes every `<pid>/` directory whose process is no
//!    longer alive (after stopping its clusters), which covers a watchdog that was itself killed.
//!
//! Dedicated servers are stopped and removed by `Drop` (which also runs while a failing test
//! unwinds); the layers above catch any that leak.
//!
//! # Running as root
//!
//! PostgreSQL refuses to run as root. When the tests run as root, each server directory is
//! owned by the `postgres` OS user and `initdb`, `pg_ctl` and `postgres` are run through
//! `runuser -u postgres --`. The client (`psql`) runs as the test user over TCP.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The superuser that `initdb` creates; every URL this module hands out logs in as it.
pub const SUPERUSER: &str = "postgres";

/// The OS user that owns clusters and runs server commands when the tests run as root.
const OS_USER: &str = "postgres";

/// The directory under the system temporary directory that holds every test cluster.
const ROOT_DIR_NAME: &str = "kubechat-audit-pg";

/// How many fresh ports to try when another process takes ours between probe and bind.
const PORT_ATTEMPTS_MAX: u32 = 10;

/// How long `pg_ctl start -w` may wait for the server, in seconds.
const START_TIMEOUT_SECS: u64 = 60;

/// How long the server may take to answer a real query once `pg_ctl` says it is up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times `CREATE DATABASE` is tried while another session holds the template.
const CREATE_DATABASE_ATTEMPTS_MAX: u32 = 20;

/// How much of the log an error message quotes, in bytes.
const LOG_TAIL_BYTES: u64 = 4096;

/// How much of a child's stdout is copied into the log, in bytes.
const LOGGED_STDOUT_BYTES_MAX: usize = 8192;

/// The unix socket path limit (`sun_path`) minus the room `.s.PGSQL.<port>` needs.
const SOCKET_DIR_BYTES_MAX: usize = 107 - ".s.PGSQL.65535".len() - 1;

/// Server settings for tests: no durability, enough connections for parallel tests, little
/// memory. `listen_addresses`, the socket directory and the port are set per server.
const TEST_SETTINGS: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("max_connections", "200"),
    ("shared_buffers", "16MB"),
    ("max_wal_size", "1GB"),
    ("checkpoint_timeout", "30min"),
    ("log_min_messages", "warning"),
    ("log_line_prefix", "'%m [%p] '"),
    ("timezone", "'UTC'"),
];

/// Environment variables that would change what `psql` or the server connects to or how.
const PG_ENV_REMOVED: &[&str] = &[
    "PGDATA",
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGCLIENTENCODING",
    "PGTZ",
];

/// A database created for one test on some server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDb {
    /// The database name, unique within the test process and across concurrent processes.
    pub name: String,
    /// `postgres://postgres@127.0.0.1:<port>/<name>`, accepted by tokio-postgres.
    pub url: String,
}

impl TestDb {
    /// Connects with tokio-postgres and drives the connection on the current tokio runtime.
    ///
    /// Panics if the connection fails: use `tokio_postgres::connect` directly to test failures.
    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to test database {}: {e}", self.url));
        tokio::spawn(async move {
            // The connection ends with an error when a test stops the server; that is expected.
            let _ = connection.await;
        });
        client
    }
}

/// A PostgreSQL server started by this harness.
#[derive(Debug)]
pub struct PgServer {
    bins: &'static Binaries,
    /// The server's own directory: `data/`, `sock/` and `pg.log` live here.
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    port: AtomicU16,
    /// Whether this server belongs to one test and may be stopped, restarted and dropped.
    dedicated: bool,
    running: AtomicBool,
    /// Serialises `start` and `stop` so that they never interleave.
    lifecycle: Mutex<()>,
}

/// The shared server of this test process, started on first use.
///
/// It is never dropped; see the module docs for how it is stopped at exit.
pub fn shared() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(|| PgServer::create("shared".to_string(), false))
}

impl PgServer {
    /// Starts a server of its own for one test; dropping it stops it and removes its files.
    pub fn start_dedicated() -> PgServer {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        PgServer::create(format!("dedicated-{n}"), true)
    }

    /// The TCP port on 127.0.0.1 the server listens on; it never changes for a server.
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// A URL that logs in as the superuser to database `db`.
    pub fn superuser_url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port())
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file holding the server log and the output of every child process of this server.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last few kilobytes of [`PgServer::log_path`], for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    /// Creates a database with a name unique to this process and returns how to reach it.
    pub fn fresh_database(&self) -> TestDb {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        let sql = format!("CREATE DATABASE \"{name}\"");
        let mut attempt = 1;
        loop {
            match self.execute("postgres", &sql) {
                Ok(_) => break,
                // Another session on the template makes CREATE DATABASE fail; it passes.
                Err(e)
                    if e.contains("is being accessed by other users")
                        && attempt < CREATE_DATABASE_ATTEMPTS_MAX =>
                {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("creating test database {name} failed: {e}"),
            }
        }
        let url = self.superuser_url(&name);
        TestDb { name, url }
    }

    /// Runs `sql` (one or more statements) in database `db` as the superuser through
    /// `psql -X -v ON_ERROR_STOP=1 -At -q`, and returns its stdout without the final newline.
    ///
    /// `-q` keeps command tags such as `INSERT 0 1` out of the output, so the result is only
    /// the rows of the statements that return rows, one per line, columns separated by `|`.
    /// Statements run one by one in autocommit mode; the first error stops the script and is
    /// returned as `Err` with psql's message. A failure to connect also includes the log tail.
    pub fn execute(&self, db: &str, sql: &str) -> Result<String, String> {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname={} connect_timeout=10 sslmode=disable",
            self.port(),
            conninfo_quote(db)
        );
        let mut cmd = Command::new(&self.bins.psql);
        cmd.args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-q",
            "-d",
            &conninfo,
            "-f",
            "-",
        ]);
        clean_env(&mut cmd);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("spawning {}: {e}", self.bins.psql.display());
        });
        // Feed stdin from a thread so that a large script cannot deadlock against a full stdout.
        let mut stdin = child.stdin.take().expect("psql stdin is piped");
        let script = sql.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(script.as_bytes());
        });
        let output = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for psql: {e}"));
        let _ = writer.join();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        self.log_child_output(
            &format!("psql on {db}: {}", first_line(sql)),
            output.status,
            &stdout,
            &stderr,
        );
        match output.status.code() {
            Some(0) => Ok(stdout.trim_end_matches('\n').to_owned()),
            // psql exits with 3 when a statement failed under ON_ERROR_STOP.
            Some(3) => Err(stderr.trim_end().to_owned()),
            _ => Err(format!(
                "psql exited with {}: {}\n--- tail of {} ---\n{}",
                output.status,
                stderr.trim_end(),
                self.log_path.display(),
                self.log_tail()
            )),
        }
    }

    /// Stops a dedicated server (`pg_ctl stop -m fast`); connections fail until [`start`].
    ///
    /// [`start`]: PgServer::start
    pub fn stop(&self) {
        assert!(
            self.dedicated,
            "only a dedicated server may be stopped: other tests share this one"
        );
        let _guard = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            self.running.load(Ordering::SeqCst),
            "stop() on a server that is not running"
        );
        let status = self.run_server_command(
            "pg_ctl stop",
            Command::new(&self.bins.pg_ctl)
                .arg("stop")
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", "fast", "-w", "-t"])
                .arg(START_TIMEOUT_SECS.to_string()),
        );
        if !status.success() {
            panic!(
                "pg_ctl stop failed with {status}\n--- tail of {} ---\n{}",
                self.log_path.display(),
                self.log_tail()
            );
        }
        self.running.store(false, Ordering::SeqCst);
    }

    /// Starts a stopped dedicated server again, on the same port and the same data directory,
    /// and waits until it answers a query.
    pub fn start(&self) {
        assert!(
            self.dedicated,
            "only a dedicated server may be restarted: other tests share this one"
        );
        let _guard = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        assert!(
            !self.running.load(Ordering::SeqCst),
            "start() on a server that is already running"
        );
        let port = self.port();
        if let Err(failure) = self.pg_ctl_start(port) {
            panic!(
                "restarting PostgreSQL on port {port} failed ({failure:?})\n--- tail of {} ---\n{}",
                self.log_path.display(),
                self.log_tail()
            );
        }
        self.running.store(true, Ordering::SeqCst);
        self.wait_ready();
    }

    fn create(name: String, dedicated: bool) -> PgServer {
        let bins = binaries();
        let process_root = process_root();
        let dir = process_root.join(&name);
        let server = PgServer {
            bins,
            data_dir: dir.join("data"),
            socket_dir: dir.join("sock"),
            log_path: dir.join("pg.log"),
            dir,
            port: AtomicU16::new(0),
            dedicated,
            running: AtomicBool::new(false),
            lifecycle: Mutex::new(()),
        };
        // From here on a panic drops `server`, which removes what was built so far.
        server.prepare_dir();
        server.initdb();
        server.start_on_free_port();
        server.wait_ready();
        server
    }

    /// Creates the server directory, its socket directory and its log, owned by whoever runs
    /// the server.
    fn prepare_dir(&self) {
        let socket_len = self.socket_dir.as_os_str().len();
        assert!(
            socket_len <= SOCKET_DIR_BYTES_MAX,
            "the socket directory {} is {socket_len} bytes long, more than the {SOCKET_DIR_BYTES_MAX} a unix socket path allows: set TMPDIR to a shorter directory",
            self.socket_dir.display()
        );
        fs::create_dir(&self.dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.dir.display()));
        fs::create_dir(&self.socket_dir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.socket_dir.display()));
        File::create(&self.log_path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", self.log_path.display()));
        for (path, mode) in [
            (&self.dir, 0o700),
            (&self.socket_dir, 0o700),
            (&self.log_path, 0o600),
        ] {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
            if let Some(owner) = &self.bins.run_as {
                chown(path, Some(owner.uid), Some(owner.gid))
                    .unwrap_or_else(|e| panic!("chown {} to {OS_USER}: {e}", path.display()));
            }
        }
    }

    fn initdb(&self) {
        let status = self.run_server_command(
            "initdb",
            Command::new(&self.bins.initdb)
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
                .args(["--auth-local=trust", "--auth-host=trust", "--no-sync"]),
        );
        if !status.success() {
            panic!(
                "initdb failed with {status}\n--- tail of {} ---\n{}",
                self.log_path.display(),
                self.log_tail()
            );
        }
        let mut settings = String::from("\n# Added by the kubechat-audit test harness.\n");
        settings.push_str("listen_addresses = '127.0.0.1'\n");
        settings.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.socket_dir.display().to_string().replace('\'', "''")
        ));
        for (key, value) in TEST_SETTINGS {
            settings.push_str(&format!("{key} = {value}\n"));
        }
        let conf = self.data_dir.join("postgresql.conf");
        OpenOptions::new()
            .append(true)
            .open(&conf)
            .and_then(|mut f| f.write_all(settings.as_bytes()))
            .unwrap_or_else(|e| panic!("appending test settings to {}: {e}", conf.display()));
    }

    /// Starts the server on a port that was free a moment ago, trying another one when some
    /// other process took it in between.
    fn start_on_free_port(&self) {
        let _guard = self.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 1..=PORT_ATTEMPTS_MAX {
            let port = free_port();
            match self.pg_ctl_start(port) {
                Ok(()) => {
                    self.port.store(port, Ordering::SeqCst);
                    self.running.store(true, Ordering::SeqCst);
                    return;
                }
                Err(StartFailure::PortInUse) if attempt < PORT_ATTEMPTS_MAX => continue,
                Err(failure) => panic!(
                    "starting PostgreSQL on port {port} failed ({failure:?}, attempt {attempt} of {PORT_ATTEMPTS_MAX})\n--- tail of {} ---\n{}",
                    self.log_path.display(),
                    self.log_tail()
                ),
            }
        }
        unreachable!("the last attempt either returns or panics");
    }

    fn pg_ctl_start(&self, port: u16) -> Result<(), StartFailure> {
        let log_start = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let status = self.run_server_command(
            &format!("pg_ctl start on port {port}"),
            Command::new(&self.bins.pg_ctl)
                .arg("start")
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_path)
                .arg("-p")
                .arg(&self.bins.postgres)
                .args(["-w", "-t"])
                .arg(START_TIMEOUT_SECS.to_string())
                .arg("-o")
                .arg(format!("-p {port}")),
        );
        if status.success() {
            return Ok(());
        }
        let new_log = read_from(&self.log_path, log_start);
        if new_log.contains("Address already in use") || new_log.contains("could not bind") {
            Err(StartFailure::PortInUse)
        } else {
            Err(StartFailure::Exit(status))
        }
    }

    /// Waits until the server answers a real query over TCP.
    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let err = match self.execute("postgres", "SELECT 1") {
                Ok(out) if out == "1" => return,
                Ok(out) => format!("unexpected answer {out:?}"),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                panic!(
                    "PostgreSQL on 127.0.0.1:{} did not answer SELECT 1 within {READY_TIMEOUT:?}: {err}\n--- tail of {} ---\n{}",
                    self.port(),
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `initdb`, `pg_ctl` or `postgres` as the user that owns the cluster, with stdout and
    /// stderr appended to the log.
    fn run_server_command(&self, what: &str, cmd: &mut Command) -> ExitStatus {
        append_log(&self.log_path, &format!("=== {what}\n"));
        let mut cmd = self.bins.as_server_user(cmd);
        clean_env(&mut cmd);
        let log = OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", self.log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("duplicating the log handle: {e}"));
        let status = cmd
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .status()
            .unwrap_or_else(|e| panic!("running {what} ({cmd:?}): {e}"));
        append_log(&self.log_path, &format!("=== {what}: {status}\n"));
        status
    }

    fn log_child_output(&self, what: &str, status: ExitStatus, stdout: &str, stderr: &str) {
        let mut entry = format!("=== {what}: {status}\n");
        if stdout.len() > LOGGED_STDOUT_BYTES_MAX {
            let mut cut = LOGGED_STDOUT_BYTES_MAX;
            while !stdout.is_char_boundary(cut) {
                cut -= 1;
            }
            entry.push_str(&stdout[..cut]);
            entry.push_str("\n[stdout truncated]\n");
        } else {
            entry.push_str(stdout);
        }
        entry.push_str(stderr);
        append_log(&self.log_path, &entry);
    }
}

impl Drop for PgServer {
    /// Stops the server without a shutdown checkpoint (its files are about to go) and removes
    /// its directory. The shared server is a static and never gets here.
    fn drop(&mut self) {
        stop_immediately(self.bins, &self.data_dir);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("test harness: removing {}: {e}", self.dir.display());
            }
        }
    }
}

#[derive(Debug)]
enum StartFailure {
    PortInUse,
    Exit(ExitStatus),
}

/// The PostgreSQL programs this harness runs, and the OS user that runs the server ones.
#[derive(Debug)]
struct Binaries {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    postgres: PathBuf,
    psql: PathBuf,
    /// Set when the tests run as root: server commands then run as this user.
    run_as: Option<OsUser>,
}

#[derive(Debug)]
struct OsUser {
    uid: u32,
    gid: u32,
}

impl Binaries {
    /// Wraps a server command in `runuser -u postgres --` when the tests run as root.
    fn as_server_user(&self, cmd: &Command) -> Command {
        let mut wrapped = match self.run_as {
            Some(_) => {
                let mut runuser = Command::new("runuser");
                runuser
                    .args(["-u", OS_USER, "--"])
                    .arg(cmd.get_program())
                    .args(cmd.get_args());
                runuser
            }
            None => {
                let mut plain = Command::new(cmd.get_program());
                plain.args(cmd.get_args());
                plain
            }
        };
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }
}

const INSTALL_HINT: &str =
    "install the PostgreSQL server (Debian/Ubuntu: `apt-get install -y postgresql`; \
     Fedora/RHEL: `dnf install -y postgresql-server`; macOS: `brew install postgresql`) \
     or put its bin directory (the one holding initdb, pg_ctl and postgres) on PATH";

/// Finds the server programs once per process: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else PATH. A missing server fails the test loudly.
fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Binaries> = OnceLock::new();
    BINARIES.get_or_init(|| {
        const SERVER: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
        let has_server = |dir: &Path| SERVER.iter().all(|b| is_executable(&dir.join(b)));

        let from_pg_config = Command::new("pg_config")
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .filter(|dir| has_server(dir));
        let bindir = from_pg_config.or_else(newest_debian_bindir);

        let find = |name: &str| -> PathBuf {
            bindir
                .as_ref()
                .map(|dir| dir.join(name))
                .filter(|p| is_executable(p))
                .or_else(|| find_on_path(name))
                .unwrap_or_else(|| {
                    panic!(
                        "PostgreSQL program `{name}` not found (looked in `pg_config --bindir`, \
                         /usr/lib/postgresql/*/bin and PATH): {INSTALL_HINT}"
                    )
                })
        };
        let bins = Binaries {
            initdb: find("initdb"),
            pg_ctl: find("pg_ctl"),
            postgres: find("postgres"),
            psql: find("psql"),
            run_as: server_os_user(),
        };
        if bins.run_as.is_some() && find_on_path("runuser").is_none() {
            panic!(
                "the tests run as root, so PostgreSQL must run as `{OS_USER}` through `runuser`, \
                 which is missing: install util-linux"
            );
        }
        bins
    })
}

/// The highest-versioned `/usr/lib/postgresql/<version>/bin` that holds the server programs.
fn newest_debian_bindir() -> Option<PathBuf> {
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|b| is_executable(&bin.join(b)))
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// When the tests run as root, the `postgres` OS user that must own and run the clusters.
fn server_os_user() -> Option<OsUser> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new(OS_USER).expect("no NUL in the user name");
    // SAFETY: `name` is a valid C string; getpwnam returns NULL or a pointer to static storage
    // that we read immediately, before any other call that could overwrite it. The lookup
    // happens once per process, inside a OnceLock initialiser.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        panic!(
            "the tests run as root and PostgreSQL refuses to, but there is no `{OS_USER}` OS user \
             to run it as: {INSTALL_HINT} (the package creates the user), or create it with \
             `useradd --system {OS_USER}`"
        );
    }
    // SAFETY: `entry` is non-null and points to a valid passwd record (see above).
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Some(OsUser { uid, gid })
}

/// The directory of this test process, created once; also sweeps stale ones, starts the
/// watchdog and registers the atexit cleanup.
fn process_root() -> PathBuf {
    static PROCESS_ROOT: OnceLock<PathBuf> = OnceLock::new();
    PROCESS_ROOT
        .get_or_init(|| {
            let bins = binaries();
            let root = std::env::temp_dir().join(ROOT_DIR_NAME);
            match fs::create_dir(&root) {
                Ok(()) => {
                    // Shared by every user who runs tests here, like /tmp itself.
                    fs::set_permissions(&root, fs::Permissions::from_mode(0o1777))
                        .unwrap_or_else(|e| panic!("chmod {}: {e}", root.display()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("creating {}: {e}", root.display()),
            }
            sweep_stale(bins, &root);
            let pid = std::process::id();
            let mine = root.join(pid.to_string());
            fs::create_dir(&mine).unwrap_or_else(|e| panic!("creating {}: {e}", mine.display()));
            // The postgres user must be able to reach the server directories inside.
            fs::set_permissions(&mine, fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("chmod {}: {e}", mine.display()));
            let watchdog = spawn_watchdog(bins, pid, &mine);
            CLEANUP
                .set(Cleanup {
                    bins,
                    root: mine.clone(),
                    watchdog_pid: watchdog,
                })
                .expect("the cleanup is registered once");
            // SAFETY: `cleanup_at_exit` is an `extern "C" fn()` that never unwinds.
            if unsafe { libc::atexit(cleanup_at_exit) } != 0 {
                eprintln!("test harness: atexit registration failed; the watchdog will clean up");
            }
            mine
        })
        .clone()
}

/// What the atexit handler needs, set once by [`process_root`].
#[derive(Debug)]
struct Cleanup {
    bins: &'static Binaries,
    root: PathBuf,
    watchdog_pid: Option<u32>,
}

static CLEANUP: OnceLock<Cleanup> = OnceLock::new();

extern "C" fn cleanup_at_exit() {
    // A panic must not unwind into libc; a failed cleanup is left to the watchdog and sweep.
    let _ = std::panic::catch_unwind(|| {
        let Some(cleanup) = CLEANUP.get() else {
            return;
        };
        if let Some(pid) = cleanup.watchdog_pid {
            // The watchdog leads its own process group; end it and its `sleep` so that nothing
            // outlives the test process.
            // The watchdog is our child, so we also reap it rather than leave a zombie.
            // SAFETY: kill and waitpid have no memory-safety preconditions; a null status
            // pointer is allowed.
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
        remove_process_root(cleanup.bins, &cleanup.root);
    });
}

/// Stops every cluster under a process directory and removes the directory.
fn remove_process_root(bins: &Binaries, root: &Path) {
    if let Ok(entries) = fs::read_dir(root) {
        for entry in entries.flatten() {
            stop_immediately(bins, &entry.path().join("data"));
        }
    }
    let _ = fs::remove_dir_all(root);
}

/// `pg_ctl stop -m immediate` if a postmaster may be running on `data_dir`; best effort.
fn stop_immediately(bins: &Binaries, data_dir: &Path) {
    if !data_dir.join("postmaster.pid").exists() {
        return;
    }
    let mut stop = Command::new(&bins.pg_ctl);
    stop.arg("stop")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "immediate", "-w", "-t", "30"]);
    let mut cmd = bins.as_server_user(&stop);
    clean_env(&mut cmd);
    let _ = cmd
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Removes the directories of test processes that are gone, stopping their clusters first.
fn sweep_stale(bins: &Binaries, root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A directory named by our own pid is left from an earlier process that had it.
        if pid == me || !process_alive(pid) {
            remove_process_root(bins, &entry.path());
        }
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Cleans up after this process even if it dies without running atexit handlers.
const WATCHDOG_SCRIPT: &str = r#"
pid=$1; root=$2; shift 2
while kill -0 "$pid" 2>/dev/null; do sleep 1; done
for data in "$root"/*/data; do
    if [ -f "$data/postmaster.pid" ]; then
        "$@" stop -D "$data" -m immediate -w -t 30 >/dev/null 2>&1
    fi
done
# An orphaned initdb may still be writing for a moment; retry until the directory is gone.
for attempt in 1 2 3 4 5 6 7 8 9 10; do
    rm -rf "$root" 2>/dev/null
    [ -e "$root" ] || break
    sleep 1
done
"#;

fn spawn_watchdog(bins: &Binaries, pid: u32, root: &Path) -> Option<u32> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(WATCHDOG_SCRIPT)
        .arg("kubechat-audit-pg-watchdog")
        .arg(pid.to_string())
        .arg(root);
    if bins.run_as.is_some() {
        cmd.args(["runuser", "-u", OS_USER, "--"]);
    }
    cmd.arg(&bins.pg_ctl);
    // Its own process group keeps a terminal's Ctrl-C, meant for the tests, away from it.
    match cmd
        .current_dir("/")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        // The child is never waited for: it outlives us by design, and init reaps it.
        Ok(child) => Some(child.id()),
        Err(e) => {
            eprintln!("test harness: no watchdog ({e}); relying on atexit and the sweep");
            None
        }
    }
}

/// A port on 127.0.0.1 that was free when we asked; the caller retries if it is taken later.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap_or_else(|e| panic!("binding 127.0.0.1:0 to find a free port: {e}"));
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

fn clean_env(cmd: &mut Command) {
    for var in PG_ENV_REMOVED {
        cmd.env_remove(var);
    }
    // English messages, so that the harness can recognise them and people can read them.
    cmd.env("LC_ALL", "C");
}

/// Quotes a value for a libpq `key=value` connection string.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn first_line(sql: &str) -> &str {
    sql.trim().lines().next().unwrap_or("")
}

fn append_log(path: &Path, text: &str) {
    if let Ok(mut f) = OpenOptions::new().append(true).open(path) {
        let _ = f.write_all(text.as_bytes());
    }
}

fn read_from(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    text
}

fn log_tail(path: &Path) -> String {
    let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let tail = read_from(path, len.saturating_sub(LOG_TAIL_BYTES));
    if tail.is_empty() {
        format!("(no log at {})", path.display())
    } else {
        tail
    }
}
