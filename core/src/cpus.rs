//! How many workers this process should run by default: as many as the CPUs it may use, which in a
//! container is less than the machine has.
//!
//! Two limits apply, and the smaller wins: the CPUs it may run on (its affinity: `taskset`, cgroup CPU
//! sets) and the CPU time its cgroup may use per period (a CFS quota: Kubernetes' `limits.cpu`, Docker's
//! `--cpus`). A quota is rounded *up* — 1.5 CPUs gives 2 workers, which together use the 1.5 — where
//! `std::thread::available_parallelism` rounds it down (1 worker would leave half a CPU unused). Counting
//! CPUs without the quota (`nproc`) is what oversubscribes pods and gets them throttled or OOM-killed
//! (gunicorn#2028, puma#3437).
//!
//! The quota is read from this process's own cgroup (`/proc/self/cgroup`) and every cgroup above it (a
//! parent's quota limits its children too), in the hierarchy that has the `cpu` controller: cgroup v2's
//! `cpu.max`, or v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us` — a machine may mount v1 controllers beside
//! a v2 hierarchy that lacks the cpu controller, so both are looked at (`/proc/self/mountinfo` says where
//! each is mounted).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The default worker count and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkerBudget {
    /// min(CPUs in the affinity mask, ceil(cgroup CPU quota)), at least 1.
    pub(crate) workers: usize,
    /// Why, for the start log: `cgroup CPU quota 1.5`, `CPU affinity: 1 of 2 CPUs`, `2 CPUs`.
    pub(crate) why: String,
}

/// What this process may use now (read afresh on every call).
pub(crate) fn worker_budget() -> WorkerBudget {
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let affinity = affinity().unwrap_or(online);
    let quota = cgroup_quota(
        Path::new("/proc/self/cgroup"),
        Path::new("/proc/self/mountinfo"),
    );
    budget(affinity, machine_cpus(), quota)
}

/// For the start log: why `n` workers — `cgroup CPU quota 1.5` when `n` is what this process may use
/// (the default), else what the default would have been (`auto would give 2: cgroup CPU quota 1.5`).
pub(crate) fn why_this_many(n: usize) -> String {
    let b = worker_budget();
    if n == b.workers {
        b.why
    } else {
        format!("auto would give {}: {}", b.workers, b.why)
    }
}

/// The decision, apart from reading the kernel's files (so it can be tested).
fn budget(affinity: usize, machine: Option<usize>, quota: Option<f64>) -> WorkerBudget {
    let affinity = affinity.max(1);
    match quota {
        // On a tie the quota is named: it is the limit a container's user set.
        Some(q) if (q.ceil() as usize) <= affinity => WorkerBudget {
            workers: (q.ceil() as usize).max(1),
            why: format!("cgroup CPU quota {}", round(q)),
        },
        _ => {
            let why = match machine {
                Some(m) if m > affinity => format!("CPU affinity: {affinity} of {m} CPUs"),
                _ if affinity == 1 => "1 CPU".to_string(),
                _ => format!("{affinity} CPUs"),
            };
            WorkerBudget {
                workers: affinity,
                why,
            }
        }
    }
}

/// `1.5`, `0.25`, `2` (at most three decimals; no trailing zeros).
fn round(q: f64) -> String {
    let s = format!("{q:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The CPUs this process may run on (`sched_getaffinity`).
fn affinity() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        usize::try_from(libc::CPU_COUNT(&set))
            .ok()
            .filter(|&n| n > 0)
    }
}

/// The CPUs the machine has online, to say "1 of 2" when the affinity is narrower.
fn machine_cpus() -> Option<usize> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// The smallest CPU quota (in CPUs) on this process's cgroup or any above it, in either hierarchy; `None`
/// when there is none (or nothing can be read).
fn cgroup_quota(cgroup: &Path, mountinfo: &Path) -> Option<f64> {
    let cgroups = std::fs::read_to_string(cgroup).ok()?;
    let mounts = std::fs::read_to_string(mountinfo).ok()?;
    let mut least: Option<f64> = None;
    for ((mount, dir), v2) in cpu_cgroup_dirs(&cgroups, &mounts) {
        if let Some(q) = quota_up_from(&mount, &dir, v2) {
            least = Some(least.map_or(q, |l| l.min(q)));
        }
    }
    least
}

/// Each hierarchy with the cpu controller (v1), or the v2 one: (mount point, this process's cgroup
/// directory under it) and whether it is v2.
fn cpu_cgroup_dirs(cgroups: &str, mounts: &str) -> Vec<((PathBuf, PathBuf), bool)> {
    let mut out = Vec::new();
    for line in cgroups.lines() {
        // `hierarchy-id:controllers:path`; v2 is `0::path`.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let v2 = id == "0" && controllers.is_empty();
        if !v2 && !controllers.split(',').any(|c| c == "cpu") {
            continue;
        }
        if let Some((mount, root)) = mount_of(mounts, v2) {
            // The mount shows the hierarchy from `root` down (a cgroup namespace's root is `/`).
            let rel = Path::new(path).strip_prefix(&root).unwrap_or(Path::new(""));
            out.push(((mount.clone(), mount.join(rel)), v2));
        }
    }
    out
}

