//! Where instances go. Spread strategy: each new instance goes to the ready node with the fewest
//! instances of its app, then the fewest instances overall, then the smallest name, so placement
//! is even and deterministic.

use std::collections::BTreeMap;

/// Load of one ready node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeLoad {
    pub name: String,
    /// Instances of the app being placed.
    pub app_count: u32,
    /// Instances of every app.
    pub total: u32,
}

/// Chooses the node for one more instance and counts it there. `None` when there is no node.
pub fn place_one(nodes: &mut [NodeLoad]) -> Option<String> {
    let best = nodes
        .iter_mut()
        .min_by(|a, b| (a.app_count, a.total, &a.name).cmp(&(b.app_count, b.total, &b.name)))?;
    best.app_count += 1;
    best.total += 1;
    Some(best.name.clone())
}

/// Builds the loads of `ready` nodes for one app from `(node, app)` pairs of existing instances.
pub fn loads<'a>(
    ready: &[String],
    app: &str,
    placed: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<NodeLoad> {
    let mut by_name: BTreeMap<&str, NodeLoad> = ready
        .iter()
        .map(|n| {
            let load = NodeLoad {
                name: n.clone(),
                app_count: 0,
                total: 0,
            };
            (n.as_str(), load)
        })
        .collect();
    for (node, inst_app) in placed {
        if let Some(load) = by_name.get_mut(node) {
            load.total += 1;
            if inst_app == app {
                load.app_count += 1;
            }
        }
    }
    by_name.into_values().collect()
}

/// After a scale-down, moves instances so that per-node counts of the app differ by at most one.
/// `placed` maps each ready node to the indices of the app it runs. Each move takes the highest
/// index of the most loaded node (ties: smallest name) to the least loaded (ties: smallest name).
/// Returns `(index, from, to)` moves.
pub fn rebalance(placed: &BTreeMap<String, Vec<u32>>) -> Vec<(u32, String, String)> {
    let mut counts: BTreeMap<String, Vec<u32>> = placed
        .iter()
        .map(|(n, v)| {
            let mut v = v.clone();
            v.sort_unstable();
            (n.clone(), v)
        })
        .collect();
    let mut moves = Vec::new();
    loop {
        let max = counts
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| b.0.cmp(a.0)));
        let min = counts
            .iter()
            .min_by(|a, b| a.1.len().cmp(&b.1.len()).then_with(|| a.0.cmp(b.0)));
        let (Some((max_node, max_v)), Some((min_node, min_v))) = (max, min) else {
            return moves;
        };
        if max_v.len() <= min_v.len() + 1 {
            return moves;
        }
        let (from, to) = (max_node.clone(), min_node.clone());
        let Some(index) = counts.get_mut(&from).and_then(Vec::pop) else {
            return moves;
        };
        if let Some(v) = counts.get_mut(&to) {
            v.push(index);
            v.sort_unstable();
        }
        moves.push((index, from, to));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(spec: &[(&str, u32, u32)]) -> Vec<NodeLoad> {
        spec.iter()
            .map(|(n, a, t)| NodeLoad {
                name: n.to_string(),
                app_count: *a,
                total: *t,
            })
            .collect()
    }

    /// Places `n` instances and renders the chosen nodes.
    fn check(start: &[(&str, u32, u32)], n: usize, want: &str) {
        let mut loads = nodes(start);
        let got: Vec<String> = (0..n)
            .map(|_| place_one(&mut loads).unwrap_or_else(|| "-".into()))
            .collect();
        assert_eq!(got.join(" "), want, "start {start:?}");
    }

    #[test]
    fn spread_placement() {
        check(&[], 2, "- -");
        check(&[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)], 6, "a b c a b c");
        // Fewest of this app first, even when the node is busy with other apps.
        check(&[("a", 2, 2), ("b", 0, 9), ("c", 1, 1)], 3, "b c b");
        // Equal app counts: the less loaded node overall wins.
        check(&[("a", 1, 5), ("b", 1, 2)], 2, "b a");
        // Name breaks the remaining ties.
        check(&[("z", 0, 0), ("m", 0, 0)], 2, "m z");
    }

    #[test]
    fn twelve_over_three_is_four_each() {
        let mut loads = nodes(&[("a", 0, 0), ("b", 0, 0), ("c", 0, 0)]);
        for _ in 0..12 {
            place_one(&mut loads);
        }
        assert!(loads.iter().all(|l| l.app_count == 4), "{loads:?}");
    }

    fn check_rebalance(placed: &[(&str, &[u32])], want: &str) {
        let map: BTreeMap<String, Vec<u32>> = placed
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect();
        let got: Vec<String> = rebalance(&map)
            .into_iter()
            .map(|(i, f, t)| format!("{i}:{f}->{t}"))
            .collect();
        assert_eq!(got.join(" "), want);
    }

    #[test]
    fn rebalance_after_scale_down() {
        check_rebalance(&[], "");
        check_rebalance(&[("a", &[0, 3]), ("b", &[1, 4]), ("c", &[2])], "");
        check_rebalance(
            &[("a", &[0, 1, 2, 3]), ("b", &[]), ("c", &[4])],
            "3:a->b 2:a->b",
        );
        check_rebalance(&[("a", &[0, 1, 2, 3, 4]), ("b", &[])], "4:a->b 3:a->b");
        check_rebalance(
            &[("a", &[5]), ("b", &[0, 1, 2]), ("c", &[3, 4, 6])],
            "2:b->a",
        );
    }

    #[test]
    fn loads_count_only_ready_nodes() {
        let ready = vec!["a".to_string(), "b".to_string()];
        let placed = [("a", "web"), ("a", "api"), ("x", "web"), ("b", "web")];
        let got = loads(&ready, "web", placed.into_iter());
        assert_eq!(got, nodes(&[("a", 1, 2), ("b", 1, 1)]));
    }
}
