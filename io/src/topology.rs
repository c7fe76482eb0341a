//! The broker objects gearmq uses, named and shaped in one place for the agent, the
//! orchestrator, the emulator and the benchmark (docs/DESIGN.md, "Broker topology").

use gearmq_schemas::Name;
use lapin::Channel;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use std::future::Future;
use std::time::Duration;

/// Topic exchange requests are published to (routing key `host.<name>` or `all`).
pub const REQUESTS_EXCHANGE: &str = "gearmq.requests";
/// Topic exchange replies are published to (routing key = reply queue name).
pub const REPLIES_EXCHANGE: &str = "gearmq.replies";
/// Fanout exchange host queues dead-letter to.
pub const DEAD_EXCHANGE: &str = "gearmq.dead";
/// Queue holding dead-lettered requests.
pub const DEAD_QUEUE: &str = "gearmq.dead";
/// Most messages kept in the dead-letter queue.
pub const DEAD_MAX_LENGTH: i64 = 10_000;
/// How long a dead-lettered message is kept (7 days), in ms.
pub const DEAD_MESSAGE_TTL_MS: i64 = 604_800_000;
/// Most requests a host queue holds. Past it the broker refuses new ones
/// (`reject-publish`: the publisher's confirm is a nack, so the sender hears of it)
/// instead of dropping the oldest, so a flood cannot push out requests already queued.
pub const HOST_QUEUE_MAX_LENGTH: i64 = 10_000;
/// Content type of every gearmq message.
pub const CONTENT_TYPE: &str = "application/x-gearmq";

/// Topic exchange hosts publish signed events to (routing key `<host>.<event>`:
/// `web1.alive`); provisioning lets each host publish only under its own name.
pub const EVENTS_EXCHANGE: &str = "gearmq.events";
/// The stream every event is kept in for a while, read by orchestrators from a point
/// in time (`gearmq hosts` reads the last minutes, `gearmq watch` what comes).
pub const EVENTS_STREAM: &str = "gearmq.events";
/// How long the events stream keeps events.
pub const EVENTS_MAX_AGE: &str = "1h";
/// Most bytes the events stream keeps (older segments go first).
pub const EVENTS_MAX_BYTES: i64 = 1 << 30;
/// The events stream's segment size: retention drops whole segments.
pub const EVENTS_SEGMENT_BYTES: i64 = 16 << 20;

/// Arguments of the events stream: a stream keeping [`EVENTS_MAX_AGE`] or
/// [`EVENTS_MAX_BYTES`], whichever is less.
pub fn events_stream_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    args.insert(
        "x-max-age".into(),
        AMQPValue::LongString(EVENTS_MAX_AGE.into()),
    );
    args.insert(
        "x-max-length-bytes".into(),
        AMQPValue::LongLongInt(EVENTS_MAX_BYTES),
    );
    args.insert(
        "x-stream-max-segment-size-bytes".into(),
        AMQPValue::LongLongInt(EVENTS_SEGMENT_BYTES),
    );
    args
}

/// Direct exchange hosts publish enrollment requests to (routing key [`ENROLL_ROUTE`]).
pub const ENROLL_EXCHANGE: &str = "gearmq.enroll";
/// The routing key of enrollment requests.
pub const ENROLL_ROUTE: &str = "request";
/// Durable queue holding enrollment requests until an operator reads them.
pub const ENROLL_QUEUE: &str = "gearmq.enroll.requests";
/// Most enrollment requests held; more are refused (`reject-publish`).
pub const ENROLL_QUEUE_MAX_LENGTH: i64 = 1_000;
/// Direct exchange operators publish enrollment answers to (routing key = the reply
/// queue's name).
pub const ENROLL_REPLIES_EXCHANGE: &str = "gearmq.enroll.replies";
/// The broker user hosts enroll as: it may publish requests and read its own reply
/// queue, nothing else. A dot keeps it apart from every host and operator name.
pub const ENROLL_USER: &str = "gearmq.bootstrap";
/// How long an unused enrollment reply queue lives (1 day), in ms.
pub const ENROLL_REPLY_QUEUE_EXPIRES_MS: i64 = 86_400_000;

/// The reply queue of an enrollment request with `reply_id` (32 lowercase hex).
pub fn enroll_reply_queue(reply_id: &str) -> String {
    format!("gearmq.enroll.reply.{reply_id}")
}

/// Arguments of the enrollment request queue: bounded, refusing past the bound.
pub fn enroll_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(ENROLL_QUEUE_MAX_LENGTH),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

/// Arguments of an enrollment reply queue: gone a day after its last use, holding at
/// most 4 answers.
pub fn enroll_reply_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(ENROLL_REPLY_QUEUE_EXPIRES_MS),
    );
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(4));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

/// The queue of host `name`.
pub fn host_queue(name: &Name) -> String {
    format!("gearmq.host.{name}")
}

/// The routing key of host `name`'s requests.
pub fn host_route(name: &Name) -> String {
    format!("host.{name}")
}

/// Arguments of the dead-letter queue.
pub fn dead_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(DEAD_MAX_LENGTH),
    );
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(DEAD_MESSAGE_TTL_MS),
    );
    args
}

/// Arguments of a host queue: it dead-letters to `gearmq.dead`, holds at most
/// [`HOST_QUEUE_MAX_LENGTH`] requests and refuses more (`reject-publish`).
pub fn host_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD_EXCHANGE.into()),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(HOST_QUEUE_MAX_LENGTH),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

