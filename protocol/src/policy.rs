//! How a task's answers are counted: the vote policy and its bounds, gold (known-answer) items,
//! and the cancel and retry requests.
//!
//! The default policy is BOINC's validator's: a task is decided only when `min_quorum` answers
//! agree (a strict majority of `required` unless the client says otherwise); when the required
//! answers are in without a quorum the task is `inconclusive` and one more replica goes to a
//! distinct worker, up to `max_answers`, after which it fails with `no_consensus`. The original
//! system's rule (most votes, ties to the higher mean confidence) stays available per task as
//! [`Policy::Majority`]. [`Policy::Posterior`] weighs each answer by how often its model content
//! is right at the confidence it reported (calibrated on gold) and decides once the best label's
//! posterior reaches a threshold; a task asking for one answer then takes more only while the
//! posterior falls short (adaptive replication).

use crate::error::ProtocolError;
use crate::ids::{TaskId, TaskType};
use crate::limits::{MAX_LABEL_BYTES, MAX_REQUIRED_SUBMISSIONS};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The most answers a task may collect, inconclusive rounds included.
pub const MAX_ANSWERS_LIMIT: u32 = 2 * MAX_REQUIRED_SUBMISSIONS;

/// How a task's answers decide it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// A quorum of agreeing answers, or more replicas up to `max_answers`, or `no_consensus`.
    #[default]
    Quorum,
    /// The original rule: the most votes win once `required` answers are in; ties go to the
    /// higher mean confidence, then the smaller label.
    Majority,
    /// Calibrated pooling: each answer counts by the log-odds that it is right (its model
    /// content's gold record at its confidence, its worker's own record when worse); the task is
    /// decided when the best label's posterior reaches `threshold`, else it takes one more
    /// answer, up to `max_answers`. Label tasks only.
    Posterior,
}

impl Policy {
    /// The policy as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Quorum => "quorum",
            Policy::Majority => "majority",
            Policy::Posterior => "posterior",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = ProtocolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "quorum" => Ok(Policy::Quorum),
            "majority" => Ok(Policy::Majority),
            "posterior" => Ok(Policy::Posterior),
            other => Err(ProtocolError::invalid(
                "policy",
                format!("unknown policy {other:?} (expected quorum, majority or posterior)"),
            )),
        }
    }
}

/// The posterior the best label needs under [`Policy::Posterior`] when neither the task nor the
/// coordinator says otherwise.
pub const DEFAULT_POSTERIOR_THRESHOLD: f64 = 0.8;

/// A task's vote rule, resolved: what the coordinator stores and counts by.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VoteRule {
    /// The policy.
    pub policy: Policy,
    /// Agreeing answers needed ([`Policy::Quorum`]).
    pub min_quorum: u32,
    /// Answers collected at most, inconclusive rounds included ([`Policy::Quorum`],
    /// [`Policy::Posterior`]).
    pub max_answers: u32,
    /// The posterior the best label needs ([`Policy::Posterior`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

impl VoteRule {
    /// Resolves and checks what a client asked for a task needing `required` answers:
    /// `min_quorum` defaults to a strict majority of `required` and must lie in
    /// `1..=required`; `max_answers` defaults to `2 x required` and must lie in
    /// `required..=`[`MAX_ANSWERS_LIMIT`]. Neither is taken with [`Policy::Majority`].
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming the bound broken.
    pub fn resolve(
        required: u32,
        policy: Option<Policy>,
        min_quorum: Option<u32>,
        max_answers: Option<u32>,
    ) -> Result<Self, ProtocolError> {
        Self::resolve_with(required, policy, min_quorum, max_answers, None)
    }

