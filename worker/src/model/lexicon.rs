//! `lexicon`: VADER (Hutto & Gilbert, 2014), a rule-based sentiment model with a human-rated
//! lexicon, via the `vader_sentiment` crate. Offline and instant; answers `sentiment` tasks.
//!
//! The label is the sign of VADER's compound score (`positive` at 0 and above, as VADER's own
//! "not negative" side); the confidence maps its magnitude onto `[0.5, 1]`.

use super::interface::{Input, Model, ModelError, Prediction};
use protocol::TaskType;
use vader_sentiment::SentimentIntensityAnalyzer;

/// The VADER lexicon model.
pub struct Lexicon {
    analyzer: SentimentIntensityAnalyzer<'static>,
    hash: String,
}

impl Lexicon {
    /// Loads the lexicon (bundled in the crate).
    pub fn new() -> Self {
        Self {
            analyzer: SentimentIntensityAnalyzer::new(),
            hash: lexicon_hash(),
        }
    }

    /// VADER's compound score of `text`, in `[-1, 1]`.
    pub fn compound(&self, text: &str) -> f64 {
        self.analyzer
            .polarity_scores(text)
            .get("compound")
            .copied()
            .unwrap_or(0.0)
    }
}

impl Default for Lexicon {
    fn default() -> Self {
        Self::new()
    }
}

/// SHA-256 of what the model loaded: the word and emoji lexicons (sorted entries) and the rules'
/// crate version, so two workers with the same hash score every text alike.
fn lexicon_hash() -> String {
    use sha2::Digest;
    let mut words: Vec<(String, f64)> = vader_sentiment::LEXICON
        .iter()
        .map(|(w, v)| (w.as_ref().to_owned(), *v))
        .collect();
    words.sort_by(|a, b| a.0.cmp(&b.0));
    let mut emoji: Vec<(&str, &str)> = vader_sentiment::EMOJI_LEXICON
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect();
    emoji.sort_unstable();
    let mut h = sha2::Sha256::new();
    h.update(b"vader_sentiment 0.1.1\n");
    for (w, v) in words {
        h.update(format!("{w}\t{v}\n"));
    }
    for (k, v) in emoji {
        h.update(format!("{k}\t{v}\n"));
    }
    hex::encode(h.finalize())
}

/// Turns a compound score into a label and a confidence.
pub fn classify(compound: f64) -> Prediction {
    let label = if compound >= 0.0 {
        "positive"
    } else {
        "negative"
    };
    Prediction {
        input_tokens: None,
        label: label.to_owned(),
        embedding: None,
        confidence: (0.5 + compound.abs() / 2.0).clamp(0.5, 1.0),
        scores: vec![compound as f32],
        generation: None,
    }
}

impl Model for Lexicon {
    fn id(&self) -> &str {
        "lexicon/vader"
    }

    fn content_hash(&self) -> Option<&str> {
        Some(&self.hash)
    }

    fn capabilities(&self) -> Vec<TaskType> {
        vec![TaskType::sentiment()]
    }

    fn predict(&self, inputs: &[Input]) -> Vec<Result<Prediction, ModelError>> {
        inputs
            .iter()
            .map(|input| {
                if input.task_type != TaskType::sentiment() {
                    return Err(ModelError::Unsupported {
                        model: self.id().to_owned(),
                        task_type: input.task_type.clone(),
                    });
                }
                Ok(classify(self.compound(&input.text)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(model: &Lexicon, text: &str) -> Prediction {
        model
            .predict(&[Input::new(TaskType::sentiment(), text)])
            .remove(0)
            .expect("prediction")
    }

    #[test]
    fn plain_sentences() {
        let m = Lexicon::new();
        let good = label(&m, "I absolutely love this product, it works perfectly!");
        assert_eq!(good.label, "positive");
        assert!(good.confidence > 0.9, "{good:?}");
        let bad = label(
            &m,
            "This was the worst purchase I have ever made. Terrible.",
        );
        assert_eq!(bad.label, "negative");
        assert!(bad.confidence > 0.8, "{bad:?}");
        let flat = label(&m, "The box is on the table.");
        assert!((flat.confidence - 0.5).abs() < 1e-9, "{flat:?}");
    }

    #[test]
    fn the_content_hash_is_stable_and_of_the_lexicon() {
        let (a, b) = (Lexicon::new(), Lexicon::new());
        let h = a.content_hash().expect("a hash");
        assert_eq!(Some(h), b.content_hash());
        assert!(protocol::generation::is_sha256(h), "{h}");
    }

    #[test]
    fn other_task_types_are_refused() {
        let m = Lexicon::new();
        let r = m.predict(&[Input::new(
            TaskType::new("translate").expect("type"),
            "hola",
        )]);
        assert!(matches!(r[0], Err(ModelError::Unsupported { .. })));
    }

    #[test]
    fn agrees_with_human_raters_on_product_reviews() {
        // The VADER study's ground truth: `id<TAB>mean rating<TAB>text`; gold = sign of the rating.
        let path = test_support::sentences_dir().join("amazonReviewSnippets_GroundTruth.txt");
        let data = std::fs::read_to_string(&path).expect("ground truth readable");
        let m = Lexicon::new();
        let (mut right, mut total, mut positives) = (0, 0, 0);
        for line in data.lines() {
            let mut cols = line.splitn(3, '\t');
            let (Some(_), Some(rating), Some(text)) = (cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            let rating: f64 = rating.trim().parse().expect("rating");
            if rating == 0.0 {
                continue;
            }
            let gold = if rating > 0.0 { "positive" } else { "negative" };
            total += 1;
            right += usize::from(label(&m, text).label == gold);
            positives += usize::from(gold == "positive");
        }
        let accuracy = right as f64 / total as f64;
        let majority = positives.max(total - positives) as f64 / total as f64;
        assert!(total > 3000, "{total} sentences");
        // Forced to two labels (a sentence without sentiment words counts as positive), VADER
        // gets about 0.70 here; always answering the majority label gets `majority`.
        assert!(
            accuracy > 0.68 && accuracy > majority + 0.1,
            "accuracy {accuracy:.3} on {total} (majority baseline {majority:.3})"
        );
    }
}
