//! `gearmq dead list|show|purge`: what agents dead-lettered to `gearmq.dead`, and why.
//!
//! Reading never loses a message: each is fetched unacknowledged and all are returned
//! to the queue (nack with requeue) before the command ends. Only `purge` removes.

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use gearmq_io::broker::redact_url;
use gearmq_orchestrator::OrchestratorConfig;
use gearmq_schemas::envelope::{IssuerSigned, Signed, decode_body};
use gearmq_schemas::{Credential, codec};
use lapin::options::{BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::json;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

/// The queue host queues dead-letter into (declared by agents and `broker provision`).
const DEAD_QUEUE: &str = "gearmq.dead";
/// Limit on each broker operation.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a message `show` dumps.
const SHOW_BYTES: usize = 512;

#[derive(Subcommand)]
pub enum DeadCommand {
    /// List the messages in gearmq.dead (they stay in the queue).
    List(ListArgs),
    /// One message in full, by its index in `dead list`.
    Show(ShowArgs),
    /// Remove every message from gearmq.dead.
    Purge,
}

#[derive(Args)]
pub struct ListArgs {
    /// Read at most N messages.
    #[arg(long, value_name = "N", default_value_t = 100)]
    max: usize,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ShowArgs {
    /// The message's index (from 1, as `dead list` numbers them).
    index: usize,
}

/// One dead-lettered message as read from the queue.
struct DeadMessage {
    index: usize,
    data: Vec<u8>,
    routing_key: String,
    death: Death,
}

/// The first entry of the `x-death` header RabbitMQ adds when it dead-letters.
#[derive(Default)]
struct Death {
    queue: Option<String>,
    reason: Option<String>,
    time_s: Option<u64>,
    count: Option<i64>,
}

pub fn run(ctx: &crate::context::Context, command: DeadCommand) -> Result<ExitCode> {
    let config_path = ctx.config.as_path();
    let config = OrchestratorConfig::load(config_path)?;
    let rt = crate::call::runtime()?;
    rt.block_on(async {
        let conn = connect(&config).await?;
        let ch = timed("opening a channel", conn.create_channel()).await?;
        let outcome = match command {
            DeadCommand::List(a) => list(&ch, a).await,
            DeadCommand::Show(a) => show(&ch, a).await,
            DeadCommand::Purge => purge(&ch).await,
        };
        let _ = tokio::time::timeout(BROKER_TIMEOUT, conn.close(200, "done".into())).await;
        outcome.map(|()| ExitCode::SUCCESS)
    })
}

async fn connect(config: &OrchestratorConfig) -> Result<Connection> {
    let mut last = String::from("no broker URL in the config");
    for url in &config.broker.urls {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("gearmq dead {}", config.name).into());
        match gearmq_io::broker::connect(url, &config.broker.files(), None, props, BROKER_TIMEOUT)
            .await
        {
            Ok(c) => return Ok(c),
            Err(e) => last = format!("{}: {e}", redact_url(url)),
        }
    }
    bail!("cannot connect to the broker: {last}")
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = lapin::Result<T>>) -> Result<T> {
    match tokio::time::timeout(BROKER_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(explain(what, e)),
        Err(_) => bail!("{what}: no answer from the broker within {BROKER_TIMEOUT:?}"),
    }
}

/// Turns the broker's refusals into what the operator should do about them.
fn explain(what: &str, e: lapin::Error) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("ACCESS_REFUSED") {
        anyhow::anyhow!(
            "{what}: the broker refused access to {DEAD_QUEUE} ({text}); this needs a broker \
             user with read rights on {DEAD_QUEUE}, e.g. the administrator (the operator user \
             of a provisioned broker has none)"
        )
    } else if text.contains("NOT_FOUND") {
        anyhow::anyhow!(
            "{what}: queue {DEAD_QUEUE} does not exist on this vhost (no agent has started and \
             the broker was not provisioned): {text}"
        )
    } else {
        anyhow::anyhow!("{what}: {text}")
    }
}

