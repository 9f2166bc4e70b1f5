//! The coordinator's limits as policy: caps on apps and instances per app, the token bucket of
//! the write rate, and which gRPC methods count as writes or streams. Time is an input (the
//! layer in `throttle` feeds it the clock), so every rule here is a table test.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::{AppRecord, Batch};

/// `--max-apps` when not given.
pub const DEFAULT_MAX_APPS: u32 = 1000;

/// `--max-instances-per-app` when not given. At this count every instance of an app whose spec
/// encodes to under 12 KiB fits in one node's desired set (`limits::DESIRED_SET_BUDGET`), so an
/// app at the cap is never refused for its weight on a single node unless its spec is large.
pub const DEFAULT_MAX_INSTANCES_PER_APP: u32 = 1000;

/// `--write-rate` and `--write-burst` when not given: a script applying a few hundred apps in a
/// loop goes through, one that writes without pause is slowed to what the store commits easily.
pub const DEFAULT_WRITE_RATE: u32 = 100;
pub const DEFAULT_WRITE_BURST: u32 = 200;

/// How many apps, and instances of one app, the coordinator accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub max_apps: u32,
    pub max_instances_per_app: u32,
}

impl Default for Caps {
    fn default() -> Caps {
        Caps {
            max_apps: DEFAULT_MAX_APPS,
            max_instances_per_app: DEFAULT_MAX_INSTANCES_PER_APP,
        }
    }
}

/// Refuses `batch` when it creates an app past `max_apps`, or asks an app for more instances
/// than `max_instances_per_app` (its count, or its autoscaling maximum). Only growth is refused:
/// after an operator lowers a cap, apps already over it can still be updated, scaled down or
/// deleted. Counts derived from the nodes (`instances: max`) are capped by the reconciler.
pub fn check_caps(
    caps: &Caps,
    stored: &BTreeMap<String, AppRecord>,
    batch: &Batch,
) -> Result<(), String> {
    let cap = caps.max_instances_per_app;
    for app in &batch.put_apps {
        let spec = &app.spec;
        let old = stored.get(&spec.name).map(|a| &a.spec);
        let old_count = old.map_or(0, |s| if s.instances_max { 0 } else { s.instances });
        if !spec.instances_max && spec.instances > cap && spec.instances > old_count {
            return Err(format!(
                "instances: {} is over the limit of {cap} per app (--max-instances-per-app)",
                spec.instances
            ));
        }
        if let Some(policy) = &spec.autoscale {
            let old_max = old.and_then(|s| s.autoscale.as_ref()).map_or(0, |p| p.max);
            if policy.max > cap && policy.max > old_max {
                return Err(format!(
                    "autoscale.max: {} is over the limit of {cap} per app \
                     (--max-instances-per-app)",
                    policy.max
                ));
            }
        }
    }
    let deleted = batch
        .del_apps
        .iter()
        .filter(|name| stored.contains_key(*name))
        .count();
    let mut created: Vec<&str> = batch
        .put_apps
        .iter()
        .map(|a| a.spec.name.as_str())
        .filter(|name| !stored.contains_key(*name) && !batch.del_apps.iter().any(|d| d == name))
        .collect();
    created.sort_unstable();
    created.dedup();
    let Some(first) = created.first() else {
        return Ok(());
    };
    let after = (stored.len() - deleted).saturating_add(created.len());
    if after > caps.max_apps as usize {
        return Err(format!(
            "apps: creating {first:?} would make {after} apps, over the limit of {} \
             (--max-apps); delete an app first, or raise --max-apps",
            caps.max_apps
        ));
    }
    Ok(())
}

/// The count the autoscaler may go to from `current` when its policy says `to`: growth stops at
/// `max_instances_per_app` (a policy set before the cap was lowered may reach above it), a
/// decrease is always allowed. `None`: hold, already at or over the cap.
pub fn autoscale_target(caps: &Caps, current: u32, to: u32) -> Option<u32> {
    if to <= current {
        return Some(to);
    }
    let capped = to.min(caps.max_instances_per_app);
    (capped > current).then_some(capped)
}

/// `--write-rate` writes per second on average, up to `--write-burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteRate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Default for WriteRate {
    fn default() -> WriteRate {
        WriteRate {
            per_sec: DEFAULT_WRITE_RATE,
            burst: DEFAULT_WRITE_BURST,
        }
    }
}

