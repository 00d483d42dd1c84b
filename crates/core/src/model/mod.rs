//! The decoder every supported family shares (Llama 2/3, SmolLM, Qwen2/3, Mistral, Gemma 2/3). Field names
//! follow HF's module tree (`model.layers.N.self_attn.q_proj.weight`), so Burn's parameter paths are the
//! checkpoint's names. What a family adds is optional here: q/k norms (Qwen3, Gemma 3), norms after
//! attention and MLP (Gemma), soft-capping (Gemma 2), sliding layers with their own RoPE (Mistral, Gemma).

mod attend;
mod blocks;
mod build;
mod edit;
mod head;
mod linear;
pub mod lora;
mod mask;
mod norm;
pub mod recompute;
mod rope;
mod scores;
mod softmax;

pub use attend::{attend, AttendOptions};
pub use build::Parts;
pub use linear::{frozen, Linear};
pub use lora::{Lora, LoraConfig, LoraInit, TargetModules};
pub use mask::{causal_padding_mask, plain_causal, segment_mask, window_band};
pub use norm::RmsNorm;
pub use rope::RopeTables;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{activation, Bool, Distribution, ElementConversion, Int, Tensor, TensorData};

use crate::config::{Activation, ModelConfig};
use crate::error::Result;
use crate::precision::Precision;

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Separate q/k/v projections, or Phi-3's fused `qkv_proj` (rows q, then k, then v).
    pub q_proj: Option<Linear<B>>,
    pub k_proj: Option<Linear<B>>,
    pub v_proj: Option<Linear<B>>,
    pub qkv_proj: Option<Linear<B>>,
    pub o_proj: Linear<B>,
    /// Per-head RMSNorm of queries and keys, before RoPE (Qwen3, Gemma 3).
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Score scale; `None` is `head_dim^-1/2` (Gemma: `query_pre_attn_scalar^-1/2`).
    pub scale: Option<f64>,
    /// `cap * tanh(score / cap)` before masking (Gemma 2).
    pub softcap: Option<f64>,
    /// Attends within the model's sliding window, with the local RoPE tables when there are any.
    pub sliding: bool,
}

/// Keys and values of past positions, one entry per layer, `[batch, kv_heads, past, head_dim]`.
#[derive(Clone, Debug, Default)]
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some((k, _))) => k.dims()[2],
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the given batch rows (generation drops finished sequences).
    pub fn select_rows(&mut self, rows: Tensor<B, 1, Int>) {
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, rows.clone());
            *v = v.clone().select(0, rows.clone());
        }
    }

    fn append(
        &mut self,
        layer: usize,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let slot = &mut self.layers[layer];
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(vec![pk, k], 2), Tensor::cat(vec![pv, v], 2)),
            None => (k, v),
        };
        *slot = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// What every layer of one forward pass shares: rotary tables and the attention mask.
#[derive(Clone, Debug)]
pub struct Context<B: Backend> {
    pub rope: RopeTables<B>,
    /// RoPE of the sliding layers when their base differs (Gemma 3).
    local_rope: Option<RopeTables<B>>,
    /// `[batch, 1, seq, past + seq]`, true = masked. `None` means plain causal attention.
    pub mask: Option<Tensor<B, 4, Bool>>,
    /// The mask repeated over the query heads, `[batch, heads, seq, past + seq]`, built once per pass:
    /// every layer's attention needs it at that shape, and a broadcast view would be materialised by
    /// each of them.
    head_mask: Option<Tensor<B, 4, Bool>>,
    /// The same for sliding layers, with the window applied; `None` when the window excludes nothing.
    local_head_mask: Option<Tensor<B, 4, Bool>>,
    /// Which weights the pass uses: LoRA adapters on (default) or off.
    pub adapters: Adapters,
}

/// Which weights a forward pass uses. Off gives the base model from the same weights, which is how
/// DPO, PPO and KL measurements get their reference model without a second copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Adapters {
    /// Adapters on, LoRA dropout active on autodiff backends (SFT).
    #[default]
    On,
    /// Adapters on, dropout off: DPO, reward models and PPO, whose losses compare log-probabilities
    /// or values of the same policy and must not see dropout noise (TRL disables it there too).
    OnWithoutDropout,
    /// The base model: adapters off (a merged adapter is subtracted).
    Off,
}

impl<B: Backend> Context<B> {
    pub fn with_adapters(mut self, adapters: Adapters) -> Self {
        self.adapters = adapters;
        self
    }

    pub fn without_adapters(self) -> Self {
        self.with_adapters(Adapters::Off)
    }
}

