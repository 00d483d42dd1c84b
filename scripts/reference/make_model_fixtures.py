#!/usr/bin/env python3
"""Generate tiny random-weight model fixtures + HF transformers reference logits.

Writes into crates/core/tests/fixtures/ (relative to the repo root):

  tiny-llama/          LlamaForCausalLM, untied embeddings
  tiny-llama-tied/     LlamaForCausalLM, tied embeddings, bf16 on disk
  tiny-llama3-rope/    LlamaForCausalLM, llama3 rope scaling, rope_theta 5e5
  tiny-qwen2/          Qwen2ForCausalLM, random q/k/v biases, tied embeddings
  tiny-mistral/        MistralForCausalLM, sliding_window null
  tiny-llama-sharded/  tiny-llama weights split into >=2 safetensors shards
  tiny-llama-gguf/     tiny-llama as GGUF (F32 and F16), llama.cpp layout

Each HF dir holds config.json + model.safetensors (or shards) + expected.safetensors.
See scripts/reference/README.md for the exact tensor layout.

Run:  /work/venv/bin/python scripts/reference/make_model_fixtures.py [--out DIR]
Deterministic: CPU, float32, fixed seeds, 2 threads; rerunning gives identical files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import gguf  # noqa: E402
from importlib.metadata import version as pkg_version  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "crates" / "core" / "tests" / "fixtures"

SEQ = 9
BATCH = 2
PAD_LEFT = 3  # row 0 of the padded batch is left-padded by this many positions
PAD_ID = 0  # token id placed at pad positions (masked out; any id would do)
MAX_MODEL_BYTES = 400 * 1024

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    attn_implementation="eager",
)


def versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": pkg_version("gguf"),
        "safetensors": pkg_version("safetensors"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def meta(extra: dict[str, str] | None = None) -> dict[str, str]:
    m = {f"version.{k}": v for k, v in versions().items()}
    m["generator"] = "scripts/reference/make_model_fixtures.py"
    if extra:
        m.update(extra)
    return m


def compact_json(obj) -> str:
    """Indented JSON (sorted as given) with every list of plain numbers kept on one line."""

    def enc(o, ind):
        pad, pad1 = " " * ind, " " * (ind + 1)
        if isinstance(o, dict):
            if not o:
                return "{}"
            items = [f"{pad1}{json.dumps(k, ensure_ascii=False)}: {enc(v, ind + 1)}" for k, v in o.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}"
        if isinstance(o, (list, tuple)):
            if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in o):
                return "[" + ", ".join(json.dumps(x) for x in o) + "]"
            if all(isinstance(x, (list, tuple)) and len(x) <= 4 and not any(isinstance(y, (dict, list)) for y in x) for x in o):
                return "[\n" + ",\n".join(pad1 + json.dumps(x, ensure_ascii=False) for x in o) + "\n" + pad + "]"
            return "[\n" + ",\n".join(pad1 + enc(x, ind + 1) for x in o) + "\n" + pad + "]"
        return json.dumps(o, ensure_ascii=False)

    return enc(obj, 0) + "\n"


def make_inputs(vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(3, vocab, (BATCH, SEQ), generator=g, dtype=torch.int64)
    position_ids = torch.arange(SEQ, dtype=torch.int64).unsqueeze(0).expand(BATCH, SEQ).contiguous()

    # Padded batch: row 0 = first SEQ-PAD_LEFT tokens of input_ids[0], left-padded by PAD_LEFT;
    # row 1 = input_ids[1] unpadded.
    ids_p = input_ids.clone()
    ids_p[0, :PAD_LEFT] = PAD_ID
    ids_p[0, PAD_LEFT:] = input_ids[0, : SEQ - PAD_LEFT]
    mask = torch.ones(BATCH, SEQ, dtype=torch.int64)
    mask[0, :PAD_LEFT] = 0
    # exactly what GenerationMixin.prepare_inputs_for_generation does
    pos_p = mask.long().cumsum(-1) - 1
    pos_p.masked_fill_(mask == 0, 1)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "input_ids_padded": ids_p,
        "attention_mask_padded": mask,
        "position_ids_padded": pos_p,
    }


@torch.no_grad()
def forward(model, ids, pos, mask=None) -> torch.Tensor:
    model.eval()
    out = model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=False)
    return out.logits.float().contiguous()


@torch.no_grad()
def compute_expected(model, inp) -> dict[str, torch.Tensor]:
    logits = forward(model, inp["input_ids"], inp["position_ids"])
    logits_p = forward(
        model, inp["input_ids_padded"], inp["position_ids_padded"], inp["attention_mask_padded"]
    )
    # Sanity: non-pad positions of padded row 0 equal the unpadded prefix (causal => same logits)
    d0 = (logits_p[0, PAD_LEFT:] - logits[0, : SEQ - PAD_LEFT]).abs().max().item()
    d1 = (logits_p[1] - logits[1]).abs().max().item()
    assert d0 < 1e-5 and d1 < 1e-5, (d0, d1)
    # Pad positions carry no meaning; zero them so the file does not depend on how the
    # attention backend treats fully-masked rows.
    logits_p[0, :PAD_LEFT] = 0.0
    return {**inp, "logits": logits, "logits_padded": logits_p}


def save_expected(path: Path, tensors: dict[str, torch.Tensor], extra_meta=None):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta(extra_meta))
    canonicalize_safetensors(path)


def canonicalize_safetensors(path: Path):
    """safetensors serializes `__metadata__` from a Rust HashMap, so key order (and the file
    bytes) change from run to run. Rewrite the header as sorted JSON so reruns are identical."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def init_model(cls, cfg, seed: int):
    torch.manual_seed(seed)
    model = cls(cfg)
    model.eval()
    return model