    /// As [`VoteRule::resolve`], with the posterior `threshold` a [`Policy::Posterior`] task
    /// needs: in `(0.5, 1)`, [`DEFAULT_POSTERIOR_THRESHOLD`] when not given; its `max_answers`
    /// defaults to `2 x required`, at least 3. Other policies take no threshold.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming the bound broken.
    pub fn resolve_with(
        required: u32,
        policy: Option<Policy>,
        min_quorum: Option<u32>,
        max_answers: Option<u32>,
        threshold: Option<f64>,
    ) -> Result<Self, ProtocolError> {
        let policy = policy.unwrap_or_default();
        if policy == Policy::Posterior {
            return Self::posterior(required, min_quorum, max_answers, threshold);
        }
        if threshold.is_some() {
            return Err(ProtocolError::invalid(
                "threshold",
                format!("the {policy} policy takes no threshold (only posterior does)"),
            ));
        }
        if policy == Policy::Majority {
            if let Some((field, _)) = [("min_quorum", min_quorum), ("max_answers", max_answers)]
                .into_iter()
                .find(|(_, v)| v.is_some())
            {
                return Err(ProtocolError::invalid(
                    field,
                    "the majority policy decides once `required_submissions` answers are in: \
                     it takes no min_quorum or max_answers",
                ));
            }
            return Ok(Self {
                policy,
                min_quorum: 1,
                max_answers: required,
                threshold: None,
            });
        }
        let min_quorum = min_quorum.unwrap_or(required / 2 + 1);
        if min_quorum == 0 || min_quorum > required {
            return Err(ProtocolError::invalid(
                "min_quorum",
                format!("{min_quorum} is not between 1 and required_submissions ({required})"),
            ));
        }
        let max_answers = max_answers.unwrap_or(2 * required);
        check_max_answers(required, max_answers)?;
        Ok(Self {
            policy,
            min_quorum,
            max_answers,
            threshold: None,
        })
    }

    fn posterior(
        required: u32,
        min_quorum: Option<u32>,
        max_answers: Option<u32>,
        threshold: Option<f64>,
    ) -> Result<Self, ProtocolError> {
        if min_quorum.is_some() {
            return Err(ProtocolError::invalid(
                "min_quorum",
                "the posterior policy decides by the answers' calibrated weight, not a count: \
                 it takes a threshold, not a min_quorum",
            ));
        }
        let threshold = threshold.unwrap_or(DEFAULT_POSTERIOR_THRESHOLD);
        if !(threshold > 0.5 && threshold < 1.0) {
            return Err(ProtocolError::invalid(
                "threshold",
                format!("{threshold} is not in (0.5, 1)"),
            ));
        }
        let max_answers = max_answers.unwrap_or((2 * required).max(3));
        check_max_answers(required, max_answers)?;
        Ok(Self {
            policy: Policy::Posterior,
            min_quorum: 1,
            max_answers,
            threshold: Some(threshold),
        })
    }
}

/// `max_answers` lies in `required..=`[`MAX_ANSWERS_LIMIT`].
fn check_max_answers(required: u32, max_answers: u32) -> Result<(), ProtocolError> {
    if max_answers < required || max_answers > MAX_ANSWERS_LIMIT {
        return Err(ProtocolError::invalid(
            "max_answers",
            format!(
                "{max_answers} is not between required_submissions ({required}) and \
                 {MAX_ANSWERS_LIMIT}"
            ),
        ));
    }
    Ok(())
}

/// A count of gold answers and how many were right.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldScore {
    /// Gold answers checked.
    pub answered: u64,
    /// Of those, equal to the known answer.
    pub right: u64,
}

impl GoldScore {
    /// `right / answered`, when there is any.
    pub fn accuracy(&self) -> Option<f64> {
        (self.answered > 0).then(|| self.right as f64 / self.answered as f64)
    }
}

/// One known-answer item for `api.gold.add`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldItem {
    /// The input text.
    pub text: String,
    /// Its type (default `sentiment`).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<TaskType>,
    /// Candidate labels of a `zero-shot` item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The generative model (generative items; default the catalog's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The bound on generated tokens (generative items).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<u32>,
    /// The known answer: a label (`positive` or `negative` for `sentiment`, one of `labels`
    /// for `zero-shot`), or the expected text of a generative item.
    pub answer: String,
}