impl<B: Backend> Attention<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &Context<B>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let [b, s, _] = x.dims();
        let (nh, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let split = |t: Tensor<B, 3>, n: usize| t.reshape([b, s, n, hd]);
        let norm = |t: Tensor<B, 4>, n: &Option<RmsNorm<B>>| match n {
            Some(n) => n.forward(t),
            None => t,
        };
        let on = ctx.adapters;
        let (rope, head_mask) = match (self.sliding, &ctx.local_rope) {
            (true, Some(local)) => (local, ctx.local_head_mask.as_ref()),
            (true, None) => (&ctx.rope, ctx.local_head_mask.as_ref()),
            (false, _) => (&ctx.rope, None),
        };
        let head_mask = head_mask.or(ctx.head_mask.as_ref()).cloned();
        let (q, k, v) = self.project(x, on);
        // RoPE before the heads move in front of the positions, while the layout is still contiguous.
        let q = rope.apply(norm(split(q, nh), &self.q_norm)).swap_dims(1, 2);
        let k = rope
            .apply(norm(split(k, nkv), &self.k_norm))
            .swap_dims(1, 2);
        let v = split(v, nkv).swap_dims(1, 2);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, k, v),
            None => (k, v),
        };
        let rep = nh / nkv;
        let t = k.dims()[2];
        if s == 1 && rep > 1 {
            // One new position (decoding): fold the query heads of each KV group into the query axis,
            // [b, nh, 1, hd] → [b, nkv, rep, hd], instead of copying K and V `rep` times. With a single
            // query every cached key is in its past, so only the padding/window mask applies.
            let q = q.reshape([b, nkv, rep, hd]);
            let mask = head_mask.map(|m| {
                let mb = m.dims()[0];
                m.reshape([mb, nkv, rep, t]).expand([b, nkv, rep, t])
            });
            let options = AttentionModuleOptions {
                scale: self.scale,
                softcap: self.softcap,
                is_causal: false,
            };
            let y = attention(q, k, v, mask, None, options);
            return self.o_proj.forward(y.reshape([b, 1, nh * hd]), on);
        }
        // Training and prefill: the lean operation under autodiff (no per-layer score tensors kept for
        // the backward pass), Burn's attention otherwise.
        let options = AttendOptions {
            scale: self.scale,
            softcap: self.softcap,
        };
        let y = attend(q, k, v, head_mask, options);
        self.o_proj
            .forward(y.swap_dims(1, 2).reshape([b, s, nh * hd]), on)
    }
}

impl<B: Backend> Attention<B> {
    /// Queries, keys and values `[batch, seq, heads · head_dim]`, from separate or fused projections.
    fn project(&self, x: Tensor<B, 3>, on: Adapters) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
        match (&self.qkv_proj, &self.q_proj, &self.k_proj, &self.v_proj) {
            (Some(qkv), ..) => {
                let (q, kv) = (
                    self.num_heads * self.head_dim,
                    self.num_kv_heads * self.head_dim,
                );
                let mut parts = qkv.forward(x, on).split_with_sizes(vec![q, kv, kv], 2);
                let v = parts.pop().expect("three parts");
                let k = parts.pop().expect("three parts");
                (parts.pop().expect("three parts"), k, v)
            }
            (None, Some(q), Some(k), Some(v)) => (
                q.forward(x.clone(), on),
                k.forward(x.clone(), on),
                v.forward(x, on),
            ),
            _ => unreachable!("Llama::build gives either qkv_proj or q_proj, k_proj and v_proj"),
        }
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Separate gate and up projections, or Phi-3's fused `gate_up_proj` (rows gate, then up).
    pub gate_proj: Option<Linear<B>>,
    pub up_proj: Option<Linear<B>>,
    pub gate_up_proj: Option<Linear<B>>,
    pub down_proj: Linear<B>,
    pub act: Activation,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>, adapters: Adapters) -> Tensor<B, 3> {
        let (gate, up) = match (&self.gate_up_proj, &self.gate_proj, &self.up_proj) {
            (Some(fused), ..) => {
                let inter = self.down_proj.in_features();
                let mut parts = fused
                    .forward(x, adapters)
                    .split_with_sizes(vec![inter, inter], 2);
                let up = parts.pop().expect("two parts");
                (parts.pop().expect("two parts"), up)
            }
            (None, Some(g), Some(u)) => (g.forward(x.clone(), adapters), u.forward(x, adapters)),
            _ => unreachable!("Llama::build gives either gate_up_proj or gate_proj and up_proj"),
        };
        let gate = match self.act {
            Activation::Silu => activation::silu(gate),
            Activation::GeluTanh => activation::gelu_approximate(gate),
        };
        self.down_proj.forward(gate * up, adapters)
    }
}

