//! Raw broker access: a caller that signs requests by hand and reads replies off a
//! queue of its own (chosen ids, floods, expired and forged requests, what the `gearmq`
//! CLI never sends), and confirmed publishes of any bytes anywhere.

use crate::pki::{Identity, Pki};
use futures_util::StreamExt;
use gearmq_schemas::audit::peek_signed;
use gearmq_schemas::request::reply_queue_name;
use gearmq_schemas::time::now_ms;
use gearmq_schemas::{ActionName, Name, Reply, Request, Targets, codec};
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use std::time::Duration;
use uuid::Uuid;

/// How long a reply that must come is waited for.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long "no reply" is waited for.
pub const QUIET: Duration = Duration::from_secs(1);

/// A caller on its own connection with a reply queue of its own
/// (`gearmq.reply.<name>.raw<n>`), signing requests by hand.
pub struct RawCaller {
    conn: Connection,
    ch: lapin::Channel,
    /// The identity requests are signed with.
    pub identity: Identity,
    /// Its reply queue.
    pub reply_to: String,
    consumer: lapin::Consumer,
    /// Replies read while waiting for another request's.
    early: Vec<Delivery>,
}

impl RawCaller {
    /// Connects to the vhost at `url` and declares, binds and consumes the reply queue.
    pub async fn connect(url: &str, identity: Identity) -> RawCaller {
        let conn = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        let reply_to = reply_queue_name(&identity.name, &format!("raw{}", crate::rand_u32()));
        ch.exchange_declare(
            "gearmq.replies".into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("replies exchange");
        gearmq_io::topology::declare_reply_queue(
            &ch,
            &reply_to,
            gearmq_io::topology::REPLIES_EXCHANGE,
            100_000,
            std::time::Duration::from_secs(30),
        )
        .await
        .expect("reply queue");
        // Its own channel, no acks: replies never wait behind publisher confirms.
        let consumer = conn
            .create_channel()
            .await
            .expect("channel")
            .basic_consume(
                reply_to.as_str().into(),
                "raw".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        RawCaller {
            conn,
            ch,
            identity,
            reply_to,
            consumer,
            early: Vec::new(),
        }
    }

    /// A request for `action` with encoded `args` to `targets`, valid for `lifetime`
    /// from now, answered at this caller's queue (unsigned: change it, then
    /// [`RawCaller::seal`]).
    pub fn new_request(
        &self,
        targets: Targets,
        action: &str,
        args: Vec<u8>,
        lifetime: Duration,
    ) -> Request {
        let now = now_ms();
        Request::new(
            self.identity.name.clone(),
            now,
            now + lifetime.as_millis() as u64,
            targets,
            self.reply_to.clone(),
            ActionName::new(action).expect("action"),
            args,
        )
    }

    /// A ping of `hosts`, valid for a minute (unsigned).
    pub fn ping(&self, hosts: &[&Name]) -> Request {
        let targets = Targets::hosts(hosts.iter().map(|h| (*h).clone()));
        let args = codec::encode(&gearmq_schemas::actions::PingArgs {});
        self.new_request(targets, "ping", args, Duration::from_secs(60))
    }

    /// `req` signed by this caller.
    pub fn seal(&self, req: &Request) -> Vec<u8> {
        self.identity.seal(req)
    }

    /// A signed request `id` for `action` on `host`, valid for `lifetime`, answered at
    /// `reply_to` (this caller's queue unless given).
    pub fn request(
        &self,
        id: Uuid,
        host: &str,
        action: &str,
        args: Vec<u8>,
        lifetime: Duration,
        reply_to: Option<&str>,
    ) -> Vec<u8> {
        let mut req = self.new_request(Targets::hosts([crate::name(host)]), action, args, lifetime);
        req.id = id;
        if let Some(r) = reply_to {
            req.reply_to = r.to_string();
        }
        self.seal(&req)
    }

    /// A signed request `id` for `action` on `host` whose window is already over
    /// (issued ten minutes ago, expired five minutes ago).
    pub fn expired_request(&self, id: Uuid, host: &str, action: &str, args: Vec<u8>) -> Vec<u8> {
        let mut req = self.new_request(
            Targets::hosts([crate::name(host)]),
            action,
            args,
            Duration::ZERO,
        );
        req.id = id;
        req.issued_at -= 600_000;
        req.expires_at = req.issued_at + 300_000;
        self.seal(&req)
    }

    /// Publishes `bytes` to `host.<host>` and returns the confirm to await (the broker
    /// may nack it: a full queue refuses).
    pub async fn publish(&self, bytes: &[u8], host: &str) -> lapin::PublisherConfirm {
        self.ch
            .basic_publish(
                "gearmq.requests".into(),
                format!("host.{host}").as_str().into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default(),
            )
            .await
            .expect("publish")
    }

    /// Publishes `bytes` to `host.<host>`, persistent and mandatory, and checks that the
    /// broker routed and took it.
    pub async fn send(&self, bytes: &[u8], host: &str) {
        let confirm = self
            .ch
            .basic_publish(
                "gearmq.requests".into(),
                format!("host.{host}").as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                bytes,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            matches!(confirm, Confirmation::Ack(None)),
            "request routed: {confirm:?}"
        );
    }

    /// The next delivery on this caller's queue (those kept while waiting for another
    /// request's first), or `None` after `wait`.
    pub async fn next_delivery(&mut self, wait: Duration) -> Option<Delivery> {
        if !self.early.is_empty() {
            return Some(self.early.remove(0));
        }
        match tokio::time::timeout(wait, self.consumer.next()).await {
            Ok(Some(Ok(d))) => Some(d),
            Ok(other) => panic!("reply consumer ended: {other:?}"),
            Err(_) => None,
        }
    }

    /// The next delivery; panics if none comes within [`REPLY_TIMEOUT`].
    pub async fn delivery(&mut self) -> Delivery {
        self.next_delivery(REPLY_TIMEOUT)
            .await
            .expect("a reply within the timeout")
    }

    /// The next reply to request `id` (others are kept for later); panics if none comes
    /// within `wait`.
    pub async fn delivery_for(&mut self, id: Uuid, wait: Duration) -> Delivery {
        if let Some(i) = self.early.iter().position(|d| request_id_of(d) == Some(id)) {
            return self.early.remove(i);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let d = match tokio::time::timeout(left, self.consumer.next()).await {
                Ok(Some(Ok(d))) => d,
                Ok(other) => panic!("reply consumer ended: {other:?}"),
                Err(_) => panic!("no reply to {id} within {wait:?}"),
            };
            if request_id_of(&d) == Some(id) {
                return d;
            }
            self.early.push(d);
        }
    }

    /// The next reply on this caller's queue (decoded, signature not checked), or
    /// `None` after `wait`.
    pub async fn next_reply(&mut self, wait: Duration) -> Option<Reply> {
        let d = self.next_delivery(wait).await?;
        peek_signed::<Reply>(&d.data, 1 << 20).ok().map(|(r, _)| r)
    }

    /// The next final reply on this caller's queue; panics after `wait`.
    pub async fn call_next(&mut self, wait: Duration) -> Reply {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let r = self
                .next_reply(left)
                .await
                .unwrap_or_else(|| panic!("no reply within {wait:?}"));
            if r.is_final {
                return r;
            }
        }
    }

    /// Publishes a request and waits for its final reply.
    pub async fn call(&mut self, bytes: &[u8], host: &str, wait: Duration) -> Reply {
        self.publish(bytes, host).await.await.expect("confirm");
        self.call_next(wait).await
    }

    /// Signs and sends a request for `action` with encoded `args` to `host`, valid for
    /// `lifetime`; returns its id.
    pub async fn send_to(
        &self,
        host: &Name,
        action: &str,
        args: Vec<u8>,
        lifetime: Duration,
    ) -> Uuid {
        let req = self.new_request(Targets::hosts([host.clone()]), action, args, lifetime);
        self.send(&self.seal(&req), host.as_str()).await;
        req.id
    }

    /// The next reply to request `id`, its signature and host credential checked
    /// against `pki`'s issuer; panics if none comes within `wait`.
    pub async fn verified_reply(&mut self, pki: &Pki, id: Uuid, wait: Duration) -> Reply {
        let d = self.delivery_for(id, wait).await;
        pki.open_reply(&d.data).body().clone()
    }

    /// Sends `action` with encoded `args` to `host` (valid for a minute) and returns its
    /// final reply, checked against `pki`'s issuer (within 30 s).
    pub async fn call_verified(
        &mut self,
        pki: &Pki,
        host: &Name,
        action: &str,
        args: Vec<u8>,
    ) -> Reply {
        let id = self
            .send_to(host, action, args, Duration::from_secs(60))
            .await;
        let r = self.verified_reply(pki, id, Duration::from_secs(30)).await;
        assert!(r.is_final, "{action}: single replies are final");
        r
    }

    /// Polls the dead-letter queue `gearmq.dead` for one message for at most `wait`.
    pub async fn dead_letter(&self, wait: Duration) -> Option<BasicGetMessage> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let got = self
                .ch
                .basic_get("gearmq.dead".into(), BasicGetOptions { no_ack: true })
                .await
                .expect("basic.get gearmq.dead");
            if got.is_some() || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// The request a delivered reply answers, if it decodes.
fn request_id_of(d: &Delivery) -> Option<Uuid> {
    peek_signed::<Reply>(&d.data, 1 << 20)
        .ok()
        .map(|(r, _)| r.request_id)
}

/// Connects to the vhost at `url` with plain AMQP.
pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("amqp connect: {e}"))
}

