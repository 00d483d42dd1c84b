//! Packing: layout, and no cross-contamination — a packed example's logits equal its logits alone.

mod common;

use burnish_core::backend::Cpu;
use burnish_core::burn::tensor::{Int, Tensor, TensorData};
use burnish_core::{Message, Pretrained};
use burnish_data::config::{AssistantTurns, Truncation};
use burnish_data::{
    pack, Batch, ChatEncoder, EncodeOptions, Packed, SftExample, TokenizedExample, IGNORE_INDEX,
};
use common::*;

fn example(len: usize, first_id: u32) -> TokenizedExample {
    let ids: Vec<u32> = (0..len as u32).map(|i| first_id + i).collect();
    TokenizedExample {
        labels: ids.iter().map(|&i| i as i64).collect(),
        input_ids: ids,
        truncated: false,
        category: None,
    }
}

#[test]
fn best_fit_packing_layout() {
    let lens = [5usize, 3, 7, 2, 6];
    let examples: Vec<TokenizedExample> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| example(l, 100 * i as u32))
        .collect();
    let rows = pack(&examples, 8).unwrap();
    // 23 tokens need at least 3 rows of 8; best fit finds 3.
    assert_eq!(rows.len(), 3);
    let mut seen: Vec<u32> = Vec::new();
    for r in &rows {
        assert!(r.len() <= 8);
        assert_eq!(r.labels.len(), r.len());
        let mut start = 0;
        for seg in 1..=r.segments() as u32 {
            let n = r.segment_ids.iter().filter(|&&s| s == seg).count();
            assert_eq!(r.segment_ids[start..start + n], vec![seg; n]);
            assert_eq!(
                r.position_ids[start..start + n],
                (0..n as i64).collect::<Vec<_>>()
            );
            // The first token of a segment is never a target: it would be predicted across the boundary.
            assert_eq!(r.labels[start], IGNORE_INDEX);
            assert_eq!(
                r.labels[start + 1..start + n],
                r.input_ids[start + 1..start + n]
                    .iter()
                    .map(|&i| i as i64)
                    .collect::<Vec<_>>()
            );
            start += n;
        }
        seen.extend(&r.input_ids);
    }
    seen.sort();
    let mut all: Vec<u32> = examples.iter().flat_map(|e| e.input_ids.clone()).collect();
    all.sort();
    assert_eq!(seen, all);
    let e = pack(&examples, 6).unwrap_err().to_string();
    assert!(
        e.contains("example 2 has 7 tokens, more than the packing length 6"),
        "{e}"
    );
}

#[test]
fn batches_pad_right_with_segment_zero() {
    let rows = vec![
        Packed::single(&example(3, 10)),
        Packed::single(&example(1, 20)),
    ];
    let b = Batch::new(&rows, 0);
    assert_eq!((b.rows, b.len), (2, 3));
    assert_eq!(b.input_ids, [10, 11, 12, 20, 0, 0]);
    assert_eq!(
        b.labels,
        [
            IGNORE_INDEX,
            11,
            12,
            IGNORE_INDEX,
            IGNORE_INDEX,
            IGNORE_INDEX
        ]
    );
    assert_eq!(b.position_ids, [0, 1, 2, 0, 0, 0]);
    assert_eq!(b.segment_ids, [1, 1, 1, 1, 0, 0]);
}

fn to_vec(t: Tensor<Cpu, 3>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

#[test]
fn packed_logits_equal_unpacked_logits() {
    let model = Pretrained::<Cpu>::load(smollm2(), &Default::default()).unwrap();
    let bundle = burnish_core::TokenizerBundle::load(smollm2()).unwrap();
    let opts = EncodeOptions {
        max_length: 512,
        truncation: Truncation::Right,
        assistant_turns: AssistantTurns::All,
    };
    let enc = ChatEncoder::from_bundle(&bundle, opts).unwrap();
    let convs = [
        vec![
            Message::user("What is the capital of France?"),
            Message::assistant("Paris."),
        ],
        vec![
            Message::user("Name three colours."),
            Message::assistant("Red, green and blue."),
        ],
        vec![
            Message::system("Answer in French."),
            Message::user("Hello!"),
            Message::assistant("Bonjour !"),
        ],
    ];
    let examples: Vec<TokenizedExample> = convs
        .iter()
        .map(|m| {
            let ex = SftExample {
                messages: m.clone(),
                category: None,
                harmful: None,
                refused: None,
                unfinished: false,
                origin: None,
            };
            enc.encode_sft(&ex).unwrap().unwrap()
        })
        .collect();
    let total: usize = examples.iter().map(|e| e.input_ids.len()).sum();
    let rows = pack(&examples, total).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].segments(), 3);
    let batch = Batch::new(&rows, model.pad_id());
    let device = Default::default();
    let t = batch.tensors::<Cpu>(&device);
    let ctx = model.model.context(t.positions.clone(), Some(t.mask));
    let packed = to_vec(
        model.model.logits(
            model
                .model
                .forward_hidden(t.input_ids.clone(), &ctx, None, None),
        ),
    );
    let vocab = model.model.vocab_size();

    // A plain causal pass over the same row: later examples see earlier ones. This must differ, or the
    // comparison below could not catch a leak.
    let leaky = to_vec(model.model.forward(t.input_ids));

    let row = &rows[0];
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    for seg in 1..=3u32 {
        let start = row.segment_ids.iter().position(|&s| s == seg).unwrap();
        let ids: Vec<i64> = examples[seg as usize - 1]
            .input_ids
            .iter()
            .map(|&i| i as i64)
            .collect();
        let n = ids.len();
        let alone = to_vec(model.model.forward(Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(ids, [1, n]),
            &device,
        )));
        let span = start * vocab..(start + n) * vocab;
        let diff = max_diff(&packed[span.clone()], &alone);
        println!("segment {seg}: max |packed - alone| = {diff:e}");
        assert!(
            diff < 1e-3,
            "segment {seg}: packed and unpacked logits differ by {diff}"
        );
        if seg > 1 {
            let leak = max_diff(&leaky[span], &alone);
            println!("segment {seg}: max |causal - alone| = {leak}");
            assert!(
                leak > 0.1,
                "segment {seg}: plain causal attention changed logits by only {leak}"
            );
        }
    }
}
