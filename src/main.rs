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
    },
    /// Verify the whole log chain.
    Verify {
        #[command(flatten)]
        at: Where,
        /// Extra HMAC key files (besides those in the keys directory).
        #[arg(long = "hmac-key")]
        hmac_keys: Vec<PathBuf>,
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
        } => {
            let mut cfg = at.load()?;
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
        Command::Verify { at, hmac_keys } => {
            let cfg = at.load()?;
            match verify::verify_log(&cfg.log_dir(), &cfg.keys_dir(), &hmac_keys) {
                Ok(head) => {
                    println!(
                        "ok: {} events, head seq {}, head checksum {}",
                        head.count,
                        head.seq,
                        hex::encode(head.checksum)
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(
                    e @ (VerifyError::Fault(_)
                    | VerifyError::Truncated { .. }
                    | VerifyError::Unreadable(..)),
                ) => {
                    println!("FAILED: {e}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
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
