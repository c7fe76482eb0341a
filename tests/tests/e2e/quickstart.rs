//! The newcomer's first command, `deploy/quickstart.sh`: run here with the binaries this
//! build made (GEARMQ_QUICKSTART_BIN), and its release build line checked to build
//! every binary the script then runs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

#[test]
fn the_quickstart_makes_a_fleet_and_pings_its_three_hosts() {
    let script = workspace().join("deploy/quickstart.sh");
    let bins = gearmq_testkit::bin("gearmq");
    let out = Command::new("bash")
        .arg(&script)
        .env("GEARMQ_QUICKSTART_BIN", bins.parent().expect("bin dir"))
        .output()
        .expect("bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("3/3 ok"), "{stdout}");
}

#[test]
fn the_quickstart_builds_every_binary_it_runs() {
    let text = std::fs::read_to_string(workspace().join("deploy/quickstart.sh")).unwrap();
    let build = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo build --release"))
        .expect("a release build line");
    let words: Vec<&str> = build.split_whitespace().collect();
    let packages: Vec<&str> = words
        .windows(2)
        .filter(|w| w[0] == "-p")
        .map(|w| w[1])
        .collect();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let meta = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo metadata");
    assert!(
        meta.status.success(),
        "{}",
        String::from_utf8_lossy(&meta.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&meta.stdout).unwrap();
    let built: Vec<String> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| packages.contains(&p["name"].as_str().unwrap_or_default()))
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(String::from))
        .collect();
    // What the script runs from $BIN.
    for bin in ["gearmq", "gearmq-agent"] {
        assert!(
            text.contains(&format!("\"$BIN/{bin}\"")),
            "the script no longer runs {bin}"
        );
        assert!(
            built.iter().any(|b| b == bin),
            "`{build}` does not build {bin} (packages {packages:?} make {built:?})"
        );
    }
}