/// One block. Llama order: `x + attn(input_norm(x))`, then `h + mlp(post_attention_norm(h))`. Gemma's
/// sandwich (when `pre_feedforward_layernorm` is there): `x + post_attention_norm(attn(input_norm(x)))`,
/// then `h + post_feedforward_norm(mlp(pre_feedforward_norm(h)))`; HF's names mean different places in
/// the two layouts, and they are kept as the checkpoints have them.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub self_attn: Attention<B>,
    pub mlp: Mlp<B>,
    pub input_layernorm: RmsNorm<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &Context<B>,
        cache: Option<(&mut KvCache<B>, usize)>,
    ) -> Tensor<B, 3> {
        let attn = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), ctx, cache);
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let h = x + self.post_attention_layernorm.forward(attn);
                let m = self.mlp.forward(pre.forward(h.clone()), ctx.adapters);
                h + post.forward(m)
            }
            _ => {
                let h = x + attn;
                h.clone()
                    + self
                        .mlp
                        .forward(self.post_attention_layernorm.forward(h), ctx.adapters)
            }
        }
    }

    /// Every norm of the layer with its HF sub-path, in checkpoint order.
    pub fn norms(&self) -> Vec<(&'static str, &RmsNorm<B>)> {
        let mut v = vec![
            ("input_layernorm", &self.input_layernorm),
            ("post_attention_layernorm", &self.post_attention_layernorm),
        ];
        let opt = [
            ("pre_feedforward_layernorm", &self.pre_feedforward_layernorm),
            (
                "post_feedforward_layernorm",
                &self.post_feedforward_layernorm,
            ),
            ("self_attn.q_norm", &self.self_attn.q_norm),
            ("self_attn.k_norm", &self.self_attn.k_norm),
        ];
        v.extend(opt.into_iter().filter_map(|(n, m)| Some((n, m.as_ref()?))));
        v
    }

    /// The norm the MLP reads its input through (Llama: `post_attention_layernorm`; Gemma:
    /// `pre_feedforward_layernorm`).
    pub fn mlp_input_norm(&self) -> &RmsNorm<B> {
        self.pre_feedforward_layernorm
            .as_ref()
            .unwrap_or(&self.post_attention_layernorm)
    }
}

#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
}

/// A causal language model: the decoder plus its head (`lm_head`, or the embedding when tied).
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub model: LlamaModel<B>,
    pub lm_head: Option<Linear<B>>,
    /// RoPE inverse frequencies (f32, as transformers computes them).
    pub inv_freq: Vec<f32>,
    /// Those of the sliding layers when they have their own base (Gemma 3).
    pub local_inv_freq: Option<Vec<f32>>,
    /// LongRoPE's long-context frequencies (Phi-3).
    pub long_rope: Option<LongRope>,
    /// Window of the layers whose attention slides (`Attention::sliding`).
    pub sliding_window: Option<usize>,
    /// Embeddings are multiplied by this (Gemma: √hidden, rounded to f32 as transformers does).
    pub embed_scale: Option<f32>,
    /// `cap * tanh(logit / cap)` on the output (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Positions the model was trained on (config.json `max_position_embeddings`); generation past it
    /// is warned about, not refused.
    pub max_position_embeddings: usize,
    /// Training passes keep each decoder layer's input only and run the layers again in the backward
    /// pass ([`recompute`]): less memory for about one more forward pass. Off by default. A loop that
    /// turns it on must call [`recompute::backward`] after each `backward()` and add the adapter
    /// gradients it returns (the adapters of recomputed layers get none from `backward()` itself);
    /// burnish's training engine does.
    pub gradient_checkpointing: bool,
}

/// LongRoPE (Phi-3): a forward pass whose largest position reaches `from` uses `inv_freq` instead of the
/// model's (short) frequencies, and every pass scales cos and sin by `attention_factor`, as transformers'
/// `longrope` rotary embedding does per call.
#[derive(Clone, Debug)]
pub struct LongRope {
    pub inv_freq: Vec<f32>,
    pub from: usize,
    pub attention_factor: f32,
}

/// Hidden states of each layer, for activation analysis (refusal directions).
pub type ResidualTap<'a, B> = &'a mut dyn FnMut(usize, &Tensor<B, 3>);

