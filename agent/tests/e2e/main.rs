//! The real `gearmq-agent` binary end to end, the test playing the issuer and the
//! orchestrator: the real RabbitMQ on 127.0.0.1:5672 (a vhost of its own per test)
//! and, for units, a real `systemd --user` per test. One test binary, a module per
//! area; the fixtures are gearmq-testkit's.

mod agent;
mod bounds;
mod existing;
mod hardening;
mod journal;
mod metrics;
mod trust;
mod unit_watch;
mod units;

/// A reply's typed data; panics (showing the error) unless it is ok.
pub fn data<T: serde::Serialize + serde::de::DeserializeOwned>(r: &gearmq_schemas::Reply) -> T {
    assert_eq!(r.status, gearmq_schemas::Status::Ok, "{:?}", r.error);
    gearmq_schemas::codec::decode("data", r.data.as_ref().expect("data"), 1 << 20)
        .expect("typed data")
}
