//! Whether `MemoryMax=`/`CPUQuota=` are enforced: only with cgroup v2 and the memory
//! and cpu controllers available in the manager's control group. A user manager on
//! cgroup v1 (as on the test machines) accepts the settings but enforces nothing, and
//! the agent says so rather than pretend.

use std::path::Path;

/// Where cgroup v2 (the unified hierarchy) is mounted on a pure-v2 host.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Whether units of a manager whose control group is `manager_cgroup` (e.g.
/// `/user.slice/user-1000.slice/user@1000.service`, `""` or `/` for the root) get
/// memory and cpu limits enforced, judged from the cgroup filesystem at `root`.
pub fn limits_enforced(root: &Path, manager_cgroup: &str) -> bool {
    // cgroup.controllers exists only in a v2 hierarchy; on v1 or hybrid hosts the
    // memory and cpu controllers are not where systemd's v2 limits go.
    if !root.join("cgroup.controllers").is_file() {
        return false;
    }
    let rel = manager_cgroup.trim_start_matches('/');
    let file = if rel.is_empty() {
        root.join("cgroup.controllers")
    } else {
        root.join(rel).join("cgroup.controllers")
    };
    match std::fs::read_to_string(file) {
        Ok(text) => {
            let mut words = text.split_whitespace();
            let has = |c: &str| text.split_whitespace().any(|w| w == c);
            words.next().is_some() && has("memory") && has("cpu")
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_v2_and_both_controllers_in_the_managers_group() {
        let d = tempfile::tempdir().unwrap();
        // v1: no cgroup.controllers at the root.
        assert!(!limits_enforced(d.path(), ""));
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        assert!(limits_enforced(d.path(), ""));
        assert!(limits_enforced(d.path(), "/"));
        let user = d.path().join("user.slice/user@1000.service");
        std::fs::create_dir_all(&user).unwrap();
        // A user manager without delegation gets no memory controller.
        std::fs::write(user.join("cgroup.controllers"), "pids\n").unwrap();
        assert!(!limits_enforced(d.path(), "/user.slice/user@1000.service"));
        std::fs::write(user.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert!(limits_enforced(d.path(), "/user.slice/user@1000.service"));
        assert!(!limits_enforced(d.path(), "/missing.slice"));
    }
}
