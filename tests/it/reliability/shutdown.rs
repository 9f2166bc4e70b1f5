//! Reliability regressions: see the module doc of `reliability`.