/// Fractions of a token: one token is this many units, and a rate of `per_sec` adds `per_sec`
/// units per nanosecond, so refills are exact integers at any rate.
const UNITS_PER_TOKEN: u128 = 1_000_000_000;

/// A token bucket: starts full (`burst` tokens), refills at `per_sec`, each write takes one.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: WriteRate,
    units: u128,
    /// The time of the last refill, as the caller's clock gives it.
    at: Duration,
}

impl TokenBucket {
    /// A full bucket at time `now`.
    pub fn new(rate: WriteRate, now: Duration) -> TokenBucket {
        TokenBucket {
            rate,
            units: u128::from(rate.burst) * UNITS_PER_TOKEN,
            at: now,
        }
    }

    pub fn rate(&self) -> WriteRate {
        self.rate
    }

    /// Takes one token at time `now`, or says how long until one is there. A clock that goes
    /// back refills nothing.
    pub fn take(&mut self, now: Duration) -> Result<(), Duration> {
        let full = u128::from(self.rate.burst) * UNITS_PER_TOKEN;
        let elapsed = now.saturating_sub(self.at).as_nanos();
        let added = elapsed.saturating_mul(u128::from(self.rate.per_sec));
        self.units = self.units.saturating_add(added).min(full);
        self.at = self.at.max(now);
        if self.units >= UNITS_PER_TOKEN {
            self.units -= UNITS_PER_TOKEN;
            return Ok(());
        }
        let missing = UNITS_PER_TOKEN - self.units;
        let per_sec = u128::from(self.rate.per_sec.max(1));
        let nanos = missing.div_ceil(per_sec);
        Err(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }
}

/// The refusal of a write the bucket had no token for.
pub fn rate_limited(rate: WriteRate, retry_in: Duration) -> String {
    // Rounded up: a client that waits as long as told finds a token.
    let ms = retry_in.as_nanos().div_ceil(1_000_000).max(1);
    format!(
        "write rate limit (--write-rate {}/s, --write-burst {}) reached; retry in {ms} ms",
        rate.per_sec, rate.burst
    )
}

/// What a gRPC method is to the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// Changes the cluster's state: rate limited, and held to the request timeout.
    Write,
    /// A unary call that changes nothing: held to the request timeout only.
    Read,
    /// A long-lived stream (logs, events, endpoints, an agent session, a health watch): neither.
    Stream,
}

/// The public API's service, as it appears in a method's path.
const CLUSTER: &str = "/pmcluster.v1.Cluster/";

/// What the method at `path` (`/package.Service/Method`) is. A `Cluster` method that neither
/// reads (`Get`, `List`) nor streams (`Stream`, `Watch`) is a write, so a new command is limited
/// unless it is named as a read.
pub fn classify(path: &str) -> Call {
    let (service, method) = match path.rsplit_once('/') {
        Some((service, method)) => (service, method),
        None => ("", path),
    };
    let streams = method.starts_with("Stream")
        || method.starts_with("Watch")
        || service == "/pmcluster.v1.AgentLink"
        || method == "ServerReflectionInfo";
    if streams {
        return Call::Stream;
    }
    if path.starts_with(CLUSTER) && !method.starts_with("Get") && !method.starts_with("List") {
        return Call::Write;
    }
    Call::Read
}

#[cfg(test)]
mod tests {
    use super::*;
    use pmcluster_spec::AppSpec;
    use pmcluster_spec::autoscale::AutoscalePolicy;

    fn app(name: &str, instances: u32) -> AppRecord {
        let mut record = AppRecord::new(AppSpec::new(name, "sleep", &["600"]), 0);
        record.spec.instances = instances;
        record
    }

    fn stored(apps: &[(&str, u32)]) -> BTreeMap<String, AppRecord> {
        apps.iter()
            .map(|(n, i)| (n.to_string(), app(n, *i)))
            .collect()
    }

    fn autoscaled(name: &str, instances: u32, max: u32) -> AppRecord {
        let mut a = app(name, instances);
        a.spec.autoscale = Some(AutoscalePolicy::new(1, max, 50.0));
        a
    }