/// Arguments of a caller's reply queue: at most `max_length` replies, more refused
/// (`reject-publish`), so a flood into it stays in bounds the sender hears of.
pub fn reply_queue_arguments(max_length: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(i64::from(max_length)),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

/// A broker operation that failed or did not finish in time, named.
#[derive(Debug, thiserror::Error)]
pub enum BrokerOpError {
    /// The broker refused or failed it.
    #[error("{what} failed: {source}")]
    Broker {
        /// The operation (`declaring queue gearmq.host.web1`).
        what: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// It did not finish within its limit.
    #[error("{what} timed out after {}", humantime::format_duration(*.after))]
    Timeout {
        /// The operation.
        what: String,
        /// The limit.
        after: Duration,
    },
}

/// Runs broker operation `fut`, named `what` in its error, for at most `limit`.
pub async fn timed<T>(
    what: impl Into<String>,
    limit: Duration,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, BrokerOpError> {
    let what = what.into();
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(BrokerOpError::Broker { what, source }),
        Err(_) => Err(BrokerOpError::Timeout { what, after: limit }),
    }
}

/// Declares the exchanges and the dead-letter queue with its binding, each operation
/// limited to `limit`; `passive` (a provisioned broker) only checks that they exist.
pub async fn declare_shared(
    ch: &Channel,
    passive: bool,
    limit: Duration,
) -> Result<(), BrokerOpError> {
    for (name, kind) in [
        (REQUESTS_EXCHANGE, lapin::ExchangeKind::Topic),
        (REPLIES_EXCHANGE, lapin::ExchangeKind::Topic),
        (DEAD_EXCHANGE, lapin::ExchangeKind::Fanout),
    ] {
        let opts = ExchangeDeclareOptions {
            passive,
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        timed(
            format!("declaring exchange {name}"),
            limit,
            ch.exchange_declare(name.into(), kind, opts, FieldTable::default()),
        )
        .await?;
    }
    let args = if passive {
        FieldTable::default()
    } else {
        dead_queue_arguments()
    };
    timed(
        format!("declaring queue {DEAD_QUEUE}"),
        limit,
        ch.queue_declare(DEAD_QUEUE.into(), durable_queue(passive), args),
    )
    .await?;
    if !passive {
        bind(ch, DEAD_QUEUE, DEAD_EXCHANGE, "", limit).await?;
    }
    Ok(())
}

/// Declares the events exchange and stream and binds them (`#`), each operation
/// limited to `limit`; `passive` (a provisioned broker) only checks that they exist.
pub async fn declare_events(
    ch: &Channel,
    passive: bool,
    limit: Duration,
) -> Result<(), BrokerOpError> {
    let opts = ExchangeDeclareOptions {
        passive,
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    timed(
        format!("declaring exchange {EVENTS_EXCHANGE}"),
        limit,
        ch.exchange_declare(
            EVENTS_EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            opts,
            FieldTable::default(),
        ),
    )
    .await?;
    let args = if passive {
        FieldTable::default()
    } else {
        events_stream_arguments()
    };
    timed(
        format!("declaring stream {EVENTS_STREAM}"),
        limit,
        ch.queue_declare(EVENTS_STREAM.into(), durable_queue(passive), args),
    )
    .await?;
    if !passive {
        bind(ch, EVENTS_STREAM, EVENTS_EXCHANGE, "#", limit).await?;
    }
    Ok(())
}

/// Declares host `host`'s queue and binds it to `host.<host>` and `all`; `passive` (a
/// provisioned broker) only checks that the queue exists.
pub async fn declare_host_queue(
    ch: &Channel,
    host: &Name,
    passive: bool,
    limit: Duration,
) -> Result<(), BrokerOpError> {
    let queue = host_queue(host);
    let args = if passive {
        FieldTable::default()
    } else {
        host_queue_arguments()
    };
    timed(
        format!("declaring queue {queue}"),
        limit,
        ch.queue_declare(queue.as_str().into(), durable_queue(passive), args),
    )
    .await?;
    if !passive {
        for key in [host_route(host), "all".to_string()] {
            bind(ch, &queue, REQUESTS_EXCHANGE, &key, limit).await?;
        }
    }
    Ok(())
}

/// Declares a caller's reply queue `queue` (exclusive, deleted with its connection, at
/// most `max_length` replies: [`reply_queue_arguments`]) and binds it to `exchange`
/// with its own name as the key.
pub async fn declare_reply_queue(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    max_length: u32,
    limit: Duration,
) -> Result<(), BrokerOpError> {
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    timed(
        format!("declaring queue {queue}"),
        limit,
        ch.queue_declare(queue.into(), opts, reply_queue_arguments(max_length)),
    )
    .await?;
    bind(ch, queue, exchange, queue, limit).await
}

fn durable_queue(passive: bool) -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive,
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

async fn bind(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    key: &str,
    limit: Duration,
) -> Result<(), BrokerOpError> {
    timed(
        format!("binding queue {queue} to {exchange} with key {key:?}"),
        limit,
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::ShortString;

    #[test]
    fn queues_are_bounded_and_refuse_rather_than_drop() {
        let dead = dead_queue_arguments();
        let get = |t: &FieldTable, k: &str| t.inner().get(&ShortString::from(k)).cloned();
        assert_eq!(
            get(&dead, "x-max-length"),
            Some(AMQPValue::LongLongInt(10_000))
        );
        assert_eq!(
            get(&dead, "x-message-ttl"),
            Some(AMQPValue::LongLongInt(604_800_000))
        );
        for args in [host_queue_arguments(), reply_queue_arguments(7)] {
            assert_eq!(
                get(&args, "x-overflow"),
                Some(AMQPValue::LongString("reject-publish".into()))
            );
        }
        assert_eq!(
            get(&host_queue_arguments(), "x-max-length"),
            Some(AMQPValue::LongLongInt(10_000))
        );
        let web1 = Name::new("web1").unwrap();
        assert_eq!(host_queue(&web1), "gearmq.host.web1");
        assert_eq!(host_route(&web1), "host.web1");
    }
}
