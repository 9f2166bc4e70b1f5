//! Which coordinator of an HA pair the next session dials. Pure.
//!
//! `--coordinator` is a list. A standby refuses the session (and a leader stepping down ends it)
//! with `UNAVAILABLE` and the leader's URL in `pmcluster-leader` metadata: that URL is dialled at
//! once, without backoff. A coordinator that cannot be reached, or refuses without naming a
//! leader, sends the agent to the next URL of the list at once. Only when a whole round of the
//! list failed, or a coordinator that answered as leader ended the session (it was lost, or the
//! node name is still connected there), does the link back off.

/// Leader hints followed in a row without a registration: two standbys naming each other must
/// not bounce the agent between them without ever backing off.
pub const MAX_HOPS: usize = 3;

/// When to dial [`Dialer::target`] next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Now,
    Backoff,
}

#[derive(Debug, Clone)]
pub struct Dialer {
    urls: Vec<String>,
    /// The list URL dialled next when there is no hint to follow.
    pos: usize,
    /// List URLs failed since the last registration or backoff.
    failed: usize,
    /// A leader named by a refusal, dialled before the list.
    hint: Option<String>,
    hops: usize,
}

impl Dialer {
    /// `urls` must not be empty (the config refuses an empty list); an empty one dials nothing
    /// useful and always backs off.
    pub fn new(urls: Vec<String>) -> Dialer {
        Dialer {
            urls,
            pos: 0,
            failed: 0,
            hint: None,
            hops: 0,
        }
    }

    /// The URL the next session dials.
    pub fn target(&self) -> &str {
        match &self.hint {
            Some(hint) => hint,
            None => self.urls.get(self.pos).map_or("", String::as_str),
        }
    }

    /// The session with [`Dialer::target`] registered: the count of failures starts again.
    pub fn registered(&mut self) {
        self.failed = 0;
        self.hops = 0;
        // A hint that is a list URL becomes the list position, so that losing it moves on to
        // the URL after it.
        if let Some(i) = self
            .hint
            .as_ref()
            .and_then(|h| self.urls.iter().position(|u| u == h))
        {
            self.pos = i;
            self.hint = None;
        }
    }

    /// The session with [`Dialer::target`] ended. `answered`: a coordinator acting as leader
    /// ended it (a registered session lost, a refusal other than UNAVAILABLE); `hint`: the leader
    /// an UNAVAILABLE named, if any.
    pub fn ended(&mut self, answered: bool, hint: Option<String>) -> Next {
        let dialed = self.target().to_string();
        if self.hint.take().is_none() && !self.urls.is_empty() {
            self.pos = (self.pos + 1) % self.urls.len();
            self.failed += 1;
        }
        if let Some(hint) = hint
            && hint != dialed
            && self.hops < MAX_HOPS
        {
            self.hops += 1;
            self.hint = Some(hint);
            return Next::Now;
        }
        if answered || self.failed >= self.urls.len() {
            self.failed = 0;
            self.hops = 0;
            return Next::Backoff;
        }
        Next::Now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialer(urls: &[&str]) -> Dialer {
        Dialer::new(urls.iter().map(|u| u.to_string()).collect())
    }

    #[test]
    fn a_round_of_the_list_before_a_backoff() {
        let mut d = dialer(&["a", "b", "c"]);
        assert_eq!(d.target(), "a");
        assert_eq!(d.ended(false, None), Next::Now);
        assert_eq!(d.target(), "b");
        assert_eq!(d.ended(false, None), Next::Now);
        assert_eq!(d.target(), "c");
        assert_eq!(d.ended(false, None), Next::Backoff);
        // The next round goes on around the list.
        assert_eq!(d.target(), "a");
        assert_eq!(d.ended(false, None), Next::Now);
        // One URL: every failure is a whole round.
        let mut one = dialer(&["a"]);
        assert_eq!(one.ended(false, None), Next::Backoff);
        assert_eq!(one.target(), "a");
    }

    #[test]
    fn hints_are_followed_at_once() {
        let mut d = dialer(&["standby", "dead"]);
        assert_eq!(d.ended(false, Some("leader".into())), Next::Now);
        assert_eq!(d.target(), "leader");
        d.registered();
        assert_eq!(d.target(), "leader");
        // The leader steps down naming the other: dialled at once, though a session ran.
        assert_eq!(d.ended(true, Some("standby".into())), Next::Now);
        assert_eq!(d.target(), "standby");
        d.registered();
        // A list URL that registered via a hint is the list position: its loss moves on.
        assert_eq!(d.ended(true, None), Next::Backoff);
        assert_eq!(d.target(), "dead");
    }

    #[test]
    fn a_failed_hint_goes_back_to_the_list() {
        let mut d = dialer(&["a", "b", "c"]);
        assert_eq!(d.ended(false, Some("gone".into())), Next::Now);
        assert_eq!(d.target(), "gone");
        // The hinted leader is unreachable: the list goes on where it was.
        assert_eq!(d.ended(false, None), Next::Now);
        assert_eq!(d.target(), "b");
        assert_eq!(d.ended(false, None), Next::Now);
        assert_eq!(d.target(), "c");
        assert_eq!(d.ended(false, None), Next::Backoff);
    }

    #[test]
    fn hints_are_bounded() {
        // Two standbys naming each other.
        let mut d = dialer(&["a", "b"]);
        let mut hops = 0;
        loop {
            let other = if d.target() == "a" { "b" } else { "a" };
            match d.ended(false, Some(other.into())) {
                Next::Now => hops += 1,
                Next::Backoff => break,
            }
            assert!(hops <= 10, "no backoff after {hops} hops");
        }
        assert!(hops <= MAX_HOPS + 2, "{hops}");
        // A standby naming itself is no hint.
        let mut d = dialer(&["a", "b"]);
        assert_eq!(d.ended(false, Some("a".into())), Next::Now);
        assert_eq!(d.target(), "b");
    }

    #[test]
    fn a_leader_that_answered_means_a_backoff() {
        let mut d = dialer(&["a", "b"]);
        d.registered();
        assert_eq!(d.ended(true, None), Next::Backoff);
        // Then the other, which may be the leader by now.
        assert_eq!(d.target(), "b");
    }
}
