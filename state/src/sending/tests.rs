use super::*;

/// Monday 2026-11-23 00:00 UTC.
const WEEK_START: i64 = 1_795_392_000;
const DAY: i64 = 86_400;

const FLOORS: Figures = Figures {
    messages: 100,
    recipients: 500,
    new_recipients: 50,
};

fn db() -> (tempfile::TempDir, Sending) {
    let dir = tempfile::tempdir().unwrap();
    let s = Sending::open(&dir.path().join("policyd/sending.sqlite")).unwrap();
    (dir, s)
}

/// A week of office hours: each weekday 9:00 to 17:00, `per_hour` messages an hour, each to
/// one recipient, spread over the hour, `new_per_hour` of them new; a login new to the box grows into that, from
/// at most 40 an hour on the first day, doubling each day.
fn office_week(s: &mut Sending, login: &str, per_hour: u64, new_per_hour: u64) {
    let rule = Rule::default();
    for day in 0..5 {
        let cap = 40u64 << day;
        let (per_hour, new_per_hour) = (per_hour.min(cap), new_per_hour.min(cap));
        for h in 9..17 {
            let start = WEEK_START + day * DAY + h * HOUR;
            for i in 0..per_hour {
                let rcpt = if i < new_per_hour {
                    format!("new-{day}-{h}-{i}@elsewhere.example")
                } else {
                    format!("friend-{}@elsewhere.example", i % 5)
                };
                let t = start + to_i64(i) * 3600 / to_i64(per_hour);
                let d = s.record(&rule, login, &[rcpt], true, t).unwrap();
                assert_eq!(d, Decision::Send, "history at {t}");
            }
        }
    }
}

/// Sends `n` messages to new recipients one every 2 s from `t`; returns the decisions.
fn burst(s: &mut Sending, login: &str, n: u64, t: i64, tag: &str) -> Vec<Decision> {
    burst_every(s, login, n, t, 2, tag)
}

fn burst_every(
    s: &mut Sending,
    login: &str,
    n: u64,
    t: i64,
    step: i64,
    tag: &str,
) -> Vec<Decision> {
    (0..n)
        .map(|i| {
            let rcpt = format!("{tag}-{i}@victims.example");
            s.record(&Rule::default(), login, &[rcpt], true, t + to_i64(i) * step)
                .unwrap()
        })
        .collect()
}

fn first_hold(ds: &[Decision]) -> Option<(usize, &NewHold)> {
    ds.iter().enumerate().find_map(|(i, d)| match d {
        Decision::Hold { newly: Some(h) } => Some((i, h)),
        _ => None,
    })
}

#[test]
fn a_quiet_login_that_bursts_is_held_at_the_floor_and_told_once() {
    let (_d, mut s) = db();
    office_week(&mut s, "alice@example.com", 5, 2);
    let monday = WEEK_START + 7 * DAY + 10 * HOUR;
    let ds = burst(&mut s, "Alice@Example.com", 200, monday, "spam");
    let (i, hold) = first_hold(&ds).expect("held");
    assert_eq!(i, 50, "the 51st new recipient trips the floor of 50");
    assert!(hold.notify);
    // The first hour of the week met its five friends for the first time.
    assert_eq!(
        hold.busiest,
        Figures {
            messages: 5,
            recipients: 5,
            new_recipients: 5
        }
    );
    assert_eq!(hold.limits, FLOORS);
    assert_eq!(hold.reason, "51 new recipients in the last hour (limit 50)");
    assert!(ds[..50].iter().all(|d| *d == Decision::Send));
    assert!(
        ds[51..]
            .iter()
            .all(|d| *d == Decision::Hold { newly: None })
    );
    let st = s
        .status(&Rule::default(), "alice@example.com", monday + 400)
        .unwrap();
    assert!(st.held_since.is_some());

    let now = monday + 400;
    let held = s.statuses(&Rule::default(), false, now).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].login, "alice@example.com");
    assert_eq!(held[0].held_since, Some(monday + 100));
    assert_eq!(held[0].held_peak.new_recipients, 200);

    // Released: the burst was fine after all, and is now the login's busiest hour.
    assert!(s.release("alice@example.com", now).unwrap());
    assert!(!s.release("alice@example.com", now).unwrap());
    let after = burst(&mut s, "alice@example.com", 300, now + 1, "more");
    assert!(first_hold(&after).is_none(), "under 3 x 200 + 200");
    // Held again within the hour: no second notice.
    let again = burst(&mut s, "alice@example.com", 200, now + 700, "yet-more");
    let (_, h) = first_hold(&again).expect("held again past 3 x 200");
    assert!(!h.notify, "one notice per login per hour");
    s.release("alice@example.com", now + 2000).unwrap();
    let later = burst_every(
        &mut s,
        "alice@example.com",
        3000,
        now + 2 * HOUR,
        1,
        "much-later",
    );
    assert!(first_hold(&later).expect("held").1.notify);
}

