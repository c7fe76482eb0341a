//! The broker session: one connection, a consuming channel and a publishing channel
//! with publisher confirms, the topology, and reply publishing.
//!
//! A session is used until it breaks (connection lost, a channel closed by the broker,
//! a publish not confirmed); then the server opens a new one. Any failure marks the
//! session broken through its [`CancellationToken`], so every task using it stops.

use gearmq_io::broker::{BrokerFileError, BrokerFiles, redact_url};
use gearmq_io::topology;
pub use gearmq_io::topology::{
    CONTENT_TYPE, DEAD_EXCHANGE, DEAD_MAX_LENGTH, DEAD_MESSAGE_TTL_MS, DEAD_QUEUE,
    HOST_QUEUE_MAX_LENGTH, REPLIES_EXCHANGE, REQUESTS_EXCHANGE, dead_queue_arguments, host_queue,
    host_queue_arguments,
};
use gearmq_schemas::Name;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The AMQP frame size the agent asks for. lapin keeps send and receive buffers of 32
/// frames each, zero-filled: at RabbitMQ's default of 128 KiB that is 8 MiB per
/// connection, most of an idle agent's memory. Requests and replies are a few KiB (a
/// larger message is simply split into more frames), so 16 KiB frames cost nothing
/// and keep the buffers at 1 MiB.
pub const AGENT_FRAME_MAX: u32 = 16 * 1024;

/// How long connecting (TCP, TLS, AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a broker operation (declare, qos, publish confirm) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a broker operation failed. Every variant breaks the session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A broker URL did not parse.
    #[error("broker URL {broker} is not valid: {reason}")]
    BadUrl {
        /// The URL without password.
        broker: String,
        /// Why.
        reason: String,
    },
    /// The broker refused or failed an operation, or it did not finish in time.
    #[error(transparent)]
    Operation(#[from] topology::BrokerOpError),
    /// The broker did not accept a published reply (nack).
    #[error("broker refused (nacked) the reply to {reply_to}")]
    Nacked {
        /// The reply's routing key.
        reply_to: String,
    },
    /// The session had already broken.
    #[error("the broker session is gone")]
    Gone,
    /// A TLS, certificate or password file could not be used.
    #[error("{0}")]
    Files(#[from] BrokerFileError),
}

/// One broker to connect to, as the agent uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    redacted: String,
    user_id: String,
    files: BrokerFiles,
}

impl Endpoint {
    /// Parses `url`; replies carry `user_id` if given, else the URL's user name.
    /// `files` (TLS, password) are read at every connect.
    pub fn new(url: &str, user_id: Option<&str>, files: BrokerFiles) -> Result<Self, SessionError> {
        let parsed: AMQPUri = url.parse().map_err(|reason| SessionError::BadUrl {
            broker: redact_url(url),
            reason,
        })?;
        Ok(Endpoint {
            url: url.to_string(),
            redacted: redact_url(url),
            user_id: user_id
                .map(str::to_string)
                .unwrap_or(parsed.authority.userinfo.username),
            files,
        })
    }

    /// The URL without password, for logs.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The `user_id` set on replies.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }
}

async fn timed<T>(
    what: impl Into<String>,
    limit: Duration,
    fut: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, SessionError> {
    Ok(topology::timed(what, limit, fut).await?)
}

/// An open broker session.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    consume_channel: Channel,
    publish_channel: Channel,
    endpoint: Endpoint,
    broken: CancellationToken,
}

