//! The `port-sharding` command line, written once. The `port-sharding` binary, `python -m port_sharding`
//! (and the Python package's `port-sharding` script) and the gem's `port-sharding` executable all call
//! [`main`], so flags, help, tables, messages and exit codes are the same everywhere.
//!
//! Exit status: 0 done; 1 a drain was cut short, or any other failure; 2 a bad argument or address; 3 no
//! server runs on the port; 130 a server drained after Ctrl-C (as shells report a SIGINT death). `probe`
//! exits 0 when a server on the port serves and 1 otherwise (none running included), as probes expect.
//!
//! # Dependencies, and why
//! - `clap` (builder API): `--help` on every subcommand, with `serve`'s options built from the engine's
//!   one table of settings ([`port_sharding::SETTINGS`]), so a setting added there appears here.

mod probe;
mod status;

use std::ffi::OsString;
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Args as _, Command, FromArgMatches};
use port_sharding::{Config, Error, Handle, Host, Kind, Server, Value, SETTINGS};
use port_sharding_bench as load;

/// The handle of the server `serve` runs in this process, for [`interrupt`].
static SERVING: Mutex<Option<Handle>> = Mutex::new(None);
/// [`interrupt`] was called during this [`main`]: a `serve` not yet bound drains as soon as it is, and
/// `stop --wait` stops waiting.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Runs the command line on `args` (the first one is the program name, as in `std::env::args_os`) and
/// returns the exit status. `host` is who runs it: a server started by `serve` reports that runtime
/// (`rust`, `python`, `ruby`) in `status`, logs and `hello` replies.
pub fn main<I, T>(args: I, host: Host) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    INTERRUPTED.store(false, Ordering::SeqCst);
    let matches = match command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            // --help and --version come here too: printed on stdout, exit 0; usage errors exit 2.
            e.print().ok();
            return e.exit_code().try_into().unwrap_or(2);
        }
    };
    let result = match matches.subcommand() {
        Some(("serve", m)) => serve(m, host),
        Some(("status", m)) => status(m),
        Some(("stop", m)) => stop(m),
        Some(("reload", m)) => reload(m),
        Some(("probe", m)) => probe(m),
        Some(("upgrade", m)) => upgrade(m),
        Some(("bench", m)) => match load::BenchArgs::from_arg_matches(m) {
            Ok(args) => return bench(&args),
            Err(e) => {
                e.print().ok();
                return 2;
            }
        },
        _ => unreachable!("clap requires a subcommand"),
    };
    result.unwrap_or_else(|e| {
        eprintln!("port-sharding: error: {e}");
        exit_code(&e)
    })
}

/// Asks the running [`main`] to finish early, from another thread: `serve` drains as SIGTERM would (even
/// if it has not bound yet), `stop --wait` stops waiting (exit 130). For a host whose interpreter wants
/// the command to stop (Ruby's unblocking function).
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let handle = SERVING.lock().unwrap_or_else(|e| e.into_inner()).clone();
    if let Some(h) = handle {
        h.stop();
    }
}

/// The exit status for an error: 2 for what the user typed, 3 when nothing runs there, 1 otherwise.
pub fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidArgument { .. } | Error::WrongType { .. } | Error::InvalidAddress { .. } => 2,
        Error::NotRunning { .. } => 3,
        _ => 1,
    }
}

/// The whole command line, as `--help` shows it.
pub fn command() -> Command {
    // The name is fixed, so `python -m port_sharding --help` prints what `port-sharding --help` does.
    Command::new("port-sharding")
        .bin_name("port-sharding")
        .version(port_sharding::VERSION)
        .about("Serve one TCP port from many processes with SO_REUSEPORT")
        .after_help(SIGNALS)
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(serve_command())
        .subcommand(
            target_command(
                "status",
                "Show per-worker counters of the servers running on a port",
            )
            .arg(
                Arg::new("json")
                    .long("json")
                    .action(ArgAction::SetTrue)
                    .help("Print JSON instead of a table"),
            ),
        )
        .subcommand(
            target_command(
                "stop",
                "Ask the servers running on a port to drain and exit",
            )
            .arg(
                Arg::new("wait")
                    .long("wait")
                    .value_name("DURATION")
                    .value_parser(port_sharding::parse_duration)
                    .help("Wait until they have exited, at most this long (e.g. 30s)"),
            ),
        )
        .subcommand(
            target_command(
                "reload",
                "Replace the workers of the servers running on a port in place: per listener a new worker \
                 starts, and the old one stops once the new one is ready (nothing queued is lost)",
            )
            .arg(
                Arg::new("pid")
                    .long("pid")
                    .value_name("PID")
                    .value_parser(clap::value_parser!(u32))
                    .help("Only the server whose supervisor has this pid"),
            )
            .arg(
                Arg::new("batch")
                    .long("batch")
                    .value_name("K")
                    .value_parser(clap::value_parser!(u32).range(1..))
                    .help("New workers started at a time (capacity stays between N and N+K) [default: 1]"),
            ),
        )
        .subcommand(target_command(
            "probe",
            "Exit 0 when a server on the port is serving (its listeners accept), 1 with a one-line reason \
             otherwise: for exec probes (Kubernetes, Docker HEALTHCHECK)",
        ))
        .subcommand(
            target_command(
                "upgrade",
                "Upgrade the servers running on a port in place: each starts its successor (the same program \
                 again, from disk, as its own child, so a service manager accepts it as the new main process) \
                 and hands it its sockets; once the successor is ready the old one drains and exits \
                 (nothing queued is lost). As SIGUSR2 to a supervisor",
            )
            .arg(
                Arg::new("pid")
                    .long("pid")
                    .value_name("PID")
                    .value_parser(clap::value_parser!(u32))
                    .help("Only the server whose supervisor has this pid"),
            ),
        )
        .subcommand(load::BenchArgs::augment_args(Command::new("bench")))
}

