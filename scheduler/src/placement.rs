//! Placement: which node takes the next invocation.
//!
//! Power of two choices (Mitzenmacher): sample two distinct eligible nodes at random and
//! send the work to the less loaded. It avoids the herd behaviour of "always the least
//! loaded" when load reports are a little stale, and needs no global ordering.
//!
//! The score is the expected wait, `(in_flight + 1) × latency / capacity`: a node with
//! twice the capacity takes about twice the work, and a slow node is picked less. Latency
//! counts only when the two samples differ markedly (more than 2× and more than 1 ms):
//! equal nodes' averages jitter, and letting that jitter decide would skew an even spread.
//! The randomness is passed in so that the function is pure and every case can be tested.
//! [`round_robin`] is the baseline it is measured against.

/// What placement knows of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Invocations running on the node (the larger of its last report and what this
    /// scheduler has outstanding on it, so that a burst between reports is seen).
    pub in_flight: u32,
    /// Invocations the node runs at once at most.
    pub capacity: u32,
    /// Moving average of its recent invocation durations, in microseconds.
    pub latency_us: u64,
    /// Whether the node takes new work (false while it drains or after it failed).
    pub accepting: bool,
}

/// Latencies closer than this (µs) are treated as equal.
const LATENCY_SLACK_US: u64 = 1000;

/// Whether two latencies differ enough to steer placement. Zero means "not measured
/// yet" (a node that just joined): it never counts as fast, or a new node would draw
/// every request until its first one finished.
fn markedly_different(a: u64, b: u64) -> bool {
    let (lo, hi) = (a.min(b), a.max(b));
    lo > 0 && hi > lo.saturating_mul(2) && hi - lo > LATENCY_SLACK_US
}

impl Load {
    /// Whether `self` is strictly less loaded than `other`: compares
    /// `(in_flight + 1) × latency / capacity` exactly, in integers, with latency left out
    /// unless the two differ markedly.
    pub fn lighter_than(&self, other: &Load) -> bool {
        let (mine_lat, theirs_lat) = if markedly_different(self.latency_us, other.latency_us) {
            (self.latency_us, other.latency_us)
        } else {
            (1, 1)
        };
        let mine = (u128::from(self.in_flight) + 1)
            * u128::from(mine_lat)
            * u128::from(other.capacity.max(1));
        let theirs = (u128::from(other.in_flight) + 1)
            * u128::from(theirs_lat)
            * u128::from(self.capacity.max(1));
        mine < theirs
    }
}

/// Picks a node among `loads` by power of two choices.
///
/// `r1` and `r2` are random numbers (any range); they choose the two candidates among
/// the accepting nodes. Returns the index into `loads`, or `None` when no node accepts
/// work. Ties go to the first sample, so that equal nodes share work evenly.
pub fn pick(loads: &[Load], r1: u64, r2: u64) -> Option<usize> {
    let eligible: Vec<usize> = (0..loads.len()).filter(|&i| loads[i].accepting).collect();
    match eligible.len() {
        0 => None,
        1 => Some(eligible[0]),
        n => {
            let n = n as u64;
            let a = (r1 % n) as usize;
            // A second sample distinct from the first: offset by 1..n.
            let b = ((r1 % n + 1 + r2 % (n - 1)) % n) as usize;
            let (a, b) = (eligible[a], eligible[b]);
            if loads[b].lighter_than(&loads[a]) {
                Some(b)
            } else {
                Some(a)
            }
        }
    }
}

