//! Keeping an app's spread even after a scale-down (placement itself is in `placement`).

use std::collections::BTreeMap;

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
}
