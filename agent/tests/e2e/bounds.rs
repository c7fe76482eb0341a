//! Configured bounds tested at their edges with the real agent and broker: clock skew,
//! message size, request lifetime and requests in flight. Just inside a bound is
//! served; just outside is refused with a reason that names the bound.

use gearmq_schemas::time::now_ms;
use gearmq_schemas::{Name, Request, Status};
use gearmq_testkit::raw::{QUIET, REPLY_TIMEOUT};
use gearmq_testkit::{AgentFiles, AgentWorld};
use std::time::Duration;

/// Sends `req` and returns the status and error of its reply.
async fn answer(w: &mut AgentWorld, req: &Request) -> (Status, String) {
    w.send(req).await;
    let body = w.reply().await;
    assert_eq!(body.request_id, req.id);
    (body.status, body.error.unwrap_or_default())
}

/// Rewrites the world's agent files with `limits` and `edit`, then starts its agent on
/// them again.
fn restart_with(w: &mut AgentWorld, limits: &str, edit: impl FnOnce(String) -> String) {
    w.agent.kill();
    w.files = AgentFiles::write(&w.vhost.url(), &w.pki, &w.host, limits, "");
    w.files.edit_config(edit);
    w.start_agent(&[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_within_the_limit_is_accepted_and_beyond_is_refused_naming_it() {
    let mut w = AgentWorld::builder()
        .limits("clock_skew = \"3s\"")
        .start()
        .await;
    // Requests issued before the agent's replay state began are refused whatever
    // their window: let it be older than the late requests below.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // 1.5 s of margin either side of the 3 s limit: far more than delivery latency.
    let now = now_ms();
    let mut ahead_ok = w.ping();
    ahead_ok.issued_at = now + 1_500;
    ahead_ok.expires_at = now + 60_000;
    assert_eq!(answer(&mut w, &ahead_ok).await.0, Status::Ok);

    let mut ahead_bad = w.ping();
    ahead_bad.issued_at = now_ms() + 4_500;
    ahead_bad.expires_at = ahead_bad.issued_at + 60_000;
    let (status, err) = answer(&mut w, &ahead_bad).await;
    assert_ne!(status, Status::Ok);
    assert!(err.contains("issued in the future"), "{err}");
    assert!(err.contains("allowed clock skew 3s"), "{err}");

    let now = now_ms();
    let mut late_ok = w.ping();
    late_ok.issued_at = now - 1_600;
    late_ok.expires_at = now - 1_500;
    let (status, err) = answer(&mut w, &late_ok).await;
    assert_eq!(status, Status::Ok, "{err}");

    let now = now_ms();
    let mut late_bad = w.ping();
    late_bad.issued_at = now - 4_600;
    late_bad.expires_at = now - 4_500;
    let (status, err) = answer(&mut w, &late_bad).await;
    assert_eq!(status, Status::Expired);
    assert!(err.contains("allowed clock skew 3s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lifetime_at_the_cap_is_accepted_and_one_ms_over_is_refused() {
    let mut w = AgentWorld::builder()
        .limits("max_request_lifetime = \"10s\"")
        .start()
        .await;
    let now = now_ms();
    let mut at_cap = w.ping();
    at_cap.issued_at = now;
    at_cap.expires_at = now + 10_000;
    assert_eq!(answer(&mut w, &at_cap).await.0, Status::Ok);

    let mut over = w.ping();
    over.issued_at = now;
    over.expires_at = now + 10_001;
    let (status, err) = answer(&mut w, &over).await;
    assert_eq!(status, Status::InvalidData);
    assert!(err.contains("limit of 10s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_of_exactly_max_bytes_is_served_and_one_byte_more_is_dead_lettered() {
    let mut w = AgentWorld::start().await;
    // Two requests one byte apart: the extra target name is one character longer.
    let with_filler =
        |w: &AgentWorld, filler: &str| w.ops.ping(&[&w.host.name, &Name::new(filler).unwrap()]);
    let size = w.ops.seal(&with_filler(&w, "f1")).len();

    // The agent again, with the limit set to exactly that size.
    restart_with(&mut w, &format!("max_message_bytes = {size}"), |t| t);
    // Made after the restart (requests older than the agent's state are refused);
    // timestamps and ids have fixed sizes, so the sizes are the same.
    let fits = with_filler(&w, "f1");
    let over = with_filler(&w, "f12");
    assert_eq!(w.ops.seal(&fits).len(), size);
    assert_eq!(w.ops.seal(&over).len(), size + 1);
    assert_eq!(answer(&mut w, &fits).await.0, Status::Ok);

    let bytes = w.ops.seal(&over);
    w.ops.send(&bytes, w.host_name()).await;
    let dead = w
        .ops
        .dead_letter(REPLY_TIMEOUT)
        .await
        .expect("dead-lettered");
    assert_eq!(dead.delivery.data, bytes);
    w.agent.wait_for_log("oversize", REPLY_TIMEOUT);
    assert!(w.ops.next_delivery(QUIET).await.is_none(), "never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_prefetch_requests_are_in_flight_at_the_agent() {
    let mut w = AgentWorld::start().await;
    // prefetch is in [broker]: set it to 2 on a fresh agent.
    restart_with(&mut w, "", |t| {
        t.replace("[broker]\n", "[broker]\nprefetch = 2\n")
    });
    w.assert_ping_ok().await;
    let queue = format!("gearmq.host.{}", w.host.name);
    // The ping's ack may trail its reply: wait for an empty queue before freezing.
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    while w.vhost.queue_counts(&queue) != (0, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ping was never acked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A frozen agent holds what the broker gave it: never more than prefetch.
    w.agent.signal("STOP");
    let reqs: Vec<_> = (0..5).map(|_| w.ping()).collect();
    for r in &reqs {
        w.send(r).await;
    }
    let deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
    let (ready, unacked) = loop {
        let (r, u) = w.vhost.queue_counts(&queue);
        if r + u == 5 && u == 2 || tokio::time::Instant::now() > deadline {
            break (r, u);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    w.agent.signal("CONT");
    assert_eq!(
        (ready, unacked),
        (3, 2),
        "ready and unacked with prefetch 2"
    );
    let mut answered = 0;
    while answered < 5 {
        assert_eq!(w.reply().await.status, Status::Ok);
        answered += 1;
    }
}
