//! Choosing tokens and scoring candidates: the arithmetic generators and verifiers share.
//!
//! A generator picks, at step `t`, `y_t = argmax_v(logits_t[v] / T + g_t[v])` (greedy: `T = 1`,
//! `g = 0`; ties to the lowest id), where the Gumbel noise `g_t[v]` comes from ChaCha8 keyed by
//! the task's seed, on stream `t`, at word `v`: a counter-based generator, so a verifier computes
//! the same noise for any step and token without replaying the others.
//!
//! A verifier runs one teacher-forced pass over a candidate and reports, per position, the
//! candidate token's log-probability and its *gap*: how far (in logits, `T x` the perturbed
//! score difference) it lies below the best token. The candidate passes when every gap is at most
//! the model's `eps` and the stop rule holds ([`stop_rule_holds`]).

use crate::generation::{Decoding, GenerationSpec};
use crate::ProtocolError;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

/// A candidate answer handed to a verifier: the ids to score under the lease's task and spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyJob {
    /// The candidate's token ids, its stop id included when it has one.
    pub token_ids: Vec<u32>,
}

/// A verifier's result: per position, the candidate token's log-probability and its gap to the
/// best token, and the verdict they give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// Natural-log probability of each candidate token (under `logits / T`).
    pub logprobs: Vec<f32>,
    /// How far each candidate token lies below the token the decoding rule picks, in logits.
    pub gaps: Vec<f32>,
    /// Whether the candidate passes: every gap within the model's `eps` and the stop rule held.
    pub passed: bool,
    /// Whether the scoring was exact: the scorer's engine computes the same logits bit for bit on
    /// every CPU, thread count and batch, and every gap is exactly 0, so the candidate is the
    /// very answer that engine generates (not only one within `eps`, the tolerance kept for
    /// answers from other engines). Absent (false) from scorers that cannot tell.
    #[serde(default)]
    pub exact: bool,
}

impl Verification {
    /// Checks the shape: one finite log-probability (at most 0) and one finite, non-negative
    /// gap per candidate token.
    ///
    /// # Errors
    /// [`ProtocolError::Invalid`] naming the field.
    pub fn validate(&self, tokens: usize) -> Result<(), ProtocolError> {
        for (field, len) in [("logprobs", self.logprobs.len()), ("gaps", self.gaps.len())] {
            if len != tokens {
                return Err(ProtocolError::invalid(
                    field,
                    format!("{len} values for a candidate of {tokens} tokens"),
                ));
            }
        }
        if self.logprobs.iter().any(|l| !l.is_finite() || *l > 0.0) {
            return Err(ProtocolError::invalid(
                "logprobs",
                "must be finite and at most 0",
            ));
        }
        if self.gaps.iter().any(|g| !g.is_finite() || *g < 0.0) {
            return Err(ProtocolError::invalid(
                "gaps",
                "must be finite and at least 0",
            ));
        }
        if self.exact && (!self.passed || self.gaps.iter().any(|g| *g != 0.0)) {
            return Err(ProtocolError::invalid(
                "exact",
                "an exact scoring passes with every gap exactly 0",
            ));
        }
        Ok(())
    }
}

/// Whether `ids` end the way the spec says a generation ends: on their first stop id, or at
/// exactly `max_new_tokens` without one. With stop strings, ids without a stop id may also end
/// earlier (on a stop string, which only the tokenizer sees: the workers check that cut, and
/// exact match between them verifies it).
pub fn stop_rule_holds(ids: &[u32], spec: &GenerationSpec) -> bool {
    let max = spec.max_new_tokens as usize;
    match ids.iter().position(|id| spec.stop_ids.contains(id)) {
        Some(i) => i + 1 == ids.len(),
        None if !spec.stop.is_empty() => !ids.is_empty() && ids.len() <= max,
        None => !ids.is_empty() && ids.len() == max,
    }
}

