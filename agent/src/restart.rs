//! Restart policy: what happens after an instance's process exits on its own, and how long the
//! link waits before reconnecting.
//!
//! Pure functions of the spec's settings, a small crash history and the times the caller passes
//! in (a `Duration` since any fixed origin): no clocks, no randomness (the link adds its jitter
//! itself), no tokio.

// Pure: no wall clock, random ids, environment or hash order (see clippy.toml).
#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

use std::collections::VecDeque;
use std::time::Duration;

use pmcluster_spec::AppSpec;
use pmcluster_spec::supervise::RESTART_ADVICE;

/// How the supervisor says a process ended with exit code 0.
pub const CLEAN_EXIT: &str = "exited with code 0";

/// Extra delay of the second unstable exit in a row; it doubles with every further one, up to
/// the app's `restart_backoff_max`.
pub const CRASH_BACKOFF_BASE: Duration = Duration::from_millis(100);

/// `base * 2^step`, capped at `cap` (and never overflowing).
pub fn doubling(base: Duration, step: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(step.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(cap, |d| d.min(cap))
}

/// The restart settings of one app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub autorestart: bool,
    pub restart_delay: Duration,
    /// An exit sooner than this after the start is unstable.
    pub min_uptime: Duration,
    /// Unstable exits allowed within `window` before the instance is errored; 0: never.
    pub max_restarts: u32,
    pub window: Duration,
    pub backoff_max: Duration,
}

impl Policy {
    pub fn of(spec: &AppSpec) -> Policy {
        let s = &spec.supervision;
        Policy {
            autorestart: spec.autorestart,
            restart_delay: spec.restart_delay,
            min_uptime: s.min_uptime,
            max_restarts: s.max_restarts,
            window: s.restart_window,
            backoff_max: s.restart_backoff_max,
        }
    }
}

/// What the policy remembers of one instance's recent exits. Reset by a user's start or restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Crashes {
    /// Unstable exits in a row (the backoff step).
    pub streak: u32,
    /// When the unstable exits within the window happened, oldest first, on a clock that
    /// stands still while the agent waits to restart (see `waited`).
    pub unstable: VecDeque<Duration>,
    /// How long this streak's restarts were held back (restart delay and backoff). The window
    /// leaves that time out: with the default backoff (doubling to 15 s) no 16 crashes ever fit
    /// in a minute of wall time, so `max_restarts` within `restart_window` of wall time could
    /// never stop a crash loop.
    pub waited: Duration,
}

/// What to do after an exit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start again after `delay`.
    Restart { delay: Duration },
    /// Leave it down and report it ERRORED with this message, until a user restarts it.
    GiveUp { message: String },
    /// Leave it down and report it EXITED (autorestart is off).
    Exited { message: String },
}

/// Who the instance is, for messages that tell the user what to type.
#[derive(Clone, Copy, Debug)]
pub struct Named<'a> {
    pub app: &'a str,
    pub index: u32,
}

/// Decides after an exit the instance did on its own (or a start that failed the listen timeout,
/// passed as an unstable exit). `now` is the time of the exit, `uptime` how long the process ran,
/// `how` says how it ended ("exited with code 1", "killed by SIGKILL").
pub fn on_exit(
    policy: &Policy,
    crashes: &mut Crashes,
    now: Duration,
    uptime: Duration,
    how: &str,
    who: Named<'_>,
) -> Decision {
    if !policy.autorestart {
        return Decision::Exited {
            message: format!("{how}; autorestart is off"),
        };
    }
    if uptime >= policy.min_uptime {
        // It ran long enough: whatever happened before is forgotten.
        *crashes = Crashes::default();
        return Decision::Restart {
            delay: policy.restart_delay,
        };
    }
    crashes.streak = crashes.streak.saturating_add(1);
    let at = now.saturating_sub(crashes.waited);
    crashes.unstable.push_back(at);
    while crashes
        .unstable
        .front()
        .is_some_and(|t| at.saturating_sub(*t) > policy.window)
    {
        crashes.unstable.pop_front();
    }
    let n = crashes.unstable.len();
    if policy.max_restarts > 0 && n > policy.max_restarts as usize {
        // A program that ends cleanly at once is most likely a job, not a crash (a trial's
        // one-shot script read "crashed 16 times ... exited with code 0").
        let (what, job) = match how == CLEAN_EXIT {
            true => ("ended", "; for a job that ends, set autorestart: false"),
            false => ("crashed", ""),
        };
        return Decision::GiveUp {
            message: format!(
                "{what} {n} times within {} of running (last: {how}{job}){RESTART_ADVICE}: \
                 pmcluster restart {} --instance {}",
                human(policy.window),
                who.app,
                who.index
            ),
        };
    }
    let delay = policy
        .restart_delay
        .saturating_add(backoff(crashes.streak, policy.backoff_max));
    crashes.waited = crashes.waited.saturating_add(delay);
    Decision::Restart { delay }
}