/// The labels a `sentiment` answer may be.
pub const SENTIMENT_LABELS: &[&str] = &["negative", "positive"];

impl GoldItem {
    /// A `sentiment` item.
    pub fn sentiment(text: impl Into<String>, positive: bool) -> Self {
        Self {
            text: text.into(),
            task_type: None,
            labels: None,
            model: None,
            max_new_tokens: None,
            answer: SENTIMENT_LABELS[usize::from(positive)].to_owned(),
        }
    }

    /// The item's type.
    pub fn task_type(&self) -> TaskType {
        self.task_type.clone().unwrap_or_default()
    }

    /// Checks the answer against the item's type: a `sentiment` answer is `positive` or
    /// `negative`, a `zero-shot` one is among its labels, `embedding` items do not exist (a
    /// vector has no single right answer), a generative answer is a non-empty text.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming what is wrong.
    pub fn check_answer(&self) -> Result<(), ProtocolError> {
        let task_type = self.task_type();
        if task_type.is_vector() {
            return Err(ProtocolError::invalid(
                "type",
                format!("{task_type} tasks have no single right answer: no gold for them"),
            ));
        }
        if task_type.is_generative() {
            return if self.answer.trim().is_empty() {
                Err(ProtocolError::invalid(
                    "answer",
                    "a generative gold item needs its expected text",
                ))
            } else {
                Ok(())
            };
        }
        if self.answer.is_empty() || self.answer.len() > MAX_LABEL_BYTES {
            return Err(ProtocolError::invalid(
                "answer",
                format!("a label must be 1 to {MAX_LABEL_BYTES} bytes"),
            ));
        }
        let known: Vec<&str> = match (&self.labels, task_type == TaskType::sentiment()) {
            (Some(labels), _) => labels.iter().map(String::as_str).collect(),
            (None, true) => SENTIMENT_LABELS.to_vec(),
            (None, false) => return Ok(()),
        };
        if known.contains(&self.answer.as_str()) {
            Ok(())
        } else {
            Err(ProtocolError::invalid(
                "answer",
                format!(
                    "{:?} is not a {task_type} label (expected one of: {})",
                    self.answer,
                    known.join(", ")
                ),
            ))
        }
    }
}

/// `api.gold.add`: known-answer items, all or none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldAddRequest {
    /// The items.
    pub items: Vec<GoldItem>,
}

/// Reply to [`GoldAddRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldAddReply {
    /// Items stored.
    pub added: u64,
    /// Items already stored (same type, text and labels), left as they were.
    pub already_known: u64,
    /// Gold items stored in all.
    pub total: u64,
}

/// `api.task.cancel` and `api.task.retry`: the tasks to act on, all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskIdsRequest {
    /// The tasks.
    pub task_ids: Vec<TaskId>,
}

/// Most tasks one cancel or retry names.
pub const MAX_TASK_IDS: usize = 10_000;

impl TaskIdsRequest {
    /// Checks the count.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] for an empty or oversize list, or an id given twice.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        if self.task_ids.is_empty() || self.task_ids.len() > MAX_TASK_IDS {
            return Err(ProtocolError::invalid(
                "task_ids",
                format!("must hold between 1 and {MAX_TASK_IDS} task ids"),
            ));
        }
        let mut seen = std::collections::HashSet::with_capacity(self.task_ids.len());
        if let Some(dup) = self.task_ids.iter().find(|t| !seen.insert(**t)) {
            return Err(ProtocolError::invalid(
                "task_ids",
                format!("{dup} is given twice"),
            ));
        }
        Ok(())
    }
}

