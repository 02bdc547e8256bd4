//! Truth inference for label tasks (the posterior policy): how much to believe one answer, and
//! what several answers together say.
//!
//! - **Calibration** ([`Calibration`]): a model content's gold record for one task type, by the
//!   label it answered and the confidence it reported (ten bins), maps a new answer's
//!   confidence to the probability that it is right. Sparse cells borrow from their label's
//!   record, a label's from the model's, a model's from a conservative prior
//!   ([`PRIOR_ACCURACY`]), each by a few pseudo-answers, so one lucky gold answer moves little
//!   and a model without gold counts as a middling one.
//! - **A worker's own record**: a worker whose gold record is worse than its model's is believed
//!   by its own ([`for_worker`]); no answer counts for less than a guess (`1 / classes`), so a
//!   worker that is always wrong weighs nothing and decides nothing.
//! - **Pooling** ([`posterior`]): the labels' posterior is the normalized product of the answers'
//!   likelihoods (log-odds pooling): an answer right with probability `p` supports its label by
//!   `p` and each other label by its share of `1 - p`. That share is the model content's
//!   confusion row on gold (Dawid-Skene's, anchored on gold): of the gold items the model
//!   answered with this label wrongly, how many were each other label, smoothed towards an even
//!   spread ([`CONFUSION_PRIOR`] pseudo-answers a label), so a model that says `neutral` when
//!   the truth is `positive` supports `positive` when it says `neutral`. With two labels the row
//!   is moot; without gold it is the even spread `(1 - p) / (classes - 1)`. Answers are taken
//!   as independent; models that err together are counted as if they did not, which the
//!   calibration on gold cannot see.
//! - **Trust** ([`trusted`]): a sequential probability ratio test on a worker's gold answers
//!   since it was last caught wrong: accuracy as good as its model's against no better than a
//!   guess. Only a trusted worker's lone answer may decide a task, and even then a spot check
//!   sends it to another replica at the coordinator's rate. A wrong answer that takes the test
//!   below its bound catches the worker: its record starts over. One error of a worker far
//!   above the bound does not (a model right 75% of the time errs every fourth answer); a
//!   worker that turns to lying falls below it within a few.

use std::collections::BTreeMap;

/// Confidence bins of a calibration (`[0, 0.1)`, ..., `[0.9, 1]`).
pub const BINS: usize = 10;
/// Accuracy a model content is assumed to have before its gold says otherwise, above a guess
/// by this share of the way to certainty (0.7 for two classes).
pub const PRIOR_ACCURACY: f64 = 0.4;
/// Pseudo-answers of the prior in a model's accuracy.
const MODEL_PRIOR: f64 = 10.0;
/// Pseudo-answers of the model's accuracy in one of its labels'.
const LABEL_PRIOR: f64 = 10.0;
/// Pseudo-answers of the label's accuracy in one of its confidence bins'.
const BIN_PRIOR: f64 = 5.0;
/// Pseudo-answers, for each other label, of the even spread in a confusion row: a row moves
/// away from even only once a few wrong gold answers say where the model's errors go.
pub const CONFUSION_PRIOR: f64 = 2.0;
/// The most an answer is believed: one answer never makes a label certain.
pub const MAX_PROBABILITY: f64 = 0.99;
/// Gold answers a worker gives before its own record can lower its weight.
pub const WORKER_MIN_GOLD: u64 = 5;
/// The probability that a trusted worker's decisive lone answer is spot-checked anyway.
pub const DEFAULT_SPOT_CHECK_RATE: f64 = 0.1;
/// The sequential test's bound for trust: `ln((1 - beta) / alpha)` with both error rates 5%.
const TRUST_BOUND: f64 = 2.944_438_979_166_440_5;

/// The bin of a reported confidence.
pub fn bin(confidence: f64) -> usize {
    if confidence.is_nan() {
        return 0;
    }
    // Truncation is the binning.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let b = (confidence.clamp(0.0, 1.0) * BINS as f64) as usize;
    b.min(BINS - 1)
}

/// Gold answers in one cell of a calibration: how many, how many right, the sum of their
/// reported confidences and of their squared errors (confidence against right or wrong).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cell {
    /// Gold answers.
    pub answered: u64,
    /// Of those, right.
    pub correct: u64,
    /// Sum of their reported confidences.
    pub conf_sum: f64,
    /// Sum of `(confidence - right)^2`.
    pub sq_err: f64,
}

