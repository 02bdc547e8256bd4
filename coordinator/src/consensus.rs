//! Consensus, pure so every rule is unit-tested here.
//!
//! Labels: majority vote with a deterministic tiebreak: most votes, then higher mean confidence,
//! then the smaller label. Whether that decision stands is the task's vote rule's call
//! ([`judge`]): under the quorum policy only an uncontested group of at least `min_quorum`
//! agreeing answers decides; the tiebreak decides only under the majority policy.
//!
//! Vectors (`embedding` tasks): two answers agree when their cosine similarity reaches the task's
//! threshold. Each answer gathers the answers that agree with it; the largest such group wins
//! (ties: higher mean confidence, then the earlier answer). The result is the group's mean vector.

use protocol::policy::{Policy, VoteRule};
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
    /// How many votes the strongest other label got.
    pub runner_up: usize,
}

/// What a task's answers come to under its vote rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The winning group decides the task; its members (and only they) earn a point.
    Decided,
    /// No quorum yet: lease one more replica to a distinct worker.
    MoreAnswers,
    /// No quorum and `max_answers` are in: the task fails with `no_consensus`.
    NoConsensus,
}

/// Judges the answers in: `agreeing` answers in the winning group, `runner_up` in the strongest
/// group against it, `answers` in all.
///
/// Majority policy: the winner decides whatever the split (the original rule). Quorum policy:
/// the winner decides when it has `min_quorum` answers and outnumbers every other group; short
/// of that, more answers are collected until there are `max_answers`.
pub fn judge(rule: &VoteRule, agreeing: usize, runner_up: usize, answers: usize) -> Outcome {
    if rule.policy == Policy::Majority
        || (agreeing >= rule.min_quorum as usize && agreeing > runner_up)
    {
        Outcome::Decided
    } else if answers < rule.max_answers as usize {
        Outcome::MoreAnswers
    } else {
        Outcome::NoConsensus
    }
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
    let winner = tally
        .iter()
        .rev()
        .map(|(label, (count, sum))| (*label, *count, sum / *count as f64))
        .max_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| a.2.partial_cmp(&b.2).unwrap_or(Ordering::Equal))
        })?;
    let runner_up = tally
        .iter()
        .filter(|(label, _)| **label != winner.0)
        .map(|(_, (count, _))| *count)
        .max()
        .unwrap_or(0);
    Some(Decision {
        label: winner.0.to_owned(),
        confidence: winner.2,
        votes: winner.1,
        runner_up,
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
    /// Size of the largest group with other members.
    pub runner_up: usize,
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
    let groups: Vec<(Vec<usize>, f64)> = groups.collect();
    // `max_by` keeps the last of equal elements: iterate in reverse so the earliest wins ties.
    let (members, _) = groups.iter().cloned().rev().max_by(|a, b| {
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
    let runner_up = groups
        .iter()
        .filter(|(g, _)| *g != members)
        .map(|(g, _)| g.len())
        .max()
        .unwrap_or(0);
    Some(VectorDecision {
        members,
        vector,
        confidence,
        runner_up,
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

/// One verifier's score of a candidate (generative tasks, cross-scoring).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scoring<'a> {
    /// Its verdict.
    pub passed: bool,
    /// The candidate tokens' log-probabilities it reported.
    pub logprobs: &'a [f32],
    /// Their gaps to the best tokens.
    pub gaps: &'a [f32],
}

/// What a candidate's verifiers concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateVerdict {
    /// A strict majority of its verifiers passed it.
    pub valid: bool,
    /// The verifiers (indices into the scorings) whose reports agree with one another, when
    /// they are a strict majority of its verifiers; empty otherwise.
    pub agreeing: Vec<usize>,
    /// Its verified log-probability: the mean, over the agreeing verifiers (all of them when
    /// none agree), of the sum of the log-probabilities each reported.
    pub logprob: f64,
}

/// Whether two verifiers' reports agree: every log-probability and gap within `tol`.
fn close(a: &Scoring<'_>, b: &Scoring<'_>, tol: f32) -> bool {
    let near = |x: &[f32], y: &[f32]| {
        x.len() == y.len() && x.iter().zip(y).all(|(p, q)| (p - q).abs() <= tol)
    };
    near(a.logprobs, b.logprobs) && near(a.gaps, b.gaps)
}

/// Judges one candidate from its verifiers' scorings. Reports are voted as vectors, as answers
/// to an `embedding` task are: each gathers the reports within `tol` of it, the largest group
/// (ties: the earlier report) agrees when it is a strict majority.
pub fn judge_candidate(scorings: &[Scoring<'_>], tol: f32) -> CandidateVerdict {
    let n = scorings.len();
    let group = scorings
        .iter()
        .map(|c| {
            (0..n)
                .filter(|&j| close(c, &scorings[j], tol))
                .collect::<Vec<_>>()
        })
        .rev()
        .max_by_key(Vec::len)
        .unwrap_or_default();
    let agreeing = if group.len() * 2 > n {
        group
    } else {
        Vec::new()
    };
    let counted: Vec<usize> = if agreeing.is_empty() {
        (0..n).collect()
    } else {
        agreeing.clone()
    };
    let total = |s: &Scoring<'_>| s.logprobs.iter().map(|&l| f64::from(l)).sum::<f64>();
    let logprob = if counted.is_empty() {
        f64::NEG_INFINITY
    } else {
        counted.iter().map(|&i| total(&scorings[i])).sum::<f64>() / counted.len() as f64
    };
    CandidateVerdict {
        valid: scorings.iter().filter(|s| s.passed).count() * 2 > n,
        agreeing,
        logprob,
    }
}

/// The winning candidate: the valid one with the highest verified log-probability, ties to the
/// smaller id sequence; `None` when none is valid.
pub fn pick_winner(candidates: &[(&[u32], &CandidateVerdict)]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, (_, v))| v.valid)
        .max_by(|(_, (a_ids, a)), (_, (b_ids, b))| {
            a.logprob
                .partial_cmp(&b.logprob)
                .unwrap_or(Ordering::Equal)
                .then_with(|| b_ids.cmp(a_ids))
        })
        .map(|(i, _)| i)
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

    fn scoring<'a>(passed: bool, logprobs: &'a [f32], gaps: &'a [f32]) -> Scoring<'a> {
        Scoring {
            passed,
            logprobs,
            gaps,
        }
    }

    #[test]
    fn a_candidate_is_valid_on_a_strict_majority_of_passes() {
        let (lp, g0, g9) = ([-0.1f32, -0.2], [0.0f32, 0.0], [0.0f32, 9.0]);
        let honest = scoring(true, &lp, &g0);
        let refuse = scoring(false, &lp, &g9);
        assert!(judge_candidate(&[honest, honest, refuse], 1e-3).valid);
        assert!(!judge_candidate(&[honest, refuse], 1e-3).valid, "1 of 2");
        assert!(!judge_candidate(&[], 1e-3).valid);
        let v = judge_candidate(&[honest, refuse, honest], 1e-3);
        assert_eq!(v.agreeing, vec![0, 2]);
        assert!((v.logprob + 0.3).abs() < 1e-6);
        let split = judge_candidate(&[honest, refuse], 1e-3);
        assert!(split.agreeing.is_empty(), "no majority group");
    }

    #[test]
    fn the_winner_is_the_most_likely_valid_candidate_ties_to_the_smaller_ids() {
        let verdict = |valid, logprob| CandidateVerdict {
            valid,
            agreeing: Vec::new(),
            logprob,
        };
        let (a, b, c) = (
            verdict(true, -3.0),
            verdict(true, -2.0),
            verdict(false, -1.0),
        );
        let (x, y, z): (&[u32], &[u32], &[u32]) = (&[5, 2], &[4, 2], &[1, 2]);
        assert_eq!(pick_winner(&[(x, &a), (y, &b), (z, &c)]), Some(1));
        let tie = verdict(true, -3.0);
        assert_eq!(
            pick_winner(&[(x, &a), (y, &tie)]),
            Some(1),
            "[4, 2] < [5, 2]"
        );
        assert_eq!(pick_winner(&[(z, &c)]), None);
    }

    fn quorum(min_quorum: u32, max_answers: u32) -> VoteRule {
        VoteRule {
            policy: Policy::Quorum,
            min_quorum,
            max_answers,
            threshold: None,
        }
    }

    #[test]
    fn a_quorum_decides_a_split_asks_for_more_then_gives_up() {
        let rule = quorum(2, 4);
        assert_eq!(judge(&rule, 2, 0, 2), Outcome::Decided);
        assert_eq!(judge(&rule, 1, 1, 2), Outcome::MoreAnswers, "1-1");
        assert_eq!(judge(&rule, 2, 1, 3), Outcome::Decided, "2-1");
        assert_eq!(judge(&rule, 2, 2, 4), Outcome::NoConsensus, "2-2 at max");
        assert_eq!(
            judge(&rule, 1, 1, 4),
            Outcome::NoConsensus,
            "1-1-1-1 at max"
        );
        // A quorum that ties is no quorum.
        assert_eq!(judge(&quorum(2, 6), 2, 2, 4), Outcome::MoreAnswers);
        // The majority policy decides whatever the split.
        let majority = VoteRule {
            policy: Policy::Majority,
            min_quorum: 1,
            max_answers: 3,
            threshold: None,
        };
        assert_eq!(judge(&majority, 1, 1, 3), Outcome::Decided);
        // The tally gives the winner's and runner-up's counts.
        let d = decide(&[v("b", 0.9), v("a", 0.1), v("b", 0.2), v("c", 1.0)]).expect("d");
        assert_eq!((d.label.as_str(), d.votes, d.runner_up), ("b", 2, 1));
    }

    proptest::proptest! {
        /// Answers arrive one by one, judged once `required` are in: a task is decided exactly
        /// when some label has `min_quorum` answers and more than any other, never past
        /// `max_answers`; it gives up only at `max_answers` without such a label.
        #[test]
        fn the_quorum_rule_decides_only_uncontested_quorums(
            labels in proptest::collection::vec(0u8..3, 1..20),
            required in 1u32..6,
            quorum_of in 0u32..6,
            extra in 0u32..6,
        ) {
            let min_quorum = 1 + quorum_of % required;
            let rule = quorum(min_quorum, required + extra);
            let names = ["a", "b", "c"];
            let mut ended = false;
            for n in 1..=labels.len() {
                if n < required as usize {
                    continue;
                }
                let ballot: Vec<Vote<'_>> = labels[..n]
                    .iter()
                    .map(|&l| v(names[l as usize], 0.5))
                    .collect();
                let d = decide(&ballot).expect("answers");
                let mut counts = [0usize; 3];
                for &l in &labels[..n] {
                    counts[l as usize] += 1;
                }
                let top = *counts.iter().max().expect("3");
                let uncontested = counts.iter().filter(|&&c| c == top).count() == 1;
                match judge(&rule, d.votes, d.runner_up, n) {
                    Outcome::Decided => {
                        proptest::prop_assert!(top >= min_quorum as usize && uncontested);
                        proptest::prop_assert_eq!(counts[names.iter().position(|x| *x == d.label).expect("name")], top);
                        ended = true;
                    }
                    Outcome::MoreAnswers => {
                        proptest::prop_assert!(!(top >= min_quorum as usize && uncontested));
                        proptest::prop_assert!(n < rule.max_answers as usize);
                    }
                    Outcome::NoConsensus => {
                        proptest::prop_assert!(!(top >= min_quorum as usize && uncontested));
                        proptest::prop_assert_eq!(n, rule.max_answers as usize);
                        ended = true;
                    }
                }
                if ended {
                    break;
                }
            }
        }

        /// Whatever the candidates and however many verifiers lie (a minority of each
        /// candidate's), the honest answer wins, every wrong one is invalid, and no liar is in
        /// an agreeing group.
        #[test]
        fn an_honest_majority_of_verifiers_makes_the_honest_answer_win(
            wrong in 0usize..4,
            verifiers in 1usize..6,
            liars_seed in proptest::collection::vec(0usize..6, 5),
            len in 1usize..6,
        ) {
            let truth: Vec<u32> = (0..len as u32).collect();
            let candidates: Vec<Vec<u32>> = std::iter::once(truth.clone())
                .chain((0..wrong).map(|k| {
                    let mut c = truth.clone();
                    c[k % len] += 100;
                    c
                }))
                .collect();
            let honest_lp = vec![-0.5f32; len];
            let liar_lp = vec![0.0f32; len];
            let zero = vec![0.0f32; len];
            let mut verdicts = Vec::new();
            for (ci, c) in candidates.iter().enumerate() {
                let liars = liars_seed[ci % liars_seed.len()] % verifiers.div_ceil(2).max(1);
                let liars = if liars * 2 >= verifiers { 0 } else { liars };
                let gaps: Vec<f32> = c.iter().zip(&truth).map(|(a, b)| if a == b { 0.0 } else { 5.0 }).collect();
                let honest_pass = gaps.iter().all(|g| *g <= 1e-3);
                let mut scorings: Vec<Scoring<'_>> = Vec::new();
                for v in 0..verifiers {
                    scorings.push(if v < liars {
                        Scoring { passed: true, logprobs: &liar_lp, gaps: &zero }
                    } else {
                        Scoring { passed: honest_pass, logprobs: &honest_lp, gaps: &gaps }
                    });
                }
                let verdict = judge_candidate(&scorings, 1e-3);
                proptest::prop_assert_eq!(verdict.valid, ci == 0);
                proptest::prop_assert!(verdict.agreeing.iter().all(|&i| i >= liars));
                proptest::prop_assert_eq!(verdict.agreeing.len(), verifiers - liars);
                verdicts.push(verdict);
            }
            let ballot: Vec<(&[u32], &CandidateVerdict)> =
                candidates.iter().map(|c| c.as_slice()).zip(&verdicts).collect();
            proptest::prop_assert_eq!(pick_winner(&ballot), Some(0));
        }
    }
}