impl<B: Backend> Llama<B> {
    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.model.embed_tokens.device()
    }

    /// The precision of the base's weight matrices (crate::precision).
    pub fn precision(&self) -> Precision {
        Precision::of(self.model.embed_tokens.val().dtype()).unwrap_or_default()
    }

    /// The model with its base's weight matrices (linears, embeddings, an untied head) cast to
    /// `precision`; biases, norms and LoRA adapters stay f32. One matrix at a time, so the device
    /// holds at most one extra matrix during the cast.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        let dtype = precision.dtype();
        let cast = |p: &mut Param<Tensor<B, 2>>| {
            if p.val().dtype() != dtype {
                *p = Param::initialized(p.id, linear::to_dtype(p.val(), dtype));
            }
        };
        cast(&mut self.model.embed_tokens);
        if let Some(h) = self.lm_head.as_mut() {
            cast(&mut h.weight);
        }
        for (i, short) in self.linear_ids() {
            cast(&mut self.linear_mut(i, short).expect("listed").weight);
        }
        self
    }

    /// A randomly initialised model (tests, tiny models): normal(0, std) weights, unit norms.
    pub fn init(cfg: &ModelConfig, std: f64, device: &B::Device) -> Self {
        struct Random<'a, B: Backend> {
            std: f64,
            unit: f64,
            device: &'a B::Device,
        }
        impl<B: Backend> build::Parts<B> for Random<'_, B> {
            fn linear(&mut self, _: &str, i: usize, o: usize, b: bool) -> Result<Linear<B>> {
                Ok(Linear::init(i, o, b, self.std, self.device))
            }
            fn norm(&mut self, _: &str, len: usize) -> Result<Tensor<B, 1>> {
                Ok(Tensor::full([len], self.unit, self.device))
            }
            fn matrix(&mut self, _: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>> {
                let dist = Distribution::Normal(0.0, self.std);
                Ok(Tensor::random(shape, dist, self.device))
            }
        }
        // Gemma's norms scale by 1 + w: a unit norm stores 0.
        let unit = if cfg.gemma_layout { 0.0 } else { 1.0 };
        let mut parts = Random { std, unit, device };
        Self::build(cfg, &mut parts).expect("random parts never fail")
    }

    /// Query and key/value head counts (the shapes RoPE is applied to).
    fn head_counts(&self) -> Vec<usize> {
        self.model.layers.first().map_or(vec![], |l| {
            vec![l.self_attn.num_heads, l.self_attn.num_kv_heads]
        })
    }

    pub fn num_layers(&self) -> usize {
        self.model.layers.len()
    }

    pub fn vocab_size(&self) -> usize {
        self.model.embed_tokens.dims()[0]
    }

    pub fn hidden_size(&self) -> usize {
        self.model.embed_tokens.dims()[1]
    }

    /// Shared per-pass state for `positions` `[batch, seq]` and an optional mask.
    pub fn context(
        &self,
        positions: Tensor<B, 2, Int>,
        mask: Option<Tensor<B, 4, Bool>>,
    ) -> Context<B> {
        let heads = self.head_counts();
        let [b, s] = positions.dims();
        let device = positions.device();
        // A mask that is plain causality (no padding, one sequence a row) is dropped, so attention
        // takes its causal path: blocks of query positions that compute only the scores up to their
        // last position (blocks.rs), 56% of a 1024-token score matrix, where a mask makes it compute
        // all of them. One host read per pass.
        let mask = mask.filter(|m| !plain_causal(m));
        let head_mask = mask.clone().map(|m| m.repeat_dim(1, heads[0]));
        // Sliding layers: the mask (or plain causality) with the window band added, when the keys reach
        // past the window. Key i and query j are `j - i` positions apart in index space for padded and
        // packed rows alike (padding sits left, segments are contiguous).
        let kv = mask.as_ref().map_or(s, |m| m.dims()[3]);
        let slides = self.model.layers.iter().any(|l| l.self_attn.sliding);
        let local_head_mask = match self.sliding_window {
            Some(w) if slides && kv > w => {
                let band = window_band::<B>(s, kv, w, &device);
                let local = match &mask {
                    Some(m) => m.clone().bool_or(band.expand(m.dims())),
                    None => band.expand([b, 1, s, kv]),
                };
                Some(local.repeat_dim(1, heads[0]))
            }
            _ => None,
        };
        let local_rope = self
            .local_inv_freq
            .as_ref()
            .filter(|_| slides)
            .map(|f| RopeTables::new(f, positions.clone(), &heads));
        let rope = match &self.long_rope {
            Some(long) => {
                // One host read per pass: which frequency set depends on the largest position.
                let max: i64 = positions.clone().max().into_scalar().elem();
                let freqs = if max + 1 > long.from as i64 {
                    &long.inv_freq
                } else {
                    &self.inv_freq
                };
                RopeTables::new(freqs, positions, &heads).scaled(long.attention_factor)
            }
            None => RopeTables::new(&self.inv_freq, positions, &heads),
        };
        Context {
            rope,
            local_rope,
            mask,
            head_mask,
            local_head_mask,
            adapters: Adapters::On,
        }
    }

    /// Final-normed hidden states `[batch, seq, hidden]`. With a cache, `input_ids` are the new positions
    /// and keys/values are appended. `tap` sees the residual stream entering each layer (index 0..L) and
    /// the output of the last layer (index L), before the final norm.
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<B, 2, Int>,
        ctx: &Context<B>,
        mut cache: Option<&mut KvCache<B>>,
        mut tap: Option<ResidualTap<'_, B>>,
    ) -> Tensor<B, 3> {
        let embed = self.model.embed_tokens.val();
        let mut x = burn::tensor::module::embedding(embed, input_ids);
        // A bf16/f16 base (crate::precision): the residual stream is f32.
        x = linear::to_dtype(x, burn::tensor::DType::F32);
        if let Some(scale) = self.embed_scale {
            x = x * scale;
        }
        let layers = &self.model.layers;
        if self.gradient_checkpointing
            && cache.is_none()
            && tap.is_none()
            && recompute::wanted(layers, &x, ctx)
        {
            return self.model.norm.forward(recompute::forward(layers, x, ctx));
        }
        for (i, layer) in layers.iter().enumerate() {
            if let Some(tap) = tap.as_mut() {
                tap(i, &x);
            }
            x = layer.forward(x, ctx, cache.as_deref_mut().map(|c| (c, i)));
        }
        if let Some(tap) = tap.as_mut() {
            tap(self.model.layers.len(), &x);
        }
        self.model.norm.forward(x)
    }

    /// Logits `[batch, seq, vocab]` from final hidden states.
    pub fn logits(&self, hidden: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(hidden, Adapters::Off),
            None => {
                let [b, s, h] = hidden.dims();
                let w = self.model.embed_tokens.val();
                let v = w.dims()[0];
                linear::matmul_t(hidden.reshape([b * s, h]), w).reshape([b, s, v])
            }
        };
        match self.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    /// Log-probabilities of `targets` under the next-token distribution at final hidden states
    /// `hidden` `[n, h]`, and each row's argmax token: `log_softmax(logits(hidden))[target]` without
    /// holding the `[n, vocab]` logits (model/head.rs).
    pub fn target_logps(&self, hidden: Tensor<B, 2>, targets: &[i64]) -> (Tensor<B, 1>, Vec<i64>) {
        let weight = match &self.lm_head {
            None => Some(self.model.embed_tokens.val()),
            Some(h) if h.bias.is_none() && !h.lora.as_ref().is_some_and(|l| l.merged) => {
                Some(h.weight.val())
            }
            Some(_) => None,
        };
        if let Some(w) = weight {
            return head::target_logps(hidden, w, targets, self.final_softcap);
        }
        // A head with a bias or a merged adapter: the full logits.
        let n = targets.len();
        let logits = self
            .logits(hidden.unsqueeze_dim::<3>(0))
            .squeeze_dim::<2>(0);
        let top = logits.clone().argmax(1).into_data().convert::<i64>();
        let idx = Tensor::<B, 2, Int>::from_data(
            TensorData::new(targets.to_vec(), [n, 1]),
            &logits.device(),
        );
        let lp = burn::tensor::activation::log_softmax(logits, 1).gather(1, idx);
        (
            lp.squeeze_dim::<1>(1),
            top.to_vec().expect("converted to i64"),
        )
    }

    /// Logits for unpadded sequences: positions 0..seq, causal attention, no cache.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, s] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..s as i64, &device)
            .unsqueeze_dim::<2>(0)
            .expand([b, s]);
        // Plain causal attention; `context` adds the window of sliding layers.
        let ctx = self.context(positions, None);
        self.logits(self.forward_hidden(input_ids, &ctx, None, None))
    }
}

pub fn inv_freq(cfg: &ModelConfig) -> Vec<f32> {
    cfg.rope_inv_freq().into_iter().map(|f| f as f32).collect()
}

/// Positions `[batch, seq]` from explicit per-row values.
pub fn positions_tensor<B: Backend>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let b = rows.len();
    let s = rows.first().map_or(0, |r| r.len());
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [b, s]), device)
}
