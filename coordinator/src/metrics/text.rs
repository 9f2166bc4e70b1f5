//! The Prometheus text format (version 0.0.4) from the OpenMetrics text `prometheus-client`
//! writes. They differ in what this encoder writes in three ways only: a counter's `# HELP` and
//! `# TYPE` name its samples' name (with `_total`) in the Prometheus format and the family's
//! (without) in OpenMetrics; OpenMetrics has `# UNIT` lines; and it ends with `# EOF`. Samples
//! are the same. Pure.

/// `openmetrics` in the Prometheus text format: counters' descriptors renamed to their samples'
/// `_total` name, `# UNIT` and `# EOF` lines dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let descriptor = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = descriptor {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            if counters.contains(name) {
                out.push_str(prefix);
                out.push_str(name);
                out.push_str("_total ");
                out.push_str(tail);
                out.push('\n');
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_by_their_samples_and_openmetrics_lines_go() {
        let openmetrics = "\
# HELP a_restarts Restarts.
# TYPE a_restarts counter
a_restarts_total{app=\"web\"} 3
# HELP a_up Up.
# TYPE a_up gauge
a_up{app=\"web\"} 1
# HELP a_seconds Durations.
# TYPE a_seconds histogram
# UNIT a_seconds seconds
a_seconds_sum 0.5
a_seconds_count 1
a_seconds_bucket{le=\"+Inf\"} 1
# HELP a_restarts_per Not a counter, though its name starts like one.
# TYPE a_restarts_per gauge
a_restarts_per 2
# EOF
";
        let want = "\
# HELP a_restarts_total Restarts.
# TYPE a_restarts_total counter
a_restarts_total{app=\"web\"} 3
# HELP a_up Up.
# TYPE a_up gauge
a_up{app=\"web\"} 1
# HELP a_seconds Durations.
# TYPE a_seconds histogram
a_seconds_sum 0.5
a_seconds_count 1
a_seconds_bucket{le=\"+Inf\"} 1
# HELP a_restarts_per Not a counter, though its name starts like one.
# TYPE a_restarts_per gauge
a_restarts_per 2
";
        assert_eq!(to_prometheus_text(openmetrics), want);
    }
}
