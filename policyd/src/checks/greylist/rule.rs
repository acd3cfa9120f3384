//! Greylisting's rule, as postgrey's: a triplet of client network, normalised sender and
//! recipient must be seen again after `delay` and within the retry window before it passes;
//! a client address that passed often enough is whitelisted. [`decide`] is the decision over
//! one triplet's stored state, as a pure function.

/// How often a passing triplet's `last_seen` is written back, in seconds.
const REFRESH: i64 = 3600;

/// Timing settings, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub delay: i64,
    pub max_age: i64,
    pub retry_window: i64,
    /// Passes that whitelist a client; 0 turns the auto-whitelist off.
    pub awl_threshold: u32,
    /// A client's passes count at most once per this many seconds.
    pub awl_interval: i64,
}

pub use state::greylist::{Awl, Triplet};

/// What happened, with postgrey's reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `action=pass, reason=client AWL`.
    AwlPass,
    /// `action=pass, reason=triplet found`; `delayed` is set on the first pass after a wait.
    Pass { delayed: Option<i64> },
    /// `action=greylist, reason=new` or `early-retry (Ns missing)`.
    Greylist { new: bool, remaining: i64 },
}

/// The state to write back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writes {
    /// `None`: leave the triplet alone.
    pub triplet: Option<Triplet>,
    pub awl: Option<Awl>,
    /// The client has just reached the threshold (postgrey logs "whitelisted").
    pub newly_whitelisted: bool,
}