def randomize_biases(model, seed: int, std: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * std)


def clean_dir(d: Path):
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


def dir_report(name: str, d: Path, logits: torch.Tensor):
    files = sorted(p for p in d.iterdir() if p.is_file())
    sizes = ", ".join(f"{p.name}={p.stat().st_size}" for p in files)
    print(f"[{name}] max|logit|={logits.abs().max().item():.4f}  std={logits.std().item():.4f}  files: {sizes}")


def check_model_size(d: Path):
    total = sum(p.stat().st_size for p in d.glob("model*.safetensors")) + sum(
        p.stat().st_size for p in d.glob("*.gguf")
    )
    for p in list(d.glob("model*.safetensors")) + list(d.glob("*.gguf")):
        assert p.stat().st_size < MAX_MODEL_BYTES, (p, p.stat().st_size)
    return total


def save_hf(model, d: Path, legacy_rope: bool = False, **kw):
    model.save_pretrained(str(d), safe_serialization=True, **kw)
    # generation_config.json is not needed by the Rust side; keep dirs minimal
    gc = d / "generation_config.json"
    if gc.exists():
        gc.unlink()
    if legacy_rope:
        to_legacy_rope_config(d / "config.json")


def to_legacy_rope_config(path: Path):
    """Rewrite transformers-5 `rope_parameters` into the pre-v5 layout that almost every
    checkpoint on the Hub uses: top-level `rope_theta` plus `rope_scaling` (null for default).
    transformers 5 still reads this layout (RotaryEmbeddingConfigMixin standardizes it); the
    script reloads the rewritten dir and checks the logits are bit-identical."""
    cfg = json.loads(path.read_text())
    rp = dict(cfg.pop("rope_parameters"))
    theta = rp.pop("rope_theta")
    cfg["rope_theta"] = theta
    cfg["rope_scaling"] = None if rp.get("rope_type", "default") == "default" else rp
    if "dtype" in cfg:  # pre-v5 key name
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------------------------------
# GGUF (mirrors llama.cpp convert_hf_to_gguf.py, LlamaModel)
# ---------------------------------------------------------------------------------------

def llama_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.LlamaModel.permute (HF rotate-half -> GGML interleaved rope)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


HF_TO_GGUF = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
HF_LAYER_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf: str) -> str:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf]
    parts = hf.split(".")
    assert parts[0] == "model" and parts[1] == "layers", hf
    bid = int(parts[2])
    return f"blk.{bid}.{HF_LAYER_TO_GGUF['.'.join(parts[3:])]}"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level byte -> unicode char table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


TINY_SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>"]  # ids 0, 1, 2 (= config pad/bos/eos)
TINY_PAD_ID = 0
TINY_MERGES = [
    ("Ġ", "t"), ("h", "e"), ("i", "n"), ("e", "r"), ("Ġ", "a"), ("o", "n"), ("r", "e"), ("a", "t"),
    ("e", "n"), ("Ġ", "s"), ("Ġ", "w"), ("o", "r"), ("i", "s"), ("Ġ", "o"), ("i", "t"), ("a", "n"),
    ("Ġ", "h"), ("Ġ", "c"), ("l", "l"), ("e", "s"), ("Ġ", "b"), ("Ġt", "he"), ("in", "g"), ("l", "d"),
    ("Ġw", "or"), ("Ġwor", "ld"), ("Ġh", "e"), ("he", "ll"),
]  # fmt: skip