impl Cell {
    /// One gold answer.
    pub fn one(confidence: f64, correct: bool) -> Self {
        let truth = if correct { 1.0 } else { 0.0 };
        Self {
            answered: 1,
            correct: u64::from(correct),
            conf_sum: confidence,
            sq_err: (confidence - truth).powi(2),
        }
    }

    fn add(&mut self, other: &Cell) {
        self.answered += other.answered;
        self.correct += other.correct;
        self.conf_sum += other.conf_sum;
        self.sq_err += other.sq_err;
    }
}

/// `(correct + weight * prior) / (answered + weight)`: an accuracy that starts at `prior`.
fn smoothed(correct: u64, answered: u64, prior: f64, weight: f64) -> f64 {
    (correct as f64 + weight * prior) / (answered as f64 + weight)
}

/// A guess among `classes` labels.
fn guess(classes: usize) -> f64 {
    1.0 / classes.max(2) as f64
}

/// One model content's gold record for one task type, by answered label and confidence bin,
/// and its confusion: its wrong gold answers by answered label and true label.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    cells: BTreeMap<(String, usize), Cell>,
    confused: BTreeMap<String, BTreeMap<String, u64>>,
}

/// A confusion row without gold: the even spread.
static NO_CONFUSION: BTreeMap<String, u64> = BTreeMap::new();

/// One bin of a reliability diagram: gold answers whose reported confidence fell in
/// `[low, high)`, their mean confidence and how often they were right.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reliability {
    /// The bin's lower edge.
    pub low: f64,
    /// Gold answers in it.
    pub answered: u64,
    /// Their mean reported confidence.
    pub confidence: f64,
    /// The share of them that were right.
    pub accuracy: f64,
}

impl Calibration {
    /// Adds `cell` to label `label`'s bin `bin`.
    pub fn add(&mut self, label: &str, bin: usize, cell: &Cell) {
        self.cells
            .entry((label.to_owned(), bin.min(BINS - 1)))
            .or_default()
            .add(cell);
    }

    /// Adds `count` gold items whose truth was `truth` and that the model answered `answered`
    /// (a wrong answer: `answered` differs from `truth`; a right one is ignored here).
    pub fn add_confusion(&mut self, answered: &str, truth: &str, count: u64) {
        if answered == truth {
            return;
        }
        *self
            .confused
            .entry(answered.to_owned())
            .or_default()
            .entry(truth.to_owned())
            .or_default() += count;
    }

    /// The model's wrong gold answers `answered`, by their true label (empty without any).
    pub fn confusion(&self, answered: &str) -> &BTreeMap<String, u64> {
        self.confused.get(answered).unwrap_or(&NO_CONFUSION)
    }

    /// Every confusion count: `(answered, truth, count)`.
    pub fn confusions(&self) -> impl Iterator<Item = (&str, &str, u64)> {
        self.confused
            .iter()
            .flat_map(|(a, row)| row.iter().map(move |(t, n)| (a.as_str(), t.as_str(), *n)))
    }

    /// All gold answers of the model.
    pub fn total(&self) -> Cell {
        let mut all = Cell::default();
        for c in self.cells.values() {
            all.add(c);
        }
        all
    }

    fn label_total(&self, label: &str) -> Cell {
        let mut all = Cell::default();
        for ((l, _), c) in &self.cells {
            if l == label {
                all.add(c);
            }
        }
        all
    }

    /// The model's accuracy on gold, starting from the prior.
    pub fn accuracy(&self, classes: usize) -> f64 {
        let g = guess(classes);
        let prior = g + PRIOR_ACCURACY * (1.0 - g);
        let all = self.total();
        smoothed(all.correct, all.answered, prior, MODEL_PRIOR)
    }

    /// The probability that an answer `label` with reported `confidence` is right, between a
    /// guess and [`MAX_PROBABILITY`].
    pub fn probability(&self, label: &str, confidence: f64, classes: usize) -> f64 {
        let model = self.accuracy(classes);
        let l = self.label_total(label);
        let by_label = smoothed(l.correct, l.answered, model, LABEL_PRIOR);
        let c = self
            .cells
            .get(&(label.to_owned(), bin(confidence)))
            .copied()
            .unwrap_or_default();
        let p = smoothed(c.correct, c.answered, by_label, BIN_PRIOR);
        p.clamp(guess(classes), MAX_PROBABILITY)
    }

