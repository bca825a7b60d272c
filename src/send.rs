//! `send`: pushes NDJSON from a file or stdin to a running `serve`, printing every answer.
//!
//! Over TCP the lines are pipelined on one connection and the answers printed as they come;
//! over HTTP they are posted as NDJSON in requests of at most `batch` lines, retrying a 503
//! after its `Retry-After`. The exit status says whether every event was accepted.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Totals of one `send` run.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub accepted: u64,
    pub rejected: u64,
}

fn count(totals: &mut Totals, answer: &serde_json::Value) {
    if answer.get("error").is_some() {
        totals.rejected += 1;
    } else {
        totals.accepted += 1;
    }
}

/// Sends every line of `input` over TCP.
pub async fn send_tcp(addr: SocketAddr, input: Box<dyn BufRead + Send>) -> anyhow::Result<Totals> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(rd).lines();
        let mut totals = Totals::default();
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.next_line().await? {
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("server sent a line that is not JSON: {line}"))?;
            count(&mut totals, &v);
            stdout.write_all(line.as_bytes()).await?;
            stdout.write_all(b"\n").await?;
        }
        stdout.flush().await?;
        anyhow::Ok(totals)
    });
    let (line_tx, mut line_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let read_input = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut sent = 0;
        for line in input.split(b'\n') {
            let mut line = line?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            line.push(b'\n');
            sent += 1;
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
        Ok(sent)
    });
    while let Some(line) = line_rx.recv().await {
        wr.write_all(&line).await?;
    }
    wr.shutdown().await?;
    let sent = read_input.await??;
    let totals = reader.await??;
    if totals.accepted + totals.rejected != sent {
        bail!(
            "sent {sent} lines but received {} answers; the connection ended early",
            totals.accepted + totals.rejected
        );
    }
    Ok(totals)
}

/// Sends every line of `input` to `url` (`http://host:port`) as NDJSON batches.
pub async fn send_http(
    url: &str,
    input: Box<dyn BufRead + Send>,
    batch: usize,
) -> anyhow::Result<Totals> {
    let client = reqwest::Client::builder().build()?;
    let endpoint = format!("{}/v1/events", url.trim_end_matches('/'));
    let lines: Vec<String> = input
        .lines()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut totals = Totals::default();
    for chunk in lines.chunks(batch.max(1)) {
        let body = chunk.join("\n");
        let mut attempts = 0;
        let resp = loop {
            let resp = client
                .post(&endpoint)
                .header("content-type", "application/x-ndjson")
                .body(body.clone())
                .send()
                .await
                .with_context(|| format!("posting to {endpoint}"))?;
            if resp.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE && attempts < 30 {
                attempts += 1;
                let wait = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1u64);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            break resp;
        };
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.context("reading the server's answer")?;
        let Some(results) = v.get("results").and_then(|r| r.as_array()) else {
            bail!("server answered {status}: {v}");
        };
        for r in results {
            count(&mut totals, r);
            println!("{r}");
        }
    }
    Ok(totals)
}
