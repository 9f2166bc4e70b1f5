use super::*;

/// Every move off a lost node names the node and when it went down, so that its event can say
/// `moved from a to b: node a down for 31.0s`; the core reads no clock for it.
#[test]
fn a_lost_nodes_moves_say_since_when() {
    // One per index, each placed where it fits.
    check(
        "web=3",
        "web/0@a web/1@a web/2@b",
        "a down=200; b; c",
        1500,
        "+web/0@c +web/1@b -1 -2 moved(1 a>c nodelost down@200) moved(2 a>b nodelost down@200)",
    );
    // Not lost yet: no move, and no word of one.
    check("web=1", "web/0@a", "a down=200; b", 1199, "followup@1200");
    // A node that is gone (forgotten): lost at once, with no time to speak of.
    check(
        "web=1",
        "web/0@gone",
        "b",
        0,
        "+web/0@b -1 moved(1 gone>b nodelost gone)",
    );
    // No node takes it: the move says so (an empty `to`), beside the app's pending reason.
    check(
        "web=2 max=1",
        "web/0@a web/1@b",
        "a down=0; b",
        5000,
        "+web/0@- -1 moved(1 a> nodelost down@0) pending(web: 1 pending: no ready node below 1 instance of the app (2 nodes: 1 not ready, 1 at the per-node limit))",
    );
    // A stopped one moves stopped, for the same reason.
    check(
        "web=1",
        "web/0@a#",
        "a down=0; b",
        5000,
        "+web/0@b(stopped) -1 moved(1 a>b nodelost down@0)",
    );
    // A finished job says that it is not run again, not where it was lost: one line per move.
    check_finished_job_moves("a down=0; b", 5000);
    // A stopped one on a draining node that is up just moves, as the drain said it would.
    check("web=1", "web/0@a#", "a drain; b", 0, "+web/0@b(stopped) -1");
}

#[test]
fn pending_reason_is_the_placers_without_the_count() {
    let mut plan = Plan::default();
    assert_eq!(pending_reason(&plan, "web"), None);
    plan.pending.insert(
        "web".into(),
        "3 pending: no ready node (1 node: 1 not ready)".into(),
    );
    assert_eq!(
        pending_reason(&plan, "web"),
        Some("no ready node (1 node: 1 not ready)")
    );
    assert!(Why::NodeLost { since: None }.places());
    assert!(!Why::ReplacementLost.places());
}
