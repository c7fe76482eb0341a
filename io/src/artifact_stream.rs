//! Artifacts through the broker: a caller publishes a program's bytes once, in chunks,
//! into a RabbitMQ stream named by their digest (`gearmq.artifact.<sha256 hex>`), before
//! it publishes the install request that signs that digest; every host the request
//! reaches reads the stream from its first chunk on its own, so the bytes leave the
//! caller once for any number of hosts.
//!
//! Neither side holds the artifact in memory: the caller reads the file a chunk at a
//! time with a bounded window of unconfirmed publishes, the reader hands each chunk to a
//! sink (the agent's store writes it to a temporary file through the digest). A chunk
//! carries its byte offset ([`ARTIFACT_OFFSET_HEADER`]); the stream may hold several
//! copies (one per call that shipped it), so the reader starts over at every offset 0
//! and takes the first complete copy whose digest matches.

use crate::topology::{BrokerOpError, timed};
use futures_util::StreamExt;
use gearmq_schemas::actions::{ARTIFACT_CHUNK_BYTES, ARTIFACT_OFFSET_HEADER, artifact_stream};
use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// The direct exchange artifact chunks are published to (routing key: the digest in
/// hex), bound to each artifact's stream.
pub const ARTIFACTS_EXCHANGE: &str = "gearmq.artifacts";
/// How long a stream keeps its chunks: long enough for every host of a call (and its
/// retries) to read them, short enough that the broker's disk gets them back.
pub const STREAM_MAX_AGE: &str = "1h";
/// Segment size of an artifact stream: retention drops whole segments, so small ones
/// give the disk back sooner.
const STREAM_SEGMENT_BYTES: i64 = 16 << 20;
/// Unconfirmed chunks in flight while publishing (the caller's memory bound).
const PUBLISH_WINDOW: usize = 8;
/// Chunks delivered to a reader and not yet acked (its memory bound).
const READ_PREFETCH: u16 = 8;

/// Why an artifact could not be shipped or read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A broker operation failed.
    #[error(transparent)]
    Broker(#[from] BrokerOpError),
    /// The broker refused (nacked) a chunk.
    #[error("the broker refused chunk at offset {offset} of {stream}")]
    Refused {
        /// The stream.
        stream: String,
        /// The chunk's offset.
        offset: u64,
    },
    /// The local file could not be read, or changed while it was read.
    #[error("{0}")]
    File(String),
    /// The stream held no complete copy with the signed digest.
    #[error("{0}")]
    Incomplete(String),
    /// The sink refused to go on (it could not write, or it is over a limit).
    #[error("{0}")]
    Sink(String),
}

/// What the reader gives a sink: start over (a new copy begins), these bytes at the
/// current end, or the copy is complete.
#[derive(Debug)]
pub enum Chunk<'a> {
    /// A copy begins at offset 0: forget what was written so far.
    Restart,
    /// The next bytes of the copy.
    Bytes(&'a [u8]),
}

/// What a sink says after a chunk.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Keep reading.
    More,
    /// The copy is complete and its digest matches: stop.
    Done,
    /// The copy is complete or over-long and does not match (`reason`): wait for the
    /// next copy.
    Bad(String),
}

fn stream_arguments(size: u64) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(STREAM_MAX_AGE.into()),
    );
    // Room for two copies (a retry beside the first) and a segment of slack.
    let max_bytes = size
        .saturating_mul(2)
        .saturating_add(STREAM_SEGMENT_BYTES as u64);
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(i64::try_from(max_bytes).unwrap_or(i64::MAX)),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(STREAM_SEGMENT_BYTES),
    );
    args
}

