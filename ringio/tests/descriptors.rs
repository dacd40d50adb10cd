//! Accepting while the process is out of descriptors: the handler hears of each failed
//! accept, and the loop serves the waiting client once descriptors are free again. A test
//! binary of its own, since it exhausts the process's descriptor table.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringio::{Config, ConnId, EventLoop, Handler, Outbox};

#[derive(Default)]
struct Counting {
    accept_errors: Vec<Option<i32>>,
    opened: usize,
}

impl Handler for Counting {
    type Session = ();

    fn on_open(&mut self, _: ConnId, _: SocketAddr, _: &mut Outbox) {
        self.opened += 1;
    }

    fn on_data(&mut self, _: ConnId, _: &mut (), _: &mut [u8], _: &mut Outbox) {}

    fn on_close(&mut self, _: ConnId, _: &mut ()) {}

    fn on_accept_error(&mut self, error: &io::Error) {
        self.accept_errors.push(error.raw_os_error());
    }
}

fn turn_until(event_loop: &mut EventLoop<Counting>, what: &str, done: impl Fn(&Counting) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(event_loop.handler()) {
        assert!(Instant::now() < deadline, "never: {what}");
        event_loop.turn(Some(Duration::from_millis(100))).unwrap();
    }
}

#[test]
fn a_failed_accept_is_reported_and_the_client_served_once_descriptors_free_up() {
    let mut event_loop = EventLoop::new(
        Config::new("127.0.0.1:0".parse().unwrap()),
        Counting::default(),
    )
    .unwrap();
    let addr = event_loop.local_addr().unwrap();
    // Arms the accept.
    event_loop.turn(Some(Duration::ZERO)).unwrap();
    let mut hogs = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(file) => hogs.push(file),
            Err(err) if err.raw_os_error() == Some(libc::EMFILE) => break,
            Err(err) => panic!("opening /dev/null: {err}"),
        }
    }
    // The client takes the last free descriptor, so the loop's accept has none.
    hogs.pop();
    let _client = TcpStream::connect(addr).unwrap();
    turn_until(&mut event_loop, "an accept fails", |handler| {
        !handler.accept_errors.is_empty()
    });
    assert_eq!(event_loop.handler().accept_errors[0], Some(libc::EMFILE));
    assert_eq!(event_loop.handler().opened, 0);
    drop(hogs);
    turn_until(&mut event_loop, "the client is served", |handler| {
        handler.opened == 1
    });
}