/// The mount point and root of the v2 hierarchy, or of the v1 one with the cpu controller.
fn mount_of(mounts: &str, v2: bool) -> Option<(PathBuf, PathBuf)> {
    mounts.lines().find_map(|line| {
        // `id parent major:minor root mountpoint options [optional...] - fstype source superoptions`
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (fstype, options) = (*right.first()?, *right.get(2)?);
        let wanted = if v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && options.split(',').any(|o| o == "cpu")
        };
        if !wanted {
            return None;
        }
        Some((unescape(fields.get(4)?), unescape(fields.get(3)?)))
    })
}

/// mountinfo writes a space, tab, newline or backslash in a path as an octal escape (`\040`).
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            let d = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(d, 8).ok()
        });
        match (b[i], octal) {
            (b'\\', Some(n)) => {
                out.push(n);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

/// The smallest quota from `dir` up to `mount` (inclusive).
fn quota_up_from(mount: &Path, dir: &Path, v2: bool) -> Option<f64> {
    let mut least: Option<f64> = None;
    let mut at = Some(dir);
    while let Some(d) = at {
        let q = if v2 { quota_v2(d) } else { quota_v1(d) };
        if let Some(q) = q {
            least = Some(least.map_or(q, |l| l.min(q)));
        }
        if d == mount {
            break;
        }
        at = d.parent().filter(|p| p.starts_with(mount));
    }
    least
}

/// cgroup v2 `cpu.max`: `max 100000` (no limit) or `150000 100000` (1.5 CPUs).
fn quota_v2(dir: &Path) -> Option<f64> {
    parse_cpu_max(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)
}

fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut words = text.split_whitespace();
    let quota: f64 = words.next()?.parse().ok()?; // "max" does not parse: no limit
    let period: f64 = words.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// cgroup v1 `cpu.cfs_quota_us` (-1: no limit) over `cpu.cfs_period_us`.
fn quota_v1(dir: &Path) -> Option<f64> {
    let read = |name: &str| -> Option<f64> {
        std::fs::read_to_string(dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let (quota, period) = (read("cpu.cfs_quota_us")?, read("cpu.cfs_period_us")?);
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_is_rounded_up_and_the_smaller_limit_wins() {
        let b = budget(2, Some(2), Some(1.5));
        assert_eq!((b.workers, b.why.as_str()), (2, "cgroup CPU quota 1.5"));
        let b = budget(2, Some(2), Some(3.0));
        assert_eq!((b.workers, b.why.as_str()), (2, "2 CPUs"));
        let b = budget(4, Some(4), Some(1.5));
        assert_eq!((b.workers, b.why.as_str()), (2, "cgroup CPU quota 1.5"));
        let b = budget(2, Some(2), Some(0.5));
        assert_eq!((b.workers, b.why.as_str()), (1, "cgroup CPU quota 0.5"));
        let b = budget(1, Some(2), Some(1.5));
        assert_eq!(
            (b.workers, b.why.as_str()),
            (1, "CPU affinity: 1 of 2 CPUs")
        );
        let b = budget(8, Some(8), None);
        assert_eq!((b.workers, b.why.as_str()), (8, "8 CPUs"));
        assert_eq!(budget(0, None, Some(0.001)).workers, 1, "never below 1");
    }

    #[test]
    fn cpu_max_parses() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
        assert_eq!(parse_cpu_max(""), None);
    }

    /// A v1 cpu hierarchy beside a v2 one without the cpu controller (as on this project's CI machine),
    /// and a container whose cgroup namespace shows its own cgroup as `/`.
    #[test]
    fn each_hierarchy_with_the_cpu_controller_is_found() {
        let cgroups = "4:memory:/a\n1:cpu:/pod/ctr\n2:cpuacct:/\n0::/\n";
        let mounts = "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                      33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let dirs = cpu_cgroup_dirs(cgroups, mounts);
        assert_eq!(
            dirs,
            [
                (
                    (
                        PathBuf::from("/sys/fs/cgroup/cpu"),
                        PathBuf::from("/sys/fs/cgroup/cpu/pod/ctr")
                    ),
                    false
                ),
                (
                    (
                        PathBuf::from("/sys/fs/cgroup/unified"),
                        PathBuf::from("/sys/fs/cgroup/unified")
                    ),
                    true
                ),
            ]
        );
        // A bind-mounted subtree: the mount's root is the pod's cgroup.
        let mounts = "50 40 0:29 /pod /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let dirs = cpu_cgroup_dirs("0::/pod/ctr\n", mounts);
        assert_eq!(dirs[0].0 .1, PathBuf::from("/sys/fs/cgroup/ctr"));
        assert_eq!(unescape("/a\\040b"), PathBuf::from("/a b"));
    }

    #[test]
    fn a_parents_quota_limits_its_children() {
        let root = std::env::temp_dir().join(format!("ps-cpus-{}", std::process::id()));
        let child = root.join("pod").join("ctr");
        std::fs::create_dir_all(&child).unwrap();
        std::fs::write(root.join("pod").join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(child.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(quota_up_from(&root, &child, true), Some(0.5));
        std::fs::write(child.join("cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(child.join("cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(quota_up_from(&child, &child, false), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