/// Decides one request from the stored triplet and client state at time `now`.
pub fn decide(
    now: i64,
    triplet: Option<Triplet>,
    awl: Option<Awl>,
    t: &Timing,
) -> (Outcome, Writes) {
    let mut writes = Writes {
        triplet: None,
        awl: None,
        newly_whitelisted: false,
    };
    // An auto-whitelist entry not seen for max_age starts counting again.
    let awl = awl.filter(|a| a.last_seen >= now - t.max_age);
    if t.awl_threshold > 0
        && let Some(a) = awl
        && a.count >= t.awl_threshold
    {
        if now - a.last_seen >= t.awl_interval {
            writes.awl = Some(Awl {
                count: a.count,
                last_seen: now,
            });
        }
        return (Outcome::AwlPass, writes);
    }

    let mut first = now;
    let mut confirmed = false;
    let mut new = true;
    if let Some(s) = triplet {
        new = false;
        confirmed = s.confirmed;
        first = s.first_seen.min(now);
        // A retry outside the window starts the wait over.
        if !confirmed && now - s.last_seen > t.retry_window {
            first = now;
            new = true;
        }
    }
    let waited = now - first;
    if confirmed || waited >= t.delay {
        // A known triplet's last_seen only feeds the 35-day expiry: refreshing it once an
        // hour is enough, and spares a write per message from regular correspondents.
        let fresh = triplet.is_some_and(|s| s.confirmed && now - s.last_seen < REFRESH);
        writes.triplet = (!fresh).then_some(Triplet {
            first_seen: first,
            last_seen: now,
            confirmed: true,
        });
        if t.awl_threshold > 0 {
            let prev = awl.unwrap_or(Awl {
                count: 0,
                last_seen: i64::MIN,
            });
            if prev.count == 0 || now.saturating_sub(prev.last_seen) >= t.awl_interval {
                let count = prev.count.saturating_add(1);
                writes.newly_whitelisted = count == t.awl_threshold;
                writes.awl = Some(Awl {
                    count,
                    last_seen: now,
                });
            }
        }
        let delayed = (!confirmed).then_some(waited);
        return (Outcome::Pass { delayed }, writes);
    }
    writes.triplet = Some(Triplet {
        first_seen: first,
        last_seen: now,
        confirmed: false,
    });
    (
        Outcome::Greylist {
            new,
            remaining: t.delay - waited,
        },
        writes,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        delay: 180,
        max_age: 35 * 86400,
        retry_window: 2 * 86400,
        awl_threshold: 5,
        awl_interval: 3600,
    };

    /// Runs requests at the given times against one triplet and one client.
    fn run(times: &[i64], t: &Timing) -> Vec<Outcome> {
        let (mut trip, mut awl) = (None, None);
        times
            .iter()
            .map(|&now| {
                let (o, w) = decide(now, trip, awl, t);
                trip = w.triplet.or(trip);
                awl = w.awl.or(awl);
                o
            })
            .collect()
    }

    #[test]
    fn new_early_then_pass() {
        let o = run(&[1000, 1100, 1185, 1300], &T);
        assert_eq!(
            o[0],
            Outcome::Greylist {
                new: true,
                remaining: 180
            }
        );
        assert_eq!(
            o[1],
            Outcome::Greylist {
                new: false,
                remaining: 80
            }
        );
        assert_eq!(o[2], Outcome::Pass { delayed: Some(185) });
        assert_eq!(o[3], Outcome::Pass { delayed: None });
        // Known and recently written: no write; an hour later, a refresh.
        let known = Triplet {
            first_seen: 1000,
            last_seen: 1300,
            confirmed: true,
        };
        assert_eq!(decide(1400, Some(known), None, &T).1.triplet, None);
        let w = decide(1300 + REFRESH, Some(known), None, &T).1.triplet;
        assert_eq!(w.map(|t| t.last_seen), Some(1300 + REFRESH));
    }

    #[test]
    fn retry_window_resets_the_wait() {
        let o = run(&[0, 2 * 86400 + 1, 2 * 86400 + 100], &T);
        assert_eq!(
            o[1],
            Outcome::Greylist {
                new: true,
                remaining: 180
            }
        );
        assert_eq!(
            o[2],
            Outcome::Greylist {
                new: false,
                remaining: 81
            }
        );
    }

    #[test]
    fn future_first_seen_is_clamped() {
        let trip = Triplet {
            first_seen: 10_000,
            last_seen: 10_000,
            confirmed: false,
        };
        let (o, _) = decide(500, Some(trip), None, &T);
        assert_eq!(
            o,
            Outcome::Greylist {
                new: false,
                remaining: 180
            }
        );
    }

    #[test]
    fn auto_whitelist_after_five_passes_an_hour_apart() {
        // The client passes one triplet, then comes back each hour with a fresh one.
        let mut awl = None;
        let mut seen = Vec::new();
        for i in 0..7i64 {
            let now = i * 3600 + 200;
            let old = Triplet {
                first_seen: now - 200,
                last_seen: now - 200,
                confirmed: false,
            };
            let (o, w) = decide(now, Some(old), awl, &T);
            awl = w.awl.or(awl);
            seen.push((o, w.newly_whitelisted));
        }
        assert!(
            seen[..5]
                .iter()
                .all(|(o, _)| matches!(o, Outcome::Pass { .. }))
        );
        assert!(seen[4].1, "the fifth pass whitelists");
        assert_eq!(seen[5].0, Outcome::AwlPass);
        // Passes within the hour do not count.
        let o = run(&[0, 200, 210, 220, 230, 240, 250], &T);
        assert!(o.iter().all(|o| *o != Outcome::AwlPass));
        // Disabled, and expired after max_age.
        let off = Timing {
            awl_threshold: 0,
            ..T
        };
        let (_, w) = decide(10, None, None, &off);
        assert_eq!(w.awl, None);
        let old = Awl {
            count: 9,
            last_seen: 0,
        };
        let (o, _) = decide(T.max_age + 1, None, Some(old), &T);
        assert!(matches!(o, Outcome::Greylist { .. }));
    }

    #[test]
    fn zero_delay_passes_at_once() {
        let o = run(&[5], &Timing { delay: 0, ..T });
        assert_eq!(o[0], Outcome::Pass { delayed: Some(0) });
    }
}
