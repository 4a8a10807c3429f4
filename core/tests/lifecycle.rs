//! The one lifecycle every host drives ([`Server`]): bound → running → done with a report, shared between
//! threads, with a host callback between slices of every wait. One test, in its own binary: it forks
//! workers, and a fork while other test threads run could copy a lock they hold into the child.

use std::io;
use std::time::Duration;

use port_sharding::{Config, Error, Phase, Report, Server, StopReason};

#[test]
fn the_lifecycle() {
    a_server_runs_once_and_every_waiter_gets_the_same_report();
    stopping_a_server_that_never_ran_closes_its_listeners();
    between_runs_while_waiting_and_its_error_ends_the_wait();
    a_job_dropped_unrun_ends_the_server();
}

fn bind() -> Server {
    Server::bind(Config {
        host: "127.0.0.1".into(),
        port: 0,
        workers: 1,
        control: false,
        ..Config::default()
    })
    .unwrap()
}

fn a_server_runs_once_and_every_waiter_gets_the_same_report() {
    let server = bind();
    assert!(!server.is_started());
    let e = server.wait(Some(Duration::ZERO)).unwrap_err();
    assert!(matches!(e, Error::InvalidState(_)), "{e}");
    server.start(Some(Duration::from_secs(30))).unwrap();
    assert!(server.is_running() && server.phase() == Phase::Serving);
    let e = server.start(None).unwrap_err();
    assert!(e.to_string().contains("already started"), "{e}");
    assert!(server
        .wait(Some(Duration::from_millis(10)))
        .unwrap()
        .is_none());
    let report = std::thread::scope(|s| {
        let waiter = s.spawn(|| server.wait(None));
        let report = server.stop(None).unwrap().unwrap();
        assert_eq!(waiter.join().unwrap().unwrap(), Some(report));
        report
    });
    assert_eq!(report.reason, StopReason::Stop);
    assert!(!report.forced);
    assert_eq!(server.stop(Some(Duration::ZERO)).unwrap(), Some(report));
    assert!(server
        .run()
        .unwrap_err()
        .to_string()
        .contains("already stopped"));
    assert_eq!(server.phase(), Phase::Stopped);
}

fn stopping_a_server_that_never_ran_closes_its_listeners() {
    let server = bind();
    let addr = server.local_addr();
    assert_eq!(server.stop(None).unwrap(), Some(Report::unstarted()));
    assert!(std::net::TcpStream::connect(addr).is_err());
    assert_eq!(server.phase(), Phase::Stopped);
    assert!(server.start(None).is_err());
}

fn between_runs_while_waiting_and_its_error_ends_the_wait() {
    #[derive(Debug)]
    enum Host {
        Interrupted,
        Engine(#[allow(dead_code)] Error), // shown by Debug when an assertion fails
    }
    impl From<Error> for Host {
        fn from(e: Error) -> Host {
            Host::Engine(e)
        }
    }
    let server = bind();
    server.start(None).unwrap();
    let mut calls = 0;
    let waited = server.wait_with(None, || {
        calls += 1;
        if calls == 3 {
            Err(Host::Interrupted)
        } else {
            Ok(())
        }
    });
    assert!(matches!(waited, Err(Host::Interrupted)), "{waited:?}");
    assert!(
        server.is_running(),
        "an interrupted wait leaves the server running"
    );
    let stopped = server.stop_with(None, || Err(Host::Interrupted));
    assert!(matches!(stopped, Ok(Some(_)) | Err(Host::Interrupted)));
    assert!(server.stop(None).unwrap().is_some());
}

fn a_job_dropped_unrun_ends_the_server() {
    let server = bind();
    server
        .start_on(|job| {
            drop(job);
            Ok(())
        })
        .unwrap();
    assert_eq!(server.wait(None).unwrap(), Some(Report::unstarted()));
    let failed = bind();
    let e = failed
        .start_on(|_job| Err(io::Error::other("no threads left")))
        .unwrap_err();
    assert!(e.to_string().contains("no threads left"), "{e}");
    assert!(
        failed.wait(None).is_err(),
        "the spawn's failure is the run's outcome"
    );
}
