//! Where running servers are listed: one socket per server instance in a private directory, named
//! `<ip>_<port>.<pid>.<n>.sock` (`n` counts the servers this process started, so two servers on one
//! address in one process never share a path).
//!
//! The directory is trusted only when this user owns it, nobody else may enter it, and it is not a
//! symbolic link; servers and clients check the same things, and neither ever "repairs" a directory it
//! did not create.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};
use crate::log::log;

/// Where control sockets live: `$PORT_SHARDING_CONTROL_DIR`, else `$XDG_RUNTIME_DIR/port-sharding`, else
/// `/tmp/port-sharding-<uid>`.
pub fn control_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PORT_SHARDING_CONTROL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_dir()) {
        return Path::new(&run).join("port-sharding");
    }
    PathBuf::from(format!("/tmp/port-sharding-{}", nix::unistd::geteuid()))
}

/// A fresh socket name for a server instance of this process.
pub(crate) fn socket_name(addr: SocketAddr) -> String {
    static INSTANCES: AtomicU64 = AtomicU64::new(0);
    let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
    format_name(addr, std::process::id(), n)
}

fn format_name(addr: SocketAddr, pid: u32, n: u64) -> String {
    format!("{}_{}.{pid}.{n}.sock", addr.ip(), addr.port())
}

/// Parses `<ip>_<port>.<pid>.<n>.sock` (and `<ip>_<port>.<pid>.sock` of earlier versions, so a new
/// version can take over from an old one) into the address, pid and instance number.
pub(crate) fn parse_name(name: &str) -> Option<(SocketAddr, u32, u64)> {
    let stem = name.strip_suffix(".sock")?;
    let split = |rest: &str, pid: &str, n: u64| {
        let (ip, port) = rest.rsplit_once('_')?;
        Some((
            SocketAddr::new(ip.parse().ok()?, port.parse().ok()?),
            pid.parse().ok()?,
            n,
        ))
    };
    let (rest, last) = stem.rsplit_once('.')?;
    let current = rest
        .rsplit_once('.')
        .and_then(|(rest, pid)| split(rest, pid, last.parse().ok()?));
    current.or_else(|| split(rest, last, 0))
}

fn refuse(dir: &Path, why: String) -> Error {
    Error::Control(format!(
        "refusing control directory {}: {why} (fix it, or set PORT_SHARDING_CONTROL_DIR to a directory \
         only this user can enter)",
        dir.display()
    ))
}

/// `open(dir, O_DIRECTORY | O_NOFOLLOW)`: a symlink in the last component fails with `ELOOP`.
fn open_nofollow(dir: &Path) -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid C string; the returned fd is owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned this fd to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `dir` without following a symlink and checks owner and mode; `Ok(None)` when it does not exist.
fn open_checked(dir: &Path) -> Result<Option<OwnedFd>> {
    let fd = match open_nofollow(dir) {
        Ok(fd) => fd,
        Err(e) => {
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                // With O_DIRECTORY a symlink may fail with ENOTDIR rather than ELOOP: lstat tells which.
                Some(libc::ELOOP | libc::ENOTDIR) => {
                    let link = std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_symlink());
                    let why = if link {
                        "it is a symbolic link"
                    } else {
                        "it is not a directory"
                    };
                    Err(refuse(dir, why.to_string()))
                }
                _ => Err(Error::io(format!("control directory {}", dir.display()), e)),
            };
        }
    };
    let st = nix::sys::stat::fstat(&fd)
        .map_err(|e| Error::io(format!("control directory {}", dir.display()), e.into()))?;
    let me = nix::unistd::geteuid().as_raw();
    if st.st_uid != me {
        return Err(refuse(
            dir,
            format!(
                "it belongs to uid {}, not to this user (uid {me})",
                st.st_uid
            ),
        ));
    }
    if st.st_mode & 0o077 != 0 {
        return Err(refuse(
            dir,
            format!(
                "other users may enter it (mode {:04o}; it must be 0700)",
                st.st_mode & 0o7777
            ),
        ));
    }
    Ok(Some(fd))
}