/// Before [`on_exit`] for a start that never became ready (the listen timeout or the health
/// check's): the time it `ran` waiting is left out of the window, like the restart waits, or an
/// app that never listens (30 s a try by default) could never reach `max_restarts` within a
/// minute and would be restarted for ever.
pub fn never_ready(crashes: &mut Crashes, ran: Duration) {
    crashes.waited = crashes.waited.saturating_add(ran);
}

/// Extra delay for the `streak`-th unstable exit in a row: none for the first (so a `kill -9`
/// or a one-off crash comes back at once), then 100 ms, 200 ms, ... up to `cap`.
pub fn backoff(streak: u32, cap: Duration) -> Duration {
    if streak <= 1 {
        Duration::ZERO
    } else {
        doubling(CRASH_BACKOFF_BASE, streak - 2, cap)
    }
}

/// Delay before retrying a start that failed before any process ran (program not found, port
/// taken): the same doubling, so a broken setup does not spin.
pub fn retry_delay(attempt: u32, restart_delay: Duration, cap: Duration) -> Duration {
    restart_delay.saturating_add(backoff(attempt.saturating_add(1), cap))
}

/// When a restart comes, for the instance's message: "in 3.2s" for a short wait, else the time
/// of day in UTC ("at 06:12:40 UTC, 1h after it ended"), since the message is read long after
/// it was written and a plain "in 1h" would never count down.
pub fn restart_when(delay: Duration, ended: chrono::DateTime<chrono::Utc>) -> String {
    if delay < Duration::from_secs(10) {
        return format!("in {}", human(delay));
    }
    let at = chrono::TimeDelta::from_std(delay)
        .ok()
        .and_then(|d| ended.checked_add_signed(d));
    match at {
        Some(at) if delay < Duration::from_secs(20 * 3600) => {
            format!(
                "at {} UTC, {} after it ended",
                at.format("%H:%M:%S"),
                human(delay)
            )
        }
        Some(at) => format!(
            "at {} UTC, {} after it ended",
            at.format("%Y-%m-%d %H:%M:%S"),
            human(delay)
        ),
        None => format!("in {}", human(delay)),
    }
}

