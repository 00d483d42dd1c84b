//! Activation recomputation per decoder layer ("gradient checkpointing").
//!
//! With it on ([`Llama::gradient_checkpointing`](super::Llama)), a training forward pass runs the
//! decoder layers without recording an autodiff graph: it keeps only each layer's input (one
//! `[batch, seq, hidden]` tensor a layer) and hands the last layer's output on as a fresh leaf. After
//! the loss's backward pass has given that leaf its gradient, [`backward`] walks the layers from the
//! last to the first: it runs each one again under a graph of its own, with its input and its LoRA
//! weights as leaves, and back-propagates the gradient of its output through it, which gives the
//! gradient of its input (handed to the layer below) and of its adapters. So at most one layer's
//! activations are alive at a time, for one extra forward pass of the layers.
//!
//! Why not one autodiff operation per layer whose backward runs the layer again: Burn 0.21's
//! autodiff holds the graph's lock while it runs a backward step, and a backward pass started
//! inside one cleans up every graph, that one included, so it would wait on itself. Here every
//! backward pass is a top-level one.
//!
//! Dropout: the layer is run again with the dropout stream as it stood before its first run, so
//! it draws the same masks ([`rng::dropout_state`]).

use std::any::Any;
use std::cell::RefCell;
use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use rand::rngs::StdRng;

use super::{Adapters, Context, DecoderLayer};
use crate::rng;

thread_local! {
    /// The forward passes run since the last [`backward`] or [`clear`], in order. One per thread,
    /// as the dropout stream: a data-parallel worker runs its passes and its backward on its own.
    static TAPE: RefCell<Vec<Box<dyn Any>>> = const { RefCell::new(Vec::new()) };
}

/// What one forward pass keeps to run its layers again.
struct Pass<B: Backend> {
    layers: Vec<DecoderLayer<B>>,
    ctx: Context<B>,
    /// Each layer's input, detached.
    inputs: Vec<Tensor<B, 3>>,
    /// The dropout stream before each layer ran.
    dropout: Vec<Option<StdRng>>,
    /// The last layer's output: the leaf the rest of the model's graph starts from.
    out: Tensor<B, 3>,
}

/// Whether a pass through `layers` should be recomputed rather than recorded: on an autodiff
/// backend, with adapters on and some layer's weights requiring gradients (a training pass).
pub(super) fn wanted<B: Backend>(
    layers: &[DecoderLayer<B>],
    x: &Tensor<B, 3>,
    ctx: &Context<B>,
) -> bool {
    ctx.adapters != Adapters::Off && B::ad_enabled(&x.device()) && layers.iter().any(requires_grad)
}

fn requires_grad<B: Backend, M: Module<B>>(m: &M) -> bool {
    struct Any_(bool);
    impl<B: Backend> ModuleVisitor<B> for Any_ {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0 |= param.val().is_require_grad();
        }
    }
    let mut v = Any_(false);
    m.visit(&mut v);
    v.0
}

/// Every weight cut from the graph; with `leaves`, those that required gradients become fresh
/// leaves (of a new graph) that do again.
struct Fresh {
    leaves: bool,
}

impl<B: Backend> ModuleMapper<B> for Fresh {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let leaves = self.leaves;
        param.map(|t| {
            let grad = t.is_require_grad();
            // Not `detach`: Burn's keeps a leaf's `require_grad`.
            let t = t.set_require_grad(false);
            if leaves && grad {
                t.require_grad()
            } else {
                t
            }
        })
    }
}

