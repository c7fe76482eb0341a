//! `--json` prints one document of the documented shape for every call command, and
//! duplicates of accepted replies are counted apart from security rejections.

use gearmq_testkit::{Fleet, UserSystemd, write_program};
use serde_json::Value;

/// Checks the documented call document:
/// `{"request_id","action","results":[{"host","status","code","message","data",
/// "elapsed_ms"}],"summary":{"targets","ok","failed","no_reply","rejected","duplicates",
/// "elapsed_ms"},"batches":[{"request_id","hosts"}]}`.
fn assert_call_shape(doc: &Value, action: &str) {
    assert!(
        doc["request_id"].as_str().is_some_and(|s| s.len() == 36),
        "{doc}"
    );
    assert_eq!(doc["action"], action, "{doc}");
    let results = doc["results"].as_array().expect("results");
    assert!(!results.is_empty());
    for r in results {
        assert!(r["host"].is_string(), "{r}");
        assert!(
            ["ok", "error", "no_reply"].contains(&r["status"].as_str().unwrap_or("")),
            "{r}"
        );
        for k in ["code", "message", "data", "elapsed_ms"] {
            assert!(r.get(k).is_some(), "result lacks {k}: {r}");
        }
    }
    let s = &doc["summary"];
    for k in ["targets", "ok", "failed", "no_reply", "duplicates"] {
        assert!(s[k].is_u64(), "summary.{k}: {doc}");
    }
    assert!(s["rejected"].is_object(), "{doc}");
    assert!(s["elapsed_ms"].is_number(), "{doc}");
    let batches = doc["batches"].as_array().expect("batches");
    assert!(batches[0]["request_id"].is_string() && batches[0]["hosts"].is_array());
}

#[test]
fn every_call_command_prints_one_documented_json_document() {
    let fleet = Fleet::init("json", &["a"]);
    let sd = UserSystemd::start();
    let _agent = fleet.start_agent_on("a", &sd);
    let work = tempfile::tempdir().unwrap();
    let prog = write_program(work.path(), "p.sh", "echo up\nexec sleep 600");
    let exec = prog.to_str().unwrap();
    let t = ["--json", "--timeout", "30s"];
    let runs: Vec<(&str, Vec<&str>)> = vec![
        ("ping", vec!["ping", "--all"]),
        ("install", vec!["install", "a", "svc", "--exec", exec]),
        ("start", vec!["start", "a", "svc"]),
        ("restart", vec!["restart", "a", "svc"]),
        ("status", vec!["status", "a", "svc"]),
        ("status", vec!["status", "a"]),
        ("list", vec!["list", "--all"]),
        ("logs", vec!["logs", "a", "svc", "--lines", "5"]),
        ("facts", vec!["facts", "--host", "a"]),
        ("stop", vec!["stop", "a", "svc"]),
        ("delete", vec!["delete", "a", "svc"]),
    ];
    for (action, mut args) in runs {
        args.extend_from_slice(&t);
        let out = fleet.cli(&args);
        assert_eq!(out.code, 0, "{args:?}: {}\n{}", out.stdout, out.stderr);
        // logs prints its lines as JSON lines first; the call document is the last line.
        let last = out.stdout.lines().last().unwrap_or_default();
        let doc: Value = serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", out.stdout));
        assert_call_shape(&doc, action);
        if action != "logs" {
            assert_eq!(out.stdout.lines().count(), 1, "{args:?}: one document");
        }
    }
    // Not-ok results keep the shape too: an unknown unit.
    let out = fleet.cli(&["start", "a", "nosuch", "--json", "--timeout", "30s"]);
    assert_eq!(out.code, 1);
    let doc = out.json();
    assert_call_shape(&doc, "start");
    assert_eq!(doc["results"][0]["status"], "error");
    assert_eq!(doc["results"][0]["code"], 7, "{doc}");
}