#[test]
fn a_login_within_its_own_history_is_never_held() {
    let (_d, mut s) = db();
    office_week(&mut s, "news@example.com", 120, 80);
    let monday = WEEK_START + 7 * DAY + 10 * HOUR;
    // 2.5 x its busiest hour, in a few minutes, all to new recipients.
    let ds = burst(&mut s, "news@example.com", 200, monday, "list");
    assert!(ds.iter().all(|d| *d == Decision::Send));
    // A quiet login with no history at all may send up to the floors.
    let ds = burst(
        &mut s,
        "new-user@example.com",
        50,
        monday,
        "first-newsletter",
    );
    assert!(ds.iter().all(|d| *d == Decision::Send));
    // Writing again to people it knows is no new recipient.
    let rule = Rule::default();
    for i in 0..150 {
        let d = s
            .record(
                &rule,
                "news@example.com",
                &[format!("friend-{}@elsewhere.example", i % 5)],
                true,
                monday + 900 + i,
            )
            .unwrap();
        assert_eq!(d, Decision::Send);
    }
}

#[test]
fn the_last_hour_slides_and_held_hours_are_not_history() {
    let (_d, mut s) = db();
    let rule = Rule::default();
    let t = WEEK_START + 10 * HOUR + 1800;
    for i in 0..40 {
        s.record(&rule, "a@x", &[format!("r{i}@y")], true, t + i)
            .unwrap();
    }
    // Half an hour into the next hour, half of the previous hour's 40 counts.
    let st = s.status(&rule, "a@x", t + HOUR).unwrap();
    assert_eq!(
        st.last_hour,
        Figures {
            messages: 20,
            recipients: 20,
            new_recipients: 20
        }
    );
    assert_eq!(
        s.status(&rule, "a@x", t + 2 * HOUR).unwrap().last_hour,
        Figures::default()
    );
    assert_eq!(st.total_recipients, 40);

    // Held and never released (a suspended spammer): the burst does not raise the limits.
    let ds = burst(&mut s, "b@x", 100, t, "spam");
    assert!(first_hold(&ds).is_some());
    let st = s.status(&rule, "b@x", t + 3 * HOUR).unwrap();
    assert_eq!(st.busiest, Figures::default());
    assert_eq!(st.limits, FLOORS);
    // Recipients of held mail were not learnt.
    let n: i64 = s
        .conn
        .query_row("SELECT count(*) FROM known WHERE login='b@x'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 50);
}

#[test]
fn exceptions_are_counted_but_never_held_and_old_rows_expire() {
    let (_d, mut s) = db();
    let rule = Rule::default();
    let t = WEEK_START;
    for i in 0..500 {
        let d = s
            .record(&rule, "bulk@x", &[format!("r{i}@y")], false, t + i)
            .unwrap();
        assert_eq!(d, Decision::Send);
    }
    assert_eq!(
        s.status(&rule, "bulk@x", t + 600)
            .unwrap()
            .last_hour
            .new_recipients,
        500
    );
    assert_eq!(s.expire(&rule, t + 10 * DAY).unwrap(), 0);
    assert_eq!(s.expire(&rule, t + 30 * DAY).unwrap(), 1);
    assert_eq!(s.expire(&rule, t + (KNOWN_DAYS + 1) * DAY).unwrap(), 500);
}

#[test]
fn the_rule_is_recorded_for_miabctl() {
    let (_d, s) = db();
    assert_eq!(s.rule().unwrap(), Rule::default());
    let r = Rule {
        floor_messages: 7,
        floor_recipients: 9,
        floor_new_recipients: 3,
        factor: 5,
        max_daily_growth: 4,
        history_days: 14,
    };
    s.set_rule(&r).unwrap();
    s.set_rule(&r).unwrap();
    assert_eq!(s.rule().unwrap(), r);
}

#[test]
fn hostile_logins_and_recipients_are_bounded() {
    let (_d, mut s) = db();
    let rule = Rule::default();
    let long = format!("{}é@x", "a".repeat(255));
    s.record(&rule, &long, &["b".repeat(10_000)], true, WEEK_START)
        .unwrap();
    let all = s.statuses(&rule, true, WEEK_START).unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].login.len() <= MAX_ADDRESS, "{}", all[0].login.len());
}