/// Runs `layers` on `x` without recording them and records the pass for [`backward`]. Returns the
/// last layer's output as a leaf that requires gradients.
pub(super) fn forward<B: Backend>(
    layers: &[DecoderLayer<B>],
    x: Tensor<B, 3>,
    ctx: &Context<B>,
) -> Tensor<B, 3> {
    let mut x = x.set_require_grad(false);
    let mut inputs = Vec::with_capacity(layers.len());
    let mut dropout = Vec::with_capacity(layers.len());
    for layer in layers {
        let frozen = layer.clone().map(&mut Fresh { leaves: false });
        inputs.push(x.clone());
        dropout.push(rng::dropout_state());
        x = frozen.forward(x, ctx, None);
    }
    let out = x.require_grad();
    let pass = Pass {
        layers: layers.to_vec(),
        ctx: ctx.clone(),
        inputs,
        dropout,
        out: out.clone(),
    };
    TAPE.with(|t| t.borrow_mut().push(Box::new(pass)));
    out
}

/// How many passes this thread has recorded and not yet back-propagated.
pub fn recorded() -> usize {
    TAPE.with(|t| t.borrow().len())
}

/// Forgets the passes recorded on this thread (a forward pass whose loss is not back-propagated).
pub fn clear() {
    TAPE.with(|t| t.borrow_mut().clear());
}

/// The adapter gradients of the recorded passes, by parameter: call it right after the loss's
/// `backward()` gave `grads`, and add what it returns to the gradients read from `grads` (a
/// recomputed layer's weights get none there). Consumes this thread's record; a pass whose output
/// the loss did not use contributes nothing.
pub fn backward<B: AutodiffBackend>(
    grads: &B::Gradients,
) -> HashMap<ParamId, Tensor<B::InnerBackend, 2>> {
    let passes = TAPE.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let mut out = HashMap::new();
    if passes.is_empty() {
        return out; // checkpointing off: nothing to do on the training loop's every micro-batch
    }
    let stream = rng::dropout_state();
    for pass in passes.into_iter().rev() {
        let Ok(pass) = pass.downcast::<Pass<B>>() else {
            continue; // recorded by a model on another backend
        };
        if let Some(g) = pass.out.grad(grads) {
            backward_pass(*pass, g, &mut out);
        }
    }
    rng::set_dropout_state(stream);
    out
}

/// One pass's layers from the last to the first, `g` the gradient of the current layer's output.
fn backward_pass<B: AutodiffBackend>(
    pass: Pass<B>,
    mut g: Tensor<B::InnerBackend, 3>,
    out: &mut HashMap<ParamId, Tensor<B::InnerBackend, 2>>,
) {
    let Pass {
        layers,
        ctx,
        inputs,
        dropout,
        ..
    } = pass;
    let steps = layers.into_iter().zip(inputs).zip(dropout).enumerate();
    for (i, ((layer, x), stream)) in steps.rev() {
        rng::set_dropout_state(stream);
        let layer = layer.map(&mut Fresh { leaves: true });
        // The first layer's input is the (frozen) embedding: no gradient needed there.
        let x = if i > 0 { x.require_grad() } else { x };
        let y = layer.forward(x.clone(), &ctx, None);
        let grads = (y * Tensor::from_inner(g.clone())).sum().backward();
        collect(&layer, &grads, out);
        if i > 0 {
            g = x
                .grad(&grads)
                .expect("a layer's output depends on its input");
        }
    }
}

/// Adds the gradients of `layer`'s leaves in `grads` to `out`.
fn collect<B: AutodiffBackend>(
    layer: &DecoderLayer<B>,
    grads: &B::Gradients,
    out: &mut HashMap<ParamId, Tensor<B::InnerBackend, 2>>,
) {
    struct Grads<'a, B: AutodiffBackend> {
        grads: &'a B::Gradients,
        out: &'a mut HashMap<ParamId, Tensor<B::InnerBackend, 2>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Grads<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if D != 2 {
                return; // adapters are matrices; nothing else in a layer trains
            }
            let Some(g) = param.val().grad(self.grads) else {
                return;
            };
            let [r, c] = [g.dims()[0], g.dims()[1]];
            let g: Tensor<B::InnerBackend, 2> = g.reshape([r, c]);
            let sum = match self.out.remove(&param.id) {
                Some(prev) => prev + g,
                None => g,
            };
            self.out.insert(param.id, sum);
        }
    }
    layer.visit(&mut Grads { grads, out });
}