const SIGNALS: &str = "Signals to a serving supervisor: SIGINT (Ctrl-C), SIGTERM or SIGQUIT drain (stop accepting, \
finish open connections, exit; a second one stops at once; with --drain-delay, SIGTERM and SIGQUIT keep accepting \
that long first); SIGHUP reloads (as `reload`, one worker at a time). \
SIGUSR2 upgrades (as `upgrade`: the supervisor starts its successor, which takes its sockets over). \
SIGTERM to one worker drains it and a fresh one replaces it on the same listener.";

fn serve_command() -> Command {
    let mut cmd = Command::new("serve")
        .about("Serve a port with N worker processes; SIGINT/SIGTERM drain, a second one stops at once")
        .after_help(SIGNALS);
    for s in SETTINGS {
        let help = format!("{} [default: {}]", s.help, s.default);
        let mut arg = Arg::new(s.name).long(s.name.replace('_', "-")).help(help);
        if let Some(c) = s.short {
            arg = arg.short(c);
        }
        arg = match s.kind {
            // `--takeover` turns a setting on; `--steering=false` (or off, no, 0) turns a default-on one off.
            Kind::Flag => arg
                .action(ArgAction::Set)
                .num_args(0..=1)
                .require_equals(true)
                .default_missing_value("true")
                .value_name("BOOL")
                .value_parser(clap::builder::BoolishValueParser::new())
                .hide_possible_values(true),
            Kind::Choice(words) => arg
                .value_name(s.value_name)
                .value_parser(words.to_vec())
                .hide_possible_values(true),
            // Negative numbers reach the engine, which says what range the setting takes.
            Kind::Integer => arg.value_name(s.value_name).allow_negative_numbers(true),
            Kind::Text | Kind::Duration => arg.value_name(s.value_name),
            // `serve [options] -- CMD ARGS...`: everything after `--`, hyphens included.
            Kind::List => Arg::new(s.name)
                .value_name(s.value_name)
                .help(s.help)
                .num_args(1..)
                .last(true)
                .allow_hyphen_values(true),
        };
        cmd = cmd.arg(arg);
    }
    cmd.arg(
        Arg::new("quiet")
            .long("quiet")
            .short('q')
            .action(ArgAction::SetTrue)
            .help("Print no log lines"),
    )
}

fn target_command(name: &'static str, about: &'static str) -> Command {
    Command::new(name)
        .about(about)
        .arg(
            Arg::new("port")
                .long("port")
                .short('p')
                .value_name("PORT")
                .default_value("1234")
                .allow_negative_numbers(true)
                .help("Port of the servers"),
        )
        .arg(
            Arg::new("host")
                .long("host")
                .value_name("HOST")
                .help("Only servers bound to this address"),
        )
}

/// The settings the user gave on the command line, and only those: the engine fills in the rest.
fn given_settings(m: &ArgMatches) -> Vec<(&'static str, Value)> {
    SETTINGS
        .iter()
        .filter(|s| m.value_source(s.name) == Some(ValueSource::CommandLine))
        .map(|s| {
            let value = match s.kind {
                Kind::Flag => Value::Bool(m.get_one::<bool>(s.name).copied().unwrap_or(true)),
                Kind::List => Value::List(
                    m.get_many::<String>(s.name)
                        .map(|v| v.cloned().collect())
                        .unwrap_or_default(),
                ),
                _ => Value::Str(m.get_one::<String>(s.name).cloned().unwrap_or_default()),
            };
            (s.name, value)
        })
        .collect()
}

/// Runs the load generator; 0 when every operation succeeded, 1 when any failed, 2 on a bad target.
fn bench(args: &load::BenchArgs) -> u8 {
    let progress = !args.json && !args.quiet && std::io::stderr().is_terminal();
    let _interrupt = load::Interrupt::install();
    match load::run_with_progress(args, progress) {
        Ok(report) => {
            let out = if args.json {
                serde_json::to_string_pretty(&report).unwrap_or_default() + "\n"
            } else {
                report.render()
            };
            std::io::stdout().write_all(out.as_bytes()).ok();
            u8::from(report.errors.total != 0)
        }
        Err(e) => {
            eprintln!("port-sharding bench: {e}");
            2
        }
    }
}