def tiny_bpe_vocab() -> tuple[list[str], list[int], list[str]]:
    b2u = bytes_to_unicode()
    tokens = list(TINY_SPECIALS)
    types = [int(gguf.TokenType.CONTROL)] * len(TINY_SPECIALS)
    for b in [0x09, 0x0A] + list(range(0x20, 0x7F)):
        tokens.append(b2u[b])
        types.append(int(gguf.TokenType.NORMAL))
    for a, b in TINY_MERGES:
        assert a in tokens and b in tokens and a + b not in tokens, (a, b)
        tokens.append(a + b)
        types.append(int(gguf.TokenType.NORMAL))
    return tokens, types, [f"{a} {b}" for a, b in TINY_MERGES]


TINY_TOKENIZER_PROBES = [
    "hello world",
    "Hello World!",
    "the thing is at the end",
    " the  the   the",
    "\tif x:\n\t\treturn 42\n",
    "<|eos|>hell<|bos|> in",
    "",
]


def write_gguf(path: Path, cfg: LlamaConfig, state: dict[str, torch.Tensor], f16: bool):
    n_head = cfg.num_attention_heads
    n_kv = cfg.num_key_value_heads
    head_dim = cfg.hidden_size // n_head
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(head_dim)

    # Minimal but complete gpt2-style (byte-level BPE) tokenizer, 128 tokens:
    #   0..2 control tokens, then \t, \n and the 95 printable ASCII bytes in GPT-2 byte-level
    #   spelling (space = "Ġ"), then 28 merged tokens with their merges.
    # (gguf-py refuses to write an empty array and llama.cpp requires tokenizer.ggml.merges for
    # "gpt2" vocabularies, so the merges list cannot be empty.)
    tokens, types, merges = tiny_bpe_vocab()
    assert len(tokens) == cfg.vocab_size
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg.bos_token_id)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(TINY_PAD_ID)
    w.add_add_bos_token(False)

    for hf_name in state:  # HF state_dict order (embed, layers..., norm, lm_head)
        data = state[hf_name].detach().to(torch.float32).numpy()
        if hf_name.endswith("self_attn.q_proj.weight"):
            data = llama_permute(data, n_head, n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            data = llama_permute(data, n_head, n_kv)
        data = np.ascontiguousarray(data)
        # llama.cpp: 1-D tensors (norms) stay F32; 2-D weights go to F16 for MOSTLY_F16
        if f16 and data.ndim == 2:
            data = data.astype(np.float16)
        else:
            data = data.astype(np.float32)
        w.add_tensor(gguf_name(hf_name), data)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ---------------------------------------------------------------------------------------


def rope(theta: float, **scaling) -> dict:
    return {"rope_type": "default", "rope_theta": theta} if not scaling else {**scaling, "rope_theta": theta}


def load_f32(d: Path, **kw):
    return AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32, attn_implementation="eager", **kw)


