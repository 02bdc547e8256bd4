//! A drill for operators: `aimarket worker --misbehave KIND` makes a worker answer wrongly on
//! purpose, so anyone can watch verification catch it on a real deployment. Never for real work.
//!
//! Each kind keeps its answers well-formed on the wire (the coordinator would refuse a malformed
//! one outright and prove nothing): a bad generation still ends on a stop id or at exactly
//! `max_new_tokens`, and a lying verifier's gaps agree with its verdict.

use crate::model::{Input, Prediction, Scored};
use protocol::generation::{card, Decoding, GenerationSpec};
use protocol::messages::Lease;

/// How a drilled worker misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehave {
    /// Generations: the first half of the honest answer, ended by a stop id there.
    Truncate,
    /// Generations: random ids of the honest answer's length, ended the honest way.
    Random,
    /// Generations: sampled at temperature 1 with a seed of its own instead of the task's rule.
    OtherSeed,
    /// Generations: the prompt's own ids echoed back as the answer.
    Echo,
    /// Verifications: every candidate passes, with made-up zero gaps and log-probabilities.
    PassEverything,
    /// Label tasks: the opposite label (another candidate label for `zero-shot`).
    Flip,
}

impl Misbehave {
    /// Every kind, as `--misbehave` takes it.
    pub const ALL: &'static [(&'static str, Misbehave)] = &[
        ("truncate", Misbehave::Truncate),
        ("random", Misbehave::Random),
        ("other-seed", Misbehave::OtherSeed),
        ("echo", Misbehave::Echo),
        ("pass-everything", Misbehave::PassEverything),
        ("flip", Misbehave::Flip),
    ];

    /// The kind named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, m)| *m)
    }

    /// The input the model is run on: `other-seed` swaps the task's decoding for its own.
    pub fn input(self, mut input: Input) -> Input {
        if self == Misbehave::OtherSeed {
            input.decoding = Decoding::Sample {
                temperature: 1.0,
                seed: fastrand::u64(..),
            };
        }
        input
    }

    /// Spoils an honest prediction for `lease`.
    pub fn prediction(self, lease: &Lease, mut p: Prediction) -> Prediction {
        if let (Some(g), Some(spec)) = (p.generation.as_mut(), lease.generation.as_ref()) {
            let stop = spec.stop_ids.first().copied().unwrap_or(0);
            let ids = match self {
                Misbehave::Truncate => {
                    let mut ids = g.token_ids[..g.token_ids.len() / 2].to_vec();
                    ids.retain(|id| !spec.stop_ids.contains(id));
                    ids.push(stop);
                    Some(ids)
                }
                Misbehave::Random => {
                    let vocab = card(&spec.model).and_then(|c| c.vocab_size).unwrap_or(1000);
                    let n = g.token_ids.len();
                    let mut ids: Vec<u32> = (0..n)
                        .map(|_| loop {
                            let id = fastrand::u32(..vocab);
                            if !spec.stop_ids.contains(&id) {
                                break id;
                            }
                        })
                        .collect();
                    ends_as_spec_says(&mut ids, spec, stop);
                    Some(ids)
                }
                Misbehave::Echo => {
                    let mut ids: Vec<u32> = g
                        .prompt_token_ids
                        .iter()
                        .copied()
                        .filter(|id| !spec.stop_ids.contains(id))
                        .take(spec.max_new_tokens.saturating_sub(1) as usize)
                        .collect();
                    ids.push(stop);
                    Some(ids)
                }
                _ => None,
            };
            if let Some(ids) = ids {
                g.logprobs = vec![-1.0; ids.len()];
                g.token_ids = ids;
                // The text stays the honest one: where its tokens end is left unsaid.
                g.token_ends.clear();
            }
        } else if self == Misbehave::Flip && p.embedding.is_none() {
            p.label = match lease.labels.as_deref() {
                Some(labels) => labels
                    .iter()
                    .find(|l| **l != p.label)
                    .cloned()
                    .unwrap_or(p.label),
                None if p.label == "positive" => "negative".to_owned(),
                None => "positive".to_owned(),
            };
        }
        p
    }

    /// Spoils an honest score of `candidate`.
    pub fn scored(self, candidate: &[u32], s: Scored) -> Scored {
        if self == Misbehave::PassEverything {
            return Scored {
                logprobs: vec![0.0; candidate.len()],
                gaps: vec![0.0; candidate.len()],
            };
        }
        s
    }
}

/// Makes `ids` end as the spec says: the stop id last when shorter than `max_new_tokens`.
fn ends_as_spec_says(ids: &mut Vec<u32>, spec: &GenerationSpec, stop: u32) {
    if ids.len() < spec.max_new_tokens as usize {
        ids.pop();
        ids.push(stop);
    }
}