fn serve(m: &ArgMatches, host: Host) -> port_sharding::Result<u8> {
    port_sharding::set_quiet(m.get_flag("quiet"));
    // The command line runs nothing but the server: it may reap every child (orphans of command
    // workers included), whichever interpreter hosts it.
    let config = Config {
        runtime: host.runtime().to_string(),
        subreaper: true,
        ..Config::from_settings(Host::Cli, given_settings(m))?
    };
    let server = Server::bind(config)?;
    *SERVING.lock().unwrap_or_else(|e| e.into_inner()) = Some(server.handle());
    if INTERRUPTED.load(Ordering::SeqCst) {
        server.handle().stop(); // interrupted while binding: drain at once
    }
    let report = server.run();
    *SERVING.lock().unwrap_or_else(|e| e.into_inner()) = None;
    Ok(report?.exit_code())
}

/// `--port` and `--host` of `status` and `stop`, checked by the engine like `serve`'s.
fn target(m: &ArgMatches) -> port_sharding::Result<(Option<String>, u16)> {
    let port = m.get_one::<String>("port").cloned().unwrap_or_default();
    let config = Config::from_settings(Host::Cli, [("port", Value::Str(port))])?;
    Ok((m.get_one::<String>("host").cloned(), config.port))
}

fn status(m: &ArgMatches) -> port_sharding::Result<u8> {
    let (host, port) = target(m)?;
    let servers = port_sharding::status(host.as_deref(), port)?;
    let out = if m.get_flag("json") {
        serde_json::to_string_pretty(&servers).map_err(|e| Error::Internal(e.to_string()))? + "\n"
    } else {
        status::table(&servers)
    };
    // A closed stdout (`status | head`) is not an error worth reporting.
    std::io::stdout().write_all(out.as_bytes()).ok();
    Ok(0)
}

fn stop(m: &ArgMatches) -> port_sharding::Result<u8> {
    let (host, port) = target(m)?;
    let pids = port_sharding::stop(host.as_deref(), port)?;
    for pid in &pids {
        println!("asked server pid {pid} to drain");
    }
    let Some(&wait) = m.get_one::<Duration>("wait") else {
        return Ok(0);
    };
    let until = Instant::now().checked_add(wait);
    loop {
        if !pids.iter().any(|&p| status::running(p)) {
            println!("stopped");
            return Ok(0);
        }
        if until.is_some_and(|t| Instant::now() >= t) {
            eprintln!("port-sharding: error: still running after {wait:?}");
            return Ok(1);
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Ok(130);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn probe(m: &ArgMatches) -> port_sharding::Result<u8> {
    let (host, port) = target(m)?;
    // Not running is an answer here (not serving), and so is a server that cannot be asked.
    let (serving, line) = match port_sharding::status(host.as_deref(), port) {
        Ok(servers) => probe::verdict(&servers),
        Err(e) => (false, e.to_string()),
    };
    if serving {
        println!("serving: {line}");
        Ok(0)
    } else {
        eprintln!("port-sharding probe: not serving: {line}");
        Ok(1)
    }
}

fn reload(m: &ArgMatches) -> port_sharding::Result<u8> {
    let (host, port) = target(m)?;
    let pid = m.get_one::<u32>("pid").copied();
    let batch = m.get_one::<u32>("batch").map(|&k| k as usize);
    let reports = port_sharding::reload(host.as_deref(), port, pid, batch)?;
    let mut code = 0;
    for r in &reports {
        for w in &r.replaced {
            println!(
                "{} server pid {}: worker {} pid {} → pid {} (generation {})",
                r.runtime, r.pid, w.index, w.old_pid, w.new_pid, w.generation
            );
        }
        match &r.failed {
            None => println!(
                "{} server pid {}: reloaded {} worker(s)",
                r.runtime,
                r.pid,
                r.replaced.len()
            ),
            Some(f) => {
                let who = match (f.index, f.pid) {
                    (Some(i), Some(p)) => format!("worker {i} (new pid {p}) "),
                    (Some(i), None) => format!("worker {i} "),
                    _ => String::new(),
                };
                eprintln!(
                    "port-sharding: error: reload of {} server pid {} failed: {who}{}; {} worker(s) replaced, \
                     the others keep serving",
                    r.runtime,
                    r.pid,
                    f.reason,
                    r.replaced.len()
                );
                code = 1;
            }
        }
    }
    Ok(code)
}

fn upgrade(m: &ArgMatches) -> port_sharding::Result<u8> {
    let (host, port) = target(m)?;
    let pid = m.get_one::<u32>("pid").copied();
    let reports = port_sharding::upgrade(host.as_deref(), port, pid)?;
    let mut code = 0;
    for r in &reports {
        match (&r.failed, r.successor) {
            (None, Some(successor)) => println!(
                "{} server pid {}: upgraded to pid {successor} in {:.2}s; pid {} drains",
                r.runtime, r.pid, r.seconds, r.pid
            ),
            (failed, _) => {
                eprintln!(
                    "port-sharding: error: upgrade of {} server pid {} failed: {}; it keeps serving",
                    r.runtime,
                    r.pid,
                    failed.as_deref().unwrap_or("no successor")
                );
                code = 1;
            }
        }
    }
    Ok(code)
}