def hf_fixture(out: Path, name: str, model, inp, legacy_rope=False, exact_vs_memory=True, extra_meta=None):
    """save_pretrained -> reload from disk in float32 -> expected.safetensors from the reloaded model."""
    d = out / name
    clean_dir(d)
    save_hf(model, d, legacy_rope=legacy_rope)
    reloaded = load_f32(d)
    exp = compute_expected(reloaded, inp)
    if exact_vs_memory:
        assert torch.equal(exp["logits"], forward(model, inp["input_ids"], inp["position_ids"]))
    m = {"model": name}
    if legacy_rope:
        m["config_layout"] = "legacy: top-level rope_theta + rope_scaling"
    m.update(extra_meta or {})
    save_expected(d / "expected.safetensors", exp, m)
    check_model_size(d)
    dir_report(name, d, exp["logits"])
    return d, reloaded, exp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print("versions:", versions())

    inp = make_inputs(COMMON["vocab_size"])

    # ---- tiny-llama -------------------------------------------------------------------
    cfg = LlamaConfig(**COMMON, tie_word_embeddings=False, rope_parameters=rope(10000.0))
    llama = init_model(LlamaForCausalLM, cfg, seed=0)
    _, _, exp_llama = hf_fixture(out, "tiny-llama", llama, inp)

    # ---- tiny-llama-sharded -----------------------------------------------------------
    d = out / "tiny-llama-sharded"
    clean_dir(d)
    save_hf(llama, d, max_shard_size="150KB")
    shards = sorted(d.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (d / "model.safetensors.index.json").exists(), shards
    exp = compute_expected(load_f32(d), inp)
    assert torch.equal(exp["logits"], exp_llama["logits"])
    shutil.copyfile(out / "tiny-llama" / "expected.safetensors", d / "expected.safetensors")
    check_model_size(d)
    dir_report("tiny-llama-sharded", d, exp["logits"])

    # ---- tiny-llama-gguf --------------------------------------------------------------
    d = out / "tiny-llama-gguf"
    clean_dir(d)
    state = llama.state_dict()
    write_gguf(d / "model-f32.gguf", cfg, state, f16=False)
    write_gguf(d / "model-f16.gguf", cfg, state, f16=True)
    exp32 = compute_expected(load_f32(d, gguf_file="model-f32.gguf"), inp)
    diff = (exp32["logits"] - exp_llama["logits"]).abs().max().item()
    print(f"[tiny-llama-gguf] f32 GGUF (via transformers) vs tiny-llama max|dlogit| = {diff:.3e}")
    assert diff < 1e-5, diff
    exp16 = compute_expected(load_f32(d, gguf_file="model-f16.gguf"), inp)
    d16 = (exp16["logits"] - exp_llama["logits"]).abs().max().item()
    print(f"[tiny-llama-gguf] f16 GGUF (via transformers) vs tiny-llama max|dlogit| = {d16:.3e}")
    assert 0 < d16 < 0.1, d16
    shutil.copyfile(out / "tiny-llama" / "expected.safetensors", d / "expected.safetensors")
    tok = AutoTokenizer.from_pretrained(str(d), gguf_file="model-f32.gguf")
    probes = []
    for text in TINY_TOKENIZER_PROBES:
        ids = tok.encode(text, add_special_tokens=False)
        probes.append({"text": text, "ids": ids, "decoded": tok.decode(ids)})
    assert all(p["decoded"] == p["text"] for p in probes), probes
    doc = {
        "versions": versions(),
        "tokenizer": "transformers AutoTokenizer.from_pretrained(dir, gguf_file='model-f32.gguf')",
        "encode": "tok.encode(text, add_special_tokens=False); decoded = tok.decode(ids)",
        "probes": probes,
    }
    (d / "tokenizer-expected.json").write_text(compact_json(doc))
    save_expected(d / "expected-f16.safetensors", exp16, {"model": "tiny-llama-gguf/model-f16.gguf"})
    check_model_size(d)
    dir_report("tiny-llama-gguf", d, exp16["logits"])

    # ---- tiny-llama-tied (bf16 on disk, expected from the upcast bf16 weights) --------
    cfg = LlamaConfig(**COMMON, tie_word_embeddings=True, rope_parameters=rope(10000.0))
    m = init_model(LlamaForCausalLM, cfg, seed=1).to(torch.bfloat16)
    _, reloaded, _ = hf_fixture(
        out, "tiny-llama-tied", m, inp, exact_vs_memory=False, extra_meta={"weights_on_disk": "bfloat16"}
    )
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    assert reloaded.model.embed_tokens.weight.dtype == torch.float32

    # ---- tiny-llama3-rope -------------------------------------------------------------
    llama3 = dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=64,
    )
    cfg = LlamaConfig(**COMMON, tie_word_embeddings=False, rope_parameters=rope(500000.0, **llama3))
    m = init_model(LlamaForCausalLM, cfg, seed=2)
    _, _, exp = hf_fixture(out, "tiny-llama3-rope", m, inp, legacy_rope=True)
    # Unscaled twin: same weights, same theta, no scaling -> logits must differ
    twin = LlamaForCausalLM(LlamaConfig(**COMMON, tie_word_embeddings=False, rope_parameters=rope(500000.0)))
    twin.load_state_dict(m.state_dict())
    dtwin = (forward(twin, inp["input_ids"], inp["position_ids"]) - exp["logits"]).abs().max().item()
    print(f"[tiny-llama3-rope] llama3 vs unscaled twin max|dlogit| = {dtwin:.4f}")
    assert dtwin > 1e-2, dtwin

    # ---- tiny-qwen2 -------------------------------------------------------------------
    cfg = Qwen2Config(**COMMON, tie_word_embeddings=True, rope_parameters=rope(1000000.0), use_sliding_window=False)
    m = init_model(Qwen2ForCausalLM, cfg, seed=3)
    randomize_biases(m, seed=33)
    for p in ("q_proj", "k_proj", "v_proj"):
        assert getattr(m.model.layers[0].self_attn, p).bias.abs().min() > 0
    hf_fixture(out, "tiny-qwen2", m, inp, legacy_rope=True)

    # ---- tiny-mistral -----------------------------------------------------------------
    cfg = MistralConfig(**COMMON, tie_word_embeddings=False, rope_parameters=rope(10000.0), sliding_window=None)
    m = init_model(MistralForCausalLM, cfg, seed=4)
    hf_fixture(out, "tiny-mistral", m, inp, legacy_rope=True)

    # ---- digest (for determinism checks) ----------------------------------------------
    print("sha256:")
    for p in sorted(out.glob("tiny-*/*")):
        if p.is_file():
            os.chmod(p, 0o644)  # safetensors writes 0600
            print(f"  {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}  {p.relative_to(out)}")


if __name__ == "__main__":
    main()