/// Publishes `bytes` on `exchange` with routing `key` (and AMQP `user_id` if given) on
/// a channel of its own with publisher confirms: `Ok(true)` if the broker acked it,
/// `Ok(false)` if it nacked it, `Err` with the broker's reason if it closed the channel
/// instead.
pub async fn publish_confirmed(
    conn: &Connection,
    exchange: &str,
    key: &str,
    bytes: &[u8],
    user_id: Option<&str>,
) -> Result<bool, String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(Default::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut props = BasicProperties::default();
    if let Some(u) = user_id {
        props = props.with_user_id(u.into());
    }
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            bytes,
            props,
        )
        .await
        .map_err(|e| e.to_string())?;
    let outcome = tokio::time::timeout(Duration::from_secs(10), confirm)
        .await
        .map_err(|_| "no confirm in 10 s".to_string())?;
    let _ = ch.close(200, "done".into()).await;
    match outcome {
        Ok(c) if c.is_ack() => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(e.to_string()),
    }
}

/// A queue of the test's own (exclusive, server-named) bound to `exchange` with `key`:
/// a copy of everything routed there, as anyone allowed to bind could take.
pub struct Tap {
    conn: Connection,
    ch: lapin::Channel,
    /// The queue's name.
    pub queue: String,
}

impl Tap {
    /// Declares the queue on the vhost at `url` and binds it.
    pub async fn bind(url: &str, exchange: &str, key: &str) -> Tap {
        let conn = connect(url).await;
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        ch.queue_bind(
            q.name().clone(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind tap");
        Tap {
            queue: q.name().to_string(),
            conn,
            ch,
        }
    }

    /// The oldest message taken so far, if any.
    pub async fn get(&self) -> Option<Vec<u8>> {
        self.ch
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
            .map(|m| m.delivery.data)
    }

    /// Closes the connection (the queue goes with it).
    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}
