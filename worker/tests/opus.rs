//! `--model opus-mt-en-de` from a folder shaped like Helsinki-NLP's: a tiny random Marian
//! (`test-support`), a `source.spm`/`target.spm` SentencePiece model written here with prost, and
//! a `vocab.json` whose ids are not the spm's order, as in the real folders.

use protocol::TaskType;
use std::collections::HashMap;
use test_support::marian::{write_model, write_opus_tokenizer as write_tokenizer, EOS, PAD};
use worker::model::marian::Marian;
use worker::model::{Input, Stop};

#[test]
fn an_opus_mt_folder_translates_its_pair_through_its_spm_and_vocab() {
    let dir = tempfile::tempdir().expect("dir");
    write_model(dir.path(), 9);
    let vocab = write_tokenizer(dir.path());
    let model = worker::model::load("opus-mt-en-de", Some(dir.path())).expect("loads");
    assert_eq!(model.capabilities(), vec![TaskType::translation()]);
    let input = Input {
        max_new_tokens: Some(10),
        languages: Some(("en".into(), "de".into())),
        ..Input::new(TaskType::translation(), "the cat sleeps on the sofa.")
    };
    let answer = model
        .predict(std::slice::from_ref(&input))
        .remove(0)
        .expect("translated");
    let g = answer.generation.expect("a generation");
    // Pieces through vocab.json, not spm ids; </s> last.
    let want: Vec<u32> = ["the", "cat", "sleeps", "on", "the", "sofa"]
        .iter()
        .map(|w| vocab[&format!("\u{2581}{w}")])
        .collect();
    assert_eq!(&g.prompt_token_ids[..6], want.as_slice());
    assert_eq!(*g.prompt_token_ids.last().expect("ids"), EOS);
    // The generation is the forward's own greedy decoding of those ids.
    let forward = Marian::load(dir.path()).expect("forward");
    let alone = forward
        .generate(std::slice::from_ref(&g.prompt_token_ids), 10, &[EOS])
        .expect("generate");
    assert_eq!(g.token_ids, alone[0].0);
    assert!(!g.token_ids.contains(&PAD));
    match g.stop {
        Stop::StopToken => assert_eq!(g.token_ids.last(), Some(&EOS)),
        Stop::Length => assert_eq!(g.token_ids.len(), 10),
        Stop::StopString => panic!("no stop strings were given"),
    }
    // Its text is its pieces, `▁` read as spaces, special pieces left out.
    let by_id: HashMap<u32, &String> = vocab.iter().map(|(p, i)| (*i, p)).collect();
    let pieces: String = g
        .token_ids
        .iter()
        .map(|i| by_id[i].as_str())
        .filter(|p| !p.starts_with('<'))
        .collect();
    assert_eq!(g.text, pieces.replace('\u{2581}', " ").trim_start());
    // Only its own pair, only translation.
    for (t, langs) in [
        (TaskType::translation(), Some(("de", "en"))),
        (TaskType::translation(), Some(("en", "fr"))),
        (TaskType::summarization(), None),
    ] {
        let bad = Input {
            languages: langs.map(|(a, b)| (a.into(), b.into())),
            ..Input::new(t, "the cat")
        };
        assert!(model.predict(&[bad])[0].is_err(), "{langs:?}");
    }
    assert!(worker::model::load("opus-mt-en", Some(dir.path())).is_err());
    assert_eq!(
        worker::model::load("opus-mt-en-de", Some(dir.path()))
            .expect("again")
            .content_hash(),
        model.content_hash()
    );
}
