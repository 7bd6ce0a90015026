//! Business hours: when `StartEngagement` is allowed, and when it next opens.
//!
//! Windows are written in local time of an IANA zone so that opening hours
//! follow daylight-saving changes the way the people staffing them do.

use std::collections::HashSet;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::config::{BusinessHoursConfig, ConfigError};

/// Days searched ahead for the next opening (covers a long closed period).
const SEARCH_DAYS: i64 = 400;

#[derive(Debug, Clone)]
pub(crate) struct BusinessHours {
    tz: Tz,
    windows: Vec<Window>,
    closed: HashSet<NaiveDate>,
}

#[derive(Debug, Clone)]
struct Window {
    /// Indexed by `Weekday::num_days_from_monday`: the day a window starts on.
    days: [bool; 7],
    /// Minutes after local midnight.
    from: u32,
    /// Minutes after local midnight, 1..=1440; `to <= from` runs past midnight.
    to: u32,
}

impl BusinessHours {
    pub(crate) fn from_config(config: &BusinessHoursConfig) -> Result<Self, ConfigError> {
        let err = ConfigError::BusinessHours;
        let tz: Tz = config
            .timezone
            .parse()
            .map_err(|_| err(format!("unknown time zone {:?}", config.timezone)))?;
        if config.open.is_empty() {
            return Err(err("`open` needs at least one window".into()));
        }
        let windows = config
            .open
            .iter()
            .map(|w| {
                let from = parse_minutes(&w.from)
                    .ok_or_else(|| err(format!("bad time {:?} (expected HH:MM)", w.from)))?;
                let to = parse_minutes(&w.to)
                    .ok_or_else(|| err(format!("bad time {:?} (expected HH:MM)", w.to)))?;
                if from >= 24 * 60 || to == 0 || from == to {
                    return Err(err(format!("empty window {}-{}", w.from, w.to)));
                }
                Ok(Window {
                    days: parse_days(&w.days)
                        .ok_or_else(|| err(format!("bad days {:?} (e.g. mon-fri)", w.days)))?,
                    from,
                    to,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let closed = config
            .closed_dates
            .iter()
            .map(|d| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .map_err(|_| err(format!("bad date {d:?} (expected YYYY-MM-DD)")))
            })
            .collect::<Result<_, _>>()?;
        Ok(BusinessHours {
            tz,
            windows,
            closed,
        })
    }

    /// `Ok(())` when open at `now`, otherwise the next opening instant
    /// (`None` when there is none within a year).
    pub(crate) fn check(&self, now: DateTime<Utc>) -> Result<(), Option<DateTime<Utc>>> {
        if self.is_open(now) {
            Ok(())
        } else {
            Err(self.next_opening(now))
        }
    }

    pub(crate) fn is_open(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.tz);
        let today = local.date_naive();
        let minute = local.hour() * 60 + local.minute();
        let yesterday = today.pred_opt().unwrap_or(today);
        self.windows.iter().any(|w| {
            let overnight = w.to <= w.from;
            let today_open = w.runs_on(today) && !self.closed.contains(&today);
            let started_yesterday = overnight
                && w.runs_on(yesterday)
                && !self.closed.contains(&yesterday)
                && minute < w.to;
            (today_open && minute >= w.from && (overnight || minute < w.to)) || started_yesterday
        })
    }

    fn next_opening(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let today = now.with_timezone(&self.tz).date_naive();
        (0..SEARCH_DAYS)
            .filter_map(|offset| today.checked_add_signed(Duration::days(offset)))
            .filter(|day| !self.closed.contains(day))
            .flat_map(|day| {
                self.windows
                    .iter()
                    .filter(move |w| w.runs_on(day))
                    .filter_map(move |w| self.local_to_utc(day, w.from))
            })
            .filter(|start| *start > now)
            .min_by_key(|start| *start)
    }

    /// A local wall-clock time as UTC; a time skipped by a DST change opens
    /// at the first instant after the gap.
    fn local_to_utc(&self, day: NaiveDate, minutes: u32) -> Option<DateTime<Utc>> {
        let time = NaiveTime::from_hms_opt(minutes / 60, minutes % 60, 0)?;
        let naive = day.and_time(time);
        (0..=2)
            .find_map(|hours| {
                self.tz
                    .from_local_datetime(&(naive + Duration::hours(hours)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc))
    }
}

impl Window {
    fn runs_on(&self, day: NaiveDate) -> bool {
        self.days[day.weekday().num_days_from_monday() as usize]
    }
}

fn parse_minutes(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

fn parse_days(text: &str) -> Option<[bool; 7]> {
    const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let day = |s: &str| NAMES.iter().position(|n| s.trim().eq_ignore_ascii_case(n));
    let mut days = [false; 7];
    let text = text.trim();
    if text.eq_ignore_ascii_case("daily") || text == "*" {
        return Some([true; 7]);
    }
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                let mut d = a;
                loop {
                    days[d] = true;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            None => days[day(part)?] = true,
        }
    }
    Some(days)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OpenWindow;

    fn hours(days: &str, from: &str, to: &str) -> BusinessHours {
        BusinessHours::from_config(&BusinessHoursConfig {
            timezone: "Europe/London".into(),
            open: vec![OpenWindow {
                days: days.into(),
                from: from.into(),
                to: to.into(),
            }],
            closed_dates: vec!["2026-12-25".into()],
        })
        .unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn weekday_window_in_winter_and_summer_time() {
        let h = hours("mon-fri", "09:00", "17:00");
        // Monday 2026-11-23, London = UTC in winter.
        assert!(h.is_open(utc("2026-11-23T09:00:00Z")));
        assert!(!h.is_open(utc("2026-11-23T17:00:00Z")));
        // Monday 2026-06-01, London = UTC+1: 08:30 UTC is 09:30 local.
        assert!(h.is_open(utc("2026-06-01T08:30:00Z")));
        assert!(!h.is_open(utc("2026-06-01T16:30:00Z")));
    }

    #[test]
    fn next_opening_skips_the_weekend_and_closed_dates() {
        let h = hours("mon-fri", "09:00", "17:00");
        // Saturday evening -> Monday 09:00.
        assert_eq!(
            h.check(utc("2026-11-21T18:00:00Z")),
            Err(Some(utc("2026-11-23T09:00:00Z")))
        );
        // Christmas (Friday) is closed -> Monday 28th.
        assert_eq!(
            h.check(utc("2026-12-24T18:00:00Z")),
            Err(Some(utc("2026-12-28T09:00:00Z")))
        );
        assert_eq!(h.check(utc("2026-11-23T10:00:00Z")), Ok(()));
    }

    #[test]
    fn overnight_windows_and_day_ranges_that_wrap() {
        let h = hours("fri-sun", "22:00", "06:00");
        // Friday 23:00 and Saturday 05:00 local (winter, = UTC) are open.
        assert!(h.is_open(utc("2026-11-27T23:00:00Z")));
        assert!(h.is_open(utc("2026-11-28T05:00:00Z")));
        // Monday 05:00 belongs to Sunday's window.
        assert!(h.is_open(utc("2026-11-30T05:00:00Z")));
        // Tuesday 05:00 does not.
        assert!(!h.is_open(utc("2026-12-01T05:00:00Z")));
    }

    #[test]
    fn bad_windows_are_refused() {
        let bad = |days: &str, from: &str, to: &str| {
            BusinessHours::from_config(&BusinessHoursConfig {
                timezone: "Europe/London".into(),
                open: vec![OpenWindow {
                    days: days.into(),
                    from: from.into(),
                    to: to.into(),
                }],
                closed_dates: vec![],
            })
            .is_err()
        };
        assert!(bad("mon-fry", "09:00", "17:00"));
        assert!(bad("mon", "9", "17:00"));
        assert!(bad("mon", "09:00", "09:00"));
        assert!(bad("mon", "25:00", "26:00"));
    }
}
