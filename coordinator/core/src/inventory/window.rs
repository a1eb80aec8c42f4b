//! `window` of an `[[environment]]` (SPEC §4): the days and hours its nodes may be upgraded in, in
//! the environment's own time zone; whether the window is open at a time, when it closes and when it
//! next opens. Validated here from the file's `window = { … }`.

use std::fmt;

use serde::Deserialize;
use toml::Spanned;

use super::Checker;

#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub days: Vec<jiff::civil::Weekday>,
    pub start: jiff::civil::Time,
    pub end: jiff::civil::Time,
    pub tz_name: String,
    pub tz: jiff::tz::TimeZone,
}

impl fmt::Display for Window {
    /// As written in the inventory: `sat,sun 22:00-04:00 Europe/Berlin`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use jiff::civil::Weekday;
        let days: Vec<&str> = self
            .days
            .iter()
            .map(|d| match d {
                Weekday::Monday => "mon",
                Weekday::Tuesday => "tue",
                Weekday::Wednesday => "wed",
                Weekday::Thursday => "thu",
                Weekday::Friday => "fri",
                Weekday::Saturday => "sat",
                Weekday::Sunday => "sun",
            })
            .collect();
        let time = |t: &jiff::civil::Time| {
            if t.second() == 0 {
                t.strftime("%H:%M").to_string()
            } else {
                t.strftime("%H:%M:%S").to_string()
            }
        };
        write!(
            f,
            "{} {}-{} {}",
            days.join(","),
            time(&self.start),
            time(&self.end),
            self.tz_name
        )
    }
}

// Equal windows have equal days, times and zone names; the zone follows from its name.
impl Eq for Window {}

impl Window {
    /// The openings of the window around `at` (Unix ms): `[open, close)` pairs in time order, from the
    /// day before `at` to a week after. An opening belongs to the day it starts on; when `end` is not
    /// after `start` it closes the next day. Wall times a DST change skips or repeats resolve to the
    /// later instant, as Windows' scheduler does.
    fn openings(&self, at: i64) -> Vec<(i64, i64)> {
        let Ok(ts) = jiff::Timestamp::from_millisecond(at) else {
            return Vec::new();
        };
        let today = ts.to_zoned(self.tz.clone()).date();
        let instant = |date: jiff::civil::Date, time: jiff::civil::Time| {
            date.to_datetime(time)
                .to_zoned(self.tz.clone())
                .ok()
                .map(|z| z.timestamp().as_millisecond())
        };
        let mut out = Vec::new();
        for offset in -1..=8i64 {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            if !self.days.contains(&day.weekday()) {
                continue;
            }
            let end_day = if self.end > self.start {
                Some(day)
            } else {
                day.tomorrow().ok()
            };
            if let (Some(open), Some(close)) = (
                instant(day, self.start),
                end_day.and_then(|d| instant(d, self.end)),
            ) && open < close
            {
                out.push((open, close));
            }
        }
        out
    }

    /// When the opening `at` is in closes, or `None` when the window is closed at `at`.
    pub fn closes_at(&self, at: i64) -> Option<i64> {
        self.openings(at)
            .into_iter()
            .filter(|&(open, close)| open <= at && at < close)
            .map(|(_, close)| close)
            .max()
    }

    pub fn is_open(&self, at: i64) -> bool {
        self.closes_at(at).is_some()
    }

    /// `at` when the window is open then, else when it next opens.
    pub fn next_open(&self, at: i64) -> Option<i64> {
        if self.is_open(at) {
            return Some(at);
        }
        self.openings(at)
            .into_iter()
            .map(|(open, _)| open)
            .filter(|&open| open > at)
            .min()
    }

    /// A time in the window's own zone, for messages: `Sat 2026-11-28 22:00 CET`.
    pub fn local(&self, at: i64) -> String {
        jiff::Timestamp::from_millisecond(at)
            .map(|ts| {
                ts.to_zoned(self.tz.clone())
                    .strftime("%a %Y-%m-%d %H:%M:%S %Z")
                    .to_string()
            })
            .unwrap_or_else(|_| at.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWindow {
    days: Vec<Spanned<String>>,
    start: Spanned<String>,
    end: Spanned<String>,
    tz: Spanned<String>,
}

impl Checker<'_> {
    pub(super) fn window(&mut self, spanned: &Spanned<RawWindow>, key: &str) -> Option<Window> {
        use jiff::civil::Weekday;
        let raw = spanned.get_ref();
        let mut days = Vec::new();
        let mut ok = true;
        if raw.days.is_empty() {
            self.problem(
                spanned,
                format!("{key}.days"),
                "no day listed: name at least one of mon, tue, wed, thu, fri, sat, sun",
            );
            ok = false;
        }
        for (i, day) in raw.days.iter().enumerate() {
            let parsed = match day.get_ref().to_ascii_lowercase().as_str() {
                "mon" => Some(Weekday::Monday),
                "tue" => Some(Weekday::Tuesday),
                "wed" => Some(Weekday::Wednesday),
                "thu" => Some(Weekday::Thursday),
                "fri" => Some(Weekday::Friday),
                "sat" => Some(Weekday::Saturday),
                "sun" => Some(Weekday::Sunday),
                _ => None,
            };
            match parsed {
                Some(d) if days.contains(&d) => {
                    self.problem(
                        day,
                        format!("{key}.days[{i}]"),
                        format!("{:?} is listed twice", day.get_ref()),
                    );
                    ok = false;
                }
                Some(d) => days.push(d),
                None => {
                    self.problem(
                        day,
                        format!("{key}.days[{i}]"),
                        format!(
                            "{:?} is not a day: use mon, tue, wed, thu, fri, sat or sun",
                            day.get_ref()
                        ),
                    );
                    ok = false;
                }
            }
        }
        let start = self.time_of_day(&raw.start, &format!("{key}.start"));
        let end = self.time_of_day(&raw.end, &format!("{key}.end"));
        if let (Some(s), Some(e)) = (start, end)
            && s == e
        {
            self.problem(
                &raw.end,
                format!("{key}.end"),
                "the window ends when it starts: it would be empty",
            );
            ok = false;
        }
        let tz_name = raw.tz.get_ref().trim().to_string();
        let tz = match jiff::tz::TimeZone::get(&tz_name) {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.problem(
                    &raw.tz,
                    format!("{key}.tz"),
                    format!("{tz_name:?} is not a known time zone: use an IANA name such as \"Europe/Berlin\" or \"UTC\""),
                );
                None
            }
        };
        if !ok {
            return None;
        }
        Some(Window {
            days,
            start: start?,
            end: end?,
            tz_name,
            tz: tz?,
        })
    }

    fn time_of_day(&mut self, raw: &Spanned<String>, key: &str) -> Option<jiff::civil::Time> {
        let text = raw.get_ref().trim();
        // HH:MM, or HH:MM:SS where a window must be exact to the second.
        let parts: Vec<&str> = text.split(':').collect();
        let parsed = (parts.len() == 2 || parts.len() == 3)
            .then_some(())
            .filter(|()| parts.iter().all(|p| p.len() == 2))
            .and_then(|()| {
                let n: Option<Vec<i8>> = parts.iter().map(|p| p.parse::<i8>().ok()).collect();
                let n = n?;
                jiff::civil::Time::new(n[0], n[1], n.get(2).copied().unwrap_or(0), 0).ok()
            });
        if parsed.is_none() {
            self.problem(
                raw,
                key,
                format!("{text:?} is not a time of day: write HH:MM, e.g. \"22:00\""),
            );
        }
        parsed
    }
}
