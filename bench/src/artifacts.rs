//! `gearmq-bench artifacts`: how a shipped program's bytes reach N hosts through the
//! broker, against the raw way of pushing them to each host, on the same broker in the
//! same run.
//!
//! - **stream** (what gearmq does): the file is published once into its artifact stream
//!   (`gearmq_io::artifact_stream::publish`); N readers each read the whole stream from
//!   its first chunk and check its SHA-256 (`artifact_stream::read`), as N agents do.
//! - **push** (the raw baseline, the transport's limit): the same chunks published N
//!   times, once to each of N transient, non-durable queues (no confirms), each drained
//!   by its reader; what sending the bytes to every host costs without a shared stream.
//!
//! Readers share connections ([`READERS_PER_CONNECTION`]) and write nothing to disk, so
//! the numbers are the broker's and the network's, not the agents' disks. Runs on a
//! vhost of its own, deleted at the end.

use crate::run::BenchVhost;
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use gearmq_io::artifact_stream::{self, Chunk, Taken};
use gearmq_schemas::actions::ARTIFACT_CHUNK_BYTES;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::json;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Readers per broker connection.
const READERS_PER_CONNECTION: usize = 50;
/// How long a reader waits for its next chunk.
const IDLE: Duration = Duration::from_secs(60);

#[derive(clap::Args)]
pub struct ArtifactArgs {
    /// Numbers of hosts (readers), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    readers: Vec<usize>,
    /// Artifact size in MiB.
    #[arg(long, default_value_t = 4)]
    mib: usize,
    /// The broker (a vhost of its own is made on it through rabbitmqctl).
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    broker: String,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

struct Row {
    readers: usize,
    publish_secs: f64,
    stream_secs: f64,
    push_secs: f64,
}

pub fn run(a: ArtifactArgs) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gearmq-bench: error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(measure(&a)) {
        Ok(rows) => {
            report(&a, &rows);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gearmq-bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn measure(a: &ArtifactArgs) -> Result<Vec<Row>> {
    if a.mib == 0 || a.readers.contains(&0) {
        bail!("--mib and every --readers count must be at least 1");
    }
    let vhost = BenchVhost::new()?;
    let url = format!("{}/{}", a.broker.trim_end_matches('/'), vhost.name);
    let work = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for (i, &n) in a.readers.iter().enumerate() {
        // A file of its own per row: each row starts from an empty stream.
        let path = work.path().join(format!("artifact-{i}"));
        let bytes: Vec<u8> = (0..a.mib * (1 << 20))
            .map(|k| (k as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ i as u8)
            .collect();
        std::fs::write(&path, &bytes)?;
        let sha = gearmq_schemas::sha256(&bytes);
        let hex = hex::encode(sha);
        drop(bytes);
        eprintln!("gearmq-bench: {n} readers, {} MiB: stream…", a.mib);
        let (publish_secs, stream_secs) = stream_round(&url, &path, &hex, sha, n).await?;
        eprintln!("gearmq-bench: {n} readers, {} MiB: push…", a.mib);
        let push_secs = push_round(&url, &path, n, i).await?;
        rows.push(Row {
            readers: n,
            publish_secs,
            stream_secs,
            push_secs,
        });
    }
    Ok(rows)
}

async fn connect(url: &str) -> Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .with_context(|| format!("cannot connect to {}", gearmq_io::broker::redact_url(url)))
}

/// Publishes once, then `n` readers read the stream concurrently: (publish secs, secs
/// until the last reader has the whole artifact with its digest checked).
async fn stream_round(
    url: &str,
    path: &std::path::Path,
    hex: &str,
    sha: [u8; 32],
    n: usize,
) -> Result<(f64, f64)> {
    let size = std::fs::metadata(path)?.len();
    let conn = connect(url).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let t = Instant::now();
    artifact_stream::publish(&ch, path, hex, size, false, IDLE, |_| {}).await?;
    let publish_secs = t.elapsed().as_secs_f64();
    let conns = open_readers(url, n).await?;
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for r in 0..n {
        let ch = conns[r / READERS_PER_CONNECTION].create_channel().await?;
        let hex = hex.to_string();
        tasks.push(tokio::spawn(async move {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut got = 0u64;
            artifact_stream::read(ch, &hex, IDLE, |c| {
                Ok(match c {
                    Chunk::Restart => {
                        ctx = ring::digest::Context::new(&ring::digest::SHA256);
                        got = 0;
                        Taken::More
                    }
                    Chunk::Bytes(b) => {
                        ctx.update(b);
                        got += b.len() as u64;
                        if got < size {
                            Taken::More
                        } else if ctx.clone().finish().as_ref() == sha {
                            Taken::Done
                        } else {
                            Taken::Bad("digest".into())
                        }
                    }
                })
            })
            .await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let stream_secs = t.elapsed().as_secs_f64();
    for c in conns {
        let _ = c.close(200, "done".into()).await;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok((publish_secs, stream_secs))
}

async fn open_readers(url: &str, n: usize) -> Result<Vec<Connection>> {
    let mut conns = Vec::new();
    for _ in 0..n.div_ceil(READERS_PER_CONNECTION) {
        conns.push(connect(url).await?);
    }
    Ok(conns)
}

/// The same chunks published to each of `n` transient queues (no confirms) while each
/// queue's reader drains it: secs until every reader has every byte.
async fn push_round(url: &str, path: &std::path::Path, n: usize, round: usize) -> Result<f64> {
    let size = std::fs::metadata(path)?.len();
    let conns = open_readers(url, n).await?;
    let mut queues = Vec::with_capacity(n);
    let mut readers = Vec::with_capacity(n);
    for r in 0..n {
        let ch = conns[r / READERS_PER_CONNECTION].create_channel().await?;
        let q = format!("bench.push.{round}.{r}");
        let opts = QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(q.as_str().into(), opts, FieldTable::default())
            .await?;
        let no_ack = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "push".into(),
                no_ack,
                FieldTable::default(),
            )
            .await?;
        queues.push(q);
        readers.push(tokio::spawn(async move {
            let mut got = 0u64;
            while got < size {
                match tokio::time::timeout(IDLE, consumer.next()).await {
                    Ok(Some(Ok(d))) => got += d.data.len() as u64,
                    _ => bail!("a push reader stopped at {got} of {size} bytes"),
                }
            }
            drop(ch);
            Ok(())
        }));
    }
    let publisher = connect(url).await?;
    let pch = publisher.create_channel().await?;
    let t = Instant::now();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
    loop {
        let k = std::io::Read::read(&mut file, &mut buf)?;
        if k == 0 {
            break;
        }
        for q in &queues {
            pch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &buf[..k],
                BasicProperties::default(),
            )
            .await?;
        }
    }
    for r in readers {
        r.await??;
    }
    let secs = t.elapsed().as_secs_f64();
    let _ = publisher.close(200, "done".into()).await;
    for c in conns {
        let _ = c.close(200, "done".into()).await;
    }
    Ok(secs)
}

fn report(a: &ArtifactArgs, rows: &[Row]) {
    let mib = a.mib as f64;
    if a.json {
        let v: Vec<_> = rows
            .iter()
            .map(|r| {
                json!({"readers": r.readers, "mib": a.mib,
                       "stream_publish_secs": r.publish_secs,
                       "stream_secs": r.stream_secs,
                       "push_secs": r.push_secs,
                       "stream_mib_per_sec_delivered": mib * r.readers as f64 / r.stream_secs,
                       "push_mib_per_sec_delivered": mib * r.readers as f64 / r.push_secs,
                       "stream_to_push_ratio": r.stream_secs / r.push_secs})
            })
            .collect();
        println!("{}", json!({"artifacts": v}));
        return;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{:>7} {:>5} {:>12} {:>11} {:>13} {:>9} {:>13} {:>13}",
        "readers",
        "MiB",
        "publish s",
        "stream s",
        "stream MiB/s",
        "push s",
        "push MiB/s",
        "stream/push"
    );
    for r in rows {
        let total = mib * r.readers as f64;
        let _ = writeln!(
            out,
            "{:>7} {:>5} {:>12.2} {:>11.2} {:>13.0} {:>9.2} {:>13.0} {:>13.2}",
            r.readers,
            a.mib,
            r.publish_secs,
            r.stream_secs,
            total / r.stream_secs,
            r.push_secs,
            total / r.push_secs,
            r.stream_secs / r.push_secs
        );
    }
    let _ = writeln!(
        out,
        "stream: published once (durable stream, confirmed), read by every reader with its digest checked; \
         push: the same chunks sent to each reader's transient queue (no confirms, no digest) — the transport's limit"
    );
}
