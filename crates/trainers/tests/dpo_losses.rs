//! DPO losses and logged rewards against TRL's formulas (fixture: scripts/reference/make_dpo_fixtures.py).

use burnish_core::backend::Cpu;
use burnish_core::burn::tensor::{Tensor, TensorData};
use burnish_trainers::dpo::{dpo_loss, reward_metrics, DpoConfig, DpoLoss, LossTypes, PairLogps};

fn t(v: &[f64]) -> Tensor<Cpu, 1> {
    let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), &Default::default())
}

fn nums(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn logps(policy: &[f64], reference: &[f64], lengths: &[f64], n: usize) -> PairLogps<Cpu> {
    PairLogps {
        chosen: t(&policy[..n]),
        rejected: t(&policy[n..]),
        ref_chosen: t(&reference[..n]),
        ref_rejected: t(&reference[n..]),
        chosen_len: t(&lengths[..n]),
        rejected_len: t(&lengths[n..]),
    }
}

#[test]
fn losses_and_rewards_match_trl() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dpo_losses.json"
    ))
    .unwrap();
    let fx: serde_json::Value = serde_json::from_str(&text).unwrap();
    let n = fx["pairs"].as_u64().unwrap() as usize;
    let (policy, reference, lengths) = (
        nums(&fx["logps"]),
        nums(&fx["ref_logps"]),
        nums(&fx["lengths"]),
    );
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 10);
    for case in cases {
        let cfg = DpoConfig {
            beta: case["beta"].as_f64().unwrap(),
            loss_type: serde_json::from_value::<LossTypes>(case["loss_type"].clone()).unwrap(),
            loss_weights: case["loss_weights"]
                .as_array()
                .map(|w| w.iter().map(|x| x.as_f64().unwrap()).collect()),
            label_smoothing: case["label_smoothing"].as_f64().unwrap(),
            precompute_ref_log_probs: false,
        };
        let got = dpo_loss(&cfg, logps(&policy, &reference, &lengths, n))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        for (g, w) in got.iter().zip(nums(&case["losses"])) {
            assert!(
                (*g as f64 - w).abs() < 1e-5 * w.abs().max(1.0),
                "{case}: {got:?}"
            );
        }
        let p: Vec<f32> = policy.iter().map(|&x| x as f32).collect();
        let r: Vec<f32> = reference.iter().map(|&x| x as f32).collect();
        let m = reward_metrics(cfg.beta, &p, &r, n);
        for (k, v) in m {
            let want = case[&k].as_f64().unwrap();
            assert!((v / n as f64 - want).abs() < 1e-5, "{k}: {v} vs {want}");
        }
    }
}

#[test]
fn identical_policy_and_reference_give_log_2() {
    let p = [-3.0, -7.5, -1.25, -4.0];
    for beta in [1e-4, 0.1, 2.0] {
        let cfg = DpoConfig {
            beta,
            ..Default::default()
        };
        let l = dpo_loss(&cfg, logps(&p, &p, &[3.0; 4], 2))
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!(l.iter().all(|x| (x - 2f32.ln()).abs() < 1e-6), "{l:?}");
    }
    // With a tiny β the sigmoid loss stays near log 2 even when the policy has moved.
    let moved = [-2.0, -9.0, -1.0, -6.0];
    let cfg = DpoConfig {
        beta: 1e-6,
        ..Default::default()
    };
    let l = dpo_loss(&cfg, logps(&moved, &p, &[3.0; 4], 2))
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(l.iter().all(|x| (x - 2f32.ln()).abs() < 1e-5), "{l:?}");
}

#[test]
fn hand_computed_values() {
    // Δ = (−1 − −2) − (−3 − −2) = 2.
    let lp = logps(&[-1.0, -3.0], &[-2.0, -2.0], &[4.0, 2.0], 1);
    let one = |loss_type, beta, eps| {
        let cfg = DpoConfig {
            beta,
            loss_type: LossTypes::One(loss_type),
            loss_weights: None,
            label_smoothing: eps,
            precompute_ref_log_probs: false,
        };
        let p = PairLogps {
            chosen: lp.chosen.clone(),
            rejected: lp.rejected.clone(),
            ref_chosen: lp.ref_chosen.clone(),
            ref_rejected: lp.ref_rejected.clone(),
            chosen_len: lp.chosen_len.clone(),
            rejected_len: lp.rejected_len.clone(),
        };
        dpo_loss(&cfg, p).into_scalar() as f64
    };
    let sig = |x: f64| 1.0 / (1.0 + (-x).exp());
    assert!((one(DpoLoss::Sigmoid, 0.5, 0.0) + sig(1.0).ln()).abs() < 1e-6);
    assert!((one(DpoLoss::Hinge, 0.25, 0.0) - 0.5).abs() < 1e-6);
    assert!(one(DpoLoss::Hinge, 1.0, 0.0).abs() < 1e-6);
    // IPO: averaged log-ratios 1/4 − (−1/2) = 0.75; (0.75 − 1/(2·0.5))² = 0.0625.
    assert!((one(DpoLoss::Ipo, 0.5, 0.0) - 0.0625).abs() < 1e-6);
    let eps = 0.1;
    let want = (-(1.0 - eps) * sig(1.0).ln() + eps * sig(-1.0).ln()) / (1.0 - 2.0 * eps);
    assert!((one(DpoLoss::Robust, 0.5, eps) - want).abs() < 1e-6);
    // ε = 0 turns robust into sigmoid.
    assert!((one(DpoLoss::Robust, 0.5, 0.0) - one(DpoLoss::Sigmoid, 0.5, 0.0)).abs() < 1e-7);
}

#[test]
fn config_ranges_are_checked() {
    let bad = |f: fn(&mut DpoConfig)| {
        let mut c = DpoConfig::default();
        f(&mut c);
        c.validate().unwrap_err()
    };
    assert!(bad(|c| c.beta = 0.0).contains("beta"));
    assert!(bad(|c| {
        c.loss_type = LossTypes::One(DpoLoss::Robust);
        c.label_smoothing = 0.5
    })
    .contains("label_smoothing"));
    assert!(bad(|c| c.label_smoothing = 0.1).contains("robust"));
    assert!(bad(|c| {
        c.loss_type = LossTypes::Many(vec![DpoLoss::Sigmoid, DpoLoss::Sft]);
        c.loss_weights = Some(vec![1.0])
    })
    .contains("loss_weights"));
    assert!(DpoConfig::default().validate().is_ok());
}

/// Policy and reference that differ only in the last bits (different code paths, different CPUs) are a
/// tie: `rewards/accuracies` counts no win, in either direction, while a real margin still wins.
#[test]
fn rounding_is_not_a_win() {
    let next_up = |x: f32| f32::from_bits(x.to_bits() - 1); // towards zero for negatives: larger
    let reference = [-30.0f32, -41.5, -30.0, -41.5];
    for beta in [0.1, 1.0] {
        let policy = [next_up(-30.0), -41.5, -30.0, next_up(-41.5)];
        let m = reward_metrics(beta, &policy, &reference, 2);
        assert_eq!(m["rewards/accuracies"], 0.0, "beta {beta}: {m:?}");
        let policy = [-29.9f32, -41.5, -30.0, -41.6];
        let m = reward_metrics(beta, &policy, &reference, 2);
        assert_eq!(m["rewards/accuracies"], 2.0, "beta {beta}: {m:?}");
    }
}