impl Session {
    /// Connects to `endpoint`, opens both channels, sets QoS `prefetch` on the
    /// consuming one and publisher confirms on the publishing one.
    pub async fn open(
        endpoint: &Endpoint,
        host: &Name,
        prefetch: u16,
    ) -> Result<Self, SessionError> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("gearmq-agent {host}")));
        let tls = endpoint.files.tls_config()?;
        // Holds the password: never logged, never put in an error.
        let url = gearmq_io::broker::with_frame_max(
            &endpoint.files.connect_url(&endpoint.url)?,
            AGENT_FRAME_MAX,
        );
        let what = format!("connecting to {}", endpoint.redacted);
        let runtime = lapin::runtime::default_runtime().map_err(|source| {
            topology::BrokerOpError::Broker {
                what: what.clone(),
                source,
            }
        })?;
        let conn = timed(
            what,
            CONNECT_TIMEOUT,
            Connection::connect_with_config(&url, props, tls, runtime),
        )
        .await?;
        let consume_channel = timed(
            "opening a channel",
            OPERATION_TIMEOUT,
            conn.create_channel(),
        )
        .await?;
        let publish_channel = timed(
            "opening a channel",
            OPERATION_TIMEOUT,
            conn.create_channel(),
        )
        .await?;
        timed(
            "basic.qos",
            OPERATION_TIMEOUT,
            consume_channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await?;
        timed(
            "confirm.select",
            OPERATION_TIMEOUT,
            publish_channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(Session {
            conn,
            consume_channel,
            publish_channel,
            endpoint: endpoint.clone(),
            broken: CancellationToken::new(),
        })
    }

    /// Declares the topology host `host` needs (docs/DESIGN.md, Broker topology), or only
    /// checks it with passive declares when `provisioned`.
    pub async fn declare_topology(
        &self,
        host: &Name,
        provisioned: bool,
    ) -> Result<(), SessionError> {
        let ch = &self.consume_channel;
        topology::declare_shared(ch, provisioned, OPERATION_TIMEOUT).await?;
        topology::declare_host_queue(ch, host, provisioned, OPERATION_TIMEOUT).await?;
        topology::declare_events(ch, provisioned, OPERATION_TIMEOUT).await?;
        Ok(())
    }

    /// Starts consuming host `host`'s queue.
    pub async fn consume(&self, host: &Name) -> Result<Consumer, SessionError> {
        let queue = host_queue(host);
        timed(
            format!("consuming {queue}"),
            OPERATION_TIMEOUT,
            self.consume_channel.basic_consume(
                queue.as_str().into(),
                ShortString::from(format!("gearmq-agent-{host}")),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    }

    /// Stops consuming (in-flight deliveries can still be acked).
    pub async fn cancel(&self, consumer: &Consumer) -> Result<(), SessionError> {
        timed(
            "basic.cancel",
            OPERATION_TIMEOUT,
            self.consume_channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default()),
        )
        .await
    }

    /// A handle to publish replies on this session.
    pub fn publisher(&self) -> ReplyPublisher {
        ReplyPublisher {
            channel: self.publish_channel.clone(),
            user_id: self.endpoint.user_id.clone(),
            broken: self.broken.clone(),
        }
    }

    /// A channel of its own (in confirm mode) for events: a broker refusing an event
    /// (a host whose topic permission does not allow the route) closes that channel
    /// only, never the one replies go out on.
    pub async fn event_publisher(&self) -> Result<EventPublisher, SessionError> {
        let channel = timed(
            "opening the events channel",
            OPERATION_TIMEOUT,
            self.conn.create_channel(),
        )
        .await?;
        timed(
            "confirm.select",
            OPERATION_TIMEOUT,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        Ok(EventPublisher {
            channel,
            user_id: self.endpoint.user_id.clone(),
        })
    }

    /// Cancelled when the session has broken.
    pub fn broken(&self) -> &CancellationToken {
        &self.broken
    }

    /// The broker this session is connected to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Closes the channels and the connection (best effort, bounded).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.conn.close(200, "agent shutting down".into()),
        )
        .await;
        self.broken.cancel();
    }
}

/// What became of a published reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Confirmed and routed to a queue.
    Delivered,
    /// Confirmed but returned unroutable (the reply queue is gone).
    Unroutable,
    /// Refused by the broker (a nack): the reply queue is full, as under a flood of
    /// junk into it. The session is fine; the same reply may be tried again.
    Refused,
}

/// How long to wait before trying a refused reply again.
const REFUSED_RETRY: Duration = Duration::from_millis(200);

/// Publishes signed replies with confirms on one session.
#[derive(Debug, Clone)]
pub struct ReplyPublisher {
    channel: Channel,
    user_id: String,
    broken: CancellationToken,
}

impl ReplyPublisher {
    /// A publisher on `channel` (in confirm mode) setting `user_id` on replies; a
    /// failed publish cancels `broken`.
    pub fn new(channel: Channel, user_id: String, broken: CancellationToken) -> Self {
        ReplyPublisher {
            channel,
            user_id,
            broken,
        }
    }

    /// Whether the session of this publisher broke (a publish failed or it closed).
    pub fn is_broken(&self) -> bool {
        self.broken.is_cancelled()
    }

