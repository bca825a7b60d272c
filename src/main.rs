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
use kubechat_audit::projection::postgres as pg;
use kubechat_audit::serve::{self, Ended};
use kubechat_audit::verify::{self, VerifyError};

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
    },
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
        } => {
            let mut cfg = at.load()?;
            if postgres_url.is_some() {
                cfg.postgres.url = postgres_url;
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
            let head = match verify::verify_log(&cfg.log_dir(), &cfg.keys_dir(), &hmac_keys) {
                Ok(head) => head,
                Err(
                    e @ (VerifyError::Fault(_)
                    | VerifyError::Truncated { .. }
                    | VerifyError::Unreadable(..)),
                ) => {
                    println!("FAILED: {e}");
                    return Ok(ExitCode::from(1));
                }
                Err(e) => return Err(e.into()),
            };
            println!(
                "ok: {} events, head seq {}, head checksum {}",
                head.count,
                head.seq,
                hex::encode(head.checksum)
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
