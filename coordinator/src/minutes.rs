//! Requests per minute over the last hour, in memory, for the dashboard's charts: how many API
//! requests the HTTP listener answered each minute, their mean and largest latency. Reset when
//! the coordinator restarts (the Prometheus histograms are the durable-by-scrape record).

use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

/// Minutes kept.
const KEPT: usize = 60;

/// One minute of requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestMinute {
    /// Its start, ms since the epoch.
    pub minute: i64,
    /// Requests answered.
    pub requests: u64,
    /// Of them, OpenAI-compatible (`/v1/...`).
    pub openai: u64,
    /// Mean latency, ms.
    pub mean_ms: f64,
    /// Largest latency, ms.
    pub max_ms: f64,
}

/// The last hour of requests, a minute a slot.
#[derive(Debug, Default)]
pub struct PerMinute {
    slots: Mutex<VecDeque<RequestMinute>>,
}

impl PerMinute {
    /// Counts one request of `route` answered at `now_ms` after `took`.
    pub fn record(&self, now_ms: i64, route: &str, took: Duration) {
        let minute = now_ms / 60_000 * 60_000;
        let ms = took.as_secs_f64() * 1000.0;
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if slots.back().is_none_or(|s| s.minute != minute) {
            slots.push_back(RequestMinute {
                minute,
                ..RequestMinute::default()
            });
            while slots.len() > KEPT {
                slots.pop_front();
            }
        }
        let s = slots.back_mut().expect("a slot was just ensured");
        s.mean_ms = (s.mean_ms * s.requests as f64 + ms) / (s.requests + 1) as f64;
        s.requests += 1;
        s.openai += u64::from(route.starts_with("/v1/"));
        s.max_ms = s.max_ms.max(ms);
    }

    /// The minutes within the hour before `now_ms`, oldest first.
    pub fn snapshot(&self, now_ms: i64) -> Vec<RequestMinute> {
        let since = now_ms - KEPT as i64 * 60_000;
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.iter().filter(|s| s.minute > since).cloned().collect()
    }
}

/// Whether a route is a request the charts count: not the dashboard's own polls, the scrape
/// or health checks.
pub(crate) fn counted(route: &str) -> bool {
    !matches!(
        route,
        "/dashboard"
            | "/dashboard/data"
            | "/dashboard/series"
            | "/dashboard/events"
            | "/metrics"
            | "/health"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_minute_for_an_hour() {
        let m = PerMinute::default();
        let ms = Duration::from_millis;
        m.record(60_000, "/v1/chat/completions", ms(100));
        m.record(119_999, "/tasks", ms(300));
        m.record(120_000, "/tasks", ms(5));
        let got = m.snapshot(130_000);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].requests, got[0].openai), (2, 1));
        assert!((got[0].mean_ms - 200.0).abs() < 1e-9 && (got[0].max_ms - 300.0).abs() < 1e-9);
        assert_eq!(got[1].requests, 1);
        for minute in 3..70 {
            m.record(minute * 60_000, "/tasks", ms(1));
        }
        let kept = m.snapshot(69 * 60_000 + 1);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept.last().map(|s| s.minute), Some(69 * 60_000));
        assert!(counted("/v1/models") && !counted("/dashboard/data"));
    }
}