    /// Publishes `bytes` to `gearmq.replies` with routing key `reply_to` (mandatory,
    /// `user_id`, `correlation_id` = `request_id`) and waits for the broker's confirm.
    /// Any failure marks the session broken.
    pub async fn publish_reply(
        &self,
        reply_to: &str,
        request_id: Uuid,
        bytes: &[u8],
    ) -> Result<Published, SessionError> {
        if self.broken.is_cancelled() {
            return Err(SessionError::Gone);
        }
        let result = self.publish(reply_to, request_id, bytes).await;
        if result.is_err() {
            self.broken.cancel();
        }
        result
    }

    /// [`ReplyPublisher::publish_reply`], trying a refused reply again (every 200 ms)
    /// until `until` (ms since the epoch): a full reply queue drains as its consumer
    /// catches up.
    pub async fn publish_reply_until(
        &self,
        reply_to: &str,
        request_id: Uuid,
        bytes: &[u8],
        until: gearmq_schemas::time::Millis,
    ) -> Result<Published, SessionError> {
        loop {
            let published = self.publish_reply(reply_to, request_id, bytes).await;
            if !matches!(published, Ok(Published::Refused))
                || gearmq_schemas::time::now_ms() >= until
            {
                return published;
            }
            tokio::time::sleep(REFUSED_RETRY).await;
        }
    }

    async fn publish(
        &self,
        reply_to: &str,
        request_id: Uuid,
        bytes: &[u8],
    ) -> Result<Published, SessionError> {
        let props = BasicProperties::default()
            .with_user_id(self.user_id.as_str().into())
            .with_correlation_id(request_id.hyphenated().to_string().into())
            .with_content_type(CONTENT_TYPE.into());
        let what = format!("publishing the reply to {reply_to}");
        let confirm = timed(
            what.clone(),
            OPERATION_TIMEOUT,
            self.channel.basic_publish(
                REPLIES_EXCHANGE.into(),
                reply_to.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                bytes,
                props,
            ),
        )
        .await?;
        match timed(what, OPERATION_TIMEOUT, confirm).await? {
            Confirmation::Ack(None) => Ok(Published::Delivered),
            Confirmation::Ack(Some(_returned)) => Ok(Published::Unroutable),
            Confirmation::Nack(_) => Ok(Published::Refused),
            Confirmation::NotRequested => Err(SessionError::Nacked {
                reply_to: reply_to.to_string(),
            }),
        }
    }
}

/// Publishes signed events to `gearmq.events` on a channel of their own.
#[derive(Debug, Clone)]
pub struct EventPublisher {
    channel: Channel,
    user_id: String,
}

impl EventPublisher {
    /// Whether the channel is still open (the broker closes it on a refused route).
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Publishes `bytes` with routing key `route` (transient, not mandatory: no
    /// orchestrator needs to be watching) and waits for the broker's confirm.
    pub async fn publish(&self, route: &str, bytes: &[u8]) -> Result<Published, SessionError> {
        let props = BasicProperties::default()
            .with_user_id(self.user_id.as_str().into())
            .with_delivery_mode(1)
            .with_content_type(CONTENT_TYPE.into());
        let what = format!("publishing the event {route}");
        let confirm = timed(
            what.clone(),
            OPERATION_TIMEOUT,
            self.channel.basic_publish(
                topology::EVENTS_EXCHANGE.into(),
                route.into(),
                BasicPublishOptions::default(),
                bytes,
                props,
            ),
        )
        .await?;
        match timed(what, OPERATION_TIMEOUT, confirm).await? {
            Confirmation::Ack(None) => Ok(Published::Delivered),
            Confirmation::Ack(Some(_returned)) => Ok(Published::Unroutable),
            Confirmation::Nack(_) => Ok(Published::Refused),
            Confirmation::NotRequested => Err(SessionError::Nacked {
                reply_to: route.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_defaults_to_the_percent_decoded_url_user() {
        let none = BrokerFiles::default;
        let e = Endpoint::new("amqp://web%2D1:pw@h:5672/%2f", None, none()).unwrap();
        assert_eq!(e.user_id(), "web-1");
        assert_eq!(e.redacted(), "amqp://web-1@h:5672/%2f");
        let e = Endpoint::new("amqp://guest:guest@h:5672/%2f", Some("web1"), none()).unwrap();
        assert_eq!(e.user_id(), "web1");
    }
}