/// The verdict gaps give: every one within `eps`, and the stop rule held.
pub fn verdict(ids: &[u32], gaps: &[f32], spec: &GenerationSpec, eps: f32) -> bool {
    gaps.len() == ids.len() && gaps.iter().all(|g| *g <= eps) && stop_rule_holds(ids, spec)
}

/// Gumbel noise for every token id at `step` of a generation seeded with `seed`.
pub fn gumbel(seed: u64, step: usize, vocab: usize) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(step as u64);
    (0..vocab)
        .map(|_| {
            // 53 random bits, centred in their interval: u in (0, 1), never 0 or 1.
            let u = ((rng.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            // libm's log, not the system's: the same bits on every CPU.
            -libm::log(-libm::log(u))
        })
        .collect()
}

/// The scores the decoding rule maximizes at `step`: the logits (greedy), or `logits / T` plus
/// Gumbel noise (sampling), and the temperature they are scaled by.
fn perturbed(logits: &[f32], step: usize, decoding: &Decoding) -> (Vec<f64>, f64) {
    match *decoding {
        Decoding::Greedy => (logits.iter().map(|&l| f64::from(l)).collect(), 1.0),
        Decoding::Sample { temperature, seed } => {
            let t = f64::from(temperature);
            let g = gumbel(seed, step, logits.len());
            (
                logits
                    .iter()
                    .zip(g)
                    .map(|(&l, g)| f64::from(l) / t + g)
                    .collect(),
                t,
            )
        }
    }
}

/// The log-probability of `id` under `logits / T`, with libm's `exp` and `log` rather than the
/// system's (which may pick other instructions on other CPUs): the same bits on every worker.
fn logprob(logits: &[f32], id: usize, t: f64) -> f32 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l)) as f64 / t;
    let sum: f64 = logits
        .iter()
        .map(|&l| libm::exp(f64::from(l) / t - max))
        .sum();
    (f64::from(logits[id]) / t - max - libm::log(sum)) as f32
}

/// The token the decoding rule picks at `step` (ties to the lowest id) and its log-probability.
pub fn choose(logits: &[f32], step: usize, decoding: &Decoding) -> (u32, f32) {
    let (scores, t) = perturbed(logits, step, decoding);
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    (best as u32, logprob(logits, best, t))
}

/// Scores candidate token `id` at `step`: its log-probability and its gap to the token the rule
/// picks, in logits. An id outside the vocabulary scores `-inf`-like: log-probability and gap of
/// `f32::MAX` magnitude, so it never passes.
pub fn score(logits: &[f32], step: usize, decoding: &Decoding, id: u32) -> (f32, f32) {
    let id = id as usize;
    if id >= logits.len() {
        return (-f32::MAX, f32::MAX);
    }
    let (scores, t) = perturbed(logits, step, decoding);
    let best = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
    let gap = ((best - scores[id]) * t) as f32;
    (
        logprob(logits, id, t).max(-f32::MAX),
        gap.clamp(0.0, f32::MAX),
    )
}

#[cfg(test)]
mod tests {
    /// The log-probabilities and Gumbel noise every worker computes, pinned to their bits: they
    /// come from libm's pure-Rust `exp` and `log`, the same on every CPU, not from the system's.
    #[test]
    fn logprobs_and_noise_have_the_same_bits_everywhere() {
        let logits = [1.5f32, -0.25, 3.0, 0.125, -7.0];
        let bits: Vec<u32> = (0..logits.len())
            .map(|i| super::logprob(&logits, i, 0.7).to_bits())
            .collect();
        assert_eq!(
            bits,
            [
                3_222_386_738,
                3_231_243_289,
                3_188_275_714,
                3_230_119_815,
                3_244_734_257
            ]
        );
        let noise: Vec<u64> = super::gumbel(42, 3, 4)
            .iter()
            .map(|g| g.to_bits())
            .collect();
        assert_eq!(
            noise,
            [
                13_803_877_751_692_266_523,
                4_604_004_068_864_551_155,
                4_607_887_403_205_062_563,
                4_600_267_249_091_220_255
            ]
        );
    }