/// "60s", "1m30s", "250ms": short, for messages.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    if !ms.is_multiple_of(1000) && ms < 10_000 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let s = d.as_secs();
    if s < 100 {
        return format!("{s}s");
    }
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn policy() -> Policy {
        Policy {
            autorestart: true,
            restart_delay: ms(0),
            min_uptime: ms(1000),
            max_restarts: 3,
            window: ms(10_000),
            backoff_max: ms(1000),
        }
    }

    const WHO: Named<'static> = Named {
        app: "web",
        index: 2,
    };

    #[test]
    fn doubling_caps() {
        let cases = [
            (0, ms(100)),
            (1, ms(200)),
            (5, ms(3200)),
            (6, ms(5000)),
            (40, ms(5000)),
            (u32::MAX, ms(5000)),
        ];
        for (step, want) in cases {
            assert_eq!(doubling(ms(100), step, ms(5000)), want, "step {step}");
        }
    }

    /// Runs exits `(at, uptime)` through a fresh history; renders each decision on one line.
    fn run(policy: &Policy, exits: &[(u64, u64)]) -> Vec<String> {
        let mut crashes = Crashes::default();
        exits
            .iter()
            .map(|(at, up)| {
                match on_exit(
                    policy,
                    &mut crashes,
                    ms(*at),
                    ms(*up),
                    "exited with code 1",
                    WHO,
                ) {
                    Decision::Restart { delay } => format!("restart in {}", human(delay)),
                    Decision::GiveUp { message } => format!("give up: {message}"),
                    Decision::Exited { message } => format!("exited: {message}"),
                }
            })
            .collect()
    }

    #[test]
    fn decisions() {
        let p = policy();
        type Case = (Policy, &'static [(u64, u64)], &'static [&'static str]);
        let cases: Vec<Case> = vec![
            // Stable exits restart after restart_delay alone, forever.
            (
                p.clone(),
                &[(5000, 5000), (9000, 4000), (20_000, 1000)],
                &["restart in 0ms"; 3],
            ),
            // Unstable exits: at once, then 100 ms doubling, capped; the fourth within the window
            // is one more than max_restarts allows.
            (
                p.clone(),
                &[(100, 100), (200, 50), (400, 50), (800, 50)],
                &[
                    "restart in 0ms",
                    "restart in 100ms",
                    "restart in 200ms",
                    "give up: crashed 4 times within 10s of running (last: exited with code 1); restart it \
                     with: pmcluster restart web --instance 2",
                ],
            ),
            // Spread over more than the window: old crashes fall out, but the streak keeps the
            // backoff growing until a stable run.
            (
                p.clone(),
                &[
                    (0, 10),
                    (6000, 10),
                    (12_000, 10),
                    (18_000, 10),
                    (30_000, 5000),
                    (31_000, 10),
                ],
                &[
                    "restart in 0ms",
                    "restart in 100ms",
                    "restart in 200ms",
                    "restart in 400ms",
                    "restart in 0ms",
                    "restart in 0ms",
                ],
            ),
            // max_restarts 0: never give up; the backoff stops at its cap.
            (
                Policy {
                    max_restarts: 0,
                    backoff_max: ms(250),
                    ..p.clone()
                },
                &[(0, 0), (1, 0), (2, 0), (3, 0), (4, 0), (5, 0)],
                &[
                    "restart in 0ms",
                    "restart in 100ms",
                    "restart in 200ms",
                    "restart in 250ms",
                    "restart in 250ms",
                    "restart in 250ms",
                ],
            ),
            // restart_delay comes on top of the backoff.
            (
                Policy {
                    restart_delay: ms(500),
                    ..p.clone()
                },
                &[(0, 0), (1, 0)],
                &["restart in 500ms", "restart in 600ms"],
            ),
            // autorestart off: exited, whatever the uptime.
            (
                Policy {
                    autorestart: false,
                    ..p.clone()
                },
                &[(0, 0), (0, 99_999)],
                &["exited: exited with code 1; autorestart is off"; 2],
            ),
        ];
        for (policy, exits, want) in cases {
            assert_eq!(run(&policy, exits), want, "{policy:?} {exits:?}");
        }
    }

    /// A crash loop under the default settings (15 unstable restarts within a minute, a backoff
    /// doubling to 15 s) ends errored: the waits do not count toward the window, or the 16th
    /// crash would come about two minutes in and never within one.
    #[test]
    fn a_crash_loop_with_the_default_backoff_ends_errored() {
        let defaults = pmcluster_spec::supervise::Supervision::default();
        let policy = Policy {
            autorestart: true,
            restart_delay: ms(0),
            min_uptime: defaults.min_uptime,
            max_restarts: defaults.max_restarts,
            window: defaults.restart_window,
            backoff_max: defaults.restart_backoff_max,
        };
        let mut crashes = Crashes::default();
        let (mut now, uptime) = (ms(0), ms(50));
        let mut exits = 0;
        let gave_up = loop {
            exits += 1;
            now += uptime;
            match on_exit(
                &policy,
                &mut crashes,
                now,
                uptime,
                "exited with code 1",
                WHO,
            ) {
                Decision::Restart { delay } => now += delay,
                Decision::GiveUp { .. } => break Some(now),
                Decision::Exited { .. } => break None,
            }
            if exits > 100 {
                break None;
            }
        };
        assert_eq!(exits, defaults.max_restarts + 1);
        // Its restarts were held back for most of the two minutes.
        assert!(gave_up.is_some_and(|t| t > ms(100_000)), "{gave_up:?}");
    }

    #[test]
    fn start_retries_back_off() {
        let cap = ms(15_000);
        let got: Vec<Duration> = (0..8).map(|a| retry_delay(a, ms(0), cap)).collect();
        assert_eq!(
            got,
            [
                ms(0),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(6400)
            ]
        );
        assert_eq!(retry_delay(u32::MAX, ms(10), cap), ms(15_010));
    }

    /// Starts that wait out a 30 s listen timeout each, with the backoff between them, still
    /// reach `max_restarts` within the window: it counts neither the waits nor the tries.
    #[test]
    fn starts_that_never_get_ready_give_up() {
        let p = policy();
        let mut crashes = Crashes::default();
        let mut now = ms(0);
        let mut said = Vec::new();
        for _ in 0..4 {
            now += ms(30_000);
            never_ready(&mut crashes, ms(30_000));
            let how = "not listening on port 3000 within 30s";
            match on_exit(&p, &mut crashes, now, ms(0), how, WHO) {
                Decision::Restart { delay } => {
                    now += delay;
                    said.push(format!("restart in {}", human(delay)));
                }
                other => said.push(format!("{other:?}")),
            }
        }
        assert_eq!(
            said[..3],
            ["restart in 0ms", "restart in 100ms", "restart in 200ms"]
        );
        assert!(said[3].starts_with("GiveUp"), "{said:?}");
        assert!(
            said[3].contains("(last: not listening on port 3000 within 30s)"),
            "{said:?}"
        );
    }

    /// A program that keeps ending cleanly is said to end, with the way to run a job.
    #[test]
    fn a_clean_exit_loop_reads_as_a_job() {
        let p = policy();
        let mut crashes = Crashes::default();
        let said: Vec<Decision> = (1..=4)
            .map(|n| on_exit(&p, &mut crashes, ms(n * 10), ms(5), CLEAN_EXIT, WHO))
            .collect();
        let Decision::GiveUp { message } = &said[3] else {
            panic!("{said:?}");
        };
        assert!(
            message.starts_with(
                "ended 4 times within 10s of running (last: exited with code 0; for a job that \
                 ends, set autorestart: false)"
            ),
            "{message}"
        );
    }

    #[test]
    fn restart_times() {
        let ended = chrono::DateTime::from_timestamp(1_700_000_000, 0).expect("a valid time");
        let cases = [
            (ms(0), "in 0ms"),
            (ms(3_200), "in 3.2s"),
            (ms(9_500), "in 9.5s"),
            (ms(10_000), "at 22:13:30 UTC, 10s after it ended"),
            (ms(3_600_000), "at 23:13:20 UTC, 1h after it ended"),
            (
                ms(48 * 3_600_000),
                "at 2023-11-16 22:13:20 UTC, 48h after it ended",
            ),
        ];
        for (d, want) in cases {
            assert_eq!(restart_when(d, ended), want, "{d:?}");
        }
    }

    #[test]
    fn human_durations() {
        let cases = [
            (ms(250), "250ms"),
            (ms(1500), "1.5s"),
            (ms(60_000), "60s"),
            (ms(59_000), "59s"),
            (ms(90_000), "90s"),
            (ms(150_000), "2m30s"),
            (ms(120_000), "2m"),
            (ms(3_600_000), "1h"),
            (ms(5_400_000), "1h30m"),
        ];
        for (d, want) in cases {
            assert_eq!(human(d), want, "{d:?}");
        }
    }
}