    #[test]
    fn caps_refuse_growth_past_the_limits_and_name_the_flag() {
        let caps = Caps {
            max_apps: 2,
            max_instances_per_app: 3,
        };
        let put = |apps: Vec<AppRecord>| Batch {
            put_apps: apps,
            ..Batch::default()
        };
        let full = stored(&[("a", 1), ("b", 1)]);
        let over = stored(&[("a", 5)]);
        // (what, stored apps, batch, the refusal's start or None)
        type Case<'a> = (&'a str, BTreeMap<String, AppRecord>, Batch, Option<&'a str>);
        let cases: Vec<Case<'_>> = vec![
            (
                "a new app below the cap",
                stored(&[("a", 1)]),
                put(vec![app("b", 3)]),
                None,
            ),
            (
                "a new app at the cap",
                full.clone(),
                put(vec![app("c", 1)]),
                Some("apps: creating \"c\" would make 3 apps, over the limit of 2 (--max-apps)"),
            ),
            (
                "an update at the cap",
                full.clone(),
                put(vec![app("a", 2)]),
                None,
            ),
            (
                "a new app in place of a deleted one",
                full.clone(),
                Batch {
                    del_apps: vec!["a".into()],
                    ..put(vec![app("c", 1)])
                },
                None,
            ),
            (
                "a scale past the cap",
                full.clone(),
                put(vec![app("a", 4)]),
                Some("instances: 4 is over the limit of 3 per app (--max-instances-per-app)"),
            ),
            (
                "a new app past the cap",
                BTreeMap::new(),
                put(vec![app("a", 5000)]),
                Some("instances: 5000 is over the limit of 3 per app"),
            ),
            (
                "a scale down while over a lowered cap",
                over.clone(),
                put(vec![app("a", 4)]),
                None,
            ),
            (
                "an update while over a lowered cap",
                over.clone(),
                put(vec![app("a", 5)]),
                None,
            ),
            (
                "growth while over a lowered cap",
                over,
                put(vec![app("a", 6)]),
                Some("instances: 6 is over"),
            ),
            (
                "an autoscaling maximum past the cap",
                full.clone(),
                put(vec![autoscaled("a", 1, 10)]),
                Some("autoscale.max: 10 is over the limit of 3 per app (--max-instances-per-app)"),
            ),
            (
                "an autoscaling maximum at the cap",
                full.clone(),
                put(vec![autoscaled("a", 1, 3)]),
                None,
            ),
            (
                "an unchanged autoscaling maximum over a lowered cap",
                [("a".to_string(), autoscaled("a", 1, 10))].into(),
                put(vec![autoscaled("a", 2, 10)]),
                None,
            ),
            (
                "instances: max is capped by the reconciler, not refused",
                full,
                put(vec![{
                    let mut a = app("a", 0);
                    a.spec.instances_max = true;
                    a
                }]),
                None,
            ),
        ];
        for (what, stored, batch, want) in cases {
            let got = check_caps(&caps, &stored, &batch);
            match (want, got) {
                (None, Ok(())) => {}
                (Some(want), Err(e)) => assert!(e.starts_with(want), "{what}: {e}"),
                (want, got) => panic!("{what}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_default_cap_fits_one_node_with_a_12_kib_spec() {
        let one = crate::limits::assignment_bytes(12 << 10);
        let all = one * DEFAULT_MAX_INSTANCES_PER_APP as usize;
        assert!(all <= crate::limits::DESIRED_SET_BUDGET, "{all}");
        const { assert!(DEFAULT_MAX_INSTANCES_PER_APP <= pmcluster_spec::app::MAX_INSTANCES) };
    }

    #[test]
    fn the_autoscaler_grows_only_to_the_cap() {
        let caps = Caps {
            max_apps: 1,
            max_instances_per_app: 5,
        };
        // (current, the policy's target, what it may go to)
        let cases = [
            (2, 4, Some(4)),
            (4, 8, Some(5)),
            (5, 6, None),
            (7, 9, None),
            (7, 6, Some(6)),
            (7, 2, Some(2)),
        ];
        for (current, to, want) in cases {
            assert_eq!(
                autoscale_target(&caps, current, to),
                want,
                "{current} -> {to}"
            );
        }
    }

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let rate = WriteRate {
            per_sec: 10,
            burst: 3,
        };
        // (time, taken, or how long until the next token)
        let steps: &[(Duration, Result<(), Duration>)] = &[
            (ms(0), Ok(())),
            (ms(0), Ok(())),
            (ms(0), Ok(())),
            (ms(0), Err(ms(100))),
            (ms(40), Err(ms(60))),
            (ms(100), Ok(())),
            (ms(150), Err(ms(50))),
            // Idle for long: refills to the burst, never above it.
            (ms(10_000), Ok(())),
            (ms(10_000), Ok(())),
            (ms(10_000), Ok(())),
            (ms(10_000), Err(ms(100))),
            // The clock going back refills nothing and costs nothing.
            (ms(9_000), Err(ms(100))),
            (ms(10_100), Ok(())),
        ];
        let mut bucket = TokenBucket::new(rate, ms(0));
        for (i, (now, want)) in steps.iter().enumerate() {
            assert_eq!(bucket.take(*now), *want, "step {i} at {now:?}");
        }
    }

    #[test]
    fn the_bucket_is_exact_at_high_rates_and_long_times() {
        let rate = WriteRate {
            per_sec: 1_000_000,
            burst: 1,
        };
        let mut bucket = TokenBucket::new(rate, ms(0));
        assert_eq!(bucket.take(ms(0)), Ok(()));
        assert_eq!(bucket.take(ms(0)), Err(Duration::from_micros(1)));
        assert_eq!(bucket.take(Duration::from_micros(1)), Ok(()));
        let far = Duration::from_secs(100 * 365 * 24 * 3600);
        assert_eq!(bucket.take(far), Ok(()));
        assert_eq!(bucket.take(far), Err(Duration::from_micros(1)));
    }

    #[test]
    fn the_refusal_names_both_flags() {
        let rate = WriteRate {
            per_sec: 5,
            burst: 10,
        };
        assert_eq!(
            rate_limited(rate, Duration::from_micros(1500)),
            "write rate limit (--write-rate 5/s, --write-burst 10) reached; retry in 2 ms"
        );
    }

    #[test]
    fn methods_are_writes_reads_or_streams() {
        let cases = [
            ("/pmcluster.v1.Cluster/ApplyApp", Call::Write),
            ("/pmcluster.v1.Cluster/Scale", Call::Write),
            ("/pmcluster.v1.Cluster/ForgetNode", Call::Write),
            ("/pmcluster.v1.Cluster/GetApp", Call::Read),
            ("/pmcluster.v1.Cluster/ListInstances", Call::Read),
            ("/pmcluster.v1.Cluster/StreamLogs", Call::Stream),
            ("/pmcluster.v1.Cluster/WatchEvents", Call::Stream),
            ("/pmcluster.v1.Cluster/WatchEndpoints", Call::Stream),
            ("/pmcluster.v1.AgentLink/Session", Call::Stream),
            ("/pmcluster.v1.Coordination/GetStatus", Call::Read),
            ("/grpc.health.v1.Health/Check", Call::Read),
            ("/grpc.health.v1.Health/Watch", Call::Stream),
            (
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                Call::Stream,
            ),
            ("/nonsense", Call::Read),
            ("", Call::Read),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path), want, "{path}");
        }
    }

    /// Every method of the API, as its descriptor says: a stream in either direction is a
    /// stream, and the writes are exactly the calls that change state. A new method fails here
    /// until it is added to the right list.
    #[test]
    fn every_api_method_is_classified() {
        use prost::Message;
        let set = prost_types::FileDescriptorSet::decode(pmcluster_proto::FILE_DESCRIPTOR_SET)
            .unwrap_or_default();
        let writes = [
            "ApplyApp",
            "DeleteApp",
            "Scale",
            "Start",
            "Stop",
            "Restart",
            "Signal",
            "SendMessage",
            "Disable",
            "Enable",
            "DrainNode",
            "UndrainNode",
            "AdoptNode",
            "ForgetNode",
            "SetAutoscale",
            "ControlRollout",
            "UndoRollout",
        ];
        let mut seen = 0;
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    let streams = method.client_streaming() || method.server_streaming();
                    let want = if streams {
                        Call::Stream
                    } else if path.starts_with(CLUSTER) && writes.contains(&method.name()) {
                        Call::Write
                    } else {
                        Call::Read
                    };
                    assert_eq!(classify(&path), want, "{path}");
                    seen += 1;
                }
            }
        }
        assert!(seen > writes.len(), "{seen} methods in the descriptor set");
    }
}
