//! Choosing and finding models with `aimarket infer`, offline: `auto` falls back to the lexicon
//! and says why; transformer weights come from the Hugging Face cache (`HF_HOME`) when no
//! `--model-dir` is given; errors name the way out.

mod common;

use common::BIN;
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};
use test_support::models::{
    cache_model, write_distilbert, write_wordpiece_tokenizer, DistilBertShape,
};

const DISTILBERT: &str = "distilbert/distilbert-base-uncased-finetuned-sst-2-english";
const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// Runs `aimarket` with `HF_HOME` set and the network forbidden.
fn offline(hf_home: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("HF_HOME", hf_home)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .env_remove("AIMARKET_MODEL")
        .env_remove("AIMARKET_MODEL_DIR")
        .output()
        .expect("run aimarket")
}

fn rows(out: &Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON rows")
}

fn tiny_distilbert(dir: &Path) {
    let vocab = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "i", "love", "it", "hate", "this",
    ];
    write_wordpiece_tokenizer(dir, &vocab);
    let shape = DistilBertShape {
        vocab: vocab.len(),
        dim: 8,
        hidden: 16,
        layers: 1,
        heads: 2,
        positions: 16,
    };
    write_distilbert(dir, shape, 0.5, 3);
}

#[test]
fn auto_falls_back_to_the_lexicon_and_says_why() {
    let home = tempfile::tempdir().expect("temp dir");
    let out = offline(
        home.path(),
        &["--json", "infer", "--model", "auto", "I love it"],
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(rows(&out)[0]["model"], "lexicon/vader");
    assert!(
        err.contains("auto: using the lexicon") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}

#[test]
fn auto_takes_distilbert_from_the_hugging_face_cache() {
    let home = tempfile::tempdir().expect("temp dir");
    let folder = tempfile::tempdir().expect("temp dir");
    tiny_distilbert(folder.path());
    cache_model(home.path(), DISTILBERT, folder.path());
    let out = offline(
        home.path(),
        &[
            "--json",
            "infer",
            "--model",
            "auto",
            "I love it",
            "i hate this",
        ],
    );
    let rows = rows(&out);
    for r in &rows {
        assert_eq!(r["model"], "distilbert-sst2", "{r}");
        assert_eq!(r["scores"].as_array().map(Vec::len), Some(2), "two logits");
        assert!(["positive", "negative"].contains(&r["label"].as_str().expect("label")));
    }
    // The same folder by hand gives the same logits.
    let by_hand = Command::new(BIN)
        .args([
            "--json",
            "infer",
            "--model",
            "distilbert-sst2",
            "--model-dir",
        ])
        .arg(folder.path())
        .args(["I love it", "i hate this"])
        .output()
        .expect("run");
    let by_hand = self::rows(&by_hand);
    assert_eq!(rows[0]["scores"], by_hand[0]["scores"]);
    assert_eq!(rows[1]["scores"], by_hand[1]["scores"]);
}

#[test]
fn minilm_comes_from_the_cache_and_embeds_or_picks_a_label() {
    let home = tempfile::tempdir().expect("temp dir");
    cache_model(home.path(), MINILM, &test_support::minilm_dir());
    let minilm = |args: &[&str]| {
        let all = [&["--json", "infer", "--model", "minilm"], args].concat();
        rows(&offline(home.path(), &all)).remove(0)
    };
    let r = minilm(&["--type", "embedding", "I love this movie"]);
    assert_eq!(r["embedding"].as_array().map(Vec::len), Some(384), "{r}");
    assert!(r["label"].is_null());
    let r = minilm(&[
        "--labels",
        "sports,cooking",
        "Add the flour and bake for twenty minutes",
    ]);
    assert_eq!(r["label"], "cooking");
}

#[test]
fn model_errors_name_the_way_out() {
    let home = tempfile::tempdir().expect("temp dir");
    let cases: [(&[&str], &[&str]); 3] = [
        (
            &["infer", "--model", "gpt", "x"],
            &["unknown model", "auto, lexicon, distilbert-sst2, minilm"],
        ),
        (
            &["infer", "--model", "minilm", "x"],
            &[
                "not in the Hugging Face cache",
                "--model-dir",
                "--model lexicon",
            ],
        ),
        (
            &[
                "infer",
                "--model",
                "distilbert-sst2",
                "--model-dir",
                "/nonexistent",
                "x",
            ],
            &["config.json"],
        ),
    ];
    for (args, wants) in cases {
        let out = offline(home.path(), args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        for want in wants {
            assert!(err.contains(want), "{args:?}: {err} lacks {want:?}");
        }
    }
}

/// `eval` takes the weights folder as `--model-dir`, as `infer` and `worker` do, or as
/// `--model NAME=DIR`; a folder that fits no model, or several, is refused.
#[test]
fn eval_takes_model_dir_like_infer() {
    let home = tempfile::tempdir().expect("temp dir");
    let dir = home.path().join("sst2");
    std::fs::create_dir(&dir).expect("model dir");
    tiny_distilbert(&dir);
    let gold = home.path().join("gold.txt");
    std::fs::write(&gold, "1\t2.5\ti love it\n2\t-3.1\ti hate this\n3\t0\tit\n").expect("gold");
    let (dir, gold) = (dir.to_str().expect("utf8"), gold.to_str().expect("utf8"));
    let by_flag = rows(&offline(
        home.path(),
        &[
            "--json",
            "eval",
            "--model",
            "distilbert-sst2",
            "--model-dir",
            dir,
            "--model",
            "lexicon",
            gold,
        ],
    ));
    let by_spec = rows(&offline(
        home.path(),
        &[
            "--json",
            "eval",
            "--model",
            &format!("distilbert-sst2={dir}"),
            "--model",
            "lexicon",
            gold,
        ],
    ));
    let scores = |rows: &[Value]| -> Vec<(Value, Value)> {
        rows.iter()
            .map(|r| (r["model"].clone(), r["correct"].clone()))
            .collect()
    };
    assert_eq!(scores(&by_flag), scores(&by_spec));
    assert_eq!(by_flag.len(), 3, "two models and their vote: {by_flag:?}");
    assert_eq!(
        by_flag[0]["sentences"], 2,
        "the unrated sentence is skipped"
    );
    for (args, want) in [
        (
            vec!["eval", "--model", "lexicon", "--model-dir", dir, gold],
            "there is none",
        ),
        (
            vec![
                "eval",
                "--model",
                "minilm",
                "--model",
                "distilbert-sst2",
                "--model-dir",
                dir,
                gold,
            ],
            "any of minilm, distilbert-sst2",
        ),
    ] {
        let out = offline(home.path(), &args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err} lacks {want:?}");
    }
}

/// An opus-mt model found in the Hugging Face cache by name, offline: the repository is
/// `Helsinki-NLP/<name>`.
#[test]
fn an_opus_mt_model_loads_from_the_cache_by_name() {
    let home = tempfile::tempdir().expect("temp dir");
    let folder = tempfile::tempdir().expect("temp dir");
    test_support::marian::write_model(folder.path(), 2);
    test_support::marian::write_opus_tokenizer(folder.path());
    cache_model(home.path(), "Helsinki-NLP/opus-mt-en-de", folder.path());
    let out = offline(
        home.path(),
        &[
            "--json",
            "infer",
            "--model",
            "opus-mt-en-de",
            "--type",
            "translation",
            "--source-lang",
            "en",
            "--target-lang",
            "de",
            "--max-new-tokens",
            "6",
            "the cat",
        ],
    );
    let rows = rows(&out);
    assert_eq!(rows[0]["model"], "opus-mt-en-de");
    assert!(
        rows[0]["token_ids"]
            .as_array()
            .is_some_and(|ids| !ids.is_empty()),
        "{}",
        rows[0]
    );
    assert!(rows[0]["model_hash"].is_string());
    // A pair not in the cache says how to get it.
    let out = offline(
        home.path(),
        &[
            "infer",
            "--model",
            "opus-mt-en-fr",
            "--type",
            "translation",
            "x",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Helsinki-NLP/opus-mt-en-fr"));
}

#[test]
fn infer_scores_an_answer_as_a_verifier_does() {
    let home = tempfile::tempdir().expect("home");
    let dir = test_support::smollm2_dir();
    let base = [
        "--json",
        "infer",
        "--model",
        "smollm2",
        "--model-dir",
        dir.to_str().expect("utf8 path"),
        "--type",
        "generate",
        "--max-new-tokens",
        "12",
    ];
    let prompt = "What is the capital of France?";
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.push(prompt);
        rows(&offline(home.path(), &args)).remove(0)
    };
    let ids: Vec<u32> = serde_json::from_value(run(&[])["token_ids"].clone()).expect("ids");
    let list = |ids: &[u32]| ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    // The model's own answer passes, every gap far below eps.
    let own = run(&["--score-ids", &list(&ids)]);
    assert_eq!(own["passed"], true, "{own}");
    let eps = own["eps"].as_f64().expect("eps");
    let gaps: Vec<f64> = serde_json::from_value(own["gaps"].clone()).expect("gaps");
    assert_eq!(gaps.len(), ids.len());
    assert!(gaps.iter().all(|g| *g < eps / 10.0), "{gaps:?}");
    // Stopped early, it is refused.
    let mut early = ids[..ids.len() / 2].to_vec();
    early.push(protocol::generation::SMOLLM2.stop_ids[0]);
    let cut = run(&["--score-ids", &list(&early)]);
    assert_eq!(cut["passed"], false, "{cut}");
    // Not a generative model: a clear error.
    let out = offline(home.path(), &["infer", "--score-ids", "1", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("generative"));
}