/// Publishes the `size` bytes of `path` (which must hash to `sha256_hex`; the caller
/// checked) into the artifact's stream, declaring the exchange (unless `provisioned`),
/// the stream and its binding first. `channel` must be in confirm mode. `progress` is
/// told the bytes confirmed so far.
pub async fn publish(
    channel: &Channel,
    path: &Path,
    sha256_hex: &str,
    size: u64,
    provisioned: bool,
    limit: Duration,
    mut progress: impl FnMut(u64),
) -> Result<(), StreamError> {
    let stream = artifact_stream(sha256_hex);
    if !provisioned {
        timed(
            format!("declaring exchange {ARTIFACTS_EXCHANGE}"),
            limit,
            channel.exchange_declare(
                ARTIFACTS_EXCHANGE.into(),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ),
        )
        .await?;
    }
    timed(
        format!("declaring stream {stream}"),
        limit,
        channel.queue_declare(
            stream.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            stream_arguments(size),
        ),
    )
    .await?;
    timed(
        format!("binding stream {stream} to {ARTIFACTS_EXCHANGE}"),
        limit,
        channel.queue_bind(
            stream.as_str().into(),
            ARTIFACTS_EXCHANGE.into(),
            sha256_hex.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await?;
    let file_err = |e: std::io::Error| StreamError::File(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(file_err)?;
    let mut buf = vec![0u8; ARTIFACT_CHUNK_BYTES];
    let mut offset = 0u64;
    let mut window = std::collections::VecDeque::new();
    loop {
        let n = read_full(&mut file, &mut buf).map_err(file_err)?;
        if n == 0 {
            break;
        }
        if offset + n as u64 > size {
            return Err(StreamError::File(format!(
                "{} grew past {size} bytes while it was sent",
                path.display()
            )));
        }
        let mut headers = FieldTable::default();
        headers.insert(
            ARTIFACT_OFFSET_HEADER.into(),
            AMQPValue::LongLongInt(offset as i64),
        );
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("application/octet-stream"))
            .with_headers(headers);
        let confirm = timed(
            format!("publishing chunk {offset} of {stream}"),
            limit,
            channel.basic_publish(
                ARTIFACTS_EXCHANGE.into(),
                sha256_hex.into(),
                BasicPublishOptions::default(),
                &buf[..n],
                props,
            ),
        )
        .await?;
        window.push_back((offset, n as u64, confirm));
        offset += n as u64;
        while window.len() >= PUBLISH_WINDOW {
            settle(&mut window, &stream, limit, &mut progress).await?;
        }
    }
    while !window.is_empty() {
        settle(&mut window, &stream, limit, &mut progress).await?;
    }
    if offset != size {
        return Err(StreamError::File(format!(
            "{} holds {offset} bytes, not the {size} its digest was taken of",
            path.display()
        )));
    }
    Ok(())
}

type Window = std::collections::VecDeque<(u64, u64, lapin::PublisherConfirm)>;

/// Waits for the oldest chunk's confirm.
async fn settle(
    window: &mut Window,
    stream: &str,
    limit: Duration,
    progress: &mut impl FnMut(u64),
) -> Result<(), StreamError> {
    let Some((offset, len, confirm)) = window.pop_front() else {
        return Ok(());
    };
    match timed(
        format!("waiting for the broker to confirm chunk {offset} of {stream}"),
        limit,
        confirm,
    )
    .await?
    {
        Confirmation::Nack(_) => Err(StreamError::Refused {
            stream: stream.to_string(),
            offset,
        }),
        _ => {
            progress(offset + len);
            Ok(())
        }
    }
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Reads the artifact's stream from its first chunk, handing chunks in order to
/// `sink` until it says [`Taken::Done`]. A copy with a gap, an over-long copy or one
/// whose digest does not match is dropped and the next copy awaited; when nothing
/// arrives for `idle`, the read ends with [`StreamError::Incomplete`] naming what was
/// wrong with the last copy. `channel` is used for this read alone (it is closed).
pub async fn read(
    channel: Channel,
    sha256_hex: &str,
    idle: Duration,
    mut sink: impl FnMut(Chunk<'_>) -> Result<Taken, String>,
) -> Result<(), StreamError> {
    let stream = artifact_stream(sha256_hex);
    timed(
        "setting the stream prefetch",
        idle,
        channel.basic_qos(READ_PREFETCH, BasicQosOptions::default()),
    )
    .await?;
    let mut args = FieldTable::default();
    args.insert(
        "x-stream-offset".into(),
        AMQPValue::LongString("first".into()),
    );
    let mut consumer = timed(
        format!("reading stream {stream}"),
        idle,
        channel.basic_consume(
            stream.as_str().into(),
            "gearmq-artifact".into(),
            BasicConsumeOptions::default(),
            args,
        ),
    )
    .await?;
    // What is wrong with the copy being read (None: it is good so far), and where its
    // next chunk must start.
    let mut last_problem = "the stream is empty".to_string();
    let mut expected: Option<u64> = None;
    let result = loop {
        let delivery = match tokio::time::timeout(idle, consumer.next()).await {
            Err(_) | Ok(None) => {
                break Err(StreamError::Incomplete(format!(
                    "stream {stream} holds no complete copy with the signed digest \
                     (nothing more after {}s): {last_problem}",
                    idle.as_secs()
                )));
            }
            Ok(Some(Err(e))) => {
                break Err(BrokerOpError::Broker {
                    what: format!("reading stream {stream}"),
                    source: e,
                }
                .into());
            }
            Ok(Some(Ok(d))) => d,
        };
        let offset = delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(ARTIFACT_OFFSET_HEADER).cloned())
            .and_then(|v| match v {
                AMQPValue::LongLongInt(n) => u64::try_from(n).ok(),
                _ => None,
            });
        let _ = delivery.ack(BasicAckOptions::default()).await;
        let taken = match (offset, expected) {
            (None, _) => {
                last_problem = "a chunk without its offset".into();
                expected = None;
                continue;
            }
            (Some(0), _) => {
                expected = Some(0);
                sink(Chunk::Restart).map_err(StreamError::Sink)?;
                sink(Chunk::Bytes(&delivery.data)).map_err(StreamError::Sink)?
            }
            (Some(o), Some(e)) if o == e => {
                sink(Chunk::Bytes(&delivery.data)).map_err(StreamError::Sink)?
            }
            (Some(o), Some(e)) => {
                last_problem = format!("a gap: chunk at {o} where {e} was next");
                expected = None;
                continue;
            }
            // Inside a copy already given up: skip to the next offset 0.
            (Some(_), None) => continue,
        };
        match taken {
            Taken::Done => break Ok(()),
            Taken::More => {
                expected = expected.map(|e| e + delivery.data.len() as u64);
            }
            Taken::Bad(reason) => {
                last_problem = reason;
                expected = None;
            }
        }
    };
    let _ = channel.close(200, "artifact read".into()).await;
    result
}
