//! A token-checking resource, as a storage service guarded by Paddock locks should be:
//! it rejects a write whose fencing token is lower than one it has already accepted, and
//! it counts overlapping critical sections (two holders at once). For proving checkers
//! bite, it can also be built without the check (`without_fencing`), as a careless store.

use std::sync::Mutex;

#[derive(Debug)]
pub struct FencedCounter {
    state: Mutex<State>,
    checks_tokens: bool,
}

impl Default for FencedCounter {
    fn default() -> Self {
        Self { state: Mutex::default(), checks_tokens: true }
    }
}

#[derive(Debug, Default)]
struct State {
    value: u64,
    highest_token: i64,
    inside: u32,
    overlaps: u64,
    rejected: u64,
    accepted: u64,
    /// (token, value) of every accepted write, in order.
    history: Vec<(i64, u64)>,
}

/// What a writer learns from a fenced write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Accepted,
    /// The token is older than one already seen: the writer's lock was lost.
    Stale {
        highest: i64,
    },
}

impl FencedCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that accepts every write, whatever its token (a deliberately broken one).
    pub fn without_fencing() -> Self {
        Self { checks_tokens: false, ..Self::default() }
    }

    /// Enters the critical section; counts an overlap if someone else is inside.
    pub fn enter(&self) {
        let mut s = self.state.lock().unwrap();
        s.inside += 1;
        if s.inside > 1 {
            s.overlaps += 1;
        }
    }

    pub fn exit(&self) {
        self.state.lock().unwrap().inside -= 1;
    }

    /// Reads the value (the first half of a read-modify-write).
    pub fn read(&self) -> u64 {
        self.state.lock().unwrap().value
    }

    /// Writes `value` if `token` is not older than any accepted before. Equal tokens are
    /// accepted (one holder writing twice).
    pub fn write(&self, token: i64, value: u64) -> Write {
        let mut s = self.state.lock().unwrap();
        if self.checks_tokens && token < s.highest_token {
            s.rejected += 1;
            return Write::Stale { highest: s.highest_token };
        }
        s.highest_token = s.highest_token.max(token);
        s.value = value;
        s.accepted += 1;
        s.history.push((token, value));
        Write::Accepted
    }

    pub fn value(&self) -> u64 {
        self.state.lock().unwrap().value
    }

    pub fn overlaps(&self) -> u64 {
        self.state.lock().unwrap().overlaps
    }

    pub fn rejected(&self) -> u64 {
        self.state.lock().unwrap().rejected
    }

    /// (token, value) of every accepted write, in the order accepted.
    pub fn history(&self) -> Vec<(i64, u64)> {
        self.state.lock().unwrap().history.clone()
    }

    pub fn accepted(&self) -> u64 {
        self.state.lock().unwrap().accepted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_older_tokens_and_counts_overlaps() {
        let c = FencedCounter::new();
        assert_eq!(c.write(5, 1), Write::Accepted);
        assert_eq!(c.write(5, 2), Write::Accepted);
        assert_eq!(c.write(4, 3), Write::Stale { highest: 5 });
        assert_eq!(c.value(), 2);
        c.enter();
        c.enter();
        c.exit();
        c.exit();
        assert_eq!(c.overlaps(), 1);
    }
}