    /// The reliability diagram, labels together: the bins that hold gold answers.
    pub fn reliability(&self) -> Vec<Reliability> {
        let mut bins = [Cell::default(); BINS];
        for ((_, b), c) in &self.cells {
            bins[*b].add(c);
        }
        bins.iter()
            .enumerate()
            .filter(|(_, c)| c.answered > 0)
            .map(|(b, c)| Reliability {
                low: b as f64 / BINS as f64,
                answered: c.answered,
                confidence: c.conf_sum / c.answered as f64,
                accuracy: c.correct as f64 / c.answered as f64,
            })
            .collect()
    }

    /// The Brier score of the reported confidences on gold (lower is better; 0.25 is a coin
    /// reporting 0.5), when there is gold.
    pub fn brier(&self) -> Option<f64> {
        let all = self.total();
        (all.answered > 0).then(|| all.sq_err / all.answered as f64)
    }
}

/// A worker's gold record: answers and how many were right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Record {
    /// Gold answers.
    pub answered: u64,
    /// Of those, right.
    pub right: u64,
}

impl Record {
    /// The record with one more wrong answer.
    pub fn with_wrong(self) -> Self {
        Self {
            answered: self.answered + 1,
            ..self
        }
    }
}

fn logit(p: f64) -> f64 {
    (p / (1.0 - p)).ln()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `p` (what the worker's model content earns at this answer) for a worker with gold record
/// `record` on a model of accuracy `model`: lowered by the odds ratio between the two when the
/// worker's own record (from [`WORKER_MIN_GOLD`] answers) is worse, to a guess when that record
/// is no better than one; never below a guess.
pub fn for_worker(p: f64, model: f64, record: Record, classes: usize) -> f64 {
    if record.answered < WORKER_MIN_GOLD {
        return p;
    }
    let own = smoothed(record.right, record.answered, model, 2.0).clamp(0.001, 0.999);
    if own >= model {
        return p;
    }
    // A record no better than a guess: its answers say nothing.
    if own <= guess(classes) {
        return guess(classes);
    }
    sigmoid(logit(p) + logit(own) - logit(model)).clamp(guess(classes), MAX_PROBABILITY)
}

/// How strongly an answer right with probability `p` supports its label against any other one
/// label: `ln(p (classes - 1) / (1 - p))`, 0 for a guess.
pub fn weight(p: f64, classes: usize) -> f64 {
    let k = classes.max(2) as f64;
    (p * (k - 1.0) / (1.0 - p)).ln()
}

/// One counted answer: its label, the probability that it is right, where it goes when
/// wrong, and its share of its model content's say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Believed<'a> {
    /// What it answered.
    pub label: &'a str,
    /// How likely that is right.
    pub p: f64,
    /// Its model content's wrong gold answers of this label, by true label
    /// ([`Calibration::confusion`]).
    pub confused: &'a BTreeMap<String, u64>,
    /// `1 / n` when `n` answers of the task came from the same model content: a deterministic
    /// model gives every worker that runs it the same answer, so its copies are one piece of
    /// evidence, not `n` (and a worker that departs from its model's answer is outweighed by
    /// the others there).
    pub share: f64,
}

/// Each answer's share of its group's say: `1 / n` for a group of `n` (see [`Believed`]).
pub fn shares<K: PartialEq>(groups: &[K]) -> Vec<f64> {
    groups
        .iter()
        .map(|g| 1.0 / groups.iter().filter(|h| *h == g).count() as f64)
        .collect()
}

impl Believed<'_> {
    /// An answer whose model content has no confusion row on gold (its wrong mass spreads
    /// evenly).
    pub fn even(label: &str, p: f64, share: f64) -> Believed<'_> {
        Believed {
            label,
            p,
            confused: &NO_CONFUSION,
            share,
        }
    }

    /// The log-likelihood of truth `truth` given this answer (before its share): `ln p` for its
    /// own label, else `ln((1 - p) * s)` with `s` the label's share of the answer's wrong mass
    /// from its confusion row, counted over the task's labels `all` (of `k`), smoothed by
    /// [`CONFUSION_PRIOR`] a label. Without gold `s = 1 / (k - 1)`. `None`: a label the task
    /// could have that nobody lists (no count names it).
    fn log_likelihood(&self, truth: Option<&str>, all: &[&str], k: f64) -> f64 {
        if truth == Some(self.label) {
            return self.p.ln();
        }
        let others = k - 1.0;
        let wrong: u64 = self
            .confused
            .iter()
            .filter(|(t, _)| t.as_str() != self.label && all.contains(&t.as_str()))
            .map(|(_, n)| n)
            .sum();
        let here = truth
            .and_then(|t| self.confused.get(t))
            .copied()
            .unwrap_or(0) as f64;
        let share = (here + CONFUSION_PRIOR) / (wrong as f64 + CONFUSION_PRIOR * others);
        ((1.0 - self.p) * share).ln()
    }
}

