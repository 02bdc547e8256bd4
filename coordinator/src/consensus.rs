//! Majority vote with a deterministic tiebreak: most votes, then higher mean confidence, then the
//! smaller label. Pure, so every rule is unit-tested here.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// One worker's answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Vote<'a> {
    /// The label it gave.
    pub label: &'a str,
    /// Its confidence in `[0, 1]`.
    pub confidence: f64,
}

/// The winning label.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The label that won.
    pub label: String,
    /// Mean confidence of the votes for it.
    pub confidence: f64,
    /// How many votes it got.
    pub votes: usize,
}

/// Decides the label of a task from its votes; `None` when there are none.
pub fn decide(votes: &[Vote<'_>]) -> Option<Decision> {
    let mut tally: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for v in votes {
        let entry = tally.entry(v.label).or_default();
        entry.0 += 1;
        entry.1 += v.confidence;
    }
    // BTreeMap iterates labels in ascending order; `max_by` keeps the last of equal elements, so
    // iterate in reverse to let the smallest label win a full tie.
    tally
        .into_iter()
        .rev()
        .map(|(label, (count, sum))| (label, count, sum / count as f64))
        .max_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| a.2.partial_cmp(&b.2).unwrap_or(Ordering::Equal))
        })
        .map(|(label, votes, confidence)| Decision {
            label: label.to_owned(),
            confidence,
            votes,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(label: &str, confidence: f64) -> Vote<'_> {
        Vote { label, confidence }
    }

    #[test]
    fn plurality_wins_even_against_confidence() {
        let d = decide(&[v("neg", 0.99), v("pos", 0.6), v("pos", 0.5)]).expect("decision");
        assert_eq!(d.label, "pos");
        assert_eq!(d.votes, 2);
        assert!((d.confidence - 0.55).abs() < 1e-12);
    }

    #[test]
    fn tie_goes_to_higher_mean_confidence() {
        let d = decide(&[v("a", 0.6), v("b", 0.9), v("a", 0.7), v("b", 0.8)]).expect("decision");
        assert_eq!(d.label, "b");
    }

    #[test]
    fn full_tie_goes_to_smaller_label() {
        for votes in [
            vec![v("pos", 0.8), v("neg", 0.8)],
            vec![v("neg", 0.8), v("pos", 0.8)],
        ] {
            assert_eq!(decide(&votes).expect("decision").label, "neg");
        }
        let d = decide(&[v("c", 0.5), v("b", 0.5), v("a", 0.5)]).expect("decision");
        assert_eq!(d.label, "a");
    }

    #[test]
    fn no_votes_no_decision() {
        assert_eq!(decide(&[]), None);
    }

    #[test]
    fn unanimous() {
        let d = decide(&[v("pos", 1.0), v("pos", 0.5), v("pos", 0.0)]).expect("decision");
        assert_eq!((d.label.as_str(), d.votes), ("pos", 3));
        assert!((d.confidence - 0.5).abs() < 1e-12);
    }
}