/// What the login sent at its limit every other hour of a day does to the next day's limit:
/// at most `max_daily_growth` times, and nothing at all the same day.
#[test]
fn sending_at_the_limit_every_other_hour_grows_it_no_faster_than_the_stated_rate() {
    let (_d, mut s) = db();
    let rule = Rule::default();
    let mut limit = rule.floor_new_recipients;
    for day in 0..5 {
        let start = WEEK_START + day * DAY;
        for h in (0..24).step_by(2) {
            for i in 0..limit {
                let t = start + h * HOUR + to_i64(i);
                let rcpt = format!("d{day}-h{h}-{i}@victims.example");
                let d = s.record(&rule, "ramp@x", &[rcpt], true, t).unwrap();
                assert_eq!(d, Decision::Send, "day {day} hour {h} message {i}");
            }
            let st = s.status(&rule, "ramp@x", start + h * HOUR + 3000).unwrap();
            assert_eq!(
                st.limits.new_recipients, limit,
                "unchanged within day {day}"
            );
        }
        let next = s.status(&rule, "ramp@x", start + DAY + 60).unwrap();
        assert_eq!(next.limits.new_recipients, limit * 2, "after day {day}");
        limit *= 2;
    }
    // One more than the day's limit in an hour: held.
    let t = WEEK_START + 5 * DAY + HOUR;
    let over: Vec<String> = (0..=limit)
        .map(|i| format!("over-{i}@victims.example"))
        .collect();
    let d = s.record(&rule, "ramp@x", &over, true, t).unwrap();
    assert!(matches!(d, Decision::Hold { newly: Some(_) }), "{d:?}");
    // A day with a hold is no history: the limit stays where it was.
    let st = s.status(&rule, "ramp@x", t + DAY).unwrap();
    assert_eq!(st.limits.new_recipients, limit);
}

/// Known correspondents have a cap too: total recipients.
#[test]
fn mail_to_known_recipients_is_capped_in_total() {
    let (_d, mut s) = db();
    let rule = Rule::default();
    let list: Vec<String> = (0..1000)
        .map(|i| format!("member-{i}@list.example"))
        .collect();
    // A thousand correspondents, known from long ago (written straight into the table).
    for r in &list {
        s.conn
            .execute(
                "INSERT INTO known (login, recipient, last_seen) VALUES ('lister@x', ?1, ?2)",
                params![r, WEEK_START - 30 * DAY],
            )
            .unwrap();
    }
    let t = WEEK_START + 10 * HOUR;
    let d = s.record(&rule, "lister@x", &list, true, t).unwrap();
    match d {
        Decision::Hold { newly: Some(h) } => {
            assert_eq!(h.reason, "1000 recipients in the last hour (limit 500)");
            assert_eq!(h.last_hour.new_recipients, 0);
        }
        other => panic!("{other:?}"),
    }
    // Ten known correspondents, fifty messages each: within the floor of 500.
    for i in 0..50 {
        let d = s
            .record(&rule, "friendly@x", &list[..10], true, t + i)
            .unwrap();
        assert_eq!(d, Decision::Send, "{i}");
    }
    // The same recipient twice in one message counts once.
    let twice = vec![list[0].clone(), list[0].to_uppercase()];
    s.record(&rule, "dup@x", &twice, true, t).unwrap();
    assert_eq!(s.status(&rule, "dup@x", t).unwrap().last_hour.recipients, 1);
}

/// Recipients beyond the listed ones count, as new.
#[test]
fn unlisted_recipients_count_as_new() {
    let (_d, mut s) = db();
    let rule = Rule::default();
    let m = Message {
        login: "a@x".into(),
        recipients: vec!["one@y".into()],
        unlisted: 60,
        enforce: true,
        now: WEEK_START,
    };
    let d = s.record_all(&rule, &[m]).unwrap();
    assert!(matches!(d[0], Decision::Hold { newly: Some(_) }), "{d:?}");
    assert!(s.is_held("A@x").unwrap());
    assert!(!s.is_held("b@x").unwrap());
}

/// A file written by the first version (no recipient limit, no growth rate) is migrated.
#[test]
fn a_version_1_file_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sending.sqlite");
    let c = Connection::open(&path).unwrap();
    c.execute_batch(SCHEMA).unwrap();
    c.execute_batch(
        "PRAGMA user_version = 1; INSERT INTO logins (login, held_since) VALUES ('a@x', 5);",
    )
    .unwrap();
    drop(c);
    let s = Sending::open(&path).unwrap();
    assert!(s.is_held("a@x").unwrap());
    assert_eq!(s.rule().unwrap(), Rule::default());
    drop(s);
    let c = Connection::open(&path).unwrap();
    c.execute_batch("PRAGMA user_version = 3").unwrap();
    drop(c);
    assert!(Sending::open(&path).is_err(), "a newer schema is refused");
}
