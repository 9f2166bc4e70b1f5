//! What both ends of the agent link count on about each other's timing.

use std::time::Duration;

/// The longest an agent waits between its tries to reach a coordinator, before its jitter (up to
/// a quarter more). A coordinator that starts or takes over gives every node at least
/// [`AGENT_RECONNECT_WITHIN`] to come back before its absence counts: an agent that has backed
/// off while no coordinator led (an etcd outage) re-dials only after such a wait.
pub const AGENT_RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How long after a coordinator starts leading every agent has dialled it at least once: the
/// longest reconnect wait with its jitter, and a second for the dial and the registration.
pub const AGENT_RECONNECT_WITHIN: Duration =
    Duration::from_millis(AGENT_RECONNECT_MAX.as_millis() as u64 * 5 / 4 + 1000);