/// The posterior of each label among `labels` (the answers' labels added when missing) given
/// `answers`, best first (ties: the smaller label). `classes` is how many labels the task
/// could have (at least the answers' distinct labels).
pub fn posterior(answers: &[Believed<'_>], labels: &[&str], classes: usize) -> Vec<(String, f64)> {
    let mut all: Vec<&str> = labels.to_vec();
    for a in answers {
        if !all.contains(&a.label) {
            all.push(a.label);
        }
    }
    all.sort_unstable();
    all.dedup();
    let k = classes.max(all.len()).max(2) as f64;
    let log: Vec<f64> = all
        .iter()
        .map(|label| {
            answers
                .iter()
                .map(|a| a.share * a.log_likelihood(Some(label), &all, k))
                .sum()
        })
        .collect();
    let top = log.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exp: Vec<f64> = log.iter().map(|l| (l - top).exp()).collect();
    // Labels that could be but are not listed share what the others leave (no confusion count
    // names them).
    let unseen = (k as usize).saturating_sub(all.len()) as f64;
    let unseen_each = answers
        .iter()
        .map(|a| a.share * a.log_likelihood(None, &all, k))
        .sum::<f64>();
    let z = exp.iter().sum::<f64>() + unseen * (unseen_each - top).exp();
    let mut out: Vec<(String, f64)> = all
        .iter()
        .zip(exp)
        .map(|(l, e)| ((*l).to_owned(), e / z))
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// Whether a worker with gold record `record` (since it was last caught wrong) on a model of
/// accuracy `model` has earned trust: the sequential test of "as good as its model" against
/// "no better than a guess" accepts the first. A model no better than a guess earns none.
pub fn trusted(record: Record, model: f64, classes: usize) -> bool {
    let g = guess(classes);
    if model <= g + 0.05 {
        return false;
    }
    let wrong = record.answered.saturating_sub(record.right) as f64;
    let llr = record.right as f64 * (model / g).ln() + wrong * ((1.0 - model) / (1.0 - g)).ln();
    llr >= TRUST_BOUND
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gold(cal: &mut Calibration, label: &str, confidence: f64, right: u64, wrong: u64) {
        for i in 0..right + wrong {
            cal.add(label, bin(confidence), &Cell::one(confidence, i < right));
        }
    }

    #[test]
    fn bins_cover_zero_to_one() {
        assert_eq!(bin(0.0), 0);
        assert_eq!(bin(0.55), 5);
        assert_eq!(bin(1.0), BINS - 1);
        assert_eq!(bin(f64::NAN), 0);
        assert_eq!(bin(7.0), BINS - 1);
    }

    #[test]
    fn calibration_follows_gold_and_starts_from_the_prior() {
        let none = Calibration::default();
        assert!((none.probability("positive", 0.9, 2) - 0.7).abs() < 1e-12);
        let mut cal = Calibration::default();
        gold(&mut cal, "positive", 0.95, 45, 5);
        gold(&mut cal, "positive", 0.55, 25, 25);
        let sure = cal.probability("positive", 0.95, 2);
        let unsure = cal.probability("positive", 0.55, 2);
        assert!(sure > 0.85 && unsure < 0.6, "{sure} {unsure}");
        let r = cal.reliability();
        assert_eq!(r.len(), 2);
        assert_eq!((r[1].answered, r[1].accuracy), (50, 0.9));
        let brier = cal.brier().expect("gold");
        assert!(brier > 0.0 && brier < 0.25, "{brier}");
    }

    #[test]
    fn a_worse_worker_is_believed_by_its_own_record() {
        let p = 0.9;
        let honest = for_worker(
            p,
            0.8,
            Record {
                answered: 20,
                right: 17,
            },
            2,
        );
        assert!((honest - p).abs() < 1e-12);
        let liar = for_worker(
            p,
            0.8,
            Record {
                answered: 20,
                right: 0,
            },
            2,
        );
        assert!((liar - 0.5).abs() < 1e-12, "never below a guess: {liar}");
        let new = for_worker(
            p,
            0.8,
            Record {
                answered: 2,
                right: 0,
            },
            2,
        );
        assert!((new - p).abs() < 1e-12);
    }

    #[test]
    fn pooling_weighs_the_better_calibrated_answer() {
        let answers = [
            Believed::even("positive", 0.6, 1.0),
            Believed::even("positive", 0.6, 1.0),
            Believed::even("negative", 0.95, 1.0),
        ];
        let post = posterior(&answers, &["negative", "positive"], 2);
        assert_eq!(post[0].0, "negative", "{post:?}");
        let sum: f64 = post.iter().map(|(_, p)| p).sum();
        assert!((sum - 1.0).abs() < 1e-9);
    }

    #[test]
    fn copies_of_one_model_count_once() {
        let copy = Believed::even("positive", 0.8, 1.0 / 3.0);
        let three = posterior(&[copy; 3], &["negative", "positive"], 2);
        let one = posterior(
            &[Believed { share: 1.0, ..copy }],
            &["negative", "positive"],
            2,
        );
        assert!((three[0].1 - one[0].1).abs() < 1e-12, "{three:?} {one:?}");
        assert_eq!(shares(&["a", "b", "a"]), [0.5, 1.0, 0.5]);
    }

    #[test]
    fn unseen_labels_keep_their_share() {
        let answers = [Believed::even("a", 0.5, 1.0)];
        let post = posterior(&answers, &["a"], 3);
        // p = 0.5 for "a", 0.25 for each of the two others nobody named.
        assert!((post[0].1 - 0.5).abs() < 1e-9, "{post:?}");
    }

    #[test]
    fn a_confusion_row_sends_the_wrong_mass_where_the_model_errs() {
        let labels = ["negative", "neutral", "positive"];
        // Model A's wrong `neutral` answers on gold were all `positive` items.
        let mut cal = Calibration::default();
        cal.add_confusion("neutral", "positive", 20);
        cal.add_confusion("neutral", "neutral", 50);
        assert_eq!(
            cal.confusions().collect::<Vec<_>>(),
            [("neutral", "positive", 20)]
        );
        let answers = |confused| {
            [
                Believed {
                    label: "neutral",
                    p: 0.4,
                    confused,
                    share: 1.0,
                },
                Believed::even("positive", 0.6, 1.0),
                Believed::even("negative", 0.6, 1.0),
            ]
        };
        let even = posterior(&answers(&NO_CONFUSION), &labels, 3);
        let pos = |post: &[(String, f64)], l: &str| {
            post.iter()
                .find(|(x, _)| x == l)
                .map(|(_, p)| *p)
                .expect("label")
        };
        assert!(
            (pos(&even, "positive") - pos(&even, "negative")).abs() < 1e-12,
            "{even:?}"
        );
        let row = posterior(&answers(cal.confusion("neutral")), &labels, 3);
        assert_eq!(row[0].0, "positive", "{row:?}");
        // 20 wrong answers and 2 pseudo-answers a label: 22/24 of the wrong mass to `positive`.
        let ratio = pos(&row, "positive") / pos(&row, "negative");
        assert!((ratio - 22.0 / 2.0).abs() < 1e-9, "{ratio}");
        // A count for a label this task does not list moves nothing.
        let mut other = Calibration::default();
        other.add_confusion("neutral", "sports", 30);
        let moot = posterior(&answers(other.confusion("neutral")), &labels, 3);
        assert_eq!(moot, even);
    }

    #[test]
    fn trust_needs_a_record_better_than_a_guess() {
        assert!(!trusted(Record::default(), 0.8, 2));
        assert!(trusted(
            Record {
                answered: 10,
                right: 10
            },
            0.8,
            2
        ));
        assert!(!trusted(
            Record {
                answered: 10,
                right: 5
            },
            0.8,
            2
        ));
        assert!(!trusted(
            Record {
                answered: 50,
                right: 50
            },
            0.52,
            2
        ));
    }

    proptest! {
        /// A posterior is a distribution, and a label nobody answered never leads one that
        /// somebody answered believably.
        #[test]
        fn posteriors_are_distributions(ps in proptest::collection::vec((0usize..3, 0.34f64..0.99), 1..7)) {
            let labels = ["a", "b", "c"];
            let answers: Vec<Believed<'_>> = ps.iter().map(|(l, p)| Believed::even(labels[*l], *p, 1.0)).collect();
            let post = posterior(&answers, &labels, 3);
            let sum: f64 = post.iter().map(|(_, p)| p).sum();
            prop_assert!((sum - 1.0).abs() < 1e-9);
            prop_assert!(post.windows(2).all(|w| w[0].1 >= w[1].1));
        }

        /// With confusion rows too, a posterior is a distribution, labels nobody lists
        /// included; with two labels a row changes nothing (the wrong mass has one place to go).
        #[test]
        fn confused_posteriors_are_distributions(
            ps in proptest::collection::vec((0usize..3, 0.34f64..0.99), 1..7),
            counts in proptest::collection::vec((0usize..3, 0usize..3, 0u64..40), 0..9),
        ) {
            let labels = ["a", "b", "c"];
            let mut cal = Calibration::default();
            for (a, t, n) in &counts {
                cal.add_confusion(labels[*a], labels[*t], *n);
            }
            let answers: Vec<Believed<'_>> = ps
                .iter()
                .map(|(l, p)| Believed { label: labels[*l], p: *p, confused: cal.confusion(labels[*l]), share: 1.0 })
                .collect();
            let post = posterior(&answers, &labels, 4);
            prop_assert_eq!(post.len(), 3);
            let listed: f64 = post.iter().map(|(_, p)| p).sum();
            prop_assert!(listed > 0.0 && listed <= 1.0 + 1e-9);
            prop_assert!(post.windows(2).all(|w| w[0].1 >= w[1].1));
            let two = ["a", "b"];
            let binary: Vec<Believed<'_>> = ps
                .iter()
                .map(|(l, p)| {
                    let label = two[*l % 2];
                    Believed { label, p: *p, confused: cal.confusion(label), share: 1.0 }
                })
                .collect();
            let even: Vec<Believed<'_>> = binary.iter().map(|b| Believed::even(b.label, b.p, 1.0)).collect();
            let (x, y) = (posterior(&binary, &two, 2), posterior(&even, &two, 2));
            prop_assert_eq!(x.len(), y.len());
            for ((lx, px), (ly, py)) in x.iter().zip(&y) {
                prop_assert_eq!(lx, ly);
                prop_assert!((px - py).abs() < 1e-12);
            }
        }

        /// An always-wrong worker's answer weighs nothing, however confident: alone it leaves
        /// the posterior at a guess, so it decides no task.
        #[test]
        fn an_always_wrong_worker_weighs_nothing(p in 0.5f64..0.99, n in 5u64..200) {
            let own = for_worker(p, 0.8, Record { answered: n, right: 0 }, 2);
            prop_assert!(weight(own, 2).abs() < 1e-9);
            let post = posterior(&[Believed::even("positive", own, 1.0)], &["negative", "positive"], 2);
            prop_assert!(post[0].1 <= 0.5 + 1e-9);
        }

        /// With answers from equally calibrated workers, the label most of them gave wins.
        #[test]
        fn an_honest_calibrated_majority_wins(p in 0.55f64..0.99, yes in 0usize..6, no in 0usize..6) {
            prop_assume!(yes != no);
            let mut answers = vec![Believed::even("positive", p, 1.0); yes];
            answers.extend(vec![Believed::even("negative", p, 1.0); no]);
            let post = posterior(&answers, &["negative", "positive"], 2);
            let want = if yes > no { "positive" } else { "negative" };
            prop_assert_eq!(post[0].0.as_str(), want);
        }
    }
}