/// Reply to [`TaskIdsRequest`]: the tasks acted on, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskIdsReply {
    /// The tasks now `cancelled` (cancel) or `queued` again (retry).
    pub task_ids: Vec<TaskId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_defaults_and_bounds() {
        let r = VoteRule::resolve(3, None, None, None).expect("defaults");
        assert_eq!(
            (r.policy, r.min_quorum, r.max_answers),
            (Policy::Quorum, 2, 6)
        );
        let r = VoteRule::resolve(2, None, None, None).expect("defaults");
        assert_eq!((r.min_quorum, r.max_answers), (2, 4));
        let r = VoteRule::resolve(4, None, Some(3), Some(10)).expect("given");
        assert_eq!((r.min_quorum, r.max_answers), (3, 10));
        for (q, m, field) in [
            (Some(0), None, "min_quorum"),
            (Some(4), None, "min_quorum"),
            (None, Some(2), "max_answers"),
            (None, Some(MAX_ANSWERS_LIMIT + 1), "max_answers"),
        ] {
            let e = VoteRule::resolve(3, None, q, m).expect_err("out of bounds");
            assert!(e.to_string().contains(field), "{e}");
        }
        let e = VoteRule::resolve(3, Some(Policy::Majority), Some(2), None).expect_err("mixed");
        assert!(e.to_string().contains("min_quorum"), "{e}");
        let r = VoteRule::resolve(3, Some(Policy::Majority), None, None).expect("majority");
        assert_eq!(r.max_answers, 3);
    }

    #[test]
    fn posterior_takes_a_threshold_and_no_quorum() {
        let r =
            VoteRule::resolve_with(1, Some(Policy::Posterior), None, None, None).expect("defaults");
        assert_eq!(
            (r.policy, r.max_answers, r.threshold),
            (Policy::Posterior, 3, Some(DEFAULT_POSTERIOR_THRESHOLD))
        );
        let r = VoteRule::resolve_with(3, Some(Policy::Posterior), None, Some(4), Some(0.95))
            .expect("given");
        assert_eq!((r.max_answers, r.threshold), (4, Some(0.95)));
        for (q, m, t, field) in [
            (Some(2), None, None, "min_quorum"),
            (None, None, Some(0.5), "threshold"),
            (None, None, Some(1.0), "threshold"),
            (None, None, Some(f64::NAN), "threshold"),
            (None, Some(2), None, "max_answers"),
        ] {
            let e = VoteRule::resolve_with(3, Some(Policy::Posterior), q, m, t)
                .expect_err("out of bounds");
            assert!(e.to_string().contains(field), "{e}");
        }
        let e = VoteRule::resolve_with(3, None, None, None, Some(0.9)).expect_err("quorum");
        assert!(e.to_string().contains("threshold"), "{e}");
        assert_eq!(
            "posterior".parse::<Policy>().expect("parses"),
            Policy::Posterior
        );
    }

    #[test]
    fn gold_answers_must_be_labels_of_their_type() {
        assert!(GoldItem::sentiment("good", true).check_answer().is_ok());
        let bad = GoldItem {
            answer: "neutral".into(),
            ..GoldItem::sentiment("meh", true)
        };
        assert!(bad
            .check_answer()
            .expect_err("unknown label")
            .to_string()
            .contains("neutral"));
        let zs = GoldItem {
            task_type: Some(TaskType::zero_shot()),
            labels: Some(vec!["sport".into(), "politics".into()]),
            answer: "cooking".into(),
            ..GoldItem::sentiment("x", true)
        };
        assert!(zs.check_answer().is_err());
        let emb = GoldItem {
            task_type: Some(TaskType::embedding()),
            ..GoldItem::sentiment("x", true)
        };
        assert!(emb.check_answer().is_err());
    }

    #[test]
    fn id_lists_are_bounded_and_unique() {
        let t = TaskId::new();
        assert!(TaskIdsRequest { task_ids: vec![] }.validate().is_err());
        assert!(TaskIdsRequest {
            task_ids: vec![t, t]
        }
        .validate()
        .is_err());
        assert!(TaskIdsRequest { task_ids: vec![t] }.validate().is_ok());
    }
}