/// The server's side: creates `dir` (0700) when missing, else checks it as a client would.
pub(crate) fn ensure_dir(dir: &Path) -> Result<()> {
    let ctx = |e| Error::io(format!("control directory {}", dir.display()), e);
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(ctx)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // Ours alone: restore the mode the umask may have narrowed, on the directory just made (by fd).
            let fd = open_nofollow(dir).map_err(ctx)?;
            nix::sys::stat::fchmod(&fd, nix::sys::stat::Mode::from_bits_truncate(0o700))
                .map_err(|e| ctx(e.into()))?;
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(ctx(e)),
    }
    match open_checked(dir)? {
        Some(_) => Ok(()),
        None => Err(ctx(io::ErrorKind::NotFound.into())),
    }
}

/// The client's side: `Ok(false)` when `dir` does not exist, an error when it cannot be trusted.
pub(crate) fn check_dir(dir: &Path) -> Result<bool> {
    Ok(open_checked(dir)?.is_some())
}

fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// A live server found in the control directory.
pub(crate) struct Found {
    pub path: PathBuf,
    pub addr: SocketAddr,
    pub pid: u32,
    instance: u64,
}

/// Live servers on `port` (and `host`, when given), oldest first; stale socket files are removed.
///
/// # Errors
/// A control directory that cannot be trusted (see [`check_dir`]).
pub(crate) fn find(host: Option<SocketAddr>, port: u16) -> Result<Vec<Found>> {
    let dir = control_dir();
    if !check_dir(&dir)? {
        return Ok(Vec::new());
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut found: Vec<Found> = entries
        .flatten()
        .filter_map(|e| {
            let (addr, pid, instance) = parse_name(e.file_name().to_str()?)?;
            let wanted = addr.port() == port && host.is_none_or(|h| h.ip() == addr.ip());
            wanted.then(|| Found {
                path: e.path(),
                addr,
                pid,
                instance,
            })
        })
        .filter(|f| match UnixStream::connect(&f.path) {
            Ok(_) => true,
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) && !pid_alive(f.pid) => {
                log!(
                    "removing stale control socket {} (pid {} is gone)",
                    f.path.display(),
                    f.pid
                );
                let _ = std::fs::remove_file(&f.path);
                false
            }
            Err(_) => false,
        })
        .collect();
    found.sort_by_key(|f| (f.pid, f.instance));
    Ok(found)
}

/// [`Error::NotRunning`] for `host`/`port`.
pub(crate) fn not_running(host: Option<SocketAddr>, port: u16) -> Error {
    let what = host.map_or_else(|| format!("port {port}"), |h| h.to_string());
    Error::NotRunning {
        what,
        dir: control_dir().display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_round_trip() {
        for addr in ["0.0.0.0:1234", "127.0.0.1:80", "[::1]:65535", "[::]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse_name(&format_name(addr, 42, 7)), Some((addr, 42, 7)));
            let old = format!("{}_{}.42.sock", addr.ip(), addr.port());
            assert_eq!(parse_name(&old), Some((addr, 42, 0)), "{old}");
        }
        assert!(parse_name("junk.sock").is_none());
    }

    #[test]
    fn two_servers_on_one_address_in_one_process_get_two_names() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let (a, b) = (socket_name(addr), socket_name(addr));
        assert_ne!(a, b);
        let (pa, pb) = (parse_name(&a).unwrap(), parse_name(&b).unwrap());
        assert_eq!((pa.0, pa.1), (addr, std::process::id()));
        assert_eq!((pb.0, pb.1), (addr, std::process::id()));
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ps-registry-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_file(&d);
        d
    }

    #[test]
    fn a_new_directory_is_made_private_and_a_loose_or_linked_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let fresh = scratch("fresh");
        ensure_dir(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(check_dir(&fresh).unwrap());

        let loose = scratch("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = ensure_dir(&loose).unwrap_err().to_string();
        assert!(err.contains("mode 0755"), "{err}");
        assert!(check_dir(&loose).is_err());
        let mode = std::fs::metadata(&loose).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o777,
            0o755,
            "a directory we did not create is never chmod-ed"
        );

        let link = scratch("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let err = ensure_dir(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(check_dir(&link).is_err());

        assert!(!check_dir(&scratch("missing")).unwrap());
        for d in [&fresh, &loose] {
            std::fs::remove_dir_all(d).unwrap();
        }
        std::fs::remove_file(&link).unwrap();
    }
}
