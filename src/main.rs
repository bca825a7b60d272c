//! The `kubechat-audit` command line. Errors map to exit codes here and only here:
//! 0 success, 1 a check failed (verify found a fault, send had rejections), 2 the command
//! could not run or the pipeline failed.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubechat_audit::config::Config;
use kubechat_audit::log::Log;
use kubechat_audit::projection::archive;
use kubechat_audit::projection::postgres as pg;
use kubechat_audit::serve::{self, Ended};
use kubechat_audit::verify;

#[derive(Parser)]
#[command(
    name = "kubechat-audit",
    version,
    about = "Hash-chained, durable audit pipeline for KubeChat"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct Where {
    /// TOML configuration file.
    #[arg(long, env = "KUBECHAT_AUDIT_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl Where {
    fn load(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            cfg.data_dir = d.clone();
        }
        Ok(cfg)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline (with no flags: loopback, ./kubechat-audit-data).
    Serve {
        #[command(flatten)]
        at: Where,
        #[arg(long)]
        http_addr: Option<SocketAddr>,
        #[arg(long)]
        tcp_addr: Option<SocketAddr>,
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
        /// PostgreSQL to project into (switches the projection and the query API on).
        #[arg(long, env = "KUBECHAT_AUDIT_POSTGRES_URL")]
        postgres_url: Option<String>,
        /// Where sealed archive segments go (default: <data-dir>/archive).
        #[arg(long)]
        archive_dir: Option<PathBuf>,
    },
    /// Work with archives offline: verify them, export a window.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Apply the PostgreSQL migrations (serve also applies them on start).
    Migrate {
        #[command(flatten)]
        at: Where,
        #[arg(long, env = "KUBECHAT_AUDIT_POSTGRES_URL")]
        postgres_url: Option<String>,
    },
    /// Rebuild projections from the log (serve must not be running on the data directory).
    Replay {
        #[command(flatten)]
        at: Where,
        /// Which projection: postgres, or all.
        #[arg(long, value_parser = ["postgres", "all"])]
        projection: String,
        #[arg(long, env = "KUBECHAT_AUDIT_POSTGRES_URL")]
        postgres_url: Option<String>,
        /// Empty the projection tables first (needs the owner role; clears every chain's rows).
        #[arg(long)]
        truncate: bool,
    },
    /// Verify the whole log chain.
    Verify {
        #[command(flatten)]
        at: Where,
        /// Extra HMAC key files (besides those in the keys directory).
        #[arg(long = "hmac-key")]
        hmac_keys: Vec<PathBuf>,
        /// Also verify the PostgreSQL projection's rows against the chain and the log.
        #[arg(long, env = "KUBECHAT_AUDIT_POSTGRES_URL")]
        postgres_url: Option<String>,
    },
    /// Print every rejected input, with its reason, as NDJSON.
    DeadLetters {
        #[command(flatten)]
        at: Where,
    },
    /// Push NDJSON events from a file (or stdin) to a running serve.
    Send {
        /// Input file; stdin when absent or "-".
        file: Option<PathBuf>,
        /// TCP address of serve.
        #[arg(long, default_value = "127.0.0.1:7400", conflicts_with = "http")]
        tcp: SocketAddr,
        /// HTTP base URL of serve, e.g. http://127.0.0.1:7401 (uses HTTP instead of TCP).
        #[arg(long)]
        http: Option<String>,
        /// Events per HTTP request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
}

#[derive(Subcommand)]
enum ArchiveCommand {
    /// Verify a directory of sealed segments with the public key alone (no network, no secret).
    Verify {
        dir: PathBuf,
        /// A trusted archive signing public key (`kubechat-audit keys public` prints them);
        /// repeat for archives signed across a key change.
        #[arg(long = "public-key", required = true)]
        public_keys: Vec<PathBuf>,
        /// Fail unless the archive ends exactly at this seq (catches newest segments removed).
        #[arg(long)]
        expect_last_seq: Option<u64>,
        /// Accept an archive whose oldest segments were removed by retention.
        #[arg(long)]
        pruned_start: bool,
        /// Also recompute every record checksum with this HMAC key file.
        #[arg(long = "hmac-key")]
        hmac_keys: Vec<PathBuf>,
    },
    /// Print the records of a time window (producer timestamp) as NDJSON.
    Export {
        dir: PathBuf,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: String,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: String,
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        event_type: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the archive signing public keys, one JSON object per line.
    Public {
        #[command(flatten)]
        at: Where,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBECHAT_AUDIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubechat-audit: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            at,
            http_addr,
            tcp_addr,
            metrics_addr,
            postgres_url,
            archive_dir,
        } => {
            let mut cfg = at.load()?;
            if postgres_url.is_some() {
                cfg.postgres.url = postgres_url;
            }
            if archive_dir.is_some() {
                cfg.archive.dir = archive_dir;
            }
            if let Some(a) = http_addr {
                cfg.listen.http_addr = a;
            }
            if let Some(a) = tcp_addr {
                cfg.listen.tcp_addr = a;
            }
            if let Some(a) = metrics_addr {
                cfg.listen.metrics_addr = a;
            }
            match runtime()?.block_on(serve::run(cfg))? {
                Ended::Graceful => Ok(ExitCode::SUCCESS),
                Ended::Poisoned(reason) => {
                    eprintln!("kubechat-audit: fatal: {reason}; restart required");
                    Ok(ExitCode::from(2))
                }
            }
        }
        Command::Verify {
            at,
            hmac_keys,
            postgres_url,
        } => {
            let cfg = at.load()?;
            let report = match verify::verify_data_dir(
                &cfg.log_dir(),
                &cfg.archive_dir(),
                &cfg.keys_dir(),
                &hmac_keys,
            ) {
                Ok(r) => r,
                Err(e) if e.is_fault() => {
                    println!("FAILED: {e}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            };
            let archived = if report.archive.segments > 0 {
                format!(
                    " ({} in {} archive segments through seq {}, {} in the log)",
                    report.archive.count,
                    report.archive.segments,
                    report.archive.last_seq,
                    report.log_records
                )
            } else {
                String::new()
            };
            println!(
                "ok: {} events, head seq {}, head checksum {}{archived}",
                report.head_seq,
                report.head_seq,
                hex::encode(report.head_checksum)
            );
            let Some(url) = postgres_url.or(cfg.postgres.url.clone()) else {
                return Ok(ExitCode::SUCCESS);
            };
            let ring = kubechat_audit::keys::key_ring(&cfg.keys_dir(), &hmac_keys)?;
            let log = Log::open_existing(&cfg.log_dir())?;
            let chain_id = log
                .recover(|| unreachable!("an existing log has a chain id"))?
                .chain_id;
            let connector = pg::Connector::new(&url, &cfg.postgres)?;
            runtime()?.block_on(async {
                let client = connector.connect().await?;
                match pg::verify::verify_rows(&client, &log, &ring, &chain_id).await {
                    Ok(s) => {
                        println!(
                            "ok: postgres chain {chain_id}: {} rows, head seq {}, equal to the log",
                            s.rows, s.head_seq
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(
                        e @ (pg::verify::PgVerifyError::Pg(_) | pg::verify::PgVerifyError::Log(_)),
                    ) => Err(e.into()),
                    Err(e) => {
                        println!("FAILED: {e}");
                        Ok(ExitCode::from(1))
                    }
                }
            })
        }
        Command::Archive(ArchiveCommand::Verify {
            dir,
            public_keys,
            expect_last_seq,
            pruned_start,
            hmac_keys,
        }) => {
            if !dir.is_dir() {
                anyhow::bail!("{} is not a directory", dir.display());
            }
            let trusted: Vec<_> = public_keys
                .iter()
                .map(|p| kubechat_audit::keys::PublicKey::read(p))
                .collect::<Result<_, _>>()?;
            let ring = if hmac_keys.is_empty() {
                None
            } else {
                let keys: Vec<_> = hmac_keys
                    .iter()
                    .map(|p| kubechat_audit::keys::read_hmac_key(p))
                    .collect::<Result<_, _>>()?;
                Some(kubechat_audit_pipeline::chain::KeyRing::new(keys))
            };
            let started = std::time::Instant::now();
            let mut last = std::time::Instant::now();
            let options = archive::verify::Options { pruned_start };
            let result = archive::verify::verify_dir(
                &dir,
                &trusted,
                ring.as_ref(),
                options,
                |done, total, records| {
                    if last.elapsed().as_secs() >= 2 {
                        eprintln!("archive verify: {done} / {total} segments, {records} records");
                        last = std::time::Instant::now();
                    }
                },
            );
            match result {
                Ok(h) if h.segments == 0 => {
                    println!(
                        "FAILED: {} holds no sealed segment (no *.manifest.json)",
                        dir.display()
                    );
                    Ok(ExitCode::from(1))
                }
                Ok(h) if expect_last_seq.is_some_and(|want| want != h.last_seq) => {
                    println!(
                        "FAILED: the archive ends at seq {}, expected seq {} (segments missing at the end?)",
                        h.last_seq,
                        expect_last_seq.unwrap_or_default()
                    );
                    Ok(ExitCode::from(1))
                }
                Ok(h) => {
                    let secs = started.elapsed().as_secs_f64();
                    println!(
                        "ok: {} segments, {} records, seq {}..={}, last checksum {}{} ({:.0} records/s)",
                        h.segments,
                        h.count,
                        h.last_seq + 1 - h.count,
                        h.last_seq,
                        hex::encode(h.last_checksum),
                        if ring.is_some() { ", every checksum recomputed" } else { "" },
                        h.count as f64 / secs.max(1e-9)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e @ archive::verify::ArchiveFault::Archive(_)) => Err(e.into()),
                Err(e) => {
                    println!("FAILED: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Archive(ArchiveCommand::Export {
            dir,
            from,
            to,
            user,
            event_type,
        }) => {
            let parse = |name: &str, t: &str| {
                kubechat_audit_pipeline::event::parse_timestamp(t)
                    .map_err(|e| anyhow::anyhow!("--{name}: {e}"))
            };
            let filter = archive::export::Filter {
                from_unix_ns: parse("from", &from)?,
                to_unix_ns: parse("to", &to)?,
                user_id: user,
                event_type,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let n =
                archive::export::export(&dir, &filter, &mut out).map_err(|e| anyhow::anyhow!(e))?;
            eprintln!("exported {n} records");
            Ok(ExitCode::SUCCESS)
        }
        Command::Keys(KeysCommand::Public { at }) => {
            let cfg = at.load()?;
            let keys = kubechat_audit::keys::public_keys(&cfg.keys_dir())?;
            if keys.is_empty() {
                anyhow::bail!(
                    "no archive signing key in {} (serve generates one on its first start; is --data-dir right?)",
                    cfg.keys_dir().display()
                );
            }
            for k in keys {
                println!("{}", k.to_json());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { at, postgres_url } => {
            let cfg = at.load()?;
            let url = postgres_url
                .or(cfg.postgres.url.clone())
                .ok_or_else(|| anyhow::anyhow!("--postgres-url (or postgres.url) is required"))?;
            let connector = pg::Connector::new(&url, &cfg.postgres)?;
            runtime()?.block_on(async {
                let mut client = connector.connect().await?;
                let applied = pg::schema::migrate(&mut client).await?;
                println!(
                    "migrations applied: {applied:?} (of {})",
                    pg::schema::MIGRATIONS.len()
                );
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::Replay {
            at,
            projection,
            postgres_url,
            truncate,
        } => {
            let cfg = at.load()?;
            debug_assert!(projection == "postgres" || projection == "all");
            let url = postgres_url
                .or(cfg.postgres.url.clone())
                .ok_or_else(|| anyhow::anyhow!("--postgres-url (or postgres.url) is required"))?;
            let log = Log::open_existing(&cfg.log_dir())?;
            let chain_id = log
                .recover(|| unreachable!("an existing log has a chain id"))?
                .chain_id;
            let connector = pg::Connector::new(&url, &cfg.postgres)?;
            runtime()?.block_on(async {
                let mut client = connector.connect().await?;
                pg::schema::migrate(&mut client).await?;
                if truncate {
                    pg::replay::truncate(&mut client).await?;
                }
                let started = std::time::Instant::now();
                let mut last_print = std::time::Instant::now();
                let n = pg::replay::replay(
                    &mut client,
                    &log,
                    &cfg.archive_dir(),
                    &chain_id,
                    cfg.postgres.batch_events_max,
                    |done, total| {
                        if last_print.elapsed().as_millis() >= 500 || done == total {
                            eprintln!("replay postgres: {done} / {total} records");
                            last_print = std::time::Instant::now();
                        }
                    },
                )
                .await?;
                println!(
                    "replayed {n} records into postgres in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
        Command::DeadLetters { at } => {
            let cfg = at.load()?;
            let log = Log::open_existing(&cfg.log_dir())?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for d in log.dead_letters() {
                use std::io::Write;
                out.write_all(&d?)?;
                out.write_all(b"\n")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            file,
            tcp,
            http,
            batch,
        } => {
            let input: Box<dyn BufRead + Send> = match file {
                None => Box::new(std::io::BufReader::new(std::io::stdin())),
                Some(p) if p.as_os_str() == "-" => {
                    Box::new(std::io::BufReader::new(std::io::stdin()))
                }
                Some(p) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(&p)
                        .map_err(|e| anyhow::anyhow!("opening {}: {e}", p.display()))?,
                )),
            };
            let rt = runtime()?;
            let totals = match http {
                Some(url) => rt.block_on(kubechat_audit::send::send_http(&url, input, batch))?,
                None => rt.block_on(kubechat_audit::send::send_tcp(tcp, input))?,
            };
            eprintln!(
                "sent {}: {} accepted, {} rejected",
                totals.accepted + totals.rejected,
                totals.accepted,
                totals.rejected
            );
            Ok(if totals.rejected == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
