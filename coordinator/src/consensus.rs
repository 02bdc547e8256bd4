//! Consensus, pure so every rule is unit-tested here.
//!
//! Labels: majority vote with a deterministic tiebreak: most votes, then higher mean confidence,
//! then the smaller label.
//!
//! Vectors (`embedding` tasks): two answers agree when their cosine similarity reaches the task's
//! threshold. Each answer gathers the answers that agree with it; the largest such group wins
//! (ties: higher mean confidence, then the earlier answer). The result is the group's mean vector.

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

/// One worker's vector answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorVote<'a> {
    /// The vector it gave.
    pub vector: &'a [f32],
    /// Its confidence in `[0, 1]`.
    pub confidence: f64,
}

/// The winning group of vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorDecision {
    /// Indices (into the votes) of the group's members, ascending.
    pub members: Vec<usize>,
    /// The mean of the members' vectors.
    pub vector: Vec<f32>,
    /// Mean cosine similarity of the members to [`VectorDecision::vector`].
    pub confidence: f64,
}

/// Cosine similarity of two vectors, in f64; vectors of different lengths (or without a
/// direction) never agree, so they get `-1`.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return -1.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        return -1.0;
    }
    dot / (na.sqrt() * nb.sqrt())
}

/// Decides a vector task from its votes; `None` when there are none.
pub fn decide_vectors(votes: &[VectorVote<'_>], threshold: f64) -> Option<VectorDecision> {
    let groups = votes.iter().map(|center| {
        let members: Vec<usize> = votes
            .iter()
            .enumerate()
            .filter(|(_, v)| cosine(center.vector, v.vector) >= threshold)
            .map(|(i, _)| i)
            .collect();
        let confidence =
            members.iter().map(|&i| votes[i].confidence).sum::<f64>() / members.len() as f64;
        (members, confidence)
    });
    // `max_by` keeps the last of equal elements: iterate in reverse so the earliest wins ties.
    let (members, _) = groups
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .max_by(|a, b| {
            a.0.len()
                .cmp(&b.0.len())
                .then_with(|| a.1.partial_cmp(&b.1).unwrap_or(Ordering::Equal))
        })?;
    let dim = votes[members[0]].vector.len();
    let mut sum = vec![0.0f64; dim];
    for &i in &members {
        for (s, x) in sum.iter_mut().zip(votes[i].vector) {
            *s += f64::from(*x);
        }
    }
    let vector: Vec<f32> = sum
        .iter()
        .map(|s| (s / members.len() as f64) as f32)
        .collect();
    let confidence = members
        .iter()
        .map(|&i| cosine(votes[i].vector, &vector))
        .sum::<f64>()
        / members.len() as f64;
    Some(VectorDecision {
        members,
        vector,
        confidence,
    })
}

/// Exact match (generative tasks): the indices of the answers in the largest group of identical
/// ones, when that group is a strict majority of all the answers; `None` otherwise. Nothing
/// breaks a tie: a split is not decided.
pub fn decide_identical<T: PartialEq>(answers: &[T]) -> Option<Vec<usize>> {
    let members = answers
        .iter()
        .map(|a| {
            answers
                .iter()
                .enumerate()
                .filter(|(_, b)| *b == a)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        })
        .max_by_key(Vec::len)?;
    (members.len() * 2 > answers.len()).then_some(members)
}

/// How many distinct answers there are.
pub fn distinct_count<T: PartialEq>(answers: &[T]) -> usize {
    answers
        .iter()
        .enumerate()
        .filter(|(i, a)| !answers[..*i].contains(a))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_answers_win_only_with_a_strict_majority() {
        assert_eq!(decide_identical(&["a", "b", "a"]), Some(vec![0, 2]));
        assert_eq!(decide_identical(&["a", "a", "a"]), Some(vec![0, 1, 2]));
        assert_eq!(decide_identical(&["a"]), Some(vec![0]));
        assert_eq!(decide_identical(&["a", "b", "c"]), None);
        assert_eq!(decide_identical(&["a", "b"]), None);
        assert_eq!(decide_identical(&["a", "b", "a", "b"]), None);
        assert_eq!(decide_identical::<&str>(&[]), None);
        assert_eq!(distinct_count(&["a", "b", "a", "c"]), 3);
    }

    fn vv(vector: &[f32]) -> VectorVote<'_> {
        VectorVote {
            vector,
            confidence: 1.0,
        }
    }

    #[test]
    fn near_vectors_outvote_a_far_one() {
        let a = [1.0, 0.0, 0.0];
        let b = [0.999, 0.02, 0.0];
        let far = [0.0, 1.0, 0.0];
        for votes in [
            vec![vv(&far), vv(&a), vv(&b)],
            vec![vv(&a), vv(&far), vv(&b)],
            vec![vv(&a), vv(&b), vv(&far)],
        ] {
            let d = decide_vectors(&votes, 0.999).expect("decision");
            assert_eq!(d.members.len(), 2);
            assert!(d.members.iter().all(|&i| votes[i].vector != far));
            assert!(cosine(&d.vector, &a) > 0.999 && d.confidence > 0.999);
        }
    }

    #[test]
    fn the_threshold_decides_agreement() {
        let a = [1.0, 0.0];
        let b = [0.9, 0.1];
        let c = [0.0, 1.0];
        let votes = [vv(&a), vv(&b), vv(&c)];
        assert!((0.99..0.995).contains(&cosine(&a, &b)));
        assert_eq!(
            decide_vectors(&votes, 0.999).expect("strict").members,
            vec![0],
            "no two agree: the earliest answer wins the tie"
        );
        assert_eq!(
            decide_vectors(&votes, 0.99).expect("loose").members,
            vec![0, 1]
        );
    }

    #[test]
    fn a_tie_between_groups_goes_to_higher_confidence() {
        let a = [1.0, 0.0];
        let b = [0.0, 1.0];
        let votes = [
            VectorVote {
                vector: &a,
                confidence: 0.5,
            },
            VectorVote {
                vector: &a,
                confidence: 0.5,
            },
            VectorVote {
                vector: &b,
                confidence: 0.9,
            },
            VectorVote {
                vector: &b,
                confidence: 0.9,
            },
        ];
        assert_eq!(
            decide_vectors(&votes, 0.999).expect("d").members,
            vec![2, 3]
        );
    }

    #[test]
    fn vectors_of_other_lengths_never_agree() {
        let a = [1.0, 0.0];
        let b = [1.0, 0.0, 0.0];
        assert_eq!(cosine(&a, &b), -1.0);
        assert_eq!(cosine(&a, &[0.0, 0.0]), -1.0);
        assert_eq!(decide_vectors(&[], 0.9), None);
    }

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
