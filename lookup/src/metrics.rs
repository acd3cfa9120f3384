//! What miab-lookup counts: Postfix's lookups by map and answer, and how long each took.
//! Labels are our four map names (or `unknown` for a request that named none of them) and
//! the four socketmap answers; never a key.

use crate::handler::Map;
use crate::proto::Reply;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use std::sync::LazyLock;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Answer {
    found,
    notfound,
    temp,
    perm,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct QueryLabel {
    pub map: &'static str,
    pub answer: Answer,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MapLabel {
    pub map: &'static str,
}

#[derive(Debug)]
struct Figures {
    queries: Family<QueryLabel, Counter>,
    seconds: Family<MapLabel, Histogram, fn() -> Histogram>,
}

fn latency() -> Histogram {
    // 10 µs to about 0.3 s: a snapshot lookup to a rebuild under way.
    Histogram::new(exponential_buckets(0.00001, 2.0, 16))
}

fn figures() -> &'static Figures {
    static F: LazyLock<Figures> = LazyLock::new(|| {
        let f = Figures {
            queries: Family::default(),
            seconds: Family::new_with_constructor(latency),
        };
        daemon::metrics::register(
            "lookup_queries",
            "Postfix's socketmap lookups by map and answer",
            f.queries.clone(),
        );
        daemon::metrics::register(
            "lookup_seconds",
            "Time to answer one lookup, by map",
            f.seconds.clone(),
        );
        f
    });
    &F
}

/// Counts one answer to a lookup in `map` (`None`: a request naming no map of ours).
pub fn answered(map: Option<Map>, reply: &Reply, took: Duration) {
    let map = map.map_or("unknown", Map::name);
    let answer = match reply {
        Reply::Ok(v) if !v.is_empty() => Answer::found,
        Reply::Ok(_) | Reply::NotFound => Answer::notfound,
        Reply::Temp(_) => Answer::temp,
        Reply::Perm(_) => Answer::perm,
    };
    let f = figures();
    f.queries.get_or_create(&QueryLabel { map, answer }).inc();
    f.seconds
        .get_or_create(&MapLabel { map })
        .observe(took.as_secs_f64());
}
