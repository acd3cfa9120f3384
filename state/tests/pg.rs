//! The PostgreSQL stores against a real PostgreSQL 15: the schema and its migrations, the
//! greylist and the sending record shared by two pools (two hosts) without lost updates, and
//! what a server that goes away and comes back costs.

use miab_e2e::postgres::Postgres;
use state::greylist::{Awl, Lookup, Triplet, Update};
use state::known_devices::Change;
use state::pg::device_store::{Outbox, PgKnownDevices};
use state::pg::greylist::PgGreylist;
use state::pg::sending::PgSending;
use state::pg::{Limits, Pg, PgError};
use state::sending::{Decision, Message, Rule};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn limits() -> Limits {
    Limits {
        deadline: Duration::from_millis(1000),
        failures: 2,
        open_for: Duration::from_millis(300),
        connections: 8,
    }
}

async fn pool(pg: &Postgres) -> Arc<Pg> {
    let p = Arc::new(Pg::new(&pg.url(), limits()).unwrap());
    p.call(p.migrate()).await.unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_is_made_once_and_a_newer_one_is_refused() {
    let server = Postgres::start();
    let a = pool(&server).await;
    let b = pool(&server).await;
    assert_eq!(b.call(b.migrate()).await, Ok(1));
    assert_eq!(server.psql("SELECT version FROM miab_schema"), "1");
    server.psql("UPDATE miab_schema SET version = 99");
    assert_eq!(
        a.call(a.migrate()).await,
        Err(PgError::Newer {
            found: 99,
            known: 1
        })
    );
}

/// A new triplet, seen from two hosts at once, is recorded once; its retry after the delay
/// passes on either host, and the client is counted once per pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greylist_decisions_from_two_hosts_take_turns() {
    let server = Postgres::start();
    let hosts = [
        PgGreylist::new(pool(&server).await),
        PgGreylist::new(pool(&server).await),
    ];
    let l = |now| Lookup {
        key: "192.0.2.0/a@b.example/c@d.example".into(),
        client: "192.0.2.1".into(),
        now,
    };
    // The rule: new -> first_seen now; seen -> pass and count the client.
    let rule = |now: i64| {
        move |t: Option<Triplet>, a: Option<Awl>| {
            let first = t.map_or(now, |t| t.first_seen);
            let pass = now - first >= 100;
            let awl = pass.then(|| Awl {
                count: a.map_or(0, |a| a.count) + 1,
                last_seen: now,
            });
            (
                Update {
                    triplet: Some(Triplet {
                        first_seen: first,
                        last_seen: now,
                        confirmed: pass,
                    }),
                    awl,
                },
                pass,
            )
        }
    };
    let (first, second) = (l(1000), l(1001));
    let (x, y) = tokio::join!(
        hosts[0].decide(&first, true, rule(1000)),
        hosts[1].decide(&second, true, rule(1001)),
    );
    assert_eq!((x, y), (Ok(false), Ok(false)));
    // Whichever came second saw the first's row (had both read "no row", the later write
    // would carry its own time as first_seen).
    let row = server.psql("SELECT first_seen, last_seen FROM greylist_triplets");
    assert!(row == "1000|1001" || row == "1001|1000", "{row}");
    let lookups: Vec<Lookup> = (0..20).map(|i| l(1200 + i)).collect();
    let passes: Vec<_> = lookups
        .iter()
        .enumerate()
        .map(|(i, lk)| hosts[i % 2].decide(lk, true, rule(lk.now)))
        .collect();
    let all = futures_all(passes).await;
    assert!(all.iter().all(|r| *r == Ok(true)), "{all:?}");
    assert_eq!(
        server.psql("SELECT count FROM greylist_clients"),
        "20",
        "no pass lost between the hosts"
    );
    let c = hosts[1].counts().await.unwrap();
    assert_eq!((c.triplets, c.clients), (1, 1));
}

async fn futures_all<F: Future>(all: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let mut all: Vec<_> = all.into_iter().map(Box::pin).collect();
    // Polled together, so they overlap on the server.
    let joined = std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in all.iter_mut().enumerate() {
            if out.len() <= i {
                out.resize_with(i + 1, || None);
            }
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    });
    joined.await;
    out.into_iter().map(Option::unwrap).collect()
}

/// One login sending through two hosts at once meets one limit: every message is counted
/// once, and the one past the floor is held, on whichever host it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_sending_through_two_hosts_meets_one_limit() {
    let server = Postgres::start();
    let hosts = [
        PgSending::new(pool(&server).await),
        PgSending::new(pool(&server).await),
    ];
    let rule = Rule {
        floor_messages: 10,
        ..Rule::default()
    };
    hosts[0].set_rule(&rule).await.unwrap();
    assert_eq!(hosts[1].rule().await.unwrap(), rule);
    let msg = |i: usize| Message {
        login: "me@example.com".into(),
        recipients: vec![format!("r{i}@example.org")],
        unlisted: 0,
        enforce: true,
        now: 1_800_000_000 + i as i64,
    };
    let hosts = &hosts;
    let mut all = Vec::new();
    for i in 0..16 {
        all.push(async move { hosts[i % 2].record(&rule, &msg(i)).await });
    }
    let decisions = futures_all(all).await;
    let held = decisions
        .iter()
        .filter(|d| matches!(d, Ok(Decision::Hold { .. })))
        .count();
    let started = decisions
        .iter()
        .filter(|d| matches!(d, Ok(Decision::Hold { newly: Some(_) })))
        .count();
    assert!(decisions.iter().all(Result::is_ok), "{decisions:?}");
    assert_eq!((held, started), (6, 1), "{decisions:?}");
    assert_eq!(server.psql("SELECT sum(messages) FROM sending_hours"), "16");
    let listed = hosts[1]
        .statuses(&rule, false, 1_800_000_100)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        hosts[1]
            .release("Me@Example.com", 1_800_000_200)
            .await
            .unwrap()
    );
    assert!(
        hosts[0]
            .statuses(&rule, false, 1_800_000_300)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A server that goes away costs a call at most the deadline, then nothing while the breaker
/// is open; writes nobody waits for are kept and written when it is back; it recovers alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_a_deadline_then_nothing_and_loses_no_kept_write() {
    let server = Postgres::start();
    let pg = pool(&server).await;
    let devices = PgKnownDevices::new(Arc::clone(&pg));
    let writer = {
        let d = devices.clone();
        Outbox::start(1000, move |batch| {
            let d = d.clone();
            async move { d.apply(batch).await }
        })
    };
    writer.send(Change::Seen(
        "me@example.com".into(),
        "192.0.2.7".into(),
        100,
    ));
    let found = miab_e2e::wait_until(Duration::from_secs(5), || {
        (server.psql("SELECT count(*) FROM known_devices") == "1").then_some(())
    });
    assert!(found.is_some());
    server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let r = devices.load(0, 10).await;
        assert!(r.is_err());
        assert!(
            started.elapsed() < limits().deadline + Duration::from_millis(500),
            "waited {:?}",
            started.elapsed()
        );
    }
    assert!(pg.is_open());
    writer.send(Change::Seen(
        "me@example.com".into(),
        "198.51.100.0".into(),
        200,
    ));
    server.resume();
    let back = miab_e2e::wait_until(Duration::from_secs(10), || {
        (server.psql("SELECT count(*) FROM known_devices") == "2").then_some(())
    });
    assert!(back.is_some(), "the write made while it was down arrives");
    assert_eq!(writer.queued(), 0);
    assert_eq!(devices.load(0, 10).await.unwrap().len(), 2);
    assert!(!pg.is_open());
}