    use super::*;
    use crate::generation::{resolve, SpecRequest};
    use crate::TaskType;

    fn spec(max: u32) -> GenerationSpec {
        resolve(
            &TaskType::generate(),
            &SpecRequest {
                max_new_tokens: Some(max),
                ..SpecRequest::default()
            },
        )
        .expect("spec")
    }

    #[test]
    fn the_stop_rule_wants_a_stop_id_last_or_exactly_max_new_tokens() {
        let s = spec(3);
        assert!(stop_rule_holds(&[5, 2], &s));
        assert!(stop_rule_holds(&[5, 6, 7], &s));
        assert!(!stop_rule_holds(&[5, 6], &s), "early end without a stop id");
        assert!(!stop_rule_holds(&[2, 6], &s), "goes on past the stop id");
        assert!(!stop_rule_holds(&[], &s));
        let with_strings = GenerationSpec {
            stop: vec!["\n".to_owned()],
            ..s.clone()
        };
        assert!(
            stop_rule_holds(&[5, 6], &with_strings),
            "cut on a stop string"
        );
        assert!(!stop_rule_holds(&[2, 6], &with_strings), "past the stop id");
        assert!(
            !stop_rule_holds(&[5, 6, 7, 8], &with_strings),
            "past the bound"
        );
        assert!(!stop_rule_holds(&[], &with_strings));
    }

    #[test]
    fn greedy_picks_the_arg_max_and_scores_it_at_gap_zero() {
        let logits = [0.5, 2.0, 2.0, -1.0];
        let (id, lp) = choose(&logits, 0, &Decoding::Greedy);
        assert_eq!(id, 1, "ties go to the lowest id");
        let (lp1, gap1) = score(&logits, 0, &Decoding::Greedy, 1);
        assert_eq!((lp1, gap1), (lp, 0.0));
        assert_eq!(score(&logits, 0, &Decoding::Greedy, 2).1, 0.0, "a true tie");
        assert_eq!(score(&logits, 0, &Decoding::Greedy, 0).1, 1.5);
        assert_eq!(score(&logits, 0, &Decoding::Greedy, 9).1, f32::MAX);
    }

    #[test]
    fn sampling_is_reproducible_by_seed_step_and_id_and_varies_with_each() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let d = |seed| Decoding::Sample {
            temperature: 0.8,
            seed,
        };
        let picks = |seed| {
            (0..40)
                .map(|s| choose(&logits, s, &d(seed)).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(picks(7), picks(7));
        assert_ne!(picks(7), picks(8), "another seed samples otherwise");
        let distinct: std::collections::BTreeSet<_> = picks(7).into_iter().collect();
        assert!(distinct.len() > 3, "sampling picks more than the arg-max");
        for s in 0..40 {
            let (id, lp) = choose(&logits, s, &d(7));
            assert_eq!(score(&logits, s, &d(7), id), (lp, 0.0));
            assert!(score(&logits, s, &d(8), id).1 >= 0.0);
        }
        // Word v of stream t is the noise of token v at step t, whatever the vocabulary size.
        assert_eq!(gumbel(3, 5, 10)[..], gumbel(3, 5, 20)[..10]);
    }

    #[test]
    fn a_verdict_needs_every_gap_within_eps_and_the_stop_rule() {
        let s = spec(4);
        assert!(verdict(&[4, 2], &[0.0, 0.001], &s, 0.001));
        assert!(!verdict(&[4, 2], &[0.0, 0.0011], &s, 0.001));
        assert!(!verdict(&[4, 5], &[0.0, 0.0], &s, 0.001), "stop rule");
        let v = Verification {
            logprobs: vec![-0.1, 0.2],
            gaps: vec![0.0, 0.0],
            passed: true,
            exact: true,
        };
        assert!(v.validate(2).is_err(), "a positive log-probability");
        assert!(
            v.validate(3).is_err(),
            "a length that is not the candidate's"
        );
    }
}
