//! What both ends of the agent link count on about each other's timing.

use std::time::Duration;

/// The longest an agent waits between its tries to reach a coordinator, before its jitter (up to
/// a quarter more). A coordinator that starts or takes over gives every node at least
/// [`AGENT_RECONNECT_WITHIN`] to come back before its absence counts: an agent that has backed
/// off while no coordinator led (an etcd outage) re-dials only after such a wait.
pub const AGENT_RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The longest an agent waits for a coordinator to answer a new session: a coordinator whose
/// host is frozen still accepts connections (its kernel does) and never answers.
pub const AGENT_SESSION_SETUP: Duration = Duration::from_secs(10);

/// How long after a coordinator starts leading every agent has dialled it at least once: the
/// longest reconnect wait with its jitter, a round's wait on the other coordinator of a pair
/// (frozen: the session setup; gone: the 3 s connect timeout), and two seconds for the dial
/// and the registration.
pub const AGENT_RECONNECT_WITHIN: Duration = Duration::from_millis(
    (AGENT_RECONNECT_MAX.as_millis() * 5 / 4 + AGENT_SESSION_SETUP.as_millis() + 2000) as u64,
);