/// The baseline: the `turn`-th accepting node in order, ignoring load.
pub fn round_robin(loads: &[Load], turn: u64) -> Option<usize> {
    let eligible: Vec<usize> = (0..loads.len()).filter(|&i| loads[i].accepting).collect();
    if eligible.is_empty() {
        return None;
    }
    Some(eligible[(turn % eligible.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(in_flight: u32, capacity: u32) -> Load {
        Load {
            in_flight,
            capacity,
            latency_us: 1000,
            accepting: true,
        }
    }

    fn slow(in_flight: u32, capacity: u32, latency_us: u64) -> Load {
        Load {
            latency_us,
            ..load(in_flight, capacity)
        }
    }

    #[test]
    fn latency_steers_only_when_it_differs_markedly() {
        // Jitter (1.0 vs 1.9 ms, or 0.1 vs 0.9 ms) does not count: ratio alone decides.
        assert!(!slow(0, 8, 1900).lighter_than(&slow(0, 8, 1000)));
        assert!(!slow(0, 8, 1000).lighter_than(&slow(0, 8, 1900)));
        assert!(!slow(0, 8, 900).lighter_than(&slow(0, 8, 100)));
        // A node 50x slower loses even with fewer running.
        assert!(slow(5, 8, 1000).lighter_than(&slow(0, 8, 50_000)));
        // ...until the fast one's queue is longer than the slow one's whole service time.
        assert!(slow(0, 8, 50_000).lighter_than(&slow(60, 8, 1000)));
        // Zero latency (nothing measured yet) is neutral: ratio alone decides.
        assert!(!slow(0, 8, 0).lighter_than(&slow(0, 8, 50_000)));
        assert!(!slow(0, 8, 50_000).lighter_than(&slow(0, 8, 0)));
        assert!(slow(0, 8, 0).lighter_than(&slow(1, 8, 50_000)));
    }

    #[test]
    fn round_robin_cycles_through_accepting_nodes() {
        let off = Load {
            accepting: false,
            ..load(0, 1)
        };
        let loads = [load(9, 1), off, load(0, 1)];
        let got: Vec<_> = (0..4).map(|t| round_robin(&loads, t).unwrap()).collect();
        assert_eq!(got, vec![0, 2, 0, 2]);
        assert_eq!(round_robin(&[off], 3), None);
        assert_eq!(round_robin(&[], 0), None);
    }

    #[test]
    fn nothing_to_pick_from() {
        assert_eq!(pick(&[], 1, 2), None);
        let draining = Load {
            accepting: false,
            ..load(0, 10)
        };
        assert_eq!(pick(&[draining, draining], 0, 0), None);
    }

    #[test]
    fn a_single_accepting_node_always_wins_even_when_full() {
        let off = Load {
            accepting: false,
            ..load(0, 10)
        };
        for r1 in 0..10 {
            for r2 in 0..10 {
                assert_eq!(pick(&[off, load(100, 10), off], r1, r2), Some(1));
            }
        }
    }

    #[test]
    fn the_two_samples_are_always_distinct_and_cover_every_pair() {
        // With all nodes equal the first sample wins, so `pick` reveals `a`; with one node
        // made heavier we see that `b` is never `a`.
        for n in 2..7usize {
            let mut pairs = std::collections::BTreeSet::new();
            for r1 in 0..(n as u64 * 3) {
                for r2 in 0..(n as u64 * 3) {
                    let eq = vec![load(0, 1); n];
                    let a = pick(&eq, r1, r2).unwrap();
                    // Make `a` heavy: the pick must then be the other sample.
                    let mut heavy = eq.clone();
                    heavy[a] = load(5, 1);
                    let b = pick(&heavy, r1, r2).unwrap();
                    assert_ne!(a, b, "n={n} r1={r1} r2={r2}");
                    pairs.insert((a.min(b), a.max(b)));
                }
            }
            assert_eq!(pairs.len(), n * (n - 1) / 2, "every pair is sampled, n={n}");
        }
    }

    #[test]
    fn the_lighter_of_the_two_wins_by_ratio_not_by_count() {
        // 8 of 16 running is lighter than 5 of 8.
        assert!(load(8, 16).lighter_than(&load(5, 8)));
        assert!(!load(5, 8).lighter_than(&load(8, 16)));
        // Equal ratios are not lighter either way.
        assert!(!load(1, 2).lighter_than(&load(3, 4)) || !load(3, 4).lighter_than(&load(1, 2)));
        assert!(!load(3, 8).lighter_than(&load(3, 8)));
        // Zero capacity counts as one, never divides by zero.
        assert!(load(0, 4).lighter_than(&load(0, 0)));
    }

    #[test]
    fn every_choice_over_small_clusters_picks_a_lightest_of_its_pair() {
        // Exhaustive over clusters of 2..=4 nodes with in_flight 0..3, capacity 1..3 and
        // every (r1, r2): the pick is accepting, and no node of the sampled pair is lighter.
        let states: Vec<Load> = (0..3)
            .flat_map(|f| (1..3).map(move |c| load(f, c)))
            .chain([
                Load {
                    accepting: false,
                    ..load(0, 1)
                },
                slow(1, 2, 40_000),
            ])
            .collect();
        let mut clusters: Vec<Vec<Load>> = vec![vec![]];
        for _ in 0..3 {
            clusters = clusters
                .into_iter()
                .flat_map(|c| {
                    states.iter().map(move |s| {
                        let mut c = c.clone();
                        c.push(*s);
                        c
                    })
                })
                .collect();
            for c in &clusters {
                for r1 in 0..4 {
                    for r2 in 0..4 {
                        let got = pick(c, r1, r2);
                        let accepting = c.iter().filter(|l| l.accepting).count();
                        match got {
                            None => assert_eq!(accepting, 0),
                            Some(i) => {
                                assert!(c[i].accepting);
                                if accepting == 1 {
                                    continue;
                                }
                                // The other sample is the one pick would choose if `i` were
                                // made very heavy.
                                let mut other = c.clone();
                                other[i] = load(1000, 1);
                                let j = pick(&other, r1, r2).unwrap();
                                assert!(!c[j].lighter_than(&c[i]), "{c:?} r1={r1} r2={r2}");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn equal_nodes_share_work_evenly() {
        let loads = vec![load(0, 8); 3];
        let mut counts = [0u32; 3];
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let r1 = x;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            counts[pick(&loads, r1, x).unwrap()] += 1;
        }
        for c in counts {
            assert!((850..=1150).contains(&c), "{counts:?}");
        }
    }
}
