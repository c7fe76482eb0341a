//! Provisioning drift both ways, names a host and an operator may not share, the same
//! provisioning through the management HTTP API, and the nodes' descriptor limit, on
//! the real development broker (127.0.0.1:5672, management on 15672): each test has a
//! vhost of its own and broker users with a random prefix of its own, deleted when it
//! ends.

use gearmq_orchestrator::Orchestrator;
use gearmq_testkit::node::{SHARED_MANAGEMENT, shared_broker_descriptor_limit};
use gearmq_testkit::{BrokerUsers, CliOutput, Fleet, Vhost, rabbitmqctl, run_cli, set_mode};
use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use std::path::Path;

/// A fleet of `hosts` and operator `op` made by `gearmq init`, provisioned on its vhost.
fn provisioned_fleet(tag: &str, hosts: &[&str], op: &str) -> Fleet {
    Fleet::builder(tag, hosts).operator(op).provision().init()
}

fn check(fleet: &Fleet, extra: &[&str]) -> CliOutput {
    let mut args = vec!["broker", "check"];
    args.extend_from_slice(extra);
    fleet.cli(&args)
}

fn drift_lines(out: &CliOutput) -> Vec<&str> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with("drift: "))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_check_passes_on_a_clean_provisioned_vhost() {
    let mut users = BrokerUsers::new();
    let (web1, op) = (users.name("web1"), users.name("ops"));
    let fleet = provisioned_fleet("pvclean", &[&web1], &op);
    let vhost = fleet.vhost.name.clone();

    // The test vhost lets guest (the broker's administrator) in with every right:
    // outside the fleet, so drift unless allowed on purpose.
    let out = check(&fleet, &[]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        drift_lines(&out),
        [format!(
            "drift: extra user guest (tags administrator): not in the fleet, holds \
             permissions on vhost {vhost}: configure '.*' write '.*' read '.*'"
        )],
        "{}",
        out.stdout
    );

    // A running call's reply queue is bound while the check runs: not drift.
    let orch = Orchestrator::connect(&fleet.orchestrator_config())
        .await
        .expect("the provisioned operator connects");
    let reply_queue = orch.reply_queue().to_string();
    let bindings = rabbitmqctl(&[
        "list_bindings",
        "-p",
        &vhost,
        "source_name",
        "destination_name",
    ]);
    assert!(
        bindings.contains(&reply_queue),
        "the reply queue {reply_queue} is bound: {bindings}"
    );
    let out = check(&fleet, &["--allow-user", "guest"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.lines().next().unwrap_or_default(),
        format!(
            "broker matches the plan for vhost {vhost} (also holding permissions there, \
             as allowed: guest)"
        )
    );
    drop(orch);

    // Without guest's rights the vhost holds the fleet and nothing else.
    rabbitmqctl(&["clear_permissions", "-p", &vhost, "guest"]);
    let out = check(&fleet, &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.lines().next().unwrap_or_default(),
        format!("broker matches the plan for vhost {vhost}")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_check_names_every_extra_user_tag_permission_and_binding() {
    let mut users = BrokerUsers::new();
    let (web1, op, spy) = (users.name("web1"), users.name("ops"), users.name("spy"));
    let fleet = provisioned_fleet("pvextra", &[&web1], &op);
    let vhost = fleet.vhost.name.clone();
    let allow_guest = ["--allow-user", "guest"];
    let clean = check(&fleet, &allow_guest);
    assert_eq!(clean.code, 0, "{}{}", clean.stdout, clean.stderr);

    // A user outside the fleet with every right on the vhost and a topic permission,
    // a tag and a topic permission on a fleet host, and a queue tapping every request.
    rabbitmqctl(&["add_user", &spy, "spy-password"]);
    rabbitmqctl(&["set_permissions", "-p", &vhost, &spy, ".*", ".*", ".*"]);
    rabbitmqctl(&[
        "set_topic_permissions",
        "-p",
        &vhost,
        &spy,
        "gearmq.requests",
        ".*",
        ".*",
    ]);
    rabbitmqctl(&["set_user_tags", &web1, "monitoring"]);
    rabbitmqctl(&[
        "set_topic_permissions",
        "-p",
        &vhost,
        &web1,
        "amq.topic",
        ".*",
        ".*",
    ]);
    let conn = fleet.amqp().await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "tap".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "tap".into(),
        "gearmq.requests".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let out = check(&fleet, &allow_guest);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let lines = drift_lines(&out);
    let expected = [
        format!("drift: extra tag monitoring on user {web1} (fleet users have no tags)"),
        format!(
            "drift: extra user {spy}: not in the fleet, holds permissions on vhost {vhost}: \
             configure '.*' write '.*' read '.*'"
        ),
        format!(
            "drift: extra topic permission of {spy} on exchange gearmq.requests, a user not \
             in the fleet: write '.*' read '.*'"
        ),
        format!(
            "drift: extra topic permission of {web1} on exchange amq.topic: write '.*' read '.*'"
        ),
        "drift: extra binding gearmq.requests -> tap (routing key \"#\")".to_string(),
    ];
    for e in &expected {
        assert!(
            lines.contains(&e.as_str()),
            "missing {e:?} in:\n{}",
            out.stdout
        );
    }
    assert_eq!(lines.len(), expected.len(), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("5 differences (0 missing, 5 extra, 0 changed)"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("guest"),
        "guest is allowed: {}",
        out.stdout
    );

    // Provisioning again resets the fleet users' tags but takes no right away from
    // anyone else: those stay drift until removed by hand, then the check passes.
    let again = fleet.cli(&["broker", "provision", "--apply"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    let out = check(&fleet, &allow_guest);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let left: Vec<&str> = expected[1..].iter().map(String::as_str).collect();
    assert_eq!(drift_lines(&out), left, "{}", out.stdout);
    rabbitmqctl(&["delete_user", &spy]);
    rabbitmqctl(&["clear_topic_permissions", "-p", &vhost, &web1, "amq.topic"]);
    ch.queue_delete("tap".into(), Default::default())
        .await
        .unwrap();
    let out = check(&fleet, &allow_guest);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}

fn init_args<'a>(dir: &'a str, hosts: &'a str, op: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "init",
        "--dir",
        dir,
        "--hosts",
        hosts,
        "--operator",
        op,
        "--broker",
        url,
        "--provision",
    ]
}

#[test]
fn init_refuses_a_host_named_like_the_operator() {
    let mut users = BrokerUsers::new();
    let (web1, op) = (users.name("web1"), users.name("ops"));
    let vhost = Vhost::new("pvinit");
    let dir = tempfile::tempdir().unwrap();
    let fleet_dir = dir.path().join("fleet");
    let fleet_arg = fleet_dir.to_string_lossy().into_owned();
    let hosts = format!("{web1},{op}");
    let url = vhost.url();
    let out = run_cli(&init_args(&fleet_arg, &hosts, &op, &url));
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains(&format!("host {op} and operator {op} share a name")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--operator"),
        "names the fix: {}",
        out.stderr
    );
    assert!(!fleet_dir.exists(), "nothing written");
    assert_eq!(
        users.any_on_broker(),
        Vec::<String>::new(),
        "nothing provisioned"
    );

    // The same fleet with another operator name is fine.
    let other = users.name("admin");
    let out = run_cli(&init_args(&fleet_arg, &hosts, &other, &url));
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// `gearmq [--config CONFIG] enroll ROLE NAME` with a new key, into `out`.
fn enroll(fleet: &Fleet, config: &Path, role: &str, name: &str, out: &Path) -> CliOutput {
    let key = fleet.path().join(format!("{role}-{name}.key"));
    let made = run_cli(&["keygen", "--out", key.to_str().unwrap()]);
    assert_eq!(made.code, 0, "{}", made.stderr);
    run_cli(&[
        "--config",
        config.to_str().unwrap(),
        "enroll",
        role,
        name,
        "--pubkey",
        key.with_extension("pub").to_str().unwrap(),
        "--issuer-key",
        fleet.path().join("issuer.key").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

#[test]
fn enroll_refuses_a_host_named_like_the_operator_and_the_reverse() {
    let fleet = Fleet::init("pvenroll", &["pv-web1"]);
    let config = fleet.orchestrator_toml();
    let out_file = fleet.path().join("new.cred");

    let host = enroll(&fleet, &config, "host", "ops", &out_file);
    assert_eq!(host.code, 2, "{}{}", host.stdout, host.stderr);
    assert!(
        host.stderr
            .contains("host ops and operator ops share a name"),
        "{}",
        host.stderr
    );
    assert!(
        host.stderr
            .contains(&format!("`name` in {}", config.display())),
        "names the fix: {}",
        host.stderr
    );
    assert!(!out_file.exists(), "no credential written");

    let op = enroll(&fleet, &config, "operator", "pv-web1", &out_file);
    assert_eq!(op.code, 2, "{}{}", op.stdout, op.stderr);
    assert!(
        op.stderr
            .contains("host pv-web1 and operator pv-web1 share a name"),
        "{}",
        op.stderr
    );
    assert!(
        op.stderr.contains(
            &fleet
                .host_dir("pv-web1")
                .join("host.cred")
                .display()
                .to_string()
        ),
        "names the host's credential: {}",
        op.stderr
    );
    assert!(!out_file.exists(), "no credential written");

    // Names of their own are enrolled.
    let ok = enroll(&fleet, &config, "host", "pv-web2", &out_file);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    let ok = enroll(
        &fleet,
        &config,
        "operator",
        "pv-admin",
        &fleet.path().join("a.cred"),
    );
    assert_eq!(ok.code, 0, "{}", ok.stderr);
}

#[test]
fn provision_refuses_a_host_named_like_an_operator() {
    let mut users = BrokerUsers::new();
    let (web1, op) = (users.name("web1"), users.name("ops"));
    let fleet = provisioned_fleet("pvprov", &[&web1], &op);
    let vhost = fleet.vhost.name.clone();
    let permissions_before = rabbitmqctl(&["list_permissions", "-p", &vhost]);

    // A further operator named like the host.
    let out = fleet.cli(&["broker", "provision", "--apply", "--operator", &web1]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains(&format!("host {web1} and operator {web1} share a name")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("--operator"),
        "names the fix: {}",
        out.stderr
    );

    // A host credential named like the operator, issued where enroll could not see
    // the fleet's config, put into the inventory by hand.
    let cred = fleet.host_dir(&op).join("host.cred");
    std::fs::create_dir_all(cred.parent().unwrap()).unwrap();
    let enrolled = enroll(
        &fleet,
        Path::new("/nonexistent/orchestrator.toml"),
        "host",
        &op,
        &cred,
    );
    assert_eq!(enrolled.code, 0, "{}", enrolled.stderr);
    assert!(
        enrolled.stderr.contains("not checked"),
        "{}",
        enrolled.stderr
    );
    for args in [
        &["broker", "provision", "--apply"][..],
        &["broker", "provision"][..],
        &["broker", "check"][..],
    ] {
        let out = fleet.cli(args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(
            out.stderr
                .contains(&format!("host {op} and operator {op} share a name")),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            out.stderr
                .contains(&fleet.host_dir(&op).display().to_string()),
            "{args:?} names the host to remove: {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{args:?} printed no definitions");
    }
    assert_eq!(
        rabbitmqctl(&["list_permissions", "-p", &vhost]),
        permissions_before,
        "the broker is untouched"
    );
}

// ---------------------------------------------------------------------------------
// The management HTTP API: the same plan, report and exit codes as rabbitmqctl.

/// `http://guest@127.0.0.1:15672` with guest's password in a 0600 file of the fleet's.
fn management_args(fleet: &Fleet) -> Vec<String> {
    let file = fleet.path().join("management.password");
    std::fs::write(&file, "guest\n").unwrap();
    set_mode(&file, 0o600);
    let url = SHARED_MANAGEMENT.replace("http://", "http://guest@");
    vec![
        "--management".into(),
        url,
        "--management-password-file".into(),
        file.display().to_string(),
    ]
}

/// `gearmq --config … broker <args>` through rabbitmqctl and through the management
/// API: both outputs.
fn both_ways(fleet: &Fleet, args: &[&str]) -> (CliOutput, CliOutput) {
    let mut all = vec!["broker"];
    all.extend_from_slice(args);
    let by_ctl = fleet.cli(&all);
    let extra = management_args(fleet);
    all.extend(extra.iter().map(String::as_str));
    let by_api = fleet.cli(&all);
    (by_ctl, by_api)
}

/// Asserts the two ways printed the same report and exited alike; returns the report.
fn same_report(what: &str, (ctl, api): &(CliOutput, CliOutput)) -> String {
    assert_eq!(
        (ctl.code, &ctl.stdout),
        (api.code, &api.stdout),
        "{what}: rabbitmqctl and the management API differ\nrabbitmqctl stderr: {}\n\
         management stderr: {}",
        ctl.stderr,
        api.stderr
    );
    ctl.stdout.clone()
}

/// What rabbitmqctl exports of `vhost` and of `users`: the broker state provisioning
/// makes, in one comparable document (lists sorted).
fn exported(vhost: &str, users: &[&str]) -> serde_json::Value {
    let all = gearmq_testkit::export_definitions(&|args| gearmq_testkit::try_rabbitmqctl(args));
    let mut out = serde_json::Map::new();
    for key in [
        "users",
        "permissions",
        "topic_permissions",
        "exchanges",
        "queues",
        "bindings",
        "policies",
    ] {
        let mut rows: Vec<serde_json::Value> = all[key]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| match key {
                "users" => users.contains(&r["name"].as_str().unwrap_or_default()),
                _ => r["vhost"] == vhost,
            })
            .collect();
        rows.sort_by_key(|r| r.to_string());
        out.insert(key.into(), rows.into());
    }
    out.into()
}

#[test]
fn provision_check_and_deprovision_through_the_management_api_match_rabbitmqctl() {
    let mut users = BrokerUsers::new();
    let (web1, web2, op) = (users.name("web1"), users.name("web2"), users.name("ops"));
    // Not provisioned by init: the vhost starts empty but for guest's rights.
    let fleet = Fleet::builder("pvmgmt", &[&web1, &web2])
        .operator(&op)
        .init();
    let vhost = fleet.vhost.name.clone();
    let allow_guest = ["check", "--allow-user", "guest"];

    let before = same_report(
        "check before provisioning",
        &both_ways(&fleet, &allow_guest),
    );
    assert!(
        before.contains(&format!("drift: missing user {web1}")),
        "{before}"
    );

    let mut provision = vec!["broker", "provision", "--apply"];
    let mgmt = management_args(&fleet);
    provision.extend(mgmt.iter().map(String::as_str));
    let out = fleet.cli(&provision);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.trim(),
        format!("provisioned vhost {vhost}: 2 hosts, 1 operators, 0 delegators")
    );
    assert!(!out.stderr.contains("guest\n") && !out.stdout.contains(":guest@"));

    let after = same_report("check after provisioning", &both_ways(&fleet, &allow_guest));
    assert_eq!(
        after.lines().next(),
        Some(
            format!(
                "broker matches the plan for vhost {vhost} (also holding permissions there, \
                 as allowed: guest)"
            )
            .as_str()
        ),
        "{after}"
    );

    // What the management API made is what rabbitmqctl makes: importing the same plan
    // through rabbitmqctl over it changes nothing at all.
    let fleet_users = [web1.as_str(), web2.as_str(), op.as_str()];
    let by_api = exported(&vhost, &fleet_users);
    assert_eq!(
        by_api["users"].as_array().map(Vec::len),
        Some(3),
        "{by_api:#}"
    );
    // gearmq.dead, the two host queues, gearmq.enroll.requests and the gearmq.events
    // stream.
    assert_eq!(
        by_api["queues"].as_array().map(Vec::len),
        Some(5),
        "{by_api:#}"
    );
    let out = fleet.cli(&["broker", "provision", "--apply"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(exported(&vhost, &fleet_users), by_api);

    // A host leaves through the management API.
    let mut deprovision = vec!["broker", "deprovision", web2.as_str()];
    deprovision.extend(mgmt.iter().map(String::as_str));
    let out = fleet.cli(&deprovision);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.trim(),
        format!("deprovisioned {web2} (queue gearmq.host.{web2}, broker user {web2})")
    );
    assert!(
        !rabbitmqctl(&["list_users"]).contains(&web2),
        "the broker user is gone"
    );
    assert!(
        !rabbitmqctl(&["list_queues", "-p", &vhost, "name"])
            .contains(&format!("gearmq.host.{web2}")),
        "the queue is gone"
    );
    // Both ways see it gone, alike (the credential is still in the inventory).
    let gone = same_report(
        "check after deprovisioning",
        &both_ways(&fleet, &allow_guest),
    );
    assert!(
        gone.contains(&format!("drift: missing user {web2}")),
        "{gone}"
    );
    assert!(
        gone.contains(&format!("drift: missing queue gearmq.host.{web2}")),
        "{gone}"
    );
    // Deprovisioning again finds nothing, and says so, both ways.
    let again = same_report(
        "deprovision again",
        &both_ways(&fleet, &["deprovision", web2.as_str()]),
    );
    assert_eq!(
        again.trim(),
        format!(
            "deprovisioned {web2} (queue gearmq.host.{web2} (there was none), broker user \
             {web2} (there was none))"
        )
    );
}

#[test]
fn a_wrong_management_password_is_refused_by_name_and_never_shown() {
    let mut users = BrokerUsers::new();
    let (web1, op) = (users.name("web1"), users.name("ops"));
    let fleet = Fleet::builder("pvbadpw", &[&web1]).operator(&op).init();
    let wrong_url = SHARED_MANAGEMENT.replace("http://", "http://guest:Not-The-Pw1@");
    let shown = SHARED_MANAGEMENT.replace("http://", "http://guest@");
    let refused = format!("the management API {shown} refused the login of user guest (HTTP 401)");
    for args in [
        &["broker", "check", "--management", &wrong_url][..],
        &["broker", "provision", "--apply", "--management", &wrong_url][..],
        &["broker", "deprovision", &web1, "--management", &wrong_url][..],
    ] {
        let out = fleet.cli(args);
        assert_eq!(out.code, 2, "{args:?}: {}{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(&refused), "{args:?}: {}", out.stderr);
        assert!(
            !out.stderr.contains("Not-The-Pw1") && !out.stdout.contains("Not-The-Pw1"),
            "{args:?} shows the password: {}{}",
            out.stdout,
            out.stderr
        );
    }
    assert_eq!(
        users.any_on_broker(),
        Vec::<String>::new(),
        "nothing provisioned"
    );

    // The same wrong password from the environment; no password at all names the ways
    // to give one.
    let cfg = fleet.orchestrator_toml();
    let cfg = cfg.to_str().unwrap();
    let out = gearmq_testkit::run_cli_env(
        &["--config", cfg, "broker", "check", "--management", &shown],
        &[("GEARMQ_MANAGEMENT_PASSWORD", "Not-The-Pw1")],
    );
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&refused), "{}", out.stderr);
    assert!(!out.stderr.contains("Not-The-Pw1"), "{}", out.stderr);
    let out = fleet.cli(&["broker", "check", "--management", &shown]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("no password for management user guest")
            && out.stderr.contains("--management-password-file"),
        "{}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------
// The nodes' descriptor limit against the fleet's need.

/// The `descriptors:` lines of a check.
fn descriptor_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.starts_with("descriptors: "))
        .collect()
}

#[test]
fn broker_check_reports_the_nodes_descriptor_limit_both_ways() {
    let mut users = BrokerUsers::new();
    let (web1, op) = (users.name("web1"), users.name("ops"));
    let fleet = provisioned_fleet("pvfd", &[&web1], &op);
    let (node, limit) = shared_broker_descriptor_limit();

    let report = same_report(
        "check",
        &both_ways(&fleet, &["check", "--allow-user", "guest"]),
    );
    // One host: its queue and gearmq.dead; the agent's and the operator's connections.
    assert_eq!(
        descriptor_lines(&report),
        [format!(
            "descriptors: node {node} allows {limit} open files; the fleet needs 262 \
             (2 x 2 durable queues + 1 x 2 connections + 256)"
        )],
        "{report}"
    );
}

#[test]
fn broker_check_fails_naming_the_fix_when_the_limit_is_too_low_for_the_fleet() {
    let mut users = BrokerUsers::new();
    let (web1, op) = (users.name("web1"), users.name("ops"));
    let fleet = provisioned_fleet("pvfdlow", &[&web1], &op);
    // The real limit of the running node, read from the OS: the largest fleet it takes
    // by the rule (2 per durable queue + 1 per connection + 256, one operator) passes,
    // one host more fails.
    let (node, limit) = shared_broker_descriptor_limit();
    let fits = (limit - 259) / 3;
    let size = fits.to_string();
    let ok = same_report(
        "check at the largest fleet that fits",
        &both_ways(
            &fleet,
            &["check", "--allow-user", "guest", "--fleet-size", &size],
        ),
    );
    assert!(ok.starts_with("broker matches"), "{ok}");

    let size = (fits + 1).to_string();
    let both = both_ways(
        &fleet,
        &["check", "--allow-user", "guest", "--fleet-size", &size],
    );
    assert_eq!(both.0.code, 1, "{}{}", both.0.stdout, both.0.stderr);
    let low = same_report("check one host past it", &both);
    let needed = 2 * (fits + 2) + (fits + 2) + 256;
    assert!(needed > limit);
    let lines = descriptor_lines(&low);
    assert_eq!(lines.len(), 1, "{low}");
    assert!(
        lines[0].starts_with(&format!(
            "descriptors: node {node} allows {limit} open files; the fleet needs {needed} \
             (2 x {} durable queues + 1 x {} connections + 256): too low",
            fits + 2,
            fits + 2
        )),
        "{low}"
    );
    assert!(
        lines[0].contains(&format!("`ulimit -n {needed}`"))
            && lines[0].contains(&format!("LimitNOFILE={needed}")),
        "names the fix: {low}"
    );
    assert!(low.starts_with("broker matches"), "no drift: {low}");
}