/// Fetches up to `max` messages without acknowledging them, then returns them all to
/// the queue, so reading loses nothing.
async fn read(ch: &Channel, max: usize) -> Result<Vec<DeadMessage>> {
    let mut out = Vec::new();
    let mut last_tag = None;
    let fetched = async {
        while out.len() < max {
            let got = timed(
                &format!("reading {DEAD_QUEUE}"),
                ch.basic_get(DEAD_QUEUE.into(), BasicGetOptions { no_ack: false }),
            )
            .await?;
            let Some(m) = got else { break };
            let d = m.delivery;
            last_tag = Some(d.delivery_tag);
            out.push(DeadMessage {
                index: out.len() + 1,
                routing_key: d.routing_key.to_string(),
                death: d
                    .properties
                    .headers()
                    .as_ref()
                    .map(death)
                    .unwrap_or_default(),
                data: d.data,
            });
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    if let Some(tag) = last_tag {
        // One nack for every message fetched on this channel, put back in order.
        timed(
            &format!("returning messages to {DEAD_QUEUE}"),
            ch.basic_nack(
                tag,
                BasicNackOptions {
                    multiple: true,
                    requeue: true,
                },
            ),
        )
        .await?;
    }
    fetched?;
    Ok(out)
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn death(headers: &FieldTable) -> Death {
    let first = headers
        .inner()
        .iter()
        .find(|(k, _)| k.as_str() == "x-death")
        .and_then(|(_, v)| match v {
            AMQPValue::FieldArray(a) => a.as_slice().first(),
            _ => None,
        });
    let Some(AMQPValue::FieldTable(t)) = first else {
        return Death::default();
    };
    let mut d = Death::default();
    for (k, v) in t.inner() {
        match (k.as_str(), v) {
            ("queue", v) => d.queue = text(v),
            ("reason", v) => d.reason = text(v),
            ("time", AMQPValue::Timestamp(t)) => d.time_s = Some(*t),
            ("count", AMQPValue::LongLongInt(n)) => d.count = Some(*n),
            ("count", AMQPValue::LongInt(n)) => d.count = Some(i64::from(*n)),
            _ => {}
        }
    }
    d
}

/// What the bytes look like, without trusting them: the claimed signer is whatever
/// the credential inside says, its signature unchecked.
fn describe(data: &[u8]) -> String {
    let max = data.len();
    let signed = match Signed::decode(data, max) {
        Ok(s) => s,
        Err(e) => return format!("not a signed envelope: {e}"),
    };
    let claimed = codec::decode::<IssuerSigned>("credential", &signed.signer, max)
        .map_err(|e| e.to_string())
        .and_then(|c| decode_body::<Credential>(&c.body, max).map_err(|e| e.to_string()));
    match claimed {
        Ok(c) => format!(
            "signed envelope, claimed signer {} ({}), unverified",
            c.name, c.role
        ),
        Err(e) => format!("signed envelope, signer credential unreadable: {e}"),
    }
}

fn time_text(s: Option<u64>) -> String {
    s.map(|s| humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string())
        .unwrap_or_else(|| "-".into())
}

fn message_json(m: &DeadMessage) -> serde_json::Value {
    json!({
        "index": m.index,
        "size": m.data.len(),
        "routing_key": m.routing_key,
        "queue": m.death.queue,
        "reason": m.death.reason,
        "count": m.death.count,
        "time": m.death.time_s.map(|s| time_text(Some(s))),
        "decoded": describe(&m.data),
    })
}

async fn list(ch: &Channel, a: ListArgs) -> Result<()> {
    let messages = read(ch, a.max).await?;
    if a.json {
        let items: Vec<_> = messages.iter().map(message_json).collect();
        println!(
            "{}",
            json!({ "queue": DEAD_QUEUE, "count": items.len(), "messages": items })
        );
        return Ok(());
    }
    let rows: Vec<[String; 7]> = messages
        .iter()
        .map(|m| {
            [
                m.index.to_string(),
                m.data.len().to_string(),
                m.routing_key.clone(),
                m.death.queue.clone().unwrap_or_else(|| "-".into()),
                m.death.reason.clone().unwrap_or_else(|| "-".into()),
                time_text(m.death.time_s),
                describe(&m.data),
            ]
        })
        .collect();
    if !rows.is_empty() {
        crate::render::print_table(
            &[
                "#",
                "BYTES",
                "ROUTING KEY",
                "QUEUE",
                "REASON",
                "TIME",
                "CONTENT",
            ],
            &rows,
        );
    }
    let more = if messages.len() == a.max {
        " (--max reached; there may be more)"
    } else {
        ""
    };
    println!("{} message(s) in {DEAD_QUEUE}{more}", messages.len());
    Ok(())
}

async fn show(ch: &Channel, a: ShowArgs) -> Result<()> {
    if a.index == 0 {
        bail!("message indexes start at 1");
    }
    let messages = read(ch, a.index).await?;
    let Some(m) = messages.get(a.index - 1) else {
        bail!(
            "{DEAD_QUEUE} holds {} message(s), no message {}",
            messages.len(),
            a.index
        );
    };
    println!("index:       {}", m.index);
    println!("size:        {} bytes", m.data.len());
    println!("routing key: {}", m.routing_key);
    println!("queue:       {}", m.death.queue.as_deref().unwrap_or("-"));
    println!("reason:      {}", m.death.reason.as_deref().unwrap_or("-"));
    println!(
        "count:       {}",
        m.death
            .count
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into())
    );
    println!("time:        {}", time_text(m.death.time_s));
    println!("content:     {}", describe(&m.data));
    let shown = m.data.len().min(SHOW_BYTES);
    println!("first {shown} bytes:");
    print!("{}", hex_dump(&m.data[..shown]));
    Ok(())
}

/// Offset, 16 bytes in hex, and their printable ASCII, a line each.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}  {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

async fn purge(ch: &Channel) -> Result<()> {
    let n = timed(
        &format!("purging {DEAD_QUEUE}"),
        ch.queue_purge(DEAD_QUEUE.into(), QueuePurgeOptions::default()),
    )
    .await
    .context("nothing was removed")?;
    println!("purged {n} message(s) from {DEAD_QUEUE}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::FieldArray;

    #[test]
    fn death_reads_rabbitmqs_first_x_death_entry() {
        let mut entry = FieldTable::default();
        entry.insert(
            "queue".into(),
            AMQPValue::LongString("gearmq.host.a".into()),
        );
        entry.insert("reason".into(), AMQPValue::LongString("rejected".into()));
        entry.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        entry.insert("count".into(), AMQPValue::LongLongInt(1));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])),
        );
        let d = death(&headers);
        assert_eq!(d.queue.as_deref(), Some("gearmq.host.a"));
        assert_eq!(d.reason.as_deref(), Some("rejected"));
        assert_eq!(d.time_s, Some(1_700_000_000));
        assert_eq!(d.count, Some(1));
        assert!(death(&FieldTable::default()).reason.is_none());
    }

    #[test]
    fn random_bytes_are_described_as_not_an_envelope() {
        assert!(describe(&[0xff, 0x00, 0x13]).starts_with("not a signed envelope"));
    }

    #[test]
    fn hex_dump_shows_offsets_and_ascii() {
        let d = hex_dump(b"gearmq\x00\x01");
        assert_eq!(
            d,
            format!("00000000  {:<47}  gearmq..\n", "67 65 61 72 6d 71 00 01")
        );
    }
}
